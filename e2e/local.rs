//! The local end-to-end suite: real processes only, with the Kubernetes API as the one
//! stand-in (`podvault_testkit::kubeapi`). It runs:
//! - the `podvault` binary as controller, node agent and webhook, with the CLI driving them;
//! - s3s-fs for storage, behind a proxy that can stall it;
//! - the webhook over TLS, with its built-in certificate;
//! - a node agent on a kubelet-style directory tree.
//!
//! A StatefulSet pod with a CSI claim, a local-volume claim and an emptyDir is backed up,
//! changed and backed up again incrementally. It is then restored into another namespace
//! through the webhook's patch and the restore helper, and compared byte for byte. A third
//! backup is canceled while it runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use podvault_testkit::kubeapi::KubeApi;
use podvault_testkit::{BUCKET, FaultKind, FaultProxy, S3Server, pseudo_random};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

const NS: &str = "podvault";
const NODE: &str = "node-1";
const PVB: &str = "apis/podvault.io/v1alpha1/namespaces/podvault/podvolumebackups";
const PVR: &str = "apis/podvault.io/v1alpha1/namespaces/podvault/podvolumerestores";

/// The podvault processes; killed when dropped.
struct Processes(Vec<(String, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct World {
    api: KubeApi,
    tmp: tempfile::TempDir,
    env: Vec<(String, String)>,
    webhook: SocketAddr,
    _s3: Arc<S3Server>,
    proxy: Arc<FaultProxy>,
    processes: Processes,
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

impl World {
    fn podvault(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_podvault"));
        c.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    fn start(&mut self, name: &str, args: &[&str]) {
        let log = std::fs::File::create(self.tmp.path().join(format!("{name}.log"))).expect("log");
        let child = self
            .podvault()
            .args(args)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start podvault");
        self.processes.0.push((name.to_string(), child));
    }

    /// Runs the CLI (for at most 5 minutes); returns stdout, or panics with its output and
    /// the servers' logs.
    fn cli(&self, args: &[&str]) -> String {
        let mut child = self
            .podvault()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run podvault");
        let start = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if start.elapsed() > Duration::from_secs(300) {
                let _ = child.kill();
                panic!(
                    "podvault {args:?} did not finish in 5 minutes\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        if !out.status.success() {
            panic!(
                "podvault {args:?} failed:\n{}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
        }
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Backs up namespace `shop` as `name`, waiting for the end; returns the Backup.
    fn backup(&self, name: &str) -> Value {
        self.cli(&[
            "backup",
            "create",
            name,
            "--include-namespaces",
            "shop",
            "--wait",
        ]);
        self.api
            .get(&format!(
                "apis/podvault.io/v1alpha1/namespaces/podvault/backups/{name}"
            ))
            .expect("the Backup")
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for (name, _) in &self.processes.0 {
            let text = std::fs::read_to_string(self.tmp.path().join(format!("{name}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            all.push_str(&format!("--- {name} (last lines) ---\n"));
            for line in tail.into_iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }

    fn pods_root(&self) -> PathBuf {
        self.tmp.path().join("kubelet/pods")
    }

    /// Waits (up to `limit`) for `done`, polling the stand-in API.
    async fn until(&self, what: &str, limit: Duration, done: impl Fn(&KubeApi) -> bool) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if done(&self.api) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}\n{}", self.logs());
    }
}

/// The volume directories of a pod as the kubelet lays them out: the CSI claim, the local
/// volume claim and the emptyDir.
fn volume_dirs(
    root: &Path,
    uid: &str,
    csi_pv: &str,
    local_pv: &str,
) -> BTreeMap<&'static str, PathBuf> {
    let volumes = root.join(uid).join("volumes");
    BTreeMap::from([
        (
            "data",
            volumes.join("kubernetes.io~csi").join(csi_pv).join("mount"),
        ),
        (
            "cache",
            volumes.join("kubernetes.io~local-volume").join(local_pv),
        ),
        (
            "scratch",
            volumes.join("kubernetes.io~empty-dir").join("scratch"),
        ),
    ])
}

fn pod(namespace: &str, uid: Option<&str>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "db-0", "namespace": namespace, "labels": {"app": "db"},
            "annotations": {"backup.podvault.io/backup-volumes": "data,cache,scratch"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                                 "uid": "sts-db", "controller": true}]
        },
        "spec": {
            "containers": [{"name": "db", "image": "postgres:16",
                            "securityContext": {"runAsUser": 999, "runAsGroup": 999},
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                                {"name": "cache", "mountPath": "/cache"},
                                {"name": "scratch", "mountPath": "/scratch"}]}],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "pgdata"}},
                {"name": "cache", "persistentVolumeClaim": {"claimName": "cache"}},
                {"name": "scratch", "emptyDir": {}}]
        }
    });
    if let Some(uid) = uid {
        pod["metadata"]["uid"] = json!(uid);
        pod["spec"]["nodeName"] = json!(NODE);
    }
    pod
}

