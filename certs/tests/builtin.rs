//! Built-in certificates: issuing, the renewal rules, a CA rotation that keeps old
//! certificates verifying, and the Secret / webhook configuration / files cycle against a
//! scripted API server, including two replicas racing to create the Secret.

use std::sync::Arc;

use podvault_certs::builtin::{
    Bundle, Lifetimes, Target, Verdict, ensure, issue, service_names, verdict,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{Value, json};

#[path = "../../controller/tests/apiserver/mod.rs"]
mod apiserver;
use apiserver::{ApiServer, Call};

const DAY: i64 = 86_400;
/// 2026-11-25.
const NOW: i64 = 1_795_564_800;

fn names() -> Vec<String> {
    service_names("podvault-webhook", "podvault")
}

/// Whether `bundle`'s CAs make `cert` valid for the service at `now`.
fn verifies(ca_bundle: &str, cert: &str, now: i64) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_bundle.as_bytes()) {
        roots
            .add(ca.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(
            &leaf,
            &[],
            &ServerName::try_from("podvault-webhook.podvault.svc").expect("name"),
            &[],
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now as u64)),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn a_fresh_bundle_is_kept_until_its_margin_then_renewed_from_the_same_ca() {
    let l = Lifetimes::default();
    let b = issue(&names(), NOW, &l, None, false).expect("issue");
    verifies(&b.ca_bundle, &b.cert, NOW).expect("the API server would trust it");
    assert_eq!(verdict(&b, &names(), NOW, &l), Verdict::Keep);
    assert_eq!(
        verdict(&b, &names(), NOW + l.leaf - l.leaf_margin - DAY, &l),
        Verdict::Keep
    );
    let later = NOW + l.leaf - l.leaf_margin + DAY;
    assert!(matches!(
        verdict(&b, &names(), later, &l),
        Verdict::RenewLeaf(why) if why.contains("expires")
    ));
    let renewed = issue(&names(), later, &l, Some(&b), false).expect("renew");
    assert_eq!(renewed.ca_bundle, b.ca_bundle, "same CA, no new caBundle");
    assert_ne!(renewed.cert, b.cert);
    assert_eq!(verdict(&renewed, &names(), later, &l), Verdict::Keep);
    verifies(&renewed.ca_bundle, &renewed.cert, later).expect("trusted");
    // The pair loads as the webhook loads it.
    podvault_certs::parse(
        renewed.cert.as_bytes(),
        renewed.key.as_bytes(),
        "tls.crt".as_ref(),
        "tls.key".as_ref(),
    )
    .expect("a usable pair");
}

#[test]
fn wrong_names_keys_or_ca_mean_a_new_certificate() {
    let l = Lifetimes::default();
    let b = issue(&names(), NOW, &l, None, false).expect("issue");
    let other = service_names("podvault-webhook", "backup-system");
    assert!(
        matches!(verdict(&b, &other, NOW, &l), Verdict::RenewLeaf(why) if why.contains("names"))
    );
    let stranger = issue(&names(), NOW, &l, None, false).expect("another CA");
    let mut mixed = b.clone();
    mixed.cert = stranger.cert.clone();
    mixed.key = stranger.key.clone();
    assert!(
        matches!(verdict(&mixed, &names(), NOW, &l), Verdict::RenewLeaf(why) if why.contains("not signed"))
    );
    let mut mismatched = b.clone();
    mismatched.key = stranger.key;
    assert!(
        matches!(verdict(&mismatched, &names(), NOW, &l), Verdict::RenewLeaf(why) if why.contains("key"))
    );
    let mut garbage = b.clone();
    garbage.ca_bundle = "not a certificate".into();
    assert!(matches!(
        verdict(&garbage, &names(), NOW, &l),
        Verdict::RenewAll(_)
    ));
}

#[test]
fn a_new_ca_keeps_the_old_one_in_the_bundle_while_it_is_valid() {
    let l = Lifetimes::default();
    let first = issue(&names(), NOW, &l, None, false).expect("issue");
    let late = NOW + l.ca - l.ca_margin + DAY;
    assert!(matches!(
        verdict(&first, &names(), late, &l),
        Verdict::RenewAll(why) if why.contains("CA expires")
    ));
    let second = issue(&names(), late, &l, Some(&first), true).expect("rotate");
    assert_eq!(second.ca_bundle.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(second.ca_bundle.contains(first.ca()));
    assert_ne!(second.ca(), first.ca());
    // A replica still serving the old certificate is trusted through the new bundle, and
    // so is the new certificate.
    let old_leaf = issue(&names(), late - 10 * DAY, &l, Some(&first), false).expect("old leaf");
    verifies(&second.ca_bundle, &old_leaf.cert, late).expect("old leaf trusted");
    verifies(&second.ca_bundle, &second.cert, late).expect("new leaf trusted");
    // Once the old CA has expired, the next rotation drops it.
    let much_later = NOW + l.ca + DAY;
    let third = issue(&names(), much_later, &l, Some(&second), true).expect("rotate again");
    assert!(!third.ca_bundle.contains(first.ca()));
    assert!(third.ca_bundle.contains(second.ca()));
}

fn target(dir: &std::path::Path) -> Target {
    Target {
        namespace: "podvault".into(),
        secret: "podvault-webhook-tls".into(),
        names: names(),
        webhook_configuration: "podvault".into(),
        cert_path: dir.join("tls.crt"),
        key_path: dir.join("tls.key"),
    }
}

fn secret(bundle: &Bundle, version: &str) -> Value {
    let data: serde_json::Map<String, Value> = bundle
        .to_data()
        .into_iter()
        .map(|(k, v)| (k, serde_json::to_value(v).expect("base64")))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"name": "podvault-webhook-tls", "namespace": "podvault",
                        "resourceVersion": version},
           "data": data})
}

