//! The node agent: does the PodVolumeBackups and PodVolumeRestores of its own node, at most
//! N at a time, with the engine on the blocking pool and its progress in the objects'
//! status every few seconds.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::CSIDriver;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Client, ResourceExt};
use podvault_store::Access;
use serde_json::json;

use crate::agent::{
    MARKER_DIR, POD_MARKERS, VolumeBackup, back_up_volume, restore_volume_with_markers,
};
use crate::cluster::{Error, NODE_LABEL, Settings, open_repository, repository_key};
use crate::crd::{
    BackupRepository, Phase, PodVolumeBackup, PodVolumeRestore, PodVolumeStatus, Progress,
};
use crate::hostpath::{resolve, volume_dir_name};
pub use podvault_api::names::{CONCURRENCY_ANNOTATION, RESTORE_HELPER};
pub use podvault_api::pods::restore_target;

/// This node's concurrency: its annotation if it has a valid one (1 to 64), else `default`.
/// An invalid annotation is reported and the default used.
pub fn concurrency_for(node: &k8s_openapi::api::core::v1::Node, default: usize) -> usize {
    let Some(text) = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONCURRENCY_ANNOTATION))
    else {
        return default;
    };
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=64).contains(&n) => n,
        _ => {
            tracing::warn!(
                "node {}: annotation {CONCURRENCY_ANNOTATION}={text:?} is not a number from 1 \
                 to 64; using {default}",
                node.name_any()
            );
            default
        }
    }
}

/// Applies the node's own concurrency annotation, if any, to `agent`.
pub async fn configure_for_node(client: &Client, agent: &mut Agent) -> Result<(), Error> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let node = nodes.get(&agent.node).await?;
    agent.concurrency = concurrency_for(&node, agent.concurrency);
    Ok(())
}

/// A node agent's settings.
#[derive(Clone)]
pub struct Agent {
    /// This node's name.
    pub node: String,
    /// The kubelet's pods directory as mounted into the agent.
    pub pods_root: PathBuf,
    /// How many volumes at a time.
    pub concurrency: usize,
    /// How often progress goes into a running volume's status.
    pub report_every: Duration,
    /// Cluster and storage settings.
    pub settings: Settings,
}

/// Where the work of one volume failed before the engine ran.
fn failed(message: String) -> PodVolumeStatus {
    PodVolumeStatus {
        phase: Phase::Failed,
        message: Some(message),
        ..PodVolumeStatus::default()
    }
}

async fn patch_status<K>(api: &Api<K>, name: &str, status: &PodVolumeStatus) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        name,
        &crate::write::applying(crate::write::NODE_AGENT),
        &crate::write::status::<K>(status, None),
    )
    .await?;
    Ok(())
}

/// The volume's directory on this node, from the pod's UID and, for claims, the bound PV.
async fn volume_dir(
    client: &Client,
    agent: &Agent,
    namespace: &str,
    pod_uid: &str,
    volume: &str,
    claim: Option<&str>,
) -> Result<PathBuf, String> {
    let pv = match claim {
        None => None,
        Some(claim) => {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
            let pvc = claims
                .get(claim)
                .await
                .map_err(|e| format!("claim {namespace}/{claim}: {e}"))?;
            let bound = pvc
                .spec
                .and_then(|s| s.volume_name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("claim {namespace}/{claim} is not bound to a volume"))?;
            let pvs: Api<PersistentVolume> = Api::all(client.clone());
            Some(
                pvs.get(&bound)
                    .await
                    .map_err(|e| format!("persistent volume {bound}: {e}"))?,
            )
        }
    };
    let drivers: BTreeSet<String> = match &pv {
        Some(_) => Api::<CSIDriver>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing CSI drivers: {e}"))?
            .items
            .into_iter()
            .map(|d| d.name_any())
            .collect(),
        None => BTreeSet::new(),
    };
    let (dir, csi) = volume_dir_name(volume, pv.as_ref(), &drivers);
    resolve(&agent.pods_root, pod_uid, &dir, csi).map_err(|e| e.to_string())
}

