//! Drives the pipeline exactly as `make dev` runs it: `dev-stack` with the functions behind the
//! local HTTP API, SQS event-source mapping, schedule and Invoke API, each with its own IAM
//! policy enforced by moto; reached over HTTP (and moto, with the stack's admin keys) only. Used
//! by the end-to-end tests and the soak.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use intake::auth::sign;
use serde_json::Value;

use crate::lambda_local::iam::{AccessReport, Credentials, Grant, read_audit};

/// The secret values `dev-stack` uses; none may appear in a log.
pub const SECRET_VALUES: &[&str] = &[
    "dev-webhook-token",
    "dev-signing-secret",
    "dev-read-key",
    "dev-ghl-token",
    "dev-sproutvideo-key",
    "dev-ghl-workflow-token",
];

/// Where the workspace's debug binaries are (they must be built).
pub fn bin_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("debug");
    for b in ["dev-stack", "sv-intake", "sv-worker", "sv-reconciler", "sv-admin", "local-ghl", "local-sproutvideo"] {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: build the binaries first (`make test` does: cargo build --workspace --bins)",
            dir.join(b).display()
        );
    }
    dir
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn moto_on_path() -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("moto_server").is_file()))
}

pub struct Pipeline {
    child: Child,
    pub dir: PathBuf,
    pub state: Value,
    pub http: reqwest::Client,
}

impl Pipeline {
    pub async fn start(tag: &str) -> Self {
        Self::start_with(tag, &[]).await
    }

