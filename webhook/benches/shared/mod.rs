//! The load shared by the review benchmark and the load target: 10,000 pending
//! PodVolumeRestores, 100 into each of the namespaces `ns-0` … `ns-99`, for the claims
//! `claim-0` … `claim-9999` (claim `i` goes to namespace `ns-{i % 100}`).

use podvault_api::crd::PodVolumeRestore;

/// `count` pending restores of volume `data`.
pub fn pending(count: usize) -> Vec<PodVolumeRestore> {
    (0..count)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeRestore",
                "metadata": {"name": format!("r-{i}"), "namespace": "podvault"},
                "spec": {"restoreName": "again", "restoreUid": "r-uid",
                         "targetNamespace": format!("ns-{}", i % 100),
                         "target": {"claim": format!("claim-{i}")},
                         "volume": "data", "snapshotID": "s", "repository": "shop"}
            }))
            .expect("a PodVolumeRestore")
        })
        .collect()
}
