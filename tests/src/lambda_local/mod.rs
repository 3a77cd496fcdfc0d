//! A local stand-in for the AWS services that run and invoke the three functions, so that
//! `make dev` and the end-to-end tests run exactly what Lambda runs: each function's own binary,
//! entered through `lambda_http::run` / `lambda_runtime::run`, fed the payloads AWS sends.
//!
//! - [`runtime`]: the Lambda service for one function (execution environments as processes, each
//!   with its own Runtime API, concurrency, timeout, freeze between invocations, memory limit);
//! - [`http_api`]: API Gateway's HTTP API (payload format 2.0) in front of the intake;
//! - [`sqs_source`]: the SQS event-source mapping in front of the worker (`BatchSize`,
//!   `MaximumConcurrency`, `ReportBatchItemFailures`);
//! - [`scheduler`]: the reconciler's schedule (its `Input`, every N seconds);
//! - [`invoke_api`]: Lambda's Invoke API, for operators and tests;
//! - [`iam`] and [`moto`]: each function with its own credentials and the template's policy,
//!   enforced by moto;
//! - [`template`]: what all of the above read from `template.yaml`.
//!
//! [`Deployment`] puts them together against a [`Stack`] on moto.

pub mod http_api;
pub mod iam;
pub mod invoke_api;
pub mod moto;
pub mod runtime;
pub mod scheduler;
pub mod sqs_source;
pub mod template;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::aws::{ACCOUNT_ID, Stack};
use iam::{AccessReport, Credentials, Grant};
use runtime::{FunctionConfig, LocalFunction};
use template::{FunctionDef, ResourceValues, StatementDef, Template};

/// The region the local stack answers for.
pub const REGION: &str = "us-east-1";
/// Concurrency of a function with no reserved concurrency and no event source limit.
pub const UNRESERVED_CONCURRENCY: usize = 10;

/// How to run the template's functions locally.
#[derive(Debug, Clone)]
pub struct DeploySettings {
    pub template: PathBuf,
    /// Where the functions' binaries are (`target/debug`).
    pub bin_dir: PathBuf,
    /// One log file per function (`<binary>.log`): the local log groups.
    pub log_dir: PathBuf,
    /// moto's endpoint (the functions' `AWS_ENDPOINT_URL`).
    pub endpoint: String,
    /// Give each function an IAM user with its template policy, and switch authorization on.
    pub iam: bool,
    /// Keys for creating the IAM users (any, while authorization is still off).
    pub setup: Credentials,
    /// Template parameters (over their defaults).
    pub parameters: Vec<(String, String)>,
    pub stack_name: String,
    /// Set for every function, over the template's environment.
    pub env: BTreeMap<String, String>,
    /// Replaces a function's policy statements (by binary), to prove a missing one fails.
    pub policy_overrides: BTreeMap<String, Vec<StatementDef>>,
    /// Only these functions (by binary); all when `None`.
    pub only: Option<Vec<String>>,
    /// Where the HTTP API listens (none: no HTTP API).
    pub http_addr: Option<String>,
    /// Where the Invoke API listens (none: no Invoke API).
    pub invoke_addr: Option<String>,
    /// Run the schedules every this often (none: no scheduler), and once at start.
    pub schedule_every: Option<Duration>,
    pub schedule_at_start: bool,
    /// Run the SQS event-source mappings.
    pub sqs_sources: bool,
    /// Long-poll wait of the SQS pollers.
    pub sqs_wait_secs: i32,
    pub freeze_idle: bool,
}

impl DeploySettings {
    pub fn new(bin_dir: PathBuf, log_dir: PathBuf, endpoint: &str) -> Self {
        Self {
            template: template::default_path(),
            bin_dir,
            log_dir,
            endpoint: endpoint.to_string(),
            iam: false,
            setup: Credentials::unchecked(),
            parameters: Vec::new(),
            stack_name: "sv-ghl-sync-local".into(),
            env: BTreeMap::new(),
            policy_overrides: BTreeMap::new(),
            only: None,
            http_addr: None,
            invoke_addr: None,
            schedule_every: None,
            schedule_at_start: false,
            sqs_sources: false,
            sqs_wait_secs: 20,
            freeze_idle: true,
        }
    }
}

