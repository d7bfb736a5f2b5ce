//! The commands that talk to a cluster: `backup …`, `restore …` and `repo get` create,
//! list, describe and delete podvault's objects, as kubectl would, with the kubeconfig
//! found as kubectl finds it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::runtime;
use clap::{Args, Subcommand, ValueEnum};
use kube::api::{Api, DeleteParams, ListParams, Patch};
use kube::{Client, ResourceExt};
use podvault_controller::cluster::{BACKUP_LABEL, RESTORE_LABEL};
use podvault_controller::crd::{
    Backup, BackupRepository, BackupSpec, Phase, PodVolumeBackup, PodVolumeRestore, Restore,
    RestoreSpec,
};
use podvault_controller::write::{creating, updating};
use serde_json::json;

use crate::Global;

/// The command line's field manager: what a user set through it, the API server says so.
const CLI: &str = "podvault-cli";
use crate::output::bytes;

/// Which cluster, and where podvault is installed in it. Given anywhere on the command
/// line, as kubectl users put them (`podvault -n podvault backup get`, `podvault backup get
/// -n podvault`).
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// The namespace podvault is installed in (its objects and key Secrets live there).
    #[arg(
        long,
        short = 'n',
        env = "PODVAULT_NAMESPACE",
        default_value = "podvault",
        global = true
    )]
    pub namespace: String,
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the pod's
    /// service account).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
}

/// How objects are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table.
    #[default]
    Table,
    /// JSON, as kubectl prints it.
    Json,
    /// YAML, as kubectl prints it.
    Yaml,
}

/// `get [NAME]`: one object, or all of them.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// The object's name (default: list them all).
    pub name: Option<String>,
    /// Output format (default: a table; --json is `-o json`).
    #[arg(long, short, value_enum)]
    pub output: Option<Format>,
}

/// `describe NAME`: one object with its volumes.
#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// The object's name.
    pub name: String,
    /// Output format (default: words; --json is `-o json`).
    #[arg(long, short, value_enum)]
    pub output: Option<Format>,
}

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Create a Backup.
    Create(BackupCreateArgs),
    /// List Backups, or show one.
    Get(GetArgs),
    /// Show a Backup with each volume's phase, progress and errors (`-o json|yaml`: the
    /// Backup and its PodVolumeBackups as a List).
    Describe(DescribeArgs),
    /// Delete a Backup: its snapshots are forgotten first (prune frees the data).
    Delete { name: String },
    /// Stop a running Backup; its volumes end Canceled.
    Cancel { name: String },
}

#[derive(Args, Debug)]
pub struct BackupCreateArgs {
    name: String,
    /// Namespaces to back up (default: all).
    #[arg(long, value_delimiter = ',')]
    include_namespaces: Vec<String>,
    /// Namespaces to leave out.
    #[arg(long, value_delimiter = ',')]
    exclude_namespaces: Vec<String>,
    /// Only pods with these labels (kubectl's grammar): `app=db,tier!=cache,env in (prod,staging),release,!canary`.
    #[arg(long, short = 'l')]
    selector: Option<String>,
    /// Back up every volume unless a pod opts it out.
    #[arg(long)]
    default_volumes_to_fs_backup: bool,
    /// How long to keep it (Go duration: `720h`).
    #[arg(long, value_parser = podvault_api::duration::typed)]
    ttl: Option<podvault_api::duration::Duration>,
    /// Time limit of each volume (Go duration; default 4h).
    #[arg(long, value_parser = podvault_api::duration::typed_positive)]
    timeout: Option<podvault_api::duration::Duration>,
    /// Wait until it finishes; exit non-zero unless it Completed.
    #[arg(long)]
    wait: bool,
}

#[derive(Subcommand, Debug)]
pub enum RestoreCommand {
    /// Create a Restore from a backup.
    Create(RestoreCreateArgs),
    /// List Restores, or show one.
    Get(GetArgs),
    /// Show a Restore with each volume's phase and errors (`-o json|yaml`: the Restore and
    /// its PodVolumeRestores as a List).
    Describe(DescribeArgs),
}

