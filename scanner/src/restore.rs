//! Restore: recreate a snapshot's tree under a target directory.
//!
//! Directories, links and special files are made by one thread in tree order; file contents
//! are written by worker threads with positioned writes, every chunk verified against its id
//! as it is read. All-zero chunks are skipped, so holes stay holes. Directory metadata is
//! applied last, deepest first, so writing children does not disturb it.
//!
//! Nothing is written outside the target: every name is checked (no `/`, `..`, `.`, NUL,
//! empty, or duplicate), entries are created relative to directories this restore made or
//! checked to be real directories, and existing symlinks are never followed.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_channel::bounded;
use parking_lot::Mutex;
use podvault_store::{BlobKind, Node, NodeKind, Repository, Snapshot, Tree};

use crate::error::{Error, Result};
use crate::meta;
use crate::progress::Progress;

/// Options of a restore.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Directory to restore into; created if missing.
    pub target: PathBuf,
    /// Allow a non-empty target: existing entries the snapshot also has are replaced.
    pub overwrite: bool,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Live counters.
    pub progress: Option<Arc<Progress>>,
}

impl RestoreOptions {
    /// Defaults for restoring into `target`.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        RestoreOptions {
            target: target.into(),
            overwrite: false,
            threads: 0,
            progress: None,
        }
    }
}

/// What a restore did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreReport {
    /// Regular files restored (hard links count once per name).
    pub files: u64,
    /// Directories restored.
    pub dirs: u64,
    /// Symlinks, FIFOs and devices restored.
    pub others: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Metadata that could not be applied (for example ownership when not root).
    pub warnings: Vec<String>,
}

/// A file being restored: shared by the jobs that write its parts; the job that finishes
/// last applies its metadata.
struct FileState {
    path: PathBuf,
    node: Node,
    jobs_left: AtomicUsize,
    failed: AtomicBool,
}

/// Part of a file to write: chunks `first..end` of its content, the first at `offset`.
struct FileJob {
    file: Arc<FileState>,
    first: usize,
    end: usize,
    offset: u64,
}

/// Large files are split into jobs of about this many bytes, written in parallel.
const JOB_BYTES: u64 = 8 * 1024 * 1024;

/// Restores `snapshot` into `options.target`.
pub fn restore(
    repo: &Repository,
    snapshot: &Snapshot,
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    let target = std::path::absolute(&options.target).map_err(|e| Error::Target {
        path: options.target.clone(),
        reason: e.to_string(),
    })?;
    prepare_target(&target, options.overwrite)?;
    let root = repo.load_tree(&snapshot.tree)?;
    let as_root = rustix::process::geteuid().is_root();
    let threads = if options.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        options.threads
    };
    if let Some(p) = &options.progress {
        p.files_total
            .store(snapshot.summary.files, std::sync::atomic::Ordering::Relaxed);
        p.bytes_total.store(
            snapshot.summary.bytes_total,
            std::sync::atomic::Ordering::Relaxed,
        );
        p.totals_known
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let report = Mutex::new(RestoreReport::default());
    let errors: Mutex<Vec<Error>> = Mutex::new(Vec::new());
    let mut dirs: Vec<(PathBuf, Node)> = Vec::new();

    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = bounded::<FileJob>(threads * 4);
        for _ in 0..threads {
            let rx = rx.clone();
            let (report, errors, progress) = (&report, &errors, options.progress.as_deref());
            s.spawn(move || {
                for job in rx {
                    let file = &job.file;
                    match write_part(repo, &job, progress) {
                        Ok(bytes) => report.lock().bytes += bytes,
                        Err(e) => {
                            file.failed.store(true, Ordering::Release);
                            errors.lock().push(e);
                        }
                    }
                    let last = file.jobs_left.fetch_sub(1, Ordering::AcqRel) == 1;
                    if last && !file.failed.load(Ordering::Acquire) {
                        if let Some(p) = progress {
                            p.add_done(1, 0);
                        }
                        let warnings = meta::apply(&file.path, &file.node, as_root);
                        report.lock().warnings.extend(
                            warnings
                                .into_iter()
                                .map(|w| format!("{}: {w}", file.path.display())),
                        );
                    }
                }
            });
        }
        drop(rx);
        let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
        let mut w = Walker {
            repo,
            overwrite: options.overwrite,
            as_root,
            tx: &tx,
            links: &mut links,
            dirs: &mut dirs,
            report: &report,
        };
        let result = w.restore_tree(&target, &root, "");
        drop(tx);
        result
    })?;
    let mut errors = errors.into_inner();
    if !errors.is_empty() {
        let count = errors.len();
        let first = errors.remove(0);
        return Err(if count == 1 {
            first
        } else {
            Error::Many {
                count,
                first: Box::new(first),
            }
        });
    }
    let mut report = report.into_inner();
    for (path, node) in dirs.iter().rev() {
        let warnings = meta::apply(path, node, as_root);
        report.warnings.extend(
            warnings
                .into_iter()
                .map(|w| format!("{}: {w}", path.display())),
        );
    }
    let warnings = meta::apply(&target, &snapshot.root, as_root);
    report.warnings.extend(
        warnings
            .into_iter()
            .map(|w| format!("{}: {w}", target.display())),
    );
    report.dirs = dirs.len() as u64 + 1;
    Ok(report)
}

