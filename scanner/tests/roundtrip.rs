//! Backup and restore of real files on disk, compared attribute by attribute.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use podvault_scanner::{BackupOptions, ParentChoice, RestoreOptions, backup, restore};
use podvault_store::{
    BlobId, BlobKind, ChunkerParams, DirBackend, InitOptions, KdfParams, Node, NodeKind,
    Repository, Snapshot, Summary, Tree,
};
use podvault_testkit::{assert_same_tree, walk};
use proptest::prelude::*;
use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, XattrFlags};

fn fast_kdf() -> KdfParams {
    KdfParams {
        memory_kib: 64,
        iterations: 1,
        ..KdfParams::default()
    }
}

/// A repository with small chunks so that small test files still have several.
fn new_repo(dir: &Path) -> Repository {
    let options = InitOptions {
        chunker: ChunkerParams {
            min_bytes: 16 * 1024,
            avg_bytes: 64 * 1024,
            max_bytes: 256 * 1024,
        },
        kdf: fast_kdf(),
    };
    Repository::init(Arc::new(DirBackend::new(dir.join("repo"))), b"pw", &options).expect("init")
}

/// SplitMix64: a tiny deterministic generator driven by proptest's seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

fn set_times(path: &Path, sec: i64, nsec: i64) {
    let ts = Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    let times = Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).expect("utimensat");
}

fn name(rng: &mut Rng, i: usize) -> Vec<u8> {
    let mut n = match rng.below(8) {
        0 => b"with space".to_vec(),
        1 => b"new\nline".to_vec(),
        2 => vec![b'x', 0xff, 0xfe, b'y'], // not UTF-8
        3 => b".hidden".to_vec(),
        4 => vec![b'L'; 200],
        5 => "ünïcødé".as_bytes().to_vec(),
        _ => format!("f{}", rng.below(1000)).into_bytes(),
    };
    n.extend_from_slice(format!("-{i}").as_bytes());
    n
}

