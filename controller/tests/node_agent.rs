//! The node agent's work on one PodVolumeBackup / PodVolumeRestore, end to end: a scripted
//! API server (exact requests), a kubelet-style directory tree and a real S3 server.

mod apiserver;

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use apiserver::{APPLY_AGENT, ApiServer, BY_AGENT, Call, list};
use k8s_openapi::api::core::v1::Pod;
use podvault_controller::cluster::Settings;
use podvault_controller::crd::{Phase, PodVolumeBackup, PodVolumeRestore};
use podvault_controller::node_agent::{
    Agent, helper_running, process_backup, process_restore, restore_target, tell_late_pod,
};
use podvault_s3::open_backend;
use podvault_store::Repository;
use podvault_testkit::{S3Server, fast_init, pseudo_random};
use serde_json::{Value, json};

const PVBS: &str = "/apis/podvault.io/v1alpha1/namespaces/podvault/podvolumebackups";
const PVRS: &str = "/apis/podvault.io/v1alpha1/namespaces/podvault/podvolumerestores";
const KEY: &[u8] = b"the-test-key";

struct World {
    _tmp: tempfile::TempDir,
    _server: Arc<S3Server>,
    agent: Agent,
    location: String,
}

impl World {
    /// Runs `work` on the repository off the async runtime (the S3 client has its own).
    async fn with_repo<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Repository) -> T + Send + 'static,
    ) -> T {
        let (location, s3) = (self.location.clone(), self.agent.settings.s3.clone());
        tokio::task::spawn_blocking(move || {
            let repo = Repository::open(open_backend(&location, &s3).expect("backend"), KEY)
                .expect("open");
            work(&repo)
        })
        .await
        .expect("blocking work")
    }
}

async fn world() -> World {
    tokio::task::spawn_blocking(make_world)
        .await
        .expect("world")
}

fn make_world() -> World {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = Arc::new(S3Server::start());
    let settings = Settings {
        namespace: "podvault".into(),
        storage: "s3:podvault-test/cluster".into(),
        s3: server.options_via(&server.endpoint),
        init: fast_init(),
    };
    let location = "s3:podvault-test/cluster/podvault/shop".to_string();
    let backend = open_backend(&location, &settings.s3).expect("backend");
    Repository::init(backend, KEY, &fast_init()).expect("init");
    let agent = Agent {
        node: "worker-1".into(),
        pods_root: tmp.path().join("pods"),
        concurrency: 2,
        report_every: Duration::from_secs(3600),
        settings,
    };
    World {
        _tmp: tmp,
        _server: server,
        agent,
        location,
    }
}

fn volume(agent: &Agent, uid: &str, plugin: &str, dir: &str) -> PathBuf {
    let path = agent
        .pods_root
        .join(uid)
        .join("volumes")
        .join(plugin)
        .join(dir);
    fs::create_dir_all(path.join("db")).expect("mkdir");
    path
}

fn repository(location: &str) -> Value {
    json!({"apiVersion": "podvault.io/v1alpha1", "kind": "BackupRepository",
           "metadata": {"name": "shop", "namespace": "podvault"},
           "spec": {"volumeNamespace": "shop", "location": location,
                    "keySecret": "podvault-repo-shop"},
           "status": {"phase": "Ready"}})
}

fn key_secret() -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": "podvault-repo-shop", "namespace": "podvault"},
           "data": {"repository-password": "dGhlLXRlc3Qta2V5"}})
}

fn pvb(uid: &str, volume: &str, claim: Option<&str>) -> PodVolumeBackup {
    serde_json::from_value(json!({
        "apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeBackup",
        "metadata": {"name": "nightly-1", "namespace": "podvault"},
        "spec": {"backupName": "nightly", "node": "worker-1",
                 "pod": {"namespace": "shop", "name": "db-0", "uid": uid},
                 "volume": volume, "claim": claim, "repository": "shop",
                 "lineage": format!("workload/shop/StatefulSet/db/{volume}"),
                 "excludePaths": ["*.tmp"], "tags": {"backup": "nightly"}, "timeout": "1h"}
    }))
    .expect("pvb")
}

