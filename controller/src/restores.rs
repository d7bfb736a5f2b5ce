//! The restore controller: turns a Restore into PodVolumeRestores, prepares the target
//! namespaces (the label the webhook keys on, missing claims and, when asked, pods from the
//! backup's stored manifests) and follows the volumes to the Restore's phase.
//!
//! The backup is found through its records in the repositories, so a cluster that lost
//! every podvault object (but has the key Secrets back) can still restore.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, ObjectMeta, Patch};
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::aggregate::aggregate;
use crate::backups::{BackupRecord, announce, load_record};
use crate::cluster::{
    BACKUP_LABEL, Error, KEY_FIELD, KEY_LABEL, RESTORE_IN_PROGRESS, RESTORE_LABEL, Settings,
};
use crate::crd::{
    Phase, PodMatch, PodVolumeBackup, PodVolumeBackupSpec, PodVolumeRestore, PodVolumeRestoreSpec,
    PodVolumeStatus, Restore, RestoreStatus,
};
use crate::lineage::owner;
use crate::write::{CONTROLLER, applying, create_if_missing, updating};

const POLL: Duration = Duration::from_secs(10);

pub use podvault_api::pods::{DEFAULT_RESTORE_TIMEOUT as DEFAULT_TIMEOUT, restore_timeout};

/// The pod a PodVolumeRestore waits for, in words.
fn describe_target(target: &PodMatch) -> String {
    if let Some(name) = &target.pod_name {
        format!("pod {name}")
    } else if let Some(claim) = &target.claim {
        format!("pod mounting claim {claim}")
    } else if let Some(owner) = &target.owner {
        format!("pod of {owner}")
    } else {
        "pod".into()
    }
}

/// The name of the PodVolumeRestore of one volume (stable across attempts).
pub fn volume_object_name(restore: &str, namespace: &str, pod: &str, volume: &str) -> String {
    let hash = xxhash_rust::xxh3::xxh3_64(format!("{namespace}/{pod}/{volume}").as_bytes());
    let prefix: String = restore.chars().take(240).collect();
    format!("{prefix}-{:012x}", hash & 0xffff_ffff_ffff)
}

/// What a restore will do, computed from the backup's records: pure, so it is tested alone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RestorePlan {
    /// One per volume to restore.
    pub volumes: Vec<PodVolumeRestoreSpec>,
    /// Claims to create where missing, already moved to their target namespace.
    pub claims: Vec<PersistentVolumeClaim>,
    /// Pods to create where missing (only with `restorePods`, and only pods no
    /// controller owns: a workload's controller makes its own).
    pub pods: Vec<Pod>,
    /// The target namespaces.
    pub namespaces: BTreeSet<String>,
}

/// Plans a restore from the backup's records (one per source namespace).
pub fn plan_restore(restore: &Restore, records: &[(String, BackupRecord)]) -> RestorePlan {
    let spec = &restore.spec;
    let mut plan = RestorePlan::default();
    for (source, record) in records {
        let target = spec
            .namespace_mapping
            .get(source)
            .cloned()
            .unwrap_or_else(|| source.clone());
        for v in &record.volumes {
            let Some(status) = &v.status else { continue };
            let Some(snapshot) = &status.snapshot_id else {
                continue;
            };
            if !matches!(status.phase, Phase::Completed | Phase::PartiallyFailed) {
                continue;
            }
            if !spec.included_volumes.is_empty()
                && !spec
                    .included_volumes
                    .iter()
                    .any(|entry| names_volume(entry, source, &v.spec))
            {
                continue;
            }
            let pod = record
                .pods
                .iter()
                .find(|p| p.uid().as_deref() == Some(v.spec.pod.uid.as_str()));
            let workload = pod.map(owner).filter(|o| !o.starts_with("Pod/"));
            // A generic ephemeral volume's claim is the pod's own (`<pod>-<volume>`), made
            // and deleted with it: the new pod is recognised like a pod's other volumes,
            // its claim is made by the kubelet's side, never by the restore.
            let ephemeral = pod.is_some_and(|p| is_ephemeral(p, &v.spec.volume));
            let claim = v.spec.claim.as_ref().filter(|_| !ephemeral);
            let target_match = match (claim, workload) {
                (Some(claim), _) => PodMatch {
                    claim: Some(claim.clone()),
                    ..PodMatch::default()
                },
                (None, Some(workload)) if !spec.restore_pods => PodMatch {
                    owner: Some(workload),
                    ..PodMatch::default()
                },
                _ => PodMatch {
                    pod_name: Some(v.spec.pod.name.clone()),
                    ..PodMatch::default()
                },
            };
            plan.volumes.push(PodVolumeRestoreSpec {
                restore_name: restore.name_any(),
                restore_uid: restore.uid().unwrap_or_default(),
                target_namespace: target.clone(),
                target: target_match,
                volume: v.spec.volume.clone(),
                snapshot_id: snapshot.clone(),
                repository: source.clone(),
                pod: None,
                node: None,
                ephemeral,
                timeout: Some(restore.spec.timeout.unwrap_or(DEFAULT_TIMEOUT.into())),
            });
            plan.namespaces.insert(target.clone());
            if let Some(claim) = claim
                && let Some(pvc) = record.claims.iter().find(|c| &c.name_any() == claim)
                && !plan.claims.iter().any(|c| {
                    c.name_any() == *claim && c.namespace().as_deref() == Some(target.as_str())
                })
            {
                plan.claims.push(fresh_claim(pvc, &target));
            }
            if spec.restore_pods
                && let Some(pod) = pod
                && !pod
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.controller == Some(true))
                && !plan.pods.iter().any(|p| {
                    p.name_any() == pod.name_any() && p.namespace().as_deref() == Some(&target)
                })
            {
                plan.pods.push(fresh_pod(pod, &target));
            }
        }
    }
    plan
}

