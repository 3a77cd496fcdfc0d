//! The SQS adapter: the worker as a Lambda SQS handler. The event-source mapping delivers a batch,
//! the handler answers with the messages to deliver again (`ReportBatchItemFailures`): the mapping
//! deletes the rest, and a failure stays in the queue for its visibility delay and the redrive
//! policy.

use std::time::{Duration, SystemTime};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::{Context, LambdaEvent};

use crate::apply::{BatchOutcome, Deadline, QueueMessage};
use crate::fleet::Fleet;

/// What a command needs besides the GHL request timeout before the deadline, to record its
/// result and answer.
pub const DEADLINE_SAFETY: Duration = Duration::from_secs(3);

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

/// The invocation's deadline on the monotonic clock, with `margin` for the last command:
/// `ghl_request_timeout` + [`DEADLINE_SAFETY`].
pub fn deadline(context: &Context, ghl_request_timeout: Duration) -> Deadline {
    let remaining = context.deadline().duration_since(SystemTime::now()).unwrap_or_default();
    Deadline::new(tokio::time::Instant::now() + remaining, ghl_request_timeout + DEADLINE_SAFETY)
}

/// The Lambda handler: decode each message on its own, stop starting commands when the deadline
/// is near, report only the failures and the unstarted.
pub async fn handle(fleet: &Fleet, event: LambdaEvent<SqsEvent>, ghl_request_timeout: Duration) -> SqsBatchResponse {
    let deadline = deadline(&event.context, ghl_request_timeout);
    handle_batch(fleet, event.payload, deadline).await
}

/// The batch part of [`handle`], for a deadline already known.
/// Each tenant's messages go to its own worker (see [`Fleet`]); each tenant met gets its own
/// metric line.
pub async fn handle_batch(fleet: &Fleet, event: SqsEvent, deadline: Deadline) -> SqsBatchResponse {
    let msgs = event.records.into_iter().map(from_sqs).collect();
    let mut all = BatchOutcome::default();
    for b in fleet.process_batch_within(msgs, deadline).await {
        let (tenant, outcome) = (&b.tenant, &b.outcome);
        println!("{}", b.worker.emf_line(tenant, outcome, b.ran));
        tracing::info!(
            tenant = %tenant,
            applied = outcome.applied,
            unchanged = outcome.unchanged,
            parked = outcome.parked,
            held = outcome.held,
            retrying = outcome.failed.len(),
            "batch done"
        );
        all.failed.extend(b.outcome.failed);
    }
    response(&all)
}
