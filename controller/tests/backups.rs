//! The backup controller against a scripted API server (exact requests) and a real
//! repository on disk: finalizer, plan to PodVolumeBackups, repository keys, progress,
//! cancel, expiry and forgetting.

mod apiserver;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use apiserver::{APPLY_CONTROLLER, ApiServer, BY_CONTROLLER, Call, list};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::Timestamp;
use podvault_controller::backups::{load_record, reconcile, volume_object_name};
use podvault_controller::cluster::Settings;
use podvault_controller::crd::Backup;
use podvault_controller::plan::plan_backup;
use podvault_s3::S3Options;
use podvault_store::Repository;
use podvault_testkit::{fast_init, merge_json};
use serde_json::{Value, json};

const BACKUPS: &str = "/apis/podvault.io/v1alpha1/namespaces/podvault/backups";
const PVBS: &str = "/apis/podvault.io/v1alpha1/namespaces/podvault/podvolumebackups";
const REPOS: &str = "/apis/podvault.io/v1alpha1/namespaces/podvault/backuprepositories";
const SECRETS: &str = "/api/v1/namespaces/podvault/secrets";

fn fixture(name: &str) -> Value {
    podvault_testkit::fixture(env!("CARGO_MANIFEST_DIR"), name)
}

fn settings(dir: &Path) -> Settings {
    Settings {
        namespace: "podvault".into(),
        storage: dir.join("store").display().to_string(),
        s3: S3Options::default(),
        init: fast_init(),
    }
}

fn now() -> Timestamp {
    "2026-11-24T10:00:00Z".parse().expect("time")
}

fn backup(extra: Value) -> Backup {
    let mut b = json!({
        "apiVersion": "podvault.io/v1alpha1", "kind": "Backup",
        "metadata": {"name": "nightly", "namespace": "podvault", "uid": "b-uid",
                     "finalizers": ["podvault.io/forget-snapshots"]},
        "spec": {"includedNamespaces": ["shop"], "ttl": "24h",
                 "labelSelector": {"matchLabels": {"app": "db"}}}
    });
    merge_json(&mut b, extra);
    serde_json::from_value(b).expect("backup")
}

#[tokio::test]
async fn a_new_backup_gets_its_finalizer_before_anything_else() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut b = backup(json!({}));
    b.metadata.finalizers = None;
    let reply = serde_json::to_value(&b).expect("json");
    let (client, server) = ApiServer::start(vec![
        Call::new("PATCH", format!("{BACKUPS}/nightly?"))
            .body(json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers",
                 "value": ["podvault.io/forget-snapshots"]}
            ]))
            .ok(reply),
    ]);
    reconcile(Arc::new(b), &client, &settings(tmp.path()), now())
        .await
        .expect("reconcile");
    server.done().await;
}

fn cluster() -> (Vec<Pod>, Vec<PersistentVolumeClaim>, Vec<PersistentVolume>) {
    let pods = vec![serde_json::from_value(fixture("pod-db.json")).expect("pod")];
    let claims = serde_json::from_value(fixture("claims.json")).expect("claims");
    let volumes = serde_json::from_value(fixture("volumes.json")).expect("volumes");
    (pods, claims, volumes)
}

fn items<T: serde::Serialize>(v: &[T]) -> Vec<Value> {
    v.iter()
        .map(|x| serde_json::to_value(x).expect("json"))
        .collect()
}

