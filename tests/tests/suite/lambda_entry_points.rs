//! Each function entered the way Lambda enters it: its own binary under the local Lambda Runtime
//! API, driven by payloads shaped as AWS documents them (`tests/fixtures/lambda/`): HTTP API
//! payload 2.0 events (one with a base64 body) for the intake, an SQS FIFO batch for the worker
//! (a poison record, a failing group, and an invocation with only 5 s left), and the schedule's
//! input for the reconciler; then the stand-ins for the services that invoke them (the HTTP API,
//! the SQS event-source mapping, the schedule). Against moto and the local GHL and SproutVideo.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::event::apigw::ApiGatewayV2httpResponse;
use aws_lambda_events::event::sqs::SqsBatchResponse;
use base64::Engine;
use chrono::Utc;
use serde_json::{Value, json};
use shared::commands::{CommandBody, DesiredContact, SyncCommand};
use shared::identity::{Email, Identity};
use shared::queue::CommandQueue;
use shared::state::{DynamoStore, Holder, StateStore};
use sync_tests::aws::{Stack, StackNames, StackSettings, require_emulator, secret_json};
use sync_tests::lambda_local::http_api::HttpApiEvent;
use sync_tests::lambda_local::runtime::{FunctionConfig, Invoke, InvokeError, LocalFunction};
use sync_tests::lambda_local::scheduler::Scheduler;
use sync_tests::lambda_local::sqs_source::{Settlement, SqsEvent, SqsEventSource};
use sync_tests::lambda_local::template::{Template, default_path};
use sync_tests::lambda_local::{DeploySettings, Deployment, REGION};
use sync_tests::local_ghl::{GhlBehaviour, LocalGhl};
use sync_tests::local_sprout::{LocalSprout, SproutBehaviour};
use sync_tests::pipeline::bin_dir;

const LOC: &str = "locLambdaTest0000001";
const SIGNING: &str = "fixture-signing-secret";

