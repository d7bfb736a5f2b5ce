//! Built-in certificates, for clusters without cert-manager: podvault makes its own CA and
//! the webhook's serving certificate (rcgen), keeps them in one Secret, writes the CA into
//! the MutatingWebhookConfiguration's `caBundle`, and renews well before expiry. Every
//! webhook replica runs the same loop; they agree on one certificate because the Secret is
//! only ever created or replaced with its resourceVersion as a precondition: a replica that
//! loses the race reads the winner's certificate and serves it.
//!
//! Lifetimes: the CA lives 10 years and is replaced when less than 2 years remain; the
//! serving certificate lives 1 year and is replaced when less than 4 months remain, or when
//! its names, key or CA no longer fit. A replaced CA stays in the bundle until it expires,
//! so certificates it signed keep verifying while replicas move to the new one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

use crate::Error;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

const DAY: i64 = 86_400;

/// The Secret's keys.
pub const CA_CERT: &str = "ca.crt";
/// The CA's private key.
pub const CA_KEY: &str = "ca.key";
/// The serving certificate.
pub const TLS_CERT: &str = "tls.crt";
/// Its private key.
pub const TLS_KEY: &str = "tls.key";

/// How long certificates live and how early they are replaced (seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    /// The CA's lifetime.
    pub ca: i64,
    /// Replace the CA when less than this remains (more than `leaf`, so that a serving
    /// certificate never outlives its CA).
    pub ca_margin: i64,
    /// The serving certificate's lifetime.
    pub leaf: i64,
    /// Replace it when less than this remains.
    pub leaf_margin: i64,
}

impl Default for Lifetimes {
    fn default() -> Lifetimes {
        Lifetimes {
            ca: 3650 * DAY,
            ca_margin: 730 * DAY,
            leaf: 365 * DAY,
            leaf_margin: 120 * DAY,
        }
    }
}

/// The CA bundle (current CA first, then replaced CAs that are still valid), the current
/// CA's key, and the serving certificate and key, all PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// The CAs the API server should trust.
    pub ca_bundle: String,
    /// The current CA's private key.
    pub ca_key: String,
    /// The serving certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

impl Bundle {
    /// The bundle from a Secret's data, if every key is there as text.
    pub fn from_data(data: &BTreeMap<String, ByteString>) -> Option<Bundle> {
        let text = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        Some(Bundle {
            ca_bundle: text(CA_CERT)?,
            ca_key: text(CA_KEY)?,
            cert: text(TLS_CERT)?,
            key: text(TLS_KEY)?,
        })
    }

    /// The Secret data for the bundle.
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        [
            (CA_CERT, &self.ca_bundle),
            (CA_KEY, &self.ca_key),
            (TLS_CERT, &self.cert),
            (TLS_KEY, &self.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
    }

    /// The current CA certificate (PEM).
    pub fn ca(&self) -> &str {
        pem_blocks(&self.ca_bundle)
            .into_iter()
            .next()
            .unwrap_or_default()
    }
}

/// The PEM blocks of `text`, each with its BEGIN and END lines.
fn pem_blocks(text: &str) -> Vec<&str> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let (Some(start), Some(end)) = (rest.find("-----BEGIN CERTIFICATE-----"), rest.find(END))
    {
        if end < start {
            rest = &rest[end + END.len()..];
            continue;
        }
        out.push(&rest[start..end + END.len()]);
        rest = &rest[end + END.len()..];
    }
    out
}

struct Parsed {
    not_after: i64,
    names: Vec<String>,
    der: Vec<u8>,
}

fn parse_cert(pem: &str) -> Option<Parsed> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = block.parse_x509().ok()?;
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    Some(Parsed {
        not_after: cert.validity().not_after.timestamp(),
        names,
        der: block.contents.clone(),
    })
}

fn signed_by(leaf_der: &[u8], ca_der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    let (Ok((_, leaf)), Ok((_, ca))) = (
        x509_parser::certificate::X509Certificate::from_der(leaf_der),
        x509_parser::certificate::X509Certificate::from_der(ca_der),
    ) else {
        return false;
    };
    leaf.verify_signature(Some(ca.public_key())).is_ok()
}

/// What to do with a stored bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It is good.
    Keep,
    /// Issue a new serving certificate from the same CA, for this reason.
    RenewLeaf(String),
    /// Make a new CA too, for this reason.
    RenewAll(String),
}