/// POSIX ACL granting uid 1000 read access (system.posix_acl_access, version 2).
fn acl_value() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 1000),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// File capability CAP_NET_BIND_SERVICE, effective (security.capability, revision 2).
fn capability_value() -> Vec<u8> {
    let mut v = 0x0200_0001u32.to_le_bytes().to_vec();
    for w in [1u32 << 10, 0, 0, 0] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Builds a random tree with every kind of entry and attribute point 4 of the design lists.
fn build_tree(root: &Path, seed: u64) {
    let mut rng = Rng(seed);
    fs::create_dir_all(root).expect("root");
    let mut dirs = vec![root.to_path_buf()];
    let mut files: Vec<PathBuf> = Vec::new();
    let file_modes = [0o644, 0o600, 0o755, 0o444, 0o4755, 0o2755, 0o6711];
    let dir_modes = [0o755, 0o700, 0o1777, 0o2775];
    for i in 0..40 {
        let parent = dirs[rng.below(dirs.len() as u64) as usize].clone();
        let path = parent.join(OsStr::from_bytes(&name(&mut rng, i)));
        match rng.below(12) {
            0..=4 => {
                let size = match rng.below(5) {
                    0 => 0,
                    1 => rng.below(5000) as usize,
                    2 => 100_000 + rng.below(400_000) as usize,
                    _ => rng.below(2000) as usize,
                };
                let mut data = rng.bytes(size);
                if size > 1000 && rng.below(2) == 0 {
                    // Compressible: repeat a short pattern over half the file.
                    let half = size / 2;
                    for j in half..size {
                        data[j] = data[j % 97];
                    }
                }
                fs::write(&path, &data).expect("write");
                fs::set_permissions(
                    &path,
                    fs::Permissions::from_mode(file_modes[rng.below(7) as usize]),
                )
                .expect("chmod");
                files.push(path.clone());
            }
            5 => {
                // Sparse: data, a 2 MiB hole, data, and a trailing hole.
                let f = fs::File::create(&path).expect("create");
                f.set_len(3 << 20).expect("len");
                use std::os::unix::fs::FileExt;
                f.write_all_at(&rng.bytes(4096), 0).expect("write");
                f.write_all_at(&rng.bytes(4096), 2 << 20).expect("write");
                files.push(path.clone());
            }
            6 | 7 => {
                fs::create_dir(&path).expect("mkdir");
                fs::set_permissions(
                    &path,
                    fs::Permissions::from_mode(dir_modes[rng.below(4) as usize]),
                )
                .expect("chmod");
                dirs.push(path.clone());
            }
            8 => {
                let target = match rng.below(3) {
                    0 => PathBuf::from("../../etc/passwd"),
                    1 => PathBuf::from("/nonexistent/target"),
                    _ => PathBuf::from(OsStr::from_bytes(&name(&mut rng, 999))),
                };
                std::os::unix::fs::symlink(target, &path).expect("symlink");
            }
            9 => {
                rustix::fs::mknodat(
                    CWD,
                    &path,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o640),
                    0,
                )
                .expect("mkfifo");
            }
            10 if !files.is_empty() => {
                let to = &files[rng.below(files.len() as u64) as usize];
                fs::hard_link(to, &path).expect("link");
            }
            10 => continue,
            _ => {
                if is_root() {
                    let dev = rustix::fs::makedev(1, 3);
                    let kind = if rng.below(2) == 0 {
                        rustix::fs::FileType::CharacterDevice
                    } else {
                        rustix::fs::FileType::BlockDevice
                    };
                    rustix::fs::mknodat(
                        CWD,
                        &path,
                        kind,
                        rustix::fs::Mode::from_raw_mode(0o600),
                        dev,
                    )
                    .expect("mknod");
                }
            }
        }
        if let Ok(m) = fs::symlink_metadata(&path)
            && !m.file_type().is_symlink()
        {
            // user.* attributes exist only on regular files and directories.
            if (m.is_file() || m.is_dir()) && rng.below(3) == 0 {
                let n = rng.below(100) as usize;
                rustix::fs::lsetxattr(&path, "user.note", &rng.bytes(n), XattrFlags::empty())
                    .expect("xattr");
            }
            if is_root() && rng.below(4) == 0 {
                rustix::fs::chownat(
                    CWD,
                    &path,
                    Some(rustix::fs::Uid::from_raw(1000 + rng.below(5) as u32)),
                    Some(rustix::fs::Gid::from_raw(2000 + rng.below(5) as u32)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .expect("chown");
            }
        }
    }
    // One of each special attribute, always.
    let acl = root.join("acl-file");
    fs::write(&acl, b"acl").expect("write");
    rustix::fs::lsetxattr(
        &acl,
        "system.posix_acl_access",
        &acl_value(),
        XattrFlags::empty(),
    )
    .expect("acl");
    if is_root() {
        let cap = root.join("cap-file");
        fs::write(&cap, b"cap").expect("write");
        fs::set_permissions(&cap, fs::Permissions::from_mode(0o755)).expect("chmod");
        rustix::fs::lsetxattr(
            &cap,
            "security.capability",
            &capability_value(),
            XattrFlags::empty(),
        )
        .expect("cap");
    }
    fs::create_dir(root.join("empty-dir")).expect("mkdir");
    // Only zeros (nothing is written at restore: its length alone makes it), and a file
    // ending in a hole that is also hard-linked (created before its chunks are written).
    fs::write(root.join("zeros"), vec![0u8; (1 << 20) + 5]).expect("zeros");
    let tail = root.join("tail-hole");
    fs::write(&tail, [&rng.bytes(5000)[..], &[0u8; 3 * 4096]].concat()).expect("tail");
    fs::hard_link(&tail, root.join("tail-hole-link")).expect("link");
    let mut deep = root.join("deep");
    for level in 0..30 {
        deep = deep.join(format!("{level:03}-{}", "d".repeat(90)));
    }
    fs::create_dir_all(&deep).expect("deep");
    fs::write(deep.join("leaf"), b"deep leaf").expect("leaf");
    // Times last, deepest first, so creating children does not change them.
    let mut all: Vec<PathBuf> = walk(root).into_iter().map(|(p, _)| p).collect();
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in all {
        set_times(
            &p,
            1_500_000_000 + rng.below(100_000_000) as i64,
            rng.below(1_000_000_000) as i64,
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_trees_round_trip_with_all_metadata(seed in any::<u64>()) {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("src");
        build_tree(&src, seed);
        let repo = new_repo(tmp.path());
        let report = backup(&repo, &BackupOptions::new(&src)).expect("backup");
        prop_assert!(report.unreadable.is_empty(), "{:?}", report.unreadable);
        let out = tmp.path().join("out");
        restore(&repo, &report.snapshot, &RestoreOptions::new(&out)).expect("restore");
        assert_same_tree(&src, &out);
        let check = repo.check(podvault_store::CheckOptions {
            read_data: true,
            ..Default::default()
        }).expect("check");
        prop_assert!(check.is_ok(), "{:?}", check.problems);
    }
}

#[test]
fn parallel_and_serial_backups_give_identical_trees() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    build_tree(&src, 42);
    let repo = new_repo(tmp.path());
    let mut trees = Vec::new();
    for threads in [1, 2, 8] {
        let mut o = BackupOptions::new(&src);
        o.threads = threads;
        o.parent = ParentChoice::None;
        trees.push(backup(&repo, &o).expect("backup").snapshot.tree);
    }
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0], trees[2]);
}

#[test]
fn mapped_and_streamed_reads_cut_the_same_chunks() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    // Larger than several read windows, with repeats so some chunks deduplicate.
    let mut data = Rng(11).bytes(20 << 20);
    data.extend_from_within(..5 << 20);
    fs::write(src.join("big"), &data).expect("write");
    let repo = new_repo(tmp.path());
    let mut trees = Vec::new();
    for mmap_min_bytes in [0, u64::MAX] {
        let mut o = BackupOptions::new(&src);
        o.parent = ParentChoice::None;
        o.mmap_min_bytes = mmap_min_bytes;
        let report = backup(&repo, &o).expect("backup");
        assert_eq!(report.snapshot.summary.bytes_read, data.len() as u64);
        trees.push(report.snapshot.tree);
    }
    assert_eq!(trees[0], trees[1]);
}

