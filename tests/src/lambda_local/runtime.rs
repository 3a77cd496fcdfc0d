//! The Lambda service for one function: execution environments as real processes of the
//! function's binary, each started with its own Lambda Runtime API
//! (`/2018-06-01/runtime/invocation/next`, `/{id}/response`, `/{id}/error`, `/init/error`) and the
//! environment Lambda gives (`AWS_LAMBDA_RUNTIME_API`, `AWS_LAMBDA_FUNCTION_NAME`, memory, version,
//! log group and stream, region, the function's own credentials), and nothing else.
//!
//! As in Lambda: an environment starts on demand (cold start, 10 s to reach its first `next`)
//! and is reused; at most `concurrency` run at once (a synchronous invoke beyond that is
//! throttled, an asynchronous one waits); an idle environment is frozen (SIGSTOP) until its next
//! invocation; an invocation past its timeout ends the environment (SIGKILL) and fails with
//! `Sandbox.Timedout`; an environment that exits fails its invocation with `Runtime.ExitError`;
//! an environment whose peak memory went over `MemorySize` is ended with `Runtime.OutOfMemory`;
//! payloads are limited to 6 MB each way; `START`, `END` and `REPORT` lines go to the function's
//! log (one file, the local log group), with the processes' own output.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

/// Lambda's limit on a synchronous invocation's request and response payloads.
pub const MAX_PAYLOAD: usize = 6 * 1024 * 1024;
/// How long an execution environment may take to initialise.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Lambda's default asynchronous retries: after one minute, then after two.
pub const ASYNC_RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(60), Duration::from_secs(120)];

/// Why an invocation did not return a response.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum InvokeError {
    /// All of the function's concurrency is in use (`TooManyRequestsException`).
    #[error("Rate Exceeded: all {0} of the function's concurrent executions are in use")]
    Throttled(usize),
    /// The request payload is over 6 MB (`RequestEntityTooLargeException`).
    #[error("the request payload is over {MAX_PAYLOAD} bytes")]
    RequestTooLarge,
    /// The function failed: its own error, a timeout, an exit, too much memory, too large a
    /// response, or an environment that could not start.
    #[error("{error_type}: {error_message}")]
    Function { error_type: String, error_message: String },
}

impl InvokeError {
    fn function(error_type: &str, error_message: impl Into<String>) -> Self {
        Self::Function { error_type: error_type.into(), error_message: error_message.into() }
    }
}

/// Something that can be invoked like a Lambda function (the stand-ins for the services that
/// invoke functions take this, so their tests can put a plain closure behind it).
#[async_trait]
pub trait Invoke: Send + Sync {
    /// A synchronous invocation (`RequestResponse`) that waits for a free execution environment.
    async fn invoke(&self, payload: Value) -> Result<Value, InvokeError>;
}

/// How one function runs.
#[derive(Debug, Clone)]
pub struct FunctionConfig {
    /// `AWS_LAMBDA_FUNCTION_NAME` (the binary's name locally).
    pub name: String,
    pub binary: PathBuf,
    pub timeout: Duration,
    pub memory_mb: u32,
    /// Most execution environments at once (reserved concurrency, or the event source's maximum).
    pub concurrency: usize,
    /// The function's environment (from the template, resolved) and its credentials.
    pub env: BTreeMap<String, String>,
    /// Where the function's log lines go.
    pub log_file: PathBuf,
    pub log_group: String,
    /// Freeze idle environments, as Lambda does.
    pub freeze_idle: bool,
    pub region: String,
    pub account_id: String,
}

impl FunctionConfig {
    pub fn arn(&self) -> String {
        format!("arn:aws:lambda:{}:{}:function:{}", self.region, self.account_id, self.name)
    }
}

/// One finished invocation.
#[derive(Debug, Clone)]
pub struct InvocationRecord {
    pub request_id: String,
    pub payload: Value,
    pub result: Result<Value, InvokeError>,
    pub duration: Duration,
    pub cold_start: bool,
}

/// The error body a runtime posts to `/error` (and Lambda returns to the caller).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    #[serde(default)]
    pub error_type: String,
    #[serde(default)]
    pub error_message: String,
}

enum Outcome {
    Response(Bytes),
    Error(ErrorBody),
}

struct Delivery {
    request_id: String,
    payload: Bytes,
    deadline_ms: u128,
    reply: oneshot::Sender<Outcome>,
}

