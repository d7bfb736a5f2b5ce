//! The node agent's work on a kubelet-style directory tree, into a real S3 server.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use podvault_controller::agent::{
    VolumeBackup, WaitOutcome, back_up_volume, restore_volume, wait_for_markers,
};
use podvault_controller::crd::Phase;
use podvault_controller::hostpath::resolve;
use podvault_store::Repository;
use podvault_testkit::{Place, S3Server, fast_init, pseudo_random};

fn make_volume(root: &Path, uid: &str) -> std::path::PathBuf {
    let dir = root
        .join(uid)
        .join("volumes/kubernetes.io~empty-dir/scratch");
    fs::create_dir_all(dir.join("cache")).expect("mkdir");
    fs::create_dir_all(dir.join("db")).expect("mkdir");
    fs::write(dir.join("db/table"), pseudo_random(1, 12 << 20)).expect("write");
    fs::write(dir.join("notes.txt"), b"hello").expect("write");
    fs::write(dir.join("cache/junk"), pseudo_random(2, 1 << 20)).expect("write");
    dir
}

fn job(dir: &Path) -> VolumeBackup {
    VolumeBackup {
        dir: dir.to_path_buf(),
        lineage: "workload/shop/Deployment/db/scratch".into(),
        exclude: vec!["cache".into()],
        tags: vec!["backup=nightly".into()],
        host: "worker-1".into(),
        timeout: Duration::from_secs(600),
        report_every: Duration::from_millis(1),
    }
}

#[test]
fn a_volume_is_backed_up_incrementally_across_pods_canceled_failed_and_restored() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = Arc::new(S3Server::start());
    let place = Place::s3(&server);
    let repo = Repository::init(place.backend.clone(), b"pw", &fast_init()).expect("init");
    let root = tmp.path().join("pods");
    make_volume(&root, "uid-1");
    let dir = resolve(&root, "uid-1", "scratch", false).expect("resolve");
    let never = Arc::new(AtomicBool::new(false));

    let mut reports = 0;
    let mut new_seen = 0;
    let first = back_up_volume(&repo, &job(&dir), &never, |p| {
        reports += 1;
        assert!(p.bytes_done <= p.total_bytes);
        assert!(p.bytes_new >= new_seen, "new bytes only grow");
        new_seen = p.bytes_new;
    });
    assert_eq!(first.phase, Phase::Completed, "{first:?}");
    assert!(reports >= 1, "progress was reported");
    assert!(new_seen <= first.progress.bytes_new);
    assert_eq!(first.progress.total_bytes, (12 << 20) + 5, "cache left out");
    assert!(first.progress.bytes_new >= 12 << 20);
    let first_id = first.snapshot_id.clone().expect("snapshot");

    // The Deployment re-creates the pod: new uid, same data; the backup continues the
    // lineage and stores nothing new.
    make_volume(&root, "uid-2");
    let dir2 = resolve(&root, "uid-2", "scratch", false).expect("resolve");
    let second = back_up_volume(&repo, &job(&dir2), &never, |_| {});
    assert_eq!(second.phase, Phase::Completed, "{second:?}");
    assert_eq!(second.progress.bytes_new, 0, "{second:?}");
    let (_, snap) = repo
        .find_snapshot(second.snapshot_id.as_deref().expect("id"))
        .expect("snapshot");
    assert_eq!(snap.parent.map(|p| p.to_hex()), Some(first_id.clone()));
    assert!(snap.tags.contains(&"backup=nightly".to_string()));

    // Canceled: no snapshot.
    let before = repo.snapshots().expect("list").len();
    let canceled = back_up_volume(&repo, &job(&dir2), &Arc::new(AtomicBool::new(true)), |_| {});
    assert_eq!(canceled.phase, Phase::Canceled, "{canceled:?}");
    assert_eq!(repo.snapshots().expect("list").len(), before);

    // A volume whose directory vanished fails with the path in the message.
    let gone = job(&tmp.path().join("pods/uid-3/volumes/x/scratch"));
    let failed = back_up_volume(&repo, &gone, &never, |_| {});
    assert_eq!(failed.phase, Phase::Failed);
    assert!(
        failed.message.as_deref().unwrap_or("").contains("uid-3"),
        "{failed:?}"
    );

    // Restore into a new pod's empty volume; the marker appears and restore-wait ends.
    let target = root.join("uid-9/volumes/kubernetes.io~empty-dir/scratch");
    fs::create_dir_all(&target).expect("mkdir");
    let mounted = [target.clone()];
    let outcome = wait_for_markers(
        &mounted,
        "restore-1",
        Duration::from_millis(5),
        Duration::from_millis(20),
        || None,
    );
    assert!(matches!(outcome, WaitOutcome::TimedOut(ref m) if m.len() == 1));
    let restored = restore_volume(&repo, &first_id, &target, "restore-1");
    assert_eq!(restored.phase, Phase::Completed, "{restored:?}");
    assert_eq!(
        fs::read(target.join("db/table")).expect("restored"),
        pseudo_random(1, 12 << 20)
    );
    assert!(!target.join("cache").exists());
    // Readable by any user, so a helper that runs as the pod's non-root user sees it
    // (Velero #10046: its helper could not read a marker only root could).
    let marker = target.join(".podvault/restore-1");
    assert_eq!(
        fs::metadata(&marker).expect("marker").permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(
        fs::metadata(target.join(".podvault"))
            .expect("dir")
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        wait_for_markers(
            &mounted,
            "restore-1",
            Duration::from_millis(5),
            Duration::from_secs(5),
            || None
        ),
        WaitOutcome::Restored
    );
    let other = root.join("uid-9/volumes/kubernetes.io~empty-dir/other");
    fs::create_dir_all(&other).expect("mkdir");
    assert_eq!(
        wait_for_markers(
            &[other],
            "restore-1",
            Duration::from_millis(5),
            Duration::from_secs(5),
            || { Some("PodVolumeRestore shop/r1-other failed: snapshot not found".into()) }
        ),
        WaitOutcome::Failed("PodVolumeRestore shop/r1-other failed: snapshot not found".into())
    );
    let missing = restore_volume(&repo, "ffffffff", &target, "restore-2");
    assert_eq!(missing.phase, Phase::Failed);
    // The helper learns of the failure from the volume itself.
    match wait_for_markers(
        &mounted,
        "restore-2",
        Duration::from_millis(5),
        Duration::from_secs(5),
        || None,
    ) {
        WaitOutcome::Failed(reason) => assert!(reason.contains("ffffffff"), "{reason}"),
        other => panic!("{other:?}"),
    }
}
