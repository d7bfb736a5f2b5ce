//! A webhook server for the load benchmark (`e2e/bench/webhook-load.sh`): TLS on loopback
//! with a fresh self-signed certificate, 10,000 pending PodVolumeRestores in its cache and no
//! API server. Prints its port, then serves until killed.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use podvault_controller::crd::PodVolumeRestore;
use podvault_webhook::handler::State;
use podvault_webhook::server::{Metrics, Shared, app, serve_tls};

fn pending(count: usize) -> Vec<PodVolumeRestore> {
    (0..count)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeRestore",
                "metadata": {"name": format!("r-{i}"), "namespace": "podvault"},
                "spec": {"restoreName": "again", "restoreUid": "r-uid",
                         "targetNamespace": format!("ns-{}", i % 100),
                         "target": {"claim": format!("claim-{i}")},
                         "volume": "data", "snapshotID": "s", "repository": "shop"}
            }))
            .expect("pvr")
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("podvault-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    let reloader = podvault_certs::Reloader::new(dir.join("tls.crt"), dir.join("tls.key"))?;
    let state = State::new("podvault", "0.1.0");
    *state.pending.write().map_err(|_| "lock")? = Arc::new(pending(10_000));
    let shared = Arc::new(Shared {
        state,
        ready: AtomicBool::new(true),
        metrics: Metrics::new()?,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    serve_tls(
        listener,
        podvault_certs::server_config(reloader)?,
        app(shared),
    )
    .await?;
    Ok(())
}
