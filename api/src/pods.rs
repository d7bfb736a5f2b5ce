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
pub const DEFAULT_RESTORE_TIMEOUT: Duration = Duration::from_secs(4 * 3600);

/// A Restore's `spec.timeout` (or the default), checked: above zero.
pub fn restore_timeout(
    limit: Option<&crate::duration::Duration>,
) -> Result<Duration, crate::duration::DurationError> {
    crate::duration::positive(limit, DEFAULT_RESTORE_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PodMatch;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("a pod")
    }

    fn owned_by(kind: &str, name: &str, hash: Option<&str>) -> Pod {
        let labels = hash.map(|h| serde_json::json!({ TEMPLATE_HASH: h }));
        pod(serde_json::json!({
            "metadata": {
                "name": "web-0", "namespace": "shop", "labels": labels,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Other", "name": "not-the-controller", "uid": "1"},
                    {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "2",
                     "controller": true}
                ]
            }
        }))
    }

    #[test]
    fn the_owner_is_the_workload_that_controls_the_pod() {
        assert_eq!(
            owner(&owned_by("ReplicaSet", "web-7d4b9c", Some("7d4b9c"))),
            "Deployment/web"
        );
        // A ReplicaSet of its own, or one whose name does not end in the hash.
        assert_eq!(
            owner(&owned_by("ReplicaSet", "web-7d4b9c", None)),
            "ReplicaSet/web-7d4b9c"
        );
        assert_eq!(
            owner(&owned_by("ReplicaSet", "web", Some("7d4b9c"))),
            "ReplicaSet/web"
        );
        assert_eq!(
            owner(&owned_by("StatefulSet", "db", None)),
            "StatefulSet/db"
        );
        assert_eq!(
            owner(&pod(serde_json::json!({"metadata": {"name": "alone"}}))),
            "Pod/alone"
        );
    }

    #[test]
    fn a_restore_targets_pods_by_name_claim_or_owner_in_its_namespace() {
        let mut p = owned_by("StatefulSet", "db", None);
        p.spec = Some(
            serde_json::from_value(serde_json::json!({
                "containers": [],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}}]
            }))
            .expect("a pod spec"),
        );
        let spec = |target: PodMatch| PodVolumeRestoreSpec {
            target_namespace: "shop".into(),
            volume: "data".into(),
            target,
            ..PodVolumeRestoreSpec::default()
        };
        let by_name = PodMatch {
            pod_name: Some("web-0".into()),
            ..PodMatch::default()
        };
        let by_claim = PodMatch {
            claim: Some("data-db-0".into()),
            ..PodMatch::default()
        };
        let by_owner = PodMatch {
            owner: Some("StatefulSet/db".into()),
            ..PodMatch::default()
        };
        for target in [&by_name, &by_claim, &by_owner] {
            assert!(restore_target(&spec(target.clone()), &p), "{target:?}");
        }
        // Another namespace, another volume, another claim, another owner, no rule.
        let mut elsewhere = spec(by_name.clone());
        elsewhere.target_namespace = "other".into();
        assert!(!restore_target(&elsewhere, &p));
        let mut other_volume = spec(by_name);
        other_volume.volume = "cache".into();
        assert!(!restore_target(&other_volume, &p));
        let other_claim = PodMatch {
            claim: Some("data-db-1".into()),
            ..PodMatch::default()
        };
        assert!(!restore_target(&spec(other_claim), &p));
        let other_owner = PodMatch {
            owner: Some("StatefulSet/web".into()),
            ..PodMatch::default()
        };
        assert!(!restore_target(&spec(other_owner), &p));
        assert!(!restore_target(&spec(PodMatch::default()), &p));
    }

    #[test]
    fn a_restore_time_limit_is_a_go_duration_above_zero() {
        let d = |text: &str| text.parse::<crate::duration::Duration>().expect(text);
        assert_eq!(restore_timeout(None), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(
            restore_timeout(Some(&d("1h30m"))),
            Ok(Duration::from_secs(5400))
        );
        assert!(
            restore_timeout(Some(&d("0s"))).is_err_and(|e| e.to_string().contains("more than 0"))
        );
    }
}
