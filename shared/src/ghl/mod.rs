//! HighLevel (LeadConnector) Contacts API v2.
mod client;
mod error;
pub mod models;
mod token;

pub use client::{API_VERSION, DEFAULT_BASE_URL, GhlClient, GhlSettings, GhlStats};
pub use error::GhlError;
pub use models::*;
pub use token::{SecretTokenProvider, StaticToken, TokenProvider, TokenRefresh};
