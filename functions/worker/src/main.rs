//! `sv-worker`: applies queued sync commands to HighLevel, as the Lambda function the SQS
//! event-source mapping invokes. Locally, `make dev` runs it the same way, behind a stand-in for
//! the mapping (tests/src/lambda_local).

use lambda_runtime::{LambdaEvent, service_fn};
use shared::config::{Config, init_tracing};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    anyhow::ensure!(
        shared::config::in_lambda(),
        "sv-worker runs under a Lambda runtime (AWS_LAMBDA_RUNTIME_API is not set); run it locally with `make dev`"
    );
    let (fleet, deps) = worker::build_fleet(Config::from_env()?).await?;
    let request_timeout = deps.config.ghl_request_timeout;
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<aws_lambda_events::event::sqs::SqsEvent>| {
        let fleet = fleet.clone();
        async move { Ok::<_, lambda_runtime::Error>(worker::handle(&fleet, ev, request_timeout).await) }
    }))
    .await
    .map_err(|e| anyhow::anyhow!(e))
}
