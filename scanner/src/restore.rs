//! Restore: recreate a snapshot's tree under a target directory.
//!
//! Directories, links and special files are made by one thread in tree order, which also
//! plans the chunks of each file. The plan is by pack: for a batch of files, every chunk
//! they need is listed with all the places it goes, and the chunks are grouped by the pack
//! that holds them, in pack order. Worker threads then take one pack each, read the needed
//! parts in as few requests as the gaps allow (each pack once per batch), verify and
//! decrypt each chunk once, and write it with positioned writes to every place, in
//! parallel across packs; the worker that writes a file's first chunk creates the file.
//! All-zero blocks are not written, so holes stay holes (the chunk that ends a file in a
//! hole sets its length). A file's metadata is applied, through the open file, when its
//! last chunk is written; directory metadata last, deepest first, so writing children does
//! not disturb it.
//!
//! Memory does not grow with the listings: each directory's listing is decoded one entry
//! at a time from its bytes (a file's long list of chunk ids is read from there, never
//! copied), the walk keeps at most 48 MiB of the listings above it (outer ones are read
//! again when the walk comes back to them), and a file's chunks are planned a batch at a
//! time however many it has.
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
use podvault_store::{
    BlobId, BlobKind, BlobLocation, Entry, FileKind, Node, NodeCursor, NodeKind, PackId,
    Repository, Snapshot, TreeId,
};

use crate::error::{Error, Result};
use crate::is_zero;
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
    /// Read requests made to packs.
    pub pack_reads: u64,
    /// Bytes read from packs (each part of a pack is read at most once per batch).
    pub pack_bytes_read: u64,
    /// Metadata that could not be applied (for example ownership when not root).
    pub warnings: Vec<String>,
    /// Entries not restored because the snapshot's record of them is unusable (a name that
    /// could escape the target or comes twice, a directory without its listing, content
    /// that is missing, of the wrong kind or of the wrong length), as `path: reason`. The
    /// rest of the snapshot is restored.
    pub refused: Vec<String>,
}

/// A file being restored. Its chunks may come from many packs; whoever writes the last one
/// applies its metadata.
struct FileState {
    path: PathBuf,
    node: Node,
    chunks_left: AtomicUsize,
    failed: AtomicBool,
    /// Whether the file exists yet. Most files are created by the worker that writes their
    /// first chunk, so that creating them (the bulk of restoring small files) runs on every
    /// core rather than on the one walking the tree; files that are hard-linked or empty are
    /// created by the walker.
    created: Mutex<bool>,
    /// Held while writing: the kernel lets one write into a file at a time and spins the
    /// others on the inode lock, burning a core; waiting here sleeps, so another worker
    /// can decompress and verify meanwhile.
    writing: Mutex<()>,
}

impl FileState {
    /// Opens the file for writing, creating it if no one has yet.
    fn open(&self) -> std::io::Result<File> {
        let mut created = self.created.lock();
        if *created {
            drop(created);
            return OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&self.path);
        }
        let file = create_new(&self.path)?;
        *created = true;
        Ok(file)
    }
}

/// Creates a new, empty file, never following or replacing anything. The chunk that ends
/// the file sets its length when its last block is a hole.
fn create_new(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
}

/// Where one chunk goes.
struct Target {
    file: Arc<FileState>,
    offset: u64,
}

/// One blob to read, and every place of the batch it goes.
struct BlobJob {
    id: BlobId,
    loc: BlobLocation,
    targets: Vec<Target>,
}

/// The blobs of one pack that a batch of files needs, in pack order.
struct PackJob {
    pack: PackId,
    blobs: Vec<BlobJob>,
}

/// Files are planned in batches of about this many chunks: each batch reads every pack it
/// needs once, in as few requests as the gaps allow, and the plan stays small.
const BATCH_CHUNKS: usize = 16 * 1024;

/// A batch holds at most this many files: the workers take a batch's jobs while the walker
/// plans the next, so two batches' files are in memory at once (1,000,000 small files: peak
/// RSS 110 MiB with 16 K-file batches).
const BATCH_FILES: usize = 4096;

