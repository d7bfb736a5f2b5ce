//! podvault's Kubernetes API, shared by the controller, the node agent, the webhook and the
//! CLI: the custom resources of group `podvault.io`, the names users see on objects, and
//! the rules that say which pods a restore is for. No backup engine and no client here.

pub mod crd;
pub mod duration;
pub mod names;
pub mod pods;
pub mod selector;
