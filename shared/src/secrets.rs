//! The sync's one JSON secret in Secrets Manager, cached in memory with a TTL so a rotation is
//! picked up without a redeploy, and the GHL credential drawn from it (a Private Integration
//! Token, or an OAuth location token refreshed ahead of expiry, single flight, and stored back
//! with a version check).
//!
//! Secret JSON shape:
//! ```json
//! { "webhook_token": "...", "signing_secrets": ["current", "previous"], "read_api_key": "...",
//!   "ghl_token": "pit-...",
//!   "ghl_oauth": { "access_token": "...", "refresh_token": "...", "expires_at": 1764605190,
//!                  "client_id": "...", "client_secret": "...", "token_url": "optional" },
//!   "sproutvideo_api_key": "..." }
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

use crate::ghl::{GhlError, TokenProvider};

#[derive(Debug, Error, Clone)]
pub enum SecretError {
    #[error("the secret '{0}' does not exist; create it (see README, 'The secret')")]
    NotFound(String),
    #[error("the secret has no value yet; put its JSON value (see README, 'The secret')")]
    Empty,
    #[error("the secret's JSON is invalid: {0}")]
    Invalid(String),
    #[error("could not read the secret: {0}")]
    Unavailable(String),
    #[error("another writer changed the secret first")]
    Conflict,
}

impl SecretError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Conflict)
    }
}

/// The OAuth location token and what refreshing it needs.
#[derive(Clone, Deserialize, Serialize)]
pub struct OAuthCredentials {
    #[serde(with = "secret_str")]
    pub access_token: SecretString,
    #[serde(with = "secret_str")]
    pub refresh_token: SecretString,
    /// Unix seconds.
    pub expires_at: i64,
    pub client_id: String,
    #[serde(with = "secret_str")]
    pub client_secret: SecretString,
    #[serde(default)]
    pub token_url: Option<String>,
    #[serde(default)]
    pub user_type: Option<String>,
}

/// The parsed secret. `Debug` never prints a value.
#[derive(Clone, Deserialize, Serialize)]
pub struct SyncSecrets {
    #[serde(with = "secret_str")]
    pub webhook_token: SecretString,
    /// Current first; a previous key stays valid while senders rotate.
    #[serde(with = "secret_vec")]
    pub signing_secrets: Vec<SecretString>,
    #[serde(with = "secret_str")]
    pub read_api_key: SecretString,
    #[serde(default, with = "secret_opt", skip_serializing_if = "Option::is_none")]
    pub ghl_token: Option<SecretString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ghl_oauth: Option<OAuthCredentials>,
    #[serde(default, with = "secret_opt", skip_serializing_if = "Option::is_none")]
    pub sproutvideo_api_key: Option<SecretString>,
}

impl std::fmt::Debug for SyncSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncSecrets")
            .field("signing_secrets", &self.signing_secrets.len())
            .field("ghl", &if self.ghl_oauth.is_some() { "oauth" } else { "token" })
            .finish_non_exhaustive()
    }
}

impl SyncSecrets {
    pub fn parse(raw: &str) -> Result<Self, SecretError> {
        let s: SyncSecrets = serde_json::from_str(raw).map_err(|e| {
            // serde's message names the field and position, never the value.
            SecretError::Invalid(e.to_string())
        })?;
        if s.signing_secrets.is_empty() {
            return Err(SecretError::Invalid("signing_secrets must hold at least one key".into()));
        }
        if s.ghl_token.is_none() && s.ghl_oauth.is_none() {
            return Err(SecretError::Invalid("set ghl_token (a Private Integration Token) or ghl_oauth".into()));
        }
        Ok(s)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("secrets serialise")
    }
}

mod secret_str {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &SecretString, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.expose_secret())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("a secret value is empty"));
        }
        Ok(SecretString::from(s))
    }
}

mod secret_opt {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(v.expose_secret()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()).map(SecretString::from))
    }
}

