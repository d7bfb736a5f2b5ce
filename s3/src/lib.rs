//! A repository in an S3-compatible object store (AWS S3, MinIO, Ceph, Garage, s3s).
//!
//! The [`Backend`] trait is synchronous; this backend owns a small tokio runtime and blocks
//! on it, so the engine's worker threads each drive their own uploads and ranged reads in
//! parallel. Every request is retried with exponential backoff and full jitter when the
//! failure may pass (throttling, 5xx, timeouts, dropped connections, truncated bodies), and
//! each retry is logged; permanent failures (access denied, no such bucket) fail at once
//! with a message naming the bucket and key. The SDK's own retries are off so that every
//! attempt is visible and bounded by our own per-attempt timeout, which also covers the
//! time spent reading a response body (a stalled body is a timeout, not a hang).
//!
//! Objects are written whole (`PutObject`, or a multipart upload above
//! [`S3Options::multipart_threshold`]), so a reader sees a file whole or not at all, as the
//! trait requires.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use podvault_store::{Backend, DirBackend, Error, FileKind, Result};

/// How to reach the object store. Credentials come from the usual AWS sources
/// (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE` and the shared files, web
/// identity, instance metadata).
#[derive(Clone, Debug)]
pub struct S3Options {
    /// Endpoint URL (`http://127.0.0.1:9000`); `None` uses AWS's (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// Region; `None` takes `AWS_REGION`/the profile's, else `us-east-1`.
    pub region: Option<String>,
    /// Access key id and secret; `None` takes them from the usual AWS sources.
    pub credentials: Option<(String, String)>,
    /// Path-style addressing (`endpoint/bucket/key`), which most self-hosted stores need.
    pub path_style: bool,
    /// Attempts per request, the first included (at least 1).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each time, with full jitter.
    pub base_delay: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
    /// Time limit of one attempt of a small request, body included.
    pub attempt_timeout: Duration,
    /// Extra time allowed per MiB moved, so large uploads and reads are not cut short.
    pub timeout_per_mib: Duration,
    /// Objects at least this large are uploaded in parts.
    pub multipart_threshold: usize,
    /// Size of each part of a multipart upload (S3's minimum is 5 MiB).
    pub part_size: usize,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint: None,
            region: None,
            path_style: false,
            credentials: None,
            max_attempts: 10,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(60),
            timeout_per_mib: Duration::from_secs(2),
            multipart_threshold: 16 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
        }
    }
}

/// `s3:BUCKET/PREFIX` or `s3://BUCKET/PREFIX` split into bucket and prefix (without
/// trailing slash; may be empty). `None` if `spec` is not an S3 location.
pub fn parse_s3_location(spec: &str) -> Option<Result<(String, String)>> {
    let rest = spec
        .strip_prefix("s3://")
        .or_else(|| spec.strip_prefix("s3:"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/');
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid_bucket {
        return Some(Err(Error::InvalidParameter {
            name: "repository location",
            reason: format!(
                "{spec}: {bucket:?} is not a valid bucket name (3 to 63 lowercase letters, \
                 digits, dots and hyphens)"
            ),
        }));
    }
    if prefix
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
        && !prefix.is_empty()
    {
        return Some(Err(Error::InvalidParameter {
            name: "repository location",
            reason: format!("{spec}: the prefix {prefix:?} has an empty, `.` or `..` part"),
        }));
    }
    Some(Ok((bucket.to_string(), prefix.to_string())))
}

/// A repository under a prefix of an S3 bucket.
pub struct S3Backend {
    client: Client,
    bucket: String,
    prefix: String,
    options: S3Options,
    runtime: tokio::runtime::Runtime,
}

/// An answer that says the object (or the range asked for) is not there.
enum Miss {
    NotFound,
    BadRange,
}

/// How often a multipart upload that the store lost is started again.
const UPLOAD_RESTARTS: u32 = 2;

/// How a failed attempt is treated.
enum Failure {
    /// Retrying may help.
    Transient(String),
    /// Retrying will not help.
    Permanent(String),
    /// The object does not exist.
    NotFound,
    /// A range starts beyond the end of the object.
    BadRange,
}

/// What went wrong with a connection, in words: the operating system's error where there
/// is one (connection refused, reset by the peer, timed out), else the innermost cause,
/// never the client's debug dump.
fn in_words(err: &(dyn std::error::Error + 'static)) -> String {
    use std::io::ErrorKind;
    let mut innermost = err;
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                ErrorKind::ConnectionRefused => "connection refused".into(),
                ErrorKind::ConnectionReset => "connection reset by the peer".into(),
                ErrorKind::ConnectionAborted => "connection aborted".into(),
                ErrorKind::BrokenPipe => "the peer closed the connection".into(),
                ErrorKind::TimedOut => "timed out".into(),
                ErrorKind::UnexpectedEof => {
                    "the connection closed before the answer was complete".into()
                }
                ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                    "the endpoint cannot be reached".into()
                }
                _ => io.to_string(),
            };
        }
        innermost = e;
        current = e.source();
    }
    let text = innermost.to_string();
    if text.contains("dns error") || text.contains("failed to lookup address") {
        format!("the endpoint's host name does not resolve ({text})")
    } else {
        text
    }
}