#[test]
fn unchanged_files_are_reused_and_changed_ones_read() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    for i in 0..20 {
        fs::write(
            src.join(format!("f{i}")),
            format!("content {i}").repeat(1000),
        )
        .expect("write");
    }
    let repo = new_repo(tmp.path());
    let first = backup(&repo, &BackupOptions::new(&src)).expect("first");
    assert_eq!(first.snapshot.summary.files_new, 20);
    fs::write(src.join("f3"), b"changed").expect("write");
    fs::write(src.join("new"), b"new").expect("write");
    let second = backup(&repo, &BackupOptions::new(&src)).expect("second");
    let s = &second.snapshot.summary;
    assert_eq!(second.snapshot.parent, Some(first.id));
    assert_eq!(
        (s.files_unmodified, s.files_changed, s.files_new),
        (19, 1, 1)
    );
    assert_eq!(
        s.bytes_read,
        7 + 3,
        "only the changed and the new file are read"
    );
    let mut o = BackupOptions::new(&src);
    o.parent = ParentChoice::None;
    let full = backup(&repo, &o).expect("full");
    assert_eq!(full.snapshot.summary.files_unmodified, 0);
    assert_eq!(full.snapshot.tree, second.snapshot.tree);
    let mut o = BackupOptions::new(&src);
    o.parent = ParentChoice::Id(first.id);
    assert_eq!(
        backup(&repo, &o).expect("explicit parent").snapshot.parent,
        Some(first.id)
    );
}

#[test]
fn a_file_truncated_while_mapped_is_reported_and_the_backup_goes_on() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    let big = src.join("big.db");
    let mut rng = Rng(7);
    let mut f = fs::File::create(&big).expect("create");
    for _ in 0..64 {
        f.write_all(&rng.bytes(1 << 20)).expect("write");
    }
    drop(f);
    fs::write(src.join("small"), b"still here").expect("write");
    let repo = new_repo(tmp.path());
    let mut o = BackupOptions::new(&src);
    let target = big.clone();
    // Each time the file is mapped, something else halves it before it is read.
    o.after_map = Some(Arc::new(move |p: &Path| {
        if p == target {
            let len = fs::metadata(p).expect("stat").len();
            fs::OpenOptions::new()
                .write(true)
                .open(p)
                .expect("open")
                .set_len(len / 2)
                .expect("truncate");
        }
    }));
    let report = backup(&repo, &o).expect("the backup completes");
    assert_eq!(report.unreadable.len(), 1);
    assert!(
        report.unreadable[0].path.ends_with("big.db"),
        "{:?}",
        report.unreadable
    );
    assert!(
        report.unreadable[0].error.contains("shrank"),
        "{:?}",
        report.unreadable
    );
    let out = tmp.path().join("out");
    restore(&repo, &report.snapshot, &RestoreOptions::new(&out)).expect("restore");
    assert_eq!(fs::read(out.join("small")).expect("small"), b"still here");
    assert!(!out.join("big.db").exists());

    // Truncated once only: the second attempt reads the shorter file whole.
    let mut o = BackupOptions::new(&src);
    let target = big.clone();
    let once = std::sync::atomic::AtomicBool::new(false);
    o.after_map = Some(Arc::new(move |p: &Path| {
        if p == target && !once.swap(true, std::sync::atomic::Ordering::SeqCst) {
            fs::OpenOptions::new()
                .write(true)
                .open(p)
                .expect("open")
                .set_len(3 << 20)
                .expect("truncate");
        }
    }));
    let report = backup(&repo, &o).expect("backup");
    assert!(report.unreadable.is_empty());
    let out = tmp.path().join("out2");
    restore(&repo, &report.snapshot, &RestoreOptions::new(&out)).expect("restore");
    assert_eq!(
        fs::read(out.join("big.db")).expect("big"),
        fs::read(&big).expect("big")
    );
}

