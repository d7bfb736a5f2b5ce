//! Human and JSON output, and the terminal progress bar.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use podvault_scanner::{BackupReport, Progress};
use podvault_store::{CheckReport, PruneReport, Snapshot, SnapshotId};

/// Standard output can take no more: its reader is gone, or writing failed.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
/// Writing to standard output failed for another reason than a reader that went away.
static STDOUT_FAILED: AtomicBool = AtomicBool::new(false);

/// Writes to standard output (see `outln!`).
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        stdout_closed(&e);
    }
}

fn stdout_closed(e: &std::io::Error) {
    STDOUT_CLOSED.store(true, Ordering::Relaxed);
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        STDOUT_FAILED.store(true, Ordering::Relaxed);
        write_stderr(format_args!(
            "podvault: error: writing to standard output: {e}\n"
        ));
    }
}

/// Writes to standard error, dropping the text if that fails.
pub fn write_stderr(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// Whether writing to standard output failed (other than by its reader going away). Output
/// still buffered is flushed first, so a failure at the very end is seen.
pub fn stdout_failed() -> bool {
    if !STDOUT_CLOSED.load(Ordering::Relaxed)
        && let Err(e) = std::io::stdout().lock().flush()
    {
        stdout_closed(&e);
    }
    STDOUT_FAILED.load(Ordering::Relaxed)
}

pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Bytes in binary units.
pub fn bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

/// Total file bytes per byte newly stored; `None` when nothing was stored.
pub fn dedup_ratio(s: &Snapshot) -> Option<f64> {
    (s.summary.bytes_stored > 0)
        .then(|| s.summary.bytes_total as f64 / s.summary.bytes_stored as f64)
}

pub fn created(report: &BackupReport) {
    let s = &report.snapshot.summary;
    outln!(
        "snapshot {} saved: {} files ({} new, {} changed, {} unmodified), {} dirs, {} in {:.2} s",
        report.id.short(),
        s.files,
        s.files_new,
        s.files_changed,
        s.files_unmodified,
        s.dirs,
        bytes(s.bytes_total),
        s.duration_ms as f64 / 1000.0
    );
    outln!(
        "read {} ({} of it found unchanged by fingerprint), new data {} stored as {}",
        bytes(s.bytes_read),
        bytes(s.bytes_fast),
        bytes(s.bytes_new),
        bytes(s.bytes_stored)
    );
    if !report.unreadable.is_empty() {
        outln!(
            "{} entries could not be read and are not in the snapshot:",
            report.unreadable.len()
        );
        for u in &report.unreadable {
            outln!("  {}: {}", u.path, u.error);
        }
    }
}

pub fn list(snaps: &[(SnapshotId, Snapshot)], damaged: &[podvault_store::DamagedSnapshot]) {
    outln!(
        "{:<10} {:<20} {:<16} {:>10}  {:<24} tags",
        "id",
        "time",
        "host",
        "size",
        "source"
    );
    for (id, s) in snaps {
        outln!(
            "{:<10} {:<20} {:<16} {:>10}  {:<24} {}",
            id.short(),
            s.time.format("%Y-%m-%d %H:%M:%S"),
            s.host,
            bytes(s.summary.bytes_total),
            s.source,
            s.tags.join(",")
        );
    }
    for d in damaged {
        outln!("{:<10} DAMAGED: {}", d.id.short(), d.reason);
    }
    outln!("{} snapshots", snaps.len());
    if !damaged.is_empty() {
        outln!(
            "{} snapshot files cannot be read: `podvault snapshot forget ID` removes one that \
             cannot be recovered (repo prune refuses to run while they are there)",
            damaged.len()
        );
    }
}

pub fn show(id: &SnapshotId, s: &Snapshot) {
    let m = &s.summary;
    outln!("snapshot   {id}");
    outln!("time       {}", s.time.to_rfc3339());
    outln!("host       {}", s.host);
    outln!("source     {}", s.source);
    outln!("tags       {}", s.tags.join(", "));
    outln!(
        "parent     {}",
        s.parent
            .map(|p| p.to_hex())
            .unwrap_or_else(|| "none".into())
    );
    outln!("tree       {}", s.tree);
    outln!(
        "files      {} ({} new, {} changed, {} unmodified)",
        m.files,
        m.files_new,
        m.files_changed,
        m.files_unmodified
    );
    outln!("dirs       {}   other {}", m.dirs, m.others);
    outln!("bytes      {}", bytes(m.bytes_total));
    outln!(
        "read       {} ({} found unchanged by fingerprint)",
        bytes(m.bytes_read),
        bytes(m.bytes_fast)
    );
    outln!(
        "new bytes  {} (stored as {})",
        bytes(m.bytes_new),
        bytes(m.bytes_stored)
    );
    match dedup_ratio(s) {
        Some(r) => outln!("dedup      {r:.2}x (file bytes per byte stored)"),
        None => outln!("dedup      nothing new stored"),
    }
    outln!("duration   {:.2} s", m.duration_ms as f64 / 1000.0);
    outln!("errors     {}", m.errors);
}

pub fn check(r: &CheckReport) {
    outln!(
        "checked {} snapshots, {} trees, {} packs, {} blobs{}",
        r.snapshots,
        r.trees,
        r.packs,
        r.blobs,
        if r.blobs_read > 0 {
            format!(" ({} blobs read and verified)", r.blobs_read)
        } else {
            String::new()
        }
    );
    if r.unindexed_packs > 0 {
        outln!(
            "{} packs are not indexed (left by an interrupted backup; harmless)",
            r.unindexed_packs
        );
    }
    if r.is_ok() {
        outln!("no errors");
        return;
    }
    for p in &r.problems {
        outln!("error: {} {}", p.object, p.message);
        for a in &p.affected {
            outln!("  affects {a}");
        }
    }
    outln!("{} errors", r.problems.len());
}

/// Prints what a prune did (or, dry, would do): JSON, or words.
pub fn print_prune(as_json: bool, report: &PruneReport) -> anyhow::Result<()> {
    if as_json {
        return json(report);
    }
    prune(report);
    Ok(())
}

fn prune(report: &PruneReport) {
    let verb = if report.dry_run { "would " } else { "" };
    outln!(
        "{} snapshots use the data; {} packs examined: {} unused, {} mostly unused",
        report.snapshots,
        report.packs,
        report.packs_unused,
        report.packs_repacked
    );
    outln!(
        "{verb}repack {} blobs ({}); {verb}mark {} packs for deletion",
        report.blobs_repacked,
        bytes(report.bytes_repacked),
        report.packs_marked
    );
    if !report.dry_run {
        outln!(
            "deleted {} packs, freeing {}; kept {} marked packs still in use; rewrote {} index files",
            report.packs_deleted,
            bytes(report.bytes_freed),
            report.packs_rescued,
            report.index_files_rewritten
        );
    }
    if report.partials_removed > 0 {
        outln!(
            "{}removed {} temporary files of writes interrupted over a day ago ({})",
            if report.dry_run { "would have " } else { "" },
            report.partials_removed,
            bytes(report.partial_bytes)
        );
    }
    if report.packs_running > 0 {
        outln!(
            "left {} packs of running backups alone (no snapshot names them yet)",
            report.packs_running
        );
    }
    if !report.waiting_for.is_empty() {
        outln!(
            "some deletions wait for {} running sessions to end ({}); run prune again later",
            report.waiting_for.len(),
            report.waiting_for.join(", ")
        );
    }
    for name in &report.unreadable_sessions {
        outln!(
            "session {name} cannot be read (damaged, or written by a newer podvault) and counts \
             as running: if no process uses it, remove it with `podvault repo sessions --remove {}`",
            &name[..name.len().min(8)]
        );
    }
}

/// A terminal progress bar fed from the pipeline's counters.
pub struct ProgressBar {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ProgressBar {
    pub fn start(progress: Arc<Progress>, what: &'static str) -> ProgressBar {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let bar = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} {msg} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(what);
            while !flag.load(Ordering::Relaxed) {
                let now = progress.read();
                let (done, total) = (now.bytes_done, now.bytes_total);
                bar.set_length(if now.totals_known {
                    total
                } else {
                    total.max(done)
                });
                bar.set_position(done);
                bar.set_message(format!("{}/{} files", now.files_done, now.files_total));
                std::thread::sleep(Duration::from_millis(100));
            }
            bar.finish_and_clear();
        });
        ProgressBar {
            stop,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
