//! The custom resources of group `podvault.io`, derived from these Rust types. Names follow
//! Velero's (Backup, Restore, PodVolumeBackup, PodVolumeRestore, BackupRepository) so that
//! Velero users find their way.

// Each `printcolumn(...)` of the derive repeats the same keys, which clippy takes for
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// The API group.
pub const GROUP: &str = "podvault.io";

/// Where a Backup, Restore or per-volume operation stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Accepted, not started.
    #[default]
    New,
    /// Running.
    InProgress,
    /// Done, everything succeeded.
    Completed,
    /// Done, some volumes failed (they are listed).
    PartiallyFailed,
    /// Done, nothing usable.
    Failed,
    /// Stopped on request.
    Canceled,
}

impl Phase {
    /// Whether the operation has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Phase::Completed | Phase::PartiallyFailed | Phase::Failed | Phase::Canceled
        )
    }
}

/// A backup of the pod volumes of some namespaces.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "podvault.io",
    version = "v1alpha1",
    kind = "Backup",
    doc = "A backup of the pod volumes of some namespaces",
    namespaced,
    status = "BackupStatus",
    shortname = "pvbk",
    category = "podvault",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Volumes",
        type_ = "integer",
        json_path = ".status.volumes.total"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.volumes.failed"
    ),
    printcolumn(name = "Bytes", type_ = "integer", json_path = ".status.bytesDone"),
    printcolumn(name = "Expires", type_ = "date", json_path = ".status.expiration"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Namespaces to back up (`*` or empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_namespaces: Vec<String>,
    /// Namespaces left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_namespaces: Vec<String>,
    /// Only pods with these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// Back up every volume unless a pod opts out (default: only volumes pods opt in).
    #[serde(default)]
    pub default_volumes_to_fs_backup: bool,
    /// How long to keep the backup (`720h`); forgotten after that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::duration::schema")]
    pub ttl: Option<Duration>,
    /// Time limit of each volume (`4h` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::duration::schema")]
    pub timeout: Option<Duration>,
    /// Set to stop the backup: running volumes end `Canceled`.
    #[serde(default)]
    pub cancel: bool,
}

/// Counts of a backup's or restore's volumes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct VolumeCounts {
    /// Volumes to process.
    pub total: u32,
    /// Volumes done.
    pub completed: u32,
    /// Volumes failed.
    pub failed: u32,
    /// Volumes canceled.
    pub canceled: u32,
    /// Volumes left out (with reasons in `skipped`).
    pub skipped: u32,
}

/// A volume not backed up, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkippedVolume {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod.
    pub pod: String,
    /// The volume's name in the pod.
    pub volume: String,
    /// Why it was left out.
    pub reason: String,
}

/// What a Backup has done.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// Where it stands.
    #[serde(default)]
    pub phase: Phase,
    /// Volume counts.
    #[serde(default)]
    pub volumes: VolumeCounts,
    /// Bytes of the volumes to read.
    #[serde(default)]
    pub total_bytes: u64,
    /// Bytes read so far.
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes that were new (stored).
    #[serde(default)]
    pub bytes_new: u64,
    /// Volumes left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedVolume>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
    /// When its TTL runs out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Time>,
    /// What went wrong, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The pod a volume operation is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (the kubelet's directory of the pod).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// Bytes of a volume operation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase")]
pub struct Progress {
    /// Bytes to process.
    pub total_bytes: u64,
    /// Bytes processed.
    pub bytes_done: u64,
    /// Bytes that were new (backups).
    #[serde(default)]
    pub bytes_new: u64,
}

/// The backup of one volume of one pod, done by the node agent of `spec.node`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "podvault.io",
    version = "v1alpha1",
    kind = "PodVolumeBackup",
    doc = "The backup of one volume of one pod, done by the node agent of spec.node",
    namespaced,
    status = "PodVolumeStatus",
    shortname = "pvb",
    category = "podvault",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Pod", type_ = "string", json_path = ".spec.pod.name"),
    printcolumn(name = "Volume", type_ = "string", json_path = ".spec.volume"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(
        name = "Done",
        type_ = "integer",
        json_path = ".status.progress.bytesDone"
    ),
    printcolumn(
        name = "Total",
        type_ = "integer",
        json_path = ".status.progress.totalBytes"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeBackupSpec {
    /// The Backup this belongs to.
    pub backup_name: String,
    /// The node whose agent does the work.
    pub node: String,
    /// The pod.
    pub pod: PodRef,
    /// The volume's name in the pod.
    pub volume: String,
    /// The claim, for PVC volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// The BackupRepository to write to.
    pub repository: String,
    /// What identifies earlier backups of the same data, for the parent snapshot: the claim
    /// for PVC volumes, else the owner workload and volume name.
    pub lineage: String,
    /// Paths inside the volume to leave out (globs relative to the volume).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_paths: Vec<String>,
    /// Snapshot tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Time limit (`4h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::duration::schema")]
    pub timeout: Option<Duration>,
    /// Set to stop.
    #[serde(default)]
    pub cancel: bool,
}

/// What a PodVolumeBackup or PodVolumeRestore has done.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeStatus {
    /// Where it stands.
    #[serde(default)]
    pub phase: Phase,
    /// Bytes.
    #[serde(default)]
    pub progress: Progress,
    /// The snapshot written (backups) or read (restores).
    #[serde(
        default,
        rename = "snapshotID",
        skip_serializing_if = "Option::is_none"
    )]
    pub snapshot_id: Option<String>,
    /// What went wrong, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Paths whose ownership or permissions could not be restored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_paths: Vec<String>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
}

