//! HighLevel's webhooks at the intake: a signed Marketplace delivery (Ed25519, or the legacy RSA
//! signature) or a workflow's webhook action becomes one "this contact changed" command; forged,
//! re-serialised, stale and replayed deliveries are refused with a JSON reason; and whenever a
//! delivery should come again the answer is 429, the only status GHL redelivers on.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use intake::ghl_webhook::WebhookKeys;
use secrecy::SecretString;
use serde_json::{Value, json};
use shared::commands::CommandBody;
use shared::queue::MemoryQueue;
use shared::secrets::{SecretCache, SecretError, SecretSource, SecretValue};
use shared::state::{MemoryStore, StateStore};
use sync_tests::aws::secret_json;
use sync_tests::ghl_signer::GhlSigner;
use tower::ServiceExt;

const LOC: &str = "locWebhookTest000001";
const WORKFLOW_TOKEN: &str = "workflow-token-abc";

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

struct Intake {
    app: axum::Router,
    queue: Arc<MemoryQueue>,
    store: Arc<MemoryStore>,
    signer: GhlSigner,
}

fn intake_with(signer: GhlSigner, keys: WebhookKeys) -> Intake {
    let queue = Arc::new(MemoryQueue::new());
    let store = Arc::new(MemoryStore::new());
    let mut secret: Value = serde_json::from_str(&secret_json("wt", &["sig"], "rk", "pit", None)).unwrap();
    secret["ghl_workflow_token"] = json!(WORKFLOW_TOKEN);
    let ghl = shared::ghl::GhlClient::new(
        shared::ghl::GhlSettings::new(url::Url::parse("http://127.0.0.1:9/").unwrap(), LOC),
        Arc::new(shared::ghl::StaticToken(SecretString::from("t"))),
    )
    .unwrap();
    let app = intake::router(intake::AppState {
        secrets: Arc::new(SecretCache::new(Arc::new(FixedSecret(secret.to_string())), Duration::from_secs(600))),
        queue: queue.clone(),
        mapping: Arc::new(shared::mapping::Mapping::default_mapping()),
        ghl,
        sprout: shared::sprout::SproutClient::new(
            shared::sprout::SproutSettings::new(url::Url::parse("http://127.0.0.1:9/v1").unwrap()),
            Arc::new(shared::sprout::StaticKey(secrecy::SecretString::from("k"))),
        )
        .unwrap(),
        conflicts: intake::view::ConflictReader::new(store.clone()),
        ghl_webhooks: intake::GhlWebhooks::new(keys, store.clone()),
    });
    Intake { app, queue, store, signer }
}

/// The intake trusting a fresh test key pair of each kind.
fn intake() -> Intake {
    let signer = GhlSigner::generate();
    let env = signer.intake_env();
    let keys = WebhookKeys::from_lookup(|k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())).unwrap();
    intake_with(signer, keys)
}

