//! The real AdmissionReview fixtures of `tests/fixtures/`, the pending restores they meet,
//! and what each must be answered, shared by the router (oneshot) and TLS tests.

#![allow(dead_code)]

use podvault_webhook::handler::{Answer, State};
use serde_json::{Value, json};

/// A fixture's bytes.
pub fn fixture(name: &str) -> Vec<u8> {
    podvault_testkit::fixture_bytes(env!("CARGO_MANIFEST_DIR"), name)
}

/// Sets pending restores of namespace `shop`: the claim `pgdata`, the Deployment's scratch
/// volume and the StatefulSet's dump volume.
pub fn restoring(state: &State) {
    let pvr = |volume: &str, target: Value| -> podvault_api::crd::PodVolumeRestore {
        serde_json::from_value(json!({
            "apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeRestore",
            "metadata": {"name": format!("r-{volume}"), "namespace": "podvault"},
            "spec": {"restoreName": "again", "restoreUid": "r-uid", "targetNamespace": "shop",
                     "target": target, "volume": volume, "snapshotID": "s",
                     "repository": "shop"}
        }))
        .expect("pvr")
    };
    state.set_pending(vec![
        pvr("data", json!({"claim": "pgdata"})),
        pvr("scratch", json!({"owner": "Deployment/db"})),
        pvr("dump", json!({"owner": "StatefulSet/cache"})),
    ]);
}

/// What a fixture's answer holds when the helper is injected: the volumes it waits for,
/// its user, and where the patch puts it.
pub type Injected = Option<(&'static str, i64, &'static str)>;

/// Each fixture, its request's uid, and the injection expected under [`restoring`].
pub const FIXTURES: [(&str, &str, Injected); 4] = [
    (
        "replicaset-pod.json",
        "rs-1",
        Some(("data,scratch", 999, "/spec/initContainers/0")),
    ),
    (
        "statefulset-pod.json",
        "sts-1",
        Some(("dump", 65532, "/spec/initContainers")),
    ),
    ("unrelated-pod.json", "plain-1", None),
    ("kube-system-pod.json", "sys-1", None),
];

/// Checks the answer (the response body, as JSON) to fixture `file`.
pub fn check(file: &str, uid: &str, injected: Injected, answer: &Value) {
    let r = &answer["response"];
    assert_eq!(r["uid"], uid, "{file}");
    assert_eq!(r["allowed"], true, "{file}");
    match injected {
        None => assert!(r.get("patch").is_none(), "{file}: {answer}"),
        Some((volumes, user, path)) => {
            assert!(r["patch"].is_string(), "{file}: the patch is base64 text");
            let answer: Answer = serde_json::from_value(answer.clone()).expect("review");
            let patch = answer.response.patch_operations().expect("patch");
            let ops = serde_json::to_value(&patch).expect("json patch");
            assert_eq!(ops[0]["path"], path, "{file}");
            let helper = if path.ends_with("/0") {
                &ops[0]["value"]
            } else {
                &ops[0]["value"][0]
            };
            assert_eq!(helper["command"][5], volumes, "{file}");
            assert_eq!(helper["securityContext"]["runAsUser"], user, "{file}");
        }
    }
}