mod secret_vec {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};
    pub fn serialize<S: Serializer>(v: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for x in v {
            seq.serialize_element(x.expose_secret())?;
        }
        seq.end()
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
        Ok(Vec::<String>::deserialize(d)?.into_iter().filter(|s| !s.is_empty()).map(SecretString::from).collect())
    }
}

/// A raw secret value and its version.
#[derive(Clone)]
pub struct SecretValue {
    pub value: SecretString,
    pub version_id: Option<String>,
}

/// Where the secret lives (Secrets Manager in production and on moto in tests).
#[async_trait]
pub trait SecretSource: Send + Sync {
    async fn read(&self) -> Result<SecretValue, SecretError>;
    /// Writes a new value. `idempotency` is derived from what the writer replaces, so two
    /// writers replacing the same value collide instead of clobbering each other.
    async fn write(&self, value: &str, idempotency: &str) -> Result<(), SecretError>;
}

pub struct SecretsManagerSource {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
}

impl SecretsManagerSource {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: impl Into<String>) -> Self {
        Self { client, secret_id: secret_id.into() }
    }
}

#[async_trait]
impl SecretSource for SecretsManagerSource {
    async fn read(&self) -> Result<SecretValue, SecretError> {
        match self.client.get_secret_value().secret_id(&self.secret_id).send().await {
            Ok(out) => {
                let value = out.secret_string().ok_or(SecretError::Empty)?;
                Ok(SecretValue {
                    value: SecretString::from(value.to_string()),
                    version_id: out.version_id().map(str::to_string),
                })
            }
            Err(e) => {
                let svc = e.as_service_error();
                if svc.is_some_and(|s| s.is_resource_not_found_exception()) {
                    // A secret created empty has no version to read yet.
                    let exists = self.client.describe_secret().secret_id(&self.secret_id).send().await.is_ok();
                    Err(if exists { SecretError::Empty } else { SecretError::NotFound(self.secret_id.clone()) })
                } else {
                    Err(SecretError::Unavailable(crate::aws::error_text(&e)))
                }
            }
        }
    }

    async fn write(&self, value: &str, idempotency: &str) -> Result<(), SecretError> {
        match self
            .client
            .put_secret_value()
            .secret_id(&self.secret_id)
            .secret_string(value)
            .client_request_token(idempotency)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let conflict = e
                    .as_service_error()
                    .is_some_and(|s| s.is_resource_exists_exception() || s.is_invalid_request_exception());
                Err(if conflict { SecretError::Conflict } else { SecretError::Unavailable(crate::aws::error_text(&e)) })
            }
        }
    }
}

/// The secret, cached for `ttl`.
pub struct SecretCache {
    source: Arc<dyn SecretSource>,
    ttl: Duration,
    cached: RwLock<Option<(Arc<SyncSecrets>, Instant)>>,
}

impl SecretCache {
    pub fn new(source: Arc<dyn SecretSource>, ttl: Duration) -> Self {
        Self { source, ttl, cached: RwLock::new(None) }
    }

    /// The secret, re-read when older than the TTL.
    pub async fn get(&self) -> Result<Arc<SyncSecrets>, SecretError> {
        if let Some((s, at)) = &*self.cached.read().await
            && at.elapsed() < self.ttl
        {
            return Ok(s.clone());
        }
        self.refresh().await
    }

    /// Reads the secret now, whatever the cache holds.
    pub async fn refresh(&self) -> Result<Arc<SyncSecrets>, SecretError> {
        let raw = self.source.read().await?;
        let parsed = Arc::new(SyncSecrets::parse(raw.value.expose_secret())?);
        *self.cached.write().await = Some((parsed.clone(), Instant::now()));
        Ok(parsed)
    }

    pub fn source(&self) -> &Arc<dyn SecretSource> {
        &self.source
    }
}

/// GHL credentials from the secret: a PIT as is, or an OAuth token refreshed ahead of expiry.
pub struct SecretTokenProvider {
    cache: Arc<SecretCache>,
    http: reqwest::Client,
    default_token_url: String,
    refresh_lock: Mutex<()>,
    /// Refresh this long before expiry.
    pub refresh_ahead: Duration,
}

