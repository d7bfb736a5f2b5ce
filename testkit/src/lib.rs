//! Test support: a real S3 server (s3s-fs) on loopback with random port and credentials,
//! the places a test repository can live (a directory, or a prefix of that server's bucket),
//! and a fault-injecting HTTP proxy to put between podvault and the server; and, for the
//! end-to-end suite, a stand-in Kubernetes API server ([`kubeapi`]).
//!
//! s3s-fs is installed by the test command (`scripts/test.sh`); a missing binary fails the
//! test with the command that installs it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use podvault_s3::{S3Backend, S3Options};
use podvault_store::{Backend, DirBackend};

pub mod docs;
mod files;
pub mod kubeapi;
mod proxy;

pub use files::{assert_same_tree, fixture, fixture_bytes, walk, xattrs};
pub use proxy::{FaultKind, FaultProxy, FaultStats};

/// The bucket every test server holds.
pub const BUCKET: &str = "podvault-test";

/// Random hex digits (from std's randomly keyed hasher: enough for test credentials).
fn random_hex(bytes: usize) -> String {
    use std::hash::BuildHasher;
    let mut out = String::new();
    while out.len() < bytes * 2 {
        let word = std::collections::hash_map::RandomState::new().hash_one(out.len());
        out.push_str(&format!("{word:016x}"));
    }
    out.truncate(bytes * 2);
    out
}

/// Where the s3s-fs binary is: `$S3S_FS`, else `s3s-fs` on the path, else cargo's bin dir.
fn s3s_fs_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS") {
        return PathBuf::from(p);
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&paths)
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
            .unwrap_or_default();
        home.join("bin").join("s3s-fs")
    })
}

/// An s3s-fs process serving one bucket from a temporary directory; killed on drop.
pub struct S3Server {
    child: std::sync::Mutex<Option<Child>>,
    root: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The access key id the server accepts.
    pub access_key: String,
    /// The secret key the server accepts.
    pub secret_key: String,
}

