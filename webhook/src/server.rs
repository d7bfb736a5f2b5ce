//! The HTTP side: `POST /mutate-pods`, `/healthz`, `/readyz`, and the metrics router served
//! on its own port.
//!
//! What one client can hold is bounded ([`Limits`]): connections, time to send headers and
//! body, time a connection may stay silent, and request bytes held in memory across all
//! requests. The request-side limits add up to less than the API server's 10 s admission
//! deadline, so a stuck request is answered or cut by the webhook first.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRef, State as Extract};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::handler::{Answer, MAX_BODY, Outcome, State, invalid, review, uid_near_start};

/// What one client, and all of them together, can hold of the webhook.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub connections: usize,
    /// Time to finish the TLS handshake.
    pub handshake: Duration,
    /// Time to send a request's headers (HTTP/1.1), from its first byte.
    pub headers: Duration,
    /// Time to send a request's body, from the end of its headers.
    pub body: Duration,
    /// Time a connection may send and take nothing (between requests, or a client that
    /// does not read its answer) before it is closed.
    pub idle: Duration,
    /// Request body bytes held in memory by all requests together; a request waits for
    /// room (within its body time) rather than growing memory.
    pub body_bytes: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub streams: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections: 256,
            handshake: Duration::from_secs(3),
            headers: Duration::from_secs(3),
            body: Duration::from_secs(3),
            idle: Duration::from_secs(60),
            body_bytes: 8 * MAX_BODY,
            streams: 32,
        }
    }
}

/// The admission routes' state: what the routes share, and the room left for bodies.
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
    bodies: Arc<tokio::sync::Semaphore>,
    body_time: Duration,
}

impl FromRef<AppState> for Arc<Shared> {
    fn from_ref(state: &AppState) -> Arc<Shared> {
        state.shared.clone()
    }
}

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

/// Why a request body was not read whole.
enum BodyError {
    /// Over [`MAX_BODY`]: what was read of it.
    TooLarge(Vec<u8>),
    /// The connection broke.
    Cut,
}

/// Reads a body of at most [`MAX_BODY`] bytes, holding room in `room` for every byte read
/// until the returned permits are dropped.
async fn read_body(
    body: Body,
    room: &tokio::sync::Semaphore,
) -> Result<(Vec<u8>, Vec<tokio::sync::SemaphorePermit<'_>>), BodyError> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut held = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyError::Cut)?;
        if bytes.len() + chunk.len() > MAX_BODY {
            let room_left = MAX_BODY - bytes.len();
            bytes.extend_from_slice(&chunk[..room_left]);
            return Err(BodyError::TooLarge(bytes));
        }
        let n = u32::try_from(chunk.len()).map_err(|_| BodyError::Cut)?;
        held.push(room.acquire_many(n).await.map_err(|_| BodyError::Cut)?);
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, held))
}

async fn mutate(Extract(app): Extract<AppState>, body: Body) -> Response {
    let started = Instant::now();
    let shared = &app.shared;
    let read = tokio::time::timeout(app.body_time, read_body(body, &app.bodies)).await;
    let (answer, outcome) = match read {
        Ok(Ok((bytes, _held))) => review(&bytes, &shared.state),
        Ok(Err(BodyError::TooLarge(start))) => invalid(
            &uid_near_start(&start).unwrap_or_default(),
            &format!("the request body is larger than {} MiB", MAX_BODY >> 20),
        ),
        Ok(Err(BodyError::Cut)) => invalid("", "the request body was cut short"),
        // Not sent within the body time, or no room in memory for it within that time.
        Err(_) => invalid(
            "",
            &format!(
                "the request body did not arrive within {} s",
                app.body_time.as_secs_f32()
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

/// The admission routes, with the default [`Limits`].
pub fn app(shared: Arc<Shared>) -> Router {
    app_with(shared, &Limits::default())
}

/// The admission routes, holding at most `limits.body_bytes` of request bodies and waiting
/// at most `limits.body` for a body.
pub fn app_with(shared: Arc<Shared>, limits: &Limits) -> Router {
    let state = AppState {
        shared,
        bodies: Arc::new(tokio::sync::Semaphore::new(limits.body_bytes.max(MAX_BODY))),
        body_time: limits.body,
    };
    Router::new()
        .route("/mutate-pods", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
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

/// Serves `app` over TLS on `listener` with the default [`Limits`] (see [`serve_tls_with`]).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
) -> std::io::Result<()> {
    serve_tls_with(listener, tls, app, Limits::default()).await
}

/// Serves `app` over TLS on `listener` until the task is dropped. Each connection does its
/// handshake with the certificate `tls` resolves at that moment, so a reloaded certificate
/// reaches new connections while established ones go on. HTTP/1.1 and HTTP/2 are spoken;
/// `limits` bounds connections, handshake, headers and silence (the body's bounds are the
/// router's, see [`app_with`]).
pub async fn serve_tls_with(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: Limits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections.max(1)));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.headers)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.streams)
        .max_header_list_size(64 * 1024);
    let builder = Arc::new(builder);
    loop {
        // A connection beyond the limit waits in the kernel's backlog until one ends.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: wait a little, do not spin.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let (handshake_time, idle) = (limits.handshake, limits.idle);
        tokio::spawn(async move {
            let _slot = slot;
            let stream = Quiet::new(stream, idle);
            let tls_stream =
                match tokio::time::timeout(handshake_time, acceptor.accept(stream)).await {
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
            if let Err(e) = builder
                .serve_connection(TokioIo::new(tls_stream), service)
                .await
            {
                tracing::debug!("connection from {peer}: {e}");
            }
        });
    }
}

/// A connection that fails with `TimedOut` once it has been silent (nothing read, nothing
/// written) for its idle time while the server waits on it: a client that sends nothing,
/// or that takes nothing of its answer, does not hold a connection forever.
struct Quiet<T> {
    inner: T,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<T> Quiet<T> {
    fn new(inner: T, idle: Duration) -> Quiet<T> {
        Quiet {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn moved(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// Called when the inner stream is not ready: an error once the silence ran too long.
    fn silent_too_long(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("silent for {} s", self.idle.as_secs_f32()),
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Quiet<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.silent_too_long(cx).map(Err),
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Quiet<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.silent_too_long(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.silent_too_long(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => self.silent_too_long(cx).map(Err),
            ready => ready,
        }
    }
}