/// Opens the repository a volume's object names: its location from the BackupRepository,
/// its key from the Secret.
async fn open_volume_repository(
    client: &Client,
    agent: &Agent,
    repository: &str,
    command: &'static str,
    access: Access,
) -> Result<(Arc<podvault_store::Repository>, podvault_store::Session), String> {
    let repos: Api<BackupRepository> = Api::namespaced(client.clone(), &agent.settings.namespace);
    let location = repos
        .get(repository)
        .await
        .map(|r| r.spec.location)
        .map_err(|e| format!("BackupRepository {repository}: {e}"))?;
    let key = repository_key(client, &agent.settings.namespace, repository)
        .await
        .map_err(|e| e.to_string())?;
    open_repository(&agent.settings, &location, repository, key, command, access)
        .await
        .map_err(|e| e.to_string())
}

/// Does one PodVolumeBackup from start to end; `cancel` is set when its spec asks.
pub async fn process_backup(
    client: &Client,
    agent: &Agent,
    pvb: &PodVolumeBackup,
    cancel: Arc<AtomicBool>,
) -> Result<PodVolumeStatus, Error> {
    let name = pvb.name_any();
    let api: Api<PodVolumeBackup> = Api::namespaced(client.clone(), &agent.settings.namespace);
    let started = Time(Timestamp::now());
    if pvb.spec.cancel || cancel.load(Ordering::Acquire) {
        let mut st = PodVolumeStatus {
            phase: Phase::Canceled,
            message: Some("canceled before it started".into()),
            ..PodVolumeStatus::default()
        };
        st.completion_timestamp = Some(started);
        patch_status(&api, &name, &st).await?;
        return Ok(st);
    }
    let mut running = PodVolumeStatus {
        phase: Phase::InProgress,
        start_timestamp: Some(started.clone()),
        ..PodVolumeStatus::default()
    };
    patch_status(&api, &name, &running).await?;
    crate::metrics::volumes_running(&agent.node, 1);
    let mut status = run_backup(client, agent, pvb, cancel, &api, &mut running).await;
    crate::metrics::volumes_running(&agent.node, -1);
    status.start_timestamp = Some(started);
    status.completion_timestamp = Some(Time(Timestamp::now()));
    crate::metrics::volume_finished(
        &agent.node,
        "backup",
        status.phase,
        status.progress.bytes_done,
    );
    tracing::info!(
        volume_backup = %name, phase = ?status.phase,
        bytes = status.progress.bytes_done, new = status.progress.bytes_new,
        message = status.message.as_deref().unwrap_or(""), "volume backup finished"
    );
    patch_status(&api, &name, &status).await?;
    Ok(status)
}

async fn run_backup(
    client: &Client,
    agent: &Agent,
    pvb: &PodVolumeBackup,
    cancel: Arc<AtomicBool>,
    api: &Api<PodVolumeBackup>,
    running: &mut PodVolumeStatus,
) -> PodVolumeStatus {
    let spec = &pvb.spec;
    let timeout = match crate::duration::positive(
        spec.timeout.as_ref(),
        crate::backups::DEFAULT_VOLUME_TIMEOUT,
    ) {
        Ok(t) => t,
        Err(e) => return failed(format!("spec.timeout: {e}")),
    };
    let dir = match volume_dir(
        client,
        agent,
        &spec.pod.namespace,
        &spec.pod.uid,
        &spec.volume,
        spec.claim.as_deref(),
    )
    .await
    {
        Ok(d) => d,
        Err(e) => return failed(e),
    };
    let (repo, session) = match open_volume_repository(
        client,
        agent,
        &spec.repository,
        "node-agent backup",
        Access::Write,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let job = VolumeBackup {
        dir,
        lineage: spec.lineage.clone(),
        exclude: spec.exclude_paths.clone(),
        tags: spec.tags.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        host: agent.node.clone(),
        timeout,
        report_every: agent.report_every,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let work = tokio::task::spawn_blocking(move || {
        let _session = session;
        back_up_volume(&repo, &job, &cancel, |p| {
            let _ = tx.send(p.clone());
        })
    });
    // Progress goes into the status as it comes; the channel closes when the work ends.
    while let Some(progress) = rx.recv().await {
        running.progress = progress;
        if let Err(e) = patch_status(api, &pvb.name_any(), running).await {
            tracing::warn!(volume_backup = %pvb.name_any(), "progress not recorded: {e}");
        }
    }
    match work.await {
        Ok(st) => st,
        Err(e) => failed(format!("the backup task failed: {e}")),
    }
}

/// Whether the pod's restore helper runs now (so the volume is mounted and waited on).
pub fn helper_running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.name == RESTORE_HELPER && c.state.as_ref().is_some_and(|s| s.running.is_some()))
}

