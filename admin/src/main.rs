//! `sv-admin`: adds, lists, pauses, resumes and removes the tenants (HighLevel locations) one
//! deployment serves, with the operator's AWS credentials, without a redeploy. See README,
//! "Many locations".
//!
//! Environment: `SYNC_TABLE` (the state table), `SYNC_QUEUE_URL` (for `resume`),
//! `TENANT_SECRET_PREFIX` (the stack's `TenantSecretPrefix` output, `<stack name>/tenants/`),
//! `TENANT_CACHE_TTL_SECS` (the functions' setting, default 30) and the usual AWS variables.

mod tenant;

use std::sync::Arc;
use std::time::Duration;

use shared::state::DynamoStore;
use shared::tenants::{Registry, TenantId, TenantRecord, drain_held, has_held, held_count};

const USAGE: &str = "\
sv-admin tenant add ID --location LOCATION_ID [--secret-file FILE|-] [--secret-id NAME]
                       [--mapping FILE] [--ghl-base-url URL] [--sproutvideo-base-url URL]
sv-admin tenant list
sv-admin tenant pause ID
sv-admin tenant resume ID [--no-wait]
sv-admin tenant remove ID [--delete-secret]

add: with --secret-file, creates the tenant's secret from that JSON (ghl_token or ghl_oauth,
sproutvideo_api_key; tokens left out are generated); without, registers the existing secret.";

struct Env {
    table: String,
    queue_url: Option<String>,
    secret_prefix: String,
    cache_ttl: Duration,
}

impl Env {
    fn read() -> anyhow::Result<Self> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Ok(Self {
            table: get("SYNC_TABLE")
                .ok_or_else(|| anyhow::anyhow!("SYNC_TABLE is not set; set it to the stack's StateTableName output"))?,
            queue_url: get("SYNC_QUEUE_URL"),
            secret_prefix: get("TENANT_SECRET_PREFIX").ok_or_else(|| {
                anyhow::anyhow!("TENANT_SECRET_PREFIX is not set; set it to the stack's TenantSecretPrefix output")
            })?,
            cache_ttl: Duration::from_secs(match get("TENANT_CACHE_TTL_SECS") {
                None => 30,
                Some(v) => v.parse().map_err(|_| anyhow::anyhow!("TENANT_CACHE_TTL_SECS='{v}' is not a number"))?,
            }),
        })
    }
}

struct Admin {
    env: Env,
    aws: aws_config::SdkConfig,
    registry: Registry,
}

impl Admin {
    fn dynamo(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.aws)
    }

    /// The tenant's own part of the state table.
    fn tenant_store(&self, id: &TenantId) -> DynamoStore {
        DynamoStore::new(self.dynamo(), self.env.table.clone()).with_prefix(id.key_prefix())
    }

    fn secrets(&self) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.aws)
    }
}

/// The value after a flag.
fn value(args: &mut impl Iterator<Item = String>, flag: &str) -> anyhow::Result<String> {
    args.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value\n\n{USAGE}"))
}

fn read_input(path: &str) -> anyhow::Result<String> {
    if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("could not read {path}: {e}"))
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()).await {
        eprintln!("sv-admin: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Vec<String>) -> anyhow::Result<()> {
    let mut args = args.into_iter();
    match (args.next().as_deref(), args.next().as_deref()) {
        (Some("-h" | "--help") | None, _) => {
            println!("{USAGE}");
            Ok(())
        }
        (Some("tenant"), Some(cmd)) => {
            let cmd = cmd.to_string();
            let env = Env::read()?;
            let aws = shared::aws::load_config().await;
            let registry =
                Registry::new(Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), env.table.clone())));
            let admin = Admin { env, aws, registry };
            match cmd.as_str() {
                "add" => add(&admin, args).await,
                "list" => list(&admin).await,
                "pause" => pause(&admin, &id_arg(&mut args)?).await,
                "resume" => {
                    let id = id_arg(&mut args)?;
                    let wait = !args.any(|a| a == "--no-wait");
                    resume(&admin, &id, wait).await
                }
                "remove" => {
                    let id = id_arg(&mut args)?;
                    let delete_secret = args.any(|a| a == "--delete-secret");
                    remove(&admin, &id, delete_secret).await
                }
                other => anyhow::bail!("unknown command 'tenant {other}'\n\n{USAGE}"),
            }
        }
        _ => anyhow::bail!("unknown command\n\n{USAGE}"),
    }
}

fn id_arg(args: &mut impl Iterator<Item = String>) -> anyhow::Result<TenantId> {
    let id = args.next().ok_or_else(|| anyhow::anyhow!("name the tenant\n\n{USAGE}"))?;
    Ok(TenantId::parse(&id)?)
}

