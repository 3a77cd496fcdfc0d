//! `sv-intake`: the webhook intake. Under Lambda (HTTP API payload v2 or a function URL) it
//! serves the router through `lambda_http`; elsewhere it listens on `INTAKE_ADDR`
//! (default 127.0.0.1:3000).

use std::sync::Arc;

use shared::config::{Config, init_tracing};
use shared::deps::Deps;
use shared::ghl::TokenRefresh;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    // The intake may not write the secret: it never refreshes the GHL token.
    let deps = Deps::with_token_refresh(Config::from_env()?, TokenRefresh::Never).await?;
    let app = intake::router(intake::AppState {
        secrets: deps.secrets.clone(),
        queue: Arc::new(deps.queue.clone()),
        mapping: deps.config.mapping.clone(),
        ghl: deps.ghl.clone(),
    });
    if shared::config::in_lambda() {
        lambda_http::run(app).await.map_err(|e| anyhow::anyhow!(e))
    } else {
        let addr = std::env::var("INTAKE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "intake listening");
        axum::serve(listener, app).with_graceful_shutdown(shared::deps::shutdown_signal()).await?;
        Ok(())
    }
}
