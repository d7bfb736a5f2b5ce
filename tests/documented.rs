//! Every cluster command the documentation shows (README.md, docs/, the chart's NOTES.txt)
//! run as written against the stand-in API server, with the objects it names in place; the
//! other documented commands are parsed by the binary's own unit test.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podvault_testkit::docs::documented_commands;
use podvault_testkit::kubeapi::KubeApi;
use serde_json::json;

const NS: &str = "podvault";
const BACKUPS: &str = "apis/podvault.io/v1alpha1/namespaces/podvault/backups";
const RESTORES: &str = "apis/podvault.io/v1alpha1/namespaces/podvault/restores";
const REPOSITORIES: &str = "apis/podvault.io/v1alpha1/namespaces/podvault/backuprepositories";

fn is_cluster_command(args: &[String]) -> bool {
    let words: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-') && *a != NS)
        .collect();
    matches!(
        words.as_slice(),
        ["backup", ..] | ["restore", ..] | ["repo", "get", ..]
    )
}

/// The cluster as the commands expect it: a finished backup `nightly`, its restore, and
/// the repository of namespace `shop`; `creating` is left out for the command to make.
fn seed(api: &KubeApi, creating: Option<&str>) {
    if creating != Some("nightly") {
        api.put(
            BACKUPS,
            json!({"apiVersion": "podvault.io/v1alpha1", "kind": "Backup",
                   "metadata": {"name": "nightly"},
                   "spec": {"includedNamespaces": ["shop"]},
                   "status": {"phase": "Completed", "volumes": {"total": 1, "completed": 1}}}),
        );
    }
    api.put(
        RESTORES,
        json!({"apiVersion": "podvault.io/v1alpha1", "kind": "Restore",
               "metadata": {"name": "nightly-20261124100000"},
               "spec": {"backupName": "nightly"},
               "status": {"phase": "Completed"}}),
    );
    api.put(
        REPOSITORIES,
        json!({"apiVersion": "podvault.io/v1alpha1", "kind": "BackupRepository",
               "metadata": {"name": "shop"},
               "spec": {"volumeNamespace": "shop", "location": "s3:backups/podvault/shop",
                        "keySecret": "podvault-repo-shop"},
               "status": {"phase": "Ready", "lastMaintenance": "2026-11-24T03:00:00Z"}}),
    );
}

/// What a controller would do for `--wait`: finish every Backup and Restore made.
fn finish_created(api: &KubeApi) {
    for collection in [BACKUPS, RESTORES] {
        for mut object in api.list(collection) {
            if object["status"]["phase"].is_null() {
                object["status"] = json!({"phase": "Completed"});
                api.put(collection, object);
            }
        }
    }
}

/// A runtime for the stand-in API servers.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn documented_cluster_commands_run_as_written() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let commands: Vec<_> = documented_commands(root)
        .into_iter()
        .filter(|c| is_cluster_command(&c.args))
        .collect();
    assert!(
        commands.len() >= 15,
        "found {} cluster commands",
        commands.len()
    );
    let runtime = runtime();
    let tmp = tempfile::tempdir().expect("tmp");
    for command in &commands {
        // Placeholders stand for the objects the cluster has.
        let args: Vec<String> = command
            .args
            .iter()
            .map(|a| match a.as_str() {
                "BACKUP" => "nightly".to_string(),
                "RESTORE" => "nightly-20261124100000".to_string(),
                _ => a.clone(),
            })
            .collect();
        let api = KubeApi::new();
        let address = runtime.block_on(api.serve());
        let kubeconfig = tmp.path().join("kubeconfig");
        std::fs::write(&kubeconfig, KubeApi::kubeconfig(address)).expect("kubeconfig");
        let creating = args
            .windows(3)
            .find(|w| w[0] == "backup" && w[1] == "create")
            .map(|w| w[2].as_str());
        seed(&api, creating);
        let mut child = Command::new(env!("CARGO_BIN_EXE_podvault"))
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("PODVAULT_NAMESPACE")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run podvault");
        let start = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{}: podvault {} did not end",
                command.place,
                args.join(" ")
            );
            finish_created(&api);
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("output");
        assert!(
            out.status.success(),
            "{}: podvault {}\n{}{}",
            command.place,
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn json_for_every_printing_command_and_repo_get_by_name() {
    let runtime = runtime();
    let tmp = tempfile::tempdir().expect("tmp");
    let api = KubeApi::new();
    let address = runtime.block_on(api.serve());
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(&kubeconfig, KubeApi::kubeconfig(address)).expect("kubeconfig");
    seed(&api, None);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_podvault"))
            .args(args)
            .args(["--kubeconfig", kubeconfig.to_str().expect("utf-8")])
            .env_remove("KUBECONFIG")
            .env_remove("PODVAULT_NAMESPACE")
            .stdin(Stdio::null())
            .output()
            .expect("run podvault");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let json = |args: &[&str]| -> serde_json::Value {
        let text = run(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}\n{text}"))
    };
    assert_eq!(
        json(&["--json", "backup", "get", "nightly"])["kind"],
        "Backup"
    );
    let described = json(&["backup", "describe", "nightly", "--json"]);
    assert_eq!(described["kind"], "List");
    assert_eq!(described["items"][0]["metadata"]["name"], "nightly");
    let described = json(&[
        "restore",
        "describe",
        "nightly-20261124100000",
        "-o",
        "json",
    ]);
    assert_eq!(described["items"][0]["kind"], "Restore");
    assert_eq!(json(&["restore", "get", "--json"])["kind"], "List");
    let created = json(&["--json", "backup", "create", "weekly"]);
    assert_eq!(created["metadata"]["name"], "weekly");
    assert_eq!(
        json(&["--json", "backup", "cancel", "weekly"])["spec"]["cancel"],
        true
    );
    assert_eq!(
        json(&["--json", "backup", "delete", "weekly"])["deleting"],
        true
    );
    // A repository by its name or by the namespace it serves, with its last maintenance.
    let table = run(&["repo", "get", "shop"]);
    assert!(
        table.contains("LAST MAINTENANCE") && table.contains("2026-11-24T03:00:00Z"),
        "{table}"
    );
    assert_eq!(
        json(&["-n", NS, "repo", "get", "shop", "--json"])["status"]["lastMaintenance"],
        "2026-11-24T03:00:00Z"
    );
    let yaml = run(&["repo", "get", "shop", "-o", "yaml"]);
    assert!(yaml.contains("lastMaintenance"), "{yaml}");
    let out = Command::new(env!("CARGO_BIN_EXE_podvault"))
        .args(["repo", "get", "nowhere", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no BackupRepository nowhere"));
}

#[test]
fn the_quickstart_fails_loudly_when_the_restored_copy_differs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    std::fs::write(src.join("sub/a.txt"), "some text\n").expect("write");
    let quickstart = |dir: &std::path::Path| {
        Command::new("bash")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/quickstart.sh"))
            .arg(dir)
            .env("PODVAULT_BIN", env!("CARGO_BIN_EXE_podvault"))
            .env("TMPDIR", tmp.path())
            .env_remove("PODVAULT_REPO")
            .stdin(Stdio::null())
            .output()
            .expect("run the quickstart")
    };
    let out = quickstart(&src);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("restore matches"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A socket is not backed up, so the restored copy differs: the script must fail.
    let _socket = std::os::unix::net::UnixListener::bind(src.join("sock")).expect("socket");
    let out = quickstart(&src);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("quickstart: FAILED"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
