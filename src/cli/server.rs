//! The roles that run in the cluster (`controller`, `node-agent`, `webhook`, and the
//! restore helper `restore-wait`): their flags, turned into each crate's configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use podvault_controller::cluster::Settings;

use crate::Global;

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// The storage root: `s3:BUCKET/PREFIX` or a directory; each namespace's repository
    /// is at `<storage>/podvault/<namespace>`.
    #[arg(long, env = "PODVAULT_STORAGE", value_name = "LOCATION")]
    storage: String,
    /// Serve Prometheus metrics here.
    #[arg(long, env = "PODVAULT_METRICS_ADDRESS", default_value = "0.0.0.0:8085")]
    metrics_address: SocketAddr,
    /// This process's name in Events and Leases (the pod's name).
    #[arg(long, env = "POD_NAME", default_value = "podvault")]
    pod_name: String,
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Take a Lease before working, so that only one of several replicas acts.
    #[arg(long, env = "PODVAULT_LEADER_ELECT")]
    leader_elect: bool,
    /// Prune each repository this often (Go duration), freeing the data of forgotten
    /// snapshots.
    #[arg(long, env = "PODVAULT_MAINTENANCE_INTERVAL", default_value = podvault_controller::repositories::DEFAULT_INTERVAL, value_parser = podvault_api::duration::parse)]
    maintenance_interval: Duration,
}

#[derive(Args, Debug)]
pub struct NodeAgentArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// This node's name (from the downward API: spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// The kubelet's pods directory, as mounted into the agent.
    #[arg(long, env = "PODVAULT_KUBELET_PODS_ROOT", default_value = podvault_controller::hostpath::DEFAULT_PODS_ROOT)]
    kubelet_pods_root: PathBuf,
    /// Volumes backed up or restored at the same time on this node.
    #[arg(long, env = "PODVAULT_CONCURRENCY", default_value_t = 2)]
    concurrency: usize,
    /// Seconds between progress updates in a running volume's status.
    #[arg(long, default_value_t = 5)]
    report_every: u64,
}

#[derive(Args, Debug)]
pub struct WebhookArgs {
    /// The serving certificate (PEM), reloaded when it changes.
    #[arg(long, env = "PODVAULT_TLS_CERT", default_value = "/certs/tls.crt")]
    tls_cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long, env = "PODVAULT_TLS_KEY", default_value = "/certs/tls.key")]
    tls_key: PathBuf,
    /// Serve admission requests (HTTPS) here.
    #[arg(long, env = "PODVAULT_WEBHOOK_ADDRESS", default_value = "0.0.0.0:9443")]
    address: SocketAddr,
    /// Serve Prometheus metrics (plain HTTP) here.
    #[arg(long, env = "PODVAULT_METRICS_ADDRESS", default_value = "0.0.0.0:8086")]
    metrics_address: SocketAddr,
    /// This process's name in Events (the pod's name).
    #[arg(long, env = "POD_NAME", default_value = "podvault-webhook")]
    pod_name: String,
    /// Where the serving certificate comes from: `files` (mounted, from cert-manager or
    /// your own), or `builtin` (podvault makes a CA and certificate, keeps them in a
    /// Secret, writes them to --tls-cert/--tls-key and keeps the webhook configuration's
    /// caBundle current).
    #[arg(long, env = "PODVAULT_CERTIFICATES", value_enum, default_value_t)]
    certificates: Certificates,
    /// builtin: the Secret holding the CA and certificate (in the install namespace).
    #[arg(
        long,
        env = "PODVAULT_CERTIFICATE_SECRET",
        default_value = "podvault-webhook-tls"
    )]
    certificate_secret: String,
    /// builtin: the webhook's Service, whose names the certificate carries.
    #[arg(
        long,
        env = "PODVAULT_WEBHOOK_SERVICE",
        default_value = "podvault-webhook"
    )]
    service: String,
    /// builtin: the MutatingWebhookConfiguration whose caBundle is kept current.
    #[arg(
        long,
        env = "PODVAULT_WEBHOOK_CONFIGURATION",
        default_value = "podvault"
    )]
    webhook_configuration: String,
}

/// Where the webhook's serving certificate comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Certificates {
    /// Read from the mounted files (cert-manager's Secret, or your own).
    #[default]
    Files,
    /// Made and renewed by podvault itself.
    Builtin,
}

#[derive(Args, Debug)]
pub struct RestoreWaitArgs {
    /// The Restore's UID (the marker's name).
    #[arg(long, value_name = "UID")]
    restore_uid: String,
    /// The volumes to wait for, mounted at ROOT/<volume> (repeatable, or comma-separated).
    #[arg(
        long = "volume",
        value_name = "NAME",
        value_delimiter = ',',
        required = true
    )]
    volumes: Vec<String>,
    /// Where the volumes are mounted.
    #[arg(long, default_value = "/restores", value_name = "DIR")]
    root: PathBuf,
    /// Read the markers from DIR/<volume>/ (the pod's marker volume, which the webhook
    /// adds) instead of from each volume's `.podvault/`, which a helper running as
    /// another user than the restored volume's owner may not be allowed to see.
    #[arg(long, value_name = "DIR")]
    markers: Option<PathBuf>,
    /// Give up after this many seconds (0: wait for ever; the webhook always gives the
    /// Restore's time limit).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    timeout: u64,
    /// Look every this many milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    poll_ms: u64,
}