fn classify<E: ProvideErrorMetadata + Display>(err: &SdkError<E, HttpResponse>) -> Failure {
    match err {
        SdkError::TimeoutError(_) => Failure::Transient("timed out".into()),
        SdkError::DispatchFailure(e) => Failure::Transient(match e.as_connector_error() {
            Some(connector) => in_words(connector),
            None if e.is_timeout() => "timed out".into(),
            None => "the request could not be sent".into(),
        }),
        SdkError::ResponseError(_) => {
            Failure::Transient("the response was cut short or malformed".into())
        }
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("").to_string();
            let message = service.err().message().unwrap_or("").to_string();
            let status = service.raw().status().as_u16();
            let text = if message.is_empty() {
                format!("HTTP {status} {code}")
            } else {
                format!("HTTP {status} {code}: {message}")
            };
            match (status, code.as_str()) {
                (_, "NoSuchKey") | (404, "") | (404, "NotFound") => Failure::NotFound,
                (416, _) | (_, "InvalidRange") => Failure::BadRange,
                (_, "SlowDown" | "Throttling" | "ThrottlingException" | "RequestTimeout")
                | (_, "InternalError" | "ServiceUnavailable" | "RequestTimeTooSkewed")
                // The body was damaged on the way; the store refused it.
                | (_, "BadDigest" | "InvalidDigest" | "XAmzContentChecksumMismatch")
                | (408 | 429 | 500..=599, _) => Failure::Transient(text),
                _ => Failure::Permanent(text),
            }
        }
        other => Failure::Permanent(other.to_string()),
    }
}