fn echo() -> Value {
    json!({"apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeBackup",
           "metadata": {"name": "nightly-1", "namespace": "podvault"},
           "spec": {"backupName": "nightly", "node": "worker-1",
                    "pod": {"namespace": "shop", "name": "db-0", "uid": "u"},
                    "volume": "v", "repository": "shop", "lineage": "l"}})
}

fn status_is(phase: &'static str) -> impl Fn(&Value) + Send {
    move |body: &Value| assert_eq!(body["status"]["phase"], phase, "{body}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_backup_runs_on_the_kubelet_tree_into_s3_and_the_next_is_incremental() {
    let w = world().await;
    let dir = volume(&w.agent, "uid-1", "kubernetes.io~empty-dir", "scratch");
    fs::write(dir.join("db/table"), pseudo_random(1, 3 << 20)).expect("write");
    fs::write(dir.join("db/junk.tmp"), b"left out").expect("write");

    for round in 0..2 {
        let (client, server) = ApiServer::start(vec![
            Call::new("PATCH", format!("{PVBS}/nightly-1/status?{APPLY_AGENT}"))
                .body_check(status_is("InProgress"))
                .ok(echo()),
            Call::new(
                "GET",
                "/apis/podvault.io/v1alpha1/namespaces/podvault/backuprepositories/shop",
            )
            .ok(repository(&w.location)),
            Call::new(
                "GET",
                "/api/v1/namespaces/podvault/secrets/podvault-repo-shop",
            )
            .ok(key_secret()),
            Call::new("PATCH", format!("{PVBS}/nightly-1/status?{APPLY_AGENT}"))
                .body_check(status_is("Completed"))
                .ok(echo()),
        ]);
        let never = Arc::new(AtomicBool::new(false));
        let status = process_backup(&client, &w.agent, &pvb("uid-1", "scratch", None), never)
            .await
            .expect("process");
        server.done().await;
        assert_eq!(status.phase, Phase::Completed, "{status:?}");
        assert_eq!(status.progress.total_bytes, 3 << 20, "*.tmp left out");
        if round == 0 {
            assert!(status.progress.bytes_new >= 3 << 20);
        } else {
            // Same lineage: the first snapshot is the parent, nothing is new.
            assert_eq!(status.progress.bytes_new, 0, "{status:?}");
        }
        assert!(status.start_timestamp.is_some() && status.completion_timestamp.is_some());
    }
    let snapshots = w.with_repo(|r| r.snapshots().expect("list")).await;
    assert_eq!(snapshots.len(), 2);
    let tags = &snapshots[1].1.tags;
    assert!(tags.contains(&"lineage=workload/shop/StatefulSet/db/scratch".to_string()));
    assert!(tags.contains(&"backup=nightly".to_string()));
    assert_eq!(snapshots[1].1.host, "worker-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_volume_is_found_through_its_bound_csi_volume() {
    let w = world().await;
    let dir = volume(&w.agent, "uid-2", "kubernetes.io~csi", "pvc-0b1c2d3e/mount");
    fs::write(dir.join("db/base"), b"rows").expect("write");
    let (client, server) = ApiServer::start(vec![
        Call::new("PATCH", format!("{PVBS}/nightly-1/status?{APPLY_AGENT}"))
            .body_check(status_is("InProgress"))
            .ok(echo()),
        Call::new(
            "GET",
            "/api/v1/namespaces/shop/persistentvolumeclaims/pgdata",
        )
        .ok(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "pgdata", "namespace": "shop"},
            "spec": {"volumeName": "pvc-0b1c2d3e"}})),
        Call::new("GET", "/api/v1/persistentvolumes/pvc-0b1c2d3e").ok(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pvc-0b1c2d3e"},
            "spec": {"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1"}}})),
        Call::new("GET", "/apis/storage.k8s.io/v1/csidrivers?").ok(list("CSIDriver", vec![])),
        Call::new(
            "GET",
            "/apis/podvault.io/v1alpha1/namespaces/podvault/backuprepositories/shop",
        )
        .ok(repository(&w.location)),
        Call::new(
            "GET",
            "/api/v1/namespaces/podvault/secrets/podvault-repo-shop",
        )
        .ok(key_secret()),
        Call::new("PATCH", format!("{PVBS}/nightly-1/status?{APPLY_AGENT}"))
            .body_check(|body| {
                assert_eq!(body["status"]["phase"], "Completed", "{body}");
                assert_eq!(body["status"]["progress"]["totalBytes"], 4);
            })
            .ok(echo()),
    ]);
    let never = Arc::new(AtomicBool::new(false));
    let status = process_backup(
        &client,
        &w.agent,
        &pvb("uid-2", "data", Some("pgdata")),
        never,
    )
    .await
    .expect("process");
    server.done().await;
    assert_eq!(status.phase, Phase::Completed, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_volume_backup_and_leaves_no_snapshot() {
    let w = world().await;
    let dir = volume(&w.agent, "uid-3", "kubernetes.io~empty-dir", "scratch");
    fs::write(dir.join("db/big"), pseudo_random(3, 96 << 20)).expect("write");
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let (client, server) = ApiServer::start(vec![
        Call::new("PATCH", format!("{PVBS}/nightly-1/status?{APPLY_AGENT}"))
            .body_check(move |body| {
                assert_eq!(body["status"]["phase"], "InProgress");
                // The Backup's cancel reaches the agent while the volume runs.
                flag.store(true, Ordering::Release);
            })
            .ok(echo()),
        Call::new(
            "GET",
            "/apis/podvault.io/v1alpha1/namespaces/podvault/backuprepositories/shop",
        )
        .ok(repository(&w.location)),
        Call::new(
            "GET",
            "/api/v1/namespaces/podvault/secrets/podvault-repo-shop",
        )
        .ok(key_secret()),
        Call::new("PATCH", format!("{PVBS}/nightly-1/status?{APPLY_AGENT}"))
            .body_check(status_is("Canceled"))
            .ok(echo()),
    ]);
    let status = process_backup(&client, &w.agent, &pvb("uid-3", "scratch", None), cancel)
        .await
        .expect("process");
    server.done().await;
    assert_eq!(status.phase, Phase::Canceled, "{status:?}");
    assert!(
        w.with_repo(|r| r.snapshots().expect("list"))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_missing_on_the_node_fails_with_the_reason() {
    let w = world().await;
    let (client, server) = ApiServer::start(vec![
        Call::new("PATCH", format!("{PVBS}/nightly-1/status?{APPLY_AGENT}"))
            .body_check(status_is("InProgress"))
            .ok(echo()),
        Call::new("PATCH", format!("{PVBS}/nightly-1/status?{APPLY_AGENT}"))
            .body_check(|body| {
                assert_eq!(body["status"]["phase"], "Failed");
                let m = body["status"]["message"].as_str().expect("message");
                assert!(m.contains("uid-gone"), "{m}");
            })
            .ok(echo()),
    ]);
    let never = Arc::new(AtomicBool::new(false));
    let status = process_backup(&client, &w.agent, &pvb("uid-gone", "scratch", None), never)
        .await
        .expect("process");
    server.done().await;
    assert_eq!(status.phase, Phase::Failed);
}

fn restore_pod(uid: &str, helper: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "db-0", "namespace": "shop-copy", "uid": uid,
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                          "name": "db", "uid": "s", "controller": true}]},
        "spec": {"nodeName": "worker-1", "containers": [{"name": "db", "image": "postgres"}],
                 "volumes": [{"name": "scratch", "emptyDir": {}},
                             {"name": "data", "persistentVolumeClaim": {"claimName": "pgdata"}}]},
        "status": {"initContainerStatuses": [{"name": helper, "image": "podvault",
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"running": {"startedAt": "2026-11-24T10:00:00Z"}}}]}
    }))
    .expect("pod")
}