fn settings(global: &Global, server: &ServerArgs) -> Settings {
    Settings {
        namespace: global.cluster.namespace.clone(),
        storage: server.storage.clone(),
        s3: super::access::s3_options(global),
        init: podvault_controller::cluster::generated_key_init(),
    }
}

/// `podvault controller`: the backup, restore and repository controllers.
pub fn controller(global: &Global, args: ControllerArgs) -> Result<ExitCode> {
    let config = podvault_controller::run::ControllerConfig {
        settings: settings(global, &args.server),
        leader_elect: args.leader_elect,
        pod_name: args.server.pod_name.clone(),
        metrics_address: args.server.metrics_address,
        maintenance_interval: args.maintenance_interval,
    };
    super::runtime()?.block_on(async move {
        let client = super::cluster::client(&global.cluster).await?;
        podvault_controller::run::controller(client, config).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `podvault node-agent`: this node's volume backups and restores.
pub fn node_agent(global: &Global, args: NodeAgentArgs) -> Result<ExitCode> {
    let config = podvault_controller::run::NodeAgentConfig {
        settings: settings(global, &args.server),
        node: args.node,
        pods_root: args.kubelet_pods_root,
        concurrency: args.concurrency,
        report_every: Duration::from_secs(args.report_every),
        pod_name: args.server.pod_name,
        metrics_address: args.server.metrics_address,
    };
    super::runtime()?.block_on(async move {
        let client = super::cluster::client(&global.cluster).await?;
        let stop = super::shutdown_signal("node agent")?;
        podvault_controller::run::node_agent(client, config, stop).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `podvault webhook`: the admission webhook that injects the restore helper.
pub fn webhook(global: &Global, args: WebhookArgs) -> Result<ExitCode> {
    let certificates = match args.certificates {
        Certificates::Files => podvault_webhook::Certificates::Files,
        Certificates::Builtin => podvault_webhook::Certificates::Builtin {
            secret: args.certificate_secret,
            service: args.service,
            webhook_configuration: args.webhook_configuration,
        },
    };
    let webhook = podvault_webhook::Webhook::new(podvault_webhook::Config {
        namespace: global.cluster.namespace.clone(),
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        certificates,
        address: args.address,
        metrics_address: args.metrics_address,
        pod_name: args.pod_name,
        version: env!("CARGO_PKG_VERSION").to_string(),
    })?;
    super::runtime()?.block_on(async move {
        let client = super::cluster::client(&global.cluster).await?;
        let stop = super::shutdown_signal("webhook")?;
        webhook.run(client, stop).await?;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn restore_wait(args: RestoreWaitArgs) -> Result<ExitCode> {
    use podvault_controller::agent::{MARKER_DIR, WaitOutcome, wait_for_marker_dirs};
    let volumes: Vec<std::path::PathBuf> = args.volumes.iter().map(|v| args.root.join(v)).collect();
    for (name, dir) in args.volumes.iter().zip(&volumes) {
        if !dir.is_dir() {
            bail!(
                "volume {name} is not mounted at {}: the helper needs each volume it waits for",
                dir.display()
            );
        }
    }
    let marker_dirs: Vec<std::path::PathBuf> = match &args.markers {
        Some(markers) => {
            if !markers.is_dir() {
                bail!("the marker volume is not mounted at {}", markers.display());
            }
            args.volumes.iter().map(|v| markers.join(v)).collect()
        }
        None => volumes.iter().map(|v| v.join(MARKER_DIR)).collect(),
    };
    let timeout = if args.timeout == 0 {
        std::time::Duration::MAX
    } else {
        std::time::Duration::from_secs(args.timeout)
    };
    errln!(
        "podvault restore-wait: waiting for restore {} of {}",
        args.restore_uid,
        args.volumes.join(", ")
    );
    let outcome = wait_for_marker_dirs(
        &marker_dirs,
        &args.restore_uid,
        std::time::Duration::from_millis(args.poll_ms.max(10)),
        timeout,
        || None,
    );
    match outcome {
        WaitOutcome::Restored => {
            errln!("podvault restore-wait: every volume is restored");
            Ok(ExitCode::SUCCESS)
        }
        WaitOutcome::Failed(reason) => bail!("a volume's restore failed: {reason}"),
        WaitOutcome::TimedOut(missing) => bail!(
            "still not restored after {} s: {}",
            args.timeout,
            missing
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