/// Restores one PodVolumeRestore into `pod`'s volume on this node.
pub async fn process_restore(
    client: &Client,
    agent: &Agent,
    pvr: &PodVolumeRestore,
    pod: &Pod,
) -> Result<PodVolumeStatus, Error> {
    let name = pvr.name_any();
    let api: Api<PodVolumeRestore> = Api::namespaced(client.clone(), &agent.settings.namespace);
    let pod_ref = crate::crd::PodRef {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        uid: pod.uid().unwrap_or_default(),
    };
    api.patch(
        &name,
        &crate::write::updating(crate::write::NODE_AGENT),
        &Patch::Merge(json!({"spec": {"pod": pod_ref, "node": agent.node}})),
    )
    .await?;
    let started = Time(Timestamp::now());
    let running = PodVolumeStatus {
        phase: Phase::InProgress,
        start_timestamp: Some(started.clone()),
        ..PodVolumeStatus::default()
    };
    patch_status(&api, &name, &running).await?;
    crate::metrics::volumes_running(&agent.node, 1);
    let mut status = run_restore(client, agent, pvr, &pod_ref).await;
    crate::metrics::volumes_running(&agent.node, -1);
    status.start_timestamp = Some(started);
    status.completion_timestamp = Some(Time(Timestamp::now()));
    crate::metrics::volume_finished(
        &agent.node,
        "restore",
        status.phase,
        status.progress.bytes_done,
    );
    tracing::info!(
        volume_restore = %name, phase = ?status.phase,
        message = status.message.as_deref().unwrap_or(""), "volume restore finished"
    );
    patch_status(&api, &name, &status).await?;
    Ok(status)
}

/// Tells the restore helper of a pod that appeared after its Restore gave up waiting for
/// it why its volume will not be restored: the failure marker the helper waits for, with
/// the volume's message. The pod then fails with that reason instead of waiting for ever.
/// A pod told already is not told again.
pub async fn tell_late_pod(
    client: &Client,
    agent: &Agent,
    pvr: &PodVolumeRestore,
    pod: &Pod,
) -> Result<(), Error> {
    let spec = &pvr.spec;
    let message = pvr
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_else(|| "the restore gave up on this volume".into());
    let namespace = pod.namespace().unwrap_or_default();
    let claim = restore_claim(spec, &pod.name_any());
    let dir = volume_dir(
        client,
        agent,
        &namespace,
        &pod.uid().unwrap_or_default(),
        &spec.volume,
        claim.as_deref(),
    )
    .await
    .map_err(Error::Invalid)?;
    let markers = marker_dirs(agent, &pod.uid().unwrap_or_default(), &spec.volume, &dir);
    let marker = format!("{}.failed", spec.restore_uid);
    if markers.iter().all(|dir| dir.join(&marker).is_file()) {
        return Ok(()); // told already
    }
    tracing::warn!(
        %namespace, pod = %pod.name_any(),
        "the pod appeared after its restore gave up on it: {message}"
    );
    crate::agent::write_failure_markers(&markers, &spec.restore_uid, &message);
    Ok(())
}

/// The claim a restored volume lives on in pod `pod_name`: the one the restore names, or
/// for a generic ephemeral volume the pod's own (`<pod>-<volume>`, as Kubernetes names it).
fn restore_claim(spec: &crate::crd::PodVolumeRestoreSpec, pod_name: &str) -> Option<String> {
    if spec.ephemeral {
        Some(format!("{pod_name}-{}", spec.volume))
    } else {
        spec.target.claim.clone()
    }
}

