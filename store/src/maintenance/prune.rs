//! The two-phase prune (see FORMAT.md, "Concurrency"): packs no snapshot uses are first
//! marked, then deleted by this or a later prune once every session that was running when
//! they were marked has ended. What to drop and repack is a pure plan over the listings
//! ([`plan`]), so it is tested without a store.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{Session, open_cbor, random_name, seal_cbor};
use crate::backend::FileKind;
use crate::error::{Error, Result};
use crate::index::IndexPack;
use crate::pack::PackRecord;
use crate::{
    BlobId, BlobKind, BlobLocation, NodeKind, PackId, Repository, Snapshot, SnapshotId, TreeId,
};

const MARKER_AAD: &[u8] = b"podvault deletion v1";

/// A prune's list of packs to delete once no session that might use them remains.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Marker {
    created: chrono::DateTime<chrono::Utc>,
    packs: Vec<PackId>,
    /// Sessions live when the marker was written; `None` until they are recorded.
    sessions: Option<Vec<String>>,
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

impl Repository {
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
        self.refuse_second_prune(own)?;
        let mut survey = self.survey(own)?;
        let plan = plan(&survey.packs, &survey.used, options.repack_below);
        let mut report = PruneReport {
            dry_run: options.dry_run,
            snapshots: survey.seen.len(),
            packs: plan.packs,
            packs_running: plan.packs_running,
            packs_unused: plan.unused.len(),
            packs_repacked: plan.repack.len(),
            blobs_repacked: plan.repack.iter().map(|(_, r)| r.len()).sum(),
            bytes_repacked: plan
                .repack
                .iter()
                .flat_map(|(_, r)| r)
                .map(|r| u64::from(r.raw_len))
                .sum(),
            ..PruneReport::default()
        };
        let candidates = plan.candidates();
        if options.dry_run {
            report.packs_marked = candidates.len();
            return Ok(report);
        }
        self.repack(&plan.repack)?;
        self.flush()?;
        if !candidates.is_empty() {
            survey.markers.push(self.mark(own, &candidates)?);
            report.packs_marked = candidates.len();
        }
        let ready = self.ready_markers(own, survey.markers, &mut report)?;
        if !ready.is_empty() {
            self.delete_marked(&ready, &mut survey.used, &mut survey.seen, &mut report)?;
        }
        Ok(report)
    }

    /// Fails if another prune is running on this repository.
    fn refuse_second_prune(&self, own: &Session) -> Result<()> {
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
        Ok(())
    }

    /// Phase 1's view of the repository, read in the order that makes it safe: sessions,
    /// snapshots, packs, markers and index files, then sessions and snapshots again (a
    /// backup that ended meanwhile wrote its snapshot first: its blobs count as used).
    fn survey(&self, own: &Session) -> Result<Survey> {
        // Sessions running now may be writing packs no snapshot names yet: listed before
        // the snapshots, and again after the index files are read.
        let mut live: HashSet<String> = self.live_sessions(own.name())?.into_iter().collect();
        let (mut used, mut seen) = self.used_blobs()?;
        let present: HashMap<String, u64> =
            self.backend().list(FileKind::Pack)?.into_iter().collect();
        let markers = self.markers()?;
        let marked: HashSet<PackId> = markers.iter().flat_map(|(_, m)| m.packs.clone()).collect();
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
        live.extend(self.live_sessions(own.name())?);
        self.add_new_snapshots(&mut used, &mut seen)?;
        // The packs of backups still running (indexed under their session, or not indexed
        // yet while any session runs) are left alone: their snapshots will use them.
        let running: HashSet<PackId> = contents
            .keys()
            .filter(|id| {
                writers.get(id).is_some_and(|s| live.contains(s))
                    || (unindexed.contains(id) && !live.is_empty())
            })
            .copied()
            .collect();
        Ok(Survey {
            packs: PackListing {
                present,
                contents,
                marked,
                running,
            },
            markers,
            used,
            seen,
        })
    }

    /// Copies the blobs a repack keeps into new packs (written at the next flush).
    fn repack(&self, repack: &[(PackId, Vec<PackRecord>)]) -> Result<()> {
        for (pack, wanted) in repack.iter().filter(|(_, wanted)| !wanted.is_empty()) {
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
            }
        }
        Ok(())
    }

    /// Writes a deletion marker for `packs`, then records in it the sessions live once it
    /// is written: a session that starts later reads the marker and never reuses them.
    fn mark(&self, own: &Session, packs: &HashSet<PackId>) -> Result<(String, Marker)> {
        let name = random_name()?;
        let mut marker = Marker {
            created: chrono::Utc::now(),
            packs: packs.iter().copied().collect(),
            sessions: None,
        };
        self.write_marker(&name, &marker)?;
        marker.sessions = Some(self.live_sessions(own.name())?);
        self.write_marker(&name, &marker)?;
        Ok((name, marker))
    }

    /// Phase 2's markers: those no live session that was running when they were written
    /// may still use. The sessions the others wait for go into `report`.
    fn ready_markers(
        &self,
        own: &Session,
        markers: Vec<(String, Marker)>,
        report: &mut PruneReport,
    ) -> Result<Vec<(String, Marker)>> {
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
        Ok(ready)
    }

    /// Deletes the packs of `ready` markers that no snapshot needs (a pack a snapshot
    /// written since phase 1 uses is rescued: indexed again if need be), then the index
    /// files that named them and the markers.
    fn delete_marked(
        &self,
        ready: &[(String, Marker)],
        used: &mut HashSet<BlobId>,
        seen: &mut HashSet<SnapshotId>,
        report: &mut PruneReport,
    ) -> Result<()> {
        // The blobs used at phase 1, and those of snapshots written since (a snapshot
        // forgotten meanwhile still counts: its packs wait for the next prune).
        self.add_new_snapshots(used, seen)?;
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
        for pack in ready.iter().flat_map(|(_, marker)| &marker.packs) {
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
        report.index_files_rewritten = self.drop_from_index(&index_files, &deleted)?;
        for (marker_name, _) in ready {
            self.backend().delete(FileKind::Deletion, marker_name)?;
        }
        Ok(())
    }

    /// Index files no longer name deleted packs: those that did are written anew without
    /// them, then removed. Returns how many were.
    fn drop_from_index(
        &self,
        index_files: &[(String, Vec<IndexPack>)],
        deleted: &HashSet<PackId>,
    ) -> Result<usize> {
        let mut rewritten = 0;
        for (name, packs) in index_files {
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
            rewritten += 1;
        }
        Ok(rewritten)
    }
}

