//! Directory listings near the format's 64 MiB tree limit, as another implementation of
//! FORMAT.md may write them: `snapshot restore` and `repo check` read them one entry at a
//! time, so their memory stays far below what decoding the listings whole would take.
//! One test in this file: the peak RSS measured is that of its own child processes.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use podvault_store::{BlobKind, DirBackend, Node, NodeKind, Repository, Summary, Tree, TreeId};
use podvault_testkit::{Cli, forged_snapshot};

/// Entries of each listing: 60 MiB of CBOR each, near the 64 MiB a tree may hold.
const ENTRIES: usize = 600_000;

/// Runs `command` and returns its exit code, peak resident memory in MiB (the kernel's
/// count, from `wait4`) and standard error.
#[allow(unsafe_code, clippy::zombie_processes)] // reaped by wait4, for its rusage
fn run_measured(mut command: Command) -> (Option<i32>, u64, String) {
    let child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).ok();
        text
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, not yet waited for; both pointers are valid.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (
        code,
        usage.ru_maxrss as u64 / 1024,
        reader.join().expect("stderr"),
    )
}

/// A listing of `ENTRIES` sockets (restore records them and makes nothing) plus `extra`.
fn listing(repo: &Repository, prefix: &str, extra: Vec<Node>) -> TreeId {
    let mut nodes: Vec<Node> = (0..ENTRIES)
        .map(|i| Node::plain(format!("{prefix}{i:07}").as_bytes(), NodeKind::Socket))
        .collect();
    nodes.extend(extra);
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    repo.save_tree(&Tree { nodes }).expect("tree").0
}

fn dir(name: &[u8], tree: TreeId) -> Node {
    let mut n = Node::plain(name, NodeKind::Dir);
    n.mode = 0o755;
    n.subtree = Some(tree);
    n
}

/// Writes the forged repository. Run in a process of its own (this test binary again), so
/// that the test process stays small: a child's peak RSS counts the memory of the process
/// that started it. Returns the ids of the snapshot of nested listings and of the one of a
/// file of many chunks.
fn forge(repo_dir: &Path) -> (String, String) {
    let repo = Repository::open(Arc::new(DirBackend::new(repo_dir)), b"pw").expect("open");
    let content = b"the one file at the bottom\n";
    let chunk = repo.blob_id(content);
    repo.save_blob(BlobKind::Data, chunk, content)
        .expect("chunk");
    let file = |name: &[u8]| {
        let mut file = Node::plain(name, NodeKind::File);
        file.size = content.len() as u64;
        file.content = vec![chunk];
        file
    };
    // Three levels, each listing 600,000 entries, the next level first, and a file last:
    // the walk lets the outer listings go while it is below them, and reads them again to
    // restore the files after.
    let leaf = listing(&repo, "c", vec![file(b"zz-file")]);
    let middle = listing(&repo, "b", vec![dir(b"0-leaf", leaf), file(b"zz-after")]);
    let root = listing(
        &repo,
        "a",
        vec![dir(b"0-middle", middle), file(b"zz-after")],
    );
    let nested = snapshot(&repo, root, 3, 2, 3 * ENTRIES as u64);
    // One file of 1.85 million chunks (a 63 MiB listing, the most a tree can hold), each
    // the same 64 bytes.
    let small = [b'x'; 64];
    let chunk = repo.blob_id(&small);
    repo.save_blob(BlobKind::Data, chunk, &small)
        .expect("chunk");
    let mut file = Node::plain(b"many-chunks", NodeKind::File);
    file.size = (CHUNKS * small.len()) as u64;
    file.content = vec![chunk; CHUNKS];
    let (root, _) = repo.save_tree(&Tree { nodes: vec![file] }).expect("tree");
    let many = snapshot(&repo, root, 1, 0, 0);
    (nested, many)
}

/// References of the file of many chunks: as many as a tree can hold.
const CHUNKS: usize = 1_850_000;

fn snapshot(repo: &Repository, tree: TreeId, files: u64, dirs: u64, others: u64) -> String {
    let summary = Summary {
        files,
        dirs,
        others,
        ..Summary::default()
    };
    forged_snapshot(repo, tree, summary).to_hex()
}

const FORGE_INTO: &str = "PODVAULT_TEST_FORGE_INTO";

#[test]
fn listings_of_tens_of_mib_are_restored_and_checked_entry_by_entry() {
    if let Some(dir) = std::env::var_os(FORGE_INTO) {
        let (nested, many) = forge(Path::new(&dir));
        println!("snapshots {nested} {many}");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let cli = Cli::dir(env!("CARGO_BIN_EXE_podvault"), &tmp.path().join("repo"));
    cli.init();
    let forged = Command::new(std::env::current_exe().expect("this test"))
        .args([
            "--exact",
            "listings_of_tens_of_mib_are_restored_and_checked_entry_by_entry",
            "--nocapture",
        ])
        .env(FORGE_INTO, tmp.path().join("repo"))
        .output()
        .expect("forge");
    let stdout = String::from_utf8_lossy(&forged.stdout);
    let ids: Vec<&str> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("snapshots "))
        .unwrap_or_else(|| panic!("nothing forged: {stdout}"))
        .split(' ')
        .collect();
    let (nested, many) = (ids[0], ids[1]);

    let mut list = cli.cmd();
    list.args(["snapshot", "ls"]);
    let (code, list_mib, stderr) = run_measured(list);
    assert_eq!(code, Some(0), "{stderr}");

    let target = tmp.path().join("restored");
    let mut restore = cli.cmd();
    restore.args(["snapshot", "restore", nested, &path(&target)]);
    let (code, nested_mib, stderr) = run_measured(restore);
    assert_eq!(code, Some(0), "{stderr}");
    for file in ["0-middle/0-leaf/zz-file", "0-middle/zz-after", "zz-after"] {
        assert_eq!(
            std::fs::read(target.join(file)).expect(file),
            b"the one file at the bottom\n"
        );
    }

    let target = tmp.path().join("many");
    let mut restore = cli.cmd();
    restore.args(["snapshot", "restore", many, &path(&target)]);
    let (code, many_mib, stderr) = run_measured(restore);
    assert_eq!(code, Some(0), "{stderr}");
    // Read in pieces: the peak RSS of a child counts this process's own.
    let mut restored = std::fs::File::open(target.join("many-chunks")).expect("the file");
    let (mut piece, mut total) = (vec![0u8; 1 << 16], 0usize);
    loop {
        let n = std::io::Read::read(&mut restored, &mut piece).expect("read");
        if n == 0 {
            break;
        }
        assert!(piece[..n].iter().all(|&b| b == b'x'));
        total += n;
    }
    assert_eq!(total, CHUNKS * 64);

    let mut check = cli.cmd();
    check.args(["repo", "check", "--read-data"]);
    let (code, check_mib, stderr) = run_measured(check);
    assert_eq!(code, Some(0), "{stderr}");
    eprintln!(
        "peak RSS: snapshot ls {list_mib} MiB, restore of the nested listings {nested_mib} MiB, \
         restore of the file of many chunks {many_mib} MiB, check {check_mib} MiB"
    );
    // Decoded whole, each listing takes three to four times its bytes, and the walk held
    // every listing above it; read entry by entry, a file's chunk ids left in the listing,
    // memory is about one listing's bytes.
    for (what, mib, limit) in [
        ("restore of the nested listings", nested_mib, 96),
        ("restore of the file of many chunks", many_mib, 96),
        ("check", check_mib, 96),
    ] {
        assert!(mib < limit, "{what} peaked at {mib} MiB, over {limit}");
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
