//! The webhook's decision on real pod manifests: matching, the patch, idempotence, the
//! protected pods, and the helper's security context for every variant Velero users hit.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use podvault_api::crd::{Phase, PodVolumeRestore};
use podvault_testkit::merge_json;
use podvault_webhook::config::{
    HelperConfig, HelperSettings, from_data, is_helper_config, quantity_value,
};
use podvault_webhook::decide::{decide, derived_security_context};
use serde_json::{Value, json};

fn pod(extra: Value) -> Pod {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "db-7d9c6b5f4-", "labels": {"pod-template-hash": "7d9c6b5f4"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                         "name": "db-7d9c6b5f4", "uid": "rs", "controller": true}]},
        "spec": {"containers": [{"name": "db", "image": "postgres:16"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "pgdata"}},
                             {"name": "scratch", "emptyDir": {}},
                             {"name": "token", "projected": {"sources": []}}]}
    });
    merge_json(&mut p, extra);
    serde_json::from_value(p).expect("pod")
}

fn pvr(volume: &str, target: Value, status: Value) -> PodVolumeRestore {
    serde_json::from_value(json!({
        "apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeRestore",
        "metadata": {"name": format!("r-{volume}"), "namespace": "podvault"},
        "spec": {"restoreName": "again", "restoreUid": "r-uid", "targetNamespace": "shop",
                 "target": target, "volume": volume, "snapshotID": "s", "repository": "shop"},
        "status": status
    }))
    .expect("pvr")
}

fn pending() -> Vec<PodVolumeRestore> {
    vec![
        pvr("data", json!({"claim": "pgdata"}), json!(null)),
        pvr(
            "scratch",
            json!({"owner": "Deployment/db"}),
            json!({"phase": "New"}),
        ),
        // Another workload's volume, and one already being restored: not for this pod.
        pvr("scratch", json!({"owner": "StatefulSet/db"}), json!(null)),
        pvr(
            "logs",
            json!({"claim": "pgdata"}),
            json!({"phase": "InProgress"}),
        ),
    ]
}

fn config() -> HelperConfig {
    HelperConfig::defaults("0.1.0")
}

fn apply(pod: &Pod, patch: &json_patch::Patch) -> Pod {
    let mut doc = serde_json::to_value(pod).expect("json");
    json_patch::patch(&mut doc, patch).expect("applies");
    serde_json::from_value(doc).expect("still a pod")
}

#[test]
fn a_deployment_pod_gets_the_helper_first_for_its_claim_and_its_scratch_volume() {
    let p = pod(json!({"spec": {"initContainers": [{"name": "migrate", "image": "m"}]}}));
    let d = decide(&p, "shop", "podvault", &pending(), &config());
    assert_eq!(d.restore_uid.as_deref(), Some("r-uid"));
    assert_eq!(d.volumes, ["data", "scratch"]);
    let typed = d.patch.expect("patch");
    let patch = serde_json::to_value(&typed).expect("json");
    assert_eq!(patch[0]["op"], "add");
    assert_eq!(patch[0]["path"], "/spec/initContainers/0");
    assert_eq!(
        patch[0]["value"],
        json!({
            "name": "restore-wait",
            "image": "ghcr.io/podvault/podvault:0.1.0",
            "command": ["podvault", "restore-wait", "--restore-uid", "r-uid",
                        "--volume", "data,scratch", "--root", "/restores",
                        "--timeout", "14400", "--markers", "/restores/.markers"],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE",
                 "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
            ],
            "volumeMounts": [{"name": "data", "mountPath": "/restores/data"},
                             {"name": "scratch", "mountPath": "/restores/scratch"},
                             {"name": "podvault-restore-markers",
                              "mountPath": "/restores/.markers", "readOnly": true}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                          "limits": {"cpu": "100m", "memory": "128Mi"}},
            "securityContext": {
                "runAsUser": 65532, "runAsNonRoot": true, "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
            }
        })
    );
    // The markers' own volume, which the node agent writes and the helper reads whatever
    // the restored volumes' owners and modes.
    assert_eq!(
        patch[1],
        json!({"op": "add", "path": "/spec/volumes/-",
               "value": {"name": "podvault-restore-markers", "emptyDir": {"sizeLimit": "1Mi"}}})
    );
    // Applied, the helper runs before the pod's own init container; applying the decision
    // again adds nothing (reinvocation, retries).
    let patched = apply(&p, &typed);
    let names: Vec<String> = patched
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["restore-wait", "migrate"]);
    let again = decide(&patched, "shop", "podvault", &pending(), &config());
    assert_eq!(again.patch, None);
    assert_eq!(again.skipped, Some("helper already present"));
}