#[tokio::test]
async fn a_backup_makes_the_repository_and_one_volume_backup_per_volume() {
    let tmp = tempfile::tempdir().expect("tmp");
    let settings = settings(tmp.path());
    let b = backup(json!({}));
    let (pods, claims, volumes) = cluster();
    // The expected volume backups come from the pure plan, tested on its own.
    let plan = plan_backup(
        "nightly",
        &b.spec,
        &pods,
        &claims
            .iter()
            .map(|c| {
                (
                    (
                        c.metadata.namespace.clone().unwrap_or_default(),
                        c.metadata.name.clone().unwrap_or_default(),
                    ),
                    c.clone(),
                )
            })
            .collect(),
        &volumes
            .iter()
            .map(|v| (v.metadata.name.clone().unwrap_or_default(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    )
    .expect("plan");
    assert_eq!(plan.volumes.len(), 2, "{plan:?}");
    let key = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen_key = key.clone();
    let mut script = vec![
        Call::new("GET", "/api/v1/pods?").ok(list("Pod", items(&pods))),
        Call::new("GET", "/api/v1/persistentvolumeclaims?")
            .ok(list("PersistentVolumeClaim", items(&claims))),
        Call::new("GET", "/api/v1/persistentvolumes?")
            .ok(list("PersistentVolume", items(&volumes))),
        Call::new("GET", format!("{SECRETS}/podvault-repo-shop")).not_found(),
        Call::new("POST", format!("{SECRETS}?{BY_CONTROLLER}"))
            .body_check(move |body| {
                assert_eq!(body["metadata"]["name"], "podvault-repo-shop");
                assert_eq!(
                    body["metadata"]["labels"],
                    json!({"podvault.io/repository-key": "shop"})
                );
                let encoded = body["data"]["repository-password"].as_str().expect("key");
                let decoded: ByteString = serde_json::from_value(json!(encoded)).expect("base64");
                assert_eq!(decoded.0.len(), 64, "32 random bytes in hex");
                *seen_key.lock().expect("lock") = decoded.0;
            })
            .created(),
        Call::new("GET", format!("{REPOS}/shop")).not_found(),
        Call::new("POST", format!("{REPOS}?{BY_CONTROLLER}"))
            .body(json!({
                "apiVersion": "podvault.io/v1alpha1", "kind": "BackupRepository",
                "metadata": {"name": "shop"},
                "spec": {"volumeNamespace": "shop",
                         "location": format!("{}/podvault/shop", settings.storage),
                         "keySecret": "podvault-repo-shop"}
            }))
            .created(),
        Call::new("PATCH", format!("{REPOS}/shop/status?{APPLY_CONTROLLER}"))
            .body_check(|body| {
                assert_eq!(body["status"]["phase"], "Ready");
                assert!(body["status"]["message"].is_null());
                assert!(
                    body["status"]["lastMaintenance"].is_string(),
                    "a new repository counts as maintained: {body}"
                );
            })
            .ok(json!({
                "apiVersion": "podvault.io/v1alpha1", "kind": "BackupRepository",
                "metadata": {"name": "shop", "namespace": "podvault"},
                "spec": {"volumeNamespace": "shop", "location": "x", "keySecret": "k"},
                "status": {"phase": "Ready"}
            })),
    ];
    for spec in &plan.volumes {
        let name = volume_object_name("nightly", spec);
        script.push(
            Call::new("POST", format!("{PVBS}?{BY_CONTROLLER}"))
                .body(json!({
                    "apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeBackup",
                    "metadata": {
                        "name": name,
                        "labels": {"podvault.io/backup-name": "nightly",
                                   "podvault.io/node": "worker-1"},
                        "ownerReferences": [{"apiVersion": "podvault.io/v1alpha1",
                            "kind": "Backup", "name": "nightly", "uid": "b-uid",
                            "controller": true}]
                    },
                    "spec": serde_json::to_value(spec).expect("spec")
                }))
                .created(),
        );
    }
    script.push(
        Call::new(
            "PATCH",
            format!("{BACKUPS}/nightly/status?{APPLY_CONTROLLER}"),
        )
        .body(
            json!({"apiVersion": "podvault.io/v1alpha1", "kind": "Backup", "status": {
                "phase": "InProgress",
                "volumes": {"total": 2, "completed": 0, "failed": 0, "canceled": 0,
                            "skipped": plan.skipped.len()},
                "totalBytes": 0, "bytesDone": 0, "bytesNew": 0,
                "skipped": serde_json::to_value(&plan.skipped).expect("skipped"),
                "startTimestamp": "2026-11-24T10:00:00Z",
                "expiration": "2026-11-25T10:00:00Z"
            }}),
        )
        .ok(serde_json::to_value(&b).expect("json")),
    );
    let (client, server) = ApiServer::start(script);
    reconcile(Arc::new(b), &client, &settings, now())
        .await
        .expect("reconcile");
    server.done().await;

    // The repository exists under the new key, with the manifests of the pod and claim.
    let key = key.lock().expect("lock").clone();
    let record = load_record(&settings, "shop", key, "nightly")
        .await
        .expect("load")
        .expect("the record is there");
    assert_eq!(record.pods.len(), 1);
    assert_eq!(
        record.pods[0].metadata.name.as_deref(),
        Some("db-7d9c6b5f4-x2k8q")
    );
    assert!(record.pods[0].status.is_none());
    let claim_names: Vec<_> = record
        .claims
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    assert_eq!(claim_names, vec!["pgdata".to_string()]);
}

const KEY: &[u8] = b"the-test-key";

fn key_secret() -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": "podvault-repo-shop", "namespace": "podvault"},
           "data": {"repository-password": "dGhlLXRlc3Qta2V5"}})
}

