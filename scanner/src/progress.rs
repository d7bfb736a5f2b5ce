//! Progress counters shared between the pipeline and whoever displays them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Live counters of a backup or a restore. Totals are filled in by a parallel pre-scan (backup)
/// or from the snapshot (restore); `totals_known` says when they are final.
#[derive(Debug, Default)]
pub struct Progress {
    /// Files finished.
    pub files_done: AtomicU64,
    /// Bytes finished (read, or reused unchanged from the parent).
    pub bytes_done: AtomicU64,
    /// Files expected.
    pub files_total: AtomicU64,
    /// Bytes expected.
    pub bytes_total: AtomicU64,
    /// Whether the totals are complete.
    pub totals_known: AtomicBool,
    /// Bytes of new data stored so far (backup), before compression.
    pub bytes_new: AtomicU64,
}

impl Progress {
    pub(crate) fn add_done(&self, files: u64, bytes: u64) {
        self.files_done.fetch_add(files, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Sets the totals, known from the start (a restore knows them from its snapshot).
    pub(crate) fn set_totals(&self, files: u64, bytes: u64) {
        self.files_total.store(files, Ordering::Relaxed);
        self.bytes_total.store(bytes, Ordering::Relaxed);
        self.totals_known.store(true, Ordering::Relaxed);
    }

    /// A copy of the counters.
    pub fn read(&self) -> ProgressCounts {
        ProgressCounts {
            files_done: self.files_done.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            files_total: self.files_total.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            totals_known: self.totals_known.load(Ordering::Relaxed),
        }
    }
}

/// The counters of a [`Progress`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgressCounts {
    /// Files finished.
    pub files_done: u64,
    /// Bytes finished.
    pub bytes_done: u64,
    /// Files expected.
    pub files_total: u64,
    /// Bytes expected.
    pub bytes_total: u64,
    /// Whether the totals are complete.
    pub totals_known: bool,
}
