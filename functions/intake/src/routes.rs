//! The intake's routes as an ordinary axum router, served by `lambda_http` (in Lambda, and
//! locally behind the stand-in for the HTTP API).
//!
//! - `POST /webhooks/sproutvideo/{token}`: SproutVideo's video-processed webhook.
//! - `POST /v1/events`: signed events (`X-Signature-Timestamp`, `X-Signature: v1=<hex>`).
//! - `GET /v1/contacts/{email}`: the contact view (bearer read key).
//! - `GET /health`: liveness.
//!
//! Authentication and body limits are extractors (`extract`); this module maps every refusal
//! to its HTTP answer. Nothing is acknowledged (202) until SQS accepted every message of the
//! event; a queue failure answers 503 so the sender retries.

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

pub use self::extract::{ReadKey, Refusal, SignedEvent, WebhookBody};
use crate::events::{self, InputError};
use crate::view;

#[derive(Clone)]
pub struct AppState {
    pub secrets: Arc<SecretCache>,
    pub queue: Arc<dyn CommandQueue>,
    pub mapping: Arc<Mapping>,
    pub ghl: GhlClient,
    /// Read by the one-view only (a person's identity conflict).
    pub conflicts: view::ConflictReader,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/webhooks/sproutvideo/{token}", post(sproutvideo_webhook))
        .route("/v1/events", post(signed_event))
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

async fn sproutvideo_webhook(State(state): State<AppState>, WebhookBody(body): WebhookBody) -> Response {
    match events::webhook_commands(&body) {
        Ok(a) => enqueue(&state, a).await,
        Err(e) => e.into_response(),
    }
}

async fn signed_event(State(state): State<AppState>, SignedEvent(body): SignedEvent) -> Response {
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

async fn contact_view(State(state): State<AppState>, _: ReadKey, Path(email): Path<String>) -> Response {
    let email = match shared::identity::Email::parse(&email) {
        Ok(e) => e,
        Err(e) => return InputError::field("email", e.to_string()).into_response(),
    };
    match view::contact_view(&state.ghl, &state.conflicts, &email).await {
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
