//! The AdmissionReview handler: bytes in, an AdmissionReview out, whatever the bytes are.
//! Every answer carries the request's uid when there is one; nothing the API server (or
//! anyone else) sends can make it panic or block a pod for a problem of podvault's own.
//!
//! A request is read in one pass: the review's envelope into a small typed struct that
//! skips what the decision does not need (userInfo, options, oldObject), and the pod
//! straight from its raw JSON. Only a body that fails this fast path is read again as
//! loose JSON, to name its problem and find its uid.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use podvault_api::crd::PodVolumeRestore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::config::{HelperConfig, HelperSettings};
use crate::decide::decide;

/// The largest request body read (the API server's objects are at most ~1.5 MiB).
pub const MAX_BODY: usize = 4 << 20;

/// The settings requests see now; replaced whole when the ConfigMap changes.
pub type Settings = Arc<HelperSettings>;

/// The pending restores, by target namespace: a request looks only at its own namespace's.
#[derive(Debug, Default)]
pub struct Pending {
    by_namespace: HashMap<String, Vec<PodVolumeRestore>>,
}

impl Pending {
    /// Indexes `all` by target namespace.
    pub fn new(all: impl IntoIterator<Item = PodVolumeRestore>) -> Pending {
        let mut by_namespace: HashMap<String, Vec<PodVolumeRestore>> = HashMap::new();
        for pvr in all {
            by_namespace
                .entry(pvr.spec.target_namespace.clone())
                .or_default()
                .push(pvr);
        }
        Pending { by_namespace }
    }

    /// The restores into `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> &[PodVolumeRestore] {
        self.by_namespace
            .get(namespace)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// How many restores there are.
    pub fn len(&self) -> usize {
        self.by_namespace.values().map(Vec::len).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_namespace.is_empty()
    }
}

/// What the handler knows: the pending restores and the helper settings, kept current by
/// watches (never read per request).
pub struct State {
    /// podvault's own namespace (its pods are never touched).
    pub install_namespace: String,
    /// The PodVolumeRestores not yet started.
    pending: RwLock<Arc<Pending>>,
    /// The helper settings and the warnings their ConfigMap raised.
    pub config: RwLock<Settings>,
}

impl State {
    /// A state with no pending restore and the default helper settings.
    pub fn new(install_namespace: &str, version: &str) -> State {
        State {
            install_namespace: install_namespace.to_string(),
            pending: RwLock::new(Arc::new(Pending::default())),
            config: RwLock::new(Arc::new(HelperSettings {
                config: HelperConfig::defaults(version),
                warnings: Vec::new(),
            })),
        }
    }

    /// Replaces the pending restores.
    pub fn set_pending(&self, pending: Vec<PodVolumeRestore>) {
        let pending = Arc::new(Pending::new(pending));
        *self.pending.write().unwrap_or_else(|p| p.into_inner()) = pending;
    }

    /// The pending restores now.
    pub fn pending(&self) -> Arc<Pending> {
        self.pending
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The helper settings now, with their ConfigMap's warnings.
    pub fn settings(&self) -> Settings {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|c| c.into_inner().clone())
    }
}

/// How a request ended, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The helper was injected.
    Injected,
    /// Allowed unchanged.
    Allowed,
    /// Not a valid AdmissionReview: answered `invalid`.
    Invalid,
}

impl Outcome {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Allowed => "allowed",
            Outcome::Invalid => "invalid",
        }
    }
}

/// The API version of the reviews read and written.
pub const ADMISSION_V1: &str = "admission.k8s.io/v1";

/// The answer: an `admission.k8s.io/v1` AdmissionReview carrying a response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    /// Always `admission.k8s.io/v1`.
    pub api_version: String,
    /// Always `AdmissionReview`.
    pub kind: String,
    /// The response.
    pub response: Response,
}

/// An AdmissionResponse, as the API server reads it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// The request's uid.
    pub uid: String,
    /// Whether the pod may be created.
    pub allowed: bool,
    /// Why a request was refused (a metav1 Status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The JSON Patch, base64-encoded as the API server requires of a byte field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// `JSONPatch` when there is a patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Warnings shown to whoever created the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

/// The part of a metav1 Status an AdmissionResponse uses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The HTTP-like code (400 for a request that cannot be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Response {
    /// The JSON Patch operations, decoded.
    pub fn patch_operations(&self) -> Option<json_patch::Patch> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.patch.as_ref()?)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

impl Answer {
    fn new(response: Response) -> Answer {
        Answer {
            api_version: ADMISSION_V1.to_string(),
            kind: "AdmissionReview".to_string(),
            response,
        }
    }

    fn allowed(uid: &str, warnings: Vec<String>) -> Answer {
        Answer::new(Response {
            uid: uid.to_string(),
            allowed: true,
            warnings: (!warnings.is_empty()).then_some(warnings),
            ..Response::default()
        })
    }
}

/// The answer to a body that is not a usable request, with the request's uid when the
/// body has one.
pub fn invalid(uid: &str, reason: &str) -> (Answer, Outcome) {
    let answer = Answer::new(Response {
        uid: uid.to_string(),
        allowed: false,
        status: Some(Status {
            code: Some(400),
            message: Some(reason.to_string()),
        }),
        ..Response::default()
    });
    (answer, Outcome::Invalid)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default, borrow)]
    request: Option<Request<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    uid: String,
    kind: Kind,
    #[serde(default)]
    namespace: Option<String>,
    operation: String,
    #[serde(default, borrow)]
    object: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Kind {
    #[serde(default)]
    group: String,
    kind: String,
}

