//! Where repository files live. The trait is deliberately small (list, read whole or a
//! range, write atomically, delete), every method keyed by (kind, name), so an object store
//! fits behind it unchanged.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// The kinds of file a repository holds; each has its own folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// The single `config` file (its name is ignored).
    Config,
    /// `keys/<id>`: the master key wrapped by a password.
    Key,
    /// `data/<first two hex digits>/<id>`: packs of sealed blobs.
    Pack,
    /// `index/<id>`: which blobs each pack holds.
    Index,
    /// `snapshots/<id>`.
    Snapshot,
    /// `sessions/<id>`: a process working on the repository now (see FORMAT.md).
    Session,
    /// `deletions/<id>`: packs a prune marked for deletion (see FORMAT.md).
    Deletion,
    /// `documents/<name>`: sealed documents an application keeps beside its snapshots
    /// (podvault's control plane keeps each backup's manifests there).
    Document,
}

impl FileKind {
    /// The folder of this kind, relative to the repository root.
    pub fn dir(self) -> &'static str {
        match self {
            FileKind::Config => "",
            FileKind::Key => "keys",
            FileKind::Pack => "data",
            FileKind::Index => "index",
            FileKind::Snapshot => "snapshots",
            FileKind::Session => "sessions",
            FileKind::Deletion => "deletions",
            FileKind::Document => "documents",
        }
    }

    /// A human name for messages.
    pub fn noun(self) -> &'static str {
        match self {
            FileKind::Config => "config",
            FileKind::Key => "key",
            FileKind::Pack => "pack",
            FileKind::Index => "index",
            FileKind::Snapshot => "snapshot",
            FileKind::Session => "session",
            FileKind::Deletion => "deletion marker",
            FileKind::Document => "document",
        }
    }
}

/// Storage for repository files. Writes must be atomic: a reader sees a whole file or none.
pub trait Backend: Send + Sync {
    /// Where this backend points, for messages (a path or a URL).
    fn location(&self) -> String;
    /// Names and sizes of every file of a kind.
    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>>;
    /// The whole file. A missing file is [`Error::NotFound`].
    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>>;
    /// `len` bytes from `offset`; fewer only if the file is shorter (the caller checks).
    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// [`Backend::read_range`] into `buf` (replacing its content), which a backend that
    /// reads into memory it owns can reuse from one call to the next.
    fn read_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        *buf = self.read_range(kind, name, offset, len)?;
        Ok(())
    }
    /// Stores a file atomically and durably, replacing any file of the same name.
    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()>;
    /// [`Backend::write`] of a buffer the caller gives up, which a backend that must keep
    /// the data while it sends it can use without a copy.
    fn write_owned(&self, kind: FileKind, name: &str, data: Vec<u8>) -> Result<()> {
        self.write(kind, name, &data)
    }
    /// Removes a file; removing a missing file is not an error.
    fn delete(&self, kind: FileKind, name: &str) -> Result<()>;
    /// Prepares an empty location for a new repository; fails if it holds anything.
    fn create(&self) -> Result<()>;
    /// What interrupted writes left behind that was last touched more than `older_than`
    /// ago (a directory's temporary files): its count and bytes, removed when `remove`.
    /// A store whose writes leave nothing behind has nothing to report.
    fn stale_partials(&self, older_than: Duration, remove: bool) -> Result<(usize, u64)> {
        let _ = (older_than, remove);
        Ok((0, 0))
    }
}

/// A repository in a local directory.
pub struct DirBackend {
    root: PathBuf,
}

impl DirBackend {
    /// A backend rooted at `root` (which need not exist yet for [`Backend::create`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirBackend { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, kind: FileKind, name: &str) -> PathBuf {
        match kind {
            FileKind::Config => self.root.join("config"),
            FileKind::Pack => {
                let prefix = name.get(..2).unwrap_or("00");
                self.root.join("data").join(prefix).join(name)
            }
            _ => self.root.join(kind.dir()).join(name),
        }
    }

    /// The folders holding files of `kind`: its own, or for packs the ones inside it.
    fn dirs_of(&self, kind: FileKind) -> Result<Vec<PathBuf>> {
        let base = self.root.join(kind.dir());
        if kind != FileKind::Pack {
            return Ok(vec![base]);
        }
        let mut dirs = Vec::new();
        for entry in read_dir_if_any(&base)?.into_iter().flatten() {
            let path = entry.map_err(|e| Error::io(&base, e))?.path();
            if path.is_dir() {
                dirs.push(path);
            }
        }
        Ok(dirs)
    }

    fn not_found(&self, kind: FileKind, name: &str) -> Error {
        Error::NotFound {
            what: kind.noun(),
            name: name.to_string(),
            location: self.location(),
        }
    }

    fn open(&self, kind: FileKind, name: &str) -> Result<(File, PathBuf)> {
        let path = self.path(kind, name);
        match File::open(&path) {
            Ok(f) => Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.not_found(kind, name)),
            Err(e) => Err(Error::io(path, e)),
        }
    }
}

