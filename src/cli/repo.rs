//! `podvault repo …`: create, check, prune and repair a repository, and manage its keys.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use podvault_store::{
    Access, CheckOptions, ChunkerParams, InitOptions, KdfParams, PruneOptions, Repository,
};

use super::access::{backend, open, open_bare, open_session, password, prompt, read_password_file};
use crate::Global;
use crate::output;

#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// Create a new repository with a random master key wrapped by the password.
    Init(InitArgs),
    /// List the cluster's BackupRepositories (one per namespace) and their state, with
    /// when each was last pruned; or show one (its name, or the namespace it serves).
    Get {
        name: Option<String>,
        /// Output format (default: a table; --json is `-o json`).
        #[arg(long, short, value_enum)]
        output: Option<super::cluster::Format>,
    },
    /// Check the repository's structure and references (and with --read-data, every blob).
    Check {
        /// Read, authenticate and verify every blob of every pack.
        #[arg(long)]
        read_data: bool,
        /// With --read-data, read only this share of the packs, chosen at random each run
        /// (`10%` or `10`).
        #[arg(long, value_name = "N%", value_parser = parse_percent, requires = "read_data")]
        read_data_subset: Option<f64>,
    },
    /// Manage the passwords that open the repository.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Remove data no snapshot uses, repacking packs that are mostly garbage. Safe while
    /// backups run: packs are deleted only once no session that might use them remains.
    Prune {
        /// Repack packs of which less than this percentage is in use.
        #[arg(long, value_name = "N%", value_parser = parse_percent, default_value = "50")]
        repack_below: f64,
        /// Report what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Repair damaged repository metadata.
    #[command(subcommand)]
    Repair(RepairCommand),
    /// List the sessions (processes working on the repository) and whether each is live;
    /// remove those of processes that are gone so they no longer hold back a prune.
    Sessions {
        /// Remove this session (its name or a unique prefix of at least 4 hex digits) if it
        /// is not live (repeatable).
        #[arg(long, value_name = "ID")]
        remove: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RepairCommand {
    /// Rebuild the index from the packs' own headers, replacing every index file.
    Index,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List the keys (the one used now is starred).
    List,
    /// Remove a key by id (a unique prefix); not the last one, nor the one used now.
    Remove {
        /// Key id or a unique prefix of at least 4 hex digits.
        id: String,
    },
    /// Change the password: add a key for the new password, remove the one used now.
    Passwd {
        /// Read the new password from this file (else prompt).
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// Add a password that opens the same repository.
    Add {
        /// Read the new password from this file (else prompt).
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Argon2id memory in KiB for the password key.
    #[arg(long, default_value_t = podvault_store::KdfParams::default().memory_kib)]
    kdf_memory_kib: u32,
    /// Argon2id passes.
    #[arg(long, default_value_t = podvault_store::KdfParams::default().iterations)]
    kdf_iterations: u32,
    /// Argon2id lanes, computed in parallel on the machine's cores.
    #[arg(long, default_value_t = podvault_store::KdfParams::default().parallelism)]
    kdf_lanes: u32,
    /// Smallest chunk in bytes.
    #[arg(long, default_value_t = podvault_store::limits::DEFAULT_MIN_CHUNK_BYTES)]
    chunk_min: u32,
    /// Average chunk in bytes (a power of two).
    #[arg(long, default_value_t = podvault_store::limits::DEFAULT_AVG_CHUNK_BYTES)]
    chunk_avg: u32,
    /// Largest chunk in bytes.
    #[arg(long, default_value_t = podvault_store::limits::DEFAULT_MAX_CHUNK_BYTES)]
    chunk_max: u32,
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let number = text.strip_suffix('%').unwrap_or(text).trim();
    match number.parse::<f64>() {
        Ok(n) if (0.0..=100.0).contains(&n) && n > 0.0 => Ok(n),
        _ => Err(format!(
            "{text:?} is not a percentage above 0 and at most 100"
        )),
    }
}

fn new_password(file: Option<std::path::PathBuf>) -> Result<Vec<u8>> {
    match file {
        Some(f) => read_password_file(&f),
        None if std::io::stdin().is_terminal() => prompt("new password: ", true),
        None => bail!("no new password: use --new-password-file FILE (no terminal to ask on)"),
    }
}

/// `podvault repo …`.
// Long: one arm per subcommand, each only parsing its arguments into a library call and
// printing the result; the work is in the libraries.
pub fn repo(global: &Global, cmd: RepoCommand) -> Result<ExitCode> {
    match cmd {
        RepoCommand::Init(args) => init(global, args),
        RepoCommand::Get { name, output } => super::cluster::repo_get(global, name, output),
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
            output::print_prune(global.json, &report)?;
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
