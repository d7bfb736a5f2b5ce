//! The repository on real files: round trips, keys, damage and bad locations.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use podvault_store::{
    Backend, BlobKind, CheckOptions, Chunker, ChunkerParams, DirBackend, Error, FileKind,
    Repository,
};
use podvault_testkit::{Place, fast_init, pseudo_random};

fn backend(p: &Path) -> Arc<dyn Backend> {
    Arc::new(DirBackend::new(p))
}

#[test]
fn blobs_round_trip_across_reopen_and_deduplicate() {
    let tmp = tempfile::tempdir().expect("tmp");
    for place in Place::both(tmp.path()) {
        round_trip(&place);
    }
}

fn round_trip(place: &Place) {
    let repo = Repository::init(place.backend.clone(), b"pw", &fast_init()).expect("init");
    let compressible = b"abc".repeat(100_000);
    let random = pseudo_random(1, 300_000);
    // Random at the start, compressible from the middle on: the probe of the middle sees it.
    let mut half = pseudo_random(2, 300_000);
    half.extend(b"xyz".repeat(100_000));
    // Starts like a gzip file: not even tried, although these bytes would shrink.
    let mut gz = vec![0x1f, 0x8b];
    gz.extend(b"abc".repeat(1000));
    let mut ids = Vec::new();
    for data in [&compressible, &random, &half, &gz] {
        let id = repo.blob_id(data);
        assert!(matches!(
            repo.save_blob(BlobKind::Data, id, data).expect("save"),
            podvault_store::SaveOutcome::New { .. }
        ));
        assert_eq!(
            repo.save_blob(BlobKind::Data, id, data).expect("again"),
            podvault_store::SaveOutcome::Known
        );
        ids.push(id);
    }
    repo.flush().expect("flush");
    let loc = repo.locate(&ids[0]).expect("indexed");
    assert!(
        loc.compressed() && loc.sealed_len < 10_000,
        "compressible data is compressed"
    );
    assert!(
        !repo.locate(&ids[1]).expect("indexed").compressed(),
        "random data is stored raw"
    );
    let loc = repo.locate(&ids[2]).expect("indexed");
    assert!(
        loc.compressed() && loc.sealed_len < 310_000,
        "half-compressible data is compressed"
    );
    assert!(
        !repo.locate(&ids[3]).expect("indexed").compressed(),
        "a compressed format is stored as it is"
    );
    drop(repo);
    let repo = Repository::open(place.backend.clone(), b"pw").expect("open");
    assert_eq!(
        repo.load_blob(BlobKind::Data, &ids[0]).expect("load"),
        compressible
    );
    assert_eq!(
        repo.load_blob(BlobKind::Data, &ids[1]).expect("load"),
        random
    );
    assert_eq!(repo.load_blob(BlobKind::Data, &ids[2]).expect("load"), half);
    assert!(
        repo.check(CheckOptions {
            read_data: true,
            ..Default::default()
        })
        .expect("check")
        .is_ok()
    );
}

#[test]
fn wrong_password_and_second_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    for place in Place::both(tmp.path()) {
        keys(&place);
    }
}

fn keys(place: &Place) {
    let backend = || place.backend.clone();
    let repo = Repository::init(backend(), b"first", &fast_init()).expect("init");
    let err = Repository::open(backend(), b"nope")
        .err()
        .expect("wrong password fails");
    assert!(matches!(err, Error::WrongPassword { keys: 1, .. }), "{err}");
    assert!(err.to_string().contains("wrong password"), "{err}");
    repo.add_key(b"second").expect("add key");
    let by_second = Repository::open(backend(), b"second").expect("second opens");
    assert_eq!(by_second.config().id, repo.config().id);
    assert_eq!(
        by_second.blob_id(b"x"),
        repo.blob_id(b"x"),
        "same master key"
    );
}

