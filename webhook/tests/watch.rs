//! The webhook's watches against a stand-in API server (kube-rs's tower-test mock): the
//! PodVolumeRestores and the helper ConfigMap are listed, then followed through watch
//! events; the webhook becomes ready once both lists are in; a ConfigMap with a bad value
//! gets one Warning Event. The two watches run at once, so the stand-in answers requests
//! by what they ask for, not by their order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use podvault_webhook::handler::State;
use podvault_webhook::server::{Metrics, Shared};
use podvault_webhook::watch::run;
use serde_json::{Value, json};

fn pvr(name: &str, namespace: &str, claim: &str, phase: &str, version: &str) -> Value {
    json!({
        "apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeRestore",
        "metadata": {"name": name, "namespace": "podvault", "resourceVersion": version},
        "spec": {"restoreName": "again", "restoreUid": "r-uid", "targetNamespace": namespace,
                 "target": {"claim": claim}, "volume": "data", "snapshotID": "s",
                 "repository": namespace},
        "status": {"phase": phase}
    })
}

fn config_map(cpu: &str, version: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "restore-helper", "namespace": "podvault",
                     "resourceVersion": version,
                     "labels": {"podvault.io/plugin-config": "",
                                "podvault.io/pod-volume-restore": "RestoreItemAction"}},
        "data": {"image": "registry.local/podvault", "cpuRequest": cpu}
    })
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": "v1",
           "metadata": {"resourceVersion": "10"}, "items": items})
}

/// Watch events, one JSON object per line, as the API server streams them.
fn events(items: &[(&str, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, object) in items {
        out.extend(serde_json::to_vec(&json!({"type": kind, "object": object})).expect("json"));
        out.push(b'\n');
    }
    out
}

/// What the stand-in saw.
#[derive(Default)]
struct Seen {
    requests: Vec<String>,
    events: Vec<Value>,
}

/// Answers list and watch requests for PodVolumeRestores and ConfigMaps, and Event
/// creations. The first watch of each kind gets `*_changes` and ends (as a watch that
/// times out does); later watches are held open and never answered.
fn api_server(
    pvrs: Value,
    pvr_changes: Vec<u8>,
    maps: Value,
    map_changes: Vec<u8>,
) -> (Client, Arc<Mutex<Seen>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        let (mut pvr_changes, mut map_changes) = (Some(pvr_changes), Some(map_changes));
        while let Some((request, send)) = handle.next_request().await {
            let (method, uri) = (request.method().to_string(), request.uri().to_string());
            log.lock()
                .expect("log")
                .requests
                .push(format!("{method} {uri}"));
            let watch = uri.contains("watch=true");
            let reply = |status: u16, body: Vec<u8>| {
                Response::builder()
                    .status(status)
                    .body(Body::from(body))
                    .expect("response")
            };
            let json_body = |v: &Value| serde_json::to_vec(v).expect("json");
            match (method.as_str(), uri.split('?').next().unwrap_or_default()) {
                ("GET", "/apis/podvault.io/v1alpha1/namespaces/podvault/podvolumerestores") => {
                    match (watch, pvr_changes.take()) {
                        (false, changes) => {
                            pvr_changes = changes;
                            send.send_response(reply(200, json_body(&pvrs)));
                        }
                        (true, Some(changes)) => send.send_response(reply(200, changes)),
                        (true, None) => held.push(send),
                    }
                }
                ("GET", "/api/v1/namespaces/podvault/configmaps") => {
                    match (watch, map_changes.take()) {
                        (false, changes) => {
                            map_changes = changes;
                            send.send_response(reply(200, json_body(&maps)));
                        }
                        (true, Some(changes)) => send.send_response(reply(200, changes)),
                        (true, None) => held.push(send),
                    }
                }
                ("POST", "/apis/events.k8s.io/v1/namespaces/podvault/events") => {
                    let bytes = request.into_body().collect_bytes().await.expect("body");
                    let event: Value = serde_json::from_slice(&bytes).expect("json");
                    log.lock().expect("log").events.push(event);
                    send.send_response(reply(201, bytes.to_vec()));
                }
                _ => send.send_response(reply(
                    404,
                    json_body(&json!({"kind": "Status", "apiVersion": "v1",
                                      "status": "Failure", "reason": "NotFound", "code": 404})),
                )),
            }
        }
    });
    (Client::new(service, "podvault"), seen)
}

