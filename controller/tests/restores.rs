//! The restore controller against a scripted API server and real repositories: a backup
//! found through its records (also in a cluster that lost every podvault object), target
//! namespaces labeled for the webhook, claims and bare pods created again, and the label
//! removed when the volumes are done.

mod apiserver;

use std::path::Path;
use std::sync::Arc;

use apiserver::{APPLY_CONTROLLER, ApiServer, BY_CONTROLLER, Call, list};
use k8s_openapi::jiff::Timestamp;
use podvault_controller::backups::{BackupRecord, record_name};
use podvault_controller::cluster::Settings;
use podvault_controller::crd::{Backup, PodVolumeBackup, Restore};
use podvault_controller::restores::{
    check_included_volume, plan_restore, reconcile, volume_object_name,
};
use podvault_s3::{S3Options, open_backend};
use podvault_store::Repository;
use podvault_testkit::fast_init;
use serde_json::{Value, json};

const KEY: &[u8] = b"the-test-key";
const PVBS: &str = "/apis/podvault.io/v1alpha1/namespaces/podvault/podvolumebackups";
const PVRS: &str = "/apis/podvault.io/v1alpha1/namespaces/podvault/podvolumerestores";
const RESTORES: &str = "/apis/podvault.io/v1alpha1/namespaces/podvault/restores";

fn settings(storage: &Path) -> Settings {
    Settings {
        namespace: "podvault".into(),
        storage: storage.display().to_string(),
        s3: S3Options::default(),
        init: fast_init(),
    }
}

fn now() -> Timestamp {
    "2026-11-24T10:00:00Z".parse().expect("time")
}

fn fixture(name: &str) -> Value {
    podvault_testkit::fixture(env!("CARGO_MANIFEST_DIR"), name)
}

/// The record a finished backup left in namespace `shop`'s repository: the fixture pod
/// (a Deployment's) with its claim `pgdata` and emptyDir `scratch`, plus a bare pod.
fn record() -> BackupRecord {
    let db = fixture("pod-db.json");
    let uid = db["metadata"]["uid"].as_str().expect("uid").to_string();
    let bare = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "tool", "namespace": "shop", "uid": "bare-uid",
                     "annotations": {"pv.kubernetes.io/x": "dropped", "keep": "me"}},
        "spec": {"nodeName": "worker-9", "containers": [{"name": "t", "image": "busybox"}],
                 "volumes": [{"name": "cache", "emptyDir": {}}]}});
    let claims: Vec<Value> = serde_json::from_value(fixture("claims.json")).expect("claims");
    let pvb = |name: &str,
               pod: &str,
               pod_uid: &str,
               volume: &str,
               claim: Option<&str>,
               snap: &str|
     -> PodVolumeBackup {
        serde_json::from_value(json!({
            "apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeBackup",
            "metadata": {"name": name},
            "spec": {"backupName": "nightly", "node": "worker-1",
                     "pod": {"namespace": "shop", "name": pod, "uid": pod_uid},
                     "volume": volume, "claim": claim, "repository": "shop", "lineage": "l"},
            "status": {"phase": "Completed", "snapshotID": snap}
        }))
        .expect("pvb")
    };
    BackupRecord {
        backup: Backup::new("nightly", Default::default()),
        volumes: vec![
            pvb(
                "nightly-1",
                "db-7d9c6b5f4-x2k8q",
                &uid,
                "data",
                Some("pgdata"),
                "s1",
            ),
            pvb(
                "nightly-2",
                "db-7d9c6b5f4-x2k8q",
                &uid,
                "scratch",
                None,
                "s2",
            ),
            pvb("nightly-3", "tool", "bare-uid", "cache", None, "s3"),
        ],
        pods: vec![
            serde_json::from_value(db).expect("pod"),
            serde_json::from_value(bare).expect("pod"),
        ],
        claims: claims
            .into_iter()
            .map(|c| serde_json::from_value(c).expect("claim"))
            .collect(),
    }
}

fn restore(spec: Value) -> Restore {
    serde_json::from_value(json!({
        "apiVersion": "podvault.io/v1alpha1", "kind": "Restore",
        "metadata": {"name": "again", "namespace": "podvault", "uid": "r-uid"},
        "spec": spec
    }))
    .expect("restore")
}

