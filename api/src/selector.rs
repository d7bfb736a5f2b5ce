//! Label selectors: the text form users type after `-l` (kubectl's grammar), and the
//! matching of objects' labels, both through kube's [`Selector`] and [`Expression`] types.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
pub use kube::core::{Expression, Selector, SelectorExt};

/// A selector that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    /// A typed selector (`-l`) that does not follow the grammar.
    #[error("selector {text:?}: {part:?} is not {expected}")]
    Text {
        /// The whole selector.
        text: String,
        /// The requirement that could not be read.
        part: String,
        /// What was expected there.
        expected: &'static str,
    },
    /// A `labelSelector` object with an operator or values the API server does not allow.
    #[error("label selector {selector}: {source}")]
    Object {
        /// The selector, as JSON.
        selector: String,
        /// kube's complaint.
        source: kube::core::ParseExpressionError,
    },
}

/// The typed form of `selector`, ready to match labels.
pub fn matcher(selector: &LabelSelector) -> Result<Selector, SelectorError> {
    Selector::try_from(selector.clone()).map_err(|source| SelectorError::Object {
        selector: serde_json::to_string(selector).unwrap_or_default(),
        source,
    })
}

/// Whether `labels` (absent: none) satisfy `selector`.
pub fn selects(selector: &Selector, labels: Option<&BTreeMap<String, String>>) -> bool {
    match labels {
        Some(labels) => selector.matches(labels),
        None => selector.matches(&BTreeMap::new()),
    }
}

/// Parses kubectl's selector grammar: `app=db`, `app==db`, `tier!=cache`, `release`,
/// `!canary`, `env in (prod,staging)`, `env notin (dev)`, joined by commas.
pub fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
    let mut expressions = Vec::new();
    for part in split_requirements(text) {
        let bad = |expected: &'static str| SelectorError::Text {
            text: text.to_string(),
            part: part.to_string(),
            expected,
        };
        expressions.push(requirement(part).ok_or_else(|| bad(expected_form(part)))?);
    }
    Ok(expressions.into_iter().collect::<Selector>().into())
}

/// The requirements of a selector: split at commas outside parentheses, blanks dropped.
fn split_requirements(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// What a requirement that failed to parse should have looked like.
fn expected_form(part: &str) -> &'static str {
    if part.contains("!=") {
        "`key!=value`"
    } else if part.contains('=') {
        "`key=value`"
    } else if part.starts_with('!') {
        "`!key`"
    } else if part.contains('(') {
        "`key in (a,b)` or `key notin (a,b)`"
    } else {
        "`key=value`, `key!=value`, `key in (a,b)`, `key` or `!key`"
    }
}

fn valid(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn requirement(part: &str) -> Option<Expression> {
    if let Some((k, v)) = part.split_once("!=") {
        let (k, v) = (k.trim(), v.trim());
        return (valid(k) && valid(v)).then(|| Expression::NotEqual(k.into(), v.into()));
    }
    if let Some((k, v)) = part.split_once('=') {
        let (k, v) = (k.trim(), v.strip_prefix('=').unwrap_or(v).trim());
        return (valid(k) && valid(v)).then(|| Expression::Equal(k.into(), v.into()));
    }
    if let Some(k) = part.strip_prefix('!') {
        let k = k.trim();
        return valid(k).then(|| Expression::DoesNotExist(k.into()));
    }
    if let Some((key, rest)) = part.split_once(char::is_whitespace) {
        let rest = rest.trim_start();
        let (negated, list) = if let Some(list) = rest.strip_prefix("notin") {
            (true, list)
        } else {
            (false, rest.strip_prefix("in")?)
        };
        let inner = list.trim().strip_prefix('(')?.strip_suffix(')')?;
        let values: BTreeSet<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
        if !valid(key) || values.iter().any(|v| !valid(v)) {
            return None;
        }
        let key = key.to_string();
        return Some(if negated {
            Expression::NotIn(key, values)
        } else {
            Expression::In(key, values)
        });
    }
    valid(part).then(|| Expression::Exists(part.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_parse_like_kubectls_equality_and_set_forms() {
        let s = parse("app=db, tier!=cache,release,!canary,env==prod,zone in (a, b),x notin (y)")
            .expect("parse");
        assert_eq!(
            serde_json::to_value(&s).expect("json"),
            json!({
                "matchLabels": {"app": "db", "env": "prod"},
                "matchExpressions": [
                    {"key": "tier", "operator": "NotIn", "values": ["cache"]},
                    {"key": "release", "operator": "Exists"},
                    {"key": "canary", "operator": "DoesNotExist"},
                    {"key": "zone", "operator": "In", "values": ["a", "b"]},
                    {"key": "x", "operator": "NotIn", "values": ["y"]}
                ]
            })
        );
        for bad in [
            "=db",
            "app=",
            "!",
            "a b=c",
            "app in a,b",
            "app in (a,)",
            "app near (a)",
        ] {
            let err = parse(bad).expect_err(bad).to_string();
            assert!(err.starts_with("selector "), "{err}");
        }
        let err = parse("x, app=").expect_err("bad").to_string();
        assert!(
            err.contains(r#""x, app=""#) && err.contains(r#""app=""#),
            "{err}"
        );
    }

    #[test]
    fn objects_labels_are_matched_by_every_operator() {
        let labels = BTreeMap::from([("app".to_string(), "db".to_string())]);
        let sel = |v: serde_json::Value| {
            let s: LabelSelector = serde_json::from_value(v).expect("selector");
            matcher(&s).expect("valid")
        };
        assert!(selects(
            &sel(json!({"matchLabels": {"app": "db"}})),
            Some(&labels)
        ));
        assert!(!selects(
            &sel(json!({"matchLabels": {"app": "web"}})),
            Some(&labels)
        ));
        let expr = |op: &str, values: Option<Vec<&str>>| {
            sel(json!({"matchExpressions": [{"key": "app", "operator": op, "values": values}]}))
        };
        assert!(selects(&expr("In", Some(vec!["db", "x"])), Some(&labels)));
        assert!(!selects(&expr("NotIn", Some(vec!["db"])), Some(&labels)));
        assert!(selects(&expr("NotIn", Some(vec!["db"])), None));
        assert!(selects(&expr("Exists", None), Some(&labels)));
        assert!(!selects(&expr("DoesNotExist", None), Some(&labels)));
        assert!(selects(&sel(json!({})), None));
        let near: LabelSelector = serde_json::from_value(
            json!({"matchExpressions": [{"key": "app", "operator": "Near"}]}),
        )
        .expect("selector");
        let err = matcher(&near).expect_err("unknown operator").to_string();
        assert!(err.contains("Near"), "{err}");
    }
}
