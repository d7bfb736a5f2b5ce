//! Snapshots: the root of one backup and what it cost.

use serde::{Deserialize, Serialize};

use crate::{Node, SnapshotId, TreeId};

/// Statistics of one backup run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// When the backup started.
    pub started: Option<chrono::DateTime<chrono::Utc>>,
    /// Wall time of the backup in milliseconds.
    pub duration_ms: u64,
    /// Regular files in the snapshot.
    pub files: u64,
    /// Files not in the parent snapshot.
    pub files_new: u64,
    /// Files in the parent that changed.
    pub files_changed: u64,
    /// Files reused from the parent without reading them.
    pub files_unmodified: u64,
    /// Directories in the snapshot.
    pub dirs: u64,
    /// Other nodes (symlinks, devices, FIFOs, sockets).
    pub others: u64,
    /// Sum of file sizes in the snapshot.
    pub bytes_total: u64,
    /// Bytes read from files this run.
    pub bytes_read: u64,
    /// Bytes of changed files recognised by the fast path (chunks of the previous version
    /// found in place by fingerprint, neither cut nor hashed with BLAKE3).
    #[serde(default)]
    pub bytes_fast: u64,
    /// Plaintext bytes of blobs that were new to the repository.
    pub bytes_new: u64,
    /// Bytes of new blobs after compression and sealing (what the repository grew by).
    pub bytes_stored: u64,
    /// Blobs new to the repository.
    pub blobs_new: u64,
    /// Files or directories that could not be read (the snapshot lacks them).
    pub errors: u64,
}

/// One backup of one source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the snapshot was taken.
    pub time: chrono::DateTime<chrono::Utc>,
    /// Host name of the machine that took it.
    pub host: String,
    /// The backed-up directory as given (absolute).
    pub source: String,
    /// User-given tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The snapshot used as a parent for change detection, if any.
    #[serde(default)]
    pub parent: Option<SnapshotId>,
    /// The root tree: the source directory's listing.
    pub tree: TreeId,
    /// The source directory's own metadata (owner, mode, times, xattrs), restored onto the
    /// target directory. Its name is empty and its `subtree` is `tree`.
    pub root: Node,
    /// Who ran it.
    pub username: String,
    /// Version of podvault that wrote it.
    pub program_version: String,
    /// What it cost.
    pub summary: Summary,
}

pub(crate) fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

pub(crate) fn username() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid {}", rustix::process::getuid().as_raw()))
}

/// This host's name, as recorded in snapshots.
pub fn this_host() -> String {
    hostname()
}

/// The user running this process, as recorded in snapshots.
pub fn this_user() -> String {
    username()
}