/// The state an environment's Runtime API shares with the invoker.
struct Env {
    pid: u32,
    freeze_idle: bool,
    arn: String,
    inbox: tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
    pending: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    frozen: Mutex<bool>,
    ready: watch::Sender<bool>,
    init_error: Mutex<Option<ErrorBody>>,
    /// `Some(description)` once the process exited.
    exited: watch::Sender<Option<String>>,
}

impl Env {
    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on a pid this process started; no memory is shared.
        unsafe {
            libc::kill(self.pid as libc::pid_t, sig);
        }
    }

    fn is_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }
}

struct Instance {
    env: Arc<Env>,
    outbox: mpsc::Sender<Delivery>,
    busy: AtomicBool,
    /// Being ended: never handed another invocation.
    doomed: AtomicBool,
    server: tokio::task::JoinHandle<()>,
}

impl Instance {
    /// Thaws the environment if frozen and hands it the invocation.
    fn deliver(&self, d: Delivery) -> Result<(), Delivery> {
        let mut frozen = self.env.frozen.lock().expect("lock");
        if *frozen {
            self.env.signal(libc::SIGCONT);
            *frozen = false;
        }
        self.outbox.try_send(d).map_err(|e| match e {
            mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d) => d,
        })
    }

    fn kill(&self) {
        self.doomed.store(true, Ordering::SeqCst);
        self.env.signal(libc::SIGKILL);
    }
}

/// A function: its execution environments and its concurrency.
pub struct LocalFunction {
    pub config: FunctionConfig,
    slots: Arc<Semaphore>,
    instances: Mutex<Vec<Arc<Instance>>>,
    log: Mutex<std::fs::File>,
    records: Mutex<VecDeque<InvocationRecord>>,
    next_stream: AtomicU64,
}

const KEEP_RECORDS: usize = 200;

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()
}

fn hex(n: usize) -> String {
    (0..n).map(|_| char::from_digit(fastrand::u32(0..16), 16).expect("hex digit")).collect()
}

/// A request id in Lambda's form (a UUID).
pub fn request_id() -> String {
    format!("{}-{}-4{}-{}-{}", hex(8), hex(4), hex(3), hex(4), hex(12))
}

/// Peak resident memory of a process, in MiB (0 when unknown).
fn peak_memory_mb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map(|kb| kb.div_ceil(1024))
        .unwrap_or(0)
}