fn prepare_target(target: &Path, overwrite: bool) -> Result<()> {
    let err = |reason: String| Error::Target {
        path: target.to_path_buf(),
        reason,
    };
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => {
            let mut rd = std::fs::read_dir(target).map_err(|e| err(e.to_string()))?;
            if rd.next().is_some() && !overwrite {
                return Err(err(
                    "is not empty (use --overwrite to restore into it)".into()
                ));
            }
            Ok(())
        }
        Ok(_) => Err(err("exists and is not a directory".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(target).map_err(|e| err(format!("cannot create it: {e}")))
        }
        Err(e) => Err(err(e.to_string())),
    }
}

struct Walker<'a> {
    repo: &'a Repository,
    overwrite: bool,
    as_root: bool,
    tx: &'a crossbeam_channel::Sender<FileJob>,
    links: &'a mut HashMap<(u64, u64), PathBuf>,
    dirs: &'a mut Vec<(PathBuf, Node)>,
    report: &'a Mutex<RestoreReport>,
}

impl Walker<'_> {
    fn restore_tree(&mut self, dir: &Path, tree: &Tree, rel: &str) -> Result<()> {
        for (i, node) in tree.nodes.iter().enumerate() {
            let shown = format!("{rel}/{}", node.display_name());
            if !node.has_safe_name() {
                return Err(Error::UnsafeEntry {
                    path: shown,
                    reason: "its name could escape the target directory".into(),
                });
            }
            if i > 0 && tree.nodes[i - 1].name == node.name {
                return Err(Error::UnsafeEntry {
                    path: shown,
                    reason: "the name appears twice in its directory".into(),
                });
            }
            let path = dir.join(OsStr::from_bytes(&node.name));
            self.restore_node(&path, node, &shown)?;
        }
        Ok(())
    }

    fn restore_node(&mut self, path: &Path, node: &Node, shown: &str) -> Result<()> {
        let write_err = |source: std::io::Error| Error::Write {
            path: path.to_path_buf(),
            source,
        };
        match node.kind {
            NodeKind::Dir => {
                match std::fs::symlink_metadata(path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        self.clear(path)?;
                        std::fs::create_dir(path).map_err(write_err)?;
                    }
                    Err(_) => std::fs::create_dir(path).map_err(write_err)?,
                }
                let subtree = node.subtree.ok_or_else(|| Error::UnsafeEntry {
                    path: shown.to_string(),
                    reason: "directory without a listing".into(),
                })?;
                let tree = self
                    .repo
                    .load_tree(&subtree)
                    .map_err(|source| Error::Content {
                        path: path.to_path_buf(),
                        source,
                    })?;
                self.dirs.push((path.to_path_buf(), node.clone()));
                self.restore_tree(path, &tree, shown)?;
            }
            NodeKind::File => {
                self.clear(path)?;
                self.report.lock().files += 1;
                if node.links > 1 {
                    if let Some(first) = self.links.get(&(node.device, node.inode)) {
                        std::fs::hard_link(first, path).map_err(write_err)?;
                        return Ok(());
                    }
                    self.links
                        .insert((node.device, node.inode), path.to_path_buf());
                }
                self.queue_file(path, node)?;
            }
            NodeKind::Symlink => {
                self.clear(path)?;
                let target = node.link_target.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(OsStr::from_bytes(target), path).map_err(write_err)?;
                self.finish_other(path, node);
            }
            NodeKind::Fifo | NodeKind::Chardev | NodeKind::Blockdev => {
                self.clear(path)?;
                meta::make_special(path, node).map_err(write_err)?;
                self.finish_other(path, node);
            }
            NodeKind::Socket => {}
        }
        Ok(())
    }

    /// Creates the file (so a later hard link to it can be made at once), sized to its
    /// content with holes, and queues the jobs that write it.
    fn queue_file(&mut self, path: &Path, node: &Node) -> Result<()> {
        let content_err = |reason: String| Error::Content {
            path: path.to_path_buf(),
            source: podvault_store::Error::Corrupt {
                what: "file",
                name: path.display().to_string(),
                reason,
            },
        };
        let mut sizes = Vec::with_capacity(node.content.len());
        for id in &node.content {
            let loc = self.repo.locate(id).ok_or_else(|| Error::Content {
                path: path.to_path_buf(),
                source: podvault_store::Error::MissingBlob {
                    kind: BlobKind::Data,
                    id: id.to_hex(),
                },
            })?;
            sizes.push(u64::from(loc.raw_len));
        }
        let total: u64 = sizes.iter().sum();
        if total != node.size {
            return Err(content_err(format!(
                "content is {total} bytes but the snapshot says {}",
                node.size
            )));
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(path)
            .map_err(|source| Error::Write {
                path: path.to_path_buf(),
                source,
            })?;
        file.set_len(total).map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })?;
        let mut parts = Vec::new();
        let (mut first, mut offset, mut part_start, mut part_bytes) = (0, 0u64, 0u64, 0u64);
        for (i, size) in sizes.iter().enumerate() {
            part_bytes += size;
            offset += size;
            if part_bytes >= JOB_BYTES || i + 1 == sizes.len() {
                parts.push((first, i + 1, part_start));
                first = i + 1;
                part_start = offset;
                part_bytes = 0;
            }
        }
        if parts.is_empty() {
            parts.push((0, 0, 0)); // an empty file still gets its metadata from a worker
        }
        let state = Arc::new(FileState {
            path: path.to_path_buf(),
            node: node.clone(),
            jobs_left: AtomicUsize::new(parts.len()),
            failed: AtomicBool::new(false),
        });
        for (first, end, offset) in parts {
            let _ = self.tx.send(FileJob {
                file: state.clone(),
                first,
                end,
                offset,
            });
        }
        Ok(())
    }

    fn finish_other(&mut self, path: &Path, node: &Node) {
        let warnings = meta::apply(path, node, self.as_root);
        let mut r = self.report.lock();
        r.others += 1;
        r.warnings.extend(
            warnings
                .into_iter()
                .map(|w| format!("{}: {w}", path.display())),
        );
    }

    /// Removes an existing non-directory entry (only with `--overwrite`; the target was
    /// checked empty otherwise). Directories in the way of a non-directory are an error.
    fn clear(&self, path: &Path) -> Result<()> {
        match std::fs::symlink_metadata(path) {
            Err(_) => Ok(()),
            Ok(m) if m.is_dir() => Err(Error::Write {
                path: path.to_path_buf(),
                source: std::io::Error::other("a directory is in the way"),
            }),
            Ok(_) if !self.overwrite => Err(Error::Write {
                path: path.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            }),
            Ok(_) => std::fs::remove_file(path).map_err(|source| Error::Write {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// Writes one part of a file; returns the bytes written (holes excluded).
fn write_part(repo: &Repository, job: &FileJob, progress: Option<&Progress>) -> Result<u64> {
    let path = &job.file.path;
    let write_err = |source: std::io::Error| Error::Write {
        path: path.clone(),
        source,
    };
    if job.first == job.end {
        return Ok(0);
    }
    let file: File = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(write_err)?;
    let mut offset = job.offset;
    let mut written = 0u64;
    for id in &job.file.node.content[job.first..job.end] {
        let data = repo
            .load_blob(BlobKind::Data, id)
            .map_err(|source| Error::Content {
                path: path.clone(),
                source,
            })?;
        written += write_sparse(&file, &data, offset).map_err(write_err)?;
        offset += data.len() as u64;
        if let Some(p) = progress {
            p.add_done(0, data.len() as u64);
        }
    }
    Ok(written)
}

/// Holes are kept at this granularity: aligned all-zero blocks of this size are not written.
const HOLE_BLOCK_BYTES: u64 = 4096;

/// Writes `data` at `offset`, skipping aligned all-zero blocks so they stay holes in the
/// (freshly created) file; returns the bytes actually written.
fn write_sparse(file: &File, data: &[u8], offset: u64) -> std::io::Result<u64> {
    let mut written = 0u64;
    let mut pos = 0usize;
    let mut run_start: Option<usize> = None;
    while pos < data.len() {
        // Blocks are aligned to the file, not to the chunk.
        let to_boundary = (HOLE_BLOCK_BYTES - (offset + pos as u64) % HOLE_BLOCK_BYTES) as usize;
        let end = (pos + to_boundary).min(data.len());
        let zero = is_zero(&data[pos..end]);
        match (zero, run_start) {
            (false, None) => run_start = Some(pos),
            (true, Some(start)) => {
                file.write_all_at(&data[start..pos], offset + start as u64)?;
                written += (pos - start) as u64;
                run_start = None;
            }
            _ => {}
        }
        pos = end;
    }
    if let Some(start) = run_start {
        file.write_all_at(&data[start..], offset + start as u64)?;
        written += (data.len() - start) as u64;
    }
    Ok(written)
}

fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(16);
    words.all(|w| w.iter().fold(0u8, |acc, &b| acc | b) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}
