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
use shared::tenants::{TenantError, TenantId};

use super::{AppState, Intake};
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
    /// The tenant's record could not be read or used; a retry may help.
    #[error(transparent)]
    TenantUnavailable(#[from] TenantError),
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

/// The raw body of a signed event (`POST /v1/events`) and its tenant: at most [`MAX_BODY`]
/// bytes, declared JSON, and signed with a current or previous signing secret of the tenant
/// `X-Signature-Key-Id` names (none: the deployment's own) within the allowed clock skew.
pub struct SignedEvent(pub Arc<AppState>, pub Bytes);

impl FromRequest<Intake> for SignedEvent {
    type Rejection = Refusal;

    async fn from_request(req: Request, intake: &Intake) -> Result<Self, Refusal> {
        let (parts, body) = req.into_parts();
        let body = read_body(body).await?;
        if !is_json(&parts.headers) {
            return Err(InputError::NotJson.into());
        }
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let tenant = match header("x-signature-key-id") {
            None => TenantId::default_tenant(),
            Some(id) => TenantId::parse(id.trim()).map_err(|_| Refusal::Unauthorized)?,
        };
        let state = intake.tenant(&tenant).await?;
        let secrets = secrets(&state).await?;
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
        Ok(SignedEvent(state, body))
    }
}

/// The raw body of SproutVideo's webhook (`POST /webhooks/sproutvideo/{token}`) and its
/// tenant: at most [`MAX_BODY`] bytes, on a path whose token is the tenant's `webhook_token`
/// (see [`Intake::tenant_of_token`]).
pub struct WebhookBody(pub Arc<AppState>, pub Bytes);

impl FromRequest<Intake> for WebhookBody {
    type Rejection = Refusal;

    async fn from_request(req: Request, intake: &Intake) -> Result<Self, Refusal> {
        let (mut parts, body) = req.into_parts();
        let Path(token) =
            Path::<String>::from_request_parts(&mut parts, intake).await.map_err(|_| Refusal::Unauthorized)?;
        let body = read_body(body).await?;
        let state = intake.tenant_of_token(&token).await?;
        let secrets = secrets(&state).await?;
        if !auth::token_matches(&secrets.webhook_token, &token) {
            return Err(Refusal::Unauthorized);
        }
        Ok(WebhookBody(state, body))
    }
}

/// A body as received, at most [`MAX_BODY`] bytes (checked by the handler).
pub struct RawBody(pub Bytes);

impl FromRequest<Intake> for RawBody {
    type Rejection = Refusal;

    async fn from_request(req: Request, _state: &Intake) -> Result<Self, Refusal> {
        Ok(RawBody(read_body(req.into_body()).await?))
    }
}

/// A caller that presented a tenant's `read_api_key` as `Authorization: Bearer <key>`, and that
/// tenant (see [`Intake::tenant_of_token`]).
pub struct ReadKey(pub Arc<AppState>);

impl FromRequestParts<Intake> for ReadKey {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, intake: &Intake) -> Result<Self, Refusal> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let state = intake.tenant_of_token(presented).await?;
        let secrets = secrets(&state).await?;
        if auth::token_matches(&secrets.read_api_key, presented) {
            Ok(ReadKey(state))
        } else {
            Err(Refusal::Unauthorized)
        }
    }
}
