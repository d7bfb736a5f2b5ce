//! An HTTP proxy that injects the failures object stores and networks produce: 500 and
//! 503 answers, connections dropped before an answer, stalls, and bodies cut short. Each
//! request draws a fault at the configured rate from a seeded generator.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The failures the proxy injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// `503 SlowDown`.
    SlowDown,
    /// `500 InternalError`.
    Internal,
    /// The connection is closed with no answer.
    Drop,
    /// Nothing happens for a while, then the connection is closed.
    Stall,
    /// The answer's body stops half way and the connection is closed.
    Truncate,
    /// One byte of a PutObject's body is flipped on the way: the store must notice by the
    /// checksum. Other requests pass unharmed (s3s-fs 0.14 verifies checksums of whole
    /// objects only, not of multipart parts; AWS S3 verifies both).
    Corrupt,
}

const KINDS: [FaultKind; 6] = [
    FaultKind::SlowDown,
    FaultKind::Internal,
    FaultKind::Drop,
    FaultKind::Stall,
    FaultKind::Truncate,
    FaultKind::Corrupt,
];

/// What the proxy did.
#[derive(Default, Debug)]
pub struct FaultStats {
    /// Requests seen.
    pub requests: AtomicU64,
    /// Faults injected, by kind (in the order of [`FaultKind`]).
    pub injected: [AtomicU64; 6],
}

impl FaultStats {
    /// All faults injected.
    pub fn total(&self) -> u64 {
        self.injected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Faults of one kind.
    pub fn of(&self, kind: FaultKind) -> u64 {
        let i = KINDS.iter().position(|k| *k == kind).unwrap_or(0);
        self.injected[i].load(Ordering::Relaxed)
    }
}

struct State {
    upstream: String,
    /// Fault rate in millionths.
    rate_ppm: AtomicU64,
    rng: AtomicU64,
    stall: Duration,
    kinds: Vec<FaultKind>,
    stats: FaultStats,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl State {
    fn draw(&self) -> Option<FaultKind> {
        // splitmix64 step on a shared counter: deterministic for a seed, lock-free.
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let rate = self.rate_ppm.load(Ordering::Relaxed);
        if z % 1_000_000 >= rate {
            return None;
        }
        let kind = self.kinds[((z >> 32) % self.kinds.len() as u64) as usize];
        let i = KINDS.iter().position(|k| *k == kind).unwrap_or(0);
        self.stats.injected[i].fetch_add(1, Ordering::Relaxed);
        Some(kind)
    }
}

type ProxyBody = BoxBody<Bytes, std::io::Error>;

fn full(data: impl Into<Bytes>) -> ProxyBody {
    Full::new(data.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

fn s3_error(status: StatusCode, code: &str) -> Response<ProxyBody> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected by the test proxy</Message></Error>"
    );
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/xml"),
    );
    response
}

/// A body that yields its first half, then fails: the connection is cut mid-answer.
struct CutShort(Option<Bytes>);

impl Body for CutShort {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.0.take() {
            Some(half) => Poll::Ready(Some(Ok(Frame::data(half)))),
            None => Poll::Ready(Some(Err(std::io::Error::other(
                "cut short by the test proxy",
            )))),
        }
    }
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::io::Error> {
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let fault = state.draw();
    let (parts, body) = request.into_parts();
    let mut body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let whole_put =
        parts.method == hyper::Method::PUT && !parts.uri.query().unwrap_or("").contains("uploadId");
    let fault = if fault == Some(FaultKind::Corrupt) && (!whole_put || body.is_empty()) {
        // Not applicable: counted as no fault.
        state.stats.injected[5].fetch_sub(1, Ordering::Relaxed);
        None
    } else {
        fault
    };
    if fault == Some(FaultKind::Corrupt) {
        let mut bad = body.to_vec();
        let at = bad.len() / 2;
        bad[at] ^= 0x01;
        body = Bytes::from(bad);
    }
    match fault {
        Some(FaultKind::SlowDown) => {
            return Ok(s3_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown"));
        }
        Some(FaultKind::Internal) => {
            return Ok(s3_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError"));
        }
        Some(FaultKind::Drop) => return Err(std::io::Error::other("dropped by the test proxy")),
        Some(FaultKind::Stall) => {
            tokio::time::sleep(state.stall).await;
            return Err(std::io::Error::other("stalled by the test proxy"));
        }
        _ => {}
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri: hyper::Uri = format!("{}{path}", state.upstream)
        .parse()
        .map_err(std::io::Error::other)?;
    let mut upstream = Request::builder().method(parts.method).uri(uri);
    for (name, value) in &parts.headers {
        if name != hyper::header::EXPECT {
            upstream = upstream.header(name, value);
        }
    }
    let upstream = upstream
        .body(Full::new(body))
        .map_err(std::io::Error::other)?;
    let answer = state
        .client
        .request(upstream)
        .await
        .map_err(std::io::Error::other)?;
    let (parts, body) = answer.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    if fault == Some(FaultKind::Truncate) && body.len() >= 2 {
        let half = body.slice(..body.len() / 2);
        return Ok(Response::from_parts(parts, CutShort(Some(half)).boxed()));
    }
    Ok(Response::from_parts(parts, full(body)))
}

/// A fault-injecting proxy on a free port of 127.0.0.1; stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, to use as the S3 endpoint.
    pub endpoint: String,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Forwards to `upstream` (`http://host:port`), injecting faults at `rate` (0 to 1),
    /// drawn from `seed`; a stall lasts `stall`.
    pub fn start(upstream: &str, rate: f64, seed: u64, stall: Duration) -> FaultProxy {
        Self::start_with(upstream, rate, seed, stall, &KINDS)
    }

    /// Like [`FaultProxy::start`], injecting only faults of `kinds` (not empty).
    pub fn start_with(
        upstream: &str,
        rate: f64,
        seed: u64,
        stall: Duration,
        kinds: &[FaultKind],
    ) -> FaultProxy {
        assert!(!kinds.is_empty(), "no fault kinds");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let client = Client::builder(TokioExecutor::new()).build_http();
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_string(),
            rate_ppm: AtomicU64::new((rate.clamp(0.0, 1.0) * 1e6) as u64),
            rng: AtomicU64::new(seed),
            stall,
            kinds: kinds.to_vec(),
            stats: FaultStats::default(),
            client,
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(SocketAddr::from((
                [127, 0, 0, 1],
                0,
            ))))
            .expect("proxy port");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy address"));
        let accept_state = state.clone();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultProxy {
            endpoint,
            state,
            runtime: Some(runtime),
        }
    }

    /// Changes the fault rate (0 to 1).
    pub fn set_rate(&self, rate: f64) {
        self.state
            .rate_ppm
            .store((rate.clamp(0.0, 1.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// What the proxy saw and did.
    pub fn stats(&self) -> &FaultStats {
        &self.state.stats
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
