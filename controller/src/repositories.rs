//! The repository controller: keeps each namespace's repository usable and small. A
//! repository not yet ready is tried again; a ready one is pruned once per maintenance
//! interval, so the data of forgotten snapshots (expired or deleted Backups) is freed.
//! Prune is safe beside running backups (see the store's FORMAT.md, "Concurrency").

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use podvault_store::{Access, PruneOptions};

use crate::cluster::{
    Error, Settings, blocking, ensure_repository, open_repository, repository_key,
};
use crate::crd::{BackupRepository, RepositoryPhase};
use crate::write::{CONTROLLER, applying};

/// How often a repository is pruned by default.
pub const DEFAULT_INTERVAL: &str = "24h";

/// One reconcile of a BackupRepository at `now`, pruning it if `every` has passed since
/// its last maintenance.
#[tracing::instrument(skip_all, fields(
    repository = %repository.name_any(), namespace = %repository.spec.volume_namespace,
))]
pub async fn reconcile(
    repository: Arc<BackupRepository>,
    client: &Client,
    settings: &Settings,
    now: Timestamp,
    every: Duration,
) -> Result<Action, Error> {
    let namespace = repository.spec.volume_namespace.clone();
    let status = repository.status.clone().unwrap_or_default();
    if status.phase != RepositoryPhase::Ready {
        // Not initialised or not reachable last time: try again (the message says why).
        return match ensure_repository(client, settings, &namespace).await {
            Ok(_) => Ok(Action::requeue(every)),
            Err(e) => {
                tracing::warn!(repository = %namespace, "not ready: {e}");
                Ok(Action::requeue(Duration::from_secs(300)))
            }
        };
    }
    if let Some(last) = &status.last_maintenance {
        let due = last.0 + every;
        if due > now {
            let left = Duration::try_from(due.duration_since(now)).unwrap_or(every);
            return Ok(Action::requeue(left));
        }
    }
    let key = repository_key(client, &settings.namespace, &namespace).await?;
    let outcome = match open_repository(
        settings,
        &repository.spec.location,
        &namespace,
        key,
        "prune",
        Access::Write,
    )
    .await
    {
        Ok((repo, session)) => {
            blocking(&namespace, move || {
                repo.prune(&session, PruneOptions::default())
            })
            .await
        }
        Err(e) => Err(e),
    };
    let message = match &outcome {
        Ok(r) => {
            let mut m = format!(
                "pruned: {} snapshots kept, {} packs deleted ({} bytes freed), {} repacked",
                r.snapshots, r.packs_deleted, r.bytes_freed, r.packs_repacked
            );
            if r.packs_running > 0 {
                m.push_str(&format!(
                    "; {} packs of running backups left alone",
                    r.packs_running
                ));
            }
            if !r.waiting_for.is_empty() {
                m.push_str(&format!(
                    "; {} packs wait for running sessions to end",
                    r.packs_marked
                ));
            }
            m
        }
        Err(e) => format!("maintenance failed: {e}"),
    };
    tracing::info!(repository = %namespace, "{message}");
    let api: Api<BackupRepository> = Api::namespaced(client.clone(), &settings.namespace);
    let mut status = repository.status.clone().unwrap_or_default();
    status.last_maintenance = Some(Time(now));
    status.message = Some(message);
    api.patch_status(
        &repository.name_any(),
        &applying(CONTROLLER),
        &crate::write::status::<BackupRepository>(&status, None),
    )
    .await?;
    Ok(Action::requeue(every))
}

/// Runs the repository controller until a termination signal.
pub async fn run(client: Client, settings: Settings, every: Duration) {
    use futures_util::StreamExt;
    use kube::runtime::{Controller, watcher};
    let repos: Api<BackupRepository> = Api::namespaced(client.clone(), &settings.namespace);
    let ctx = Arc::new(crate::cluster::Context {
        client,
        settings,
        events: None,
    });
    Controller::new(repos, watcher::Config::default())
        .shutdown_on_signal()
        .run(
            move |repository, ctx| async move {
                reconcile(
                    repository,
                    &ctx.client,
                    &ctx.settings,
                    Timestamp::now(),
                    every,
                )
                .await
            },
            |repository, error, _| {
                tracing::warn!(repository = %repository.name_any(), "{error}");
                Action::requeue(Duration::from_secs(60))
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}