impl LocalFunction {
    pub fn new(config: FunctionConfig) -> std::io::Result<Arc<Self>> {
        if let Some(dir) = config.log_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&config.log_file)?;
        Ok(Arc::new(Self {
            slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
            config,
            instances: Mutex::new(Vec::new()),
            log: Mutex::new(log),
            records: Mutex::new(VecDeque::new()),
            next_stream: AtomicU64::new(1),
        }))
    }

    fn log_line(&self, line: &str) {
        let mut f = self.log.lock().expect("lock");
        let _ = writeln!(f, "{line}");
    }

    /// Process ids of the running execution environments.
    pub fn pids(&self) -> Vec<u32> {
        self.instances.lock().expect("lock").iter().filter(|i| !i.env.is_exited()).map(|i| i.env.pid).collect()
    }

    /// The last invocations (at most 200), oldest first.
    pub fn invocations(&self) -> Vec<InvocationRecord> {
        self.records.lock().expect("lock").iter().cloned().collect()
    }

    fn record(&self, r: InvocationRecord) {
        let mut q = self.records.lock().expect("lock");
        if q.len() == KEEP_RECORDS {
            q.pop_front();
        }
        q.push_back(r);
    }

    fn take_idle(&self) -> Option<Arc<Instance>> {
        let mut list = self.instances.lock().expect("lock");
        list.retain(|i| !i.env.is_exited());
        list.iter()
            .filter(|i| !i.doomed.load(Ordering::SeqCst))
            .find(|i| i.busy.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_ok())
            .cloned()
    }

    /// Starts an execution environment and waits for its runtime to ask for work.
    async fn start_instance(self: &Arc<Self>) -> Result<Arc<Instance>, InvokeError> {
        let c = &self.config;
        let start_err = |m: String| InvokeError::function("Runtime.Unknown", m);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| start_err(format!("could not open a Runtime API: {e}")))?;
        let api = listener.local_addr().map_err(|e| start_err(e.to_string()))?;
        let stream = format!(
            "{}/[$LATEST]{:016x}",
            chrono::Utc::now().format("%Y/%m/%d"),
            self.next_stream.fetch_add(1, Ordering::SeqCst)
        );
        let log = self.log.lock().expect("lock").try_clone().map_err(|e| start_err(e.to_string()))?;
        let log2 = log.try_clone().map_err(|e| start_err(e.to_string()))?;
        let mut child = tokio::process::Command::new(&c.binary)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "en_US.UTF-8")
            .env("TZ", ":UTC")
            .env("LAMBDA_TASK_ROOT", c.binary.parent().map(|p| p.display().to_string()).unwrap_or_default())
            .env("_HANDLER", "bootstrap")
            .env("AWS_EXECUTION_ENV", "AWS_Lambda_provided.al2023")
            .env("AWS_REGION", &c.region)
            .env("AWS_DEFAULT_REGION", &c.region)
            .env("AWS_LAMBDA_RUNTIME_API", api.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", &c.name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", c.memory_mb.to_string())
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", &c.log_group)
            .env("AWS_LAMBDA_LOG_STREAM_NAME", &stream)
            .envs(&c.env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| start_err(format!("could not start {}: {e}", c.binary.display())))?;
        let pid = child.id().unwrap_or_default();
        let (outbox, inbox) = mpsc::channel(1);
        let (ready, mut ready_rx) = watch::channel(false);
        let (exited, mut exited_rx) = watch::channel(None);
        let env = Arc::new(Env {
            pid,
            freeze_idle: c.freeze_idle,
            arn: c.arn(),
            inbox: tokio::sync::Mutex::new(inbox),
            pending: Mutex::new(HashMap::new()),
            frozen: Mutex::new(false),
            ready,
            init_error: Mutex::new(None),
            exited,
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(respond))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .layer(DefaultBodyLimit::max(MAX_PAYLOAD + 1024))
            .with_state(env.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let watcher = env.clone();
        let function = Arc::downgrade(self);
        tokio::spawn(async move {
            let status = child.wait().await;
            let what = match status {
                Ok(s) => format!("Runtime exited with error: {s}"),
                Err(e) => format!("Runtime exited: {e}"),
            };
            let _ = watcher.exited.send(Some(what));
            if let Some(f) = function.upgrade() {
                f.instances.lock().expect("lock").retain(|i| i.env.pid != watcher.pid);
            }
        });
        let inst = Arc::new(Instance {
            env: env.clone(),
            outbox,
            busy: AtomicBool::new(true),
            doomed: AtomicBool::new(false),
            server,
        });
        let outcome = tokio::time::timeout(INIT_TIMEOUT, async {
            tokio::select! {
                r = ready_rx.wait_for(|r| *r) => r.is_ok(),
                _ = exited_rx.wait_for(|e| e.is_some()) => false,
            }
        })
        .await;
        let init_error = env.init_error.lock().expect("lock").clone();
        match (outcome, init_error) {
            (Ok(true), None) => {
                self.instances.lock().expect("lock").push(inst.clone());
                Ok(inst)
            }
            (r, e) => {
                inst.kill();
                inst.server.abort();
                let reason = match (r, e) {
                    (_, Some(e)) => format!("{}: {}", e.error_type, e.error_message),
                    (Err(_), _) => format!("the runtime did not ask for work within {} s", INIT_TIMEOUT.as_secs()),
                    _ => env.exited.borrow().clone().unwrap_or_else(|| "the runtime exited during init".into()),
                };
                self.log_line(&format!("INIT_REPORT Status: error Reason: {reason}"));
                Err(InvokeError::function("Runtime.InitError", reason))
            }
        }
    }

    /// Invokes the function once (synchronously). `wait_for_capacity` makes a call beyond the
    /// function's concurrency wait instead of being throttled; `timeout` replaces the function's
    /// timeout (an invocation's deadline is its start plus this).
    pub async fn invoke_bytes(
        self: &Arc<Self>,
        payload: Bytes,
        wait_for_capacity: bool,
        timeout: Option<Duration>,
    ) -> Result<Bytes, InvokeError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(InvokeError::RequestTooLarge);
        }
        let _permit = if wait_for_capacity {
            self.slots.clone().acquire_owned().await.expect("never closed")
        } else {
            self.slots.clone().try_acquire_owned().map_err(|_| InvokeError::Throttled(self.config.concurrency))?
        };
        let started = Instant::now();
        let (inst, cold) = match self.take_idle() {
            Some(i) => (i, None),
            None => {
                let i = self.start_instance().await?;
                (i, Some(started.elapsed()))
            }
        };
        let id = request_id();
        let timeout = timeout.unwrap_or(self.config.timeout);
        let deadline_ms = now_ms() + timeout.as_millis();
        self.log_line(&format!("START RequestId: {id} Version: $LATEST"));
        let began = Instant::now();
        let (reply, answer) = oneshot::channel();
        let mut exited = inst.env.exited.subscribe();
        let delivered =
            inst.deliver(Delivery { request_id: id.clone(), payload: payload.clone(), deadline_ms, reply }).is_ok();
        let result = if !delivered {
            Err(InvokeError::function("Runtime.ExitError", format!("RequestId: {id} Error: the runtime is gone")))
        } else {
            tokio::select! {
                a = answer => match a {
                    Ok(Outcome::Response(b)) if b.len() > MAX_PAYLOAD => {
                        Err(InvokeError::function("Function.ResponseSizeTooLarge", format!("Response payload size ({} bytes) exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes).", b.len())))
                    }
                    Ok(Outcome::Response(b)) => Ok(b),
                    Ok(Outcome::Error(e)) => Err(InvokeError::Function { error_type: e.error_type, error_message: e.error_message }),
                    Err(_) => Err(InvokeError::function("Runtime.ExitError", format!("RequestId: {id} Error: the runtime dropped the invocation"))),
                },
                _ = exited.wait_for(|e| e.is_some()) => {
                    let why = inst.env.exited.borrow().clone().unwrap_or_default();
                    Err(InvokeError::function("Runtime.ExitError", format!("RequestId: {id} Error: {why}")))
                }
                _ = tokio::time::sleep(timeout) => {
                    inst.kill();
                    let secs = timeout.as_secs_f64();
                    self.log_line(&format!("{} {id} Task timed out after {secs:.2} seconds", chrono::Utc::now().to_rfc3339()));
                    Err(InvokeError::function("Sandbox.Timedout", format!("RequestId: {id} Error: Task timed out after {secs:.2} seconds")))
                }
            }
        };
        let duration = began.elapsed();
        let used = peak_memory_mb(inst.env.pid);
        let result = match result {
            Ok(_) if used > self.config.memory_mb as u64 => {
                inst.kill();
                Err(InvokeError::function(
                    "Runtime.OutOfMemory",
                    format!(
                        "RequestId: {id} Error: Runtime exited with error: memory used ({used} MB) exceeds MemorySize"
                    ),
                ))
            }
            r => r,
        };
        self.log_line(&format!("END RequestId: {id}"));
        let init = cold.map(|d| format!("\tInit Duration: {:.2} ms", d.as_secs_f64() * 1000.0)).unwrap_or_default();
        let ms = duration.as_secs_f64() * 1000.0;
        self.log_line(&format!(
            "REPORT RequestId: {id}\tDuration: {ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB\tMax Memory Used: {used} MB{init}",
            ms.ceil() as u64,
            self.config.memory_mb
        ));
        inst.busy.store(false, Ordering::SeqCst);
        self.record(InvocationRecord {
            request_id: id,
            payload: serde_json::from_slice(&payload).unwrap_or(Value::Null),
            result: result.as_ref().map(|b| serde_json::from_slice(b).unwrap_or(Value::Null)).map_err(Clone::clone),
            duration,
            cold_start: cold.is_some(),
        });
        result
    }

    /// A synchronous invocation with a JSON payload and answer.
    pub async fn invoke_json(
        self: &Arc<Self>,
        payload: &Value,
        wait_for_capacity: bool,
        timeout: Option<Duration>,
    ) -> Result<Value, InvokeError> {
        let bytes = Bytes::from(serde_json::to_vec(payload).expect("a JSON value serializes"));
        let out = self.invoke_bytes(bytes, wait_for_capacity, timeout).await?;
        if out.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out)
            .map_err(|e| InvokeError::function("Runtime.InvalidResponse", format!("the response is not JSON: {e}")))
    }

    /// An asynchronous invocation (`Event`): queued until an environment is free, and retried
    /// after a function error with `retry_delays` between attempts (Lambda: one minute, then two).
    pub fn invoke_event(self: &Arc<Self>, payload: Value, retry_delays: Vec<Duration>) -> tokio::task::JoinHandle<()> {
        let f = self.clone();
        tokio::spawn(async move {
            let mut delays = retry_delays.into_iter();
            loop {
                match f.invoke_json(&payload, true, None).await {
                    Ok(_) => return,
                    Err(e) => match delays.next() {
                        Some(d) => {
                            f.log_line(&format!("async invocation failed ({e}); retrying in {} s", d.as_secs()));
                            tokio::time::sleep(d).await;
                        }
                        None => {
                            f.log_line(&format!("async invocation failed ({e}); no retries left, dropping the event"));
                            return;
                        }
                    },
                }
            }
        })
    }

    /// Ends every execution environment (SIGTERM, then SIGKILL after two seconds).
    pub async fn shutdown(&self) {
        let list: Vec<Arc<Instance>> = self.instances.lock().expect("lock").drain(..).collect();
        for i in &list {
            i.env.signal(libc::SIGCONT);
            i.env.signal(libc::SIGTERM);
        }
        for i in &list {
            let mut rx = i.env.exited.subscribe();
            if tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|e| e.is_some())).await.is_err() {
                i.kill();
                let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|e| e.is_some())).await;
            }
            i.server.abort();
        }
    }
}

