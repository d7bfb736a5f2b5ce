//! podvault's Kubernetes side: the custom resources, and (as they land) the volume
//! selection, controllers, node agent and restore-wait. The engine crates (`store`,
//! `scanner`) know nothing of Kubernetes; this crate wires them to it.

pub mod agent;
pub mod aggregate;
pub mod crd;
pub mod duration;
pub mod hostpath;
pub mod lineage;
pub mod plan;
pub mod select;
