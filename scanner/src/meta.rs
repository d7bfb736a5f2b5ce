//! File metadata: reading it into a [`Node`] at backup, applying it at restore.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use podvault_store::{Node, NodeKind, Xattr};
use rustix::fs::{AtFlags, CWD, Mode, Timespec, Timestamps, XattrFlags};

/// Caches uid → user name and gid → group name lookups.
#[derive(Default)]
pub(crate) struct Names {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl Names {
    fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                uzers::get_user_by_uid(uid).map(|u| u.name().to_string_lossy().into_owned())
            })
            .clone()
    }

    fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                uzers::get_group_by_gid(gid).map(|g| g.name().to_string_lossy().into_owned())
            })
            .clone()
    }
}

/// The node kind of a file type; `None` for kinds the format cannot hold.
pub(crate) fn kind_of(meta: &Metadata) -> Option<NodeKind> {
    let ft = meta.file_type();
    Some(if ft.is_file() {
        NodeKind::File
    } else if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_char_device() {
        NodeKind::Chardev
    } else if ft.is_block_device() {
        NodeKind::Blockdev
    } else if ft.is_socket() {
        NodeKind::Socket
    } else {
        return None;
    })
}

/// A node from `lstat` data, without content, xattrs, names or link target.
pub(crate) fn node_from_metadata(name: &[u8], meta: &Metadata, kind: NodeKind) -> Node {
    Node {
        name: name.to_vec(),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        user: None,
        group: None,
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec() as u32,
        ctime: meta.ctime(),
        ctime_nsec: meta.ctime_nsec() as u32,
        size: if kind == NodeKind::File {
            meta.size()
        } else {
            0
        },
        inode: meta.ino(),
        device: meta.dev(),
        links: meta.nlink(),
        rdev: if matches!(kind, NodeKind::Chardev | NodeKind::Blockdev) {
            meta.rdev()
        } else {
            0
        },
        content: Vec::new(),
        subtree: None,
        link_target: None,
        xattrs: Vec::new(),
        prints: Vec::new(),
    }
}

/// Fills in what `lstat` does not give: owner names, extended attributes, link target.
pub(crate) fn complete_node(
    node: &mut Node,
    path: &Path,
    names: &mut Names,
) -> std::io::Result<()> {
    node.user = names.user(node.uid);
    node.group = names.group(node.gid);
    node.xattrs = read_xattrs(path)?;
    if node.kind == NodeKind::Symlink {
        let target = std::fs::read_link(path)?;
        node.size = target.as_os_str().len() as u64;
        node.link_target = Some(target.into_os_string().into_vec());
    }
    Ok(())
}

use std::os::unix::ffi::OsStringExt;

fn read_xattrs(path: &Path) -> std::io::Result<Vec<Xattr>> {
    let mut list = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut list[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need = rustix::fs::llistxattr_query(path)?;
                list.resize(need.max(list.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in list[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let mut value = vec![0u8; 256];
        let len = loop {
            match rustix::fs::lgetxattr(path, name, &mut value[..]) {
                Ok(len) => break Some(len),
                Err(rustix::io::Errno::RANGE) => {
                    let need = rustix::fs::lgetxattr_query(path, name)?;
                    value.resize(need.max(value.len() * 2), 0);
                }
                // Removed between list and get: nothing to record.
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(len) = len {
            value.truncate(len);
            out.push(Xattr {
                name: name.to_vec(),
                value,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Applies ownership (when `as_root`), permissions, extended attributes and times, in the
/// order that keeps each: chown first (it clears setuid bits and file capabilities), then
/// chmod, then xattrs (ACLs and capabilities), then times (every change above touches them).
/// Returns a description of each attribute that could not be set.
pub(crate) fn apply(path: &Path, node: &Node, as_root: bool) -> Vec<String> {
    apply_to(Entry::Path(path), node, as_root)
}

/// [`apply`] through a regular file open for writing, without looking its path up again.
pub(crate) fn apply_open(file: &std::fs::File, node: &Node, as_root: bool) -> Vec<String> {
    apply_to(Entry::Open(file.as_fd()), node, as_root)
}

/// What [`apply_to`] changes: an entry named by its path (never following a final symlink),
/// or an open file.
#[derive(Clone, Copy)]
enum Entry<'a> {
    Path(&'a Path),
    Open(BorrowedFd<'a>),
}

fn apply_to(entry: Entry<'_>, node: &Node, as_root: bool) -> Vec<String> {
    let mut failed = Vec::new();
    let is_link = node.kind == NodeKind::Symlink;
    if as_root {
        let uid = Some(rustix::fs::Uid::from_raw(node.uid));
        let gid = Some(rustix::fs::Gid::from_raw(node.gid));
        let owned = match entry {
            Entry::Path(path) => {
                rustix::fs::chownat(CWD, path, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
            }
            Entry::Open(fd) => rustix::fs::fchown(fd, uid, gid),
        };
        if let Err(e) = owned {
            failed.push(format!("owner {}:{}: {e}", node.uid, node.gid));
        }
    }
    if !is_link {
        let mode = Mode::from_raw_mode(node.mode);
        let changed = match entry {
            Entry::Path(path) => rustix::fs::chmodat(CWD, path, mode, AtFlags::empty()),
            Entry::Open(fd) => rustix::fs::fchmod(fd, mode),
        };
        if let Err(e) = changed {
            failed.push(format!("mode {:o}: {e}", node.mode));
        }
    }
    for x in &node.xattrs {
        let (name, value, flags) = (x.name.as_slice(), x.value.as_slice(), XattrFlags::empty());
        let set = match entry {
            Entry::Path(path) => rustix::fs::lsetxattr(path, name, value, flags),
            Entry::Open(fd) => rustix::fs::fsetxattr(fd, name, value, flags),
        };
        if let Err(e) = set {
            // security.* needs privileges and user.* is not allowed on symlinks: report, go on.
            failed.push(format!("xattr {}: {e}", String::from_utf8_lossy(&x.name)));
        }
    }
    let times = Timestamps {
        // Access times are not backed up: reading a directory changes its own, so keeping
        // them would make every snapshot differ. The restored entry keeps its new one.
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: node.mtime,
            tv_nsec: node.mtime_nsec as _,
        },
    };
    let timed = match entry {
        Entry::Path(path) => rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW),
        Entry::Open(fd) => rustix::fs::futimens(fd, &times),
    };
    if let Err(e) = timed {
        failed.push(format!("times: {e}"));
    }
    failed
}

/// Creates a FIFO or device node.
pub(crate) fn make_special(path: &Path, node: &Node) -> std::io::Result<()> {
    use rustix::fs::FileType;
    let ft = match node.kind {
        NodeKind::Fifo => FileType::Fifo,
        NodeKind::Chardev => FileType::CharacterDevice,
        NodeKind::Blockdev => FileType::BlockDevice,
        _ => return Err(std::io::Error::other("not a special file")),
    };
    rustix::fs::mknodat(
        CWD,
        path,
        ft,
        Mode::from_raw_mode(node.mode & 0o777),
        node.rdev,
    )?;
    Ok(())
}

/// The bytes of a path's last component.
pub(crate) fn file_name_bytes(path: &Path) -> &[u8] {
    path.file_name().map(|n| n.as_bytes()).unwrap_or(b"")
}