fn claim(namespace: &str, name: &str, volume: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": name, "namespace": namespace},
           "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": volume,
                    "resources": {"requests": {"storage": "1Gi"}}},
           "status": {"phase": "Bound"}})
}

fn volumes(api: &KubeApi, csi: &str, local: &str) {
    api.put(
        "api/v1/persistentvolumes",
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": csi},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                        "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": csi}}}),
    );
    api.put(
        "api/v1/persistentvolumes",
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": local},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                        "local": {"path": "/mnt/disks/1"}}}),
    );
}

/// Every file under `dir` (but podvault's restore markers), with its bytes; symlinks as
/// their targets.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix(base)
                .expect("inside")
                .to_string_lossy()
                .into_owned();
            if rel == ".podvault" {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).expect("link");
                out.insert(rel, target.to_string_lossy().as_bytes().to_vec());
            } else if meta.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(base, &path, out);
            } else {
                out.insert(rel, std::fs::read(&path).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

async fn setup(s3: Arc<S3Server>, proxy: Arc<FaultProxy>) -> World {
    let tmp = tempfile::tempdir().expect("tmp");
    let api = KubeApi::new();
    let address = api.serve().await;
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(&kubeconfig, KubeApi::kubeconfig(address)).expect("kubeconfig");
    let mut env = s3.env_via(&proxy.endpoint);
    env.extend([
        ("KUBECONFIG".to_string(), kubeconfig.display().to_string()),
        ("PODVAULT_NAMESPACE".to_string(), NS.to_string()),
        (
            "PODVAULT_STORAGE".to_string(),
            format!("s3:{BUCKET}/cluster"),
        ),
        ("AWS_MAX_ATTEMPTS".to_string(), "20".to_string()),
        ("PODVAULT_S3_TIMEOUT".to_string(), "10".to_string()),
    ]);
    let webhook = free_port();
    let mut world = World {
        api,
        tmp,
        env,
        webhook,
        _s3: s3,
        proxy,
        processes: Processes(Vec::new()),
    };
    // The cluster as the chart leaves it, and a StatefulSet's pod with three volumes on
    // node-1.
    let api = &world.api;
    api.put(
        "api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NS, "labels": {"kubernetes.io/metadata.name": NS}}}),
    );
    api.put(
        "api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop"}}}),
    );
    api.put(
        "api/v1/nodes",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}),
    );
    api.put(
        "apis/storage.k8s.io/v1/csidrivers",
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
               "metadata": {"name": "ebs.csi.aws.com"}, "spec": {}}),
    );
    api.put(
        "apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
        json!({"apiVersion": "admissionregistration.k8s.io/v1",
               "kind": "MutatingWebhookConfiguration", "metadata": {"name": "podvault"},
               "webhooks": [{"name": "pods.podvault.io", "admissionReviewVersions": ["v1"],
                             "sideEffects": "None",
                             "clientConfig": {"service": {"name": "podvault-webhook",
                                                          "namespace": NS,
                                                          "path": "/mutate-pods"}}}]}),
    );
    volumes(api, "pvc-1111", "local-1111");
    api.put(
        "api/v1/namespaces/shop/persistentvolumeclaims",
        claim("shop", "pgdata", "pvc-1111"),
    );
    api.put(
        "api/v1/namespaces/shop/persistentvolumeclaims",
        claim("shop", "cache", "local-1111"),
    );
    let mut running = pod("shop", Some("pod-old"));
    running["status"] = json!({"phase": "Running"});
    api.put("api/v1/namespaces/shop/pods", running);

    let pods = world.pods_root();
    for dir in volume_dirs(&pods, "pod-old", "pvc-1111", "local-1111").values() {
        std::fs::create_dir_all(dir).expect("the running pod's volumes");
    }
    let pods = pods.display().to_string();
    let webhook = world.webhook.to_string();
    let certs = world.tmp.path().join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    let (cert, key) = (
        certs.join("tls.crt").display().to_string(),
        certs.join("tls.key").display().to_string(),
    );
    for (name, args) in [
        (
            "controller",
            vec![
                "controller",
                "--metrics-address",
                "127.0.0.1:0",
                "--pod-name",
                "controller-0",
            ],
        ),
        (
            "node-agent",
            vec![
                "node-agent",
                "--node",
                NODE,
                "--kubelet-pods-root",
                &pods,
                "--metrics-address",
                "127.0.0.1:0",
                "--report-every",
                "1",
            ],
        ),
        (
            "webhook",
            vec![
                "webhook",
                "--certificates",
                "builtin",
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--address",
                &webhook,
                "--metrics-address",
                "127.0.0.1:0",
            ],
        ),
    ] {
        world.start(name, &args);
    }
    world
}

