//! The SQS event-source mapping: pollers that receive batches (`BatchSize` messages at most, with
//! every system and message attribute), invoke the function with an SQS event (`Records` with
//! `messageId`, `receiptHandle`, `body`, `attributes` such as `ApproximateReceiveCount`,
//! `SentTimestamp`, `SequenceNumber`, `MessageGroupId`, `MessageDeduplicationId`,
//! `messageAttributes`, `md5OfBody`, `eventSource: aws:sqs`, `eventSourceARN`, `awsRegion`), at
//! most `MaximumConcurrency` invocations at once, and settle the batch as Lambda does with
//! `ReportBatchItemFailures`:
//!
//! - success with no (or an empty) `batchItemFailures`: every message is deleted;
//! - success naming failures: every other message is deleted; the named ones stay in the queue,
//!   to come back after their visibility timeout (or be moved by the redrive policy);
//! - a failure entry with no, an empty or an unknown `itemIdentifier`, a response that is not a
//!   batch response, a function error or a timeout: nothing is deleted, the whole batch comes back.
//!
//! The queue's own visibility timeout and redrive policy (moto honours both) do the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::runtime::{Invoke, InvokeError};

/// An SQS event, as Lambda sends it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SqsEvent {
    #[serde(rename = "Records")]
    pub records: Vec<SqsRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SqsRecord {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    pub attributes: BTreeMap<String, String>,
    pub message_attributes: BTreeMap<String, MessageAttribute>,
    pub md5_of_body: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5_of_message_attributes: Option<String>,
    pub event_source: String,
    #[serde(rename = "eventSourceARN")]
    pub event_source_arn: String,
    pub aws_region: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MessageAttribute {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub string_value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary_value: Option<String>,
    pub string_list_values: Vec<String>,
    pub binary_list_values: Vec<String>,
    pub data_type: String,
}

/// Turns received messages into the event Lambda would send.
pub fn event(messages: &[Message], queue_arn: &str, region: &str) -> SqsEvent {
    let records = messages
        .iter()
        .map(|m| SqsRecord {
            message_id: m.message_id().unwrap_or_default().to_string(),
            receipt_handle: m.receipt_handle().unwrap_or_default().to_string(),
            body: m.body().unwrap_or_default().to_string(),
            attributes: m
                .attributes()
                .map(|a| {
                    a.iter()
                        .filter(|(k, _)| !matches!(k, MessageSystemAttributeName::AwsTraceHeader))
                        .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            message_attributes: m
                .message_attributes()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                MessageAttribute {
                                    string_value: v.string_value().map(str::to_string),
                                    binary_value: v
                                        .binary_value()
                                        .map(|b| base64::engine::general_purpose::STANDARD.encode(b.as_ref())),
                                    string_list_values: v.string_list_values().to_vec(),
                                    binary_list_values: v
                                        .binary_list_values()
                                        .iter()
                                        .map(|b| base64::engine::general_purpose::STANDARD.encode(b.as_ref()))
                                        .collect(),
                                    data_type: v.data_type().to_string(),
                                },
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            md5_of_body: m.md5_of_body().unwrap_or_default().to_string(),
            md5_of_message_attributes: m.md5_of_message_attributes().map(str::to_string),
            event_source: "aws:sqs".into(),
            event_source_arn: queue_arn.into(),
            aws_region: region.into(),
        })
        .collect();
    SqsEvent { records }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchResponse {
    #[serde(default)]
    batch_item_failures: Option<Vec<ItemFailure>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemFailure {
    #[serde(default)]
    item_identifier: Option<Value>,
}

/// What becomes of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Delete these messages (by id); the others stay.
    Delete(Vec<String>),
    /// Delete nothing: the whole batch comes back after its visibility timeout.
    KeepAll(String),
}

/// Lambda's reading of an invocation's result for a batch (`ids` in batch order).
pub fn settle(ids: &[String], result: &Result<Value, InvokeError>, report_batch_item_failures: bool) -> Settlement {
    let response = match result {
        Err(e) => return Settlement::KeepAll(format!("the invocation failed: {e}")),
        Ok(v) => v,
    };
    if !report_batch_item_failures || response.is_null() {
        return Settlement::Delete(ids.to_vec());
    }
    let Ok(parsed) = serde_json::from_value::<BatchResponse>(response.clone()) else {
        return Settlement::KeepAll("the response is not a batch response".into());
    };
    let mut failed = BTreeSet::new();
    for f in parsed.batch_item_failures.unwrap_or_default() {
        match f.item_identifier {
            Some(Value::String(id)) if ids.contains(&id) => {
                failed.insert(id);
            }
            other => {
                return Settlement::KeepAll(format!("a batch item failure names no message of the batch: {other:?}"));
            }
        }
    }
    Settlement::Delete(ids.iter().filter(|id| !failed.contains(*id)).cloned().collect())
}

/// One batch as the mapping handled it.
#[derive(Debug, Clone)]
pub struct BatchRecord {
    pub ids: Vec<String>,
    pub settlement: Settlement,
}

/// The event-source mapping of one queue to one function.
pub struct SqsEventSource {
    /// A client with the mapping's own credentials.
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub queue_arn: String,
    pub region: String,
    pub batch_size: u32,
    pub maximum_concurrency: usize,
    /// Long-poll wait per receive (Lambda uses 20 s).
    pub wait_secs: i32,
    pub report_batch_item_failures: bool,
    pub function: Arc<dyn Invoke>,
    pub batches: std::sync::Mutex<Vec<BatchRecord>>,
}

impl SqsEventSource {
    /// Starts `maximum_concurrency` pollers.
    pub fn spawn(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.maximum_concurrency.max(1))
            .map(|_| {
                let s = self.clone();
                tokio::spawn(async move {
                    loop {
                        if let Err(e) = s.poll_once().await {
                            eprintln!("lambda-local: sqs event source for {}: {e}; retrying", s.queue_arn);
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                    }
                })
            })
            .collect()
    }

    /// Receives one batch, invokes the function with it and settles it. Returns the batch size.
    pub async fn poll_once(&self) -> Result<usize, String> {
        let got = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(self.batch_size.clamp(1, 10) as i32)
            .wait_time_seconds(self.wait_secs)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| format!("could not receive: {}", shared::aws::error_text(&e)))?;
        let messages = got.messages.unwrap_or_default();
        if messages.is_empty() {
            return Ok(0);
        }
        let ev = event(&messages, &self.queue_arn, &self.region);
        let ids: Vec<String> = ev.records.iter().map(|r| r.message_id.clone()).collect();
        let payload = serde_json::to_value(&ev).expect("the event serializes");
        let result = self.function.invoke(payload).await;
        let settlement = settle(&ids, &result, self.report_batch_item_failures);
        if let Settlement::Delete(done) = &settlement {
            let handles: Vec<&str> =
                ev.records.iter().filter(|r| done.contains(&r.message_id)).map(|r| r.receipt_handle.as_str()).collect();
            for chunk in handles.chunks(10) {
                let entries = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(format!("d{i}"))
                            .receipt_handle(*h)
                            .build()
                            .expect("id and handle are set")
                    })
                    .collect();
                let out = self
                    .sqs
                    .delete_message_batch()
                    .queue_url(&self.queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| format!("could not delete a settled batch: {}", shared::aws::error_text(&e)))?;
                for f in out.failed() {
                    eprintln!("lambda-local: could not delete a message ({}): {}", f.code(), f.message().unwrap_or(""));
                }
            }
        }
        self.batches.lock().expect("lock").push(BatchRecord { ids, settlement });
        Ok(messages.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    #[test]
    fn only_what_succeeded_is_deleted() {
        let ok = |v: Value| Ok::<_, InvokeError>(v);
        assert_eq!(settle(&ids(), &ok(json!({"batchItemFailures": []})), true), Settlement::Delete(ids()));
        assert_eq!(settle(&ids(), &ok(Value::Null), true), Settlement::Delete(ids()));
        assert_eq!(settle(&ids(), &ok(json!({})), true), Settlement::Delete(ids()));
        assert_eq!(
            settle(&ids(), &ok(json!({"batchItemFailures": [{"itemIdentifier": "b"}]})), true),
            Settlement::Delete(vec!["a".into(), "c".into()])
        );
        for bad in [
            json!({"batchItemFailures": [{"itemIdentifier": ""}]}),
            json!({"batchItemFailures": [{"itemIdentifier": null}]}),
            json!({"batchItemFailures": [{"itemId": "b"}]}),
            json!({"batchItemFailures": [{"itemIdentifier": "zzz"}]}),
            json!("done"),
        ] {
            assert!(matches!(settle(&ids(), &ok(bad.clone()), true), Settlement::KeepAll(_)), "{bad}");
        }
    }

    #[test]
    fn a_failed_invocation_returns_the_whole_batch() {
        let timeout = Err(InvokeError::Function {
            error_type: "Sandbox.Timedout".into(),
            error_message: "Task timed out after 60.00 seconds".into(),
        });
        assert!(matches!(settle(&ids(), &timeout, true), Settlement::KeepAll(m) if m.contains("Timedout")));
    }
}
