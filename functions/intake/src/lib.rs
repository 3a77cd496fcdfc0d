//! The webhook intake: authenticates callers, turns event bodies into sync commands and queues
//! them, and serves the one-view read of a contact.
//!
//! `routes` is the HTTP adapter (an axum router that `lambda_http` serves in Lambda, with the
//! extractors that authenticate callers); `auth`, `events`, `fields`, `ghl_webhook`, `schema` and `view` are
//! plain logic and never see an HTTP or Lambda type.

pub mod auth;
pub mod events;
pub mod fields;
pub mod ghl_webhook;
pub mod routes;
pub mod schema;
pub mod view;
pub mod wiring;

pub use routes::{AppState, GhlWebhooks, Intake, router, router_for};
