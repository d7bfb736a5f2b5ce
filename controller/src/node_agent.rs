//! The node agent: does the PodVolumeBackups and PodVolumeRestores of its own node, at most
//! N at a time, with the engine on the blocking pool and its progress in the objects'
//! status every few seconds.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::CSIDriver;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use podvault_store::Access;
use serde_json::json;
use tokio::sync::Semaphore;

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
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
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
        &PatchParams::default(),
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
    tracing::warn!(
        volume_restore = %pvr.name_any(), %namespace, pod = %pod.name_any(),
        "the pod appeared after its restore gave up on it: {message}"
    );
    let markers = marker_dirs(agent, &pod.uid().unwrap_or_default(), &spec.volume, &dir);
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

/// Runs the node agent until the watch ends: every PodVolumeBackup labeled for this node,
/// and every PodVolumeRestore whose target pod runs its restore helper here.
pub async fn run(client: Client, agent: Agent) -> Result<(), Error> {
    let backups = tokio::spawn(watch_backups(client.clone(), agent.clone()));
    let restores = tokio::spawn(watch_restores(client, agent));
    tokio::select! {
        r = backups => r.map_err(|e| Error::Invalid(e.to_string()))?,
        r = restores => r.map_err(|e| Error::Invalid(e.to_string()))?,
    }
}

async fn watch_backups(client: Client, agent: Agent) -> Result<(), Error> {
    let api: Api<PodVolumeBackup> = Api::namespaced(client.clone(), &agent.settings.namespace);
    let config = watcher::Config::default().labels(&format!("{NODE_LABEL}={}", agent.node));
    let slots = Arc::new(Semaphore::new(agent.concurrency.max(1)));
    let running: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>> = Arc::default();
    // Objects this agent finished (by UID): a late event of their InProgress status must
    // not start them again. Objects left InProgress by a previous run of the agent are
    // started again, and resume from what that run uploaded.
    let finished: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    while let Some(event) = events
        .try_next()
        .await
        .map_err(|e| Error::Invalid(format!("watching PodVolumeBackups: {e}")))?
    {
        let pvb = match event {
            watcher::Event::Apply(pvb) | watcher::Event::InitApply(pvb) => pvb,
            // Gone for good: its UID cannot come back, so the set does not grow for ever.
            watcher::Event::Delete(pvb) => {
                if let Some(uid) = pvb.uid() {
                    finished
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&uid);
                }
                continue;
            }
            watcher::Event::Init | watcher::Event::InitDone => continue,
        };
        let name = pvb.name_any();
        let uid = pvb.uid().unwrap_or_default();
        let flag = {
            let mut map = running.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(flag) = map.get(&name) {
                if pvb.spec.cancel {
                    flag.store(true, Ordering::Release);
                }
                continue;
            }
            if pvb.status.as_ref().is_some_and(|s| s.phase.is_final())
                || finished
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&uid)
            {
                continue;
            }
            let flag = Arc::new(AtomicBool::new(pvb.spec.cancel));
            map.insert(name.clone(), flag.clone());
            flag
        };
        let (client, agent, slots, running, finished) = (
            client.clone(),
            agent.clone(),
            slots.clone(),
            running.clone(),
            finished.clone(),
        );
        tokio::spawn(async move {
            let permit = slots.acquire_owned().await;
            match process_backup(&client, &agent, &pvb, flag).await {
                Ok(_) => {
                    finished
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(uid);
                }
                Err(e) => tracing::warn!(volume_backup = %name, "volume backup not finished: {e}"),
            }
            drop(permit);
            running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
        });
    }
    Ok(())
}

/// The volume restores a node's agent has to look at, from all of them: those waiting for
/// their pod (to start when it runs its helper here), and those given up before any pod
/// took them (whose late pods' helpers are told why).
pub fn restore_work(
    all: Vec<PodVolumeRestore>,
    node: &str,
) -> (Vec<PodVolumeRestore>, Vec<PodVolumeRestore>) {
    all.into_iter()
        .filter(|p| match p.status.as_ref().map(|s| s.phase) {
            None | Some(Phase::New) => true,
            // Taken by this node's agent before it restarted (an upgrade, an OOM kill):
            // nobody else will finish it, and its pod's helper waits. Restoring again
            // overwrites what the interrupted run wrote.
            Some(Phase::InProgress) => p.spec.node.as_deref() == Some(node),
            // Given up before any pod took it (an agent that took it sets `spec.pod`).
            Some(Phase::Failed) => p.spec.pod.is_none(),
            Some(_) => false,
        })
        .partition(|p| p.status.as_ref().is_none_or(|s| s.phase != Phase::Failed))
}