fn pvr(snapshot: &str, target: Value) -> PodVolumeRestore {
    serde_json::from_value(json!({
        "apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeRestore",
        "metadata": {"name": "restore-1", "namespace": "podvault"},
        "spec": {"restoreName": "again", "restoreUid": "r-uid", "targetNamespace": "shop-copy",
                 "target": target, "volume": "scratch", "snapshotID": snapshot,
                 "repository": "shop"}
    }))
    .expect("pvr")
}

#[test]
fn a_restore_finds_its_pod_by_name_claim_or_owner_and_waits_for_the_helper() {
    let pod = restore_pod("u", "restore-wait");
    let by = |target: Value| restore_target(&pvr("s", target).spec, &pod);
    assert!(by(json!({"podName": "db-0"})));
    assert!(!by(json!({"podName": "db-1"})));
    assert!(by(json!({"owner": "StatefulSet/db"})));
    assert!(!by(json!({"owner": "Deployment/db"})));
    assert!(
        !by(json!({"claim": "pgdata"})),
        "scratch is not the claim's volume"
    );
    let mut claim = pvr("s", json!({"claim": "pgdata"})).spec;
    claim.volume = "data".into();
    assert!(restore_target(&claim, &pod));
    claim.target_namespace = "shop".into();
    assert!(!restore_target(&claim, &pod), "another namespace");
    assert!(helper_running(&pod));
    assert!(!helper_running(&restore_pod("u", "other-init")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_restore_fills_the_new_pods_volume_and_writes_the_marker() {
    let w = world().await;
    let src = volume(&w.agent, "uid-old", "kubernetes.io~empty-dir", "scratch");
    fs::write(src.join("db/table"), pseudo_random(4, 1 << 20)).expect("write");
    let id = w
        .with_repo(move |r| {
            podvault_scanner::backup(r, &podvault_scanner::BackupOptions::new(&src))
                .expect("backup")
                .id
                .to_hex()
        })
        .await;
    let target = volume(&w.agent, "uid-new", "kubernetes.io~empty-dir", "scratch");
    fs::remove_dir(target.join("db")).expect("empty it");

    let echo_pvr = serde_json::to_value(pvr("s", json!({}))).expect("json");
    let (client, server) = ApiServer::start(vec![
        Call::new("PATCH", format!("{PVRS}/restore-1?{BY_AGENT}"))
            .body(json!({"spec": {"node": "worker-1",
                "pod": {"namespace": "shop-copy", "name": "db-0", "uid": "uid-new"}}}))
            .ok(echo_pvr.clone()),
        Call::new("PATCH", format!("{PVRS}/restore-1/status?{APPLY_AGENT}"))
            .body_check(status_is("InProgress"))
            .ok(echo_pvr.clone()),
        Call::new(
            "GET",
            "/apis/podvault.io/v1alpha1/namespaces/podvault/backuprepositories/shop",
        )
        .ok(repository(&w.location)),
        Call::new(
            "GET",
            "/api/v1/namespaces/podvault/secrets/podvault-repo-shop",
        )
        .ok(key_secret()),
        Call::new("PATCH", format!("{PVRS}/restore-1/status?{APPLY_AGENT}"))
            .body_check(status_is("Completed"))
            .ok(echo_pvr),
    ]);
    let restore = pvr(&id, json!({"owner": "StatefulSet/db"}));
    let status = process_restore(
        &client,
        &w.agent,
        &restore,
        &restore_pod("uid-new", "restore-wait"),
    )
    .await
    .expect("process");
    server.done().await;
    assert_eq!(status.phase, Phase::Completed, "{status:?}");
    assert_eq!(
        fs::read(target.join("db/table")).expect("restored"),
        pseudo_random(4, 1 << 20)
    );
    assert!(
        target.join(".podvault/r-uid").is_file(),
        "the helper's marker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_cannot_open_the_repository_tells_the_helper_why() {
    let w = world().await;
    let target = volume(&w.agent, "uid-new", "kubernetes.io~empty-dir", "scratch");
    let echo_pvr = serde_json::to_value(pvr("s", json!({}))).expect("json");
    let (client, server) = ApiServer::start(vec![
        Call::new("PATCH", format!("{PVRS}/restore-1?{BY_AGENT}")).ok(echo_pvr.clone()),
        Call::new("PATCH", format!("{PVRS}/restore-1/status?{APPLY_AGENT}"))
            .body_check(status_is("InProgress"))
            .ok(echo_pvr.clone()),
        Call::new(
            "GET",
            "/apis/podvault.io/v1alpha1/namespaces/podvault/backuprepositories/shop",
        )
        .ok(repository(&w.location)),
        Call::new(
            "GET",
            "/api/v1/namespaces/podvault/secrets/podvault-repo-shop",
        )
        .not_found(),
        Call::new("PATCH", format!("{PVRS}/restore-1/status?{APPLY_AGENT}"))
            .body_check(status_is("Failed"))
            .ok(echo_pvr),
    ]);
    let restore = pvr("0123", json!({"podName": "db-0"}));
    let status = process_restore(
        &client,
        &w.agent,
        &restore,
        &restore_pod("uid-new", "restore-wait"),
    )
    .await
    .expect("process");
    server.done().await;
    assert_eq!(status.phase, Phase::Failed);
    let reason = fs::read_to_string(target.join(".podvault/r-uid.failed")).expect("marker");
    assert!(
        reason.contains("podvault/podvault-repo-shop") && reason.contains("does not exist"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_came_after_its_restore_gave_up_is_told_why() {
    let w = world().await;
    let target = volume(&w.agent, "uid-late", "kubernetes.io~empty-dir", "scratch");
    let mut given_up = pvr("0123", json!({"podName": "db-0"}));
    given_up.status = Some(serde_json::from_value(json!({"phase": "Failed",
        "message": "no pod db-0 appeared in namespace shop-copy within 4h (the Restore's spec.timeout)"}))
        .expect("status"));
    // An emptyDir is found from the pod alone: nothing is asked of the API server.
    let (client, server) = ApiServer::start(vec![]);
    tell_late_pod(
        &client,
        &w.agent,
        &given_up,
        &restore_pod("uid-late", "restore-wait"),
    )
    .await
    .expect("told");
    server.done().await;
    let reason = fs::read_to_string(target.join(".podvault/r-uid.failed")).expect("marker");
    assert_eq!(
        reason.trim_end(),
        "no pod db-0 appeared in namespace shop-copy within 4h (the Restore's spec.timeout)"
    );
    // What the helper makes of it: it stops waiting and fails with the reason.
    let outcome = podvault_controller::agent::wait_for_markers(
        std::slice::from_ref(&target),
        "r-uid",
        Duration::from_millis(10),
        Duration::from_secs(5),
        || None,
    );
    assert!(
        matches!(&outcome, podvault_controller::agent::WaitOutcome::Failed(r) if r.contains("within 4h")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_node_annotation_sets_its_agents_concurrency() {
    use podvault_controller::node_agent::{concurrency_for, configure_for_node};
    let node = |value: Option<&str>| -> k8s_openapi::api::core::v1::Node {
        let mut n = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "worker-1"}});
        if let Some(v) = value {
            n["metadata"]["annotations"] = json!({"podvault.io/node-agent-concurrency": v});
        }
        serde_json::from_value(n).expect("node")
    };
    assert_eq!(concurrency_for(&node(None), 2), 2);
    assert_eq!(concurrency_for(&node(Some(" 6 ")), 2), 6);
    for bad in ["0", "65", "four", ""] {
        assert_eq!(
            concurrency_for(&node(Some(bad)), 2),
            2,
            "{bad:?} falls back"
        );
    }
    let w = world().await;
    let mut agent = w.agent.clone();
    let (client, server) = ApiServer::start(vec![
        Call::new("GET", "/api/v1/nodes/worker-1")
            .ok(serde_json::to_value(node(Some("4"))).expect("json")),
    ]);
    configure_for_node(&client, &mut agent)
        .await
        .expect("configure");
    server.done().await;
    assert_eq!(agent.concurrency, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_volume_is_restored_into_the_new_pods_own_claim_with_pod_markers() {
    let w = world().await;
    let src = volume(&w.agent, "uid-old", "kubernetes.io~empty-dir", "scratch");
    fs::write(src.join("db/table"), pseudo_random(5, 300_000)).expect("write");
    let id = w
        .with_repo(move |r| {
            podvault_scanner::backup(r, &podvault_scanner::BackupOptions::new(&src))
                .expect("backup")
                .id
                .to_hex()
        })
        .await;
    // The new pod's generic ephemeral volume: its claim db-0-scratch, bound to a CSI volume;
    // and the markers' emptyDir the webhook added.
    let target = volume(&w.agent, "uid-eph", "kubernetes.io~csi", "pv-eph/mount");
    fs::remove_dir(target.join("db")).expect("empty it");
    let markers = w
        .agent
        .pods_root
        .join("uid-eph/volumes/kubernetes.io~empty-dir/podvault-restore-markers");
    fs::create_dir_all(&markers).expect("markers volume");

    let echo_pvr = serde_json::to_value(pvr("s", json!({}))).expect("json");
    let (client, server) = ApiServer::start(vec![
        Call::new("PATCH", format!("{PVRS}/restore-1?{BY_AGENT}"))
            .body(json!({"spec": {"node": "worker-1",
                "pod": {"namespace": "shop-copy", "name": "db-0", "uid": "uid-eph"}}}))
            .ok(echo_pvr.clone()),
        Call::new("PATCH", format!("{PVRS}/restore-1/status?{APPLY_AGENT}"))
            .body_check(status_is("InProgress"))
            .ok(echo_pvr.clone()),
        Call::new(
            "GET",
            "/api/v1/namespaces/shop-copy/persistentvolumeclaims/db-0-scratch",
        )
        .ok(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "db-0-scratch", "namespace": "shop-copy"},
            "spec": {"volumeName": "pv-eph"}})),
        Call::new("GET", "/api/v1/persistentvolumes/pv-eph").ok(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pv-eph"},
            "spec": {"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-9"}}})),
        Call::new("GET", "/apis/storage.k8s.io/v1/csidrivers?").ok(list("CSIDriver", vec![])),
        Call::new(
            "GET",
            "/apis/podvault.io/v1alpha1/namespaces/podvault/backuprepositories/shop",
        )
        .ok(repository(&w.location)),
        Call::new(
            "GET",
            "/api/v1/namespaces/podvault/secrets/podvault-repo-shop",
        )
        .ok(key_secret()),
        Call::new("PATCH", format!("{PVRS}/restore-1/status?{APPLY_AGENT}"))
            .body_check(status_is("Completed"))
            .ok(echo_pvr),
    ]);
    let mut restore = pvr(&id, json!({"owner": "StatefulSet/db"}));
    restore.spec.ephemeral = true;
    let status = process_restore(
        &client,
        &w.agent,
        &restore,
        &restore_pod("uid-eph", "restore-wait"),
    )
    .await
    .expect("process");
    server.done().await;
    assert_eq!(status.phase, Phase::Completed, "{status:?}");
    assert_eq!(
        fs::read(target.join("db/table")).expect("restored"),
        pseudo_random(5, 300_000)
    );
    assert!(
        target.join(".podvault/r-uid").is_file(),
        "the volume's marker"
    );
    assert!(
        markers.join("scratch/r-uid").is_file(),
        "the pod's marker volume"
    );
}
