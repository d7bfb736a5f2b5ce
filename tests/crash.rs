//! Crash safety and concurrency, proved with real processes on a directory and on S3:
//! backups killed with SIGKILL at random moments, and several backups running into one
//! repository while prune runs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use podvault_testkit::{Cli, Place, pseudo_random};

struct Repo<'a> {
    place: &'a Place,
    cli: Cli,
}

impl std::ops::Deref for Repo<'_> {
    type Target = Cli;
    fn deref(&self) -> &Cli {
        &self.cli
    }
}

impl<'a> Repo<'a> {
    fn new(place: &'a Place) -> Repo<'a> {
        let cli = Cli {
            binary: env!("CARGO_BIN_EXE_podvault").into(),
            repo: place.spec.clone(),
            password: "pw".into(),
            env: place.env.clone(),
            label: place.name.into(),
        };
        Repo { place, cli }
    }

    fn init(&self) {
        self.ok(&[
            "repo",
            "init",
            "--kdf-memory-kib",
            "64",
            "--kdf-iterations",
            "1",
        ]);
    }

    /// Restores `snapshot` and asserts it equals `expected` (file name to content).
    fn assert_restores(&self, snapshot: &str, target: &Path, expected: &BTreeMap<String, Vec<u8>>) {
        let _ = fs::remove_dir_all(target);
        self.ok(&[
            "snapshot",
            "restore",
            snapshot,
            target.to_str().expect("utf-8"),
        ]);
        let got = read_dir(target);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{}: restored names",
            self.place.name
        );
        for (name, data) in expected {
            assert!(got[name] == *data, "{}: {name} differs", self.place.name);
        }
        fs::remove_dir_all(target).expect("clean up");
    }
}

fn read_dir(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .expect("list")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).expect("read"),
            )
        })
        .collect()
}

/// Rewrites `count` of the source's files (chosen by `round`) with new random content.
fn mutate(src: &Path, files: usize, size: usize, round: u64, count: usize) {
    fs::create_dir_all(src).expect("mkdir");
    for k in 0..count {
        let i = (round as usize * 3 + k) % files;
        let seed = round * 1000 + i as u64 + 1;
        fs::write(src.join(format!("f{i:02}")), pseudo_random(seed, size)).expect("write");
    }
}

/// A small deterministic generator for kill delays.
fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

fn kills_on(place: &Place, tmp: &Path, rounds: u64) {
    let repo = Repo::new(place);
    repo.init();
    let src = tmp.join(format!("src-{}", place.name));
    mutate(&src, 8, 3 << 20, 0, 8);
    let mut rng = 0x5eed_u64 + place.name.len() as u64;
    let (mut mid_run, mut stored_after, mut changed) = (0, 0u64, 0u64);
    // Kills land within the time a whole backup takes, measured as the test goes.
    let mut backup_ms = 300u64;
    for round in 1..=rounds {
        mutate(&src, 8, 3 << 20, round, 3);
        changed += 12 << 20; // 3 files before the kill, 1 more after it
        let mut child = repo
            .cmd()
            .args(["snapshot", "create", src.to_str().expect("utf-8")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn backup");
        std::thread::sleep(Duration::from_millis(next(&mut rng) % backup_ms));
        if child.try_wait().expect("poll").is_none() {
            mid_run += 1;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        repo.ok(&["repo", "check"]);
        mutate(&src, 8, 3 << 20, round + 100, 1);
        let started = std::time::Instant::now();
        let created = repo.json(&["snapshot", "create", src.to_str().expect("utf-8")]);
        backup_ms = (started.elapsed().as_millis() as u64).max(20);
        stored_after += created["snapshot"]["summary"]["bytes_stored"]
            .as_u64()
            .expect("bytes stored");
        let id = created["id"].as_str().expect("id").to_string();
        repo.assert_restores(&id, &tmp.join("restored"), &read_dir(&src));
    }
    repo.ok(&["repo", "prune"]);
    let check = repo.json(&["repo", "check", "--read-data"]);
    assert_eq!(
        check["problems"].as_array().map(Vec::len),
        Some(0),
        "{check}"
    );
    eprintln!(
        "{}: {rounds} backups killed ({mid_run} while running); the backups after them stored \
         {} MiB for {} MiB of changed files",
        place.name,
        stored_after >> 20,
        changed >> 20
    );
    assert!(
        mid_run >= rounds / 2,
        "too few kills landed mid-run: {mid_run}"
    );
}

#[test]
fn backups_killed_at_random_moments_leave_a_sound_repository() {
    let tmp = tempfile::tempdir().expect("tmp");
    for place in Place::both(tmp.path()) {
        kills_on(&place, tmp.path(), 20);
    }
}

fn concurrent_on(place: &Place, tmp: &Path) {
    const WRITERS: usize = 3;
    const ROUNDS: u64 = 3;
    let repo = Repo::new(place);
    repo.init();
    let done = Arc::new(AtomicBool::new(false));
    let prunes = Arc::new(AtomicUsize::new(0));
    /// Stops the pruner however the writers end, so a failing writer fails the test
    /// instead of leaving the pruner looping.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let latest: Vec<(String, PathBuf)> = std::thread::scope(|scope| {
        let stop = StopOnDrop(done.clone());
        let pruner = {
            let (done, prunes, repo) = (done.clone(), prunes.clone(), &repo);
            scope.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    repo.ok(&["repo", "prune", "--repack-below", "60"]);
                    prunes.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(30));
                }
            })
        };
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let repo = &repo;
                let src = tmp.join(format!("{}-writer-{w}", place.name));
                scope.spawn(move || {
                    let mut last = String::new();
                    for round in 0..ROUNDS {
                        // Own files, changed each round, plus one file all writers share.
                        mutate(&src, 4, 1 << 20, round * 10 + w as u64, 2);
                        fs::write(src.join("shared"), pseudo_random(999, 3 << 20)).expect("write");
                        let created =
                            repo.json(&["snapshot", "create", src.to_str().expect("utf-8")]);
                        last = created["id"].as_str().expect("id").to_string();
                        repo.ok(&[
                            "snapshot",
                            "forget",
                            "--keep-last",
                            "1",
                            "--source",
                            src.to_str().expect("utf-8"),
                        ]);
                    }
                    (last, src)
                })
            })
            .collect();
        let latest: Vec<_> = writers.into_iter().map(|w| w.join()).collect();
        drop(stop);
        pruner.join().expect("pruner");
        latest.into_iter().map(|w| w.expect("writer")).collect()
    });
    // With every session ended, one more prune deletes whatever is still marked.
    let report = repo.json(&["repo", "prune"]);
    assert_eq!(report["waiting_for"].as_array().map(Vec::len), Some(0));
    let check = repo.json(&["repo", "check", "--read-data"]);
    assert_eq!(
        check["problems"].as_array().map(Vec::len),
        Some(0),
        "{check}"
    );
    assert_eq!(check["snapshots"].as_u64(), Some(WRITERS as u64));
    for (id, src) in &latest {
        repo.assert_restores(id, &tmp.join("restored"), &read_dir(src));
    }
    eprintln!(
        "{}: {WRITERS} writers x {ROUNDS} backups with forget, {} prunes alongside; all \
         snapshots restore bit-exact",
        place.name,
        prunes.load(Ordering::Relaxed)
    );
    assert!(prunes.load(Ordering::Relaxed) >= 2);
}

