//! End to end, as `make dev` runs it: `dev-stack` starts moto, the local GHL and SproutVideo, and
//! the intake, worker and reconciler as processes. The tests talk to them over HTTP only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::intake::sign;

const SECRET_VALUES: &[&str] =
    &["dev-webhook-token", "dev-signing-secret", "dev-read-key", "dev-ghl-token", "dev-sproutvideo-key"];

fn bin_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("debug");
    for b in ["dev-stack", "sv-intake", "sv-worker", "sv-reconciler", "local-ghl", "local-sproutvideo"] {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: build the binaries first (`make test` does: cargo build --workspace --bins)",
            dir.join(b).display()
        );
    }
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn moto_on_path() -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("moto_server").is_file()))
}

struct Pipeline {
    child: Child,
    dir: PathBuf,
    state: Value,
    http: reqwest::Client,
}

impl Pipeline {
    async fn start(tag: &str) -> Self {
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
            .env("LOCAL_GHL_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("LOCAL_SPROUT_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("RECONCILE_EVERY", "3600")
            .env("DEV_VISIBILITY_TIMEOUT", "2")
            .env_remove("GHL_TOKEN")
            .env_remove("SPROUTVIDEO_API_KEY")
            .env_remove("AWS_ENDPOINT_URL")
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

    fn url(&self, k: &str) -> String {
        self.state[k].as_str().unwrap().trim_end_matches('/').to_string()
    }

    fn pid(&self, name: &str) -> u32 {
        let raw = std::fs::read_to_string(self.dir.join("stack.json")).unwrap();
        let v: Value = serde_json::from_str(&raw).unwrap();
        v["pids"][name].as_u64().unwrap() as u32
    }

    async fn ghl_contacts(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/_admin/state", self.url("ghl_base_url")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["locations"][self.state["ghl_location_id"].as_str().unwrap()]["contacts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn wait_for(&self, what: &str, secs: u64, mut ok: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
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

    async fn event(&self, body: Value) -> u16 {
        let raw = body.to_string();
        let ts = chrono::Utc::now().timestamp();
        self.http
            .post(format!("{}/v1/events", self.url("intake_url")))
            .header("content-type", "application/json")
            .header("x-signature-timestamp", ts.to_string())
            .header("x-signature", sign("dev-signing-secret", ts, raw.as_bytes()))
            .body(raw)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Runs the reconciler once as its own process, with the functions' environment.
    fn reconcile_once(&self) -> Value {
        let mut cmd = Command::new(bin_dir().join("sv-reconciler"));
        for (k, v) in self.state["env"].as_object().unwrap() {
            cmd.env(k, v.as_str().unwrap());
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "reconciler failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    async fn queue_depths(&self) -> (u64, u64) {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(self.url("aws_endpoint_url"))
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new("dev", "dev", None, None, "test"))
            .load()
            .await;
        let sqs = aws_sdk_sqs::Client::new(&sdk);
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

    /// Every service log line, for the secrets check.
    fn service_logs(&self) -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(self.dir.join("logs")).unwrap() {
            all.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap_or_default());
        }
        all
    }

    fn stop(mut self) {
        let pids: Vec<u32> =
            self.state["pids"].as_object().unwrap().values().filter_map(|v| v.as_u64()).map(|p| p as u32).collect();
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

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

#[tokio::test]
async fn the_pipeline_runs_end_to_end_as_make_dev_does() {
    let p = Pipeline::start("e2e").await;
    // The reconciler ran at start: the demo SproutVideo people reached GHL without any webhook.
    p.wait_for("the demo people", 60, |c| {
        ["ada.lovelace@example.com", "grace.hopper@example.com", "member.one@example.com", "member.two@example.com"]
            .iter()
            .all(|e| c.iter().any(|x| x["email"] == *e))
    })
    .await;

    // SproutVideo's webhook, sent by the local SproutVideo itself.
    let hook = format!("{}/webhooks/sproutvideo/dev-webhook-token", p.url("intake_url"));
    let r: Value = p
        .http
        .post(format!("{}/_admin/webhook", p.url("sproutvideo_base_url").trim_end_matches("/v1")))
        .json(&json!({"video_id": "d1a2b3c4d5e6f7a8b9", "url": hook}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], 202);

    let contact =
        json!({"email": "new.lead@example.com", "first_name": "New", "last_name": "Lead", "phone": "(415) 555-2671"});
    for (i, (kind, extra)) in [
        ("lead.captured", json!({})),
        ("note.create", json!({"note": {"body": "Asked about pricing"}})),
        (
            "task.create",
            json!({"task": {"external_id": "call-1", "title": "Call back", "due_at": "2026-12-01T15:00:00Z"}}),
        ),
        ("task.complete", json!({"task": {"external_id": "call-1"}})),
        ("tags.add", json!({"tags": ["VIP"]})),
    ]
    .into_iter()
    .enumerate()
    {
        let mut body = json!({"id": format!("e2e-{i}"), "type": kind, "occurred_at": now(), "contact": contact});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        assert_eq!(p.event(body).await, 202, "{kind}");
    }
    let contacts = p
        .wait_for("the new lead with its note, completed task and tag", 60, |c| {
            c.iter().any(|x| {
                x["email"] == "new.lead@example.com"
                    && x["notes"].as_array().is_some_and(|n| n.len() == 1)
                    && x["tasks"].as_array().is_some_and(|t| t.len() == 1 && t[0]["completed"] == true)
                    && x["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "vip"))
            })
        })
        .await;
    let lead = contacts.iter().find(|x| x["email"] == "new.lead@example.com").unwrap();
    assert_eq!(lead["phone"], "+14155552671");
    assert_eq!(lead["firstName"], "New");

    // The contact view over HTTP.
    let view: Value = p
        .http
        .get(format!("{}/v1/contacts/new.lead@example.com", p.url("intake_url")))
        .bearer_auth("dev-read-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["notes"].as_array().unwrap().len(), 1);

    // A reconciliation run as its own process: everything already matches.
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.queue_depths().await.0 > 0 {
        assert!(Instant::now() < deadline, "queue did not drain");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let report = p.reconcile_once();
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["commands_queued"], 0, "{report}");
    assert!(report["in_sync"].as_u64().unwrap() >= 4, "{report}");

    // No secret value in any service log.
    let logs = p.service_logs();
    assert!(logs.contains("event queued"), "logs were captured");
    for s in SECRET_VALUES {
        assert!(!logs.contains(s), "a secret value ({s}) appeared in the logs");
    }
    assert_eq!(p.queue_depths().await.1, 0, "nothing parked");
    p.stop();
}

#[tokio::test]
async fn killing_the_worker_mid_stream_loses_and_doubles_nothing() {
    let p = Pipeline::start("kill").await;
    let n = 30;
    for i in 0..n {
        let contact = json!({"email": format!("k{i:02}@example.com")});
        assert_eq!(
            p.event(
                json!({"id": format!("k-lead-{i}"), "type": "lead.captured", "occurred_at": now(), "contact": contact})
            )
            .await,
            202
        );
        let note = json!({"id": format!("k-note-{i}"), "type": "note.create", "occurred_at": now(), "contact": contact,
                          "note": {"body": format!("note {i}")}});
        assert_eq!(p.event(note).await, 202);
    }
    // Kill the worker (no clean shutdown) twice while it works through the queue.
    for round in 0..2 {
        let before = p.pid("sv-worker");
        p.wait_for("some progress", 60, |c| {
            c.iter().filter(|x| x["email"].as_str().unwrap_or("").starts_with('k')).count() > 5 * (round + 1)
        })
        .await;
        let _ = Command::new("kill").arg("-KILL").arg(before.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while p.pid("sv-worker") == before {
            assert!(Instant::now() < deadline, "the worker was not restarted");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let contacts = p
        .wait_for("every person with exactly one note", 120, |c| {
            let ks: Vec<&Value> = c.iter().filter(|x| x["email"].as_str().unwrap_or("").starts_with('k')).collect();
            ks.len() == n && ks.iter().all(|x| x["notes"].as_array().is_some_and(|a| !a.is_empty()))
        })
        .await;
    for i in 0..n {
        let email = format!("k{i:02}@example.com");
        let matching: Vec<&Value> = contacts.iter().filter(|x| x["email"] == email.as_str()).collect();
        assert_eq!(matching.len(), 1, "{email} exists exactly once");
        assert_eq!(matching[0]["notes"].as_array().unwrap().len(), 1, "{email} has exactly one note");
    }
    // Messages the killed worker applied but never deleted come back after their visibility
    // timeout and are skipped as already applied: the queue drains, and nothing is parked.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (queued, parked) = p.queue_depths().await;
        assert_eq!(parked, 0, "nothing parked");
        if queued == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{queued} message(s) still queued");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let again = p.ghl_contacts().await;
    for i in 0..n {
        let email = format!("k{i:02}@example.com");
        let c = again.iter().find(|x| x["email"] == email.as_str()).unwrap();
        assert_eq!(
            c["notes"].as_array().unwrap().len(),
            1,
            "{email} still has exactly one note after the redeliveries"
        );
    }
    let logs = p.service_logs();
    for s in SECRET_VALUES {
        assert!(!logs.contains(s), "a secret value ({s}) appeared in the logs");
    }
    p.stop();
}
