//! Retention rules: which snapshots `snapshot forget` keeps.

use std::collections::{BTreeMap, HashSet};

use chrono::Datelike;
use serde::Serialize;

use crate::{Snapshot, SnapshotId};

/// Which snapshots to keep, within each group of snapshots of the same host and source.
/// A snapshot is kept if any rule keeps it.
#[derive(Clone, Debug, Default)]
pub struct KeepPolicy {
    /// The newest N.
    pub last: usize,
    /// The newest of each of the N latest days that have snapshots.
    pub daily: usize,
    /// The newest of each of the N latest ISO weeks that have snapshots.
    pub weekly: usize,
    /// The newest of each of the N latest months that have snapshots.
    pub monthly: usize,
    /// Every snapshot with one of these tags.
    pub tags: Vec<String>,
}

impl KeepPolicy {
    /// Whether no rule is set (which would forget everything).
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.tags.is_empty()
    }
}

/// One snapshot's fate.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    /// The snapshot.
    pub id: SnapshotId,
    /// Whether it is kept.
    pub keep: bool,
    /// The rules that keep it (`last`, `daily`, `weekly`, `monthly`, `tag`).
    pub reasons: Vec<&'static str>,
}

/// Applies `policy` to `snapshots` (any order); decisions come newest first per group.
pub fn apply_policy(snapshots: &[(SnapshotId, Snapshot)], policy: &KeepPolicy) -> Vec<Decision> {
    let mut groups: BTreeMap<(&str, &str), Vec<&(SnapshotId, Snapshot)>> = BTreeMap::new();
    for s in snapshots {
        groups
            .entry((s.1.host.as_str(), s.1.source.as_str()))
            .or_default()
            .push(s);
    }
    let mut out = Vec::new();
    for (_, mut group) in groups {
        group.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(b.0.cmp(&a.0)));
        let mut days = HashSet::new();
        let mut weeks = HashSet::new();
        let mut months = HashSet::new();
        for (i, (id, snap)) in group.iter().map(|s| (&s.0, &s.1)).enumerate() {
            let mut reasons = Vec::new();
            if i < policy.last {
                reasons.push("last");
            }
            let t = snap.time;
            let bucket = |seen: &mut HashSet<(i32, u32)>, key: (i32, u32), n: usize| {
                if seen.len() < n && seen.insert(key) {
                    return true;
                }
                false
            };
            if bucket(&mut days, (t.year(), t.ordinal()), policy.daily) {
                reasons.push("daily");
            }
            let week = t.iso_week();
            if bucket(&mut weeks, (week.year(), week.week()), policy.weekly) {
                reasons.push("weekly");
            }
            if bucket(&mut months, (t.year(), t.month()), policy.monthly) {
                reasons.push("monthly");
            }
            if snap.tags.iter().any(|tag| policy.tags.contains(tag)) {
                reasons.push("tag");
            }
            out.push(Decision {
                id: *id,
                keep: !reasons.is_empty(),
                reasons,
            });
        }
    }
    out
}

/// Which snapshots a policy looks at: those of this host, this source, with all these
/// tags (an empty field admits every snapshot).
#[derive(Clone, Debug, Default)]
pub struct SnapshotFilter {
    /// Only this host's snapshots.
    pub host: Option<String>,
    /// Only snapshots of this source path.
    pub source: Option<String>,
    /// Only snapshots carrying every one of these tags.
    pub tags: Vec<String>,
}

impl SnapshotFilter {
    /// Whether `snapshot` is one the filter admits.
    pub fn admits(&self, snapshot: &Snapshot) -> bool {
        self.host.as_ref().is_none_or(|h| &snapshot.host == h)
            && self.source.as_ref().is_none_or(|p| &snapshot.source == p)
            && self.tags.iter().all(|t| snapshot.tags.contains(t))
    }
}

/// What to forget: snapshots named by id (prefix), or those a policy does not keep.
#[derive(Clone, Debug)]
pub enum Forget {
    /// These snapshots, by id or unique prefix; their files are not read, so a damaged
    /// snapshot can be forgotten too.
    Ids(Vec<String>),
    /// Among the snapshots `filter` admits, those `policy` does not keep.
    Policy {
        /// Which snapshots the policy looks at.
        filter: SnapshotFilter,
        /// What it keeps.
        policy: KeepPolicy,
    },
}

/// The outcome of a forget, before anything is removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ForgetPlan {
    /// The snapshots to remove.
    pub remove: Vec<Decision>,
    /// The snapshots kept, with the rules that keep them.
    pub keep: Vec<Decision>,
}

