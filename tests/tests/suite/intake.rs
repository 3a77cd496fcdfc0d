//! The intake router, in process and through its local HTTP server, against moto's SQS FIFO and
//! Secrets Manager and the local GHL.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use intake::auth::sign;
use secrecy::SecretString;
use serde_json::{Value, json};
use shared::commands::SyncCommand;
use shared::queue::{CommandQueue, QueueError, SqsQueue};
use shared::secrets::{SecretCache, SecretError, SecretSource, SecretValue, SecretsManagerSource};
use sync_tests::aws::{Stack, StackNames, StackSettings, require_emulator, secret_json};
use sync_tests::local_ghl::{GhlBehaviour, LocalGhl};
use tower::ServiceExt;

const LOC: &str = "locIntakeTest0000001";
const WEBHOOK_TOKEN: &str = "hook-token-123";
const CURRENT_KEY: &str = "signing-current";
const PREVIOUS_KEY: &str = "signing-previous";
const READ_KEY: &str = "read-key-xyz";

struct Env {
    stack: Stack,
    ghl: LocalGhl,
    app: axum::Router,
    ghl_client: shared::ghl::GhlClient,
}

async fn env(tag: &str) -> Env {
    require_emulator();
    let ghl = LocalGhl::new(GhlBehaviour::default());
    let ghl_url = format!("http://{}/", ghl.spawn("127.0.0.1:0").await.unwrap());
    let secret = secret_json(WEBHOOK_TOKEN, &[CURRENT_KEY, PREVIOUS_KEY], READ_KEY, "pit-intake", None);
    let stack = Stack::create(StackNames::unique(tag), StackSettings::default(), Some(&secret)).await.unwrap();
    let config = stack.config(&ghl_url, "http://127.0.0.1:9/v1", LOC, &[]);
    let deps = shared::deps::Deps::new(config).await.unwrap();
    let app = intake::router(intake::AppState {
        secrets: deps.secrets.clone(),
        queue: Arc::new(deps.queue.clone()),
        mapping: deps.config.mapping.clone(),
        ghl: deps.ghl.clone(),
        sprout: deps.sprout.clone(),
        conflicts: intake::view::ConflictReader::new(deps.store.clone()),
        ghl_webhooks: intake::GhlWebhooks::new(
            intake::ghl_webhook::WebhookKeys::from_lookup(|_| None).expect("the default keys load"),
            deps.store.clone(),
        ),
    });
    Env { stack, ghl, app, ghl_client: deps.ghl.clone() }
}

fn event(id: &str) -> Value {
    json!({
        "id": id, "type": "lead.captured", "occurred_at": chrono::Utc::now().to_rfc3339(),
        "contact": {"email": "Lead@Example.com", "first_name": "Lea", "phone": "+1 415 555 2671"}
    })
}

