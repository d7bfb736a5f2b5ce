//! The `podvault` binary as a user runs it: exit codes, messages and JSON output.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use podvault_testkit::Cli;

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().to_path_buf();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");
        Env { _tmp: tmp, root }
    }

    fn repo(&self) -> PathBuf {
        self.root.join("repo")
    }

    fn cli(&self) -> Cli {
        Cli {
            binary: env!("CARGO_BIN_EXE_podvault").into(),
            repo: self.repo().display().to_string(),
            password: "correct horse".into(),
            env: vec![],
            label: "cli".into(),
        }
    }

    fn cmd(&self) -> Command {
        self.cli().cmd()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cli().run(args)
    }

    fn ok(&self, args: &[&str]) -> String {
        self.cli().ok(args)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        self.cli().json(args)
    }

    fn init(&self) {
        self.cli().init();
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn make_source(root: &Path) -> PathBuf {
    let src = root.join("src");
    fs::create_dir_all(src.join("sub")).expect("mkdir");
    fs::write(src.join("a.txt"), "hello\n".repeat(1000)).expect("write");
    // Incompressible, so the data pack is the largest file of the repository.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(src.join("sub/b.bin"), random).expect("write");
    src
}

#[test]
fn create_list_show_restore_and_check_with_json() {
    let env = Env::new();
    env.init();
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(env.repo().join("config")).expect("config"))
            .expect("json");
    assert_eq!(config["kdf"]["parallelism"], 2, "--kdf-lanes is recorded");
    let src = make_source(&env.root);
    let created = env.json(&[
        "snapshot",
        "create",
        src.to_str().expect("utf-8"),
        "--tag",
        "daily",
    ]);
    let id = created["id"].as_str().expect("id").to_string();
    assert_eq!(created["snapshot"]["summary"]["files"], 2);
    assert_eq!(created["snapshot"]["tags"][0], "daily");
    assert_eq!(created["unreadable"].as_array().expect("list").len(), 0);

    let second = env.json(&["snapshot", "create", src.to_str().expect("utf-8")]);
    assert_eq!(second["snapshot"]["parent"], id.as_str());
    assert_eq!(second["snapshot"]["summary"]["files_unmodified"], 2);
    assert_eq!(second["snapshot"]["summary"]["bytes_new"], 0);

    let list = env.json(&["snapshot", "ls"]);
    assert_eq!(list.as_array().expect("array").len(), 2);
    let shown = env.json(&["snapshot", "show", &id[..8]]);
    assert_eq!(shown["id"], id.as_str());
    assert!(shown["dedup_ratio"].as_f64().expect("ratio") > 1.0);
    let human = env.ok(&["snapshot", "show", "latest"]);
    assert!(
        human.contains("dedup") && human.contains("duration"),
        "{human}"
    );

    let out = env.root.join("out");
    let restored = env.json(&["snapshot", "restore", &id, out.to_str().expect("utf-8")]);
    assert_eq!(restored["restore"]["files"], 2);
    assert_eq!(
        fs::read(out.join("a.txt")).expect("a"),
        fs::read(src.join("a.txt")).expect("a")
    );
    assert_eq!(
        fs::read(out.join("sub/b.bin")).expect("b"),
        fs::read(src.join("sub/b.bin")).expect("b")
    );

    let check = env.json(&["repo", "check", "--read-data"]);
    assert_eq!(check["problems"].as_array().expect("problems").len(), 0);
    assert!(check["blobs_read"].as_u64().expect("count") > 0);
}

