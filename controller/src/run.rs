//! The controller and the node agent as processes: what each starts, with what settings,
//! until it is told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::cluster::{Error, Settings};
use crate::node_agent::Agent;

/// How the controller runs.
#[derive(Clone)]
pub struct ControllerConfig {
    /// The install namespace, the storage root and the repositories' settings.
    pub settings: Settings,
    /// Take a Lease before working, so that only one of several replicas acts.
    pub leader_elect: bool,
    /// This process's name in Events and Leases (the pod's name).
    pub pod_name: String,
    /// Serve Prometheus metrics here.
    pub metrics_address: SocketAddr,
    /// Prune each repository this often.
    pub maintenance_interval: Duration,
}

/// How a node agent runs.
#[derive(Clone)]
pub struct NodeAgentConfig {
    /// The install namespace, the storage root and the repositories' settings.
    pub settings: Settings,
    /// This node's name.
    pub node: String,
    /// The kubelet's pods directory, as mounted into the agent.
    pub pods_root: PathBuf,
    /// Volumes backed up or restored at the same time (the node's annotation may change it).
    pub concurrency: usize,
    /// How often a running volume's progress is written to its status.
    pub report_every: Duration,
    /// This process's name in Events (the pod's name).
    pub pod_name: String,
    /// Serve Prometheus metrics here.
    pub metrics_address: SocketAddr,
}

/// The field manager and Event reporter of a component (`controller`, `node-agent`).
pub fn reporter(role: &str, pod_name: &str) -> Reporter {
    Reporter {
        controller: format!("podvault-{role}"),
        instance: Some(pod_name.to_string()),
    }
}

fn spawn_metrics(address: SocketAddr) {
    tokio::spawn(async move {
        if let Err(e) = crate::metrics::serve(address).await {
            tracing::error!(%address, error = %e, "metrics server stopped");
        }
    });
}

/// Runs the backup, restore and repository controllers until they stop (after taking the
/// Lease, when `leader_elect`).
pub async fn controller(client: Client, config: ControllerConfig) -> Result<(), Error> {
    spawn_metrics(config.metrics_address);
    let settings = config.settings;
    if config.leader_elect {
        crate::leader::acquire(
            &client,
            &settings.namespace,
            "podvault-controller",
            &config.pod_name,
        )
        .await?;
    }
    tracing::info!(namespace = %settings.namespace, storage = %settings.storage, "controller running");
    let recorder = || Recorder::new(client.clone(), reporter("controller", &config.pod_name));
    let backups = crate::backups::run(client.clone(), settings.clone(), recorder());
    let restores = crate::restores::run(client.clone(), settings.clone(), recorder());
    let repositories =
        crate::repositories::run(client.clone(), settings, config.maintenance_interval);
    tokio::join!(backups, restores, repositories);
    tracing::info!("controller stopped");
    Ok(())
}

/// Runs this node's agent until `shutdown` resolves. Volumes still running then stay
/// InProgress; the next start of the agent does them again, resuming from the data
/// already uploaded.
pub async fn node_agent(
    client: Client,
    config: NodeAgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    spawn_metrics(config.metrics_address);
    let mut agent = Agent {
        node: config.node,
        pods_root: config.pods_root,
        concurrency: config.concurrency,
        report_every: config.report_every.max(Duration::from_secs(1)),
        settings: config.settings,
    };
    crate::node_agent::configure_for_node(&client, &mut agent).await?;
    crate::node_agent::check_pods_root(&client, &agent).await?;
    tracing::info!(
        node = %agent.node, root = %agent.pods_root.display(),
        concurrency = agent.concurrency, "node agent running"
    );
    tokio::select! {
        r = crate::node_agent::run(client, agent) => r,
        () = shutdown => Ok(()),
    }
}
