//! podvault's mutating admission webhook: on pod creation in a namespace being restored, it
//! puts the restore helper (`podvault restore-wait`) first among the pod's init containers,
//! so a restore works whoever creates the pod.

pub mod config;
pub mod decide;
pub mod handler;
pub mod run;
pub mod server;
pub mod watch;

pub use run::{Certificates, Config, Error, Webhook};
