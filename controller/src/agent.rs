//! The node agent's work on one volume, independent of how the request arrives: back up a
//! pod volume's directory with the right parent, reporting progress, honouring cancel and
//! a time limit; restore a snapshot into a volume and leave the marker `restore-wait`
//! waits for; and `restore-wait` itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use podvault_scanner::{BackupOptions, ParentChoice, Progress as ScanProgress, RestoreOptions};
use podvault_store::Repository;

use crate::crd::{Phase, PodVolumeStatus, Progress};
pub use podvault_api::names::{LINEAGE_TAG, MARKER_DIR, POD_MARKERS, POD_MARKERS_MOUNT};

/// One volume to back up.
#[derive(Clone, Debug)]
pub struct VolumeBackup {
    /// The volume's directory on the node (from [`crate::hostpath::resolve`]).
    pub dir: PathBuf,
    /// Its lineage: the parent is the latest snapshot of the same lineage.
    pub lineage: String,
    /// Paths to leave out.
    pub exclude: Vec<String>,
    /// More snapshot tags (backup name, pod, namespace).
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot (the node).
    pub host: String,
    /// Time limit.
    pub timeout: Duration,
    /// How often progress is reported.
    pub report_every: Duration,
}

fn status(phase: Phase, message: Option<String>) -> PodVolumeStatus {
    PodVolumeStatus {
        phase,
        message,
        ..PodVolumeStatus::default()
    }
}

