//! `sv-reconciler`: scheduled drift detection. Under Lambda (the schedule's input is `{}`) it
//! takes the JSON input (`{"dry_run": true}`, `{"since": "2026-11-01"}`, `{"emails": [...]}`) and
//! stops before the invocation's deadline with a checkpoint; `make dev` runs it this way, invoked
//! by a local stand-in for the schedule (tests/src/lambda_local). Outside a Lambda runtime it is
//! an operator's command: it runs once and prints progress and the report, or every N seconds
//! with `--every N`. `--doctor` (or the Lambda input `{"doctor": true}`) checks the setup
//! instead, read-only, and prints a table of what works and what to fix (see `doctor`).
//!
//! Every registered tenant is reconciled along with the deployment's own (see `fleet`);
//! `--tenant ID` (Lambda input `{"tenant": "ID"}`) takes one tenant only, for a run or the doctor.

use std::time::Duration;

use lambda_runtime::{LambdaEvent, service_fn};
use reconciler::ReconcileInput;
use shared::config::{Config, init_tracing};
use shared::tenants::TenantId;

const USAGE: &str = "sv-reconciler [--tenant ID] [--dry-run] [--since YYYY-MM-DD] [--emails a@x,b@y] [--max-steps N] \
                     [--restart] [--every SECONDS] | --doctor [--tenant ID] [--capture DIR]";

/// The tenant a Lambda input names (`"tenant"`), if any.
fn input_tenant(payload: &serde_json::Value) -> Result<Option<TenantId>, lambda_runtime::Error> {
    match payload.get("tenant").and_then(|t| t.as_str()) {
        None => Ok(None),
        Some(t) => Ok(Some(TenantId::parse(t)?)),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    if shared::config::in_lambda() {
        let (fleet, deps) = reconciler::build_fleet(Config::from_env()?).await?;
        let (fleet, deps) = (&fleet, &deps);
        return lambda_runtime::run(service_fn(move |ev: LambdaEvent<serde_json::Value>| async move {
            let tenant = input_tenant(&ev.payload)?;
            if ev.payload.get("doctor") == Some(&serde_json::Value::Bool(true)) {
                let deps = reconciler::wiring::tenant_deps(deps, &tenant.unwrap_or_default()).await?;
                let report = reconciler::doctor::run(&deps, None).await;
                tracing::info!("doctor:\n{}", report.table());
                return Ok::<_, lambda_runtime::Error>(serde_json::to_value(&report)?);
            }
            let mut payload = ev.payload;
            if let Some(o) = payload.as_object_mut() {
                o.remove("tenant");
            }
            let input: ReconcileInput =
                if payload.is_null() { Default::default() } else { serde_json::from_value(payload)? };
            let remaining = ev.context.deadline().duration_since(std::time::SystemTime::now()).unwrap_or_default();
            let deadline = tokio::time::Instant::now() + remaining;
            let report = fleet.run(input, Some(deadline), tenant.as_ref(), &|line| tracing::info!("{line}")).await?;
            log_reports(&report)?;
            Ok::<_, lambda_runtime::Error>(serde_json::to_value(&report)?)
        }))
        .await
        .map_err(|e| anyhow::anyhow!(e));
    }
    let mut input = ReconcileInput::default();
    let mut every: Option<u64> = None;
    let mut doctor = false;
    let mut tenant: Option<TenantId> = None;
    let mut capture: Option<std::path::PathBuf> = None;
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
            "--doctor" => doctor = true,
            "--tenant" => tenant = Some(TenantId::parse(&value("--tenant")?)?),
            "--capture" => capture = Some(value("--capture")?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other}; usage: {USAGE}"),
        }
    }
    let (fleet, deps) = reconciler::build_fleet(Config::from_env()?).await?;
    if doctor {
        let deps = reconciler::wiring::tenant_deps(&deps, &tenant.clone().unwrap_or_default()).await?;
        let report = reconciler::doctor::run(&deps, capture.as_deref()).await;
        print!("{}", report.table());
        if !report.all_ok() {
            std::process::exit(1);
        }
        return Ok(());
    }
    anyhow::ensure!(capture.is_none(), "--capture goes with --doctor; usage: {USAGE}");
    loop {
        let report = fleet.run(input.clone(), None, tenant.as_ref(), &|line| eprintln!("reconcile: {line}")).await;
        match &report {
            Ok(r) => println!("{}", serde_json::to_string_pretty(r)?),
            Err(e) => eprintln!("reconcile: failed: {e}"),
        }
        let Some(secs) = every else {
            let report = report?;
            let failed: Vec<String> = report.failed().map(|t| t.tenant.to_string()).collect();
            anyhow::ensure!(failed.is_empty(), "the run failed for tenant(s) {}", failed.join(", "));
            return Ok(());
        };
        input.restart = false;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(secs)) => {},
            _ = shared::deps::shutdown_signal() => return Ok(()),
        }
    }
}

/// Logs each tenant's report without its plan lines (the invocation's answer has them).
fn log_reports(report: &reconciler::FleetReport) -> Result<(), serde_json::Error> {
    let mut own = report.own.clone();
    own.plan.clear();
    tracing::info!(tenant = "default", report = %serde_json::to_string(&own)?, "reconciliation report");
    for t in &report.tenants {
        let mut t = t.clone();
        if let reconciler::fleet::TenantOutcome::Reconciled { report, .. } = &mut t.outcome {
            report.plan.clear();
        }
        tracing::info!(tenant = %t.tenant, report = %serde_json::to_string(&t)?, "reconciliation report");
    }
    Ok(())
}