#[test]
fn a_restore_plan_matches_claims_workloads_and_bare_pods() {
    let r = restore(json!({"backupName": "nightly",
                           "namespaceMapping": {"shop": "shop-copy"}, "restorePods": true}));
    let plan = plan_restore(&r, &[("shop".to_string(), record())]);
    let targets: Vec<String> = plan
        .volumes
        .iter()
        .map(|v| serde_json::to_string(&v.target).expect("json"))
        .collect();
    assert_eq!(
        targets,
        vec![
            r#"{"claim":"pgdata"}"#,
            // With restorePods the bare pod is made again by name; a workload's volume is
            // matched by name too, since its controller is not restored here.
            r#"{"podName":"db-7d9c6b5f4-x2k8q"}"#,
            r#"{"podName":"tool"}"#,
        ]
    );
    assert!(
        plan.volumes
            .iter()
            .all(|v| v.target_namespace == "shop-copy"
                && v.restore_uid == "r-uid"
                && v.repository == "shop")
    );
    assert_eq!(plan.claims.len(), 1);
    let claim = &plan.claims[0];
    assert_eq!(claim.metadata.namespace.as_deref(), Some("shop-copy"));
    assert_eq!(
        claim.spec.as_ref().and_then(|s| s.volume_name.clone()),
        None
    );
    assert!(claim.metadata.uid.is_none() && claim.metadata.resource_version.is_none());
    // Only the bare pod is created: the Deployment's ReplicaSet makes its own pods.
    assert_eq!(plan.pods.len(), 1);
    let pod = &plan.pods[0];
    assert_eq!(pod.metadata.name.as_deref(), Some("tool"));
    assert_eq!(pod.spec.as_ref().and_then(|s| s.node_name.clone()), None);
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.keys().collect::<Vec<_>>(), vec!["keep"]);

    // Without restorePods, a workload's emptyDir is matched by its owner, and a volume
    // filter leaves the others out.
    let r = restore(json!({"backupName": "nightly",
                           "includedVolumes": ["shop/db-7d9c6b5f4-x2k8q/scratch"]}));
    let plan = plan_restore(&r, &[("shop".to_string(), record())]);
    assert_eq!(plan.volumes.len(), 1);
    assert_eq!(
        plan.volumes[0].target.owner.as_deref(),
        Some("Deployment/db")
    );
    assert!(plan.pods.is_empty() && plan.claims.is_empty());
}

#[test]
fn included_volumes_name_a_pods_volume_or_a_claim_in_the_backed_up_namespace() {
    let planned = |entries: Value| -> Vec<String> {
        let r = restore(json!({"backupName": "nightly", "includedVolumes": entries,
                               "namespaceMapping": {"shop": "shop-copy"}}));
        plan_restore(&r, &[("shop".to_string(), record())])
            .volumes
            .iter()
            .map(|v| v.volume.clone())
            .collect()
    };
    assert_eq!(planned(json!(["shop/pgdata"])), ["data"]);
    assert_eq!(planned(json!(["shop/tool/cache"])), ["cache"]);
    assert_eq!(
        planned(json!(["shop/db-7d9c6b5f4-x2k8q/data", "shop/tool/cache"])),
        ["data", "cache"]
    );
    // The namespace is the backed-up one, not the target; a bare volume name is no form.
    assert!(planned(json!(["shop-copy/pgdata"])).is_empty());
    assert!(planned(json!(["shop/other/cache"])).is_empty());
    for bad in ["cache", "shop//cache", "a/b/c/d", ""] {
        let err = check_included_volume(bad).expect_err(bad).to_string();
        assert!(err.contains("namespace/pod/volume"), "{err}");
    }
    for good in ["shop/pgdata", "shop/tool/cache"] {
        check_included_volume(good).expect(good);
    }
}

