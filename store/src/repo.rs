//! The repository: opening with a password, sealing blobs into packs, the index, trees and
//! snapshots.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, FileKind};
use crate::chunker::{Chunker, ChunkerParams};
use crate::crypto::{KdfParams, KeyFile, Keys, MasterKey};
use crate::error::{Error, Result};
use crate::fasthash::FastHasher;
use crate::index::{Index, IndexFile, IndexPack};
use crate::limits::{
    DEFAULT_ZSTD_LEVEL, FORMAT_VERSION, MAX_BLOB_BYTES, MIN_COMPRESSION_GAIN_DIVISOR,
    PACK_TARGET_BYTES, TREE_PACK_TARGET_BYTES, TREE_ZSTD_LEVEL,
};
use crate::pack::{FLAG_ZSTD, PackBuilder, PackRecord, blob_aad, parse_pack};
use crate::tree::Entry;
use crate::{
    BlobId, BlobKind, BlobLocation, IndexId, KeyId, NodeCursor, PackId, Snapshot, SnapshotId, Tree,
    TreeId,
};

const INDEX_AAD: &[u8] = b"podvault index v1";
const SNAPSHOT_AAD: &[u8] = b"podvault snapshot v1";
const DOCUMENT_AAD: &[u8] = b"podvault document v1";

/// Index files are written after this many new packs, so an interrupted backup leaves its
/// uploaded packs indexed and a later run can reuse them.
const INDEX_FLUSH_PACKS: usize = 32;

/// An index file is also written once the packs waiting for one hold this many blobs, so
/// that no index file is large to read (packs of small files hold thousands of blobs).
const INDEX_FLUSH_BLOBS: usize = 64 * 1024;

/// The repository's `config` file (plain JSON: it holds nothing secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Format version; this build reads and writes 1.
    pub version: u32,
    /// Random repository id (hex).
    pub id: String,
    /// When the repository was created.
    pub created: chrono::DateTime<chrono::Utc>,
    /// Content-defined chunking sizes.
    pub chunker: ChunkerParams,
    /// Argon2id parameters for new keys.
    pub kdf: KdfParams,
}

/// Choices made when creating a repository.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// Chunk sizes (defaults: see [`crate::limits`]).
    pub chunker: ChunkerParams,
    /// Argon2id parameters of the first key and defaults for later ones.
    pub kdf: KdfParams,
}

/// What [`Repository::save_blob`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveOutcome {
    /// The repository already had the blob.
    Known,
    /// The blob was added; `stored_bytes` is its sealed size.
    New {
        /// Bytes the blob takes in its pack.
        stored_bytes: u64,
    },
}

/// An open repository. All methods take `&self` and may be called from many threads.
pub struct Repository {
    backend: Arc<dyn Backend>,
    config: Config,
    master: MasterKey,
    keys: Keys,
    chunker: Chunker,
    fast_hasher: FastHasher,
    key_id: KeyId,
    zstd_level: i32,
    index: RwLock<Index>,
    /// Blobs accepted into a pack that is not written yet.
    pending: Mutex<HashSet<BlobId>>,
    data_pack: Mutex<PackBuilder>,
    tree_pack: Mutex<PackBuilder>,
    /// Packs written but not yet listed in an index file.
    unindexed: Mutex<Vec<IndexPack>>,
    /// The health of this process's session, if it started one.
    pub(crate) session: Mutex<Option<Arc<crate::maintenance::SessionHealth>>>,
}

/// How a command uses the repository, which decides how it loads the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads snapshots and data (restore, check, ls).
    Read,
    /// Adds data and snapshots (backup, prune's repacking).
    Write,
}

/// Bytes of each of the two samples (start and middle) that decide whether a large chunk is
/// worth compressing.
const PROBE_BYTES: usize = 32 * 1024;

/// Whether a chunk starts like a file that is compressed already (gzip, bzip2, xz, zstd,
/// zip/jar/docx, PNG, JPEG, WebP, 7-Zip): those do not shrink, so zstd is not tried.
fn is_compressed_format(data: &[u8]) -> bool {
    const MAGIC: &[&[u8]] = &[
        b"\x1f\x8b",
        b"BZh",
        b"\xfd7zXZ\x00",
        b"\x28\xb5\x2f\xfd",
        b"PK\x03\x04",
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff",
        b"7z\xbc\xaf\x27\x1c",
    ];
    MAGIC.iter().any(|m| data.starts_with(m))
        || (data.len() >= 12 && data.starts_with(b"RIFF") && &data[8..12] == b"WEBP")
}

