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
pub(crate) fn is_csi(pv: &PersistentVolume, csi_drivers: &BTreeSet<String>) -> bool {
    let annotations = pv.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    pv.spec.as_ref().is_some_and(|s| s.csi.is_some())
        || annotation("pv.kubernetes.io/migrated-to").is_some_and(|d| !d.is_empty())
        || annotation("pv.kubernetes.io/provisioned-by").is_some_and(|d| csi_drivers.contains(d))
}

/// The name of the volume's directory under its plugin folder, and whether `/mount` follows.
pub(crate) fn volume_dir_name(
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
pub(crate) fn check_root(root: &Path, running_pod_uids: &[String]) -> Result<(), HostPathError> {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fs;

    use k8s_openapi::api::core::v1::PersistentVolume;

    use super::*;

    fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
        podvault_testkit::fixture(env!("CARGO_MANIFEST_DIR"), name)
    }

    fn pv(name: &str) -> PersistentVolume {
        let all: Vec<PersistentVolume> = fixture("volumes.json");
        all.into_iter()
            .find(|v| v.metadata.name.as_deref() == Some(name))
            .expect("volume")
    }

    #[test]
    fn volume_directories_are_found_as_the_kubelet_lays_them_out() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("pods");
        let uid = "5b2e1c8a-9f3d-4e6b-8a1c-2d7e9f0b3c4d";
        let vols = root.join(uid).join("volumes");
        for dir in [
            "kubernetes.io~empty-dir/scratch",
            "kubernetes.io~csi/pvc-1a2b3c4d/mount",
            "kubernetes.io~nfs/pvc-5e6f7a8b",
            "kubernetes.io~empty-dir/twice",
            "kubernetes.io~secret/twice",
            // An inline CSI volume, by the volume's name; an ephemeral volume's PV.
            "kubernetes.io~csi/inline/mount",
            "kubernetes.io~csi/pvc-ephemeral/mount",
        ] {
            fs::create_dir_all(vols.join(dir)).expect("mkdir");
        }
        let drivers = BTreeSet::from(["ebs.csi.aws.com".to_string()]);
        let none = |v: &str| volume_dir_name(v, None, &drivers);
        let (dir, csi) = none("scratch");
        assert_eq!(
            resolve(&root, uid, &dir, csi).expect("emptyDir"),
            vols.join("kubernetes.io~empty-dir/scratch")
        );
        let csi_pv = pv("pvc-1a2b3c4d");
        let (dir, csi) = volume_dir_name("data", Some(&csi_pv), &drivers);
        assert!(csi);
        assert_eq!(
            resolve(&root, uid, &dir, csi).expect("CSI"),
            vols.join("kubernetes.io~csi/pvc-1a2b3c4d/mount")
        );
        let nfs = pv("pvc-5e6f7a8b");
        let (dir, csi) = volume_dir_name("shared", Some(&nfs), &drivers);
        assert!(!csi);
        assert_eq!(
            resolve(&root, uid, &dir, csi).expect("nfs"),
            vols.join("kubernetes.io~nfs/pvc-5e6f7a8b")
        );
        // An inline CSI volume (`spec.volumes[].csi`) keeps its data in `mount` too.
        let (dir, csi) = none("inline");
        assert!(!csi);
        assert_eq!(
            resolve(&root, uid, &dir, csi).expect("inline CSI"),
            vols.join("kubernetes.io~csi/inline/mount")
        );
        // A generic ephemeral volume is its claim's PV, provisioned by a CSI driver.
        let mut ephemeral = pv("pvc-1a2b3c4d");
        ephemeral.metadata.name = Some("pvc-ephemeral".into());
        ephemeral.spec.get_or_insert_with(Default::default).csi = Some(
            serde_json::from_value(
                serde_json::json!({"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1"}),
            )
            .expect("csi"),
        );
        let (dir, csi) = volume_dir_name("work", Some(&ephemeral), &drivers);
        assert_eq!(
            resolve(&root, uid, &dir, csi).expect("ephemeral"),
            vols.join("kubernetes.io~csi/pvc-ephemeral/mount")
        );
        let (dir, csi) = none("twice");
        assert!(matches!(
            resolve(&root, uid, &dir, csi),
            Err(HostPathError::Ambiguous { count: 2, .. })
        ));
        let (dir, csi) = none("absent");
        assert!(matches!(
            resolve(&root, uid, &dir, csi),
            Err(HostPathError::NotFound { .. })
        ));
        let err = resolve(&root, "other-uid", "x", false).expect_err("no pod");
        assert!(err.to_string().contains("--kubelet-pods-root"), "{err}");

        // In-tree volumes migrated to CSI, and volumes provisioned by a CSI driver, mount as CSI.
        let mut migrated = nfs.clone();
        migrated
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                "pv.kubernetes.io/migrated-to".into(),
                "nfs.csi.k8s.io".into(),
            );
        assert!(is_csi(&migrated, &drivers));
        let mut provisioned = nfs;
        provisioned
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                "pv.kubernetes.io/provisioned-by".into(),
                "ebs.csi.aws.com".into(),
            );
        assert!(is_csi(&provisioned, &drivers));
        assert!(!is_csi(&provisioned, &BTreeSet::new()));

        assert!(check_root(&root, &[uid.to_string(), "gone".into()]).is_ok());
        let err = check_root(&root, &["a".into(), "b".into()])
            .expect_err("wrong root")
            .to_string();
        assert!(
            err.contains("none of the 2 running pods") && err.contains("nodeAgent.kubeletPodsRoot"),
            "{err}"
        );
        let err = check_root(&tmp.path().join("nope"), &[])
            .expect_err("missing root")
            .to_string();
        assert!(err.contains("microk8s"), "{err}");
    }
}
