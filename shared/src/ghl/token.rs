//! Where the GHL client gets its bearer token: a fixed token, or the sync's secret, which holds a
//! Private Integration Token or an OAuth location token.
//!
//! OAuth tokens rotate: every refresh spends the refresh token and returns a new pair, which
//! must be stored before anything else uses it. So only a process allowed to write the secret
//! refreshes ([`TokenRefresh::Allowed`], the worker); the others ([`TokenRefresh::Never`]) use
//! the stored token while it is valid, then re-read the secret and wait for the refresher.
//!
//! A refresher refreshes ahead of expiry and after a 401, once for all its concurrent callers,
//! and stores both tokens with an idempotency token derived from the refresh token it replaces.
//! When GHL refuses the refresh token (400/401), another process has most likely spent it first:
//! the refresher re-reads the secret until that process's tokens appear, and fails only when
//! they do not.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

use super::error::GhlError;
use super::models::ErrorBody;
use crate::secrets::{OAuthCredentials, SecretCache, SecretError, SyncSecrets, replacement_token};

/// Supplies the bearer token, and a fresh one after a 401.
#[async_trait]
pub trait TokenProvider: Send + Sync {
    /// The token to send now.
    async fn token(&self) -> Result<SecretString, GhlError>;
    /// Called at most once per call, after GHL answered 401 to `rejected`. `Ok(true)`: another
    /// token is now available and the call is repeated; `Ok(false)`: there is none and the 401
    /// stands; an error ends the call with that error.
    async fn renew_after_unauthorized(&self, rejected: &SecretString) -> Result<bool, GhlError>;
}

/// A fixed token (a Private Integration Token from configuration).
pub struct StaticToken(pub SecretString);

#[async_trait]
impl TokenProvider for StaticToken {
    async fn token(&self) -> Result<SecretString, GhlError> {
        Ok(self.0.clone())
    }
    async fn renew_after_unauthorized(&self, _: &SecretString) -> Result<bool, GhlError> {
        Ok(false)
    }
}

/// Whether a process may refresh the OAuth token, and so write the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefresh {
    /// Refreshes ahead of expiry and after a 401, and stores the new tokens.
    Allowed,
    /// Never calls the token endpoint: re-reads the secret and waits for a process that may.
    Never,
}

/// GHL credentials from the secret.
pub struct SecretTokenProvider {
    cache: Arc<SecretCache>,
    refresh: TokenRefresh,
    http: reqwest::Client,
    default_token_url: String,
    refresh_lock: Mutex<()>,
    /// Tokens GHL issued that could not be stored yet, with the write's idempotency token.
    /// They are used, and written again before every use, until the write succeeds.
    unsaved: Mutex<Option<(SyncSecrets, String)>>,
    /// A refresher refreshes this long before expiry.
    pub refresh_ahead: Duration,
    /// How long a refresher whose refresh token GHL refused waits for another process's new
    /// tokens to appear in the secret.
    pub wait_for_other_refresh: Duration,
    /// How often a process re-reads the secret while it waits for new tokens.
    pub reread_every: Duration,
}

impl SecretTokenProvider {
    pub fn new(cache: Arc<SecretCache>, ghl_base_url: &Url, refresh: TokenRefresh) -> Self {
        let default_token_url = ghl_base_url.join("oauth/token").map(|u| u.to_string()).unwrap_or_default();
        Self {
            cache,
            refresh,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .connect_timeout(Duration::from_secs(5))
                .build()
                .expect("HTTP client"),
            default_token_url,
            refresh_lock: Mutex::new(()),
            unsaved: Mutex::new(None),
            refresh_ahead: Duration::from_secs(300),
            wait_for_other_refresh: Duration::from_secs(10),
            reread_every: Duration::from_secs(1),
        }
    }

    pub fn may_refresh(&self) -> bool {
        self.refresh == TokenRefresh::Allowed
    }

    /// The stored access token when it can be used as is: not the one GHL just refused, and
    /// (for a refresher) not due for a refresh.
    fn usable(&self, s: &SyncSecrets, rejected: Option<&SecretString>) -> Option<SecretString> {
        let o = s.ghl_oauth.as_ref()?;
        let refused = rejected.is_some_and(|r| r.expose_secret() == o.access_token.expose_secret());
        (!refused && seconds_left(o) > self.refresh_ahead.as_secs() as i64).then(|| o.access_token.clone())
    }

