//! The state store and queue contracts, run against the in-memory implementations and against
//! DynamoDB and SQS on moto; and what is kept for good, forty days later.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use shared::commands::{CommandBody, IdempotencyKey, Source, SyncCommand};
use shared::queue::{
    CommandQueue, DedupId, MemoryQueue, MessageGroupId, ParkedMessage, SentMessage, SqsQueue, WorkerQueues,
};
use shared::state::{
    Claim, DynamoStore, Holder, ManualClock, MemoryStore, PENDING_CLAIM_TTL, StateStore, ledger_pk, value_pk,
};
use sync_tests::aws::{Stack, StackNames, StackSettings, require_emulator};
use sync_tests::contract::{QueueProbe, RealTime, queue_contract, state_store_contract};

#[tokio::test]
async fn the_memory_store_keeps_the_state_contract() {
    let clock = ManualClock::starting_now();
    let store = MemoryStore::with_clock(Arc::new(clock.clone()));
    state_store_contract(&store, &clock, "mem").await;
}

#[tokio::test]
async fn dynamodb_keeps_the_state_contract() {
    require_emulator();
    let stack = Stack::create(StackNames::unique("state"), StackSettings::default(), None).await.unwrap();
    let store = DynamoStore::new(stack.ddb.clone(), &stack.names.table);
    state_store_contract(&store, &RealTime, "ddb").await;
}

fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::derive(&Source::Event(name.into()), None, "add_note")
}

#[tokio::test]
async fn forty_days_later_done_actions_and_task_records_are_still_known() {
    let me = Holder::new();
    let clock = ManualClock::starting_now();
    let store = MemoryStore::with_clock(Arc::new(clock.clone()));
    let (done, pending) = (key("done"), key("pending"));
    assert_eq!(store.claim(&done, Duration::from_secs(60), &me).await.unwrap(), Claim::Fresh);
    store.complete(&done, "note-1").await.unwrap();
    assert_eq!(store.claim(&pending, Duration::from_secs(60), &me).await.unwrap(), Claim::Fresh);
    store.put_value("task#ada@example.com#t-1", "c-1/task-1", None).await.unwrap();
    store.put_value("recon#run#checkpoint", "{}", Some(Duration::from_secs(3 * 24 * 3600))).await.unwrap();

    clock.advance(Duration::from_secs(40 * 24 * 3600));

    assert_eq!(
        store.claim(&done, Duration::from_secs(60), &me).await.unwrap(),
        Claim::Done { result: "note-1".into() }
    );
    assert!(store.is_done(&done).await.unwrap());
    assert_eq!(store.get_value("task#ada@example.com#t-1").await.unwrap().as_deref(), Some("c-1/task-1"));
    assert_eq!(store.get_value("recon#run#checkpoint").await.unwrap(), None, "scratch data expires");
    assert_eq!(
        store.claim(&pending, Duration::from_secs(60), &me).await.unwrap(),
        Claim::Fresh,
        "a pending claim expires after {PENDING_CLAIM_TTL:?}"
    );
    assert_eq!(store.expires(&ledger_pk(&done)), Some(false));

    // A year on, still.
    clock.advance(Duration::from_secs(365 * 24 * 3600));
    assert!(store.is_done(&done).await.unwrap());
}

