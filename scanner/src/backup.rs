//! Backup: walk, reuse unchanged files, chunk and store changed ones, assemble trees.
//!
//! Three kinds of thread cooperate, joined by bounded channels so memory stays flat:
//! - the walker (the caller's thread) reads directories in sorted, depth-first order with
//!   `ignore`'s walker (every filter off), compares each file with the parent snapshot, and
//!   queues changed files;
//! - workers open, map or read, and chunk those files; the chunks of a large file are
//!   hashed, compressed and sealed in parallel on a rayon pool of the same size;
//! - the assembler receives each finished directory in post-order, waits for its files,
//!   and writes its tree.
//!
//! The walk order is fixed, so a backup with one thread and one with many produce the same
//! trees. The walk itself is sequential because a tree can only be written once its
//! directory is complete, which a parallel walk cannot tell without holding every entry of
//! the source in memory; the (parallel) `ignore` walker only feeds the progress totals.

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};
use parking_lot::Mutex;
use podvault_store::{
    BlobId, BlobKind, Node, NodeKind, Repository, SaveOutcome, Snapshot, SnapshotId, Summary, Tree,
};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::mapped::GuardedMap;
use crate::meta::{self, Names};
use crate::progress::Progress;

/// Bytes of a mapped file handed to the chunk workers at a time (then released).
const WINDOW_BYTES: usize = 8 * 1024 * 1024;

/// A callback given a file's path.
pub type FileHook = Arc<dyn Fn(&Path) + Send + Sync>;

/// Which snapshot to compare with to skip unchanged files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ParentChoice {
    /// The latest snapshot of the same source and host.
    #[default]
    Latest,
    /// None: read every file.
    None,
    /// This snapshot.
    Id(SnapshotId),
}

/// Options of a backup. Build with [`BackupOptions::new`] and set fields.
#[derive(Clone)]
pub struct BackupOptions {
    /// The directory to back up.
    pub source: PathBuf,
    /// Tags recorded in the snapshot.
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot.
    pub host: String,
    /// The parent snapshot.
    pub parent: ParentChoice,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Files queued ahead of the workers; with the window size and the pack size this
    /// bounds memory.
    pub queue_files: usize,
    /// Files at least this large are read through a memory map, smaller ones with plain
    /// reads (`u64::MAX`: never map).
    pub mmap_min_bytes: u64,
    /// Live counters to update, if someone displays them.
    pub progress: Option<Arc<Progress>>,
    /// Called with each file's path right after it is mapped and before it is read.
    #[doc(hidden)]
    pub after_map: Option<FileHook>,
}

impl BackupOptions {
    /// Defaults for backing up `source`.
    pub fn new(source: impl Into<PathBuf>) -> Self {
        BackupOptions {
            source: source.into(),
            tags: Vec::new(),
            host: podvault_store::this_host(),
            parent: ParentChoice::Latest,
            threads: 0,
            queue_files: 64,
            mmap_min_bytes: crate::MMAP_MIN_BYTES,
            progress: None,
            after_map: None,
        }
    }
}

/// A file or directory the backup could not read.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Unreadable {
    /// Where.
    pub path: String,
    /// Why.
    pub error: String,
}

/// What a backup produced.
#[derive(Clone, Debug)]
pub struct BackupReport {
    /// The new snapshot's id.
    pub id: SnapshotId,
    /// The new snapshot.
    pub snapshot: Snapshot,
    /// Files and directories left out because they could not be read.
    pub unreadable: Vec<Unreadable>,
}

#[derive(Default)]
struct Stats {
    files: AtomicU64,
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unmodified: AtomicU64,
    dirs: AtomicU64,
    others: AtomicU64,
    bytes_total: AtomicU64,
    bytes_read: AtomicU64,
    bytes_new: AtomicU64,
    bytes_stored: AtomicU64,
    blobs_new: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// State shared by every thread of one backup.
struct Ctx<'a> {
    repo: &'a Repository,
    stats: Stats,
    unreadable: Mutex<Vec<Unreadable>>,
    fatal: Mutex<Option<podvault_store::Error>>,
    failed: AtomicBool,
    pool: rayon::ThreadPool,
    progress: Option<Arc<Progress>>,
    after_map: Option<FileHook>,
    mmap_min_bytes: u64,
}

