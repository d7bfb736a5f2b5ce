//! The webhook over real TLS on a loopback port, with a real HTTPS client: an admission
//! request and the real review fixtures answered, a certificate rotated while a client
//! keeps its connection, and only TLS 1.2 and 1.3 spoken.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use podvault_certs::{Reloader, server_config};
use podvault_webhook::handler::State;
use podvault_webhook::server::{Limits, Metrics, Shared, app_with, serve_tls_with};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

mod common;
use common::{FIXTURES, check, fixture, restoring};

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

/// Serves the webhook over TLS on a loopback port with the pair in `dir`: (its reloader,
/// the port, the server task).
async fn start(
    dir: &Path,
) -> (
    Arc<Reloader>,
    u16,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    start_with(dir, Limits::default()).await
}

/// [`start`] with other limits.
async fn start_with(
    dir: &Path,
    limits: Limits,
) -> (
    Arc<Reloader>,
    u16,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let reloader = Reloader::new(dir.join("tls.crt"), dir.join("tls.key")).expect("load");
    let shared = Arc::new(Shared {
        state: State::new("podvault", "0.1.0"),
        ready: AtomicBool::new(true),
        metrics: Metrics::new().expect("metrics"),
    });
    restoring(&shared.state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(serve_tls_with(
        listener,
        server_config(reloader.clone()).expect("tls"),
        app_with(shared, &limits),
        limits,
    ));
    (reloader, port, server)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(port: u16, ca_pem: &str) -> Result<Sender, String> {
    connect_with(port, ca_pem, rustls::DEFAULT_VERSIONS).await
}

async fn connect_with(
    port: u16,
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Sender, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca_pem)).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
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
    let body = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE", "userInfo": {},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                       "spec": {"containers": [{"name": "w", "image": "nginx"}]}}}
    }))
    .expect("json");
    post(sender, body).await
}

async fn post(sender: &mut Sender, body: Vec<u8>) -> Value {
    let request = hyper::Request::post("/mutate-pods")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    // A kept connection takes the next request once the last one is fully done.
    sender.ready().await.expect("the connection is ready");
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
    let (reloader, port, server) = start(dir.path()).await;
    let watcher = reloader.watch(Duration::from_millis(50));

    let mut kept = connect(port, &ca1).await.expect("connect with CA 1");
    let answer = admit(&mut kept, "u-1").await;
    assert_eq!(answer["response"]["uid"], "u-1");
    assert_eq!(answer["response"]["allowed"], true);
    // The real reviews, over the same kept connection.
    for (file, uid, injected) in FIXTURES {
        check(file, uid, injected, &post(&mut kept, fixture(file)).await);
    }

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

/// A ClientHello that offers only `version` (0x0301 is TLS 1.0, 0x0302 TLS 1.1, 0x0303
/// TLS 1.2), as an old client sends it: no supported_versions extension. Apart from the
/// version it is a hello the server can accept (ECDHE suites, groups, signature schemes).
fn legacy_client_hello(version: u16) -> Vec<u8> {
    fn extension(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }
    let mut body = Vec::new();
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&[7; 32]); // random
    body.push(0); // no session id
    let suites: [u16; 4] = [0xc02b, 0xc02f, 0xc009, 0xc013];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for suite in suites {
        body.extend_from_slice(&suite.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut extensions = Vec::new();
    extension(&mut extensions, 0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]); // x25519, P-256
    extension(&mut extensions, 0x000b, &[1, 0]); // uncompressed points
    // ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    extension(&mut extensions, 0x000d, &[0, 6, 4, 3, 8, 4, 4, 1]);
    extension(&mut extensions, 0x0017, &[]); // extended master secret
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![1]; // ClientHello
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01]; // handshake record
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// The server's first record in answer to `hello`.
async fn first_record(port: u16, hello: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.write_all(hello).await.expect("hello");
    let mut header = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut header))
        .await
        .expect("an answer")
        .expect("read");
    let mut record = header.to_vec();
    let mut rest = vec![0u8; u16::from_be_bytes([header[3], header[4]]) as usize];
    tcp.read_exact(&mut rest).await.expect("the record");
    record.extend_from_slice(&rest);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_1_2_and_1_3_are_spoken() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ca, cert, key) = authority("podvault CA");
    write_pair(dir.path(), &cert, &key);
    let (_, port, server) = start(dir.path()).await;

    for (name, version) in [
        ("TLS 1.2", &rustls::version::TLS12),
        ("TLS 1.3", &rustls::version::TLS13),
    ] {
        let mut sender = connect_with(port, &ca, &[version])
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(admit(&mut sender, name).await["response"]["uid"], name);
    }
    // The same hand-made hello: as TLS 1.2 it gets a ServerHello; as TLS 1.0 or 1.1, a
    // fatal protocol_version alert (70).
    let hello = first_record(port, &legacy_client_hello(0x0303)).await;
    assert_eq!((hello[0], hello[5]), (0x16, 2), "TLS 1.2: {hello:02x?}");
    for version in [0x0301u16, 0x0302] {
        let reply = first_record(port, &legacy_client_hello(version)).await;
        assert_eq!(
            reply,
            [0x15, 3, 3, 0, 2, 2, 70],
            "{version:#06x}: expected a fatal protocol_version alert"
        );
    }
    server.abort();
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection that speaks no HTTP yet, for clients that misbehave.
async fn raw(port: u16, ca_pem: &str) -> std::io::Result<Tls> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca_pem)).expect("CA");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
}

