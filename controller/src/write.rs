//! How the controller and the node agent write to the API: each under a field manager of
//! its own, so that the API server (and `kubectl get -o yaml --show-managed-fields`) tells
//! who set what. Statuses go by server-side apply, forced: the component is the authority
//! on what it reports, and takes a field over from the other when it must (the controller
//! failing a volume whose node agent is gone). Targeted edits of a field or label go as
//! merge patches under the same manager.

use kube::Resource;
use kube::api::{Patch, PatchParams, PostParams};
use serde::Serialize;
use serde_json::{Value, json};

/// The backup, restore and repository controllers' field manager.
pub const CONTROLLER: &str = "podvault-controller";

/// The node agents' field manager.
pub const NODE_AGENT: &str = "podvault-node-agent";

/// Server-side apply as `manager`, forced.
pub fn applying(manager: &str) -> PatchParams {
    PatchParams::apply(manager).force()
}

/// A merge patch or replace as `manager`.
pub fn updating(manager: &str) -> PatchParams {
    PatchParams {
        field_manager: Some(manager.to_string()),
        ..PatchParams::default()
    }
}

/// A create as `manager`.
pub fn creating(manager: &str) -> PostParams {
    PostParams {
        field_manager: Some(manager.to_string()),
        ..PostParams::default()
    }
}

/// The apply body of an object's whole `status`; with `version`, the API server refuses
/// it (409) if the object changed since that version was read.
pub fn status<K: Resource<DynamicType = ()>>(
    status: &impl Serialize,
    version: Option<&str>,
) -> Patch<Value> {
    let mut body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if let Some(version) = version {
        body["metadata"] = json!({ "resourceVersion": version });
    }
    Patch::Apply(body)
}

/// Creates `object` as `manager` unless it exists; whether it was created. An object of
/// the same name that exists already (made by an earlier reconcile) is left as it is.
pub async fn create_if_missing<K>(
    manager: &str,
    api: &kube::Api<K>,
    object: &K,
) -> Result<bool, kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.create(&creating(manager), object).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Backup, BackupStatus};

    #[test]
    fn a_status_apply_names_its_kind_and_may_carry_the_version_read() {
        let Patch::Apply(body) = status::<Backup>(&BackupStatus::default(), Some("7")) else {
            panic!("not an apply");
        };
        assert_eq!(body["apiVersion"], "podvault.io/v1alpha1");
        assert_eq!(body["kind"], "Backup");
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert_eq!(body["status"]["phase"], "New");
        let p = applying(CONTROLLER);
        assert!(p.force && p.field_manager.as_deref() == Some(CONTROLLER));
        assert_eq!(
            updating(NODE_AGENT).field_manager.as_deref(),
            Some(NODE_AGENT)
        );
        assert!(!updating(NODE_AGENT).force);
    }
}
