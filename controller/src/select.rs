//! Which volumes of a pod a backup takes, and why the others are left out: a pure function
//! of the pod, its claims and their volumes, and the backup's mode.

use std::collections::{BTreeMap, BTreeSet};

use globset::Glob;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Volume};

use crate::crd::{PodRef, SkippedVolume};
pub use podvault_api::names::{EXCLUDE_PATHS, OPT_IN, OPT_OUT, TIMEOUT};

/// A volume to back up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    /// The volume's name in the pod.
    pub volume: String,
    /// The claim, for PVC volumes.
    pub claim: Option<String>,
    /// Globs of paths to leave out, relative to the volume.
    pub exclude_paths: Vec<String>,
}

/// The outcome for one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Volumes to back up, in the pod's order.
    pub volumes: Vec<Selected>,
    /// Volumes left out, with the reason.
    pub skipped: Vec<SkippedVolume>,
}

fn names_in(pod: &Pod, keys: &[&str]) -> BTreeSet<String> {
    let annotations = pod.metadata.annotations.as_ref();
    keys.iter()
        .filter_map(|k| annotations.and_then(|a| a.get(*k)))
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Why a volume of this type is never backed up, if it is such a type.
fn unsupported_type(v: &Volume) -> Option<&'static str> {
    if v.secret.is_some() {
        Some("Secret volumes hold API objects, restored with them, not file data")
    } else if v.config_map.is_some() {
        Some("ConfigMap volumes hold API objects, restored with them, not file data")
    } else if v.projected.is_some() {
        Some("projected volumes (such as the service-account token) are made by the kubelet")
    } else if v.downward_api.is_some() {
        Some("downwardAPI volumes are made by the kubelet")
    } else if v.host_path.is_some() {
        Some("hostPath volumes belong to the node, not the pod")
    } else {
        None
    }
}

/// The exclude-paths globs for `volume`, or the reason the annotation is unusable.
fn exclude_paths_for(pod: &Pod, volume: &str) -> Result<Vec<String>, String> {
    let Some(value) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXCLUDE_PATHS))
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (target, glob) = match entry.split_once(':') {
            Some((v, g)) => (Some(v.trim()), g.trim()),
            None => (None, entry),
        };
        if target.is_some_and(|t| t != volume) {
            continue;
        }
        if glob.starts_with('/') || glob.split('/').any(|p| p == "..") {
            return Err(format!(
                "{EXCLUDE_PATHS}: {glob:?} must be relative to the volume, without `..`"
            ));
        }
        Glob::new(glob).map_err(|e| format!("{EXCLUDE_PATHS}: {glob:?} is not a glob: {e}"))?;
        out.push(glob.to_string());
    }
    Ok(out)
}

/// Chooses the volumes of `pod` to back up. `claims` holds the pod namespace's claims by
/// name and `volumes` the persistent volumes by name; `default_to_fs` is the backup's
/// `defaultVolumesToFsBackup`.
pub(crate) fn select_volumes(
    pod: &Pod,
    claims: &BTreeMap<String, PersistentVolumeClaim>,
    volumes: &BTreeMap<String, PersistentVolume>,
    default_to_fs: bool,
) -> Selection {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let mut selection = Selection::default();
    let mut skip = |volume: &str, reason: String| {
        selection.skipped.push(SkippedVolume {
            namespace: namespace.clone(),
            pod: pod_name.clone(),
            volume: volume.to_string(),
            reason,
        })
    };
    let spec = pod.spec.as_ref();
    let pod_volumes: &[Volume] = spec.and_then(|s| s.volumes.as_deref()).unwrap_or(&[]);
    let opted_in = names_in(pod, &OPT_IN);
    let opted_out = names_in(pod, &OPT_OUT);
    for name in &opted_in {
        if !pod_volumes.iter().any(|v| &v.name == name) {
            skip(
                name,
                "the opt-in annotation names a volume the pod does not have".into(),
            );
        }
    }
    let candidates: Vec<&Volume> = pod_volumes
        .iter()
        .filter(|v| {
            if default_to_fs {
                !opted_out.contains(&v.name)
            } else {
                opted_in.contains(&v.name)
            }
        })
        .collect();
    let facts = PodFacts::of(pod);
    let mut selected = Vec::new();
    for v in candidates {
        let claim = match facts.volume_claim(v, claims, volumes) {
            Ok(claim) => claim,
            Err(reason) => {
                skip(&v.name, reason);
                continue;
            }
        };
        match exclude_paths_for(pod, &v.name) {
            Ok(exclude_paths) => selected.push(Selected {
                volume: v.name.clone(),
                claim,
                exclude_paths,
            }),
            Err(reason) => skip(&v.name, reason),
        }
    }
    selection.volumes = selected;
    selection
}