#[test]
fn non_empty_target_needs_overwrite() {
    let env = Env::new();
    env.init();
    let src = make_source(&env.root);
    env.ok(&["snapshot", "create", src.to_str().expect("utf-8")]);
    let out = env.root.join("out");
    fs::create_dir(&out).expect("mkdir");
    fs::write(out.join("a.txt"), b"old").expect("write");
    let r = env.run(&[
        "snapshot",
        "restore",
        "latest",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        stderr(&r).contains("not empty") && stderr(&r).contains("--overwrite"),
        "{}",
        stderr(&r)
    );
    assert_eq!(
        fs::read(out.join("a.txt")).expect("kept"),
        b"old",
        "nothing replaced"
    );
    env.ok(&[
        "snapshot",
        "restore",
        "latest",
        out.to_str().expect("utf-8"),
        "--overwrite",
    ]);
    assert_eq!(
        fs::read(out.join("a.txt")).expect("a"),
        fs::read(src.join("a.txt")).expect("a")
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    let env = Env::new();
    // No repository yet.
    let r = env.run(&["snapshot", "ls"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        stderr(&r).contains("not a podvault repository"),
        "{}",
        stderr(&r)
    );
    assert!(
        stderr(&r).contains(env.repo().to_str().expect("utf-8")),
        "{}",
        stderr(&r)
    );
    env.init();
    // Wrong password.
    let r = env
        .cmd()
        .env("PODVAULT_PASSWORD", "wrong")
        .args(["snapshot", "ls"])
        .output()
        .expect("run");
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("wrong password"), "{}", stderr(&r));
    // No password and no terminal.
    let r = env
        .cmd()
        .env_remove("PODVAULT_PASSWORD")
        .args(["snapshot", "ls"])
        .output()
        .expect("run");
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("--password-file"), "{}", stderr(&r));
    // Password from a file.
    let pw = env.root.join("pw");
    fs::write(&pw, "correct horse\n").expect("write");
    let r = env
        .cmd()
        .env_remove("PODVAULT_PASSWORD")
        .args([
            "--password-file",
            pw.to_str().expect("utf-8"),
            "snapshot",
            "ls",
        ])
        .output()
        .expect("run");
    assert!(r.status.success(), "{}", stderr(&r));
    // A missing source directory.
    let r = env.run(&["snapshot", "create", "/definitely/not/here"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        stderr(&r).contains("/definitely/not/here"),
        "{}",
        stderr(&r)
    );
    // An unknown snapshot.
    let r = env.run(&["snapshot", "show", "deadbeef"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("deadbeef"), "{}", stderr(&r));
    // init over an existing repository.
    let r = env.run(&["repo", "init"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("already exists"), "{}", stderr(&r));
}

#[test]
fn a_flipped_byte_is_named_by_check_and_restore() {
    let env = Env::new();
    env.init();
    let src = make_source(&env.root);
    env.ok(&["snapshot", "create", src.to_str().expect("utf-8")]);
    // Damage the largest pack (the data pack) in the middle.
    let mut packs: Vec<PathBuf> = walkdir(&env.repo().join("data"));
    packs.sort_by_key(|p| fs::metadata(p).expect("stat").len());
    let pack = packs.pop().expect("a pack");
    let mut bytes = fs::read(&pack).expect("read");
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x40;
    fs::write(&pack, &bytes).expect("write");
    let name = pack
        .file_name()
        .expect("name")
        .to_str()
        .expect("utf-8")
        .to_string();

    let r = env.run(&["repo", "check", "--read-data"]);
    assert_eq!(r.status.code(), Some(1));
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains(&name), "{out}");
    assert!(
        out.contains("/sub/b.bin") || out.contains("/a.txt"),
        "names the affected file: {out}"
    );

    let target = env.root.join("out");
    let r = env.run(&[
        "snapshot",
        "restore",
        "latest",
        target.to_str().expect("utf-8"),
    ]);
    assert_eq!(r.status.code(), Some(1));
    let err = stderr(&r);
    assert!(err.contains(&name), "{err}");
    assert!(err.contains("b.bin") || err.contains("a.txt"), "{err}");
}

#[test]
fn unreadable_files_give_exit_code_3_and_are_listed() {
    let env = Env::new();
    env.init();
    let src = make_source(&env.root);
    let secret = src.join("secret");
    fs::write(&secret, b"top secret").expect("write");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).expect("chmod");
    let locked = src.join("locked");
    fs::create_dir(&locked).expect("mkdir");
    fs::write(locked.join("inside"), b"hidden").expect("write");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).expect("chmod");
    let as_root = rustix::process::geteuid().is_root();
    let mut cmd = if as_root {
        // Root reads everything: run as nobody, who owns the repository but not the file.
        chown_tree(&env.repo(), 65534);
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--", env!("CARGO_BIN_EXE_podvault")]);
        c.env("PODVAULT_REPO", env.repo())
            .env("PODVAULT_PASSWORD", "correct horse");
        c
    } else {
        env.cmd()
    };
    let r = cmd
        .args(["snapshot", "create", src.to_str().expect("utf-8")])
        .output()
        .expect("run");
    assert_eq!(r.status.code(), Some(3), "{}", stderr(&r));
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("secret"), "{out}");
    assert!(
        out.contains("locked") && out.contains("cannot list the directory"),
        "{out}"
    );
    // The snapshot was saved with the other files.
    let list = env.json(&["snapshot", "ls"]);
    assert_eq!(list[0]["snapshot"]["summary"]["files"], 3);
    assert_eq!(list[0]["snapshot"]["summary"]["errors"], 2);
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).expect("chmod back");
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn chown_tree(p: &Path, uid: u32) {
    let status = Command::new("chown")
        .args(["-R", &format!("{uid}:{uid}")])
        .arg(p)
        .status()
        .expect("chown");
    assert!(status.success());
}

