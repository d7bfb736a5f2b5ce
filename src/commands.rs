//! The user's commands: open the repository, call the library, print the result.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use podvault_s3::{S3Options, open_backend};
use podvault_scanner::{BackupOptions, ParentChoice, Progress, RestoreOptions};
use podvault_store::{
    Access, Backend, CheckOptions, ChunkerParams, InitOptions, KdfParams, KeepPolicy, PruneOptions,
    PruneReport, Repository, Session, apply_policy,
};

use crate::output::{self, ProgressBar};
use crate::{
    ForgetArgs, Global, InitArgs, KeyCommand, RepairCommand, RepoCommand, SnapshotCommand,
};

/// Exit code when a snapshot was saved but some files could not be read.
const EXIT_PARTIAL: u8 = 3;

fn backend(global: &Global) -> Result<Arc<dyn Backend>> {
    let spec = global
        .repo
        .as_deref()
        .ok_or_else(|| anyhow!("no repository given: use --repo LOCATION or set PODVAULT_REPO"))?;
    if spec.is_empty() {
        bail!("the repository location is empty");
    }
    Ok(open_backend(spec, &s3_options(global))?)
}

/// The S3 client settings of the global flags.
pub fn s3_options(global: &Global) -> S3Options {
    S3Options {
        endpoint: global.s3_endpoint.clone(),
        region: global.s3_region.clone(),
        path_style: global.s3_path_style,
        max_attempts: global.s3_max_attempts.max(1),
        attempt_timeout: std::time::Duration::from_secs(global.s3_timeout.max(1)),
        ..S3Options::default()
    }
}

/// Reads the first line of a password file.
fn read_password_file(path: &Path) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading password file {}", path.display()))?;
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        bail!("password file {} is empty", path.display());
    }
    Ok(line.to_vec())
}

/// The password from --password-file, PODVAULT_PASSWORD, or a prompt on a terminal.
fn password(global: &Global, confirm: bool) -> Result<Vec<u8>> {
    if let Some(file) = &global.password_file {
        return read_password_file(file);
    }
    if let Ok(p) = std::env::var("PODVAULT_PASSWORD") {
        if p.is_empty() {
            bail!("PODVAULT_PASSWORD is set but empty");
        }
        return Ok(p.into_bytes());
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "no password: use --password-file FILE or set PODVAULT_PASSWORD (no terminal to ask on)"
        );
    }
    prompt("repository password: ", confirm)
}

fn prompt(text: &str, confirm: bool) -> Result<Vec<u8>> {
    let p = rpassword::prompt_password(text).context("reading the password from the terminal")?;
    if p.is_empty() {
        bail!("empty password");
    }
    if confirm && rpassword::prompt_password("again: ").context("reading the password")? != p {
        bail!("the passwords differ");
    }
    Ok(p.into_bytes())
}

/// The backend and the password, checking first that the location holds a repository
/// (so a missing or foreign location fails before a password is asked for).
fn located(global: &Global) -> Result<(Arc<dyn Backend>, Vec<u8>)> {
    let backend = backend(global)?;
    Repository::read_config(backend.as_ref())?;
    let password = password(global, false)?;
    Ok((backend, password))
}

fn open(global: &Global) -> Result<Repository> {
    let (backend, password) = located(global)?;
    Ok(Repository::open(backend, &password)?)
}

/// Opens the repository for a command that reads or writes data while others may run
/// (see FORMAT.md, "Concurrency"); the session lasts as long as the returned value.
fn open_session(global: &Global, command: &str, access: Access) -> Result<(Repository, Session)> {
    let (backend, password) = located(global)?;
    Ok(Repository::open_session(
        backend, &password, command, access,
    )?)
}

/// Opens the repository in a session without loading its index (for check and repair,
/// which read it themselves).
fn open_bare(global: &Global, command: &str) -> Result<(Repository, Session)> {
    let (backend, password) = located(global)?;
    Ok(Repository::open_session_bare(backend, &password, command)?)
}

fn print_prune(global: &Global, report: &PruneReport) -> Result<()> {
    if global.json {
        return output::json(report);
    }
    let verb = if report.dry_run { "would " } else { "" };
    outln!(
        "{} snapshots use the data; {} packs examined: {} unused, {} mostly unused",
        report.snapshots,
        report.packs,
        report.packs_unused,
        report.packs_repacked
    );
    outln!(
        "{verb}repack {} blobs ({}); {verb}mark {} packs for deletion",
        report.blobs_repacked,
        output::bytes(report.bytes_repacked),
        report.packs_marked
    );
    if !report.dry_run {
        outln!(
            "deleted {} packs, freeing {}; kept {} marked packs still in use; rewrote {} index files",
            report.packs_deleted,
            output::bytes(report.bytes_freed),
            report.packs_rescued,
            report.index_files_rewritten
        );
    }
    if report.partials_removed > 0 {
        outln!(
            "{}removed {} temporary files of writes interrupted over a day ago ({})",
            if report.dry_run { "would have " } else { "" },
            report.partials_removed,
            output::bytes(report.partial_bytes)
        );
    }
    if report.packs_running > 0 {
        outln!(
            "left {} packs of running backups alone (no snapshot names them yet)",
            report.packs_running
        );
    }
    if !report.waiting_for.is_empty() {
        outln!(
            "some deletions wait for {} running sessions to end ({}); run prune again later",
            report.waiting_for.len(),
            report.waiting_for.join(", ")
        );
    }
    for name in &report.unreadable_sessions {
        outln!(
            "session {name} cannot be read (damaged, or written by a newer podvault) and counts \
             as running: if no process uses it, remove it with `podvault repo sessions --remove {}`",
            &name[..name.len().min(8)]
        );
    }
    Ok(())
}