impl Ctx<'_> {
    fn skip(&self, path: &Path, error: impl ToString) {
        let error = error.to_string();
        tracing::warn!(path = %path.display(), %error, "left out of the snapshot");
        self.unreadable.lock().push(Unreadable {
            path: path.display().to_string(),
            error,
        });
    }

    fn fail(&self, e: podvault_store::Error) {
        self.failed.store(true, Ordering::Release);
        self.fatal.lock().get_or_insert(e);
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn progress(&self, files: u64, bytes: u64) {
        if let Some(p) = &self.progress {
            p.add_done(files, bytes);
        }
    }

    /// Stores one chunk and returns its id.
    fn store_chunk(&self, data: &[u8]) -> podvault_store::Result<BlobId> {
        let id = self.repo.blob_id(data);
        if let SaveOutcome::New { stored_bytes } = self.repo.save_blob(BlobKind::Data, id, data)? {
            add(&self.stats.bytes_new, data.len() as u64);
            add(&self.stats.bytes_stored, stored_bytes);
            add(&self.stats.blobs_new, 1);
        }
        Ok(id)
    }

    /// Chunks `data[..]` from `start` up to at least `end` and stores the chunks in parallel;
    /// returns where the last chunk ended.
    fn store_range(
        &self,
        data: &[u8],
        start: usize,
        end: usize,
        content: &mut Vec<BlobId>,
    ) -> podvault_store::Result<usize> {
        let chunker = self.repo.chunker();
        let mut cuts = Vec::new();
        let mut p = start;
        while p < end {
            let n = chunker.cut(&data[p..]);
            cuts.push((p, n));
            p += n;
        }
        if cuts.len() == 1 {
            content.push(self.store_chunk(&data[start..p])?);
        } else {
            let ids: Vec<podvault_store::Result<BlobId>> = self.pool.install(|| {
                cuts.par_iter()
                    .map(|&(o, n)| self.store_chunk(&data[o..o + n]))
                    .collect()
            });
            for id in ids {
                content.push(id?);
            }
        }
        Ok(p)
    }
}

enum Slot {
    Ready(Box<Node>),
    Pending(Receiver<Option<Node>>),
}

struct Frame {
    depth: usize,
    node: Node,
    children: Vec<Slot>,
    /// The same directory in the parent snapshot.
    old: Option<Tree>,
}

impl Frame {
    fn old_node(&self, name: &[u8]) -> Option<&Node> {
        let old = self.old.as_ref()?;
        old.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &old.nodes[i])
    }
}

struct FileJob {
    path: PathBuf,
    node: Node,
    reply: Sender<Option<Node>>,
}

struct DirJob {
    node: Node,
    children: Vec<Slot>,
    reply: Sender<Option<Node>>,
}

