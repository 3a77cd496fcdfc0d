//! The sync's one JSON secret in Secrets Manager: read, cached in memory with a TTL so a
//! rotation is picked up without a redeploy, and written back (by a process allowed to) with an
//! idempotency token so two writers replacing the same value collide instead of clobbering each
//! other. What the values are for (the GHL token provider, the SproutVideo key) lives with the
//! clients that use them.
//!
//! Secret JSON shape:
//! ```json
//! { "webhook_token": "...", "signing_secrets": ["current", "previous"], "read_api_key": "...",
//!   "ghl_token": "pit-...",
//!   "ghl_oauth": { "access_token": "...", "refresh_token": "...", "expires_at": 1764605190,
//!                  "client_id": "...", "client_secret": "...", "token_url": "optional" },
//!   "sproutvideo_api_key": "..." }
//! ```
//!
//! Errors about a malformed value name the key and position, never the value.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::RwLock;
use tokio::time::Instant;

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
    /// The path token of `POST /webhooks/ghl-workflow/{token}` (a HighLevel workflow's webhook
    /// action, which GHL does not sign). Without it that route refuses every call.
    #[serde(default, with = "secret_opt", skip_serializing_if = "Option::is_none")]
    pub ghl_workflow_token: Option<SecretString>,
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
        let de = &mut serde_json::Deserializer::from_str(raw);
        let s: SyncSecrets = serde_path_to_error::deserialize(de).map_err(|e| SecretError::Invalid(describe(&e)))?;
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

/// The message of [`secret_str`] for an empty value.
const EMPTY_VALUE: &str = "is empty";

/// Describes a decoding error by key path and position only. serde's own messages quote the
/// offending value ("invalid type: string \"...\""), so they are never passed on, except the two
/// that carry no value (a missing field's name, an empty value).
fn describe(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    use serde_json::error::Category;
    let inner = e.inner();
    let at = format!("line {}, column {}", inner.line(), inner.column());
    let path = e.path().to_string();
    let key = if path == "." { "the top level".to_string() } else { format!("`{path}`") };
    match inner.classify() {
        Category::Syntax | Category::Eof => format!("not valid JSON ({at})"),
        Category::Io => "could not be read".to_string(),
        Category::Data => {
            let msg = inner.to_string();
            if let Some(field) = msg.strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
                format!("{key} lacks the field `{field}`")
            } else if msg.starts_with(EMPTY_VALUE) {
                format!("{key} {EMPTY_VALUE} ({at})")
            } else {
                format!("{key} has the wrong type or an invalid value ({at})")
            }
        }
    }
}

