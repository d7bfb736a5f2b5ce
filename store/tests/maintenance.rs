//! Prune, sessions, deletion markers, recovery of unindexed packs, index repair and keys,
//! each on a directory and on S3.

use std::collections::BTreeMap;
use std::fs;

use podvault_store::{
    Access, BlobId, BlobKind, CheckOptions, Error, FileKind, Node, NodeKind, PruneOptions,
    Repository, SaveOutcome, Snapshot, SnapshotId, Summary, Tree,
};
use podvault_testkit::{Place, fast_init, pseudo_random};

/// A snapshot of one file made of `blobs` (already saved), through a one-entry tree.
fn snapshot_of(repo: &Repository, name: &str, blobs: &[BlobId]) -> SnapshotId {
    // The chunks in the index first, so that the file's size is theirs.
    repo.flush().expect("flush");
    let node = Node {
        content: blobs.to_vec(),
        size: blobs
            .iter()
            .map(|b| repo.locate(b).map_or(0, |l| u64::from(l.raw_len)))
            .sum(),
        ..Node::plain(name.as_bytes(), NodeKind::File)
    };
    let tree = Tree {
        nodes: vec![node.clone()],
    };
    let (tree_id, _) = repo.save_tree(&tree).expect("tree");
    repo.flush().expect("flush");
    let snapshot = Snapshot {
        time: chrono::Utc::now(),
        host: "test".into(),
        source: format!("/{name}"),
        tags: vec![],
        parent: None,
        tree: tree_id,
        root: Node {
            kind: NodeKind::Dir,
            content: vec![],
            ..node
        },
        username: "test".into(),
        program_version: "test".into(),
        summary: Summary::default(),
    };
    repo.save_snapshot(&snapshot).expect("snapshot")
}

fn save(repo: &Repository, seed: u64, len: usize) -> (BlobId, Vec<u8>) {
    let data = pseudo_random(seed, len);
    let id = repo.blob_id(&data);
    repo.save_blob(BlobKind::Data, id, &data).expect("save");
    (id, data)
}

fn open_writer(place: &Place, command: &str) -> (Repository, podvault_store::Session) {
    Repository::open_session(place.backend.clone(), b"pw", command, Access::Write).expect("open")
}

fn check_ok(place: &Place) {
    let repo = Repository::open(place.backend.clone(), b"pw").expect("open");
    let report = repo
        .check(CheckOptions {
            read_data: true,
            ..CheckOptions::default()
        })
        .expect("check");
    assert!(report.is_ok(), "{}: {:?}", place.name, report.problems);
}

fn dry_prune(repo: &Repository, session: &podvault_store::Session) -> podvault_store::PruneReport {
    let options = PruneOptions {
        dry_run: true,
        ..PruneOptions::default()
    };
    repo.prune(session, options).expect("dry run")
}

fn files_of(place: &Place, kind: FileKind) -> usize {
    place.backend.list(kind).expect("list").len()
}

