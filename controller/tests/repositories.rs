//! The repository controller: a repository is pruned once per interval (freeing the data
//! of forgotten snapshots) and a repository not ready is tried again.

mod apiserver;

use std::sync::Arc;
use std::time::Duration;

use apiserver::{APPLY_CONTROLLER, ApiServer, Call};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use podvault_controller::cluster::Settings;
use podvault_controller::crd::BackupRepository;
use podvault_controller::repositories::reconcile;
use podvault_s3::{S3Options, open_backend};
use podvault_store::Repository;
use podvault_testkit::{fast_init, pseudo_random};
use serde_json::{Value, json};

const REPOS: &str = "/apis/podvault.io/v1alpha1/namespaces/podvault/backuprepositories";
const DAY: Duration = Duration::from_secs(86_400);

fn now() -> Timestamp {
    "2026-11-24T10:00:00Z".parse().expect("time")
}

fn repository(location: &str, status: Value) -> BackupRepository {
    serde_json::from_value(json!({
        "apiVersion": "podvault.io/v1alpha1", "kind": "BackupRepository",
        "metadata": {"name": "shop", "namespace": "podvault"},
        "spec": {"volumeNamespace": "shop", "location": location,
                 "keySecret": "podvault-repo-shop"},
        "status": status
    }))
    .expect("repository")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_is_pruned_once_per_interval_and_frees_forgotten_data() {
    let tmp = tempfile::tempdir().expect("tmp");
    let settings = Settings {
        namespace: "podvault".into(),
        storage: tmp.path().display().to_string(),
        s3: S3Options::default(),
        init: fast_init(),
    };
    let location = format!("{}/podvault/shop", settings.storage);
    let backend = open_backend(&location, &settings.s3).expect("backend");
    let repo = Repository::init(backend, b"the-test-key", &fast_init()).expect("init");
    let src = tmp.path().join("volume");
    std::fs::create_dir_all(&src).expect("mkdir");
    let mut ids = Vec::new();
    for seed in 0..2 {
        std::fs::write(src.join("file"), pseudo_random(seed, 2 << 20)).expect("write");
        ids.push(
            podvault_scanner::backup(&repo, &podvault_scanner::BackupOptions::new(&src))
                .expect("backup")
                .id,
        );
    }
    // The first backup was forgotten (its Backup expired): its data is garbage now.
    repo.remove_snapshot(&ids[0]).expect("forget");
    drop(repo);

    // Pruned yesterday at 11:00: not due until 11:00 today.
    let fresh = repository(
        &location,
        json!({"phase": "Ready",
        "lastMaintenance": "2026-11-23T11:00:00Z"}),
    );
    let (client, server) = ApiServer::start(vec![]);
    let action = reconcile(Arc::new(fresh), &client, &settings, now(), DAY)
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(3600)));
    server.done().await;

    let due = repository(
        &location,
        json!({"phase": "Ready",
        "lastMaintenance": "2026-11-23T09:00:00Z"}),
    );
    let (client, server) = ApiServer::start(vec![
        Call::new(
            "GET",
            "/api/v1/namespaces/podvault/secrets/podvault-repo-shop",
        )
        .ok(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "podvault-repo-shop", "namespace": "podvault"},
            "data": {"repository-password": "dGhlLXRlc3Qta2V5"}})),
        Call::new("PATCH", format!("{REPOS}/shop/status?{APPLY_CONTROLLER}"))
            .body_check(|b| {
                let s = &b["status"];
                assert_eq!(s["lastMaintenance"], "2026-11-24T10:00:00Z");
                let m = s["message"].as_str().expect("message");
                assert!(m.starts_with("pruned: 1 snapshots kept"), "{m}");
                assert!(
                    !m.contains("(0 bytes freed)"),
                    "the forgotten data is freed: {m}"
                );
            })
            .ok(serde_json::to_value(repository(&location, json!({}))).expect("json")),
    ]);
    let action = reconcile(Arc::new(due), &client, &settings, now(), DAY)
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(DAY));
    server.done().await;
    let repo = Repository::open(
        open_backend(&location, &settings.s3).expect("backend"),
        b"the-test-key",
    )
    .expect("open");
    let report = repo
        .check(podvault_store::CheckOptions::default())
        .expect("check");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn repositories_with_generated_keys_use_a_light_kdf_that_opens() {
    use podvault_controller::cluster::generated_key_init;
    let init = generated_key_init();
    let default = podvault_store::KdfParams::default();
    assert!(init.kdf.memory_kib * 8 <= default.memory_kib && init.kdf.iterations == 1);
    let dir = tempfile::tempdir().expect("tmp");
    let backend = std::sync::Arc::new(podvault_store::DirBackend::new(dir.path()));
    let key = [7u8; 32];
    let made = podvault_store::Repository::init(backend.clone(), &key, &init).expect("init");
    assert_eq!(made.config().kdf, init.kdf, "recorded for later keys");
    podvault_store::Repository::open(backend.clone(), &key).expect("opens with the key");
    assert!(podvault_store::Repository::open(backend, &[8u8; 32]).is_err());
}