/// A repository for namespace `shop` with two snapshots of a small directory.
fn repository_with_snapshots(settings: &Settings) -> (Repository, Vec<String>) {
    let at = Path::new(&settings.storage).join("podvault/shop");
    let backend =
        podvault_s3::open_backend(&at.display().to_string(), &settings.s3).expect("backend");
    let repo = Repository::init(backend, KEY, &fast_init()).expect("init");
    let src = Path::new(&settings.storage).with_file_name("volume");
    std::fs::create_dir_all(&src).expect("mkdir");
    let mut ids = Vec::new();
    for round in 0..2u8 {
        std::fs::write(src.join("file"), [round; 1000]).expect("write");
        let report = podvault_scanner::backup(&repo, &podvault_scanner::BackupOptions::new(&src))
            .expect("backup");
        ids.push(report.id.to_hex());
    }
    (repo, ids)
}

fn pvb(name: &str, volume: &str, status: Value) -> Value {
    json!({
        "apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeBackup",
        "metadata": {"name": name, "namespace": "podvault",
                     "labels": {"podvault.io/backup-name": "nightly", "podvault.io/node": "worker-1"}},
        "spec": {"backupName": "nightly", "node": "worker-1",
                 "pod": {"namespace": "shop", "name": "db-0", "uid": "p-uid"},
                 "volume": volume, "repository": "shop", "lineage": format!("x/{volume}")},
        "status": status
    })
}

fn running_backup(extra: Value) -> Backup {
    let mut status = json!({"status": {
        "phase": "InProgress",
        "volumes": {"total": 2, "skipped": 1},
        "skipped": [{"namespace": "shop", "pod": "db-0", "volume": "token",
                     "reason": "service account token"}],
        "startTimestamp": "2026-11-24T09:00:00Z",
        "expiration": "2026-11-25T09:00:00Z"
    }});
    merge_json(&mut status, extra);
    backup(status)
}

const LIST_PVBS: &str = "?&labelSelector=podvault.io%2Fbackup-name%3Dnightly";

