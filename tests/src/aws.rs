//! The AWS side of local runs and tests, on moto: the FIFO queue and its FIFO dead-letter queue
//! (redrive policy), the state table and the secret, with the settings of `template.yaml`.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName};
use shared::config::Config;

use crate::lambda_local::template::ResourceValues;

/// The account moto answers for.
pub const ACCOUNT_ID: &str = "123456789012";

/// Names of one stack's resources.
#[derive(Debug, Clone)]
pub struct StackNames {
    pub queue: String,
    pub dlq: String,
    pub table: String,
    pub secret: String,
}

impl StackNames {
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            queue: format!("{prefix}-sync.fifo"),
            dlq: format!("{prefix}-dlq.fifo"),
            table: format!("{prefix}-state"),
            secret: format!("{prefix}/sync"),
        }
    }

    /// A prefix no other test in this run uses (moto is one shared server).
    pub fn unique(tag: &str) -> Self {
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        Self::with_prefix(&format!("t-{tag}-{}-{}", std::process::id(), n % 1_000_000_000))
    }
}

pub struct Stack {
    pub names: StackNames,
    pub sdk: aws_config::SdkConfig,
    pub sqs: aws_sdk_sqs::Client,
    pub ddb: aws_sdk_dynamodb::Client,
    pub sm: aws_sdk_secretsmanager::Client,
    pub queue_url: String,
    pub dlq_url: String,
}

/// Settings that differ between the deployed stack and a test stack.
#[derive(Debug, Clone)]
pub struct StackSettings {
    pub visibility_timeout_secs: u32,
    pub max_receive_count: u32,
}

impl Default for StackSettings {
    fn default() -> Self {
        // As in template.yaml.
        Self { visibility_timeout_secs: 360, max_receive_count: 8 }
    }
}

/// Panics with guidance when no emulator is configured.
pub fn require_emulator() {
    assert!(
        std::env::var("AWS_ENDPOINT_URL").is_ok(),
        "this test needs the local AWS emulator: run it through `make test` (scripts/with-moto.sh sets AWS_ENDPOINT_URL)"
    );
}

impl Stack {
    /// Creates (or finds) the queue, DLQ, table and secret. `secret_json` is put as the
    /// secret's value when the secret is created.
    pub async fn create(names: StackNames, settings: StackSettings, secret_json: Option<&str>) -> anyhow::Result<Self> {
        Self::create_in(shared::aws::load_config().await, names, settings, secret_json).await
    }

