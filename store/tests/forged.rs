//! Repositories written by another implementation of FORMAT.md, correctly encrypted but
//! with content podvault never writes: check finds everything a restore would refuse, and
//! stays linear in the distinct trees however often they are shared.

use std::sync::Arc;

use podvault_store::{
    BlobId, BlobKind, CheckOptions, DirBackend, Node, NodeKind, Repository, Summary, Tree, TreeId,
};
use podvault_testkit::{fast_init, forged_snapshot};

fn repo(dir: &std::path::Path) -> Repository {
    Repository::init(Arc::new(DirBackend::new(dir)), b"pw", &fast_init()).expect("init")
}

fn snapshot(repo: &Repository, tree: TreeId) {
    forged_snapshot(repo, tree, Summary::default());
}

fn dir(name: &[u8], tree: TreeId) -> Node {
    let mut n = Node::plain(name, NodeKind::Dir);
    n.subtree = Some(tree);
    n
}

fn check(repo: &Repository) -> podvault_store::CheckReport {
    repo.check(CheckOptions {
        read_data: true,
        ..CheckOptions::default()
    })
    .expect("check")
}

#[test]
fn shared_subtrees_40_levels_deep_with_a_missing_chunk_are_checked_once_each() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = repo(tmp.path());
    // The bottom directory holds a file whose chunk is nowhere; each level above lists the
    // level below twice: 2⁴⁰ paths, 41 distinct trees.
    let mut file = Node::plain(b"lost", NodeKind::File);
    file.content = vec![BlobId::from_bytes([9u8; 32])];
    file.size = 10;
    let (mut tree, _) = repo.save_tree(&Tree { nodes: vec![file] }).expect("tree");
    for _ in 0..40 {
        tree = repo
            .save_tree(&Tree {
                nodes: vec![dir(b"a", tree), dir(b"b", tree)],
            })
            .expect("tree")
            .0;
    }
    snapshot(&repo, tree);
    let report = check(&repo);
    assert_eq!(report.trees, 41);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let p = &report.problems[0];
    assert!(p.object.starts_with("data blob 0909") && p.message.contains("not in the index"));
    // Named at the first path it is met, once.
    assert_eq!(p.affected.len(), 1, "{:?}", p.affected);
    assert!(
        p.affected[0].ends_with(&format!("{}/lost", "/a".repeat(40))),
        "{:?}",
        p.affected
    );
}

#[test]
fn check_reports_every_entry_a_restore_refuses() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = repo(tmp.path());
    let data = b"forged content".to_vec();
    let chunk = repo.blob_id(&data);
    repo.save_blob(BlobKind::Data, chunk, &data).expect("chunk");
    let (empty, _) = repo.save_tree(&Tree::default()).expect("tree");
    let file = |name: &[u8], content: Vec<BlobId>, size: u64| {
        let mut n = Node::plain(name, NodeKind::File);
        n.content = content;
        n.size = size;
        n
    };
    let mut no_listing = Node::plain(b"nolisting", NodeKind::Dir);
    no_listing.subtree = None;
    let cases: Vec<(Vec<Node>, &str)> = vec![
        (vec![file(b"..", vec![], 0)], "a name a restore must refuse"),
        (
            vec![file(b"/etc/passwd", vec![], 0)],
            "a name a restore must refuse",
        ),
        (
            vec![file(b"x", vec![], 0), file(b"x", vec![], 0)],
            "appears twice",
        ),
        (
            vec![file(b"b", vec![], 0), file(b"a", vec![], 0)],
            "out of order",
        ),
        (vec![file(b"short", vec![chunk], 999)], "its size says 999"),
        (
            vec![file(b"treeish", vec![BlobId::from(empty)], 0)],
            "names tree blob",
        ),
        (vec![no_listing], "has no listing"),
        (vec![file(b"fine", vec![chunk], data.len() as u64)], ""),
    ];
    for (nodes, expected) in cases {
        let (tree, _) = repo.save_tree(&Tree { nodes }).expect("tree");
        snapshot(&repo, tree);
        let report = check(&repo);
        let text = format!("{:?}", report.problems);
        if expected.is_empty() {
            assert!(report.is_ok(), "{text}");
        } else {
            assert!(text.contains(expected), "{expected}: {text}");
        }
        // Forget it again so that the next case is checked alone.
        for (name, _) in repo
            .backend()
            .list(podvault_store::FileKind::Snapshot)
            .expect("list")
        {
            let id = podvault_store::SnapshotId::from_hex(&name).expect("id");
            repo.remove_snapshot(&id).expect("forget");
        }
    }
}