/// An idempotency token for a write that replaces `replaced` (a value of the secret that changes
/// on every write, such as a refresh token): the same replaced value always gives the same token.
pub fn replacement_token(replaced: &SecretString) -> String {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(replaced.expose_secret().as_bytes());
    let h = hex::encode(&digest[..16]);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
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
            return Err(serde::de::Error::custom(super::EMPTY_VALUE));
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

/// A secret held in memory, with Secrets Manager's write rule: a write that reuses an
/// idempotency token with another value is a [`SecretError::Conflict`]. For tests and local runs.
#[derive(Default)]
pub struct MemorySecret {
    inner: std::sync::Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    value: Option<String>,
    version: u64,
    tokens: std::collections::HashMap<String, String>,
    writes: u64,
}

impl MemorySecret {
    pub fn new(value: impl Into<String>) -> Self {
        let s = Self::default();
        s.set(value);
        s
    }

    /// Puts a value as an operator would (no idempotency token).
    pub fn set(&self, value: impl Into<String>) {
        let mut m = self.inner.lock().expect("memory secret");
        m.value = Some(value.into());
        m.version += 1;
    }

    /// The current value.
    pub fn value(&self) -> Option<String> {
        self.inner.lock().expect("memory secret").value.clone()
    }

    /// Writes accepted through [`SecretSource::write`].
    pub fn writes(&self) -> u64 {
        self.inner.lock().expect("memory secret").writes
    }
}

#[async_trait]
impl SecretSource for MemorySecret {
    async fn read(&self) -> Result<SecretValue, SecretError> {
        let m = self.inner.lock().expect("memory secret");
        let value = m.value.clone().ok_or(SecretError::Empty)?;
        Ok(SecretValue { value: SecretString::from(value), version_id: Some(m.version.to_string()) })
    }

    async fn write(&self, value: &str, idempotency: &str) -> Result<(), SecretError> {
        let mut m = self.inner.lock().expect("memory secret");
        match m.tokens.get(idempotency) {
            Some(v) if v == value => Ok(()),
            Some(_) => Err(SecretError::Conflict),
            None => {
                m.tokens.insert(idempotency.to_string(), value.to_string());
                m.value = Some(value.to_string());
                m.version += 1;
                m.writes += 1;
                Ok(())
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
        self.get_fresher_than(self.ttl).await
    }

    /// The secret, re-read when the cached copy is older than `max_age`.
    pub async fn get_fresher_than(&self, max_age: Duration) -> Result<Arc<SyncSecrets>, SecretError> {
        if let Some((s, at)) = &*self.cached.read().await
            && at.elapsed() < max_age
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

    /// Stores `next` as the secret's value and caches it. `idempotency` comes from what the
    /// write replaces (see [`replacement_token`]): a second writer replacing the same value with
    /// another one gets [`SecretError::Conflict`] and should read what the first one stored.
    pub async fn write(&self, next: SyncSecrets, idempotency: &str) -> Result<Arc<SyncSecrets>, SecretError> {
        self.source.write(&next.to_json(), idempotency).await?;
        let next = Arc::new(next);
        *self.cached.write().await = Some((next.clone(), Instant::now()));
        Ok(next)
    }

    pub fn source(&self) -> &Arc<dyn SecretSource> {
        &self.source
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
        assert!(e.contains("signing_secrets"), "{e}");
    }

    /// Values in the wrong place, of the wrong type or in broken JSON: the error names the key
    /// and the position, and quotes nothing.
    #[test]
    fn malformed_secrets_never_echo_a_value() {
        let cases: &[(&str, &str, &str)] = &[
            // A list given as a string.
            (
                r#"{"webhook_token":"wt-123","signing_secrets":"sig-topsecret","read_api_key":"rk"}"#,
                "sig-topsecret",
                "`signing_secrets`",
            ),
            // A number where a string belongs.
            (
                r#"{"webhook_token":98765432123,"signing_secrets":["s"],"read_api_key":"rk"}"#,
                "98765432123",
                "`webhook_token`",
            ),
            // A nested field of the wrong type.
            (
                r#"{"webhook_token":"w","signing_secrets":["s"],"read_api_key":"rk","ghl_oauth":{"access_token":"at-leak","refresh_token":"rt-leak","expires_at":"rt-in-the-wrong-place","client_id":"c","client_secret":"cs-leak"}}"#,
                "rt-in-the-wrong-place",
                "`ghl_oauth.expires_at`",
            ),
            // An element of the wrong type in a list.
            (
                r#"{"webhook_token":"w","signing_secrets":["ok",{"k":"sig-in-object"}],"read_api_key":"rk"}"#,
                "sig-in-object",
                "`signing_secrets",
            ),
            // Broken JSON right after a value.
            (r#"{"webhook_token":"wt-broken" "signing_secrets":["s"]}"#, "wt-broken", "line 1"),
            (r#"{"webhook_token":"wt-unterminated"#, "wt-unterminated", "line 1"),
            // An empty value.
            (
                r#"{"webhook_token":"","signing_secrets":["sig-x"],"read_api_key":"rk-x","ghl_token":"p"}"#,
                "sig-x",
                "`webhook_token` is empty",
            ),
        ];
        for (raw, value, names) in cases {
            let e = SyncSecrets::parse(raw).unwrap_err().to_string();
            assert!(!e.contains(value), "{e} echoes {value}");
            assert!(!e.contains("leak"), "{e}");
            assert!(e.contains(names), "{e} should name {names}");
        }
        let e = SyncSecrets::parse(
            r#"{"webhook_token":"w","signing_secrets":["s"],"read_api_key":"rk","ghl_oauth":{"access_token":"at-leak"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`ghl_oauth` lacks the field `refresh_token`") && !e.contains("leak"), "{e}");
    }

    #[test]
    fn replacement_tokens_depend_only_on_the_replaced_value() {
        let a = replacement_token(&SecretString::from("rt-1"));
        assert_eq!(a, replacement_token(&SecretString::from("rt-1")));
        assert_ne!(a, replacement_token(&SecretString::from("rt-2")));
        assert_eq!(a.len(), 36);
        assert!(!a.contains("rt-1"));
    }
}
