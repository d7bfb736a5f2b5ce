//! The commands, by family. Each module parses its flags, calls the library and prints
//! the outcome; none reaches into another's internals but through [`access`] (opening a
//! repository) and [`cluster::client`] (reaching a cluster).

pub mod access;
pub mod cluster;
pub mod repo;
pub mod server;
pub mod snapshot;

use anyhow::{Context, Result};

/// The async runtime of the commands that talk to a cluster.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves on SIGINT or SIGTERM (logged as `role` stopping).
pub fn shutdown_signal(role: &'static str) -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("{role} stopping (SIGINT)"),
            _ = term.recv() => tracing::info!("{role} stopping (SIGTERM)"),
        }
    })
}
