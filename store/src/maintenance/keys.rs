//! Key files: listed, added, removed, and the password changed.

use serde::Serialize;

use super::by_prefix;
use crate::Repository;
use crate::backend::FileKind;
use crate::error::{Error, Result};

/// A key file as listed by `repo key list`.
#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    /// The key's id.
    pub id: String,
    /// When it was added.
    pub created: chrono::DateTime<chrono::Utc>,
    /// Where and by whom.
    pub host: String,
    /// User name.
    pub username: String,
    /// Whether it is the key this process opened the repository with.
    pub current: bool,
}

impl Repository {
    /// Every key file.
    pub fn keys(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for (name, _) in self.backend().list(FileKind::Key)? {
            let bytes = self.backend().read(FileKind::Key, &name)?;
            let file: crate::crypto::KeyFile = serde_json::from_slice(&bytes)
                .map_err(|e| Error::corrupt("key", name.clone(), format!("not valid JSON: {e}")))?;
            out.push(KeyInfo {
                current: name == self.key_id().to_hex(),
                id: name,
                created: file.created,
                host: file.host,
                username: file.username,
            });
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Removes a key (a unique prefix of its id). The last key, and the key this process
    /// opened the repository with, cannot be removed.
    pub fn remove_key(&self, reference: &str) -> Result<String> {
        let keys = self.keys()?;
        let key = by_prefix(&keys, |k| &k.id, reference, "key")
            .map_err(|reason| bad_key(reference, &reason))?;
        if keys.len() == 1 {
            return Err(bad_key(reference, "it is the last key of the repository"));
        }
        if key.current {
            return Err(bad_key(
                reference,
                "it is the key this command opened the repository with; open with another \
                 password to remove it",
            ));
        }
        self.backend().delete(FileKind::Key, &key.id)?;
        Ok(key.id.clone())
    }

    /// Replaces the key this process opened the repository with by one for `password`.
    pub fn change_password(&self, password: &[u8]) -> Result<crate::KeyId> {
        let new = self.add_key(password)?;
        self.backend()
            .delete(FileKind::Key, &self.key_id().to_hex())?;
        Ok(new)
    }
}

fn bad_key(reference: &str, reason: &str) -> Error {
    Error::InvalidParameter {
        name: "key",
        reason: format!("{reference}: {reason}"),
    }
}