/// The first batch: the workers start on it while the walker plans the next ones (for a
/// tree of small files, waiting for a whole batch of 16 K files left the workers idle for a
/// third of the restore). A chunk shared by files of different batches is read once per
/// batch; the short early batches add four such boundaries.
const FIRST_BATCH_CHUNKS: usize = 1024;

/// Blobs of a pack closer than this are fetched by one read (the gap is read and dropped).
const READ_GAP_BYTES: u64 = 1024 * 1024;

/// A pack's blobs are handed out in jobs of about this much content to write.
const JOB_RAW_BYTES: u64 = 32 * 1024 * 1024;

/// Largest single read from a pack (a pack's needed parts are read in runs of at most
/// this, each byte once): bounds the memory of each worker.
const READ_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// What the restore workers share.
struct Shared<'a> {
    repo: &'a Repository,
    as_root: bool,
    report: &'a Mutex<RestoreReport>,
    errors: &'a Mutex<Vec<Error>>,
    progress: Option<&'a Progress>,
}

impl Shared<'_> {
    /// Records a failure of a file (once per file).
    fn fail(&self, file: &FileState, error: Error) {
        if !file.failed.swap(true, Ordering::AcqRel) {
            self.errors.lock().push(error);
        }
    }

    /// Counts one chunk of a file done; applies its metadata after the last.
    /// `open` is the file, when the caller has it open (its metadata is then applied through
    /// it, without looking the path up again).
    fn chunk_done(&self, file: &FileState, open: Option<&File>) {
        if file.chunks_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.file_done(file, open);
        }
    }

    fn file_done(&self, file: &FileState, open: Option<&File>) {
        if file.failed.load(Ordering::Acquire) {
            return;
        }
        if let Some(p) = self.progress {
            p.add_done(1, 0);
        }
        let warnings = match open {
            Some(f) => meta::apply_open(f, &file.node, self.as_root),
            None => meta::apply(&file.path, &file.node, self.as_root),
        };
        if !warnings.is_empty() {
            self.report.lock().warnings.extend(
                warnings
                    .into_iter()
                    .map(|w| format!("{}: {w}", file.path.display())),
            );
        }
    }

    /// Reads the blobs of one pack, in runs, and writes each where it goes. `read` and
    /// `plain_buf` are the worker's buffers, kept from job to job (freshly mapped memory
    /// for every read cost a page fault per 4 KiB).
    fn restore_pack(&self, job: &PackJob, read: &mut Vec<u8>, plain_buf: &mut Vec<u8>) {
        let name = job.pack.to_hex();
        let blobs = &job.blobs;
        let mut open: Option<(*const FileState, File)> = None;
        let mut i = 0;
        while i < blobs.len() {
            let start = u64::from(blobs[i].loc.offset);
            let mut end = start + u64::from(blobs[i].loc.sealed_len);
            let mut j = i + 1;
            while j < blobs.len() {
                let (o, n) = (
                    u64::from(blobs[j].loc.offset),
                    u64::from(blobs[j].loc.sealed_len),
                );
                if o > end + READ_GAP_BYTES || o + n - start > READ_MAX_BYTES {
                    break;
                }
                end = end.max(o + n);
                j += 1;
            }
            let fetched = self.repo.backend().read_range_into(
                FileKind::Pack,
                &name,
                start,
                end - start,
                read,
            );
            {
                let mut report = self.report.lock();
                report.pack_reads += 1;
                report.pack_bytes_read += end - start;
            }
            match fetched {
                Ok(()) => {
                    let buf = &mut *read;
                    for blob in &blobs[i..j] {
                        let at = (u64::from(blob.loc.offset) - start) as usize;
                        let len = blob.loc.sealed_len as usize;
                        let opened = match buf.get_mut(at..at + len) {
                            Some(sealed) => self
                                .repo
                                .open_blob_in_place(&blob.id, &blob.loc, sealed, plain_buf),
                            None => Err(podvault_store::Error::Corrupt {
                                what: "pack",
                                name: name.clone(),
                                reason: format!(
                                    "truncated: data blob {} lies beyond its end",
                                    blob.id.short()
                                ),
                            }),
                        };
                        match opened {
                            Ok(plain) => self.write_targets(blob, plain, &mut open),
                            Err(e) => self.fail_blob(blob, &e),
                        }
                    }
                }
                Err(e) => {
                    for blob in &blobs[i..j] {
                        self.fail_blob(blob, &e);
                    }
                }
            }
            i = j;
        }
    }

    fn fail_blob(&self, blob: &BlobJob, e: &podvault_store::Error) {
        for t in &blob.targets {
            let source = match e {
                podvault_store::Error::Corrupt { what, name, reason } => {
                    podvault_store::Error::Corrupt {
                        what,
                        name: name.clone(),
                        reason: reason.clone(),
                    }
                }
                other => podvault_store::Error::Corrupt {
                    what: "pack",
                    name: blob.loc.pack.to_hex(),
                    reason: other.to_string(),
                },
            };
            self.fail(
                &t.file,
                Error::Content {
                    path: t.file.path.clone(),
                    source,
                },
            );
            self.chunk_done(&t.file, None);
        }
    }

    /// Writes a chunk's plaintext at each of its places (keeping holes), reusing the
    /// open file while consecutive places are in the same file.
    fn write_targets(
        &self,
        blob: &BlobJob,
        plain: &[u8],
        open: &mut Option<(*const FileState, File)>,
    ) {
        for t in &blob.targets {
            let key = Arc::as_ptr(&t.file);
            let file = match open {
                Some((k, f)) if *k == key => Ok(&*f),
                _ => t.file.open().map(|f| &open.insert((key, f)).1),
            };
            let written = file.and_then(|f| {
                let _turn = t.file.writing.lock();
                let (n, wrote_end) = write_sparse(f, plain, t.offset)?;
                let end = t.offset + plain.len() as u64;
                if end == t.file.node.size && !wrote_end {
                    // The file ends in a hole: give it its length.
                    f.set_len(end)?;
                }
                Ok(n)
            });
            match written {
                Ok(n) => {
                    self.report.lock().bytes += n;
                    if let Some(p) = self.progress {
                        p.add_done(0, plain.len() as u64);
                    }
                }
                Err(source) => self.fail(
                    &t.file,
                    Error::Write {
                        path: t.file.path.clone(),
                        source,
                    },
                ),
            }
            let file = open.as_ref().filter(|(k, _)| *k == key).map(|(_, f)| f);
            self.chunk_done(&t.file, file);
        }
    }
}