#[test]
fn missing_source_and_non_directory_are_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = new_repo(tmp.path());
    let missing = tmp.path().join("nope");
    let err = backup(&repo, &BackupOptions::new(&missing)).expect_err("missing");
    assert!(err.to_string().contains("nope"), "{err}");
    let file = tmp.path().join("file");
    fs::write(&file, b"x").expect("write");
    let err = backup(&repo, &BackupOptions::new(&file)).expect_err("file");
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn excluded_paths_are_left_out() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = new_repo(tmp.path());
    let src = tmp.path().join("src");
    for (path, data) in [
        ("keep.txt", "k"),
        ("a.lock", "l"),
        ("pg_wal/0001", "w"),
        ("pg_wal/0002.tmp", "t"),
        ("deep/x/y.lock", "l"),
        ("cache/big", "c"),
    ] {
        let p = src.join(path);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, data).expect("write");
    }
    let mut options = BackupOptions::new(&src);
    options.exclude = vec!["*.lock".into(), "pg_wal/*.tmp".into(), "cache".into()];
    let report = backup(&repo, &options).expect("backup");
    assert!(report.unreadable.is_empty(), "{:?}", report.unreadable);
    let out = tmp.path().join("out");
    restore(&repo, &report.snapshot, &RestoreOptions::new(&out)).expect("restore");
    let mut got: Vec<String> = walk(&out)
        .into_iter()
        .map(|(_, rel)| rel.display().to_string())
        .collect();
    got.sort();
    assert_eq!(got, ["deep", "deep/x", "keep.txt", "pg_wal", "pg_wal/0001"]);
    options.exclude = vec!["[bad".into()];
    let err = backup(&repo, &options).expect_err("bad pattern");
    assert!(err.to_string().contains("[bad"), "{err}");
}

fn snapshot_with(repo: &Repository, nodes: Vec<Node>) -> Snapshot {
    let (tree, _) = repo.save_tree(&Tree { nodes }).expect("tree");
    repo.flush().expect("flush");
    let mut root = plain_node(b"", NodeKind::Dir);
    root.mode = 0o755;
    root.subtree = Some(tree);
    Snapshot {
        time: chrono::Utc::now(),
        host: "h".into(),
        source: "/x".into(),
        tags: vec![],
        parent: None,
        tree,
        root,
        username: "u".into(),
        program_version: "test".into(),
        summary: Summary::default(),
    }
}

fn plain_node(name: &[u8], kind: NodeKind) -> Node {
    Node::plain(name, kind)
}

#[test]
fn restore_refuses_entries_that_escape_the_target() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = new_repo(tmp.path());
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    let (empty, _) = repo.save_tree(&Tree::default()).expect("tree");
    let evil_file = |name: &[u8]| plain_node(name, NodeKind::File);
    let cases: Vec<(Vec<Node>, &str)> = vec![
        (vec![evil_file(b"..")], "/.."),
        (vec![evil_file(b"../outside/pwned")], "outside/pwned"),
        (vec![evil_file(b"/abs")], "/abs"),
        (vec![evil_file(b"")], "/"),
        (vec![evil_file(b"a\0b")], "a"),
        // A symlink pointing outside, then a directory of the same name holding a file.
        (
            {
                let mut link = plain_node(b"link", NodeKind::Symlink);
                link.link_target = Some(outside.as_os_str().as_bytes().to_vec());
                let mut dir = plain_node(b"link", NodeKind::Dir);
                dir.subtree = Some(empty);
                vec![link, dir]
            },
            "link",
        ),
    ];
    for (i, (mut nodes, shown)) in cases.into_iter().enumerate() {
        // Beside each refused entry, one the restore must still make.
        nodes.push(plain_node(b"zz-kept", NodeKind::File));
        let snap = snapshot_with(&repo, nodes);
        let target = tmp.path().join(format!("target{i}"));
        let report = restore(&repo, &snap, &RestoreOptions::new(&target)).expect("the rest");
        assert_eq!(report.refused.len(), 1, "case {i}: {:?}", report.refused);
        assert!(
            report.refused[0].contains(shown),
            "case {i}: {:?}",
            report.refused
        );
        assert!(
            target.join("zz-kept").is_file(),
            "case {i}: the rest is restored"
        );
    }
    assert_eq!(
        fs::read_dir(&outside).expect("outside").count(),
        0,
        "nothing written outside"
    );
}

