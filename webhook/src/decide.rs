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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use podvault_api::crd::{Phase, PodVolumeRestore};
    use podvault_testkit::merge_json;
    use serde_json::{Value, json};

    use super::*;
    use crate::config::{HelperConfig, HelperSettings};

    fn pod(extra: Value) -> Pod {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "db-7d9c6b5f4-", "labels": {"pod-template-hash": "7d9c6b5f4"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                             "name": "db-7d9c6b5f4", "uid": "rs", "controller": true}]},
            "spec": {"containers": [{"name": "db", "image": "postgres:16"}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "pgdata"}},
                                 {"name": "scratch", "emptyDir": {}},
                                 {"name": "token", "projected": {"sources": []}}]}
        });
        merge_json(&mut p, extra);
        serde_json::from_value(p).expect("pod")
    }

    fn pvr(volume: &str, target: Value, status: Value) -> PodVolumeRestore {
        serde_json::from_value(json!({
            "apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeRestore",
            "metadata": {"name": format!("r-{volume}"), "namespace": "podvault"},
            "spec": {"restoreName": "again", "restoreUid": "r-uid", "targetNamespace": "shop",
                     "target": target, "volume": volume, "snapshotID": "s", "repository": "shop"},
            "status": status
        }))
        .expect("pvr")
    }

    fn pending() -> Vec<PodVolumeRestore> {
        vec![
            pvr("data", json!({"claim": "pgdata"}), json!(null)),
            pvr(
                "scratch",
                json!({"owner": "Deployment/db"}),
                json!({"phase": "New"}),
            ),
            // Another workload's volume, and one already being restored: not for this pod.
            pvr("scratch", json!({"owner": "StatefulSet/db"}), json!(null)),
            pvr(
                "logs",
                json!({"claim": "pgdata"}),
                json!({"phase": "InProgress"}),
            ),
        ]
    }

    fn config() -> HelperConfig {
        HelperConfig::defaults("0.1.0")
    }

    fn apply(pod: &Pod, patch: &json_patch::Patch) -> Pod {
        let mut doc = serde_json::to_value(pod).expect("json");
        json_patch::patch(&mut doc, patch).expect("applies");
        serde_json::from_value(doc).expect("still a pod")
    }

    #[test]
    fn a_deployment_pod_gets_the_helper_first_for_its_claim_and_its_scratch_volume() {
        let p = pod(json!({"spec": {"initContainers": [{"name": "migrate", "image": "m"}]}}));
        let d = decide(&p, "shop", "podvault", &pending(), &config());
        assert_eq!(d.restore_uid.as_deref(), Some("r-uid"));
        assert_eq!(d.volumes, ["data", "scratch"]);
        let typed = d.patch.expect("patch");
        let patch = serde_json::to_value(&typed).expect("json");
        assert_eq!(patch[0]["op"], "add");
        assert_eq!(patch[0]["path"], "/spec/initContainers/0");
        assert_eq!(
            patch[0]["value"],
            json!({
                "name": "restore-wait",
                "image": "ghcr.io/podvault/podvault:0.1.0",
                "command": ["podvault", "restore-wait", "--restore-uid", "r-uid",
                            "--volume", "data,scratch", "--root", "/restores",
                            "--timeout", "14400", "--markers", "/restores/.markers"],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NAMESPACE",
                     "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
                ],
                "volumeMounts": [{"name": "data", "mountPath": "/restores/data"},
                                 {"name": "scratch", "mountPath": "/restores/scratch"},
                                 {"name": "podvault-restore-markers",
                                  "mountPath": "/restores/.markers", "readOnly": true}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"cpu": "100m", "memory": "128Mi"}},
                "securityContext": {
                    "runAsUser": 65532, "runAsNonRoot": true, "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
                }
            })
        );
        // The markers' own volume, which the node agent writes and the helper reads whatever
        // the restored volumes' owners and modes.
        assert_eq!(
            patch[1],
            json!({"op": "add", "path": "/spec/volumes/-",
                   "value": {"name": "podvault-restore-markers", "emptyDir": {"sizeLimit": "1Mi"}}})
        );
        // Applied, the helper runs before the pod's own init container; applying the decision
        // again adds nothing (reinvocation, retries).
        let patched = apply(&p, &typed);
        let names: Vec<String> = patched
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["restore-wait", "migrate"]);
        let again = decide(&patched, "shop", "podvault", &pending(), &config());
        assert_eq!(again.patch, None);
        assert_eq!(again.skipped, Some("helper already present"));
    }

    #[test]
    fn a_pod_without_init_containers_gets_the_list_created() {
        let d = decide(&pod(json!({})), "shop", "podvault", &pending(), &config());
        let typed = d.patch.expect("patch");
        let patch = serde_json::to_value(&typed).expect("json");
        assert_eq!(patch[0]["path"], "/spec/initContainers");
        assert_eq!(patch[0]["value"][0]["name"], "restore-wait");
        let patched = apply(&pod(json!({})), &typed);
        assert_eq!(
            patched
                .spec
                .and_then(|s| s.init_containers)
                .map(|c| c.len()),
            Some(1)
        );
    }

    #[test]
    fn statefulset_and_bare_pods_are_matched_by_owner_and_by_name() {
        let sts = pod(
            json!({"metadata": {"name": "db-0", "generateName": null, "labels": null,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                                 "uid": "s", "controller": true}]},
            "spec": {"volumes": [{"name": "scratch", "emptyDir": {}}]}}),
        );
        let d = decide(&sts, "shop", "podvault", &pending(), &config());
        assert_eq!(d.volumes, ["scratch"]);
        let bare = pod(json!({"metadata": {"name": "tool", "generateName": null,
            "ownerReferences": null}}));
        let by_name = vec![pvr("scratch", json!({"podName": "tool"}), json!(null))];
        assert_eq!(
            decide(&bare, "shop", "podvault", &by_name, &config()).volumes,
            ["scratch"]
        );
        let other = pod(json!({"metadata": {"name": "other", "generateName": null,
            "ownerReferences": null}}));
        assert_eq!(
            decide(&other, "shop", "podvault", &by_name, &config()).skipped,
            Some("no pending restore for this pod")
        );
    }

    #[test]
    fn protected_pods_are_never_touched() {
        let p = pod(json!({}));
        for (ns, why) in [
            ("kube-system", "protected namespace"),
            ("podvault", "protected namespace"),
            ("other", "no pending restore for this pod"),
        ] {
            let d = decide(&p, ns, "podvault", &pending(), &config());
            assert_eq!((d.patch, d.skipped), (None, Some(why)), "{ns}");
        }
        let mirror =
            pod(json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "x"}}}));
        assert_eq!(
            decide(&mirror, "shop", "podvault", &pending(), &config()).skipped,
            Some("mirror pod")
        );
    }

    #[test]
    fn the_helper_runs_as_the_pod_does_or_restricted() {
        let ctx = |extra: Value| {
            serde_json::to_value(derived_security_context(&pod(extra))).expect("json")
        };
        let restricted = json!({"allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}});
        let with = |ids: Value| {
            let mut v = restricted.clone();
            merge_json(&mut v, ids);
            v
        };
        // PSA "restricted", no settings (#8229), and an image whose USER is a name (#9985):
        // a numeric non-root user makes runAsNonRoot verifiable.
        assert_eq!(
            ctx(json!({})),
            with(json!({"runAsUser": 65532, "runAsNonRoot": true}))
        );
        // runAsNonRoot with a pod-level user and group (#2437): the helper takes them.
        assert_eq!(
            ctx(
                json!({"spec": {"securityContext": {"runAsNonRoot": true, "runAsUser": 1000,
                                                     "runAsGroup": 3000}}})
            ),
            with(json!({"runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true}))
        );
        // The first container's settings win over the pod's.
        assert_eq!(
            ctx(json!({"spec": {"securityContext": {"runAsUser": 1000},
                "containers": [{"name": "db", "image": "p",
                                "securityContext": {"runAsUser": 999, "runAsGroup": 999}}]}})),
            with(json!({"runAsUser": 999, "runAsGroup": 999, "runAsNonRoot": true}))
        );
        // A pod that runs as root on purpose: its helper may too.
        assert_eq!(
            ctx(json!({"spec": {"securityContext": {"runAsUser": 0}}})),
            with(json!({"runAsUser": 0}))
        );
    }

    #[test]
    fn the_cache_keeps_restores_not_started_and_the_first_labeled_configmap() {
        use crate::watch::{helper_settings, pending};
        use k8s_openapi::api::core::v1::ConfigMap;
        let mut started = pvr("data", json!({"claim": "pgdata"}), json!(null));
        started.spec.pod = Some(Default::default());
        let kept = pending(vec![
            pvr("a", json!({"claim": "x"}), json!(null)),
            pvr("b", json!({"claim": "x"}), json!({"phase": "New"})),
            pvr("c", json!({"claim": "x"}), json!({"phase": "InProgress"})),
            pvr("d", json!({"claim": "x"}), json!({"phase": "Completed"})),
            started,
        ]);
        let volumes: Vec<_> = kept.iter().map(|p| p.spec.volume.as_str()).collect();
        assert_eq!(volumes, ["a", "b"]);

        let map = |name: &str, labels: Value, data: Value| -> ConfigMap {
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "labels": labels}, "data": data}))
            .expect("configmap")
        };
        let velero = json!({"velero.io/plugin-config": "", "velero.io/pod-volume-restore": "RestoreItemAction"});
        let maps = [
            map("unrelated", json!({"app": "x"}), json!({"image": "evil"})),
            map("z-helper", velero.clone(), json!({"image": "second"})),
            map(
                "a-helper",
                velero,
                json!({"image": "first", "cpuLimit": "x"}),
            ),
        ];
        let (HelperSettings { config, warnings }, source) = helper_settings(maps.iter(), "0.1.0");
        assert_eq!(config.image, "first:0.1.0");
        assert_eq!(warnings.len(), 1);
        assert_eq!(
            source.and_then(|m| m.metadata.name).as_deref(),
            Some("a-helper")
        );
        let (HelperSettings { config, warnings }, source) =
            helper_settings(maps[..1].iter(), "0.1.0");
        assert_eq!(config, HelperConfig::defaults("0.1.0"));
        assert!(warnings.is_empty() && source.is_none());
    }

    #[test]
    fn the_request_namespace_decides_whether_the_pod_names_one_or_not() {
        let unplaced = pod(json!({}));
        let placed = pod(json!({"metadata": {"namespace": "shop"}}));
        let elsewhere = pod(json!({"metadata": {"namespace": "other"}}));
        for p in [&unplaced, &placed, &elsewhere] {
            let d = decide(p, "shop", "podvault", &pending(), &config());
            assert_eq!(d.volumes, ["data", "scratch"], "{:?}", p.metadata.namespace);
        }
        // Nothing waiting (all taken or running): skipped before anything is matched.
        let taken: Vec<PodVolumeRestore> = pending()
            .into_iter()
            .filter(|p| p.status.as_ref().is_some_and(|s| s.phase != Phase::New))
            .collect();
        let d = decide(&placed, "shop", "podvault", &taken, &config());
        assert!(d.patch.is_none());
        assert_eq!(d.skipped, Some("no pending restore for this pod"));
    }

    #[test]
    fn the_helper_waits_as_long_as_the_restore_and_reads_markers_where_it_can() {
        let go = |text: &str| podvault_api::duration::typed(text).expect(text);
        let mut timed = pending();
        for p in &mut timed {
            p.spec.timeout = Some(go("30m"));
        }
        timed[0].spec.timeout = Some(go("45m"));
        let command = |d: &crate::decide::Decision| {
            let patch = serde_json::to_value(d.patch.as_ref().expect("patch")).expect("json");
            // The whole list of init containers, or the helper put first.
            let added = &patch[0]["value"];
            added.get(0).unwrap_or(added)["command"].clone()
        };
        let timeout = |pending: &[PodVolumeRestore]| {
            let c = command(&decide(
                &pod(json!({})),
                "shop",
                "podvault",
                pending,
                &config(),
            ));
            let args = c.as_array().expect("command").clone();
            let at = args
                .iter()
                .position(|a| a == "--timeout")
                .expect("--timeout");
            args[at + 1].clone()
        };
        // The longest limit of the restore's volumes, in seconds.
        assert_eq!(timeout(&timed), "2700");
        // A limit of zero gets the default, and none is less than a minute.
        timed[0].spec.timeout = Some(go("0s"));
        timed[1].spec.timeout = Some(go("1s"));
        assert_eq!(timeout(&timed), "14400");
        // A pod that already has a volume of the markers' name keeps it; the helper then
        // reads the markers inside the volumes.
        let own = pod(json!({"spec": {"volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "pgdata"}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "podvault-restore-markers", "emptyDir": {}}]}}));
        let d = decide(&own, "shop", "podvault", &pending(), &config());
        let patch = serde_json::to_value(d.patch.as_ref().expect("patch")).expect("json");
        assert_eq!(patch.as_array().map(Vec::len), Some(1), "{patch}");
        assert!(!command(&d).to_string().contains("--markers"));
        let patched = apply(&own, d.patch.as_ref().expect("patch"));
        assert_eq!(
            patched.spec.and_then(|s| s.volumes).map(|v| v.len()),
            Some(3)
        );
        // A pod with no volumes at all gets the list created.
        let bare = pod(json!({"spec": {"volumes": null}}));
        let d = decide(&bare, "shop", "podvault", &pending(), &config());
        if let Some(patch) = &d.patch {
            let patched = apply(&bare, patch);
            let names: Vec<String> = patched
                .spec
                .and_then(|s| s.volumes)
                .unwrap_or_default()
                .into_iter()
                .map(|v| v.name)
                .collect();
            assert_eq!(names, ["podvault-restore-markers"]);
        }
    }
}
