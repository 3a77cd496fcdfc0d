//! The intake's routes as an ordinary axum router, served by `lambda_http` (in Lambda, and
//! locally behind the stand-in for the HTTP API).
//!
//! - `POST /webhooks/sproutvideo/{token}`: SproutVideo's video-processed webhook.
//! - `POST /v1/events`: signed events (`X-Signature-Timestamp`, `X-Signature: v1=<hex>`).
//! - `POST /webhooks/ghl`: HighLevel Marketplace-app webhooks (Ed25519 `x-ghl-signature`, or the
//!   legacy RSA `x-wh-signature`), see [`crate::ghl_webhook`].
//! - `POST /webhooks/ghl-workflow/{token}`: a HighLevel workflow's webhook action (unsigned; the
//!   path token is the secret's `ghl_workflow_token`).
//! - `GET /v1/contacts/{email}`: the contact view (bearer read key).
//! - `GET /health`: liveness.
//!
//! Authentication and body limits are extractors (`extract`); this module maps every refusal
//! to its HTTP answer. Nothing is acknowledged (202) until SQS accepted every message of the
//! event; a queue failure answers 503 so the sender retries. HighLevel retries a webhook only on
//! 429, so its routes answer 429 (never 5xx) whenever a delivery should come again.

mod extract;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use shared::ghl::GhlClient;
use shared::mapping::Mapping;
use shared::queue::CommandQueue;
use shared::secrets::SecretCache;
use shared::state::{StateError, StateStore};
use shared::tenants::{Lookup, TenantCache, TenantId};

pub use self::extract::{RawBody, ReadKey, Refusal, SignedEvent, WebhookBody};
use crate::events::{self, InputError};
use crate::ghl_webhook::{self, Delivery, Refused, WebhookKeys};
use crate::{auth, view};

/// What the HighLevel webhook routes need: the public keys, and the record of deliveries
/// already taken (the state table's `kv#ghl-webhook#<webhookId>` items, nothing else).
#[derive(Clone)]
pub struct GhlWebhooks {
    pub keys: Arc<WebhookKeys>,
    seen: Arc<dyn StateStore>,
}

impl GhlWebhooks {
    pub fn new(keys: WebhookKeys, store: Arc<dyn StateStore>) -> Self {
        Self::shared(Arc::new(keys), store)
    }

    /// One tenant's record of deliveries, with the keys every tenant shares (HighLevel signs
    /// every location's deliveries with the same key).
    pub fn shared(keys: Arc<WebhookKeys>, store: Arc<dyn StateStore>) -> Self {
        Self { keys, seen: store }
    }

    /// Records `webhook_id` as taken; `false` when it was taken before.
    async fn take(&self, webhook_id: &str) -> Result<bool, StateError> {
        self.seen.put_value_if_absent(&ghl_webhook::seen_value_name(webhook_id), "1", ghl_webhook::SEEN_TTL).await
    }
}

/// One tenant's intake: its secret, queue (filing commands under the tenant), mapping, and the
/// clients and state its one-view reads.
#[derive(Clone)]
pub struct AppState {
    pub secrets: Arc<SecretCache>,
    pub queue: Arc<dyn CommandQueue>,
    pub mapping: Arc<Mapping>,
    pub ghl: GhlClient,
    /// Read by the one-view only (a person's SproutVideo access, when the mapping has access rules).
    pub sprout: shared::sprout::SproutClient,
    /// Read by the one-view only (a person's identity conflict).
    pub conflicts: view::ConflictReader,
    pub ghl_webhooks: GhlWebhooks,
}

/// Every tenant's intake: the deployment's own, and each registered tenant's, found from what
/// a caller presents:
/// - a token (the SproutVideo and workflow webhooks' path token, the one-view's bearer key):
///   a registered tenant's tokens begin with its id and a dot (`acme.…`), any other token is
///   the deployment's own;
/// - a signed event's `X-Signature-Key-Id` (the tenant's id; none: the deployment's own);
/// - a HighLevel delivery's `locationId`.
///
/// The tenant named is then checked as always: its own token, key or signature, in constant
/// time. A token naming no registered tenant is refused like a wrong one.
#[derive(Clone)]
pub struct Intake {
    pub tenants: Arc<TenantCache<AppState>>,
}