/// Backs up `options.source` and writes a snapshot. Files that cannot be read are listed in
/// the report and left out; repository failures abort with an error and write no snapshot.
pub fn backup(repo: &Repository, options: &BackupOptions) -> Result<BackupReport> {
    let started = chrono::Utc::now();
    let clock = Instant::now();
    let source = std::path::absolute(&options.source).map_err(|e| Error::Source {
        path: options.source.clone(),
        reason: e.to_string(),
    })?;
    let meta = std::fs::symlink_metadata(&source).map_err(|e| Error::Source {
        path: source.clone(),
        reason: e.to_string(),
    })?;
    if !meta.is_dir() {
        return Err(Error::Source {
            path: source,
            reason: "not a directory".into(),
        });
    }
    let source_str = source.to_string_lossy().into_owned();
    let parent = match &options.parent {
        ParentChoice::None => None,
        ParentChoice::Latest => repo.latest_of(&source_str, &options.host)?,
        ParentChoice::Id(id) => Some((*id, repo.load_snapshot(id)?)),
    };
    let threads = if options.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        options.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("podvault-chunk-{i}"))
        .build()
        .map_err(|e| Error::Source {
            path: source.clone(),
            reason: format!("cannot start threads: {e}"),
        })?;
    let ctx = Ctx {
        repo,
        stats: Stats::default(),
        unreadable: Mutex::new(Vec::new()),
        fatal: Mutex::new(None),
        failed: AtomicBool::new(false),
        pool,
        progress: options.progress.clone(),
        after_map: options.after_map.clone(),
        mmap_min_bytes: options.mmap_min_bytes,
    };
    if let Some(p) = &options.progress {
        spawn_prescan(source.clone(), p.clone());
    }

    let root = std::thread::scope(|s| -> Result<Option<Node>> {
        let (job_tx, job_rx) = bounded::<FileJob>(options.queue_files.max(1));
        let (dir_tx, dir_rx) = bounded::<DirJob>(options.queue_files.max(1));
        for i in 0..threads {
            let rx = job_rx.clone();
            let ctx = &ctx;
            std::thread::Builder::new()
                .name(format!("podvault-file-{i}"))
                .spawn_scoped(s, move || worker(ctx, rx))
                .map_err(|e| Error::Source {
                    path: source.clone(),
                    reason: format!("cannot start threads: {e}"),
                })?;
        }
        drop(job_rx);
        let assembler = {
            let ctx = &ctx;
            s.spawn(move || assemble(ctx, dir_rx))
        };
        let old_root = match &parent {
            Some((_, snap)) => Some(repo.load_tree(&snap.tree)?),
            None => None,
        };
        let root_rx = walk(&ctx, &source, old_root, &job_tx, &dir_tx);
        drop(job_tx);
        drop(dir_tx);
        let _ = assembler.join();
        Ok(root_rx.and_then(|rx| rx.recv().ok().flatten()))
    })?;
    if let Some(e) = ctx.fatal.lock().take() {
        return Err(e.into());
    }
    let root = root.ok_or_else(|| Error::Source {
        path: source.clone(),
        reason: "the source directory could not be read".into(),
    })?;
    repo.flush()?;
    let st = &ctx.stats;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut unreadable = ctx.unreadable.into_inner();
    unreadable.sort_by(|a, b| a.path.cmp(&b.path));
    let summary = Summary {
        started: Some(started),
        duration_ms: clock.elapsed().as_millis() as u64,
        files: get(&st.files),
        files_new: get(&st.files_new),
        files_changed: get(&st.files_changed),
        files_unmodified: get(&st.files_unmodified),
        dirs: get(&st.dirs),
        others: get(&st.others),
        bytes_total: get(&st.bytes_total),
        bytes_read: get(&st.bytes_read),
        bytes_new: get(&st.bytes_new),
        bytes_stored: get(&st.bytes_stored),
        blobs_new: get(&st.blobs_new),
        errors: unreadable.len() as u64,
    };
    let snapshot = Snapshot {
        time: chrono::Utc::now(),
        host: options.host.clone(),
        source: source_str,
        tags: options.tags.clone(),
        parent: parent.map(|(id, _)| id),
        tree: root.subtree.ok_or_else(|| Error::Source {
            path: source.clone(),
            reason: "root tree missing".into(),
        })?,
        root,
        username: podvault_store::this_user(),
        program_version: env!("CARGO_PKG_VERSION").to_string(),
        summary,
    };
    let id = repo.save_snapshot(&snapshot)?;
    Ok(BackupReport {
        id,
        snapshot,
        unreadable,
    })
}

/// Counts files and bytes with a parallel walk so a progress display can show an ETA.
fn spawn_prescan(source: PathBuf, progress: Arc<Progress>) {
    let _ = std::thread::Builder::new()
        .name("podvault-prescan".into())
        .spawn(move || {
            let walker = ignore::WalkBuilder::new(&source)
                .standard_filters(false)
                .hidden(false)
                .follow_links(false)
                .same_file_system(true)
                .build_parallel();
            walker.run(|| {
                let progress = progress.clone();
                Box::new(move |entry| {
                    if let Ok(e) = entry
                        && let Ok(m) = e.metadata()
                        && m.is_file()
                    {
                        progress.files_total.fetch_add(1, Ordering::Relaxed);
                        progress.bytes_total.fetch_add(m.len(), Ordering::Relaxed);
                    }
                    ignore::WalkState::Continue
                })
            });
            progress.totals_known.store(true, Ordering::Relaxed);
        });
}