fn new_password(file: Option<std::path::PathBuf>) -> Result<Vec<u8>> {
    match file {
        Some(f) => read_password_file(&f),
        None if std::io::stdin().is_terminal() => prompt("new password: ", true),
        None => bail!("no new password: use --new-password-file FILE (no terminal to ask on)"),
    }
}

pub fn repo(global: &Global, cmd: RepoCommand) -> Result<ExitCode> {
    match cmd {
        RepoCommand::Init(args) => init(global, args),
        RepoCommand::Get { name, output } => crate::cluster::repo_get(global, name, output),
        RepoCommand::Check {
            read_data,
            read_data_subset,
        } => {
            // check loads the index itself, after listing snapshots.
            let (repo, _session) = open_bare(global, "check")?;
            let report = repo.check(CheckOptions {
                read_data,
                read_data_subset,
            })?;
            if global.json {
                output::json(&report)?;
            } else {
                output::check(&report);
            }
            Ok(if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        RepoCommand::Key(KeyCommand::Add { new_password_file }) => {
            let repo = open(global)?;
            let id = repo.add_key(&new_password(new_password_file)?)?;
            if global.json {
                output::json(&serde_json::json!({ "key": id.to_hex() }))?;
            } else {
                outln!("added key {}", id.short());
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCommand::Sessions { remove } => {
            let repo = open(global)?;
            if !remove.is_empty() {
                let mut removed = Vec::new();
                for reference in &remove {
                    removed.push(repo.remove_session(reference)?);
                }
                if global.json {
                    output::json(&serde_json::json!({ "removed": removed }))?;
                } else {
                    for name in &removed {
                        outln!("removed session {}", &name[..name.len().min(8)]);
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            let sessions = repo.sessions()?;
            let state = |info: &Option<podvault_store::SessionInfo>| match info {
                None => "unreadable",
                Some(i) if i.is_live() => "live",
                Some(_) => "stale",
            };
            if global.json {
                let listed: Vec<serde_json::Value> = sessions
                    .iter()
                    .map(|(name, info)| {
                        serde_json::json!({ "name": name, "state": state(info), "session": info })
                    })
                    .collect();
                output::json(&listed)?;
            } else {
                outln!(
                    "{:<10} {:<11} {:<10} {:<20} {:>8} {:<20} refreshed",
                    "session",
                    "state",
                    "command",
                    "host",
                    "pid",
                    "started"
                );
                let time = "%Y-%m-%d %H:%M:%S";
                for (name, info) in &sessions {
                    let short = &name[..name.len().min(8)];
                    match info {
                        Some(i) => outln!(
                            "{short:<10} {:<11} {:<10} {:<20} {:>8} {:<20} {}",
                            state(info),
                            i.command,
                            i.host,
                            i.pid,
                            i.started.format(time),
                            i.refreshed.format(time)
                        ),
                        None => outln!("{short:<10} {}", state(info)),
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCommand::Key(KeyCommand::List) => {
            let repo = open(global)?;
            let keys = repo.keys()?;
            if global.json {
                output::json(&keys)?;
            } else {
                outln!(" {:<10} {:<20} {:<20} user", "id", "created", "host");
                for k in &keys {
                    outln!(
                        "{}{:<10} {:<20} {:<20} {}",
                        if k.current { "*" } else { " " },
                        &k.id[..8],
                        k.created.format("%Y-%m-%d %H:%M:%S"),
                        k.host,
                        k.username
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCommand::Key(KeyCommand::Remove { id }) => {
            let repo = open(global)?;
            let removed = repo.remove_key(&id)?;
            if global.json {
                output::json(&serde_json::json!({ "removed": removed }))?;
            } else {
                outln!("removed key {}", &removed[..8]);
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCommand::Key(KeyCommand::Passwd { new_password_file }) => {
            let repo = open(global)?;
            let id = repo.change_password(&new_password(new_password_file)?)?;
            if global.json {
                output::json(&serde_json::json!({ "key": id.to_hex() }))?;
            } else {
                outln!(
                    "password changed: key {} replaces {}",
                    id.short(),
                    repo.key_id().short()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCommand::Prune {
            repack_below,
            dry_run,
        } => {
            let (repo, session) = open_session(global, "prune", Access::Write)?;
            let report = repo.prune(
                &session,
                PruneOptions {
                    repack_below: repack_below / 100.0,
                    dry_run,
                },
            )?;
            print_prune(global, &report)?;
            Ok(ExitCode::SUCCESS)
        }
        RepoCommand::Repair(RepairCommand::Index) => {
            let (repo, _session) = open_bare(global, "repair")?;
            let report = repo.repair_index()?;
            if global.json {
                output::json(&report)?;
            } else {
                outln!(
                    "indexed {} blobs of {} packs in {} new index files (replacing {})",
                    report.blobs,
                    report.packs,
                    report.index_files_written,
                    report.index_files_removed
                );
                for d in &report.damaged {
                    outln!("damaged, left out: {d}");
                }
            }
            Ok(if report.damaged.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn init(global: &Global, args: InitArgs) -> Result<ExitCode> {
    let backend = backend(global)?;
    let options = InitOptions {
        chunker: ChunkerParams {
            min_bytes: args.chunk_min,
            avg_bytes: args.chunk_avg,
            max_bytes: args.chunk_max,
        },
        kdf: KdfParams {
            memory_kib: args.kdf_memory_kib,
            iterations: args.kdf_iterations,
            parallelism: args.kdf_lanes,
            ..KdfParams::default()
        },
    };
    options.chunker.validate()?;
    let password = password(global, true)?;
    let repo = Repository::init(backend.clone(), &password, &options)?;
    if global.json {
        output::json(&serde_json::json!({
            "location": backend.location(),
            "id": repo.config().id,
            "config": repo.config(),
        }))?;
    } else {
        outln!(
            "created repository {} at {}",
            &repo.config().id[..8],
            backend.location()
        );
    }
    Ok(ExitCode::SUCCESS)
}

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
    let all = repo.snapshots()?;
    let mut doomed: Vec<(podvault_store::SnapshotId, Vec<&'static str>)> = Vec::new();
    let mut kept = Vec::new();
    if !args.ids.is_empty() {
        if !policy.is_empty() {
            bail!("give snapshot ids or --keep-* rules, not both");
        }
        // By id without reading them: a damaged snapshot can be forgotten too.
        for reference in &args.ids {
            doomed.push((repo.resolve_snapshot(reference)?, vec![]));
        }
    } else {
        if policy.is_empty() {
            bail!(
                "no snapshot ids and no --keep-* rule: refusing to forget every snapshot \
                 (give --keep-last 1 or more, or the ids to forget)"
            );
        }
        let chosen: Vec<_> = all
            .into_iter()
            .filter(|(_, s)| args.host.as_ref().is_none_or(|h| &s.host == h))
            .filter(|(_, s)| args.source.as_ref().is_none_or(|p| &s.source == p))
            .filter(|(_, s)| args.tags.iter().all(|t| s.tags.contains(t)))
            .collect();
        for d in apply_policy(&chosen, &policy) {
            if d.keep {
                kept.push((d.id, d.reasons));
            } else {
                doomed.push((d.id, d.reasons));
            }
        }
    }
    if !args.dry_run {
        for (id, _) in &doomed {
            repo.remove_snapshot(id)?;
        }
    }
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
        print_prune(global, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn restore_wait(args: crate::RestoreWaitArgs) -> Result<ExitCode> {
    use podvault_controller::agent::{MARKER_DIR, WaitOutcome, wait_for_marker_dirs};
    let volumes: Vec<std::path::PathBuf> = args.volumes.iter().map(|v| args.root.join(v)).collect();
    for (name, dir) in args.volumes.iter().zip(&volumes) {
        if !dir.is_dir() {
            bail!(
                "volume {name} is not mounted at {}: the helper needs each volume it waits for",
                dir.display()
            );
        }
    }
    let marker_dirs: Vec<std::path::PathBuf> = match &args.markers {
        Some(markers) => {
            if !markers.is_dir() {
                bail!("the marker volume is not mounted at {}", markers.display());
            }
            args.volumes.iter().map(|v| markers.join(v)).collect()
        }
        None => volumes.iter().map(|v| v.join(MARKER_DIR)).collect(),
    };
    let timeout = if args.timeout == 0 {
        std::time::Duration::MAX
    } else {
        std::time::Duration::from_secs(args.timeout)
    };
    errln!(
        "podvault restore-wait: waiting for restore {} of {}",
        args.restore_uid,
        args.volumes.join(", ")
    );
    let outcome = wait_for_marker_dirs(
        &marker_dirs,
        &args.restore_uid,
        std::time::Duration::from_millis(args.poll_ms.max(10)),
        timeout,
        || None,
    );
    match outcome {
        WaitOutcome::Restored => {
            errln!("podvault restore-wait: every volume is restored");
            Ok(ExitCode::SUCCESS)
        }
        WaitOutcome::Failed(reason) => bail!("a volume's restore failed: {reason}"),
        WaitOutcome::TimedOut(missing) => bail!(
            "still not restored after {} s: {}",
            args.timeout,
            missing
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
