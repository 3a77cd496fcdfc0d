//! `sv-intake`: the webhook intake, as the Lambda function behind the HTTP API (payload format
//! 2.0): `lambda_http` turns each event into a request for the router and its answer back into
//! the function's response. Locally, `make dev` runs it the same way, behind a stand-in for the
//! HTTP API (tests/src/lambda_local).

use shared::config::{Config, init_tracing};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    anyhow::ensure!(
        shared::config::in_lambda(),
        "sv-intake runs under a Lambda runtime (AWS_LAMBDA_RUNTIME_API is not set); run it locally with `make dev`"
    );
    let keys = intake::ghl_webhook::WebhookKeys::from_env()?;
    let (intake, _deps) = intake::wiring::build(Config::from_env()?, keys).await?;
    let app = intake::router_for(intake);
    lambda_http::run(app).await.map_err(|e| anyhow::anyhow!(e))
}
