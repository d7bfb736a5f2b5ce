//! The podvault pipeline: back up a directory into a [`Repository`] and restore it.
//!
//! The backup walks the source in parallel (one directory per unit of work, never following
//! symlinks, recording mount points without entering them), reuses unchanged files from the
//! parent snapshot without reading them, and chunks, hashes, compresses and seals changed
//! files on all cores. The snapshot depends only on the source, not on the thread count.
//! Memory is bounded by the options, not by the input.
//!
//! ```no_run
//! use std::sync::Arc;
//! use podvault_store::{DirBackend, Repository};
//! use podvault_scanner::{backup, restore, BackupOptions, RestoreOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let repo = Repository::open(Arc::new(DirBackend::new("/backups/repo")), b"secret")?;
//! let report = backup(&repo, &BackupOptions::new("/data"))?;
//! restore(&repo, &report.snapshot, &RestoreOptions::new("/restore"))?;
//! # Ok(()) }
//! ```
//!
//! [`Repository`]: podvault_store::Repository

mod backup;
mod error;
mod exclude;
mod fastpath;
mod mapped;
mod meta;
mod progress;
mod restore;

pub use backup::{BackupOptions, BackupReport, FileHook, ParentChoice, Unreadable, backup};
pub use error::{Error, Result};
pub use exclude::Excludes;
pub use progress::{Progress, ProgressCounts};
pub use restore::{RestoreOptions, RestoreReport, restore};

/// Files at least this large are read through a memory map; smaller ones with `read`.
pub const MMAP_MIN_BYTES: u64 = 1024 * 1024;

/// Whether every byte is zero (16-byte blocks folded so the compiler vectorises, stopping
/// at the first non-zero block).
pub(crate) fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(16);
    words.all(|w| w.iter().fold(0u8, |acc, &b| acc | b) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}
