//! What the controllers and the node agent share when they talk to the API server: the
//! labels podvault sets, the repository key Secrets, and opening a namespace's repository
//! off the async runtime.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta};
use kube::{Client, ResourceExt};
use podvault_s3::S3Options;
use podvault_store::{Access, Backend, FileKind, InitOptions, Repository, Session};

use crate::crd::{BackupRepository, BackupRepositorySpec, RepositoryPhase};
use crate::write::{CONTROLLER, applying, creating};
pub use podvault_api::names::{
    BACKUP_FINALIZER, BACKUP_LABEL, KEY_FIELD, KEY_LABEL, NODE_LABEL, RESTORE_IN_PROGRESS,
    RESTORE_LABEL,
};

/// Everything the controllers need: a client, the install namespace (where podvault's
/// objects and the key Secrets live) and the object storage.
#[derive(Clone)]
pub struct Settings {
    /// The install namespace.
    pub namespace: String,
    /// The storage root: `s3:bucket/prefix` or a directory; repositories live at
    /// `<storage>/podvault/<namespace>`.
    pub storage: String,
    /// S3 client settings.
    pub s3: S3Options,
    /// Repository settings for new repositories.
    pub init: InitOptions,
}

/// Repository settings for the repositories the controller makes. Their password is the
/// key Secret's 32 random bytes (256 bits), which no guessing reaches, so Argon2id's cost
/// buys nothing there. A light setting (8 MiB, one pass: milliseconds) keeps every open by
/// a node agent cheap in time and memory, where the default (64 MiB, three passes) costs
/// about 0.2 s and 64 MiB per concurrent volume. Repositories keep the setting they were
/// made with; passwords a person chooses (`podvault init`) keep the default.
pub fn generated_key_init() -> InitOptions {
    InitOptions {
        kdf: podvault_store::KdfParams {
            memory_kib: 8 * 1024,
            iterations: 1,
            ..podvault_store::KdfParams::default()
        },
        ..InitOptions::default()
    }
}

/// What every reconcile of one of the controller's controllers shares.
pub(crate) struct Context {
    pub client: Client,
    pub settings: Settings,
    /// Publishes Kubernetes Events on the objects (none for repositories).
    pub events: Option<kube::runtime::events::Recorder>,
}

/// Errors of the controllers and the node agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The repository or the object store failed.
    #[error("repository of namespace {namespace}: {source}")]
    Repository {
        namespace: String,
        #[source]
        source: podvault_store::Error,
    },
    /// Work on a repository, run on the blocking pool, panicked or was cancelled.
    #[error("repository of namespace {namespace}: the work stopped: {source}")]
    Task {
        namespace: String,
        #[source]
        source: tokio::task::JoinError,
    },
    /// The record of a backup kept in its repository does not parse.
    #[error(
        "repository of namespace {namespace}: the record of backup {backup} does not parse: {source}"
    )]
    Record {
        namespace: String,
        backup: String,
        #[source]
        source: serde_json::Error,
    },
    /// The volume directories of this node cannot be found.
    #[error(transparent)]
    HostPath(#[from] crate::hostpath::HostPathError),
    /// A key Secret is missing or has no key.
    #[error("{0}")]
    Key(String),
    /// Work that must finish first is still running (retried shortly).
    #[error("{0}")]
    Waiting(String),
    /// An object's spec cannot be acted on.
    #[error("{0}")]
    Invalid(String),
}

/// The key Secret's name for a namespace's repository.
pub fn key_secret_name(namespace: &str) -> String {
    format!("podvault-repo-{namespace}")
}

/// The repository location of a namespace.
pub fn repository_location(storage: &str, namespace: &str) -> String {
    crate::plan::repository_for(namespace, storage).1
}

fn random_key() -> Result<String, Error> {
    use ring::rand::SecureRandom;
    let mut key = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| Error::Key("the system random generator failed".into()))?;
    Ok(hex::encode(key))
}

/// Reads the key of a namespace's repository from its Secret in the install namespace.
pub async fn repository_key(
    client: &Client,
    install_namespace: &str,
    namespace: &str,
) -> Result<Vec<u8>, Error> {
    let name = key_secret_name(namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), install_namespace);
    let secret = secrets.get_opt(&name).await?.ok_or_else(|| {
        Error::Key(format!(
            "the key Secret {install_namespace}/{name} of namespace {namespace}'s repository \
             does not exist"
        ))
    })?;
    key_of(&secret, install_namespace)
}

fn repo_error(namespace: &str, source: podvault_store::Error) -> Error {
    Error::Repository {
        namespace: namespace.to_string(),
        source,
    }
}

fn task_error(namespace: &str, source: tokio::task::JoinError) -> Error {
    Error::Task {
        namespace: namespace.to_string(),
        source,
    }
}