#[test]
fn restore_refuses_unusable_records_by_name_and_restores_the_rest() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = new_repo(tmp.path());
    let data = b"chunk of data".to_vec();
    let chunk = repo.blob_id(&data);
    repo.save_blob(BlobKind::Data, chunk, &data).expect("chunk");
    let (empty, _) = repo.save_tree(&Tree::default()).expect("tree");
    let file = |name: &[u8], content: Vec<BlobId>, size: u64| {
        let mut n = plain_node(name, NodeKind::File);
        n.content = content;
        n.size = size;
        n
    };
    // A chunk longer than the chunker ever cuts (another writer's): refused on read.
    let limit = repo.blob_limit(BlobKind::Data);
    let big = vec![0u8; limit + 1];
    let big_id = repo.blob_id(&big);
    repo.save_blob(BlobKind::Data, big_id, &big)
        .expect("oversized chunk");
    repo.flush().expect("flush");
    let err = repo
        .load_blob(BlobKind::Data, &big_id)
        .expect_err("over the limit");
    assert!(err.to_string().contains("more than the"), "{err}");
    let mut no_listing = plain_node(b"d-no-listing", NodeKind::Dir);
    no_listing.subtree = None;
    let nodes = vec![
        file(b"a-good", vec![chunk], data.len() as u64),
        // A content list naming a tree blob, chunks that do not add up, a missing chunk.
        file(b"b-tree-as-data", vec![BlobId::from(empty)], 0),
        file(b"c-short", vec![chunk], 999),
        no_listing,
        file(b"e-missing", vec![BlobId::from_bytes([7u8; 32])], 5),
        file(b"f-good", vec![chunk, chunk], 2 * data.len() as u64),
        file(b"g-oversized", vec![big_id], (limit + 1) as u64),
        // A hard-link group: the first member wins, a later one is a link whatever it lists.
        Node {
            links: 2,
            device: 1,
            inode: 5,
            ..file(b"h-first", vec![chunk], data.len() as u64)
        },
        Node {
            links: 2,
            device: 1,
            inode: 5,
            ..file(b"i-link", vec![BlobId::from_bytes([8u8; 32])], 1)
        },
    ];
    let snap = snapshot_with(&repo, nodes);
    let target = tmp.path().join("out");
    let report = restore(&repo, &snap, &RestoreOptions::new(&target)).expect("the rest");
    let refused = report.refused.join("\n");
    for (name, why) in [
        ("b-tree-as-data", "names tree blob"),
        ("c-short", "hold 13 bytes but the snapshot says 999"),
        ("d-no-listing", "without its listing"),
        ("e-missing", "not in the index"),
        ("g-oversized", "more than the chunker's maximum"),
    ] {
        assert!(
            refused.contains(&format!("/{name}: ")) && refused.contains(why),
            "{name}: {refused}"
        );
    }
    assert_eq!(report.refused.len(), 5, "{refused}");
    assert_eq!(fs::read(target.join("a-good")).expect("kept"), data);
    assert_eq!(
        fs::read(target.join("f-good")).expect("kept").len(),
        2 * data.len()
    );
    assert!(!target.join("c-short").exists());
    let (first, link) = (
        fs::metadata(target.join("h-first")).expect("first"),
        fs::metadata(target.join("i-link")).expect("link"),
    );
    assert_eq!((first.ino(), first.nlink()), (link.ino(), 2));
}

