//! The webhook over real TLS on a loopback port, with a real HTTPS client: an admission
//! request answered, and a certificate rotated while a client keeps its connection.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use podvault_certs::{Reloader, server_config};
use podvault_webhook::handler::State;
use podvault_webhook::server::{Metrics, Shared, app, serve_tls};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

/// A CA and a serving certificate for `localhost` signed by it: (CA PEM, cert PEM, key PEM).
fn authority(name: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec![
        "localhost".to_string(),
        "podvault-webhook.podvault.svc".to_string(),
    ])
    .expect("params")
    .signed_by(&key, &issuer)
    .expect("leaf");
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

fn write_pair(dir: &Path, cert: &str, key: &str) {
    std::fs::write(dir.join("tls.crt"), cert).expect("cert");
    std::fs::write(dir.join("tls.key"), key).expect("key");
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(port: u16, ca_pem: &str) -> Result<Sender, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca_pem)).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

fn der(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem")
}

async fn admit(sender: &mut Sender, uid: &str) -> Value {
    let body = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE", "userInfo": {},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                       "spec": {"containers": [{"name": "w", "image": "nginx"}]}}}
    });
    let request = hyper::Request::post("/mutate-pods")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&body).expect("json"),
        )))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    serde_json::from_slice(&bytes).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_over_tls_and_a_rotation_that_keeps_connections() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ca1, cert1, key1) = authority("podvault CA 1");
    write_pair(dir.path(), &cert1, &key1);
    let reloader =
        Reloader::new(dir.path().join("tls.crt"), dir.path().join("tls.key")).expect("load");
    let watcher = reloader.watch(Duration::from_millis(50));
    let shared = Arc::new(Shared {
        state: State::new("podvault", "0.1.0"),
        ready: AtomicBool::new(true),
        metrics: Metrics::new().expect("metrics"),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(serve_tls(
        listener,
        server_config(reloader.clone()).expect("tls"),
        app(shared),
    ));

    let mut kept = connect(port, &ca1).await.expect("connect with CA 1");
    let answer = admit(&mut kept, "u-1").await;
    assert_eq!(answer["response"]["uid"], "u-1");
    assert_eq!(answer["response"]["allowed"], true);

    // A half-written new pair (key of another certificate) is refused; CA 1 still works.
    let (ca2, cert2, key2) = authority("podvault CA 2");
    write_pair(dir.path(), &cert2, &key1);
    let err = reloader.reload().expect_err("mismatched pair");
    assert!(err.to_string().contains("does not match"), "{err}");
    connect(port, &ca1).await.expect("still CA 1");

    // The rotation lands: the watcher picks it up, new connections need CA 2, and the
    // connection made before keeps working.
    write_pair(dir.path(), &cert2, &key2);
    let mut rotated = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if connect(port, &ca2).await.is_ok() {
            rotated = true;
            break;
        }
    }
    assert!(rotated, "the new certificate was not served");
    let refused = connect(port, &ca1)
        .await
        .expect_err("CA 1 no longer verifies");
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");
    assert_eq!(admit(&mut kept, "u-2").await["response"]["uid"], "u-2");
    let mut fresh = connect(port, &ca2).await.expect("CA 2");
    assert_eq!(admit(&mut fresh, "u-3").await["response"]["uid"], "u-3");
    server.abort();
    watcher.abort();
}