/// Where a volume's restore markers go: into the volume's own `.podvault`, and into the
/// pod's marker volume (`<volume>/`) when the webhook gave the pod one, where the helper
/// sees them whatever the restored root's owner and mode.
fn marker_dirs(agent: &Agent, pod_uid: &str, volume: &str, dir: &std::path::Path) -> Vec<PathBuf> {
    let mut dirs = vec![dir.join(MARKER_DIR)];
    let pod_markers = agent
        .pods_root
        .join(pod_uid)
        .join("volumes/kubernetes.io~empty-dir")
        .join(POD_MARKERS);
    if pod_markers.is_dir() {
        dirs.push(pod_markers.join(volume));
    }
    dirs
}

async fn run_restore(
    client: &Client,
    agent: &Agent,
    pvr: &PodVolumeRestore,
    pod: &crate::crd::PodRef,
) -> PodVolumeStatus {
    let spec = &pvr.spec;
    let claim = restore_claim(spec, &pod.name);
    let dir = match volume_dir(
        client,
        agent,
        &pod.namespace,
        &pod.uid,
        &spec.volume,
        claim.as_deref(),
    )
    .await
    {
        Ok(d) => d,
        Err(e) => return failed(e),
    };
    // From here on the volume is known: a failure also goes into the failure marker, so
    // the restore helper stops waiting and fails the pod with the reason.
    let markers = marker_dirs(agent, &pod.uid, &spec.volume, &dir);
    let fail = |message: String| {
        crate::agent::write_failure_markers(&markers, &spec.restore_uid, &message);
        failed(message)
    };
    let (repo, session) = match open_volume_repository(
        client,
        agent,
        &spec.repository,
        "node-agent restore",
        Access::Read,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let snapshot = spec.snapshot_id.clone();
    let uid = spec.restore_uid.clone();
    let work = tokio::task::spawn_blocking(move || {
        let _session = session;
        restore_volume_with_markers(&repo, &snapshot, &dir, &markers, &uid)
    });
    match work.await {
        Ok(st) => st,
        Err(e) => failed(format!("the restore task failed: {e}")),
    }
}

/// Runs the node agent until the watches end: every PodVolumeBackup labeled for this node,
/// and every PodVolumeRestore whose target pod runs its restore helper here, each on a
/// kube-runtime controller that does at most `agent.concurrency` volumes at a time.
pub async fn run(client: Client, agent: Agent) -> Result<(), Error> {
    tokio::join!(
        run_backups(client.clone(), agent.clone()),
        run_restores(client, agent)
    );
    Ok(())
}

/// What every reconcile of one of the agent's controllers shares.
struct Context<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    client: Client,
    agent: Agent,
    /// The objects as last watched, for what changes while a volume runs (a cancel).
    store: Store<K>,
}

impl<K> Context<K>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    /// The object as the API server has it now, or None when it is gone. The watched copy
    /// may be older than this agent's own last status write (a volume it just finished
    /// still InProgress there), so work starts only from this one.
    async fn fresh(&self, object: &K) -> Result<Option<K>, Error> {
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.agent.settings.namespace);
        Ok(api.get_opt(&object.name_any()).await?)
    }
}

/// How often a running volume backup looks for a cancel in its watched object.
const CANCEL_POLL: Duration = Duration::from_millis(500);

/// After an error (an API call that failed), how long before the object is looked at again.
const RETRY_AFTER: Duration = Duration::from_secs(15);

fn controller_config(agent: &Agent) -> controller::Config {
    let concurrency = u16::try_from(agent.concurrency.clamp(1, 64)).unwrap_or(1);
    controller::Config::default().concurrency(concurrency)
}

async fn run_backups(client: Client, agent: Agent) {
    let api: Api<PodVolumeBackup> = Api::namespaced(client.clone(), &agent.settings.namespace);
    let on_node = watcher::Config::default().labels(&format!("{NODE_LABEL}={}", agent.node));
    let controller = Controller::new(api, on_node).with_config(controller_config(&agent));
    let store = controller.store();
    let context = Arc::new(Context {
        client,
        agent,
        store,
    });
    controller
        .run(reconcile_backup, retry, context)
        .for_each(|_| async {})
        .await;
}