/// Restores `snapshot` into `options.target`.
// Longer than most: one thread scope owns the pack workers and the walk, which borrow the
// report, the error list and the channel from this frame; split, they would need the
// same borrows threaded through.
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
    let (root, root_cursor) = repo.tree_listing(&snapshot.tree)?;
    let as_root = rustix::process::geteuid().is_root();
    let threads = if options.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        options.threads
    };
    if let Some(p) = &options.progress {
        p.set_totals(snapshot.summary.files, snapshot.summary.bytes_total);
    }
    let report = Mutex::new(RestoreReport::default());
    let errors: Mutex<Vec<Error>> = Mutex::new(Vec::new());
    let mut dirs: Vec<(PathBuf, Node)> = Vec::new();

    let shared = Shared {
        repo,
        as_root,
        report: &report,
        errors: &errors,
        progress: options.progress.as_deref(),
    };
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = bounded::<PackJob>(threads * 2);
        for _ in 0..threads {
            let rx = rx.clone();
            let shared = &shared;
            s.spawn(move || {
                let (mut read, mut plain) = (Vec::new(), Vec::new());
                for job in rx {
                    shared.restore_pack(&job, &mut read, &mut plain);
                }
            });
        }
        drop(rx);
        let (target, dirs) = (&target, &mut dirs);
        let shared = &shared;
        // The walk recurses once per directory level, down to MAX_TREE_DEPTH: it runs on a
        // thread whose stack is sized for that, whatever thread called.
        let walker = std::thread::Builder::new()
            .name("podvault-restore-walk".into())
            .stack_size(WALKER_STACK_BYTES)
            .spawn_scoped(s, move || {
                let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
                let mut w = Walker::new(shared, options.overwrite, &tx, &mut links, dirs);
                w.entry_limit = entry_limit(snapshot);
                let result = w.restore_tree(target, snapshot.tree, root, root_cursor, "", 0);
                w.flush();
                drop(tx);
                result
            })
            .map_err(|source| Error::Write {
                path: target.clone(),
                source,
            })?;
        walker.join().unwrap_or_else(|_| {
            Err(Error::UnsafeEntry {
                path: "/".into(),
                reason: "the restore's walk stopped unexpectedly".into(),
            })
        })
    })?;
    if let Some(error) = Error::of_all(errors.into_inner()) {
        return Err(error);
    }
    let mut report = report.into_inner();
    // Deepest first, the target last: a directory's times are set after its content.
    let all = dirs
        .iter()
        .rev()
        .map(|(path, node)| (path.as_path(), node))
        .chain([(target.as_path(), &snapshot.root)]);
    for (path, node) in all {
        let warnings = meta::apply(path, node, as_root);
        let said = warnings
            .into_iter()
            .map(|w| format!("{}: {w}", path.display()));
        report.warnings.extend(said);
    }
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
    shared: &'a Shared<'a>,
    tx: &'a crossbeam_channel::Sender<PackJob>,
    links: &'a mut HashMap<(u64, u64), PathBuf>,
    dirs: &'a mut Vec<(PathBuf, Node)>,
    /// The chunks of the files planned so far and not yet handed to the workers.
    batch: HashMap<BlobId, BlobJob>,
    batch_chunks: usize,
    /// The files of the current batch.
    batch_files: usize,
    /// When the current batch is handed over: small at first, so that the workers start at
    /// once, then doubling up to [`BATCH_CHUNKS`].
    batch_limit: usize,
    /// Entries walked so far.
    entries: u64,
    /// Most entries the snapshot may expand to (see [`entry_limit`]).
    entry_limit: u64,
    /// The listings of the directories being walked, outermost first: the tree's id and its
    /// plaintext, which is let go (and read again when the walk comes back to it) while the
    /// listings held pass [`LISTING_BYTES`].
    listings: Vec<(TreeId, Option<Vec<u8>>)>,
    /// Bytes of the listings held.
    listing_bytes: usize,
}

