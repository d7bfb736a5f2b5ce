//! podvault's Kubernetes side: volume selection, the backup and restore controllers, the
//! node agent and restore-wait. The custom resources and the names users see live in
//! `podvault_api` (re-exported here as `crd` and `duration`); the engine crates (`store`,
//! `scanner`) know nothing of Kubernetes; this crate wires them to it.

pub mod agent;
pub mod aggregate;
pub mod backups;
pub mod cluster;
pub mod hostpath;
pub mod leader;
pub mod lineage;
pub mod metrics;
pub mod node_agent;
pub mod plan;
pub mod repositories;
pub mod restores;
pub mod run;
pub mod select;
pub mod write;

pub use podvault_api::{crd, duration};
