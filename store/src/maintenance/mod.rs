//! Many processes on one repository without a global lock: sessions, deletion markers,
//! the two-phase prune, recovery of packs an interrupted backup left unindexed, and index
//! repair. The reasoning is in `store/FORMAT.md` ("Concurrency").

mod keys;
mod prune;
mod repair;
mod sessions;

pub use keys::KeyInfo;
pub use prune::{PruneOptions, PruneReport};
pub use repair::RepairReport;
pub(crate) use sessions::SessionHealth;
pub use sessions::{SESSION_STALE, Session, SessionInfo};

use serde::Serialize;

use crate::crypto::Sealer;
use crate::error::{Error, Result};

fn seal_cbor<T: Serialize>(sealer: &Sealer, aad: &[u8], value: &T) -> Result<Vec<u8>> {
    let mut plain = Vec::new();
    ciborium::into_writer(value, &mut plain).map_err(|e| Error::Crypto(e.to_string()))?;
    sealer.seal(aad, &plain)
}

fn open_cbor<T: serde::de::DeserializeOwned>(
    sealer: &Sealer,
    aad: &[u8],
    what: &'static str,
    name: &str,
    sealed: &[u8],
) -> Result<T> {
    let plain = sealer
        .open(aad, sealed)
        .map_err(|_| Error::corrupt(what, name, "fails authentication"))?;
    ciborium::from_reader(plain.as_slice())
        .map_err(|e| Error::corrupt(what, name, format!("cannot decode: {e}")))
}

fn random_name() -> Result<String> {
    let mut id = [0u8; 16];
    crate::crypto::random_bytes(&mut id)?;
    Ok(hex::encode(id))
}

/// The one item whose id starts with `reference` (at least 4 hex digits), or why not.
fn by_prefix<'a, T>(
    items: &'a [T],
    id: impl Fn(&T) -> &str,
    reference: &str,
    noun: &str,
) -> std::result::Result<&'a T, String> {
    let wanted = reference.to_ascii_lowercase();
    let matches: Vec<&T> = items
        .iter()
        .filter(|i| id(i).starts_with(&wanted))
        .collect();
    match (reference.len() >= 4, matches.as_slice()) {
        (true, [one]) => Ok(*one),
        (false, _) => Err("give at least 4 hex digits".into()),
        (true, []) => Err(format!("no {noun} has this id")),
        (true, _) => Err(format!("the prefix matches several {noun}s")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::sessions::SESSION_SELF_LIMIT;
    use super::*;
    use crate::backend::Backend;
    use crate::{
        Access, DirBackend, InitOptions, KdfParams, Node, NodeKind, Repository, Snapshot, Summary,
        Tree,
    };

    /// A new repository under `dir` opened by a backup, and a snapshot of an empty tree
    /// (not yet saved).
    fn writer_and_snapshot(dir: &std::path::Path) -> (Repository, Session, Snapshot) {
        let backend: Arc<dyn Backend> = Arc::new(DirBackend::new(dir.join("repo")));
        let options = InitOptions {
            kdf: KdfParams {
                memory_kib: 64,
                iterations: 1,
                ..KdfParams::default()
            },
            ..InitOptions::default()
        };
        Repository::init(backend.clone(), b"pw", &options).expect("init");
        let (repo, session) =
            Repository::open_session(backend, b"pw", "backup", Access::Write).expect("open");
        let (tree, _) = repo.save_tree(&Tree::default()).expect("tree");
        repo.flush().expect("flush");
        let snapshot = Snapshot {
            time: chrono::Utc::now(),
            host: "h".into(),
            source: "/data".into(),
            tags: vec![],
            parent: None,
            tree,
            root: Node::plain(b"", NodeKind::Dir),
            username: "u".into(),
            program_version: "test".into(),
            summary: Summary::default(),
        };
        (repo, session, snapshot)
    }

    #[test]
    fn a_process_whose_session_went_unrefreshed_writes_no_snapshot() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (repo, _session, snapshot) = writer_and_snapshot(tmp.path());
        // As if the store had refused every refresh for longer than the limit.
        let health = repo.session.lock().clone().expect("session");
        let Some(long_ago) =
            Instant::now().checked_sub(SESSION_SELF_LIMIT + Duration::from_secs(5))
        else {
            eprintln!("skipped: the monotonic clock started less than 7 minutes ago");
            return;
        };
        *health.last_ok.lock() = long_ago;
        let err = repo.save_snapshot(&snapshot).expect_err("refused");
        let message = err.to_string();
        assert!(
            message.contains("could not show") && message.contains("no snapshot is written"),
            "{message}"
        );
        assert!(repo.snapshots().expect("list").is_empty());
        // Refreshed again: snapshots are written again.
        *health.last_ok.lock() = Instant::now();
        repo.save_snapshot(&snapshot).expect("saved");
        assert_eq!(repo.snapshots().expect("list").len(), 1);
    }

    #[test]
    fn a_garbage_snapshot_sealed_with_the_key_is_listed_forgotten_and_stops_prune() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (repo, session, snapshot) = writer_and_snapshot(tmp.path());
        let good = repo.save_snapshot(&snapshot).expect("snapshot");
        // Bytes that are no snapshot, sealed as one with the repository's key, named by
        // their hash: what another implementation's bug would write.
        let garbage = repo
            .write_raw_snapshot(b"\xa1\x61x\x01 not a snapshot")
            .expect("forged");

        // Listed as damaged, the others still listed and usable.
        let (ok, damaged) = repo.snapshots_and_damaged().expect("list");
        assert_eq!(ok.iter().map(|s| s.0).collect::<Vec<_>>(), [good]);
        assert_eq!(damaged.len(), 1);
        assert_eq!(damaged[0].id, garbage);
        assert!(
            damaged[0].reason.contains("cannot decode"),
            "{}",
            damaged[0].reason
        );
        assert_eq!(repo.find_snapshot("latest").expect("latest").0, good);
        // Prune refuses, saying how to go on; nothing is deleted.
        let err = repo
            .prune(&session, crate::PruneOptions::default())
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains(&garbage.to_hex()) && text.contains("snapshot forget"),
            "{text}"
        );
        // Forgotten by its id, then prune runs.
        let id = repo
            .resolve_snapshot(&garbage.short())
            .expect("resolved unread");
        repo.remove_snapshot(&id).expect("forget");
        repo.prune(&session, crate::PruneOptions::default())
            .expect("prune");
        assert!(repo.snapshots_and_damaged().expect("list").1.is_empty());
    }
}
