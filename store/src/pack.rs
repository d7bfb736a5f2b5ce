//! Packs: many sealed blobs in one file, followed by a sealed header that lists them.
//!
//! ```text
//! blob 0 ‖ blob 1 ‖ … ‖ blob n-1 ‖ sealed header ‖ u32 LE length of the sealed header
//! ```

use crate::crypto::Sealer;
use crate::error::{Error, Result};
use crate::limits::{MAX_PACK_HEADER_BYTES, PACK_RECORD_BYTES, PACK_TARGET_BYTES};

/// Room beyond the target for the blob that crosses it and the header.
const PACK_SLACK_BYTES: usize = 8 * 1024 * 1024;
use crate::{BlobId, BlobKind, PackId};

/// Additional data of a pack header.
const HEADER_AAD: &[u8] = b"podvault pack header v1";

/// Flag bit: the blob's plaintext is zstd-compressed.
pub(crate) const FLAG_ZSTD: u8 = 1;

/// One blob's place in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PackRecord {
    pub kind: BlobKind,
    pub flags: u8,
    pub id: BlobId,
    pub offset: u32,
    pub sealed_len: u32,
    pub raw_len: u32,
}

/// The additional data bound to a sealed blob: its kind, flags and id, so a blob cannot
/// be swapped for another or have its compression flag flipped without detection.
pub(crate) fn blob_aad(kind: BlobKind, flags: u8, id: &BlobId) -> [u8; 34] {
    let mut aad = [0u8; 34];
    aad[0] = kind.code();
    aad[1] = flags;
    aad[2..].copy_from_slice(id.as_bytes());
    aad
}

/// Accumulates sealed blobs until the pack is large enough to write.
#[derive(Default)]
pub(crate) struct PackBuilder {
    buf: Vec<u8>,
    records: Vec<PackRecord>,
}

impl PackBuilder {
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Adds a blob that `write` appends, sealed, to the pack's buffer; returns its sealed
    /// length.
    pub(crate) fn add_with(
        &mut self,
        kind: BlobKind,
        flags: u8,
        id: BlobId,
        raw_len: u32,
        write: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    ) -> Result<usize> {
        let too_big = |what: &str| Error::InvalidParameter {
            name: "pack size",
            reason: format!("{what} exceeds 4 GiB"),
        };
        if self.buf.capacity() == 0 {
            // One allocation for the whole pack: growing by doubling would briefly hold two
            // copies. Pages not written are never touched, so they cost no memory.
            self.buf.reserve_exact(PACK_TARGET_BYTES + PACK_SLACK_BYTES);
        }
        let start = self.buf.len();
        let offset = u32::try_from(start).map_err(|_| too_big("pack"))?;
        write(&mut self.buf)?;
        let sealed_len = match u32::try_from(self.buf.len() - start) {
            Ok(n) => n,
            Err(_) => {
                self.buf.truncate(start);
                return Err(too_big("blob"));
            }
        };
        self.records.push(PackRecord {
            kind,
            flags,
            id,
            offset,
            sealed_len,
            raw_len,
        });
        Ok(sealed_len as usize)
    }

    /// Appends the sealed header and returns the pack's id, bytes and records.
    pub(crate) fn finish(mut self, sealer: &Sealer) -> Result<(PackId, Vec<u8>, Vec<PackRecord>)> {
        let mut header = Vec::with_capacity(self.records.len() * PACK_RECORD_BYTES);
        for r in &self.records {
            header.push(r.kind.code());
            header.push(r.flags);
            header.extend_from_slice(r.id.as_bytes());
            header.extend_from_slice(&r.sealed_len.to_le_bytes());
            header.extend_from_slice(&r.raw_len.to_le_bytes());
        }
        let sealed = sealer.seal(HEADER_AAD, &header)?;
        self.buf.reserve_exact(sealed.len() + 4);
        let sealed_len = u32::try_from(sealed.len()).map_err(|_| Error::InvalidParameter {
            name: "pack header",
            reason: "exceeds 4 GiB".into(),
        })?;
        self.buf.extend_from_slice(&sealed);
        self.buf.extend_from_slice(&sealed_len.to_le_bytes());
        let id = PackId::from_bytes(*blake3::hash(&self.buf).as_bytes());
        Ok((id, self.buf, self.records))
    }
}

/// Reads the header of a whole pack file and checks that the records tile the data part.
pub(crate) fn parse_pack(sealer: &Sealer, name: &str, pack: &[u8]) -> Result<Vec<PackRecord>> {
    let header_len = header_length(name, pack.len() as u64, pack)?;
    let (rest, _) = pack.split_at(pack.len() - 4);
    let (data, sealed_header) = rest.split_at(rest.len() - header_len);
    parse_header(sealer, name, data.len() as u64, sealed_header)
}

/// The length of the sealed header, from the last bytes of a pack of `pack_len` bytes
/// (`tail` ends where the pack ends and holds at least its last 4 bytes).
pub(crate) fn header_length(name: &str, pack_len: u64, tail: &[u8]) -> Result<usize> {
    let corrupt = |reason: String| Error::corrupt("pack", name, reason);
    if pack_len < 4 || tail.len() < 4 {
        return Err(corrupt(format!("only {pack_len} bytes long")));
    }
    let len_bytes = &tail[tail.len() - 4..];
    let header_len =
        u32::from_le_bytes(len_bytes.try_into().map_err(|_| corrupt("length".into()))?) as usize;
    if header_len as u64 > pack_len - 4 || header_len > MAX_PACK_HEADER_BYTES {
        return Err(corrupt(format!(
            "header length {header_len} does not fit in a {pack_len}-byte pack"
        )));
    }
    Ok(header_len)
}

/// The records of a sealed header whose pack holds `data_len` bytes of blobs before it.
pub(crate) fn parse_header(
    sealer: &Sealer,
    name: &str,
    data_len: u64,
    sealed_header: &[u8],
) -> Result<Vec<PackRecord>> {
    let corrupt = |reason: String| Error::corrupt("pack", name, reason);
    let header = sealer
        .open(HEADER_AAD, sealed_header)
        .map_err(|_| corrupt("header fails authentication".into()))?;
    if header.len() % PACK_RECORD_BYTES != 0 {
        return Err(corrupt(format!(
            "header of {} bytes is not whole records",
            header.len()
        )));
    }
    let mut records = Vec::with_capacity(header.len() / PACK_RECORD_BYTES);
    let mut offset: u64 = 0;
    for rec in header.chunks_exact(PACK_RECORD_BYTES) {
        let kind = BlobKind::from_code(rec[0])
            .ok_or_else(|| corrupt(format!("unknown blob kind {}", rec[0])))?;
        let id = BlobId::from_slice(&rec[2..34]).ok_or_else(|| corrupt("blob id".into()))?;
        let u32_at = |i: usize| u32::from_le_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
        let sealed_len = u32_at(34);
        let raw_len = u32_at(38);
        records.push(PackRecord {
            kind,
            flags: rec[1],
            id,
            offset: u32::try_from(offset).map_err(|_| corrupt("offset exceeds 4 GiB".into()))?,
            sealed_len,
            raw_len,
        });
        offset += u64::from(sealed_len);
    }
    if offset != data_len {
        return Err(corrupt(format!(
            "header lists {offset} bytes of blobs but the pack holds {data_len}"
        )));
    }
    Ok(records)
}
