//! `dev-stack`: runs the whole pipeline locally, as `make dev` does.
//!
//! Starts moto (the local AWS emulator), the local GHL and local SproutVideo (seeded with demo
//! data) unless real credentials are given, creates the queue, dead-letter queue, state table and
//! secret with the template's settings, and runs the intake, the worker and the reconciler as
//! processes, restarting any that dies. Ctrl-C (or SIGTERM) stops everything.
//!
//! Environment (all optional):
//! - `SYNC_WEBHOOK_TOKEN` (dev-webhook-token), `SYNC_SIGNING_SECRET` (dev-signing-secret),
//!   `SYNC_READ_API_KEY` (dev-read-key): the local secret's values;
//! - `GHL_TOKEN` + `GHL_LOCATION_ID`: talk to the real GHL instead of the local one;
//! - `SPROUTVIDEO_API_KEY`: talk to the real SproutVideo instead of the local one;
//! - `INTAKE_ADDR` (127.0.0.1:3000), `LOCAL_GHL_ADDR` (127.0.0.1:4010), `LOCAL_SPROUT_ADDR`
//!   (127.0.0.1:4020), `MOTO_PORT` (5000);
//! - `RECONCILE_EVERY` (60 seconds), `DEV_VISIBILITY_TIMEOUT` (30 seconds), `DEV_DIR` (.dev).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use sync_tests::aws::{Stack, StackNames, StackSettings};
use tokio::process::{Child, Command};

const DEV_LOCATION: &str = "devLocation000000001";

struct Settings {
    dir: PathBuf,
    bin_dir: PathBuf,
    moto_port: u16,
    intake_addr: String,
    ghl_addr: String,
    sprout_addr: String,
    reconcile_every: u64,
    visibility: u32,
    webhook_token: String,
    signing_secret: String,
    read_key: String,
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
        ghl_addr: env_or("LOCAL_GHL_ADDR", "127.0.0.1:4010"),
        sprout_addr: env_or("LOCAL_SPROUT_ADDR", "127.0.0.1:4020"),
        reconcile_every: env_or("RECONCILE_EVERY", "60").parse().context("RECONCILE_EVERY")?,
        visibility: env_or("DEV_VISIBILITY_TIMEOUT", "30").parse().context("DEV_VISIBILITY_TIMEOUT")?,
        webhook_token: env_or("SYNC_WEBHOOK_TOKEN", "dev-webhook-token"),
        signing_secret: env_or("SYNC_SIGNING_SECRET", "dev-signing-secret"),
        read_key: env_or("SYNC_READ_API_KEY", "dev-read-key"),
        ghl_token: std::env::var("GHL_TOKEN").ok().filter(|v| !v.is_empty()),
        ghl_location: std::env::var("GHL_LOCATION_ID").ok().filter(|v| !v.is_empty()),
        sprout_key: std::env::var("SPROUTVIDEO_API_KEY").ok().filter(|v| !v.is_empty()),
    })
}

