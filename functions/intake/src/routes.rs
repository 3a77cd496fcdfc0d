//! The intake's routes as an ordinary axum router, served by `lambda_http` (in Lambda, and
//! locally behind the stand-in for the HTTP API).
//!
//! - `POST /webhooks/sproutvideo/{token}`: SproutVideo's video-processed webhook.
//! - `POST /v1/events`: signed events (`X-Signature-Timestamp`, `X-Signature: v1=<hex>`).
//! - `GET /v1/contacts/{email}`: the contact view (bearer read key).
//! - `GET /health`: liveness.
//!
//! Nothing is acknowledged (202) until SQS accepted every message of the event; a queue failure
//! answers 503 so the sender retries.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use shared::ghl::GhlClient;
use shared::mapping::Mapping;
use shared::queue::CommandQueue;
use shared::secrets::SecretCache;

use crate::events::{self, InputError, MAX_BODY};
use crate::{auth, view};

#[derive(Clone)]
pub struct AppState {
    pub secrets: Arc<SecretCache>,
    pub queue: Arc<dyn CommandQueue>,
    pub mapping: Arc<Mapping>,
    pub ghl: GhlClient,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/webhooks/sproutvideo/{token}", post(sproutvideo_webhook))
        .route("/v1/events", post(events))
        .route("/v1/contacts/{email}", get(contact_view))
        .route("/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route")
        })
        .with_state(state)
}

fn error(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(json!({ "error": msg }))).into_response()
}

fn unauthorized() -> Response {
    // One answer whatever was wrong, so a caller learns nothing about which check failed.
    error(StatusCode::UNAUTHORIZED, "unauthorized")
}

fn input_error(e: InputError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(e)).into_response()
}

async fn read_body(body: Body) -> Result<bytes::Bytes, Response> {
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| error(StatusCode::PAYLOAD_TOO_LARGE, &format!("body is larger than {} KiB", MAX_BODY / 1024)))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next()).is_some_and(|m| {
        let m = m.trim().to_ascii_lowercase();
        m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
    })
}

/// Sends an accepted event's commands; 202 only once the queue took every one.
async fn enqueue(state: &AppState, accepted: events::AcceptedEvent) -> Response {
    match state.queue.send(&accepted.commands).await {
        Ok(()) => {
            tracing::info!(event_id = %accepted.id, kind = %accepted.kind, commands = accepted.commands.len(), "event queued");
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

fn secrets_unavailable(e: &shared::secrets::SecretError) -> Response {
    tracing::error!(error = %e, "secret unavailable");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "5")],
        axum::Json(json!({ "error": "temporarily unavailable; retry later" })),
    )
        .into_response()
}

async fn sproutvideo_webhook(State(state): State<AppState>, Path(token): Path<String>, body: Body) -> Response {
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let secrets = match state.secrets.get().await {
        Ok(s) => s,
        Err(e) => return secrets_unavailable(&e),
    };
    if !auth::token_matches(&secrets.webhook_token, &token) {
        return unauthorized();
    }
    match events::webhook_commands(&body) {
        Ok(a) => enqueue(&state, a).await,
        Err(e) => input_error(e),
    }
}

async fn events(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if !is_json(&headers) {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json");
    }
    let secrets = match state.secrets.get().await {
        Ok(s) => s,
        Err(e) => return secrets_unavailable(&e),
    };
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    if !auth::verify_signature(&secrets.signing_secrets, h("x-signature-timestamp"), h("x-signature"), &body, now) {
        return unauthorized();
    }
    match events::event_commands(&state.mapping, &body) {
        Ok(a) => enqueue(&state, a).await,
        Err(e) => {
            tracing::info!(status = e.status, field = ?e.field, "event refused");
            input_error(e)
        }
    }
}

async fn contact_view(State(state): State<AppState>, headers: HeaderMap, Path(email): Path<String>) -> Response {
    let secrets = match state.secrets.get().await {
        Ok(s) => s,
        Err(e) => return secrets_unavailable(&e),
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !auth::token_matches(&secrets.read_api_key, presented) {
        return unauthorized();
    }
    let email = match shared::identity::Email::parse(&email) {
        Ok(e) => e,
        Err(e) => {
            return input_error(InputError { status: 422, error: e.to_string(), field: Some("email".into()) });
        }
    };
    match view::contact_view(&state.ghl, &email).await {
        Ok(Some(view)) => axum::Json(view).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("GHL has no contact with email {email}")),
        Err(e) => {
            tracing::warn!(error = %e, "contact view failed");
            let status = if e.is_retryable() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::BAD_GATEWAY };
            error(status, &format!("GHL could not be read: {e}"))
        }
    }
}