    /// Refreshes the OAuth token once for every concurrent caller of this process, stores both
    /// new tokens, and returns the access token to use. `rejected` is the token GHL just refused.
    async fn refresh_oauth(&self, rejected: Option<&SecretString>) -> Result<SecretString, GhlError> {
        let _guard = self.refresh_lock.lock().await;
        // A caller that held the lock before may have refreshed already.
        if let Some(t) = self.usable(&*self.cache.get().await.map_err(secret_error)?, rejected) {
            return Ok(t);
        }
        // So may another process.
        let current = self.cache.refresh().await.map_err(secret_error)?;
        if let Some(t) = self.usable(&current, rejected) {
            return Ok(t);
        }
        let o = current.ghl_oauth.clone().ok_or_else(|| secret_error(SecretError::Invalid("no ghl_oauth".into())))?;
        match self.request_tokens(&o).await {
            Ok(tokens) => self.store(&current, &o, tokens).await,
            Err(Refusal::Refused(message)) => self.await_other_refresh(&o.refresh_token, message).await,
            Err(Refusal::Failed(e)) => Err(e),
        }
    }

    /// `POST /oauth/token` with the stored refresh token.
    async fn request_tokens(&self, o: &OAuthCredentials) -> Result<TokenResponse, Refusal> {
        let url = o.token_url.clone().unwrap_or_else(|| self.default_token_url.clone());
        let form = [
            ("client_id", o.client_id.as_str()),
            ("client_secret", o.client_secret.expose_secret()),
            ("grant_type", "refresh_token"),
            ("refresh_token", o.refresh_token.expose_secret()),
            ("user_type", o.user_type.as_deref().unwrap_or("Location")),
        ];
        let resp = self.http.post(&url).form(&form).send().await.map_err(|e| {
            let what = if e.is_timeout() { "timed out" } else { "connection failed" };
            Refusal::Failed(GhlError::Transport(format!("token refresh {what}")))
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|_| Refusal::Failed(GhlError::Transport("the token endpoint's answer was cut off".into())))?;
        if status.is_success() {
            // A refresh token was spent for this answer: when it cannot be read, the new tokens are lost.
            return serde_json::from_slice(&bytes).map_err(|_| {
                tracing::error!("GHL's token endpoint answered a refresh with an unreadable body");
                Refusal::Failed(GhlError::Decode("OAuth refresh answer lacks access_token or refresh_token".into()))
            });
        }
        let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
        let message = body
            .message
            .map(|m| m.into_vec().join("; "))
            .or(body.error)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("refused").to_string());
        Err(match status.as_u16() {
            400 | 401 => Refusal::Refused(message),
            s if s == 429 || s >= 500 => {
                Refusal::Failed(GhlError::Server { status: s, message, trace_id: body.trace_id })
            }
            s => Refusal::Failed(GhlError::Unexpected { status: s, message, trace_id: body.trace_id }),
        })
    }

    /// Stores the new tokens; returns the access token to use.
    async fn store(
        &self,
        current: &SyncSecrets,
        o: &OAuthCredentials,
        tokens: TokenResponse,
    ) -> Result<SecretString, GhlError> {
        let mut next = current.clone();
        next.ghl_oauth = Some(OAuthCredentials {
            access_token: tokens.access_token.clone(),
            refresh_token: tokens.refresh_token,
            expires_at: chrono::Utc::now().timestamp() + tokens.expires_in.unwrap_or(86_399),
            ..o.clone()
        });
        // Derived from the refresh token being replaced: a second process that refreshed from
        // the same token collides here and keeps what the first stored.
        let idem = replacement_token(&o.refresh_token);
        let mut pause = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.cache.write(next.clone(), &idem).await {
                Ok(_) => {
                    tracing::info!("refreshed the GHL OAuth token and stored it");
                    return Ok(tokens.access_token);
                }
                Err(SecretError::Conflict) => {
                    let stored = self.cache.refresh().await.map_err(secret_error)?;
                    return stored
                        .ghl_oauth
                        .as_ref()
                        .map(|o| o.access_token.clone())
                        .ok_or_else(|| secret_error(SecretError::Conflict));
                }
                Err(e) if e.is_retryable() && attempt < 3 => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "could not store the refreshed GHL tokens; using them and storing them again before every call"
                    );
                    *self.unsaved.lock().await = Some((next, idem));
                    return Ok(tokens.access_token);
                }
            }
        }
    }

    /// GHL refused the refresh token: most likely another process spent it and is storing the
    /// new pair. Re-reads the secret until a different refresh token appears.
    async fn await_other_refresh(&self, spent: &SecretString, message: String) -> Result<SecretString, GhlError> {
        let until = Instant::now() + self.wait_for_other_refresh.min(crate::retry::MAX_SERVER_WAIT);
        loop {
            let stored = self.cache.refresh().await.map_err(secret_error)?;
            if let Some(o) = &stored.ghl_oauth
                && o.refresh_token.expose_secret() != spent.expose_secret()
                && seconds_left(o) > 0
            {
                tracing::info!("another process refreshed the GHL OAuth token first; using its token");
                return Ok(o.access_token.clone());
            }
            if Instant::now() + self.reread_every > until {
                break;
            }
            tokio::time::sleep(self.reread_every).await;
        }
        // e.g. 400 "Location is not active": needs a person.
        Err(GhlError::Unauthorized { message: format!("OAuth refresh refused: {message}"), trace_id: None })
    }

    /// Writes tokens that could not be stored before. Returns their access token while they are
    /// still unsaved.
    async fn flush_unsaved(&self) -> Option<SecretString> {
        let mut unsaved = self.unsaved.lock().await;
        let (next, idem) = unsaved.as_ref()?;
        match self.cache.write(next.clone(), idem).await {
            Ok(_) | Err(SecretError::Conflict) => {
                *unsaved = None;
                None
            }
            Err(_) => next.ghl_oauth.as_ref().map(|o| o.access_token.clone()),
        }
    }
}