fn retry<K: kube::Resource<DynamicType = ()> + Clone>(
    object: Arc<K>,
    error: &Error,
    _: Arc<Context<K>>,
) -> Action {
    tracing::warn!(
        kind = %K::kind(&()), name = %object.name_any(), error = %error,
        "volume not finished; looking again in {}s", RETRY_AFTER.as_secs()
    );
    Action::requeue(RETRY_AFTER)
}

/// One PodVolumeBackup of this node: done unless it is finished. One left InProgress by a
/// previous run of the agent is done again, resuming from what that run uploaded.
#[tracing::instrument(skip_all, fields(
    volume_backup = %pvb.name_any(), backup = %pvb.spec.backup_name,
    namespace = %pvb.spec.pod.namespace, pod = %pvb.spec.pod.name, volume = %pvb.spec.volume,
))]
async fn reconcile_backup(
    pvb: Arc<PodVolumeBackup>,
    ctx: Arc<Context<PodVolumeBackup>>,
) -> Result<Action, Error> {
    let Some(pvb) = ctx.fresh(&pvb).await? else {
        return Ok(Action::await_change());
    };
    if pvb.status.as_ref().is_some_and(|s| s.phase.is_final()) {
        return Ok(Action::await_change());
    }
    let cancel = Arc::new(AtomicBool::new(pvb.spec.cancel));
    let _watching = AbortOnDrop(tokio::spawn(watch_cancel(
        ctx.store.clone(),
        ObjectRef::from_obj(&pvb),
        cancel.clone(),
    )));
    process_backup(&ctx.client, &ctx.agent, &pvb, cancel).await?;
    Ok(Action::await_change())
}

/// Sets `cancel` once the watched object asks for it.
async fn watch_cancel(
    store: Store<PodVolumeBackup>,
    object: ObjectRef<PodVolumeBackup>,
    cancel: Arc<AtomicBool>,
) {
    loop {
        if store.get(&object).is_some_and(|pvb| pvb.spec.cancel) {
            cancel.store(true, Ordering::Release);
            return;
        }
        tokio::time::sleep(CANCEL_POLL).await;
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a node's agent has to do with a volume restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestoreWork {
    /// Restore it when its pod runs its helper on this node.
    Waiting,
    /// Given up before any pod took it: tell a late pod's helper why.
    GivenUp,
}

/// What this node's agent has to do with `pvr`, if anything.
pub(crate) fn restore_work(pvr: &PodVolumeRestore, node: &str) -> Option<RestoreWork> {
    match pvr.status.as_ref().map(|s| s.phase) {
        None | Some(Phase::New) => Some(RestoreWork::Waiting),
        // Taken by this node's agent before it restarted (an upgrade, an OOM kill):
        // nobody else will finish it, and its pod's helper waits. Restoring again
        // overwrites what the interrupted run wrote.
        Some(Phase::InProgress) if pvr.spec.node.as_deref() == Some(node) => {
            Some(RestoreWork::Waiting)
        }
        // Given up before any pod took it (an agent that took it sets `spec.pod`).
        Some(Phase::Failed) if pvr.spec.pod.is_none() => Some(RestoreWork::GivenUp),
        Some(_) => None,
    }
}

async fn run_restores(client: Client, agent: Agent) {
    let pvrs: Api<PodVolumeRestore> = Api::namespaced(client.clone(), &agent.settings.namespace);
    let pods: Api<Pod> = Api::all(client.clone());
    let here = watcher::Config::default().fields(&format!("spec.nodeName={}", agent.node));
    let controller =
        Controller::new(pvrs, watcher::Config::default()).with_config(controller_config(&agent));
    let store = controller.store();
    // A pod of this node that changes (its helper starting) wakes the restores it targets.
    let restores = store.clone();
    let controller = controller.watches(pods, here, move |pod: Pod| {
        restores
            .state()
            .into_iter()
            .filter(|pvr| restore_target(&pvr.spec, &pod))
            .map(|pvr| ObjectRef::from_obj(&*pvr))
            .collect::<Vec<_>>()
    });
    let context = Arc::new(Context {
        client,
        agent,
        store,
    });
    controller
        .run(reconcile_restore, retry, context)
        .for_each(|_| async {})
        .await;
}

/// How often a volume restore waiting for its pod looks again without being woken.
const WAITING_POLL: Duration = Duration::from_secs(30);

/// One PodVolumeRestore: restored into its pod's volume once the pod runs its helper on
/// this node; for one given up, the helpers of its late pods here are told why.
#[tracing::instrument(skip_all, fields(
    volume_restore = %pvr.name_any(), restore = %pvr.spec.restore_name,
    namespace = %pvr.spec.target_namespace, volume = %pvr.spec.volume,
))]
async fn reconcile_restore(
    pvr: Arc<PodVolumeRestore>,
    ctx: Arc<Context<PodVolumeRestore>>,
) -> Result<Action, Error> {
    let Some(pvr) = ctx.fresh(&pvr).await? else {
        return Ok(Action::await_change());
    };
    let Some(work) = restore_work(&pvr, &ctx.agent.node) else {
        return Ok(Action::await_change());
    };
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={}", ctx.agent.node));
    let mut ready = pods
        .list(&on_node)
        .await?
        .items
        .into_iter()
        .filter(|p| restore_target(&pvr.spec, p) && helper_running(p));
    match work {
        RestoreWork::GivenUp => {
            for pod in ready {
                tell_late_pod(&ctx.client, &ctx.agent, &pvr, &pod).await?;
            }
            Ok(Action::await_change())
        }
        RestoreWork::Waiting => {
            let Some(pod) = ready.next() else {
                return Ok(Action::requeue(WAITING_POLL));
            };
            if pvr
                .status
                .as_ref()
                .is_some_and(|s| s.phase == Phase::InProgress)
            {
                tracing::info!(
                    "restoring again a volume this node's agent was restoring when it stopped"
                );
            }
            process_restore(&ctx.client, &ctx.agent, &pvr, &pod).await?;
            Ok(Action::await_change())
        }
    }
}

