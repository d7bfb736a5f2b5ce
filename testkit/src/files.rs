//! Files for tests: fixtures read from a crate's `tests/fixtures`, and the one comparison of
//! a restored tree with its source.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The bytes of `tests/fixtures/<name>` of the crate at `manifest_dir` (pass
/// `env!("CARGO_MANIFEST_DIR")`).
pub fn fixture_bytes(manifest_dir: &str, name: &str) -> Vec<u8> {
    let path = Path::new(manifest_dir).join("tests/fixtures").join(name);
    fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// `tests/fixtures/<name>` of the crate at `manifest_dir`, parsed as JSON (a Kubernetes
/// object, or a `serde_json::Value`).
pub fn fixture<T: serde::de::DeserializeOwned>(manifest_dir: &str, name: &str) -> T {
    serde_json::from_slice(&fixture_bytes(manifest_dir, name))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// Every entry under `root` (not `root` itself): its path, and its path relative to
/// `root`, sorted by the latter.
pub fn walk(root: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let rel = p.strip_prefix(root).expect("under root").to_path_buf();
            if fs::symlink_metadata(&p).expect("lstat").is_dir() {
                stack.push(p.clone());
            }
            out.push((p, rel));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// The extended attributes of `path` (not followed), sorted by name.
pub fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut list = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(path, &mut list[..]).unwrap_or(0);
    let mut out: Vec<_> = list[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|name| {
            let mut v = vec![0u8; 64 * 1024];
            let len = rustix::fs::lgetxattr(path, name, &mut v[..]).expect("getxattr");
            v.truncate(len);
            (name.to_vec(), v)
        })
        .collect();
    out.sort();
    out
}

/// Asserts that `b` restores `a` exactly: the same entries, and for each (and the roots)
/// kind, mode, owner, modification time, extended attributes, content, holes, hard-link
/// structure, link target and device number.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let ea = walk(a);
    let eb = walk(b);
    let names_a: Vec<_> = ea.iter().map(|e| &e.1).collect();
    let names_b: Vec<_> = eb.iter().map(|e| &e.1).collect();
    assert_eq!(names_a, names_b, "same entries");
    let mut inode_map: HashMap<u64, u64> = HashMap::new();
    let roots = (a.to_path_buf(), b.to_path_buf());
    let pairs = ea.iter().zip(eb.iter()).map(|(x, y)| (&x.0, &y.0));
    for (pa, pb) in std::iter::once((&roots.0, &roots.1)).chain(pairs) {
        let ma = fs::symlink_metadata(pa).expect("lstat a");
        let mb = fs::symlink_metadata(pb).expect("lstat b");
        let what = pa.display();
        let ft = ma.file_type();
        assert_eq!(ft, mb.file_type(), "{what}: type");
        if !ft.is_symlink() {
            assert_eq!(ma.mode() & 0o7777, mb.mode() & 0o7777, "{what}: mode");
        }
        assert_eq!((ma.uid(), ma.gid()), (mb.uid(), mb.gid()), "{what}: owner");
        assert_eq!(
            (ma.mtime(), ma.mtime_nsec()),
            (mb.mtime(), mb.mtime_nsec()),
            "{what}: mtime"
        );
        assert_eq!(xattrs(pa), xattrs(pb), "{what}: xattrs");
        if ft.is_file() {
            assert!(
                fs::read(pa).expect("read a") == fs::read(pb).expect("read b"),
                "{what}: content differs"
            );
            assert!(
                mb.blocks() <= ma.blocks() + 8,
                "{what}: holes kept ({} vs {} blocks)",
                mb.blocks(),
                ma.blocks()
            );
            let mapped = *inode_map.entry(ma.ino()).or_insert(mb.ino());
            assert_eq!(mapped, mb.ino(), "{what}: hard links");
            assert_eq!(ma.nlink(), mb.nlink(), "{what}: link count");
        } else if ft.is_symlink() {
            assert_eq!(
                fs::read_link(pa).expect("a"),
                fs::read_link(pb).expect("b"),
                "{what}: target"
            );
        } else if ft.is_char_device() || ft.is_block_device() {
            assert_eq!(ma.rdev(), mb.rdev(), "{what}: rdev");
        }
    }
}