impl S3Server {
    /// Starts a server on a free port of 127.0.0.1 with random credentials.
    pub fn start() -> S3Server {
        let binary = s3s_fs_binary();
        assert!(
            binary.is_file(),
            "s3s-fs not found at {}: install it with `cargo install s3s-fs --version 0.14.1 \
             --features binary --locked` (scripts/test.sh does)",
            binary.display()
        );
        let root = tempfile::tempdir().expect("temporary directory for s3s-fs");
        std::fs::create_dir(root.path().join(BUCKET)).expect("bucket directory");
        let access_key = format!("AK{}", random_hex(8)).to_uppercase();
        let secret_key = random_hex(20);
        for _ in 0..20 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut child = Command::new(&binary)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", &access_key, "--secret-key", &secret_key])
                .arg(root.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start s3s-fs");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // lost the port to someone else: try another
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return S3Server {
                        child: std::sync::Mutex::new(Some(child)),
                        root,
                        endpoint: format!("http://{addr}"),
                        access_key,
                        secret_key,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("s3s-fs did not start listening on 127.0.0.1");
    }

    /// Kills the server, as a crash or an outage does: connections in flight are cut.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port, with the same objects and credentials
    /// (after [`S3Server::kill`]); waits until it listens.
    pub fn restart(&self) {
        self.kill();
        let port = self
            .endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .expect("the endpoint's port");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let mut child = Command::new(s3s_fs_binary())
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args([
                    "--access-key",
                    &self.access_key,
                    "--secret-key",
                    &self.secret_key,
                ])
                .arg(self.root.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start s3s-fs");
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port is not free yet: try again
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("s3s-fs did not listen again on {addr}");
    }

    /// The directory holding the bucket's objects as files (`<root>/<bucket>/<key>`).
    pub fn bucket_dir(&self) -> PathBuf {
        self.root.path().join(BUCKET)
    }

    /// Bytes of all objects stored under `prefix` of the bucket (`""` for all), as the
    /// server holds them now: uploads in progress show as they land.
    pub fn bytes_under(&self, prefix: &str) -> u64 {
        fn walk(dir: &Path) -> u64 {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| match e.file_type() {
                            Ok(t) if t.is_dir() => walk(&e.path()),
                            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.bucket_dir().join(prefix))
    }

    /// Options that reach this server (or `endpoint`, such as a proxy in front of it),
    /// with short timeouts and delays so fault tests run quickly.
    pub fn options_via(&self, endpoint: &str) -> S3Options {
        S3Options {
            endpoint: Some(endpoint.to_string()),
            region: Some("us-east-1".into()),
            path_style: true,
            credentials: Some((self.access_key.clone(), self.secret_key.clone())),
            max_attempts: 10,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(400),
            attempt_timeout: Duration::from_secs(5),
            timeout_per_mib: Duration::from_millis(500),
            ..S3Options::default()
        }
    }

    /// A backend for `prefix` of the test bucket.
    pub fn backend(&self, prefix: &str) -> Arc<dyn Backend> {
        Arc::new(
            S3Backend::new(BUCKET, prefix, self.options_via(&self.endpoint)).expect("S3 backend"),
        )
    }

    /// Environment for a `podvault` process to reach this server (or `endpoint`).
    pub fn env_via(&self, endpoint: &str) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("PODVAULT_S3_ENDPOINT".into(), endpoint.to_string()),
            ("PODVAULT_S3_PATH_STYLE".into(), "true".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where a test repository lives: a local directory or a prefix of a test S3 bucket.
pub struct Place {
    /// "dir" or "s3", for assertion messages.
    pub name: &'static str,
    /// The backend to open the repository with.
    pub backend: Arc<dyn Backend>,
    /// The repository's files on disk (for tests that damage them): the directory itself,
    /// or the prefix's folder inside s3s-fs's bucket directory.
    pub files: PathBuf,
    /// The `--repo` argument naming it.
    pub spec: String,
    /// Environment a `podvault` process needs to reach it.
    pub env: Vec<(String, String)>,
    /// The server, kept alive as long as the place.
    pub server: Option<Arc<S3Server>>,
}

static PREFIXES: AtomicU64 = AtomicU64::new(0);

impl Place {
    /// A repository directory `name` under `tmp` (not created).
    pub fn dir(tmp: &Path, name: &str) -> Place {
        let path = tmp.join(name);
        Place {
            name: "dir",
            backend: Arc::new(DirBackend::new(&path)),
            files: path.clone(),
            spec: path.display().to_string(),
            env: Vec::new(),
            server: None,
        }
    }

    /// A fresh prefix of `server`'s bucket.
    pub fn s3(server: &Arc<S3Server>) -> Place {
        let prefix = format!(
            "repo-{}-{}",
            std::process::id(),
            PREFIXES.fetch_add(1, Ordering::Relaxed)
        );
        Place {
            name: "s3",
            backend: server.backend(&prefix),
            files: server.bucket_dir().join(&prefix),
            spec: format!("s3://{BUCKET}/{prefix}"),
            env: server.env_via(&server.endpoint),
            server: Some(server.clone()),
        }
    }

    /// Both places, each with its own repository: a directory under `tmp` and a prefix of
    /// a new S3 server.
    pub fn both(tmp: &Path) -> Vec<Place> {
        let server = Arc::new(S3Server::start());
        vec![Place::dir(tmp, "repo"), Place::s3(&server)]
    }

    /// The file of a repository object, as the backend lays it out.
    pub fn file(&self, relative: &str) -> PathBuf {
        self.files.join(relative)
    }
}

/// Deterministic bytes that do not compress (splitmix64 of `seed`).
pub fn pseudo_random(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Writes a snapshot of `tree` as another implementation of the format could (flushing the
/// repository first): host "forger", the root a directory of mode 0755.
pub fn forged_snapshot(
    repo: &podvault_store::Repository,
    tree: podvault_store::TreeId,
    summary: podvault_store::Summary,
) -> podvault_store::SnapshotId {
    use podvault_store::{Node, NodeKind, Snapshot};
    repo.flush().expect("flush");
    let mut root = Node::plain(b"", NodeKind::Dir);
    root.mode = 0o755;
    root.subtree = Some(tree);
    repo.save_snapshot(&Snapshot {
        time: chrono::Utc::now(),
        host: "forger".into(),
        source: "/forged".into(),
        tags: vec![],
        parent: None,
        tree,
        root,
        username: "forger".into(),
        program_version: "other".into(),
        summary,
    })
    .expect("snapshot")
}

/// Repository options with a cheap key derivation, for tests.
pub fn fast_init() -> podvault_store::InitOptions {
    podvault_store::InitOptions {
        kdf: podvault_store::KdfParams {
            memory_kib: 64,
            iterations: 1,
            ..podvault_store::KdfParams::default()
        },
        ..podvault_store::InitOptions::default()
    }
}

/// The `podvault` binary run against one repository, as a user runs it.
pub struct Cli {
    /// The binary (`env!("CARGO_BIN_EXE_podvault")` in the binary's tests).
    pub binary: PathBuf,
    /// `--repo`.
    pub repo: String,
    /// The password, given by `PODVAULT_PASSWORD`.
    pub password: String,
    /// More environment (S3 credentials and endpoint).
    pub env: Vec<(String, String)>,
    /// Named in failure messages ("dir", "s3").
    pub label: String,
}

impl Cli {
    /// The `podvault` binary at `binary` on a repository directory, password "pw".
    pub fn dir(binary: &str, repo: &Path) -> Cli {
        Cli {
            binary: binary.into(),
            repo: repo.display().to_string(),
            password: "pw".into(),
            env: vec![],
            label: "dir".into(),
        }
    }

    /// A command with the repository, password and environment set and no stdin.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.env("PODVAULT_REPO", &self.repo)
            .env("PODVAULT_PASSWORD", &self.password)
            .env_remove("PODVAULT_PASSWORD_FILE")
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        c
    }

    /// `repo init` with a cheap key derivation, for tests.
    pub fn init(&self) {
        self.ok(&[
            "repo",
            "init",
            "--kdf-memory-kib",
            "256",
            "--kdf-iterations",
            "1",
            "--kdf-lanes",
            "2",
        ]);
    }

    /// Runs to completion.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd().args(args).output().expect("run podvault")
    }

    /// Runs, asserts success, returns standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{}: {args:?} failed: {}\n{}",
            self.label,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs with `--json`, asserts success, parses the output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("valid JSON")
    }
}

/// Merges `b` into `a` the way a JSON merge patch does for objects (without deleting on
/// null): a test's small overrides of a full manifest.
pub fn merge_json(a: &mut serde_json::Value, b: serde_json::Value) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge_json(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}
