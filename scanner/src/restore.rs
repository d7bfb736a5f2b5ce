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

struct FileJob {
    path: PathBuf,
    node: Node,
}

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
                    match write_file(repo, &job.path, &job.node, progress) {
                        Ok(bytes) => {
                            let warnings = meta::apply(&job.path, &job.node, as_root);
                            let mut r = report.lock();
                            r.bytes += bytes;
                            r.warnings.extend(
                                warnings
                                    .into_iter()
                                    .map(|w| format!("{}: {w}", job.path.display())),
                            );
                        }
                        Err(e) => errors.lock().push(e),
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
                // Created here, written by a worker: a later hard link to it can be made now.
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(path)
                    .map_err(write_err)?;
                let _ = self.tx.send(FileJob {
                    path: path.to_path_buf(),
                    node: node.clone(),
                });
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

/// Writes a file's content; returns the bytes written.
fn write_file(
    repo: &Repository,
    path: &Path,
    node: &Node,
    progress: Option<&Progress>,
) -> Result<u64> {
    let write_err = |source: std::io::Error| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let file: File = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(write_err)?;
    let mut offset = 0u64;
    let mut written = 0u64;
    for id in &node.content {
        let data = repo
            .load_blob(BlobKind::Data, id)
            .map_err(|source| Error::Content {
                path: path.to_path_buf(),
                source,
            })?;
        written += write_sparse(&file, &data, offset).map_err(write_err)?;
        offset += data.len() as u64;
        if let Some(p) = progress {
            p.add_done(0, data.len() as u64);
        }
    }
    // Extends over trailing zero chunks, leaving them as a hole.
    file.set_len(offset).map_err(write_err)?;
    if offset != node.size {
        return Err(Error::Content {
            path: path.to_path_buf(),
            source: podvault_store::Error::Corrupt {
                what: "file",
                name: path.display().to_string(),
                reason: format!(
                    "content is {offset} bytes but the snapshot says {}",
                    node.size
                ),
            },
        });
    }
    if let Some(p) = progress {
        p.add_done(1, 0);
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
