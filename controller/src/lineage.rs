//! Which earlier snapshot a volume's backup continues from. A PVC volume continues the
//! claim's history whatever pod mounts it; any other volume continues the history of the
//! same volume of the same owner workload, so a pod re-created by its Deployment stays
//! incremental (Velero's goes full again, its pod being new).

use k8s_openapi::api::core::v1::Pod;

/// The label the Deployment controller puts on its ReplicaSets' pods.
const TEMPLATE_HASH: &str = "pod-template-hash";

/// The workload that owns the pod, as `Kind/name`: a ReplicaSet's pod belongs to its
/// Deployment (the ReplicaSet name less the template hash); other controllers own their
/// pods directly; a pod without a controller owns itself.
pub fn owner(pod: &Pod) -> String {
    let controller = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true));
    let Some(owner) = controller else {
        return format!("Pod/{}", pod.metadata.name.as_deref().unwrap_or_default());
    };
    if owner.kind == "ReplicaSet" {
        let hash = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(TEMPLATE_HASH));
        if let Some(deployment) = hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
            return format!("Deployment/{deployment}");
        }
    }
    format!("{}/{}", owner.kind, owner.name)
}

/// The lineage of a volume: `pvc/<namespace>/<claim>`, or
/// `workload/<namespace>/<Kind>/<name>/<volume>`. Snapshots carry it as a tag, and the
/// parent of a backup is the latest snapshot with the same lineage.
pub fn lineage(pod: &Pod, volume: &str, claim: Option<&str>) -> String {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    match claim {
        Some(claim) => format!("pvc/{namespace}/{claim}"),
        None => format!("workload/{namespace}/{}/{volume}", owner(pod)),
    }
}
