//! The integration and end-to-end tests, in one test binary (one link instead of ten): the API
//! clients against the local fakes, the intake, the worker and the reconciler against moto and
//! the fakes, the state and queue contracts, the Lambda entry points, IAM enforcement, and the
//! pipeline as `make dev` runs it. Run one suite with a filter, e.g.
//! `scripts/with-moto.sh cargo test -p sync-tests --test suite worker::`.
//!
//! The chaos soak is its own binary (`--test soak`), so `make soak` can run it at length.

mod access;
mod contracts;
mod doctor;
mod fixtures;
mod ghl_client;
mod ghl_webhooks;
mod iam;
mod intake;
mod lambda_entry_points;
mod pipeline;
mod reconciler;
mod sprout_client;
mod tenants;
mod worker;
mod worker_logic;
