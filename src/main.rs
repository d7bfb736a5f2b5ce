//! `podvault`: one binary for every role. This file parses arguments, sets up logging,
//! calls the library and maps the outcome to an exit code:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | error (nothing was saved, or a restore is incomplete) |
//! | 2 | bad command line |
//! | 3 | snapshot saved, but some files could not be read; or restore done but for entries whose record is unusable (they are listed) |

/// `println!` for standard output that never panics: once the reader has gone (`podvault
/// snapshot ls | head`), the rest of the output is dropped quietly and the command goes on
/// to its end; any other failure to write is reported once and makes the exit code 1.
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` with [`outln!`]'s handling of a closed standard output.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics: a closed standard error loses the message, nothing more.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod cluster;
mod commands;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Back up and restore directories (and Kubernetes pod volumes) into encrypted,
/// deduplicated repositories.
#[derive(Parser, Debug)]
#[command(name = "podvault", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Repository location: a directory, or `s3:BUCKET/PREFIX` (also `s3://BUCKET/PREFIX`).
    /// S3 credentials come from the usual AWS variables, profiles and roles.
    #[arg(long, global = true, env = "PODVAULT_REPO", value_name = "LOCATION")]
    repo: Option<String>,
    /// S3 endpoint URL, for stores other than AWS (MinIO, Ceph, Garage); AWS_ENDPOINT_URL
    /// works too.
    #[arg(long, global = true, env = "PODVAULT_S3_ENDPOINT", value_name = "URL")]
    s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, the profile's, or us-east-1).
    #[arg(long, global = true, env = "PODVAULT_S3_REGION", value_name = "REGION")]
    s3_region: Option<String>,
    /// Address buckets by path (`endpoint/bucket/key`), as most self-hosted stores need.
    #[arg(long, global = true, env = "PODVAULT_S3_PATH_STYLE")]
    s3_path_style: bool,
    /// Attempts per S3 request before giving up (retries back off exponentially).
    #[arg(long, global = true, env = "AWS_MAX_ATTEMPTS", default_value_t = podvault_s3::S3Options::default().max_attempts)]
    s3_max_attempts: u32,
    /// Seconds one S3 request may take (plus 2 s per MiB moved) before it is retried.
    #[arg(long, global = true, env = "PODVAULT_S3_TIMEOUT", default_value_t = 60)]
    s3_timeout: u64,
    /// Read the repository password from this file (first line).
    #[arg(
        long,
        global = true,
        env = "PODVAULT_PASSWORD_FILE",
        value_name = "FILE"
    )]
    password_file: Option<PathBuf>,
    /// Print machine-readable JSON on standard output.
    #[arg(long, global = true)]
    json: bool,
    /// More log output (-v info, -vv debug); --log-level and RUST_LOG override.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log format: `text`, or `json` (one object per line, for log collectors).
    #[arg(long, global = true, env = "PODVAULT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Log level: error, warn, info, debug or trace (default: warn for commands, info for
    /// the servers; -v and -vv raise it; RUST_LOG overrides).
    #[arg(long, global = true, env = "PODVAULT_LOG_LEVEL", value_parser = ["error", "warn", "info", "debug", "trace"])]
    log_level: Option<String>,
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, check and manage repositories.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Create, list, show and restore snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Print podvault's CustomResourceDefinitions (YAML, for `kubectl apply -f -`).
    Crds,
    /// Back up pod volumes of a cluster (Backup objects).
    #[command(subcommand)]
    Backup(cluster::BackupCommand),
    /// Restore pod volumes from a backup (Restore objects).
    #[command(subcommand)]
    Restore(cluster::RestoreCommand),
    /// Run the backup and restore controllers (in the cluster).
    Controller(cluster::ControllerArgs),
    /// Run the node agent of one node (in the cluster, one per node).
    NodeAgent(cluster::NodeAgentArgs),
    /// Run the admission webhook that injects the restore helper (in the cluster).
    Webhook(cluster::WebhookArgs),
    /// The restore helper (init container): wait until every volume given is restored.
    /// Exits 0 then; non-zero with the reason if a volume's restore failed or time ran out,
    /// so the pod never starts on half-restored data.
    RestoreWait(RestoreWaitArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell). For bash:
    /// write the output to /etc/bash_completion.d/podvault, or source it from ~/.bashrc.
    Completion(CompletionArgs),
    /// Print podvault's manual page (roff, for `man -l -`), or with `--dir` write one page
    /// per command into a directory (podvault.1, podvault-snapshot-restore.1, ...).
    Man(ManArgs),
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write every command's page into this directory instead.
    #[arg(long, value_name = "DIR")]
    dir: Option<std::path::PathBuf>,
}

/// Whether this binary runs as a kubectl plugin: installed as `kubectl-podvault`, kubectl
/// runs it for `kubectl podvault ...` with the words after `podvault`.
fn invoked_as_kubectl_plugin() -> bool {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == "kubectl-podvault"))
        .unwrap_or(false)
}

/// The command line's definition, named as the user typed it (`podvault`, or `kubectl
/// podvault` as a kubectl plugin) in help, errors, completions and manual pages.
fn cli_command() -> clap::Command {
    let command = Cli::command();
    if invoked_as_kubectl_plugin() {
        command.bin_name("kubectl podvault")
    } else {
        command
    }
}

fn completion(args: CompletionArgs) -> ExitCode {
    let mut command = cli_command();
    let name = command
        .get_bin_name()
        .unwrap_or(command.get_name())
        .to_string();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    out!("{}", String::from_utf8_lossy(&script));
    ExitCode::SUCCESS
}

fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cli_command(), &dir)
                .with_context(|| format!("writing manual pages into {}", dir.display()))?;
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cli_command())
                .render(&mut page)
                .context("rendering the manual page")?;
            out!("{}", String::from_utf8_lossy(&page));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct RestoreWaitArgs {
    /// The Restore's UID (the marker's name).
    #[arg(long, value_name = "UID")]
    restore_uid: String,
    /// The volumes to wait for, mounted at ROOT/<volume> (repeatable, or comma-separated).
    #[arg(
        long = "volume",
        value_name = "NAME",
        value_delimiter = ',',
        required = true
    )]
    volumes: Vec<String>,
    /// Where the volumes are mounted.
    #[arg(long, default_value = "/restores", value_name = "DIR")]
    root: PathBuf,
    /// Read the markers from DIR/<volume>/ (the pod's marker volume, which the webhook
    /// adds) instead of from each volume's `.podvault/`, which a helper running as
    /// another user than the restored volume's owner may not be allowed to see.
    #[arg(long, value_name = "DIR")]
    markers: Option<PathBuf>,
    /// Give up after this many seconds (0: wait for ever; the webhook always gives the
    /// Restore's time limit).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    timeout: u64,
    /// Look every this many milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    poll_ms: u64,
}

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
        output: Option<cluster::Format>,
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

fn parse_percent(text: &str) -> Result<f64, String> {
    let number = text.strip_suffix('%').unwrap_or(text).trim();
    match number.parse::<f64>() {
        Ok(n) if (0.0..=100.0).contains(&n) && n > 0.0 => Ok(n),
        _ => Err(format!(
            "{text:?} is not a percentage above 0 and at most 100"
        )),
    }
}

fn init_tracing(verbose: u8, level: Option<&str>, json: bool) {
    let default = match (level, verbose) {
        (Some(level), _) => level,
        (None, 0) => "warn",
        (None, 1) => "info",
        (None, _) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Keeps glibc from holding on to freed buffers: by default it raises its mmap threshold
/// to the largest block freed so far (up to 32 MiB), after which the multi-megabyte chunk
/// and pack buffers come from heaps it never returns, and keeps one heap per thread. A
/// fixed threshold and two arenas keep peak memory near what is in use (measured: /usr/share
/// copy backup 96 -> 76 MiB peak RSS, no slower).
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; it is called before any other
    // thread exists. A refused setting leaves glibc's defaults, which are correct, only
    // hungrier. SIGPIPE keeps the ignored disposition Rust's runtime gives it: a peer that
    // hangs up (an S3 server, a webhook client) is an error to handle, never a reason to
    // die, and a closed standard output is handled by `outln!`.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::from_arg_matches(&cli_command().get_matches()).unwrap_or_else(|e| e.exit());
    // The roles that run in the cluster log at info by default.
    let server = matches!(
        cli.command,
        Command::Controller(_) | Command::NodeAgent(_) | Command::Webhook(_)
    );
    init_tracing(
        cli.global.verbose.max(u8::from(server)),
        cli.global.log_level.as_deref(),
        cli.global.log_format == "json",
    );
    let result = match cli.command {
        Command::Repo(cmd) => commands::repo(&cli.global, cmd),
        Command::Snapshot(cmd) => commands::snapshot(&cli.global, cmd),
        Command::RestoreWait(args) => commands::restore_wait(args),
        Command::Completion(args) => Ok(completion(args)),
        Command::Man(args) => man(args),
        Command::Backup(command) => cluster::backup(&cli.global, command),
        Command::Restore(command) => cluster::restore(&cli.global, command),
        Command::Controller(args) => cluster::controller(&cli.global, args),
        Command::NodeAgent(args) => cluster::node_agent(&cli.global, args),
        Command::Webhook(args) => cluster::webhook(&cli.global, args),
        Command::Crds => podvault_controller::crd::yaml()
            .map(|y| {
                out!("{y}");
                ExitCode::SUCCESS
            })
            .map_err(anyhow::Error::from),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            errln!("podvault: error: {e:#}");
            ExitCode::from(1)
        }
    };
    if output::stdout_failed() {
        return ExitCode::from(1);
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("podvault").chain(args.iter().copied()))
    }

    #[test]
    fn every_documented_command_parses_as_written() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let commands = podvault_testkit::docs::documented_commands(root);
        assert!(
            commands.len() > 30,
            "found only {} commands",
            commands.len()
        );
        for c in &commands {
            let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
            if let Err(e) = parse(&args) {
                panic!("{}: podvault {}\n{e}", c.place, c.args.join(" "));
            }
        }
    }

    #[test]
    fn cluster_options_go_where_kubectl_users_put_them() {
        for args in [
            &["-n", "backups", "backup", "get"][..],
            &["backup", "-n", "backups", "get"],
            &["backup", "get", "-n", "backups"],
            &["--namespace", "backups", "restore", "describe", "r1"],
            &["repo", "get", "-n", "backups"],
        ] {
            let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(cli.global.cluster.namespace, "backups", "{args:?}");
        }
        let cli = parse(&[
            "backup",
            "describe",
            "nightly",
            "--kubeconfig",
            "/etc/kube.conf",
            "--context",
            "prod",
            "--json",
        ])
        .expect("parses");
        assert_eq!(
            cli.global.cluster.kubeconfig.as_deref(),
            Some(std::path::Path::new("/etc/kube.conf"))
        );
        assert_eq!(cli.global.cluster.context.as_deref(), Some("prod"));
        assert!(cli.global.json);
        let cli =
            parse(&["controller", "--storage", "s3:b/p", "--log-level", "debug"]).expect("parses");
        assert_eq!(cli.global.log_level.as_deref(), Some("debug"));
        assert!(parse(&["webhook", "--log-level", "loud"]).is_err());
    }
}
