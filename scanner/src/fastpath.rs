//! The large-file fast path of incremental backups.
//!
//! A file that changed since the parent snapshot is usually a database or an image whose
//! pages were rewritten in place. The parent recorded, for each chunk of the file, its
//! length and a keyed XXH3-128 fingerprint ([`Node::prints`]). The new version is read in
//! order; at each point where a chunk of the old version is expected, the bytes there are
//! fingerprinted (at memory speed) and, if they match, the old chunk is taken as it is.
//! Only where they differ does content-defined chunking run, and only the chunks it cuts
//! are hashed with BLAKE3, compressed and sealed.
//!
//! A chunk of the old version that starts at a cut point of the new version and has the
//! same bytes is exactly the chunk a full pass cuts there: content-defined cut points depend
//! only on the bytes since the previous cut. (The old last chunk is the exception, as the
//! end of the file cut it; it is taken only if it still ends the file.) A chunk whose bytes
//! changed but whose end is still a cut point (the 64 bytes before it are what the chunker
//! looks at) was rewritten in place: it keeps its boundaries, without being cut again. A
//! full pass would give the same chunks unless the new bytes hold an earlier cut point (for
//! an 8 KiB page and the default sizes, about one time in 250); the chunks are then
//! merely different, equally valid, and the next backup aligns on them. After an insertion
//! or a deletion, the chunker resynchronises by itself, and the fingerprint of each newly
//! cut chunk is looked up among the old ones to find where the old chunks continue.
//!
//! Trust: a fingerprint match stands in for reading the chunk. The fingerprint is keyed
//! with a secret derived from the repository's master key, so nobody without that key can
//! predict fingerprints or aim for a collision; the match must also be at the place the
//! parent snapshot recorded for that file. XXH3 is not a cryptographic MAC, so this is a
//! speed/assurance trade like trusting an unchanged mtime, only much narrower: the worst a
//! collision can cause is that the snapshot keeps the file's own previous bytes for that
//! chunk. `--full-hash` turns the fast path off (chunks are then always cut and hashed
//! with BLAKE3).
//!
//! [`Node::prints`]: podvault_store::Node::prints

use std::collections::HashMap;

use podvault_store::{BlobId, ChunkPrint, Node};

/// The chunks of a file's previous version.
pub(crate) struct OldChunks {
    starts: Vec<usize>,
    prints: Vec<ChunkPrint>,
    ids: Vec<BlobId>,
    by_print: HashMap<(u128, u32), usize>,
}

impl OldChunks {
    /// The previous version's chunks, if its node recorded prints for all of them.
    pub(crate) fn of(node: &Node) -> Option<OldChunks> {
        let prints = node.chunk_prints()?;
        let mut starts = Vec::with_capacity(prints.len());
        let mut at = 0usize;
        for p in &prints {
            starts.push(at);
            at = at.checked_add(p.len as usize)?;
        }
        let by_print = prints
            .iter()
            .enumerate()
            .map(|(i, p)| ((p.hash, p.len), i))
            .collect();
        Some(OldChunks {
            starts,
            prints,
            ids: node.content.clone(),
            by_print,
        })
    }
}

/// One chunk of the new version.
pub(crate) struct Piece {
    pub(crate) offset: usize,
    pub(crate) len: usize,
    /// The fingerprint, if computed while planning.
    pub(crate) print: Option<u128>,
    /// The chunk's id when taken from the previous version; `None`: to be stored.
    pub(crate) known: Option<BlobId>,
}

/// Where the walk through the old chunks is.
#[derive(Default)]
pub(crate) struct Cursor {
    /// The old chunk expected at the current position.
    expect: Option<usize>,
    /// New offset minus old offset of the current alignment.
    shift: isize,
}

impl Cursor {
    pub(crate) fn new() -> Cursor {
        Cursor {
            expect: Some(0),
            shift: 0,
        }
    }
}

/// What planning needs from the repository.
pub(crate) trait Chunking {
    /// The length of the content-defined chunk at the start of `data`.
    fn cut(&self, data: &[u8]) -> usize;
    /// The keyed fingerprint of a chunk.
    fn print(&self, data: &[u8]) -> u128;
    /// Whether the chunker would accept `len` as the end of the chunk at `data[0]`, not
    /// asking whether it would cut earlier.
    fn is_cut(&self, data: &[u8], len: usize) -> bool;
    /// Whether the repository still has a blob.
    fn has(&self, id: &BlobId) -> bool;
}

