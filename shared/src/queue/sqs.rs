//! The queues on AWS SQS.

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};

use super::{CommandQueue, Parked, QueueError, SQS_BATCH_MAX, WorkerQueues};
use crate::commands::SyncCommand;

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
        let bodies = super::check_bodies(commands)?;
        for (chunk, bodies) in commands.chunks(SQS_BATCH_MAX).zip(bodies.chunks(SQS_BATCH_MAX)) {
            let entries = chunk
                .iter()
                .zip(bodies)
                .enumerate()
                .map(|(i, (c, body))| {
                    SendMessageBatchRequestEntry::builder()
                        .id(format!("m{i}"))
                        .message_body(body)
                        .message_group_id(c.message_group().as_str())
                        .message_deduplication_id(c.dedup_id().as_str())
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
        super::check_body(p.body).map_err(|reason| QueueError::Rejected { failed: 1, total: 1, reason })?;
        let attr = |v: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(super::attribute_text(v))
                .build()
                .expect("type is set")
        };
        let mut req = self
            .client
            .send_message()
            .queue_url(dlq)
            .message_body(p.body)
            .message_group_id(p.group_id.as_str())
            .message_deduplication_id(p.dedup_id.as_str())
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
            .visibility_timeout(super::visibility_secs(seconds))
            .send()
            .await
            .map_err(|e| QueueError::Unavailable(crate::aws::error_text(&e)))?;
        Ok(())
    }
}