fn main() -> anyhow::Result<()> {
    let s = settings()?;
    let endpoint = format!("http://127.0.0.1:{}", s.moto_port);
    // Set before any thread exists: the AWS SDK and every child read these.
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

struct Proc {
    name: &'static str,
    child: Child,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    restart: bool,
}

async fn spawn(
    s: &Settings,
    name: &'static str,
    program: &Path,
    args: &[String],
    env: &BTreeMap<String, String>,
) -> anyhow::Result<Child> {
    std::fs::create_dir_all(s.dir.join("logs"))?;
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(s.dir.join("logs").join(format!("{name}.log")))?;
    let child = Command::new(program)
        .args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("could not start {} ({})", name, program.display()))?;
    Ok(child)
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
    let mut procs: Vec<Proc> = Vec::new();
    let result = start(&s, &mut procs).await;
    if let Err(e) = &result {
        eprintln!("dev-stack: {e:#}");
    } else {
        supervise(&s, &mut procs).await;
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

async fn start(s: &Settings, procs: &mut Vec<Proc>) -> anyhow::Result<()> {
    let moto = which("moto_server")
        .context("moto_server is not on PATH; run `make dev` (it installs moto into .venv-tools)")?;
    let base_env: BTreeMap<String, String> = BTreeMap::new();
    let moto_args = vec!["-H".into(), "127.0.0.1".into(), "-p".into(), s.moto_port.to_string()];
    let child = spawn(s, "moto", &moto, &moto_args, &base_env).await?;
    procs.push(Proc { name: "moto", child, args: moto_args, env: base_env.clone(), restart: false });
    wait_http(&format!("http://127.0.0.1:{}/moto-api/", s.moto_port), "moto").await?;
    eprintln!("dev-stack: moto (local AWS) on 127.0.0.1:{}", s.moto_port);

    let real_ghl = s.ghl_token.is_some() && s.ghl_location.is_some();
    let ghl_base = if real_ghl {
        eprintln!("dev-stack: using the real HighLevel API (GHL_TOKEN and GHL_LOCATION_ID are set)");
        shared::ghl::DEFAULT_BASE_URL.to_string()
    } else {
        let args = vec!["--listen".into(), s.ghl_addr.clone()];
        let child = spawn(s, "local-ghl", &s.bin_dir.join("local-ghl"), &args, &base_env).await?;
        procs.push(Proc { name: "local-ghl", child, args, env: base_env.clone(), restart: false });
        wait_http(&format!("http://{}/_admin/state", s.ghl_addr), "the local GHL").await?;
        format!("http://{}/", s.ghl_addr)
    };
    let sprout_base = if s.sprout_key.is_some() {
        eprintln!("dev-stack: using the real SproutVideo API (SPROUTVIDEO_API_KEY is set)");
        shared::sprout::DEFAULT_BASE_URL.to_string()
    } else {
        let args = vec!["--listen".into(), s.sprout_addr.clone(), "--demo".into()];
        let child = spawn(s, "local-sproutvideo", &s.bin_dir.join("local-sproutvideo"), &args, &base_env).await?;
        procs.push(Proc { name: "local-sproutvideo", child, args, env: base_env.clone(), restart: false });
        wait_http(&format!("http://{}/_admin/requests", s.sprout_addr), "the local SproutVideo").await?;
        format!("http://{}/v1", s.sprout_addr)
    };
    let location = s.ghl_location.clone().unwrap_or_else(|| DEV_LOCATION.to_string());
    let secret = json!({
        "webhook_token": s.webhook_token,
        "signing_secrets": [s.signing_secret],
        "read_api_key": s.read_key,
        "ghl_token": s.ghl_token.clone().unwrap_or_else(|| "dev-ghl-token".into()),
        "sproutvideo_api_key": s.sprout_key.clone().unwrap_or_else(|| "dev-sproutvideo-key".into()),
    })
    .to_string();
    let stack = Stack::create(
        StackNames::with_prefix("sv-ghl-sync-dev"),
        StackSettings { visibility_timeout_secs: s.visibility, max_receive_count: 8 },
        Some(&secret),
    )
    .await
    .context("could not create the local queue, table and secret in moto")?;
    // A rerun keeps moto's data only while moto runs; refresh the secret in case it existed.
    stack.put_secret(&secret).await?;

    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_EC2_METADATA_DISABLED",
        "AWS_ENDPOINT_URL",
    ] {
        env.insert(k.into(), std::env::var(k).unwrap_or_default());
    }
    for (k, v) in [
        ("SYNC_SECRET_ID", stack.names.secret.clone()),
        ("SYNC_QUEUE_URL", stack.queue_url.clone()),
        ("SYNC_DLQ_URL", stack.dlq_url.clone()),
        ("SYNC_TABLE", stack.names.table.clone()),
        ("GHL_BASE_URL", ghl_base.clone()),
        ("GHL_LOCATION_ID", location.clone()),
        ("SPROUTVIDEO_BASE_URL", sprout_base.clone()),
        ("WORKER_MAX_CONCURRENCY", "1".into()),
        ("WORKER_POLL_WAIT_SECS", "2".into()),
        ("INTAKE_ADDR", s.intake_addr.clone()),
        ("LOG_FORMAT", env_or("LOG_FORMAT", "text")),
        ("RUST_LOG", env_or("RUST_LOG", "info")),
    ] {
        env.insert(k.into(), v);
    }
    // Pass on tuning settings given to dev-stack (never the secret values: they live in the secret).
    const SECRET_VARS: &[&str] =
        &["GHL_TOKEN", "SPROUTVIDEO_API_KEY", "SYNC_WEBHOOK_TOKEN", "SYNC_SIGNING_SECRET", "SYNC_READ_API_KEY"];
    for (k, v) in std::env::vars() {
        let tuning = ["SYNC_", "GHL_", "WORKER_", "SPROUTVIDEO_", "RECONCILE_", "SECRET_CACHE_"]
            .iter()
            .any(|p| k.starts_with(p));
        if tuning && !SECRET_VARS.contains(&k.as_str()) && !env.contains_key(&k) {
            env.insert(k, v);
        }
    }
    let functions: [(&'static str, Vec<String>); 3] = [
        ("sv-intake", vec![]),
        ("sv-worker", vec![]),
        ("sv-reconciler", vec!["--every".into(), s.reconcile_every.to_string()]),
    ];
    for (name, args) in functions {
        let child = spawn(s, name, &s.bin_dir.join(name), &args, &env).await?;
        procs.push(Proc { name, child, args, env: env.clone(), restart: true });
    }
    wait_http(&format!("http://{}/health", s.intake_addr), "the intake").await?;
    write_state(s, procs, &stack, &ghl_base, &sprout_base, &location, &env)?;
    print_next_steps(s, &ghl_base, &sprout_base, real_ghl);
    Ok(())
}

fn write_state(
    s: &Settings,
    procs: &[Proc],
    stack: &Stack,
    ghl: &str,
    sprout: &str,
    location: &str,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let pids: BTreeMap<&str, Option<u32>> = procs.iter().map(|p| (p.name, p.child.id())).collect();
    let v = json!({
        "intake_url": format!("http://{}", s.intake_addr),
        "webhook_url": format!("http://{}/webhooks/sproutvideo/<SYNC_WEBHOOK_TOKEN>", s.intake_addr),
        "ghl_base_url": ghl, "sproutvideo_base_url": sprout, "ghl_location_id": location,
        "queue_url": stack.queue_url, "dlq_url": stack.dlq_url, "table": stack.names.table, "secret_id": stack.names.secret,
        "aws_endpoint_url": std::env::var("AWS_ENDPOINT_URL").unwrap_or_default(),
        "pids": pids,
        // What the functions run with (no secret values: those live in the secret).
        "env": env,
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

  intake        http://{intake}   (health: curl http://{intake}/health)
  GHL           {ghl}{ghl_note}
  SproutVideo   {sprout}
  reconciler    runs at start, then every {every} s

Send a signed event:

  BODY='{{"id":"demo-1","type":"lead.captured","occurred_at":"'$(date -u +%Y-%m-%dT%H:%M:%SZ)'","contact":{{"email":"demo@example.com","first_name":"Demo"}}}}'
  TS=$(date +%s)
  SIG=$(printf '%s.%s' "$TS" "$BODY" | openssl dgst -sha256 -hmac '{secret}' -hex | sed 's/^.* //')
  curl -i http://{intake}/v1/events -H 'content-type: application/json' \
       -H "x-signature-timestamp: $TS" -H "x-signature: v1=$SIG" -d "$BODY"

Then look:

  curl -s http://{intake}/v1/contacts/demo@example.com -H 'authorization: Bearer {read}'
  {state_hint}
"#,
        dir = s.dir.display(),
        ghl_note = if real_ghl { " (real)" } else { "  (local; everything it holds: /_admin/state)" },
        every = s.reconcile_every,
        secret = s.signing_secret,
        read = s.read_key,
        state_hint = if real_ghl { String::new() } else { format!("curl -s {ghl}_admin/state") },
    );
}

async fn supervise(s: &Settings, procs: &mut [Proc]) {
    let mut shutdown = Box::pin(shared::deps::shutdown_signal());
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        let mut changed = false;
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                if !p.restart {
                    eprintln!("dev-stack: {} exited ({status}); stopping", p.name);
                    return;
                }
                eprintln!("dev-stack: {} exited ({status}); restarting it", p.name);
                match spawn(s, p.name, &s.bin_dir.join(p.name), &p.args, &p.env).await {
                    Ok(c) => {
                        p.child = c;
                        changed = true;
                    }
                    Err(e) => {
                        eprintln!("dev-stack: {e:#}");
                        return;
                    }
                }
            }
        }
        if changed {
            rewrite_pids(s, procs);
        }
    }
}

fn rewrite_pids(s: &Settings, procs: &[Proc]) {
    let path = s.dir.join("stack.json");
    let Ok(raw) = std::fs::read_to_string(&path) else { return };
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&raw) else { return };
    v["pids"] = json!(procs.iter().map(|p| (p.name, p.child.id())).collect::<BTreeMap<_, _>>());
    let tmp = s.dir.join("stack.json.tmp");
    if std::fs::write(&tmp, v.to_string()).is_ok() {
        let _ = std::fs::rename(tmp, path);
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
}
