//! The CRDs: what `podvault crds` prints is what the chart ships, and each is a valid,
//! structural CRD with a status subresource and printer columns.

use std::path::Path;

use podvault_controller::crd::{self, Backup, Phase};

#[test]
fn the_charts_copy_is_what_podvault_crds_prints() {
    let chart =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/podvault/crds/podvault.io.yaml");
    let shipped = std::fs::read_to_string(&chart).expect("the chart's CRDs");
    assert!(
        shipped == crd::yaml().expect("yaml"),
        "{} is out of date: run `podvault crds > helm/podvault/crds/podvault.io.yaml`",
        chart.display()
    );
}

/// Every node of a structural schema says its type (or opts out explicitly).
fn assert_structural(path: &str, schema: &serde_json::Value) {
    let obj = schema.as_object().expect("schema object");
    let typed = obj.contains_key("type")
        || obj.contains_key("x-kubernetes-int-or-string")
        || obj.contains_key("x-kubernetes-preserve-unknown-fields");
    assert!(typed, "{path} has no type: {schema}");
    for (key, child) in obj
        .get("properties")
        .and_then(|p| p.as_object())
        .into_iter()
        .flatten()
    {
        assert_structural(&format!("{path}.{key}"), child);
    }
    if let Some(items) = obj.get("items") {
        assert_structural(&format!("{path}[]"), items);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        assert_structural(&format!("{path}{{}}"), extra);
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        assert!(
            !obj.contains_key(key) || path.contains("labelSelector"),
            "{path} uses {key}"
        );
    }
}

#[test]
fn every_crd_is_structural_with_status_and_columns() {
    let crds = crd::all();
    let names: Vec<String> = crds.iter().map(|c| c.spec.names.kind.clone()).collect();
    assert_eq!(
        names,
        [
            "Backup",
            "Restore",
            "PodVolumeBackup",
            "PodVolumeRestore",
            "BackupRepository"
        ]
    );
    for c in &crds {
        assert_eq!(c.spec.group, crd::GROUP);
        assert_eq!(c.spec.scope, "Namespaced");
        let version = &c.spec.versions[0];
        assert!(version.served && version.storage);
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{} has a status subresource",
            c.spec.names.kind
        );
        let columns = version
            .additional_printer_columns
            .as_ref()
            .expect("columns");
        assert!(
            columns.iter().any(|col| col.name == "Phase"),
            "{}",
            c.spec.names.kind
        );
        let schema = serde_json::to_value(
            version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("schema"),
        )
        .expect("json");
        assert_structural(&c.spec.names.kind, &schema);
    }
}

#[test]
fn a_backup_manifest_reads_with_defaults() {
    let backup: Backup = serde_yaml::from_str(
        r#"
apiVersion: podvault.io/v1alpha1
kind: Backup
metadata: {name: nightly, namespace: podvault}
spec:
  includedNamespaces: [shop]
  labelSelector: {matchLabels: {app: db}}
  ttl: 720h
"#,
    )
    .expect("valid manifest");
    assert_eq!(backup.spec.included_namespaces, ["shop"]);
    assert!(!backup.spec.default_volumes_to_fs_backup && !backup.spec.cancel);
    assert!(backup.status.is_none());
    let status: podvault_controller::crd::BackupStatus =
        serde_json::from_value(serde_json::json!({"phase": "PartiallyFailed"})).expect("status");
    assert_eq!(status.phase, Phase::PartiallyFailed);
    assert!(status.phase.is_final());
}

/// Every duration field of every CRD, by its path in the schema.
fn duration_fields(path: &str, schema: &serde_json::Value, found: &mut Vec<(String, String)>) {
    for (key, child) in schema
        .get("properties")
        .and_then(|p| p.as_object())
        .into_iter()
        .flatten()
    {
        let here = format!("{path}.{key}");
        if matches!(key.as_str(), "ttl" | "timeout") {
            let pattern = child["pattern"].as_str().unwrap_or_default().to_string();
            found.push((here.clone(), pattern));
        }
        duration_fields(&here, child, found);
    }
}

#[test]
fn durations_are_typed_and_their_schema_refuses_what_would_not_parse() {
    let mut found = Vec::new();
    for c in crd::all() {
        let schema = serde_json::to_value(
            c.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("schema"),
        )
        .expect("json");
        duration_fields(&c.spec.names.kind, &schema, &mut found);
    }
    assert_eq!(found.len(), 5, "{found:?}");
    for (path, pattern) in &found {
        assert_eq!(pattern, podvault_api::duration::PATTERN, "{path}");
    }
    let bad = serde_yaml::from_str::<Backup>(
        "apiVersion: podvault.io/v1alpha1\nkind: Backup\nmetadata: {name: b}\nspec: {ttl: tomorrow}\n",
    );
    assert!(bad.is_err(), "a ttl that is not a duration is not a Backup");
}
