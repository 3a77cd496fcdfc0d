//! The library behind the SproutVideo → HighLevel sync.
//!
//! Lambda handlers in `functions/` are thin adapters over what lives here: the GHL and
//! SproutVideo clients, identity parsing, the field mapping, the queue message model, the sync
//! state store, and the intake, worker and reconciler logic. Nothing here sees a Lambda type.

pub mod commands;
pub mod config;
pub mod ghl;
pub mod http;
pub mod identity;
pub mod intake;
pub mod mapping;
pub mod pacing;
pub mod plan;
pub mod queue;
pub mod reconcile;
pub mod runtime;
pub mod secrets;
pub mod sprout;
pub mod state;
pub mod worker;