#[tokio::test]
async fn a_running_backup_reports_progress_then_completes_and_records_snapshot_ids() {
    let tmp = tempfile::tempdir().expect("tmp");
    let settings = settings(tmp.path());
    let (_repo, ids) = repository_with_snapshots(&settings);
    let b = running_backup(json!({}));

    // One volume done, one still running: InProgress with the sums so far.
    let done = json!({"phase": "Completed", "snapshotID": ids[0],
                      "progress": {"totalBytes": 1000, "bytesDone": 1000, "bytesNew": 600}});
    let (client, server) = ApiServer::start(vec![
        Call::new("GET", format!("{PVBS}{LIST_PVBS}")).ok(list(
            "PodVolumeBackup",
            vec![
                pvb("nightly-a", "data", done.clone()),
                pvb(
                    "nightly-b",
                    "scratch",
                    json!({"phase": "InProgress",
                    "progress": {"totalBytes": 5000, "bytesDone": 2000}}),
                ),
            ],
        )),
        Call::new(
            "PATCH",
            format!("{BACKUPS}/nightly/status?{APPLY_CONTROLLER}"),
        )
        .body_check(|body| {
            let s = &body["status"];
            assert_eq!(s["phase"], "InProgress");
            assert_eq!(s["totalBytes"], 6000);
            assert_eq!(s["bytesDone"], 3000);
            assert_eq!(s["bytesNew"], 600);
            assert_eq!(s["volumes"]["completed"], 1);
            assert_eq!(s["completionTimestamp"], Value::Null);
        })
        .ok(serde_json::to_value(&b).expect("json")),
    ]);
    reconcile(Arc::new(b.clone()), &client, &settings, now())
        .await
        .expect("reconcile");
    server.done().await;

    // Both done: Completed, and the record in the repository gets the snapshot ids.
    let (client, server) =
        ApiServer::start(vec![
        Call::new("GET", format!("{PVBS}{LIST_PVBS}")).ok(list(
            "PodVolumeBackup",
            vec![
                pvb("nightly-a", "data", done.clone()),
                pvb("nightly-b", "scratch", json!({"phase": "Completed", "snapshotID": ids[1],
                    "progress": {"totalBytes": 5000, "bytesDone": 5000, "bytesNew": 5000}})),
            ],
        )),
        Call::new("GET", format!("{SECRETS}/podvault-repo-shop")).ok(key_secret()),
        Call::new("PATCH", format!("{BACKUPS}/nightly/status?{APPLY_CONTROLLER}"))
            .body(json!({"apiVersion": "podvault.io/v1alpha1", "kind": "Backup", "status": {
                "phase": "Completed",
                "volumes": {"total": 2, "completed": 2, "failed": 0, "canceled": 0, "skipped": 1},
                "totalBytes": 6000, "bytesDone": 6000, "bytesNew": 5600,
                "skipped": [{"namespace": "shop", "pod": "db-0", "volume": "token",
                             "reason": "service account token"}],
                "startTimestamp": "2026-11-24T09:00:00Z",
                "completionTimestamp": "2026-11-24T10:00:00Z",
                "expiration": "2026-11-25T09:00:00Z"
            }}))
            .ok(serde_json::to_value(&b).expect("json")),
    ]);
    reconcile(Arc::new(b), &client, &settings, now())
        .await
        .expect("reconcile");
    server.done().await;
    let record = load_record(&settings, "shop", KEY.to_vec(), "nightly")
        .await
        .expect("load")
        .expect("record");
    let recorded: Vec<_> = record
        .volumes
        .iter()
        .filter_map(|v| v.status.as_ref()?.snapshot_id.clone())
        .collect();
    assert_eq!(recorded, ids);
    assert_eq!(
        record.backup.status.map(|s| s.phase),
        Some(podvault_controller::crd::Phase::Completed)
    );
}