fn webhook_configuration(ca_bundle: Option<&str>) -> Value {
    let mut client = json!({"service": {"name": "podvault-webhook", "namespace": "podvault",
                                        "path": "/mutate-pods"}});
    if let Some(ca) = ca_bundle {
        client["caBundle"] =
            serde_json::to_value(k8s_openapi::ByteString(ca.as_bytes().to_vec())).expect("base64");
    }
    json!({"apiVersion": "admissionregistration.k8s.io/v1",
           "kind": "MutatingWebhookConfiguration",
           "metadata": {"name": "podvault", "resourceVersion": "3"},
           "webhooks": [{"name": "pods.podvault.io", "clientConfig": client,
                         "admissionReviewVersions": ["v1"], "sideEffects": "None"}]})
}

fn data_of(body: &Value) -> Bundle {
    let data: std::collections::BTreeMap<String, k8s_openapi::ByteString> =
        serde_json::from_value(body["data"].clone()).expect("data");
    Bundle::from_data(&data).expect("a full bundle")
}

const SECRET: &str = "/api/v1/namespaces/podvault/secrets/podvault-webhook-tls";
const SECRETS: &str = "/api/v1/namespaces/podvault/secrets?";
const MWC: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/podvault";

#[tokio::test]
async fn first_start_creates_the_secret_sets_the_ca_bundle_and_writes_the_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let created = Arc::new(std::sync::Mutex::new(None::<Bundle>));
    let keep = created.clone();
    let (client, server) = ApiServer::start(vec![
        Call::new("GET", SECRET).not_found(),
        Call::new("POST", SECRETS)
            .body_check(move |body| {
                assert_eq!(body["type"], "kubernetes.io/tls");
                *keep.lock().expect("lock") = Some(data_of(body));
            })
            .created(),
        Call::new("GET", MWC).ok(webhook_configuration(None)),
        Call::new("PUT", format!("{MWC}?"))
            .body_check(|body| {
                assert_eq!(body["metadata"]["resourceVersion"], "3");
                assert!(body["webhooks"][0]["clientConfig"]["caBundle"].is_string());
            })
            .created(),
    ]);
    let bundle = ensure(&client, &target(dir.path()), NOW, &Lifetimes::default())
        .await
        .expect("ensure");
    server.done().await;
    assert_eq!(Some(bundle.clone()), *created.lock().expect("lock"));
    let loaded = podvault_certs::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key"))
        .expect("the webhook can load the files");
    assert_eq!(loaded.cert.len(), 1);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("tls.crt")).expect("cert"),
        bundle.cert
    );
}

#[tokio::test]
async fn a_replica_that_loses_the_race_serves_the_winners_certificate() {
    let dir = tempfile::tempdir().expect("tmp");
    let l = Lifetimes::default();
    let winner = issue(&names(), NOW, &l, None, false).expect("issue");
    let (client, server) = ApiServer::start(vec![
        Call::new("GET", SECRET).not_found(),
        Call::new("POST", SECRETS).reply(
            409,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "reason": "AlreadyExists", "code": 409, "message": "already exists"}),
        ),
        Call::new("GET", SECRET).ok(secret(&winner, "7")),
        // The winner already set the caBundle: nothing to update.
        Call::new("GET", MWC).ok(webhook_configuration(Some(&winner.ca_bundle))),
    ]);
    let bundle = ensure(&client, &target(dir.path()), NOW, &l)
        .await
        .expect("ensure");
    server.done().await;
    assert_eq!(bundle, winner);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("tls.key")).expect("key"),
        winner.key
    );
}

