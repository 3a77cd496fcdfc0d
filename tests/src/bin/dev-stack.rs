//! `dev-stack`: runs the whole pipeline locally, as `make dev` does, the way AWS runs it.
//!
//! Starts moto (the local AWS, with IAM authorization), the local GHL and local SproutVideo
//! (seeded with demo data) unless real credentials are given, creates the queue, dead-letter
//! queue, state table and secret with the template's settings, then deploys the template's three
//! functions on the local stand-in for Lambda (`sync_tests::lambda_local`): each function is its
//! own binary entered through its Lambda entry point, with its own IAM user whose policy is the
//! template's; the intake behind the HTTP API (`INTAKE_ADDR`), the worker behind the SQS
//! event-source mapping (the template's batch size and maximum concurrency), the reconciler on
//! its schedule (the template's input, once at start and every `RECONCILE_EVERY` seconds), and
//! Lambda's Invoke API on `LAMBDA_API_ADDR`. Ctrl-C (or SIGTERM) stops everything and prints
//! what each function was granted against what it used.
//!
//! With the local GHL and SproutVideo, course access works end to end: the local GHL signs its
//! webhooks with keys of its own, which the intake is given (the template's key parameters),
//! and sends each tag change to the intake's `/webhooks/ghl`; the functions read a mapping with
//! one `[[access]]` rule (written to `DEV_DIR/mapping.toml` unless `SYNC_MAPPING_FILE` is
//! set): tag `course-a` grants the two demo videos, the password goes to the custom field
//! `contact.sv_password`.
//!
//! Environment (all optional):
//! - `SYNC_WEBHOOK_TOKEN` (dev-webhook-token), `SYNC_SIGNING_SECRET` (dev-signing-secret),
//!   `SYNC_READ_API_KEY` (dev-read-key), `SYNC_GHL_WORKFLOW_TOKEN` (dev-ghl-workflow-token): the
//!   local secret's values;
//! - `GHL_TOKEN` + `GHL_LOCATION_ID`: talk to the real GHL instead of the local one;
//! - `SPROUTVIDEO_API_KEY`: talk to the real SproutVideo instead of the local one;
//! - `INTAKE_ADDR` (127.0.0.1:3000), `LAMBDA_API_ADDR` (127.0.0.1:9001), `LOCAL_GHL_ADDR`
//!   (127.0.0.1:4010), `LOCAL_SPROUT_ADDR` (127.0.0.1:4020), `MOTO_PORT` (5000);
//! - `RECONCILE_EVERY` (60 seconds), `DEV_VISIBILITY_TIMEOUT` (30 seconds; the template's is 360),
//!   `DEV_DIR` (.dev);
//! - tuning variables (`GHL_*`, `WORKER_*`, `SPROUTVIDEO_*`, `RECONCILE_*`, `SYNC_*`,
//!   `SECRET_CACHE_*`, `TENANT_*`) are passed on to the functions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use sync_tests::aws::{Stack, StackNames, StackSettings};
use sync_tests::lambda_local::template::Template;
use sync_tests::lambda_local::{DeploySettings, Deployment, moto};
use tokio::process::{Child, Command};

const DEV_LOCATION: &str = "devLocation000000001";
/// The access rule of the dev mapping: the demo's two videos for tag `course-a`.
const DEV_ACCESS_RULE: &str = r#"
# Added by dev-stack: course access from the GHL tag `course-a`.
[[access]]
tag = "course-a"
video_ids = ["a0b1c2d3e4f5a6b7c8", "d1a2b3c4d5e6f7a8b9"]
password_field = "contact.sv_password"
"#;
const STACK_NAME: &str = "sv-ghl-sync-dev";

struct Settings {
    dir: PathBuf,
    bin_dir: PathBuf,
    moto_port: u16,
    intake_addr: String,
    lambda_api_addr: String,
    ghl_addr: String,
    sprout_addr: String,
    reconcile_every: u64,
    visibility: u32,
    webhook_token: String,
    signing_secret: String,
    read_key: String,
    workflow_token: String,
    ghl_token: Option<String>,
    ghl_location: Option<String>,
    sprout_key: Option<String>,
}

fn env_or(k: &str, d: &str) -> String {
    std::env::var(k).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| d.to_string())
}