fn signed(body: &[u8], key: &str, ts: i64) -> Request<Body> {
    Request::post("/v1/events")
        .header("content-type", "application/json")
        .header("x-signature-timestamp", ts.to_string())
        .header("x-signature", sign(key, ts, body))
        .body(Body::from(body.to_vec()))
        .unwrap()
}

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn a_signed_event_is_queued_with_its_group_and_dedup_ids() {
    let e = env("ok").await;
    let body = event("evt-100").to_string();
    let (status, v) = call(&e.app, signed(body.as_bytes(), CURRENT_KEY, now())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["event_id"], "evt-100");
    // A sender's retry collapses on the deduplication id.
    let (status, _) = call(&e.app, signed(body.as_bytes(), CURRENT_KEY, now())).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let msgs = e.stack.receive(&e.stack.queue_url, 10, 30).await.unwrap();
    assert_eq!(msgs.len(), 1);
    let attrs = msgs[0].attributes.as_ref().unwrap();
    use aws_sdk_sqs::types::MessageSystemAttributeName as A;
    let lead = shared::identity::Email::parse("lead@example.com").unwrap();
    assert_eq!(attrs[&A::MessageGroupId], shared::queue::MessageGroupId::for_person(&lead).as_str());
    let cmd = SyncCommand::decode(msgs[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(attrs[&A::MessageDeduplicationId], cmd.key.as_str());
    assert_eq!(cmd.source_event, "evt-100");
}

#[tokio::test]
async fn a_signature_with_the_previous_key_is_accepted_and_an_old_timestamp_refused() {
    let e = env("rotate").await;
    let body = event("evt-200").to_string();
    let (status, _) = call(&e.app, signed(body.as_bytes(), PREVIOUS_KEY, now())).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let body = event("evt-201").to_string();
    let (status, v) = call(&e.app, signed(body.as_bytes(), CURRENT_KEY, now() - 600)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v, json!({"error": "unauthorized"}));
    assert_eq!(e.stack.receive(&e.stack.queue_url, 10, 30).await.unwrap().len(), 1, "only the good one");
}

#[tokio::test]
async fn every_rejection_answers_with_a_reason_and_queues_nothing() {
    let e = env("reject").await;
    let good = event("evt-300").to_string();
    let big = vec![b' '; 300 * 1024];
    let cases: Vec<(Request<Body>, StatusCode, Option<&str>)> = vec![
        (signed(&big, CURRENT_KEY, now()), StatusCode::PAYLOAD_TOO_LARGE, None),
        (
            Request::post("/v1/events").header("content-type", "text/plain").body(Body::from(good.clone())).unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
        ),
        (signed(b"{not json", CURRENT_KEY, now()), StatusCode::BAD_REQUEST, None),
        (
            signed(json!({"id": "x", "type": "lead.captured"}).to_string().as_bytes(), CURRENT_KEY, now()),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("occurred_at"),
        ),
        (
            signed(
                {
                    let mut v = event("evt-301");
                    v["contact"]["email"] = json!("nobody");
                    v
                }
                .to_string()
                .as_bytes(),
                CURRENT_KEY,
                now(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("contact.email"),
        ),
        (signed(good.as_bytes(), "wrong-key", now()), StatusCode::UNAUTHORIZED, None),
        (
            Request::post("/v1/events")
                .header("content-type", "application/json")
                .body(Body::from(good.clone()))
                .unwrap(),
            StatusCode::UNAUTHORIZED,
            None,
        ),
        (
            Request::post("/webhooks/sproutvideo/not-the-token")
                .header("content-type", "application/json")
                .body(Body::from("{\"id\":\"abc\"}"))
                .unwrap(),
            StatusCode::UNAUTHORIZED,
            None,
        ),
        (
            Request::post(format!("/webhooks/sproutvideo/{WEBHOOK_TOKEN}"))
                .body(Body::from("{\"title\":\"no id\"}"))
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("id"),
        ),
        (Request::get("/nope").body(Body::empty()).unwrap(), StatusCode::NOT_FOUND, None),
        (Request::get("/v1/events").body(Body::empty()).unwrap(), StatusCode::METHOD_NOT_ALLOWED, None),
        (Request::get("/v1/contacts/a@example.com").body(Body::empty()).unwrap(), StatusCode::UNAUTHORIZED, None),
    ];
    for (req, want, field) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (status, v) = call(&e.app, req).await;
        assert_eq!(status, want, "{what}: {v}");
        assert!(v["error"].is_string(), "{what}: a JSON reason: {v}");
        if let Some(f) = field {
            assert_eq!(v["field"], f, "{what}: {v}");
        }
    }
    assert_eq!(e.stack.depth(&e.stack.queue_url).await.unwrap(), 0, "nothing queued");
}

#[tokio::test]
async fn the_sproutvideo_webhook_queues_only_a_video_id() {
    let e = env("hook").await;
    let video = json!({"id": "a098d2bbd33e1c328", "title": "T", "state": "deployed", "updated_at": "2026-11-29T10:00:00Z",
                       "duration": 12.5, "tags": [], "require_email": true});
    let (status, _) = call(
        &e.app,
        Request::post(format!("/webhooks/sproutvideo/{WEBHOOK_TOKEN}"))
            .header("content-type", "application/json")
            .body(Body::from(video.to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let msgs = e.stack.receive(&e.stack.queue_url, 10, 30).await.unwrap();
    let v: Value = serde_json::from_str(msgs[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(v["kind"], "video_changed");
    assert_eq!(v["video_id"], "a098d2bbd33e1c328");
    assert!(v.get("title").is_none(), "the worker re-fetches; nothing else is trusted");
}

#[tokio::test]
async fn sqs_down_answers_503_so_the_sender_retries() {
    let e = env("down").await;
    let deps_queue = SqsQueue::new(e.stack.sqs.clone(), format!("{}-missing", e.stack.queue_url), None);
    let secrets = Arc::new(SecretCache::new(
        Arc::new(SecretsManagerSource::new(e.stack.sm.clone(), e.stack.names.secret.clone())),
        Duration::from_secs(60),
    ));
    let app = intake::router(intake::AppState {
        secrets,
        queue: Arc::new(deps_queue),
        mapping: Arc::new(shared::mapping::Mapping::default_mapping()),
        ghl: e.ghl_client.clone(),
        sprout: shared::sprout::SproutClient::new(
            shared::sprout::SproutSettings::new(url::Url::parse("http://127.0.0.1:9/v1").unwrap()),
            Arc::new(shared::sprout::StaticKey(secrecy::SecretString::from("k"))),
        )
        .unwrap(),
        conflicts: intake::view::ConflictReader::new(Arc::new(shared::state::MemoryStore::new())),
        ghl_webhooks: intake::GhlWebhooks::new(
            intake::ghl_webhook::WebhookKeys::from_lookup(|_| None).expect("the default keys load"),
            Arc::new(shared::state::MemoryStore::new()),
        ),
    });
    let body = event("evt-400").to_string();
    let (status, v) = call(&app, signed(body.as_bytes(), CURRENT_KEY, now())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["event_id"], "evt-400");
}

#[tokio::test]
async fn the_contact_view_assembles_contact_tasks_notes_and_appointments() {
    let e = env("view").await;
    let c = e
        .ghl_client
        .upsert_contact(&shared::ghl::UpsertContactDto {
            location_id: LOC.into(),
            email: Some("viewed@example.com".into()),
            first_name: Some("Vi".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .contact;
    e.ghl_client
        .create_note(&c.id, &shared::ghl::NoteBody { body: Some("n1".into()), ..Default::default() })
        .await
        .unwrap();
    e.ghl_client
        .create_task(
            &c.id,
            &shared::ghl::CreateTaskParams {
                title: "t1".into(),
                body: None,
                due_date: "2026-12-01T00:00:00Z".into(),
                completed: false,
                assigned_to: None,
            },
        )
        .await
        .unwrap();
    let get = |path: String, key: &str| {
        Request::get(path).header("authorization", format!("Bearer {key}")).body(Body::empty()).unwrap()
    };
    let (status, v) = call(&e.app, get("/v1/contacts/Viewed@example.com".into(), READ_KEY)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["contact"]["id"], c.id.as_str());
    assert_eq!(v["notes"].as_array().unwrap().len(), 1);
    assert_eq!(v["tasks"].as_array().unwrap().len(), 1);
    assert!(v["appointments"].is_array());
    assert!(v["sync"]["identity_conflict"].is_null(), "no identity conflict recorded: {v}");
    let (status, v) = call(&e.app, get("/v1/contacts/ghost@example.com".into(), READ_KEY)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("ghost@example.com"));
    let (status, _) = call(&e.app, get("/v1/contacts/viewed@example.com".into(), "wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&e.app, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    drop(e.ghl);
}

#[tokio::test]
async fn the_local_http_server_serves_the_same_routes() {
    let e = env("server").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = e.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();
    let body = event("evt-500").to_string();
    let ts = now();
    let r = http
        .post(format!("http://{addr}/v1/events"))
        .header("content-type", "application/json")
        .header("x-signature-timestamp", ts.to_string())
        .header("x-signature", sign(CURRENT_KEY, ts, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = http.get(format!("http://{addr}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(e.stack.receive(&e.stack.queue_url, 10, 30).await.unwrap().len(), 1);
}

// ---- arbitrary input ------------------------------------------------------------------------

struct CountingQueue(AtomicUsize);

#[async_trait::async_trait]
impl CommandQueue for CountingQueue {
    async fn send(&self, c: &[SyncCommand]) -> Result<(), QueueError> {
        self.0.fetch_add(c.len(), Ordering::SeqCst);
        Ok(())
    }
}

struct FixedSecret(String);

#[async_trait::async_trait]
impl SecretSource for FixedSecret {
    async fn read(&self) -> Result<SecretValue, SecretError> {
        Ok(SecretValue { value: SecretString::from(self.0.clone()), version_id: None })
    }
    async fn write(&self, _: &str, _: &str) -> Result<(), SecretError> {
        Err(SecretError::Conflict)
    }
}

/// Secrets Manager cannot be reached.
struct NoSecret;

#[async_trait::async_trait]
impl SecretSource for NoSecret {
    async fn read(&self) -> Result<SecretValue, SecretError> {
        Err(SecretError::Unavailable("connection refused".into()))
    }
    async fn write(&self, _: &str, _: &str) -> Result<(), SecretError> {
        Err(SecretError::Unavailable("connection refused".into()))
    }
}

/// The router with no AWS behind it: the given secret source, a counting queue, and a GHL
/// address nothing listens on.
fn offline_app(source: Arc<dyn SecretSource>, queue: Arc<CountingQueue>) -> axum::Router {
    let ghl = shared::ghl::GhlClient::new(
        shared::ghl::GhlSettings::new(url::Url::parse("http://127.0.0.1:9/").unwrap(), LOC),
        Arc::new(shared::ghl::StaticToken(SecretString::from("t"))),
    )
    .unwrap();
    intake::router(intake::AppState {
        secrets: Arc::new(SecretCache::new(source, Duration::from_secs(600))),
        queue,
        mapping: Arc::new(shared::mapping::Mapping::default_mapping()),
        ghl,
        sprout: shared::sprout::SproutClient::new(
            shared::sprout::SproutSettings::new(url::Url::parse("http://127.0.0.1:9/v1").unwrap()),
            Arc::new(shared::sprout::StaticKey(secrecy::SecretString::from("k"))),
        )
        .unwrap(),
        conflicts: intake::view::ConflictReader::new(Arc::new(shared::state::MemoryStore::new())),
        ghl_webhooks: intake::GhlWebhooks::new(
            intake::ghl_webhook::WebhookKeys::from_lookup(|_| None).expect("the default keys load"),
            Arc::new(shared::state::MemoryStore::new()),
        ),
    })
}

#[tokio::test]
async fn an_unreadable_secret_asks_every_authenticated_caller_to_retry() {
    let queue = Arc::new(CountingQueue(AtomicUsize::new(0)));
    let app = offline_app(Arc::new(NoSecret), queue.clone());
    let body = event("evt-600").to_string();
    let requests = [
        signed(body.as_bytes(), CURRENT_KEY, now()),
        Request::post(format!("/webhooks/sproutvideo/{WEBHOOK_TOKEN}")).body(Body::from("{\"id\":\"abc\"}")).unwrap(),
        Request::get("/v1/contacts/a@example.com")
            .header("authorization", format!("Bearer {READ_KEY}"))
            .body(Body::empty())
            .unwrap(),
    ];
    for req in requests {
        let what = format!("{} {}", req.method(), req.uri());
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
        assert_eq!(resp.headers()["retry-after"], "5", "{what}");
        let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v, json!({"error": "temporarily unavailable; retry later"}), "{what}: nothing about the secret");
    }
    // Checks that need no secret still answer as usual.
    let (status, _) = call(&app, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let text = Request::post("/v1/events").header("content-type", "text/plain").body(Body::from(body)).unwrap();
    assert_eq!(call(&app, text).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(queue.0.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_refused_field_is_named_with_its_path() {
    let queue = Arc::new(CountingQueue(AtomicUsize::new(0)));
    let secret = secret_json(WEBHOOK_TOKEN, &[CURRENT_KEY], READ_KEY, "pit", None);
    let app = offline_app(Arc::new(FixedSecret(secret)), queue.clone());
    let mut with_bad_field = event("evt-700");
    with_bad_field["contact"]["custom_fields"] = json!({"plan": "gold"});
    let mut video = event("evt-701");
    video["type"] = json!("video.watched");
    video["video"] = json!({"id": "v1", "duration": 60});
    video["watch"] = json!({"percent": 180});
    let mut foreign = event("evt-702");
    foreign["task"] = json!({"external_id": "t1"});
    for (body, field) in [(with_bad_field, "contact.custom_fields.plan"), (video, "watch.percent"), (foreign, "task")] {
        let (status, v) = call(&app, signed(body.to_string().as_bytes(), CURRENT_KEY, now())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert_eq!(v["field"], field, "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    assert_eq!(queue.0.load(Ordering::SeqCst), 0);
}

mod arbitrary {
    use super::*;
    use proptest::prelude::*;

    fn app(queue: Arc<CountingQueue>) -> axum::Router {
        let secret = secret_json(WEBHOOK_TOKEN, &[CURRENT_KEY], READ_KEY, "pit", None);
        offline_app(Arc::new(FixedSecret(secret)), queue)
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(300),
            ..ProptestConfig::default()
        })]
        #[test]
        fn arbitrary_requests_never_panic_never_5xx_and_queue_nothing(
            path in prop_oneof![
                Just("/v1/events".to_string()),
                Just(format!("/webhooks/sproutvideo/{}", "x")),
                Just("/v1/contacts/a%40b.c".to_string()),
                "/[a-z/%0-9]{0,30}",
            ],
            method in prop_oneof![Just("POST"), Just("GET"), Just("PUT"), Just("DELETE")].prop_map(str::to_string),
            body in proptest::collection::vec(any::<u8>(), 0..2048),
            ctype in prop_oneof![Just("application/json".to_string()), Just("text/plain".to_string()), "[ -~]{0,30}"],
            ts in prop_oneof![Just(chrono::Utc::now().timestamp().to_string()), "[ -~]{0,12}"],
            sig in prop_oneof![Just("v1=00".to_string()), "[ -~]{0,80}"],
            auth in "[ -~]{0,40}",
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let queue = Arc::new(CountingQueue(AtomicUsize::new(0)));
            let app = app(queue.clone());
            let mut req = Request::builder().method(method.as_str()).uri(&path);
            for (k, v) in [("content-type", &ctype), ("x-signature-timestamp", &ts), ("x-signature", &sig), ("authorization", &auth)] {
                if axum::http::HeaderValue::from_str(v.as_ref()).is_ok() {
                    req = req.header(k, v.as_ref() as &str);
                }
            }
            let req = match req.body(Body::from(body)) { Ok(r) => r, Err(_) => return Ok(()) };
            let status = rt.block_on(async { app.oneshot(req).await.unwrap().status() });
            prop_assert!(!status.is_server_error(), "{} {} gave {}", method, path, status);
            prop_assert!(status != StatusCode::ACCEPTED);
            prop_assert_eq!(queue.0.load(Ordering::SeqCst), 0);
        }
    }
}

/// `docs/events.schema.json` is generated from the types the intake decodes events into; a
/// change to those types must come with the regenerated file.
#[test]
fn the_published_event_schema_is_the_one_generated_from_the_intake_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/events.schema.json");
    let generated = intake::schema::event_schema_json();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/events.schema.json differs from the schema the intake's types generate; regenerate it with\n  \
         UPDATE_SCHEMA=1 cargo test -p sync-tests --test suite intake::the_published_event_schema\nand commit the result"
    );
}

#[tokio::test]
async fn a_persons_view_answers_from_its_reserve_while_writes_saturate_the_location() {
    view_while_saturated(None).await;
}

#[tokio::test]
async fn a_tenants_view_answers_from_its_reserve_while_writes_saturate_that_tenant_and_others_are_not_held_up() {
    view_while_saturated(Some("acme")).await;
}

/// Forty writes fill the location's window of GHL; a person then asks for Ada's view and gets
/// it within a second, from the places kept for views. With `tenant`, the location is that
/// registered tenant's (found from its read key), and the deployment's own location, on the same
/// GHL, answers its own view meanwhile.
async fn view_while_saturated(tenant: Option<&str>) {
    use shared::budget::{BudgetSettings, FleetBudget, Lane};
    use shared::ghl::{GhlClient, GhlSettings, StaticToken, UpsertContactDto};
    use shared::tenants::{Registry, TenantCache, TenantId, TenantRecord};
    const OWN_LOC: &str = "locIntakeOwn00000001";
    // GHL's window, time-scaled: 20 requests per 4 s per token. A view costs five reads (the
    // lookup, then contact, tasks, notes and appointments), and five places of each window are
    // kept for views.
    let ghl = LocalGhl::new(GhlBehaviour { burst_max: 20, burst_interval_ms: 4000, ..Default::default() });
    let base = url::Url::parse(&format!("http://{}/", ghl.spawn("127.0.0.1:0").await.unwrap())).unwrap();
    ghl.insert_contact(LOC, json!({"email": "ada@example.com", "firstName": "Ada"})).await;
    ghl.insert_contact(OWN_LOC, json!({"email": "grace@example.com", "firstName": "Grace"})).await;
    let store = Arc::new(shared::state::MemoryStore::new());
    let budget =
        BudgetSettings { max: 20, interval: Duration::from_secs(4), interactive_reserve: 5, ..Default::default() };
    let client = |location: &str, token: &str, deadline: Duration, lane: Lane| {
        let mut s = GhlSettings::new(base.clone(), location);
        (s.burst_max, s.burst_interval, s.retry.deadline) = (20, Duration::from_secs(4), Some(deadline));
        let fleet = Arc::new(FleetBudget::new(store.clone(), location, budget.clone()));
        GhlClient::new(s, Arc::new(StaticToken(SecretString::from(token.to_string()))))
            .unwrap()
            .with_budget(fleet.clone(), lane)
    };
    // A worker's backlog: forty new people at once, more than two windows' worth.
    let writer = client(LOC, "pit", Duration::from_secs(60), Lane::Bulk);
    let writes: Vec<_> = (0..40)
        .map(|i| {
            let writer = writer.clone();
            tokio::spawn(async move {
                let body = UpsertContactDto {
                    email: Some(format!("backlog{i}@example.com")),
                    location_id: LOC.into(),
                    ..Default::default()
                };
                writer.upsert_contact(&body).await.map(|_| ())
            })
        })
        .collect();
    // Once the writes fill every place they may take, a person asks for Ada's view, ready to
    // wait one second: a place freed by the writes would come only after the four-second window.
    let fleet = writer.budget().unwrap().clone();
    while fleet.snapshot().await.unwrap().used() < 15 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read_key = match tenant {
        Some(t) => format!("{t}.{READ_KEY}"),
        None => READ_KEY.to_string(),
    };
    let state = |location: &str, token: &str, read_key: &str| intake::AppState {
        secrets: Arc::new(SecretCache::new(
            Arc::new(FixedSecret(secret_json(WEBHOOK_TOKEN, &[CURRENT_KEY], read_key, token, None))),
            Duration::from_secs(600),
        )),
        queue: Arc::new(CountingQueue(AtomicUsize::new(0))),
        mapping: Arc::new(shared::mapping::Mapping::default_mapping()),
        ghl: client(location, token, Duration::from_secs(1), Lane::Interactive),
        sprout: shared::sprout::SproutClient::new(
            shared::sprout::SproutSettings::new(url::Url::parse("http://127.0.0.1:9/v1").unwrap()),
            Arc::new(shared::sprout::StaticKey(secrecy::SecretString::from("k"))),
        )
        .unwrap(),
        conflicts: intake::view::ConflictReader::new(store.clone()),
        ghl_webhooks: intake::GhlWebhooks::new(
            intake::ghl_webhook::WebhookKeys::from_lookup(|_| None).expect("the default keys load"),
            store.clone(),
        ),
    };
    let app = match tenant {
        None => intake::router(state(LOC, "pit", &read_key)),
        Some(t) => {
            let registry = Registry::new(store.clone());
            registry
                .add(&TenantRecord::new(TenantId::parse(t).unwrap(), LOC, format!("sv-ghl-sync/tenants/{t}")))
                .await
                .unwrap();
            let theirs = state(LOC, "pit", &read_key);
            let own = Arc::new(state(OWN_LOC, "pit-own", READ_KEY));
            let tenants = TenantCache::new(registry, Duration::from_secs(30), own, move |r| {
                assert_eq!(r.location_id, LOC);
                Ok(theirs.clone())
            });
            intake::router_for(intake::Intake { tenants: Arc::new(tenants) })
        }
    };
    let view = |email: &str, key: &str| {
        Request::get(format!("/v1/contacts/{email}"))
            .header("authorization", format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap()
    };
    let (status, body) = call(&app, view("ada@example.com", &read_key)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["contact"]["firstName"], "Ada", "{body}");
    let mut reads = 5;
    if tenant.is_some() {
        // The deployment's own location has its own budget: its view does not wait for the tenant's.
        let (status, body) = call(&app, view("grace@example.com", READ_KEY)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["contact"]["firstName"], "Grace", "{body}");
        reads += 5;
        for wrong in ["acme.not-the-key", "nobody.read-key-xyz", "read-key-wrong"] {
            let (status, _) = call(&app, view("ada@example.com", wrong)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong}");
        }
    }
    for w in writes {
        w.await.unwrap().expect("every write is applied in later windows");
    }
    let log = ghl.requests().await;
    assert_eq!(log.iter().filter(|r| r.status == 429).count(), 0, "nobody tripped GHL's window");
    assert_eq!(log.len(), 40 + reads, "forty writes and the views' reads");
}
