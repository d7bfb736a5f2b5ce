//! Many processes on one repository without a global lock: sessions, deletion markers,
//! the two-phase prune, recovery of packs an interrupted backup left unindexed, and index
//! repair. The reasoning is in `store/FORMAT.md` ("Concurrency").

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, FileKind};
use crate::crypto::Sealer;
use crate::error::{Error, Result};
use crate::index::IndexPack;
use crate::pack::{PackRecord, header_length, parse_header};
use crate::{
    BlobId, BlobKind, BlobLocation, NodeKind, PackId, Repository, Snapshot, SnapshotId, TreeId,
};

const SESSION_AAD: &[u8] = b"podvault session v1";
const MARKER_AAD: &[u8] = b"podvault deletion v1";

/// How often a session file is rewritten to show its process is alive.
pub const SESSION_REFRESH: Duration = Duration::from_secs(60);
/// A session not refreshed for this long belongs to a process that died (or lost the
/// store): it no longer holds back a prune.
pub const SESSION_STALE: Duration = Duration::from_secs(10 * 60);
/// A process stops writing snapshots once its own session has gone this long without a
/// successful refresh, well before others may judge it stale.
const SESSION_SELF_LIMIT: Duration = Duration::from_secs(7 * 60);
/// Bytes read from the end of a pack to find its header in one request, usually.
const TAIL_BYTES: u64 = 64 * 1024;

/// What a session file says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Host name of the process.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// What it is doing (`backup`, `restore`, `prune`…).
    pub command: String,
    /// When it started.
    pub started: chrono::DateTime<chrono::Utc>,
    /// When it last said it was alive.
    pub refreshed: chrono::DateTime<chrono::Utc>,
}

impl SessionInfo {
    /// Whether the process may still be working: refreshed recently, and (on this host)
    /// its process exists.
    pub fn is_live(&self) -> bool {
        let age = chrono::Utc::now() - self.refreshed;
        if age.to_std().unwrap_or_default() > SESSION_STALE {
            return false;
        }
        if self.host == crate::this_host() {
            return process_exists(self.pid);
        }
        true
    }
}

fn process_exists(pid: u32) -> bool {
    match rustix::process::Pid::from_raw(pid as i32) {
        Some(pid) => !matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        ),
        None => false,
    }
}

/// The shared view of a session's health, checked before a snapshot is written.
pub(crate) struct SessionHealth {
    /// The session file's name, written into this process's index files.
    pub(crate) name: String,
    last_ok: Mutex<Instant>,
}

/// This process's session: its file is refreshed in the background and removed when the
/// session is dropped.
pub struct Session {
    name: String,
    backend: Arc<dyn Backend>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Session {
    /// The session file's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Err(e) = self.backend.delete(FileKind::Session, &self.name) {
            tracing::warn!("could not remove session {}: {e}", self.name);
        }
    }
}

/// A prune's list of packs to delete once no session that might use them remains.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Marker {
    created: chrono::DateTime<chrono::Utc>,
    packs: Vec<PackId>,
    /// Sessions live when the marker was written; `None` until they are recorded.
    sessions: Option<Vec<String>>,
}

fn seal_cbor<T: Serialize>(sealer: &Sealer, aad: &[u8], value: &T) -> Result<Vec<u8>> {
    let mut plain = Vec::new();
    ciborium::into_writer(value, &mut plain).map_err(|e| Error::Crypto(e.to_string()))?;
    sealer.seal(aad, &plain)
}

fn open_cbor<T: serde::de::DeserializeOwned>(
    sealer: &Sealer,
    aad: &[u8],
    what: &'static str,
    name: &str,
    sealed: &[u8],
) -> Result<T> {
    let plain = sealer
        .open(aad, sealed)
        .map_err(|_| Error::corrupt(what, name, "fails authentication"))?;
    ciborium::from_reader(plain.as_slice())
        .map_err(|e| Error::corrupt(what, name, format!("cannot decode: {e}")))
}

fn random_name() -> Result<String> {
    let mut id = [0u8; 16];
    crate::crypto::random_bytes(&mut id)?;
    Ok(hex::encode(id))
}

