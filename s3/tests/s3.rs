//! The S3 backend against a real server (s3s-fs on loopback), directly and through a proxy
//! that injects faults.

use std::sync::Arc;
use std::time::{Duration, Instant};

use podvault_s3::{S3Backend, S3Options};
use podvault_store::{Backend, BlobKind, CheckOptions, Error, FileKind, Repository};
use podvault_testkit::{BUCKET, FaultKind, FaultProxy, S3Server, fast_init, pseudo_random};

fn backend_with(bucket: &str, prefix: &str, options: S3Options) -> Arc<dyn Backend> {
    Arc::new(S3Backend::new(bucket, prefix, options).expect("backend"))
}

#[test]
fn large_objects_go_up_in_parts_and_come_back_in_ranges() {
    let server = S3Server::start();
    let backend = server.backend("big");
    backend.create().expect("create");
    let data = pseudo_random(7, 21 * 1024 * 1024 + 123);
    backend
        .write(FileKind::Pack, "abcd", &data)
        .expect("multipart write");
    assert_eq!(backend.read(FileKind::Pack, "abcd").expect("read"), data);
    let range = backend
        .read_range(FileKind::Pack, "abcd", 9_000_000, 1_000_000)
        .expect("range");
    assert_eq!(range, data[9_000_000..10_000_000]);
    let tail = backend
        .read_range(FileKind::Pack, "abcd", data.len() as u64 - 10, 100)
        .expect("short range");
    assert_eq!(tail, data[data.len() - 10..], "a range past the end is cut");
    assert_eq!(
        backend.list(FileKind::Pack).expect("list"),
        vec![("abcd".to_string(), data.len() as u64)]
    );
    let err = backend.read(FileKind::Pack, "ffff").expect_err("missing");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    backend.delete(FileKind::Pack, "abcd").expect("delete");
    backend
        .delete(FileKind::Pack, "abcd")
        .expect("deleting twice is fine");
    assert!(backend.list(FileKind::Pack).expect("list").is_empty());
    // A location that holds something is not initialised again.
    backend.write(FileKind::Key, "k", b"x").expect("write");
    let err = backend.create().expect_err("not empty");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
}

#[test]
fn permanent_errors_fail_at_once_and_name_bucket_and_key() {
    let server = S3Server::start();
    let started = Instant::now();
    let backend = backend_with("no-such-bucket", "p", server.options_via(&server.endpoint));
    let err = Repository::open(backend, b"pw").err().expect("no bucket");
    let text = err.to_string();
    assert!(
        text.contains("no-such-bucket") && text.contains("does not exist"),
        "{text}"
    );
    assert!(!err.is_transient(), "{text}");
    let mut wrong = server.options_via(&server.endpoint);
    wrong.credentials = Some((server.access_key.clone(), "not-the-secret".into()));
    let err = Repository::open(backend_with(BUCKET, "p", wrong), b"pw")
        .err()
        .expect("bad secret");
    let text = err.to_string();
    assert!(text.contains(BUCKET) && text.contains("p/config"), "{text}");
    assert!(text.contains("403"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "permanent errors are not retried"
    );
}

#[test]
fn injected_faults_are_retried_and_the_data_arrives_whole() {
    let server = S3Server::start();
    let proxy = FaultProxy::start(&server.endpoint, 0.25, 42, Duration::from_millis(300));
    let mut options = server.options_via(&proxy.endpoint);
    options.attempt_timeout = Duration::from_millis(200);
    options.timeout_per_mib = Duration::from_millis(400);
    options.max_attempts = 30;
    let repo = Repository::init(backend_with(BUCKET, "faulty", options), b"pw", &fast_init())
        .expect("init through faults");
    let mut blobs = Vec::new();
    for i in 0..48 {
        let data = pseudo_random(i, 700_000);
        let id = repo.blob_id(&data);
        repo.save_blob(BlobKind::Data, id, &data).expect("save");
        blobs.push((id, data));
    }
    repo.flush().expect("flush through faults");

    for _ in 0..2 {
        for (id, data) in &blobs {
            assert_eq!(&repo.load_blob(BlobKind::Data, id).expect("load"), data);
        }
    }
    let stats = proxy.stats();
    for kind in [
        FaultKind::SlowDown,
        FaultKind::Internal,
        FaultKind::Drop,
        FaultKind::Stall,
        FaultKind::Truncate,
    ] {
        assert!(stats.of(kind) > 0, "no {kind:?} injected: {stats:?}");
    }
    // Read back directly: everything the faulty run wrote is whole.
    let direct = Repository::open(server.backend("faulty"), b"pw").expect("open");
    let report = direct
        .check(CheckOptions {
            read_data: true,
            ..CheckOptions::default()
        })
        .expect("check");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.blobs, blobs.len());

    eprintln!(
        "faults injected and recovered: {} of {} requests",
        stats.total(),
        stats.requests.load(std::sync::atomic::Ordering::Relaxed)
    );
}

#[test]
fn faults_that_never_stop_fail_with_a_clear_error() {
    let server = S3Server::start();
    let proxy = FaultProxy::start(&server.endpoint, 1.0, 7, Duration::from_millis(100));
    let mut options = server.options_via(&proxy.endpoint);
    options.max_attempts = 3;
    options.attempt_timeout = Duration::from_millis(300);
    let err = Repository::init(backend_with(BUCKET, "down", options), b"pw", &fast_init())
        .err()
        .expect("cannot succeed");
    let text = err.to_string();
    assert!(text.contains("gave up after 3 attempts"), "{text}");
    assert!(text.contains(BUCKET), "{text}");
    assert!(err.is_transient());
}

#[test]
fn a_body_damaged_on_the_way_is_refused_by_its_checksum_and_sent_again() {
    let server = S3Server::start();
    let proxy = FaultProxy::start_with(
        &server.endpoint,
        0.5,
        3,
        Duration::from_millis(100),
        &[FaultKind::Corrupt],
    );
    let repo = Repository::init(
        backend_with(BUCKET, "bits", server.options_via(&proxy.endpoint)),
        b"pw",
        &fast_init(),
    )
    .expect("init");
    // Small objects, sent whole: key files (a damaged one would not open).
    for i in 0..16 {
        repo.add_key(format!("key {i}").as_bytes())
            .expect("add key");
    }
    assert!(
        proxy.stats().of(FaultKind::Corrupt) >= 3,
        "{:?}",
        proxy.stats()
    );
    for i in 0..16 {
        Repository::open(server.backend("bits"), format!("key {i}").as_bytes())
            .expect("every key arrived whole");
    }
}