/// Reads until the server closes (or fails) the connection, for at most `limit`; returns
/// what was read, or `None` if the connection was still open then.
async fn until_closed(tls: &mut Tls, limit: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.ok()?;
    Some(all)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tmp");
    let (ca, cert, key) = authority("podvault CA");
    write_pair(dir.path(), &cert, &key);
    let limits = Limits {
        handshake: Duration::from_secs(1),
        headers: Duration::from_secs(1),
        body: Duration::from_secs(1),
        idle: Duration::from_secs(2),
        ..Limits::default()
    };
    let (_, port, server) = start_with(dir.path(), limits).await;

    // A connection that says nothing after its handshake is closed.
    let mut silent = raw(port, &ca).await.expect("handshake");
    assert!(
        until_closed(&mut silent, Duration::from_secs(15))
            .await
            .is_some(),
        "a silent connection was kept"
    );
    // So is a TCP connection that never starts its handshake.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("tcp");
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 16];
        matches!(tcp.read(&mut b).await, Ok(0) | Err(_))
    })
    .await;
    assert_eq!(
        closed,
        Ok(true),
        "a connection without a handshake was kept"
    );

    // Headers sent a byte at a time, faster than the idle limit, are cut at the header
    // limit.
    let mut slow = raw(port, &ca).await.expect("handshake");
    slow.write_all(b"POST /mutate-pods HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .expect("write");
    let mut cut = false;
    for _ in 0..60 {
        if slow.write_all(b"x").await.is_err() || slow.flush().await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if !cut {
        cut = until_closed(&mut slow, Duration::from_secs(1))
            .await
            .is_some();
    }
    assert!(cut, "headers trickled for 15 s were still being read");

    // A body sent a byte at a time gets an answer that says so, by the body limit.
    let mut trickle = raw(port, &ca).await.expect("handshake");
    trickle
        .write_all(b"POST /mutate-pods HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{")
        .await
        .expect("write");
    let (mut reader, mut writer) = tokio::io::split(trickle);
    let dripping = tokio::spawn(async move {
        for _ in 0..60 {
            if writer.write_all(b" ").await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("did not arrive") {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "a trickled body was still being read after 15 s"
    );
    dripping.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("did not arrive within"),
        "{text}"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_body_memory_are_bounded() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tmp");
    let (ca, cert, key) = authority("podvault CA");
    write_pair(dir.path(), &cert, &key);
    let limits = Limits {
        connections: 4,
        handshake: Duration::from_secs(2),
        body: Duration::from_secs(3),
        idle: Duration::from_secs(30),
        body_bytes: 8 << 20,
        ..Limits::default()
    };
    let (_, port, server) = start_with(dir.path(), limits).await;

    // Four connections are served; a fifth waits until one of them ends.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(port, &ca).await.expect("one of four"));
    }
    let fifth = {
        let ca = ca.clone();
        tokio::spawn(async move { connect(port, &ca).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!fifth.is_finished(), "a fifth connection was served");
    held.pop();
    let mut fifth = tokio::time::timeout(Duration::from_secs(10), fifth)
        .await
        .expect("the fifth is served once one ends")
        .expect("task")
        .expect("connect");
    assert_eq!(admit(&mut fifth, "fifth").await["response"]["uid"], "fifth");
    drop(held);
    drop(fifth);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Four clients at a time each send most of a 4 MiB body and stall: together they
    // hold at most the body budget, and every one is answered by the body limit.
    let before = rss_kib();
    let mut peak = before;
    let mut stalled = Vec::new();
    for round in 0..5 {
        let mut batch = Vec::new();
        for _ in 0..4 {
            let mut tls = raw(port, &ca).await.expect("handshake");
            let head = format!(
                "POST /mutate-pods HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n",
                4 << 20
            );
            tls.write_all(head.as_bytes()).await.expect("headers");
            batch.push(tokio::spawn(async move {
                let chunk = vec![b' '; 64 << 10];
                for _ in 0..56 {
                    if tls.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let _ = tls.flush().await;
                until_closed(&mut tls, Duration::from_secs(20)).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss_kib());
        stalled.push((round, batch));
    }
    for (round, batch) in stalled {
        for client in batch {
            // Answered (when the answer outruns the reset of the unread body) and closed.
            let answer = client
                .await
                .expect("client")
                .expect("closed by the body limit");
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                answer.is_empty() || answer.contains("did not arrive within"),
                "round {round}: {answer}"
            );
        }
    }
    // 20 × 3.5 MiB were sent; without the budget they would all be held.
    let grown_mib = peak.saturating_sub(before) / 1024;
    eprintln!("peak RSS grew by {grown_mib} MiB while 20 clients held 3.5 MiB bodies each");
    assert!(grown_mib < 40, "memory grew by {grown_mib} MiB");
    server.abort();
}
