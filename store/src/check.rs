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

        // Snapshots, and every tree and blob they reference: each distinct tree is read
        // and checked once, however many snapshots and directories share it, so that a
        // check stays linear in the repository's size even for forged trees that list one
        // subtree many times. Damage is then traced to paths, again once per tree and
        // snapshot.
        let mut trees: HashMap<TreeId, TreeFacts> = HashMap::new();
        let mut missing: BTreeMap<BlobId, Vec<String>> = BTreeMap::new();
        let mut missing_in: HashMap<TreeId, Vec<(String, BlobId)>> = HashMap::new();
        let mut roots: Vec<(SnapshotId, TreeId)> = Vec::new();
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
            if snapshot.root.subtree.is_some_and(|t| t != snapshot.tree) {
                report.problems.push(Problem {
                    object: format!("snapshot {name}"),
                    message: "its root's subtree and its tree differ".into(),
                    affected: vec![],
                });
            }
            roots.push((sid, snapshot.tree));
            let mut stack = vec![(snapshot.tree, 0usize)];
            while let Some((tree_id, depth)) = stack.pop() {
                if trees.contains_key(&tree_id) {
                    continue;
                }
                report.trees += 1;
                let (facts, lost) = self.tree_facts(&tree_id, depth, &bad_blobs);
                if !lost.is_empty() {
                    missing_in.insert(tree_id, lost);
                }
                for (_, child) in &facts.dirs {
                    if !trees.contains_key(child) {
                        stack.push((*child, depth + 1));
                    }
                }
                if let Some(message) = &facts.problem {
                    report.problems.push(Problem {
                        object: format!("tree {}", tree_id.to_hex()),
                        message: message.clone(),
                        affected: vec![],
                    });
                }
                trees.insert(tree_id, facts.with_problem_index(report.problems.len()));
            }
        }
        let damaged = damaged_trees(&trees, &missing_in);
        for (sid, root) in roots {
            // Each damaged tree once per snapshot, at the first path it is met.
            let mut seen: HashSet<TreeId> = HashSet::new();
            let mut stack = vec![(root, String::new())];
            while let Some((tree_id, path)) = stack.pop() {
                if !damaged.contains(&tree_id) || !seen.insert(tree_id) {
                    continue;
                }
                let Some(facts) = trees.get(&tree_id) else {
                    continue;
                };
                if let Some(idx) = facts.problem_index {
                    add_affected(
                        &mut report.problems[idx],
                        format!("{}:{path}/", sid.short()),
                    );
                }
                for (file, idx) in &facts.damaged_files {
                    add_affected(
                        &mut report.problems[*idx],
                        format!("{}:{path}/{file}", sid.short()),
                    );
                }
                for (file, blob) in missing_in.get(&tree_id).into_iter().flatten() {
                    let files = missing.entry(*blob).or_default();
                    if files.len() < MAX_AFFECTED {
                        files.push(format!("{}:{path}/{file}", sid.short()));
                    }
                }
                // In name order: the first path named is the first in the listing.
                for (name, child) in facts.dirs.iter().rev() {
                    stack.push((*child, format!("{path}/{name}")));
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

/// Files named per problem, at most; the count of the rest is said.
const MAX_AFFECTED: usize = 100;

fn add_affected(problem: &mut Problem, what: String) {
    let n = problem.affected.len();
    if n < MAX_AFFECTED && problem.affected.last() != Some(&what) {
        problem.affected.push(what);
    } else if n == MAX_AFFECTED {
        problem.affected.push("(and more)".into());
    }
}

/// What the check keeps of one tree: its subdirectories, its files whose content is
/// damaged, and what is wrong with the tree itself.
struct TreeFacts {
    /// Subdirectories: name and listing.
    dirs: Vec<(String, TreeId)>,
    /// Files whose content lies in damaged packs: name and the problem naming the pack.
    damaged_files: Vec<(String, usize)>,
    /// What is wrong with the tree itself (unreadable, or entries a restore refuses).
    problem: Option<String>,
    /// The index of that problem in the report.
    problem_index: Option<usize>,
}

impl TreeFacts {
    /// Records where its problem, if any, was just pushed (`len` problems in the report).
    fn with_problem_index(mut self, len: usize) -> TreeFacts {
        self.problem_index = self.problem.as_ref().map(|_| len - 1);
        self
    }
}

/// The trees that hold damage themselves or below them (through any subdirectory).
fn damaged_trees(
    trees: &HashMap<TreeId, TreeFacts>,
    missing_in: &HashMap<TreeId, Vec<(String, BlobId)>>,
) -> HashSet<TreeId> {
    let mut damaged: HashSet<TreeId> = HashSet::new();
    let mut stack: Vec<TreeId> = trees
        .iter()
        .filter(|(id, f)| {
            f.problem.is_some() || !f.damaged_files.is_empty() || missing_in.contains_key(*id)
        })
        .map(|(id, _)| *id)
        .collect();
    if stack.is_empty() {
        return damaged; // the usual case: nothing to trace
    }
    // Parents of each tree, then every ancestor of a tree with damage of its own.
    let mut parents: HashMap<TreeId, Vec<TreeId>> = HashMap::new();
    for (id, facts) in trees {
        for (_, child) in &facts.dirs {
            parents.entry(*child).or_default().push(*id);
        }
    }
    while let Some(id) = stack.pop() {
        if damaged.insert(id) {
            stack.extend(parents.get(&id).into_iter().flatten().copied());
        }
    }
    damaged
}

impl Repository {
    /// Checks one tree for everything a restore would refuse, and finds its files whose
    /// content is damaged (in `bad_blobs`) or missing (returned).
    fn tree_facts(
        &self,
        tree_id: &TreeId,
        depth: usize,
        bad_blobs: &HashMap<BlobId, usize>,
    ) -> (TreeFacts, Vec<(String, BlobId)>) {
        let mut wrong: Vec<String> = Vec::new();
        let mut facts = TreeFacts {
            dirs: vec![],
            damaged_files: vec![],
            problem: None,
            problem_index: None,
        };
        let mut missing: Vec<(String, BlobId)> = Vec::new();
        let data_limit = self.blob_limit(BlobKind::Data) as u64;
        // One entry decoded at a time: the check holds the listing's bytes, never all of
        // its entries.
        let mut previous: Option<Vec<u8>> = None;
        let mut wrong_count = 0usize;
        let read = self.for_each_entry(tree_id, |entry, plain| {
            let node = &entry.node;
            let mut say = |message: String| {
                wrong_count += 1;
                if wrong.len() < MAX_AFFECTED {
                    wrong.push(message);
                }
            };
            let name = node.display_name();
            if !node.has_safe_name() {
                say(format!("entry {name:?} has a name a restore must refuse"));
                return Ok(());
            }
            if let Some(previous) = &previous
                && *previous >= node.name
            {
                say(if *previous == node.name {
                    format!("entry {name:?} appears twice")
                } else {
                    format!("entry {name:?} is out of order (entries are sorted by name)")
                });
            }
            match node.kind {
                NodeKind::Dir => match node.subtree {
                    None => say(format!("directory {name:?} has no listing")),
                    Some(_) if depth + 1 > crate::limits::MAX_TREE_DEPTH => say(format!(
                        "directory {name:?} is nested deeper than {} levels",
                        crate::limits::MAX_TREE_DEPTH
                    )),
                    Some(t) => match self.locate(&BlobId::from(t)).map(|l| l.kind) {
                        Some(BlobKind::Data) => say(format!(
                            "directory {name:?} names a data blob as its listing"
                        )),
                        _ => facts.dirs.push((name, t)),
                    },
                },
                NodeKind::File => {
                    let mut total = 0u64;
                    let mut complete = true;
                    for blob in entry.chunks(plain) {
                        let blob = &blob;
                        if let Some(&idx) = bad_blobs.get(blob)
                            && facts.damaged_files.last() != Some(&(name.clone(), idx))
                        {
                            facts.damaged_files.push((name.clone(), idx));
                        }
                        match self.locate(blob) {
                            None => {
                                // A chunk listed many times in a row is named once.
                                if missing.last().is_none_or(|(n, b)| *n != name || b != blob) {
                                    missing.push((name.clone(), *blob));
                                }
                                complete = false;
                            }
                            Some(loc) if loc.kind != BlobKind::Data => {
                                say(format!(
                                    "file {name:?} names tree blob {} as content",
                                    blob.short()
                                ));
                                complete = false;
                            }
                            Some(loc) if u64::from(loc.raw_len) > data_limit => {
                                say(format!(
                                    "file {name:?}: chunk {} claims {} bytes, over the \
                                     chunker's maximum {data_limit}",
                                    blob.short(),
                                    loc.raw_len
                                ));
                                complete = false;
                            }
                            Some(loc) => total += u64::from(loc.raw_len),
                        }
                    }
                    if complete && total != node.size {
                        say(format!(
                            "file {name:?}: its chunks hold {total} bytes, its size says {}",
                            node.size
                        ));
                    }
                }
                _ => {}
            }
            previous = Some(entry.node.name);
            Ok(())
        });
        if let Err(e) = read {
            wrong_count += 1;
            wrong.push(e.to_string());
        }
        if wrong_count > wrong.len() {
            wrong.push(format!("and {} more", wrong_count - wrong.len()));
        }
        if !wrong.is_empty() {
            wrong.dedup();
            facts.problem = Some(wrong.join("; "));
        }
        (facts, missing)
    }
}

/// The reason alone, for messages already headed by the pack's name.
fn reason(e: crate::Error) -> String {
    match e {
        crate::Error::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    }
}