/// The functions running locally, with the services that invoke them.
pub struct Deployment {
    pub defs: Vec<FunctionDef>,
    pub functions: BTreeMap<String, Arc<LocalFunction>>,
    pub http_addr: Option<SocketAddr>,
    pub invoke_addr: Option<SocketAddr>,
    pub sqs_sources: Vec<Arc<sqs_source::SqsEventSource>>,
    /// What each identity was granted (with IAM on).
    pub grants: Vec<Grant>,
    /// Credentials for the harness's own calls once authorization is on.
    pub admin: Credentials,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("could not listen on {addr}"))
}

/// The credentials (and grant) of one principal: its own IAM user with `statements` when IAM is
/// on, keys moto does not check otherwise.
async fn identity(
    iam_client: &aws_sdk_iam::Client,
    s: &DeploySettings,
    principal: &str,
    statements: Vec<StatementDef>,
) -> anyhow::Result<(Credentials, Option<Grant>)> {
    if !s.iam {
        return Ok((Credentials::unchecked(), None));
    }
    let c = iam::create_user(iam_client, &format!("{}-{principal}", s.stack_name), &statements)
        .await
        .with_context(|| format!("could not create the IAM user of {principal}"))?;
    let g = Grant { principal: principal.to_string(), access_key_id: c.access_key_id.clone(), statements };
    Ok((c, Some(g)))
}

