//! Reaching a repository from the command line: its location (a directory or S3, with the
//! S3 flags), its password (a file, or a prompt on a terminal), and opening it in a session.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use podvault_s3::{S3Options, open_backend};
use podvault_store::{Access, Backend, Repository, Session};

use crate::Global;

pub fn backend(global: &Global) -> Result<Arc<dyn Backend>> {
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
pub fn read_password_file(path: &Path) -> Result<Vec<u8>> {
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
pub fn password(global: &Global, confirm: bool) -> Result<Vec<u8>> {
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

pub fn prompt(text: &str, confirm: bool) -> Result<Vec<u8>> {
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

pub fn open(global: &Global) -> Result<Repository> {
    let (backend, password) = located(global)?;
    Ok(Repository::open(backend, &password)?)
}

/// Opens the repository for a command that reads or writes data while others may run
/// (see FORMAT.md, "Concurrency"); the session lasts as long as the returned value.
pub fn open_session(
    global: &Global,
    command: &str,
    access: Access,
) -> Result<(Repository, Session)> {
    let (backend, password) = located(global)?;
    Ok(Repository::open_session(
        backend, &password, command, access,
    )?)
}

/// Opens the repository in a session without loading its index (for check and repair,
/// which read it themselves).
pub fn open_bare(global: &Global, command: &str) -> Result<(Repository, Session)> {
    let (backend, password) = located(global)?;
    Ok(Repository::open_session_bare(backend, &password, command)?)
}