#[tokio::test]
async fn cancel_asks_every_running_volume_to_stop_and_ends_canceled() {
    let tmp = tempfile::tempdir().expect("tmp");
    let settings = settings(tmp.path());
    let b = running_backup(json!({"spec": {"cancel": true}}));
    let (client, server) = ApiServer::start(vec![
        Call::new("GET", format!("{PVBS}{LIST_PVBS}")).ok(list(
            "PodVolumeBackup",
            vec![
                pvb("nightly-a", "data", json!({"phase": "InProgress"})),
                pvb("nightly-b", "scratch", json!({"phase": "New"})),
            ],
        )),
        Call::new("PATCH", format!("{PVBS}/nightly-a?{BY_CONTROLLER}"))
            .body(json!({"spec": {"cancel": true}}))
            .ok(pvb("nightly-a", "data", json!({}))),
        Call::new("PATCH", format!("{PVBS}/nightly-b?{BY_CONTROLLER}"))
            .body(json!({"spec": {"cancel": true}}))
            .ok(pvb("nightly-b", "scratch", json!({}))),
        // Nothing changed in the totals: the status is not written again.
    ]);
    reconcile(Arc::new(b.clone()), &client, &settings, now())
        .await
        .expect("reconcile");
    server.done().await;

    // The node agents stopped both: the backup is Canceled, not Failed.
    let (_repo, _) = repository_with_snapshots(&settings);
    let (client, server) = ApiServer::start(vec![
        Call::new("GET", format!("{PVBS}{LIST_PVBS}")).ok(list(
            "PodVolumeBackup",
            vec![
                pvb(
                    "nightly-a",
                    "data",
                    json!({"phase": "Canceled", "message": "canceled"}),
                ),
                pvb(
                    "nightly-b",
                    "scratch",
                    json!({"phase": "Canceled", "message": "canceled"}),
                ),
            ],
        )),
        Call::new("GET", format!("{SECRETS}/podvault-repo-shop")).ok(key_secret()),
        Call::new(
            "PATCH",
            format!("{BACKUPS}/nightly/status?{APPLY_CONTROLLER}"),
        )
        .body_check(|body| {
            assert_eq!(body["status"]["phase"], "Canceled");
            assert_eq!(body["status"]["volumes"]["canceled"], 2);
            assert_eq!(
                body["status"]["message"],
                "shop/db-0 volume data: canceled; shop/db-0 volume scratch: canceled"
            );
        })
        .ok(serde_json::to_value(backup(json!({}))).expect("json")),
    ]);
    reconcile(Arc::new(b), &client, &settings, now())
        .await
        .expect("reconcile");
    server.done().await;
}

#[tokio::test]
async fn an_expired_backup_is_deleted_and_its_finalizer_forgets_the_snapshots() {
    let tmp = tempfile::tempdir().expect("tmp");
    let settings = settings(tmp.path());
    let (repo, ids) = repository_with_snapshots(&settings);
    repo.save_document("backup-nightly.json", b"{}")
        .expect("doc");

    // Not yet expired: nothing is sent, the next look is at the expiration.
    let completed = backup(json!({"status": {"phase": "Completed",
        "expiration": "2026-11-24T10:30:00Z"}}));
    let (client, server) = ApiServer::start(vec![]);
    let action = reconcile(Arc::new(completed), &client, &settings, now())
        .await
        .expect("reconcile");
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(1800))
    );
    server.done().await;

    let expired = backup(json!({"status": {"phase": "Completed",
        "expiration": "2026-11-24T09:59:59Z"}}));
    let (client, server) = ApiServer::start(vec![
        Call::new("DELETE", format!("{BACKUPS}/nightly?"))
            .ok(serde_json::to_value(&expired).expect("json")),
    ]);
    reconcile(Arc::new(expired.clone()), &client, &settings, now())
        .await
        .expect("reconcile");
    server.done().await;

    // Deleting: the first snapshot's volume is done, so it is forgotten with the record;
    // then the finalizer goes.
    let mut deleting = expired;
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    let (client, server) = ApiServer::start(vec![
        Call::new("GET", format!("{PVBS}{LIST_PVBS}")).ok(list(
            "PodVolumeBackup",
            vec![pvb(
                "nightly-a",
                "data",
                json!({"phase": "Completed", "snapshotID": ids[0]}),
            )],
        )),
        Call::new("GET", format!("{SECRETS}/podvault-repo-shop")).ok(key_secret()),
        Call::new("PATCH", format!("{BACKUPS}/nightly?"))
            .body(json!([
                {"op": "test", "path": "/metadata/finalizers/0",
                 "value": "podvault.io/forget-snapshots"},
                {"op": "remove", "path": "/metadata/finalizers/0"}
            ]))
            .ok(serde_json::to_value(&deleting).expect("json")),
    ]);
    reconcile(Arc::new(deleting), &client, &settings, now())
        .await
        .expect("reconcile");
    server.done().await;
    let left: Vec<String> = repo
        .snapshots()
        .expect("snapshots")
        .into_iter()
        .map(|(id, _)| id.to_hex())
        .collect();
    assert_eq!(
        left,
        vec![ids[1].clone()],
        "only the other snapshot is left"
    );
    assert_eq!(repo.documents().expect("docs"), Vec::<String>::new());
}

