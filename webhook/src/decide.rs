//! The webhook's decision, a pure function of (pod, pending PodVolumeRestores, helper
//! settings): which volumes of a new pod are being restored, and the JSON Patch that puts
//! the restore helper first among its init containers.
//!
//! How a pod is matched to a PodVolumeRestore (the same rule the node agent applies):
//! - pods restored by name (bare pods, and every pod of a restore with `restorePods`): by
//!   the pod's name;
//! - PVC volumes: by claim name, whatever pod mounts the claim;
//! - other volumes of pods a controller makes (Deployment, StatefulSet, DaemonSet, Job…): by
//!   the owner workload and the volume name, since the new pod's own name is not known in
//!   advance (and is often still empty when the webhook sees it).

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector, Pod,
    PodSpec, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use podvault_api::crd::{Phase, PodVolumeRestore};
use podvault_api::names::{POD_MARKERS, POD_MARKERS_MOUNT, RESTORE_HELPER};
use podvault_api::pods::{DEFAULT_RESTORE_TIMEOUT, restore_target, restore_timeout};
use serde_json::Value;

use crate::config::HelperConfig;

/// Where the helper sees each volume: `/restores/<volume>`.
pub const RESTORE_ROOT: &str = "/restores";
/// The user the helper runs as when neither the pod nor the ConfigMap says.
pub const DEFAULT_USER: i64 = 65532;

/// What to do with one pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// The JSON Patch to apply, if any.
    pub patch: Option<Patch>,
    /// The restore the helper waits for.
    pub restore_uid: Option<String>,
    /// The volumes it waits for.
    pub volumes: Vec<String>,
    /// Why nothing is done, for logs and metrics.
    pub skipped: Option<&'static str>,
}

fn skip(reason: &'static str) -> Decision {
    Decision {
        skipped: Some(reason),
        ..Decision::default()
    }
}

/// Decides for a pod being created in `namespace`. Pods of kube-system and of podvault's
/// own namespace, mirror pods, and pods that already have the helper are never touched.
pub fn decide(
    pod: &Pod,
    namespace: &str,
    install_namespace: &str,
    pending: &[PodVolumeRestore],
    config: &HelperConfig,
) -> Decision {
    if let Some(reason) = untouchable(pod, namespace, install_namespace) {
        return skip(reason);
    }
    let Some(spec) = &pod.spec else {
        return skip("no pod spec");
    };
    let Some(Claim {
        restore_uid: uid,
        volumes,
        timeout,
    }) = claim(pod, namespace, pending)
    else {
        return skip("no pending restore for this pod");
    };
    // The markers come through a volume of the helper's own, unless the pod already has a
    // volume of that name (then the helper reads them inside the volumes).
    let own_markers = !spec.volumes.iter().flatten().any(|v| v.name == POD_MARKERS);
    let mut helper = helper_container(pod, uid, &volumes, config);
    let command = helper.command.get_or_insert_with(Vec::new);
    command.extend(["--timeout".to_string(), timeout.as_secs().to_string()]);
    let mut operations = Vec::new();
    if own_markers {
        command.extend(["--markers".to_string(), POD_MARKERS_MOUNT.to_string()]);
        helper
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: POD_MARKERS.to_string(),
                mount_path: POD_MARKERS_MOUNT.to_string(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        operations.push(add_markers_volume(spec));
    }
    let container = serde_json::to_value(&helper).unwrap_or(Value::Null);
    // Before the pod's own init containers, or as the whole list when it has none.
    let operation = if spec.init_containers.as_ref().is_none_or(Vec::is_empty) {
        AddOperation {
            path: PointerBuf::from_tokens(["spec", "initContainers"]),
            value: Value::Array(vec![container]),
        }
    } else {
        AddOperation {
            path: PointerBuf::from_tokens(["spec", "initContainers", "0"]),
            value: container,
        }
    };
    operations.insert(0, PatchOperation::Add(operation));
    Decision {
        patch: Some(Patch(operations)),
        restore_uid: Some(uid.to_string()),
        volumes: volumes.iter().map(|v| v.to_string()).collect(),
        skipped: None,
    }
}

/// Why a pod is never touched, if it is not: in a protected namespace, a mirror pod, or
/// one that has the helper already.
fn untouchable(pod: &Pod, namespace: &str, install_namespace: &str) -> Option<&'static str> {
    if namespace == "kube-system" || namespace == install_namespace {
        return Some("protected namespace");
    }
    let annotations = pod.metadata.annotations.as_ref();
    if annotations.is_some_and(|a| a.contains_key("kubernetes.io/config.mirror")) {
        return Some("mirror pod");
    }
    let helper_present = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .any(|c| c.name == RESTORE_HELPER);
    helper_present.then_some("helper already present")
}

/// The restore a pod's helper waits for: its UID, the volumes (sorted) and the longest
/// of their time limits.
struct Claim<'a> {
    restore_uid: &'a str,
    volumes: Vec<&'a str>,
    timeout: Duration,
}