#[async_trait]
impl Invoke for Arc<LocalFunction> {
    async fn invoke(&self, payload: Value) -> Result<Value, InvokeError> {
        self.invoke_json(&payload, true, None).await
    }
}

// ---- the Runtime API of one execution environment ----------------------------------------------

fn header(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn next(State(env): State<Arc<Env>>) -> Response {
    let mut inbox = env.inbox.lock().await;
    let _ = env.ready.send(true);
    let waiting = {
        let mut frozen = env.frozen.lock().expect("lock");
        match inbox.try_recv() {
            Ok(d) => Some(d),
            Err(_) => {
                if env.freeze_idle {
                    env.signal(libc::SIGSTOP);
                    *frozen = true;
                }
                None
            }
        }
    };
    let d = match waiting {
        Some(d) => d,
        None => {
            let mut exited = env.exited.subscribe();
            tokio::select! {
                d = inbox.recv() => match d {
                    Some(d) => d,
                    None => return StatusCode::GONE.into_response(),
                },
                _ = exited.wait_for(|e| e.is_some()) => return StatusCode::GONE.into_response(),
            }
        }
    };
    env.pending.lock().expect("lock").insert(d.request_id.clone(), d.reply);
    let trace = format!("Root=1-{:08x}-{};Parent={};Sampled=0", now_ms() / 1000, hex(24), hex(16));
    let mut h = HeaderMap::new();
    h.insert("Lambda-Runtime-Aws-Request-Id", header(&d.request_id));
    h.insert("Lambda-Runtime-Deadline-Ms", header(&d.deadline_ms.to_string()));
    h.insert("Lambda-Runtime-Invoked-Function-Arn", header(&env.arn));
    h.insert("Lambda-Runtime-Trace-Id", header(&trace));
    h.insert("Content-Type", HeaderValue::from_static("application/json"));
    (StatusCode::OK, h, d.payload).into_response()
}

fn invalid_request_id() -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(ErrorBody { error_type: "InvalidRequestID".into(), error_message: "Invalid request ID".into() }),
    )
        .into_response()
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(serde_json::json!({"status": "OK"}))).into_response()
}

