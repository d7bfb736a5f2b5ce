//! The stand-in API server refuses what a real one refuses, through a real kube client.

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use podvault_api::crd::{Backup, BackupSpec, BackupStatus, Phase};
use podvault_testkit::kubeapi::KubeApi;
use serde_json::json;

async fn client(api: &KubeApi) -> kube::Client {
    let address = api.serve().await;
    let config = Kubeconfig::from_yaml(&KubeApi::kubeconfig(address)).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .expect("config");
    kube::Client::try_from(config).expect("client")
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other}"),
    }
}

const BACKUPS: &str = "apis/podvault.io/v1alpha1/namespaces/podvault/backups";

#[tokio::test]
async fn objects_against_their_schema_are_refused_or_pruned() {
    let stand_in = KubeApi::new();
    let client = client(&stand_in).await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), "podvault");
    // A duration the CRD's pattern refuses never gets stored.
    let raw: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "podvault",
        &ApiResource::erase::<Backup>(&()),
    );
    let bad = json!({"apiVersion": "podvault.io/v1alpha1", "kind": "Backup",
        "metadata": {"name": "bad"}, "spec": {"ttl": "tomorrow"}});
    let err = raw
        .create(
            &PostParams::default(),
            &serde_json::from_value(bad).expect("object"),
        )
        .await
        .expect_err("refused");
    assert_eq!(code(err), 422);
    assert!(stand_in.get(&format!("{BACKUPS}/bad")).is_none());
    // An enum value the CRD does not list is refused; an undeclared status field is
    // dropped, and the drop is on record.
    backups
        .create(
            &PostParams::default(),
            &Backup::new("b", BackupSpec::default()),
        )
        .await
        .expect("create");
    let err = backups
        .patch_status(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Done"}})),
        )
        .await
        .expect_err("refused");
    assert_eq!(code(err), 422);
    backups
        .patch_status(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "New", "invented": 1}})),
        )
        .await
        .expect("pruned");
    let stored = stand_in.get(&format!("{BACKUPS}/b")).expect("b");
    assert!(stored["status"].get("invented").is_none(), "{stored}");
    assert_eq!(
        stand_in.warnings(),
        ["apis/podvault.io/v1alpha1/backups/b: status.invented"]
    );
    // A core object must decode as its type.
    let pods: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "shop",
        &ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()),
    );
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": "none"}});
    let err = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(pod).expect("object"),
        )
        .await
        .expect_err("refused");
    assert_eq!(code(err), 422);
}

#[tokio::test]
async fn field_managers_conflict_and_stale_versions_are_refused() {
    let stand_in = KubeApi::new();
    let client = client(&stand_in).await;
    let backups: Api<Backup> = Api::namespaced(client, "podvault");
    let created = backups
        .create(
            &PostParams::default(),
            &Backup::new("b", BackupSpec::default()),
        )
        .await
        .expect("create");
    let status = |phase: Phase| {
        Patch::Apply(
            json!({"apiVersion": "podvault.io/v1alpha1", "kind": "Backup",
            "status": BackupStatus { phase, ..BackupStatus::default() }}),
        )
    };
    let controller = PatchParams::apply("podvault-controller");
    backups
        .patch_status("b", &controller, &status(Phase::InProgress))
        .await
        .expect("apply");
    let owners = stand_in.managers(&format!("{BACKUPS}/b"));
    assert!(
        owners["podvault-controller"].contains(&"/status/phase".to_string()),
        "{owners:?}"
    );
    // Another manager may not take the phase unless it forces.
    let other = PatchParams::apply("someone-else");
    let err = backups
        .patch_status("b", &other, &status(Phase::Failed))
        .await
        .expect_err("conflict");
    assert_eq!(code(err), 409);
    backups
        .patch_status("b", &other.clone().force(), &status(Phase::Failed))
        .await
        .expect("forced");
    assert_eq!(
        backups.get("b").await.expect("get").status.map(|s| s.phase),
        Some(Phase::Failed)
    );
    // A write carrying the version it read loses to one made since.
    let mut stale = created.clone();
    stale.spec.cancel = true;
    let err = backups
        .replace("b", &PostParams::default(), &stale)
        .await
        .expect_err("stale");
    assert_eq!(code(err), 409);
    let err = backups
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"resourceVersion": created.metadata.resource_version},
                       "spec": {"cancel": true}}),
            ),
        )
        .await
        .expect_err("stale");
    assert_eq!(code(err), 409);
}