/// A `ContactTagUpdate` delivery as GHL sends it, with its envelope.
fn tag_update(webhook_id: &str, contact_id: &str, at: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    // Written by hand (not through serde) so the bytes have GHL's own spacing and order.
    format!(
        r#"{{"type": "ContactTagUpdate", "locationId": "{LOC}", "id": "{contact_id}", "email": "ada@example.com", "tags": ["course-a"], "timestamp": "{}", "webhookId": "{webhook_id}"}}"#,
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
    .into_bytes()
}

fn post(path: &str, headers: &[(&str, String)], body: Vec<u8>) -> Request<Body> {
    let mut r = Request::post(path).header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(Body::from(body)).unwrap()
}

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

#[tokio::test]
async fn an_ed25519_signed_tag_update_queues_one_contact_change_grouped_by_contact() {
    let i = intake();
    let body = tag_update("wh-1", "contactAda0000000001", now());
    let sig = i.signer.ed25519(&body);
    let (status, answer) = call(&i.app, post("/webhooks/ghl", &[("x-ghl-signature", sig)], body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["event_id"], "ghl:wh-1");
    let sent = i.queue.sent();
    assert_eq!(sent.len(), 1);
    let cmd = sent[0].command().unwrap();
    assert_eq!(
        cmd.body,
        CommandBody::ContactChanged { location_id: LOC.into(), contact_id: "contactAda0000000001".into() }
    );
    assert_eq!(sent[0].group_id.as_str(), cmd.group_id());
    assert!(cmd.group_id().starts_with("c-"), "one group per contact");
    assert_eq!(
        i.store.get_value("ghl-webhook#wh-1").await.unwrap().as_deref(),
        Some("1"),
        "the delivery is remembered under its webhookId"
    );
}

#[tokio::test]
async fn a_legacy_rsa_signature_is_checked_only_when_the_ed25519_header_is_absent() {
    let i = intake();
    let body = tag_update("wh-rsa", "contactAda0000000001", now());
    let rsa = i.signer.rsa(&body);
    let (status, answer) = call(&i.app, post("/webhooks/ghl", &[("x-wh-signature", rsa.clone())], body.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");

    // With a bad x-ghl-signature present, a good RSA signature does not rescue the delivery.
    let body = tag_update("wh-rsa-2", "contactAda0000000001", now());
    let rsa = i.signer.rsa(&body);
    let bad_ed = i.signer.ed25519(b"another body");
    let (status, answer) =
        call(&i.app, post("/webhooks/ghl", &[("x-ghl-signature", bad_ed), ("x-wh-signature", rsa)], body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(answer["reason"].as_str().unwrap().contains("x-ghl-signature does not verify"), "{answer}");
    assert_eq!(i.queue.sent().len(), 1);
}

#[tokio::test]
async fn an_rsa_key_given_as_pem_verifies_too() {
    let signer = GhlSigner::generate();
    let pem = signer.rsa_public_pem();
    let keys = WebhookKeys::from_lookup(|k| (k == "GHL_WEBHOOK_RSA_KEYS").then(|| pem.clone())).unwrap();
    let i = intake_with(signer, keys);
    let body = tag_update("wh-pem", "contactAda0000000001", now());
    let rsa = i.signer.rsa(&body);
    let (status, _) = call(&i.app, post("/webhooks/ghl", &[("x-wh-signature", rsa)], body)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn signatures_are_over_the_raw_bytes_so_a_reserialised_body_fails() {
    let i = intake();
    let body = tag_update("wh-raw", "contactAda0000000001", now());
    let (ed, rsa) = (i.signer.ed25519(&body), i.signer.rsa(&body));
    // Same JSON meaning, other bytes (serde drops the spaces and may reorder keys).
    let same_meaning = serde_json::to_vec(&serde_json::from_slice::<Value>(&body).unwrap()).unwrap();
    assert_ne!(same_meaning, body);
    for headers in [vec![("x-ghl-signature", ed)], vec![("x-wh-signature", rsa)]] {
        let (status, answer) = call(&i.app, post("/webhooks/ghl", &headers, same_meaning.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
        assert_eq!(answer["error"], "unauthorized");
        assert!(answer["reason"].as_str().unwrap().contains("does not verify"), "{answer}");
    }
    assert!(i.queue.sent().is_empty());
}

#[tokio::test]
async fn unsigned_forged_and_unknown_key_deliveries_get_401_with_a_json_reason() {
    let i = intake();
    let body = tag_update("wh-forged", "contactAda0000000001", now());
    let stranger = GhlSigner::generate();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![], "neither x-ghl-signature nor x-wh-signature"),
        (vec![("x-ghl-signature", "not base64 at all!".into())], "not base64"),
        (vec![("x-ghl-signature", stranger.ed25519(&body))], "does not verify"),
        (vec![("x-wh-signature", stranger.rsa(&body))], "does not verify"),
    ];
    for (headers, reason) in cases {
        let (status, answer) = call(&i.app, post("/webhooks/ghl", &headers, body.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
        assert!(answer["reason"].as_str().unwrap().contains(reason), "{answer} should say {reason}");
    }
    // The built-in (unconfirmed) key and no RSA key: a legacy-only delivery says what is missing.
    let defaults = intake_with(GhlSigner::generate(), WebhookKeys::from_lookup(|_| None).unwrap());
    let rsa = defaults.signer.rsa(&body);
    let (status, answer) = call(&defaults.app, post("/webhooks/ghl", &[("x-wh-signature", rsa)], body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(answer["reason"].as_str().unwrap().contains("no RSA key is configured"), "{answer}");
    assert!(i.queue.sent().is_empty() && defaults.queue.sent().is_empty());
}

#[tokio::test]
async fn stale_and_future_timestamps_are_refused_even_when_signed() {
    let i = intake();
    for at in [now() - chrono::Duration::minutes(6), now() + chrono::Duration::minutes(6)] {
        let body = tag_update("wh-stale", "contactAda0000000001", at);
        let sig = i.signer.ed25519(&body);
        let (status, answer) = call(&i.app, post("/webhooks/ghl", &[("x-ghl-signature", sig)], body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains("outside the 300s window"), "{answer}");
    }
    // A signed body without its envelope is refused too.
    let body = format!(r#"{{"type":"ContactTagUpdate","locationId":"{LOC}","id":"c1","webhookId":"w"}}"#).into_bytes();
    let sig = i.signer.ed25519(&body);
    let (status, answer) = call(&i.app, post("/webhooks/ghl", &[("x-ghl-signature", sig)], body)).await;
    assert_eq!((status, answer), (StatusCode::BAD_REQUEST, json!({"error": "timestamp is required"})));
    assert!(i.queue.sent().is_empty());
    assert_eq!(i.store.get_value("ghl-webhook#wh-stale").await.unwrap(), None, "a refused delivery is not remembered");
}

#[tokio::test]
async fn a_replayed_webhook_id_is_answered_duplicate_and_not_queued_again() {
    let i = intake();
    let body = tag_update("wh-replay", "contactAda0000000001", now());
    let sig = i.signer.ed25519(&body);
    let (status, _) = call(&i.app, post("/webhooks/ghl", &[("x-ghl-signature", sig.clone())], body.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, answer) = call(&i.app, post("/webhooks/ghl", &[("x-ghl-signature", sig)], body)).await;
    assert_eq!((status, answer), (StatusCode::OK, json!({"duplicate": true, "webhook_id": "wh-replay"})));
    // The same id in a new body (GHL doubling an event) is the same delivery.
    let again = tag_update("wh-replay", "contactAda0000000001", now() + chrono::Duration::seconds(1));
    let sig = i.signer.ed25519(&again);
    let (status, answer) = call(&i.app, post("/webhooks/ghl", &[("x-ghl-signature", sig)], again)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["duplicate"], true);
    assert_eq!(i.queue.sent().len(), 1, "one command for one webhookId");
}

#[tokio::test]
async fn a_queue_failure_answers_429_and_the_redelivery_is_taken() {
    let i = intake();
    let body = tag_update("wh-429", "contactAda0000000001", now());
    let sig = i.signer.ed25519(&body);
    i.queue.set_unavailable(true);
    let resp =
        i.app.clone().oneshot(post("/webhooks/ghl", &[("x-ghl-signature", sig.clone())], body.clone())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "GHL redelivers only on 429");
    assert_eq!(resp.headers().get("retry-after").unwrap(), "5");
    i.queue.set_unavailable(false);
    let (status, _) = call(&i.app, post("/webhooks/ghl", &[("x-ghl-signature", sig)], body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "the failed delivery was forgotten, so its redelivery counts");
    assert_eq!(i.queue.sent().len(), 1);
}

#[tokio::test]
async fn other_event_types_and_other_locations_are_acknowledged_and_ignored() {
    let i = intake();
    let at = now().to_rfc3339();
    for body in [
        json!({"type": "NoteCreate", "locationId": LOC, "id": "n1", "contactId": "c1", "timestamp": at, "webhookId": "w-note"}),
        json!({"type": "ContactUpdate", "locationId": "another", "id": "c1", "timestamp": at, "webhookId": "w-loc"}),
    ] {
        let body = body.to_string().into_bytes();
        let sig = i.signer.ed25519(&body);
        let (status, answer) = call(&i.app, post("/webhooks/ghl", &[("x-ghl-signature", sig)], body)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(answer["ignored"].is_string(), "{answer}");
    }
    assert!(i.queue.sent().is_empty());
}

#[tokio::test]
async fn a_workflow_webhook_needs_the_path_token_and_queues_the_contact() {
    let i = intake();
    let body = json!({"contact_id": "contactAda0000000001", "email": "ada@example.com", "location": {"id": LOC}});
    let body = body.to_string().into_bytes();
    let (status, answer) = call(&i.app, post("/webhooks/ghl-workflow/wrong-token", &[], body.clone())).await;
    assert_eq!((status, answer), (StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"})));
    let (status, answer) =
        call(&i.app, post(&format!("/webhooks/ghl-workflow/{WORKFLOW_TOKEN}"), &[], body.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    // GHL retrying the same body is the same command (SQS drops it by its deduplication id).
    let (status, _) = call(&i.app, post(&format!("/webhooks/ghl-workflow/{WORKFLOW_TOKEN}"), &[], body)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let sent = i.queue.commands();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        sent[0].body,
        CommandBody::ContactChanged { location_id: LOC.into(), contact_id: "contactAda0000000001".into() }
    );
    let (status, answer) =
        call(&i.app, post(&format!("/webhooks/ghl-workflow/{WORKFLOW_TOKEN}"), &[], b"{}".to_vec())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer["error"].as_str().unwrap().contains("contact_id is required"), "{answer}");
}