/// Whether a data chunk is not worth compressing: it starts like a compressed file, or both
/// a sample at its start and one in its middle fail to shrink by the minimum gain. Other
/// small chunks are always tried.
fn looks_incompressible(
    compressor: &mut zstd::bulk::Compressor<'static>,
    data: &[u8],
) -> Result<bool> {
    if is_compressed_format(data) {
        return Ok(true);
    }
    if data.len() < 8 * PROBE_BYTES {
        return Ok(false);
    }
    let mut out = [0u8; PROBE_BYTES + 1024];
    for at in [0, data.len() / 2] {
        let sample = &data[at..at + PROBE_BYTES];
        let n = compressor
            .compress_to_buffer(sample, &mut out[..])
            .map_err(|e| Error::Crypto(format!("zstd: {e}")))?;
        if n + PROBE_BYTES / MIN_COMPRESSION_GAIN_DIVISOR < PROBE_BYTES {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Per-thread buffers of the sealing path, reused so that the pipeline does not allocate
/// and free megabytes per chunk (glibc then keeps freed buffers in per-thread arenas and
/// resident memory grows with the number of threads).
struct Scratch {
    /// One context per level in use (data and trees differ), kept, not re-created.
    compressors: Vec<(i32, zstd::bulk::Compressor<'static>)>,
    compressed: Vec<u8>,
}

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static SCRATCH: std::cell::RefCell<Scratch> = const {
        std::cell::RefCell::new(Scratch {
            compressors: Vec::new(),
            compressed: Vec::new(),
        })
    };
}

/// Decompresses a zstd frame into `out`'s spare capacity with this thread's context.
fn decompress(frame: &[u8], out: &mut Vec<u8>) -> std::io::Result<usize> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        match slot.as_mut() {
            Some(d) => d.decompress_to_buffer(frame, out),
            None => Err(std::io::Error::other("no zstd context")),
        }
    })
}

fn cbor<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| Error::Crypto(format!("encoding: {e}")))?;
    Ok(out)
}

fn uncbor<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
    name: &str,
) -> Result<T> {
    ciborium::from_reader(bytes)
        .map_err(|e| Error::corrupt(what, name, format!("cannot decode: {e}")))
}

/// The readable snapshots, oldest first, and the damaged ones.
pub type SnapshotListing = (Vec<(SnapshotId, Snapshot)>, Vec<DamagedSnapshot>);

/// A snapshot file that cannot be read: damaged, or sealed with another repository's key.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DamagedSnapshot {
    /// Its id (the file's name).
    pub id: SnapshotId,
    /// Why it cannot be read.
    pub reason: String,
}

impl Repository {
    /// Creates a new repository in an empty location, with one key for `password`.
    pub fn init(
        backend: Arc<dyn Backend>,
        password: &[u8],
        options: &InitOptions,
    ) -> Result<Repository> {
        options.chunker.validate()?;
        options.kdf.validate()?;
        let mut id = [0u8; 32];
        crate::crypto::random_bytes(&mut id)?;
        let config = Config {
            version: FORMAT_VERSION,
            id: hex::encode(id),
            created: chrono::Utc::now(),
            chunker: options.chunker,
            kdf: options.kdf.clone(),
        };
        backend.create()?;
        let master = MasterKey::generate()?;
        let key_file = KeyFile::wrap(&master, password, &config.kdf)?;
        let key_bytes =
            serde_json::to_vec_pretty(&key_file).map_err(|e| Error::Crypto(e.to_string()))?;
        let key_id = KeyId::from_bytes(*blake3::hash(&key_bytes).as_bytes());
        backend.write(FileKind::Key, &key_id.to_hex(), &key_bytes)?;
        let config_bytes =
            serde_json::to_vec_pretty(&config).map_err(|e| Error::Crypto(e.to_string()))?;
        // The config is written last: a location without it is not (yet) a repository.
        backend.write(FileKind::Config, "config", &config_bytes)?;
        Self::with_key(backend, config, &master, key_id, Index::default())
    }

    fn with_key(
        backend: Arc<dyn Backend>,
        config: Config,
        master: &MasterKey,
        key_id: KeyId,
        index: Index,
    ) -> Result<Repository> {
        let keys = master.derive()?;
        let chunker = Chunker::new(config.chunker, &keys.gear_key)?;
        let fast_hasher = FastHasher::new(&keys.fast_hash_key);
        Ok(Repository {
            fast_hasher,
            backend,
            config,
            master: MasterKey(master.0),
            keys,
            chunker,
            key_id,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            index: RwLock::new(index),
            pending: Mutex::new(HashSet::new()),
            data_pack: Mutex::new(PackBuilder::default()),
            tree_pack: Mutex::new(PackBuilder::default()),
            unindexed: Mutex::new(Vec::new()),
            session: Mutex::new(None),
        })
    }

