//! `sv-intake`: the webhook intake, as the Lambda function behind the HTTP API (payload format
//! 2.0): `lambda_http` turns each event into a request for the router and its answer back into
//! the function's response. Locally, `make dev` runs it the same way, behind a stand-in for the
//! HTTP API (tests/src/lambda_local).

use std::sync::Arc;

use shared::config::{Config, init_tracing};
use shared::deps::Deps;
use shared::ghl::TokenRefresh;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    anyhow::ensure!(
        shared::config::in_lambda(),
        "sv-intake runs under a Lambda runtime (AWS_LAMBDA_RUNTIME_API is not set); run it locally with `make dev`"
    );
    // The intake may not write the secret: it never refreshes the GHL token.
    let deps = Deps::with_token_refresh(Config::from_env()?, TokenRefresh::Never).await?;
    let keys = intake::ghl_webhook::WebhookKeys::from_env()?;
    let app = intake::router(intake::AppState {
        secrets: deps.secrets.clone(),
        queue: Arc::new(deps.queue.clone()),
        mapping: deps.config.mapping.clone(),
        // A person waits for the one-view: its reads take the interactive lane of the budget.
        ghl: deps.ghl.with_budget(deps.budget.clone(), shared::budget::Lane::Interactive).with_retry(
            shared::retry::RetryPolicy {
                deadline: Some(intake::view::VIEW_RETRY_DEADLINE),
                ..deps.config.ghl_settings().retry
            },
        ),
        sprout: deps.sprout.clone(),
        conflicts: intake::view::ConflictReader::new(deps.store.clone()),
        ghl_webhooks: intake::GhlWebhooks::new(keys, deps.store.clone()),
    });
    lambda_http::run(app).await.map_err(|e| anyhow::anyhow!(e))
}
