//! The sync worker: applies queued commands to HighLevel, exactly once in effect.
//!
//! `handler` is the SQS adapter (Lambda event in, partial batch response out); `apply` is the
//! logic and never sees a Lambda type (`access` is its part for course access from GHL tags); `fleet` gives each tenant's messages to that tenant's worker; `wiring` builds them from the
//! configuration.

pub mod access;
pub mod apply;
pub mod fleet;
pub mod handler;
pub mod wiring;

pub use apply::{Applied, ApplyError, BatchOutcome, Deadline, QueueMessage, Worker};
pub use fleet::{Fleet, TenantBatch};
pub use handler::{handle, handle_batch};
pub use wiring::{build, build_fleet};
