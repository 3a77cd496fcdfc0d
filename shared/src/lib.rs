//! The library behind the SproutVideo → HighLevel sync.
//!
//! Only what two or more of the functions in `functions/` use lives here: the GHL and SproutVideo
//! clients, identity parsing, the field mapping, the facts-to-commands rules, the queue message
//! model, the queue and state store, secrets, configuration and dependency wiring. Each
//! function's own logic lives in its crate. Nothing here sees a Lambda type.

pub mod aws;
pub mod budget;
pub mod commands;
pub mod config;
pub mod deps;
pub mod facts;
pub mod ghl;
pub mod http;
pub mod identity;
pub mod mapping;
pub mod pacing;
pub mod queue;
pub mod retry;
pub mod secrets;
pub mod sprout;
pub mod state;
pub mod tenants;
