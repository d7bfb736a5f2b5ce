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
