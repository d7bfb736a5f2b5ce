//! Trees: the serialized listing of one directory, stored as a blob of kind tree.

use serde::{Deserialize, Serialize};

use crate::{BlobId, TreeId};

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A regular file; `content` lists its chunks.
    File,
    /// A directory; `subtree` is its listing.
    Dir,
    /// A symbolic link; `link_target` is stored, never followed.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device; `rdev` is its device number.
    Chardev,
    /// A block device; `rdev` is its device number.
    Blockdev,
    /// A Unix socket (recorded; restore skips it, as sockets are made by their servers).
    Socket,
}

/// An extended attribute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Full name, such as `user.comment` or `system.posix_acl_access`.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Raw value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// One entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// File name: raw bytes, need not be UTF-8; never empty, `.`, `..`, or containing `/` or NUL.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Kind of node.
    pub kind: NodeKind,
    /// Permission bits with setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Owner's name when known on the backed-up host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group's name when known on the backed-up host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Modification time: seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Status change time: seconds (used to detect unchanged files; not restorable).
    pub ctime: i64,
    /// Nanoseconds part of the status change time.
    pub ctime_nsec: u32,
    /// Size in bytes (files: content length; symlinks: target length).
    pub size: u64,
    /// Inode number on the backed-up file system.
    pub inode: u64,
    /// Device id of the backed-up file system.
    pub device: u64,
    /// Hard link count when backed up; above 1, restore links nodes of equal (device, inode).
    pub links: u64,
    /// Device number of a character or block device.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    /// Chunks of a file's content, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<BlobId>,
    /// Listing of a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<TreeId>,
    /// Target of a symbolic link, raw bytes.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub link_target: Option<Vec<u8>>,
    /// Extended attributes, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// For large files: each chunk's length and keyed XXH3-128 fingerprint, in the order
    /// of `content`, [`PRINT_BYTES`] bytes each (u32 length, then the fingerprint, both
    /// little-endian). Lets the next backup recognise unchanged chunks without chunking
    /// or BLAKE3; empty when not recorded.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
    pub prints: Vec<u8>,
}

impl Node {
    /// A node with no metadata beyond its name and kind (mode 0644, owner 0, times 0, one
    /// link): a start for nodes made by hand.
    pub fn plain(name: &[u8], kind: NodeKind) -> Node {
        Node {
            name: name.to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            mtime: 0,
            mtime_nsec: 0,
            ctime: 0,
            ctime_nsec: 0,
            size: 0,
            inode: 0,
            device: 0,
            links: 1,
            rdev: 0,
            content: vec![],
            subtree: None,
            link_target: None,
            xattrs: vec![],
            prints: vec![],
        }
    }
}

/// Bytes per chunk in [`Node::prints`].
pub const PRINT_BYTES: usize = 20;

/// One chunk's entry in [`Node::prints`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPrint {
    /// Plaintext length of the chunk.
    pub len: u32,
    /// Keyed XXH3-128 of the chunk's plaintext.
    pub hash: u128,
}

