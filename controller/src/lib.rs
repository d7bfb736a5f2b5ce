//! podvault's Kubernetes side: the custom resources, and (as they land) the volume
//! selection, controllers, node agent and restore-wait. The engine crates (`store`,
//! `scanner`) know nothing of Kubernetes; this crate wires them to it.

pub mod agent;
pub mod aggregate;
pub mod backups;
pub mod cluster;
pub mod crd;
pub mod duration;
pub mod hostpath;
pub mod leader;
pub mod lineage;
pub mod metrics;
pub mod node_agent;
pub mod plan;
pub mod repositories;
pub mod restores;
pub mod select;
