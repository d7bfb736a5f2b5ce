//! The podvault repository: an encrypted, deduplicating, content-addressed store.
//!
//! This crate knows nothing of Kubernetes. It defines repository format v1 (see
//! `store/FORMAT.md`), the [`Backend`] trait every storage location implements, the local
//! directory backend, and [`Repository`], which seals blobs into packs, keeps the index,
//! and reads and writes trees and snapshots.
//!
//! ```no_run
//! use std::sync::Arc;
//! use podvault_store::{DirBackend, InitOptions, Repository, BlobKind};
//!
//! # fn main() -> Result<(), podvault_store::Error> {
//! let backend = Arc::new(DirBackend::new("/tmp/repo"));
//! let repo = Repository::init(backend, b"secret", &InitOptions::default())?;
//! let data = b"hello".to_vec();
//! let id = repo.blob_id(&data);
//! repo.save_blob(BlobKind::Data, id, &data)?;
//! repo.flush()?;
//! assert_eq!(repo.load_blob(BlobKind::Data, &id)?, data);
//! # Ok(()) }
//! ```

mod backend;
mod check;
pub mod chunker;
mod crypto;
mod error;
mod fasthash;
mod forget;
mod id;
mod index;
pub mod limits;
mod maintenance;
mod pack;
mod repo;
mod snapshot;
mod tree;

pub use backend::{Backend, DirBackend, FileKind};
pub use check::{CheckOptions, CheckReport, Problem};
pub use chunker::{Chunker, ChunkerParams};
pub use crypto::KdfParams;
pub use error::{Error, Result};
pub use fasthash::FastHasher;
pub use forget::{Decision, Forget, ForgetPlan, KeepPolicy, SnapshotFilter, apply_policy};
pub use id::{BlobId, IndexId, KeyId, PackId, SnapshotId, TreeId};
pub use index::BlobLocation;
pub use maintenance::{
    KeyInfo, PruneOptions, PruneReport, RepairReport, SESSION_STALE, Session, SessionInfo,
};
pub use repo::{Access, Config, DamagedSnapshot, InitOptions, Repository, SaveOutcome};
pub use snapshot::{Snapshot, Summary, this_host, this_user};
pub use tree::{
    ChunkPrint, Chunks, Entry, ListingError, Node, NodeCursor, NodeKind, PRINT_BYTES, Tree, Xattr,
    repeated_entries,
};

/// What a blob holds: file content, or a serialized [`Tree`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// A chunk of file content.
    Data,
    /// A directory listing (a serialized [`Tree`]).
    Tree,
}

impl BlobKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            _ => None,
        }
    }
}

impl std::fmt::Display for BlobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlobKind::Data => "data",
            BlobKind::Tree => "tree",
        })
    }
}
