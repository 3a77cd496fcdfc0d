//! Test infrastructure: a local HighLevel and a local SproutVideo that speak the documented APIs,
//! a checker for GHL's published OpenAPI schemas, the contract fixtures and their shape rule,
//! helpers for tests against moto, and a local stand-in for the AWS services that run and invoke
//! the functions (`lambda_local`).

pub mod aws;
pub mod contract;
pub mod faulty_store;
pub mod fixtures;
pub mod ghl_signer;
pub mod lambda_local;
pub mod local_ghl;
pub mod local_sprout;
pub mod pipeline;
pub mod spec;