#[test]
fn prune_frees_unused_packs_and_repacks_mostly_unused_ones() {
    let tmp = tempfile::tempdir().expect("tmp");
    for place in Place::both(tmp.path()) {
        Repository::init(place.backend.clone(), b"pw", &fast_init()).expect("init");
        let (repo, _s) = open_writer(&place, "backup");
        // Pack 1 and 2: 18 MiB that only the first snapshot uses.
        let old: Vec<(BlobId, Vec<u8>)> = (0..18).map(|i| save(&repo, i, 1 << 20)).collect();
        repo.flush().expect("flush");
        // Pack 3: one blob kept among much garbage.
        let keep = save(&repo, 100, 1 << 20);
        let garbage: Vec<_> = (101..106).map(|i| save(&repo, i, 1 << 20)).collect();
        let first = snapshot_of(&repo, "first", &old.iter().map(|b| b.0).collect::<Vec<_>>());
        let mut ids = vec![keep.0];
        ids.extend(garbage.iter().map(|b| b.0));
        let second = snapshot_of(&repo, "second", &ids);
        let third = snapshot_of(&repo, "third", &[keep.0]);
        repo.remove_snapshot(&first).expect("forget");
        repo.remove_snapshot(&second).expect("forget");
        drop((repo, _s));
        let packs_before = files_of(&place, FileKind::Pack);

        let (repo, session) = open_writer(&place, "prune");
        let dry = dry_prune(&repo, &session);
        assert_eq!(files_of(&place, FileKind::Pack), packs_before, "dry run");
        assert!(dry.packs_unused >= 1 && dry.packs_repacked >= 1, "{dry:?}");
        let report = repo
            .prune(&session, PruneOptions::default())
            .expect("prune");
        drop((repo, session));
        assert!(report.packs_deleted >= 2, "{}: {report:?}", place.name);
        assert!(report.bytes_freed >= 18 << 20, "{report:?}");
        assert_eq!(report.blobs_repacked, 1, "{report:?}");
        assert!(report.waiting_for.is_empty(), "{report:?}");
        assert_eq!(files_of(&place, FileKind::Deletion), 0);
        check_ok(&place);
        let repo = Repository::open(place.backend.clone(), b"pw").expect("open");
        assert_eq!(
            repo.load_blob(BlobKind::Data, &keep.0).expect("kept"),
            keep.1
        );
        assert!(repo.locate(&old[0].0).is_none(), "unused data is gone");
        assert_eq!(repo.snapshots().expect("list")[0].0, third);
    }
}

#[test]
fn a_prune_waits_for_sessions_that_began_before_it_marked() {
    let tmp = tempfile::tempdir().expect("tmp");
    for place in Place::both(tmp.path()) {
        Repository::init(place.backend.clone(), b"pw", &fast_init()).expect("init");
        let (repo, s) = open_writer(&place, "backup");
        let blob = save(&repo, 1, 300_000);
        let snap = snapshot_of(&repo, "a", &[blob.0]);
        drop((repo, s));

        // A long backup opens the repository and will reuse `blob`...
        let (slow, slow_session) = open_writer(&place, "backup");
        assert_eq!(
            slow.save_blob(BlobKind::Data, blob.0, &blob.1)
                .expect("dedup"),
            SaveOutcome::Known
        );
        // ...while the only snapshot using it is forgotten and a prune runs.
        let repo = Repository::open(place.backend.clone(), b"pw").expect("open");
        repo.remove_snapshot(&snap).expect("forget");
        let (pruner, prune_session) = open_writer(&place, "prune");
        let report = pruner
            .prune(&prune_session, PruneOptions::default())
            .expect("prune");
        assert_eq!(report.packs_marked, 2, "{}: {report:?}", place.name);
        assert_eq!(report.packs_deleted, 0, "the backup may still use them");
        assert_eq!(report.waiting_for, vec![slow_session.name().to_string()]);
        // A second prune at the same time is refused.
        let (other, other_session) = open_writer(&place, "prune");
        let err = other
            .prune(&other_session, PruneOptions::default())
            .expect_err("one prune at a time");
        assert!(err.to_string().contains("another prune"), "{err}");
        drop((other, other_session));
        drop((pruner, prune_session));

        // A backup that starts now does not reuse marked data: it stores its own copy.
        let (fresh, fresh_session) = open_writer(&place, "backup");
        assert!(matches!(
            fresh
                .save_blob(BlobKind::Data, blob.0, &blob.1)
                .expect("save"),
            SaveOutcome::New { .. }
        ));
        drop((fresh, fresh_session));

        // The long backup finishes with a snapshot that uses the blob.
        let kept = snapshot_of(&slow, "b", &[blob.0]);
        drop((slow, slow_session));
        let (pruner, prune_session) = open_writer(&place, "prune");
        let report = pruner
            .prune(&prune_session, PruneOptions::default())
            .expect("prune");
        drop((pruner, prune_session));
        assert!(report.waiting_for.is_empty(), "{report:?}");
        assert!(report.packs_rescued >= 1, "{}: {report:?}", place.name);
        check_ok(&place);
        let repo = Repository::open(place.backend.clone(), b"pw").expect("open");
        let (_, snapshot) = repo.find_snapshot(&kept.to_hex()).expect("snapshot");
        let tree = repo.load_tree(&snapshot.tree).expect("tree");
        assert_eq!(
            repo.load_blob(BlobKind::Data, &tree.nodes[0].content[0])
                .expect("data of the late snapshot"),
            blob.1
        );
    }
}