    /// Reads and validates the config of the repository at `backend`.
    pub fn read_config(backend: &dyn Backend) -> Result<Config> {
        let not_repo = |reason: String| Error::NotARepository {
            location: backend.location(),
            reason,
        };
        let bytes = match backend.read(FileKind::Config, "config") {
            Ok(b) => b,
            Err(Error::NotFound { .. }) => return Err(not_repo("it has no config file".into())),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(not_repo("it is not a directory".into()));
            }
            Err(e) => return Err(e),
        };
        let config: Config = serde_json::from_slice(&bytes)
            .map_err(|e| not_repo(format!("its config file is not valid: {e}")))?;
        if config.version != FORMAT_VERSION {
            return Err(not_repo(format!(
                "format version {} is not supported (this build reads {FORMAT_VERSION})",
                config.version
            )));
        }
        config.chunker.validate()?;
        Ok(config)
    }

    /// Opens an existing repository with a password and loads its index for reading (see
    /// [`Repository::open_session`] for commands that run alongside others).
    pub fn open(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Repository> {
        let repo = Self::open_keyed(backend, password)?;
        repo.load_index(Access::Read)?;
        Ok(repo)
    }

    /// Opens a repository, announces this process in a session file, then loads the index
    /// as `access` needs it: writers never reuse blobs of packs a prune marked for deletion,
    /// and pick up the packs an interrupted backup uploaded without indexing them. The
    /// session ends when the returned [`Session`] is dropped.
    pub fn open_session(
        backend: Arc<dyn Backend>,
        password: &[u8],
        command: &str,
        access: Access,
    ) -> Result<(Repository, crate::Session)> {
        let repo = Self::open_keyed(backend, password)?;
        let session = repo.start_session(command)?;
        let marked = repo.load_index(access)?;
        if access == Access::Write {
            repo.recover_unindexed_packs(&marked)?;
        }
        Ok((repo, session))
    }

    /// Opens a repository in a session without reading its index: for
    /// [`Repository::repair_index`] (the index may be damaged) and
    /// [`Repository::check`] (which loads it itself, in the order its checks need).
    pub fn open_session_bare(
        backend: Arc<dyn Backend>,
        password: &[u8],
        command: &str,
    ) -> Result<(Repository, crate::Session)> {
        let repo = Self::open_keyed(backend, password)?;
        let session = repo.start_session(command)?;
        Ok((repo, session))
    }

    fn open_keyed(backend: Arc<dyn Backend>, password: &[u8]) -> Result<Repository> {
        let config = Self::read_config(backend.as_ref())?;
        let key_names = backend.list(FileKind::Key)?;
        let mut found = None;
        for (name, _) in &key_names {
            let bytes = backend.read(FileKind::Key, name)?;
            let key_file: KeyFile = serde_json::from_slice(&bytes)
                .map_err(|e| Error::corrupt("key", name.clone(), format!("not valid JSON: {e}")))?;
            if let Some(master) = key_file.unwrap_key(password, name)? {
                let id = KeyId::from_hex(name)
                    .ok_or_else(|| Error::corrupt("key", name.clone(), "bad file name"))?;
                found = Some((master, id));
                break;
            }
        }
        let Some((master, key_id)) = found else {
            if key_names.is_empty() {
                return Err(Error::NotARepository {
                    location: backend.location(),
                    reason: "it has no key files".into(),
                });
            }
            return Err(Error::WrongPassword {
                location: backend.location(),
                keys: key_names.len(),
            });
        };
        Self::with_key(backend, config, &master, key_id, Index::default())
    }

    /// Loads every index file. Packs a prune marked for deletion are left out for writers
    /// and come last for readers (a blob stored elsewhere too is read from there).
    /// Returns the marked packs, read before the index.
    pub(crate) fn load_index(&self, access: Access) -> Result<HashSet<PackId>> {
        let marked = self.marked_packs()?;
        let mut index = Index::default();
        let mut later = Vec::new();
        for (name, file) in self.read_all_index_files()? {
            for pack in file.packs {
                if marked.contains(&pack.id) {
                    if access == Access::Read {
                        later.push((name.clone(), pack));
                    }
                } else if !index.load_index_pack(&pack) {
                    return Err(Error::corrupt("index", name, "unknown blob kind"));
                }
            }
        }
        for (name, pack) in later {
            if !index.load_index_pack(&pack) {
                return Err(Error::corrupt("index", name, "unknown blob kind"));
            }
        }
        index.finish_loading();
        *self.index.write() = index;
        Ok(marked)
    }

    /// Every index file. A prune replaces an index file by writing the new one before
    /// deleting the old, so a file that vanishes between listing and reading means the
    /// listing is out of date: it is taken again.
    pub(crate) fn read_all_index_files(&self) -> Result<Vec<(String, IndexFile)>> {
        let mut attempt = 0;
        'listing: loop {
            attempt += 1;
            let mut out = Vec::new();
            for (name, _) in self.backend.list(FileKind::Index)? {
                match self.read_index_file(&name) {
                    Ok(file) => out.push((name, file)),
                    Err(Error::NotFound { .. }) if attempt < 10 => continue 'listing,
                    Err(e) => return Err(e),
                }
            }
            return Ok(out);
        }
    }

    pub(crate) fn read_index_file(&self, name: &str) -> Result<IndexFile> {
        let mut sealed = self.backend.read(FileKind::Index, name)?;
        let plain = self
            .keys
            .sealer
            .open_in_place(INDEX_AAD, &mut sealed)
            .map_err(|_| {
                Error::corrupt(
                    "index",
                    name,
                    "fails authentication (damaged, or written with another key)",
                )
            })?;
        uncbor(&sealed[plain], "index", name)
    }

    /// Adds another password that opens the same master key; returns the new key's id.
    pub fn add_key(&self, password: &[u8]) -> Result<KeyId> {
        let key_file = KeyFile::wrap(&self.master, password, &self.config.kdf)?;
        let key_bytes =
            serde_json::to_vec_pretty(&key_file).map_err(|e| Error::Crypto(e.to_string()))?;
        let id = KeyId::from_bytes(*blake3::hash(&key_bytes).as_bytes());
        self.backend
            .write(FileKind::Key, &id.to_hex(), &key_bytes)?;
        Ok(id)
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The most plaintext bytes a blob of `kind` may hold: what the writer keeps to (the
    /// chunker's maximum for data, the blob limit for trees), enforced by every reader.
    pub fn blob_limit(&self, kind: BlobKind) -> usize {
        match kind {
            BlobKind::Data => self.config.chunker.max_bytes as usize,
            BlobKind::Tree => crate::limits::MAX_BLOB_BYTES,
        }
    }

    /// The id of the key this repository was opened with.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The keyed chunker of this repository.
    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    /// Key for fast keyed hashes of content (derived from the master key).
    pub fn fast_hash_key(&self) -> &[u8; 32] {
        &self.keys.fast_hash_key
    }

    /// The keyed XXH3-128 fingerprint of this repository (the fast path of incremental
    /// backups).
    pub fn fast_hasher(&self) -> &FastHasher {
        &self.fast_hasher
    }

    /// Sets the zstd level for new blobs (1..=22, or negative for the fast levels).
    pub fn set_zstd_level(&mut self, level: i32) -> Result<()> {
        if !zstd::compression_level_range().contains(&level) {
            return Err(Error::InvalidParameter {
                name: "compression level",
                reason: format!("{level} is outside {:?}", zstd::compression_level_range()),
            });
        }
        self.zstd_level = level;
        Ok(())
    }

    /// The id a blob with this plaintext has in this repository (keyed BLAKE3).
    pub fn blob_id(&self, data: &[u8]) -> BlobId {
        BlobId::from_bytes(*blake3::keyed_hash(&self.keys.blob_id_key, data).as_bytes())
    }

    /// Whether the repository has (or is about to write) a blob.
    pub fn has_blob(&self, id: &BlobId) -> bool {
        self.index.read().contains(id) || self.pending.lock().contains(id)
    }

    /// Where a blob is stored, if the index knows it.
    pub fn locate(&self, id: &BlobId) -> Option<BlobLocation> {
        self.index.read().get(id)
    }

    /// Number of blobs in the index.
    pub fn blob_count(&self) -> usize {
        self.index.read().len()
    }

    /// Stores a blob unless the repository already has it. `id` must be [`blob_id`](Self::blob_id)
    /// of `data`. Concurrent callers may race and store a blob twice; never zero times.
    pub fn save_blob(&self, kind: BlobKind, id: BlobId, data: &[u8]) -> Result<SaveOutcome> {
        if data.len() > MAX_BLOB_BYTES {
            return Err(Error::InvalidParameter {
                name: "blob size",
                reason: format!("{} bytes exceeds {MAX_BLOB_BYTES}", data.len()),
            });
        }
        if self.index.read().contains(&id) || !self.pending.lock().insert(id) {
            return Ok(SaveOutcome::Known);
        }
        let result = self.seal_and_add(kind, id, data);
        if result.is_err() {
            self.pending.lock().remove(&id);
        }
        result
    }

    fn seal_and_add(&self, kind: BlobKind, id: BlobId, data: &[u8]) -> Result<SaveOutcome> {
        let level = if kind == BlobKind::Tree {
            TREE_ZSTD_LEVEL
        } else {
            self.zstd_level
        };
        let zstd_err = |e: std::io::Error| Error::Crypto(format!("zstd: {e}"));
        let (stored_bytes, full) = SCRATCH.with(|cell| -> Result<_> {
            let scratch = &mut *cell.borrow_mut();
            let at = match scratch.compressors.iter().position(|(l, _)| *l == level) {
                Some(i) => i,
                None => {
                    let c = zstd::bulk::Compressor::new(level).map_err(zstd_err)?;
                    scratch.compressors.push((level, c));
                    scratch.compressors.len() - 1
                }
            };
            let compressor = &mut scratch.compressors[at].1;
            let compress = kind == BlobKind::Tree || !looks_incompressible(compressor, data)?;
            let mut flags = 0;
            if compress {
                scratch.compressed.clear();
                scratch
                    .compressed
                    .reserve(zstd::zstd_safe::compress_bound(data.len()));
                compressor
                    .compress_to_buffer(data, &mut scratch.compressed)
                    .map_err(zstd_err)?;
                if scratch.compressed.len() + data.len() / MIN_COMPRESSION_GAIN_DIVISOR < data.len()
                {
                    flags = FLAG_ZSTD;
                }
            }
            let payload = if flags == FLAG_ZSTD {
                scratch.compressed.as_slice()
            } else {
                data
            };
            let mut builder = match kind {
                BlobKind::Data => self.data_pack.lock(),
                BlobKind::Tree => self.tree_pack.lock(),
            };
            let target = match kind {
                BlobKind::Data => PACK_TARGET_BYTES,
                BlobKind::Tree => TREE_PACK_TARGET_BYTES,
            };
            // Sealed straight into the pack: no per-thread copy of every blob.
            let sealed_len = builder.add_with(kind, flags, id, data.len() as u32, |buf| {
                self.keys
                    .sealer
                    .seal_append(&blob_aad(kind, flags, &id), payload, buf)
            })?;
            let full = (builder.len() >= target).then(|| std::mem::take(&mut *builder));
            Ok((sealed_len as u64, full))
        })?;
        if let Some(builder) = full {
            self.write_pack(builder)?;
        }
        Ok(SaveOutcome::New { stored_bytes })
    }

    fn write_pack(&self, builder: PackBuilder) -> Result<()> {
        let (id, bytes, records) = builder.finish(&self.keys.sealer)?;
        // The buffer is freed right after: with glibc's mmap threshold fixed (see the
        // binary's allocator set-up) that returns it to the system, and measured no slower
        // than keeping buffers for the next pack.
        let written = self
            .backend
            .write_owned(FileKind::Pack, &id.to_hex(), bytes);
        let mut pending = self.pending.lock();
        for r in &records {
            pending.remove(&r.id);
        }
        written?;
        self.index.write().add_pack(id, &records);
        drop(pending);
        let batch = {
            let mut unindexed = self.unindexed.lock();
            unindexed.push(IndexPack::from_records(id, &records));
            let blobs: usize = unindexed.iter().map(|p| p.blobs.len()).sum();
            (unindexed.len() >= INDEX_FLUSH_PACKS || blobs >= INDEX_FLUSH_BLOBS)
                .then(|| std::mem::take(&mut *unindexed))
        };
        if let Some(batch) = batch {
            self.write_index_file(batch)?;
        }
        Ok(())
    }

    fn write_index_file(&self, packs: Vec<IndexPack>) -> Result<IndexId> {
        let session = self.session.lock().as_ref().map(|h| h.name.clone());
        let plain = cbor(&IndexFile { packs, session })?;
        let sealed = self.keys.sealer.seal(INDEX_AAD, &plain)?;
        let id = IndexId::from_bytes(*blake3::hash(&sealed).as_bytes());
        self.backend.write(FileKind::Index, &id.to_hex(), &sealed)?;
        Ok(id)
    }

    /// Writes every partly filled pack, then an index file for all packs not yet indexed.
    /// After it returns, every blob saved so far is durable and findable.
    pub fn flush(&self) -> Result<()> {
        for packer in [&self.data_pack, &self.tree_pack] {
            let builder = std::mem::take(&mut *packer.lock());
            if !builder.is_empty() {
                self.write_pack(builder)?;
            }
        }
        let batch = std::mem::take(&mut *self.unindexed.lock());
        if !batch.is_empty() {
            self.write_index_file(batch)?;
        }
        Ok(())
    }

    /// Reads, authenticates, decompresses and verifies one blob.
    pub fn load_blob(&self, kind: BlobKind, id: &BlobId) -> Result<Vec<u8>> {
        let loc = self.locate(id).ok_or_else(|| Error::MissingBlob {
            kind,
            id: id.to_hex(),
        })?;
        let sealed = self.backend.read_range(
            FileKind::Pack,
            &loc.pack.to_hex(),
            u64::from(loc.offset),
            u64::from(loc.sealed_len),
        )?;
        if sealed.len() != loc.sealed_len as usize {
            return Err(Error::corrupt(
                "pack",
                loc.pack.to_hex(),
                format!("truncated: {kind} blob {} lies beyond its end", id.short()),
            ));
        }
        self.open_blob_owned(id, &loc, sealed)
    }

    /// Opens a sealed blob read from its pack and checks that its content has the id.
    pub fn open_blob(&self, id: &BlobId, loc: &BlobLocation, sealed: &[u8]) -> Result<Vec<u8>> {
        self.open_blob_owned(id, loc, sealed.to_vec())
    }

    /// Opens a sealed blob where it lies (decrypting `sealed` in place) and checks its id;
    /// returns the plaintext, in `sealed` or, when compressed, in `out`.
    pub fn open_blob_in_place<'a>(
        &self,
        id: &BlobId,
        loc: &BlobLocation,
        sealed: &'a mut [u8],
        out: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        let damaged = |what: &str| {
            Error::corrupt(
                "pack",
                loc.pack.to_hex(),
                format!("{} blob {} {what}", loc.kind, id.short()),
            )
        };
        // The writer never makes a data blob longer than the chunker's maximum, nor any
        // blob over the blob limit: a larger claim is refused before memory is taken for it.
        let limit = self.blob_limit(loc.kind);
        if loc.raw_len as usize > limit {
            return Err(damaged(&format!(
                "claims {} bytes, more than the {limit} a {} blob may hold",
                loc.raw_len, loc.kind
            )));
        }
        let range = self
            .keys
            .sealer
            .open_in_place(&blob_aad(loc.kind, loc.flags, id), sealed)
            .map_err(|_| damaged("fails authentication"))?;
        let plain: &[u8] = if loc.compressed() {
            out.clear();
            out.reserve(loc.raw_len as usize);
            decompress(&sealed[range], out)
                .map_err(|e| damaged(&format!("does not decompress: {e}")))?;
            out
        } else {
            &sealed[range]
        };
        if plain.len() != loc.raw_len as usize || self.blob_id(plain) != *id {
            return Err(damaged("has the wrong content"));
        }
        Ok(plain)
    }

    /// As [`open_blob`](Self::open_blob), decrypting in the buffer it is given.
    fn open_blob_owned(
        &self,
        id: &BlobId,
        loc: &BlobLocation,
        mut sealed: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_blob_in_place(id, loc, &mut sealed, &mut out)?;
        if loc.compressed() {
            return Ok(out);
        }
        // The plaintext lies between the nonce and the tag, its length checked above.
        sealed.drain(..crate::limits::NONCE_BYTES);
        sealed.truncate(loc.raw_len as usize);
        Ok(sealed)
    }

    /// Stores a tree and returns its id.
    pub fn save_tree(&self, tree: &Tree) -> Result<(TreeId, SaveOutcome)> {
        let bytes = cbor(tree)?;
        let id = self.blob_id(&bytes);
        let outcome = self.save_blob(BlobKind::Tree, id, &bytes)?;
        Ok((TreeId::from(id), outcome))
    }

    /// Loads a tree.
    pub fn load_tree(&self, id: &TreeId) -> Result<Tree> {
        let bytes = self.load_blob(BlobKind::Tree, &BlobId::from(*id))?;
        uncbor(&bytes, "tree", &id.to_hex())
    }

    /// The plaintext of a tree, to be read entry by entry with a [`NodeCursor`]: a third
    /// or less of the memory the decoded [`Tree`] takes.
    pub fn tree_bytes(&self, id: &TreeId) -> Result<Vec<u8>> {
        self.load_blob(BlobKind::Tree, &BlobId::from(*id))
    }

    /// The plaintext of a tree and a cursor at its first entry.
    pub fn tree_listing(&self, id: &TreeId) -> Result<(Vec<u8>, NodeCursor)> {
        let plain = self.tree_bytes(id)?;
        let cursor = NodeCursor::new(&plain)
            .map_err(|e| Error::corrupt("tree", id.to_hex(), e.to_string()))?;
        Ok((plain, cursor))
    }

    /// Calls `f` with each entry of a tree, in order, decoding one at a time, and the
    /// listing's bytes (for [`Entry::chunks`]). Entries before one that cannot be decoded
    /// are passed to `f` before the error is returned.
    pub fn for_each_entry(
        &self,
        id: &TreeId,
        mut f: impl FnMut(Entry, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let (plain, mut cursor) = self.tree_listing(id)?;
        let corrupt = |e: crate::ListingError| Error::corrupt("tree", id.to_hex(), e.to_string());
        while let Some(entry) = cursor.next_entry(&plain).map_err(corrupt)? {
            f(entry, &plain)?;
        }
        Ok(())
    }

    /// Writes a snapshot (call [`flush`](Self::flush) first) and returns its id. Fails if
    /// this process's session could not be kept fresh: a prune may then have removed data
    /// the snapshot would refer to.
    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<SnapshotId> {
        self.check_session()?;
        let plain = cbor(snapshot)?;
        let sealed = self.keys.sealer.seal(SNAPSHOT_AAD, &plain)?;
        let id = SnapshotId::from_bytes(*blake3::hash(&sealed).as_bytes());
        self.backend
            .write(FileKind::Snapshot, &id.to_hex(), &sealed)?;
        Ok(id)
    }

    /// Loads one snapshot by its full id.
    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let name = id.to_hex();
        let sealed = self.backend.read(FileKind::Snapshot, &name)?;
        if *blake3::hash(&sealed).as_bytes() != *id.as_bytes() {
            return Err(Error::corrupt(
                "snapshot",
                name,
                "content does not match its name",
            ));
        }
        let plain = self
            .keys
            .sealer
            .open(SNAPSHOT_AAD, &sealed)
            .map_err(|_| Error::corrupt("snapshot", name.clone(), "fails authentication"))?;
        uncbor(&plain, "snapshot", &name)
    }

    /// Stores `data` sealed under the name `name` (letters, digits, `.`, `_` and `-`),
    /// replacing a document of that name.
    pub fn save_document(&self, name: &str, data: &[u8]) -> Result<()> {
        check_document_name(name)?;
        let mut aad = DOCUMENT_AAD.to_vec();
        aad.extend_from_slice(name.as_bytes());
        let sealed = self.keys.sealer.seal(&aad, data)?;
        self.backend.write_owned(FileKind::Document, name, sealed)
    }

    /// Reads a document saved by [`save_document`](Self::save_document); `None` if there
    /// is none of that name. A document renamed or altered in the store fails authentication.
    pub fn load_document(&self, name: &str) -> Result<Option<Vec<u8>>> {
        check_document_name(name)?;
        let sealed = match self.backend.read(FileKind::Document, name) {
            Ok(b) => b,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut aad = DOCUMENT_AAD.to_vec();
        aad.extend_from_slice(name.as_bytes());
        self.keys
            .sealer
            .open(&aad, &sealed)
            .map(Some)
            .map_err(|_| Error::corrupt("document", name, "fails authentication"))
    }

    /// The names of the stored documents, sorted.
    pub fn documents(&self) -> Result<Vec<String>> {
        Ok(self
            .backend
            .list(FileKind::Document)?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    /// Removes a document; removing one that does not exist is not an error.
    pub fn remove_document(&self, name: &str) -> Result<()> {
        check_document_name(name)?;
        self.backend.delete(FileKind::Document, name)
    }

    /// Removes a snapshot (its data stays until a prune).
    pub fn remove_snapshot(&self, id: &SnapshotId) -> Result<()> {
        self.backend.delete(FileKind::Snapshot, &id.to_hex())
    }

    /// Writes `plain` as a snapshot file, sealed with this repository's key, whatever it
    /// holds: tests forge what another implementation might write.
    #[cfg(test)]
    pub(crate) fn write_raw_snapshot(&self, plain: &[u8]) -> Result<SnapshotId> {
        let sealed = self.keys.sealer.seal(SNAPSHOT_AAD, plain)?;
        let id = SnapshotId::from_bytes(*blake3::hash(&sealed).as_bytes());
        self.backend
            .write(FileKind::Snapshot, &id.to_hex(), &sealed)?;
        Ok(id)
    }

    /// Every readable snapshot, oldest first. A damaged snapshot file is left out with a
    /// warning that names it ([`Self::snapshots_and_damaged`] lists them).
    pub fn snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>> {
        let (good, damaged) = self.snapshots_and_damaged()?;
        for d in &damaged {
            tracing::warn!(
                "snapshot {} is damaged and left out: {}",
                d.id.short(),
                d.reason
            );
        }
        Ok(good)
    }

    /// Every snapshot, oldest first, and the snapshot files that cannot be read (damaged,
    /// or not a snapshot of this repository).
    pub fn snapshots_and_damaged(&self) -> Result<SnapshotListing> {
        self.read_snapshots(&HashSet::new())
    }

    fn read_snapshots(&self, known: &HashSet<SnapshotId>) -> Result<SnapshotListing> {
        let mut out = Vec::new();
        let mut damaged = Vec::new();
        for (name, _) in self.backend.list(FileKind::Snapshot)? {
            let Some(id) = SnapshotId::from_hex(&name).filter(|id| !known.contains(id)) else {
                continue;
            };
            match self.load_snapshot(&id) {
                Ok(s) => out.push((id, s)),
                // Forgotten by another process since the listing.
                Err(Error::NotFound { .. }) => {}
                Err(Error::Corrupt { reason, .. }) => damaged.push(DamagedSnapshot { id, reason }),
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok((out, damaged))
    }

    /// Every snapshot but those in `known` (which are not read again), oldest first. A
    /// damaged snapshot is an error that says how to go on: whoever needs every snapshot
    /// (prune) cannot know what data a damaged one still names.
    pub(crate) fn snapshots_not_in(
        &self,
        known: &HashSet<SnapshotId>,
    ) -> Result<Vec<(SnapshotId, Snapshot)>> {
        let (good, damaged) = self.read_snapshots(known)?;
        match damaged.into_iter().next() {
            None => Ok(good),
            Some(d) => Err(Error::corrupt(
                "snapshot",
                d.id.to_hex(),
                format!(
                    "{}; prune stops rather than delete data it may still name: if it cannot \
                     be recovered, remove it with `podvault snapshot forget {}`, then prune again",
                    d.reason,
                    d.id.short()
                ),
            )),
        }
    }

    /// The id of the snapshot `reference` names (`latest`, a full id or a unique prefix of
    /// at least 4 hex digits), without reading it: a damaged snapshot can be named too.
    pub fn resolve_snapshot(&self, reference: &str) -> Result<SnapshotId> {
        if reference == "latest" {
            return self.find_snapshot(reference).map(|(id, _)| id);
        }
        let err = |reason: &str| Error::SnapshotRef {
            reference: reference.to_string(),
            reason: reason.to_string(),
        };
        if reference.len() < 4 || !reference.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err("expected `latest` or at least 4 hex digits of an id"));
        }
        let lower = reference.to_ascii_lowercase();
        let matches: Vec<String> = self
            .backend
            .list(FileKind::Snapshot)?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.starts_with(&lower))
            .collect();
        match matches.as_slice() {
            [] => Err(err("no snapshot has this id")),
            [one] => SnapshotId::from_hex(one).ok_or_else(|| err("bad snapshot file name")),
            _ => Err(err(&format!(
                "the prefix matches {} snapshots",
                matches.len()
            ))),
        }
    }

    /// Resolves `latest`, a full id or a unique hex prefix (at least 4 digits).
    pub fn find_snapshot(&self, reference: &str) -> Result<(SnapshotId, Snapshot)> {
        let err = |reason: &str| Error::SnapshotRef {
            reference: reference.to_string(),
            reason: reason.to_string(),
        };
        if reference == "latest" {
            return self
                .snapshots()?
                .pop()
                .ok_or_else(|| err("the repository has no snapshots"));
        }
        let id = self.resolve_snapshot(reference)?;
        Ok((id, self.load_snapshot(&id)?))
    }

    /// The latest snapshot of `source` on `host`, if any.
    pub fn latest_of(&self, source: &str, host: &str) -> Result<Option<(SnapshotId, Snapshot)>> {
        Ok(self
            .snapshots()?
            .into_iter()
            .rfind(|(_, s)| s.source == source && s.host == host))
    }

    pub(crate) fn index_packs(&self) -> Vec<PackId> {
        self.index.read().packs().to_vec()
    }

    pub(crate) fn index_blobs(&self) -> Vec<(BlobId, BlobLocation)> {
        self.index.read().iter().collect()
    }

    pub(crate) fn sealer(&self) -> &crate::crypto::Sealer {
        &self.keys.sealer
    }

    pub(crate) fn master_key(&self) -> &MasterKey {
        &self.master
    }

    /// Adds packs to the index in memory and queues them for the next index file.
    pub(crate) fn adopt_packs(&self, packs: Vec<(PackId, Vec<PackRecord>)>) {
        let mut index = self.index.write();
        let mut unindexed = self.unindexed.lock();
        for (id, records) in packs {
            index.add_pack(id, &records);
            unindexed.push(IndexPack::from_records(id, &records));
        }
    }

    /// Writes one index file for `packs` now.
    pub(crate) fn write_index(&self, packs: Vec<IndexPack>) -> Result<IndexId> {
        self.write_index_file(packs)
    }

    /// Stores a copy of a blob even if the index knows it (prune's repacking).
    pub(crate) fn save_copy(&self, kind: BlobKind, id: BlobId, data: &[u8]) -> Result<()> {
        if !self.pending.lock().insert(id) {
            return Ok(());
        }
        let result = self.seal_and_add(kind, id, data).map(|_| ());
        if result.is_err() {
            self.pending.lock().remove(&id);
        }
        result
    }

    pub(crate) fn parse_pack(&self, name: &str, bytes: &[u8]) -> Result<Vec<PackRecord>> {
        parse_pack(&self.keys.sealer, name, bytes)
    }
}

fn check_document_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name: "document name",
            reason: format!("{name:?} must be 1 to 200 letters, digits, '.', '_' or '-'"),
        })
    }
}