/// A restore of a backup's volumes.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "podvault.io",
    version = "v1alpha1",
    kind = "Restore",
    doc = "A restore of a backup's volumes",
    namespaced,
    status = "RestoreStatus",
    shortname = "pvrs",
    category = "podvault",
    printcolumn(name = "Backup", type_ = "string", json_path = ".spec.backupName"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Volumes",
        type_ = "integer",
        json_path = ".status.volumes.total"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.volumes.failed"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// The Backup to restore from.
    pub backup_name: String,
    /// Restore namespace A into B (`A: B`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_mapping: BTreeMap<String, String>,
    /// Only these volumes (`namespace/pod/volume` or `namespace/claim`, the namespace as
    /// backed up); empty: all. Any other form fails the Restore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_volumes: Vec<String>,
    /// Re-create the backed-up pods too (else only missing claims; pods come from their
    /// owners or whoever creates them).
    #[serde(default)]
    pub restore_pods: bool,
    /// How long a volume may wait for its pod to appear (`30m`, `4h`; default 4h, as
    /// Velero's pod volume operation timeout). A volume no pod took by then is marked
    /// Failed, so the Restore ends instead of waiting for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::duration::schema")]
    pub timeout: Option<Duration>,
}

/// What a Restore has done.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// Where it stands.
    #[serde(default)]
    pub phase: Phase,
    /// Volume counts.
    #[serde(default)]
    pub volumes: VolumeCounts,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
    /// What went wrong, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How a new pod is recognised as the target of a PodVolumeRestore.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodMatch {
    /// Pods restored by name: this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// PVC volumes: any new pod that mounts this claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// Other volumes of controller-made pods: the owner workload (`Kind/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The restore of one volume's snapshot into a (new) pod's volume.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "podvault.io",
    version = "v1alpha1",
    kind = "PodVolumeRestore",
    doc = "The restore of one volume's snapshot into a pod's volume",
    namespaced,
    status = "PodVolumeStatus",
    shortname = "pvr",
    category = "podvault",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Namespace",
        type_ = "string",
        json_path = ".spec.targetNamespace"
    ),
    printcolumn(name = "Volume", type_ = "string", json_path = ".spec.volume"),
    printcolumn(
        name = "Done",
        type_ = "integer",
        json_path = ".status.progress.bytesDone"
    ),
    printcolumn(
        name = "Total",
        type_ = "integer",
        json_path = ".status.progress.totalBytes"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeRestoreSpec {
    /// The Restore this belongs to.
    pub restore_name: String,
    /// The Restore's UID: the name of the marker the restore helper waits for.
    #[serde(default)]
    pub restore_uid: String,
    /// The namespace the pod is restored into.
    pub target_namespace: String,
    /// How the target pod is recognised.
    pub target: PodMatch,
    /// The volume's name in the pod.
    pub volume: String,
    /// The snapshot to restore.
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    /// The BackupRepository to read from.
    pub repository: String,
    /// The target pod, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// The node whose agent does the work, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The volume is a generic ephemeral volume: its claim is the target pod's
    /// `<pod>-<volume>`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
    /// The Restore's time limit (Go duration): the restore helper gives up after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::duration::schema")]
    pub timeout: Option<Duration>,
}

/// One repository per namespace, in the object store.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "podvault.io",
    version = "v1alpha1",
    kind = "BackupRepository",
    doc = "One namespace's repository in the object store",
    namespaced,
    status = "BackupRepositoryStatus",
    shortname = "pvrepo",
    category = "podvault",
    printcolumn(
        name = "Namespace",
        type_ = "string",
        json_path = ".spec.volumeNamespace"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Location", type_ = "string", json_path = ".spec.location"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositorySpec {
    /// The namespace whose volumes it holds.
    pub volume_namespace: String,
    /// `s3://bucket/prefix/podvault/<namespace>`.
    pub location: String,
    /// The Secret (in the install namespace) holding the repository's random key.
    pub key_secret: String,
}

/// Where a repository stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RepositoryPhase {
    /// Not yet initialised.
    #[default]
    New,
    /// Initialised and reachable.
    Ready,
    /// Unreachable or damaged (see the message).
    NotReady,
}

/// What is known of a repository.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositoryStatus {
    /// Where it stands.
    #[serde(default)]
    pub phase: RepositoryPhase,
    /// Why it is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it was last pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_maintenance: Option<Time>,
}

/// Every CRD, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        Backup::crd(),
        Restore::crd(),
        PodVolumeBackup::crd(),
        PodVolumeRestore::crd(),
        BackupRepository::crd(),
    ]
}

/// Every CRD as one multi-document YAML stream, as `podvault crds` prints it.
pub fn yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::from(
        "# podvault's custom resource definitions; generated by `podvault crds`, do not edit.\n",
    );
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
