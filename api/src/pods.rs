//! Rules about pods that both the controller side and the webhook apply: which workload
//! owns a pod, which pods a PodVolumeRestore is for, and a Restore's time limit.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use crate::crd::PodVolumeRestoreSpec;

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

/// Whether `pod` is the target of a PodVolumeRestore: in its namespace, mounting its
/// volume, and recognised by name (pods restored by name), by claim (PVC volumes: any pod
/// mounting the claim) or by owner workload (other volumes of controller-made pods).
pub fn restore_target(spec: &PodVolumeRestoreSpec, pod: &Pod) -> bool {
    if pod.metadata.namespace.as_deref() != Some(spec.target_namespace.as_str()) {
        return false;
    }
    let Some(volume) = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .and_then(|vs| vs.iter().find(|v| v.name == spec.volume))
    else {
        return false;
    };
    let t = &spec.target;
    if let Some(name) = &t.pod_name {
        return pod.metadata.name.as_ref() == Some(name);
    }
    if let Some(claim) = &t.claim {
        return volume
            .persistent_volume_claim
            .as_ref()
            .is_some_and(|c| &c.claim_name == claim);
    }
    if let Some(workload) = &t.owner {
        return &owner(pod) == workload;
    }
    false
}

/// How long a volume waits for its pod when the Restore does not say (Velero's default pod
/// volume operation timeout).
pub const DEFAULT_RESTORE_TIMEOUT: &str = "4h";

/// A Restore's `spec.timeout` (or the default), checked: a Go duration above zero.
pub fn restore_timeout(text: Option<&str>) -> Result<Duration, String> {
    let text = text.unwrap_or(DEFAULT_RESTORE_TIMEOUT);
    match crate::duration::parse(text) {
        Ok(d) if d.is_zero() => Err(format!("duration {text:?}: must be more than 0")),
        Ok(d) => Ok(d),
        Err(e) => Err(e),
    }
}