fn settings() -> anyhow::Result<Settings> {
    let exe = std::env::current_exe()?;
    Ok(Settings {
        dir: PathBuf::from(env_or("DEV_DIR", ".dev")),
        bin_dir: exe.parent().context("binary directory")?.to_path_buf(),
        moto_port: env_or("MOTO_PORT", "5000").parse().context("MOTO_PORT")?,
        intake_addr: env_or("INTAKE_ADDR", "127.0.0.1:3000"),
        lambda_api_addr: env_or("LAMBDA_API_ADDR", "127.0.0.1:9001"),
        ghl_addr: env_or("LOCAL_GHL_ADDR", "127.0.0.1:4010"),
        sprout_addr: env_or("LOCAL_SPROUT_ADDR", "127.0.0.1:4020"),
        reconcile_every: env_or("RECONCILE_EVERY", "60").parse().context("RECONCILE_EVERY")?,
        visibility: env_or("DEV_VISIBILITY_TIMEOUT", "30").parse().context("DEV_VISIBILITY_TIMEOUT")?,
        webhook_token: env_or("SYNC_WEBHOOK_TOKEN", "dev-webhook-token"),
        signing_secret: env_or("SYNC_SIGNING_SECRET", "dev-signing-secret"),
        read_key: env_or("SYNC_READ_API_KEY", "dev-read-key"),
        workflow_token: env_or("SYNC_GHL_WORKFLOW_TOKEN", "dev-ghl-workflow-token"),
        ghl_token: std::env::var("GHL_TOKEN").ok().filter(|v| !v.is_empty()),
        ghl_location: std::env::var("GHL_LOCATION_ID").ok().filter(|v| !v.is_empty()),
        sprout_key: std::env::var("SPROUTVIDEO_API_KEY").ok().filter(|v| !v.is_empty()),
    })
}

fn main() -> anyhow::Result<()> {
    let s = settings()?;
    let endpoint = format!("http://127.0.0.1:{}", s.moto_port);
    // Set before any thread exists: the harness's own AWS clients read these while it sets up
    // (moto checks no credentials until the functions are deployed).
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "dev"),
        ("AWS_SECRET_ACCESS_KEY", "dev"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
    ] {
        // SAFETY: single-threaded here; the runtime is built below.
        unsafe { std::env::set_var(k, v) };
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(s))
}

/// A supporting process (moto, the local GHL and SproutVideo): if one dies, everything stops.
struct Proc {
    name: &'static str,
    child: Child,
}

fn log_file(s: &Settings, name: &str) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(s.dir.join("logs"))?;
    Ok(std::fs::OpenOptions::new().create(true).append(true).open(s.dir.join("logs").join(format!("{name}.log")))?)
}

async fn spawn(s: &Settings, name: &'static str, mut cmd: Command) -> anyhow::Result<Proc> {
    let log = log_file(s, name)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("could not start {name}"))?;
    Ok(Proc { name, child })
}

async fn wait_http(url: &str, what: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if http.get(url).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{what} did not come up at {url}; see its log under .dev/logs")
}

async fn run(s: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&s.dir)?;
    let _ = std::fs::remove_file(s.dir.join("stack.json"));
    let _ = std::fs::remove_file(s.dir.join("iam-audit.jsonl"));
    let mut procs: Vec<Proc> = Vec::new();
    let mut deployment = None;
    let result = start(&s, &mut procs, &mut deployment).await;
    if let Err(e) = &result {
        eprintln!("dev-stack: {e:#}");
    } else if let Some(d) = &deployment {
        supervise(&s, &mut procs, d).await;
    }
    if let Some(d) = deployment {
        let report = d.access_report(&s.dir.join("iam-audit.jsonl"));
        eprintln!("dev-stack: what each function was granted, against the calls it made:\n{report}");
        eprintln!("dev-stack: stopping the functions");
        d.shutdown().await;
    }
    eprintln!("dev-stack: stopping {} process(es)", procs.len());
    for p in procs.iter_mut().rev() {
        stop(&mut p.child).await;
    }
    let _ = std::fs::remove_file(s.dir.join("stack.json"));
    eprintln!("dev-stack: stopped");
    result
}

async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SIGTERM first, so servers shut down cleanly.
        let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}

/// Tuning variables given to dev-stack that the functions should see (never the secret values,
/// which live in the secret, nor the ones the template resolves to the local resources).
fn passed_on_env() -> BTreeMap<String, String> {
    const SECRET_VARS: &[&str] = &[
        "GHL_TOKEN",
        "SPROUTVIDEO_API_KEY",
        "SYNC_WEBHOOK_TOKEN",
        "SYNC_SIGNING_SECRET",
        "SYNC_READ_API_KEY",
        "SYNC_GHL_WORKFLOW_TOKEN",
    ];
    const RESOURCE_VARS: &[&str] =
        &["SYNC_SECRET_ID", "SYNC_QUEUE_URL", "SYNC_DLQ_URL", "SYNC_TABLE", "GHL_LOCATION_ID"];
    std::env::vars()
        .filter(|(k, _)| {
            ["SYNC_", "GHL_", "WORKER_", "SPROUTVIDEO_", "RECONCILE_", "SECRET_CACHE_", "TENANT_"]
                .iter()
                .any(|p| k.starts_with(p))
                && !SECRET_VARS.contains(&k.as_str())
                && !RESOURCE_VARS.contains(&k.as_str())
        })
        .collect()
}