/// What decides whether a pod's volume can be backed up, besides the volume itself.
struct PodFacts<'a> {
    name: &'a str,
    phase: &'a str,
    /// Volumes some container mounts.
    mounted: BTreeSet<&'a str>,
    /// Volumes some container uses as a block device.
    devices: BTreeSet<&'a str>,
}

impl<'a> PodFacts<'a> {
    fn of(pod: &'a Pod) -> PodFacts<'a> {
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Unknown");
        let mut facts = PodFacts {
            name: pod.metadata.name.as_deref().unwrap_or_default(),
            phase,
            mounted: BTreeSet::new(),
            devices: BTreeSet::new(),
        };
        if let Some(spec) = &pod.spec {
            let containers = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten());
            for c in containers {
                let mounts = c.volume_mounts.iter().flatten();
                facts.mounted.extend(mounts.map(|m| m.name.as_str()));
                let devices = c.volume_devices.iter().flatten();
                facts.devices.extend(devices.map(|d| d.name.as_str()));
            }
        }
        facts
    }

    /// The claim a volume the backup asks for lives on (None for a pod-local volume), or
    /// why it cannot be backed up.
    fn volume_claim(
        &self,
        v: &Volume,
        claims: &BTreeMap<String, PersistentVolumeClaim>,
        volumes: &BTreeMap<String, PersistentVolume>,
    ) -> Result<Option<String>, String> {
        if let Some(reason) = unsupported_type(v) {
            return Err(reason.into());
        }
        if self.phase != "Running" {
            return Err(format!("the pod is not running (phase {})", self.phase));
        }
        if self.devices.contains(v.name.as_str()) {
            return Err("block-mode volumes have no file system to back up".into());
        }
        if !self.mounted.contains(v.name.as_str()) {
            return Err("no container of the pod mounts it".into());
        }
        // A generic ephemeral volume lives on the claim `<pod>-<volume>` that Kubernetes
        // makes for it, and is found like any claim's volume.
        let claim = match (&v.persistent_volume_claim, &v.ephemeral) {
            (Some(c), _) => c.claim_name.clone(),
            (None, Some(_)) => format!("{}-{}", self.name, v.name),
            (None, None) => return Ok(None),
        };
        let Some(pvc) = claims.get(&claim) else {
            return Err(format!("its claim {claim} does not exist"));
        };
        let pvc_spec = pvc.spec.as_ref();
        if pvc_spec.and_then(|s| s.volume_mode.as_deref()) == Some("Block") {
            return Err("block-mode volumes have no file system to back up".into());
        }
        let Some(pv_name) = pvc_spec.and_then(|s| s.volume_name.as_deref()) else {
            return Err(format!("its claim {claim} is not bound"));
        };
        if volumes
            .get(pv_name)
            .and_then(|pv| pv.spec.as_ref())
            .is_some_and(|s| s.host_path.is_some())
        {
            return Err(format!(
                "its claim {claim} is bound to hostPath volume {pv_name}"
            ));
        }
        Ok(Some(claim))
    }
}

/// Keeps one backup of each claim mounted by several pods (a ReadWriteMany claim): the
/// first pod in `selections` takes it, the others record where it went.
pub(crate) fn back_up_claims_once(selections: &mut [(PodRef, Selection)]) {
    let mut taken: BTreeMap<(String, String), String> = BTreeMap::new();
    for (pod, selection) in selections.iter_mut() {
        let mut kept = Vec::new();
        for v in std::mem::take(&mut selection.volumes) {
            let Some(claim) = v.claim.clone() else {
                kept.push(v);
                continue;
            };
            let key = (pod.namespace.clone(), claim.clone());
            if let Some(first) = taken.get(&key) {
                selection.skipped.push(SkippedVolume {
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    volume: v.volume.clone(),
                    reason: format!("claim {claim} is backed up through pod {first}"),
                });
            } else {
                taken.insert(key, pod.name.clone());
                kept.push(v);
            }
        }
        selection.volumes = kept;
    }
}

