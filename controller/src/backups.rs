//! The backup controller: turns a Backup into PodVolumeBackups for the node agents,
//! follows them to the Backup's phase, keeps the backup's manifests beside its snapshots,
//! and forgets the snapshots when the Backup expires or is deleted.
//!
//! Every step is idempotent (objects have names derived from what they are, a conflict
//! means "already done"), so a reconcile interrupted anywhere is simply run again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, ObjectMeta, Patch};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Client, Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::aggregate::aggregate;
use crate::cluster::{
    BACKUP_FINALIZER, BACKUP_LABEL, Error, NODE_LABEL, Settings, ensure_repository, repository_key,
    with_documents,
};
use crate::crd::{Backup, BackupStatus, Phase, PodVolumeBackup, PodVolumeBackupSpec};
use crate::plan::plan_backup;
use crate::write::{CONTROLLER, applying, create_if_missing, updating};

/// How long a backup is kept when its spec names no TTL (Velero's default too).
pub const DEFAULT_TTL: Duration = Duration::from_secs(720 * 3600);

/// How long each volume may take when neither the Backup nor its pod says (Velero's
/// default pod volume operation timeout).
pub const DEFAULT_VOLUME_TIMEOUT: Duration = Duration::from_secs(4 * 3600);
/// How often a running backup is looked at even without a change of its volumes.
const POLL: Duration = Duration::from_secs(10);

/// What the controller keeps of one backup in each namespace's repository (document
/// `backup-<name>.json`), so that a cluster that lost the objects can still restore.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// The Backup as it was created (its spec; status at the end).
    pub backup: Backup,
    /// The namespace's PodVolumeBackups, with their snapshot ids once done.
    pub volumes: Vec<PodVolumeBackup>,
    /// The manifests of the namespace's pods in scope, as they were when the backup began.
    pub pods: Vec<Pod>,
    /// The manifests of the claims those pods mount.
    pub claims: Vec<PersistentVolumeClaim>,
}

/// The document name of a backup's record.
pub fn record_name(backup: &str) -> String {
    format!("backup-{backup}.json")
}

/// The name of the PodVolumeBackup of one volume: the backup's name and a short hash of
/// the volume's identity, so that a second attempt finds the first one's object.
pub fn volume_object_name(backup: &str, spec: &PodVolumeBackupSpec) -> String {
    let identity = format!("{}/{}/{}", spec.pod.namespace, spec.pod.name, spec.volume);
    let hash = xxhash_rust::xxh3::xxh3_64(identity.as_bytes());
    let prefix: String = backup.chars().take(240).collect();
    format!("{prefix}-{:012x}", hash & 0xffff_ffff_ffff)
}

fn status_patch(status: &BackupStatus) -> Patch<serde_json::Value> {
    crate::write::status::<Backup>(status, None)
}

/// Publishes a Kubernetes Event on a Backup or Restore (when a recorder is given); a
/// failure to publish is logged, never fatal.
pub async fn announce<K: Resource<DynamicType = ()>>(
    events: Option<&Recorder>,
    object: &K,
    warning: bool,
    reason: &str,
    note: String,
) {
    let Some(recorder) = events else { return };
    let event = KubeEvent {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: reason.to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!("event {reason} not published: {e}");
    }
}

/// One reconcile of a Backup at time `now`: the finalizer first, then the work of its
/// phase. `events` publishes Kubernetes Events on the Backup (none in tests).
pub async fn reconcile(
    backup: Arc<Backup>,
    client: &Client,
    settings: &Settings,
    now: Timestamp,
) -> Result<Action, Error> {
    reconcile_with_events(backup, client, settings, now, None).await
}