#[test]
fn an_interrupted_backup_is_resumed_without_uploading_again() {
    let tmp = tempfile::tempdir().expect("tmp");
    for place in Place::both(tmp.path()) {
        Repository::init(place.backend.clone(), b"pw", &fast_init()).expect("init");
        let (repo, session) = open_writer(&place, "backup");
        let blobs: Vec<_> = (0..40).map(|i| save(&repo, i, 1 << 20)).collect();
        // Killed before flushing: full packs are stored, no index file names them.
        std::mem::forget(repo);
        drop(session);
        assert_eq!(files_of(&place, FileKind::Index), 0);
        let uploaded = files_of(&place, FileKind::Pack);
        assert!(uploaded >= 2, "{uploaded}");
        let report = Repository::open(place.backend.clone(), b"pw")
            .expect("open")
            .check(CheckOptions::default())
            .expect("check");
        assert!(report.is_ok() && report.unindexed_packs == uploaded);

        let (repo, session) = open_writer(&place, "backup");
        let mut stored = 0;
        for (i, (id, data)) in blobs.iter().enumerate() {
            match repo.save_blob(BlobKind::Data, *id, data).expect("save") {
                SaveOutcome::Known => {}
                SaveOutcome::New { .. } => stored += 1,
            }
            assert!(i >= 30 || stored == 0, "blob {i} stored again");
        }
        let ids: Vec<BlobId> = blobs.iter().map(|b| b.0).collect();
        snapshot_of(&repo, "resumed", &ids);
        drop((repo, session));
        eprintln!(
            "{}: {} of 40 MiB were uploaded before the interruption; the next run stored {stored} MiB",
            place.name,
            40 - stored
        );
        assert!(stored <= 40 - 16 * uploaded + 16, "{stored}");
        check_ok(&place);
    }
}

#[test]
fn a_damaged_index_is_rebuilt_from_the_packs() {
    let tmp = tempfile::tempdir().expect("tmp");
    for place in Place::both(tmp.path()) {
        Repository::init(place.backend.clone(), b"pw", &fast_init()).expect("init");
        let (repo, session) = open_writer(&place, "backup");
        let blobs: Vec<_> = (0..20).map(|i| save(&repo, i, 1 << 20)).collect();
        let snap = snapshot_of(&repo, "a", &blobs.iter().map(|b| b.0).collect::<Vec<_>>());
        drop((repo, session));
        // Every index file damaged.
        let mut index_files = BTreeMap::new();
        for (name, _) in place.backend.list(FileKind::Index).expect("list") {
            let path = place.file(&format!("index/{name}"));
            let mut bytes = fs::read(&path).expect("read");
            let last = bytes.len() - 1;
            bytes[last] ^= 0x40;
            fs::write(&path, &bytes).expect("write");
            index_files.insert(name, ());
        }
        let err = Repository::open(place.backend.clone(), b"pw")
            .err()
            .expect("damaged index");
        assert!(matches!(err, Error::Corrupt { what: "index", .. }), "{err}");
        // Repair does not need the index: it opens without reading it.
        let (repo, session) = Repository::open_session_bare(place.backend.clone(), b"pw", "repair")
            .expect("open for repair");
        let report = repo.repair_index().expect("repair");
        drop((repo, session));
        assert_eq!(report.index_files_removed, index_files.len());
        assert!(report.damaged.is_empty(), "{report:?}");
        check_ok(&place);
        let repo = Repository::open(place.backend.clone(), b"pw").expect("open");
        let (_, snapshot) = repo.find_snapshot(&snap.to_hex()).expect("snapshot");
        let tree = repo.load_tree(&snapshot.tree).expect("tree");
        assert_eq!(
            repo.load_blob(BlobKind::Data, &tree.nodes[0].content[3])
                .expect("blob"),
            blobs[3].1
        );
    }
}