#[test]
fn restore_stops_a_snapshot_whose_trees_repeat_past_its_summary_and_refuses_deep_nesting() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = new_repo(tmp.path());
    // Each directory lists the same subtree twice (under two names), 24 levels down: 2²⁴
    // paths from 25 distinct trees.
    let (mut tree, _) = repo.save_tree(&Tree::default()).expect("tree");
    for _ in 0..24 {
        let mut a = plain_node(b"a", NodeKind::Dir);
        a.subtree = Some(tree);
        let mut b = plain_node(b"b", NodeKind::Dir);
        b.subtree = Some(tree);
        tree = repo.save_tree(&Tree { nodes: vec![a, b] }).expect("tree").0;
    }
    let mut top = plain_node(b"top", NodeKind::Dir);
    top.subtree = Some(tree);
    let snap = snapshot_with(&repo, vec![top]);
    let err =
        restore(&repo, &snap, &RestoreOptions::new(tmp.path().join("out"))).expect_err("bounded");
    assert!(
        err.to_string()
            .contains("more entries than its summary records"),
        "{err}"
    );

    // A chain deeper than any file system path is refused at the limit, the rest kept.
    let (mut tree, _) = repo.save_tree(&Tree::default()).expect("tree");
    for _ in 0..podvault_store::limits::MAX_TREE_DEPTH + 5 {
        let mut d = plain_node(b"d", NodeKind::Dir);
        d.subtree = Some(tree);
        tree = repo.save_tree(&Tree { nodes: vec![d] }).expect("tree").0;
    }
    let mut deep = plain_node(b"deep", NodeKind::Dir);
    deep.subtree = Some(tree);
    let snap = snapshot_with(&repo, vec![deep, plain_node(b"kept", NodeKind::File)]);
    let out = tmp.path().join("deep-out");
    let report = restore(&repo, &snap, &RestoreOptions::new(&out)).expect("the rest");
    assert_eq!(report.refused.len(), 1, "{:?}", report.refused);
    assert!(
        report.refused[0].contains("nested deeper than"),
        "{:?}",
        report.refused
    );
    assert!(out.join("kept").is_file());
}

#[test]
fn restore_into_a_non_empty_directory_needs_overwrite_and_never_follows_links() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).expect("mkdir");
    fs::write(src.join("sub/file"), b"new content").expect("write");
    let repo = new_repo(tmp.path());
    let report = backup(&repo, &BackupOptions::new(&src)).expect("backup");

    let target = tmp.path().join("target");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).expect("mkdir");
    fs::create_dir_all(&target).expect("mkdir");
    // An attacker-made symlink where the snapshot has a directory.
    std::os::unix::fs::symlink(&outside, target.join("sub")).expect("symlink");
    let err =
        restore(&repo, &report.snapshot, &RestoreOptions::new(&target)).expect_err("not empty");
    assert!(err.to_string().contains("not empty"), "{err}");
    let mut o = RestoreOptions::new(&target);
    o.overwrite = true;
    restore(&repo, &report.snapshot, &o).expect("overwrite");
    assert!(
        fs::symlink_metadata(target.join("sub"))
            .expect("sub")
            .is_dir()
    );
    assert_eq!(
        fs::read(target.join("sub/file")).expect("file"),
        b"new content"
    );
    assert_eq!(
        fs::read_dir(&outside).expect("outside").count(),
        0,
        "nothing written through the link"
    );
    // Again over the restored tree: each existing file is replaced, not written into.
    fs::write(target.join("sub/file"), b"a longer stale content").expect("write");
    restore(&repo, &report.snapshot, &o).expect("overwrite again");
    assert_eq!(
        fs::read(target.join("sub/file")).expect("file"),
        b"new content"
    );
}

#[test]
fn a_file_that_cannot_be_created_is_named_and_the_others_are_restored() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = new_repo(tmp.path());
    let data = b"some content";
    let id = repo.blob_id(data);
    repo.save_blob(BlobKind::Data, id, data).expect("blob");
    let file = |name: &[u8]| {
        let mut n = plain_node(name, NodeKind::File);
        n.mode = 0o644;
        n.size = data.len() as u64;
        n.content = vec![id];
        n
    };
    // A name longer than any file system allows: safe, but the kernel refuses to create it.
    let long = vec![b'x'; 300];
    let snap = snapshot_with(&repo, vec![file(b"a"), file(&long), file(b"z")]);
    let target = tmp.path().join("target");
    let err = restore(&repo, &snap, &RestoreOptions::new(&target)).expect_err("too long");
    assert!(err.to_string().contains("xxxxxxxx"), "{err}");
    for name in ["a", "z"] {
        assert_eq!(fs::read(target.join(name)).expect(name), data);
    }
}