#[derive(Args, Debug)]
pub struct RestoreCreateArgs {
    /// The Restore's name (default: `<backup>-<time>`).
    name: Option<String>,
    /// The backup to restore.
    #[arg(long)]
    from_backup: String,
    /// Restore namespace A into B: `A:B,C:D`.
    #[arg(long, value_delimiter = ',')]
    namespace_mappings: Vec<String>,
    /// Only these volumes: `namespace/pod/volume` or `namespace/claim`, with the
    /// namespace as backed up (before --namespace-mappings).
    #[arg(long, value_delimiter = ',', value_name = "NS/POD/VOLUME|NS/CLAIM")]
    include_volumes: Vec<String>,
    /// Also create the backed-up pods no controller owns.
    #[arg(long)]
    restore_pods: bool,
    /// How long each volume may wait for its pod to appear (Go duration; default 4h).
    #[arg(long, value_parser = podvault_api::duration::typed_positive)]
    timeout: Option<podvault_api::duration::Duration>,
    /// Wait until it finishes; exit non-zero unless it Completed.
    #[arg(long)]
    wait: bool,
}

/// The innermost cause of an error: the one that says what actually went wrong, where
/// each outer layer only repeats it.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// A client of the cluster `cluster` names: its kubeconfig and context when given, else
/// found as kubectl finds it (KUBECONFIG, ~/.kube/config) or the pod's service account.
/// A failure is said once, with where podvault looked.
pub async fn client(cluster: &ClusterArgs) -> Result<Client> {
    let options = kube::config::KubeConfigOptions {
        context: cluster.context.clone(),
        ..Default::default()
    };
    let config = match (&cluster.kubeconfig, &cluster.context) {
        (Some(path), _) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                anyhow::anyhow!("reading kubeconfig {}: {}", path.display(), innermost(&e))
            })?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| anyhow::anyhow!("kubeconfig {}: {}", path.display(), innermost(&e)))?
        }
        (None, Some(context)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| anyhow::anyhow!("kubeconfig context {context}: {}", innermost(&e)))?,
        (None, None) => kube::Config::infer().await.map_err(|e| {
            let kubeconfig =
                std::env::var("KUBECONFIG").unwrap_or_else(|_| "~/.kube/config".to_string());
            anyhow::anyhow!(
                "connecting to the cluster: no usable kubeconfig ({kubeconfig}: {}), and not \
                 running in a pod (no service account); give --kubeconfig or set KUBECONFIG",
                innermost(&e)
            )
        })?,
    };
    Client::try_from(config)
        .map_err(|e| anyhow::anyhow!("connecting to the cluster: {}", innermost(&e)))
}

/// Reads the object `name` (or lists them all) and prints it as `output` asks; returns
/// the objects when a table is wanted, for the caller to draw.
async fn get_and_print<K>(
    api: &Api<K>,
    kind: &str,
    name: Option<&str>,
    output: Format,
) -> Result<Option<Vec<K>>>
where
    K: Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let items = match name {
        Some(n) => vec![api.get(n).await.with_context(|| format!("{kind} {n}"))?],
        None => api.list(&ListParams::default()).await?.items,
    };
    let shown = match (name, items.as_slice()) {
        (Some(_), [one]) => print(output, one)?,
        _ => print(
            output,
            &json!({"apiVersion": "v1", "kind": "List", "items": items}),
        )?,
    };
    Ok((!shown).then_some(items))
}

/// The output format a command was asked for: `-o`, else `--json`, else a table (or
/// words).
fn format(global: &Global, output: Option<Format>) -> Format {
    output.unwrap_or(if global.json {
        Format::Json
    } else {
        Format::Table
    })
}

fn print<T: serde::Serialize>(format: Format, value: &T) -> Result<bool> {
    match format {
        Format::Table => Ok(false),
        Format::Json => {
            outln!("{}", serde_json::to_string_pretty(value)?);
            Ok(true)
        }
        Format::Yaml => {
            out!("{}", serde_yaml::to_string(value)?);
            Ok(true)
        }
    }
}

/// An object and the per-volume objects that belong to it, as one kubectl-style List.
fn described<A: serde::Serialize, V: serde::Serialize>(
    object: &A,
    volumes: &[V],
) -> Result<serde_json::Value> {
    let mut items = vec![serde_json::to_value(object)?];
    for v in volumes {
        items.push(serde_json::to_value(v)?);
    }
    Ok(json!({"apiVersion": "v1", "kind": "List", "items": items}))
}

fn phase_of(p: Option<Phase>) -> String {
    format!("{:?}", p.unwrap_or_default())
}