async fn start(s: &Settings, procs: &mut Vec<Proc>, deployment: &mut Option<Deployment>) -> anyhow::Result<()> {
    let endpoint = format!("http://127.0.0.1:{}", s.moto_port);
    let audit = s.dir.join("iam-audit.jsonl");
    procs.push(spawn(s, "moto", moto::command(&s.dir, s.moto_port, &audit)?).await?);
    moto::wait_ready(&endpoint).await?;
    eprintln!("dev-stack: moto (local AWS) on 127.0.0.1:{}", s.moto_port);

    let real_ghl = s.ghl_token.is_some() && s.ghl_location.is_some();
    let ghl_base = if real_ghl {
        eprintln!("dev-stack: using the real HighLevel API (GHL_TOKEN and GHL_LOCATION_ID are set)");
        shared::ghl::DEFAULT_BASE_URL.to_string()
    } else {
        let mut cmd = Command::new(s.bin_dir.join("local-ghl"));
        cmd.args(["--listen", &s.ghl_addr]);
        procs.push(spawn(s, "local-ghl", cmd).await?);
        wait_http(&format!("http://{}/_admin/state", s.ghl_addr), "the local GHL").await?;
        format!("http://{}/", s.ghl_addr)
    };
    let sprout_base = if s.sprout_key.is_some() {
        eprintln!("dev-stack: using the real SproutVideo API (SPROUTVIDEO_API_KEY is set)");
        shared::sprout::DEFAULT_BASE_URL.to_string()
    } else {
        let mut cmd = Command::new(s.bin_dir.join("local-sproutvideo"));
        cmd.args(["--listen", &s.sprout_addr, "--demo"]);
        procs.push(spawn(s, "local-sproutvideo", cmd).await?);
        wait_http(&format!("http://{}/_admin/requests", s.sprout_addr), "the local SproutVideo").await?;
        format!("http://{}/v1", s.sprout_addr)
    };
    let location = s.ghl_location.clone().unwrap_or_else(|| DEV_LOCATION.to_string());
    let secret = json!({
        "webhook_token": s.webhook_token,
        "signing_secrets": [s.signing_secret],
        "read_api_key": s.read_key,
        "ghl_workflow_token": s.workflow_token,
        "ghl_token": s.ghl_token.clone().unwrap_or_else(|| "dev-ghl-token".into()),
        "sproutvideo_api_key": s.sprout_key.clone().unwrap_or_else(|| "dev-sproutvideo-key".into()),
    })
    .to_string();
    let template = Template::load(&sync_tests::lambda_local::template::default_path())?;
    let queue = template.queue("SyncQueue", &template.resolver(&[], STACK_NAME))?;
    let stack = Stack::create(
        StackNames::with_prefix(STACK_NAME),
        StackSettings {
            visibility_timeout_secs: s.visibility,
            max_receive_count: queue.max_receive_count.unwrap_or(8),
        },
        Some(&secret),
    )
    .await
    .context("could not create the local queue, table and secret in moto")?;
    // A rerun keeps moto's data only while moto runs; refresh the secret in case it existed.
    stack.put_secret(&secret).await?;

    let mut env = passed_on_env();
    let local_world = !real_ghl && s.sprout_key.is_none();
    let mut parameters = vec![("GhlLocationId".to_string(), location.clone())];
    if !real_ghl {
        // The intake trusts the keys the local GHL signs its webhooks with.
        let hooks: serde_json::Value =
            reqwest::get(format!("{ghl_base}_admin/webhooks")).await?.error_for_status()?.json().await?;
        for (param, key) in [("GhlWebhookEd25519Keys", "ed25519_public_key"), ("GhlWebhookRsaKeys", "rsa_public_key")] {
            let k = hooks[key].as_str().context("the local GHL's webhook keys")?;
            parameters.push((param.to_string(), k.to_string()));
        }
        let field = json!({"name": "SproutVideo password", "fieldKey": "contact.sv_password", "dataType": "TEXT"});
        reqwest::Client::new()
            .post(format!("{ghl_base}_admin/locations/{location}/custom-fields"))
            .json(&field)
            .send()
            .await?
            .error_for_status()?;
    }
    if local_world && !env.contains_key("SYNC_MAPPING_FILE") {
        let path = std::path::absolute(s.dir.join("mapping.toml"))?;
        std::fs::write(&path, format!("{}{DEV_ACCESS_RULE}", shared::mapping::DEFAULT_MAPPING))?;
        env.insert("SYNC_MAPPING_FILE".into(), path.display().to_string());
    }
    env.insert("GHL_BASE_URL".into(), ghl_base.clone());
    env.insert("SPROUTVIDEO_BASE_URL".into(), sprout_base.clone());
    env.insert("LOG_FORMAT".into(), env_or("LOG_FORMAT", "text"));
    env.insert("RUST_LOG".into(), env_or("RUST_LOG", "info"));
    let mut ds = DeploySettings::new(s.bin_dir.clone(), s.dir.join("logs"), &endpoint);
    ds.iam = true;
    ds.stack_name = STACK_NAME.into();
    ds.parameters = parameters;
    ds.env = env.clone();
    ds.http_addr = Some(s.intake_addr.clone());
    ds.invoke_addr = Some(s.lambda_api_addr.clone());
    ds.schedule_every = Some(Duration::from_secs(s.reconcile_every));
    ds.schedule_at_start = true;
    ds.sqs_sources = true;
    let d = Deployment::deploy(&stack, ds).await.context("could not deploy the template's functions locally")?;
    // The first request starts the intake (a cold start), as it would in Lambda.
    let health = reqwest::get(format!("http://{}/health", s.intake_addr)).await.context("the HTTP API")?;
    anyhow::ensure!(
        health.status().is_success(),
        "the intake answered {} to /health; see .dev/logs/sv-intake.log",
        health.status()
    );
    if !real_ghl {
        let hooks = json!({"url": format!("http://{}/webhooks/ghl", s.intake_addr)});
        reqwest::Client::new()
            .put(format!("{ghl_base}_admin/webhooks"))
            .json(&hooks)
            .send()
            .await?
            .error_for_status()?;
    }
    write_state(s, procs, &d, &stack, &ghl_base, &sprout_base, &location)?;
    print_next_steps(s, &ghl_base, &sprout_base, real_ghl);
    *deployment = Some(d);
    Ok(())
}

