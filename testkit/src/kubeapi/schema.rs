//! What a real API server checks before it stores an object: a custom resource against its
//! CRD's structural schema (unknown fields pruned with a warning, then types, required
//! fields, enums, patterns and bounds), and a core object by decoding it as its
//! k8s-openapi type (unknown fields dropped the same way).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Why an object was refused (the API server's 422 Invalid, with each cause).
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid(pub Vec<String>);

/// Decodes an object as a typed value and back (what survives is what the type has).
pub type Decode = fn(&Value) -> Result<Value, String>;

/// The checks of one kind of object.
#[derive(Clone)]
pub enum Check {
    /// A custom resource: its version's `openAPIV3Schema`.
    Schema(Box<Value>),
    /// A core kind: decodes as this k8s-openapi type.
    Typed(Decode),
}

fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Result<Value, String> {
    let decoded: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(decoded).map_err(|e| e.to_string())
}

/// The checks of the core kinds podvault reads and writes, by resource path.
pub fn core_checks() -> BTreeMap<String, Check> {
    use k8s_openapi::api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
        coordination::v1::Lease,
        core::v1::{
            ConfigMap, Event, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
        },
        storage::v1::CSIDriver,
    };
    let kinds: [(&str, Decode); 15] = [
        ("api/v1/pods", typed::<Pod>),
        (
            "api/v1/persistentvolumeclaims",
            typed::<PersistentVolumeClaim>,
        ),
        ("api/v1/persistentvolumes", typed::<PersistentVolume>),
        ("api/v1/secrets", typed::<Secret>),
        ("api/v1/configmaps", typed::<ConfigMap>),
        ("api/v1/namespaces", typed::<Namespace>),
        ("api/v1/nodes", typed::<Node>),
        ("api/v1/events", typed::<Event>),
        (
            "apis/events.k8s.io/v1/events",
            typed::<k8s_openapi::api::events::v1::Event>,
        ),
        ("apis/coordination.k8s.io/v1/leases", typed::<Lease>),
        (
            "apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
            typed::<MutatingWebhookConfiguration>,
        ),
        ("apis/storage.k8s.io/v1/csidrivers", typed::<CSIDriver>),
        ("apis/apps/v1/deployments", typed::<Deployment>),
        ("apis/apps/v1/statefulsets", typed::<StatefulSet>),
        ("apis/apps/v1/replicasets", typed::<ReplicaSet>),
    ];
    let mut checks: BTreeMap<String, Check> = kinds
        .into_iter()
        .map(|(k, f)| (k.to_string(), Check::Typed(f)))
        .collect();
    checks.insert(
        "apis/apps/v1/daemonsets".into(),
        Check::Typed(typed::<DaemonSet>),
    );
    checks
}

/// The checks of the custom resources `crds` define (CustomResourceDefinitions as JSON),
/// by resource path, one per served version.
pub fn crd_checks(crds: &[Value]) -> BTreeMap<String, Check> {
    let mut checks = BTreeMap::new();
    for crd in crds {
        let group = crd["spec"]["group"].as_str().unwrap_or_default();
        let plural = crd["spec"]["names"]["plural"].as_str().unwrap_or_default();
        for version in crd["spec"]["versions"].as_array().into_iter().flatten() {
            let name = version["name"].as_str().unwrap_or_default();
            let schema = version["schema"]["openAPIV3Schema"].clone();
            checks.insert(
                format!("apis/{group}/{name}/{plural}"),
                Check::Schema(Box::new(schema)),
            );
        }
    }
    checks
}