/// Whether `bundle` still serves `names` at `now` (Unix seconds) with room to spare.
pub fn verdict(bundle: &Bundle, names: &[String], now: i64, lifetimes: &Lifetimes) -> Verdict {
    let Some(ca) = parse_cert(bundle.ca()) else {
        return Verdict::RenewAll("the CA certificate does not parse".into());
    };
    if ca.not_after - now < lifetimes.ca_margin {
        return Verdict::RenewAll(format!("the CA expires at {}", ca.not_after));
    }
    if KeyPair::from_pem(&bundle.ca_key).is_err() {
        return Verdict::RenewAll("the CA key does not parse".into());
    }
    let Some(leaf) = parse_cert(&bundle.cert) else {
        return Verdict::RenewLeaf("the serving certificate does not parse".into());
    };
    if leaf.not_after - now < lifetimes.leaf_margin {
        return Verdict::RenewLeaf(format!(
            "the serving certificate expires at {}",
            leaf.not_after
        ));
    }
    let mut wanted = names.to_vec();
    wanted.sort();
    if leaf.names != wanted {
        return Verdict::RenewLeaf(format!(
            "the serving certificate names {:?}, not {:?}",
            leaf.names, wanted
        ));
    }
    if !signed_by(&leaf.der, &ca.der) {
        return Verdict::RenewLeaf("the serving certificate is not signed by the CA".into());
    }
    if crate::parse(
        bundle.cert.as_bytes(),
        bundle.key.as_bytes(),
        Path::new(TLS_CERT),
        Path::new(TLS_KEY),
    )
    .is_err()
    {
        return Verdict::RenewLeaf("the serving key does not match its certificate".into());
    }
    Verdict::Keep
}

fn at(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Issues a serving certificate for `names` (the first is its common name). With
/// `previous` and no `new_ca`, it is signed by the previous CA; otherwise a new CA is made
/// and the previous CAs still valid at `now` stay in the bundle after it.
pub fn issue(
    names: &[String],
    now: i64,
    lifetimes: &Lifetimes,
    previous: Option<&Bundle>,
    new_ca: bool,
) -> Result<Bundle, Error> {
    let reuse = previous.filter(|_| !new_ca);
    let (issuer, ca_bundle, ca_key) = match reuse {
        Some(p) => {
            let key = KeyPair::from_pem(&p.ca_key)?;
            let ca_key = p.ca_key.clone();
            let issuer = Issuer::from_ca_cert_pem(p.ca(), key)?;
            (issuer, p.ca_bundle.clone(), ca_key)
        }
        None => {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, format!("podvault webhook CA {now}"));
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = at(now - 3600);
            params.not_after = at(now + lifetimes.ca);
            let cert = params.self_signed(&key)?;
            let mut bundle = cert.pem();
            for old in previous
                .map(|p| pem_blocks(&p.ca_bundle))
                .unwrap_or_default()
            {
                if parse_cert(old).is_some_and(|c| c.not_after > now) {
                    bundle.push('\n');
                    bundle.push_str(old);
                    bundle.push('\n');
                }
            }
            let ca_key = key.serialize_pem();
            (Issuer::new(params, key), bundle, ca_key)
        }
    };
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = at(now - 3600);
    params.not_after = at(now + lifetimes.leaf);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Bundle {
        ca_bundle,
        ca_key,
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Where the certificates go.
#[derive(Clone, Debug)]
pub struct Target {
    /// The namespace of the Secret (podvault's own).
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// The names the webhook is reached by (`<service>.<namespace>.svc` and its shorter
    /// forms).
    pub names: Vec<String>,
    /// The MutatingWebhookConfiguration whose `caBundle` to keep current.
    pub webhook_configuration: String,
    /// Where the serving certificate is written, for the webhook to load.
    pub cert_path: PathBuf,
    /// Where its key is written.
    pub key_path: PathBuf,
}

/// The names a Service is reached by from the API server.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

fn kube_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Makes sure the Secret holds a good bundle (creating or renewing it), that the webhook
/// configuration trusts its CA, and that the files in `target.dir` are current. Returns the
/// bundle in use.
pub async fn ensure(
    client: &Client,
    target: &Target,
    now: i64,
    lifetimes: &Lifetimes,
) -> Result<Bundle, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &target.namespace);
    let secret_name = format!("Secret {}/{}", target.namespace, target.secret);
    let mut bundle = None;
    for _ in 0..5 {
        let current = secrets
            .get_opt(&target.secret)
            .await
            .map_err(kube_error(format!("reading {secret_name}")))?;
        let stored = current
            .as_ref()
            .and_then(|s| s.data.as_ref())
            .and_then(Bundle::from_data);
        let verdict = match &stored {
            Some(b) => verdict(b, &target.names, now, lifetimes),
            None => Verdict::RenewAll("there is none yet".into()),
        };
        let new_ca = match verdict {
            Verdict::Keep => {
                bundle = stored;
                break;
            }
            Verdict::RenewLeaf(why) => {
                tracing::info!("renewing the webhook's serving certificate: {why}");
                false
            }
            Verdict::RenewAll(why) => {
                tracing::info!("making a new webhook CA and certificate: {why}");
                true
            }
        };
        let fresh = issue(&target.names, now, lifetimes, stored.as_ref(), new_ca)?;
        let written = match current {
            // Replace only the version read: if another replica renewed first, its
            // certificate wins and is read on the next turn.
            Some(mut secret) => {
                secret.data = Some(fresh.to_data());
                secret.string_data = None;
                secrets
                    .replace(&target.secret, &PostParams::default(), &secret)
                    .await
            }
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(target.secret.clone()),
                        namespace: Some(target.namespace.clone()),
                        labels: Some(
                            [(
                                "app.kubernetes.io/managed-by".to_string(),
                                "podvault".to_string(),
                            )]
                            .into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(fresh.to_data()),
                    ..Secret::default()
                };
                secrets.create(&PostParams::default(), &secret).await
            }
        };
        match written {
            Ok(_) => {
                bundle = Some(fresh);
                break;
            }
            Err(e) if is_status(&e, 409) => continue,
            Err(e) => return Err(kube_error(format!("writing {secret_name}"))(e)),
        }
    }
    let bundle = bundle.ok_or_else(|| Error::Contended(secret_name))?;
    trust(client, &target.webhook_configuration, &bundle.ca_bundle).await?;
    write_files(&target.cert_path, &target.key_path, &bundle)?;
    Ok(bundle)
}

