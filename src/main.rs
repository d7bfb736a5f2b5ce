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

mod cli;
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
    cluster: cli::cluster::ClusterArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, check and manage repositories.
    #[command(subcommand)]
    Repo(cli::repo::RepoCommand),
    /// Create, list, show and restore snapshots.
    #[command(subcommand)]
    Snapshot(cli::snapshot::SnapshotCommand),
    /// Print podvault's CustomResourceDefinitions (YAML, for `kubectl apply -f -`).
    Crds,
    /// Back up pod volumes of a cluster (Backup objects).
    #[command(subcommand)]
    Backup(cli::cluster::BackupCommand),
    /// Restore pod volumes from a backup (Restore objects).
    #[command(subcommand)]
    Restore(cli::cluster::RestoreCommand),
    /// Run the backup and restore controllers (in the cluster).
    Controller(cli::server::ControllerArgs),
    /// Run the node agent of one node (in the cluster, one per node).
    NodeAgent(cli::server::NodeAgentArgs),
    /// Run the admission webhook that injects the restore helper (in the cluster).
    Webhook(cli::server::WebhookArgs),
    /// The restore helper (init container): wait until every volume given is restored.
    /// Exits 0 then; non-zero with the reason if a volume's restore failed or time ran out,
    /// so the pod never starts on half-restored data.
    RestoreWait(cli::server::RestoreWaitArgs),
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
    // hungrier.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    // SIGPIPE keeps the ignored disposition Rust's runtime gives it (nothing here resets
    // it): a peer that hangs up (an S3 server, a webhook client, the API server) is an
    // error to handle, never a reason to die, and a closed standard output is handled by
    // `outln!`.
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
        Command::Repo(cmd) => cli::repo::repo(&cli.global, cmd),
        Command::Snapshot(cmd) => cli::snapshot::snapshot(&cli.global, cmd),
        Command::RestoreWait(args) => cli::server::restore_wait(args),
        Command::Completion(args) => Ok(completion(args)),
        Command::Man(args) => man(args),
        Command::Backup(command) => cli::cluster::backup(&cli.global, command),
        Command::Restore(command) => cli::cluster::restore(&cli.global, command),
        Command::Controller(args) => cli::server::controller(&cli.global, args),
        Command::NodeAgent(args) => cli::server::node_agent(&cli.global, args),
        Command::Webhook(args) => cli::server::webhook(&cli.global, args),
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