    /// Starts `dev-stack` with extra environment for it and its processes.
    pub async fn start_with(tag: &str, extra_env: &[(&str, &str)]) -> Self {
        assert!(moto_on_path(), "moto_server must be on PATH (make test puts .venv-tools/bin there)");
        let bins = bin_dir();
        let dir = std::env::temp_dir().join(format!("sv-pipeline-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::fs::File::create(dir.join("dev-stack.out")).unwrap();
        let child = Command::new(bins.join("dev-stack"))
            .env("DEV_DIR", &dir)
            .env("MOTO_PORT", free_port().to_string())
            .env("INTAKE_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("LAMBDA_API_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("LOCAL_GHL_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("LOCAL_SPROUT_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("RECONCILE_EVERY", "3600")
            .env("DEV_VISIBILITY_TIMEOUT", "2")
            .env_remove("GHL_TOKEN")
            .env_remove("SPROUTVIDEO_API_KEY")
            .env_remove("AWS_ENDPOINT_URL")
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        let state = loop {
            if let Ok(raw) = std::fs::read_to_string(dir.join("stack.json")) {
                break serde_json::from_str::<Value>(&raw).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "dev-stack did not come up: {}",
                std::fs::read_to_string(dir.join("dev-stack.out")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        Self { child, dir, state, http: reqwest::Client::new() }
    }

    pub fn url(&self, k: &str) -> String {
        self.state[k].as_str().unwrap().trim_end_matches('/').to_string()
    }

    /// Process ids of a process, or of a function's execution environments (none while idle
    /// environments have all been ended).
    pub fn pids(&self, name: &str) -> Vec<u32> {
        let raw = std::fs::read_to_string(self.dir.join("stack.json")).unwrap();
        let v: Value = serde_json::from_str(&raw).unwrap();
        v["pids"][name]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p.as_u64()).map(|p| p as u32).collect())
            .unwrap_or_default()
    }

    /// A GET's JSON answer (the local fakes' admin paths).
    pub async fn get_json(&self, url: &str) -> Value {
        self.http.get(url).send().await.unwrap().json().await.unwrap()
    }

    pub async fn ghl_contacts(&self) -> Vec<Value> {
        let v = self.get_json(&format!("{}/_admin/state", self.url("ghl_base_url"))).await;
        v["locations"][self.state["ghl_location_id"].as_str().unwrap()]["contacts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The local SproutVideo's logins and access grants (`GET /_admin/access`).
    pub async fn sprout_access(&self) -> Value {
        let base = self.url("sproutvideo_base_url");
        self.get_json(&format!("{}/_admin/access", base.trim_end_matches("/v1"))).await
    }

    /// The values the contacts of the stack's location hold in the custom field `field_key`, as
    /// (contact id, email, value) (contacts without a value are left out).
    pub async fn custom_field_values(&self, field_key: &str) -> Vec<(String, String, String)> {
        let state = self.get_json(&format!("{}/_admin/state", self.url("ghl_base_url"))).await;
        let loc = &state["locations"][self.state["ghl_location_id"].as_str().unwrap()];
        let Some(field) = loc["customFields"].as_array().into_iter().flatten().find(|f| f["fieldKey"] == field_key)
        else {
            return Vec::new();
        };
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        loc["contacts"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| {
                c["customFields"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|f| f["id"] == field["id"])
                    .map(|f| (text(&c["id"]), text(&c["email"]), text(&f["value"])))
            })
            .filter(|(_, _, v)| !v.is_empty())
            .collect()
    }

    pub async fn wait_for(&self, what: &str, secs: u64, mut ok: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let c = self.ghl_contacts().await;
            if ok(&c) {
                return c;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; GHL holds {c:#?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// A call to the local GHL's API as a user's own tools would make it (the dev stack's
    /// token); retried while the local GHL injects faults.
    pub async fn ghl_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut last = (0, Value::Null);
        for _ in 0..20 {
            let mut rb = self
                .http
                .request(method.clone(), format!("{}/{}", self.url("ghl_base_url"), path.trim_start_matches('/')))
                .header("authorization", "Bearer dev-ghl-token")
                .header("version", "2021-07-28")
                .header("accept", "application/json");
            if let Some(b) = &body {
                rb = rb.json(b);
            }
            let r = rb.send().await.unwrap();
            let status = r.status().as_u16();
            last = (status, r.json().await.unwrap_or(Value::Null));
            if status != 429 && status < 500 {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        last
    }

    pub async fn event(&self, body: Value) -> u16 {
        self.signed_event(None, "dev-signing-secret", body).await
    }

    /// Invokes the reconciler through Lambda's Invoke API with the schedule's input (`{}`), as
    /// the schedule does, and returns its report. Waits while a scheduled run holds it.
    pub async fn reconcile_once(&self) -> Value {
        let url = format!("{}/2015-03-31/functions/sv-reconciler/invocations", self.url("lambda_api_url"));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = self.http.post(&url).body("{}").send().await.unwrap();
            let status = r.status().as_u16();
            let failed = r.headers().get("x-amz-function-error").is_some();
            let body: Value = r.json().await.unwrap();
            if status == 429 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            assert!(status == 200 && !failed, "the reconciler failed ({status}): {body}");
            return body;
        }
    }

    /// The stack's admin keys (moto checks every call).
    pub fn admin(&self) -> Credentials {
        let a = &self.state["aws_admin"];
        Credentials {
            user: "admin".into(),
            access_key_id: a["access_key_id"].as_str().unwrap().into(),
            secret_access_key: a["secret_access_key"].as_str().unwrap().into(),
        }
    }

    /// An SQS client for the stack's moto.
    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        let sdk = self.admin().sdk_config(&self.url("aws_endpoint_url"), "us-east-1").await;
        aws_sdk_sqs::Client::new(&sdk)
    }

    /// What each function was granted against the calls it made so far.
    pub fn access_report(&self) -> AccessReport {
        let grants: Vec<Grant> = serde_json::from_value(self.state["grants"].clone()).unwrap();
        let audit = read_audit(Path::new(self.state["iam_audit_log"].as_str().unwrap()));
        AccessReport::build(&grants, &audit)
    }

    /// Waits until the sync queue is empty; false when `secs` passed first.
    pub async fn wait_drained(&self, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.queue_depths().await.0 > 0 {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        true
    }

    /// Messages in the sync queue and in the dead-letter queue (visible and in flight).
    pub async fn queue_depths(&self) -> (u64, u64) {
        let sqs = self.sqs().await;
        let mut out = [0u64; 2];
        for (i, q) in [self.url("queue_url"), self.url("dlq_url")].iter().enumerate() {
            let a = sqs
                .get_queue_attributes()
                .queue_url(q)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
                .send()
                .await
                .unwrap()
                .attributes
                .unwrap_or_default();
            use aws_sdk_sqs::types::QueueAttributeName as A;
            let n = |k: A| a.get(&k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            out[i] = n(A::ApproximateNumberOfMessages) + n(A::ApproximateNumberOfMessagesNotVisible);
        }
        (out[0], out[1])
    }

    /// Runs `sv-admin` against the stack with the admin's keys (`stdin` fed to it); its exit
    /// status and output.
    pub fn sv_admin(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        use std::io::Write;
        let a = &self.state["aws_admin"];
        let mut child = Command::new(bin_dir().join("sv-admin"))
            .args(args)
            .env("AWS_ENDPOINT_URL", self.url("aws_endpoint_url"))
            .env("AWS_ACCESS_KEY_ID", a["access_key_id"].as_str().unwrap())
            .env("AWS_SECRET_ACCESS_KEY", a["secret_access_key"].as_str().unwrap())
            .env("AWS_REGION", "us-east-1")
            .env("SYNC_TABLE", self.state["table"].as_str().unwrap())
            .env("SYNC_QUEUE_URL", self.url("queue_url"))
            .env("TENANT_CACHE_TTL_SECS", "1")
            .env("TENANT_SECRET_PREFIX", self.state["tenant_secret_prefix"].as_str().unwrap())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// A secret's JSON value, read with the admin's keys.
    pub async fn secret_value(&self, secret_id: &str) -> Value {
        let sdk = self.admin().sdk_config(&self.url("aws_endpoint_url"), "us-east-1").await;
        let sm = aws_sdk_secretsmanager::Client::new(&sdk);
        let v = sm.get_secret_value().secret_id(secret_id).send().await.unwrap();
        serde_json::from_str(v.secret_string().unwrap()).unwrap()
    }

    /// Sends a signed event as the tenant `key_id` (its signing secret).
    pub async fn tenant_event(&self, key_id: &str, signing_secret: &str, body: Value) -> u16 {
        self.signed_event(Some(key_id), signing_secret, body).await
    }

    /// Posts `body` to `/v1/events`, signed with `signing_secret` (and naming `key_id`).
    async fn signed_event(&self, key_id: Option<&str>, signing_secret: &str, body: Value) -> u16 {
        let raw = body.to_string();
        let ts = chrono::Utc::now().timestamp();
        let mut req = self
            .http
            .post(format!("{}/v1/events", self.url("intake_url")))
            .header("content-type", "application/json")
            .header("x-signature-timestamp", ts.to_string())
            .header("x-signature", sign(signing_secret, ts, raw.as_bytes()));
        if let Some(k) = key_id {
            req = req.header("x-signature-key-id", k);
        }
        req.body(raw).send().await.unwrap().status().as_u16()
    }

    /// The dead-letter queue's messages (received, left there): body, group and reason.
    pub async fn dead_letters(&self) -> Vec<(String, String, String)> {
        let sqs = self.sqs().await;
        let mut out: Vec<(String, String, String)> = Vec::new();
        for _ in 0..5 {
            let r = sqs
                .receive_message()
                .queue_url(self.url("dlq_url"))
                .max_number_of_messages(10)
                .visibility_timeout(1)
                .message_attribute_names("All")
                .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId)
                .send()
                .await
                .unwrap();
            for m in r.messages.unwrap_or_default() {
                let group = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId).cloned())
                    .unwrap_or_default();
                let reason = m
                    .message_attributes
                    .as_ref()
                    .and_then(|a| a.get("reason"))
                    .and_then(|v| v.string_value().map(str::to_string))
                    .unwrap_or_default();
                if !out.iter().any(|(b, _, _)| Some(b.as_str()) == m.body.as_deref()) {
                    out.push((m.body.unwrap_or_default(), group, reason));
                }
            }
        }
        out
    }

    /// Every service log line, for the secrets check.
    pub fn service_logs(&self) -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(self.dir.join("logs")).unwrap() {
            all.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap_or_default());
        }
        all
    }

    pub fn stop(mut self) {
        let raw = std::fs::read_to_string(self.dir.join("stack.json")).unwrap_or_default();
        let now: Value = serde_json::from_str(&raw).unwrap_or_else(|_| self.state.clone());
        let pids: Vec<u32> = now["pids"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(|v| v.as_array())
            .flatten()
            .filter_map(|v| v.as_u64())
            .map(|p| p as u32)
            .collect();
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "dev-stack did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
        for pid in pids {
            assert!(!Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid), "process {pid} left running");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true)
}