async fn watch_restores(client: Client, agent: Agent) -> Result<(), Error> {
    let pvrs: Api<PodVolumeRestore> = Api::namespaced(client.clone(), &agent.settings.namespace);
    let pods: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={}", agent.node));
    let slots = Arc::new(Semaphore::new(agent.concurrency.max(1)));
    let running: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    // The volume restores this run of the agent finished (by UID).
    let finished: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    // Look again whenever a restore or a pod of this node changes (a helper starting is a
    // pod change), and at least every 30 s; a burst of changes is taken as one.
    let wake = Arc::new(tokio::sync::Notify::new());
    let changes = {
        use futures_util::StreamExt;
        let restores = watcher(pvrs.clone(), watcher::Config::default())
            .default_backoff()
            .map(|_| ());
        let here = watcher(
            pods.clone(),
            watcher::Config::default().fields(&format!("spec.nodeName={}", agent.node)),
        )
        .default_backoff()
        .map(|_| ());
        let wake = wake.clone();
        tokio::spawn(
            futures_util::stream::select(restores, here).for_each(move |()| {
                wake.notify_one();
                async {}
            }),
        )
    };
    let _stop_watching = AbortOnDrop(changes);
    // The late pods already told (volume restore name, pod UID).
    let mut told: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        let listed = pvrs.list(&ListParams::default()).await?.items;
        // Only volumes still listed can be seen again: the sets keep no others.
        let uids: BTreeSet<String> = listed.iter().filter_map(|p| p.uid()).collect();
        finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|uid| uids.contains(uid));
        let (waiting, given_up) = restore_work(listed, &agent.node);
        told.retain(|(name, _)| given_up.iter().any(|p| p.name_any() == *name));
        let here = if waiting.is_empty() && given_up.is_empty() {
            Vec::new()
        } else {
            pods.list(&on_node).await?.items
        };
        for pvr in &given_up {
            for pod in here
                .iter()
                .filter(|p| restore_target(&pvr.spec, p) && helper_running(p))
            {
                let key = (pvr.name_any(), pod.uid().unwrap_or_default());
                if told.contains(&key) {
                    continue;
                }
                match tell_late_pod(&client, &agent, pvr, pod).await {
                    Ok(()) => {
                        told.insert(key);
                    }
                    Err(e) => tracing::warn!(
                        volume_restore = %key.0, "could not tell a late pod's helper: {e}"
                    ),
                }
            }
        }
        for pvr in waiting {
            let Some(pod) = here
                .iter()
                .find(|p| restore_target(&pvr.spec, p) && helper_running(p))
            else {
                continue;
            };
            let name = pvr.name_any();
            let uid = pvr.uid().unwrap_or_default();
            // A list made while one of ours finished may still show it InProgress.
            if finished
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&uid)
                || !running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.clone())
            {
                continue;
            }
            if pvr
                .status
                .as_ref()
                .is_some_and(|s| s.phase == Phase::InProgress)
            {
                tracing::info!(
                    volume_restore = %name,
                    "restoring again a volume this node's agent was restoring when it stopped"
                );
            }
            let (client, agent, slots, running, finished, pod) = (
                client.clone(),
                agent.clone(),
                slots.clone(),
                running.clone(),
                finished.clone(),
                pod.clone(),
            );
            tokio::spawn(async move {
                let permit = slots.acquire_owned().await;
                match process_restore(&client, &agent, &pvr, &pod).await {
                    Ok(_) => {
                        finished
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(uid);
                    }
                    Err(e) => {
                        tracing::warn!(volume_restore = %name, "volume restore not finished: {e}")
                    }
                }
                drop(permit);
                running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&name);
            });
        }
        tokio::select! {
            () = wake.notified() => tokio::time::sleep(Duration::from_millis(200)).await,
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
    crate::hostpath::check_root(&agent.pods_root, &uids).map_err(Error::Invalid)
}