#[test]
fn a_generic_ephemeral_volume_is_restored_into_the_new_pods_own_claim() {
    let mut rec = record();
    // The bare pod's volume `work` was a generic ephemeral volume on claim `tool-work`.
    let tool = rec
        .pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some("tool"));
    let tool = tool.expect("the bare pod");
    let mut spec = serde_json::to_value(tool.spec.take()).expect("json");
    spec["volumes"] = json!([{"name": "work", "ephemeral": {"volumeClaimTemplate": {
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}}}}]);
    tool.spec = serde_json::from_value(spec).expect("spec");
    rec.volumes[2].spec.volume = "work".into();
    rec.volumes[2].spec.claim = Some("tool-work".into());
    let r = restore(json!({"backupName": "nightly", "includedVolumes": ["shop/tool/work"]}));
    let plan = plan_restore(&r, &[("shop".to_string(), rec)]);
    assert_eq!(plan.volumes.len(), 1);
    let v = &plan.volumes[0];
    // Found by its pod (the new pod's claim is `<its name>-work`), and the claim is left
    // to Kubernetes, which makes it with the pod.
    assert!(v.ephemeral);
    assert_eq!(v.target.pod_name.as_deref(), Some("tool"));
    assert_eq!(v.target.claim, None);
    assert!(plan.claims.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_in_a_rebuilt_cluster_finds_the_backup_through_the_key_secrets() {
    let tmp = tempfile::tempdir().expect("tmp");
    let settings = settings(&tmp.path().join("store"));
    let at = format!("{}/podvault/shop", settings.storage);
    let repo = Repository::init(
        open_backend(&at, &settings.s3).expect("backend"),
        KEY,
        &fast_init(),
    )
    .expect("init");
    repo.save_document(
        &record_name("nightly"),
        &serde_json::to_vec(&record()).expect("json"),
    )
    .expect("record");

    let r = restore(json!({"backupName": "nightly", "namespaceMapping": {"shop": "shop-copy"}}));
    let plan = plan_restore(&r, &[("shop".to_string(), record())]);
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "podvault-repo-shop", "namespace": "podvault",
                     "labels": {"podvault.io/repository-key": "shop"}},
        "data": {"repository-password": "dGhlLXRlc3Qta2V5"}});
    let mut script = vec![
        // No PodVolumeBackups in this cluster: the key Secrets name the repositories.
        Call::new(
            "GET",
            format!("{PVBS}?&labelSelector=podvault.io%2Fbackup-name%3Dnightly"),
        )
        .ok(list("PodVolumeBackup", vec![])),
        Call::new(
            "GET",
            "/api/v1/namespaces/podvault/secrets?&labelSelector=podvault.io%2Frepository-key",
        )
        .ok(list("Secret", vec![secret.clone()])),
        Call::new(
            "GET",
            "/api/v1/namespaces/podvault/secrets/podvault-repo-shop",
        )
        .ok(secret),
        Call::new("POST", format!("/api/v1/namespaces?{BY_CONTROLLER}"))
            .body(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "shop-copy",
                             "labels": {"podvault.io/restore-in-progress": "again"}}}))
            .created(),
        Call::new(
            "POST",
            format!("/api/v1/namespaces/shop-copy/persistentvolumeclaims?{BY_CONTROLLER}"),
        )
        .body_check(|b| {
            assert_eq!(b["metadata"]["name"], "pgdata");
            assert_eq!(b["metadata"]["namespace"], "shop-copy");
            assert_eq!(b["spec"]["volumeName"], Value::Null);
        })
        .created(),
    ];
    for spec in &plan.volumes {
        let t = &spec.target;
        let who = t
            .pod_name
            .clone()
            .or(t.claim.clone())
            .or(t.owner.clone())
            .expect("who");
        let name = volume_object_name("again", "shop-copy", &who, &spec.volume);
        script.push(
            Call::new("POST", format!("{PVRS}?{BY_CONTROLLER}"))
                .body(json!({
                    "apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeRestore",
                    "metadata": {"name": name,
                        "labels": {"podvault.io/restore-name": "again"},
                        "ownerReferences": [{"apiVersion": "podvault.io/v1alpha1",
                            "kind": "Restore", "name": "again", "uid": "r-uid",
                            "controller": true}]},
                    "spec": serde_json::to_value(spec).expect("spec")
                }))
                .created(),
        );
    }
    script.push(
        Call::new("PATCH", format!("{RESTORES}/again/status?{APPLY_CONTROLLER}"))
            .body(json!({"apiVersion": "podvault.io/v1alpha1", "kind": "Restore", "status": {"phase": "InProgress",
                "volumes": {"total": 3, "completed": 0, "failed": 0, "canceled": 0, "skipped": 0},
                "startTimestamp": "2026-11-24T10:00:00Z"}}))
            .ok(serde_json::to_value(&r).expect("json")),
    );
    let (client, server) = ApiServer::start(script);
    reconcile(Arc::new(r), &client, &settings, now(), None)
        .await
        .expect("reconcile");
    server.done().await;
}

/// A finished restore reads its target namespace `shop`, still labeled for it…
fn label_of_shop_read() -> Call {
    Call::new("GET", "/api/v1/namespaces/shop").ok(json!({"apiVersion": "v1",
        "kind": "Namespace", "metadata": {"name": "shop",
        "labels": {"podvault.io/restore-in-progress": "again"}}}))
}

