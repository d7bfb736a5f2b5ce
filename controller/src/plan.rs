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
pub fn in_scope(spec: &BackupSpec, namespace: &str) -> bool {
    let included = spec.included_namespaces.is_empty()
        || spec
            .included_namespaces
            .iter()
            .any(|n| n == "*" || n == namespace);
    included && !spec.excluded_namespaces.iter().any(|n| n == namespace)
}

/// The name of a namespace's BackupRepository, and its location under the install's
/// object storage (`s3://bucket/prefix`): one repository per namespace.
pub fn repository_for(namespace: &str, storage: &str) -> (String, String) {
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
