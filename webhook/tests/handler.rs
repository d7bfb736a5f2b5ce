//! The AdmissionReview handler on real review bodies, and on anything at all: every answer
//! is an AdmissionReview carrying the request's uid, and nothing panics.

use std::collections::BTreeMap;
use std::sync::Arc;

use podvault_api::crd::PodVolumeRestore;
use podvault_webhook::config::from_data;
use podvault_webhook::handler::{Answer, Outcome, Response, State, review};
use proptest::prelude::*;
use serde_json::{Value, json};

fn state() -> State {
    let s = State::new("podvault", "0.1.0");
    let pvr: PodVolumeRestore = serde_json::from_value(json!({
        "apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeRestore",
        "metadata": {"name": "r-data", "namespace": "podvault"},
        "spec": {"restoreName": "again", "restoreUid": "r-uid", "targetNamespace": "shop",
                 "target": {"claim": "pgdata"}, "volume": "data", "snapshotID": "s",
                 "repository": "shop"}
    }))
    .expect("pvr");
    s.set_pending(vec![pvr]);
    s
}

fn body(operation: &str, kind: &str, dry_run: bool, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": kind},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object, "oldObject": null, "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .expect("json")
}

fn pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "db-7d9c6b5f4-", "namespace": "shop"},
           "spec": {"containers": [{"name": "db", "image": "postgres:16"}],
                    "volumes": [{"name": "data",
                                 "persistentVolumeClaim": {"claimName": "pgdata"}}]}})
}

/// The answer as the API server reads it: JSON, then an AdmissionReview.
fn parse(answer: &Answer) -> Response {
    let wire = serde_json::to_vec(answer).expect("json");
    let review: Answer = serde_json::from_slice(&wire).expect("an AdmissionReview");
    assert_eq!(
        (review.api_version.as_str(), review.kind.as_str()),
        ("admission.k8s.io/v1", "AdmissionReview")
    );
    review.response
}

#[test]
fn a_pod_create_in_a_restored_namespace_gets_the_patch_and_dry_run_the_same() {
    let s = state();
    let (answer, outcome) = review(&body("CREATE", "Pod", false, pod()), &s);
    assert_eq!(outcome, Outcome::Injected);
    let r = parse(&answer);
    assert_eq!(r.patch_type.as_deref(), Some("JSONPatch"));
    assert!(r.allowed);
    assert_eq!(r.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
    let patch = serde_json::to_value(r.patch_operations().expect("patch")).expect("json");
    assert_eq!(patch[0]["path"], "/spec/initContainers");
    assert_eq!(patch[0]["value"][0]["name"], "restore-wait");
    assert_eq!(r.warnings, None);
    let (dry, _) = review(&body("CREATE", "Pod", true, pod()), &s);
    assert_eq!(dry, answer, "dry run: the same answer");
}

#[test]
fn pending_restores_are_looked_up_in_the_requests_namespace() {
    let s = state();
    let mut elsewhere: Value =
        serde_json::from_slice(&body("CREATE", "Pod", false, pod())).expect("json");
    elsewhere["request"]["namespace"] = json!("other");
    elsewhere["request"]["object"]["metadata"]["namespace"] = json!("other");
    let (answer, outcome) = review(&serde_json::to_vec(&elsewhere).expect("json"), &s);
    assert_eq!(
        outcome,
        Outcome::Allowed,
        "the same claim name in another namespace"
    );
    assert_eq!(parse(&answer).patch, None);
    // A request without a namespace falls back to the pod's own.
    let mut unplaced = elsewhere;
    unplaced["request"]["namespace"] = Value::Null;
    unplaced["request"]["object"]["metadata"]["namespace"] = json!("shop");
    let (_, outcome) = review(&serde_json::to_vec(&unplaced).expect("json"), &s);
    assert_eq!(outcome, Outcome::Injected);
}

#[test]
fn configmap_problems_come_back_as_warnings_with_the_patch() {
    let s = state();
    let data: BTreeMap<String, String> = [("cpuRequest".to_string(), "lots".to_string())].into();
    *s.config.write().expect("lock") = Arc::new(from_data(&data, "0.1.0"));
    let (answer, outcome) = review(&body("CREATE", "Pod", false, pod()), &s);
    assert_eq!(outcome, Outcome::Injected);
    let warnings = parse(&answer).warnings.expect("warnings");
    assert!(warnings[0].contains("cpuRequest \"lots\""), "{warnings:?}");
}

#[test]
fn other_operations_kinds_and_pods_are_allowed_unchanged() {
    let s = state();
    for b in [
        body("UPDATE", "Pod", false, pod()),
        body(
            "CREATE",
            "Service",
            false,
            json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "x"}}),
        ),
        body(
            "CREATE",
            "Pod",
            false,
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"containers": [{"name": "w", "image": "nginx"}]}}),
        ),
    ] {
        let (answer, outcome) = review(&b, &s);
        assert_eq!(outcome, Outcome::Allowed);
        let r = parse(&answer);
        assert!(r.allowed && r.patch.is_none());
        assert_eq!(r.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
    }
    // No object, or one that is not a pod: allowed, with a warning saying so.
    for object in [
        Value::Null,
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "x"}, "spec": {"containers": "not a list"}}),
    ] {
        let (answer, outcome) = review(&body("CREATE", "Pod", false, object), &s);
        assert_eq!(outcome, Outcome::Allowed);
        let r = parse(&answer);
        assert!(r.allowed && r.patch.is_none());
        assert!(r.warnings.is_some_and(|w| w[0].starts_with("podvault:")));
    }
}

