//! Dependency wiring shared by the three functions: AWS clients, the cached secret, and the GHL
//! and SproutVideo clients (both reading their credentials through the cached secret), all from
//! one [`Config`].

use std::sync::Arc;

use crate::budget::{FleetBudget, Lane};
use crate::config::Config;
use crate::ghl::{GhlClient, SecretTokenProvider, TokenRefresh};
use crate::queue::SqsQueue;
use crate::secrets::{SecretCache, SecretsManagerSource};
use crate::sprout::{SecretApiKey, SproutClient};
use crate::state::DynamoStore;
use crate::tenants::{Registry, TenantQueue};

pub struct Deps {
    pub config: Config,
    pub aws: aws_config::SdkConfig,
    pub secrets: Arc<SecretCache>,
    /// Draws from the location's shared budget in the bulk lane; a process serving people
    /// (the intake's one-view) takes [`Deps::budget`] in the interactive lane instead.
    pub ghl: GhlClient,
    /// The location's GHL budget, shared through the state table by the whole fleet.
    pub budget: Arc<FleetBudget>,
    /// Reads `sproutvideo_api_key` on every call; a missing key is an error of the call.
    pub sprout: SproutClient,
    pub queue: SqsQueue,
    pub store: Arc<DynamoStore>,
}

impl Deps {
    /// Builds every client for a process that never refreshes the GHL OAuth token (it may not
    /// write the secret). Same as [`Deps::with_token_refresh`] with [`TokenRefresh::Never`].
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        Self::with_token_refresh(config, TokenRefresh::Never).await
    }

    /// Builds every client; reads no secret yet (the first call that needs one does). `refresh`
    /// says whether this process may refresh the GHL OAuth token and store the new one: only a
    /// process allowed to write the secret may.
    pub async fn with_token_refresh(config: Config, refresh: TokenRefresh) -> anyhow::Result<Self> {
        let aws = crate::aws::load_config().await;
        Self::build(aws, config, refresh)
    }

    /// Builds every client of one tenant (`config.tenant`) over AWS clients' configuration
    /// `aws`: its secret, its state under its key prefix, its GHL budget, its queue's groups.
    pub fn build(aws: aws_config::SdkConfig, config: Config, refresh: TokenRefresh) -> anyhow::Result<Self> {
        let sm = aws_sdk_secretsmanager::Client::new(&aws);
        let secrets = Arc::new(SecretCache::new(
            Arc::new(SecretsManagerSource::new(sm, config.secret_id.clone())),
            config.secret_ttl,
        ));
        let tokens = Arc::new(SecretTokenProvider::new(secrets.clone(), &config.ghl_base_url, refresh));
        let store = Arc::new(
            DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), config.table.clone())
                .with_prefix(config.tenant.key_prefix()),
        );
        let budget =
            Arc::new(FleetBudget::new(store.clone(), config.ghl_location_id.clone(), config.budget_settings()));
        let ghl = GhlClient::new(config.ghl_settings(), tokens)?.with_budget(budget.clone(), Lane::Bulk);
        let sprout = SproutClient::new(config.sprout_settings(), Arc::new(SecretApiKey::new(secrets.clone())))?;
        let queue = SqsQueue::new(aws_sdk_sqs::Client::new(&aws), config.queue_url.clone(), config.dlq_url.clone());
        Ok(Self { config, aws, secrets, ghl, budget, sprout, queue, store })
    }

    /// The tenant's queue: every command sent through it is filed under the tenant.
    pub fn command_queue(&self) -> Arc<dyn crate::queue::CommandQueue> {
        Arc::new(TenantQueue { tenant: self.config.tenant.clone(), inner: Arc::new(self.queue.clone()) })
    }

    /// The tenant registry, in the deployment's own (unprefixed) part of the state table.
    pub fn registry(&self) -> Registry {
        Registry::new(Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&self.aws), self.config.table.clone())))
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