/// Whether `volume` of `pod` is a generic ephemeral volume (`spec.volumes[].ephemeral`).
pub fn is_ephemeral(pod: &Pod, volume: &str) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .and_then(|vs| vs.iter().find(|v| v.name == volume))
        .is_some_and(|v| v.ephemeral.is_some())
}

/// Checks an entry of a Restore's `includedVolumes`: `namespace/pod/volume` or
/// `namespace/claim`, with the backup's (source) namespace.
pub fn check_included_volume(entry: &str) -> Result<(), BadIncludedVolume> {
    let parts: Vec<&str> = entry.split('/').collect();
    if matches!(parts.len(), 2 | 3) && parts.iter().all(|p| !p.is_empty()) {
        Ok(())
    } else {
        Err(BadIncludedVolume {
            entry: entry.to_string(),
        })
    }
}

/// An `includedVolumes` entry that names no volume.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{entry:?} names no volume: use namespace/pod/volume or namespace/claim (the namespace \
     as backed up)"
)]
pub struct BadIncludedVolume {
    /// The entry as written.
    pub entry: String,
}

/// Whether an `includedVolumes` entry names the backed-up volume `volume` of namespace
/// `namespace`.
fn names_volume(entry: &str, namespace: &str, volume: &PodVolumeBackupSpec) -> bool {
    match entry.split('/').collect::<Vec<_>>()[..] {
        [ns, pod, name] => ns == namespace && pod == volume.pod.name && name == volume.volume,
        [ns, claim] => ns == namespace && volume.claim.as_deref() == Some(claim),
        _ => false,
    }
}

