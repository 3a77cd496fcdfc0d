//! The SQS adapter: the worker as a Lambda SQS handler (partial batch failures) and as a local long-poller
//! that behaves like the event-source mapping (deletes what succeeded, leaves failures to be
//! delivered again after their visibility delay).

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};

use crate::apply::{BatchOutcome, QueueMessage, Worker};

fn from_sqs(m: SqsMessage) -> QueueMessage {
    let attr = |k: &str| m.attributes.get(k).cloned();
    QueueMessage {
        id: m.message_id.clone().unwrap_or_default(),
        body: m.body.clone().unwrap_or_default(),
        receipt_handle: m.receipt_handle.clone(),
        group_id: attr("MessageGroupId"),
        receive_count: attr("ApproximateReceiveCount").and_then(|c| c.parse().ok()).unwrap_or(1),
    }
}

fn response(outcome: &BatchOutcome) -> SqsBatchResponse {
    let mut r = SqsBatchResponse::default();
    r.batch_item_failures = outcome
        .failed
        .iter()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id.clone();
            f
        })
        .collect();
    r
}

/// The Lambda handler: decode each message on its own, report only the failures.
pub async fn handle(worker: &Worker, event: SqsEvent) -> SqsBatchResponse {
    let msgs = event.records.into_iter().map(from_sqs).collect();
    let outcome = worker.process_batch(msgs).await;
    println!("{}", worker.emf_line(&outcome));
    response(&outcome)
}

/// Long-polls the queue and feeds batches to the same code, until `stop` resolves.
pub async fn run_local(
    worker: Arc<Worker>,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    wait_secs: i32,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let recv = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait_secs)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send();
        let out = tokio::select! {
            _ = &mut stop => return,
            r = recv => r,
        };
        let msgs = match out {
            Ok(o) => o.messages.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "could not receive from the queue; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        if msgs.is_empty() {
            continue;
        }
        let mut handles = std::collections::HashMap::new();
        let batch: Vec<QueueMessage> = msgs
            .into_iter()
            .map(|m| {
                let attrs = m.attributes.unwrap_or_default();
                let id = m.message_id.unwrap_or_default();
                handles.insert(id.clone(), m.receipt_handle.clone().unwrap_or_default());
                QueueMessage {
                    id,
                    body: m.body.unwrap_or_default(),
                    receipt_handle: m.receipt_handle,
                    group_id: attrs.get(&MessageSystemAttributeName::MessageGroupId).cloned(),
                    receive_count: attrs
                        .get(&MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(1),
                }
            })
            .collect();
        let outcome = worker.process_batch(batch).await;
        let done: Vec<DeleteMessageBatchRequestEntry> = handles
            .iter()
            .filter(|(id, _)| !outcome.failed.contains(id))
            .enumerate()
            .map(|(i, (_, h))| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(format!("d{i}"))
                    .receipt_handle(h)
                    .build()
                    .expect("id and handle are set")
            })
            .collect();
        if !done.is_empty()
            && let Err(e) = sqs.delete_message_batch().queue_url(&queue_url).set_entries(Some(done)).send().await
        {
            tracing::warn!(error = %e, "could not delete handled messages; they will be seen again and skipped");
        }
        tracing::info!(
            applied = outcome.applied,
            unchanged = outcome.unchanged,
            parked = outcome.parked,
            retrying = outcome.failed.len(),
            "batch done"
        );
    }
}
