//! Extractors that read and authenticate what a handler needs, or refuse the request: a signed
//! event's body, a SproutVideo webhook's body, and the bearer read key.
//!
//! Every authentication failure is the same [`Refusal::Unauthorized`]; the comparisons
//! themselves are constant time (`crate::auth`).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use shared::secrets::{SecretError, SyncSecrets};

use super::AppState;
use crate::auth;
use crate::events::{InputError, MAX_BODY};

/// Why a request was refused before its handler ran.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// A token, key, signature or timestamp did not check out (whichever it was).
    #[error("unauthorized")]
    Unauthorized,
    /// The secret could not be read, so the caller could not be checked; a retry may help.
    #[error(transparent)]
    SecretUnavailable(#[from] SecretError),
    /// The body cannot be taken.
    #[error(transparent)]
    Input(#[from] InputError),
}

async fn secrets(state: &AppState) -> Result<Arc<SyncSecrets>, Refusal> {
    Ok(state.secrets.get().await?)
}

/// Reads the whole body, at most [`MAX_BODY`] bytes.
async fn read_body(body: Body) -> Result<Bytes, InputError> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.downcast_ref::<http_body_util::LengthLimitError>().is_some());
        if too_large { InputError::TooLarge } else { InputError::Malformed("the body could not be read".into()) }
    })
}

/// `application/json` or any `application/*+json`, parameters aside.
fn is_json(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next()).is_some_and(|m| {
        let m = m.trim().to_ascii_lowercase();
        m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
    })
}

/// The raw body of a signed event (`POST /v1/events`): at most [`MAX_BODY`] bytes, declared
/// JSON, and signed with a current or previous signing secret within the allowed clock skew.
pub struct SignedEvent(pub Bytes);

impl FromRequest<AppState> for SignedEvent {
    type Rejection = Refusal;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Refusal> {
        let (parts, body) = req.into_parts();
        let body = read_body(body).await?;
        if !is_json(&parts.headers) {
            return Err(InputError::NotJson.into());
        }
        let secrets = secrets(state).await?;
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let now = chrono::Utc::now().timestamp();
        let signed = auth::verify_signature(
            &secrets.signing_secrets,
            header("x-signature-timestamp"),
            header("x-signature"),
            &body,
            now,
        );
        if !signed {
            return Err(Refusal::Unauthorized);
        }
        Ok(SignedEvent(body))
    }
}

/// The raw body of SproutVideo's webhook (`POST /webhooks/sproutvideo/{token}`): at most
/// [`MAX_BODY`] bytes, on a path whose token is the secret's `webhook_token`.
pub struct WebhookBody(pub Bytes);

impl FromRequest<AppState> for WebhookBody {
    type Rejection = Refusal;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Refusal> {
        let (mut parts, body) = req.into_parts();
        let Path(token) =
            Path::<String>::from_request_parts(&mut parts, state).await.map_err(|_| Refusal::Unauthorized)?;
        let body = read_body(body).await?;
        let secrets = secrets(state).await?;
        if !auth::token_matches(&secrets.webhook_token, &token) {
            return Err(Refusal::Unauthorized);
        }
        Ok(WebhookBody(body))
    }
}

/// A body as received, at most [`MAX_BODY`] bytes (checked by the handler).
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = Refusal;

    async fn from_request(req: Request, _state: &AppState) -> Result<Self, Refusal> {
        Ok(RawBody(read_body(req.into_body()).await?))
    }
}

/// A caller that presented the secret's `read_api_key` as `Authorization: Bearer <key>`.
pub struct ReadKey;

impl FromRequestParts<AppState> for ReadKey {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refusal> {
        let secrets = secrets(state).await?;
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if auth::token_matches(&secrets.read_api_key, presented) { Ok(ReadKey) } else { Err(Refusal::Unauthorized) }
    }
}
