//! SproutVideo API v1.
mod client;
mod key;
pub mod models;

pub use client::{DEFAULT_BASE_URL, MAX_PER_PAGE, SessionQuery, SproutClient, SproutError, SproutSettings};
pub use key::{ApiKeySource, SecretApiKey, StaticKey};
pub use models::*;