/// What `prune` did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    /// Snapshots whose data was kept.
    pub snapshots: usize,
    /// Packs examined.
    pub packs: usize,
    /// Packs holding nothing any snapshot uses.
    pub packs_unused: usize,
    /// Packs mostly garbage, whose used blobs were copied into new packs.
    pub packs_repacked: usize,
    /// Blobs copied by repacking.
    pub blobs_repacked: usize,
    /// Bytes of those blobs.
    pub bytes_repacked: u64,
    /// Packs no snapshot uses yet, left alone because a session still running wrote them
    /// (or, not indexed yet, may have).
    pub packs_running: usize,
    /// Packs marked for deletion by this run.
    pub packs_marked: usize,
    /// Packs deleted by this run (marked by it or earlier).
    pub packs_deleted: usize,
    /// Bytes those packs took.
    pub bytes_freed: u64,
    /// Marked packs kept because a snapshot written meanwhile uses them.
    pub packs_rescued: usize,
    /// Index files replaced by smaller ones.
    pub index_files_rewritten: usize,
    /// Deletions left for a later prune: sessions that may still use the packs.
    pub waiting_for: Vec<String>,
    /// Those of them whose session file cannot be read (damaged, or written by a newer
    /// version): they count as live until removed (`repo sessions --remove`).
    pub unreadable_sessions: Vec<String>,
    /// Temporary files of writes interrupted long ago (a process that died mid-write),
    /// removed.
    pub partials_removed: usize,
    /// Bytes those took.
    pub partial_bytes: u64,
    /// Whether nothing was changed.
    pub dry_run: bool,
}

/// How old a temporary file of an interrupted write must be before prune removes it: far
/// longer than any write takes, and than clocks of hosts sharing a file system disagree.
pub const STALE_PARTIAL_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Choices for `prune`.
#[derive(Clone, Copy, Debug)]
pub struct PruneOptions {
    /// Repack a pack when less than this share (0 to 1) of its bytes is in use.
    pub repack_below: f64,
    /// Report only.
    pub dry_run: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            repack_below: 0.5,
            dry_run: false,
        }
    }
}

/// What `repo repair index` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairReport {
    /// Packs whose headers were read.
    pub packs: usize,
    /// Blobs indexed.
    pub blobs: usize,
    /// Packs whose header could not be read, with the reason (their blobs are lost).
    pub damaged: Vec<String>,
    /// Index files written.
    pub index_files_written: usize,
    /// Index files replaced.
    pub index_files_removed: usize,
}

/// A key file as listed by `repo key list`.
#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    /// The key's id.
    pub id: String,
    /// When it was added.
    pub created: chrono::DateTime<chrono::Utc>,
    /// Where and by whom.
    pub host: String,
    /// User name.
    pub username: String,
    /// Whether it is the key this process opened the repository with.
    pub current: bool,
}

