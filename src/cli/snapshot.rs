//! `podvault snapshot …`: back up a directory, list, show, restore and forget snapshots.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use podvault_scanner::{BackupOptions, ParentChoice, Progress, RestoreOptions};
use podvault_store::{Access, Forget, KeepPolicy, PruneOptions, SnapshotFilter};

use super::access::{open, open_session};
use crate::Global;
use crate::output::{self, ProgressBar};

/// Exit code when a snapshot was saved but some files could not be read.
const EXIT_PARTIAL: u8 = 3;

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Back up a directory.
    Create(CreateArgs),
    /// List snapshots, oldest first.
    Ls,
    /// Show one snapshot's statistics.
    Show {
        /// Snapshot id (or a unique prefix) or `latest`.
        id: String,
    },
    /// Restore a snapshot into a directory.
    Restore(RestoreArgs),
    /// Remove snapshots by id, or all but those retention rules keep (per host and source).
    Forget(ForgetArgs),
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots to remove (ids or unique prefixes); or give --keep-* rules.
    ids: Vec<String>,
    /// Keep the newest N snapshots.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_last: usize,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_daily: usize,
    /// Keep the newest snapshot of each of the last N weeks that have one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_weekly: usize,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_monthly: usize,
    /// Keep every snapshot with this tag (repeatable).
    #[arg(long = "keep-tag", value_name = "TAG")]
    keep_tags: Vec<String>,
    /// Only consider snapshots with this tag (repeatable: all must match).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Only consider snapshots of this host.
    #[arg(long)]
    host: Option<String>,
    /// Only consider snapshots of this source directory.
    #[arg(long)]
    source: Option<String>,
    /// Show what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Prune afterwards.
    #[arg(long)]
    prune: bool,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The directory to back up.
    dir: PathBuf,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Compare with this snapshot instead of the latest of the same directory and host.
    #[arg(long, value_name = "ID", conflicts_with = "no_parent")]
    parent: Option<String>,
    /// Read every file, comparing with no earlier snapshot.
    #[arg(long)]
    no_parent: bool,
    /// Cut and hash changed files in full: do not take the chunks of a large file's
    /// previous version that a keyed fingerprint finds still in place.
    #[arg(long)]
    full_hash: bool,
    /// Leave out paths that match (repeatable): a pattern without `/` matches a name at
    /// any depth (`*.tmp`), one with `/` the path from the backed-up directory
    /// (`pg_wal/*.tmp`, `data/**/cache`).
    #[arg(long = "exclude", value_name = "GLOB")]
    excludes: Vec<String>,
    /// Host name to record (default: this machine's).
    #[arg(long)]
    host: Option<String>,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// zstd level for new data.
    #[arg(long, default_value_t = podvault_store::limits::DEFAULT_ZSTD_LEVEL, allow_negative_numbers = true)]
    compression_level: i32,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id (or a unique prefix) or `latest`.
    id: String,
    /// Directory to restore into (created if missing; must be empty unless --overwrite).
    target: PathBuf,
    /// Restore into a non-empty directory, replacing entries the snapshot also has.
    #[arg(long)]
    overwrite: bool,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// `podvault snapshot …`.
