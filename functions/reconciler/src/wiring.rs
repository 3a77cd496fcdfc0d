//! The reconciler's wiring: builds a [`Reconciler`] from the configuration.

use std::sync::Arc;
use std::time::Duration;

use crate::fleet::Fleet;
use crate::reconcile::Reconciler;
use shared::config::Config;
use shared::deps::Deps;
use shared::ghl::TokenRefresh;
use shared::mapping::CustomFieldCatalog;
use shared::tenants::{TenantCache, TenantError, TenantId};

pub async fn build(config: Config) -> anyhow::Result<(Reconciler, Deps)> {
    // The reconciler may not write the secret: it waits for the worker to refresh the GHL token.
    let deps = Deps::with_token_refresh(config, TokenRefresh::Never).await?;
    Ok((reconciler(&deps), deps))
}

/// The reconciler of every tenant: the deployment's own, and each registered tenant's.
pub async fn build_fleet(config: Config) -> anyhow::Result<(Fleet, Deps)> {
    let (own, deps) = build(config).await?;
    let (aws, config) = (deps.aws.clone(), deps.config.clone());
    let tenants = TenantCache::new(deps.registry(), deps.config.tenant_cache_ttl, Arc::new(own), move |record| {
        Ok(reconciler(&Deps::build(aws.clone(), config.for_tenant(record)?, TokenRefresh::Never)?))
    });
    Ok((Fleet { tenants }, deps))
}

/// The clients of the registered tenant `id` (for `--doctor --tenant`).
pub async fn tenant_deps(deps: &Deps, id: &TenantId) -> anyhow::Result<Deps> {
    if id.is_default() {
        return Deps::build(deps.aws.clone(), deps.config.clone(), TokenRefresh::Never);
    }
    let record = deps.registry().get(id).await?.ok_or_else(|| TenantError::Unknown(id.to_string()))?;
    Deps::build(deps.aws.clone(), deps.config.for_tenant(&record)?, TokenRefresh::Never)
}

/// One tenant's reconciler over its clients.
pub fn reconciler(deps: &Deps) -> Reconciler {
    let c = &deps.config;
    Reconciler {
        sprout: deps.sprout.clone(),
        ghl: deps.ghl.clone(),
        catalog: Arc::new(CustomFieldCatalog::new(deps.ghl.clone())),
        store: deps.store.clone(),
        queue: deps.command_queue(),
        mapping: c.mapping.clone(),
        lookback_days: c.lookback_days,
        plan_lines: c.plan_lines,
        delete_orphans: c.delete_orphans,
        max_orphan_deletes: c.max_orphan_deletes,
        safety_margin: Duration::from_secs(30),
        search_page_size: crate::reconcile::SEARCH_PAGE,
    }
}
