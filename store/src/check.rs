//! `repo check`: structure and references, and with `read_data` every blob's content.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::backend::FileKind;
use crate::error::Result;
use crate::{BlobId, BlobKind, NodeKind, PackId, Repository, SnapshotId, TreeId};

/// What to check.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckOptions {
    /// Read every pack, authenticate and verify every blob.
    pub read_data: bool,
    /// With `read_data`, read only this percentage (0 to 100) of the packs, chosen at
    /// random each run, so that repeated checks cover everything over time.
    pub read_data_subset: Option<f64>,
}

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The damaged or missing thing: "pack 1a2b…", "snapshot …", "index …".
    pub object: String,
    /// What is wrong with it.
    pub message: String,
    /// Files whose content it affects, as "snapshot-id:/path".
    pub affected: Vec<String>,
}

/// The result of a check.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckReport {
    /// Snapshots checked.
    pub snapshots: usize,
    /// Trees checked.
    pub trees: usize,
    /// Packs in the index.
    pub packs: usize,
    /// Blobs in the index.
    pub blobs: usize,
    /// Blobs read and verified (with `read_data`).
    pub blobs_read: usize,
    /// Packs read (with `read_data`).
    pub packs_read: usize,
    /// Packs present but not indexed (left by an interrupted backup; harmless).
    pub unindexed_packs: usize,
    /// Everything wrong.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// Whether the repository is sound.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Repository {
    /// Checks the repository. Damage is reported in the report; `Err` only for failures
    /// that stop the check itself (an unreadable backend).
    pub fn check(&self, options: CheckOptions) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        // In this order, so that work of other processes running meanwhile is no false
        // alarm: the snapshots listed have their index entries written already, and a pack
        // a prune deletes after the index is loaded was marked before.
        let snapshot_names = self.backend().list(FileKind::Snapshot)?;
        let marked = self.load_index(crate::Access::Read)?;
        // Index files decrypt and parse (open() already loaded them; re-read to name each one).
        for (name, _) in self.backend().list(FileKind::Index)? {
            if let Err(e) = self.read_index_file(&name)
                && !matches!(e, crate::Error::NotFound { .. })
            {
                report.problems.push(Problem {
                    object: format!("index {name}"),
                    message: e.to_string(),
                    affected: vec![],
                });
            }
        }
        let present: HashMap<String, u64> =
            self.backend().list(FileKind::Pack)?.into_iter().collect();
        let indexed: Vec<PackId> = self.index_packs();
        report.packs = indexed.len();
        let blobs = self.index_blobs();
        report.blobs = blobs.len();
        let indexed_names: HashSet<String> = indexed.iter().map(|p| p.to_hex()).collect();
        report.unindexed_packs = present
            .keys()
            .filter(|n| !indexed_names.contains(*n))
            .count();

        // Packs the index needs: present, and long enough for every blob it places there.
        let mut pack_end: HashMap<PackId, u64> = HashMap::new();
        let mut by_pack: HashMap<PackId, Vec<BlobId>> = HashMap::new();
        for (id, loc) in &blobs {
            let end = u64::from(loc.offset) + u64::from(loc.sealed_len);
            let e = pack_end.entry(loc.pack).or_default();
            *e = (*e).max(end);
            by_pack.entry(loc.pack).or_default().push(*id);
        }
        let mut bad_blobs: HashMap<BlobId, usize> = HashMap::new();
        for pack in &indexed {
            let name = pack.to_hex();
            let problem = match present.get(&name) {
                None if marked.contains(pack) => None,
                None => Some("is missing".to_string()),
                Some(&size) if size < pack_end.get(pack).copied().unwrap_or(0) => {
                    Some(format!("is truncated ({size} bytes)"))
                }
                _ => None,
            };
            if let Some(message) = problem {
                let idx = report.problems.len();
                for b in by_pack.get(pack).into_iter().flatten() {
                    bad_blobs.insert(*b, idx);
                }
                report.problems.push(Problem {
                    object: format!("pack {name}"),
                    message,
                    affected: vec![],
                });
            }
        }

        if options.read_data {
            let mut seed = [0u8; 8];
            crate::crypto::random_bytes(&mut seed)?;
            let seed = u64::from_le_bytes(seed);
            let share = options.read_data_subset.unwrap_or(100.0).clamp(0.0, 100.0);
            for pack in &indexed {
                let name = pack.to_hex();
                if !present.contains_key(&name) {
                    continue;
                }
                let mut head = [0u8; 8];
                head.copy_from_slice(&pack.as_bytes()[..8]);
                let draw = (u64::from_le_bytes(head) ^ seed) % 1_000_000;
                if (draw as f64) >= share * 10_000.0 {
                    continue;
                }
                report.packs_read += 1;
                let mut damage: Vec<String> = Vec::new();
                let mut damaged_ids: Vec<BlobId> = Vec::new();
                match self.backend().read(FileKind::Pack, &name) {
                    Err(e) => damage.push(reason(e)),
                    Ok(bytes) => {
                        if *blake3::hash(&bytes).as_bytes() != *pack.as_bytes() {
                            damage.push("content does not match its name".into());
                        }
                        if let Err(e) = self.parse_pack(&name, &bytes) {
                            damage.push(reason(e));
                        }
                        for id in by_pack.get(pack).into_iter().flatten() {
                            let Some(loc) = self.locate(id) else { continue };
                            let start = loc.offset as usize;
                            let end = start + loc.sealed_len as usize;
                            report.blobs_read += 1;
                            let res = bytes
                                .get(start..end)
                                .ok_or_else(|| format!("blob {} lies beyond the end", id.short()))
                                .and_then(|s| self.open_blob(id, &loc, s).map_err(reason));
                            if let Err(msg) = res {
                                damage.push(msg);
                                damaged_ids.push(*id);
                            }
                        }
                    }
                }
                if !damage.is_empty() {
                    let idx = report.problems.len();
                    for b in damaged_ids {
                        bad_blobs.insert(b, idx);
                    }
                    damage.dedup();
                    report.problems.push(Problem {
                        object: format!("pack {name}"),
                        message: damage.join("; "),
                        affected: vec![],
                    });
                }
            }
        }

        // Snapshots, and every tree and blob they reference.
        let mut checked_trees: HashSet<TreeId> = HashSet::new();
        let mut missing: BTreeMap<BlobId, Vec<String>> = BTreeMap::new();
        for (name, _) in snapshot_names {
            let snap = match SnapshotId::from_hex(&name)
                .ok_or_else(|| crate::Error::corrupt("snapshot", name.clone(), "bad file name"))
                .and_then(|id| Ok((id, self.load_snapshot(&id)?)))
            {
                Ok(s) => s,
                // Forgotten by another process since the listing.
                Err(crate::Error::NotFound { .. }) => continue,
                Err(e) => {
                    report.problems.push(Problem {
                        object: format!("snapshot {name}"),
                        message: e.to_string(),
                        affected: vec![],
                    });
                    continue;
                }
            };
            report.snapshots += 1;
            let (sid, snapshot) = snap;
            let mut stack = vec![(snapshot.tree, String::new())];
            while let Some((tree_id, path)) = stack.pop() {
                // A tree already checked is skipped unless damage is known, to name files.
                if !checked_trees.insert(tree_id) && bad_blobs.is_empty() && missing.is_empty() {
                    continue;
                }
                report.trees += 1;
                let tree = match self.load_tree(&tree_id) {
                    Ok(t) => t,
                    Err(e) => {
                        report.problems.push(Problem {
                            object: format!("tree {}", tree_id.to_hex()),
                            message: e.to_string(),
                            affected: vec![format!("{}:{}/", sid.short(), path)],
                        });
                        continue;
                    }
                };
                for node in &tree.nodes {
                    let child = format!("{path}/{}", node.display_name());
                    match node.kind {
                        NodeKind::Dir => match node.subtree {
                            Some(t) => stack.push((t, child)),
                            None => report.problems.push(Problem {
                                object: format!("tree {}", tree_id.to_hex()),
                                message: format!("directory {child} has no subtree"),
                                affected: vec![format!("{}:{child}", sid.short())],
                            }),
                        },
                        NodeKind::File => {
                            for blob in &node.content {
                                let file = format!("{}:{child}", sid.short());
                                if let Some(&idx) = bad_blobs.get(blob) {
                                    let affected = &mut report.problems[idx].affected;
                                    if affected.last() != Some(&file) {
                                        affected.push(file);
                                    }
                                } else if self.locate(blob).map(|l| l.kind) != Some(BlobKind::Data)
                                {
                                    let files = missing.entry(*blob).or_default();
                                    if files.last() != Some(&file) {
                                        files.push(file);
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        for (blob, files) in missing {
            report.problems.push(Problem {
                object: format!("data blob {}", blob.to_hex()),
                message: "is referenced but not in the index".into(),
                affected: files,
            });
        }
        Ok(report)
    }
}

/// The reason alone, for messages already headed by the pack's name.
fn reason(e: crate::Error) -> String {
    match e {
        crate::Error::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    }
}
