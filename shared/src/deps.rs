//! Dependency wiring shared by the three functions: AWS clients, the cached secret, and the GHL
//! and SproutVideo clients, all from one [`Config`].

use std::sync::Arc;

use secrecy::SecretString;

use crate::config::Config;
use crate::ghl::GhlClient;
use crate::queue::SqsQueue;
use crate::secrets::{SecretCache, SecretError, SecretTokenProvider, SecretsManagerSource};
use crate::sprout::SproutClient;
use crate::state::DynamoStore;

pub struct Deps {
    pub config: Config,
    pub aws: aws_config::SdkConfig,
    pub secrets: Arc<SecretCache>,
    pub ghl: GhlClient,
    pub queue: SqsQueue,
    pub store: Arc<DynamoStore>,
}

impl Deps {
    /// Builds every client; reads no secret yet (the first call that needs one does).
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        let aws = crate::aws::load_config().await;
        let sm = aws_sdk_secretsmanager::Client::new(&aws);
        let secrets = Arc::new(SecretCache::new(
            Arc::new(SecretsManagerSource::new(sm, config.secret_id.clone())),
            config.secret_ttl,
        ));
        let tokens = Arc::new(SecretTokenProvider::new(secrets.clone(), &config.ghl_base_url));
        let ghl = GhlClient::new(config.ghl_settings(), tokens)?;
        let queue = SqsQueue::new(aws_sdk_sqs::Client::new(&aws), config.queue_url.clone(), config.dlq_url.clone());
        let store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), config.table.clone()));
        Ok(Self { config, aws, secrets, ghl, queue, store })
    }

    /// A SproutVideo client keyed from the secret, or `None` when the secret has no key.
    pub async fn sprout(&self) -> Result<Option<SproutClient>, SecretError> {
        let s = self.secrets.get().await?;
        Ok(match &s.sproutvideo_api_key {
            Some(k) => Some(
                SproutClient::new(
                    self.config.sprout_settings(),
                    SecretString::from(secrecy::ExposeSecret::expose_secret(k).to_string()),
                )
                .map_err(|e| SecretError::Unavailable(e.to_string()))?,
            ),
            None => None,
        })
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