#[test]
fn keys_are_listed_added_changed_and_the_last_is_kept() {
    let tmp = tempfile::tempdir().expect("tmp");
    for place in Place::both(tmp.path()) {
        let repo = Repository::init(place.backend.clone(), b"one", &fast_init()).expect("init");
        let only = repo.keys().expect("keys");
        assert_eq!(only.len(), 1);
        assert!(only[0].current);
        let err = repo.remove_key(&only[0].id).expect_err("last key");
        assert!(err.to_string().contains("last key"), "{err}");
        let second = repo.add_key(b"two").expect("add");
        let err = repo.remove_key(&only[0].id[..8]).expect_err("current key");
        assert!(
            err.to_string().contains("opened the repository with"),
            "{err}"
        );
        let by_two = Repository::open(place.backend.clone(), b"two").expect("open");
        by_two
            .remove_key(&only[0].id[..8])
            .expect("remove the first");
        let err = Repository::open(place.backend.clone(), b"one")
            .err()
            .expect("removed key");
        assert!(matches!(err, Error::WrongPassword { keys: 1, .. }), "{err}");
        let third = by_two.change_password(b"three").expect("passwd");
        assert_ne!(third, second);
        assert!(Repository::open(place.backend.clone(), b"two").is_err());
        let by_three = Repository::open(place.backend.clone(), b"three").expect("open");
        assert_eq!(by_three.keys().expect("keys").len(), 1);
        assert_eq!(by_three.config().id, repo.config().id);
    }
}

#[test]
fn a_prune_leaves_the_packs_of_a_running_backup_alone() {
    let tmp = tempfile::tempdir().expect("tmp");
    for place in Place::both(tmp.path()) {
        Repository::init(place.backend.clone(), b"pw", &fast_init()).expect("init");
        // Garbage: a snapshot's data, then the snapshot forgotten.
        let (repo, s) = open_writer(&place, "backup");
        let old = save(&repo, 1, 300_000);
        let snap = snapshot_of(&repo, "old", &[old.0]);
        repo.remove_snapshot(&snap).expect("forget");
        drop((repo, s));

        // A backup is running: one pack indexed under its session, one not indexed yet.
        let (running, running_session) = open_writer(&place, "backup");
        let indexed = save(&running, 2, 300_000);
        running.flush().expect("flush");
        // Chunks of the chunker's largest size, enough to fill a pack and have it written.
        let unindexed = save(&running, 3, 4 << 20);
        let rest: Vec<BlobId> = (4..9).map(|seed| save(&running, seed, 4 << 20).0).collect();
        let before = files_of(&place, FileKind::Pack);
        assert!(before >= 4, "{}: {before} packs", place.name);

        let (pruner, prune_session) = open_writer(&place, "prune");
        let report = pruner
            .prune(&prune_session, PruneOptions::default())
            .expect("prune");
        drop((pruner, prune_session));
        // The forgotten snapshot's data and tree packs are marked; the running backup's
        // packs are not, whether indexed or not.
        assert_eq!(report.packs_marked, 2, "{}: {report:?}", place.name);
        assert!(report.packs_running >= 2, "{}: {report:?}", place.name);
        assert_eq!(report.waiting_for, vec![running_session.name().to_string()]);

        // A backup starting now deduplicates against the running one's data.
        let (other, other_session) = open_writer(&place, "backup");
        for (id, data) in [&indexed, &unindexed] {
            assert_eq!(
                other.save_blob(BlobKind::Data, *id, data).expect("save"),
                SaveOutcome::Known,
                "{}: a running backup's blob",
                place.name
            );
        }
        drop((other, other_session));

        // The running backup finishes; the next prune deletes only the garbage.
        let mut content = vec![indexed.0, unindexed.0];
        content.extend(&rest);
        let kept = snapshot_of(&running, "new", &content);
        drop((running, running_session));
        let (pruner, prune_session) = open_writer(&place, "prune");
        let report = pruner
            .prune(&prune_session, PruneOptions::default())
            .expect("prune");
        drop((pruner, prune_session));
        assert_eq!(report.packs_deleted, 2, "{}: {report:?}", place.name);
        assert_eq!(report.packs_rescued, 0, "{}: {report:?}", place.name);
        assert_eq!(report.packs_marked, 0, "{}: {report:?}", place.name);
        check_ok(&place);
        let repo = Repository::open(place.backend.clone(), b"pw").expect("open");
        let (_, snapshot) = repo.find_snapshot(&kept.to_hex()).expect("snapshot");
        let tree = repo.load_tree(&snapshot.tree).expect("tree");
        assert_eq!(
            repo.load_blob(BlobKind::Data, &tree.nodes[0].content[1])
                .expect("data"),
            unindexed.1
        );
    }
}