fn all_pids(procs: &[Proc], d: &Deployment) -> BTreeMap<String, Vec<u32>> {
    let mut pids: BTreeMap<String, Vec<u32>> =
        procs.iter().map(|p| (p.name.to_string(), p.child.id().into_iter().collect())).collect();
    pids.extend(d.pids());
    pids
}

fn write_state(
    s: &Settings,
    procs: &[Proc],
    d: &Deployment,
    stack: &Stack,
    ghl: &str,
    sprout: &str,
    location: &str,
) -> anyhow::Result<()> {
    let functions: BTreeMap<&str, serde_json::Value> = d
        .functions
        .iter()
        .map(|(name, f)| {
            // What the function runs with, less its credentials.
            let env: BTreeMap<&String, &String> =
                f.config.env.iter().filter(|(k, _)| !k.starts_with("AWS_SECRET")).collect();
            (
                name.as_str(),
                json!({"timeout_secs": f.config.timeout.as_secs(), "memory_mb": f.config.memory_mb,
                       "concurrency": f.config.concurrency, "log_group": f.config.log_group, "env": env}),
            )
        })
        .collect();
    let v = json!({
        "intake_url": format!("http://{}", s.intake_addr),
        "webhook_url": format!("http://{}/webhooks/sproutvideo/<SYNC_WEBHOOK_TOKEN>", s.intake_addr),
        "ghl_webhook_url": format!("http://{}/webhooks/ghl", s.intake_addr),
        "ghl_workflow_webhook_url": format!("http://{}/webhooks/ghl-workflow/<SYNC_GHL_WORKFLOW_TOKEN>", s.intake_addr),
        "lambda_api_url": format!("http://{}", s.lambda_api_addr),
        "ghl_base_url": ghl, "sproutvideo_base_url": sprout, "ghl_location_id": location,
        "queue_url": stack.queue_url, "dlq_url": stack.dlq_url, "table": stack.names.table, "secret_id": stack.names.secret,
        // The template's TenantSecretPrefix output: where `sv-admin` puts tenants' secrets.
        "tenant_secret_prefix": format!("{STACK_NAME}/tenants/"),
        "aws_endpoint_url": std::env::var("AWS_ENDPOINT_URL").unwrap_or_default(),
        // moto checks every call: use these keys for your own (aws CLI, tests).
        "aws_admin": {"access_key_id": d.admin.access_key_id, "secret_access_key": d.admin.secret_access_key},
        "iam_audit_log": s.dir.join("iam-audit.jsonl"),
        "grants": d.grants,
        "functions": functions,
        "pids": all_pids(procs, d),
    });
    let tmp = s.dir.join("stack.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&v)?)?;
    std::fs::rename(tmp, s.dir.join("stack.json"))?;
    Ok(())
}

fn print_next_steps(s: &Settings, ghl: &str, sprout: &str, real_ghl: bool) {
    let intake = &s.intake_addr;
    println!(
        r#"
The pipeline is running (logs: {dir}/logs/, state: {dir}/stack.json). Ctrl-C stops everything.

  intake        http://{intake}   (HTTP API → sv-intake; health: curl http://{intake}/health)
  worker        SQS event-source mapping → sv-worker
  reconciler    scheduled → sv-reconciler, at start, then every {every} s
  Lambda API    http://{lambda}   (aws lambda invoke --endpoint-url http://{lambda} --function-name sv-reconciler out.json)
  GHL           {ghl}{ghl_note}
  SproutVideo   {sprout}

Send a signed event:

  BODY='{{"id":"demo-1","type":"lead.captured","occurred_at":"'$(date -u +%Y-%m-%dT%H:%M:%SZ)'","contact":{{"email":"demo@example.com","first_name":"Demo"}}}}'
  TS=$(date +%s)
  SIG=$(printf '%s.%s' "$TS" "$BODY" | openssl dgst -sha256 -hmac '{secret}' -hex | sed 's/^.* //')
  curl -i http://{intake}/v1/events -H 'content-type: application/json' \
       -H "x-signature-timestamp: $TS" -H "x-signature: v1=$SIG" -d "$BODY"

Then look:

  curl -s http://{intake}/v1/contacts/demo@example.com -H 'authorization: Bearer {read}'
  {state_hint}
{access_hint}"#,
        dir = s.dir.display(),
        lambda = s.lambda_api_addr,
        ghl_note = if real_ghl { " (real)" } else { "  (local; everything it holds: /_admin/state)" },
        every = s.reconcile_every,
        secret = s.signing_secret,
        read = s.read_key,
        state_hint = if real_ghl { String::new() } else { format!("curl -s {ghl}_admin/state") },
        access_hint = if real_ghl {
            String::new()
        } else {
            format!(
                r#"
Course access: tag a contact `course-a` in the local GHL (it sends a signed webhook to the intake):

  ID=$(curl -s {ghl}contacts/upsert -H 'authorization: Bearer dev-ghl-token' -H 'version: 2021-07-28' \
       -H 'content-type: application/json' -d '{{"locationId":"{loc}","email":"student@example.com"}}' | jq -r .contact.id)
  curl -s {ghl}contacts/$ID/tags -H 'authorization: Bearer dev-ghl-token' -H 'version: 2021-07-28' \
       -H 'content-type: application/json' -d '{{"tags":["course-a"]}}'
  curl -s {sprout_admin}/_admin/access     # the login and its grants; the password is in GHL's contact.sv_password
  curl -s -X DELETE {ghl}contacts/$ID/tags -H 'authorization: Bearer dev-ghl-token' -H 'version: 2021-07-28' \
       -H 'content-type: application/json' -d '{{"tags":["course-a"]}}'   # revokes the grants
"#,
                loc = DEV_LOCATION,
                sprout_admin = sprout.trim_end_matches('/').trim_end_matches("/v1"),
            )
        },
    );
}

async fn supervise(s: &Settings, procs: &mut [Proc], d: &Deployment) {
    let mut shutdown = Box::pin(shared::deps::shutdown_signal());
    let mut last = all_pids(procs, d);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                eprintln!("dev-stack: {} exited ({status}); stopping", p.name);
                return;
            }
        }
        let now = all_pids(procs, d);
        if now != last {
            rewrite_pids(&s.dir, &now);
            last = now;
        }
    }
}

fn rewrite_pids(dir: &Path, pids: &BTreeMap<String, Vec<u32>>) {
    let path = dir.join("stack.json");
    let Ok(raw) = std::fs::read_to_string(&path) else { return };
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&raw) else { return };
    v["pids"] = json!(pids);
    let tmp = dir.join("stack.json.tmp");
    if std::fs::write(&tmp, serde_json::to_string_pretty(&v).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(tmp, path);
    }
}