#[test]
fn missing_and_foreign_locations_are_not_repositories() {
    let tmp = tempfile::tempdir().expect("tmp");
    let missing = tmp.path().join("missing");
    let err = Repository::open(backend(&missing), b"pw")
        .err()
        .expect("missing");
    assert!(matches!(err, Error::NotARepository { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
    let foreign = tmp.path().join("foreign");
    fs::create_dir(&foreign).expect("mkdir");
    fs::write(foreign.join("config"), b"{ not json").expect("write");
    let err = Repository::open(backend(&foreign), b"pw")
        .err()
        .expect("foreign");
    assert!(matches!(err, Error::NotARepository { .. }), "{err}");
    let file = tmp.path().join("file");
    fs::write(&file, b"x").expect("write");
    let err = Repository::open(backend(&file), b"pw").err().expect("file");
    assert!(matches!(err, Error::NotARepository { .. }), "{err}");
    // init refuses a non-empty directory and leaves it alone
    let err = Repository::init(backend(&foreign), b"pw", &fast_init())
        .err()
        .expect("non-empty");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert_eq!(
        fs::read(foreign.join("config")).expect("kept"),
        b"{ not json"
    );
}

#[test]
fn a_flipped_byte_in_a_pack_is_named_by_check_and_load() {
    let tmp = tempfile::tempdir().expect("tmp");
    for place in Place::both(tmp.path()) {
        flipped_byte(&place);
    }
}

fn flipped_byte(place: &Place) {
    let repo = Repository::init(place.backend.clone(), b"pw", &fast_init()).expect("init");
    let data = pseudo_random(2, 50_000);
    let id = repo.blob_id(&data);
    repo.save_blob(BlobKind::Data, id, &data).expect("save");
    repo.flush().expect("flush");
    let loc = repo.locate(&id).expect("indexed");
    let pack_path = place
        .files
        .join("data")
        .join(&loc.pack.to_hex()[..2])
        .join(loc.pack.to_hex());
    let mut bytes = fs::read(&pack_path).expect("pack");
    bytes[loc.offset as usize + 100] ^= 0x01;
    fs::write(&pack_path, &bytes).expect("write");
    let err = repo.load_blob(BlobKind::Data, &id).expect_err("damaged");
    assert!(err.to_string().contains(&loc.pack.to_hex()), "{err}");
    let report = repo
        .check(CheckOptions {
            read_data: true,
            ..Default::default()
        })
        .expect("check");
    assert!(!report.is_ok());
    assert!(
        report.problems[0].object.contains(&loc.pack.to_hex()),
        "{:?}",
        report.problems
    );
    // Without reading data, the structure still looks sound.
    assert!(repo.check(CheckOptions::default()).expect("check").is_ok());
}

/// A repository holding one flushed blob, and that blob's id.
fn repo_with_one_blob(place: &Place) -> (Repository, podvault_store::BlobId) {
    let repo = Repository::init(place.backend.clone(), b"pw", &fast_init()).expect("init");
    let id = repo.blob_id(b"x");
    repo.save_blob(BlobKind::Data, id, b"x").expect("save");
    repo.flush().expect("flush");
    (repo, id)
}

#[test]
fn a_missing_pack_is_a_check_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    for place in Place::both(tmp.path()) {
        missing_pack(&place);
    }
}

fn missing_pack(place: &Place) {
    let (repo, id) = repo_with_one_blob(place);
    let pack = repo.locate(&id).expect("indexed").pack;
    repo.backend()
        .delete(FileKind::Pack, &pack.to_hex())
        .expect("delete");
    let report = repo.check(CheckOptions::default()).expect("check");
    assert_eq!(report.problems.len(), 1);
    assert!(report.problems[0].message.contains("missing"));
}

#[test]
fn interrupted_writes_leave_only_unreferenced_data() {
    // Packs are written before the index that lists them: a pack without an index entry is
    // what an interruption leaves, and check reports it as harmless.
    let tmp = tempfile::tempdir().expect("tmp");
    for place in Place::both(tmp.path()) {
        interrupted(&place);
    }
}

fn interrupted(place: &Place) {
    let (repo, _id) = repo_with_one_blob(place);
    for (name, _) in repo.backend().list(FileKind::Index).expect("list") {
        repo.backend()
            .delete(FileKind::Index, &name)
            .expect("delete");
    }
    fs::write(place.file("index/.tmp-partial"), b"half").expect("temp file");
    let repo = Repository::open(place.backend.clone(), b"pw").expect("open");
    let report = repo.check(CheckOptions::default()).expect("check");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.unindexed_packs, 1);
}

/// Chunk boundaries for a fixed key and input never change: they are part of the format.
#[test]
fn chunker_golden_vectors() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let input = fs::read(fixtures.join("chunker-input.bin")).expect("fixture input");
    let params = ChunkerParams {
        min_bytes: 4096,
        avg_bytes: 16384,
        max_bytes: 65536,
    };
    let chunker = Chunker::new(params, &[0x42; 32]).expect("chunker");
    let got: Vec<String> = chunker
        .chunks(&input)
        .map(|(off, len)| {
            format!(
                "{off} {len} {}",
                blake3::keyed_hash(&[0x42; 32], &input[off..off + len]).to_hex()
            )
        })
        .collect();
    let golden_path = fixtures.join("chunker-golden.txt");
    if std::env::var_os("PODVAULT_BLESS").is_some() {
        fs::write(&golden_path, got.join("\n") + "\n").expect("bless");
    }
    let golden = fs::read_to_string(&golden_path).expect("golden file");
    let want: Vec<&str> = golden.lines().collect();
    assert_eq!(got, want);
}