impl<'a> Walker<'a> {
    /// A walk that hands the chunks of the files it plans to the workers through `tx`,
    /// and collects in `dirs` the directories whose metadata is applied at the end.
    fn new(
        shared: &'a Shared<'a>,
        overwrite: bool,
        tx: &'a crossbeam_channel::Sender<PackJob>,
        links: &'a mut HashMap<(u64, u64), PathBuf>,
        dirs: &'a mut Vec<(PathBuf, Node)>,
    ) -> Walker<'a> {
        Walker {
            repo: shared.repo,
            overwrite,
            shared,
            tx,
            links,
            dirs,
            batch: HashMap::new(),
            batch_chunks: 0,
            batch_files: 0,
            batch_limit: FIRST_BATCH_CHUNKS,
            entries: 0,
            entry_limit: u64::MAX,
            listings: Vec::new(),
            listing_bytes: 0,
        }
    }
}

/// Bytes of directory listings (tree plaintexts) the walk keeps while it walks their
/// subdirectories: past this, outer listings are let go and read again when the walk comes
/// back to them (see [`Walker::make_room`]).
const LISTING_BYTES: usize = 48 * 1024 * 1024;

/// Stack of the thread that walks the trees: enough for MAX_TREE_DEPTH levels of
/// recursion, reserved, not touched, where the tree is shallow.
const WALKER_STACK_BYTES: usize = 256 * 1024 * 1024;

/// Most entries a snapshot's trees may expand to when restored: twice what its summary
/// records, and some. A tree may appear in several places (identical directories share
/// one), but a forged snapshot whose directories each list one subtree twice, 40 levels
/// down, would expand to 2⁴⁰ entries: it is stopped here.
fn entry_limit(snapshot: &Snapshot) -> u64 {
    let s = &snapshot.summary;
    s.files
        .saturating_add(s.dirs)
        .saturating_add(s.others)
        .saturating_mul(2)
        .saturating_add(100_000)
}