/// Answers one AdmissionReview body.
pub fn review(body: &[u8], state: &State) -> (Answer, Outcome) {
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(e) => return unreadable(body, &e),
    };
    let uid = envelope
        .request
        .as_ref()
        .map(|r| r.uid.as_str())
        .unwrap_or_default();
    if envelope.api_version != ADMISSION_V1 || envelope.kind != "AdmissionReview" {
        return wrong_type(uid, &envelope.api_version, &envelope.kind);
    }
    let Some(request) = envelope.request else {
        return invalid("", "the AdmissionReview has no request");
    };
    let uid = request.uid.as_str();
    let allowed = (Answer::allowed(uid, Vec::new()), Outcome::Allowed);
    if request.kind.kind != "Pod" || !request.kind.group.is_empty() || request.operation != "CREATE"
    {
        return allowed;
    }
    let Some(object) = request.object else {
        let warning = "podvault: no pod in the request; allowed unchanged".to_string();
        return (Answer::allowed(uid, vec![warning]), Outcome::Allowed);
    };
    let pod: Pod = match serde_json::from_str(object.get()) {
        Ok(p) => p,
        Err(e) => {
            let warning = format!("podvault: the pod does not parse ({e}); allowed unchanged");
            return (Answer::allowed(uid, vec![warning]), Outcome::Allowed);
        }
    };
    let namespace = request
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or_default();
    let pod_name = pod
        .metadata
        .name
        .as_deref()
        .or(pod.metadata.generate_name.as_deref())
        .unwrap_or_default();
    let _span = tracing::info_span!("admission", uid, namespace, pod = pod_name).entered();
    let (pending, config) = (state.pending(), state.settings());
    let decision = decide(
        &pod,
        namespace,
        &state.install_namespace,
        pending.in_namespace(namespace),
        &config.config,
    );
    let Some(patch) = decision.patch else {
        if let Some(reason) = decision.skipped {
            tracing::debug!(reason, "no restore helper");
        }
        return allowed;
    };
    let Ok(bytes) = serde_json::to_vec(&patch) else {
        return allowed;
    };
    let warnings = config
        .warnings
        .iter()
        .map(|w| format!("podvault restore helper ConfigMap: {w}"))
        .collect();
    let mut answer = Answer::allowed(uid, warnings);
    answer.response.patch = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
    answer.response.patch_type = Some("JSONPatch".to_string());
    tracing::info!(
        restore_uid = decision.restore_uid.as_deref().unwrap_or_default(),
        volumes = ?decision.volumes,
        "restore helper injected"
    );
    (answer, Outcome::Injected)
}

/// The request's uid (`request.uid`) read from the start of a body that is not read whole
/// (one over the size limit), so that even that answer names the request. Reads JSON
/// tokens just far enough; `None` if the uid does not come before the end of `start`.
pub fn uid_near_start(start: &[u8]) -> Option<String> {
    /// An object or array of the top two levels: the key being read, and whether it is
    /// the review's `request`.
    struct Level {
        object: bool,
        key: Vec<u8>,
        request: bool,
    }
    let mut levels: Vec<Level> = Vec::with_capacity(2);
    let mut deeper = 0usize; // levels below the second, only counted
    let mut expect_key = false;
    let mut i = 0;
    while i < start.len() {
        match start[i] {
            b'"' => {
                let from = i;
                i += 1;
                while i < start.len() && start[i] != b'"' {
                    i += if start[i] == b'\\' { 2 } else { 1 };
                }
                let token = start.get(from..=i)?;
                if deeper == 0 {
                    let depth = levels.len();
                    let top = levels.last_mut()?;
                    if top.object && expect_key {
                        top.key = token.to_vec();
                        expect_key = false;
                    } else if depth == 2 && top.request && top.key == b"\"uid\"" {
                        return serde_json::from_slice(token).ok();
                    }
                }
            }
            open @ (b'{' | b'[') => {
                if levels.len() < 2 && deeper == 0 {
                    let request = levels.len() == 1
                        && levels[0].object
                        && levels[0].key == b"\"request\""
                        && open == b'{';
                    levels.push(Level {
                        object: open == b'{',
                        key: Vec::new(),
                        request,
                    });
                    expect_key = open == b'{';
                } else {
                    deeper += 1;
                }
            }
            b'}' | b']' => {
                if deeper > 0 {
                    deeper -= 1;
                } else {
                    levels.pop();
                    if levels.is_empty() {
                        return None;
                    }
                }
                expect_key = false;
            }
            b',' if deeper == 0 => expect_key = levels.last().is_some_and(|l| l.object),
            _ => {}
        }
        i += 1;
    }
    None
}

fn wrong_type(uid: &str, version: &str, kind: &str) -> (Answer, Outcome) {
    invalid(
        uid,
        &format!("expected an {ADMISSION_V1} AdmissionReview, got {version:?} {kind:?}"),
    )
}

/// The answer to a body the fast path could not read: read it again as loose JSON to say
/// what is wrong with it and to find its uid.
fn unreadable(body: &[u8], error: &serde_json::Error) -> (Answer, Outcome) {
    let raw: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return invalid("", &format!("the body is not JSON: {e}")),
    };
    let uid = raw
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let field = |name: &str| raw.get(name).and_then(Value::as_str).unwrap_or_default();
    let (version, kind) = (field("apiVersion"), field("kind"));
    if version != ADMISSION_V1 || kind != "AdmissionReview" {
        return wrong_type(uid, version, kind);
    }
    invalid(uid, &format!("the AdmissionReview does not parse: {error}"))
}
