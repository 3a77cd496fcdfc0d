//! Builds the worker from the environment's configuration.

use std::sync::Arc;

use shared::config::Config;
use shared::deps::Deps;
use shared::ghl::TokenRefresh;
use shared::mapping::CustomFieldCatalog;

use crate::apply::Worker;

/// Builds the worker from the environment's configuration.
pub async fn build(config: Config) -> anyhow::Result<(Arc<Worker>, Deps)> {
    // The worker may write the secret: it alone refreshes the GHL OAuth token.
    let deps = Deps::with_token_refresh(config, TokenRefresh::Allowed).await?;
    let c = &deps.config;
    let worker = Worker {
        ghl: deps.ghl.clone(),
        catalog: Arc::new(CustomFieldCatalog::new(deps.ghl.clone())),
        store: deps.store.clone(),
        queues: Arc::new(deps.queue.clone()),
        commands: Arc::new(deps.queue.clone()),
        sprout: deps.sprout.clone(),
        mapping: c.mapping.clone(),
        lease: c.claim_lease(),
        ambiguity_grace: c.ghl_request_timeout * 2,
        retry_base_secs: c.retry_base_secs,
        concurrency: c.batch_concurrency,
        lookback_days: c.lookback_days,
        identity_conflicts: Default::default(),
        api_drift: Default::default(),
    };
    Ok((Arc::new(worker), deps))
}
