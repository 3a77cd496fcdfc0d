//! `sv-reconciler`: scheduled drift detection. Under Lambda (the schedule's input is `{}`) it
//! takes the JSON input (`{"dry_run": true}`, `{"since": "2026-11-01"}`, `{"emails": [...]}`) and
//! stops before the invocation's deadline with a checkpoint; `make dev` runs it this way, invoked
//! by a local stand-in for the schedule (tests/src/lambda_local). Outside a Lambda runtime it is
//! an operator's command: it runs once and prints progress and the report, or every N seconds
//! with `--every N`.

use std::time::Duration;

use lambda_runtime::{LambdaEvent, service_fn};
use reconciler::ReconcileInput;
use shared::config::{Config, init_tracing};

const USAGE: &str =
    "sv-reconciler [--dry-run] [--since YYYY-MM-DD] [--emails a@x,b@y] [--max-steps N] [--restart] [--every SECONDS]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    if shared::config::in_lambda() {
        let (rec, _deps) = reconciler::build(Config::from_env()?).await?;
        let rec = &rec;
        return lambda_runtime::run(service_fn(move |ev: LambdaEvent<serde_json::Value>| async move {
            let input: ReconcileInput =
                if ev.payload.is_null() { Default::default() } else { serde_json::from_value(ev.payload)? };
            let remaining = ev.context.deadline().duration_since(std::time::SystemTime::now()).unwrap_or_default();
            let deadline = tokio::time::Instant::now() + remaining;
            let report = rec.run(input, Some(deadline), &|line| tracing::info!("{line}")).await?;
            let mut summary = report.clone();
            summary.plan.clear();
            tracing::info!(report = %serde_json::to_string(&summary)?, "reconciliation report");
            Ok::<_, lambda_runtime::Error>(report)
        }))
        .await
        .map_err(|e| anyhow::anyhow!(e));
    }
    let mut input = ReconcileInput::default();
    let mut every: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| anyhow::anyhow!("{name} needs a value; usage: {USAGE}"));
        match a.as_str() {
            "--dry-run" => input.dry_run = true,
            "--restart" => input.restart = true,
            "--since" => input.since = Some(value("--since")?.parse()?),
            "--emails" => input.emails = Some(value("--emails")?.split(',').map(str::to_string).collect()),
            "--max-steps" => input.max_steps = Some(value("--max-steps")?.parse()?),
            "--every" => every = Some(value("--every")?.parse()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other}; usage: {USAGE}"),
        }
    }
    let (rec, _deps) = reconciler::build(Config::from_env()?).await?;
    loop {
        let report = rec.run(input.clone(), None, &|line| eprintln!("reconcile: {line}")).await;
        match &report {
            Ok(r) => println!("{}", serde_json::to_string_pretty(r)?),
            Err(e) => eprintln!("reconcile: failed: {e}"),
        }
        let Some(secs) = every else {
            report?;
            return Ok(());
        };
        input.restart = false;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(secs)) => {},
            _ = shared::deps::shutdown_signal() => return Ok(()),
        }
    }
}
