//! The reconciler's wiring: builds a [`Reconciler`] from the configuration.

use std::sync::Arc;
use std::time::Duration;

use crate::reconcile::Reconciler;
use shared::config::Config;
use shared::deps::Deps;
use shared::ghl::TokenRefresh;
use shared::mapping::CustomFieldCatalog;

pub async fn build(config: Config) -> anyhow::Result<(Reconciler, Deps)> {
    // The reconciler may not write the secret: it waits for the worker to refresh the GHL token.
    let deps = Deps::with_token_refresh(config, TokenRefresh::Never).await?;
    let c = &deps.config;
    let r = Reconciler {
        sprout: deps.sprout.clone(),
        ghl: deps.ghl.clone(),
        catalog: Arc::new(CustomFieldCatalog::new(deps.ghl.clone())),
        store: deps.store.clone(),
        queue: Arc::new(deps.queue.clone()),
        mapping: c.mapping.clone(),
        lookback_days: c.lookback_days,
        plan_lines: c.plan_lines,
        delete_orphans: c.delete_orphans,
        max_orphan_deletes: c.max_orphan_deletes,
        safety_margin: Duration::from_secs(30),
        search_page_size: crate::reconcile::SEARCH_PAGE,
    };
    Ok((r, deps))
}