impl SecretTokenProvider {
    pub fn new(cache: Arc<SecretCache>, ghl_base_url: &url::Url) -> Self {
        let default_token_url = ghl_base_url.join("oauth/token").map(|u| u.to_string()).unwrap_or_default();
        Self {
            cache,
            http: reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("HTTP client"),
            default_token_url,
            refresh_lock: Mutex::new(()),
            refresh_ahead: Duration::from_secs(300),
        }
    }

    fn expiring(&self, o: &OAuthCredentials) -> bool {
        let now = chrono::Utc::now().timestamp();
        o.expires_at - now <= self.refresh_ahead.as_secs() as i64
    }

    /// Refreshes the OAuth token once for every concurrent caller; stores both new tokens before
    /// using them. Returns the access token to use.
    /// `rejected` is the access token GHL just refused (forces a refresh unless the stored
    /// token has already moved on).
    async fn refresh_oauth(&self, rejected: Option<&str>) -> Result<SecretString, GhlError> {
        let _guard = self.refresh_lock.lock().await;
        // Someone may have refreshed while we waited, here or in another process.
        let current = self.cache.refresh().await.map_err(secret_to_ghl)?;
        let o = current.ghl_oauth.clone().ok_or_else(|| secret_to_ghl(SecretError::Invalid("no ghl_oauth".into())))?;
        let still_rejected = rejected.is_some_and(|r| r == o.access_token.expose_secret());
        if !self.expiring(&o) && !still_rejected {
            return Ok(o.access_token);
        }
        let url = o.token_url.clone().unwrap_or_else(|| self.default_token_url.clone());
        let form = [
            ("client_id", o.client_id.clone()),
            ("client_secret", o.client_secret.expose_secret().to_string()),
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", o.refresh_token.expose_secret().to_string()),
            ("user_type", o.user_type.clone().unwrap_or_else(|| "Location".into())),
        ];
        let resp = self.http.post(&url).form(&form).send().await.map_err(|e| {
            GhlError::Transport(format!(
                "token refresh failed: {}",
                if e.is_timeout() { "timed out" } else { "connection failed" }
            ))
        })?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            // Another process may have spent this refresh token first and stored its result.
            if let Ok(now) = self.cache.refresh().await
                && let Some(stored) = &now.ghl_oauth
                && stored.refresh_token.expose_secret() != o.refresh_token.expose_secret()
                && !self.expiring(stored)
            {
                return Ok(stored.access_token.clone());
            }
            let msg = body["message"].as_str().or(body["error"].as_str()).unwrap_or("refresh refused").to_string();
            return Err(if status.is_server_error() {
                GhlError::Server { status: status.as_u16(), message: msg, trace_id: None }
            } else {
                // e.g. 400 "Location is not active": permanent, needs a person.
                GhlError::Unauthorized { message: format!("OAuth refresh refused: {msg}"), trace_id: None }
            });
        }
        let (Some(access), Some(refresh)) = (body["access_token"].as_str(), body["refresh_token"].as_str()) else {
            return Err(GhlError::Decode("OAuth refresh answer lacks access_token or refresh_token".into()));
        };
        let expires_in = body["expires_in"].as_i64().unwrap_or(86_399);
        let mut next = (*current).clone();
        next.ghl_oauth = Some(OAuthCredentials {
            access_token: SecretString::from(access.to_string()),
            refresh_token: SecretString::from(refresh.to_string()),
            expires_at: chrono::Utc::now().timestamp() + expires_in,
            ..o.clone()
        });
        // The write's idempotency token comes from the refresh token being replaced: a second
        // process that refreshed from the same token collides here and keeps what was stored.
        let idem =
            hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(o.refresh_token.expose_secret().as_bytes())[..16]);
        match self.cache.source().write(&next.to_json(), &format_uuid(&idem)).await {
            Ok(()) => {
                let stored = self.cache.refresh().await.map_err(secret_to_ghl)?;
                tracing::info!("refreshed the GHL OAuth token");
                Ok(stored
                    .ghl_oauth
                    .as_ref()
                    .map(|o| o.access_token.clone())
                    .unwrap_or(SecretString::from(access.to_string())))
            }
            Err(SecretError::Conflict) => {
                let stored = self.cache.refresh().await.map_err(secret_to_ghl)?;
                stored
                    .ghl_oauth
                    .as_ref()
                    .map(|o| o.access_token.clone())
                    .ok_or_else(|| secret_to_ghl(SecretError::Conflict))
            }
            Err(e) => Err(secret_to_ghl(e)),
        }
    }
}

