//! Prometheus metrics of the controller and the node agent, served on their own port.

use std::net::SocketAddr;
use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::crd::{Backup, BackupStatus, Phase};

/// The metrics of this process.
pub struct Metrics {
    registry: Registry,
    backups: IntCounterVec,
    backup_bytes: IntCounterVec,
    backup_seconds: HistogramVec,
    dedup: IntGaugeVec,
    volumes: IntCounterVec,
    volume_bytes: IntCounterVec,
    running: IntGaugeVec,
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::New => "New",
        Phase::InProgress => "InProgress",
        Phase::Completed => "Completed",
        Phase::PartiallyFailed => "PartiallyFailed",
        Phase::Failed => "Failed",
        Phase::Canceled => "Canceled",
    }
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new_custom(Some("podvault".into()), None)?;
    let backups = IntCounterVec::new(
        Opts::new("backups_total", "Backups finished, by phase"),
        &["phase"],
    )?;
    let backup_bytes = IntCounterVec::new(
        Opts::new(
            "backup_bytes_total",
            "Bytes of finished backups: kind=read (all the volumes held) or new (stored)",
        ),
        &["kind"],
    )?;
    let backup_seconds = HistogramVec::new(
        HistogramOpts::new("backup_duration_seconds", "Duration of finished backups")
            .buckets(prometheus::exponential_buckets(1.0, 2.0, 16)?),
        &["phase"],
    )?;
    let dedup = IntGaugeVec::new(
        Opts::new(
            "backup_dedup_percent",
            "Share of the last finished backup's bytes that were already stored",
        ),
        &["backup"],
    )?;
    let volumes = IntCounterVec::new(
        Opts::new(
            "volume_operations_total",
            "Volume backups and restores a node agent finished, by node, operation and phase",
        ),
        &["node", "operation", "phase"],
    )?;
    let volume_bytes = IntCounterVec::new(
        Opts::new(
            "volume_bytes_total",
            "Bytes a node agent read (backup) or wrote (restore)",
        ),
        &["node", "operation"],
    )?;
    let running = IntGaugeVec::new(
        Opts::new("volumes_running", "Volume operations running on a node now"),
        &["node"],
    )?;
    for c in [
        Box::new(backups.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(backup_bytes.clone()),
        Box::new(backup_seconds.clone()),
        Box::new(dedup.clone()),
        Box::new(volumes.clone()),
        Box::new(volume_bytes.clone()),
        Box::new(running.clone()),
    ] {
        registry.register(c)?;
    }
    Ok(Metrics {
        registry,
        backups,
        backup_bytes,
        backup_seconds,
        dedup,
        volumes,
        volume_bytes,
        running,
    })
}

static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(|| match build() {
    Ok(m) => Some(m),
    Err(e) => {
        tracing::error!("metrics are off: {e}");
        None
    }
});

/// Counts a finished backup.
pub fn backup_finished(backup: &Backup, status: &BackupStatus) {
    let Some(m) = METRICS.as_ref() else { return };
    let phase = phase_name(status.phase);
    m.backups.with_label_values(&[phase]).inc();
    m.backup_bytes
        .with_label_values(&["read"])
        .inc_by(status.bytes_done);
    m.backup_bytes
        .with_label_values(&["new"])
        .inc_by(status.bytes_new);
    if let (Some(start), Some(end)) = (&status.start_timestamp, &status.completion_timestamp) {
        let seconds = end.0.duration_since(start.0).as_secs_f64().max(0.0);
        m.backup_seconds
            .with_label_values(&[phase])
            .observe(seconds);
    }
    if status.bytes_done > 0 {
        let kept = status.bytes_done.saturating_sub(status.bytes_new);
        let percent = (kept as u128 * 100 / status.bytes_done as u128) as i64;
        let name = kube::ResourceExt::name_any(backup);
        m.dedup.with_label_values(&[name.as_str()]).set(percent);
    }
}

/// Counts a finished volume operation (`backup` or `restore`) of a node.
pub fn volume_finished(node: &str, operation: &str, phase: Phase, bytes: u64) {
    let Some(m) = METRICS.as_ref() else { return };
    m.volumes
        .with_label_values(&[node, operation, phase_name(phase)])
        .inc();
    m.volume_bytes
        .with_label_values(&[node, operation])
        .inc_by(bytes);
}

/// Moves the gauge of a node's running volume operations by `delta`.
pub fn volumes_running(node: &str, delta: i64) {
    if let Some(m) = METRICS.as_ref() {
        m.running.with_label_values(&[node]).add(delta);
    }
}

/// The metrics in Prometheus's text format.
pub fn render() -> String {
    let Some(m) = METRICS.as_ref() else {
        return String::new();
    };
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut out) {
        tracing::warn!("encoding metrics: {e}");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Serves `GET /metrics` (and `/healthz`) on `addr` until the process ends.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("metrics on http://{addr}/metrics");
    serve_on(listener).await
}

/// Serves the metrics on a bound listener.
pub async fn serve_on(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async { ([("content-type", "text/plain; version=0.0.4")], render()) }),
        )
        .route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app).await
}