#[test]
fn maintenance_commands_forget_prune_repair_check_subsets_and_keys() {
    let env = Env::new();
    env.init();
    let src = env.root.join("src");
    fs::create_dir(&src).expect("mkdir");
    let mut ids = Vec::new();
    for round in 0..4u64 {
        fs::write(
            src.join("f"),
            podvault_testkit::pseudo_random(round, 3 << 20),
        )
        .expect("write");
        let tag = if round == 0 { "release" } else { "nightly" };
        let created = env.json(&[
            "snapshot",
            "create",
            src.to_str().expect("utf-8"),
            "--tag",
            tag,
        ]);
        ids.push(created["id"].as_str().expect("id").to_string());
    }
    let out = env.run(&["snapshot", "forget"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("refusing to forget every snapshot"),
        "{}",
        stderr(&out)
    );
    let dry = env.json(&[
        "snapshot",
        "forget",
        "--keep-last",
        "1",
        "--keep-tag",
        "release",
        "--dry-run",
    ]);
    assert_eq!(dry["removed"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        env.json(&["snapshot", "ls"]).as_array().map(Vec::len),
        Some(4)
    );
    let done = env.json(&[
        "snapshot",
        "forget",
        "--keep-last",
        "1",
        "--keep-tag",
        "release",
    ]);
    let removed: Vec<&str> = done["removed"]
        .as_array()
        .expect("removed")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(removed, vec![ids[2].as_str(), ids[1].as_str()]);
    let pruned = env.json(&["repo", "prune"]);
    assert!(
        pruned["bytes_freed"].as_u64().expect("freed") >= 5 << 20,
        "{pruned}"
    );
    assert_eq!(pruned["waiting_for"].as_array().map(Vec::len), Some(0));
    // A temporary file a process killed mid-write left two days ago.
    let stale = env.repo().join("index/.tmp-0a1b-0011223344556677");
    let f = fs::File::create(&stale).expect("create");
    f.set_len(1234).expect("size");
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400))
        .expect("mtime");
    let human = env.ok(&["repo", "prune", "--dry-run"]);
    assert!(human.contains("would repack"), "{human}");
    assert!(
        human.contains("would have removed 1 temporary files of writes interrupted over a day ago"),
        "{human}"
    );
    assert!(stale.exists());
    let pruned = env.json(&["repo", "prune"]);
    assert_eq!(pruned["partials_removed"], 1, "{pruned}");
    assert_eq!(pruned["partial_bytes"], 1234, "{pruned}");
    assert!(!stale.exists());

    // Sessions: none once every command has ended; a damaged one is listed and removed.
    assert_eq!(env.json(&["repo", "sessions"]), serde_json::json!([]));
    fs::write(
        env.repo().join("sessions/00ff00ff00ff00ff00ff00ff00ff00ff"),
        b"damaged",
    )
    .expect("write");
    let listed = env.ok(&["repo", "sessions"]);
    assert!(listed.contains("00ff00ff   unreadable"), "{listed}");
    let listed = env.json(&["repo", "sessions"]);
    assert_eq!(listed[0]["state"], "unreadable", "{listed}");
    let out = env.run(&["repo", "sessions", "--remove", "00f"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("at least 4 hex digits"),
        "{}",
        stderr(&out)
    );
    let removed = env.ok(&["repo", "sessions", "--remove", "00ff00"]);
    assert_eq!(removed.trim(), "removed session 00ff00ff");
    assert_eq!(env.json(&["repo", "sessions"]), serde_json::json!([]));

    // Checks of a share of the packs read fewer packs than a full one.
    let full = env.json(&["repo", "check", "--read-data"]);
    let some = env.json(&["repo", "check", "--read-data", "--read-data-subset", "1%"]);
    assert!(
        some["packs_read"].as_u64() < full["packs_read"].as_u64(),
        "{some} {full}"
    );
    let out = env.run(&["repo", "check", "--read-data-subset", "150%"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // A lost index is rebuilt from the packs.
    for entry in fs::read_dir(env.repo().join("index")).expect("index dir") {
        fs::remove_file(entry.expect("entry").path()).expect("remove");
    }
    let repaired = env.json(&["repo", "repair", "index"]);
    assert!(repaired["blobs"].as_u64().expect("blobs") > 0);
    let check = env.json(&["repo", "check", "--read-data"]);
    assert_eq!(
        check["problems"].as_array().map(Vec::len),
        Some(0),
        "{check}"
    );
    assert_eq!(check["snapshots"].as_u64(), Some(2));

    // Keys: add, list, change, remove; the last one stays.
    let new_pw = env.root.join("new.pw");
    fs::write(&new_pw, "second password\n").expect("write");
    env.ok(&[
        "repo",
        "key",
        "add",
        "--new-password-file",
        new_pw.to_str().expect("utf-8"),
    ]);
    let keys = env.json(&["repo", "key", "list"]);
    assert_eq!(keys.as_array().map(Vec::len), Some(2));
    let current = keys
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["current"] == true)
        .expect("current key");
    let out = env.run(&["repo", "key", "remove", current["id"].as_str().expect("id")]);
    assert!(
        stderr(&out).contains("opened the repository with"),
        "{}",
        stderr(&out)
    );
    let newer = env.root.join("newer.pw");
    fs::write(&newer, "third password\n").expect("write");
    env.ok(&[
        "repo",
        "key",
        "passwd",
        "--new-password-file",
        newer.to_str().expect("utf-8"),
    ]);
    let out = env.run(&["snapshot", "ls"]);
    assert!(stderr(&out).contains("wrong password"), "{}", stderr(&out));
    let by_newer = Cli {
        password: "third password".into(),
        ..env.cli()
    };
    let keys = by_newer.json(&["repo", "key", "list"]);
    assert_eq!(keys.as_array().map(Vec::len), Some(2));
}

#[test]
fn restore_wait_ends_on_markers_and_fails_on_a_failure_marker() {
    let env = Env::new();
    let root = env.root.join("restores");
    for v in ["data", "cache"] {
        fs::create_dir_all(root.join(v)).expect("mkdir");
    }
    let wait = |extra: &[&str]| {
        let mut args = vec![
            "restore-wait",
            "--restore-uid",
            "r-1",
            "--volume",
            "data,cache",
            "--root",
            root.to_str().expect("utf-8"),
            "--poll-ms",
            "10",
        ];
        args.extend_from_slice(extra);
        env.cmd()
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let child = wait(&[]);
    std::thread::sleep(std::time::Duration::from_millis(100));
    for v in ["data", "cache"] {
        fs::create_dir_all(root.join(v).join(".podvault")).expect("mkdir");
        fs::write(root.join(v).join(".podvault/r-1"), "").expect("marker");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", stderr(&out));

    fs::remove_file(root.join("cache/.podvault/r-1")).expect("rm");
    fs::write(
        root.join("cache/.podvault/r-1.failed"),
        "snapshot 1a2b not found\n",
    )
    .expect("w");
    let out = wait(&[]).wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("snapshot 1a2b not found"),
        "{}",
        stderr(&out)
    );

    fs::remove_file(root.join("cache/.podvault/r-1.failed")).expect("rm");
    let out = wait(&["--timeout", "1"]).wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("still not restored"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&[
        "restore-wait",
        "--restore-uid",
        "r-1",
        "--volume",
        "nope",
        "--root",
        root.to_str().expect("utf-8"),
    ]);
    assert!(
        stderr(&out).contains("volume nope is not mounted"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn cluster_commands_without_a_cluster_say_so_and_bad_input_is_named() {
    let env = Env::new();
    let missing = env.root.join("no-kubeconfig");
    let run = |args: &[&str]| {
        env.cmd()
            .args(args)
            .env("KUBECONFIG", &missing)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("run")
    };
    let out = run(&["backup", "get"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("connecting to the cluster"),
        "{}",
        stderr(&out)
    );
    // Said once: where podvault looked, and the cause.
    assert_eq!(
        stderr(&out).matches("No such file or directory").count(),
        1,
        "{}",
        stderr(&out)
    );
    // Bad input is refused before any cluster is asked.
    let out = run(&["backup", "create", "b1", "--ttl", "tomorrow"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--ttl") && stderr(&out).contains("\"tomorrow\""),
        "{}",
        stderr(&out)
    );
    let out = run(&["restore", "create", "--from-backup", "b1", "--timeout", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--timeout") && stderr(&out).contains("must be more than 0"),
        "{}",
        stderr(&out)
    );
    let out = run(&[
        "restore",
        "create",
        "--from-backup",
        "b1",
        "--include-volumes",
        "shop/db-0/data,data",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--include-volumes: \"data\" names no volume"),
        "{}",
        stderr(&out)
    );
    let out = run(&["backup", "get", "-o", "xml"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown format");
    let out = run(&["node-agent", "--storage", "s3:b/p"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--node"), "{}", stderr(&out));
    // The webhook refuses to start without its certificate, naming the file.
    let cert = env.root.join("tls.crt");
    let out = run(&["webhook", "--tls-cert", cert.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("tls.crt"), "{}", stderr(&out));
}

#[test]
fn a_damaged_snapshot_is_listed_can_be_forgotten_and_stops_prune_until_then() {
    let env = Env::new();
    env.init();
    let src = make_source(&env.root);
    env.ok(&["snapshot", "create", src.to_str().expect("utf-8")]);
    env.ok(&[
        "snapshot",
        "create",
        src.to_str().expect("utf-8"),
        "--tag",
        "second",
    ]);
    // Damage the newer snapshot's file.
    let listed = env.json(&["snapshot", "ls"]);
    let newest = listed[1]["id"].as_str().expect("id").to_string();
    let file = env.repo().join("snapshots").join(&newest);
    let mut bytes = fs::read(&file).expect("snapshot file");
    bytes[40] ^= 1;
    fs::write(&file, bytes).expect("damage");

    let out = env.ok(&["snapshot", "ls"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&newest[..8]) && l.contains("DAMAGED")),
        "{out}"
    );
    assert!(out.contains("1 snapshots"), "{out}");
    let listed = env.json(&["snapshot", "ls"]);
    assert!(listed[1]["damaged"].is_string(), "{listed}");
    // latest is the newest readable one; restoring it works.
    let target = env.root.join("restored");
    env.ok(&[
        "snapshot",
        "restore",
        "latest",
        target.to_str().expect("utf-8"),
    ]);
    let out = env.run(&["repo", "prune"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&newest) && stderr(&out).contains("snapshot forget"),
        "{}",
        stderr(&out)
    );
    env.ok(&["snapshot", "forget", &newest[..8]]);
    env.ok(&["repo", "prune"]);
    env.ok(&["repo", "check", "--read-data"]);
}

#[test]
fn completions_manual_pages_and_the_kubectl_plugin() {
    let env = Env::new();
    let bash = env.ok(&["completion", "bash"]);
    assert!(bash.contains("_podvault()"), "{bash}");
    // bash loads it, and then completes podvault with it.
    let script = env.root.join("podvault.bash");
    fs::write(&script, &bash).expect("script");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p podvault",
            script.display()
        ))
        .output()
        .expect("bash");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("_podvault"),
        "{}",
        stderr(&out)
    );
    assert!(
        env.ok(&["completion", "zsh"])
            .starts_with("#compdef podvault")
    );
    assert!(
        env.ok(&["completion", "fish"])
            .contains("complete -c podvault")
    );
    assert!(!env.run(&["completion", "tcsh"]).status.success());

    let page = env.ok(&["man"]);
    assert!(page.contains(".TH podvault 1"), "{page}");
    // As README.md shows it, in the current directory.
    let out = env
        .cmd()
        .args(["man", "--dir", "man1"])
        .current_dir(&env.root)
        .output()
        .expect("man");
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = env.root.join("man1");
    for name in [
        "podvault.1",
        "podvault-snapshot-restore.1",
        "podvault-backup-create.1",
    ] {
        let text = fs::read_to_string(dir.join(name)).expect(name);
        assert!(text.contains(".TH"), "{name}");
    }

    // As kubectl runs a plugin: the binary under the name kubectl-podvault, with the words
    // after `kubectl podvault`.
    let bin = env.root.join("bin");
    fs::create_dir(&bin).expect("bin");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_podvault"), bin.join("kubectl-podvault"))
        .expect("link");
    let out = Command::new(bin.join("kubectl-podvault"))
        .arg("--help")
        .output()
        .expect("plugin");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && help.contains("Usage: kubectl podvault"),
        "{help}"
    );
    let out = Command::new(bin.join("kubectl-podvault"))
        .args(["snapshot", "ls", "--repo", "/nonexistent/repo"])
        .env("PODVAULT_PASSWORD", "pw")
        .output()
        .expect("plugin");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/repo"),
        "{}",
        stderr(&out)
    );
    // Through kubectl itself, where it is installed.
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok()
    {
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("kubectl")
            .args(["podvault", "--help"])
            .env("PATH", path)
            .output()
            .expect("kubectl");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Usage: kubectl podvault"),
            "{help}{}",
            stderr(&out)
        );
    }
}