/// Opens a namespace's repository in a session, off the async runtime (the store blocks).
pub async fn open_repository(
    settings: &Settings,
    location: &str,
    namespace: &str,
    key: Vec<u8>,
    command: &'static str,
    access: Access,
) -> Result<(Arc<Repository>, Session), Error> {
    let s3 = settings.s3.clone();
    let location = location.to_string();
    let ns = namespace.to_string();
    let opened = tokio::task::spawn_blocking(move || {
        let backend = podvault_s3::open_backend(&location, &s3)?;
        Repository::open_session(backend, &key, command, access)
    })
    .await
    .map_err(|e| task_error(namespace, e))?;
    let (repo, session) = opened.map_err(|e| repo_error(&ns, e))?;
    Ok((Arc::new(repo), session))
}

/// Opens a namespace's repository in a session without loading its index, and runs
/// `work` on it, all off the async runtime: for documents and snapshot removal, which
/// need the key but not the index.
pub async fn with_documents<T: Send + 'static>(
    settings: &Settings,
    namespace: &str,
    key: Vec<u8>,
    command: &'static str,
    work: impl FnOnce(&Repository) -> podvault_store::Result<T> + Send + 'static,
) -> Result<T, Error> {
    let s3 = settings.s3.clone();
    let location = repository_location(&settings.storage, namespace);
    blocking(namespace, move || {
        let backend = podvault_s3::open_backend(&location, &s3)?;
        let (repo, _session) = Repository::open_session_bare(backend, &key, command)?;
        work(&repo)
    })
    .await
}

/// Runs blocking store work for a namespace's repository on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    namespace: &str,
    work: impl FnOnce() -> podvault_store::Result<T> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| task_error(namespace, e))?
        .map_err(|e| repo_error(namespace, e))
}

/// Makes sure a namespace has its repository: a key Secret (a new random key the first
/// time), a BackupRepository object, and an initialised repository in the object store.
/// Idempotent: a second call finds all three and only checks that the key opens it.
/// Returns the object and the key.
pub async fn ensure_repository(
    client: &Client,
    settings: &Settings,
    namespace: &str,
) -> Result<(BackupRepository, Vec<u8>), Error> {
    let install = settings.namespace.as_str();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), install);
    let secret_name = key_secret_name(namespace);
    let key = match secrets.get_opt(&secret_name).await? {
        Some(secret) => key_of(&secret, install)?,
        None => create_key(&secrets, &secret_name, namespace, install).await?,
    };
    let repos: Api<BackupRepository> = Api::namespaced(client.clone(), install);
    let location = repository_location(&settings.storage, namespace);
    let repo = match repos.get_opt(namespace).await? {
        Some(r) => r,
        None => {
            let object = BackupRepository::new(
                namespace,
                BackupRepositorySpec {
                    volume_namespace: namespace.to_string(),
                    location: location.clone(),
                    key_secret: secret_name,
                },
            );
            match repos.create(&creating(CONTROLLER), &object).await {
                Ok(r) => r,
                Err(kube::Error::Api(s)) if s.code == 409 => repos.get(namespace).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    if repo.status.as_ref().map(|s| s.phase) == Some(RepositoryPhase::Ready) {
        return Ok((repo, key));
    }
    let s3 = settings.s3.clone();
    let init = settings.init.clone();
    let at = repo.spec.location.clone();
    let password = key.clone();
    let made = blocking(namespace, move || {
        let backend: Arc<dyn Backend> = podvault_s3::open_backend(&at, &s3)?;
        match backend.read(FileKind::Config, "config") {
            Err(podvault_store::Error::NotFound { .. }) => {
                Repository::init(backend, &password, &init).map(|_| true)
            }
            _ => Repository::open(backend, &password).map(|_| false),
        }
    })
    .await;
    let (phase, message) = match &made {
        Ok(_) => (RepositoryPhase::Ready, None),
        Err(e) => (RepositoryPhase::NotReady, Some(e.to_string())),
    };
    let mut status = repo.status.clone().unwrap_or_default();
    status.phase = phase;
    status.message = message;
    // A repository made just now has nothing to prune: its first maintenance is one
    // interval away, not in the middle of the backup that made it.
    if matches!(made, Ok(true)) {
        status.last_maintenance = Some(Time(Timestamp::now()));
    }
    let patched = repos
        .patch_status(
            &repo.name_any(),
            &applying(CONTROLLER),
            &crate::write::status::<BackupRepository>(&status, None),
        )
        .await?;
    made.map(|_| (patched, key))
}

fn key_of(secret: &Secret, install_namespace: &str) -> Result<Vec<u8>, Error> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(KEY_FIELD))
        .map(|b| b.0.clone())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            Error::Key(format!(
                "the key Secret {install_namespace}/{} has no {KEY_FIELD} field",
                secret.name_any()
            ))
        })
}

/// Creates a namespace's key Secret with a new random key; if another reconcile made one
/// first, uses that one.
async fn create_key(
    secrets: &Api<Secret>,
    name: &str,
    namespace: &str,
    install_namespace: &str,
) -> Result<Vec<u8>, Error> {
    let key = random_key()?.into_bytes();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                KEY_LABEL.to_string(),
                namespace.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            KEY_FIELD.to_string(),
            ByteString(key.clone()),
        )])),
        ..Secret::default()
    };
    match secrets.create(&creating(CONTROLLER), &secret).await {
        Ok(_) => Ok(key),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            key_of(&secrets.get(name).await?, install_namespace)
        }
        Err(e) => Err(e.into()),
    }
}