#[cfg(test)]
mod tests {
    // Volume selection on real pod, claim and volume manifests.

    use std::collections::BTreeMap;

    use crate::select::{Selection, back_up_claims_once, select_volumes};
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
    use podvault_api::crd::PodRef;

    fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
        podvault_testkit::fixture(env!("CARGO_MANIFEST_DIR"), name)
    }

    fn world() -> (
        Pod,
        BTreeMap<String, PersistentVolumeClaim>,
        BTreeMap<String, PersistentVolume>,
    ) {
        let claims: Vec<PersistentVolumeClaim> = fixture("claims.json");
        let volumes: Vec<PersistentVolume> = fixture("volumes.json");
        (
            fixture("pod-db.json"),
            claims
                .into_iter()
                .map(|c| (c.metadata.name.clone().unwrap_or_default(), c))
                .collect(),
            volumes
                .into_iter()
                .map(|v| (v.metadata.name.clone().unwrap_or_default(), v))
                .collect(),
        )
    }

    fn reasons(selection: &Selection) -> BTreeMap<String, String> {
        selection
            .skipped
            .iter()
            .map(|s| (s.volume.clone(), s.reason.clone()))
            .collect()
    }

    fn chosen(selection: &Selection) -> Vec<&str> {
        selection
            .volumes
            .iter()
            .map(|v| v.volume.as_str())
            .collect()
    }

    #[test]
    fn opt_in_by_velero_annotation_takes_named_volumes_and_says_why_others_are_left() {
        let (pod, claims, volumes) = world();
        let s = select_volumes(&pod, &claims, &volumes, false);
        assert_eq!(chosen(&s), ["data", "scratch"]);
        assert_eq!(s.volumes[0].claim.as_deref(), Some("pgdata"));
        assert_eq!(s.volumes[0].exclude_paths, ["pg_wal/*.tmp", "*.lock"]);
        assert_eq!(s.volumes[1].exclude_paths, ["cache/**", "*.lock"]);
        let r = reasons(&s);
        assert!(r["config"].contains("ConfigMap"), "{r:?}");
        assert!(r["missing"].contains("does not have"), "{r:?}");
        assert!(
            !r.contains_key("unused"),
            "not asked for, not reported: {r:?}"
        );
        assert_eq!(s.skipped[0].namespace, "shop");
        assert_eq!(s.skipped[0].pod, "db-7d9c6b5f4-x2k8q");
    }

    #[test]
    fn opt_out_mode_takes_every_file_system_volume_but_the_excluded_ones() {
        let (mut pod, claims, volumes) = world();
        let annotations = pod
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        annotations.remove("backup.velero.io/backup-volumes");
        annotations.insert(
            "backup.podvault.io/backup-volumes-excludes".into(),
            "scratch".into(),
        );
        let s = select_volumes(&pod, &claims, &volumes, true);
        assert_eq!(chosen(&s), ["data"]);
        let r = reasons(&s);
        assert!(r["unused"].contains("no container"), "{r:?}");
        assert!(r["node-logs"].contains("hostPath"), "{r:?}");
        assert!(r["kube-api-access-9xk2p"].contains("projected"), "{r:?}");
        assert!(!r.contains_key("scratch"), "opted out: {r:?}");
    }

    #[test]
    fn block_mode_host_path_claims_and_pods_not_running_are_skipped_with_reasons() {
        let (mut pod, claims, volumes) = world();
        let spec = pod.spec.as_mut().expect("spec");
        let vols = spec.volumes.as_mut().expect("volumes");
        for (name, claim) in [("raw", "raw"), ("nodelocal", "on-node"), ("gone", "nope")] {
            vols.push(
                serde_json::from_value(serde_json::json!({
                    "name": name, "persistentVolumeClaim": {"claimName": claim}
                }))
                .expect("volume"),
            );
            spec.containers[0]
                .volume_mounts
                .get_or_insert_with(Vec::new)
                .push(
                    serde_json::from_value(
                        serde_json::json!({"name": name, "mountPath": format!("/{name}")}),
                    )
                    .expect("mount"),
                );
        }
        let s = select_volumes(&pod, &claims, &volumes, true);
        let r = reasons(&s);
        assert!(r["raw"].contains("block-mode"), "{r:?}");
        assert!(
            r["nodelocal"].contains("hostPath volume local-hostpath-pv"),
            "{r:?}"
        );
        assert!(r["gone"].contains("claim nope does not exist"), "{r:?}");

        pod.status.as_mut().expect("status").phase = Some("Pending".into());
        let s = select_volumes(&pod, &claims, &volumes, true);
        assert!(s.volumes.is_empty());
        assert!(reasons(&s)["data"].contains("not running (phase Pending)"));
    }

    #[test]
    fn a_bad_exclude_glob_leaves_the_volume_out_with_the_reason() {
        let (mut pod, claims, volumes) = world();
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                "backup.podvault.io/exclude-paths".into(),
                "data:[oops, scratch:../x".into(),
            );
        let s = select_volumes(&pod, &claims, &volumes, false);
        let r = reasons(&s);
        assert!(r["data"].contains("is not a glob"), "{r:?}");
        assert!(r["scratch"].contains("relative to the volume"), "{r:?}");
    }

    #[test]
    fn a_shared_claim_is_backed_up_once() {
        let (pod, claims, volumes) = world();
        let mut other = pod.clone();
        other.metadata.name = Some("db-7d9c6b5f4-zz9k1".into());
        let mut selections: Vec<(PodRef, Selection)> = [pod, other]
            .iter()
            .map(|p| {
                (
                    PodRef {
                        namespace: "shop".into(),
                        name: p.metadata.name.clone().unwrap_or_default(),
                        uid: String::new(),
                    },
                    select_volumes(p, &claims, &volumes, false),
                )
            })
            .collect();
        back_up_claims_once(&mut selections);
        assert_eq!(chosen(&selections[0].1), ["data", "scratch"]);
        assert_eq!(
            chosen(&selections[1].1),
            ["scratch"],
            "emptyDirs are each pod's own"
        );
        assert!(
            reasons(&selections[1].1)["data"].contains("backed up through pod db-7d9c6b5f4-x2k8q")
        );
    }

    #[test]
    fn generic_ephemeral_and_inline_csi_volumes_are_backed_up_and_opted_out_like_others() {
        let (pod, mut claims, volumes) = world();
        let mut pod = serde_json::to_value(pod).expect("json");
        let spec = &mut pod["spec"];
        spec["volumes"].as_array_mut().expect("volumes").extend([
            serde_json::json!({"name": "work", "ephemeral": {"volumeClaimTemplate": {"spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}}),
            serde_json::json!({"name": "inline", "csi": {"driver": "secrets-store.csi.k8s.io"}}),
        ]);
        spec["containers"][0]["volumeMounts"]
            .as_array_mut()
            .expect("mounts")
            .extend([
                serde_json::json!({"name": "work", "mountPath": "/work"}),
                serde_json::json!({"name": "inline", "mountPath": "/inline"}),
            ]);
        let mut pod: Pod = serde_json::from_value(pod).expect("pod");
        // Kubernetes names the ephemeral volume's claim `<pod>-<volume>`.
        let mut work: PersistentVolumeClaim = claims["pgdata"].clone();
        work.metadata.name = Some("db-7d9c6b5f4-x2k8q-work".into());
        claims.insert("db-7d9c6b5f4-x2k8q-work".into(), work);
        let s = select_volumes(&pod, &claims, &volumes, true);
        assert_eq!(chosen(&s), ["data", "scratch", "work", "inline"]);
        assert_eq!(
            s.volumes[2].claim.as_deref(),
            Some("db-7d9c6b5f4-x2k8q-work")
        );
        assert_eq!(s.volumes[3].claim, None);
        // Opted out by name like any other volume.
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                "backup.podvault.io/backup-volumes-excludes".into(),
                "work,inline".into(),
            );
        assert_eq!(
            chosen(&select_volumes(&pod, &claims, &volumes, true)),
            ["data", "scratch"]
        );
        // Opted in by name; an ephemeral claim not made yet is a reason, not a failure.
        let annotations = pod
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        annotations.clear();
        annotations.insert(
            "backup.podvault.io/backup-volumes".into(),
            "work,inline".into(),
        );
        assert_eq!(
            chosen(&select_volumes(&pod, &claims, &volumes, false)),
            ["work", "inline"]
        );
        claims.remove("db-7d9c6b5f4-x2k8q-work");
        let s = select_volumes(&pod, &claims, &volumes, false);
        assert_eq!(chosen(&s), ["inline"]);
        assert!(reasons(&s)["work"].contains("db-7d9c6b5f4-x2k8q-work does not exist"));
    }
}
