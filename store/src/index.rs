//! The index: for every blob, the pack that holds it and where. Kept in memory in a compact
//! form (a few dozen bytes per blob) and stored as encrypted index files.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::pack::{FLAG_ZSTD, PackRecord};
use crate::{BlobId, BlobKind, PackId};

/// Where a blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    /// The pack holding the blob.
    pub pack: PackId,
    /// Byte offset of the sealed blob in the pack.
    pub offset: u32,
    /// Length of the sealed blob.
    pub sealed_len: u32,
    /// Length of the plaintext after decompression.
    pub raw_len: u32,
    /// Data or tree.
    pub kind: BlobKind,
    /// Flag bits (bit 0: zstd).
    pub flags: u8,
}

impl BlobLocation {
    /// Whether the blob is zstd-compressed.
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_ZSTD != 0
    }
}

#[derive(Clone, Copy)]
struct Entry {
    pack: u32,
    offset: u32,
    sealed_len: u32,
    raw_len: u32,
    kind: u8,
    flags: u8,
}

/// Blobs added since the sorted table was last merged are merged into it once they are this
/// many (the merge is linear and in place).
const MERGE_MIN_BLOBS: usize = 64 * 1024;

/// The in-memory index: a table sorted by blob id (52 bytes a blob: the 32-byte id and a
/// 20-byte location), searched by bisection, plus a hash map of at most
/// [`MERGE_MIN_BLOBS`] blobs added since the last merge. A hash map of everything would
/// need about twice the memory and, while it grows, briefly three times.
#[derive(Default)]
pub(crate) struct Index {
    packs: Vec<PackId>,
    pack_pos: HashMap<PackId, u32>,
    sorted: Vec<(BlobId, Entry)>,
    recent: HashMap<BlobId, Entry>,
}

impl Index {
    fn entry(&self, id: &BlobId) -> Option<&Entry> {
        if let Some(e) = self.recent.get(id) {
            return Some(e);
        }
        self.sorted
            .binary_search_by(|(k, _)| k.cmp(id))
            .ok()
            .map(|i| &self.sorted[i].1)
    }

    pub(crate) fn contains(&self, id: &BlobId) -> bool {
        self.entry(id).is_some()
    }

    pub(crate) fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        let e = self.entry(id)?;
        Some(self.location(e))
    }

    fn location(&self, e: &Entry) -> BlobLocation {
        BlobLocation {
            pack: self.packs[e.pack as usize],
            offset: e.offset,
            sealed_len: e.sealed_len,
            raw_len: e.raw_len,
            kind: BlobKind::from_code(e.kind).unwrap_or(BlobKind::Data),
            flags: e.flags,
        }
    }

    fn pack_position(&mut self, pack: PackId) -> u32 {
        let next = self.packs.len() as u32;
        *self.pack_pos.entry(pack).or_insert_with(|| {
            self.packs.push(pack);
            next
        })
    }

    fn entry_of(pos: u32, r: &PackRecord) -> Entry {
        Entry {
            pack: pos,
            offset: r.offset,
            sealed_len: r.sealed_len,
            raw_len: r.raw_len,
            kind: r.kind.code(),
            flags: r.flags,
        }
    }

    /// Adds a pack of an index file while loading ([`Index::finish_loading`] must follow
    /// before lookups); false if a blob has an unknown kind.
    pub(crate) fn load_index_pack(&mut self, pack: &IndexPack) -> bool {
        if pack
            .blobs
            .iter()
            .any(|b| BlobKind::from_code(b.kind).is_none())
        {
            return false;
        }
        let pos = self.pack_position(pack.id);
        self.sorted.extend(pack.blobs.iter().map(|b| {
            (
                b.id,
                Entry {
                    pack: pos,
                    offset: b.offset,
                    sealed_len: b.length,
                    raw_len: b.raw_length,
                    kind: b.kind,
                    flags: b.flags,
                },
            )
        }));
        true
    }

    /// Sorts what [`Index::load_index_pack`] added; of blobs stored twice (a tolerated race),
    /// the one in the pack indexed first wins.
    pub(crate) fn finish_loading(&mut self) {
        self.sorted
            .sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.pack.cmp(&b.1.pack)));
        self.sorted.dedup_by(|later, first| later.0 == first.0);
        self.sorted.shrink_to_fit();
    }

    /// Merges the recent blobs (never in the table already) into the sorted table, from
    /// the back, in place: no second copy of the table is ever made.
    fn merge_recent(&mut self) {
        let mut recent: Vec<(BlobId, Entry)> = self.recent.drain().collect();
        recent.sort_unstable_by_key(|a| a.0);
        let old = self.sorted.len();
        self.sorted.extend_from_slice(&recent);
        let (mut i, mut j, mut k) = (old, recent.len(), self.sorted.len());
        while j > 0 {
            k -= 1;
            if i > 0 && self.sorted[i - 1].0 > recent[j - 1].0 {
                self.sorted[k] = self.sorted[i - 1];
                i -= 1;
            } else {
                self.sorted[k] = recent[j - 1];
                j -= 1;
            }
        }
        self.recent.shrink_to_fit();
    }

    /// Adds a pack written during this session.
    pub(crate) fn add_pack(&mut self, pack: PackId, records: &[PackRecord]) {
        let pos = self.pack_position(pack);
        for r in records {
            // First writer wins: a blob stored twice (a tolerated race) keeps one location.
            if !self.contains(&r.id) {
                self.recent.insert(r.id, Self::entry_of(pos, r));
            }
        }
        if self.recent.len() >= MERGE_MIN_BLOBS {
            self.merge_recent();
        }
    }

    pub(crate) fn packs(&self) -> &[PackId] {
        &self.packs
    }

    pub(crate) fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    /// Every blob with its location.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (BlobId, BlobLocation)> + '_ {
        self.sorted
            .iter()
            .map(|(id, e)| (*id, e))
            .chain(self.recent.iter().map(|(id, e)| (*id, e)))
            .map(|(id, e)| (id, self.location(e)))
    }
}