impl Deployment {
    /// Resolves the template against `stack`, creates the identities, starts the functions and
    /// the services in front of them.
    pub async fn deploy(stack: &Stack, s: DeploySettings) -> anyhow::Result<Self> {
        let tpl = Template::load(&s.template)?;
        let params: Vec<(&str, &str)> = s.parameters.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut resolver = tpl.resolver(&params, &s.stack_name);
        resolver.resources.extend(stack.resource_values().await?);
        for g in tpl.log_groups(&resolver)? {
            if let Some(name) = &g.name {
                let name = resolver.resolve(&g.logical_id, name)?;
                resolver
                    .resources
                    .insert(g.logical_id.clone(), ResourceValues { reference: name, ..Default::default() });
            }
        }
        let defs: Vec<FunctionDef> = tpl
            .functions(&resolver)?
            .into_iter()
            .filter(|d| s.only.as_ref().is_none_or(|o| o.contains(&d.binary)))
            .collect();

        let setup = s.setup.sdk_config(&s.endpoint, REGION).await;
        let iam_client = aws_sdk_iam::Client::new(&setup);
        let mut grants = Vec::new();
        let (admin, _) = identity(&iam_client, &s, "admin", iam::admin_statements()).await?;
        let (poller, poller_grant) =
            identity(&iam_client, &s, "lambda-sqs-poller", iam::sqs_poller_statements()).await?;
        let mut functions = BTreeMap::new();
        for d in &defs {
            let statements = s.policy_overrides.get(&d.binary).cloned().unwrap_or_else(|| d.statements.clone());
            let (creds, grant) = identity(&iam_client, &s, &d.binary, statements).await?;
            grants.extend(grant);
            let mut env = d.environment.clone();
            env.extend(s.env.clone());
            for (k, v) in [
                ("AWS_ENDPOINT_URL", s.endpoint.as_str()),
                ("AWS_EC2_METADATA_DISABLED", "true"),
                ("AWS_ACCESS_KEY_ID", creds.access_key_id.as_str()),
                ("AWS_SECRET_ACCESS_KEY", creds.secret_access_key.as_str()),
            ] {
                env.insert(k.into(), v.into());
            }
            let source_limit = d.sqs.iter().filter_map(|q| q.maximum_concurrency).min();
            let concurrency = match (d.reserved_concurrency, source_limit) {
                (Some(r), Some(m)) => r.min(m) as usize,
                (Some(r), None) => r as usize,
                (None, Some(m)) => m as usize,
                (None, None) => UNRESERVED_CONCURRENCY,
            };
            let f = LocalFunction::new(FunctionConfig {
                name: d.binary.clone(),
                binary: s.bin_dir.join(&d.binary),
                timeout: d.timeout,
                memory_mb: d.memory_mb,
                concurrency,
                env,
                log_file: s.log_dir.join(format!("{}.log", d.binary)),
                log_group: d.log_group.clone(),
                freeze_idle: s.freeze_idle,
                region: REGION.into(),
                account_id: ACCOUNT_ID.into(),
            })?;
            functions.insert(d.binary.clone(), f);
        }
        grants.extend(poller_grant);
        if s.iam {
            moto::enforce_iam(&s.endpoint).await?;
        }

        let mut tasks = Vec::new();
        let mut http_addr = None;
        if let Some(addr) = &s.http_addr {
            let routes: Vec<_> =
                defs.iter().flat_map(|d| d.routes.iter().map(|r| (r.clone(), functions[&d.binary].clone()))).collect();
            let api = http_api::HttpApi::new(routes, tpl.http_api_throttle(&resolver)?);
            let listener = bind(addr).await?;
            http_addr = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(async move {
                if let Err(e) = api.serve(listener).await {
                    eprintln!("lambda-local: the HTTP API stopped: {e}");
                }
            }));
        }
        let mut sqs_sources = Vec::new();
        if s.sqs_sources {
            let sqs = aws_sdk_sqs::Client::new(&poller.sdk_config(&s.endpoint, REGION).await);
            for d in &defs {
                for q in &d.sqs {
                    let url = resolver
                        .resources
                        .values()
                        .find(|r| r.attributes.get("Arn") == Some(&q.queue_arn))
                        .and_then(|r| r.attributes.get("QueueUrl").cloned())
                        .with_context(|| format!("no local queue has the ARN {}", q.queue_arn))?;
                    let source = Arc::new(sqs_source::SqsEventSource {
                        sqs: sqs.clone(),
                        queue_url: url,
                        queue_arn: q.queue_arn.clone(),
                        region: REGION.into(),
                        batch_size: q.batch_size,
                        maximum_concurrency: q
                            .maximum_concurrency
                            .map(|m| m as usize)
                            .unwrap_or(UNRESERVED_CONCURRENCY),
                        wait_secs: s.sqs_wait_secs,
                        report_batch_item_failures: q.report_batch_item_failures,
                        function: Arc::new(functions[&d.binary].clone()),
                        batches: Default::default(),
                    });
                    tasks.extend(source.spawn());
                    sqs_sources.push(source);
                }
            }
        }
        if let Some(every) = s.schedule_every {
            for d in &defs {
                for sch in &d.schedules {
                    let mut sc = scheduler::Scheduler::new(functions[&d.binary].clone(), sch.input.clone(), every);
                    sc.run_at_start = s.schedule_at_start;
                    tasks.push(sc.spawn());
                }
            }
        }
        let mut invoke_addr = None;
        if let Some(addr) = &s.invoke_addr {
            let api = Arc::new(invoke_api::InvokeApi { functions: functions.clone() });
            let listener = bind(addr).await?;
            invoke_addr = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(async move {
                if let Err(e) = api.serve(listener).await {
                    eprintln!("lambda-local: the Invoke API stopped: {e}");
                }
            }));
        }
        Ok(Self { defs, functions, http_addr, invoke_addr, sqs_sources, grants, admin, tasks })
    }

    pub fn function(&self, binary: &str) -> &Arc<LocalFunction> {
        &self.functions[binary]
    }

    /// Process ids of each function's execution environments.
    pub fn pids(&self) -> BTreeMap<String, Vec<u32>> {
        self.functions.iter().map(|(k, f)| (k.clone(), f.pids())).collect()
    }

    /// Granted against used, from moto's audit log.
    pub fn access_report(&self, audit_log: &std::path::Path) -> AccessReport {
        AccessReport::build(&self.grants, &iam::read_audit(audit_log))
    }

    /// Stops the services, then the functions' environments.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        for f in self.functions.values() {
            f.shutdown().await;
        }
    }
}
