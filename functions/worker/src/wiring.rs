//! Builds the worker from the environment's configuration.

use std::sync::Arc;

use shared::config::Config;
use shared::deps::Deps;
use shared::ghl::TokenRefresh;
use shared::mapping::CustomFieldCatalog;

use shared::tenants::TenantCache;

use crate::apply::Worker;
use crate::fleet::Fleet;

/// Builds the worker of the deployment's own tenant from the environment's configuration.
pub async fn build(config: Config) -> anyhow::Result<(Arc<Worker>, Deps)> {
    // The worker may write the secret: it alone refreshes the GHL OAuth token.
    let deps = Deps::with_token_refresh(config, TokenRefresh::Allowed).await?;
    Ok((Arc::new(worker(&deps)), deps))
}

/// Builds the workers of every tenant: the deployment's own now, a registered tenant's when its
/// first message comes (and again when its record changes).
pub async fn build_fleet(config: Config) -> anyhow::Result<(Arc<Fleet>, Deps)> {
    let (default, deps) = build(config).await?;
    let (aws, config) = (deps.aws.clone(), deps.config.clone());
    let tenants = TenantCache::new(deps.registry(), deps.config.tenant_cache_ttl, default, move |record| {
        Ok(worker(&Deps::build(aws.clone(), config.for_tenant(record)?, TokenRefresh::Allowed)?))
    });
    Ok((Arc::new(Fleet { tenants }), deps))
}

/// One tenant's worker over its clients.
pub fn worker(deps: &Deps) -> Worker {
    let c = &deps.config;
    Worker {
        ghl: deps.ghl.clone(),
        catalog: Arc::new(CustomFieldCatalog::new(deps.ghl.clone())),
        store: deps.store.clone(),
        queues: Arc::new(deps.queue.clone()),
        commands: deps.command_queue(),
        sprout: deps.sprout.clone(),
        mapping: c.mapping.clone(),
        lease: c.claim_lease(),
        ambiguity_grace: c.ghl_request_timeout * 2,
        retry_base_secs: c.retry_base_secs,
        concurrency: c.batch_concurrency,
        lookback_days: c.lookback_days,
        identity_conflicts: Default::default(),
        api_drift: Default::default(),
    }
}
