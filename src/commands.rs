//! The user's commands: open the repository, call the library, print the result.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use podvault_scanner::{BackupOptions, ParentChoice, Progress, RestoreOptions};
use podvault_store::{
    Backend, CheckOptions, ChunkerParams, InitOptions, KdfParams, Repository, S3Options,
    open_backend,
};

use crate::output::{self, ProgressBar};
use crate::{Global, InitArgs, KeyCommand, RepoCommand, SnapshotCommand};

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
    let options = S3Options {
        endpoint: global.s3_endpoint.clone(),
        region: global.s3_region.clone(),
        path_style: global.s3_path_style,
        max_attempts: global.s3_max_attempts.max(1),
        attempt_timeout: std::time::Duration::from_secs(global.s3_timeout.max(1)),
        ..S3Options::default()
    };
    Ok(open_backend(spec, &options)?)
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

fn open(global: &Global) -> Result<Repository> {
    let backend = backend(global)?;
    // Fail on a missing or foreign location before asking for a password.
    Repository::read_config(backend.as_ref())?;
    let password = password(global, false)?;
    Ok(Repository::open(backend, &password)?)
}

pub fn repo(global: &Global, cmd: RepoCommand) -> Result<ExitCode> {
    match cmd {
        RepoCommand::Init(args) => init(global, args),
        RepoCommand::Check {
            read_data,
            read_data_subset,
        } => {
            let repo = open(global)?;
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
            let new = match new_password_file {
                Some(f) => read_password_file(&f)?,
                None if std::io::stdin().is_terminal() => prompt("new password: ", true)?,
                None => {
                    bail!("no new password: use --new-password-file FILE (no terminal to ask on)")
                }
            };
            let id = repo.add_key(&new)?;
            if global.json {
                output::json(&serde_json::json!({ "key": id.to_hex() }))?;
            } else {
                println!("added key {}", id.short());
            }
            Ok(ExitCode::SUCCESS)
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
        println!(
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
            let mut repo = open(global)?;
            repo.set_zstd_level(args.compression_level)?;
            let mut options = BackupOptions::new(&args.dir);
            options.tags = args.tags;
            options.threads = args.threads;
            options.full_hash = args.full_hash;
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
            let snaps = repo.snapshots()?;
            if global.json {
                let list: Vec<_> = snaps
                    .iter()
                    .map(|(id, s)| serde_json::json!({ "id": id.to_hex(), "snapshot": s }))
                    .collect();
                output::json(&list)?;
            } else {
                output::list(&snaps);
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
            let repo = open(global)?;
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
                println!(
                    "restored snapshot {} into {}: {} files, {} directories, {} other, {}",
                    id.short(),
                    args.target.display(),
                    report.files,
                    report.dirs,
                    report.others,
                    output::bytes(report.bytes)
                );
                if !report.warnings.is_empty() {
                    println!(
                        "{} attributes could not be restored (see warnings above)",
                        report.warnings.len()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