#[test]
fn a_pod_without_init_containers_gets_the_list_created() {
    let d = decide(&pod(json!({})), "shop", "podvault", &pending(), &config());
    let typed = d.patch.expect("patch");
    let patch = serde_json::to_value(&typed).expect("json");
    assert_eq!(patch[0]["path"], "/spec/initContainers");
    assert_eq!(patch[0]["value"][0]["name"], "restore-wait");
    let patched = apply(&pod(json!({})), &typed);
    assert_eq!(
        patched
            .spec
            .and_then(|s| s.init_containers)
            .map(|c| c.len()),
        Some(1)
    );
}

#[test]
fn statefulset_and_bare_pods_are_matched_by_owner_and_by_name() {
    let sts = pod(
        json!({"metadata": {"name": "db-0", "generateName": null, "labels": null,
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                             "uid": "s", "controller": true}]},
        "spec": {"volumes": [{"name": "scratch", "emptyDir": {}}]}}),
    );
    let d = decide(&sts, "shop", "podvault", &pending(), &config());
    assert_eq!(d.volumes, ["scratch"]);
    let bare = pod(json!({"metadata": {"name": "tool", "generateName": null,
        "ownerReferences": null}}));
    let by_name = vec![pvr("scratch", json!({"podName": "tool"}), json!(null))];
    assert_eq!(
        decide(&bare, "shop", "podvault", &by_name, &config()).volumes,
        ["scratch"]
    );
    let other = pod(json!({"metadata": {"name": "other", "generateName": null,
        "ownerReferences": null}}));
    assert_eq!(
        decide(&other, "shop", "podvault", &by_name, &config()).skipped,
        Some("no pending restore for this pod")
    );
}

#[test]
fn protected_pods_are_never_touched() {
    let p = pod(json!({}));
    for (ns, why) in [
        ("kube-system", "protected namespace"),
        ("podvault", "protected namespace"),
        ("other", "no pending restore for this pod"),
    ] {
        let d = decide(&p, ns, "podvault", &pending(), &config());
        assert_eq!((d.patch, d.skipped), (None, Some(why)), "{ns}");
    }
    let mirror = pod(json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "x"}}}));
    assert_eq!(
        decide(&mirror, "shop", "podvault", &pending(), &config()).skipped,
        Some("mirror pod")
    );
}

