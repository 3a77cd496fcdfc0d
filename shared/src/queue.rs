//! The SQS FIFO queue the intake and reconciler write to, and the dead-letter queue the worker
//! parks permanent failures in.

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use thiserror::Error;

use crate::commands::SyncCommand;

/// SQS takes at most 10 entries per batch call.
pub const SQS_BATCH_MAX: usize = 10;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum QueueError {
    #[error("the queue did not accept {failed} of {total} message(s): {reason}")]
    Rejected { failed: usize, total: usize, reason: String },
    #[error("could not reach the queue: {0}")]
    Unavailable(String),
}

/// Where commands go.
#[async_trait]
pub trait CommandQueue: Send + Sync {
    /// Sends every command, or fails: a caller that gets `Ok` may acknowledge the event.
    async fn send(&self, commands: &[SyncCommand]) -> Result<(), QueueError>;
}

/// What a parked message carries.
#[derive(Debug, Clone)]
pub struct Parked<'a> {
    pub body: &'a str,
    pub group_id: &'a str,
    pub dedup_id: &'a str,
    pub reason: &'a str,
    pub trace_id: Option<&'a str>,
}

/// The operations the worker needs on its queues.
#[async_trait]
pub trait WorkerQueues: Send + Sync {
    /// Moves a message to the dead-letter queue with its reason as an attribute.
    async fn park(&self, p: Parked<'_>) -> Result<(), QueueError>;
    /// Hides a message for `seconds` so its retry waits (exponential backoff).
    async fn delay_retry(&self, receipt_handle: &str, seconds: i32) -> Result<(), QueueError>;
}

#[derive(Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    dlq_url: Option<String>,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>, dlq_url: Option<String>) -> Self {
        Self { client, queue_url: queue_url.into(), dlq_url }
    }

    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.client
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }
}

#[async_trait]
impl CommandQueue for SqsQueue {
    async fn send(&self, commands: &[SyncCommand]) -> Result<(), QueueError> {
        for chunk in commands.chunks(SQS_BATCH_MAX) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(format!("m{i}"))
                        .message_body(c.encode())
                        .message_group_id(c.group_id())
                        .message_deduplication_id(c.key.as_str())
                        .build()
                        .expect("id and body are set")
                })
                .collect::<Vec<_>>();
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| QueueError::Unavailable(crate::aws::error_text(&e)))?;
            let failed = out.failed();
            if !failed.is_empty() {
                return Err(QueueError::Rejected {
                    failed: failed.len(),
                    total: chunk.len(),
                    reason: failed
                        .iter()
                        .map(|f| format!("{}: {}", f.code(), f.message().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            }
        }
        Ok(())
    }
}

#[async_trait]
impl WorkerQueues for SqsQueue {
    async fn park(&self, p: Parked<'_>) -> Result<(), QueueError> {
        let Some(dlq) = &self.dlq_url else {
            return Err(QueueError::Unavailable("SYNC_DLQ_URL is not set; cannot park a message".into()));
        };
        let attr = |v: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v.chars().take(1000).collect::<String>())
                .build()
                .expect("type is set")
        };
        let mut req = self
            .client
            .send_message()
            .queue_url(dlq)
            .message_body(p.body)
            .message_group_id(if p.group_id.is_empty() { "parked" } else { p.group_id })
            .message_deduplication_id(p.dedup_id)
            .message_attributes("reason", attr(p.reason))
            .message_attributes("parked_at", attr(&chrono::Utc::now().to_rfc3339()));
        if let Some(t) = p.trace_id {
            req = req.message_attributes("ghl_trace_id", attr(t));
        }
        req.send().await.map_err(|e| QueueError::Unavailable(crate::aws::error_text(&e)))?;
        Ok(())
    }

    async fn delay_retry(&self, receipt_handle: &str, seconds: i32) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds.clamp(0, 43_200))
            .send()
            .await
            .map_err(|e| QueueError::Unavailable(crate::aws::error_text(&e)))?;
        Ok(())
    }
}