/// The walker: returns the receiver of the root directory's node.
fn walk(
    ctx: &Ctx<'_>,
    source: &Path,
    old_root: Option<Tree>,
    job_tx: &Sender<FileJob>,
    dir_tx: &Sender<DirJob>,
) -> Option<Receiver<Option<Node>>> {
    let walker = ignore::WalkBuilder::new(source)
        .standard_filters(false)
        .hidden(false)
        .parents(false)
        .follow_links(false)
        .same_file_system(true)
        .sort_by_file_name(|a, b| a.as_bytes().cmp(b.as_bytes()))
        .build();
    let mut stack: Vec<Frame> = Vec::new();
    let mut root_rx = None;
    let mut old_root = old_root;
    let mut names = Names::default();

    let close = |stack: &mut Vec<Frame>, root_rx: &mut Option<Receiver<Option<Node>>>| {
        let Some(frame) = stack.pop() else { return };
        let (tx, rx) = bounded(1);
        match stack.last_mut() {
            Some(parent) => parent.children.push(Slot::Pending(rx)),
            None => *root_rx = Some(rx),
        }
        let _ = dir_tx.send(DirJob {
            node: frame.node,
            children: frame.children,
            reply: tx,
        });
    };

    for entry in walker {
        if ctx.failed() {
            break;
        }
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                ctx.skip(source, e);
                continue;
            }
        };
        let depth = entry.depth();
        while stack.last().is_some_and(|f| f.depth >= depth) {
            close(&mut stack, &mut root_rx);
        }
        let path = entry.path().to_path_buf();
        let md = match entry.metadata() {
            Ok(m) => m,
            Err(e) => {
                ctx.skip(&path, e);
                continue;
            }
        };
        let Some(kind) = meta::kind_of(&md) else {
            ctx.skip(&path, "unsupported file type");
            continue;
        };
        let name: &[u8] = if depth == 0 {
            b""
        } else {
            meta::file_name_bytes(&path)
        };
        let mut node = meta::node_from_metadata(name, &md, kind);
        if depth == 0 {
            if let Err(e) = meta::complete_node(&mut node, &path, &mut names) {
                ctx.skip(&path, e);
            }
            add(&ctx.stats.dirs, 1);
            stack.push(Frame {
                depth,
                node,
                children: Vec::new(),
                old: old_root.take(),
            });
            continue;
        }
        let Some(parent) = stack.last_mut() else {
            continue;
        };
        let old = parent.old_node(name).cloned();
        match kind {
            NodeKind::Dir => {
                if let Err(e) = meta::complete_node(&mut node, &path, &mut names) {
                    ctx.skip(&path, e);
                    continue;
                }
                add(&ctx.stats.dirs, 1);
                let old_tree = old
                    .filter(|o| o.kind == NodeKind::Dir)
                    .and_then(|o| o.subtree)
                    .and_then(|t| ctx.repo.load_tree(&t).ok());
                stack.push(Frame {
                    depth,
                    node,
                    children: Vec::new(),
                    old: old_tree,
                });
            }
            NodeKind::File => {
                add(&ctx.stats.files, 1);
                add(&ctx.stats.bytes_total, node.size);
                match old {
                    Some(old)
                        if unchanged(&old, &node)
                            && old.content.iter().all(|b| ctx.repo.has_blob(b)) =>
                    {
                        node.content = old.content;
                        node.xattrs = old.xattrs;
                        node.user = old.user;
                        node.group = old.group;
                        add(&ctx.stats.files_unmodified, 1);
                        ctx.progress(1, node.size);
                        parent.children.push(Slot::Ready(Box::new(node)));
                    }
                    old => {
                        add(
                            if old.is_some() {
                                &ctx.stats.files_changed
                            } else {
                                &ctx.stats.files_new
                            },
                            1,
                        );
                        let (tx, rx) = bounded(1);
                        parent.children.push(Slot::Pending(rx));
                        if job_tx
                            .send(FileJob {
                                path,
                                node,
                                reply: tx,
                            })
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            _ => {
                if let Err(e) = meta::complete_node(&mut node, &path, &mut names) {
                    ctx.skip(&path, e);
                    continue;
                }
                add(&ctx.stats.others, 1);
                parent.children.push(Slot::Ready(Box::new(node)));
            }
        }
    }
    while !stack.is_empty() {
        close(&mut stack, &mut root_rx);
    }
    root_rx
}

/// Whether a file can be taken from the parent snapshot without reading it.
fn unchanged(old: &Node, new: &Node) -> bool {
    old.kind == NodeKind::File
        && old.size == new.size
        && old.mtime == new.mtime
        && old.mtime_nsec == new.mtime_nsec
        && old.ctime == new.ctime
        && old.ctime_nsec == new.ctime_nsec
        && old.inode == new.inode
        && old.mode == new.mode
        && old.uid == new.uid
        && old.gid == new.gid
}

fn worker(ctx: &Ctx<'_>, jobs: Receiver<FileJob>) {
    let mut names = Names::default();
    let mut buf = Vec::new();
    for job in jobs {
        if ctx.failed() {
            let _ = job.reply.send(None);
            continue;
        }
        let FileJob {
            path,
            mut node,
            reply,
        } = job;
        let result = meta::complete_node(&mut node, &path, &mut names)
            .map_err(FileError::Io)
            .and_then(|()| read_file(ctx, &path, &mut node, &mut buf));
        match result {
            Ok(()) => {
                let _ = reply.send(Some(node));
            }
            Err(FileError::Store(e)) => {
                ctx.fail(e);
                let _ = reply.send(None);
            }
            Err(FileError::Io(e)) => {
                ctx.skip(&path, e);
                let _ = reply.send(None);
            }
        }
    }
}

enum FileError {
    Io(std::io::Error),
    Store(podvault_store::Error),
}

impl From<podvault_store::Error> for FileError {
    fn from(e: podvault_store::Error) -> Self {
        FileError::Store(e)
    }
}

fn open_noatime(path: &Path) -> std::io::Result<File> {
    // O_NOATIME keeps the backup from touching access times; only the owner (or root) may
    // ask for it, so fall back to a plain open.
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_NOFOLLOW)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path),
        other => other,
    }
}