    /// [`Stack::create`] with a given SDK configuration (another endpoint, other credentials).
    pub async fn create_in(
        sdk: aws_config::SdkConfig,
        names: StackNames,
        settings: StackSettings,
        secret_json: Option<&str>,
    ) -> anyhow::Result<Self> {
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        let sm = aws_sdk_secretsmanager::Client::new(&sdk);
        let dlq_url = sqs
            .create_queue()
            .queue_name(&names.dlq)
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
            .send()
            .await?
            .queue_url
            .unwrap_or_default();
        let dlq_arn = sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await?
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .unwrap_or_default();
        let redrive = serde_json::json!({
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": settings.max_receive_count.to_string(),
        })
        .to_string();
        let queue_url = sqs
            .create_queue()
            .queue_name(&names.queue)
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::ContentBasedDeduplication, "false")
            .attributes(QueueAttributeName::DeduplicationScope, "messageGroup")
            .attributes(QueueAttributeName::FifoThroughputLimit, "perMessageGroupId")
            .attributes(QueueAttributeName::VisibilityTimeout, settings.visibility_timeout_secs.to_string())
            .attributes(QueueAttributeName::RedrivePolicy, redrive)
            .send()
            .await?
            .queue_url
            .unwrap_or_default();
        shared::state::create_table(&ddb, &names.table).await?;
        if sm.describe_secret().secret_id(&names.secret).send().await.is_err() {
            let mut req = sm.create_secret().name(&names.secret);
            if let Some(v) = secret_json {
                req = req.secret_string(v);
            }
            req.send().await?;
        }
        Ok(Self { names, sdk, sqs, ddb, sm, queue_url, dlq_url })
    }

    /// The configuration the functions would read, pointed at this stack and the given GHL and
    /// SproutVideo base URLs.
    pub fn config(&self, ghl_base: &str, sprout_base: &str, location: &str, extra: &[(&str, &str)]) -> Config {
        let mut env: HashMap<String, String> = [
            ("SYNC_SECRET_ID", self.names.secret.as_str()),
            ("SYNC_QUEUE_URL", self.queue_url.as_str()),
            ("SYNC_DLQ_URL", self.dlq_url.as_str()),
            ("SYNC_TABLE", self.names.table.as_str()),
            ("GHL_BASE_URL", ghl_base),
            ("GHL_LOCATION_ID", location),
            ("SPROUTVIDEO_BASE_URL", sprout_base),
            ("SPROUTVIDEO_PER_MINUTE", "1000"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        Config::from_lookup(|k| env.get(k).cloned()).expect("test configuration is valid")
    }

    /// What `!Ref` and `!GetAtt` give for the template's resources (`SyncQueue`,
    /// `DeadLetterQueue`, `StateTable`, `SyncSecret`) in this stack.
    pub async fn resource_values(&self) -> anyhow::Result<BTreeMap<String, ResourceValues>> {
        let region = self.sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".into());
        let account = ACCOUNT_ID;
        let queue = |url: &str, name: &str| ResourceValues {
            reference: url.to_string(),
            attributes: [
                ("Arn".to_string(), format!("arn:aws:sqs:{region}:{account}:{name}")),
                ("QueueName".to_string(), name.to_string()),
                ("QueueUrl".to_string(), url.to_string()),
            ]
            .into(),
        };
        let secret_arn = self.sm.describe_secret().secret_id(&self.names.secret).send().await?.arn.unwrap_or_default();
        Ok([
            ("SyncQueue".to_string(), queue(&self.queue_url, &self.names.queue)),
            ("DeadLetterQueue".to_string(), queue(&self.dlq_url, &self.names.dlq)),
            (
                "StateTable".to_string(),
                ResourceValues {
                    reference: self.names.table.clone(),
                    attributes: [(
                        "Arn".to_string(),
                        format!("arn:aws:dynamodb:{region}:{account}:table/{}", self.names.table),
                    )]
                    .into(),
                },
            ),
            (
                "SyncSecret".to_string(),
                ResourceValues { reference: secret_arn.clone(), attributes: [("Id".to_string(), secret_arn)].into() },
            ),
        ]
        .into())
    }

    pub async fn put_secret(&self, json: &str) -> anyhow::Result<()> {
        self.sm.put_secret_value().secret_id(&self.names.secret).secret_string(json).send().await?;
        Ok(())
    }

    /// Receives up to `max` visible messages of a queue (making them invisible for `hide` s).
    pub async fn receive(&self, url: &str, max: usize, hide: i32) -> anyhow::Result<Vec<Message>> {
        let mut out = Vec::new();
        for _ in 0..(max.div_ceil(10) + 2) {
            let got = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(hide)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await?
                .messages
                .unwrap_or_default();
            if got.is_empty() {
                break;
            }
            out.extend(got);
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Approximate number of messages in a queue (visible + in flight).
    pub async fn depth(&self, url: &str) -> anyhow::Result<u64> {
        let a = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await?
            .attributes
            .unwrap_or_default();
        let get = |k: QueueAttributeName| a.get(&k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(get(QueueAttributeName::ApproximateNumberOfMessages)
            + get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
    }
}

/// A secret value for tests and local runs.
pub fn secret_json(
    webhook_token: &str,
    signing: &[&str],
    read_key: &str,
    ghl_token: &str,
    sprout_key: Option<&str>,
) -> String {
    let mut v = serde_json::json!({
        "webhook_token": webhook_token,
        "signing_secrets": signing,
        "read_api_key": read_key,
        "ghl_token": ghl_token,
    });
    if let Some(k) = sprout_key {
        v["sproutvideo_api_key"] = serde_json::json!(k);
    }
    v.to_string()
}