#[test]
fn prune_removes_temporary_files_of_writes_interrupted_long_ago() {
    let tmp = tempfile::tempdir().expect("tmp");
    let place = Place::dir(tmp.path(), "repo");
    Repository::init(place.backend.clone(), b"pw", &fast_init()).expect("init");
    let (repo, _s) = open_writer(&place, "backup");
    let (kept, data) = save(&repo, 1, 1 << 20);
    snapshot_of(&repo, "file", &[kept]);
    drop((repo, _s));
    // What processes killed mid-write left: two days ago, and a moment ago (a write that
    // may still be going on). Dot files not named like ours are not ours to remove.
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
    let leave = |relative: &str, len: usize, old: bool| {
        let path = place.file(relative);
        fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        let f = fs::File::create(&path).expect("create");
        f.set_len(len as u64).expect("size");
        if old {
            f.set_modified(long_ago).expect("mtime");
        }
        path
    };
    let old = [
        leave("data/ab/.tmp-ab12-0011223344556677", 3000, true),
        leave("index/.tmp-cd34-8899aabbccddeeff", 200, true),
        leave("snapshots/.tmp-ef56-0123456789abcdef", 100, true),
    ];
    let recent = leave("data/ab/.tmp-ab99-7766554433221100", 500, false);
    let foreign = leave("data/.keep", 10, true);

    let (repo, session) = open_writer(&place, "prune");
    let dry = dry_prune(&repo, &session);
    assert_eq!(
        (dry.partials_removed, dry.partial_bytes),
        (3, 3300),
        "{dry:?}"
    );
    assert!(old.iter().all(|p| p.exists()), "a dry run removes nothing");
    let report = repo
        .prune(&session, PruneOptions::default())
        .expect("prune");
    drop((repo, session));
    assert_eq!((report.partials_removed, report.partial_bytes), (3, 3300));
    assert!(old.iter().all(|p| !p.exists()), "the old ones are gone");
    assert!(recent.exists() && foreign.exists(), "the others stay");
    check_ok(&place);
    let repo = Repository::open(place.backend.clone(), b"pw").expect("open");
    assert_eq!(repo.load_blob(BlobKind::Data, &kept).expect("kept"), data);
}

#[test]
fn an_unreadable_session_holds_back_deletions_until_it_is_removed_and_a_live_one_cannot_be() {
    let tmp = tempfile::tempdir().expect("tmp");
    for place in Place::both(tmp.path()) {
        Repository::init(place.backend.clone(), b"pw", &fast_init()).expect("init");
        let (repo, s) = open_writer(&place, "backup");
        let blobs: Vec<BlobId> = (0..3).map(|i| save(&repo, i, 1 << 20).0).collect();
        let snap = snapshot_of(&repo, "a", &blobs);
        repo.remove_snapshot(&snap).expect("forget");
        drop((repo, s));
        // A session file nobody can read: damaged, or from a newer version.
        let damaged = "00ff00ff00ff00ff00ff00ff00ff00ff";
        place
            .backend
            .write(FileKind::Session, damaged, b"not a sealed session")
            .expect("write");

        let (pruner, prune_session) = open_writer(&place, "prune");
        let report = pruner
            .prune(&prune_session, PruneOptions::default())
            .expect("prune");
        assert!(report.packs_marked >= 1, "{}: {report:?}", place.name);
        assert_eq!(report.packs_deleted, 0, "{report:?}");
        assert_eq!(report.waiting_for, vec![damaged.to_string()]);
        assert_eq!(report.unreadable_sessions, vec![damaged.to_string()]);

        // A live session (this prune's own) is refused, naming what it is doing.
        let own = prune_session.name().to_string();
        let err = pruner.remove_session(&own[..6]).expect_err("live");
        assert!(
            err.to_string().contains("it is live (prune on host"),
            "{err}"
        );
        for (reference, why) in [("00f", "at least 4 hex digits"), ("abcd", "no session")] {
            let err = pruner.remove_session(reference).expect_err(reference);
            assert!(err.to_string().contains(why), "{err}");
        }
        assert_eq!(pruner.remove_session("00ff00").expect("removed"), damaged);
        assert!(
            !pruner
                .sessions()
                .expect("sessions")
                .iter()
                .any(|(n, _)| n == damaged),
            "gone"
        );
        let report = pruner
            .prune(&prune_session, PruneOptions::default())
            .expect("prune");
        drop((pruner, prune_session));
        assert!(report.packs_deleted >= 1, "{}: {report:?}", place.name);
        assert!(report.unreadable_sessions.is_empty(), "{report:?}");
        check_ok(&place);
    }
}

