//! Round trips of real data built by `scripts/datasets.sh`: a copy of /usr/share and a
//! PostgreSQL data directory under pgbench churn, driven through the `podvault` binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use podvault_testkit::assert_same_tree;

fn datasets_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/datasets.sh")
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn datasets(args: &[&str]) -> String {
    sh(Command::new("bash").arg(datasets_script()).args(args))
}

struct Repo {
    path: PathBuf,
}

impl Repo {
    fn new(path: PathBuf) -> Repo {
        let repo = Repo { path };
        repo.json(&[
            "repo",
            "init",
            "--kdf-memory-kib",
            "1024",
            "--kdf-iterations",
            "1",
        ]);
        repo
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = sh(Command::new(env!("CARGO_BIN_EXE_podvault"))
            .env("PODVAULT_REPO", &self.path)
            .env("PODVAULT_PASSWORD", "real data")
            .arg("--json")
            .args(args));
        serde_json::from_str(&out).expect("JSON output")
    }

    fn backup(&self, dir: &Path) -> serde_json::Value {
        self.json(&["snapshot", "create", dir.to_str().expect("utf-8")])
    }

    fn restore_latest(&self, target: &Path) -> serde_json::Value {
        self.json(&[
            "snapshot",
            "restore",
            "latest",
            target.to_str().expect("utf-8"),
        ])
    }
}

fn tempdir_for_everyone() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tmp");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    tmp
}

#[test]
fn a_copy_of_usr_share_round_trips_and_a_second_backup_reads_nothing() {
    let tmp = tempdir_for_everyone();
    let tree = tmp.path().join("tree");
    datasets(&["tree", tree.to_str().expect("utf-8")]);
    let repo = Repo::new(tmp.path().join("repo"));
    let first = repo.backup(&tree);
    let files = first["snapshot"]["summary"]["files"]
        .as_u64()
        .expect("files");
    assert!(files > 1000, "a real tree: {files} files");
    assert_eq!(first["unreadable"].as_array().expect("list").len(), 0);
    let second = repo.backup(&tree);
    assert_eq!(
        second["snapshot"]["summary"]["files_unmodified"].as_u64(),
        Some(files)
    );
    assert_eq!(
        second["snapshot"]["summary"]["bytes_read"].as_u64(),
        Some(0)
    );
    assert_eq!(second["snapshot"]["tree"], first["snapshot"]["tree"]);
    let out = tmp.path().join("out");
    repo.restore_latest(&out);
    assert_same_tree(&tree, &out);
    let check = repo.json(&["repo", "check", "--read-data"]);
    assert_eq!(check["problems"].as_array().expect("problems").len(), 0);
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Starts PostgreSQL on `data`, runs one query, stops it, and returns the answer.
fn pg_query(data: &Path, sql: &str) -> String {
    let sock = tempdir_for_everyone();
    sh(Command::new("chown").arg("postgres").arg(sock.path()));
    let opts = format!(
        "-c listen_addresses='' -c unix_socket_directories={}",
        sock.path().display()
    );
    let log = sock.path().join("log");
    let as_pg = |args: &[&str]| {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).args(args);
        c
    };
    let data_s = data.to_str().expect("utf-8");
    let pg_ctl_bin = format!("{PG_BIN}/pg_ctl");
    let pg_ctl = |args: &[&str]| {
        let mut all = vec![pg_ctl_bin.as_str(), "-D", data_s, "-s", "-w"];
        all.extend_from_slice(args);
        sh(&mut as_pg(&all));
    };
    pg_ctl(&["-l", log.to_str().expect("utf-8"), "-o", &opts, "start"]);
    let answer = as_pg(&[
        "psql",
        "-h",
        sock.path().to_str().expect("utf-8"),
        "-U",
        "postgres",
        "-Atc",
        sql,
        "postgres",
    ])
    .output()
    .expect("psql");
    pg_ctl(&["-m", "fast", "stop"]);
    assert!(
        answer.status.success(),
        "{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    String::from_utf8_lossy(&answer.stdout).trim().to_string()
}

#[test]
fn postgres_starts_on_a_restored_incremental_backup_with_the_same_data() {
    let tmp = tempdir_for_everyone();
    let pg = tmp.path().join("pgdata");
    datasets(&["pgdata", pg.to_str().expect("utf-8"), "5"]);
    let repo = Repo::new(tmp.path().join("repo"));
    let first = repo.backup(&pg);
    datasets(&["pgchurn", pg.to_str().expect("utf-8"), "4"]);
    let sum = pg_query(&pg, "SELECT sum(abalance) FROM pgbench_accounts");
    assert_ne!(sum, "0", "churn changed balances");
    let second = repo.backup(&pg);
    let s = &second["snapshot"]["summary"];
    assert_eq!(second["snapshot"]["parent"], first["id"]);
    assert!(s["files_changed"].as_u64().expect("changed") > 0);
    assert!(s["files_unmodified"].as_u64().expect("unmodified") > 0);
    assert!(
        s["bytes_new"].as_u64().expect("new")
            < first["snapshot"]["summary"]["bytes_new"]
                .as_u64()
                .expect("first"),
        "the incremental stores less than the first backup"
    );
    let restored = tmp.path().join("restored");
    repo.restore_latest(&restored);
    assert_eq!(
        pg_query(&restored, "SELECT sum(abalance) FROM pgbench_accounts"),
        sum
    );
}