fn progress_of(p: &ScanProgress) -> Progress {
    let now = p.read();
    Progress {
        total_bytes: now.bytes_total.max(now.bytes_done),
        bytes_done: now.bytes_done,
        bytes_new: p.bytes_new.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// Backs up one volume. `cancel` stops it (the result is `Canceled`); `report` is called
/// with the progress every `report_every` while it runs. The result is the final status.
pub fn back_up_volume(
    repo: &Repository,
    job: &VolumeBackup,
    cancel: &Arc<AtomicBool>,
    mut report: impl FnMut(&Progress),
) -> PodVolumeStatus {
    if cancel.load(Ordering::Acquire) {
        // Asked before the engine started: a quick backup could finish before it looks.
        return status(Phase::Canceled, Some("canceled before it started".into()));
    }
    let lineage_tag = format!("{LINEAGE_TAG}{}", job.lineage);
    let parent = match repo.snapshots() {
        Ok(all) => all
            .into_iter()
            .rfind(|(_, s)| s.tags.contains(&lineage_tag))
            .map(|(id, _)| ParentChoice::Id(id))
            .unwrap_or(ParentChoice::None),
        Err(e) => return status(Phase::Failed, Some(format!("listing snapshots: {e}"))),
    };
    let progress = Arc::new(ScanProgress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut options = BackupOptions::new(&job.dir);
    options.parent = parent;
    options.exclude = job.exclude.clone();
    options.host = job.host.clone();
    options.tags = std::iter::once(lineage_tag)
        .chain(job.tags.clone())
        .collect();
    options.progress = Some(progress.clone());
    options.cancel = Some(stop.clone());
    let started = Instant::now();
    let mut timed_out = false;
    let result = std::thread::scope(|scope| {
        let worker = scope.spawn(|| podvault_scanner::backup(repo, &options));
        let mut last = Instant::now();
        while !worker.is_finished() {
            std::thread::sleep(Duration::from_millis(20));
            if cancel.load(Ordering::Acquire) {
                stop.store(true, Ordering::Release);
            }
            if started.elapsed() > job.timeout && !timed_out {
                timed_out = true;
                stop.store(true, Ordering::Release);
            }
            if last.elapsed() >= job.report_every {
                report(&progress_of(&progress));
                last = Instant::now();
            }
        }
        worker.join()
    });
    match result {
        Ok(result) => outcome(result, timed_out.then_some(job.timeout), &progress),
        Err(_) => status(Phase::Failed, Some("the backup thread panicked".into())),
    }
}

/// A volume backup's status from the engine's result; `timed_out` is the limit when the
/// backup was stopped for taking longer.
fn outcome(
    result: podvault_scanner::Result<podvault_scanner::BackupReport>,
    timed_out: Option<Duration>,
    progress: &ScanProgress,
) -> PodVolumeStatus {
    match result {
        Ok(done) => {
            let summary = &done.snapshot.summary;
            let mut st = status(Phase::Completed, None);
            st.snapshot_id = Some(done.id.to_hex());
            st.progress = Progress {
                total_bytes: summary.bytes_total,
                bytes_done: summary.bytes_total,
                bytes_new: summary.bytes_new,
            };
            if !done.unreadable.is_empty() {
                st.phase = Phase::PartiallyFailed;
                st.failed_paths = done.unreadable.iter().map(|u| u.path.clone()).collect();
                st.message = Some(format!(
                    "{} files could not be read and were left out",
                    done.unreadable.len()
                ));
            }
            st
        }
        Err(podvault_scanner::Error::Canceled { .. }) if let Some(limit) = timed_out => {
            let mut st = status(
                Phase::Failed,
                Some(format!("timed out after {} s", limit.as_secs())),
            );
            st.progress = progress_of(progress);
            st
        }
        Err(podvault_scanner::Error::Canceled { .. }) => {
            let mut st = status(Phase::Canceled, Some("canceled".into()));
            st.progress = progress_of(progress);
            st
        }
        Err(e) => status(Phase::Failed, Some(e.to_string())),
    }
}

/// Restores `snapshot` into a volume's directory (overwriting what the snapshot also
/// has), then writes the marker `.podvault/<restore_uid>` (directory 0755, file 0644).
/// Attributes that could not be restored (ownership on NFS with root_squash, say) make the
/// volume `PartiallyFailed` with the paths listed; the marker is written all the same, as
/// the data is there.
pub fn restore_volume(
    repo: &Repository,
    snapshot_id: &str,
    dir: &Path,
    restore_uid: &str,
) -> PodVolumeStatus {
    restore_volume_with_markers(repo, snapshot_id, dir, &[dir.join(MARKER_DIR)], restore_uid)
}

/// [`restore_volume`], writing the marker into each of `markers` (directories, created
/// 0755 if missing). The node agent adds the pod's marker volume ([`POD_MARKERS`]) to the
/// volume's own `.podvault`: once the volume's root has the snapshot's owner and mode
/// (0700 for a database), a helper running as another user cannot look inside it.
pub fn restore_volume_with_markers(
    repo: &Repository,
    snapshot_id: &str,
    dir: &Path,
    markers: &[PathBuf],
    restore_uid: &str,
) -> PodVolumeStatus {
    let fail = |message: String| {
        write_failure_markers(markers, restore_uid, &message);
        status(Phase::Failed, Some(message))
    };
    let found = repo.find_snapshot(snapshot_id);
    let (_, snapshot) = match found {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    let mut options = RestoreOptions::new(dir);
    options.overwrite = true;
    let report = match podvault_scanner::restore(repo, &snapshot, &options) {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(e) = markers
        .iter()
        .try_for_each(|m| write_marker_file(m, restore_uid, ""))
    {
        return status(
            Phase::Failed,
            Some(format!(
                "data restored, but the marker could not be written: {e}"
            )),
        );
    }
    let mut st = status(Phase::Completed, None);
    st.snapshot_id = Some(snapshot_id.to_string());
    st.progress = Progress {
        total_bytes: report.bytes,
        bytes_done: report.bytes,
        bytes_new: 0,
    };
    if !report.warnings.is_empty() || !report.refused.is_empty() {
        st.phase = Phase::PartiallyFailed;
        st.message = Some(match (report.warnings.len(), report.refused.len()) {
            (w, 0) => format!("{w} attributes could not be restored"),
            (0, r) => format!("{r} entries of the snapshot are unusable and were not restored"),
            (w, r) => format!(
                "{r} entries of the snapshot are unusable and were not restored, and {w} \
                 attributes could not be restored"
            ),
        });
        st.failed_paths = report
            .refused
            .iter()
            .chain(&report.warnings)
            .cloned()
            .collect();
    }
    st
}

/// Writes `.podvault/<restore-uid>.failed` with the reason, so the restore helper fails
/// the pod at once instead of after its time limit; a failure to write it is logged.
pub fn write_failure_marker(dir: &Path, restore_uid: &str, message: &str) {
    write_failure_markers(&[dir.join(MARKER_DIR)], restore_uid, message);
}

/// [`write_failure_marker`] into each of the marker directories `markers`.
pub fn write_failure_markers(markers: &[PathBuf], restore_uid: &str, message: &str) {
    for marker_dir in markers {
        if let Err(e) = write_marker_file(marker_dir, &format!("{restore_uid}.failed"), message) {
            tracing::warn!(
                "could not write the failure marker in {}: {e}",
                marker_dir.display()
            );
        }
    }
}

fn write_marker_file(marker_dir: &Path, name: &str, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(marker_dir)?;
    std::fs::set_permissions(marker_dir, std::fs::Permissions::from_mode(0o755))?;
    let marker = marker_dir.join(name);
    std::fs::write(&marker, content)?;
    std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o644))
}

/// What `restore-wait` concluded.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Every volume has its marker.
    Restored,
    /// A restore failed: the pod must not start.
    Failed(String),
    /// The time limit passed.
    TimedOut(Vec<PathBuf>),
}

/// `restore-wait`: waits until each of `volumes` (mounted at `/restores/<volume>`) holds
/// the marker of `restore_uid`. A failure marker in any volume, or `failure` (asked each
/// round, for other sources of failure) ends the wait at once.
pub fn wait_for_markers(
    volumes: &[PathBuf],
    restore_uid: &str,
    poll: Duration,
    timeout: Duration,
    failure: impl FnMut() -> Option<String>,
) -> WaitOutcome {
    let marker_dirs: Vec<PathBuf> = volumes.iter().map(|v| v.join(MARKER_DIR)).collect();
    wait_for_marker_dirs(&marker_dirs, restore_uid, poll, timeout, failure)
}

/// Whether `path` exists; a path the helper is not allowed to look at is an error that
/// names it and the user asking, never "not yet".
fn exists(path: &Path) -> Result<bool, String> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.is_file()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(format!(
            "{}: permission denied to user {} (group {}); the volume's root is not open \
             to the helper's user: run the helper as the volume's owner, or use a \
             helper injected by this version's webhook, which reads its markers from a \
             volume of its own",
            path.display(),
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw()
        )),
        Err(_) => Ok(false),
    }
}