impl Intake {
    /// An intake serving only its own tenant (tests and tools).
    pub fn single(state: AppState) -> Self {
        let registry = shared::tenants::Registry::new(state.ghl_webhooks.seen.clone());
        Self {
            tenants: Arc::new(TenantCache::new(registry, std::time::Duration::from_secs(30), Arc::new(state), |r| {
                anyhow::bail!("this intake serves only its own tenant, not '{}'", r.id)
            })),
        }
    }

    fn own(&self) -> &Arc<AppState> {
        self.tenants.default_tenant()
    }

    /// The tenant's intake; a tenant not registered is refused as unauthorized. A paused tenant's
    /// events are still taken (its worker holds them).
    pub async fn tenant(&self, id: &TenantId) -> Result<Arc<AppState>, Refusal> {
        match self.tenants.get(id).await {
            Ok(Lookup::Active(s) | Lookup::Paused(s)) => Ok(s),
            Ok(Lookup::Unknown) => Err(Refusal::Unauthorized),
            Err(e) => Err(Refusal::TenantUnavailable(e)),
        }
    }

    /// The tenant a token names (see [`Intake`]): a token whose first part names no registered
    /// tenant is checked as the deployment's own (whose tokens may hold a dot too).
    pub async fn tenant_of_token(&self, token: &str) -> Result<Arc<AppState>, Refusal> {
        match TenantId::from_token(token) {
            Some(id) => match self.tenant(&id).await {
                Err(Refusal::Unauthorized) => Ok(self.own().clone()),
                other => other,
            },
            None => Ok(self.own().clone()),
        }
    }

    /// The tenant a HighLevel location belongs to.
    async fn tenant_of_location(&self, location: &str) -> Result<Arc<AppState>, Refusal> {
        if location == self.own().ghl.location_id() {
            return Ok(self.own().clone());
        }
        match self.tenants.registry().by_location(location).await {
            Ok(Some(id)) => self.tenant(&id).await,
            Ok(None) => Err(Refusal::Unauthorized),
            Err(e) => Err(Refusal::TenantUnavailable(e)),
        }
    }
}

/// The routes of an intake serving only its own tenant.
pub fn router(state: AppState) -> Router {
    router_for(Intake::single(state))
}

/// The routes of an intake serving every tenant.
pub fn router_for(intake: Intake) -> Router {
    Router::new()
        .route("/webhooks/sproutvideo/{token}", post(sproutvideo_webhook))
        .route("/webhooks/ghl", post(ghl_webhook))
        .route("/webhooks/ghl-workflow/{token}", post(ghl_workflow_webhook))
        .route("/v1/events", post(signed_event))
        .route("/v1/contacts/{email}", get(contact_view))
        .route("/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route")
        })
        .with_state(intake)
}

fn error(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(json!({ "error": msg }))).into_response()
}

fn retry_later(msg: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], axum::Json(json!({ "error": msg }))).into_response()
}

/// 400 for a body that is not a JSON object, 422 naming the field, 413 too large, 415 not JSON.
impl IntoResponse for InputError {
    fn into_response(self) -> Response {
        let status = match &self {
            InputError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            InputError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            InputError::Malformed(_) => StatusCode::BAD_REQUEST,
            InputError::Field { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let body = match self {
            InputError::Field { field, reason } => json!({ "error": reason, "field": field }),
            other => json!({ "error": other.to_string() }),
        };
        (status, axum::Json(body)).into_response()
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            // One answer whatever was wrong, so a caller learns nothing about which check failed.
            Refusal::Unauthorized => error(StatusCode::UNAUTHORIZED, "unauthorized"),
            Refusal::SecretUnavailable(e) => {
                tracing::error!(error = %e, "secret unavailable");
                retry_later("temporarily unavailable; retry later")
            }
            Refusal::Input(e) => e.into_response(),
            Refusal::TenantUnavailable(e) => {
                tracing::error!(error = %e, "tenant unavailable");
                retry_later("temporarily unavailable; retry later")
            }
        }
    }
}

/// Sends an accepted event's commands; 202 only once the queue took every one.
async fn enqueue(state: &AppState, accepted: events::AcceptedEvent) -> Response {
    match state.queue.send(&accepted.commands).await {
        Ok(()) => {
            tracing::info!(event_id = %accepted.id, kind = accepted.kind, commands = accepted.commands.len(), "event queued");
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({ "accepted": true, "event_id": accepted.id, "commands": accepted.commands.len() })),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(event_id = %accepted.id, error = %e, "queue refused the event; asking the sender to retry");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                axum::Json(json!({ "error": "the event could not be queued; retry later", "event_id": accepted.id })),
            )
                .into_response()
        }
    }
}