impl ChunkPrint {
    /// Appends this entry to a `prints` field.
    pub fn push_to(&self, prints: &mut Vec<u8>) {
        prints.extend_from_slice(&self.len.to_le_bytes());
        prints.extend_from_slice(&self.hash.to_le_bytes());
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Node {
    /// The name for messages (lossy UTF-8).
    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// The chunk prints of a file, if recorded for every chunk of `content`.
    pub fn chunk_prints(&self) -> Option<Vec<ChunkPrint>> {
        if self.prints.is_empty() || self.prints.len() != self.content.len() * PRINT_BYTES {
            return None;
        }
        Some(
            self.prints
                .chunks_exact(PRINT_BYTES)
                .map(|p| {
                    let (len, hash) = p.split_at(4);
                    ChunkPrint {
                        len: u32::from_le_bytes(len.try_into().unwrap_or_default()),
                        hash: u128::from_le_bytes(hash.try_into().unwrap_or_default()),
                    }
                })
                .collect(),
        )
    }

    /// Whether the name is one a restore may create inside a directory.
    pub fn has_safe_name(&self) -> bool {
        !self.name.is_empty()
            && self.name != b"."
            && self.name != b".."
            && !self.name.contains(&b'/')
            && !self.name.contains(&0)
    }
}

/// A directory listing, nodes sorted by name bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// The entries, sorted by `name`.
    pub nodes: Vec<Node>,
}

/// Reads a tree's entries one at a time from its plaintext, so that a reader holds the
/// listing's bytes but never all of its entries decoded at once. The cursor keeps only a
/// position: the plaintext may be dropped between entries and read again (see
/// [`Repository::tree_bytes`](crate::Repository::tree_bytes)), as long as it is the same.
#[derive(Clone, Debug)]
pub struct NodeCursor {
    /// Where the next entry (or the array's end) starts.
    offset: usize,
    /// Entries left in a definite-length array; `None` for an indefinite one.
    left: Option<u64>,
    done: bool,
}

/// What is wrong with a tree's plaintext, found while reading it entry by entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ListingError(String);

impl From<String> for ListingError {
    fn from(reason: String) -> Self {
        ListingError(reason)
    }
}

impl NodeCursor {
    /// Finds the entries of a tree's plaintext (`{"nodes": [...]}`; other keys before them
    /// are skipped). The error says what is wrong with the plaintext.
    pub fn new(plain: &[u8]) -> std::result::Result<NodeCursor, ListingError> {
        use ciborium_ll::Header;
        let empty = |offset| NodeCursor {
            offset,
            left: Some(0),
            done: true,
        };
        let mut at = 0usize;
        let keys = match header(plain, &mut at)? {
            Header::Map(n) => n,
            other => return Err(format!("a tree is a map, not {other:?}").into()),
        };
        let mut seen = 0usize;
        loop {
            // No "nodes": an empty listing, as the decoder of a whole tree reads it.
            if keys.is_some_and(|n| seen >= n)
                || (keys.is_none() && header(plain, &mut at.clone())? == Header::Break)
            {
                return Ok(empty(at));
            }
            seen += 1;
            let key: String = decode(plain, &mut at).map_err(|e| format!("a tree's key: {e}"))?;
            if key == "nodes" {
                return match header(plain, &mut at)? {
                    Header::Array(n) => Ok(NodeCursor {
                        offset: at,
                        left: n.map(|n| n as u64),
                        done: false,
                    }),
                    other => Err(format!("a tree's nodes are an array, not {other:?}").into()),
                };
            }
            decode::<serde::de::IgnoredAny>(plain, &mut at)?;
        }
    }

    /// The next entry, or `None` after the last. `plain` must be the plaintext the cursor
    /// was made from.
    pub fn next(&mut self, plain: &[u8]) -> std::result::Result<Option<Node>, ListingError> {
        if self.at_end(plain)? {
            return Ok(None);
        }
        let node = decode::<Node>(plain, &mut self.offset).inspect_err(|_| self.done = true)?;
        Ok(Some(node))
    }

    /// Whether the listing has no more entries; counts the one about to be read if not.
    fn at_end(&mut self, plain: &[u8]) -> std::result::Result<bool, String> {
        if self.done {
            return Ok(true);
        }
        match self.left {
            Some(0) => self.done = true,
            Some(n) => self.left = Some(n - 1),
            None => {
                let mut at = self.offset;
                if header(plain, &mut at)? == ciborium_ll::Header::Break {
                    self.done = true;
                }
            }
        }
        Ok(self.done)
    }