#[tokio::test]
async fn dynamodb_holds_done_entries_and_task_records_without_expiry() {
    let me = Holder::new();
    require_emulator();
    let stack = Stack::create(StackNames::unique("ttl"), StackSettings::default(), None).await.unwrap();
    let store = DynamoStore::new(stack.ddb.clone(), &stack.names.table);
    let k = key("ttl");
    let expires = |item: &std::collections::HashMap<String, AttributeValue>| {
        item.get("expires_at").and_then(|v| v.as_n().ok()).map(|v| v.parse::<i64>().unwrap())
    };
    assert_eq!(store.claim(&k, Duration::from_secs(60), &me).await.unwrap(), Claim::Fresh);
    let pending = store.raw_item(&ledger_pk(&k)).await.unwrap().unwrap();
    let at = expires(&pending).expect("a pending claim expires");
    let want = chrono::Utc::now().timestamp() + PENDING_CLAIM_TTL.as_secs() as i64;
    assert!((want - 60..=want).contains(&at), "{at} vs {want}");
    store.complete(&k, "note-1").await.unwrap();
    let done = store.raw_item(&ledger_pk(&k)).await.unwrap().unwrap();
    assert_eq!(expires(&done), None, "a done entry is kept for good: {done:?}");
    store.put_value("task#ada@example.com#t-1", "c-1/task-1", None).await.unwrap();
    let task = store.raw_item(&value_pk("task#ada@example.com#t-1")).await.unwrap().unwrap();
    assert_eq!(expires(&task), None);

    // An expired item DynamoDB has not deleted yet counts as gone: a pending claim is taken
    // afresh, a value reads as absent.
    let stale = key("stale");
    let past = AttributeValue::N((chrono::Utc::now().timestamp() - 10).to_string());
    let far = AttributeValue::N((chrono::Utc::now().timestamp_millis() + 3_600_000).to_string());
    for (pk, extra) in [
        (ledger_pk(&stale), [("status", AttributeValue::S("pending".into())), ("lease_until", far)]),
        (value_pk("stale"), [("value", AttributeValue::S("old".into())), ("other", AttributeValue::S("x".into()))]),
    ] {
        let mut req = stack.ddb.put_item().table_name(&stack.names.table).item("pk", AttributeValue::S(pk));
        for (k, v) in extra {
            req = req.item(k, v);
        }
        req.item("expires_at", past.clone()).send().await.unwrap();
    }
    assert_eq!(store.claim(&stale, Duration::from_secs(60), &me).await.unwrap(), Claim::Fresh);
    assert_eq!(store.get_value("stale").await.unwrap(), None);
}

/// Reads back the memory queue.
struct MemoryProbe<'a>(&'a MemoryQueue);

#[async_trait]
impl QueueProbe for MemoryProbe<'_> {
    async fn take_sent(&self) -> Vec<SentMessage> {
        self.0.take_sent()
    }

    async fn take_parked(&self) -> Vec<ParkedMessage> {
        self.0.take_parked()
    }

    async fn receipt_handle(&self, _queue: &dyn CommandQueue) -> String {
        "memory-receipt-handle".into()
    }
}

#[tokio::test]
async fn the_memory_queue_keeps_the_queue_contract() {
    let q = MemoryQueue::new();
    queue_contract(&q, &MemoryProbe(&q), "mem").await;
    // It also recorded the delays, clamped as SQS would.
    let seconds: Vec<i32> = q.delays().iter().map(|d| d.seconds).collect();
    assert_eq!(seconds, [900, 0]);
    q.delay_retry("h", 99_999).await.unwrap();
    assert_eq!(q.delays().last().unwrap().seconds, 43_200);
    assert_eq!(q.duplicates_dropped(), 6, "five re-sent commands and one re-parked message");
}

#[tokio::test]
async fn the_memory_queue_drops_a_duplicate_for_five_minutes_even_once_the_first_was_consumed() {
    let clock = ManualClock::starting_now();
    let q = MemoryQueue::with_clock(Arc::new(clock.clone()));
    let c = SyncCommand::new(
        "evt-1",
        "video_changed",
        chrono::Utc::now(),
        CommandBody::VideoChanged { video_id: "v1".into() },
    );
    q.send(std::slice::from_ref(&c)).await.unwrap();
    assert_eq!(q.take_sent().len(), 1);
    clock.advance(Duration::from_secs(4 * 60));
    q.send(std::slice::from_ref(&c)).await.unwrap();
    assert!(q.take_sent().is_empty(), "as on SQS, the id is remembered for five minutes");
    clock.advance(Duration::from_secs(2 * 60));
    q.send(std::slice::from_ref(&c)).await.unwrap();
    assert_eq!(q.take_sent().len(), 1, "and forgotten after");
}

/// Reads back SQS on moto: receives (and deletes) until the queue is empty.
struct SqsProbe<'a>(&'a Stack);

impl SqsProbe<'_> {
    async fn drain(&self, url: &str) -> Vec<Message> {
        let mut out = Vec::new();
        let mut empty = 0;
        while empty < 2 {
            let got = self
                .0
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await
                .unwrap()
                .messages
                .unwrap_or_default();
            if got.is_empty() {
                empty += 1;
                continue;
            }
            let entries: Vec<DeleteMessageBatchRequestEntry> = got
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(format!("d{i}"))
                        .receipt_handle(m.receipt_handle.clone().unwrap())
                        .build()
                        .unwrap()
                })
                .collect();
            self.0.sqs.delete_message_batch().queue_url(url).set_entries(Some(entries)).send().await.unwrap();
            out.extend(got);
        }
        out
    }
}

fn system(m: &Message, k: MessageSystemAttributeName) -> String {
    m.attributes.as_ref().and_then(|a| a.get(&k)).cloned().unwrap_or_default()
}

