//! Which earlier snapshot a volume's backup continues from. A PVC volume continues the
//! claim's history whatever pod mounts it; any other volume continues the history of the
//! same volume of the same owner workload, so a pod re-created by its Deployment stays
//! incremental (Velero's goes full again, its pod being new).

use k8s_openapi::api::core::v1::Pod;

pub use podvault_api::pods::owner;

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