/// …and removes the label.
fn label_of_shop_removed() -> Call {
    Call::new("PATCH", format!("/api/v1/namespaces/shop?{BY_CONTROLLER}"))
        .body(json!({"metadata": {"labels": {"podvault.io/restore-in-progress": null}}}))
        .ok(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
}

#[tokio::test]
async fn a_finished_restore_removes_its_namespace_label_and_lists_what_failed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let settings = settings(tmp.path());
    let r = restore(json!({"backupName": "nightly"}));
    let mut running = serde_json::to_value(&r).expect("json");
    running["status"] = json!({"phase": "InProgress", "volumes": {"total": 2}});
    let r: Restore = serde_json::from_value(running).expect("restore");
    let pvr = |name: &str, status: Value| {
        json!({
        "apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeRestore",
        "metadata": {"name": name, "namespace": "podvault"},
        "spec": {"restoreName": "again", "targetNamespace": "shop", "target": {"claim": "pgdata"},
                 "volume": name, "snapshotID": "s", "repository": "shop"},
        "status": status})
    };
    let (client, server) = ApiServer::start(vec![
        Call::new("GET", format!("{PVRS}?&labelSelector=podvault.io%2Frestore-name%3Dagain"))
            .ok(list("PodVolumeRestore", vec![
                pvr("data", json!({"phase": "Completed"})),
                pvr("logs", json!({"phase": "PartiallyFailed",
                    "message": "2 attributes could not be restored",
                    "failedPaths": ["a: chown: Operation not permitted", "b: chown: Operation not permitted"]})),
            ])),
        label_of_shop_read(),
        label_of_shop_removed(),
        Call::new("PATCH", format!("{RESTORES}/again/status?{APPLY_CONTROLLER}"))
            .body_check(|b| {
                let s = &b["status"];
                assert_eq!(s["phase"], "PartiallyFailed");
                assert_eq!(s["volumes"]["completed"], 1);
                assert_eq!(s["volumes"]["failed"], 1);
                assert_eq!(s["completionTimestamp"], "2026-11-24T10:00:00Z");
                assert_eq!(
                    s["message"],
                    "shop volume logs: 2 attributes could not be restored \
                     (a: chown: Operation not permitted, b: chown: Operation not permitted)"
                );
            })
            .ok(serde_json::to_value(&r).expect("json")),
    ]);
    reconcile(Arc::new(r), &client, &settings, now(), None)
        .await
        .expect("reconcile");
    server.done().await;
}

#[tokio::test]
async fn a_restore_of_an_unknown_backup_fails_with_a_clear_message() {
    let tmp = tempfile::tempdir().expect("tmp");
    let settings = settings(tmp.path());
    let r = restore(json!({"backupName": "nope"}));
    let (client, server) = ApiServer::start(vec![
        Call::new(
            "GET",
            format!("{PVBS}?&labelSelector=podvault.io%2Fbackup-name%3Dnope"),
        )
        .ok(list("PodVolumeBackup", vec![])),
        Call::new(
            "GET",
            "/api/v1/namespaces/podvault/secrets?&labelSelector=podvault.io%2Frepository-key",
        )
        .ok(list("Secret", vec![])),
        Call::new(
            "PATCH",
            format!("{RESTORES}/again/status?{APPLY_CONTROLLER}"),
        )
        .body_check(|b| {
            assert_eq!(b["status"]["phase"], "Failed");
            assert_eq!(
                b["status"]["message"],
                "backup nope has no record in any repository this cluster has a key for"
            );
        })
        .ok(serde_json::to_value(&r).expect("json")),
    ]);
    reconcile(Arc::new(r), &client, &settings, now(), None)
        .await
        .expect("reconcile");
    server.done().await;
}

/// The listing of the Restore's volumes, answered with `items`.
fn pvrs_listed(items: Vec<Value>) -> Call {
    Call::new("GET", format!("{PVRS}{PVRS_OF_AGAIN}")).ok(list("PodVolumeRestore", items))
}

/// Reconciles `r` once against an API server that expects exactly `script`.
async fn reconcile_with(r: &Restore, script: Vec<Call>) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (client, server) = ApiServer::start(script);
    reconcile(
        Arc::new(r.clone()),
        &client,
        &settings(tmp.path()),
        now(),
        None,
    )
    .await
    .expect("reconcile");
    server.done().await;
}