fn fresh_meta(meta: &ObjectMeta, namespace: &str) -> ObjectMeta {
    let annotations: BTreeMap<String, String> = meta
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| {
            !k.starts_with("pv.kubernetes.io/")
                && !k.starts_with("volume.kubernetes.io/selected-node")
                && k.as_str() != "kubectl.kubernetes.io/last-applied-configuration"
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    ObjectMeta {
        name: meta.name.clone(),
        namespace: Some(namespace.to_string()),
        labels: meta.labels.clone(),
        annotations: (!annotations.is_empty()).then_some(annotations),
        ..ObjectMeta::default()
    }
}

/// A claim as it is created again: same name, size, class and access modes, not bound to
/// the old volume (the provisioner makes a new one).
fn fresh_claim(pvc: &PersistentVolumeClaim, namespace: &str) -> PersistentVolumeClaim {
    let mut spec = pvc.spec.clone().unwrap_or_default();
    spec.volume_name = None;
    PersistentVolumeClaim {
        metadata: fresh_meta(&pvc.metadata, namespace),
        spec: Some(spec),
        status: None,
    }
}

/// A bare pod as it is created again: not bound to its old node.
fn fresh_pod(pod: &Pod, namespace: &str) -> Pod {
    let mut spec = pod.spec.clone().unwrap_or_default();
    spec.node_name = None;
    Pod {
        metadata: fresh_meta(&pod.metadata, namespace),
        spec: Some(spec),
        status: None,
    }
}

/// One reconcile of a Restore.
#[tracing::instrument(skip_all, fields(restore = %restore.name_any(), backup = %restore.spec.backup_name))]
pub async fn reconcile(
    restore: Arc<Restore>,
    client: &Client,
    settings: &Settings,
    now: Timestamp,
    events: Option<&Recorder>,
) -> Result<Action, Error> {
    let phase = restore.status.as_ref().map(|s| s.phase).unwrap_or_default();
    match phase {
        Phase::New => start(&restore, client, settings, now, events).await,
        Phase::InProgress => follow(&restore, client, settings, now, events).await,
        _ => Ok(Action::await_change()),
    }
}

async fn set_status(
    client: &Client,
    settings: &Settings,
    restore: &Restore,
    status: &RestoreStatus,
) -> Result<(), Error> {
    let api: Api<Restore> = Api::namespaced(client.clone(), &settings.namespace);
    api.patch_status(
        &restore.name_any(),
        &applying(CONTROLLER),
        &crate::write::status::<Restore>(status, None),
    )
    .await?;
    Ok(())
}

/// The source namespaces of a backup: from its PodVolumeBackups when the cluster has
/// them, else every namespace with a key Secret (a cluster rebuilt from the keys).
async fn source_namespaces(
    client: &Client,
    settings: &Settings,
    backup: &str,
) -> Result<Vec<String>, Error> {
    let pvbs: Api<PodVolumeBackup> = Api::namespaced(client.clone(), &settings.namespace);
    let mut namespaces: Vec<String> = pvbs
        .list(&ListParams::default().labels(&format!("{BACKUP_LABEL}={backup}")))
        .await?
        .items
        .into_iter()
        .map(|p| p.spec.repository)
        .collect();
    if namespaces.is_empty() {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
        namespaces = secrets
            .list(&ListParams::default().labels(KEY_LABEL))
            .await?
            .items
            .into_iter()
            .filter_map(|s| s.labels().get(KEY_LABEL).cloned())
            .collect();
    }
    namespaces.sort();
    namespaces.dedup();
    Ok(namespaces)
}

async fn records(
    client: &Client,
    settings: &Settings,
    backup: &str,
) -> Result<Vec<(String, BackupRecord)>, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let mut out = Vec::new();
    for namespace in source_namespaces(client, settings, backup).await? {
        let secret = secrets
            .get_opt(&crate::cluster::key_secret_name(&namespace))
            .await?;
        let Some(key) = secret
            .and_then(|s| s.data)
            .and_then(|d| d.get(KEY_FIELD).map(|k| k.0.clone()))
        else {
            tracing::warn!(
                "no key for namespace {namespace}'s repository: its volumes are left out"
            );
            continue;
        };
        match load_record(settings, &namespace, key, backup).await {
            Ok(Some(record)) => out.push((namespace, record)),
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}: its volumes are left out"),
        }
    }
    Ok(out)
}