    /// As [`next`](Self::next), but in a large listing a file's long list of chunk ids is
    /// left in place (see [`Entry::chunks`]): the entry then costs a few hundred bytes
    /// however many chunks it lists.
    pub fn next_entry(&mut self, plain: &[u8]) -> std::result::Result<Option<Entry>, ListingError> {
        if self.at_end(plain)? {
            return Ok(None);
        }
        let start = self.offset;
        let long = (plain.len() >= IN_PLACE_LISTING_BYTES)
            .then(|| long_lists(plain, start))
            .flatten();
        let Some(long) = long else {
            let node = decode::<Node>(plain, &mut self.offset).inspect_err(|_| self.done = true)?;
            return Ok(Some(Entry { node, place: None }));
        };
        // The entry without its long lists: both replaced by empty ones, the rest as is.
        let mut lean = Vec::new();
        let mut at = start;
        for (range, empty) in [(long.content.clone(), 0x80u8), (long.prints.clone(), 0x40)] {
            if let Some(range) = range {
                lean.extend_from_slice(&plain[at..range.start]);
                lean.push(empty);
                at = range.end;
            }
        }
        lean.extend_from_slice(&plain[at..long.end]);
        self.offset = long.end;
        let node = decode::<Node>(&lean, &mut 0).inspect_err(|_| self.done = true)?;
        Ok(Some(Entry {
            node,
            place: Some(ContentPlace {
                offset: long.content.map_or(0, |r| r.start + long.ids_header),
                count: long.count,
            }),
        }))
    }
}

/// Where an entry's long lists lie: the whole value of "content" and of "prints" (byte
/// ranges in the listing), the header bytes before the first id, how many ids, and where
/// the entry ends.
struct LongLists {
    content: Option<std::ops::Range<usize>>,
    prints: Option<std::ops::Range<usize>>,
    ids_header: usize,
    count: usize,
    end: usize,
}

/// Looks through the entry at `start` (a map): `Some` if its "content" is a definite
/// array of more than [`IDS_IN_PLACE`] 32-byte ids, each with the two-byte header a
/// writer uses, and its keys are text. Anything else is left to the whole decoder.
fn long_lists(plain: &[u8], start: usize) -> Option<LongLists> {
    use ciborium_ll::Header;
    let mut at = start;
    let Ok(Header::Map(Some(keys))) = header(plain, &mut at) else {
        return None;
    };
    let mut long = LongLists {
        content: None,
        prints: None,
        ids_header: 0,
        count: 0,
        end: 0,
    };
    for _ in 0..keys {
        let key: String = decode(plain, &mut at).ok()?;
        let value = at;
        match key.as_str() {
            "content" => {
                let Ok(Header::Array(Some(count))) = header(plain, &mut at) else {
                    return None;
                };
                long.ids_header = at - value;
                for _ in 0..count {
                    if plain.get(at..at + 2)? != [0x58, 0x20] || plain.len() < at + 34 {
                        return None;
                    }
                    at += 34;
                }
                long.count = count;
                long.content = Some(value..at);
            }
            "prints" => {
                decode::<serde::de::IgnoredAny>(plain, &mut at).ok()?;
                long.prints = Some(value..at);
            }
            _ => {
                decode::<serde::de::IgnoredAny>(plain, &mut at).ok()?;
            }
        }
    }
    long.end = at;
    // Ranges in order, content first: as podvault writes them (struct field order).
    let in_order = match (&long.content, &long.prints) {
        (Some(c), Some(p)) => c.end <= p.start,
        (Some(_), None) => true,
        _ => false,
    };
    (long.count > IDS_IN_PLACE && in_order).then_some(long)
}

/// One entry read by a [`NodeCursor`]: the node and, for a file of many chunks in a large
/// listing, where its chunk ids lie in the listing's bytes (then `node.content` and
/// `node.prints` are left empty, so that the ids are not held twice).
#[derive(Clone, Debug)]
pub struct Entry {
    /// The entry, without its chunk ids when they are left in place.
    pub node: Node,
    place: Option<ContentPlace>,
}

/// Where a file's chunk ids lie in a listing's bytes: the offset of the first one's CBOR
/// header (each is a 32-byte byte string, already checked) and how many there are.
#[derive(Clone, Copy, Debug)]
struct ContentPlace {
    offset: usize,
    count: usize,
}

impl Entry {
    /// Whether the chunk ids were left in the listing's bytes: [`chunks`](Self::chunks)
    /// then needs them.
    pub fn chunks_in_place(&self) -> bool {
        self.place.is_some()
    }

    /// How many chunks the file lists.
    pub fn chunk_count(&self) -> usize {
        self.place.map_or(self.node.content.len(), |p| p.count)
    }

    /// The file's chunk ids, in order. `plain` must be the listing the entry was read from.
    pub fn chunks<'a>(&'a self, plain: &'a [u8]) -> Chunks<'a> {
        match self.place {
            None => Chunks::Listed(self.node.content.iter()),
            Some(place) => Chunks::InPlace {
                plain,
                offset: place.offset,
                left: place.count,
            },
        }
    }
}

/// The chunk ids of an [`Entry`].
pub enum Chunks<'a> {
    /// Decoded with the node.
    Listed(std::slice::Iter<'a, BlobId>),
    /// Read from the listing's bytes as they are asked for.
    InPlace {
        /// The listing.
        plain: &'a [u8],
        /// Where the next id's header starts.
        offset: usize,
        /// Ids left.
        left: usize,
    },
}

impl Iterator for Chunks<'_> {
    type Item = BlobId;