/// At start: checks that this node's running pods have their directories under the pods
/// root, so a wrong root fails now with the setting named, not at the first backup.
pub async fn check_pods_root(client: &Client, agent: &Agent) -> Result<(), Error> {
    let pods: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={}", agent.node));
    let uids: Vec<String> = pods
        .list(&on_node)
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && !p
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"))
        })
        .filter_map(|p| p.uid())
        .collect();
    Ok(crate::hostpath::check_root(&agent.pods_root, &uids)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pvr(name: &str, node: Option<&str>, pod: bool, phase: Option<&str>) -> PodVolumeRestore {
        let mut v: Value = json!({
            "apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeRestore",
            "metadata": {"name": name, "namespace": "podvault"},
            "spec": {"restoreName": "r", "restoreUid": "r-uid", "targetNamespace": "shop-copy",
                     "target": {"podName": "db-0"}, "volume": "data", "snapshotID": "s",
                     "repository": "shop"},
        });
        if let Some(node) = node {
            v["spec"]["node"] = json!(node);
        }
        if pod {
            v["spec"]["pod"] = json!({"namespace": "shop-copy", "name": "db-0", "uid": "u"});
        }
        if let Some(phase) = phase {
            v["status"] = json!({ "phase": phase });
        }
        serde_json::from_value(v).expect("pvr")
    }

    #[test]
    fn an_agent_takes_waiting_restores_and_resumes_its_own_after_a_restart() {
        use RestoreWork::{GivenUp, Waiting};
        let cases = [
            (pvr("fresh", None, false, None), Some(Waiting)),
            (pvr("new", None, false, Some("New")), Some(Waiting)),
            (
                pvr("mine", Some("worker-1"), true, Some("InProgress")),
                Some(Waiting),
            ),
            (
                pvr("other-node", Some("worker-2"), true, Some("InProgress")),
                None,
            ),
            (pvr("done", Some("worker-1"), true, Some("Completed")), None),
            (pvr("given-up", None, false, Some("Failed")), Some(GivenUp)),
            (
                pvr("failed-by-an-agent", Some("worker-1"), true, Some("Failed")),
                None,
            ),
        ];
        for (pvr, expected) in cases {
            assert_eq!(
                restore_work(&pvr, "worker-1"),
                expected,
                "{}",
                pvr.name_any()
            );
        }
    }
}
