//! Where the SproutVideo client gets its API key: a fixed key, or the sync's secret through its
//! TTL cache, so a key set or rotated after the process started is picked up.

use std::sync::Arc;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use super::client::SproutError;
use crate::secrets::SecretCache;

/// Supplies the `SproutVideo-Api-Key`, and another one after a 401/403.
#[async_trait]
pub trait ApiKeySource: Send + Sync {
    /// The key to send now.
    async fn key(&self) -> Result<SecretString, SproutError>;
    /// Called at most once per call, after SproutVideo refused `rejected`: true when another key
    /// is now available, so the call is worth repeating.
    async fn renew_after_unauthorized(&self, rejected: &SecretString) -> bool;
}

/// A fixed key.
pub struct StaticKey(pub SecretString);

#[async_trait]
impl ApiKeySource for StaticKey {
    async fn key(&self) -> Result<SecretString, SproutError> {
        Ok(self.0.clone())
    }
    async fn renew_after_unauthorized(&self, _: &SecretString) -> bool {
        false
    }
}

/// The secret's `sproutvideo_api_key`, read through the secret cache.
pub struct SecretApiKey {
    cache: Arc<SecretCache>,
}

impl SecretApiKey {
    pub fn new(cache: Arc<SecretCache>) -> Self {
        Self { cache }
    }
}

fn key_error(e: crate::secrets::SecretError) -> SproutError {
    if e.is_retryable() { SproutError::KeyUnavailable(e.to_string()) } else { SproutError::NoKey(e.to_string()) }
}

#[async_trait]
impl ApiKeySource for SecretApiKey {
    async fn key(&self) -> Result<SecretString, SproutError> {
        let s = self.cache.get().await.map_err(key_error)?;
        s.sproutvideo_api_key.clone().ok_or_else(|| SproutError::NoKey("the secret has no sproutvideo_api_key".into()))
    }

    async fn renew_after_unauthorized(&self, rejected: &SecretString) -> bool {
        match self.cache.refresh().await {
            Ok(s) => s.sproutvideo_api_key.as_ref().is_some_and(|k| k.expose_secret() != rejected.expose_secret()),
            Err(_) => false,
        }
    }
}