    fn next(&mut self) -> Option<BlobId> {
        match self {
            Chunks::Listed(ids) => ids.next().copied(),
            Chunks::InPlace {
                plain,
                offset,
                left,
            } => {
                if *left == 0 {
                    return None;
                }
                // Checked when the entry was read: a one-byte header (0x58 0x20 is two:
                // "bytes, length in the next byte, 32") then the id.
                let id = plain.get(*offset + 2..*offset + 2 + 32)?;
                *offset += 2 + 32;
                *left -= 1;
                Some(BlobId::from_bytes(id.try_into().ok()?))
            }
        }
    }
}

/// A listing at least this long is read entry by entry with each entry's chunk ids left in
/// place when there are more than [`IDS_IN_PLACE`] (below it, no entry can list that many).
const IN_PLACE_LISTING_BYTES: usize = 1 << 20;

/// Chunk ids past which a file's list is left in the listing's bytes.
const IDS_IN_PLACE: usize = 16 * 1024;

/// The positions (0-based, ascending) of the entries of a listing whose name an earlier entry
/// already has: what a reader leaves out of a listing that is not sorted, where a twin may be
/// anywhere. Names are compared by a 128-bit hash; the memory is 24 bytes an entry, given
/// back on return. Entries past one that cannot be decoded are not looked at.
pub fn repeated_entries(plain: &[u8]) -> Vec<u64> {
    let mut names: Vec<(u128, u64)> = Vec::new();
    if let Ok(mut cursor) = NodeCursor::new(plain) {
        while let Ok(Some(node)) = cursor.next(plain) {
            let at = names.len() as u64;
            names.push((xxhash_rust::xxh3::xxh3_128(&node.name), at));
        }
    }
    names.sort_unstable();
    let mut repeated: Vec<u64> = names
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| w[1].1)
        .collect();
    repeated.sort_unstable();
    repeated
}

/// The CBOR item at `*at`, decoded as a `T`, moving `*at` past it.
fn decode<T: serde::de::DeserializeOwned>(
    plain: &[u8],
    at: &mut usize,
) -> std::result::Result<T, String> {
    thread_local! {
        // ciborium's scratch space for short strings: kept, rather than zeroed for each
        // entry as `from_reader` would.
        static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 4096]);
    }
    let mut rest = plain.get(*at..).ok_or("the listing ends early")?;
    let item = SCRATCH
        .with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => ciborium::de::from_reader_with_buffer(&mut rest, &mut scratch),
            Err(_) => ciborium::from_reader(&mut rest),
        })
        .map_err(|e| format!("cannot decode: {e}"))?;
    *at = plain.len() - rest.len();
    Ok(item)
}

