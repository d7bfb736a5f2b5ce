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

/// The in-memory index.
#[derive(Default)]
pub(crate) struct Index {
    packs: Vec<PackId>,
    pack_pos: HashMap<PackId, u32>,
    blobs: HashMap<BlobId, Entry>,
}

impl Index {
    pub(crate) fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    pub(crate) fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        let e = self.blobs.get(id)?;
        Some(BlobLocation {
            pack: self.packs[e.pack as usize],
            offset: e.offset,
            sealed_len: e.sealed_len,
            raw_len: e.raw_len,
            kind: BlobKind::from_code(e.kind).unwrap_or(BlobKind::Data),
            flags: e.flags,
        })
    }

    pub(crate) fn add_pack(&mut self, pack: PackId, records: &[PackRecord]) {
        let next = self.packs.len() as u32;
        let pos = *self.pack_pos.entry(pack).or_insert_with(|| {
            self.packs.push(pack);
            next
        });
        for r in records {
            // First writer wins: a blob stored twice (a tolerated race) keeps one location.
            self.blobs.entry(r.id).or_insert(Entry {
                pack: pos,
                offset: r.offset,
                sealed_len: r.sealed_len,
                raw_len: r.raw_len,
                kind: r.kind.code(),
                flags: r.flags,
            });
        }
    }

    pub(crate) fn packs(&self) -> &[PackId] {
        &self.packs
    }

    pub(crate) fn len(&self) -> usize {
        self.blobs.len()
    }

    /// Every blob with its location.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (BlobId, BlobLocation)> + '_ {
        self.blobs
            .keys()
            .filter_map(|id| Some((*id, self.get(id)?)))
    }
}

/// One index file, as stored (CBOR, then sealed).
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct IndexFile {
    pub packs: Vec<IndexPack>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct IndexPack {
    pub id: PackId,
    pub blobs: Vec<IndexBlob>,
}

#[derive(Serialize, Deserialize)]
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

    pub(crate) fn records(&self) -> Option<Vec<PackRecord>> {
        self.blobs
            .iter()
            .map(|b| {
                Some(PackRecord {
                    kind: BlobKind::from_code(b.kind)?,
                    flags: b.flags,
                    id: b.id,
                    offset: b.offset,
                    sealed_len: b.length,
                    raw_len: b.raw_length,
                })
            })
            .collect()
    }
}
