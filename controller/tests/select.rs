//! Volume selection on real pod, claim and volume manifests.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use podvault_controller::crd::PodRef;
use podvault_controller::select::{Selection, back_up_claims_once, select_volumes};

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    podvault_testkit::fixture(env!("CARGO_MANIFEST_DIR"), name)
}

fn world() -> (
    Pod,
    BTreeMap<String, PersistentVolumeClaim>,
    BTreeMap<String, PersistentVolume>,
) {
    let claims: Vec<PersistentVolumeClaim> = fixture("claims.json");
    let volumes: Vec<PersistentVolume> = fixture("volumes.json");
    (
        fixture("pod-db.json"),
        claims
            .into_iter()
            .map(|c| (c.metadata.name.clone().unwrap_or_default(), c))
            .collect(),
        volumes
            .into_iter()
            .map(|v| (v.metadata.name.clone().unwrap_or_default(), v))
            .collect(),
    )
}

fn reasons(selection: &Selection) -> BTreeMap<String, String> {
    selection
        .skipped
        .iter()
        .map(|s| (s.volume.clone(), s.reason.clone()))
        .collect()
}

fn chosen(selection: &Selection) -> Vec<&str> {
    selection
        .volumes
        .iter()
        .map(|v| v.volume.as_str())
        .collect()
}

#[test]
fn opt_in_by_velero_annotation_takes_named_volumes_and_says_why_others_are_left() {
    let (pod, claims, volumes) = world();
    let s = select_volumes(&pod, &claims, &volumes, false);
    assert_eq!(chosen(&s), ["data", "scratch"]);
    assert_eq!(s.volumes[0].claim.as_deref(), Some("pgdata"));
    assert_eq!(s.volumes[0].exclude_paths, ["pg_wal/*.tmp", "*.lock"]);
    assert_eq!(s.volumes[1].exclude_paths, ["cache/**", "*.lock"]);
    let r = reasons(&s);
    assert!(r["config"].contains("ConfigMap"), "{r:?}");
    assert!(r["missing"].contains("does not have"), "{r:?}");
    assert!(
        !r.contains_key("unused"),
        "not asked for, not reported: {r:?}"
    );
    assert_eq!(s.skipped[0].namespace, "shop");
    assert_eq!(s.skipped[0].pod, "db-7d9c6b5f4-x2k8q");
}

#[test]
fn opt_out_mode_takes_every_file_system_volume_but_the_excluded_ones() {
    let (mut pod, claims, volumes) = world();
    let annotations = pod
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.remove("backup.velero.io/backup-volumes");
    annotations.insert(
        "backup.podvault.io/backup-volumes-excludes".into(),
        "scratch".into(),
    );
    let s = select_volumes(&pod, &claims, &volumes, true);
    assert_eq!(chosen(&s), ["data"]);
    let r = reasons(&s);
    assert!(r["unused"].contains("no container"), "{r:?}");
    assert!(r["node-logs"].contains("hostPath"), "{r:?}");
    assert!(r["kube-api-access-9xk2p"].contains("projected"), "{r:?}");
    assert!(!r.contains_key("scratch"), "opted out: {r:?}");
}

#[test]
fn block_mode_host_path_claims_and_pods_not_running_are_skipped_with_reasons() {
    let (mut pod, claims, volumes) = world();
    let spec = pod.spec.as_mut().expect("spec");
    let vols = spec.volumes.as_mut().expect("volumes");
    for (name, claim) in [("raw", "raw"), ("nodelocal", "on-node"), ("gone", "nope")] {
        vols.push(
            serde_json::from_value(serde_json::json!({
                "name": name, "persistentVolumeClaim": {"claimName": claim}
            }))
            .expect("volume"),
        );
        spec.containers[0]
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(
                serde_json::from_value(
                    serde_json::json!({"name": name, "mountPath": format!("/{name}")}),
                )
                .expect("mount"),
            );
    }
    let s = select_volumes(&pod, &claims, &volumes, true);
    let r = reasons(&s);
    assert!(r["raw"].contains("block-mode"), "{r:?}");
    assert!(
        r["nodelocal"].contains("hostPath volume local-hostpath-pv"),
        "{r:?}"
    );
    assert!(r["gone"].contains("claim nope does not exist"), "{r:?}");

    pod.status.as_mut().expect("status").phase = Some("Pending".into());
    let s = select_volumes(&pod, &claims, &volumes, true);
    assert!(s.volumes.is_empty());
    assert!(reasons(&s)["data"].contains("not running (phase Pending)"));
}

