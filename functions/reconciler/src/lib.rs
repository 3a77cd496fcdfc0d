//! The scheduled reconciler: finds what webhooks missed and queues only what differs.
//!
//! `reconcile` is the logic (staged, checkpointed, never sees a Lambda type); `fleet` runs it for
//! every tenant; `wiring` builds it
//! from the configuration; `main.rs` adapts it to Lambda's scheduled invocation and to a CLI.

pub mod doctor;
pub mod fleet;
pub mod reconcile;
pub mod wiring;

pub use fleet::{Fleet, FleetReport};
pub use reconcile::{ReconcileInput, Reconciler, Report};
pub use wiring::{build, build_fleet};