/// The entries of `dir`, or `None` if it does not exist (a folder made on first use).
fn read_dir_if_any(dir: &Path) -> Result<Option<fs::ReadDir>> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(Some(rd)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(dir, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

impl Backend for DirBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for dir in self.dirs_of(kind)? {
            let Some(rd) = read_dir_if_any(&dir)? else {
                continue;
            };
            for entry in rd {
                let entry = entry.map_err(|e| Error::io(&dir, e))?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if name.starts_with('.') {
                    continue; // temporary files of interrupted writes
                }
                let meta = entry.metadata().map_err(|e| Error::io(entry.path(), e))?;
                if meta.is_file() {
                    out.push((name, meta.len()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let (mut f, path) = self.open(kind, name)?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(|e| Error::io(path, e))?;
        Ok(buf)
    }

    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_range_into(kind, name, offset, len, &mut buf)?;
        Ok(buf)
    }

    fn read_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let (f, path) = self.open(kind, name)?;
        let len = usize::try_from(len).map_err(|_| Error::InvalidParameter {
            name: "range length",
            reason: format!("{len} does not fit in memory"),
        })?;
        // Reused memory is not zeroed again: every byte kept is read below.
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf.truncate(len);
        let mut done = 0;
        while done < len {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        buf.truncate(done);
        Ok(())
    }

    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        let path = self.path(kind, name);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let mut suffix = [0u8; 8];
        crate::crypto::random_bytes(&mut suffix)?;
        let tmp = dir.join(format!(".tmp-{}-{}", name, hex::encode(suffix)));
        let result = (|| -> std::io::Result<()> {
            let mut f = match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                // Folders added after format v1's first release are made on first use.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != self.root => {
                    fs::create_dir_all(&dir)?;
                    OpenOptions::new().write(true).create_new(true).open(&tmp)?
                }
                other => other?,
            };
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(&path, e));
        }
        sync_dir(&dir)
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        let path = self.path(kind, name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn stale_partials(&self, older_than: Duration, remove: bool) -> Result<(usize, u64)> {
        let Some(cutoff) = SystemTime::now().checked_sub(older_than) else {
            return Ok((0, 0));
        };
        let mut dirs = Vec::new();
        for kind in [
            FileKind::Config,
            FileKind::Key,
            FileKind::Pack,
            FileKind::Index,
            FileKind::Snapshot,
            FileKind::Session,
            FileKind::Deletion,
            FileKind::Document,
        ] {
            dirs.extend(self.dirs_of(kind)?);
        }
        let (mut count, mut bytes) = (0, 0);
        for dir in dirs {
            let Some(rd) = read_dir_if_any(&dir)? else {
                continue;
            };
            for entry in rd {
                let entry = entry.map_err(|e| Error::io(&dir, e))?;
                if !entry.file_name().as_encoded_bytes().starts_with(b".tmp-") {
                    continue;
                }
                let path = entry.path();
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io(path, e)),
                };
                // A write in progress touches its file as it goes: only an old one is left
                // over from a process that died mid-write.
                if !meta.is_file() || meta.modified().map_err(|e| Error::io(&path, e))? > cutoff {
                    continue;
                }
                if remove {
                    match fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(Error::io(path, e)),
                    }
                }
                count += 1;
                bytes += meta.len();
            }
        }
        Ok((count, bytes))
    }

    fn create(&self) -> Result<()> {
        match fs::read_dir(&self.root) {
            Ok(mut rd) => {
                if rd.next().is_some() {
                    return Err(Error::AlreadyExists {
                        location: self.location(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
            }
            Err(e) => return Err(Error::io(&self.root, e)),
        }
        for kind in [
            FileKind::Key,
            FileKind::Index,
            FileKind::Snapshot,
            FileKind::Session,
            FileKind::Deletion,
        ] {
            let d = self.root.join(kind.dir());
            fs::create_dir(&d).map_err(|e| Error::io(&d, e))?;
        }
        for i in 0..=255u8 {
            let d = self.root.join("data").join(hex::encode([i]));
            fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        sync_dir(&self.root)
    }
}
