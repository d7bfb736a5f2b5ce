//! Server-side apply as the API server does it: each field manager owns the fields it
//! applied (or changed by an update); an apply that would change a field another manager
//! owns is a conflict unless forced, and fields a manager stops applying are removed
//! unless someone else owns them. Lists are atomic, as they are for most of the API.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Who owns which fields of one object: manager -> JSON pointers of leaf fields.
pub type Managed = BTreeMap<String, BTreeSet<String>>;

/// Which part of an object a write may change: the object without its status, or the
/// status alone (the `status` subresource).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything but `status` (and the server's own metadata).
    Main,
    /// `status` only.
    Status,
}

impl Scope {
    fn holds(self, pointer: &str) -> bool {
        let server_owned = ["/apiVersion", "/kind"].contains(&pointer)
            || [
                "name",
                "namespace",
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "deletionTimestamp",
                "generation",
                "managedFields",
            ]
            .iter()
            .any(|f| {
                pointer == format!("/metadata/{f}")
                    || pointer.starts_with(&format!("/metadata/{f}/"))
            });
        let status = pointer == "/status" || pointer.starts_with("/status/");
        !server_owned
            && match self {
                Scope::Main => !status,
                Scope::Status => status,
            }
    }
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The leaf fields of `value` in `scope`: scalars, lists and empty maps.
pub fn leaves(value: &Value, scope: Scope) -> BTreeSet<String> {
    fn walk(v: &Value, at: String, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    walk(child, format!("{at}/{}", escape(k)), out);
                }
            }
            _ => {
                out.insert(at);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(value, String::new(), &mut out);
    out.retain(|p| scope.holds(p));
    out
}

/// A field another manager owns that an apply would change.
#[derive(Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The manager that owns it.
    pub manager: String,
    /// The field, as a JSON pointer.
    pub field: String,
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn remove(target: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let key = last.replace("~1", "/").replace("~0", "~");
    if let Some(Value::Object(m)) = target.pointer_mut(parent) {
        m.remove(&key);
    }
}

/// Applies `body` for `manager` onto `current` (an empty object for a new one): the new
/// object, or the conflicts that stop it when not `force`d.
pub fn apply(
    current: &Value,
    managed: &mut Managed,
    manager: &str,
    body: &Value,
    force: bool,
    scope: Scope,
) -> Result<Value, Vec<Conflict>> {
    let applied = leaves(body, scope);
    let mut conflicts = Vec::new();
    for (other, fields) in managed.iter() {
        if other == manager {
            continue;
        }
        for field in fields.intersection(&applied) {
            if current.pointer(field) != body.pointer(field) {
                conflicts.push(Conflict {
                    manager: other.clone(),
                    field: field.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    // Forced, or values equal: the fields become shared or move to this manager.
    for c in &conflicts {
        if let Some(fields) = managed.get_mut(&c.manager) {
            fields.remove(&c.field);
        }
    }
    let mut next = current.clone();
    let before: BTreeSet<String> = managed
        .get(manager)
        .map(|f| f.iter().filter(|p| scope.holds(p)).cloned().collect())
        .unwrap_or_default();
    for dropped in before.difference(&applied) {
        let shared = managed
            .iter()
            .any(|(m, f)| m != manager && f.contains(dropped));
        if !shared {
            remove(&mut next, dropped);
        }
    }
    let mut in_scope = body.clone();
    if let Value::Object(m) = &mut in_scope {
        match scope {
            Scope::Status => m.retain(|k, _| k == "status"),
            Scope::Main => m.retain(|k, _| k != "status"),
        }
    }
    merge(&mut next, &in_scope);
    let mine = managed.entry(manager.to_string()).or_default();
    mine.retain(|p| !scope.holds(p));
    mine.extend(applied);
    managed.retain(|_, f| !f.is_empty());
    Ok(next)
}

/// Records an update (create, replace or patch) by `manager`: the fields it changed are
/// now its own.
pub fn updated(managed: &mut Managed, manager: &str, old: &Value, new: &Value, scope: Scope) {
    let (before, after) = (leaves(old, scope), leaves(new, scope));
    let changed: BTreeSet<String> = after
        .iter()
        .filter(|p| !before.contains(*p) || old.pointer(p) != new.pointer(p))
        .cloned()
        .collect();
    for fields in managed.values_mut() {
        fields.retain(|p| after.contains(p));
        for p in &changed {
            fields.remove(p);
        }
    }
    if !changed.is_empty() {
        managed
            .entry(manager.to_string())
            .or_default()
            .extend(changed);
    }
    managed.retain(|_, f| !f.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn managers_own_what_they_apply_and_conflict_over_what_others_own() {
        let mut managed = Managed::new();
        let empty = json!({});
        let a = json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"n": 1, "list": [1, 2]}});
        let object = apply(&empty, &mut managed, "alpha", &a, false, Scope::Main).expect("apply");
        assert_eq!(object["spec"]["list"], json!([1, 2]));
        assert_eq!(
            managed["alpha"],
            ["/metadata/labels/a", "/spec/list", "/spec/n"]
                .map(String::from)
                .into()
        );
        // Another manager changing alpha's field conflicts; the same value does not.
        let b = json!({"spec": {"n": 2, "m": 3}});
        let err =
            apply(&object, &mut managed, "beta", &b, false, Scope::Main).expect_err("conflict");
        assert_eq!(
            err,
            [Conflict {
                manager: "alpha".into(),
                field: "/spec/n".into()
            }]
        );
        let same = json!({"spec": {"n": 1, "m": 3}});
        let object =
            apply(&object, &mut managed, "beta", &same, false, Scope::Main).expect("shared");
        assert_eq!(object["spec"]["m"], 3);
        // Forced, the field moves to beta.
        let object = apply(&object, &mut managed, "beta", &b, true, Scope::Main).expect("forced");
        assert_eq!(object["spec"]["n"], 2);
        assert!(!managed["alpha"].contains("/spec/n"));
        // Alpha stops applying its label and list: gone, as nobody else owns them.
        let fewer = json!({"spec": {}});
        let object =
            apply(&object, &mut managed, "alpha", &fewer, false, Scope::Main).expect("apply");
        assert!(object["metadata"]["labels"].get("a").is_none());
        assert!(object["spec"].get("list").is_none() && object["spec"]["m"] == 3);
        // A status apply touches the status alone, and an update takes what it changed.
        let s = json!({"spec": {"n": 9}, "status": {"phase": "New"}});
        let object =
            apply(&object, &mut managed, "gamma", &s, false, Scope::Status).expect("status");
        assert_eq!(
            (
                object["status"]["phase"].as_str(),
                object["spec"]["n"].as_i64()
            ),
            (Some("New"), Some(2))
        );
        let mut changed = object.clone();
        changed["status"]["phase"] = json!("Done");
        updated(&mut managed, "kubectl", &object, &changed, Scope::Status);
        assert!(managed["kubectl"].contains("/status/phase") && !managed.contains_key("gamma"));
        let again = json!({"status": {"phase": "New"}});
        assert!(
            apply(
                &changed,
                &mut managed,
                "gamma",
                &again,
                false,
                Scope::Status
            )
            .is_err()
        );
    }
}
