//! Host-path resolution on a kubelet-style directory tree, parent lineage and phase
//! aggregation, on real manifests.

use std::collections::BTreeSet;
use std::fs;

use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use podvault_controller::aggregate::aggregate;
use podvault_controller::crd::{Phase, PodVolumeStatus, Progress};
use podvault_controller::hostpath::{HostPathError, check_root, is_csi, resolve, volume_dir_name};
use podvault_controller::lineage::{lineage, owner};

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

fn status(phase: Phase, done: u64) -> PodVolumeStatus {
    PodVolumeStatus {
        phase,
        progress: Progress {
            total_bytes: 100,
            bytes_done: done,
            bytes_new: done / 2,
        },
        ..PodVolumeStatus::default()
    }
}

#[test]
fn phases_aggregate_like_velero() {
    let ok = status(Phase::Completed, 100);
    let bad = status(Phase::Failed, 10);
    let running = status(Phase::InProgress, 50);
    let cancel = status(Phase::Canceled, 20);
    let t = aggregate(&[Some(&ok), Some(&ok)], 3, false);
    assert_eq!(
        (t.phase, t.volumes.completed, t.volumes.skipped),
        (Phase::Completed, 2, 3)
    );
    assert_eq!((t.total_bytes, t.bytes_done, t.bytes_new), (200, 200, 100));
    assert_eq!(
        aggregate(&[Some(&ok), Some(&bad)], 0, false).phase,
        Phase::PartiallyFailed
    );
    assert_eq!(aggregate(&[Some(&bad)], 0, false).phase, Phase::Failed);
    assert_eq!(
        aggregate(&[Some(&ok), Some(&running)], 0, false).phase,
        Phase::InProgress
    );
    assert_eq!(
        aggregate(&[Some(&ok), None], 0, false).phase,
        Phase::InProgress
    );
    assert_eq!(aggregate(&[Some(&cancel)], 0, true).phase, Phase::Canceled);
    assert_eq!(
        aggregate(&[Some(&ok), Some(&cancel)], 0, true).phase,
        Phase::PartiallyFailed
    );
    assert_eq!(aggregate(&[], 2, false).phase, Phase::Completed);
}