// Long: one arm per subcommand, each only parsing its arguments into a library call and
// printing the result; the work is in the libraries.
pub fn snapshot(global: &Global, cmd: SnapshotCommand) -> Result<ExitCode> {
    match cmd {
        SnapshotCommand::Create(args) => {
            let (mut repo, _session) = open_session(global, "backup", Access::Write)?;
            repo.set_zstd_level(args.compression_level)?;
            let mut options = BackupOptions::new(&args.dir);
            options.tags = args.tags;
            options.threads = args.threads;
            options.full_hash = args.full_hash;
            options.exclude = args.excludes;
            if let Some(h) = args.host {
                options.host = h;
            }
            options.parent = if args.no_parent {
                ParentChoice::None
            } else if let Some(p) = args.parent {
                ParentChoice::Id(repo.find_snapshot(&p)?.0)
            } else {
                ParentChoice::Latest
            };
            let bar = (!global.json && std::io::stderr().is_terminal()).then(|| {
                let progress = Arc::new(Progress::default());
                options.progress = Some(progress.clone());
                ProgressBar::start(progress, "backing up")
            });
            let result = podvault_scanner::backup(&repo, &options);
            if let Some(bar) = bar {
                bar.finish();
            }
            let report = result.with_context(|| format!("backing up {}", args.dir.display()))?;
            if global.json {
                output::json(&serde_json::json!({
                    "id": report.id.to_hex(),
                    "snapshot": report.snapshot,
                    "unreadable": report.unreadable,
                }))?;
            } else {
                output::created(&report);
            }
            Ok(if report.unreadable.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_PARTIAL)
            })
        }
        SnapshotCommand::Ls => {
            let repo = open(global)?;
            let (snaps, damaged) = repo.snapshots_and_damaged()?;
            if global.json {
                let mut list: Vec<_> = snaps
                    .iter()
                    .map(|(id, s)| serde_json::json!({ "id": id.to_hex(), "snapshot": s }))
                    .collect();
                list.extend(
                    damaged
                        .iter()
                        .map(|d| serde_json::json!({ "id": d.id.to_hex(), "damaged": d.reason })),
                );
                output::json(&list)?;
            } else {
                output::list(&snaps, &damaged);
            }
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Show { id } => {
            let repo = open(global)?;
            let (id, snap) = repo.find_snapshot(&id)?;
            if global.json {
                output::json(&serde_json::json!({
                    "id": id.to_hex(),
                    "snapshot": snap,
                    "dedup_ratio": output::dedup_ratio(&snap),
                }))?;
            } else {
                output::show(&id, &snap);
            }
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Restore(args) => {
            let (repo, _session) = open_session(global, "restore", Access::Read)?;
            let (id, snap) = repo.find_snapshot(&args.id)?;
            let mut options = RestoreOptions::new(&args.target);
            options.overwrite = args.overwrite;
            options.threads = args.threads;
            let bar = (!global.json && std::io::stderr().is_terminal()).then(|| {
                let progress = Arc::new(Progress::default());
                options.progress = Some(progress.clone());
                ProgressBar::start(progress, "restoring")
            });
            let result = podvault_scanner::restore(&repo, &snap, &options);
            if let Some(bar) = bar {
                bar.finish();
            }
            let report = result.with_context(|| {
                format!(
                    "restoring snapshot {} into {}",
                    id.short(),
                    args.target.display()
                )
            })?;
            for w in &report.warnings {
                tracing::warn!("{w}");
            }
            if global.json {
                output::json(&serde_json::json!({ "id": id.to_hex(), "restore": report }))?;
            } else {
                outln!(
                    "restored snapshot {} into {}: {} files, {} directories, {} other, {}",
                    id.short(),
                    args.target.display(),
                    report.files,
                    report.dirs,
                    report.others,
                    output::bytes(report.bytes)
                );
                if !report.warnings.is_empty() {
                    outln!(
                        "{} attributes could not be restored (see warnings above)",
                        report.warnings.len()
                    );
                }
                if !report.refused.is_empty() {
                    outln!(
                        "{} entries were not restored: the snapshot's record of them is unusable",
                        report.refused.len()
                    );
                    for r in &report.refused {
                        outln!("  {r}");
                    }
                }
            }
            // As for files a backup could not read: the rest is there, some is missing.
            Ok(if report.refused.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        SnapshotCommand::Forget(args) => forget(global, args),
    }
}

fn forget(global: &Global, args: ForgetArgs) -> Result<ExitCode> {
    let repo = open(global)?;
    let policy = KeepPolicy {
        last: args.keep_last,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        tags: args.keep_tags,
    };
    let what = if args.ids.is_empty() {
        Forget::Policy {
            filter: SnapshotFilter {
                host: args.host,
                source: args.source,
                tags: args.tags,
            },
            policy,
        }
    } else if policy.is_empty() {
        Forget::Ids(args.ids)
    } else {
        bail!("give snapshot ids or --keep-* rules, not both");
    };
    let plan = repo.plan_forget(&what)?;
    if !args.dry_run {
        repo.forget(&plan)?;
    }
    let doomed: Vec<_> = plan.remove.iter().map(|d| (d.id, &d.reasons)).collect();
    let kept: Vec<_> = plan.keep.iter().map(|d| (d.id, &d.reasons)).collect();
    if global.json {
        output::json(&serde_json::json!({
            "dry_run": args.dry_run,
            "removed": doomed.iter().map(|(id, _)| id.to_hex()).collect::<Vec<_>>(),
            "kept": kept.iter().map(|(id, r)| serde_json::json!({"id": id.to_hex(), "reasons": r})).collect::<Vec<_>>(),
        }))?;
    } else {
        for (id, reasons) in &kept {
            outln!("keep   {}  ({})", id.short(), reasons.join(", "));
        }
        let verb = if args.dry_run {
            "would remove"
        } else {
            "remove"
        };
        for (id, _) in &doomed {
            outln!("{verb} {}", id.short());
        }
        outln!(
            "{} snapshots kept, {} {}",
            kept.len(),
            doomed.len(),
            if args.dry_run {
                "would be removed"
            } else {
                "removed"
            }
        );
    }
    if args.prune && !args.dry_run {
        drop(repo);
        let (repo, session) = open_session(global, "prune", Access::Write)?;
        let report = repo.prune(&session, PruneOptions::default())?;
        output::print_prune(global.json, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}