fn format_uuid(hex32: &str) -> String {
    format!("{}-{}-{}-{}-{}", &hex32[0..8], &hex32[8..12], &hex32[12..16], &hex32[16..20], &hex32[20..32])
}

fn secret_to_ghl(e: SecretError) -> GhlError {
    if e.is_retryable() {
        GhlError::Transport(e.to_string())
    } else {
        GhlError::Unauthorized { message: e.to_string(), trace_id: None }
    }
}

#[async_trait]
impl TokenProvider for SecretTokenProvider {
    async fn token(&self) -> Result<SecretString, GhlError> {
        let s = self.cache.get().await.map_err(secret_to_ghl)?;
        if let Some(o) = &s.ghl_oauth {
            if self.expiring(o) {
                return self.refresh_oauth(None).await;
            }
            return Ok(o.access_token.clone());
        }
        s.ghl_token.clone().ok_or_else(|| secret_to_ghl(SecretError::Invalid("no GHL credential".into())))
    }

    async fn refresh_after_unauthorized(&self) -> bool {
        let token_of = |s: &SyncSecrets| {
            s.ghl_oauth
                .as_ref()
                .map(|o| o.access_token.expose_secret().to_string())
                .or_else(|| s.ghl_token.as_ref().map(|t| t.expose_secret().to_string()))
        };
        let before = self.cache.get().await.ok().as_deref().and_then(token_of);
        let Ok(after) = self.cache.refresh().await else {
            return false;
        };
        if token_of(&after) != before {
            // The secret was rotated since it was cached.
            return true;
        }
        // Same token: an OAuth token can still be refreshed, once.
        if after.ghl_oauth.is_some() {
            return self.refresh_oauth(before.as_deref()).await.is_ok();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = r#"{"webhook_token":"wt-123","signing_secrets":["sig-a","sig-b"],"read_api_key":"rk-1",
        "ghl_token":"pit-xyz","sproutvideo_api_key":"sv-key"}"#;

    #[test]
    fn parses_and_never_prints_values() {
        let s = SyncSecrets::parse(RAW).unwrap();
        assert_eq!(s.signing_secrets.len(), 2);
        let dbg = format!("{s:?}");
        for v in ["wt-123", "sig-a", "rk-1", "pit-xyz", "sv-key"] {
            assert!(!dbg.contains(v), "{dbg}");
        }
        let round = SyncSecrets::parse(&s.to_json()).unwrap();
        assert_eq!(round.read_api_key.expose_secret(), "rk-1");
    }

    #[test]
    fn bad_secrets_say_what_is_wrong_without_values() {
        let e =
            SyncSecrets::parse(r#"{"webhook_token":"wt-123","signing_secrets":[],"read_api_key":"r","ghl_token":"p"}"#)
                .unwrap_err()
                .to_string();
        assert!(e.contains("signing_secrets"), "{e}");
        let e = SyncSecrets::parse(r#"{"webhook_token":"wt-123","signing_secrets":["s"],"read_api_key":"r"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ghl_token"), "{e}");
        let e = SyncSecrets::parse(r#"{"webhook_token":"wt-123"}"#).unwrap_err().to_string();
        assert!(!e.contains("wt-123"), "{e}");
    }
}