/// What the token endpoint said to a refresh.
enum Refusal {
    /// 400/401: the refresh token is spent, revoked, or the location is not active.
    Refused(String),
    /// Anything else that ends the refresh.
    Failed(GhlError),
}

/// The token endpoint's answer to a refresh.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    refresh_token: SecretString,
    #[serde(default)]
    expires_in: Option<i64>,
}

fn seconds_left(o: &OAuthCredentials) -> i64 {
    o.expires_at - chrono::Utc::now().timestamp()
}

fn secret_error(e: SecretError) -> GhlError {
    if e.is_retryable() {
        GhlError::CredentialUnavailable(e.to_string())
    } else {
        GhlError::Unauthorized { message: e.to_string(), trace_id: None }
    }
}

fn access_token_of(s: &SyncSecrets) -> Option<&SecretString> {
    s.ghl_oauth.as_ref().map(|o| &o.access_token).or(s.ghl_token.as_ref())
}

#[async_trait]
impl TokenProvider for SecretTokenProvider {
    async fn token(&self) -> Result<SecretString, GhlError> {
        if let Some(t) = self.flush_unsaved().await {
            return Ok(t);
        }
        let s = self.cache.get().await.map_err(secret_error)?;
        let Some(o) = &s.ghl_oauth else {
            return s.ghl_token.clone().ok_or_else(|| secret_error(SecretError::Invalid("no GHL credential".into())));
        };
        let left = seconds_left(o);
        match self.refresh {
            TokenRefresh::Allowed if left <= self.refresh_ahead.as_secs() as i64 => {
                match self.refresh_oauth(None).await {
                    Ok(t) => Ok(t),
                    Err(e) if left > 0 => {
                        tracing::warn!(error = %e, "could not refresh the GHL OAuth token ahead of expiry; using it until it expires");
                        Ok(o.access_token.clone())
                    }
                    Err(e) => Err(e),
                }
            }
            TokenRefresh::Never if left <= 0 => {
                // A refresher may have stored a new token since this copy was read.
                let s = self.cache.get_fresher_than(self.reread_every).await.map_err(secret_error)?;
                match &s.ghl_oauth {
                    Some(o) if seconds_left(o) > 0 => Ok(o.access_token.clone()),
                    _ => Err(GhlError::CredentialUnavailable(
                        "the GHL OAuth token has expired; this process may not refresh it and waits for the worker \
                         to store a new one"
                            .into(),
                    )),
                }
            }
            _ => Ok(o.access_token.clone()),
        }
    }

    async fn renew_after_unauthorized(&self, rejected: &SecretString) -> Result<bool, GhlError> {
        if let Some(t) = self.flush_unsaved().await {
            return Ok(t.expose_secret() != rejected.expose_secret());
        }
        let after = self.cache.refresh().await.map_err(secret_error)?;
        if access_token_of(&after).is_some_and(|t| t.expose_secret() != rejected.expose_secret()) {
            // The secret was rotated since it was cached.
            return Ok(true);
        }
        match (&after.ghl_oauth, self.refresh) {
            (Some(_), TokenRefresh::Allowed) => self.refresh_oauth(Some(rejected)).await.map(|_| true),
            (Some(_), TokenRefresh::Never) => Err(GhlError::CredentialUnavailable(
                "GHL refused the stored OAuth token; this process may not refresh it and waits for the worker to \
                 store a new one"
                    .into(),
            )),
            (None, _) => Ok(false),
        }
    }
}