#[tokio::test]
async fn a_deleted_backup_waits_for_its_running_volumes_to_stop() {
    let tmp = tempfile::tempdir().expect("tmp");
    let settings = settings(tmp.path());
    let mut deleting = running_backup(json!({}));
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    let (client, server) = ApiServer::start(vec![
        Call::new("GET", format!("{PVBS}{LIST_PVBS}")).ok(list(
            "PodVolumeBackup",
            vec![pvb("nightly-a", "data", json!({"phase": "InProgress"}))],
        )),
        Call::new("PATCH", format!("{PVBS}/nightly-a?{BY_CONTROLLER}"))
            .body(json!({"spec": {"cancel": true}}))
            .ok(pvb("nightly-a", "data", json!({}))),
    ]);
    let err = reconcile(Arc::new(deleting), &client, &settings, now())
        .await
        .expect_err("must wait");
    assert!(
        err.to_string().contains("waiting for 1 running volumes"),
        "{err}"
    );
    server.done().await;
}

#[tokio::test]
async fn a_volume_no_node_agent_finishes_in_time_is_failed_by_the_controller() {
    let tmp = tempfile::tempdir().expect("tmp");
    let settings = settings(tmp.path());
    let b = running_backup(json!({}));
    let mut stuck = pvb("nightly-a", "data", json!({"phase": "New"}));
    stuck["metadata"]["creationTimestamp"] = json!("2026-11-24T05:00:00Z");
    stuck["spec"]["node"] = json!("worker-gone");
    // Started 5 h 59 min ago with a 6 h limit: still within it plus the grace.
    let mut slow = pvb(
        "nightly-b",
        "scratch",
        json!({"phase": "InProgress",
        "startTimestamp": "2026-11-24T04:01:00Z"}),
    );
    slow["spec"]["timeout"] = json!("6h");
    let (client, server) = ApiServer::start(vec![
        Call::new("GET", format!("{PVBS}{LIST_PVBS}"))
            .ok(list("PodVolumeBackup", vec![stuck.clone(), slow.clone()])),
        Call::new("PATCH", format!("{PVBS}/nightly-a/status?{APPLY_CONTROLLER}"))
            .body(json!({"apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeBackup", "status": {"phase": "Failed",
                "progress": {"totalBytes": 0, "bytesDone": 0, "bytesNew": 0},
                "message": "the node agent of node worker-gone did not start it within the time limit",
                "completionTimestamp": "2026-11-24T10:00:00Z"}}))
            .ok(stuck),
        Call::new("PATCH", format!("{BACKUPS}/nightly/status?{APPLY_CONTROLLER}"))
            .body_check(|b| {
                assert_eq!(b["status"]["phase"], "InProgress");
                assert_eq!(b["status"]["volumes"]["failed"], 1);
            })
            .ok(serde_json::to_value(backup(json!({}))).expect("json")),
    ]);
    reconcile(Arc::new(b), &client, &settings, now())
        .await
        .expect("reconcile");
    server.done().await;
}