#[test]
fn bodies_that_are_not_v1_reviews_are_invalid_with_a_reason() {
    let s = state();
    let mut v1beta1: Value =
        serde_json::from_slice(&body("CREATE", "Pod", false, pod())).expect("json");
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    for (b, reason) in [
        (b"{not json".to_vec(), "the body is not JSON"),
        (
            b"[]".to_vec(),
            "expected an admission.k8s.io/v1 AdmissionReview",
        ),
        (
            serde_json::to_vec(&v1beta1).expect("json"),
            "got \"admission.k8s.io/v1beta1\"",
        ),
        (
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview"}))
            .expect("json"),
            "has no request",
        ),
    ] {
        let (answer, outcome) = review(&b, &s);
        assert_eq!(outcome, Outcome::Invalid);
        let r = parse(&answer);
        assert!(!r.allowed);
        assert!(
            r.status
                .as_ref()
                .and_then(|s| s.message.as_deref())
                .is_some_and(|m| m.contains(reason)),
            "{:?} / {reason}",
            r.status
        );
        assert_eq!(r.status.and_then(|s| s.code), Some(400));
    }
    let (answer, _) = review(&serde_json::to_vec(&v1beta1).expect("json"), &s);
    assert_eq!(parse(&answer).uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z/.:-]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("metadata".to_string()),
                    Just("spec".to_string()),
                    Just("volumes".to_string()),
                    Just("initContainers".to_string()),
                    Just("containers".to_string()),
                    Just("name".to_string()),
                    Just("persistentVolumeClaim".to_string()),
                    Just("claimName".to_string()),
                    Just("ownerReferences".to_string()),
                    "[a-zA-Z]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_object_gets_a_review_with_the_requests_uid(object in any_json(), spec in any_json(),
                                                      uid in "[a-f0-9-]{1,36}") {
        let s = state();
        let mut o = object;
        if let Value::Object(m) = &mut o {
            m.insert("spec".into(), spec);
        }
        let mut b: Value = serde_json::from_slice(&body("CREATE", "Pod", false, o)).expect("json");
        b["request"]["uid"] = json!(uid);
        let (answer, _) = review(&serde_json::to_vec(&b).expect("json"), &s);
        let r = parse(&answer);
        prop_assert_eq!(r.uid, uid);
    }

    #[test]
    fn any_bytes_get_an_answer(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let (answer, _) = review(&bytes, &state());
        parse(&answer);
    }
}
