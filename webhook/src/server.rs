//! The HTTP side: `POST /mutate-pods`, `/healthz`, `/readyz`, and the metrics router served
//! on its own port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State as Extract;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::handler::{Answer, MAX_BODY, Outcome, State, invalid, review};

/// The webhook's metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    injections: IntCounter,
}

impl Metrics {
    /// A fresh set of metrics in its own registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("podvault_webhook".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Admission requests, by outcome"),
            &["outcome"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time to answer an admission request",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
            ]),
            &["outcome"],
        )?;
        let injections = IntCounter::new("injections_total", "Pods given the restore helper")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(injections.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            injections,
        })
    }

    fn record(&self, outcome: Outcome, started: Instant) {
        let label = outcome.label();
        self.requests.with_label_values(&[label]).inc();
        self.latency
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
        if outcome == Outcome::Injected {
            self.injections.inc();
        }
    }

    /// The metrics in Prometheus's text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!("encoding metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// What the routes share.
pub struct Shared {
    /// The handler's state (pending restores, helper settings).
    pub state: State,
    /// Whether the certificate is loaded and the caches have synced.
    pub ready: AtomicBool,
    /// The metrics.
    pub metrics: Metrics,
}

fn json(value: &Answer) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(value).unwrap_or_default(),
    )
        .into_response()
}

async fn mutate(Extract(shared): Extract<Arc<Shared>>, body: Body) -> Response {
    let started = Instant::now();
    let (answer, outcome) = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => review(&bytes, &shared.state),
        Err(_) => invalid(
            "",
            &format!(
                "the request body is larger than {} MiB, or was cut short",
                MAX_BODY >> 20
            ),
        ),
    };
    shared.metrics.record(outcome, started);
    json(&answer)
}

async fn readyz(Extract(shared): Extract<Arc<Shared>>) -> Response {
    if shared.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: certificate or caches not loaded",
        )
            .into_response()
    }
}

/// The admission routes.
pub fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/mutate-pods", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

/// The metrics routes (their own port, plain HTTP).
pub fn metrics_app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|Extract(s): Extract<Arc<Shared>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    s.metrics.render(),
                )
            }),
        )
        .with_state(shared)
}

/// Serves `app` over TLS on `listener` until the task is dropped. Each connection does its
/// handshake with the certificate `tls` resolves at that moment, so a reloaded certificate
/// reaches new connections while established ones go on.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: wait a little, do not spin.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream));
            let tls_stream = match handshake.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!("TLS handshake with {peer} failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake with {peer} timed out");
                    return;
                }
            };
            if let Err(e) = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls_stream), service)
                .await
            {
                tracing::debug!("connection from {peer}: {e}");
            }
        });
    }
}