/// Mounts a tmpfs on `dir`; false where that is not allowed (not root).
fn mount_tmpfs(dir: &Path, options: &str) -> bool {
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_full_disk_during_restore_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    fs::write(src.join("big"), Rng(3).bytes(4 << 20)).expect("write");
    let repo = new_repo(tmp.path());
    let report = backup(&repo, &BackupOptions::new(&src)).expect("backup");
    let small = tmp.path().join("small-disk");
    fs::create_dir(&small).expect("mkdir");
    if !mount_tmpfs(&small, "size=1m") {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root)");
        return;
    }
    let result = restore(
        &repo,
        &report.snapshot,
        &RestoreOptions::new(small.join("out")),
    );
    let _ = std::process::Command::new("umount").arg(&small).status();
    let err = result.expect_err("disk full");
    let text = format!("{err}");
    assert!(text.contains("big"), "{text}");
    assert!(text.to_lowercase().contains("no space"), "{text}");
}

#[test]
fn a_mount_point_is_recorded_empty_and_not_entered() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    let mnt = src.join("mnt");
    fs::create_dir_all(&mnt).expect("mkdir");
    fs::write(src.join("kept"), b"on the source's file system").expect("write");
    if !mount_tmpfs(&mnt, "size=1m,mode=0750") {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    let written = fs::write(mnt.join("other-fs"), b"another file system");
    let repo = new_repo(tmp.path());
    let result = backup(&repo, &BackupOptions::new(&src));
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    written.expect("write on the tmpfs");
    let report = result.expect("backup");
    assert!(report.unreadable.is_empty(), "{:?}", report.unreadable);
    let root = repo.load_tree(&report.snapshot.tree).expect("root tree");
    let names: Vec<&[u8]> = root.nodes.iter().map(|n| n.name.as_slice()).collect();
    assert_eq!(names, [b"kept".as_slice(), b"mnt"]);
    let mount_node = &root.nodes[1];
    assert_eq!(mount_node.kind, NodeKind::Dir);
    assert_eq!(
        mount_node.mode, 0o750,
        "the mount point's own metadata is kept"
    );
    let inside = repo
        .load_tree(&mount_node.subtree.expect("subtree"))
        .expect("mount tree");
    assert!(
        inside.nodes.is_empty(),
        "another file system is not entered"
    );
}

/// The root tree's node called `name`.
fn root_node(repo: &Repository, snapshot: &Snapshot, name: &[u8]) -> Node {
    let tree = repo.load_tree(&snapshot.tree).expect("root tree");
    tree.nodes
        .into_iter()
        .find(|n| n.name == name)
        .expect("node in the root")
}

/// A source directory `src` holding one file, and a new repository beside it.
fn one_file_source(tmp: &Path, name: &str, data: &[u8]) -> (PathBuf, Repository) {
    let src = tmp.join("src");
    fs::create_dir(&src).expect("mkdir");
    fs::write(src.join(name), data).expect("write");
    (src, new_repo(tmp))
}

/// Restores `snapshot` and checks the file `name` has exactly `data`.
fn assert_restores(repo: &Repository, snapshot: &Snapshot, tmp: &Path, name: &str, data: &[u8]) {
    let out = tmp.join("out");
    restore(repo, snapshot, &RestoreOptions::new(&out)).expect("restore");
    assert!(
        fs::read(out.join(name)).expect("read") == data,
        "restored bytes differ"
    );
}

#[test]
fn a_database_file_with_scattered_page_writes_takes_the_fast_path() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut rng = Rng(11);
    let mut db = rng.bytes(24 << 20);
    // A hole of zero pages, as preallocated database files have.
    db[(8 << 20)..(10 << 20)].fill(0);
    let (src, repo) = one_file_source(tmp.path(), "db", &db);
    let first = backup(&repo, &BackupOptions::new(&src)).expect("first");
    let prints = root_node(&repo, &first.snapshot, b"db");
    assert_eq!(prints.prints.len(), prints.content.len() * 20);

    // Rewrite 12 pages of 8 KiB in place, as a database checkpoint does.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(src.join("db"))
        .expect("open");
    for _ in 0..12 {
        let page = rng.below((24 << 20) / 8192) as usize * 8192;
        let bytes = rng.bytes(8192);
        db[page..page + 8192].copy_from_slice(&bytes);
        std::os::unix::fs::FileExt::write_all_at(&file, &bytes, page as u64).expect("pwrite");
    }
    file.flush().expect("flush");
    drop(file);
    let second = backup(&repo, &BackupOptions::new(&src)).expect("second");
    let s = &second.snapshot.summary;
    assert_eq!(s.files_changed, 1);
    assert!(
        s.bytes_fast >= (24 << 20) - 12 * (256 << 10),
        "fast path found {} of {} bytes unchanged",
        s.bytes_fast,
        24 << 20
    );
    assert!(s.bytes_new <= 12 * (256 << 10), "new {}", s.bytes_new);

    // A full pass cuts the same chunks, except where a rewritten page happens to hold an
    // earlier cut point (the fast path keeps the old boundary there): nearly all chunks
    // are shared.
    let mut o = BackupOptions::new(&src);
    o.full_hash = true;
    o.parent = ParentChoice::Id(first.id);
    let full = backup(&repo, &o).expect("full hash");
    assert_eq!(full.snapshot.summary.bytes_fast, 0);
    let fast_ids = root_node(&repo, &second.snapshot, b"db").content;
    let full_ids = root_node(&repo, &full.snapshot, b"db").content;
    let shared = fast_ids.iter().filter(|id| full_ids.contains(id)).count();
    assert!(
        shared + 2 * 12 >= full_ids.len(),
        "{shared} of {} chunks shared",
        full_ids.len()
    );

    assert_restores(&repo, &second.snapshot, tmp.path(), "db", &db);
}

