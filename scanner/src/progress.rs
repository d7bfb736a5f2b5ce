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

    /// A copy of the counters: (files done, bytes done, files total, bytes total, totals known).
    pub fn read(&self) -> (u64, u64, u64, u64, bool) {
        (
            self.files_done.load(Ordering::Relaxed),
            self.bytes_done.load(Ordering::Relaxed),
            self.files_total.load(Ordering::Relaxed),
            self.bytes_total.load(Ordering::Relaxed),
            self.totals_known.load(Ordering::Relaxed),
        )
    }
}