/// Waits (up to 10 s) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn lists_then_follows_restores_and_the_helper_configmap() {
    let (client, seen) = api_server(
        list(
            "PodVolumeRestore",
            vec![
                pvr("r-1", "shop", "pgdata", "New", "5"),
                pvr("r-2", "shop", "logs", "New", "6"),
                pvr("r-3", "blog", "media", "Completed", "7"),
            ],
        ),
        events(&[
            // r-2 is taken by a node agent; r-4 arrives for another namespace.
            ("MODIFIED", pvr("r-2", "shop", "logs", "InProgress", "11")),
            ("ADDED", pvr("r-4", "blog", "media", "New", "12")),
        ]),
        list("ConfigMap", vec![config_map("lots", "8")]),
        // The admin fixes the value.
        events(&[("MODIFIED", config_map("50m", "13"))]),
    );
    let shared = Arc::new(Shared {
        state: State::new("podvault", "0.1.0"),
        ready: AtomicBool::new(false),
        metrics: Metrics::new().expect("metrics"),
    });
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "podvault-webhook".into(),
            instance: Some("webhook-0".into()),
        },
    );
    let watching = tokio::spawn(run(
        client,
        shared.clone(),
        "podvault".into(),
        "0.1.0".into(),
        Some(recorder),
    ));

    until("readiness", || shared.ready.load(Ordering::Acquire)).await;
    let names = |ns: &str| -> Vec<String> {
        let pending = shared.state.pending();
        let mut names: Vec<String> = pending
            .in_namespace(ns)
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        names.sort();
        names
    };
    until("the watch events", || {
        names("shop") == ["r-1"] && names("blog") == ["r-4"]
    })
    .await;
    until("the fixed ConfigMap", || {
        shared.state.settings().warnings.is_empty()
    })
    .await;
    let settings = shared.state.settings();
    assert_eq!(settings.config.image, "registry.local/podvault:0.1.0");
    let cpu = settings
        .config
        .resources
        .requests
        .as_ref()
        .and_then(|r| r.get("cpu"))
        .map(|q| q.0.clone());
    assert_eq!(cpu.as_deref(), Some("50m"));

    // The bad value was reported once, as a Warning Event on the ConfigMap.
    until("the Event", || !seen.lock().expect("log").events.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = seen.lock().expect("log");
    assert_eq!(seen.events.len(), 1, "{:?}", seen.events);
    let event = &seen.events[0];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidHelperSetting");
    assert_eq!(event["regarding"]["kind"], "ConfigMap");
    assert_eq!(event["regarding"]["name"], "restore-helper");
    assert!(
        event["note"]
            .as_str()
            .is_some_and(|n| n.contains("cpuRequest \"lots\"")),
        "{event}"
    );
    // Nothing but lists, watches and the Event was asked for.
    for request in &seen.requests {
        assert!(
            request.starts_with(
                "GET /apis/podvault.io/v1alpha1/namespaces/podvault/podvolumerestores?"
            ) || request.starts_with("GET /api/v1/namespaces/podvault/configmaps?")
                || request == "POST /apis/events.k8s.io/v1/namespaces/podvault/events?",
            "{request}"
        );
    }
    watching.abort();
}

#[tokio::test]
async fn not_ready_until_both_lists_are_in() {
    // The ConfigMap list fails (forbidden, say): restores are known but the webhook stays
    // unready, so the API server's calls go to a replica that has its settings.
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let uri = request.uri().to_string();
            let (status, body) = if uri.contains("podvolumerestores") && !uri.contains("watch") {
                (
                    200,
                    list(
                        "PodVolumeRestore",
                        vec![pvr("r-1", "shop", "pgdata", "New", "5")],
                    ),
                )
            } else if uri.contains("configmaps") {
                (
                    403,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "Forbidden", "code": 403, "message": "forbidden"}),
                )
            } else {
                // Watches of restores: answered with nothing more, and ended.
                (200, Value::Null)
            };
            let bytes = if body.is_null() {
                Vec::new()
            } else {
                serde_json::to_vec(&body).expect("json")
            };
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(bytes))
                    .expect("response"),
            );
        }
    });
    let shared = Arc::new(Shared {
        state: State::new("podvault", "0.1.0"),
        ready: AtomicBool::new(false),
        metrics: Metrics::new().expect("metrics"),
    });
    let watching = tokio::spawn(run(
        Client::new(service, "podvault"),
        shared.clone(),
        "podvault".into(),
        "0.1.0".into(),
        None,
    ));
    until("the restores", || shared.state.pending().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!shared.ready.load(Ordering::Acquire));
    watching.abort();
}
