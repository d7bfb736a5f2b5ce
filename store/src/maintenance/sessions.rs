//! Sessions: every process that reads or writes a repository says so in a session file it
//! refreshes while it works, so a prune knows whom to wait for.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use super::{by_prefix, open_cbor, random_name, seal_cbor};
use crate::Repository;
use crate::backend::{Backend, FileKind};
use crate::error::{Error, Result};

const SESSION_AAD: &[u8] = b"podvault session v1";

/// How often a session file is rewritten to show its process is alive.
pub const SESSION_REFRESH: Duration = Duration::from_secs(60);
/// A session not refreshed for this long belongs to a process that died (or lost the
/// store): it no longer holds back a prune.
pub const SESSION_STALE: Duration = Duration::from_secs(10 * 60);
/// A process stops writing snapshots once its own session has gone this long without a
/// successful refresh, well before others may judge it stale.
pub(super) const SESSION_SELF_LIMIT: Duration = Duration::from_secs(7 * 60);

/// What a session file says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Host name of the process.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// What it is doing (`backup`, `restore`, `prune`…).
    pub command: String,
    /// When it started.
    pub started: chrono::DateTime<chrono::Utc>,
    /// When it last said it was alive.
    pub refreshed: chrono::DateTime<chrono::Utc>,
}

impl SessionInfo {
    /// Whether the process may still be working: refreshed recently, and (on this host)
    /// its process exists.
    pub fn is_live(&self) -> bool {
        let age = chrono::Utc::now() - self.refreshed;
        if age.to_std().unwrap_or_default() > SESSION_STALE {
            return false;
        }
        if self.host == crate::this_host() {
            return process_exists(self.pid);
        }
        true
    }
}

fn process_exists(pid: u32) -> bool {
    match rustix::process::Pid::from_raw(pid as i32) {
        Some(pid) => !matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        ),
        None => false,
    }
}

/// The shared view of a session's health, checked before a snapshot is written.
pub(crate) struct SessionHealth {
    /// The session file's name, written into this process's index files.
    pub(crate) name: String,
    pub(super) last_ok: Mutex<Instant>,
}

/// This process's session: its file is refreshed in the background and removed when the
/// session is dropped.
pub struct Session {
    name: String,
    backend: Arc<dyn Backend>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Session {
    /// The session file's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Err(e) = self.backend.delete(FileKind::Session, &self.name) {
            tracing::warn!("could not remove session {}: {e}", self.name);
        }
    }
}

impl Repository {
    pub(crate) fn start_session(&self, command: &str) -> Result<Session> {
        let name = random_name()?;
        let now = chrono::Utc::now();
        let info = SessionInfo {
            host: crate::this_host(),
            pid: std::process::id(),
            command: command.to_string(),
            started: now,
            refreshed: now,
        };
        let sealer = self.master_key().derive()?.sealer;
        self.backend().write(
            FileKind::Session,
            &name,
            &seal_cbor(&sealer, SESSION_AAD, &info)?,
        )?;
        let health = Arc::new(SessionHealth {
            name: name.clone(),
            last_ok: Mutex::new(Instant::now()),
        });
        *self.session.lock() = Some(health.clone());
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let (stop, backend, name) = (stop.clone(), self.backend().clone(), name.clone());
            std::thread::Builder::new()
                .name("podvault-session".into())
                .spawn(move || {
                    let mut info = info;
                    loop {
                        {
                            let mut stopped = stop.0.lock();
                            if !*stopped {
                                stop.1.wait_for(&mut stopped, SESSION_REFRESH);
                            }
                            if *stopped {
                                return;
                            }
                        }
                        info.refreshed = chrono::Utc::now();
                        let written = seal_cbor(&sealer, SESSION_AAD, &info)
                            .and_then(|b| backend.write(FileKind::Session, &name, &b));
                        match written {
                            Ok(()) => *health.last_ok.lock() = Instant::now(),
                            Err(e) => tracing::warn!("could not refresh session {name}: {e}"),
                        }
                    }
                })
                .map_err(|e| Error::io("session thread", e))?
        };
        Ok(Session {
            name,
            backend: self.backend().clone(),
            stop,
            thread: Some(thread),
        })
    }

    /// Fails if this process's session has not been refreshed for too long.
    pub(crate) fn check_session(&self) -> Result<()> {
        if let Some(health) = self.session.lock().as_ref() {
            let age = health.last_ok.lock().elapsed();
            if age > SESSION_SELF_LIMIT {
                return Err(Error::InvalidParameter {
                    name: "session",
                    reason: format!(
                        "this process could not show {} it is alive for {} s; a prune may \
                         have removed data it uses, so no snapshot is written",
                        self.backend().location(),
                        age.as_secs()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Every session file: name, and its content if it can be read.
    pub fn sessions(&self) -> Result<Vec<(String, Option<SessionInfo>)>> {
        let mut out = Vec::new();
        for (name, _) in self.backend().list(FileKind::Session)? {
            let info = match self.backend().read(FileKind::Session, &name) {
                Ok(bytes) => open_cbor(self.sealer(), SESSION_AAD, "session", &name, &bytes).ok(),
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            out.push((name, info));
        }
        Ok(out)
    }

    /// Removes the session file `reference` (its name or a unique prefix of at least 4 hex
    /// digits) of a process that is gone, so it no longer holds back a prune; returns its
    /// name. A session that is live is refused. One that cannot be read (damaged, or
    /// written by a newer version) is removed: only an administrator who knows no process
    /// uses it asks for that.
    pub fn remove_session(&self, reference: &str) -> Result<String> {
        let sessions = self.sessions()?;
        let bad = |reason: String| Error::InvalidParameter {
            name: "session",
            reason: format!("{reference}: {reason}"),
        };
        let (name, info) =
            by_prefix(&sessions, |(n, _)| n.as_str(), reference, "session").map_err(bad)?;
        if let Some(info) = info.as_ref().filter(|i| i.is_live()) {
            return Err(bad(format!(
                "it is live ({} on host {}, pid {}, refreshed {}): it ends by itself, or goes \
                 stale {} min after its process stops",
                info.command,
                info.host,
                info.pid,
                info.refreshed.format("%Y-%m-%d %H:%M:%S UTC"),
                SESSION_STALE.as_secs() / 60
            )));
        }
        self.backend().delete(FileKind::Session, name)?;
        Ok(name.clone())
    }

    /// Names of the sessions that may still be working (an unreadable session file counts
    /// as live: it is not safe to assume otherwise), except `own`.
    pub(super) fn live_sessions(&self, own: &str) -> Result<Vec<String>> {
        Ok(self
            .sessions()?
            .into_iter()
            .filter(|(name, info)| name != own && info.as_ref().is_none_or(|i| i.is_live()))
            .map(|(name, _)| name)
            .collect())
    }
}