/// [`reconcile`], publishing Events through `events`.
#[tracing::instrument(skip_all, fields(backup = %backup.name_any()))]
pub async fn reconcile_with_events(
    backup: Arc<Backup>,
    client: &Client,
    settings: &Settings,
    now: Timestamp,
    events: Option<&Recorder>,
) -> Result<Action, Error> {
    let api: Api<Backup> = Api::namespaced(client.clone(), &settings.namespace);
    finalizer(&api, BACKUP_FINALIZER, backup, |event| async {
        match event {
            Finalizer::Apply(b) => {
                let before = b.status.as_ref().map(|s| s.phase).unwrap_or_default();
                let action = apply(&b, client, settings, now).await;
                if events.is_some()
                    && let Ok(after) = api.get_status(&b.name_any()).await
                    && let Some(st) = after.status.as_ref()
                    && st.phase != before
                {
                    let (warning, note) = match st.phase {
                        Phase::InProgress => (
                            false,
                            format!(
                                "{} volumes to back up, {} skipped",
                                st.volumes.total, st.volumes.skipped
                            ),
                        ),
                        Phase::Completed => (
                            false,
                            format!("{} bytes read, {} new", st.bytes_done, st.bytes_new),
                        ),
                        _ => (true, st.message.clone().unwrap_or_default()),
                    };
                    announce(events, &after, warning, &format!("{:?}", st.phase), note).await;
                }
                action
            }
            Finalizer::Cleanup(b) => cleanup(&b, client, settings).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        kube::runtime::finalizer::Error::AddFinalizer(e)
        | kube::runtime::finalizer::Error::RemoveFinalizer(e) => Error::Kube(e),
        other => Error::Invalid(other.to_string()),
    })
}

async fn apply(
    backup: &Backup,
    client: &Client,
    settings: &Settings,
    now: Timestamp,
) -> Result<Action, Error> {
    let phase = backup.status.as_ref().map(|s| s.phase).unwrap_or_default();
    match phase {
        Phase::New => start(backup, client, settings, now).await,
        Phase::InProgress => follow(backup, client, settings, now).await,
        _ => expire(backup, client, settings, now).await,
    }
}

async fn fail(
    api: &Api<Backup>,
    backup: &Backup,
    now: Timestamp,
    message: String,
) -> Result<Action, Error> {
    tracing::warn!(backup = %backup.name_any(), "backup failed: {message}");
    let mut status = backup.status.clone().unwrap_or_default();
    status.phase = Phase::Failed;
    status.message = Some(message);
    status.completion_timestamp = Some(Time(now));
    api.patch_status(
        &backup.name_any(),
        &applying(CONTROLLER),
        &status_patch(&status),
    )
    .await?;
    Ok(Action::await_change())
}

async fn start(
    backup: &Backup,
    client: &Client,
    settings: &Settings,
    now: Timestamp,
) -> Result<Action, Error> {
    let name = backup.name_any();
    let api: Api<Backup> = Api::namespaced(client.clone(), &settings.namespace);
    if backup.spec.cancel {
        let mut status = BackupStatus {
            phase: Phase::Canceled,
            message: Some("canceled before it started".into()),
            completion_timestamp: Some(Time(now)),
            ..BackupStatus::default()
        };
        status.start_timestamp = Some(Time(now));
        api.patch_status(&name, &applying(CONTROLLER), &status_patch(&status))
            .await?;
        return Ok(Action::await_change());
    }
    let ttl = backup.spec.ttl.map_or(DEFAULT_TTL, Duration::from);
    if let Err(e) = crate::duration::positive(backup.spec.timeout.as_ref(), DEFAULT_VOLUME_TIMEOUT)
    {
        return fail(&api, backup, now, format!("spec.timeout: {e}")).await;
    }
    let ClusterVolumes {
        pods,
        claims,
        volumes,
    } = ClusterVolumes::list(client).await?;
    let plan = match plan_backup(&name, &backup.spec, &pods, &claims, &volumes) {
        Ok(p) => p,
        Err(e) => return fail(&api, backup, now, format!("spec.labelSelector: {e}")).await,
    };
    for namespace in &plan.repositories {
        let key = match ensure_repository(client, settings, namespace).await {
            Ok((_, key)) => key,
            Err(e) => return fail(&api, backup, now, e.to_string()).await,
        };
        // The manifests as they are now, for a restore into a cluster without them.
        let record = BackupRecord {
            backup: Backup::new(&name, backup.spec.clone()),
            volumes: Vec::new(),
            pods: pods_of(&pods, &plan.volumes, namespace),
            claims: claims_of(&claims, &plan.volumes, namespace),
        };
        save_record(settings, namespace, key, &name, &record).await?;
    }
    create_volume_backups(client, settings, backup, &plan.volumes).await?;
    let mut status = BackupStatus {
        phase: if plan.volumes.is_empty() {
            Phase::Completed
        } else {
            Phase::InProgress
        },
        start_timestamp: Some(Time(now)),
        expiration: Some(Time(now + ttl)),
        skipped: plan.skipped.clone(),
        ..BackupStatus::default()
    };
    status.volumes.total = plan.volumes.len() as u32;
    status.volumes.skipped = plan.skipped.len() as u32;
    if plan.volumes.is_empty() {
        status.completion_timestamp = Some(Time(now));
        status.message = Some("no volume in scope to back up".into());
    }
    api.patch_status(&name, &applying(CONTROLLER), &status_patch(&status))
        .await?;
    tracing::info!(
        backup = %name,
        volumes = plan.volumes.len(),
        skipped = plan.skipped.len(),
        "backup started"
    );
    Ok(Action::requeue(POLL))
}

/// The cluster's pods, claims (by namespace and name) and persistent volumes (by name).
struct ClusterVolumes {
    pods: Vec<Pod>,
    claims: BTreeMap<(String, String), PersistentVolumeClaim>,
    volumes: BTreeMap<String, PersistentVolume>,
}

impl ClusterVolumes {
    async fn list(client: &Client) -> Result<ClusterVolumes, Error> {
        let pods = Api::<Pod>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let claims: BTreeMap<(String, String), PersistentVolumeClaim> =
            Api::<PersistentVolumeClaim>::all(client.clone())
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .map(|c| ((c.namespace().unwrap_or_default(), c.name_any()), c))
                .collect();
        let volumes: BTreeMap<String, PersistentVolume> =
            Api::<PersistentVolume>::all(client.clone())
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .map(|v| (v.name_any(), v))
                .collect();
        Ok(ClusterVolumes {
            pods,
            claims,
            volumes,
        })
    }
}

/// Creates a PodVolumeBackup for each volume of the plan, labeled with its node for that
/// node's agent and owned by the Backup; one that exists already is left as it is.
async fn create_volume_backups(
    client: &Client,
    settings: &Settings,
    backup: &Backup,
    volumes: &[PodVolumeBackupSpec],
) -> Result<(), Error> {
    let name = backup.name_any();
    let owner = backup.controller_owner_ref(&());
    let pvbs: Api<PodVolumeBackup> = Api::namespaced(client.clone(), &settings.namespace);
    for spec in volumes {
        let mut object = PodVolumeBackup::new(&volume_object_name(&name, spec), spec.clone());
        object.metadata.labels = Some(BTreeMap::from([
            (BACKUP_LABEL.to_string(), name.clone()),
            (NODE_LABEL.to_string(), spec.node.clone()),
        ]));
        object.metadata.owner_references = owner.clone().map(|o| vec![o]);
        create_if_missing(CONTROLLER, &pvbs, &object).await?;
    }
    Ok(())
}

fn pods_of(pods: &[Pod], volumes: &[PodVolumeBackupSpec], namespace: &str) -> Vec<Pod> {
    pods.iter()
        .filter(|p| {
            volumes
                .iter()
                .any(|v| v.pod.namespace == namespace && Some(&v.pod.uid) == p.uid().as_ref())
        })
        .map(|p| {
            let mut p = p.clone();
            p.metadata.managed_fields = None;
            p.status = None;
            p
        })
        .collect()
}

fn claims_of(
    claims: &BTreeMap<(String, String), PersistentVolumeClaim>,
    volumes: &[PodVolumeBackupSpec],
    namespace: &str,
) -> Vec<PersistentVolumeClaim> {
    let mut out: Vec<PersistentVolumeClaim> = volumes
        .iter()
        .filter(|v| v.pod.namespace == namespace)
        .filter_map(|v| v.claim.as_ref())
        .filter_map(|c| claims.get(&(namespace.to_string(), c.clone())))
        .map(|c| {
            let mut c = c.clone();
            c.metadata.managed_fields = None;
            c.status = None;
            c
        })
        .collect();
    out.sort_by_key(|c| c.name_any());
    out.dedup_by_key(|c| c.name_any());
    out
}

fn encode(record: &BackupRecord) -> podvault_store::Result<Vec<u8>> {
    serde_json::to_vec(record).map_err(|e| podvault_store::Error::InvalidParameter {
        name: "backup record",
        reason: e.to_string(),
    })
}

fn decode(
    namespace: &str,
    backup: &str,
    bytes: Option<Vec<u8>>,
) -> Result<Option<BackupRecord>, Error> {
    bytes
        .map(|b| {
            serde_json::from_slice(&b).map_err(|source| Error::Record {
                namespace: namespace.to_string(),
                backup: backup.to_string(),
                source,
            })
        })
        .transpose()
}

async fn save_record(
    settings: &Settings,
    namespace: &str,
    key: Vec<u8>,
    backup: &str,
    record: &BackupRecord,
) -> Result<(), Error> {
    let bytes = encode(record).map_err(|e| Error::Invalid(e.to_string()))?;
    let doc = record_name(backup);
    with_documents(settings, namespace, key, "backup-record", move |repo| {
        repo.save_document(&doc, &bytes)
    })
    .await
}

/// Loads a backup's record from a namespace's repository (`None` if it has none).
pub async fn load_record(
    settings: &Settings,
    namespace: &str,
    key: Vec<u8>,
    backup: &str,
) -> Result<Option<BackupRecord>, Error> {
    let doc = record_name(backup);
    let bytes = with_documents(settings, namespace, key, "backup-record", move |repo| {
        repo.load_document(&doc)
    })
    .await?;
    decode(namespace, backup, bytes)
}

async fn volumes_of(
    client: &Client,
    settings: &Settings,
    backup: &str,
) -> Result<Vec<PodVolumeBackup>, Error> {
    let pvbs: Api<PodVolumeBackup> = Api::namespaced(client.clone(), &settings.namespace);
    let mut items = pvbs
        .list(&ListParams::default().labels(&format!("{BACKUP_LABEL}={backup}")))
        .await?
        .items;
    items.sort_by_key(|p| p.name_any());
    Ok(items)
}

fn is_final(p: &PodVolumeBackup) -> bool {
    p.status.as_ref().is_some_and(|s| s.phase.is_final())
}

/// Asks the node agents to stop every volume of the backup still running; returns how
/// many were still running.
async fn cancel_volumes(
    client: &Client,
    settings: &Settings,
    volumes: &[PodVolumeBackup],
) -> Result<usize, Error> {
    let pvbs: Api<PodVolumeBackup> = Api::namespaced(client.clone(), &settings.namespace);
    let mut running = 0;
    for v in volumes.iter().filter(|v| !is_final(v)) {
        running += 1;
        if !v.spec.cancel {
            pvbs.patch(
                &v.name_any(),
                &updating(CONTROLLER),
                &Patch::Merge(json!({"spec": {"cancel": true}})),
            )
            .await?;
        }
    }
    Ok(running)
}

/// How long past its time limit a volume may stay unfinished before the controller gives
/// up on its node agent (gone with its node, or never scheduled there).
pub const ABANDON_GRACE: Duration = Duration::from_secs(600);

/// The moment after which nobody will finish a volume: its start (or creation, if no
/// agent took it) plus its time limit and a grace period.
pub fn abandoned_after(volume: &PodVolumeBackup) -> Option<Timestamp> {
    let limit =
        crate::duration::positive(volume.spec.timeout.as_ref(), DEFAULT_VOLUME_TIMEOUT).ok()?;
    let since = volume
        .status
        .as_ref()
        .and_then(|s| s.start_timestamp.as_ref())
        .or(volume.metadata.creation_timestamp.as_ref())?;
    Some(since.0 + limit + ABANDON_GRACE)
}

/// Marks Failed the volumes no node agent finished in time, so the Backup ends.
async fn fail_abandoned(
    client: &Client,
    settings: &Settings,
    volumes: &mut [PodVolumeBackup],
    now: Timestamp,
) -> Result<(), Error> {
    let pvbs: Api<PodVolumeBackup> = Api::namespaced(client.clone(), &settings.namespace);
    for v in volumes.iter_mut().filter(|v| !is_final(v)) {
        if abandoned_after(v).is_none_or(|deadline| deadline > now) {
            continue;
        }
        let started = v
            .status
            .as_ref()
            .is_some_and(|s| s.phase == Phase::InProgress);
        let mut st = v.status.clone().unwrap_or_default();
        st.phase = Phase::Failed;
        st.completion_timestamp = Some(Time(now));
        st.message = Some(format!(
            "the node agent of node {} {} within the time limit",
            v.spec.node,
            if started {
                "stopped reporting and did not finish"
            } else {
                "did not start it"
            }
        ));
        pvbs.patch_status(
            &v.name_any(),
            &applying(CONTROLLER),
            &crate::write::status::<PodVolumeBackup>(&st, None),
        )
        .await?;
        v.status = Some(st);
    }
    Ok(())
}

async fn follow(
    backup: &Backup,
    client: &Client,
    settings: &Settings,
    now: Timestamp,
) -> Result<Action, Error> {
    let name = backup.name_any();
    let api: Api<Backup> = Api::namespaced(client.clone(), &settings.namespace);
    let mut volumes = volumes_of(client, settings, &name).await?;
    if backup.spec.cancel {
        cancel_volumes(client, settings, &volumes).await?;
    }
    fail_abandoned(client, settings, &mut volumes, now).await?;
    let mut status = backup.status.clone().unwrap_or_default();
    let statuses: Vec<_> = volumes.iter().map(|v| v.status.as_ref()).collect();
    let totals = aggregate(&statuses, status.skipped.len() as u32, backup.spec.cancel);
    // Volumes whose objects vanished (deleted by hand) count as failed, not as done.
    let lost = (status.volumes.total as usize).saturating_sub(volumes.len()) as u32;
    status.volumes = totals.volumes;
    status.volumes.total += lost;
    status.volumes.failed += lost;
    status.total_bytes = totals.total_bytes;
    status.bytes_done = totals.bytes_done;
    status.bytes_new = totals.bytes_new;
    status.phase = match totals.phase {
        Phase::Completed if lost > 0 => Phase::PartiallyFailed,
        p => p,
    };
    if status.phase.is_final() {
        status.completion_timestamp = Some(Time(now));
        let failed: Vec<String> = volumes
            .iter()
            .filter(|v| {
                v.status
                    .as_ref()
                    .is_some_and(|s| s.phase != Phase::Completed)
            })
            .map(|v| {
                let s = v.status.as_ref().and_then(|s| s.message.clone());
                format!(
                    "{}/{} volume {}: {}",
                    v.spec.pod.namespace,
                    v.spec.pod.name,
                    v.spec.volume,
                    s.unwrap_or_default()
                )
            })
            .collect();
        if !failed.is_empty() {
            status.message = Some(failed.join("; "));
        }
        finish_records(client, settings, backup, &status, &volumes).await?;
    }
    if Some(&status) != backup.status.as_ref() {
        api.patch_status(&name, &applying(CONTROLLER), &status_patch(&status))
            .await?;
    }
    if status.phase.is_final() {
        tracing::info!(backup = %name, phase = ?status.phase, "backup finished");
        crate::metrics::backup_finished(backup, &status);
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(POLL))
}

async fn finish_records(
    client: &Client,
    settings: &Settings,
    backup: &Backup,
    status: &BackupStatus,
    volumes: &[PodVolumeBackup],
) -> Result<(), Error> {
    let name = backup.name_any();
    let mut namespaces: Vec<&str> = volumes.iter().map(|v| v.spec.repository.as_str()).collect();
    namespaces.sort();
    namespaces.dedup();
    for namespace in namespaces {
        let key = repository_key(client, &settings.namespace, namespace).await?;
        let mut fresh = Backup::new(&name, backup.spec.clone());
        fresh.status = Some(status.clone());
        let mine: Vec<PodVolumeBackup> = volumes
            .iter()
            .filter(|v| v.spec.repository == namespace)
            .map(|v| {
                let mut v = v.clone();
                v.metadata = ObjectMeta {
                    name: v.metadata.name.clone(),
                    labels: v.metadata.labels.clone(),
                    ..ObjectMeta::default()
                };
                v
            })
            .collect();
        // One opening of the repository: read the record written at the start, complete it.
        let (ns, backup_name, doc) = (namespace.to_string(), name.clone(), record_name(&name));
        with_documents(settings, namespace, key, "backup-record", move |repo| {
            let old = decode(&ns, &backup_name, repo.load_document(&doc)?).unwrap_or_else(|e| {
                tracing::warn!("{e}: writing a new one");
                None
            });
            let record = BackupRecord {
                backup: fresh,
                volumes: mine,
                pods: old.as_ref().map(|r| r.pods.clone()).unwrap_or_default(),
                claims: old.map(|r| r.claims).unwrap_or_default(),
            };
            repo.save_document(&doc, &encode(&record)?)
        })
        .await?;
    }
    Ok(())
}

async fn expire(
    backup: &Backup,
    client: &Client,
    settings: &Settings,
    now: Timestamp,
) -> Result<Action, Error> {
    let Some(expiration) = backup.status.as_ref().and_then(|s| s.expiration.clone()) else {
        return Ok(Action::await_change());
    };
    if expiration.0 > now {
        let left = expiration.0.duration_since(now);
        let wait = Duration::try_from(left).unwrap_or(Duration::from_secs(3600));
        return Ok(Action::requeue(wait.min(Duration::from_secs(3600))));
    }
    tracing::info!(backup = %backup.name_any(), "backup expired: deleting it");
    let api: Api<Backup> = Api::namespaced(client.clone(), &settings.namespace);
    match api
        .delete(&backup.name_any(), &kube::api::DeleteParams::default())
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

/// The finalizer: stop what runs, then forget the backup's snapshots and its records.
async fn cleanup(backup: &Backup, client: &Client, settings: &Settings) -> Result<Action, Error> {
    let name = backup.name_any();
    let volumes = volumes_of(client, settings, &name).await?;
    let running = cancel_volumes(client, settings, &volumes).await?;
    if running > 0 {
        return Err(Error::Waiting(format!(
            "backup {name} is being deleted: waiting for {running} running volumes to stop"
        )));
    }
    let mut by_namespace: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for v in &volumes {
        let entry = by_namespace.entry(v.spec.repository.clone()).or_default();
        if let Some(id) = v.status.as_ref().and_then(|s| s.snapshot_id.clone()) {
            entry.push(id);
        }
    }
    for (namespace, ids) in by_namespace {
        let key = match repository_key(client, &settings.namespace, &namespace).await {
            Ok(k) => k,
            Err(Error::Key(message)) => {
                // Without the key nothing can be forgotten; holding the Backup forever
                // would not bring it back.
                tracing::warn!(backup = %name, "cannot forget snapshots: {message}");
                continue;
            }
            Err(e) => return Err(e),
        };
        let doc = record_name(&name);
        let count = ids.len();
        with_documents(settings, &namespace, key, "forget", move |repo| {
            for id in &ids {
                match podvault_store::SnapshotId::from_hex(id) {
                    Some(id) => repo.remove_snapshot(&id)?,
                    None => tracing::warn!("snapshot id {id:?} is not valid: left alone"),
                }
            }
            repo.remove_document(&doc)
        })
        .await?;
        tracing::info!(backup = %name, namespace = %namespace, snapshots = count, "snapshots forgotten");
    }
    Ok(Action::await_change())
}

/// Runs the backup controller until a termination signal: Backups of the install
/// namespace, woken again whenever one of their PodVolumeBackups changes.
pub async fn run(client: Client, settings: Settings, events: Recorder) {
    use futures_util::StreamExt;
    use kube::runtime::{Controller, watcher};
    let backups: Api<Backup> = Api::namespaced(client.clone(), &settings.namespace);
    let pvbs: Api<PodVolumeBackup> = Api::namespaced(client.clone(), &settings.namespace);
    let ctx = Arc::new(crate::cluster::Context {
        client,
        settings,
        events: Some(events),
    });
    Controller::new(backups, watcher::Config::default())
        .owns(pvbs, watcher::Config::default())
        .shutdown_on_signal()
        .run(
            |backup, ctx| async move {
                let crate::cluster::Context {
                    client,
                    settings,
                    events,
                } = &*ctx;
                reconcile_with_events(backup, client, settings, Timestamp::now(), events.as_ref())
                    .await
            },
            |backup, error, _| {
                tracing::warn!(backup = %backup.name_any(), "{error}");
                match error {
                    Error::Waiting(_) => Action::requeue(Duration::from_secs(2)),
                    _ => Action::requeue(Duration::from_secs(15)),
                }
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}
