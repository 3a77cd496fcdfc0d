//! Builds the intake from the configuration: the deployment's own tenant now, a registered
//! tenant's when a caller first names it.

use std::sync::Arc;

use shared::budget::Lane;
use shared::config::Config;
use shared::deps::Deps;
use shared::ghl::TokenRefresh;
use shared::tenants::TenantCache;

use crate::ghl_webhook::WebhookKeys;
use crate::routes::{AppState, GhlWebhooks, Intake};

/// One tenant's intake over its clients.
pub fn app_state(deps: &Deps, keys: Arc<WebhookKeys>) -> AppState {
    AppState {
        secrets: deps.secrets.clone(),
        queue: deps.command_queue(),
        mapping: deps.config.mapping.clone(),
        // A person waits for the one-view: its reads take the interactive lane of the budget.
        ghl: deps.ghl.with_budget(deps.budget.clone(), Lane::Interactive).with_retry(shared::retry::RetryPolicy {
            deadline: Some(crate::view::VIEW_RETRY_DEADLINE),
            ..deps.config.ghl_settings().retry
        }),
        sprout: deps.sprout.clone(),
        conflicts: crate::view::ConflictReader::new(deps.store.clone()),
        ghl_webhooks: GhlWebhooks::shared(keys, deps.store.clone()),
    }
}

/// The intake of every tenant. The intake may not write a secret: it never refreshes a GHL token.
pub async fn build(config: Config, keys: WebhookKeys) -> anyhow::Result<(Intake, Deps)> {
    let deps = Deps::with_token_refresh(config, TokenRefresh::Never).await?;
    let keys = Arc::new(keys);
    let own = Arc::new(app_state(&deps, keys.clone()));
    let (aws, config) = (deps.aws.clone(), deps.config.clone());
    let tenants = TenantCache::new(deps.registry(), deps.config.tenant_cache_ttl, own, move |record| {
        Ok(app_state(&Deps::build(aws.clone(), config.for_tenant(record)?, TokenRefresh::Never)?, keys.clone()))
    });
    Ok((Intake { tenants: Arc::new(tenants) }, deps))
}