impl Walker<'_> {
    /// Leaves out an entry whose record is unusable, naming it; the restore goes on.
    fn refuse(&mut self, shown: &str, reason: impl std::fmt::Display) {
        self.shared
            .report
            .lock()
            .refused
            .push(format!("{shown}: {reason}"));
    }

    /// Restores the entries of the listing `id` (whose plaintext is `plain`, read from the
    /// start by `cursor`) into `dir`, one entry decoded at a time.
    fn restore_tree(
        &mut self,
        dir: &Path,
        id: TreeId,
        plain: Vec<u8>,
        mut cursor: NodeCursor,
        rel: &str,
        depth: usize,
    ) -> Result<()> {
        let level = self.listings.len();
        self.hold(id, plain);
        let result = self.restore_entries(dir, level, &mut cursor, rel, depth);
        if let Some((_, Some(plain))) = self.listings.pop() {
            self.listing_bytes -= plain.len();
        }
        result
    }

    /// Keeps a listing being walked.
    fn hold(&mut self, id: TreeId, plain: Vec<u8>) {
        self.listing_bytes += plain.len();
        self.listings.push((id, Some(plain)));
    }

    /// Before reading a listing of `incoming` bytes: lets held listings go, outermost first,
    /// while those held and the incoming one pass [`LISTING_BYTES`]. A listing more than
    /// four times the incoming one is kept, so that reading it again costs at most four
    /// times the reading it made room for, however many subdirectories it has.
    fn make_room(&mut self, incoming: usize) {
        for (_, held) in &mut self.listings {
            if self.listing_bytes + incoming <= LISTING_BYTES {
                break;
            }
            if held
                .as_ref()
                .is_some_and(|plain| plain.len() <= incoming.saturating_mul(4))
                && let Some(plain) = held.take()
            {
                self.listing_bytes -= plain.len();
            }
        }
    }

    /// The plaintext size of a listing, as the index records it.
    fn listing_len(&self, id: &TreeId) -> usize {
        self.repo
            .locate(&BlobId::from(*id))
            .map_or(0, |loc| loc.raw_len as usize)
    }

    /// The next entry of the listing at `level`, read again if it was let go.
    fn next_entry(
        &mut self,
        level: usize,
        cursor: &mut NodeCursor,
    ) -> std::result::Result<Option<Entry>, String> {
        let plain = match self.listings[level].1.take() {
            Some(plain) => plain,
            None => {
                let id = self.listings[level].0;
                self.make_room(self.listing_len(&id));
                let plain = self
                    .repo
                    .tree_bytes(&id)
                    .map_err(|e| format!("reading it again failed: {e}"))?;
                self.listing_bytes += plain.len();
                plain
            }
        };
        let next = cursor.next_entry(&plain);
        self.listings[level].1 = Some(plain);
        next.map_err(|e| e.to_string())
    }

    fn restore_entries(
        &mut self,
        dir: &Path,
        level: usize,
        cursor: &mut NodeCursor,
        rel: &str,
        depth: usize,
    ) -> Result<()> {
        // Names are sorted and unique: a duplicate follows its twin. In a listing found out
        // of order (not one podvault writes) a twin may be anywhere: the repeated entries
        // are then found in one pass over it.
        let mut previous: Option<Vec<u8>> = None;
        let mut repeated: Option<Vec<u64>> = None;
        let mut index = 0u64;
        loop {
            let entry = match self.next_entry(level, cursor) {
                Ok(Some(entry)) => entry,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let shown = if rel.is_empty() { "/" } else { rel };
                    self.refuse(
                        shown,
                        format!("its listing cannot be read past entry {index}: {e}"),
                    );
                    return Ok(());
                }
            };
            let at = index;
            index += 1;
            let node = &entry.node;
            let shown = format!("{rel}/{}", node.display_name());
            if !node.has_safe_name() {
                self.refuse(&shown, "its name could escape the target directory");
                continue;
            }
            if repeated.is_none() && previous.as_ref().is_some_and(|p| *p > node.name) {
                let (id, held) = &self.listings[level];
                repeated = Some(match held.as_deref() {
                    Some(plain) => podvault_store::repeated_entries(plain),
                    None => self
                        .repo
                        .tree_bytes(id)
                        .map(|plain| podvault_store::repeated_entries(&plain))
                        .unwrap_or_default(),
                });
            }
            let twice = match &repeated {
                Some(repeated) => repeated.binary_search(&at).is_ok(),
                None => previous.as_ref() == Some(&node.name),
            };
            if twice {
                self.refuse(&shown, "the name appears twice in its directory");
                continue;
            }
            self.entries += 1;
            if self.entries > self.entry_limit {
                return Err(Error::UnsafeEntry {
                    path: shown,
                    reason: format!(
                        "the snapshot's trees hold more entries than its summary records \
                         ({}): its trees repeat themselves, refusing to go on",
                        self.entry_limit
                    ),
                });
            }
            let path = dir.join(OsStr::from_bytes(&node.name));
            // A file whose chunk ids were left in the listing reads them from it.
            let plain = if entry.chunks_in_place() {
                self.listings[level].1.take()
            } else {
                None
            };
            let restored = self.restore_node(
                &path,
                &entry,
                plain.as_deref().unwrap_or_default(),
                &shown,
                depth,
            );
            if plain.is_some() {
                self.listings[level].1 = plain;
            }
            restored?;
            previous = Some(entry.node.name);
        }
    }

    /// Restores a directory entry: the directory (replacing what else is there), then its
    /// listing, refused when missing, unreadable or nested too deep.
    fn restore_dir(&mut self, path: &Path, node: &Node, shown: &str, depth: usize) -> Result<()> {
        let write_err = |source: std::io::Error| Error::Write {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                match std::fs::symlink_metadata(path) {
                    Ok(m) if m.is_dir() => {}
                    _ => {
                        self.clear(path)?;
                        std::fs::create_dir(path).map_err(write_err)?;
                    }
                }
            }
            Err(e) => return Err(write_err(e)),
        }
        let Some(subtree) = node.subtree else {
            self.refuse(shown, "a directory without its listing");
            return Ok(());
        };
        if depth >= podvault_store::limits::MAX_TREE_DEPTH {
            self.refuse(
                shown,
                format!(
                    "directories nested deeper than {} levels",
                    podvault_store::limits::MAX_TREE_DEPTH
                ),
            );
            return Ok(());
        }
        self.make_room(self.listing_len(&subtree));
        let (plain, cursor) = match self.repo.tree_listing(&subtree) {
            Ok(l) => l,
            Err(e) => {
                self.refuse(shown, format!("its listing cannot be read: {e}"));
                return Ok(());
            }
        };
        self.dirs.push((path.to_path_buf(), node.clone()));
        self.restore_tree(path, subtree, plain, cursor, shown, depth + 1)?;
        Ok(())
    }

    /// Restores a file entry: a link to the first member of its hard-link group, or its
    /// content queued for the workers.
    fn restore_file(
        &mut self,
        path: &Path,
        entry: &Entry,
        plain: &[u8],
        shown: &str,
    ) -> Result<()> {
        let node = &entry.node;
        let write_err = |source: std::io::Error| Error::Write {
            path: path.to_path_buf(),
            source,
        };
        // A later member of a hard-link group is a link to the first, whatever
        // content it lists.
        let first = (node.links > 1)
            .then(|| self.links.get(&(node.device, node.inode)).cloned())
            .flatten();
        if let Some(first) = first {
            self.clear(path)?;
            self.shared.report.lock().files += 1;
            std::fs::hard_link(first, path).map_err(write_err)?;
            return Ok(());
        }
        let locs = match self.content_of(entry, plain) {
            Ok(locs) => locs,
            Err(reason) => {
                self.refuse(shown, reason);
                return Ok(());
            }
        };
        self.clear(path)?;
        self.shared.report.lock().files += 1;
        if node.links > 1 {
            self.links
                .insert((node.device, node.inode), path.to_path_buf());
        }
        self.queue_file(path, entry, plain, locs)?;
        Ok(())
    }

    /// Restores one entry; `plain` is its listing when its chunk ids were left there.
    fn restore_node(
        &mut self,
        path: &Path,
        entry: &Entry,
        plain: &[u8],
        shown: &str,
        depth: usize,
    ) -> Result<()> {
        let node = &entry.node;
        let write_err = |source: std::io::Error| Error::Write {
            path: path.to_path_buf(),
            source,
        };
        match node.kind {
            NodeKind::Dir => self.restore_dir(path, node, shown, depth)?,
            NodeKind::File => self.restore_file(path, entry, plain, shown)?,
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

    /// Where a file's chunks are, if its content can be restored as recorded: every chunk
    /// in the index as a data blob within the chunk limit, adding up to the file's size.
    /// The places are kept for a file of up to [`BATCH_CHUNKS`] chunks; a larger one's are
    /// looked up again as they are queued, batch by batch, so that its plan never holds
    /// more than a batch.
    /// `plain` is the entry's listing when its chunk ids were left there.
    fn content_of(
        &self,
        entry: &Entry,
        plain: &[u8],
    ) -> std::result::Result<Vec<BlobLocation>, String> {
        let mut total = 0u64;
        let count = entry.chunk_count();
        let keep = count <= BATCH_CHUNKS;
        let mut locs = Vec::with_capacity(if keep { count } else { 0 });
        for id in entry.chunks(plain) {
            match self.repo.locate(&id) {
                None => return Err(format!("its chunk {} is not in the index", id.short())),
                Some(loc) if loc.kind != BlobKind::Data => {
                    return Err(format!(
                        "its content names {} blob {}",
                        loc.kind,
                        id.short()
                    ));
                }
                Some(loc) if loc.raw_len as usize > self.repo.blob_limit(BlobKind::Data) => {
                    return Err(format!(
                        "its chunk {} claims {} bytes, more than the chunker's maximum {}",
                        id.short(),
                        loc.raw_len,
                        self.repo.blob_limit(BlobKind::Data)
                    ));
                }
                Some(loc) => {
                    total += u64::from(loc.raw_len);
                    if keep {
                        locs.push(loc);
                    }
                }
            }
        }
        if total != entry.node.size {
            return Err(format!(
                "its chunks hold {total} bytes but the snapshot says {}",
                entry.node.size
            ));
        }
        Ok(locs)
    }

    /// Queues the jobs that write a file. A file that is hard-linked (so that the links can be
    /// made at once) or empty is created here; any other by the worker writing its first
    /// chunk.
    /// `locs` are the places of its chunks ([`Self::content_of`]), `plain` its listing when
    /// its chunk ids were left there.
    fn queue_file(
        &mut self,
        path: &Path,
        entry: &Entry,
        plain: &[u8],
        locs: Vec<BlobLocation>,
    ) -> Result<()> {
        let node = &entry.node;
        let count = entry.chunk_count();
        // A file that others link to must exist before the links; an empty one gets no chunk.
        let create_now = node.links > 1 || count == 0;
        if create_now {
            create_new(path).map_err(|source| Error::Write {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let state = Arc::new(FileState {
            path: path.to_path_buf(),
            // Only what the metadata and the length need: a batch holds one per file, and
            // its content, prints and names would double what a batch of small files costs.
            node: Node {
                kind: node.kind,
                mode: node.mode,
                uid: node.uid,
                gid: node.gid,
                mtime: node.mtime,
                mtime_nsec: node.mtime_nsec,
                size: node.size,
                xattrs: node.xattrs.clone(),
                ..Node::plain(b"", NodeKind::File)
            },
            chunks_left: AtomicUsize::new(count),
            failed: AtomicBool::new(false),
            created: Mutex::new(create_now),
            writing: Mutex::new(()),
        });
        if count == 0 {
            self.shared.file_done(&state, None);
            return Ok(());
        }
        let mut offset = 0u64;
        self.batch_files += 1;
        for (i, id) in entry.chunks(plain).enumerate() {
            // Checked by content_of: every chunk is in the index.
            let Some(loc) = locs.get(i).copied().or_else(|| self.repo.locate(&id)) else {
                continue;
            };
            self.batch
                .entry(id)
                .or_insert_with(|| BlobJob {
                    id,
                    loc,
                    targets: Vec::new(),
                })
                .targets
                .push(Target {
                    file: state.clone(),
                    offset,
                });
            offset += u64::from(loc.raw_len);
            self.batch_chunks += 1;
            // A large file's chunks are handed over batch by batch.
            if self.batch_chunks >= BATCH_CHUNKS {
                self.flush();
            }
        }
        if self.batch_chunks >= self.batch_limit || self.batch_files >= BATCH_FILES {
            self.batch_limit = (self.batch_limit * 2).min(BATCH_CHUNKS);
            self.flush();
        }
        Ok(())
    }

    /// Hands the planned chunks to the workers, one job per pack.
    fn flush(&mut self) {
        let mut packs: HashMap<PackId, Vec<BlobJob>> = HashMap::new();
        for (_, blob) in self.batch.drain() {
            packs.entry(blob.loc.pack).or_default().push(blob);
        }
        self.batch_chunks = 0;
        self.batch_files = 0;
        // A pack's blobs in order, cut into jobs of about JOB_RAW_BYTES of content, so that a
        // few packs of well-compressed data still keep every worker busy; the jobs of a pack
        // read disjoint parts of it.
        let mut jobs: Vec<PackJob> = Vec::new();
        for (pack, mut blobs) in packs {
            blobs.sort_by_key(|b| b.loc.offset);
            let mut job = PackJob {
                pack,
                blobs: Vec::new(),
            };
            let mut raw = 0u64;
            for blob in blobs {
                raw += u64::from(blob.loc.raw_len) * blob.targets.len() as u64;
                job.blobs.push(blob);
                if raw >= JOB_RAW_BYTES {
                    jobs.push(std::mem::replace(
                        &mut job,
                        PackJob {
                            pack,
                            blobs: Vec::new(),
                        },
                    ));
                    raw = 0;
                }
            }
            if !job.blobs.is_empty() {
                jobs.push(job);
            }
        }
        jobs.sort_by_key(|j| (j.pack, j.blobs.first().map(|b| b.loc.offset)));
        for job in jobs {
            if self.tx.send(job).is_err() {
                break;
            }
        }
    }

    fn finish_other(&mut self, path: &Path, node: &Node) {
        let warnings = meta::apply(path, node, self.shared.as_root);
        let mut r = self.shared.report.lock();
        r.others += 1;
        r.warnings.extend(
            warnings
                .into_iter()
                .map(|w| format!("{}: {w}", path.display())),
        );
    }

    /// Removes an existing non-directory entry (only with `--overwrite`). Directories in the
    /// way of a non-directory are an error. Without `--overwrite` the target was checked
    /// empty and each name comes once, so nothing is looked up: creating refuses anything
    /// that appeared meanwhile.
    fn clear(&self, path: &Path) -> Result<()> {
        if !self.overwrite {
            return Ok(());
        }
        match std::fs::symlink_metadata(path) {
            Err(_) => Ok(()),
            Ok(m) if m.is_dir() => Err(Error::Write {
                path: path.to_path_buf(),
                source: std::io::Error::other("a directory is in the way"),
            }),
            Ok(_) => std::fs::remove_file(path).map_err(|source| Error::Write {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// Holes are kept at this granularity: aligned all-zero blocks of this size are not written.
const HOLE_BLOCK_BYTES: u64 = 4096;

/// Writes `data` at `offset`, skipping aligned all-zero blocks so they stay holes in the
/// (freshly created) file; returns the bytes actually written and whether the last of `data`
/// was.
fn write_sparse(file: &File, data: &[u8], offset: u64) -> std::io::Result<(u64, bool)> {
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
    let wrote_end = match run_start {
        Some(start) => {
            file.write_all_at(&data[start..], offset + start as u64)?;
            written += (data.len() - start) as u64;
            true
        }
        None => data.is_empty(),
    };
    Ok((written, wrote_end))
}
