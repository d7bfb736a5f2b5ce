//! The AdmissionReview handler: bytes in, an AdmissionReview out, whatever the bytes are.
//! Every answer carries the request's uid when there is one; nothing the API server (or
//! anyone else) sends can make it panic or block a pod for a problem of podvault's own.

use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use podvault_controller::crd::PodVolumeRestore;
use serde_json::Value;

use crate::config::HelperConfig;
use crate::decide::decide;

/// The largest request body read (the API server's objects are at most ~1.5 MiB).
pub const MAX_BODY: usize = 4 << 20;

/// The helper settings and the warnings their ConfigMap raised.
pub type Settings = Arc<(HelperConfig, Vec<String>)>;

/// What the handler knows: the pending restores and the helper settings, kept current by
/// watches (never read per request).
pub struct State {
    /// podvault's own namespace (its pods are never touched).
    pub install_namespace: String,
    /// The PodVolumeRestores not yet started.
    pub pending: RwLock<Arc<Vec<PodVolumeRestore>>>,
    /// The helper settings and the warnings their ConfigMap raised.
    pub config: RwLock<Settings>,
}

impl State {
    /// A state with no pending restore and the default helper settings.
    pub fn new(install_namespace: &str, version: &str) -> State {
        State {
            install_namespace: install_namespace.to_string(),
            pending: RwLock::new(Arc::new(Vec::new())),
            config: RwLock::new(Arc::new((HelperConfig::defaults(version), Vec::new()))),
        }
    }

    fn snapshot(&self) -> (Arc<Vec<PodVolumeRestore>>, Settings) {
        let pending = self
            .pending
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let config = self
            .config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|c| c.into_inner().clone());
        (pending, config)
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

fn answer(response: AdmissionResponse) -> Value {
    serde_json::to_value(response.into_review()).unwrap_or(Value::Null)
}

/// The answer to a body that is not a usable request, with the request's uid when the
/// body has one.
pub fn invalid(uid: &str, reason: &str) -> (Value, Outcome) {
    let mut response = AdmissionResponse::invalid(reason);
    response.uid = uid.to_string();
    (answer(response), Outcome::Invalid)
}

/// Answers one AdmissionReview body.
pub fn review(body: &[u8], state: &State) -> (Value, Outcome) {
    let raw: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return invalid("", &format!("the body is not JSON: {e}")),
    };
    let uid = raw
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let (version, kind) = (
        raw.get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        raw.get("kind").and_then(Value::as_str).unwrap_or_default(),
    );
    if version != "admission.k8s.io/v1" || kind != "AdmissionReview" {
        return invalid(
            &uid,
            &format!("expected an admission.k8s.io/v1 AdmissionReview, got {version:?} {kind:?}"),
        );
    }
    let parsed: AdmissionReview<DynamicObject> = match serde_json::from_value(raw) {
        Ok(r) => r,
        Err(e) => return invalid(&uid, &format!("the AdmissionReview does not parse: {e}")),
    };
    let request: AdmissionRequest<DynamicObject> = match parsed.try_into() {
        Ok(r) => r,
        Err(_) => return invalid(&uid, "the AdmissionReview has no request"),
    };
    let allowed = AdmissionResponse::from(&request);
    if request.kind.kind != "Pod"
        || !request.kind.group.is_empty()
        || request.operation != Operation::Create
    {
        return (answer(allowed), Outcome::Allowed);
    }
    let Some(object) = request.object.as_ref() else {
        let warned = allowed.clone();
        return (
            answer(with_warnings(
                warned,
                vec!["podvault: no pod in the request; allowed unchanged".into()],
            )),
            Outcome::Allowed,
        );
    };
    let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
        Ok(p) => p,
        Err(e) => {
            return (
                answer(with_warnings(
                    allowed,
                    vec![format!(
                        "podvault: the pod does not parse ({e}); allowed unchanged"
                    )],
                )),
                Outcome::Allowed,
            );
        }
    };
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let (pending, config) = state.snapshot();
    let decision = decide(
        &pod,
        &namespace,
        &state.install_namespace,
        &pending,
        &config.0,
    );
    let Some(patch) = decision.patch else {
        return (answer(allowed), Outcome::Allowed);
    };
    let patch: json_patch::Patch = match serde_json::from_value(patch) {
        Ok(p) => p,
        Err(_) => return (answer(allowed), Outcome::Allowed),
    };
    let warnings: Vec<String> = config
        .1
        .iter()
        .map(|w| format!("podvault restore helper ConfigMap: {w}"))
        .collect();
    match allowed.clone().with_patch(patch) {
        Ok(patched) => (answer(with_warnings(patched, warnings)), Outcome::Injected),
        Err(_) => (answer(allowed), Outcome::Allowed),
    }
}

fn with_warnings(mut response: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    response
}