/// Waits until the webhook set its caBundle (it made its certificate) and then answers
/// `/readyz` over TLS: it listens only after both, and on a slow machine well after.
async fn webhook_ready(world: &World) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    world
        .until("the webhook's caBundle", Duration::from_secs(60), |api| {
            api.get("apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/podvault")
                .is_some_and(|m| m["webhooks"][0]["clientConfig"]["caBundle"].is_string())
        })
        .await;
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(60) {
        if tokio::net::TcpStream::connect(world.webhook).await.is_ok() {
            let mut tls = webhook_tls(world).await;
            tls.write_all(
                b"GET /readyz HTTP/1.1\r\nhost: podvault-webhook.podvault.svc\r\nconnection: close\r\n\r\n",
            )
            .await
            .expect("probe");
            let mut answer = Vec::new();
            let _ = tls.read_to_end(&mut answer).await;
            last = String::from_utf8_lossy(&answer).into_owned();
            if last.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the webhook never became ready: {last}\n{}", world.logs());
}

type WebhookTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to the webhook, trusting only the CA the webhook put into its
/// configuration.
async fn webhook_tls(world: &World) -> WebhookTls {
    let mwc = world
        .api
        .get("apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/podvault")
        .expect("the webhook configuration");
    let bundle: k8s_openapi::ByteString =
        serde_json::from_value(mwc["webhooks"][0]["clientConfig"]["caBundle"].clone())
            .expect("the webhook set its caBundle");
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&bundle.0) {
        roots.add(ca.expect("PEM")).expect("CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(world.webhook)
        .await
        .expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            ServerName::try_from("podvault-webhook.podvault.svc").expect("name"),
            tcp,
        )
        .await
        .expect("TLS with the built-in certificate")
}

/// Sends a pod's CREATE to the webhook over TLS; returns the AdmissionReview answer.
async fn admit(world: &World, namespace: &str, pod: &Value) -> podvault_webhook::handler::Answer {
    let tls = webhook_tls(world).await;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP");
    tokio::spawn(connection);
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": format!("review-{namespace}"),
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": namespace, "operation": "CREATE",
                    "userInfo": {"username": "system:serviceaccount:kube-system:statefulset-controller"},
                    "object": pod, "dryRun": false}
    });
    let request = hyper::Request::post("/mutate-pods")
        .header("host", "podvault-webhook.podvault.svc")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(review.to_string())))
        .expect("request");
    let response = sender.send_request(request).await.expect("answer");
    assert_eq!(response.status(), 200);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    serde_json::from_slice(&body).expect("an AdmissionReview")
}

