//! Test infrastructure: a local HighLevel and a local SproutVideo that speak the documented APIs,
//! a checker for GHL's published OpenAPI schemas, and helpers for tests against moto.

pub mod aws;
pub mod contract;
pub mod local_ghl;
pub mod local_sprout;
pub mod pipeline;
pub mod spec;