async fn respond(State(env): State<Arc<Env>>, Path(id): Path<String>, body: Bytes) -> Response {
    let Some(reply) = env.pending.lock().expect("lock").remove(&id) else {
        return invalid_request_id();
    };
    let _ = reply.send(Outcome::Response(body));
    accepted()
}

async fn error(State(env): State<Arc<Env>>, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(reply) = env.pending.lock().expect("lock").remove(&id) else {
        return invalid_request_id();
    };
    let mut e: ErrorBody = serde_json::from_slice(&body).unwrap_or_else(|_| ErrorBody {
        error_type: String::new(),
        error_message: String::from_utf8_lossy(&body).into_owned(),
    });
    if e.error_type.is_empty() {
        e.error_type = headers
            .get("Lambda-Runtime-Function-Error-Type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("Unhandled")
            .to_string();
    }
    let _ = reply.send(Outcome::Error(e));
    accepted()
}

async fn init_error(State(env): State<Arc<Env>>, body: Bytes) -> Response {
    let e: ErrorBody = serde_json::from_slice(&body).unwrap_or_else(|_| ErrorBody {
        error_type: "Runtime.InitError".into(),
        error_message: String::from_utf8_lossy(&body).into_owned(),
    });
    *env.init_error.lock().expect("lock") = Some(e);
    env.signal(libc::SIGKILL);
    accepted()
}