#[test]
fn the_helper_runs_as_the_pod_does_or_restricted() {
    let ctx =
        |extra: Value| serde_json::to_value(derived_security_context(&pod(extra))).expect("json");
    let restricted = json!({"allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}});
    let with = |ids: Value| {
        let mut v = restricted.clone();
        merge_json(&mut v, ids);
        v
    };
    // PSA "restricted", no settings (#8229), and an image whose USER is a name (#9985):
    // a numeric non-root user makes runAsNonRoot verifiable.
    assert_eq!(
        ctx(json!({})),
        with(json!({"runAsUser": 65532, "runAsNonRoot": true}))
    );
    // runAsNonRoot with a pod-level user and group (#2437): the helper takes them.
    assert_eq!(
        ctx(
            json!({"spec": {"securityContext": {"runAsNonRoot": true, "runAsUser": 1000,
                                                 "runAsGroup": 3000}}})
        ),
        with(json!({"runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true}))
    );
    // The first container's settings win over the pod's.
    assert_eq!(
        ctx(json!({"spec": {"securityContext": {"runAsUser": 1000},
            "containers": [{"name": "db", "image": "p",
                            "securityContext": {"runAsUser": 999, "runAsGroup": 999}}]}})),
        with(json!({"runAsUser": 999, "runAsGroup": 999, "runAsNonRoot": true}))
    );
    // A pod that runs as root on purpose: its helper may too.
    assert_eq!(
        ctx(json!({"spec": {"securityContext": {"runAsUser": 0}}})),
        with(json!({"runAsUser": 0}))
    );
}

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_configmap_is_read_as_velero_documents_it() {
    let labels = |pairs: &[(&str, &str)]| data(pairs);
    assert!(is_helper_config(&labels(&[
        ("velero.io/plugin-config", ""),
        ("velero.io/pod-volume-restore", "RestoreItemAction")
    ])));
    assert!(is_helper_config(&labels(&[
        ("podvault.io/plugin-config", ""),
        ("podvault.io/pod-volume-restore", "RestoreItemAction")
    ])));
    assert!(!is_helper_config(&labels(&[(
        "podvault.io/plugin-config",
        ""
    )])));

    let HelperSettings {
        config: c,
        warnings,
    } = from_data(
        &data(&[
            ("image", "registry.local:5000/tools/helper"),
            ("cpuRequest", "200m"),
            ("memRequest", "0"),
            ("cpuLimit", "0.5"),
            ("memLimit", "1Gi"),
            ("secCtxRunAsUser", "1001"),
            ("secCtxRunAsGroup", "999"),
            ("secCtxAllowPrivilegeEscalation", "false"),
            (
                "secCtx",
                "capabilities:\n  drop: [ALL]\nreadOnlyRootFilesystem: true\nrunAsUser: 2002\n",
            ),
        ]),
        "0.1.0",
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        c.image, "registry.local:5000/tools/helper:0.1.0",
        "a registry port is not a tag"
    );
    assert_eq!(
        serde_json::to_value(&c.resources).expect("json"),
        json!({"requests": {"cpu": "200m"}, "limits": {"cpu": "0.5", "memory": "1Gi"}}),
        "\"0\" is unbounded: no value"
    );
    assert_eq!(
        serde_json::to_value(&c.security_context).expect("json"),
        json!({"capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": true,
               "runAsUser": 2002, "runAsGroup": 999, "allowPrivilegeEscalation": false}),
        "secCtx wins where it sets a field; the others fill the rest"
    );
    assert_eq!(
        from_data(&data(&[("image", "helper@sha256:abcd")]), "0.1.0")
            .config
            .image,
        "helper@sha256:abcd"
    );

    // Bad values fall back to the defaults with a warning each; none blocks a pod.
    let HelperSettings {
        config: c,
        warnings,
    } = from_data(
        &data(&[
            ("cpuRequest", "lots"),
            ("memRequest", "2Gi"),
            ("memLimit", "1Gi"),
            ("secCtxRunAsUser", "nobody"),
            ("secCtxAllowPrivilegeEscalation", "maybe"),
            ("secCtx", "runAsUser: [1"),
        ]),
        "0.1.0",
    );
    assert_eq!(c.resources, HelperConfig::defaults("0.1.0").resources);
    assert_eq!(c.security_context, None);
    assert_eq!(warnings.len(), 5, "{warnings:?}");
    assert!(warnings[0].contains("cpuRequest \"lots\""), "{warnings:?}");
    assert!(
        warnings[1].contains("memRequest 2Gi is above memLimit 1Gi"),
        "{warnings:?}"
    );
}

#[test]
fn quantities_compare_in_base_units() {
    for (text, value) in [
        ("100m", 0.1),
        ("0.5", 0.5),
        ("2", 2.0),
        ("128Mi", 134_217_728.0),
        ("1G", 1e9),
        ("1e3", 1000.0),
        ("1.5Gi", 1_610_612_736.0),
    ] {
        assert_eq!(quantity_value(text), Some(value), "{text}");
    }
    for bad in ["", "Mi", "-1", "1Q", "1e", "1.2.3"] {
        assert_eq!(quantity_value(bad), None, "{bad:?}");
    }
}

#[test]
fn the_cache_keeps_restores_not_started_and_the_first_labeled_configmap() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use podvault_webhook::watch::{helper_settings, pending};
    let mut started = pvr("data", json!({"claim": "pgdata"}), json!(null));
    started.spec.pod = Some(Default::default());
    let kept = pending(vec![
        pvr("a", json!({"claim": "x"}), json!(null)),
        pvr("b", json!({"claim": "x"}), json!({"phase": "New"})),
        pvr("c", json!({"claim": "x"}), json!({"phase": "InProgress"})),
        pvr("d", json!({"claim": "x"}), json!({"phase": "Completed"})),
        started,
    ]);
    let volumes: Vec<_> = kept.iter().map(|p| p.spec.volume.as_str()).collect();
    assert_eq!(volumes, ["a", "b"]);

    let map = |name: &str, labels: Value, data: Value| -> ConfigMap {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": labels}, "data": data}))
        .expect("configmap")
    };
    let velero =
        json!({"velero.io/plugin-config": "", "velero.io/pod-volume-restore": "RestoreItemAction"});
    let maps = [
        map("unrelated", json!({"app": "x"}), json!({"image": "evil"})),
        map("z-helper", velero.clone(), json!({"image": "second"})),
        map(
            "a-helper",
            velero,
            json!({"image": "first", "cpuLimit": "x"}),
        ),
    ];
    let (HelperSettings { config, warnings }, source) = helper_settings(maps.iter(), "0.1.0");
    assert_eq!(config.image, "first:0.1.0");
    assert_eq!(warnings.len(), 1);
    assert_eq!(
        source.and_then(|m| m.metadata.name).as_deref(),
        Some("a-helper")
    );
    let (HelperSettings { config, warnings }, source) = helper_settings(maps[..1].iter(), "0.1.0");
    assert_eq!(config, HelperConfig::defaults("0.1.0"));
    assert!(warnings.is_empty() && source.is_none());
}

#[test]
fn the_request_namespace_decides_whether_the_pod_names_one_or_not() {
    let unplaced = pod(json!({}));
    let placed = pod(json!({"metadata": {"namespace": "shop"}}));
    let elsewhere = pod(json!({"metadata": {"namespace": "other"}}));
    for p in [&unplaced, &placed, &elsewhere] {
        let d = decide(p, "shop", "podvault", &pending(), &config());
        assert_eq!(d.volumes, ["data", "scratch"], "{:?}", p.metadata.namespace);
    }
    // Nothing waiting (all taken or running): skipped before anything is matched.
    let taken: Vec<PodVolumeRestore> = pending()
        .into_iter()
        .filter(|p| p.status.as_ref().is_some_and(|s| s.phase != Phase::New))
        .collect();
    let d = decide(&placed, "shop", "podvault", &taken, &config());
    assert!(d.patch.is_none());
    assert_eq!(d.skipped, Some("no pending restore for this pod"));
}

#[test]
fn the_helper_waits_as_long_as_the_restore_and_reads_markers_where_it_can() {
    let go = |text: &str| podvault_api::duration::typed(text).expect(text);
    let mut timed = pending();
    for p in &mut timed {
        p.spec.timeout = Some(go("30m"));
    }
    timed[0].spec.timeout = Some(go("45m"));
    let command = |d: &podvault_webhook::decide::Decision| {
        let patch = serde_json::to_value(d.patch.as_ref().expect("patch")).expect("json");
        // The whole list of init containers, or the helper put first.
        let added = &patch[0]["value"];
        added.get(0).unwrap_or(added)["command"].clone()
    };
    let timeout = |pending: &[PodVolumeRestore]| {
        let c = command(&decide(
            &pod(json!({})),
            "shop",
            "podvault",
            pending,
            &config(),
        ));
        let args = c.as_array().expect("command").clone();
        let at = args
            .iter()
            .position(|a| a == "--timeout")
            .expect("--timeout");
        args[at + 1].clone()
    };
    // The longest limit of the restore's volumes, in seconds.
    assert_eq!(timeout(&timed), "2700");
    // A limit of zero gets the default, and none is less than a minute.
    timed[0].spec.timeout = Some(go("0s"));
    timed[1].spec.timeout = Some(go("1s"));
    assert_eq!(timeout(&timed), "14400");
    // A pod that already has a volume of the markers' name keeps it; the helper then
    // reads the markers inside the volumes.
    let own = pod(json!({"spec": {"volumes": [
        {"name": "data", "persistentVolumeClaim": {"claimName": "pgdata"}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "podvault-restore-markers", "emptyDir": {}}]}}));
    let d = decide(&own, "shop", "podvault", &pending(), &config());
    let patch = serde_json::to_value(d.patch.as_ref().expect("patch")).expect("json");
    assert_eq!(patch.as_array().map(Vec::len), Some(1), "{patch}");
    assert!(!command(&d).to_string().contains("--markers"));
    let patched = apply(&own, d.patch.as_ref().expect("patch"));
    assert_eq!(
        patched.spec.and_then(|s| s.volumes).map(|v| v.len()),
        Some(3)
    );
    // A pod with no volumes at all gets the list created.
    let bare = pod(json!({"spec": {"volumes": null}}));
    let d = decide(&bare, "shop", "podvault", &pending(), &config());
    if let Some(patch) = &d.patch {
        let patched = apply(&bare, patch);
        let names: Vec<String> = patched
            .spec
            .and_then(|s| s.volumes)
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names, ["podvault-restore-markers"]);
    }
}

#[test]
fn velero_helper_images_copied_over_are_replaced_with_a_warning() {
    for image in [
        "velero/velero-restore-helper:v1.14.0",
        "velero/velero-restore-helper",
        "docker.io/velero/velero:v1.15.0",
        "registry.local:5000/mirror/velero-restore-helper@sha256:0123",
    ] {
        let HelperSettings {
            config: c,
            warnings,
        } = from_data(&data(&[("image", image)]), "0.1.0");
        assert_eq!(c.image, "ghcr.io/podvault/podvault:0.1.0", "{image}");
        assert!(
            warnings.len() == 1 && warnings[0].contains("Velero's"),
            "{image}: {warnings:?}"
        );
    }
    for image in [
        "registry.local:5000/tools/podvault",
        "mirror/veleroish:1",
        "acme/helper:velero",
    ] {
        let HelperSettings {
            config: c,
            warnings,
        } = from_data(&data(&[("image", image)]), "0.1.0");
        assert!(warnings.is_empty(), "{image}: {warnings:?}");
        assert!(c.image.starts_with(image), "{image}");
    }
}