#[tokio::test]
async fn an_expiring_certificate_is_renewed_in_place_with_its_resource_version() {
    let dir = tempfile::tempdir().expect("tmp");
    let l = Lifetimes::default();
    let old = issue(&names(), NOW, &l, None, false).expect("issue");
    let later = NOW + l.leaf - l.leaf_margin + DAY;
    let ca = old.ca_bundle.clone();
    let (client, server) = ApiServer::start(vec![
        Call::new("GET", SECRET).ok(secret(&old, "7")),
        Call::new("PUT", format!("{SECRET}?"))
            .body_check(move |body| {
                assert_eq!(body["metadata"]["resourceVersion"], "7");
                let renewed = data_of(body);
                assert_eq!(renewed.ca_bundle, ca, "the same CA");
            })
            .created(),
        Call::new("GET", MWC).ok(webhook_configuration(Some(&old.ca_bundle))),
    ]);
    let bundle = ensure(&client, &target(dir.path()), later, &l)
        .await
        .expect("ensure");
    server.done().await;
    assert_ne!(bundle.cert, old.cert);
    assert_eq!(verdict(&bundle, &names(), later, &l), Verdict::Keep);
}

/// The running loop, against a stand-in API that answers by request: the first check makes
/// the certificate and sets the caBundle; when the configuration is then replaced without
/// it (its watch says so), the loop puts it back without waiting for the next check.
#[tokio::test]
async fn a_configuration_replaced_without_its_ca_bundle_gets_it_back() {
    use http::{Request, Response};
    use kube::client::Body;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Cluster {
        secret: Option<Value>,
        mwc: Value,
        puts: Vec<Value>,
        held: Vec<tower_test::mock::SendResponse<Response<Body>>>,
        replaced: bool,
    }
    let state = Arc::new(Mutex::new(Cluster {
        mwc: webhook_configuration(None),
        ..Cluster::default()
    }));
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let cluster = state.clone();
    tokio::spawn(async move {
        let reply = |status: u16, body: &Value| {
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(body).expect("json")))
                .expect("response")
        };
        while let Some((request, send)) = handle.next_request().await {
            let (method, uri) = (request.method().clone(), request.uri().to_string());
            let bytes = request.into_body().collect_bytes().await.expect("body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let mut c = cluster.lock().expect("lock");
            let path = uri.split('?').next().unwrap_or_default().to_string();
            match (method.as_str(), path.as_str()) {
                ("GET", SECRET) => match &c.secret {
                    Some(s) => send.send_response(reply(200, s)),
                    None => send.send_response(reply(
                        404,
                        &json!({"kind": "Status",
                        "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                        "code": 404}),
                    )),
                },
                ("POST", "/api/v1/namespaces/podvault/secrets") => {
                    let mut s = body.clone();
                    s["metadata"]["resourceVersion"] = json!("1");
                    c.secret = Some(s.clone());
                    send.send_response(reply(201, &s));
                }
                ("GET", MWC) => send.send_response(reply(200, &c.mwc.clone())),
                ("PUT", MWC) => {
                    c.mwc = body.clone();
                    c.puts.push(body.clone());
                    send.send_response(reply(200, &body));
                }
                ("GET", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations")
                    if uri.contains("watch=true") =>
                {
                    c.held.push(send);
                }
                ("GET", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations") => {
                    let list = json!({"kind": "List", "apiVersion": "v1",
                                      "metadata": {"resourceVersion": "5"}, "items": [c.mwc]});
                    send.send_response(reply(200, &list));
                }
                _ => send.send_response(reply(
                    404,
                    &json!({"kind": "Status", "apiVersion": "v1",
                    "status": "Failure", "reason": "NotFound", "code": 404}),
                )),
            }
            // Once the caBundle is set and a watch is open, someone replaces the
            // configuration without it, and the watch reports that.
            if !c.replaced && !c.puts.is_empty() && !c.held.is_empty() {
                c.replaced = true;
                c.mwc = webhook_configuration(None);
                c.mwc["metadata"]["resourceVersion"] = json!("9");
                let event = json!({"type": "MODIFIED", "object": c.mwc});
                let watch = c.held.remove(0);
                watch.send_response(
                    Response::builder()
                        .status(200)
                        .body(Body::from(format!("{event}\n").into_bytes()))
                        .expect("response"),
                );
            }
        }
    });
    let dir = tempfile::tempdir().expect("tmp");
    let running = tokio::spawn(podvault_certs::builtin::run(
        kube::Client::new(service, "default"),
        target(dir.path()),
        std::time::Duration::from_secs(3600),
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        {
            let c = state.lock().expect("lock");
            if c.puts.len() >= 2 {
                let ca = c.secret.as_ref().map(data_of).expect("a Secret").ca_bundle;
                for put in &c.puts {
                    let got: k8s_openapi::ByteString = serde_json::from_value(
                        put["webhooks"][0]["clientConfig"]["caBundle"].clone(),
                    )
                    .expect("caBundle");
                    assert_eq!(got.0, ca.as_bytes());
                }
                assert!(c.replaced);
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the caBundle was not put back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    running.abort();
}