/// Plans the chunks of `data` from `start` up to at least `end`: old chunks found by
/// fingerprint, new ones cut by the chunker. Returns the pieces and where the last ended.
pub(crate) fn plan(
    how: &impl Chunking,
    data: &[u8],
    (start, end): (usize, usize),
    old: &OldChunks,
    cursor: &mut Cursor,
) -> (Vec<Piece>, usize) {
    let mut pieces = Vec::new();
    let mut p = start;
    while p < end {
        // The fingerprint of the bytes where an old chunk was expected but differs: when
        // the chunker cuts the same length there (a page rewritten in place), it is the
        // new chunk's fingerprint too.
        let mut tried = None;
        if let Some(j) = cursor.expect.filter(|&j| j < old.ids.len()) {
            let len = old.prints[j].len as usize;
            let last = j + 1 == old.ids.len();
            let fits = len > 0 && p + len <= data.len() && (!last || p + len == data.len());
            let fp = fits.then(|| how.print(&data[p..p + len]));
            tried = fp.map(|fp| (len, fp));
            if fp.is_some()
                && !last
                && fp != Some(old.prints[j].hash)
                && how.is_cut(&data[p..], len)
            {
                // Rewritten in place (its end still a cut point): keep the boundary rather
                // than cut the chunk again.
                pieces.push(Piece {
                    offset: p,
                    len,
                    print: fp,
                    known: None,
                });
                cursor.shift = p as isize - old.starts[j] as isize;
                cursor.expect = Some(j + 1);
                p += len;
                continue;
            }
            if fp == Some(old.prints[j].hash) && how.has(&old.ids[j]) {
                pieces.push(Piece {
                    offset: p,
                    len,
                    print: Some(old.prints[j].hash),
                    known: Some(old.ids[j]),
                });
                cursor.shift = p as isize - old.starts[j] as isize;
                cursor.expect = Some(j + 1);
                p += len;
                continue;
            }
        }
        let len = how.cut(&data[p..]);
        let fp = match tried {
            Some((n, fp)) if n == len => fp,
            _ => how.print(&data[p..p + len]),
        };
        // A newly cut chunk equal to an old one (moved by an insertion or a deletion):
        // take its id and expect the old chunks that followed it.
        let found = old
            .by_print
            .get(&(fp, len as u32))
            .copied()
            .filter(|&j| how.has(&old.ids[j]));
        pieces.push(Piece {
            offset: p,
            len,
            print: Some(fp),
            known: found.map(|j| old.ids[j]),
        });
        p += len;
        cursor.expect = match found {
            Some(j) => {
                cursor.shift = (p - len) as isize - old.starts[j] as isize;
                Some(j + 1)
            }
            None => {
                let at = p as isize - cursor.shift;
                usize::try_from(at)
                    .ok()
                    .and_then(|at| old.starts.binary_search(&at).ok())
            }
        };
    }
    (pieces, p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use podvault_store::FastHasher;

    /// A toy content-defined chunker: cut after a byte divisible by 29 once 16 bytes are
    /// in, or at 64 bytes.
    struct Toy(FastHasher);

    impl Chunking for Toy {
        fn cut(&self, data: &[u8]) -> usize {
            (16..data.len().min(64))
                .find(|&i| data[i - 1].is_multiple_of(29))
                .unwrap_or(data.len().min(64))
        }
        fn print(&self, data: &[u8]) -> u128 {
            self.0.hash(data)
        }
        fn is_cut(&self, data: &[u8], len: usize) -> bool {
            (16..data.len().min(64)).contains(&len) && data[len - 1].is_multiple_of(29)
        }
        fn has(&self, _: &BlobId) -> bool {
            true
        }
    }

    fn bytes(len: usize, mut seed: u32) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (seed >> 16) as u8
            })
            .collect()
    }

    /// The chunks a full pass cuts, and the node a backup would record for them.
    fn full(toy: &Toy, data: &[u8]) -> (Vec<(usize, usize)>, Node) {
        let mut cuts = Vec::new();
        let mut p = 0;
        while p < data.len() {
            let n = toy.cut(&data[p..]);
            cuts.push((p, n));
            p += n;
        }
        let mut node: Node = serde_json::from_str(
            r#"{"name":[],"kind":"file","mode":420,"uid":0,"gid":0,"mtime":0,"mtime_nsec":0,
                "ctime":0,"ctime_nsec":0,"size":0,"inode":0,"device":0,"links":1}"#,
        )
        .expect("node");
        for &(o, n) in &cuts {
            let print = toy.print(&data[o..o + n]);
            let mut id = [0u8; 32];
            id[..16].copy_from_slice(&print.to_le_bytes());
            node.content.push(BlobId::from_bytes(id));
            ChunkPrint {
                len: n as u32,
                hash: print,
            }
            .push_to(&mut node.prints);
        }
        (cuts, node)
    }

    /// Plans `new` against `old` in windows of 100 bytes; returns the cuts and the bytes
    /// taken from the old version.
    fn fast(toy: &Toy, old: &[u8], new: &[u8]) -> (Vec<(usize, usize)>, usize) {
        let old = OldChunks::of(&full(toy, old).1).expect("prints");
        let mut cursor = Cursor::new();
        let (mut cuts, mut known, mut p) = (Vec::new(), 0, 0);
        while p < new.len() {
            let (pieces, next) = plan(toy, new, (p, (p + 100).min(new.len())), &old, &mut cursor);
            for piece in pieces {
                assert_eq!(
                    piece.print,
                    Some(toy.print(&new[piece.offset..][..piece.len]))
                );
                cuts.push((piece.offset, piece.len));
                known += if piece.known.is_some() { piece.len } else { 0 };
            }
            p = next;
        }
        (cuts, known)
    }

    #[test]
    fn pages_rewritten_in_place_cost_only_their_chunks() {
        let toy = Toy(FastHasher::new(&[7; 32]));
        let old = bytes(20_000, 1);
        let mut new = old.clone();
        // New bytes that hold no cut point (none is a multiple of 29), so the chunks must be
        // exactly those of a full pass.
        for page in [3_000, 11_000, 17_500] {
            let page_bytes: Vec<u8> = bytes(40, page as u32)
                .into_iter()
                .map(|b| if b.is_multiple_of(29) { b + 1 } else { b })
                .collect();
            new[page..page + 40].copy_from_slice(&page_bytes);
        }
        let (cuts, known) = fast(&toy, &old, &new);
        assert_eq!(cuts, full(&toy, &new).0, "same chunks as a full pass");
        assert!(
            known > new.len() - 600,
            "{known} of {} bytes known",
            new.len()
        );
    }

    #[test]
    fn insertions_deletions_and_growth_resynchronise() {
        let toy = Toy(FastHasher::new(&[7; 32]));
        let old = bytes(20_000, 2);
        let mut inserted = old.clone();
        inserted.splice(5_000..5_000, bytes(333, 9));
        let mut deleted = old.clone();
        deleted.drain(9_000..9_777);
        let mut grown = old.clone();
        grown.extend(bytes(1_000, 5));
        let shrunk = old[..12_345].to_vec();
        for new in [inserted, deleted, grown, shrunk, Vec::new(), old.clone()] {
            let (cuts, known) = fast(&toy, &old, &new);
            assert_eq!(cuts, full(&toy, &new).0, "same chunks as a full pass");
            if new.len() > 10_000 {
                assert!(known > new.len() - 1_500, "{known} of {} known", new.len());
            }
        }
    }

    #[test]
    fn a_rewrite_with_a_new_cut_point_keeps_valid_chunks() {
        let toy = Toy(FastHasher::new(&[7; 32]));
        let old = bytes(20_000, 6);
        let mut new = old.clone();
        for page in [2_000, 9_000] {
            new[page..page + 40].fill(58); // 58 = 2 × 29: a cut point wherever it can be
        }
        let (cuts, known) = fast(&toy, &old, &new);
        let mut next = 0;
        for &(o, n) in &cuts {
            assert_eq!(o, next);
            assert!(n <= 64 && (n >= 16 || o + n == new.len()));
            next += n;
        }
        assert_eq!(next, new.len());
        assert!(
            known > new.len() - 600,
            "{known} of {} bytes known",
            new.len()
        );
    }

    #[test]
    fn nothing_is_taken_from_an_unrelated_file() {
        let toy = Toy(FastHasher::new(&[7; 32]));
        let (cuts, known) = fast(&toy, &bytes(5_000, 3), &bytes(5_000, 4));
        assert_eq!(known, 0);
        assert_eq!(cuts, full(&toy, &bytes(5_000, 4)).0);
    }
}