#[test]
fn a_bad_exclude_glob_leaves_the_volume_out_with_the_reason() {
    let (mut pod, claims, volumes) = world();
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            "backup.podvault.io/exclude-paths".into(),
            "data:[oops, scratch:../x".into(),
        );
    let s = select_volumes(&pod, &claims, &volumes, false);
    let r = reasons(&s);
    assert!(r["data"].contains("is not a glob"), "{r:?}");
    assert!(r["scratch"].contains("relative to the volume"), "{r:?}");
}

#[test]
fn a_shared_claim_is_backed_up_once() {
    let (pod, claims, volumes) = world();
    let mut other = pod.clone();
    other.metadata.name = Some("db-7d9c6b5f4-zz9k1".into());
    let mut selections: Vec<(PodRef, Selection)> = [pod, other]
        .iter()
        .map(|p| {
            (
                PodRef {
                    namespace: "shop".into(),
                    name: p.metadata.name.clone().unwrap_or_default(),
                    uid: String::new(),
                },
                select_volumes(p, &claims, &volumes, false),
            )
        })
        .collect();
    back_up_claims_once(&mut selections);
    assert_eq!(chosen(&selections[0].1), ["data", "scratch"]);
    assert_eq!(
        chosen(&selections[1].1),
        ["scratch"],
        "emptyDirs are each pod's own"
    );
    assert!(reasons(&selections[1].1)["data"].contains("backed up through pod db-7d9c6b5f4-x2k8q"));
}

#[test]
fn generic_ephemeral_and_inline_csi_volumes_are_backed_up_and_opted_out_like_others() {
    let (pod, mut claims, volumes) = world();
    let mut pod = serde_json::to_value(pod).expect("json");
    let spec = &mut pod["spec"];
    spec["volumes"].as_array_mut().expect("volumes").extend([
        serde_json::json!({"name": "work", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}}),
        serde_json::json!({"name": "inline", "csi": {"driver": "secrets-store.csi.k8s.io"}}),
    ]);
    spec["containers"][0]["volumeMounts"]
        .as_array_mut()
        .expect("mounts")
        .extend([
            serde_json::json!({"name": "work", "mountPath": "/work"}),
            serde_json::json!({"name": "inline", "mountPath": "/inline"}),
        ]);
    let mut pod: Pod = serde_json::from_value(pod).expect("pod");
    // Kubernetes names the ephemeral volume's claim `<pod>-<volume>`.
    let mut work: PersistentVolumeClaim = claims["pgdata"].clone();
    work.metadata.name = Some("db-7d9c6b5f4-x2k8q-work".into());
    claims.insert("db-7d9c6b5f4-x2k8q-work".into(), work);
    let s = select_volumes(&pod, &claims, &volumes, true);
    assert_eq!(chosen(&s), ["data", "scratch", "work", "inline"]);
    assert_eq!(
        s.volumes[2].claim.as_deref(),
        Some("db-7d9c6b5f4-x2k8q-work")
    );
    assert_eq!(s.volumes[3].claim, None);
    // Opted out by name like any other volume.
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            "backup.podvault.io/backup-volumes-excludes".into(),
            "work,inline".into(),
        );
    assert_eq!(
        chosen(&select_volumes(&pod, &claims, &volumes, true)),
        ["data", "scratch"]
    );
    // Opted in by name; an ephemeral claim not made yet is a reason, not a failure.
    let annotations = pod
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.clear();
    annotations.insert(
        "backup.podvault.io/backup-volumes".into(),
        "work,inline".into(),
    );
    assert_eq!(
        chosen(&select_volumes(&pod, &claims, &volumes, false)),
        ["work", "inline"]
    );
    claims.remove("db-7d9c6b5f4-x2k8q-work");
    let s = select_volumes(&pod, &claims, &volumes, false);
    assert_eq!(chosen(&s), ["inline"]);
    assert!(reasons(&s)["work"].contains("db-7d9c6b5f4-x2k8q-work does not exist"));
}