/// The pending restore that claims the pod, if any. One restore at a time into a
/// namespace; if two claim the pod, the first (by UID) is served now and the other's
/// volumes are left to a later pod.
fn claim<'a>(pod: &Pod, namespace: &str, pending: &'a [PodVolumeRestore]) -> Option<Claim<'a>> {
    let waiting = |pvr: &&PodVolumeRestore| {
        pvr.spec.pod.is_none() && pvr.status.as_ref().is_none_or(|s| s.phase == Phase::New)
    };
    if !pending.iter().any(|p| waiting(&p)) {
        return None;
    }
    // The namespace of the request is authoritative: a new pod often has none set (the pod
    // is copied only then).
    let placed = if pod.metadata.namespace.as_deref() == Some(namespace) {
        std::borrow::Cow::Borrowed(pod)
    } else {
        let mut placed = pod.clone();
        placed.metadata.namespace = Some(namespace.to_string());
        std::borrow::Cow::Owned(placed)
    };
    let mut by_restore: BTreeMap<&str, Claim<'a>> = BTreeMap::new();
    for pvr in pending.iter().filter(waiting) {
        if restore_target(&pvr.spec, &placed) {
            let uid = pvr.spec.restore_uid.as_str();
            let entry = by_restore.entry(uid).or_insert_with(|| Claim {
                restore_uid: uid,
                volumes: Vec::new(),
                timeout: Duration::ZERO,
            });
            entry.volumes.push(pvr.spec.volume.as_str());
            entry.timeout = entry.timeout.max(helper_timeout(pvr.spec.timeout.as_ref()));
        }
    }
    let (_, mut claim) = by_restore.into_iter().next()?;
    claim.volumes.sort_unstable();
    claim.volumes.dedup();
    Some(claim)
}

/// Adds the helper's small volume for restore markers to the pod's volumes.
fn add_markers_volume(spec: &PodSpec) -> PatchOperation {
    let volume = serde_json::to_value(Volume {
        name: POD_MARKERS.to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("1Mi".to_string())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    })
    .unwrap_or(Value::Null);
    PatchOperation::Add(if spec.volumes.as_ref().is_none_or(Vec::is_empty) {
        AddOperation {
            path: PointerBuf::from_tokens(["spec", "volumes"]),
            value: Value::Array(vec![volume]),
        }
    } else {
        AddOperation {
            path: PointerBuf::from_tokens(["spec", "volumes", "-"]),
            value: volume,
        }
    })
}

/// How long the helper waits: the Restore's time limit (a volume not restored by then
/// is failed by the restore controller anyway), its default when the PodVolumeRestore
/// does not say or says something unreadable, and never less than a minute.
fn helper_timeout(limit: Option<&podvault_api::duration::Duration>) -> Duration {
    restore_timeout(limit)
        .unwrap_or(DEFAULT_RESTORE_TIMEOUT)
        .max(Duration::from_secs(60))
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The restore helper container for `volumes` of restore `uid`.
pub fn helper_container(
    pod: &Pod,
    uid: &str,
    volumes: &[&str],
    config: &HelperConfig,
) -> Container {
    Container {
        name: RESTORE_HELPER.to_string(),
        image: Some(config.image.clone()),
        command: Some(
            [
                "podvault",
                "restore-wait",
                "--restore-uid",
                uid,
                "--volume",
                &volumes.join(","),
                "--root",
                RESTORE_ROOT,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
        ]),
        volume_mounts: Some(
            volumes
                .iter()
                .map(|v| VolumeMount {
                    name: v.to_string(),
                    mount_path: format!("{RESTORE_ROOT}/{v}"),
                    ..VolumeMount::default()
                })
                .collect(),
        ),
        resources: Some(config.resources.clone()),
        security_context: Some(
            config
                .security_context
                .clone()
                .unwrap_or_else(|| derived_security_context(pod)),
        ),
        ..Container::default()
    }
}

/// The helper's security context when the ConfigMap sets none: the pod's own identity
/// (pod level, overridden by its first container: runAsUser, runAsGroup, runAsNonRoot), in a
/// context Pod Security "restricted" admits. Without a user from the pod, a numeric
/// non-root user is set, so `runAsNonRoot` is verifiable whatever user the image names.
pub fn derived_security_context(pod: &Pod) -> SecurityContext {
    let spec = pod.spec.as_ref();
    let pod_ctx = spec.and_then(|s| s.security_context.as_ref());
    let first = spec
        .and_then(|s| s.containers.first())
        .and_then(|c| c.security_context.as_ref());
    let user = first
        .and_then(|c| c.run_as_user)
        .or(pod_ctx.and_then(|p| p.run_as_user));
    let group = first
        .and_then(|c| c.run_as_group)
        .or(pod_ctx.and_then(|p| p.run_as_group));
    let non_root = first
        .and_then(|c| c.run_as_non_root)
        .or(pod_ctx.and_then(|p| p.run_as_non_root));
    let (run_as_user, run_as_non_root) = match user {
        // The pod runs as root on purpose: so may its helper (it is not "restricted").
        Some(0) => (Some(0), non_root.filter(|n| !n)),
        Some(u) => (Some(u), Some(true)),
        None => (Some(DEFAULT_USER), Some(true)),
    };
    SecurityContext {
        run_as_user,
        run_as_group: group,
        run_as_non_root,
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}