/// Checks `object` as the API server would, pruning what it does not know: returns the
/// pruned fields' paths (the server's warnings), or why it is refused.
pub fn admit(check: &Check, object: &mut Value) -> Result<Vec<String>, Invalid> {
    let mut pruned = Vec::new();
    match check {
        Check::Schema(schema) => {
            let mut errors = Vec::new();
            let Some(fields) = object.as_object_mut() else {
                return Err(Invalid(vec!["the object is not a JSON object".into()]));
            };
            // apiVersion, kind and metadata are the server's, not the schema's.
            let properties = &schema["properties"];
            let keys: Vec<String> = fields.keys().cloned().collect();
            for key in keys {
                if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                match properties.get(&key) {
                    Some(s) => {
                        if let Some(v) = fields.get_mut(&key) {
                            walk(s, v, &key, &mut errors, &mut pruned);
                        }
                    }
                    None => {
                        fields.remove(&key);
                        pruned.push(key);
                    }
                }
            }
            required(schema, fields, "", &mut errors);
            if !errors.is_empty() {
                return Err(Invalid(errors));
            }
        }
        Check::Typed(decode) => {
            let decoded = decode(object).map_err(|e| Invalid(vec![e]))?;
            unknown(object, &decoded, "", &mut pruned);
        }
    }
    Ok(pruned)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Removes from `original` what decoding dropped (fields the type does not have).
fn unknown(original: &mut Value, decoded: &Value, path: &str, pruned: &mut Vec<String>) {
    if let (Some(items), Some(known)) = (original.as_array_mut(), decoded.as_array()) {
        for (i, (item, d)) in items.iter_mut().zip(known).enumerate() {
            unknown(item, d, &format!("{path}[{i}]"), pruned);
        }
        return;
    }
    let (Some(fields), Some(known)) = (original.as_object_mut(), decoded.as_object()) else {
        return;
    };
    let keys: Vec<String> = fields.keys().cloned().collect();
    for key in keys {
        let here = join(path, &key);
        match known.get(&key) {
            Some(d) => {
                if let Some(v) = fields.get_mut(&key) {
                    unknown(v, d, &here, pruned);
                }
            }
            None => {
                let dropped = fields.remove(&key).unwrap_or(Value::Null);
                let empty = dropped.is_null()
                    || dropped.as_object().is_some_and(Map::is_empty)
                    || dropped.as_array().is_some_and(Vec::is_empty);
                if !empty {
                    pruned.push(here);
                }
            }
        }
    }
}

fn required(schema: &Value, fields: &Map<String, Value>, path: &str, errors: &mut Vec<String>) {
    for name in schema["required"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap_or_default();
        if fields.get(name).is_none_or(Value::is_null) {
            errors.push(format!("{}: Required value", join(path, name)));
        }
    }
}

/// Checks `value` at `path` against `schema`, pruning unknown fields.
fn walk(
    schema: &Value,
    value: &mut Value,
    path: &str,
    errors: &mut Vec<String>,
    pruned: &mut Vec<String>,
) {
    let flag = |name: &str| schema[name].as_bool().unwrap_or(false);
    if value.is_null() {
        if !flag("nullable") {
            errors.push(format!("{path}: Invalid value: null: must not be null"));
        }
        return;
    }
    if flag("x-kubernetes-int-or-string") {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            errors.push(format!(
                "{path}: Invalid value: must be an integer or a string"
            ));
        }
        return;
    }
    let ty = schema["type"].as_str().unwrap_or_default();
    let type_ok = match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        errors.push(format!(
            "{path}: Invalid value: {value}: must be of type {ty}"
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errors.push(format!(
            "{path}: Unsupported value: {value}: supported values: {}",
            list.join(", ")
        ));
    }
    if let (Some(pattern), Some(text)) = (schema["pattern"].as_str(), value.as_str()) {
        match regex::Regex::new(pattern) {
            Ok(re) if re.is_match(text) => {}
            Ok(_) => errors.push(format!(
                "{path}: Invalid value: {value}: should match '{pattern}'"
            )),
            Err(e) => errors.push(format!(
                "{path}: the schema's pattern does not compile: {e}"
            )),
        }
    }
    if let Some(n) = value.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|min| n < min) {
            errors.push(format!("{path}: Invalid value: {value}: below the minimum"));
        }
        if schema["maximum"].as_f64().is_some_and(|max| n > max) {
            errors.push(format!("{path}: Invalid value: {value}: above the maximum"));
        }
    }
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(
                    &schema["items"],
                    item,
                    &format!("{path}[{i}]"),
                    errors,
                    pruned,
                );
            }
        }
        Value::Object(fields) => {
            if flag("x-kubernetes-preserve-unknown-fields") && schema.get("properties").is_none() {
                return;
            }
            let properties = schema["properties"].as_object();
            let extra = schema["additionalProperties"]
                .as_object()
                .map(|_| &schema["additionalProperties"]);
            let keys: Vec<String> = fields.keys().cloned().collect();
            for key in keys {
                let here = join(path, &key);
                let child = properties.and_then(|p| p.get(&key)).or(extra);
                match child {
                    Some(s) => {
                        if let Some(v) = fields.get_mut(&key) {
                            walk(s, v, &here, errors, pruned);
                        }
                    }
                    None if flag("x-kubernetes-preserve-unknown-fields") => {}
                    None => {
                        fields.remove(&key);
                        pruned.push(here);
                    }
                }
            }
            required(schema, fields, path, errors);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn backups() -> Check {
        let crds: Vec<Value> = podvault_api::crd::all()
            .into_iter()
            .map(|c| serde_json::to_value(c).expect("crd"))
            .collect();
        crd_checks(&crds)
            .remove("apis/podvault.io/v1alpha1/backups")
            .expect("the Backup CRD")
    }

    #[test]
    fn a_custom_resource_is_pruned_and_checked_against_its_schema() {
        let check = backups();
        let mut ok = json!({"apiVersion": "podvault.io/v1alpha1", "kind": "Backup",
            "metadata": {"name": "b"},
            "spec": {"ttl": "720h", "includedNamespaces": ["shop"], "surprise": 1},
            "status": {"phase": "Completed", "volumes": {"total": 1}, "madeUp": "x"},
            "extra": true});
        let pruned = admit(&check, &mut ok).expect("admitted");
        assert_eq!(pruned, ["extra", "spec.surprise", "status.madeUp"]);
        assert!(ok["spec"].get("surprise").is_none() && ok.get("extra").is_none());
        for (bad, why) in [
            (
                json!({"spec": {"ttl": "tomorrow"}}),
                "spec.ttl: Invalid value: \"tomorrow\": should match",
            ),
            (
                json!({"spec": {"ttl": 5}}),
                "spec.ttl: Invalid value: 5: must be of type string",
            ),
            (
                json!({"status": {"phase": "Done"}}),
                "status.phase: Unsupported value: \"Done\"",
            ),
            (
                json!({"spec": {"includedNamespaces": "shop"}}),
                "must be of type array",
            ),
        ] {
            let mut object = bad.clone();
            let err = admit(&check, &mut object).expect_err("refused");
            assert!(err.0.iter().any(|e| e.contains(why)), "{bad}: {err:?}");
        }
    }

    #[test]
    fn a_core_object_must_decode_as_its_type_and_loses_unknown_fields() {
        let checks = core_checks();
        let pods = &checks["api/v1/pods"];
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}], "nodeName": "n"}});
        let pruned = admit(pods, &mut pod).expect("admitted");
        assert_eq!(pruned, ["spec.containers[0].bogus"]);
        assert!(pod["spec"]["containers"][0].get("bogus").is_none());
        let mut bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": "none"}});
        assert!(admit(pods, &mut bad).is_err());
    }
}