async fn sproutvideo_webhook(WebhookBody(state, body): WebhookBody) -> Response {
    match events::webhook_commands(&body) {
        Ok(a) => enqueue(&state, a).await,
        Err(e) => e.into_response(),
    }
}

async fn signed_event(SignedEvent(state, body): SignedEvent) -> Response {
    match events::event_commands(&state.mapping, &body) {
        Ok(a) => enqueue(&state, a).await,
        Err(e) => {
            let field = e.field_name().map(str::to_string);
            let response = e.into_response();
            tracing::info!(status = response.status().as_u16(), field, "event refused");
            response
        }
    }
}

/// 429 with a pause: the only answer HighLevel redelivers on.
fn ghl_retry_later(msg: &str) -> Response {
    (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "5")], axum::Json(json!({ "error": msg }))).into_response()
}

fn ghl_refusal(e: Refused) -> Response {
    let (status, body) = match &e {
        Refused::BadSignature(reason) => {
            (StatusCode::UNAUTHORIZED, json!({ "error": "unauthorized", "reason": reason }))
        }
        Refused::Malformed(reason) | Refused::Stale(reason) => (StatusCode::BAD_REQUEST, json!({ "error": reason })),
    };
    tracing::warn!(status = status.as_u16(), reason = %e, "HighLevel delivery refused");
    (status, axum::Json(body)).into_response()
}

/// Queues what a HighLevel delivery comes to: a signed delivery's `webhookId` is recorded first
/// (a replay is answered "duplicate" without a second command), and forgotten again when the
/// queue refuses, so the redelivery GHL makes after a 429 is taken.
async fn take_ghl_delivery(state: &AppState, delivery: Delivery) -> Response {
    let (command, webhook_id, kind) = match delivery {
        Delivery::Ignored(reason) => {
            tracing::info!(reason, "HighLevel delivery ignored");
            return (StatusCode::OK, axum::Json(json!({ "ignored": reason }))).into_response();
        }
        Delivery::Change { command, webhook_id, kind } => (*command, webhook_id, kind),
    };
    // Queued first, recorded after: a delivery is never marked seen without its command queued
    // (an intake stopped in between would otherwise lose it). A replay queued again is dropped
    // by the queue, whose deduplication id is the webhookId and which remembers it longer than
    // a delivery's timestamp is accepted; and a contact change applied twice reads GHL twice.
    if let Err(e) = state.queue.send(std::slice::from_ref(&command)).await {
        tracing::error!(source = %command.source_event, error = %e, "queue refused the HighLevel delivery; asking for a redelivery");
        return ghl_retry_later("the delivery could not be queued; retry later");
    }
    if let Some(id) = &webhook_id {
        match state.ghl_webhooks.take(id).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(webhook_id = %id, "HighLevel delivery seen before; the queue drops its copy");
                return (StatusCode::OK, axum::Json(json!({ "duplicate": true, "webhook_id": id }))).into_response();
            }
            Err(e) => {
                tracing::warn!(webhook_id = %id, error = %e, "could not record the HighLevel delivery; it is queued");
            }
        }
    }
    tracing::info!(source = %command.source_event, kind, "HighLevel contact change queued");
    (StatusCode::ACCEPTED, axum::Json(json!({ "accepted": true, "event_id": command.source_event }))).into_response()
}