async fn start(
    restore: &Restore,
    client: &Client,
    settings: &Settings,
    now: Timestamp,
    events: Option<&Recorder>,
) -> Result<Action, Error> {
    let backup = &restore.spec.backup_name;
    let mut status = RestoreStatus {
        phase: Phase::InProgress,
        start_timestamp: Some(Time(now)),
        ..RestoreStatus::default()
    };
    if let Some(message) = refusal(restore) {
        return fail_at_start(client, settings, restore, status, message, events).await;
    }
    let found = records(client, settings, backup).await?;
    if found.is_empty() {
        let message =
            format!("backup {backup} has no record in any repository this cluster has a key for");
        return fail_at_start(client, settings, restore, status, message, events).await;
    }
    let plan = plan_restore(restore, &found);
    create_objects(client, settings, restore, &plan).await?;
    status.volumes.total = plan.volumes.len() as u32;
    if plan.volumes.is_empty() {
        status.phase = Phase::Completed;
        status.completion_timestamp = Some(Time(now));
        status.message = Some("no volume of the backup matched".into());
    }
    set_status(client, settings, restore, &status).await?;
    announce(
        events,
        restore,
        false,
        "Started",
        format!(
            "{} volumes into namespaces {}",
            plan.volumes.len(),
            plan.namespaces
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .await;
    Ok(Action::requeue(POLL))
}

/// Why a Restore's spec cannot be acted on, if it cannot.
fn refusal(restore: &Restore) -> Option<String> {
    if let Err(e) = restore_timeout(restore.spec.timeout.as_ref()) {
        return Some(format!("spec.timeout: {e}"));
    }
    restore
        .spec
        .included_volumes
        .iter()
        .find_map(|v| check_included_volume(v).err())
        .map(|e| format!("spec.includedVolumes: {e}"))
}

/// Creates what a restore plan needs and the cluster lacks: its namespaces (labeled as
/// being restored into), claims, pods, and one PodVolumeRestore per volume.
async fn create_objects(
    client: &Client,
    settings: &Settings,
    restore: &Restore,
    plan: &RestorePlan,
) -> Result<(), Error> {
    let name = restore.name_any();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in &plan.namespaces {
        let labeled = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                labels: Some(BTreeMap::from([(
                    RESTORE_IN_PROGRESS.to_string(),
                    name.clone(),
                )])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        if !create_if_missing(CONTROLLER, &namespaces, &labeled).await? {
            namespaces
                .patch(
                    ns,
                    &updating(CONTROLLER),
                    &Patch::Merge(json!({"metadata": {"labels": {RESTORE_IN_PROGRESS: name}}})),
                )
                .await?;
        }
    }
    for claim in &plan.claims {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(
            client.clone(),
            claim.namespace().as_deref().unwrap_or_default(),
        );
        create_if_missing(CONTROLLER, &api, claim).await?;
    }
    for pod in &plan.pods {
        let api: Api<Pod> = Api::namespaced(
            client.clone(),
            pod.namespace().as_deref().unwrap_or_default(),
        );
        create_if_missing(CONTROLLER, &api, pod).await?;
    }
    let pvrs: Api<PodVolumeRestore> = Api::namespaced(client.clone(), &settings.namespace);
    let owner_ref = restore.controller_owner_ref(&());
    for spec in &plan.volumes {
        let who = spec
            .target
            .pod_name
            .clone()
            .or_else(|| spec.target.claim.clone())
            .or_else(|| spec.target.owner.clone())
            .unwrap_or_default();
        let object_name = volume_object_name(&name, &spec.target_namespace, &who, &spec.volume);
        let mut object = PodVolumeRestore::new(&object_name, spec.clone());
        object.metadata.labels = Some(BTreeMap::from([(RESTORE_LABEL.to_string(), name.clone())]));
        object.metadata.owner_references = owner_ref.clone().map(|o| vec![o]);
        create_if_missing(CONTROLLER, &pvrs, &object).await?;
    }
    Ok(())
}

/// Ends a Restore that cannot start, with the reason.
async fn fail_at_start(
    client: &Client,
    settings: &Settings,
    restore: &Restore,
    mut status: RestoreStatus,
    message: String,
    events: Option<&Recorder>,
) -> Result<Action, Error> {
    status.phase = Phase::Failed;
    status.completion_timestamp = status.start_timestamp.clone();
    status.message = Some(message.clone());
    set_status(client, settings, restore, &status).await?;
    announce(events, restore, true, "Failed", message).await;
    Ok(Action::await_change())
}

/// Why the pod a volume was being restored into can no longer receive it, if it cannot:
/// it is gone (or replaced by another of the same name), being deleted (a pod whose node
/// was lost stays so until the node comes back or someone forces it), or ended.
fn pod_lost(current: Option<&Pod>, uid: &str) -> Option<&'static str> {
    let Some(pod) = current.filter(|p| p.uid().as_deref() == Some(uid)) else {
        return Some("is gone");
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return Some("is being deleted (its node may be lost)");
    }
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Failed") => Some("has failed"),
        Some("Succeeded") => Some("has ended"),
        _ => None,
    }
}

/// Once the Restore's time limit has passed, marks Failed the volumes no pod took, and
/// those a node agent took whose pod can no longer receive them ([`pod_lost`]), so the
/// Restore ends. A volume whose pod still runs is its node's agent's to finish (an agent
/// that restarts takes its interrupted volumes again). A volume that changed meanwhile is
/// left alone: the patch carries the version read.
async fn fail_unclaimed(
    client: &Client,
    settings: &Settings,
    restore: &Restore,
    volumes: &mut [PodVolumeRestore],
    now: Timestamp,
) -> Result<(), Error> {
    let Ok(limit) = restore_timeout(restore.spec.timeout.as_ref()) else {
        return Ok(()); // refused at start; a later edit changes nothing
    };
    let text = crate::duration::human(limit);
    let Some(since) = restore
        .status
        .as_ref()
        .and_then(|s| s.start_timestamp.as_ref())
        .or(restore.metadata.creation_timestamp.as_ref())
    else {
        return Ok(());
    };
    if since.0 + limit > now {
        return Ok(());
    }
    let pvrs: Api<PodVolumeRestore> = Api::namespaced(client.clone(), &settings.namespace);
    for v in volumes.iter_mut() {
        let message = match v.status.as_ref().map(|s| s.phase) {
            None | Some(Phase::New) => format!(
                "no {} appeared in namespace {} within {text} (the Restore's spec.timeout)",
                describe_target(&v.spec.target),
                v.spec.target_namespace
            ),
            Some(Phase::InProgress) => {
                let Some(pod) = &v.spec.pod else { continue };
                let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
                let current = pods.get_opt(&pod.name).await?;
                let Some(why) = pod_lost(current.as_ref(), &pod.uid) else {
                    continue;
                };
                format!(
                    "pod {}/{}, whose volume was being restored, {why}; not finished within \
                     {text} (the Restore's spec.timeout)",
                    pod.namespace, pod.name
                )
            }
            Some(_) => continue,
        };
        let status = PodVolumeStatus {
            phase: Phase::Failed,
            completion_timestamp: Some(Time(now)),
            message: Some(message),
            ..PodVolumeStatus::default()
        };
        let version = v.resource_version();
        let patch = crate::write::status::<PodVolumeRestore>(&status, version.as_deref());
        match pvrs
            .patch_status(&v.name_any(), &applying(CONTROLLER), &patch)
            .await
        {
            Ok(_) => v.status = Some(status),
            // Changed since it was listed (taken, or finished, by a node agent): that
            // agent reports its end.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn follow(
    restore: &Restore,
    client: &Client,
    settings: &Settings,
    now: Timestamp,
    events: Option<&Recorder>,
) -> Result<Action, Error> {
    let name = restore.name_any();
    let pvrs: Api<PodVolumeRestore> = Api::namespaced(client.clone(), &settings.namespace);
    let mut volumes = pvrs
        .list(&ListParams::default().labels(&format!("{RESTORE_LABEL}={name}")))
        .await?
        .items;
    volumes.sort_by_key(|v| v.name_any());
    fail_unclaimed(client, settings, restore, &mut volumes, now).await?;
    let statuses: Vec<_> = volumes.iter().map(|v| v.status.as_ref()).collect();
    let totals = aggregate(&statuses, 0, false);
    let mut status = restore.status.clone().unwrap_or_default();
    status.volumes = totals.volumes;
    status.phase = totals.phase;
    if status.phase.is_final() {
        status.completion_timestamp = Some(Time(now));
        let problems: Vec<String> = volumes
            .iter()
            .filter_map(|v| {
                let s = v.status.as_ref()?;
                (s.phase != Phase::Completed).then(|| {
                    let mut line = format!(
                        "{} volume {}: {}",
                        v.spec.target_namespace,
                        v.spec.volume,
                        s.message.clone().unwrap_or_default()
                    );
                    if !s.failed_paths.is_empty() {
                        line.push_str(&format!(" ({})", s.failed_paths.join(", ")));
                    }
                    line
                })
            })
            .collect();
        if !problems.is_empty() {
            status.message = Some(problems.join("; "));
        }
        let targets: BTreeSet<&str> = volumes
            .iter()
            .map(|v| v.spec.target_namespace.as_str())
            .collect();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for ns in targets {
            let Some(n) = namespaces.get_opt(ns).await? else {
                continue;
            };
            if n.labels().get(RESTORE_IN_PROGRESS) == Some(&name) {
                namespaces
                    .patch(
                        ns,
                        &updating(CONTROLLER),
                        &Patch::Merge(json!({"metadata": {"labels": {RESTORE_IN_PROGRESS: null}}})),
                    )
                    .await?;
            }
        }
    }
    if Some(&status) != restore.status.as_ref() {
        set_status(client, settings, restore, &status).await?;
    }
    if status.phase.is_final() {
        let warning = status.phase != Phase::Completed;
        let note = status
            .message
            .clone()
            .unwrap_or_else(|| format!("{} volumes restored", status.volumes.completed));
        announce(
            events,
            restore,
            warning,
            &format!("{:?}", status.phase),
            note,
        )
        .await;
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(POLL))
}

/// Runs the restore controller until a termination signal.
pub async fn run(client: Client, settings: Settings, events: Recorder) {
    use futures_util::StreamExt;
    use kube::runtime::{Controller, watcher};
    let restores: Api<Restore> = Api::namespaced(client.clone(), &settings.namespace);
    let pvrs: Api<PodVolumeRestore> = Api::namespaced(client.clone(), &settings.namespace);
    let ctx = Arc::new(crate::cluster::Context {
        client,
        settings,
        events: Some(events),
    });
    Controller::new(restores, watcher::Config::default())
        .owns(pvrs, watcher::Config::default())
        .shutdown_on_signal()
        .run(
            |restore, ctx| async move {
                let crate::cluster::Context {
                    client,
                    settings,
                    events,
                } = &*ctx;
                reconcile(restore, client, settings, Timestamp::now(), events.as_ref()).await
            },
            |restore, error, _| {
                tracing::warn!(restore = %restore.name_any(), "{error}");
                Action::requeue(Duration::from_secs(15))
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}