impl S3Backend {
    /// Connects to `bucket` (objects under `prefix`). Nothing is sent until the first
    /// request.
    pub fn new(bucket: &str, prefix: &str, options: S3Options) -> Result<S3Backend> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("podvault-s3")
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                path: "tokio runtime".into(),
                source,
            })?;
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .build(),
            );
        if let Some(region) = &options.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some((id, secret)) = &options.credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "podvault options",
            ));
        }
        if let Some(endpoint) = &options.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let shared = runtime.block_on(loader.load());
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(options.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenSupported)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if shared.region().is_none() {
            config = config.region(Region::new("us-east-1"));
        }
        let client = Client::from_conf(config.build());
        if options.max_attempts == 0 || options.part_size < 5 * 1024 * 1024 {
            return Err(Error::InvalidParameter {
                name: "S3 options",
                reason: "at least one attempt and parts of at least 5 MiB are needed".into(),
            });
        }
        Ok(S3Backend {
            client,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            options,
            runtime,
        })
    }

    fn key(&self, kind: FileKind, name: &str) -> String {
        let rel = match kind {
            FileKind::Config => "config".to_string(),
            FileKind::Pack => format!("data/{}/{name}", name.get(..2).unwrap_or("00")),
            _ => format!("{}/{name}", kind.dir()),
        };
        self.full(&rel)
    }

    fn full(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    fn error(&self, op: &'static str, key: &str, message: String, transient: bool) -> Error {
        Error::Remote {
            op,
            object: format!("s3://{}/{key} at {}", self.bucket, self.endpoint()),
            message,
            transient,
        }
    }

    /// The endpoint requests go to, for messages.
    fn endpoint(&self) -> String {
        self.options
            .endpoint
            .clone()
            .unwrap_or_else(|| "AWS's endpoint".into())
    }

    fn attempt_limit(&self, bytes: usize) -> Duration {
        let mib = (bytes as u64).div_ceil(1024 * 1024);
        self.options.attempt_timeout + self.options.timeout_per_mib * mib as u32
    }

    /// Runs `attempt` until it succeeds, fails permanently, or attempts run out; a missing
    /// object or range is an error.
    async fn retry<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        bytes: usize,
        attempt: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        match self.retry_or_miss(op, key, bytes, attempt).await? {
            Ok(v) => Ok(v),
            Err(Miss::NotFound) => Err(self.error(op, key, "not found".into(), false)),
            Err(Miss::BadRange) => Err(self.error(op, key, "range not satisfiable".into(), false)),
        }
    }

    /// [`Self::retry`] for callers to whom a missing object or range is an answer.
    async fn retry_or_miss<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        bytes: usize,
        mut attempt: F,
    ) -> Result<std::result::Result<T, Miss>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        let limit = self.attempt_limit(bytes);
        let mut tries = 0u32;
        loop {
            tries += 1;
            let failure = match tokio::time::timeout(limit, attempt()).await {
                Ok(Ok(v)) => return Ok(Ok(v)),
                Ok(Err(f)) => f,
                Err(_) => Failure::Transient(format!("no answer within {limit:?}")),
            };
            let message = match failure {
                Failure::Transient(m) => m,
                Failure::Permanent(m) => return Err(self.error(op, key, m, false)),
                Failure::NotFound => return Ok(Err(Miss::NotFound)),
                Failure::BadRange => return Ok(Err(Miss::BadRange)),
            };
            if tries >= self.options.max_attempts {
                return Err(self.error(
                    op,
                    key,
                    format!("{message} (gave up after {tries} attempts)"),
                    true,
                ));
            }
            let delay = self.backoff(tries);
            tracing::warn!(
                "S3 {op} s3://{}/{key} at {} failed: {message}; attempt {}/{} in {} ms",
                self.bucket,
                self.endpoint(),
                tries + 1,
                self.options.max_attempts,
                delay.as_millis()
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Full jitter: a random delay between zero and the exponential bound.
    fn backoff(&self, tries: u32) -> Duration {
        let bound = self
            .options
            .base_delay
            .saturating_mul(1u32 << tries.min(16))
            .min(self.options.max_delay);
        let mut r = [0u8; 8];
        let unit =
            if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r).is_ok() {
                (u64::from_le_bytes(r) >> 11) as f64 / (1u64 << 53) as f64
            } else {
                0.5
            };
        bound.mul_f64(unit)
    }

    fn not_found(&self, kind: FileKind, name: &str) -> Error {
        Error::NotFound {
            what: kind.noun(),
            name: name.to_string(),
            location: self.location(),
        }
    }

    async fn get(&self, key: &str, range: Option<(u64, u64)>) -> Result<Option<Vec<u8>>> {
        let expected = range.map_or(0, |(_, len)| len as usize);
        let result = self
            .retry_or_miss("GET", key, expected, || async {
                let mut req = self.client.get_object().bucket(&self.bucket).key(key);
                if let Some((offset, len)) = range {
                    req = req.range(format!("bytes={offset}-{}", offset + len - 1));
                }
                let out = req.send().await.map_err(|e| classify(&e))?;
                let body = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| Failure::Transient(format!("the body was cut short: {e}")))?;
                Ok(body.into_bytes().to_vec())
            })
            .await?;
        Ok(match result {
            Ok(v) => Some(v),
            Err(Miss::NotFound) => None,
            // The range starts at or past the end: nothing there.
            Err(Miss::BadRange) => Some(Vec::new()),
        })
    }

    async fn put(&self, key: &str, data: bytes::Bytes) -> Result<()> {
        if data.len() >= self.options.multipart_threshold {
            return self.put_multipart(key, data).await;
        }
        self.retry("PUT", key, data.len(), || async {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                .body(ByteStream::from(data.clone()))
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| classify(&e))?;
            Ok(())
        })
        .await
    }

    /// Uploads `data` in parts. A store that lost the upload while it ran (restarted, or
    /// one whose Complete answer was lost and whose retry finds the upload gone) refuses
    /// its parts or its completion permanently: the whole upload then starts again, at
    /// most [`UPLOAD_RESTARTS`] times. The object is named by its content, so uploading it
    /// again is always safe.
    async fn put_multipart(&self, key: &str, data: bytes::Bytes) -> Result<()> {
        let mut restarts = 0;
        loop {
            match self.put_multipart_once(key, data.clone()).await {
                // A completion whose answer was lost, retried: the store no longer knows the
                // upload because it made the object (some stores say NoSuchUpload, some
                // AccessDenied). If the object is there, whole, done.
                Err(Error::Remote {
                    op: "CompleteMultipartUpload",
                    transient: false,
                    ..
                }) if self.completed_meanwhile(key, data.len() as u64).await => return Ok(()),
                Err(Error::Remote {
                    op: op @ ("UploadPart" | "CompleteMultipartUpload"),
                    transient: false,
                    message,
                    ..
                }) if restarts < UPLOAD_RESTARTS => {
                    restarts += 1;
                    tracing::warn!(
                        "S3 {op} s3://{}/{key} at {} failed: {message}; the store may have \
                         lost the upload: starting it again ({restarts}/{UPLOAD_RESTARTS})",
                        self.bucket,
                        self.endpoint(),
                    );
                }
                other => return other,
            }
        }
    }

    /// Whether the object at `key` holds `len` bytes. The completion of an upload whose
    /// answer was lost may still be finishing on the store when its retry is refused, so
    /// the store is asked again after a moment before the upload is started over.
    async fn completed_meanwhile(&self, key: &str, len: u64) -> bool {
        for wait in [0, 250, 1000] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            if self.object_len(key).await == Some(len) {
                return true;
            }
        }
        false
    }

    /// The length of the object at `key`, if it exists (and the store answers).
    async fn object_len(&self, key: &str) -> Option<u64> {
        let found = self
            .retry_or_miss("HEAD", key, 0, || async {
                let out = self
                    .client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| classify(&e))?;
                Ok(out.content_length.unwrap_or(-1))
            })
            .await;
        match found {
            Ok(Ok(len)) => u64::try_from(len).ok(),
            _ => None,
        }
    }

    async fn put_multipart_once(&self, key: &str, data: bytes::Bytes) -> Result<()> {
        let upload_id = self
            .retry("CreateMultipartUpload", key, 0, || async {
                let out = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                    .send()
                    .await
                    .map_err(|e| classify(&e))?;
                out.upload_id
                    .ok_or_else(|| Failure::Permanent("no upload id in the answer".into()))
            })
            .await?;
        let result = self.upload_parts(key, &upload_id, data).await;
        if result.is_err() {
            // Best effort: an upload left behind holds no visible object, and a bucket
            // lifecycle rule (documented) cleans it up if this fails too.
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send();
            let _ = tokio::time::timeout(self.attempt_limit(0), abort).await;
        }
        result
    }

    async fn upload_parts(&self, key: &str, upload_id: &str, data: bytes::Bytes) -> Result<()> {
        let part_size = self.options.part_size;
        let parts = data.len().div_ceil(part_size);
        let uploads = (0..parts).map(|i| {
            let body = data.slice(i * part_size..((i + 1) * part_size).min(data.len()));
            let number = i as i32 + 1;
            async move {
                let etag = self
                    .retry("UploadPart", key, body.len(), || async {
                        let out = self
                            .client
                            .upload_part()
                            .bucket(&self.bucket)
                            .key(key)
                            .upload_id(upload_id)
                            .part_number(number)
                            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                            .body(ByteStream::from(body.clone()))
                            .customize()
                            .disable_payload_signing()
                            .send()
                            .await
                            .map_err(|e| classify(&e))?;
                        Ok(out.e_tag.unwrap_or_default())
                    })
                    .await?;
                Ok::<_, Error>(
                    CompletedPart::builder()
                        .e_tag(etag)
                        .part_number(number)
                        .build(),
                )
            }
        });
        let completed = futures_util::future::try_join_all(uploads).await?;
        let upload = CompletedMultipartUpload::builder()
            .set_parts(Some(completed))
            .build();
        self.retry("CompleteMultipartUpload", key, 0, || async {
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .multipart_upload(upload.clone())
                .send()
                .await
                .map_err(|e| classify(&e))?;
            Ok(())
        })
        .await
    }

    /// Fails with a clear error if the bucket does not exist.
    fn check_bucket(&self) -> Result<()> {
        let result = self
            .runtime
            .block_on(self.retry_or_miss("HeadBucket", "", 0, || async {
                self.client
                    .head_bucket()
                    .bucket(&self.bucket)
                    .send()
                    .await
                    .map_err(|e| classify(&e))?;
                Ok(())
            }));
        match result? {
            Ok(()) => Ok(()),
            Err(_) => Err(self.error("HeadBucket", "", "the bucket does not exist".into(), false)),
        }
    }

    async fn list_prefix(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .retry("LIST", prefix, 0, || async {
                    self.client
                        .list_objects_v2()
                        .bucket(&self.bucket)
                        .prefix(prefix)
                        .set_continuation_token(token.clone())
                        .send()
                        .await
                        .map_err(|e| classify(&e))
                })
                .await?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let size = object.size().unwrap_or(0).max(0) as u64;
                out.push((key.to_string(), size));
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        let dir = self.full(&format!("{}/", kind.dir()));
        let mut out: Vec<(String, u64)> = self
            .runtime
            .block_on(self.list_prefix(&dir))?
            .into_iter()
            .filter_map(|(key, size)| {
                let name = key.rsplit('/').next()?.to_string();
                (!name.is_empty() && !name.starts_with('.')).then_some((name, size))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let key = self.key(kind, name);
        match self.runtime.block_on(self.get(&key, None))? {
            Some(data) => Ok(data),
            // The first read of every command: say so if the bucket itself is missing.
            None if kind == FileKind::Config => {
                self.check_bucket()?;
                Err(self.not_found(kind, name))
            }
            None => Err(self.not_found(kind, name)),
        }
    }

    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let key = self.key(kind, name);
        self.runtime
            .block_on(self.get(&key, Some((offset, len))))?
            .ok_or_else(|| self.not_found(kind, name))
    }

    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        let key = self.key(kind, name);
        self.runtime
            .block_on(self.put(&key, bytes::Bytes::copy_from_slice(data)))
    }

    fn write_owned(&self, kind: FileKind, name: &str, data: Vec<u8>) -> Result<()> {
        let key = self.key(kind, name);
        self.runtime
            .block_on(self.put(&key, bytes::Bytes::from(data)))
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        let key = self.key(kind, name);
        let result = self
            .runtime
            .block_on(self.retry_or_miss("DELETE", &key, 0, || async {
                self.client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(|e| classify(&e))?;
                Ok(())
            }));
        // Deleting what is not there is not an error.
        result.map(|_| ())
    }

    fn create(&self) -> Result<()> {
        self.check_bucket()?;
        let probe = self.full("");
        let existing = self.runtime.block_on(async {
            self.retry("LIST", &probe, 0, || async {
                self.client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(&probe)
                    .max_keys(1)
                    .send()
                    .await
                    .map_err(|e| classify(&e))
            })
            .await
        })?;
        if !existing.contents().is_empty() {
            return Err(Error::AlreadyExists {
                location: self.location(),
            });
        }
        Ok(())
    }
}