impl Repository {
    pub(crate) fn start_session(&self, command: &str) -> Result<Session> {
        let name = random_name()?;
        let now = chrono::Utc::now();
        let info = SessionInfo {
            host: crate::this_host(),
            pid: std::process::id(),
            command: command.to_string(),
            started: now,
            refreshed: now,
        };
        let sealer = self.master_key().derive()?.sealer;
        self.backend().write(
            FileKind::Session,
            &name,
            &seal_cbor(&sealer, SESSION_AAD, &info)?,
        )?;
        let health = Arc::new(SessionHealth {
            name: name.clone(),
            last_ok: Mutex::new(Instant::now()),
        });
        *self.session.lock() = Some(health.clone());
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let (stop, backend, name) = (stop.clone(), self.backend().clone(), name.clone());
            std::thread::Builder::new()
                .name("podvault-session".into())
                .spawn(move || {
                    let mut info = info;
                    loop {
                        {
                            let mut stopped = stop.0.lock();
                            if !*stopped {
                                stop.1.wait_for(&mut stopped, SESSION_REFRESH);
                            }
                            if *stopped {
                                return;
                            }
                        }
                        info.refreshed = chrono::Utc::now();
                        let written = seal_cbor(&sealer, SESSION_AAD, &info)
                            .and_then(|b| backend.write(FileKind::Session, &name, &b));
                        match written {
                            Ok(()) => *health.last_ok.lock() = Instant::now(),
                            Err(e) => tracing::warn!("could not refresh session {name}: {e}"),
                        }
                    }
                })
                .map_err(|e| Error::io("session thread", e))?
        };
        Ok(Session {
            name,
            backend: self.backend().clone(),
            stop,
            thread: Some(thread),
        })
    }

    /// Fails if this process's session has not been refreshed for too long.
    pub(crate) fn check_session(&self) -> Result<()> {
        if let Some(health) = self.session.lock().as_ref() {
            let age = health.last_ok.lock().elapsed();
            if age > SESSION_SELF_LIMIT {
                return Err(Error::InvalidParameter {
                    name: "session",
                    reason: format!(
                        "this process could not show {} it is alive for {} s; a prune may \
                         have removed data it uses, so no snapshot is written",
                        self.backend().location(),
                        age.as_secs()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Every session file: name, and its content if it can be read.
    pub fn sessions(&self) -> Result<Vec<(String, Option<SessionInfo>)>> {
        let mut out = Vec::new();
        for (name, _) in self.backend().list(FileKind::Session)? {
            let info = match self.backend().read(FileKind::Session, &name) {
                Ok(bytes) => open_cbor(self.sealer(), SESSION_AAD, "session", &name, &bytes).ok(),
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            out.push((name, info));
        }
        Ok(out)
    }

    /// Removes the session file `reference` (its name or a unique prefix of at least 4 hex
    /// digits) of a process that is gone, so it no longer holds back a prune; returns its
    /// name. A session that is live is refused. One that cannot be read (damaged, or
    /// written by a newer version) is removed: only an administrator who knows no process
    /// uses it asks for that.
    pub fn remove_session(&self, reference: &str) -> Result<String> {
        let sessions = self.sessions()?;
        let bad = |reason: String| Error::InvalidParameter {
            name: "session",
            reason: format!("{reference}: {reason}"),
        };
        let (name, info) =
            by_prefix(&sessions, |(n, _)| n.as_str(), reference, "session").map_err(bad)?;
        if let Some(info) = info.as_ref().filter(|i| i.is_live()) {
            return Err(bad(format!(
                "it is live ({} on host {}, pid {}, refreshed {}): it ends by itself, or goes \
                 stale {} min after its process stops",
                info.command,
                info.host,
                info.pid,
                info.refreshed.format("%Y-%m-%d %H:%M:%S UTC"),
                SESSION_STALE.as_secs() / 60
            )));
        }
        self.backend().delete(FileKind::Session, name)?;
        Ok(name.clone())
    }

    /// Names of the sessions that may still be working (an unreadable session file counts
    /// as live: it is not safe to assume otherwise), except `own`.
    fn live_sessions(&self, own: &str) -> Result<Vec<String>> {
        Ok(self
            .sessions()?
            .into_iter()
            .filter(|(name, info)| name != own && info.as_ref().is_none_or(|i| i.is_live()))
            .map(|(name, _)| name)
            .collect())
    }

    fn markers(&self) -> Result<Vec<(String, Marker)>> {
        let mut out = Vec::new();
        for (name, _) in self.backend().list(FileKind::Deletion)? {
            let bytes = match self.backend().read(FileKind::Deletion, &name) {
                Ok(b) => b,
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            out.push((
                name.clone(),
                open_cbor(self.sealer(), MARKER_AAD, "deletion marker", &name, &bytes)?,
            ));
        }
        Ok(out)
    }

    fn write_marker(&self, name: &str, marker: &Marker) -> Result<()> {
        self.backend().write(
            FileKind::Deletion,
            name,
            &seal_cbor(self.sealer(), MARKER_AAD, marker)?,
        )
    }

    /// Packs some prune marked for deletion.
    pub(crate) fn marked_packs(&self) -> Result<HashSet<PackId>> {
        Ok(self
            .markers()?
            .into_iter()
            .flat_map(|(_, m)| m.packs)
            .collect())
    }

    /// The blob records of a pack, from its header (two ranged reads at most).
    pub(crate) fn read_pack_header(&self, name: &str, size: u64) -> Result<Vec<PackRecord>> {
        let tail_len = size.min(TAIL_BYTES);
        let mut tail =
            self.backend()
                .read_range(FileKind::Pack, name, size - tail_len, tail_len)?;
        if tail.len() as u64 != tail_len {
            return Err(Error::corrupt("pack", name, "shorter than listed"));
        }
        let header_len = header_length(name, size, &tail)?;
        let need = header_len as u64 + 4;
        if need > tail_len {
            tail = self
                .backend()
                .read_range(FileKind::Pack, name, size - need, need)?;
            if tail.len() as u64 != need {
                return Err(Error::corrupt("pack", name, "shorter than listed"));
            }
        }
        let sealed = &tail[tail.len() - 4 - header_len..tail.len() - 4];
        parse_header(self.sealer(), name, size - need, sealed)
    }

    /// Indexes the packs that an interrupted backup uploaded but did not index (leaving
    /// out packs marked for deletion), so their blobs are not uploaded again. Returns how
    /// many packs were recovered.
    pub(crate) fn recover_unindexed_packs(&self, marked: &HashSet<PackId>) -> Result<usize> {
        let known: HashSet<PackId> = self.index_packs().into_iter().collect();
        let mut found = Vec::new();
        for (name, size) in self.backend().list(FileKind::Pack)? {
            let Some(id) = PackId::from_hex(&name) else {
                continue;
            };
            if known.contains(&id) || marked.contains(&id) {
                continue;
            }
            match self.read_pack_header(&name, size) {
                Ok(records) => found.push((id, records)),
                Err(e) => tracing::warn!("not reusing unindexed pack {name}: {e}"),
            }
        }
        let n = found.len();
        if n > 0 {
            tracing::info!("indexing {n} packs an interrupted backup left unindexed");
            self.adopt_packs(found);
        }
        Ok(n)
    }

    /// Every blob (data and tree) the snapshots use, and the snapshots. Fails on any
    /// unreadable snapshot or tree: nothing may be deleted on partial knowledge.
    fn used_blobs(&self) -> Result<(HashSet<BlobId>, HashSet<SnapshotId>)> {
        let mut used = HashSet::new();
        let mut seen = HashSet::new();
        if self.add_new_snapshots(&mut used, &mut seen)? == 0 {
            self.load_index(crate::Access::Read)?;
        }
        Ok((used, seen))
    }

    /// Adds to `used` the blobs of every snapshot not in `seen` (and adds those to `seen`);
    /// returns how many there were.
    fn add_new_snapshots(
        &self,
        used: &mut HashSet<BlobId>,
        seen: &mut HashSet<SnapshotId>,
    ) -> Result<usize> {
        // Only snapshots not seen before are read (and decrypted) again.
        let fresh: Vec<Snapshot> = self
            .snapshots_not_in(seen)?
            .into_iter()
            .map(|(id, s)| {
                seen.insert(id);
                s
            })
            .collect();
        if fresh.is_empty() {
            return Ok(0);
        }
        // Reloaded after listing the snapshots, whole (marked packs too): a writer writes
        // its index files before its snapshot, so every tree listed is found.
        self.load_index(crate::Access::Read)?;
        let mut stack: Vec<TreeId> = fresh.iter().map(|s| s.tree).collect();
        while let Some(tree_id) = stack.pop() {
            if !used.insert(BlobId::from(tree_id)) {
                continue;
            }
            self.for_each_entry(&tree_id, |entry, plain| {
                match entry.node.kind {
                    NodeKind::Dir => stack.extend(entry.node.subtree),
                    NodeKind::File => used.extend(entry.chunks(plain)),
                    _ => {}
                }
                Ok(())
            })?;
        }
        Ok(fresh.len())
    }

    /// Every index file with its packs.
    fn index_files(&self) -> Result<Vec<(String, Vec<IndexPack>)>> {
        Ok(self
            .read_all_index_files()?
            .into_iter()
            .map(|(name, file)| (name, file.packs))
            .collect())
    }

    /// Removes data no snapshot uses, in two phases (see FORMAT.md): packs are first marked,
    /// then deleted by this or a later prune once every session that was running when they
    /// were marked has ended. Packs mostly garbage are repacked first. Temporary files of
    /// writes interrupted more than [`STALE_PARTIAL_AGE`] ago go too. `own` is the session
    /// this prune runs in.
    pub fn prune(&self, own: &Session, options: PruneOptions) -> Result<PruneReport> {
        let mut report = self.prune_packs(own, options)?;
        (report.partials_removed, report.partial_bytes) = self
            .backend()
            .stale_partials(STALE_PARTIAL_AGE, !options.dry_run)?;
        Ok(report)
    }

    fn prune_packs(&self, own: &Session, options: PruneOptions) -> Result<PruneReport> {
        let mut report = PruneReport {
            dry_run: options.dry_run,
            ..PruneReport::default()
        };
        for (name, info) in self.sessions()? {
            if name != own.name()
                && let Some(info) = info.filter(|i| i.is_live() && i.command == "prune")
            {
                return Err(Error::InvalidParameter {
                    name: "prune",
                    reason: format!(
                        "another prune is running on {} (host {}, pid {}, since {})",
                        self.backend().location(),
                        info.host,
                        info.pid,
                        info.started
                    ),
                });
            }
        }
        // Sessions running now may be writing packs no snapshot names yet: listed before
        // the snapshots, and again after the index files are read (below).
        let mut live: HashSet<String> = self.live_sessions(own.name())?.into_iter().collect();
        let (mut used, mut seen) = self.used_blobs()?;
        let present: HashMap<String, u64> =
            self.backend().list(FileKind::Pack)?.into_iter().collect();
        let mut markers = self.markers()?;
        let marked: HashSet<PackId> = markers.iter().flat_map(|(_, m)| m.packs.clone()).collect();

        // Phase 1: choose packs to drop and to repack.
        let mut contents: HashMap<PackId, Vec<PackRecord>> = HashMap::new();
        let mut writers: HashMap<PackId, String> = HashMap::new();
        for (_, file) in self.read_all_index_files()? {
            for pack in file.packs {
                if let Some(session) = &file.session {
                    writers.insert(pack.id, session.clone());
                }
                contents.entry(pack.id).or_insert_with(|| records_of(&pack));
            }
        }
        let mut unindexed = HashSet::new();
        for (name, &size) in &present {
            if let Some(id) = PackId::from_hex(name)
                && !contents.contains_key(&id)
                && !marked.contains(&id)
                && let Ok(records) = self.read_pack_header(name, size)
            {
                contents.insert(id, records);
                unindexed.insert(id);
            }
        }
        // A backup that ended meanwhile wrote its snapshot first: its blobs count as used.
        live.extend(self.live_sessions(own.name())?);
        self.add_new_snapshots(&mut used, &mut seen)?;
        report.snapshots = seen.len();
        // The packs of backups still running (indexed under their session, or not indexed
        // yet while any session runs) are left alone: their snapshots will use them, and a
        // marked pack is one no writer may deduplicate against until a later prune.
        let running: HashSet<PackId> = contents
            .keys()
            .filter(|id| {
                writers.get(id).is_some_and(|s| live.contains(s))
                    || (unindexed.contains(id) && !live.is_empty())
            })
            .copied()
            .collect();
        let mut unused = Vec::new();
        let mut repack = Vec::new();
        for (id, records) in &contents {
            let Some(&size) = present.get(&id.to_hex()) else {
                continue;
            };
            if marked.contains(id) {
                continue;
            }
            report.packs += 1;
            if running.contains(id) {
                report.packs_running += 1;
                continue;
            }
            let used_bytes: u64 = records
                .iter()
                .filter(|r| used.contains(&r.id))
                .map(|r| u64::from(r.sealed_len))
                .sum();
            if used_bytes == 0 {
                unused.push(*id);
            } else if (used_bytes as f64) < options.repack_below * size as f64 {
                repack.push(*id);
            }
        }
        report.packs_unused = unused.len();
        report.packs_repacked = repack.len();
        let candidates: HashSet<PackId> = unused.iter().chain(&repack).copied().collect();
        let elsewhere: HashSet<BlobId> = contents
            .iter()
            .filter(|(id, _)| !candidates.contains(id) && !marked.contains(id))
            .filter(|(id, _)| present.contains_key(&id.to_hex()))
            .flat_map(|(_, records)| records.iter().map(|r| r.id))
            .collect();
        let mut copied: HashSet<BlobId> = HashSet::new();
        for pack in &repack {
            let records = &contents[pack];
            let wanted: Vec<&PackRecord> = records
                .iter()
                .filter(|r| used.contains(&r.id) && !elsewhere.contains(&r.id))
                .filter(|r| !copied.contains(&r.id))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            report.blobs_repacked += wanted.len();
            report.bytes_repacked += wanted.iter().map(|r| u64::from(r.raw_len)).sum::<u64>();
            if options.dry_run {
                continue;
            }
            let bytes = self.backend().read(FileKind::Pack, &pack.to_hex())?;
            for r in wanted {
                let loc = BlobLocation {
                    pack: *pack,
                    offset: r.offset,
                    sealed_len: r.sealed_len,
                    raw_len: r.raw_len,
                    kind: r.kind,
                    flags: r.flags,
                };
                let sealed = bytes
                    .get(r.offset as usize..(r.offset + r.sealed_len) as usize)
                    .ok_or_else(|| Error::corrupt("pack", pack.to_hex(), "blob beyond end"))?;
                let plain = self.open_blob(&r.id, &loc, sealed)?;
                self.save_copy(r.kind, r.id, &plain)?;
                copied.insert(r.id);
            }
        }
        if options.dry_run {
            report.packs_marked = candidates.len();
            return Ok(report);
        }
        self.flush()?;
        if !candidates.is_empty() {
            let name = random_name()?;
            let mut marker = Marker {
                created: chrono::Utc::now(),
                packs: candidates.iter().copied().collect(),
                sessions: None,
            };
            self.write_marker(&name, &marker)?;
            // Listed after the marker is written: a session that starts later reads the
            // marker and never reuses these packs.
            marker.sessions = Some(self.live_sessions(own.name())?);
            self.write_marker(&name, &marker)?;
            report.packs_marked = candidates.len();
            markers.push((name, marker));
        }

        // Phase 2: delete what no session that might use it still runs for.
        let mut ready = Vec::new();
        let live = self.live_sessions(own.name())?;
        for (name, mut marker) in markers {
            let waiting: Vec<String> = match &marker.sessions {
                Some(listed) => listed
                    .iter()
                    .filter(|s| live.contains(*s))
                    .cloned()
                    .collect(),
                None => {
                    marker.sessions = Some(live.clone());
                    self.write_marker(&name, &marker)?;
                    live.clone()
                }
            };
            if waiting.is_empty() {
                ready.push((name, marker));
            } else {
                report.waiting_for.extend(waiting);
            }
        }
        report.waiting_for.sort();
        report.waiting_for.dedup();
        if !report.waiting_for.is_empty() {
            report.unreadable_sessions = self
                .sessions()?
                .into_iter()
                .filter(|(name, info)| info.is_none() && report.waiting_for.contains(name))
                .map(|(name, _)| name)
                .collect();
        }
        if ready.is_empty() {
            return Ok(report);
        }
        // The blobs used at phase 1, and those of snapshots written since (a snapshot
        // forgotten meanwhile still counts: its packs wait for the next prune).
        self.add_new_snapshots(&mut used, &mut seen)?;
        let all_marked: HashSet<PackId> = self.marked_packs()?;
        let index_files = self.index_files()?;
        let mut indexed: HashMap<PackId, Vec<PackRecord>> = HashMap::new();
        for (_, packs) in &index_files {
            for pack in packs {
                indexed.entry(pack.id).or_insert_with(|| records_of(pack));
            }
        }
        let present: HashMap<String, u64> =
            self.backend().list(FileKind::Pack)?.into_iter().collect();
        let mut safe: HashSet<BlobId> = indexed
            .iter()
            .filter(|(id, _)| !all_marked.contains(id) && present.contains_key(&id.to_hex()))
            .flat_map(|(_, records)| records.iter().map(|r| r.id))
            .collect();
        let mut deleted: HashSet<PackId> = HashSet::new();
        for (_, marker) in &ready {
            for pack in &marker.packs {
                let hex = pack.to_hex();
                let Some(&size) = present.get(&hex) else {
                    deleted.insert(*pack); // deleted by an interrupted prune
                    continue;
                };
                let records = match indexed.get(pack) {
                    Some(r) => r.clone(),
                    None => self.read_pack_header(&hex, size)?,
                };
                let needed = records
                    .iter()
                    .any(|r| used.contains(&r.id) && !safe.contains(&r.id));
                if needed {
                    report.packs_rescued += 1;
                    if !indexed.contains_key(pack) {
                        self.write_index(vec![IndexPack::from_records(*pack, &records)])?;
                    }
                    safe.extend(records.iter().map(|r| r.id));
                    continue;
                }
                self.backend().delete(FileKind::Pack, &hex)?;
                deleted.insert(*pack);
                report.packs_deleted += 1;
                report.bytes_freed += size;
            }
        }
        // Index files no longer name deleted packs: write the rest anew, then remove them.
        for (name, packs) in &index_files {
            if !packs.iter().any(|p| deleted.contains(&p.id)) {
                continue;
            }
            let rest: Vec<IndexPack> = packs
                .iter()
                .filter(|p| !deleted.contains(&p.id))
                .map(|p| IndexPack {
                    id: p.id,
                    blobs: p.blobs.clone(),
                })
                .collect();
            if !rest.is_empty() {
                self.write_index(rest)?;
            }
            self.backend().delete(FileKind::Index, name)?;
            report.index_files_rewritten += 1;
        }
        for (marker_name, _) in &ready {
            self.backend().delete(FileKind::Deletion, marker_name)?;
        }
        Ok(report)
    }

    /// Rebuilds the index from the packs' own headers and replaces every index file that
    /// existed when it started (index files written meanwhile by others are kept).
    pub fn repair_index(&self) -> Result<RepairReport> {
        let mut report = RepairReport::default();
        let old: Vec<String> = self
            .backend()
            .list(FileKind::Index)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let mut batch: Vec<IndexPack> = Vec::new();
        let mut batch_blobs = 0;
        for (name, size) in self.backend().list(FileKind::Pack)? {
            let Some(id) = PackId::from_hex(&name) else {
                continue;
            };
            match self.read_pack_header(&name, size) {
                Ok(records) => {
                    report.packs += 1;
                    report.blobs += records.len();
                    batch_blobs += records.len();
                    batch.push(IndexPack::from_records(id, &records));
                }
                Err(e) => report.damaged.push(format!("pack {name}: {e}")),
            }
            if batch.len() >= 256 || batch_blobs >= 64 * 1024 {
                self.write_index(std::mem::take(&mut batch))?;
                report.index_files_written += 1;
                batch_blobs = 0;
            }
        }
        if !batch.is_empty() {
            self.write_index(batch)?;
            report.index_files_written += 1;
        }
        for name in old {
            self.backend().delete(FileKind::Index, &name)?;
            report.index_files_removed += 1;
        }
        self.load_index(crate::Access::Read)?;
        Ok(report)
    }

    /// Every key file.
    pub fn keys(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for (name, _) in self.backend().list(FileKind::Key)? {
            let bytes = self.backend().read(FileKind::Key, &name)?;
            let file: crate::crypto::KeyFile = serde_json::from_slice(&bytes)
                .map_err(|e| Error::corrupt("key", name.clone(), format!("not valid JSON: {e}")))?;
            out.push(KeyInfo {
                current: name == self.key_id().to_hex(),
                id: name,
                created: file.created,
                host: file.host,
                username: file.username,
            });
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Removes a key (a unique prefix of its id). The last key, and the key this process
    /// opened the repository with, cannot be removed.
    pub fn remove_key(&self, reference: &str) -> Result<String> {
        let keys = self.keys()?;
        let key = by_prefix(&keys, |k| &k.id, reference, "key")
            .map_err(|reason| bad_key(reference, &reason))?;
        if keys.len() == 1 {
            return Err(bad_key(reference, "it is the last key of the repository"));
        }
        if key.current {
            return Err(bad_key(
                reference,
                "it is the key this command opened the repository with; open with another \
                 password to remove it",
            ));
        }
        self.backend().delete(FileKind::Key, &key.id)?;
        Ok(key.id.clone())
    }

    /// Replaces the key this process opened the repository with by one for `password`.
    pub fn change_password(&self, password: &[u8]) -> Result<crate::KeyId> {
        let new = self.add_key(password)?;
        self.backend()
            .delete(FileKind::Key, &self.key_id().to_hex())?;
        Ok(new)
    }
}

/// The one item whose id starts with `reference` (at least 4 hex digits), or why not.
fn by_prefix<'a, T>(
    items: &'a [T],
    id: impl Fn(&T) -> &str,
    reference: &str,
    noun: &str,
) -> std::result::Result<&'a T, String> {
    let wanted = reference.to_ascii_lowercase();
    let matches: Vec<&T> = items
        .iter()
        .filter(|i| id(i).starts_with(&wanted))
        .collect();
    match (reference.len() >= 4, matches.as_slice()) {
        (true, [one]) => Ok(*one),
        (false, _) => Err("give at least 4 hex digits".into()),
        (true, []) => Err(format!("no {noun} has this id")),
        (true, _) => Err(format!("the prefix matches several {noun}s")),
    }
}

fn bad_key(reference: &str, reason: &str) -> Error {
    Error::InvalidParameter {
        name: "key",
        reason: format!("{reference}: {reason}"),
    }
}

fn records_of(pack: &IndexPack) -> Vec<PackRecord> {
    pack.blobs
        .iter()
        .map(|b| PackRecord {
            kind: BlobKind::from_code(b.kind).unwrap_or(BlobKind::Data),
            flags: b.flags,
            id: b.id,
            offset: b.offset,
            sealed_len: b.length,
            raw_len: b.raw_length,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Access, DirBackend, InitOptions, KdfParams, Node, Summary, Tree};

    /// A new repository under `dir` opened by a backup, and a snapshot of an empty tree
    /// (not yet saved).
    fn writer_and_snapshot(dir: &std::path::Path) -> (Repository, Session, Snapshot) {
        let backend: Arc<dyn Backend> = Arc::new(DirBackend::new(dir.join("repo")));
        let options = InitOptions {
            kdf: KdfParams {
                memory_kib: 64,
                iterations: 1,
                ..KdfParams::default()
            },
            ..InitOptions::default()
        };
        Repository::init(backend.clone(), b"pw", &options).expect("init");
        let (repo, session) =
            Repository::open_session(backend, b"pw", "backup", Access::Write).expect("open");
        let (tree, _) = repo.save_tree(&Tree::default()).expect("tree");
        repo.flush().expect("flush");
        let snapshot = Snapshot {
            time: chrono::Utc::now(),
            host: "h".into(),
            source: "/data".into(),
            tags: vec![],
            parent: None,
            tree,
            root: Node::plain(b"", NodeKind::Dir),
            username: "u".into(),
            program_version: "test".into(),
            summary: Summary::default(),
        };
        (repo, session, snapshot)
    }

    #[test]
    fn a_process_whose_session_went_unrefreshed_writes_no_snapshot() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (repo, _session, snapshot) = writer_and_snapshot(tmp.path());
        // As if the store had refused every refresh for longer than the limit.
        let health = repo.session.lock().clone().expect("session");
        let Some(long_ago) =
            Instant::now().checked_sub(SESSION_SELF_LIMIT + Duration::from_secs(5))
        else {
            eprintln!("skipped: the monotonic clock started less than 7 minutes ago");
            return;
        };
        *health.last_ok.lock() = long_ago;
        let err = repo.save_snapshot(&snapshot).expect_err("refused");
        let message = err.to_string();
        assert!(
            message.contains("could not show") && message.contains("no snapshot is written"),
            "{message}"
        );
        assert!(repo.snapshots().expect("list").is_empty());
        // Refreshed again: snapshots are written again.
        *health.last_ok.lock() = Instant::now();
        repo.save_snapshot(&snapshot).expect("saved");
        assert_eq!(repo.snapshots().expect("list").len(), 1);
    }

    #[test]
    fn a_garbage_snapshot_sealed_with_the_key_is_listed_forgotten_and_stops_prune() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (repo, session, snapshot) = writer_and_snapshot(tmp.path());
        let good = repo.save_snapshot(&snapshot).expect("snapshot");
        // Bytes that are no snapshot, sealed as one with the repository's key, named by
        // their hash: what another implementation's bug would write.
        let garbage = repo
            .write_raw_snapshot(b"\xa1\x61x\x01 not a snapshot")
            .expect("forged");

        // Listed as damaged, the others still listed and usable.
        let (ok, damaged) = repo.snapshots_and_damaged().expect("list");
        assert_eq!(ok.iter().map(|s| s.0).collect::<Vec<_>>(), [good]);
        assert_eq!(damaged.len(), 1);
        assert_eq!(damaged[0].id, garbage);
        assert!(
            damaged[0].reason.contains("cannot decode"),
            "{}",
            damaged[0].reason
        );
        assert_eq!(repo.find_snapshot("latest").expect("latest").0, good);
        // Prune refuses, saying how to go on; nothing is deleted.
        let err = repo
            .prune(&session, crate::PruneOptions::default())
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains(&garbage.to_hex()) && text.contains("snapshot forget"),
            "{text}"
        );
        // Forgotten by its id, then prune runs.
        let id = repo
            .resolve_snapshot(&garbage.short())
            .expect("resolved unread");
        repo.remove_snapshot(&id).expect("forget");
        repo.prune(&session, crate::PruneOptions::default())
            .expect("prune");
        assert!(repo.snapshots_and_damaged().expect("list").1.is_empty());
    }
}
