//! Against a real cluster with podvault installed (namespace `podvault`, or
//! PODVAULT_NAMESPACE): back up an annotated pod's volume, delete the pod, restore it into
//! a re-created pod and read the data back. Run with `cargo test -- --ignored`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, LogParams, ObjectMeta, PostParams};
use podvault_controller::crd::{Backup, BackupSpec, Phase, Restore, RestoreSpec};
use serde_json::json;

fn install_namespace() -> String {
    std::env::var("PODVAULT_NAMESPACE").unwrap_or_else(|_| "podvault".into())
}

fn pod(name: &str, write: bool) -> Pod {
    let script = if write {
        "echo podvault-$(date +%s) > /data/stamp && cat /data/stamp && sleep 3600"
    } else {
        "cat /data/stamp && sleep 3600"
    };
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name,
                     "annotations": {"backup.podvault.io/backup-volumes": "data"}},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36",
                                 "command": ["sh", "-c", script],
                                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                 "volumes": [{"name": "data", "emptyDir": {}}]}
    }))
    .expect("pod")
}

async fn wait_phase<F, Fut>(what: &str, mut get: F) -> Phase
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Phase>>,
{
    for _ in 0..300 {
        if let Some(p) = get().await
            && p.is_final()
        {
            return p;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    panic!("{what} did not finish in 10 minutes");
}

async fn running(pods: &Api<Pod>) {
    kube::runtime::wait::await_condition(
        pods.clone(),
        "app",
        kube::runtime::conditions::is_pod_running(),
    )
    .await
    .expect("running");
}

async fn logs(pods: &Api<Pod>, name: &str) -> String {
    pods.logs(name, &LogParams::default()).await.expect("logs")
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn a_pod_volume_is_backed_up_and_restored_into_a_new_pod() {
    let client = Client::try_default().await.expect("a cluster (kubeconfig)");
    let install = install_namespace();
    let ns = format!("podvault-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .expect("namespace");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod("app", true))
        .await
        .expect("pod");
    running(&pods).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = logs(&pods, "app").await;

    let backups: Api<Backup> = Api::namespaced(client.clone(), &install);
    let name = format!("e2e-{}", std::process::id());
    let spec = BackupSpec {
        included_namespaces: vec![ns.clone()],
        ..BackupSpec::default()
    };
    backups
        .create(&PostParams::default(), &Backup::new(&name, spec))
        .await
        .expect("backup");
    let phase = wait_phase("backup", || async {
        backups.get(&name).await.ok()?.status.map(|s| s.phase)
    })
    .await;
    assert_eq!(phase, Phase::Completed);

    pods.delete("app", &DeleteParams::default())
        .await
        .expect("delete");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restores: Api<Restore> = Api::namespaced(client.clone(), &install);
    let spec = RestoreSpec {
        backup_name: name.clone(),
        namespace_mapping: BTreeMap::new(),
        included_volumes: Vec::new(),
        restore_pods: false,
        timeout: None,
    };
    restores
        .create(&PostParams::default(), &Restore::new(&name, spec))
        .await
        .expect("restore");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Created by "someone else": the webhook adds the restore helper.
    pods.create(&PostParams::default(), &pod("app", false))
        .await
        .expect("pod again");
    let phase = wait_phase("restore", || async {
        restores.get(&name).await.ok()?.status.map(|s| s.phase)
    })
    .await;
    assert_eq!(phase, Phase::Completed);
    running(&pods).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(logs(&pods, "app").await, before);
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    let _ = backups.delete(&name, &DeleteParams::default()).await;
}
