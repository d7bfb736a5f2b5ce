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
        self.check_index_files(&mut report)?;
        let packs = self.pack_map(&mut report)?;
        let mut bad_blobs = packs.check_present(&marked, &mut report);
        if options.read_data {
            self.read_packs(
                &packs,
                options.read_data_subset,
                &mut bad_blobs,
                &mut report,
            )?;
        }
        let walk = self.check_snapshots(snapshot_names, &bad_blobs, &mut report);
        walk.trace_damage(&mut report);
        Ok(report)
    }

    /// Index files decrypt and parse (open() already loaded them; each is read again to
    /// name it).
    fn check_index_files(&self, report: &mut CheckReport) -> Result<()> {
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
        Ok(())
    }

    /// The packs the index names, those present in the store, and the blobs of each.
    fn pack_map(&self, report: &mut CheckReport) -> Result<PackMap> {
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
        let mut end: HashMap<PackId, u64> = HashMap::new();
        let mut by_pack: HashMap<PackId, Vec<BlobId>> = HashMap::new();
        for (id, loc) in &blobs {
            let blob_end = u64::from(loc.offset) + u64::from(loc.sealed_len);
            let e = end.entry(loc.pack).or_default();
            *e = (*e).max(blob_end);
            by_pack.entry(loc.pack).or_default().push(*id);
        }
        Ok(PackMap {
            indexed,
            present,
            end,
            by_pack,
        })
    }

    /// With `read_data`: reads the packs (all, or a random `subset` percentage), and
    /// verifies each one's name and header and every blob the index places in it.
    fn read_packs(
        &self,
        packs: &PackMap,
        subset: Option<f64>,
        bad_blobs: &mut HashMap<BlobId, usize>,
        report: &mut CheckReport,
    ) -> Result<()> {
        let mut seed = [0u8; 8];
        crate::crypto::random_bytes(&mut seed)?;
        let seed = u64::from_le_bytes(seed);
        let share = subset.unwrap_or(100.0).clamp(0.0, 100.0);
        for pack in &packs.indexed {
            let name = pack.to_hex();
            if !packs.present.contains_key(&name) {
                continue;
            }
            let mut head = [0u8; 8];
            head.copy_from_slice(&pack.as_bytes()[..8]);
            let draw = (u64::from_le_bytes(head) ^ seed) % 1_000_000;
            if (draw as f64) >= share * 10_000.0 {
                continue;
            }
            report.packs_read += 1;
            let blobs = packs.by_pack.get(pack).map_or(&[][..], Vec::as_slice);
            let (mut damage, damaged_ids) = self.read_pack(pack, blobs, report);
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
        Ok(())
    }

    /// Reads one pack whole: what is wrong with it, and the blobs that are damaged.
    fn read_pack(
        &self,
        pack: &PackId,
        blobs: &[BlobId],
        report: &mut CheckReport,
    ) -> (Vec<String>, Vec<BlobId>) {
        let name = pack.to_hex();
        let mut damage: Vec<String> = Vec::new();
        let mut damaged_ids: Vec<BlobId> = Vec::new();
        let bytes = match self.backend().read(FileKind::Pack, &name) {
            Ok(bytes) => bytes,
            Err(e) => return (vec![reason(e)], damaged_ids),
        };
        if *blake3::hash(&bytes).as_bytes() != *pack.as_bytes() {
            damage.push("content does not match its name".into());
        }
        if let Err(e) = self.parse_pack(&name, &bytes) {
            damage.push(reason(e));
        }
        for id in blobs {
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
        (damage, damaged_ids)
    }

    /// Snapshots, and every tree and blob they reference: each distinct tree is read and
    /// checked once, however many snapshots and directories share it, so that a check
    /// stays linear in the repository's size even for forged trees that list one subtree
    /// many times.
    fn check_snapshots(
        &self,
        snapshot_names: Vec<(String, u64)>,
        bad_blobs: &HashMap<BlobId, usize>,
        report: &mut CheckReport,
    ) -> TreeWalk {
        let mut walk = TreeWalk::default();
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
            walk.roots.push((sid, snapshot.tree));
            let mut stack = vec![(snapshot.tree, 0usize)];
            while let Some((tree_id, depth)) = stack.pop() {
                if walk.trees.contains_key(&tree_id) {
                    continue;
                }
                report.trees += 1;
                let (facts, lost) = self.tree_facts(&tree_id, depth, bad_blobs);
                if !lost.is_empty() {
                    walk.missing_in.insert(tree_id, lost);
                }
                for (_, child) in &facts.dirs {
                    if !walk.trees.contains_key(child) {
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
                let facts = facts.with_problem_index(report.problems.len());
                walk.trees.insert(tree_id, facts);
            }
        }
        walk
    }
}

/// The packs as the check sees them.
struct PackMap {
    /// Packs the index names.
    indexed: Vec<PackId>,
    /// Pack files in the store: name and size.
    present: HashMap<String, u64>,
    /// Where the last blob the index places in each pack ends.
    end: HashMap<PackId, u64>,
    /// The blobs the index places in each pack.
    by_pack: HashMap<PackId, Vec<BlobId>>,
}

impl PackMap {
    /// Packs the index needs must be present, and long enough for every blob it places
    /// there (one a prune marked may be gone). Returns the blobs of those that are not,
    /// each with the index of the problem that names its pack.
    fn check_present(
        &self,
        marked: &HashSet<PackId>,
        report: &mut CheckReport,
    ) -> HashMap<BlobId, usize> {
        let mut bad_blobs: HashMap<BlobId, usize> = HashMap::new();
        for pack in &self.indexed {
            let name = pack.to_hex();
            let problem = match self.present.get(&name) {
                None if marked.contains(pack) => None,
                None => Some("is missing".to_string()),
                Some(&size) if size < self.end.get(pack).copied().unwrap_or(0) => {
                    Some(format!("is truncated ({size} bytes)"))
                }
                _ => None,
            };
            if let Some(message) = problem {
                let idx = report.problems.len();
                for b in self.by_pack.get(pack).into_iter().flatten() {
                    bad_blobs.insert(*b, idx);
                }
                report.problems.push(Problem {
                    object: format!("pack {name}"),
                    message,
                    affected: vec![],
                });
            }
        }
        bad_blobs
    }
}

/// Every tree the snapshots reach, checked once.
#[derive(Default)]
struct TreeWalk {
    trees: HashMap<TreeId, TreeFacts>,
    /// The files of each tree whose chunks are not in the index.
    missing_in: HashMap<TreeId, Vec<(String, BlobId)>>,
    /// Each snapshot's root tree.
    roots: Vec<(SnapshotId, TreeId)>,
}

impl TreeWalk {
    /// Traces damage to the paths it affects: each damaged tree once per snapshot, at the
    /// first path it is met; then one problem per missing blob, naming its files.
    fn trace_damage(self, report: &mut CheckReport) {
        let damaged = damaged_trees(&self.trees, &self.missing_in);
        let mut missing: BTreeMap<BlobId, Vec<String>> = BTreeMap::new();
        for (sid, root) in &self.roots {
            let mut seen: HashSet<TreeId> = HashSet::new();
            let mut stack = vec![(*root, String::new())];
            while let Some((tree_id, path)) = stack.pop() {
                if !damaged.contains(&tree_id) || !seen.insert(tree_id) {
                    continue;
                }
                let Some(facts) = self.trees.get(&tree_id) else {
                    continue;
                };
                let at = |file: &str| format!("{}:{path}/{file}", sid.short());
                if let Some(idx) = facts.problem_index {
                    add_affected(&mut report.problems[idx], at(""));
                }
                for (file, idx) in &facts.damaged_files {
                    add_affected(&mut report.problems[*idx], at(file));
                }
                for (file, blob) in self.missing_in.get(&tree_id).into_iter().flatten() {
                    let files = missing.entry(*blob).or_default();
                    if files.len() < MAX_AFFECTED {
                        files.push(at(file));
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

/// What is wrong with one tree: the first [`MAX_AFFECTED`] things said, the rest counted.
#[derive(Default)]
struct Wrongs {
    said: Vec<String>,
    count: usize,
}

impl Wrongs {
    fn say(&mut self, message: String) {
        self.count += 1;
        if self.said.len() < MAX_AFFECTED {
            self.said.push(message);
        }
    }

    /// All of it in one message, or None when nothing is wrong.
    fn into_message(mut self) -> Option<String> {
        if self.count > self.said.len() {
            self.said
                .push(format!("and {} more", self.count - self.said.len()));
        }
        self.said.dedup();
        (!self.said.is_empty()).then(|| self.said.join("; "))
    }
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
        let mut wrong = Wrongs::default();
        let mut facts = TreeFacts {
            dirs: vec![],
            damaged_files: vec![],
            problem: None,
            problem_index: None,
        };
        let mut missing: Vec<(String, BlobId)> = Vec::new();
        // One entry decoded at a time: the check holds the listing's bytes, never all of
        // its entries.
        let mut previous: Option<Vec<u8>> = None;
        let read = self.for_each_entry(tree_id, |entry, plain| {
            let node = &entry.node;
            let name = node.display_name();
            if !node.has_safe_name() {
                wrong.say(format!("entry {name:?} has a name a restore must refuse"));
                return Ok(());
            }
            if let Some(previous) = &previous
                && *previous >= node.name
            {
                wrong.say(if *previous == node.name {
                    format!("entry {name:?} appears twice")
                } else {
                    format!("entry {name:?} is out of order (entries are sorted by name)")
                });
            }
            match node.kind {
                NodeKind::Dir => match node.subtree {
                    None => wrong.say(format!("directory {name:?} has no listing")),
                    Some(_) if depth + 1 > crate::limits::MAX_TREE_DEPTH => wrong.say(format!(
                        "directory {name:?} is nested deeper than {} levels",
                        crate::limits::MAX_TREE_DEPTH
                    )),
                    Some(t) => match self.locate(&BlobId::from(t)).map(|l| l.kind) {
                        Some(BlobKind::Data) => wrong.say(format!(
                            "directory {name:?} names a data blob as its listing"
                        )),
                        _ => facts.dirs.push((name, t)),
                    },
                },
                NodeKind::File => {
                    let file = FileFacts {
                        name: &name,
                        size: node.size,
                        bad_blobs,
                    };
                    self.check_file(
                        &file,
                        entry.chunks(plain),
                        &mut facts,
                        &mut missing,
                        &mut wrong,
                    );
                }
                _ => {}
            }
            previous = Some(entry.node.name);
            Ok(())
        });
        if let Err(e) = read {
            wrong.count += 1;
            wrong.said.push(e.to_string());
        }
        facts.problem = wrong.into_message();
        (facts, missing)
    }

    /// Checks one file's chunks: in the index as data within the chunker's limit, adding
    /// up to its size. Chunks in damaged packs go into `facts`, missing ones into
    /// `missing`.
    fn check_file(
        &self,
        file: &FileFacts<'_>,
        chunks: impl Iterator<Item = BlobId>,
        facts: &mut TreeFacts,
        missing: &mut Vec<(String, BlobId)>,
        wrong: &mut Wrongs,
    ) {
        let name = file.name;
        let data_limit = self.blob_limit(BlobKind::Data) as u64;
        let mut total = 0u64;
        let mut complete = true;
        for blob in chunks {
            if let Some(&idx) = file.bad_blobs.get(&blob)
                && facts.damaged_files.last() != Some(&(name.to_string(), idx))
            {
                facts.damaged_files.push((name.to_string(), idx));
            }
            match self.locate(&blob) {
                None => {
                    // A chunk listed many times in a row is named once.
                    if missing.last().is_none_or(|(n, b)| n != name || *b != blob) {
                        missing.push((name.to_string(), blob));
                    }
                    complete = false;
                }
                Some(loc) if loc.kind != BlobKind::Data => {
                    wrong.say(format!(
                        "file {name:?} names tree blob {} as content",
                        blob.short()
                    ));
                    complete = false;
                }
                Some(loc) if u64::from(loc.raw_len) > data_limit => {
                    wrong.say(format!(
                        "file {name:?}: chunk {} claims {} bytes, over the chunker's maximum \
                         {data_limit}",
                        blob.short(),
                        loc.raw_len
                    ));
                    complete = false;
                }
                Some(loc) => total += u64::from(loc.raw_len),
            }
        }
        if complete && total != file.size {
            wrong.say(format!(
                "file {name:?}: its chunks hold {total} bytes, its size says {}",
                file.size
            ));
        }
    }
}

/// A file entry as [`Repository::check_file`] checks it.
struct FileFacts<'a> {
    name: &'a str,
    size: u64,
    /// Blobs in damaged packs, with the problem naming the pack.
    bad_blobs: &'a HashMap<BlobId, usize>,
}

/// The reason alone, for messages already headed by the pack's name.
fn reason(e: crate::Error) -> String {
    match e {
        crate::Error::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    }
}