/// A running Restore of `spec`, started at `started`.
fn running_restore(spec: Value, started: &str) -> Restore {
    let mut running = serde_json::to_value(restore(spec)).expect("json");
    running["status"] =
        json!({"phase": "InProgress", "startTimestamp": started, "volumes": {"total": 2}});
    serde_json::from_value(running).expect("restore")
}

fn waiting_pvr(name: &str, target: Value, status: Option<Value>) -> Value {
    let mut v = json!({
        "apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeRestore",
        "metadata": {"name": name, "namespace": "podvault", "resourceVersion": "7"},
        "spec": {"restoreName": "again", "restoreUid": "r-uid", "targetNamespace": "shop",
                 "target": target, "volume": name, "snapshotID": "s", "repository": "shop"}});
    if let Some(status) = status {
        v["status"] = status;
    }
    v
}

const PVRS_OF_AGAIN: &str = "?&labelSelector=podvault.io%2Frestore-name%3Dagain";

#[tokio::test]
async fn a_restore_gives_up_on_a_volume_whose_pod_never_came_and_ends() {
    // Started five hours ago; the default time limit is 4h.
    let r = running_restore(json!({"backupName": "nightly"}), "2026-11-24T05:00:00Z");
    reconcile_with(
        &r,
        vec![
            pvrs_listed(vec![
                waiting_pvr("data", json!({"claim": "pgdata"}), None),
                waiting_pvr(
                    "logs",
                    json!({"podName": "tool"}),
                    Some(json!({"phase": "Completed"})),
                ),
            ]),
            // Only the volume nobody took, and only if it is still the version read.
            Call::new("PATCH", format!("{PVRS}/data/status?{APPLY_CONTROLLER}"))
                .body_check(|b| {
                    assert_eq!(b["metadata"]["resourceVersion"], "7");
                    assert_eq!(b["status"]["phase"], "Failed");
                    assert_eq!(b["status"]["completionTimestamp"], "2026-11-24T10:00:00Z");
                    assert_eq!(
                        b["status"]["message"],
                        "no pod mounting claim pgdata appeared in namespace shop within 4h \
                     (the Restore's spec.timeout)"
                    );
                })
                .ok(waiting_pvr("data", json!({"claim": "pgdata"}), None)),
            label_of_shop_read(),
            label_of_shop_removed(),
            Call::new(
                "PATCH",
                format!("{RESTORES}/again/status?{APPLY_CONTROLLER}"),
            )
            .body_check(|b| {
                let s = &b["status"];
                assert_eq!(s["phase"], "PartiallyFailed");
                assert_eq!(s["volumes"]["completed"], 1);
                assert_eq!(s["volumes"]["failed"], 1);
                assert_eq!(
                    s["message"],
                    "shop volume data: no pod mounting claim pgdata appeared in namespace \
                     shop within 4h (the Restore's spec.timeout)"
                );
            })
            .ok(serde_json::to_value(&r).expect("json")),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_restore_waits_for_pods_within_its_time_limit_and_leaves_a_volume_taken_meanwhile() {
    let pvrs = || {
        vec![
            waiting_pvr("data", json!({"owner": "StatefulSet/db"}), None),
            waiting_pvr(
                "logs",
                json!({"podName": "tool"}),
                Some(json!({"phase": "New"})),
            ),
        ]
    };
    // Within its own limit of 6h: nothing is given up.
    let r = running_restore(
        json!({"backupName": "nightly", "timeout": "6h"}),
        "2026-11-24T05:00:00Z",
    );
    reconcile_with(
        &r,
        vec![
            // Nothing changed: not even the Restore's status is written.
            pvrs_listed(pvrs()),
        ],
    )
    .await;

    // Past a 30m limit, but a node agent took both volumes since they were listed.
    let r = running_restore(
        json!({"backupName": "nightly", "timeout": "30m"}),
        "2026-11-24T09:00:00Z",
    );
    let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "Conflict", "code": 409, "message": "the object has been modified"});
    reconcile_with(
        &r,
        vec![
            pvrs_listed(pvrs()),
            Call::new("PATCH", format!("{PVRS}/data/status?{APPLY_CONTROLLER}"))
                .reply(409, conflict.clone()),
            Call::new("PATCH", format!("{PVRS}/logs/status?{APPLY_CONTROLLER}"))
                .body_check(|b| {
                    assert_eq!(
                        b["status"]["message"],
                        "no pod tool appeared in namespace shop within 30m \
                     (the Restore's spec.timeout)"
                    );
                })
                .reply(409, conflict),
            // Both stay the agents' to finish: the Restore goes on, unchanged.
        ],
    )
    .await;
}

#[tokio::test]
async fn a_restore_with_a_bad_time_limit_fails_before_it_starts() {
    // A text that is not a duration never gets this far: the CRD's pattern refuses it.
    for (timeout, why) in [("0", "must be more than 0")] {
        let r = restore(json!({"backupName": "nightly", "timeout": timeout}));
        reconcile_with(
            &r,
            vec![
                Call::new(
                    "PATCH",
                    format!("{RESTORES}/again/status?{APPLY_CONTROLLER}"),
                )
                .body_check(move |b| {
                    assert_eq!(b["status"]["phase"], "Failed");
                    let message = b["status"]["message"].as_str().expect("message");
                    assert!(
                        message.starts_with("spec.timeout: duration \"0s\"")
                            && message.contains(why),
                        "{message}"
                    );
                })
                .ok(serde_json::to_value(&r).expect("json")),
            ],
        )
        .await;
    }
}

#[tokio::test]
async fn past_its_time_limit_a_restore_fails_volumes_whose_pod_is_gone_deleted_or_failed_and_waits_for_one_still_running()
 {
    let r = running_restore(json!({"backupName": "nightly"}), "2026-11-24T05:00:00Z");
    let taken = |name: &str, pod: &str, uid: &str| {
        let mut v = waiting_pvr(
            name,
            json!({"podName": pod}),
            Some(json!({"phase": "InProgress"})),
        );
        v["spec"]["node"] = json!("worker-1");
        v["spec"]["pod"] = json!({"namespace": "shop", "name": pod, "uid": uid});
        v
    };
    let pod = |name: &str, uid: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "shop", "uid": uid}})
    };
    // A pod being deleted for hours: its node is unreachable, and the pod stays until it
    // comes back or someone forces the deletion.
    let mut deleting = pod("web-0", "uid-web");
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-24T06:00:00Z");
    let mut failed = pod("job-0", "uid-job");
    failed["status"] = json!({"phase": "Failed"});
    let fails_with = |name: &'static str, message: &'static str| {
        Call::new("PATCH", format!("{PVRS}/{name}/status?{APPLY_CONTROLLER}"))
            .body_check(move |b| {
                assert_eq!(b["status"]["phase"], "Failed");
                assert_eq!(b["status"]["message"], message);
            })
            .ok(taken(name, "any", "any"))
    };
    reconcile_with(
        &r,
        vec![
            pvrs_listed(vec![
                taken("cache", "web-0", "uid-web"),
                taken("data", "db-0", "uid-db"),
                taken("logs", "tool", "uid-tool"),
                taken("queue", "job-0", "uid-job"),
            ]),
            Call::new("GET", "/api/v1/namespaces/shop/pods/web-0").ok(deleting),
            fails_with(
                "cache",
                "pod shop/web-0, whose volume was being restored, is being deleted (its node \
                 may be lost); not finished within 4h (the Restore's spec.timeout)",
            ),
            // db-0 was deleted and made again: another pod, which the restore never reached.
            Call::new("GET", "/api/v1/namespaces/shop/pods/db-0").ok(pod("db-0", "uid-new")),
            Call::new("PATCH", format!("{PVRS}/data/status?{APPLY_CONTROLLER}"))
                .body_check(|b| {
                    assert_eq!(b["metadata"]["resourceVersion"], "7");
                    assert_eq!(b["status"]["phase"], "Failed");
                    assert_eq!(
                        b["status"]["message"],
                        "pod shop/db-0, whose volume was being restored, is gone; not finished \
                         within 4h (the Restore's spec.timeout)"
                    );
                })
                .ok(taken("data", "db-0", "uid-db")),
            // tool still runs: its node's agent finishes it.
            Call::new("GET", "/api/v1/namespaces/shop/pods/tool").ok(pod("tool", "uid-tool")),
            Call::new("GET", "/api/v1/namespaces/shop/pods/job-0").ok(failed),
            fails_with(
                "queue",
                "pod shop/job-0, whose volume was being restored, has failed; not finished \
                 within 4h (the Restore's spec.timeout)",
            ),
            Call::new(
                "PATCH",
                format!("{RESTORES}/again/status?{APPLY_CONTROLLER}"),
            )
            .body_check(|b| {
                let s = &b["status"];
                assert_eq!(s["phase"], "InProgress");
                assert_eq!(s["volumes"]["failed"], 3);
                assert_eq!(s["volumes"]["completed"], 0);
            })
            .ok(serde_json::to_value(&r).expect("json")),
        ],
    )
    .await;
}
