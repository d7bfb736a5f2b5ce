//! Where the kubelet keeps a pod's volume on the node:
//! `<root>/<pod-uid>/volumes/<plugin>/<dir>`, where `<dir>` is the volume's name for
//! non-PVC volumes and the bound PersistentVolume's name for PVC volumes, with `/mount`
//! added for CSI volumes (including PVs provisioned by a CSI driver or migrated to one, and
//! inline CSI volumes). A generic ephemeral volume is its claim's (`<pod>-<volume>`) PV.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::PersistentVolume;

/// The kubelet's CSI plugin directory under `<pod-uid>/volumes/`.
pub const CSI_PLUGIN: &str = "kubernetes.io~csi";

/// The kubelet's pods directory on most distributions.
pub const DEFAULT_PODS_ROOT: &str = "/var/lib/kubelet/pods";
/// The setting that changes it, named in errors.
pub const ROOT_SETTING: &str = "--kubelet-pods-root (Helm value nodeAgent.kubeletPodsRoot)";

/// Why a volume's directory could not be found, or the pods root is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostPathError {
    /// The pods root is not a directory on this node.
    #[error(
        "the kubelet pods root {} does not exist on this node: set {ROOT_SETTING} \
         (RancherOS: /opt/rke/var/lib/kubelet/pods, TKGI: /var/vcap/data/kubelet/pods, \
         microk8s: /var/snap/microk8s/common/var/lib/kubelet/pods, k0s: \
         /var/lib/k0s/kubelet/pods)",
        root.display()
    )]
    NoRoot { root: PathBuf },
    /// None of the node's running pods has a directory under the root.
    #[error(
        "none of the {pods} running pods of this node has a directory under {}: set \
         {ROOT_SETTING} to where this node's kubelet keeps pods, and check that the \
         directory is mounted into the node agent",
        root.display()
    )]
    WrongRoot { root: PathBuf, pods: usize },
    /// The pod has no directory under the root.
    #[error("pod {uid} has no directory under {root}: is {ROOT_SETTING} right for this node?")]
    NoPod { uid: String, root: PathBuf },
    /// No plugin directory holds the volume.
    #[error("no directory {dir} under {volumes} (the volume is not mounted on this node?)")]
    NotFound { dir: String, volumes: PathBuf },
    /// Several do, so which one is the volume is unknown.
    #[error("{count} directories named {dir} under {volumes}: {paths}")]
    Ambiguous {
        dir: String,
        volumes: PathBuf,
        count: usize,
        paths: String,
    },
    /// The directory could not be read.
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
}

/// Whether a PersistentVolume is mounted through the kubelet's CSI plugin: a CSI volume, a
/// volume migrated to a CSI driver, or one provisioned by a driver in `csi_drivers` (the
/// cluster's CSIDriver objects).
pub fn is_csi(pv: &PersistentVolume, csi_drivers: &BTreeSet<String>) -> bool {
    let annotations = pv.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    pv.spec.as_ref().is_some_and(|s| s.csi.is_some())
        || annotation("pv.kubernetes.io/migrated-to").is_some_and(|d| !d.is_empty())
        || annotation("pv.kubernetes.io/provisioned-by").is_some_and(|d| csi_drivers.contains(d))
}

/// The name of the volume's directory under its plugin folder, and whether `/mount` follows.
pub fn volume_dir_name(
    volume: &str,
    pv: Option<&PersistentVolume>,
    csi_drivers: &BTreeSet<String>,
) -> (String, bool) {
    match pv {
        Some(pv) => (
            pv.metadata.name.clone().unwrap_or_default(),
            is_csi(pv, csi_drivers),
        ),
        None => (volume.to_string(), false),
    }
}

fn io(path: &Path, e: std::io::Error) -> HostPathError {
    HostPathError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Finds the one directory holding the volume: `<root>/<uid>/volumes/*/<dir>[/mount]`.
pub fn resolve(root: &Path, pod_uid: &str, dir: &str, csi: bool) -> Result<PathBuf, HostPathError> {
    let pod_dir = root.join(pod_uid);
    if !pod_dir.is_dir() {
        return Err(HostPathError::NoPod {
            uid: pod_uid.to_string(),
            root: root.to_path_buf(),
        });
    }
    let volumes = pod_dir.join("volumes");
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(&volumes) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(HostPathError::NotFound {
                dir: dir.to_string(),
                volumes,
            });
        }
        Err(e) => return Err(io(&volumes, e)),
    };
    for plugin in entries {
        let plugin = plugin.map_err(|e| io(&volumes, e))?;
        let candidate = plugin.path().join(dir);
        if candidate.is_dir() {
            // The CSI plugin keeps every volume's data in `mount`: claims' volumes and
            // inline CSI volumes (`spec.volumes[].csi`, by the volume's name) alike.
            let csi = csi || plugin.file_name() == CSI_PLUGIN;
            found.push(if csi {
                candidate.join("mount")
            } else {
                candidate
            });
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(HostPathError::NotFound {
            dir: dir.to_string(),
            volumes,
        }),
        count => Err(HostPathError::Ambiguous {
            dir: dir.to_string(),
            volumes,
            count,
            paths: found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// At start: the running pods of this node (their UIDs) must have directories under the
/// root, else the root is wrong for this distribution (RancherOS, TKGI, microk8s, k0s keep
/// it elsewhere) and the error says which setting to change.
pub fn check_root(root: &Path, running_pod_uids: &[String]) -> Result<(), HostPathError> {
    if !root.is_dir() {
        return Err(HostPathError::NoRoot {
            root: root.to_path_buf(),
        });
    }
    let missing = running_pod_uids
        .iter()
        .filter(|uid| !root.join(uid).is_dir())
        .count();
    if !running_pod_uids.is_empty() && missing == running_pod_uids.len() {
        return Err(HostPathError::WrongRoot {
            root: root.to_path_buf(),
            pods: running_pod_uids.len(),
        });
    }
    Ok(())
}
