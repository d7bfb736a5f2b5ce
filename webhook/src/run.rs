//! The webhook as a process: its serving certificate (mounted, or made by podvault), the
//! watch of pending restores, the TLS server for admission requests and the metrics server,
//! until `shutdown` resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::server::{Metrics, Shared};

/// Where the serving certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Certificates {
    /// Read from the mounted files (cert-manager's Secret, or your own).
    Files,
    /// Made and renewed by podvault itself.
    Builtin {
        /// The Secret holding the CA and certificate (in the install namespace).
        secret: String,
        /// The webhook's Service, whose names the certificate carries.
        service: String,
        /// The MutatingWebhookConfiguration whose caBundle is kept current.
        webhook_configuration: String,
    },
}

/// How the webhook runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The namespace podvault is installed in.
    pub namespace: String,
    /// The serving certificate (PEM), reloaded when it changes.
    pub tls_cert: PathBuf,
    /// Its private key (PEM).
    pub tls_key: PathBuf,
    /// Where the certificate comes from.
    pub certificates: Certificates,
    /// Serve admission requests (HTTPS) here.
    pub address: SocketAddr,
    /// Serve Prometheus metrics (plain HTTP) here.
    pub metrics_address: SocketAddr,
    /// This process's name in Events (the pod's name).
    pub pod_name: String,
    /// The version injected helpers run (the image of this build).
    pub version: String,
}

/// Why the webhook could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The serving certificate could not be loaded.
    #[error("webhook certificate: {0}")]
    Certificate(#[from] podvault_certs::Error),
    /// The built-in certificate could not be made or stored.
    #[error("making the webhook's built-in certificate: {0}")]
    Builtin(#[source] podvault_certs::Error),
    /// The metrics registry could not be built.
    #[error("webhook metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// An address could not be bound.
    #[error("binding {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS server failed.
    #[error("serving admission requests on {address}: {source}")]
    Serve {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The webhook, its mounted certificate already loaded.
pub struct Webhook {
    config: Config,
    mounted: Option<Arc<podvault_certs::Reloader>>,
}

impl Webhook {
    /// Loads mounted certificates first: a webhook that cannot present one would only fail
    /// every request, so it refuses to start instead. Built-in ones are made in [`run`].
    ///
    /// [`run`]: Webhook::run
    pub fn new(config: Config) -> Result<Self, Error> {
        let mounted = match config.certificates {
            Certificates::Files => Some(podvault_certs::Reloader::new(
                &config.tls_cert,
                &config.tls_key,
            )?),
            Certificates::Builtin { .. } => None,
        };
        Ok(Webhook { config, mounted })
    }

    /// Serves until `shutdown` resolves or the server fails.
    pub async fn run(
        self,
        client: Client,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let config = self.config;
        if let Certificates::Builtin {
            secret,
            service,
            webhook_configuration,
        } = &config.certificates
        {
            let target = podvault_certs::builtin::Target {
                namespace: config.namespace.clone(),
                secret: secret.clone(),
                names: podvault_certs::builtin::service_names(service, &config.namespace),
                webhook_configuration: webhook_configuration.clone(),
                cert_path: config.tls_cert.clone(),
                key_path: config.tls_key.clone(),
            };
            podvault_certs::builtin::ensure_at_start(&client, &target, Duration::from_secs(300))
                .await
                .map_err(Error::Builtin)?;
            tokio::spawn(podvault_certs::builtin::run(
                client.clone(),
                target,
                Duration::from_secs(3600),
            ));
        }
        let reloader = match self.mounted {
            Some(r) => r,
            None => podvault_certs::Reloader::new(&config.tls_cert, &config.tls_key)?,
        };
        let tls = podvault_certs::server_config(reloader.clone())?;
        let shared = Arc::new(Shared {
            state: crate::handler::State::new(&config.namespace, &config.version),
            ready: AtomicBool::new(false),
            metrics: Metrics::new()?,
        });
        let _reload = reloader.watch(Duration::from_secs(10));
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "podvault-webhook".into(),
                instance: Some(config.pod_name.clone()),
            },
        );
        tokio::spawn(crate::watch::run(
            client,
            shared.clone(),
            config.namespace.clone(),
            config.version.clone(),
            Some(recorder),
        ));
        let bind = |address: SocketAddr| async move {
            tokio::net::TcpListener::bind(address)
                .await
                .map_err(|source| Error::Bind { address, source })
        };
        let metrics = bind(config.metrics_address).await?;
        let metrics_app = crate::server::metrics_app(shared.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(metrics, metrics_app).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
        let listener = bind(config.address).await?;
        tracing::info!(address = %config.address, "webhook serving");
        let app = crate::server::app(shared);
        tokio::select! {
            r = crate::server::serve_tls(listener, tls, app) => r.map_err(|source| Error::Serve {
                address: config.address,
                source,
            }),
            () = shutdown => Ok(()),
        }
    }
}
