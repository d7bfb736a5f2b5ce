use std::path::PathBuf;

/// Result of scanner operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What stops a backup or a restore. Problems with single files of a backup are not errors
/// (they are listed in the report); problems writing a restore are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The repository failed.
    #[error(transparent)]
    Store(#[from] podvault_store::Error),
    /// The directory to back up cannot be used.
    #[error("source {path}: {reason}")]
    Source { path: PathBuf, reason: String },
    /// An exclude pattern is not valid.
    #[error("exclude pattern {pattern:?}: {reason}")]
    Exclude { pattern: String, reason: String },
    /// The backup was canceled; no snapshot was written.
    #[error("backup of {path} canceled")]
    Canceled { path: PathBuf },
    /// The restore target cannot be used.
    #[error("restore target {path}: {reason}")]
    Target { path: PathBuf, reason: String },
    /// The snapshot holds an entry that would be written outside the target, or twice.
    #[error("refusing unsafe entry {path}: {reason}")]
    UnsafeEntry { path: String, reason: String },
    /// Writing a restored file or directory failed.
    #[error("restoring {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading a restored file's content from the repository failed.
    #[error("restoring {path}: {source}")]
    Content {
        path: PathBuf,
        #[source]
        source: podvault_store::Error,
    },
    /// Several files failed to restore; the first is shown.
    #[error("{count} files could not be restored; the first: {first}")]
    Many { count: usize, first: Box<Error> },
}

impl Error {
    /// One error for all of `errors`: the only one, or the first with the count; None when
    /// there are none.
    pub(crate) fn of_all(mut errors: Vec<Error>) -> Option<Error> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            count => Some(Error::Many {
                count,
                first: Box::new(errors.remove(0)),
            }),
        }
    }
}