/// [`wait_for_markers`] with the marker directories given: one per volume, in the order
/// of the volumes (`<volume>/.podvault`, or the pod's marker volume's `<volume>/`).
pub fn wait_for_marker_dirs(
    marker_dirs: &[PathBuf],
    restore_uid: &str,
    poll: Duration,
    timeout: Duration,
    mut failure: impl FnMut() -> Option<String>,
) -> WaitOutcome {
    let started = Instant::now();
    let failed = format!("{restore_uid}.failed");
    loop {
        let mut missing = Vec::new();
        for dir in marker_dirs {
            match exists(&dir.join(restore_uid)) {
                Ok(true) => {}
                Ok(false) => missing.push(dir.clone()),
                Err(e) => return WaitOutcome::Failed(e),
            }
        }
        if missing.is_empty() {
            return WaitOutcome::Restored;
        }
        for dir in marker_dirs {
            if let Ok(reason) = std::fs::read_to_string(dir.join(&failed)) {
                return WaitOutcome::Failed(format!("{}: {}", dir.display(), reason.trim()));
            }
        }
        if let Some(reason) = failure() {
            return WaitOutcome::Failed(reason);
        }
        if started.elapsed() >= timeout {
            return WaitOutcome::TimedOut(missing);
        }
        std::thread::sleep(poll);
    }
}