#[test]
fn concurrent_backups_and_prunes_lose_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    for place in Place::both(tmp.path()) {
        concurrent_on(&place, tmp.path());
    }
}

#[test]
fn backups_through_a_faulty_network_complete_or_fail_clearly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = Arc::new(podvault_testkit::S3Server::start());
    let place = Place::s3(&server);
    let proxy =
        podvault_testkit::FaultProxy::start(&server.endpoint, 0.2, 11, Duration::from_millis(1500));
    let mut repo = Repo::new(&place);
    repo.cli.env = server.env_via(&proxy.endpoint);
    repo.cli.env.extend([
        ("PODVAULT_S3_TIMEOUT".to_string(), "1".to_string()),
        ("AWS_MAX_ATTEMPTS".to_string(), "12".to_string()),
    ]);
    repo.init();
    let src = tmp.path().join("src");
    mutate(&src, 6, 5 << 20, 0, 6);
    let created = repo.json(&["snapshot", "create", src.to_str().expect("utf-8")]);
    let id = created["id"].as_str().expect("id").to_string();
    repo.assert_restores(&id, &tmp.path().join("restored"), &read_dir(&src));
    let recovered = proxy.stats().total();
    assert!(recovered >= 3, "{:?}", proxy.stats());

    // Faults that never stop: a clear error, and no snapshot.
    proxy.set_rate(1.0);
    mutate(&src, 6, 5 << 20, 1, 2);
    repo.cli
        .env
        .push(("AWS_MAX_ATTEMPTS".to_string(), "3".to_string()));
    let out = repo.run(&["snapshot", "create", src.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("gave up after 3 attempts") && stderr.contains(podvault_testkit::BUCKET),
        "{stderr}"
    );
    // Read directly: one snapshot, and nothing it refers to is missing.
    let direct = Repo::new(&place);
    let check = direct.json(&["repo", "check", "--read-data"]);
    assert_eq!(
        check["problems"].as_array().map(Vec::len),
        Some(0),
        "{check}"
    );
    assert_eq!(check["snapshots"].as_u64(), Some(1));
    eprintln!(
        "faults injected: {recovered} of {} requests recovered during init, a 30 MiB backup and its restore, then \
         every request failed and the backup stopped with a clear error",
        proxy.stats().requests.load(Ordering::Relaxed)
    );
}