#[test]
fn documents_are_sealed_named_and_listed() {
    let tmp = tempfile::tempdir().expect("tmp");
    for place in Place::both(tmp.path()) {
        documents(&place);
    }
}

fn documents(place: &Place) {
    let repo = Repository::init(place.backend.clone(), b"pw", &fast_init()).expect("init");
    assert_eq!(repo.load_document("backup-a.json").expect("load"), None);
    repo.save_document("backup-a.json", b"{\"pods\":[]}")
        .expect("save");
    repo.save_document("backup-b.json", b"second")
        .expect("save");
    assert_eq!(
        repo.load_document("backup-a.json")
            .expect("load")
            .as_deref(),
        Some(&b"{\"pods\":[]}"[..])
    );
    assert_eq!(
        repo.documents().expect("list"),
        vec!["backup-a.json".to_string(), "backup-b.json".to_string()]
    );
    // Sealed: the plain text is not in the store, and a document moved to another name
    // fails authentication instead of being read as that name.
    let raw = place
        .backend
        .read(FileKind::Document, "backup-a.json")
        .expect("raw");
    assert!(!raw.windows(6).any(|w| w == b"\"pods\""));
    place
        .backend
        .write(FileKind::Document, "backup-c.json", &raw)
        .expect("copy");
    let err = repo.load_document("backup-c.json").expect_err("moved");
    assert!(err.to_string().contains("backup-c.json"), "{err}");
    for bad in ["", "../x", ".hidden", "a/b"] {
        let err = repo.save_document(bad, b"x").expect_err(bad);
        assert!(err.to_string().contains("document name"), "{err}");
    }
    repo.remove_document("backup-b.json").expect("remove");
    repo.remove_document("backup-b.json").expect("remove twice");
    assert_eq!(repo.documents().expect("list").len(), 2);
}

#[test]
fn ranged_reads_into_a_reused_buffer_hold_only_the_range() {
    let tmp = tempfile::tempdir().expect("tmp");
    for place in Place::both(tmp.path()) {
        place.backend.create().expect("create");
        let data = pseudo_random(9, 100_000);
        place
            .backend
            .write(FileKind::Pack, "abcd", &data)
            .expect("write");
        let mut buf = Vec::new();
        for (offset, len) in [(0u64, 60_000u64), (10, 5), (99_990, 100), (50_000, 50_000)] {
            place
                .backend
                .read_range_into(FileKind::Pack, "abcd", offset, len, &mut buf)
                .expect("read");
            let end = (offset + len).min(data.len() as u64) as usize;
            assert_eq!(
                buf,
                &data[offset as usize..end],
                "{}: {offset}+{len}",
                place.name
            );
        }
        let err = place
            .backend
            .read_range_into(FileKind::Pack, "gone", 0, 10, &mut buf)
            .expect_err("missing");
        assert!(
            matches!(err, Error::NotFound { .. }),
            "{}: {err}",
            place.name
        );
    }
}