/// What phase 1 reads before it decides.
struct Survey {
    packs: PackListing,
    /// Every deletion marker, with its name.
    markers: Vec<(String, Marker)>,
    /// The blobs the snapshots use.
    used: HashSet<BlobId>,
    /// The snapshots read.
    seen: HashSet<SnapshotId>,
}

/// The packs as phase 1 sees them.
#[derive(Debug, Default)]
struct PackListing {
    /// Pack files present in the store (name to size).
    present: HashMap<String, u64>,
    /// The blobs of each known pack (indexed, or read from its header).
    contents: HashMap<PackId, Vec<PackRecord>>,
    /// Packs already marked for deletion.
    marked: HashSet<PackId>,
    /// Packs of backups still running.
    running: HashSet<PackId>,
}

/// What phase 1 decided.
#[derive(Debug, Default)]
struct PrunePlan {
    /// Packs examined (present, not marked).
    packs: usize,
    /// Packs left alone because a running backup wrote them.
    packs_running: usize,
    /// Packs nothing uses.
    unused: Vec<PackId>,
    /// Packs mostly garbage, with the blobs to copy out of each first (a blob another
    /// kept pack holds, or an earlier repack copies, is not copied again).
    repack: Vec<(PackId, Vec<PackRecord>)>,
}

impl PrunePlan {
    /// The packs to mark: unused and repacked.
    fn candidates(&self) -> HashSet<PackId> {
        self.unused
            .iter()
            .chain(self.repack.iter().map(|(id, _)| id))
            .copied()
            .collect()
    }
}