/// The CBOR header at `*at`, moving `*at` past it.
fn header(plain: &[u8], at: &mut usize) -> std::result::Result<ciborium_ll::Header, String> {
    let rest = plain.get(*at..).ok_or("the listing ends early")?;
    let mut decoder = ciborium_ll::Decoder::from(rest);
    let header = decoder
        .pull()
        .map_err(|e| format!("cannot decode: {e:?}"))?;
    *at += decoder.offset();
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<Node> {
        names
            .iter()
            .map(|n| Node::plain(n.as_bytes(), NodeKind::File))
            .collect()
    }

    fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).expect("cbor");
        out
    }

    fn read_all(plain: &[u8]) -> (Vec<Node>, Option<String>) {
        let mut cursor = match NodeCursor::new(plain) {
            Ok(c) => c,
            Err(e) => return (vec![], Some(e.to_string())),
        };
        let mut got = Vec::new();
        loop {
            match cursor.next(plain) {
                Ok(Some(node)) => got.push(node),
                Ok(None) => return (got, None),
                Err(e) => return (got, Some(e.to_string())),
            }
        }
    }

    #[test]
    fn the_cursor_reads_what_the_whole_decoder_reads() {
        let tree = Tree {
            nodes: nodes(&["a", "b", "c"]),
        };
        let (got, err) = read_all(&cbor(&tree));
        assert_eq!((got, err), (tree.nodes, None));
        // Empty listings, and a map without "nodes", are empty.
        assert_eq!(read_all(&cbor(&Tree::default())), (vec![], None));
        assert_eq!(
            read_all(&cbor(&std::collections::BTreeMap::<String, u8>::new())),
            (vec![], None)
        );
    }

    #[test]
    fn indefinite_lengths_and_other_keys_as_another_writer_may_encode_them() {
        let mut plain = vec![0xbf]; // map, indefinite length
        plain.extend(cbor(&"comment"));
        plain.extend(cbor(&vec!["ignored", "value"]));
        plain.extend(cbor(&"nodes"));
        plain.push(0x9f); // array, indefinite length
        for node in nodes(&["x", "y"]) {
            plain.extend(cbor(&node));
        }
        plain.extend([0xff, 0xff]);
        let (got, err) = read_all(&plain);
        assert_eq!(err, None);
        assert_eq!(got, nodes(&["x", "y"]));
        // An indefinite map without "nodes".
        assert_eq!(read_all(&[0xbf, 0xff]), (vec![], None));
    }

    #[test]
    fn entries_before_damage_are_read_and_the_damage_is_said() {
        let plain = cbor(&Tree {
            nodes: nodes(&["a", "b", "c"]),
        });
        // Cut inside the last entry: the first two are read.
        let (got, err) = read_all(&plain[..plain.len() - 5]);
        assert_eq!(got, nodes(&["a", "b"]));
        assert!(err.is_some_and(|e| e.contains("cannot decode")));
        // Not a map, nodes not an array, a key that is not text, nothing at all.
        for bad in [
            cbor(&vec![1u8]),
            cbor(&std::collections::BTreeMap::from([("nodes", 1u8)])),
            cbor(&std::collections::BTreeMap::from([(1u8, 1u8)])),
            vec![],
        ] {
            let (got, err) = read_all(&bad);
            assert!(got.is_empty() && err.is_some(), "{bad:?}");
        }
        // An entry that is not a node.
        let mut plain = vec![0xa1];
        plain.extend(cbor(&"nodes"));
        plain.extend(cbor(&vec![7u8]));
        let (got, err) = read_all(&plain);
        assert!(got.is_empty() && err.is_some());
    }

    #[test]
    fn a_long_chunk_list_in_a_large_listing_is_left_in_place() {
        let ids: Vec<BlobId> = (0..40_000u32)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&i.to_le_bytes());
                BlobId::from_bytes(id)
            })
            .collect();
        let mut big = Node::plain(b"big", NodeKind::File);
        big.content = ids.clone();
        big.prints = vec![7; ids.len() * PRINT_BYTES];
        big.size = 12345;
        let mut small = Node::plain(b"small", NodeKind::File);
        small.content = ids[..3].to_vec();
        let tree = Tree {
            nodes: vec![big.clone(), small.clone()],
        };
        let plain = cbor(&tree);
        assert!(plain.len() >= IN_PLACE_LISTING_BYTES);
        let mut cursor = NodeCursor::new(&plain).expect("cursor");
        let first = cursor.next_entry(&plain).expect("read").expect("an entry");
        assert!(first.chunks_in_place());
        assert!(first.node.content.is_empty() && first.node.prints.is_empty());
        assert_eq!(first.chunk_count(), ids.len());
        assert_eq!(first.chunks(&plain).collect::<Vec<_>>(), ids);
        assert_eq!(
            first.node,
            Node {
                content: vec![],
                prints: vec![],
                ..big
            }
        );
        let second = cursor.next_entry(&plain).expect("read").expect("an entry");
        assert!(!second.chunks_in_place());
        assert_eq!(second.chunks(&plain).collect::<Vec<_>>(), small.content);
        assert_eq!(second.node, small);
        assert!(cursor.next_entry(&plain).expect("read").is_none());
        // In a small listing every entry is decoded whole.
        let plain = cbor(&Tree {
            nodes: vec![small.clone()],
        });
        let entry = NodeCursor::new(&plain)
            .and_then(|mut c| c.next_entry(&plain))
            .expect("read")
            .expect("an entry");
        assert_eq!(entry.node, small);
    }

    #[test]
    fn repeated_entries_are_found_wherever_they_are() {
        let plain = cbor(&Tree {
            nodes: nodes(&["b", "a", "c", "a", "b", "b"]),
        });
        assert_eq!(repeated_entries(&plain), vec![3, 4, 5]);
        let plain = cbor(&Tree {
            nodes: nodes(&["a", "b"]),
        });
        assert!(repeated_entries(&plain).is_empty());
    }
}