fn phase(api: &KubeApi, path: &str) -> String {
    api.get(path)
        .and_then(|o| o["status"]["phase"].as_str().map(String::from))
        .unwrap_or_default()
}

/// Runs `scenario` on a runtime of its own, with an S3 server and a proxy in front of it
/// that can stall it (both live outside the runtime: the proxy has its own).
fn run<F: std::future::Future<Output = ()>>(
    scenario: impl FnOnce(Arc<S3Server>, Arc<FaultProxy>) -> F,
) {
    let s3 = Arc::new(S3Server::start());
    let proxy = Arc::new(FaultProxy::start_with(
        &s3.endpoint,
        0.0,
        7,
        Duration::from_millis(1500),
        &[FaultKind::Stall],
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(scenario(s3.clone(), proxy.clone()));
    drop(runtime);
}

#[test]
fn backup_incremental_restore_through_the_webhook_and_cancel() {
    run(scenario);
}

async fn scenario(s3: Arc<S3Server>, proxy: Arc<FaultProxy>) {
    let world = setup(s3, proxy).await;
    let old = volume_dirs(&world.pods_root(), "pod-old", "pvc-1111", "local-1111");
    // A database file, small files, a nested tree and a symlink; some cache; scratch.
    write(
        &old["data"].join("base/16384/16385"),
        &pseudo_random(1, 24 << 20),
    );
    write(&old["data"].join("PG_VERSION"), b"16\n");
    write(
        &old["data"].join("pg_wal/000000010000000000000001"),
        &pseudo_random(2, 1 << 20),
    );
    std::os::unix::fs::symlink("base/16384", old["data"].join("current")).expect("symlink");
    for i in 0..200 {
        write(
            &old["cache"].join(format!("objects/{:02x}/{i}", i % 16)),
            &pseudo_random(100 + i, 3000),
        );
    }
    write(&old["scratch"].join("sort.tmp"), &pseudo_random(3, 300_000));
    write(&old["scratch"].join("lock"), b"");

    webhook_ready(&world).await;

    // First backup: everything is new.
    let b1 = world.backup("b1");
    assert_eq!(b1["status"]["phase"], "Completed", "{b1}");
    assert_eq!(b1["status"]["volumes"]["completed"], 3, "{b1}");
    let total = b1["status"]["totalBytes"].as_u64().expect("total");
    assert!(total > 25 << 20, "{b1}");
    assert!(
        b1["status"]["bytesNew"].as_u64().expect("new") > 24 << 20,
        "{b1}"
    );

    // Scattered page writes, a new cache object, a removed scratch file: the second backup
    // stores little more than what changed.
    let db = old["data"].join("base/16384/16385");
    let mut bytes = std::fs::read(&db).expect("db");
    for page in [3usize, 700, 2900] {
        bytes[page * 8192..page * 8192 + 8192].copy_from_slice(&pseudo_random(page as u64, 8192));
    }
    write(&db, &bytes);
    write(&old["cache"].join("objects/ff/new"), b"fresh");
    std::fs::remove_file(old["scratch"].join("sort.tmp")).expect("rm");
    let expected: BTreeMap<&str, BTreeMap<String, Vec<u8>>> =
        old.iter().map(|(k, dir)| (*k, tree(dir))).collect();
    let b2 = world.backup("b2");
    assert_eq!(b2["status"]["phase"], "Completed", "{b2}");
    let new = b2["status"]["bytesNew"].as_u64().expect("new");
    // Three changed pages cost three chunks, not the 24 MiB file. The chunker is keyed by
    // the repository's random key, so those chunks are 1 MiB on average but up to 4 MiB
    // each (7 MB was seen): at most 12 MiB, under half of what the volumes hold.
    assert!(
        new < total / 2,
        "incremental: {new} new bytes of {total}\n{b2}\n{}",
        world.logs()
    );
    let described = world.cli(&["backup", "describe", "b2"]);
    assert!(described.contains("Completed"), "{described}");

    // The namespace is restored under another name. The restore controller labels it and
    // re-creates the claims; the StatefulSet (here, the test) creates the pod, and the
    // webhook gives it the restore helper.
    world.cli(&[
        "restore",
        "create",
        "r1",
        "--from-backup",
        "b2",
        "--namespace-mappings",
        "shop:shop2",
    ]);
    world
        .until("the PodVolumeRestores", Duration::from_secs(60), |api| {
            api.list(PVR).len() == 3
        })
        .await;
    let ns = world
        .api
        .get("api/v1/namespaces/shop2")
        .expect("shop2 created");
    assert!(
        ns["metadata"]["labels"]["podvault.io/restore-in-progress"].is_string(),
        "{ns}"
    );
    let answer = admit(&world, "shop2", &pod("shop2", None)).await;
    assert!(answer.response.allowed);
    let patch = answer
        .response
        .patch_operations()
        .expect("the helper is injected");
    let mut new_pod = pod("shop2", None);
    json_patch::patch(&mut new_pod, &patch).expect("the patch applies");
    let helper = new_pod["spec"]["initContainers"][0].clone();
    assert_eq!(helper["name"], "restore-wait");
    assert_eq!(
        helper["securityContext"]["runAsUser"], 999,
        "the pod's own user"
    );
    let restore_uid = helper["command"][3].as_str().expect("uid").to_string();
    assert_eq!(helper["command"][5], "cache,data,scratch");
    // Pods of other namespaces and of kube-system are left alone.
    for other in ["shop", "kube-system"] {
        let answer = admit(&world, other, &pod(other, None)).await;
        assert!(
            answer.response.allowed && answer.response.patch.is_none(),
            "{other}"
        );
    }

    // The scheduler puts it on node-1, the provisioner binds new volumes, the kubelet
    // mounts them empty and starts the helper.
    volumes(&world.api, "pvc-2222", "local-2222");
    for (name, pv) in [("pgdata", "pvc-2222"), ("cache", "local-2222")] {
        let mut c = world
            .api
            .get(&format!(
                "api/v1/namespaces/shop2/persistentvolumeclaims/{name}"
            ))
            .expect("the claim was re-created");
        assert!(c["spec"]["volumeName"].is_null(), "re-created unbound: {c}");
        c["spec"]["volumeName"] = json!(pv);
        world
            .api
            .put("api/v1/namespaces/shop2/persistentvolumeclaims", c);
    }
    let fresh = volume_dirs(&world.pods_root(), "pod-new", "pvc-2222", "local-2222");
    let restores = world.tmp.path().join("restores");
    for (name, dir) in &fresh {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::create_dir_all(&restores).expect("mkdir");
        std::os::unix::fs::symlink(dir, restores.join(name)).expect("mount");
    }
    // The markers' volume the webhook added, as the kubelet makes an emptyDir.
    let markers = world
        .pods_root()
        .join("pod-new/volumes/kubernetes.io~empty-dir/podvault-restore-markers");
    std::fs::create_dir_all(&markers).expect("mkdir");
    std::os::unix::fs::symlink(&markers, restores.join(".markers")).expect("mount");
    new_pod["metadata"]["uid"] = json!("pod-new");
    new_pod["spec"]["nodeName"] = json!(NODE);
    new_pod["status"] = json!({"phase": "Pending", "initContainerStatuses": [
        {"name": "restore-wait", "ready": false, "restartCount": 0, "image": "podvault",
         "imageID": "", "state": {"running": {"startedAt": "2026-11-25T00:00:00Z"}}}]});
    world.api.put("api/v1/namespaces/shop2/pods", new_pod);

    // The helper, run as the patch says (its paths under the test's mount root), returns
    // once every volume is back; it read the markers from its own volume.
    let root = restores.display().to_string();
    let mut args: Vec<String> = helper["command"]
        .as_array()
        .expect("command")
        .iter()
        .skip(1)
        .map(|a| {
            let a = a.as_str().expect("string");
            match a.strip_prefix("/restores") {
                Some(rest) => format!("{root}{rest}"),
                None => a.to_string(),
            }
        })
        .collect();
    assert!(args.contains(&format!("{root}/.markers")), "{args:?}");
    assert!(args.contains(&"--timeout".to_string()), "{args:?}");
    args.extend(["--poll-ms".to_string(), "200".to_string()]);
    world.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for name in ["cache", "data", "scratch"] {
        assert!(
            markers.join(name).join(&restore_uid).is_file(),
            "the node agent wrote {name}'s marker into the pod's marker volume"
        );
    }
    for (name, dir) in &fresh {
        assert_eq!(
            &tree(dir),
            &expected[name],
            "volume {name} restored byte for byte"
        );
    }
    world
        .until("the Restore to complete", Duration::from_secs(60), |api| {
            phase(
                api,
                "apis/podvault.io/v1alpha1/namespaces/podvault/restores/r1",
            ) == "Completed"
        })
        .await;
    world
        .until(
            "the namespace label to go",
            Duration::from_secs(30),
            |api| {
                api.get("api/v1/namespaces/shop2").is_some_and(|n| {
                    n["metadata"]["labels"]["podvault.io/restore-in-progress"].is_null()
                })
            },
        )
        .await;

    // A third backup is canceled while its volumes run: S3 stalls from the moment they
    // exist, so nothing can finish before the cancel lands.
    write(
        &old["data"].join("base/16384/16386"),
        &pseudo_random(9, 64 << 20),
    );
    let mut create = world.podvault();
    create.args(["backup", "create", "b3", "--include-namespaces", "shop"]);
    assert!(create.status().expect("run").success());
    world
        .until("b3's volumes", Duration::from_secs(60), |api| {
            api.list(PVB)
                .iter()
                .filter(|p| p["metadata"]["labels"]["podvault.io/backup-name"] == "b3")
                .count()
                == 3
        })
        .await;
    world.proxy.set_rate(1.0);
    world
        .until("a running volume", Duration::from_secs(60), |api| {
            api.list(PVB).iter().any(|p| {
                p["metadata"]["labels"]["podvault.io/backup-name"] == "b3"
                    && p["status"]["phase"] == "InProgress"
            })
        })
        .await;
    world.cli(&["backup", "cancel", "b3"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    world.proxy.set_rate(0.0);
    world
        .until("b3 to be canceled", Duration::from_secs(120), |api| {
            phase(
                api,
                "apis/podvault.io/v1alpha1/namespaces/podvault/backups/b3",
            ) == "Canceled"
        })
        .await;
    let b3_volumes: Vec<Value> = world
        .api
        .list(PVB)
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["podvault.io/backup-name"] == "b3")
        .collect();
    assert!(
        b3_volumes
            .iter()
            .any(|p| p["status"]["phase"] == "Canceled" && p["status"]["snapshotID"].is_null()),
        "{b3_volumes:?}"
    );
    // Nothing any process wrote was dropped for not being in its kind's schema.
    assert_eq!(world.api.warnings(), Vec::<String>::new());
}

/// Whether the server process `name` still runs; its exit status if not.
fn exited(world: &mut World, name: &str) -> Option<std::process::ExitStatus> {
    world
        .processes
        .0
        .iter_mut()
        .find(|(n, _)| n == name)
        .and_then(|(_, child)| child.try_wait().ok().flatten())
}

#[test]
fn servers_outlive_clients_that_hang_up_and_an_s3_outage_mid_backup() {
    run(hang_ups);
}

async fn hang_ups(s3: Arc<S3Server>, proxy: Arc<FaultProxy>) {
    use tokio::io::AsyncWriteExt;
    let mut world = setup(s3.clone(), proxy).await;
    webhook_ready(&world).await;
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "gone", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "shop", "operation": "CREATE", "userInfo": {},
                    "object": pod("shop", None), "dryRun": false}
    })
    .to_string();
    let post = format!(
        "POST /mutate-pods HTTP/1.1\r\nhost: podvault-webhook.podvault.svc\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{review}",
        review.len()
    );
    let probe = "GET /readyz HTTP/1.1\r\nhost: podvault-webhook.podvault.svc\r\n\r\n";
    // 100 clients of each kind send requests and close at once (an API server that gave
    // up, a kubelet probe that timed out), leaving the answers nowhere to go: the first
    // answer meets a closed socket, which resets, and the next ones meet the reset.
    for round in 0..100u64 {
        for request in [post.as_str(), probe] {
            let mut tls = webhook_tls(&world).await;
            tls.write_all(request.repeat(40).as_bytes())
                .await
                .expect("request");
            tls.flush().await.expect("flush");
            // Gone at once, or while the answers are being written: closed as a TLS
            // client closes (close_notify, then FIN), or reset.
            tokio::time::sleep(Duration::from_micros(round % 4 * 300)).await;
            if round % 2 == 1 {
                tls.get_ref().0.set_zero_linger().expect("linger");
            } else {
                let _ = tls.shutdown().await;
            }
            drop(tls);
        }
        let tls = webhook_tls(&world).await;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("HTTP/2");
        let connection = tokio::spawn(connection);
        let request = hyper::Request::post("https://podvault-webhook.podvault.svc/mutate-pods")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(review.clone())))
            .expect("request");
        let stream = tokio::spawn(async move { sender.send_request(request).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(1)).await;
        connection.abort();
        stream.abort();
        if let Some(status) = exited(&mut world, "webhook") {
            panic!(
                "the webhook died ({status}) after {round} rounds\n{}",
                world.logs()
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(exited(&mut world, "webhook"), None, "{}", world.logs());
    let answer = admit(&world, "shop", &pod("shop", None)).await;
    assert_eq!(answer.response.uid, "review-shop");

    // The node agent backs up a volume while the S3 server is killed and restarted: the
    // uploads are retried and the backup completes.
    let old = volume_dirs(&world.pods_root(), "pod-old", "pvc-1111", "local-1111");
    for i in 0..4 {
        write(
            &old["data"].join(format!("base/big{i}")),
            &pseudo_random(40 + i, 32 << 20),
        );
    }
    let before = s3.bytes_under("");
    let backup = std::thread::scope(|scope| {
        let running = scope.spawn(|| world.backup("outage"));
        let start = Instant::now();
        while s3.bytes_under("") < before + (24 << 20) {
            assert!(
                start.elapsed() < Duration::from_secs(120) && !running.is_finished(),
                "the backup uploaded nothing to kill\n{}",
                world.logs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        s3.kill();
        std::thread::sleep(Duration::from_millis(1500));
        s3.restart();
        running.join().expect("the backup")
    });
    assert_eq!(
        backup["status"]["phase"],
        "Completed",
        "{backup}\n{}",
        world.logs()
    );
    for name in ["node-agent", "controller", "webhook"] {
        assert_eq!(exited(&mut world, name), None, "{name}\n{}", world.logs());
    }
    assert!(
        std::fs::read_to_string(world.tmp.path().join("node-agent.log"))
            .unwrap_or_default()
            .contains("attempt"),
        "the node agent retried\n{}",
        world.logs()
    );
    assert_eq!(world.api.warnings(), Vec::<String>::new());
}