/// A pack write that fails is reported (by the save that filled the pack, or by `flush`),
/// its blobs are forgotten rather than indexed, and saving them again once the fault is
/// gone stores them.
#[test]
fn a_pack_write_that_fails_is_reported_and_its_blobs_stored_again() {
    let tmp = tempfile::tempdir().expect("tmp");
    let backend = backend(tmp.path());
    let repo = Repository::init(backend.clone(), b"pw", &fast_init()).expect("init");
    // Packs cannot be written while `data` is a file: each write fails with ENOTDIR, even
    // for root.
    let data_dir = tmp.path().join("data");
    let moved = tmp.path().join("data-moved");
    fs::rename(&data_dir, &moved).expect("move data away");
    fs::write(&data_dir, b"not a directory").expect("file in the way");

    // 40 incompressible blobs of 1 MiB fill two 16 MiB packs and start a third.
    let blobs: Vec<_> = (0..40)
        .map(|i| {
            let data = pseudo_random(100 + i, 1 << 20);
            (repo.blob_id(&data), data)
        })
        .collect();
    let mut errors = Vec::new();
    for (id, data) in &blobs {
        if let Err(e) = repo.save_blob(BlobKind::Data, *id, data) {
            errors.push(e.to_string());
        }
    }
    if let Err(e) = repo.flush() {
        errors.push(e.to_string());
    }
    assert!(!errors.is_empty(), "the failed writes are reported");
    assert!(errors.iter().all(|e| e.contains("/data/")), "{errors:?}");
    assert!(
        blobs.iter().all(|(id, _)| repo.locate(id).is_none()),
        "no blob of a pack that was not written is indexed"
    );

    fs::remove_file(&data_dir).expect("remove the file");
    fs::rename(&moved, &data_dir).expect("move data back");
    let mut stored_again = 0;
    for (id, data) in &blobs {
        if let podvault_store::SaveOutcome::New { .. } =
            repo.save_blob(BlobKind::Data, *id, data).expect("save")
        {
            stored_again += 1;
        }
    }
    repo.flush().expect("flush");
    // Every pack failed, so every blob was forgotten and is stored anew.
    assert_eq!(stored_again, blobs.len());
    drop(repo);
    let repo = Repository::open(backend, b"pw").expect("open");
    for (id, data) in &blobs {
        assert_eq!(&repo.load_blob(BlobKind::Data, id).expect("load"), data);
    }
    let report = repo
        .check(CheckOptions {
            read_data: true,
            ..Default::default()
        })
        .expect("check");
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn forget_plans_by_id_or_by_policy_within_a_filter_and_never_everything() {
    use podvault_store::{
        Forget, KeepPolicy, Node, NodeKind, Snapshot, SnapshotFilter, Summary, TreeId,
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = Repository::init(backend(tmp.path()), b"pw", &fast_init()).expect("init");
    let save = |host: &str, hour: u32, tags: &[&str]| {
        let time = chrono::DateTime::parse_from_rfc3339(&format!("2026-12-01T{hour:02}:00:00Z"))
            .expect("time")
            .to_utc();
        repo.save_snapshot(&Snapshot {
            time,
            host: host.into(),
            source: "/data".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            parent: None,
            tree: TreeId::from_bytes([0; 32]),
            root: Node::plain(b"data", NodeKind::Dir),
            username: "u".into(),
            program_version: "test".into(),
            summary: Summary::default(),
        })
        .expect("save")
    };
    let a1 = save("a", 1, &[]);
    let a2 = save("a", 2, &["db"]);
    let b1 = save("b", 1, &[]);
    let policy = |last| KeepPolicy {
        last,
        ..KeepPolicy::default()
    };
    let only_a = SnapshotFilter {
        host: Some("a".into()),
        ..SnapshotFilter::default()
    };
    let plan = repo
        .plan_forget(&Forget::Policy {
            filter: only_a.clone(),
            policy: policy(1),
        })
        .expect("plan");
    let ids = |d: &[podvault_store::Decision]| d.iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids(&plan.remove), [a1]);
    assert_eq!(ids(&plan.keep), [a2]);
    assert_eq!(plan.keep[0].reasons, ["last"]);
    let tagged = SnapshotFilter {
        tags: vec!["db".into()],
        ..SnapshotFilter::default()
    };
    let plan = repo
        .plan_forget(&Forget::Policy {
            filter: tagged,
            policy: policy(1),
        })
        .expect("plan");
    assert!(plan.remove.is_empty() && ids(&plan.keep) == [a2]);
    let err = repo
        .plan_forget(&Forget::Policy {
            filter: only_a,
            policy: policy(0),
        })
        .expect_err("no rule");
    assert!(
        err.to_string()
            .contains("refusing to forget every snapshot"),
        "{err}"
    );
    let by_id = repo
        .plan_forget(&Forget::Ids(vec![b1.to_hex()[..8].to_string()]))
        .expect("plan");
    assert_eq!(ids(&by_id.remove), [b1]);
    assert!(
        repo.plan_forget(&Forget::Ids(vec!["ffffffffff".into()]))
            .is_err()
    );
    repo.forget(&by_id).expect("forget");
    let left: Vec<_> = repo
        .snapshots()
        .expect("list")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(left.contains(&a1) && left.contains(&a2) && !left.contains(&b1));
}
