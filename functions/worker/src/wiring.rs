//! Builds the worker from the environment's configuration.

use std::sync::Arc;

use shared::config::Config;
use shared::deps::Deps;
use shared::mapping::CustomFieldCatalog;

use crate::apply::Worker;

/// Builds the worker from the environment's configuration.
pub async fn build(config: Config) -> anyhow::Result<(Arc<Worker>, Deps)> {
    let deps = Deps::new(config).await?;
    let sprout = match deps.sprout().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "SproutVideo client unavailable; video refreshes will be retried");
            None
        }
    };
    let c = &deps.config;
    let worker = Worker {
        ghl: deps.ghl.clone(),
        catalog: Arc::new(CustomFieldCatalog::new(deps.ghl.clone())),
        store: deps.store.clone(),
        queues: Arc::new(deps.queue.clone()),
        commands: Arc::new(deps.queue.clone()),
        sprout,
        mapping: c.mapping.clone(),
        lease: c.claim_lease(),
        ambiguity_grace: c.ghl_request_timeout * 2,
        retry_base_secs: c.retry_base_secs,
        concurrency: c.batch_concurrency,
        lookback_days: c.lookback_days,
        identity_conflicts: Default::default(),
    };
    Ok((Arc::new(worker), deps))
}
