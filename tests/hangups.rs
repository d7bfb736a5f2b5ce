//! Peers that go away never kill a podvault process: an S3 server killed in the middle of a
//! backup (the backup retries, then finishes or fails with an error that says what happened
//! and names endpoint, bucket and key), and a reader of standard output that stops reading
//! (`podvault snapshot ls | head`).

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use podvault_testkit::{BUCKET, Cli, S3Server, pseudo_random};

fn cli(s3: &S3Server, prefix: &str, attempts: &str) -> Cli {
    let mut env = s3.env_via(&s3.endpoint);
    env.push(("AWS_MAX_ATTEMPTS".into(), attempts.into()));
    Cli {
        binary: env!("CARGO_BIN_EXE_podvault").into(),
        repo: format!("s3:{BUCKET}/{prefix}"),
        password: "correct horse".into(),
        env,
        label: "s3".into(),
    }
}

/// A source of `files` incompressible files of 32 MiB.
fn source(dir: &Path, files: u64) {
    fs::create_dir_all(dir).expect("source");
    for i in 0..files {
        fs::write(dir.join(format!("f{i}")), pseudo_random(i + 1, 32 << 20)).expect("write");
    }
}

/// Starts `snapshot create` and kills the server once some packs are up (and before the
/// backup ends); returns the running backup.
fn backup_then_kill(s3: &S3Server, cli: &Cli, src: &Path, prefix: &str) -> Child {
    let child = cli
        .cmd()
        .args(["snapshot", "create"])
        .arg(src)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the backup");
    let start = Instant::now();
    while s3.bytes_under(&format!("{prefix}/data")) < 24 << 20 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the backup uploaded nothing in 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    s3.kill();
    child
}

/// Waits (at most 5 minutes) for `child`; returns its status code, stdout and stderr.
fn finish(mut child: Child) -> (Option<i32>, String, String) {
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            panic!("the backup did not end in 5 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_backup_into_s3_survives_the_server_being_killed_and_restarted() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    source(&src, 6);
    let s3 = Arc::new(S3Server::start());
    let cli = cli(&s3, "restart", "10");
    cli.init();
    let child = backup_then_kill(&s3, &cli, &src, "restart");
    std::thread::sleep(Duration::from_millis(1500));
    s3.restart();
    let (code, stdout, stderr) = finish(child);
    assert_eq!(code, Some(0), "the backup must finish: {stdout}\n{stderr}");
    assert!(stdout.contains("saved"), "{stdout}");
    // The retries were logged in words, naming what failed.
    assert!(
        stderr.contains("attempt") && stderr.contains(&s3.endpoint),
        "{stderr}"
    );
    assert!(!stderr.contains("DispatchFailure"), "{stderr}");
    cli.ok(&["repo", "check", "--read-data"]);
    let out = tmp.path().join("out");
    cli.ok(&[
        "snapshot",
        "restore",
        "latest",
        out.to_str().expect("utf-8"),
    ]);
    for i in 0..6 {
        let name = format!("f{i}");
        assert!(
            fs::read(src.join(&name)).expect("source")
                == fs::read(out.join(&name)).expect("restored"),
            "{name} differs after the restore"
        );
    }
}

#[test]
fn a_backup_whose_server_stays_away_fails_in_words_and_the_next_one_completes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    source(&src, 4);
    let s3 = Arc::new(S3Server::start());
    let cli = cli(&s3, "gone", "3");
    cli.init();
    let child = backup_then_kill(&s3, &cli, &src, "gone");
    let (code, stdout, stderr) = finish(child);
    assert_eq!(code, Some(1), "an error, not a signal: {stdout}\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("podvault: error:"), "{stderr}");
    assert!(
        last.contains("connection refused")
            && last.contains(&format!("s3://{BUCKET}/gone/"))
            && last.contains(&s3.endpoint)
            && last.contains("gave up after 3 attempts"),
        "the error says what happened, where: {last}"
    );
    // Said once, in words: no debug dump of the client's error.
    assert!(!stderr.contains("ConnectorError"), "{stderr}");
    assert_eq!(last.matches("connection refused").count(), 1, "{last}");
    s3.restart();
    let out = cli.ok(&["snapshot", "create", src.to_str().expect("utf-8")]);
    assert!(out.contains("saved"), "{out}");
    cli.ok(&["repo", "check", "--read-data"]);
}

#[test]
fn a_reader_that_stops_reading_ends_the_listing_quietly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cli = Cli::dir(env!("CARGO_BIN_EXE_podvault"), &tmp.path().join("repo"));
    cli.init();
    let src = tmp.path().join("src");
    fs::create_dir(&src).expect("src");
    fs::write(src.join("a"), "a").expect("write");
    for _ in 0..3 {
        cli.ok(&["snapshot", "create", src.to_str().expect("utf-8")]);
    }
    // A reader that is gone before the first line: every write fails with EPIPE.
    for args in [&["snapshot", "ls"][..], &["--json", "snapshot", "ls"][..]] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = cli
            .cmd()
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: no signal, no failure"
        );
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // As typed in a shell.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' snapshot ls | head -1",
            env!("CARGO_BIN_EXE_podvault")
        ))
        .envs(
            cli.cmd()
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .output()
        .expect("sh");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("id"));
    // A failure to write that is not a closed pipe is an error.
    let full = fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = cli
        .cmd()
        .args(["snapshot", "ls"])
        .stdout(full)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writing to standard output"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
