//! SproutVideo API v1.
mod client;
pub mod models;

pub use client::{DEFAULT_BASE_URL, MAX_PER_PAGE, SessionQuery, SproutClient, SproutError, SproutSettings};
pub use models::*;