/// Which packs to drop and which to repack, given the blobs in use: a pack with nothing
/// used is dropped; one whose used bytes are less than `repack_below` of its size has
/// its used blobs copied, then is dropped. Marked and running packs are left alone.
fn plan(packs: &PackListing, used: &HashSet<BlobId>, repack_below: f64) -> PrunePlan {
    let mut plan = PrunePlan::default();
    let mut sparse = Vec::new();
    for (id, records) in &packs.contents {
        let Some(&size) = packs.present.get(&id.to_hex()) else {
            continue;
        };
        if packs.marked.contains(id) {
            continue;
        }
        plan.packs += 1;
        if packs.running.contains(id) {
            plan.packs_running += 1;
            continue;
        }
        let used_bytes: u64 = records
            .iter()
            .filter(|r| used.contains(&r.id))
            .map(|r| u64::from(r.sealed_len))
            .sum();
        if used_bytes == 0 {
            plan.unused.push(*id);
        } else if (used_bytes as f64) < repack_below * size as f64 {
            sparse.push(*id);
        }
    }
    plan.unused.sort();
    sparse.sort();
    let dropped: HashSet<PackId> = plan.unused.iter().chain(&sparse).copied().collect();
    // Blobs a kept pack holds need no copy.
    let elsewhere: HashSet<BlobId> = packs
        .contents
        .iter()
        .filter(|(id, _)| !dropped.contains(id) && !packs.marked.contains(id))
        .filter(|(id, _)| packs.present.contains_key(&id.to_hex()))
        .flat_map(|(_, records)| records.iter().map(|r| r.id))
        .collect();
    let mut copied: HashSet<BlobId> = HashSet::new();
    for id in sparse {
        let wanted: Vec<PackRecord> = packs.contents[&id]
            .iter()
            .filter(|r| used.contains(&r.id) && !elsewhere.contains(&r.id))
            .filter(|r| copied.insert(r.id))
            .copied()
            .collect();
        plan.repack.push((id, wanted));
    }
    plan
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

    fn blob(n: u8) -> BlobId {
        BlobId::from_bytes([n; 32])
    }

    fn pack_id(n: u8) -> PackId {
        PackId::from_bytes([n; 32])
    }

    /// A pack of 100-byte blobs, listed as present with their total size.
    fn add(listing: &mut PackListing, pack: u8, blobs: &[u8]) {
        let records = blobs
            .iter()
            .zip(0u32..)
            .map(|(&b, i)| PackRecord {
                kind: BlobKind::Data,
                flags: 0,
                id: blob(b),
                offset: i * 100,
                sealed_len: 100,
                raw_len: 90,
            })
            .collect();
        listing.contents.insert(pack_id(pack), records);
        listing
            .present
            .insert(pack_id(pack).to_hex(), 100 * blobs.len() as u64);
    }

    #[test]
    fn unused_packs_are_dropped_sparse_ones_repacked_and_the_rest_kept() {
        let mut listing = PackListing::default();
        add(&mut listing, 1, &[1, 2, 3, 4]); // all used: kept
        add(&mut listing, 2, &[5, 6]); // nothing used: dropped
        add(&mut listing, 3, &[7, 8, 9, 10]); // one of four used: repacked
        add(&mut listing, 4, &[11, 12]); // half used: kept at the 0.5 threshold
        let used: HashSet<BlobId> = [1, 2, 3, 4, 7, 11].map(blob).into();
        let plan = plan(&listing, &used, 0.5);
        assert_eq!(plan.packs, 4);
        assert_eq!(plan.unused, [pack_id(2)]);
        assert_eq!(plan.repack.len(), 1);
        let (id, wanted) = &plan.repack[0];
        assert_eq!(*id, pack_id(3));
        assert_eq!(wanted.iter().map(|r| r.id).collect::<Vec<_>>(), [blob(7)]);
        assert_eq!(plan.candidates(), [pack_id(2), pack_id(3)].into());
    }

    #[test]
    fn marked_running_and_missing_packs_are_left_alone() {
        let mut listing = PackListing::default();
        add(&mut listing, 1, &[1]);
        add(&mut listing, 2, &[2]);
        add(&mut listing, 3, &[3]);
        listing.marked.insert(pack_id(1));
        listing.running.insert(pack_id(2));
        listing.present.remove(&pack_id(3).to_hex()); // indexed but gone from the store
        let plan = plan(&listing, &HashSet::new(), 0.5);
        assert_eq!(plan.packs, 1, "the running one is examined, the others not");
        assert_eq!(plan.packs_running, 1);
        assert!(plan.candidates().is_empty(), "{plan:?}");
    }

    #[test]
    fn a_blob_kept_elsewhere_or_copied_once_is_not_copied_again() {
        let mut listing = PackListing::default();
        add(&mut listing, 1, &[1, 2, 3, 4]); // kept: holds blob 1
        add(&mut listing, 2, &[1, 20, 21, 22]); // sparse: blob 1 is kept elsewhere
        add(&mut listing, 3, &[5, 30, 31, 32]); // sparse
        add(&mut listing, 4, &[5, 40, 41, 42]); // sparse: blob 5 copied from pack 3
        let used: HashSet<BlobId> = [1, 2, 3, 4, 5].map(blob).into();
        let plan = plan(&listing, &used, 0.5);
        let wanted: Vec<(PackId, Vec<BlobId>)> = plan
            .repack
            .iter()
            .map(|(id, r)| (*id, r.iter().map(|r| r.id).collect()))
            .collect();
        assert_eq!(
            wanted,
            [
                (pack_id(2), vec![]),
                (pack_id(3), vec![blob(5)]),
                (pack_id(4), vec![]),
            ]
        );
    }
}
