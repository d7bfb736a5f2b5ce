//! Sizes and limits of repository format v1, in one place, with the unit in the name.

/// Format version written to and required in `config`.
pub const FORMAT_VERSION: u32 = 1;

/// A pack is closed and written once its sealed blobs reach this size.
pub const PACK_TARGET_BYTES: usize = 16 * 1024 * 1024;

/// A pack of tree blobs is closed at this size: trees come slowly, and a smaller pack
/// holds less memory while it fills.
pub const TREE_PACK_TARGET_BYTES: usize = 4 * 1024 * 1024;

/// Largest blob the format accepts (plaintext); the chunker's maximum is far below it.
pub const MAX_BLOB_BYTES: usize = 64 * 1024 * 1024;

/// Largest pack header (sealed) a reader accepts; protects against a corrupt length field.
pub const MAX_PACK_HEADER_BYTES: usize = 64 * 1024 * 1024;

/// Bytes of a sealed blob's nonce.
pub const NONCE_BYTES: usize = 12;

/// Bytes of an AEAD tag.
pub const TAG_BYTES: usize = 16;

/// Overhead that sealing adds to a payload.
pub const SEAL_OVERHEAD_BYTES: usize = NONCE_BYTES + TAG_BYTES;

/// Bytes of one pack-header record: kind, flags, id, sealed length, raw length.
pub const PACK_RECORD_BYTES: usize = 1 + 1 + 32 + 4 + 4;

/// Default content-defined chunking sizes (see FORMAT.md for how they were chosen).
pub const DEFAULT_MIN_CHUNK_BYTES: u32 = 256 * 1024;
/// Default average chunk size.
pub const DEFAULT_AVG_CHUNK_BYTES: u32 = 1024 * 1024;
/// Default maximum chunk size.
pub const DEFAULT_MAX_CHUNK_BYTES: u32 = 4 * 1024 * 1024;

/// Bounds the chunker accepts (those of FastCDC 2020).
pub const CHUNK_MIN_BOUNDS_BYTES: (u32, u32) = (64, 1024 * 1024);
/// Bounds for the average chunk size.
pub const CHUNK_AVG_BOUNDS_BYTES: (u32, u32) = (256, 4 * 1024 * 1024);
/// Bounds for the maximum chunk size.
pub const CHUNK_MAX_BOUNDS_BYTES: (u32, u32) = (1024, 16 * 1024 * 1024);

/// Default zstd level for data blobs: level 1 backs up PostgreSQL data 17 % faster than
/// level 3 for a repository 9 % larger (docs/benchmarks.md).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// zstd level for tree blobs (small, very compressible, read at every restore).
pub const TREE_ZSTD_LEVEL: i32 = 3;

/// A compressed blob is kept only when it saves at least 1/this of the raw size.
pub const MIN_COMPRESSION_GAIN_DIVISOR: usize = 32;

/// Deepest directory nesting a restore makes, below the snapshot's root: half of what a
/// path of PATH_MAX (4096) bytes can hold at two bytes a level, so that the target's own
/// path fits too. Deeper directories are refused by name (check reports them).
pub const MAX_TREE_DEPTH: usize = 1024;