impl crate::Repository {
    /// Which snapshots `what` removes and keeps. A policy with no rule is refused: it
    /// would forget every snapshot.
    pub fn plan_forget(&self, what: &Forget) -> crate::Result<ForgetPlan> {
        let mut plan = ForgetPlan::default();
        match what {
            Forget::Ids(references) => {
                for reference in references {
                    plan.remove.push(Decision {
                        id: self.resolve_snapshot(reference)?,
                        keep: false,
                        reasons: Vec::new(),
                    });
                }
            }
            Forget::Policy { filter, policy } => {
                if policy.is_empty() {
                    return Err(crate::Error::InvalidParameter {
                        name: "retention policy",
                        reason: "no --keep-* rule: refusing to forget every snapshot (give \
                                 --keep-last 1 or more, or the ids to forget)"
                            .into(),
                    });
                }
                let chosen: Vec<_> = self
                    .snapshots()?
                    .into_iter()
                    .filter(|(_, s)| filter.admits(s))
                    .collect();
                let (keep, remove) = apply_policy(&chosen, policy)
                    .into_iter()
                    .partition(|d| d.keep);
                plan.keep = keep;
                plan.remove = remove;
            }
        }
        Ok(plan)
    }

    /// Removes the snapshots `plan` names.
    pub fn forget(&self, plan: &ForgetPlan) -> crate::Result<()> {
        for d in &plan.remove {
            self.remove_snapshot(&d.id)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn snap(
        n: u8,
        host: &str,
        y: i32,
        m: u32,
        d: u32,
        h: u32,
        tags: &[&str],
    ) -> (SnapshotId, Snapshot) {
        let time = chrono::Utc
            .with_ymd_and_hms(y, m, d, h, 0, 0)
            .single()
            .expect("valid time");
        let root = crate::Node::plain(b"data", crate::NodeKind::Dir);
        let snapshot = Snapshot {
            time,
            host: host.into(),
            source: "/data".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            parent: None,
            tree: crate::TreeId::from_bytes([0; 32]),
            root,
            username: "u".into(),
            program_version: "test".into(),
            summary: crate::Summary::default(),
        };
        (SnapshotId::from_bytes([n; 32]), snapshot)
    }

    fn kept(decisions: &[Decision]) -> Vec<u8> {
        let mut k: Vec<u8> = decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id.as_bytes()[0])
            .collect();
        k.sort();
        k
    }

    #[test]
    fn rules_keep_the_newest_of_each_period_per_group() {
        let snaps = vec![
            snap(1, "a", 2026, 1, 5, 10, &[]), // Monday, week 2, January
            snap(2, "a", 2026, 1, 5, 18, &[]), // same day, newer
            snap(3, "a", 2026, 1, 12, 9, &[]), // week 3
            snap(4, "a", 2026, 2, 2, 9, &[]),  // February, week 6
            snap(5, "a", 2026, 2, 3, 9, &["keep"]),
            snap(6, "a", 2026, 2, 4, 9, &[]),
            snap(7, "b", 2026, 1, 1, 9, &[]), // another host: its own group
        ];
        let only = |p: KeepPolicy| kept(&apply_policy(&snaps, &p));
        assert_eq!(
            only(KeepPolicy {
                last: 2,
                ..Default::default()
            }),
            vec![5, 6, 7]
        );
        assert_eq!(
            only(KeepPolicy {
                daily: 4,
                ..Default::default()
            }),
            vec![3, 4, 5, 6, 7]
        );
        assert_eq!(
            only(KeepPolicy {
                weekly: 3,
                ..Default::default()
            }),
            vec![2, 3, 6, 7]
        );
        assert_eq!(
            only(KeepPolicy {
                monthly: 1,
                ..Default::default()
            }),
            vec![6, 7]
        );
        assert_eq!(
            only(KeepPolicy {
                monthly: 5,
                ..Default::default()
            }),
            vec![3, 6, 7]
        );
        assert_eq!(
            only(KeepPolicy {
                tags: vec!["keep".into()],
                ..Default::default()
            }),
            vec![5]
        );
        let d = apply_policy(
            &snaps,
            &KeepPolicy {
                last: 1,
                monthly: 1,
                ..Default::default()
            },
        );
        let six = d.iter().find(|d| d.id.as_bytes()[0] == 6).expect("6");
        assert_eq!(six.reasons, vec!["last", "monthly"]);
        assert!(KeepPolicy::default().is_empty());
    }
}