/// A directory backend that counts whole-file reads by kind.
struct CountingReads {
    inner: podvault_store::DirBackend,
    reads: std::sync::Mutex<std::collections::HashMap<FileKind, usize>>,
}

impl CountingReads {
    fn reads_of(&self, kind: FileKind) -> usize {
        self.reads
            .lock()
            .expect("lock")
            .get(&kind)
            .copied()
            .unwrap_or(0)
    }
}

impl podvault_store::Backend for CountingReads {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn list(&self, kind: FileKind) -> podvault_store::Result<Vec<(String, u64)>> {
        self.inner.list(kind)
    }
    fn read(&self, kind: FileKind, name: &str) -> podvault_store::Result<Vec<u8>> {
        *self.reads.lock().expect("lock").entry(kind).or_default() += 1;
        self.inner.read(kind, name)
    }
    fn read_range(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> podvault_store::Result<Vec<u8>> {
        self.inner.read_range(kind, name, offset, len)
    }
    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> podvault_store::Result<()> {
        self.inner.write(kind, name, data)
    }
    fn delete(&self, kind: FileKind, name: &str) -> podvault_store::Result<()> {
        self.inner.delete(kind, name)
    }
    fn create(&self) -> podvault_store::Result<()> {
        self.inner.create()
    }
}

#[test]
fn a_prune_reads_each_snapshot_once_when_it_also_deletes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let counting = std::sync::Arc::new(CountingReads {
        inner: podvault_store::DirBackend::new(tmp.path().join("repo")),
        reads: Default::default(),
    });
    let backend: std::sync::Arc<dyn podvault_store::Backend> = counting.clone();
    Repository::init(backend.clone(), b"pw", &fast_init()).expect("init");
    let (repo, session) =
        Repository::open_session(backend.clone(), b"pw", "backup", Access::Write).expect("open");
    let (gone, _) = save(&repo, 1, 1 << 20);
    repo.flush().expect("flush");
    let kept: Vec<SnapshotId> = (0..3)
        .map(|i| {
            let (blob, _) = save(&repo, 10 + i, 1 << 20);
            snapshot_of(&repo, &format!("kept{i}"), &[blob])
        })
        .collect();
    let forgotten = snapshot_of(&repo, "forgotten", &[gone]);
    repo.remove_snapshot(&forgotten).expect("forget");
    drop((repo, session));

    let (repo, session) =
        Repository::open_session(backend.clone(), b"pw", "prune", Access::Write).expect("open");
    let before = counting.reads_of(FileKind::Snapshot);
    let report = repo
        .prune(&session, PruneOptions::default())
        .expect("prune");
    assert!(report.packs_deleted >= 1, "{report:?}");
    // Marked and deleted in one run (no other session): the blobs in use, found at marking,
    // are not looked up a second time to delete.
    assert_eq!(
        counting.reads_of(FileKind::Snapshot) - before,
        kept.len(),
        "{report:?}"
    );
    drop((repo, session));
    let repo = Repository::open(backend, b"pw").expect("open");
    assert!(repo.locate(&gone).is_none(), "unused data is gone");
    assert_eq!(repo.snapshots().expect("list").len(), kept.len());
}
