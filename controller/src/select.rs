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
pub fn select_volumes(
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
pub fn back_up_claims_once(selections: &mut [(PodRef, Selection)]) {
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
