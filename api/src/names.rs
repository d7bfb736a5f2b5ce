//! The names users and other programs see: labels, annotations, finalizers, Secret fields,
//! snapshot tags and the restore helper's names. Changing one breaks existing clusters.

/// Label on PodVolumeBackups: the Backup they belong to.
pub const BACKUP_LABEL: &str = "podvault.io/backup-name";
/// Label on PodVolumeRestores: the Restore they belong to.
pub const RESTORE_LABEL: &str = "podvault.io/restore-name";
/// Label on PodVolumeBackups: the node whose agent does the work.
pub const NODE_LABEL: &str = "podvault.io/node";
/// Label on the key Secrets: the namespace whose repository the key opens.
pub const KEY_LABEL: &str = "podvault.io/repository-key";
/// Label on a namespace while a restore into it runs; the webhook is called only there.
pub const RESTORE_IN_PROGRESS: &str = "podvault.io/restore-in-progress";
/// The Secret field holding a repository's key.
pub const KEY_FIELD: &str = "repository-password";
/// The finalizer on Backups: their snapshots are forgotten before the object goes.
pub const BACKUP_FINALIZER: &str = "podvault.io/forget-snapshots";

/// Opt-in annotations: a comma-separated list of volume names (podvault's, then Velero's).
pub const OPT_IN: [&str; 2] = [
    "backup.podvault.io/backup-volumes",
    "backup.velero.io/backup-volumes",
];
/// Opt-out annotations, honoured with `defaultVolumesToFsBackup`.
pub const OPT_OUT: [&str; 2] = [
    "backup.podvault.io/backup-volumes-excludes",
    "backup.velero.io/backup-volumes-excludes",
];
/// Paths inside volumes to leave out: comma-separated globs relative to the volume, each
/// optionally prefixed by `VOLUME:` to apply to that volume only.
pub const EXCLUDE_PATHS: &str = "backup.podvault.io/exclude-paths";
/// Pod annotation: the time limit of each of the pod's volume backups (a Go duration such
/// as `8h`), overriding the Backup's `timeout`.
pub const TIMEOUT: &str = "backup.podvault.io/timeout";

/// The name of the restore helper's init container.
pub const RESTORE_HELPER: &str = "restore-wait";
/// Node annotation: how many volumes this node's agent works on at a time, overriding
/// `--concurrency` (for nodes with more cores or faster disks than the rest).
pub const CONCURRENCY_ANNOTATION: &str = "podvault.io/node-agent-concurrency";

/// The snapshot tag that carries a volume's lineage (`lineage` in the controller crate).
pub const LINEAGE_TAG: &str = "lineage=";
/// The directory, inside a restored volume, that holds restore markers: `<restore-uid>`
/// when the volume is restored, `<restore-uid>.failed` (holding the reason) when its
/// restore failed, so the helper needs no access to the Kubernetes API.
pub const MARKER_DIR: &str = ".podvault";

/// The emptyDir volume the webhook adds to a pod it gives the restore helper: the node
/// agent writes each volume's markers into `<volume>/` of it, where the helper can read
/// them whatever the restored volume's owner and mode. Mounted in the helper at
/// [`POD_MARKERS_MOUNT`].
pub const POD_MARKERS: &str = "podvault-restore-markers";

/// Where the helper mounts [`POD_MARKERS`] (volumes are at `/restores/<name>`, and a
/// volume's name cannot start with a dot).
pub const POD_MARKERS_MOUNT: &str = "/restores/.markers";