/// Opens the backend a location names: `s3:BUCKET/PREFIX`, `s3://BUCKET/PREFIX`, or a
/// local directory.
pub fn open_backend(spec: &str, s3: &S3Options) -> Result<Arc<dyn Backend>> {
    match parse_s3_location(spec) {
        Some(parsed) => {
            let (bucket, prefix) = parsed?;
            Ok(Arc::new(S3Backend::new(&bucket, &prefix, s3.clone())?))
        }
        None => Ok(Arc::new(DirBackend::new(spec))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        let p = |s: &str| {
            parse_s3_location(s)
                .map(|r| r.map_err(|e| e.to_string()))
                .expect("an S3 location")
        };
        assert_eq!(
            p("s3:bucket/a/b").expect("valid"),
            ("bucket".into(), "a/b".into())
        );
        assert_eq!(
            p("s3://bucket/a/").expect("valid"),
            ("bucket".into(), "a".into())
        );
        assert_eq!(
            p("s3://bucket").expect("valid"),
            ("bucket".into(), "".into())
        );
        assert!(parse_s3_location("/var/repo").is_none());
        let err = p("s3://Bad_Bucket/x").expect_err("invalid");
        assert!(err.contains("Bad_Bucket"), "{err}");
        let err = p("s3://bucket/a//b").expect_err("invalid");
        assert!(err.contains("a//b"), "{err}");
    }
}