fn when(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    t.map(|t| t.0.to_string()).unwrap_or_else(|| "-".into())
}

fn exit_for(phase: Phase) -> ExitCode {
    if phase == Phase::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `podvault backup …`.
// Long: one arm per subcommand, each only parsing its arguments into a library call and
// printing the result; the work is in the libraries.
pub fn backup(global: &Global, cmd: BackupCommand) -> Result<ExitCode> {
    // Bad input is refused before the cluster is asked anything.
    let mut selector = None;
    if let BackupCommand::Create(a) = &cmd {
        selector = a
            .selector
            .as_deref()
            .map(podvault_api::selector::parse)
            .transpose()?;
    }
    let output = match &cmd {
        BackupCommand::Get(GetArgs { output, .. })
        | BackupCommand::Describe(DescribeArgs { output, .. }) => format(global, *output),
        _ => format(global, None),
    };
    runtime()?.block_on(async move {
        let client = client(&global.cluster).await?;
        let api: Api<Backup> = Api::namespaced(client.clone(), &global.cluster.namespace);
        match cmd {
            BackupCommand::Create(a) => {
                let spec = BackupSpec {
                    included_namespaces: a.include_namespaces,
                    excluded_namespaces: a.exclude_namespaces,
                    label_selector: selector,
                    default_volumes_to_fs_backup: a.default_volumes_to_fs_backup,
                    ttl: a.ttl,
                    timeout: a.timeout,
                    cancel: false,
                };
                let created = api
                    .create(&creating(CLI), &Backup::new(&a.name, spec))
                    .await
                    .with_context(|| format!("creating backup {}", a.name))?;
                if !a.wait {
                    if !print(output, &created)? {
                        outln!(
                            "Backup {} created. Run `podvault backup describe {}` for its progress.",
                            a.name,
                            a.name
                        );
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                if output == Format::Table {
                    outln!("Backup {} created; waiting for it to finish.", a.name);
                }
                let phase =
                    wait_for(|| async { Ok(api.get(&a.name).await?.status.map(|s| s.phase)) })
                        .await?;
                if !print(output, &api.get(&a.name).await?)? {
                    outln!("Backup {} {:?}.", a.name, phase);
                }
                Ok(exit_for(phase))
            }
            BackupCommand::Get(GetArgs { name, .. }) => {
                if let Some(items) = get_and_print(&api, "backup", name.as_deref(), output).await? {
                    outln!(
                        "{:<28} {:<16} {:>8} {:>7} {:>12} {:<26} {:<26}",
                        "NAME",
                        "PHASE",
                        "VOLUMES",
                        "FAILED",
                        "BYTES",
                        "STARTED",
                        "EXPIRES"
                    );
                    for b in &items {
                        let s = b.status.clone().unwrap_or_default();
                        outln!(
                            "{:<28} {:<16} {:>8} {:>7} {:>12} {:<26} {:<26}",
                            b.name_any(),
                            phase_of(Some(s.phase)),
                            s.volumes.total,
                            s.volumes.failed,
                            bytes(s.bytes_done),
                            when(s.start_timestamp.as_ref()),
                            when(s.expiration.as_ref())
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            BackupCommand::Describe(DescribeArgs { name, .. }) => {
                let b = api
                    .get(&name)
                    .await
                    .with_context(|| format!("backup {name}"))?;
                let pvbs: Api<PodVolumeBackup> =
                    Api::namespaced(client.clone(), &global.cluster.namespace);
                let volumes = pvbs
                    .list(&ListParams::default().labels(&format!("{BACKUP_LABEL}={name}")))
                    .await?
                    .items;
                if !print(output, &described(&b, &volumes)?)? {
                    out!("{}", describe_backup(&b, &volumes));
                }
                Ok(ExitCode::SUCCESS)
            }
            BackupCommand::Delete { name } => {
                api.delete(&name, &DeleteParams::default())
                    .await
                    .with_context(|| format!("deleting backup {name}"))?;
                if !print(output, &json!({"name": name, "deleting": true}))? {
                    outln!(
                        "Backup {name} is being deleted: its snapshots are forgotten first; \
                         `podvault repo prune` frees their data."
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            BackupCommand::Cancel { name } => {
                let patched = api
                    .patch(
                        &name,
                        &updating(CLI),
                        &Patch::Merge(json!({"spec": {"cancel": true}})),
                    )
                    .await
                    .with_context(|| format!("canceling backup {name}"))?;
                if !print(output, &patched)? {
                    outln!(
                        "Backup {name}: cancel requested; running volumes stop within seconds."
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

async fn wait_for<F, Fut>(mut phase: F) -> Result<Phase>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<Phase>, kube::Error>>,
{
    loop {
        if let Some(p) = phase().await?
            && p.is_final()
        {
            return Ok(p);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The text of `backup describe`, like `velero backup describe --details`.
// Long: the sections of the text in the order they are printed.
pub fn describe_backup(b: &Backup, volumes: &[PodVolumeBackup]) -> String {
    use std::fmt::Write;
    let s = b.status.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "Name:         {}", b.name_any());
    let _ = writeln!(out, "Phase:        {:?}", s.phase);
    if let Some(m) = &s.message {
        let _ = writeln!(out, "Message:      {m}");
    }
    let namespaces = if b.spec.included_namespaces.is_empty() {
        "*".to_string()
    } else {
        b.spec.included_namespaces.join(", ")
    };
    let _ = writeln!(out, "Namespaces:   {namespaces}");
    if !b.spec.excluded_namespaces.is_empty() {
        let _ = writeln!(
            out,
            "Excluded:     {}",
            b.spec.excluded_namespaces.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "Default volumes to FS backup: {}",
        b.spec.default_volumes_to_fs_backup
    );
    let _ = writeln!(out, "Started:      {}", when(s.start_timestamp.as_ref()));
    let _ = writeln!(
        out,
        "Completed:    {}",
        when(s.completion_timestamp.as_ref())
    );
    let _ = writeln!(out, "Expires:      {}", when(s.expiration.as_ref()));
    let _ = writeln!(
        out,
        "Volumes:      {} total, {} completed, {} failed, {} canceled, {} skipped",
        s.volumes.total,
        s.volumes.completed,
        s.volumes.failed,
        s.volumes.canceled,
        s.volumes.skipped
    );
    let _ = writeln!(
        out,
        "Bytes:        {} of {} done, {} new",
        bytes(s.bytes_done),
        bytes(s.total_bytes),
        bytes(s.bytes_new)
    );
    let _ = writeln!(out, "\nPod volume backups:");
    let mut sorted: Vec<&PodVolumeBackup> = volumes.iter().collect();
    sorted.sort_by_key(|v| {
        (
            v.spec.pod.namespace.clone(),
            v.spec.pod.name.clone(),
            v.spec.volume.clone(),
        )
    });
    for v in sorted {
        let st = v.status.clone().unwrap_or_default();
        let _ = writeln!(
            out,
            "  {}/{} {}: {:?} on {} ({} of {}, {} new){}{}",
            v.spec.pod.namespace,
            v.spec.pod.name,
            v.spec.volume,
            st.phase,
            v.spec.node,
            bytes(st.progress.bytes_done),
            bytes(st.progress.total_bytes),
            bytes(st.progress.bytes_new),
            st.snapshot_id
                .as_deref()
                .map(|id| format!(", snapshot {}", &id[..id.len().min(12)]))
                .unwrap_or_default(),
            st.message.map(|m| format!(": {m}")).unwrap_or_default()
        );
        for p in &st.failed_paths {
            let _ = writeln!(out, "      not read: {p}");
        }
    }
    if !s.skipped.is_empty() {
        let _ = writeln!(out, "\nSkipped volumes:");
        for k in &s.skipped {
            let _ = writeln!(
                out,
                "  {}/{} {}: {}",
                k.namespace, k.pod, k.volume, k.reason
            );
        }
    }
    out
}

/// `podvault restore …`.
// Long: one arm per subcommand, each only parsing its arguments into a library call and
// printing the result; the work is in the libraries.
pub fn restore(global: &Global, cmd: RestoreCommand) -> Result<ExitCode> {
    // Bad input is refused before the cluster is asked anything.
    if let RestoreCommand::Create(a) = &cmd {
        for entry in &a.include_volumes {
            podvault_controller::restores::check_included_volume(entry)
                .map_err(|e| anyhow::anyhow!("--include-volumes: {e}"))?;
        }
    }
    let output = match &cmd {
        RestoreCommand::Get(GetArgs { output, .. })
        | RestoreCommand::Describe(DescribeArgs { output, .. }) => format(global, *output),
        RestoreCommand::Create(_) => format(global, None),
    };
    runtime()?.block_on(async move {
        let client = client(&global.cluster).await?;
        let api: Api<Restore> = Api::namespaced(client.clone(), &global.cluster.namespace);
        match cmd {
            RestoreCommand::Create(a) => {
                let mut mapping = BTreeMap::new();
                for m in &a.namespace_mappings {
                    let Some((from, to)) = m.split_once(':') else {
                        bail!("--namespace-mappings: {m:?} is not `FROM:TO`");
                    };
                    mapping.insert(from.trim().to_string(), to.trim().to_string());
                }
                let name = a.name.clone().unwrap_or_else(|| {
                    format!(
                        "{}-{}",
                        a.from_backup,
                        chrono::Utc::now().format("%Y%m%d%H%M%S")
                    )
                });
                let spec = RestoreSpec {
                    backup_name: a.from_backup.clone(),
                    namespace_mapping: mapping,
                    included_volumes: a.include_volumes.clone(),
                    restore_pods: a.restore_pods,
                    timeout: a.timeout,
                };
                let created = api
                    .create(&creating(CLI), &Restore::new(&name, spec))
                    .await
                    .with_context(|| format!("creating restore {name}"))?;
                if !a.wait {
                    if !print(output, &created)? {
                        outln!(
                            "Restore {name} created. Pods that mount its volumes wait in their \
                             restore-wait init container until their data is back."
                        );
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                if output == Format::Table {
                    outln!(
                        "Restore {name} created. Pods that mount its volumes wait in their \
                         restore-wait init container until their data is back."
                    );
                }
                let phase =
                    wait_for(|| async { Ok(api.get(&name).await?.status.map(|s| s.phase)) })
                        .await?;
                if !print(output, &api.get(&name).await?)? {
                    outln!("Restore {name} {phase:?}.");
                }
                Ok(exit_for(phase))
            }
            RestoreCommand::Get(GetArgs { name, .. }) => {
                if let Some(items) = get_and_print(&api, "restore", name.as_deref(), output).await?
                {
                    outln!(
                        "{:<32} {:<24} {:<16} {:>8} {:>7}",
                        "NAME",
                        "BACKUP",
                        "PHASE",
                        "VOLUMES",
                        "FAILED"
                    );
                    for r in &items {
                        let s = r.status.clone().unwrap_or_default();
                        outln!(
                            "{:<32} {:<24} {:<16} {:>8} {:>7}",
                            r.name_any(),
                            r.spec.backup_name,
                            phase_of(Some(s.phase)),
                            s.volumes.total,
                            s.volumes.failed
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            RestoreCommand::Describe(DescribeArgs { name, .. }) => {
                let r = api
                    .get(&name)
                    .await
                    .with_context(|| format!("restore {name}"))?;
                let pvrs: Api<PodVolumeRestore> =
                    Api::namespaced(client.clone(), &global.cluster.namespace);
                let volumes = pvrs
                    .list(&ListParams::default().labels(&format!("{RESTORE_LABEL}={name}")))
                    .await?
                    .items;
                if print(output, &described(&r, &volumes)?)? {
                    return Ok(ExitCode::SUCCESS);
                }
                let s = r.status.clone().unwrap_or_default();
                outln!("Name:         {name}");
                outln!("Backup:       {}", r.spec.backup_name);
                outln!("Phase:        {:?}", s.phase);
                if let Some(m) = &s.message {
                    outln!("Message:      {m}");
                }
                outln!("Started:      {}", when(s.start_timestamp.as_ref()));
                outln!("Completed:    {}", when(s.completion_timestamp.as_ref()));
                outln!("\nPod volume restores:");
                for v in &volumes {
                    let st = v.status.clone().unwrap_or_default();
                    let pod = v
                        .spec
                        .pod
                        .as_ref()
                        .map(|p| p.name.clone())
                        .unwrap_or_else(|| "(waiting for its pod)".into());
                    outln!(
                        "  {}/{} {}: {:?}{}",
                        v.spec.target_namespace,
                        pod,
                        v.spec.volume,
                        st.phase,
                        st.message.map(|m| format!(": {m}")).unwrap_or_default()
                    );
                    for p in &st.failed_paths {
                        outln!("      not restored as saved: {p}");
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// `podvault repo get [NAME]`: the BackupRepositories of the cluster, or one (by name or
/// by the namespace it serves), with when each was last pruned.
pub fn repo_get(global: &Global, name: Option<String>, output: Option<Format>) -> Result<ExitCode> {
    let output = format(global, output);
    runtime()?.block_on(async move {
        let client = client(&global.cluster).await?;
        let api: Api<BackupRepository> = Api::namespaced(client, &global.cluster.namespace);
        let mut items = api.list(&ListParams::default()).await?.items;
        if let Some(name) = &name {
            items.retain(|r| r.name_any() == *name || r.spec.volume_namespace == *name);
            if items.is_empty() {
                bail!(
                    "no BackupRepository {name} in namespace {} (by name or by the namespace \
                     it serves); `podvault repo get` lists them",
                    global.cluster.namespace
                );
            }
        }
        let shown = match (&name, items.as_slice()) {
            (Some(_), [one]) => print(output, one)?,
            _ => print(
                output,
                &json!({"apiVersion": "v1", "kind": "List", "items": items}),
            )?,
        };
        if !shown {
            outln!(
                "{:<28} {:<20} {:<10} {:<26} LOCATION",
                "NAME",
                "NAMESPACE",
                "PHASE",
                "LAST MAINTENANCE"
            );
            for r in &items {
                let s = r.status.clone().unwrap_or_default();
                outln!(
                    "{:<28} {:<20} {:<10} {:<26} {}{}",
                    r.name_any(),
                    r.spec.volume_namespace,
                    format!("{:?}", s.phase),
                    when(s.last_maintenance.as_ref()),
                    r.spec.location,
                    s.message.map(|m| format!("  ({m})")).unwrap_or_default()
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_shows_each_volume_with_progress_errors_and_skips() {
        let b: Backup = serde_json::from_value(json!({
            "apiVersion": "podvault.io/v1alpha1", "kind": "Backup",
            "metadata": {"name": "nightly"},
            "spec": {"includedNamespaces": ["shop"]},
            "status": {"phase": "PartiallyFailed", "message": "shop/db-0 volume logs: boom",
                       "volumes": {"total": 2, "completed": 1, "failed": 1, "skipped": 1},
                       "totalBytes": 3072, "bytesDone": 3072, "bytesNew": 1024,
                       "skipped": [{"namespace": "shop", "pod": "db-0", "volume": "token",
                                    "reason": "service account token"}]}
        }))
        .expect("backup");
        let pvb = |volume: &str, status: serde_json::Value| -> PodVolumeBackup {
            serde_json::from_value(json!({
                "apiVersion": "podvault.io/v1alpha1", "kind": "PodVolumeBackup",
                "metadata": {"name": volume},
                "spec": {"backupName": "nightly", "node": "worker-1",
                         "pod": {"namespace": "shop", "name": "db-0", "uid": "u"},
                         "volume": volume, "repository": "shop", "lineage": "l"},
                "status": status
            }))
            .expect("pvb")
        };
        let text = describe_backup(
            &b,
            &[
                pvb(
                    "logs",
                    json!({"phase": "Failed", "message": "boom",
                                   "failedPaths": ["x.log"]}),
                ),
                pvb(
                    "data",
                    json!({"phase": "Completed", "snapshotID": "0123456789abcdef0",
                    "progress": {"totalBytes": 3072, "bytesDone": 3072, "bytesNew": 1024}}),
                ),
            ],
        );
        let expected = "\
Name:         nightly
Phase:        PartiallyFailed
Message:      shop/db-0 volume logs: boom
Namespaces:   shop
Default volumes to FS backup: false
Started:      -
Completed:    -
Expires:      -
Volumes:      2 total, 1 completed, 1 failed, 0 canceled, 1 skipped
Bytes:        3.00 KiB of 3.00 KiB done, 1.00 KiB new

Pod volume backups:
  shop/db-0 data: Completed on worker-1 (3.00 KiB of 3.00 KiB, 1.00 KiB new), snapshot 0123456789ab
  shop/db-0 logs: Failed on worker-1 (0 B of 0 B, 0 B new): boom
      not read: x.log

Skipped volumes:
  shop/db-0 token: service account token
";
        assert_eq!(text, expected);
    }
}
