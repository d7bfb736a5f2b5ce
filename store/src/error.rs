use std::path::PathBuf;

/// Result of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store. Each variant names the thing it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a file of a local repository.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The location holds no podvault repository.
    #[error("{location} is not a podvault repository: {reason}")]
    NotARepository { location: String, reason: String },
    /// `repo init` on a location that already holds something.
    #[error(
        "{location} already exists and is not empty; refusing to initialise a repository there"
    )]
    AlreadyExists { location: String },
    /// No key file opens with the password given.
    #[error("wrong password: none of the {keys} key(s) of {location} opens with it")]
    WrongPassword { location: String, keys: usize },
    /// A file of the repository could not be decrypted or parsed.
    #[error("{what} {name} is damaged: {reason}")]
    Corrupt {
        what: &'static str,
        name: String,
        reason: String,
    },
    /// A blob is referenced but the index does not know it.
    #[error("{kind} blob {id} is not in the repository's index")]
    MissingBlob { kind: crate::BlobKind, id: String },
    /// A file the repository needs is missing.
    #[error("{what} {name} not found in {location}")]
    NotFound {
        what: &'static str,
        name: String,
        location: String,
    },
    /// A snapshot reference matched nothing or several snapshots.
    #[error("snapshot {reference}: {reason}")]
    SnapshotRef { reference: String, reason: String },
    /// A parameter is out of range.
    #[error("invalid {name}: {reason}")]
    InvalidParameter { name: &'static str, reason: String },
    /// A request to an object store failed (after retries, if it could pass).
    #[error("S3 {op} {object} failed: {message}")]
    Remote {
        op: &'static str,
        /// `s3://BUCKET/KEY at ENDPOINT`.
        object: String,
        message: String,
        transient: bool,
    },
    /// The operating system's random source or a crypto primitive failed.
    #[error("cryptography failed: {0}")]
    Crypto(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        what: &'static str,
        name: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            what,
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// Whether trying the same operation again may succeed (a timeout, a full disk that
    /// may be freed); permanent errors (damage, a wrong password) return false.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
            ),
            Error::Remote { transient, .. } => *transient,
            _ => false,
        }
    }
}