#[test]
fn an_insertion_into_a_large_file_resynchronises() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut rng = Rng(12);
    let mut data = rng.bytes(8 << 20);
    let (src, repo) = one_file_source(tmp.path(), "log", &data);
    backup(&repo, &BackupOptions::new(&src)).expect("first");
    data.splice((3 << 20)..(3 << 20), rng.bytes(1000));
    data.extend(rng.bytes(5000));
    fs::write(src.join("log"), &data).expect("write");
    let second = backup(&repo, &BackupOptions::new(&src)).expect("second");
    let s = &second.snapshot.summary;
    assert!(
        s.bytes_fast >= data.len() as u64 - 4 * (256 << 10),
        "fast path found {} of {} bytes",
        s.bytes_fast,
        data.len()
    );
    let mut o = BackupOptions::new(&src);
    o.parent = ParentChoice::None;
    let full = backup(&repo, &o).expect("no parent");
    assert_eq!(full.snapshot.tree, second.snapshot.tree);
    assert_restores(&repo, &second.snapshot, tmp.path(), "log", &data);
}

/// Eight directories `d0`..`d7` under `root` of `per_dir` files each, of up to `max_len`
/// random bytes.
fn small_files(root: &Path, rng: &mut Rng, per_dir: usize, max_len: u64) {
    for d in 0..8 {
        let dir = root.join(format!("d{d}"));
        fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..per_dir {
            let len = rng.below(max_len) as usize;
            fs::write(dir.join(format!("f{f}")), rng.bytes(len)).expect("write");
        }
    }
}

#[test]
fn restore_reads_each_pack_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    let mut rng = Rng(21);
    // Small enough for one batch (about 700 chunks of the 1,024 of the first): a pack's
    // parts are read once per batch, and the gaps merged into a read may be read again by
    // another batch.
    small_files(&src, &mut rng, 25, 20_000);
    let big = rng.bytes(16 << 20);
    fs::write(src.join("big"), &big).expect("write");
    fs::write(src.join("big-copy"), &big).expect("write");
    let repo = new_repo(tmp.path());
    let report = backup(&repo, &BackupOptions::new(&src)).expect("backup");
    let packs = repo
        .backend()
        .list(podvault_store::FileKind::Pack)
        .expect("list");
    assert!(packs.len() >= 3, "{} packs", packs.len());
    let pack_bytes: u64 = packs.iter().map(|(_, size)| *size).sum();
    let out = tmp.path().join("out");
    let restored = restore(&repo, &report.snapshot, &RestoreOptions::new(&out)).expect("restore");
    assert!(
        restored.pack_bytes_read <= pack_bytes,
        "{} bytes read from {pack_bytes} bytes of packs",
        restored.pack_bytes_read
    );
    // The big file's content twice is restored from one read of each of its chunks.
    assert!(
        restored.pack_reads <= 4 * packs.len() as u64,
        "{} reads for {} packs",
        restored.pack_reads,
        packs.len()
    );
    assert_same_tree(&src, &out);
}

#[test]
fn a_restore_of_more_files_than_a_batch_holds_is_whole() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    let mut rng = Rng(22);
    // 5,600 small files: several batches of files, the first ones short.
    small_files(&src, &mut rng, 700, 2_000);
    let repo = new_repo(tmp.path());
    let report = backup(&repo, &BackupOptions::new(&src)).expect("backup");
    let out = tmp.path().join("out");
    let restored = restore(&repo, &report.snapshot, &RestoreOptions::new(&out)).expect("restore");
    assert_eq!(restored.files, 5_600);
    assert_same_tree(&src, &out);
}