async fn add(admin: &Admin, mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let id = id_arg(&mut args)?;
    let (mut location, mut secret_file, mut secret_id, mut mapping, mut ghl_url, mut sprout_url) =
        (None, None, None, None, None, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--location" => location = Some(value(&mut args, &a)?),
            "--secret-file" => secret_file = Some(value(&mut args, &a)?),
            "--secret-id" => secret_id = Some(value(&mut args, &a)?),
            "--mapping" => mapping = Some(value(&mut args, &a)?),
            "--ghl-base-url" => ghl_url = Some(url::Url::parse(&value(&mut args, &a)?)?),
            "--sproutvideo-base-url" => sprout_url = Some(url::Url::parse(&value(&mut args, &a)?)?),
            other => anyhow::bail!("unknown argument {other}\n\n{USAGE}"),
        }
    }
    let location = location.ok_or_else(|| anyhow::anyhow!("--location (the GHL location id) is required"))?;
    let secret_id = secret_id.unwrap_or_else(|| format!("{}{id}", admin.env.secret_prefix));
    anyhow::ensure!(
        secret_id.starts_with(&admin.env.secret_prefix),
        "the functions may read only secrets named {}…: name the secret under that prefix (TENANT_SECRET_PREFIX)",
        admin.env.secret_prefix
    );
    let mapping = match mapping {
        None => None,
        Some(path) => {
            let text = read_input(&path)?;
            shared::mapping::Mapping::from_toml(&text).map_err(|e| anyhow::anyhow!("the mapping {path}: {e}"))?;
            Some(text)
        }
    };
    // Checked before anything is created for it.
    admin.registry.check_new(&id, &location).await?;
    let sm = admin.secrets();
    match secret_file {
        Some(path) => {
            let value = tenant::complete_secret(&id, &read_input(&path)?)?;
            sm.create_secret()
                .name(&secret_id)
                .description(format!("sv-ghl-sync tenant {id}"))
                .secret_string(value)
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "could not create the secret {secret_id}: {} (to register an existing secret, leave out --secret-file)",
                        shared::aws::error_text(&e)
                    )
                })?;
            println!("created the secret {secret_id}");
        }
        None => {
            let got = sm.get_secret_value().secret_id(&secret_id).send().await.map_err(|e| {
                anyhow::anyhow!(
                    "could not read the secret {secret_id}: {} (create it with --secret-file)",
                    shared::aws::error_text(&e)
                )
            })?;
            tenant::check_secret(&id, got.secret_string().unwrap_or_default())?;
        }
    }
    let record = TenantRecord {
        mapping,
        ghl_base_url: ghl_url,
        sprout_base_url: sprout_url,
        ..TenantRecord::new(id.clone(), location.clone(), secret_id.clone())
    };
    admin.registry.add(&record).await?;
    println!("added the tenant {id} (location {location})");
    println!(
        "its webhook URLs (the tokens are in the secret: aws secretsmanager get-secret-value --secret-id {secret_id}):"
    );
    println!("  SproutVideo webhook:   <ApiBaseUrl>/webhooks/sproutvideo/<webhook_token>");
    println!("  GHL workflow webhook:  <ApiBaseUrl>/webhooks/ghl-workflow/<ghl_workflow_token>");
    println!("  signed events:         <ApiBaseUrl>/v1/events with X-Signature-Key-Id: {id}");
    println!("  one-view:              <ApiBaseUrl>/v1/contacts/<email> with Authorization: Bearer <read_api_key>");
    println!("the functions see it within TENANT_CACHE_TTL_SECS ({} s)", admin.env.cache_ttl.as_secs());
    Ok(())
}

async fn list(admin: &Admin) -> anyhow::Result<()> {
    let tenants = admin.registry.list().await?;
    if tenants.is_empty() {
        println!("no tenants are registered; the deployment serves its own location only");
        return Ok(());
    }
    println!("{:<32}  {:<24}  {:<8}  {:>6}  secret", "tenant", "location", "state", "held");
    for t in tenants {
        let held = held_count(&admin.tenant_store(&t.id)).await?;
        let state = if t.paused { "paused" } else { "running" };
        println!("{:<32}  {:<24}  {:<8}  {:>6}  {}", t.id, t.location_id, state, held, t.secret_id);
    }
    Ok(())
}

async fn pause(admin: &Admin, id: &TenantId) -> anyhow::Result<()> {
    admin.registry.update(id, |r| r.paused = true).await?;
    println!(
        "paused {id}: within {} s its commands are held (nothing is lost); `sv-admin tenant resume {id}` sends them on",
        admin.env.cache_ttl.as_secs()
    );
    Ok(())
}

async fn resume(admin: &Admin, id: &TenantId, wait: bool) -> anyhow::Result<()> {
    admin.registry.update(id, |r| r.paused = false).await?;
    println!("resumed {id}");
    let store = admin.tenant_store(id);
    if !has_held(&store).await? {
        return Ok(());
    }
    // While commands are held, the workers hold the tenant's new ones behind them.
    let Some(queue_url) = admin.env.queue_url.clone() else {
        println!(
            "commands are held for it, and its new ones wait behind them: the next reconciliation sends them \
             (set SYNC_QUEUE_URL to send them now)"
        );
        return Ok(());
    };
    if wait {
        // A worker that read the record before the change may still hold a command meanwhile.
        let secs = admin.env.cache_ttl.as_secs() + 2;
        println!("waiting {secs} s for every function to see the change…");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    let queue = shared::queue::SqsQueue::new(aws_sdk_sqs::Client::new(&admin.aws), queue_url, None);
    let sent =
        drain_held(&store, &queue, &|sent, total| println!("sent back {sent} of {total} held command(s)")).await?;
    println!("{sent} held command(s) are queued again, in the order they came");
    Ok(())
}

async fn remove(admin: &Admin, id: &TenantId, delete_secret: bool) -> anyhow::Result<()> {
    let held = held_count(&admin.tenant_store(id)).await?;
    let rec = admin.registry.remove(id).await?;
    println!("removed {id} (location {}); its messages still queued will be parked with the reason", rec.location_id);
    if held > 0 {
        println!("{held} command(s) held for it stay in the table; adding {id} again sends them");
    }
    if delete_secret {
        admin.secrets().delete_secret().secret_id(&rec.secret_id).send().await.map_err(|e| {
            anyhow::anyhow!("could not delete the secret {}: {}", rec.secret_id, shared::aws::error_text(&e))
        })?;
        println!("scheduled the secret {} for deletion", rec.secret_id);
    } else {
        println!("its secret {} stays (delete it with --delete-secret)", rec.secret_id);
    }
    Ok(())
}
