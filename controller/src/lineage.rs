//! Which earlier snapshot a volume's backup continues from. A PVC volume continues the
//! claim's history whatever pod mounts it; any other volume continues the history of the
//! same volume of the same owner workload, so a pod re-created by its Deployment stays
//! incremental (Velero's goes full again, its pod being new).

use k8s_openapi::api::core::v1::Pod;

pub use podvault_api::pods::owner;

/// The lineage of a volume: `pvc/<namespace>/<claim>`, or
/// `workload/<namespace>/<Kind>/<name>/<volume>`. Snapshots carry it as a tag, and the
/// parent of a backup is the latest snapshot with the same lineage.
pub(crate) fn lineage(pod: &Pod, volume: &str, claim: Option<&str>) -> String {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    match claim {
        Some(claim) => format!("pvc/{namespace}/{claim}"),
        None => format!("workload/{namespace}/{}/{volume}", owner(pod)),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;

    fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
        podvault_testkit::fixture(env!("CARGO_MANIFEST_DIR"), name)
    }

    #[test]
    fn lineage_follows_the_claim_or_the_owner_workload() {
        let pod: Pod = fixture("pod-db.json");
        assert_eq!(owner(&pod), "Deployment/db");
        assert_eq!(lineage(&pod, "data", Some("pgdata")), "pvc/shop/pgdata");
        assert_eq!(
            lineage(&pod, "scratch", None),
            "workload/shop/Deployment/db/scratch"
        );
        // The Deployment's next pod has another name and uid, and the same lineage.
        let mut next = pod.clone();
        next.metadata.name = Some("db-7d9c6b5f4-q8w7e".into());
        next.metadata.uid = Some("another".into());
        assert_eq!(
            lineage(&next, "scratch", None),
            lineage(&pod, "scratch", None)
        );
        let mut bare = pod;
        bare.metadata.owner_references = None;
        assert_eq!(owner(&bare), "Pod/db-7d9c6b5f4-x2k8q");
        let mut stateful = bare.clone();
        stateful.metadata.owner_references = Some(vec![serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u", "controller": true
        })).expect("owner")]);
        assert_eq!(owner(&stateful), "StatefulSet/db");
    }
}