fn attribute(m: &Message, k: &str) -> Option<String> {
    m.message_attributes.as_ref()?.get(k)?.string_value().map(str::to_string)
}

#[async_trait]
impl QueueProbe for SqsProbe<'_> {
    async fn take_sent(&self) -> Vec<SentMessage> {
        self.drain(&self.0.queue_url)
            .await
            .iter()
            .map(|m| SentMessage {
                body: m.body.clone().unwrap(),
                group_id: MessageGroupId::new(system(m, MessageSystemAttributeName::MessageGroupId)).unwrap(),
                dedup_id: DedupId::new(system(m, MessageSystemAttributeName::MessageDeduplicationId)).unwrap(),
            })
            .collect()
    }

    async fn take_parked(&self) -> Vec<ParkedMessage> {
        self.drain(&self.0.dlq_url)
            .await
            .iter()
            .map(|m| ParkedMessage {
                body: m.body.clone().unwrap(),
                group_id: MessageGroupId::new(system(m, MessageSystemAttributeName::MessageGroupId)).unwrap(),
                dedup_id: DedupId::new(system(m, MessageSystemAttributeName::MessageDeduplicationId)).unwrap(),
                reason: attribute(m, "reason").unwrap_or_default(),
                trace_id: attribute(m, "ghl_trace_id"),
            })
            .collect()
    }

    async fn receipt_handle(&self, queue: &dyn CommandQueue) -> String {
        let c = SyncCommand::new(
            Source::SproutVideo("handle".into()),
            "video_changed",
            chrono::Utc::now(),
            CommandBody::VideoChanged { video_id: "handle".into() },
        );
        queue.send(&[c]).await.unwrap();
        let got = self.0.receive(&self.0.queue_url, 1, 30).await.unwrap();
        got[0].receipt_handle.clone().unwrap()
    }
}

#[tokio::test]
async fn sqs_keeps_the_queue_contract() {
    require_emulator();
    let stack = Stack::create(StackNames::unique("queue"), StackSettings::default(), None).await.unwrap();
    let q = SqsQueue::new(stack.sqs.clone(), stack.queue_url.clone(), Some(stack.dlq_url.clone()));
    queue_contract(&q, &SqsProbe(&stack), "sqs").await;
}

#[tokio::test]
async fn the_memory_store_keeps_the_budget_contract() {
    sync_tests::contract::budget_store_contract(Arc::new(MemoryStore::new()), "mem").await;
}

#[tokio::test]
async fn dynamodb_keeps_the_budget_contract() {
    require_emulator();
    let stack = Stack::create(StackNames::unique("budget"), StackSettings::default(), None).await.unwrap();
    sync_tests::contract::budget_store_contract(
        Arc::new(DynamoStore::new(stack.ddb.clone(), &stack.names.table)),
        "ddb",
    )
    .await;
}

#[tokio::test]
async fn the_command_queue_deduplicates_per_message_group_and_no_id_is_shared_by_two_groups() {
    // The deployed queue is a high-throughput FIFO queue: SQS deduplicates within a message
    // group. That drops exactly what deduplicating per queue would only while a deduplication id
    // never appears in two groups: every event type, for two people and the same event ids,
    // and video notices, give each id one group.
    let mapping = shared::mapping::Mapping::default_mapping();
    let mut group_of: std::collections::HashMap<String, String> = Default::default();
    let mut commands = Vec::new();
    for email in ["ada@example.com", "bob@example.com"] {
        for mut event in intake::events::examples() {
            event["contact"]["email"] = serde_json::json!(email);
            let accepted = intake::events::event_commands(&mapping, event.to_string().as_bytes()).unwrap();
            commands.extend(accepted.commands);
        }
    }
    for video in ["v1", "v2"] {
        let notice = serde_json::json!({"id": video, "updated_at": "2026-11-29T10:00:00Z"});
        commands.extend(intake::events::webhook_commands(notice.to_string().as_bytes()).unwrap().commands);
    }
    assert!(commands.len() > 10, "{}", commands.len());
    for c in &commands {
        let group = c.group_id();
        let seen = group_of.entry(c.dedup_id().as_str().to_string()).or_insert_with(|| group.clone());
        assert_eq!(*seen, group, "one deduplication id in two groups: {c:?}");
    }
    // The memory queue deduplicates per group, as SQS does in that mode.
    let q = MemoryQueue::new();
    q.send(&commands).await.unwrap();
    q.send(&commands).await.unwrap();
    assert_eq!(q.take_sent().len(), commands.len(), "each command once");
    assert_eq!(q.duplicates_dropped(), commands.len());
}
