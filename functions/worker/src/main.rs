//! `sv-worker`: applies queued sync commands to HighLevel. Under Lambda it is the SQS handler;
//! elsewhere it long-polls the queue itself.

use lambda_runtime::{LambdaEvent, service_fn};
use shared::config::{Config, init_tracing};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let (worker, deps) = worker::build(Config::from_env()?).await?;
    if shared::config::in_lambda() {
        lambda_runtime::run(service_fn(move |ev: LambdaEvent<aws_lambda_events::event::sqs::SqsEvent>| {
            let worker = worker.clone();
            async move { Ok::<_, lambda_runtime::Error>(worker::handle(&worker, ev.payload).await) }
        }))
        .await
        .map_err(|e| anyhow::anyhow!(e))
    } else {
        let wait = std::env::var("WORKER_POLL_WAIT_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
        tracing::info!(queue = %deps.config.queue_url, "worker polling the queue (Ctrl-C to stop)");
        worker::run_local(
            worker,
            deps.queue.client().clone(),
            deps.config.queue_url.clone(),
            wait,
            shared::deps::shutdown_signal(),
        )
        .await;
        Ok(())
    }
}
