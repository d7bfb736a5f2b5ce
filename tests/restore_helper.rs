//! The restore helper never waits for ever: a volume whose restored root is 0700 and owned
//! by another user (a database's data directory) is seen through the pod's marker volume
//! by a helper of any user; a helper without it is told, by path and user, that it may not
//! look, instead of waiting until its time limit.

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use podvault_controller::agent::{
    MARKER_DIR, POD_MARKERS, restore_volume_with_markers, write_failure_markers,
};
use podvault_controller::crd::Phase;
use podvault_store::{DirBackend, Repository};
use podvault_testkit::{Cli, pseudo_random};

const OWNER: u32 = 999;
const NOBODY: u32 = 65532;

fn mkdir(path: &Path, mode: u32) {
    fs::create_dir_all(path).expect("mkdir");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Runs the helper as `uid` (at most 60 s); the helper's own limit is 30 s.
fn helper(binary: &Path, uid: u32, root: &Path, restore: &str, markers: bool) -> Output {
    let mut cmd = Command::new(binary);
    cmd.args(["restore-wait", "--restore-uid", restore, "--volume", "data"])
        .arg("--root")
        .arg(root)
        .args(["--timeout", "30", "--poll-ms", "50"])
        .uid(uid)
        .gid(uid)
        .env_remove("RUST_LOG");
    if markers {
        cmd.arg("--markers").arg(root.join(".markers"));
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the helper");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the helper (uid {uid}) outlived its time limit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_helper_of_any_user_ends_whatever_the_restored_roots_owner_and_mode() {
    let tmp = tempfile::tempdir().expect("tmp");
    let top = tmp.path();
    mkdir(top, 0o755);
    // The helper's binary where any user may run it.
    let binary = top.join("podvault");
    fs::copy(env!("CARGO_BIN_EXE_podvault"), &binary).expect("copy the binary");

    // A database's data directory: root 0700, owned by its user.
    let pgdata = top.join("pgdata");
    mkdir(&pgdata, 0o700);
    fs::write(pgdata.join("PG_VERSION"), "16\n").expect("write");
    fs::write(pgdata.join("base.1"), pseudo_random(5, 300_000)).expect("write");
    chown(&pgdata, Some(OWNER), Some(OWNER)).expect("chown");
    let cli = Cli {
        binary: binary.clone(),
        repo: top.join("repo").display().to_string(),
        password: "pw".into(),
        env: vec![],
        label: "dir".into(),
    };
    cli.init();
    let created = cli.json(&["snapshot", "create", pgdata.to_str().expect("utf-8")]);
    let id = created["id"].as_str().expect("snapshot id").to_string();
    let repo = Repository::open(Arc::new(DirBackend::new(top.join("repo"))), b"pw").expect("open");

    // A new pod on the node: its claim's directory, and the marker volume the webhook
    // added, as the kubelet lays them out (an emptyDir is 0777); the helper's mounts.
    let pod = top.join("pods/pod-new/volumes");
    let volume = pod.join("kubernetes.io~csi/pv-9/mount");
    let marker_volume = pod.join("kubernetes.io~empty-dir").join(POD_MARKERS);
    mkdir(&volume, 0o755);
    mkdir(&marker_volume, 0o777);
    let mounts = top.join("restores");
    mkdir(&mounts, 0o755);
    std::os::unix::fs::symlink(&volume, mounts.join("data")).expect("mount");
    std::os::unix::fs::symlink(&marker_volume, mounts.join(".markers")).expect("mount");
    let markers: Vec<PathBuf> = vec![volume.join(MARKER_DIR), marker_volume.join("data")];

    let restored = restore_volume_with_markers(&repo, &id, &volume, &markers, "r-1");
    assert_eq!(restored.phase, Phase::Completed, "{restored:?}");
    let root = fs::metadata(&volume).expect("root");
    use std::os::unix::fs::MetadataExt;
    assert_eq!((root.mode() & 0o777, root.uid()), (0o700, OWNER));

    // The helper as 65532 (a pod that sets no user) and as the owner, both through the
    // marker volume: restored.
    for uid in [NOBODY, OWNER] {
        let out = helper(&binary, uid, &mounts, "r-1", true);
        assert!(out.status.success(), "uid {uid}: {}", text(&out));
    }
    // Without the marker volume (a helper injected by an older webhook): the owner still
    // sees the volume's own marker; 65532 is told why it cannot, at once.
    let out = helper(&binary, OWNER, &mounts, "r-1", false);
    assert!(out.status.success(), "owner: {}", text(&out));
    let out = helper(&binary, NOBODY, &mounts, "r-1", false);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = text(&out);
    assert!(
        err.contains("permission denied to user 65532")
            && err.contains(&format!("data/{MARKER_DIR}/r-1")),
        "{err}"
    );
    assert!(!err.contains("still not restored"), "{err}");

    // A failed restore reaches a helper of any user too, with its reason.
    write_failure_markers(&markers, "r-2", "snapshot 0badc0de not found");
    for uid in [NOBODY, OWNER] {
        let out = helper(&binary, uid, &mounts, "r-2", true);
        assert_eq!(out.status.code(), Some(1), "uid {uid}: {}", text(&out));
        assert!(
            text(&out).contains("snapshot 0badc0de not found"),
            "{}",
            text(&out)
        );
    }
}
