//! A webhook server for the load benchmark (`e2e/bench/webhook-load.sh`): TLS on loopback
//! with a fresh self-signed certificate, 10,000 pending PodVolumeRestores in its cache and no
//! API server. Prints its port, then serves until killed.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use podvault_webhook::handler::State;
use podvault_webhook::server::{Metrics, Shared, app, serve_tls};

#[path = "../benches/shared/mod.rs"]
mod shared;
use shared::pending;

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
    state.set_pending(pending(10_000));
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
