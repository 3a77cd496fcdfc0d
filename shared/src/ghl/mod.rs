//! HighLevel (LeadConnector) Contacts API v2.
mod client;
mod error;
pub mod models;

pub use client::{API_VERSION, DEFAULT_BASE_URL, GhlClient, GhlSettings, GhlStats, StaticToken, TokenProvider};
pub use error::GhlError;
pub use models::*;