/// Sets `caBundle` on every webhook of the configuration, if it differs.
async fn trust(client: &Client, name: &str, ca_bundle: &str) -> Result<(), Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let what = format!("MutatingWebhookConfiguration {name}");
    for _ in 0..5 {
        let Some(mut config) = api
            .get_opt(name)
            .await
            .map_err(kube_error(format!("reading {what}")))?
        else {
            tracing::warn!("{what} does not exist yet; its caBundle will be set when it does");
            return Ok(());
        };
        let wanted = ByteString(ca_bundle.as_bytes().to_vec());
        let mut changed = false;
        for webhook in config.webhooks.iter_mut().flatten() {
            if webhook.client_config.ca_bundle.as_ref() != Some(&wanted) {
                webhook.client_config.ca_bundle = Some(wanted.clone());
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        match api
            .replace(&config.name_any(), &PostParams::default(), &config)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 409) => continue,
            Err(e) => return Err(kube_error(format!("updating {what}"))(e)),
        }
    }
    Err(Error::Contended(what))
}

/// Writes the serving certificate and key when they differ, each through a temporary file
/// and a rename, so that a reader never sees half a file (the key first: a reader that sees
/// the new key with the old certificate refuses the pair and keeps the old one).
pub fn write_files(cert_path: &Path, key_path: &Path, bundle: &Bundle) -> Result<(), Error> {
    for (path, content) in [(key_path, &bundle.key), (cert_path, &bundle.cert)] {
        if std::fs::read_to_string(path).is_ok_and(|c| &c == content) {
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp"));
        let write = |p: &Path| -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(p)?;
            std::io::Write::write_all(&mut f, content.as_bytes())?;
            f.sync_all()
        };
        write(&tmp)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|source| Error::Write {
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Keeps the certificates current until the task is dropped: checks every `every` (a
/// failed check is retried after a minute), and watches the webhook configuration, so that
/// a `caBundle` lost to a replace of the configuration is put back at once rather than at
/// the next check.
pub async fn run(client: Client, target: Target, every: Duration) {
    use futures_util::StreamExt;
    use kube::runtime::WatchStreamExt;
    use kube::runtime::watcher;
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={}", target.webhook_configuration));
    let mut changes = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    let mut current: Option<Bundle> = None;
    let next = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(next);
    loop {
        tokio::select! {
            () = &mut next => {
                let wait = match ensure(&client, &target, unix_now(), &Lifetimes::default()).await {
                    Ok(bundle) => {
                        current = Some(bundle);
                        every
                    }
                    Err(e) => {
                        tracing::warn!("keeping the webhook certificate: {e}");
                        Duration::from_secs(60).min(every)
                    }
                };
                next.as_mut().reset(tokio::time::Instant::now() + wait);
            }
            Some(change) = changes.next() => {
                let (Ok(config), Some(bundle)) = (change, current.as_ref()) else { continue };
                if !trusts(&config, &bundle.ca_bundle) {
                    tracing::info!("the webhook configuration lost its caBundle; setting it again");
                    if let Err(e) = trust(&client, &target.webhook_configuration, &bundle.ca_bundle).await {
                        tracing::warn!("keeping the webhook certificate: {e}");
                    }
                }
            }
        }
    }
}

/// Whether every webhook of `config` trusts `ca_bundle`.
fn trusts(config: &MutatingWebhookConfiguration, ca_bundle: &str) -> bool {
    config.webhooks.iter().flatten().all(|w| {
        w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(ca_bundle.as_bytes())
    })
}

/// Ensures the certificates once at start, retrying (every 5 s, up to `patience`) while
/// the API server cannot be reached or refuses.
pub async fn ensure_at_start(
    client: &Client,
    target: &Target,
    patience: Duration,
) -> Result<Bundle, Error> {
    let started = std::time::Instant::now();
    loop {
        match ensure(client, target, unix_now(), &Lifetimes::default()).await {
            Ok(b) => return Ok(b),
            Err(e) if started.elapsed() < patience => {
                tracing::warn!("making the webhook certificate: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