fn fixture(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/lambda").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

struct World {
    ghl: LocalGhl,
    stack: Stack,
    d: Deployment,
    dir: PathBuf,
}

impl World {
    async fn new(tag: &str, only: &[&str], extra_env: &[(&str, &str)], http: bool) -> Self {
        require_emulator();
        let ghl = LocalGhl::new(GhlBehaviour::default());
        let ghl_url = format!("http://{}/", ghl.spawn("127.0.0.1:0").await.unwrap());
        let sprout = LocalSprout::new(SproutBehaviour::default());
        let sprout_url = format!("http://{}/v1", sprout.spawn("127.0.0.1:0").await.unwrap());
        let secret = secret_json(
            "fixture-webhook-token",
            &[SIGNING],
            "fixture-read-key",
            "fixture-ghl-token",
            Some("fixture-sv-key"),
        );
        let names = StackNames::unique(tag);
        let stack_name = names.queue.trim_end_matches("-sync.fifo").to_string();
        let stack =
            Stack::create(names, StackSettings { visibility_timeout_secs: 2, max_receive_count: 5 }, Some(&secret))
                .await
                .unwrap();
        let dir = std::env::temp_dir().join(format!("sv-lambda-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut ds =
            DeploySettings::new(bin_dir(), dir.join("logs"), &std::env::var("AWS_ENDPOINT_URL").expect("emulator"));
        ds.stack_name = stack_name;
        ds.parameters = vec![("GhlLocationId".into(), LOC.into())];
        ds.only = Some(only.iter().map(|s| s.to_string()).collect());
        ds.env = [
            ("GHL_BASE_URL", ghl_url.as_str()),
            ("SPROUTVIDEO_BASE_URL", sprout_url.as_str()),
            ("SPROUTVIDEO_PER_MINUTE", "1000"),
            ("LOG_FORMAT", "text"),
        ]
        .iter()
        .chain(extra_env)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if http {
            ds.http_addr = Some("127.0.0.1:0".into());
        }
        let d = Deployment::deploy(&stack, ds).await.unwrap();
        Self { ghl, stack, d, dir }
    }

    fn function(&self, name: &str) -> &Arc<LocalFunction> {
        self.d.function(name)
    }

    async fn contacts(&self) -> Vec<Value> {
        self.ghl.state().await["locations"][LOC]["contacts"].as_array().cloned().unwrap_or_default()
    }

    fn logs(&self) -> String {
        std::fs::read_dir(self.dir.join("logs"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
            .collect()
    }

    async fn stop(self) {
        self.d.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Signs a fixture event as a sender would: over the body's bytes (decoded when base64).
fn signed(mut e: HttpApiEvent) -> Value {
    let body = e.body.clone().unwrap_or_default();
    let bytes = if e.is_base64_encoded {
        base64::engine::general_purpose::STANDARD.decode(body).unwrap()
    } else {
        body.into_bytes()
    };
    let ts = Utc::now().timestamp();
    e.headers.insert("x-signature-timestamp".into(), ts.to_string());
    e.headers.insert("x-signature".into(), intake::auth::sign(SIGNING, ts, &bytes));
    serde_json::to_value(e).unwrap()
}

fn api_event(name: &str) -> HttpApiEvent {
    serde_json::from_str(&fixture(name)).unwrap()
}

async fn invoke_intake(w: &World, event: Value) -> (u16, Value) {
    let out = w.function("sv-intake").invoke_json(&event, true, None).await.unwrap();
    let r: ApiGatewayV2httpResponse = serde_json::from_value(out).unwrap();
    let body = match r.body {
        Some(aws_lambda_events::encodings::Body::Text(t)) => serde_json::from_str(&t).unwrap_or(Value::String(t)),
        Some(other) => panic!("unexpected body {other:?}"),
        None => Value::Null,
    };
    (r.status_code as u16, body)
}

#[tokio::test]
async fn the_intake_answers_http_api_v2_events() {
    let w = World::new("intake", &["sv-intake"], &[], true).await;

    let (status, body) = invoke_intake(&w, signed(api_event("apigw-v2-signed-event.json"))).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = invoke_intake(&w, signed(api_event("apigw-v2-base64-event.json"))).await;
    assert_eq!(status, 202, "a base64 body is decoded before its signature is checked: {body}");
    let (status, _) = invoke_intake(&w, serde_json::from_str(&fixture("apigw-v2-webhook.json")).unwrap()).await;
    assert_eq!(status, 202);
    let (status, _) = invoke_intake(&w, serde_json::from_str(&fixture("apigw-v2-health.json")).unwrap()).await;
    assert_eq!(status, 200);
    // The fixture's placeholders are not a signature.
    let (status, body) = invoke_intake(&w, serde_json::from_str(&fixture("apigw-v2-signed-event.json")).unwrap()).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = invoke_intake(&w, serde_json::from_str(&fixture("apigw-v2-contact-view.json")).unwrap()).await;
    assert_eq!(status, 404, "{body}");

    // What reached the queue: the lead's upsert; the note's upsert and note (from the base64
    // body); the video.
    let queued = w.stack.receive(&w.stack.queue_url, 10, 30).await.unwrap();
    let mut actions: Vec<String> =
        queued.iter().map(|m| SyncCommand::decode(m.body().unwrap()).unwrap().body.action_name().to_string()).collect();
    actions.sort();
    assert_eq!(actions, ["add_note", "upsert_contact", "upsert_contact", "video_changed"]);
    let note = queued
        .iter()
        .map(|m| SyncCommand::decode(m.body().unwrap()).unwrap())
        .find_map(|c| match c.body {
            CommandBody::AddNote { body, .. } => Some(body),
            _ => None,
        })
        .expect("a note was queued");
    assert!(note.contains("café ☕"), "{note}");

    // The same function behind the HTTP API: a plain HTTP request becomes the event.
    let url = format!("http://{}", w.d.http_addr.unwrap());
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{url}/health")).send().await.unwrap().status(), 200);
    let raw = r#"{"id":"http-1","type":"lead.captured","occurred_at":"2026-11-29T10:00:00Z","contact":{"email":"http@example.com"}}"#;
    let ts = Utc::now().timestamp();
    let r = http
        .post(format!("{url}/v1/events?source=test"))
        .header("content-type", "application/json")
        .header("x-signature-timestamp", ts.to_string())
        .header("x-signature", intake::auth::sign(SIGNING, ts, raw.as_bytes()))
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = http.get(format!("{url}/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"message": "Not Found"}), "HTTP API's own 404");
    let r = http.delete(format!("{url}/v1/events")).send().await.unwrap();
    assert_eq!(r.status(), 404, "no DELETE route in the template");

    // The Lambda service's log lines, and the function's own, in its log group.
    let logs = w.logs();
    assert!(logs.contains("START RequestId:") && logs.contains("REPORT RequestId:"), "{logs}");
    assert!(logs.contains("event queued"), "{logs}");
    assert!(!logs.contains(SIGNING) && !logs.contains("fixture-ghl-token"), "no secret in the logs");
    w.stop().await;
}

fn email(s: &str) -> Email {
    Email::parse(s).unwrap()
}

fn upsert(event: &str, e: &str) -> SyncCommand {
    let mut d = DesiredContact::new(email(e));
    d.tags.insert("sproutvideo".into());
    SyncCommand::new(event, "upsert_contact", Utc::now(), CommandBody::UpsertContact { contact: d })
}

fn note(event: &str, e: &str) -> SyncCommand {
    let identity = Identity { email: email(e), phone: None };
    SyncCommand::new(event, "add_note", Utc::now(), CommandBody::AddNote { identity, body: "from the batch".into() })
}

fn tags(event: &str, e: &str) -> SyncCommand {
    let identity = Identity { email: email(e), phone: None };
    SyncCommand::new(event, "add_tags", Utc::now(), CommandBody::AddTags { identity, tags: vec!["batch".into()] })
}

/// The fixture batch with its bodies: a poison record; a group whose note cannot be applied (its
/// key is claimed by another worker, a transient failure) and whose tags come after it; a group
/// that is fine.
fn batch(suffix: &str) -> (SqsEvent, Vec<SyncCommand>) {
    let failing = format!("failing{suffix}@example.com");
    let fine = format!("fine{suffix}@example.com");
    let cmds = vec![
        upsert(&format!("f-up-{suffix}"), &failing),
        note(&format!("f-note-{suffix}"), &failing),
        tags(&format!("f-tags-{suffix}"), &failing),
        upsert(&format!("ok-up-{suffix}"), &fine),
    ];
    let mut ev: SqsEvent = serde_json::from_str(&fixture("sqs-fifo-batch.json")).unwrap();
    ev.records[0].body = r#"{"v":1,"not":"a command"}"#.into();
    for (r, c) in ev.records[1..].iter_mut().zip(&cmds) {
        r.body = c.encode();
    }
    (ev, cmds)
}

fn failures(out: Value) -> Vec<String> {
    let r: SqsBatchResponse = serde_json::from_value(out).unwrap();
    r.batch_item_failures.into_iter().map(|f| f.item_identifier).collect()
}

#[tokio::test]
async fn the_worker_reports_exactly_the_failed_records_of_an_sqs_batch() {
    let me = Holder::new();
    let w = World::new("batch", &["sv-worker"], &[("GHL_REQUEST_TIMEOUT_MS", "2000")], false).await;
    let (ev, cmds) = batch("");
    let store = DynamoStore::new(w.stack.ddb.clone(), w.stack.names.table.clone());
    store.claim(&cmds[1].key, Duration::from_secs(600), &me).await.unwrap();

    let out = w.function("sv-worker").invoke_json(&serde_json::to_value(&ev).unwrap(), true, None).await.unwrap();
    let ids: Vec<String> = ev.records.iter().map(|r| r.message_id.clone()).collect();
    let mut failed = failures(out);
    failed.sort();
    assert_eq!(failed, vec![ids[2].clone(), ids[3].clone()], "the failing note and the tags after it");

    let contacts = w.contacts().await;
    assert!(contacts.iter().any(|c| c["email"] == "fine@example.com"), "the fine group was applied");
    let failing = contacts.iter().find(|c| c["email"] == "failing@example.com").expect("the upsert before the failure");
    assert!(failing["notes"].as_array().is_none_or(|n| n.is_empty()));
    let parked = w.stack.receive(&w.stack.dlq_url, 10, 30).await.unwrap();
    assert_eq!(parked.len(), 1, "the poison record is parked, not retried");
    assert_eq!(parked[0].body(), Some(ev.records[0].body.as_str()));
    w.stop().await;
}

#[tokio::test]
async fn a_worker_invoked_with_five_seconds_left_answers_with_the_records_it_did_not_start() {
    // With the default GHL request timeout (15 s), 5 s cannot finish any GHL call.
    let w = World::new("deadline", &["sv-worker"], &[], false).await;
    let (ev, _) = batch("-late");
    let out = w
        .function("sv-worker")
        .invoke_json(&serde_json::to_value(&ev).unwrap(), true, Some(Duration::from_secs(5)))
        .await
        .expect("a partial batch response, not a timed-out invocation");
    let mut ids: Vec<String> = ev.records[1..].iter().map(|r| r.message_id.clone()).collect();
    let mut failed = failures(out);
    ids.sort();
    failed.sort();
    assert_eq!(failed, ids, "every command record, none of them started");
    assert!(w.ghl.requests().await.is_empty(), "no GHL call was started");
    assert_eq!(w.stack.receive(&w.stack.dlq_url, 10, 30).await.unwrap().len(), 1, "the poison needed no GHL call");
    w.stop().await;
}

#[tokio::test]
async fn the_reconciler_runs_with_the_schedules_input() {
    let tpl = Template::load(&default_path()).unwrap();
    let w = World::new("schedule", &["sv-reconciler"], &[], false).await;
    let schedule = &w.d.defs[0].schedules[0];
    let input: Value = serde_json::from_str(&fixture("schedule-input.json")).unwrap();
    assert_eq!(schedule.input, input, "the fixture is the template's schedule input");
    assert!(tpl.function_ids().contains(&w.d.defs[0].logical_id));
    let report = w.function("sv-reconciler").invoke_json(&input, true, None).await.unwrap();
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["commands_queued"], 0, "{report}");
    w.stop().await;
}

#[tokio::test]
async fn the_schedule_invokes_with_its_input_again_and_again() {
    let dir = std::env::temp_dir().join(format!("sv-lambda-sched-{}", std::process::id()));
    let f = LocalFunction::new(FunctionConfig {
        name: "hello-lambda".into(),
        binary: bin_dir().join("hello-lambda"),
        timeout: Duration::from_secs(3),
        memory_mb: 128,
        concurrency: 1,
        env: Default::default(),
        log_file: dir.join("hello.log"),
        log_group: "/aws/lambda/hello".into(),
        freeze_idle: true,
        region: REGION.into(),
        account_id: "123456789012".into(),
    })
    .unwrap();
    let mut s = Scheduler::new(f.clone(), json!({}), Duration::from_millis(300));
    s.run_at_start = true;
    let task = s.spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while f.invocations().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "the schedule did not fire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    task.abort();
    let calls = f.invocations();
    assert!(calls.iter().all(|c| c.payload == json!({}) && c.result == Ok(json!({}))), "{calls:?}");
    assert!(calls[0].cold_start && !calls[1].cold_start, "one environment, reused");
    f.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A function that always fails, as a timed-out or crashed invocation does.
struct Failing;

#[async_trait]
impl Invoke for Failing {
    async fn invoke(&self, _payload: Value) -> Result<Value, InvokeError> {
        Err(InvokeError::Function { error_type: "Sandbox.Timedout".into(), error_message: "Task timed out".into() })
    }
}

fn source(w: &World, function: Arc<dyn Invoke>) -> SqsEventSource {
    SqsEventSource {
        sqs: w.stack.sqs.clone(),
        queue_url: w.stack.queue_url.clone(),
        queue_arn: w.d.defs[0].sqs[0].queue_arn.clone(),
        region: REGION.into(),
        batch_size: w.d.defs[0].sqs[0].batch_size,
        maximum_concurrency: 1,
        wait_secs: 1,
        report_batch_item_failures: true,
        function,
        batches: Default::default(),
    }
}

#[tokio::test]
async fn the_event_source_mapping_deletes_what_succeeded_and_parks_nothing_itself() {
    let w = World::new("mapping", &["sv-worker"], &[("GHL_REQUEST_TIMEOUT_MS", "2000")], false).await;
    let q = shared::queue::SqsQueue::new(w.stack.sqs.clone(), w.stack.queue_url.clone(), Some(w.stack.dlq_url.clone()));
    q.send(&[upsert("p1", "poll@example.com"), note("p1", "poll@example.com")]).await.unwrap();
    w.stack
        .sqs
        .send_message()
        .queue_url(&w.stack.queue_url)
        .message_body("garbage")
        .message_group_id("g")
        .message_deduplication_id("garbage-1")
        .send()
        .await
        .unwrap();

    // A failed invocation (a timeout) deletes nothing: the whole batch comes back.
    let failing = source(&w, Arc::new(Failing));
    assert!(failing.poll_once().await.unwrap() > 0);
    let returned = {
        let b = failing.batches.lock().unwrap();
        assert!(matches!(b[0].settlement, Settlement::KeepAll(_)), "{:?}", b[0].settlement);
        b[0].ids.clone()
    };
    assert_eq!(w.stack.depth(&w.stack.queue_url).await.unwrap(), 3);

    // The worker behind the mapping: applied records are deleted, the poison is parked by the
    // worker (and deleted from the queue), nothing is left.
    let mapping = source(&w, Arc::new(w.function("sv-worker").clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        mapping.poll_once().await.unwrap();
        let done = w.stack.depth(&w.stack.queue_url).await.unwrap() == 0
            && w.contacts()
                .await
                .iter()
                .any(|c| c["email"] == "poll@example.com" && c["notes"].as_array().is_some_and(|n| n.len() == 1));
        if done {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the mapping did not drain the queue");
    }
    let events: Vec<SqsEvent> = w
        .function("sv-worker")
        .invocations()
        .iter()
        .map(|i| serde_json::from_value(i.payload.clone()).unwrap())
        .collect();
    let records: Vec<_> = events.iter().flat_map(|e| e.records.iter()).collect();
    for r in &records {
        assert_eq!(r.event_source, "aws:sqs");
        assert_eq!(r.event_source_arn, w.d.defs[0].sqs[0].queue_arn);
        assert_eq!(r.aws_region, REGION);
        for attr in
            ["ApproximateReceiveCount", "SentTimestamp", "SequenceNumber", "MessageGroupId", "MessageDeduplicationId"]
        {
            assert!(r.attributes.contains_key(attr), "{attr} in {:?}", r.attributes);
        }
    }
    for id in &returned {
        let again = records.iter().find(|r| &r.message_id == id).expect("delivered again after the failed invocation");
        assert!(again.attributes["ApproximateReceiveCount"].parse::<u32>().unwrap() >= 2);
    }
    let parked = w.stack.receive(&w.stack.dlq_url, 10, 30).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].body(), Some("garbage"));
    w.stop().await;
}
