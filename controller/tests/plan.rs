//! The backup controller's plan on real manifests: scope, selector, shared claims, lineage.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use podvault_api::duration::human;
use podvault_controller::crd::BackupSpec;
use podvault_controller::plan::{in_scope, plan_backup, repository_for};

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    podvault_testkit::fixture(env!("CARGO_MANIFEST_DIR"), name)
}

/// Claims by (namespace, name).
type Claims = BTreeMap<(String, String), PersistentVolumeClaim>;

fn cluster() -> (Vec<Pod>, Claims, BTreeMap<String, PersistentVolume>) {
    let db: Pod = fixture("pod-db.json");
    let mut replica = db.clone();
    replica.metadata.name = Some("db-7d9c6b5f4-aaaaa".into());
    replica.spec.as_mut().expect("spec").node_name = Some("worker-2".into());
    let mut elsewhere = db.clone();
    elsewhere.metadata.namespace = Some("kube-system".into());
    let mut web = db.clone();
    web.metadata.name = Some("web-0".into());
    web.metadata.labels = Some(BTreeMap::from([("app".to_string(), "web".to_string())]));
    let claims: Vec<PersistentVolumeClaim> = fixture("claims.json");
    let volumes: Vec<PersistentVolume> = fixture("volumes.json");
    (
        vec![replica, db, elsewhere, web],
        claims
            .into_iter()
            .map(|c| {
                (
                    (
                        c.metadata.namespace.clone().unwrap_or_default(),
                        c.metadata.name.clone().unwrap_or_default(),
                    ),
                    c,
                )
            })
            .collect(),
        volumes
            .into_iter()
            .map(|v| (v.metadata.name.clone().unwrap_or_default(), v))
            .collect(),
    )
}

#[test]
fn a_backup_plans_one_volume_backup_per_volume_in_scope() {
    let (pods, claims, volumes) = cluster();
    let spec: BackupSpec = serde_json::from_value(serde_json::json!({
        "includedNamespaces": ["*"],
        "excludedNamespaces": ["kube-system"],
        "labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]}
    }))
    .expect("spec");
    let plan = plan_backup("nightly", &spec, &pods, &claims, &volumes).expect("plan");
    let got: Vec<(String, String, String)> = plan
        .volumes
        .iter()
        .map(|v| (v.pod.name.clone(), v.volume.clone(), v.node.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "db-7d9c6b5f4-aaaaa".into(),
                "data".into(),
                "worker-2".into()
            ),
            (
                "db-7d9c6b5f4-aaaaa".into(),
                "scratch".into(),
                "worker-2".into()
            ),
            (
                "db-7d9c6b5f4-x2k8q".into(),
                "scratch".into(),
                "worker-1".into()
            ),
        ]
    );
    let data = &plan.volumes[0];
    assert_eq!(data.lineage, "pvc/shop/pgdata");
    assert_eq!(data.repository, "shop");
    assert_eq!(data.tags["backup"], "nightly");
    assert_eq!(
        plan.volumes[1].lineage, plan.volumes[2].lineage,
        "same workload and volume"
    );
    assert_eq!(plan.repositories, ["shop"]);
    assert!(
        plan.skipped.iter().any(|s| s.pod == "db-7d9c6b5f4-x2k8q"
            && s.reason
                .contains("backed up through pod db-7d9c6b5f4-aaaaa")),
        "{:?}",
        plan.skipped
    );
    let bad: BackupSpec = serde_json::from_value(serde_json::json!({
        "labelSelector": {"matchExpressions": [{"key": "app", "operator": "Near"}]}
    }))
    .expect("spec");
    let err = plan_backup("x", &bad, &pods, &claims, &volumes).expect_err("bad selector");
    assert!(err.to_string().contains("Near"), "{err}");
}

#[test]
fn scope_selectors_and_repository_names() {
    let spec = BackupSpec {
        included_namespaces: vec!["shop".into(), "blog".into()],
        excluded_namespaces: vec!["blog".into()],
        ..BackupSpec::default()
    };
    assert!(in_scope(&spec, "shop") && !in_scope(&spec, "blog") && !in_scope(&spec, "x"));
    assert!(in_scope(&BackupSpec::default(), "anything"));
    assert_eq!(
        repository_for("shop", "s3://bucket/backups/"),
        (
            "shop".to_string(),
            "s3://bucket/backups/podvault/shop".to_string()
        )
    );
}

#[test]
fn a_pod_annotation_overrides_the_backups_volume_time_limit() {
    let (mut pods, claims, volumes) = cluster();
    pods[0]
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("backup.podvault.io/timeout".into(), " 8h ".into());
    let spec: BackupSpec = serde_json::from_value(serde_json::json!({
        "includedNamespaces": ["shop"], "timeout": "1h",
        "labelSelector": {"matchLabels": {"app": "db"}}
    }))
    .expect("spec");
    let plan = plan_backup("nightly", &spec, &pods, &claims, &volumes).expect("plan");
    let limits: Vec<(String, Option<String>)> = plan
        .volumes
        .iter()
        .map(|v| (v.pod.name.clone(), v.timeout.map(|t| human(t.into()))))
        .collect();
    assert_eq!(
        limits,
        [
            ("db-7d9c6b5f4-aaaaa".to_string(), Some("8h".to_string())),
            ("db-7d9c6b5f4-aaaaa".to_string(), Some("8h".to_string())),
            ("db-7d9c6b5f4-x2k8q".to_string(), Some("1h".to_string())),
        ]
    );
    // An annotation that is not a duration leaves the pod's volumes out, saying why.
    for bad in ["soon", "0s", "-1h"] {
        pods[0]
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("backup.podvault.io/timeout".into(), bad.into());
        let plan = plan_backup("nightly", &spec, &pods, &claims, &volumes).expect("plan");
        assert!(
            plan.volumes
                .iter()
                .all(|v| v.pod.name != "db-7d9c6b5f4-aaaaa")
        );
        let reasons: Vec<&str> = plan
            .skipped
            .iter()
            .filter(|s| s.pod == "db-7d9c6b5f4-aaaaa")
            .map(|s| s.reason.as_str())
            .filter(|r| r.starts_with("annotation backup.podvault.io/timeout: duration"))
            .collect();
        assert_eq!(reasons.len(), 2, "{bad}: {:?}", plan.skipped);
        assert!(reasons.iter().all(|r| r.contains(bad)), "{reasons:?}");
    }
}