/// One index file, as stored (CBOR, then sealed).
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct IndexFile {
    pub packs: Vec<IndexPack>,
    /// The session of the process that wrote it, so a prune leaves the packs of a backup
    /// still running alone (absent in files written outside a session, and in older ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct IndexPack {
    pub id: PackId,
    pub blobs: Vec<IndexBlob>,
}

#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct IndexBlob {
    pub kind: u8,
    pub flags: u8,
    pub id: BlobId,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
}

impl IndexPack {
    pub(crate) fn from_records(id: PackId, records: &[PackRecord]) -> IndexPack {
        IndexPack {
            id,
            blobs: records
                .iter()
                .map(|r| IndexBlob {
                    kind: r.kind.code(),
                    flags: r.flags,
                    id: r.id,
                    offset: r.offset,
                    length: r.sealed_len,
                    raw_length: r.raw_len,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64, salt: u8) -> [u8; 32] {
        let mut b = [salt; 32];
        b[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
        b
    }

    fn records(range: std::ops::Range<u64>, offset: u32) -> Vec<PackRecord> {
        range
            .map(|n| PackRecord {
                kind: BlobKind::Data,
                flags: 0,
                id: BlobId::from_bytes(id(n, 0)),
                offset,
                sealed_len: n as u32,
                raw_len: 1,
            })
            .collect()
    }

    #[test]
    fn loaded_and_added_blobs_are_found_and_first_writer_wins() {
        let (p1, p2, p3) = (
            PackId::from_bytes(id(1, 1)),
            PackId::from_bytes(id(2, 1)),
            PackId::from_bytes(id(3, 1)),
        );
        let mut index = Index::default();
        assert!(index.load_index_pack(&IndexPack::from_records(p1, &records(0..1000, 10))));
        // 500..1000 stored twice
        assert!(index.load_index_pack(&IndexPack::from_records(p2, &records(500..1500, 20))));
        index.finish_loading();
        assert_eq!(index.len(), 1500);
        let at = |index: &Index, n: u64| index.get(&BlobId::from_bytes(id(n, 0)));
        assert_eq!(at(&index, 700).map(|l| (l.pack, l.offset)), Some((p1, 10)));
        assert_eq!(at(&index, 1200).map(|l| l.pack), Some(p2));
        assert!(at(&index, 1500).is_none());

        // Enough new blobs to force merges into the sorted table, and some again.
        index.add_pack(p3, &records(1000..(1500 + 2 * MERGE_MIN_BLOBS as u64), 30));
        // Interleaved with the table: ids of another salt sort among the existing ones.
        let others: Vec<PackRecord> = (0..MERGE_MIN_BLOBS as u64)
            .map(|n| PackRecord {
                id: BlobId::from_bytes(id(n, 7)),
                ..records(0..1, 40)[0]
            })
            .collect();
        index.add_pack(p3, &others);
        assert!(index.recent.len() < MERGE_MIN_BLOBS);
        assert_eq!(index.len(), 1500 + 3 * MERGE_MIN_BLOBS);
        assert!(index.contains(&BlobId::from_bytes(id(77, 7))));
        assert_eq!(at(&index, 1200).map(|l| l.pack), Some(p2));
        assert_eq!(
            at(&index, 100_000).map(|l| (l.pack, l.sealed_len)),
            Some((p3, 100_000))
        );
        index.add_pack(p1, &records(5..7, 99));
        assert_eq!(at(&index, 5).map(|l| l.offset), Some(10));
        assert_eq!(index.iter().count(), index.len());
        assert!(
            index.sorted.windows(2).all(|w| w[0].0 < w[1].0),
            "the table stays sorted and without duplicates"
        );
    }
}
