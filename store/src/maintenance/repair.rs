//! Repair: the index rebuilt from the packs' own headers, and packs an interrupted backup
//! left unindexed taken back.

use std::collections::HashSet;

use serde::Serialize;

use crate::backend::FileKind;
use crate::error::{Error, Result};
use crate::index::IndexPack;
use crate::pack::{PackRecord, header_length, parse_header};
use crate::{PackId, Repository};

/// Bytes read from the end of a pack to find its header in one request, usually.
const TAIL_BYTES: u64 = 64 * 1024;

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

impl Repository {
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
}