/// Reads a file's content into chunks and fills `node.content` and `node.size`.
fn read_file(
    ctx: &Ctx<'_>,
    path: &Path,
    node: &mut Node,
    buf: &mut Vec<u8>,
) -> Result<(), FileError> {
    for attempt in 0..2 {
        node.content.clear();
        let file = open_noatime(path).map_err(FileError::Io)?;
        let md = file.metadata().map_err(FileError::Io)?;
        if !md.is_file() {
            return Err(FileError::Io(std::io::Error::other(
                "no longer a regular file",
            )));
        }
        let size = md.len();
        if size >= ctx.mmap_min_bytes
            && let Ok(len) = usize::try_from(size)
            && let Ok(map) = GuardedMap::new(&file, len)
        {
            if let Some(hook) = &ctx.after_map {
                hook(path);
            }
            let data = map.bytes();
            let mut pos = 0;
            while pos < len && !map.faulted() && !ctx.failed() {
                let end = (pos + WINDOW_BYTES).min(len);
                let next = ctx.store_range(data, pos, end, &mut node.content)?;
                add(&ctx.stats.bytes_read, (next - pos) as u64);
                ctx.progress(0, (next - pos) as u64);
                map.release(pos, next - pos);
                pos = next;
            }
            if map.faulted() {
                tracing::warn!(path = %path.display(), attempt, "file shrank while being read");
                if attempt == 0 {
                    continue;
                }
                return Err(FileError::Io(std::io::Error::other(
                    "the file shrank while being read (twice); left out",
                )));
            }
            node.size = len as u64;
            ctx.progress(1, 0);
            return Ok(());
        }
        let total = read_streaming(ctx, &file, buf, &mut node.content)?;
        node.size = total;
        ctx.progress(1, 0);
        return Ok(());
    }
    Err(FileError::Io(std::io::Error::other(
        "the file kept changing while being read",
    )))
}

/// Reads a file with plain reads in windows, so memory stays bounded whatever its size;
/// returns the bytes read.
fn read_streaming(
    ctx: &Ctx<'_>,
    file: &File,
    buf: &mut Vec<u8>,
    content: &mut Vec<BlobId>,
) -> Result<u64, FileError> {
    let max = ctx.repo.chunker().params().max_bytes as usize;
    let want = WINDOW_BYTES + max;
    buf.clear();
    let mut total = 0u64;
    let mut eof = false;
    loop {
        if !eof && buf.len() < want {
            // read_to_end fills spare capacity without zeroing it first, and only grows the
            // buffer as far as the file goes.
            let need = (want - buf.len()) as u64;
            let n = file.take(need).read_to_end(buf).map_err(FileError::Io)?;
            eof = (n as u64) < need;
        }
        if buf.is_empty() {
            return Ok(total);
        }
        // Without the end of the file in view, cut only where a whole maximal chunk follows,
        // so every cut is the one a single pass over the whole file would make.
        let end = if eof { buf.len() } else { buf.len() + 1 - max };
        let done = ctx.store_range(buf, 0, end, content)?;
        add(&ctx.stats.bytes_read, done as u64);
        ctx.progress(0, done as u64);
        total += done as u64;
        buf.drain(..done);
        if ctx.failed() {
            return Ok(total);
        }
    }
}

fn assemble(ctx: &Ctx<'_>, dirs: Receiver<DirJob>) {
    for DirJob {
        mut node,
        children,
        reply,
    } in dirs
    {
        let mut nodes = Vec::with_capacity(children.len());
        for slot in children {
            match slot {
                Slot::Ready(n) => nodes.push(*n),
                Slot::Pending(rx) => {
                    if let Ok(Some(n)) = rx.recv() {
                        nodes.push(n);
                    }
                }
            }
        }
        if ctx.failed() {
            let _ = reply.send(None);
            continue;
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        match ctx.repo.save_tree(&Tree { nodes }) {
            Ok((id, _)) => {
                node.subtree = Some(id);
                let _ = reply.send(Some(node));
            }
            Err(e) => {
                ctx.fail(e);
                let _ = reply.send(None);
            }
        }
    }
}
