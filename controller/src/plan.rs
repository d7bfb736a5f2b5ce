//! The backup controller's plan, as a pure function: from a Backup and what the cluster
//! holds (pods, claims, volumes), the PodVolumeBackups to create and the volumes left out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};

use crate::crd::{BackupSpec, PodRef, PodVolumeBackupSpec, SkippedVolume};
use crate::lineage::lineage;
use crate::select::{Selection, back_up_claims_once, select_volumes};

pub use podvault_api::selector::SelectorError;
use podvault_api::selector::{matcher, selects};

/// Whether the Backup covers `namespace`.
pub(crate) fn in_scope(spec: &BackupSpec, namespace: &str) -> bool {
    let included = spec.included_namespaces.is_empty()
        || spec
            .included_namespaces
            .iter()
            .any(|n| n == "*" || n == namespace);
    included && !spec.excluded_namespaces.iter().any(|n| n == namespace)
}

/// The name of a namespace's BackupRepository, and its location under the install's
/// object storage (`s3://bucket/prefix`): one repository per namespace.
pub(crate) fn repository_for(namespace: &str, storage: &str) -> (String, String) {
    (
        namespace.to_string(),
        format!("{}/podvault/{namespace}", storage.trim_end_matches('/')),
    )
}

/// A pod's own time limit for its volumes (annotation `backup.podvault.io/timeout`),
/// or why it cannot be read.
fn pod_timeout(pod: &Pod) -> Result<Option<crate::duration::Duration>, String> {
    let Some(text) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::select::TIMEOUT))
    else {
        return Ok(None);
    };
    let bad = |e: &dyn std::fmt::Display| format!("annotation {}: {e}", crate::select::TIMEOUT);
    let limit = crate::duration::parse(text).map_err(|e| bad(&e))?;
    if limit.is_zero() {
        return Err(bad(&format!("duration {text:?}: must be more than 0")));
    }
    Ok(Some(limit.into()))
}

/// The backup's work.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// One PodVolumeBackup per volume, in pod order.
    pub volumes: Vec<PodVolumeBackupSpec>,
    /// Volumes left out, with reasons.
    pub skipped: Vec<SkippedVolume>,
    /// The namespaces whose repositories the plan writes to.
    pub repositories: Vec<String>,
}

/// Plans the Backup `name`: every pod in scope (namespace and label selector), its volumes
/// chosen by [`select_volumes`], a claim shared by several pods taken once.
pub fn plan_backup(
    name: &str,
    spec: &BackupSpec,
    pods: &[Pod],
    claims: &BTreeMap<(String, String), PersistentVolumeClaim>,
    volumes: &BTreeMap<String, PersistentVolume>,
) -> Result<Plan, SelectorError> {
    let selector = spec.label_selector.as_ref().map(matcher).transpose()?;
    let mut selections: Vec<(PodRef, Selection, &Pod)> = Vec::new();
    let mut in_order: Vec<&Pod> = pods.iter().collect();
    in_order.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    for pod in in_order {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        if !in_scope(spec, &namespace) {
            continue;
        }
        if let Some(selector) = &selector
            && !selects(selector, pod.metadata.labels.as_ref())
        {
            continue;
        }
        let ns_claims: BTreeMap<String, PersistentVolumeClaim> = claims
            .iter()
            .filter(|((ns, _), _)| *ns == namespace)
            .map(|((_, claim), pvc)| (claim.clone(), pvc.clone()))
            .collect();
        let selection = select_volumes(pod, &ns_claims, volumes, spec.default_volumes_to_fs_backup);
        let pod_ref = PodRef {
            namespace,
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        };
        selections.push((pod_ref, selection, pod));
    }
    let mut pairs: Vec<(PodRef, Selection)> = selections
        .iter()
        .map(|(r, s, _)| (r.clone(), s.clone()))
        .collect();
    back_up_claims_once(&mut pairs);
    let mut plan = Plan::default();
    for ((pod_ref, selection), (_, _, pod)) in pairs.into_iter().zip(&selections) {
        let timeout = match pod_timeout(pod) {
            Ok(t) => t.or(spec.timeout),
            Err(reason) => {
                plan.skipped
                    .extend(selection.volumes.into_iter().map(|v| SkippedVolume {
                        namespace: pod_ref.namespace.clone(),
                        pod: pod_ref.name.clone(),
                        volume: v.volume,
                        reason: reason.clone(),
                    }));
                plan.skipped.extend(selection.skipped);
                continue;
            }
        };
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        for v in selection.volumes {
            let mut tags = BTreeMap::new();
            tags.insert("backup".to_string(), name.to_string());
            tags.insert("namespace".to_string(), pod_ref.namespace.clone());
            tags.insert("pod".to_string(), pod_ref.name.clone());
            tags.insert("volume".to_string(), v.volume.clone());
            plan.volumes.push(PodVolumeBackupSpec {
                backup_name: name.to_string(),
                node: node.clone(),
                pod: pod_ref.clone(),
                lineage: lineage(pod, &v.volume, v.claim.as_deref()),
                volume: v.volume,
                claim: v.claim,
                repository: pod_ref.namespace.clone(),
                exclude_paths: v.exclude_paths,
                tags,
                timeout,
                cancel: false,
            });
        }
        plan.skipped.extend(selection.skipped);
    }
    plan.repositories = plan.volumes.iter().map(|v| v.repository.clone()).collect();
    plan.repositories.sort();
    plan.repositories.dedup();
    Ok(plan)
}

#[cfg(test)]
mod tests {
    // The backup controller's plan on real manifests: scope, selector, shared claims, lineage.

    use std::collections::BTreeMap;

    use crate::plan::{in_scope, plan_backup, repository_for};
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
    use podvault_api::crd::BackupSpec;
    use podvault_api::duration::human;

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
}