async fn ghl_webhook(State(intake): State<Intake>, headers: axum::http::HeaderMap, RawBody(body): RawBody) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let keys = intake.own().ghl_webhooks.keys.clone();
    if let Err(e) = keys.verify(header("x-ghl-signature"), header("x-wh-signature"), &body) {
        return ghl_refusal(e);
    }
    // Signed by HighLevel: the location it names is whose delivery it is. What is checked
    // without reading anything (window, event type, ids) is checked first.
    let own_location = intake.own().ghl.location_id().to_string();
    let location = ghl_webhook::delivery_location(&body).unwrap_or(own_location);
    let delivery = match ghl_webhook::signed_delivery(&body, &location, keys.max_age_secs(), chrono::Utc::now()) {
        Ok(d @ Delivery::Change { .. }) => d,
        Ok(d) => return take_ghl_delivery(intake.own(), d).await,
        Err(e) => return ghl_refusal(e),
    };
    match intake.tenant_of_location(&location).await {
        Ok(state) => take_ghl_delivery(&state, delivery).await,
        Err(Refusal::Unauthorized) => {
            tracing::info!(location, "HighLevel delivery for a location no tenant has; ignored");
            (StatusCode::OK, axum::Json(json!({ "ignored": "no tenant has this location" }))).into_response()
        }
        Err(refusal) => {
            tracing::error!(location, error = %refusal, "could not find the delivery's tenant; asking for a redelivery");
            ghl_retry_later("temporarily unavailable; retry later")
        }
    }
}

async fn ghl_workflow_webhook(
    State(intake): State<Intake>,
    Path(token): Path<String>,
    RawBody(body): RawBody,
) -> Response {
    let state = match intake.tenant_of_token(&token).await {
        Ok(s) => s,
        Err(Refusal::Unauthorized) => return error(StatusCode::UNAUTHORIZED, "unauthorized"),
        Err(e) => {
            tracing::error!(error = %e, "tenant unavailable");
            return ghl_retry_later("temporarily unavailable; retry later");
        }
    };
    let secrets = match state.secrets.get().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "secret unavailable");
            return ghl_retry_later("temporarily unavailable; retry later");
        }
    };
    let Some(expected) = &secrets.ghl_workflow_token else {
        tracing::error!("a workflow webhook was refused: the secret has no ghl_workflow_token");
        return error(StatusCode::UNAUTHORIZED, "unauthorized");
    };
    if !auth::token_matches(expected, &token) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    match ghl_webhook::workflow_delivery(&body, state.ghl.location_id(), chrono::Utc::now()) {
        Ok(d) => take_ghl_delivery(&state, d).await,
        Err(e) => ghl_refusal(e),
    }
}

async fn contact_view(ReadKey(state): ReadKey, Path(email): Path<String>) -> Response {
    let email = match shared::identity::Email::parse(&email) {
        Ok(e) => e,
        Err(e) => return InputError::field("email", e.to_string()).into_response(),
    };
    let access =
        (!state.mapping.access.is_empty()).then(|| view::AccessView { sprout: &state.sprout, mapping: &state.mapping });
    match view::contact_view(&state.ghl, &state.conflicts, access, &email).await {
        Ok(Some(view)) => axum::Json(view).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("GHL has no contact with email {email}")),
        Err(e) => {
            tracing::warn!(error = %e, "contact view failed");
            let status = match &e {
                _ if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
                view::ViewError::Ghl(_) => StatusCode::BAD_GATEWAY,
                view::ViewError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, &e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn answer(r: impl IntoResponse) -> (StatusCode, serde_json::Value, Option<String>) {
        let r = r.into_response();
        let status = r.status();
        let retry = r.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_string());
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap(), retry)
    }

    #[tokio::test]
    async fn each_refusal_has_its_status_and_a_json_reason() {
        let cases: Vec<(Refusal, u16, serde_json::Value)> = vec![
            (InputError::TooLarge.into(), 413, json!({"error": "body is larger than 256 KiB"})),
            (InputError::NotJson.into(), 415, json!({"error": "Content-Type must be application/json"})),
            (
                InputError::Malformed("body must be a JSON object".into()).into(),
                400,
                json!({"error": "body must be a JSON object"}),
            ),
            (
                InputError::field("contact.email", "is required").into(),
                422,
                json!({"error": "is required", "field": "contact.email"}),
            ),
            (Refusal::Unauthorized, 401, json!({"error": "unauthorized"})),
        ];
        for (refusal, status, body) in cases {
            let (s, b, retry) = answer(refusal).await;
            assert_eq!((s.as_u16(), b), (status, body));
            assert_eq!(retry, None);
        }
        let (s, b, retry) = answer(Refusal::SecretUnavailable(shared::secrets::SecretError::Conflict)).await;
        assert_eq!((s, retry.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("5")));
        assert_eq!(b, json!({"error": "temporarily unavailable; retry later"}), "no detail about the secret");
    }
}
