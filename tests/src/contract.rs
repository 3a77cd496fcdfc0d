//! The contracts every state store and every queue keeps, as test suites that take the
//! implementation: the in-memory ones (plain `cargo test`) and the AWS ones on moto run the same
//! assertions, so the memory versions the logic tests rely on behave like production.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use shared::commands::{CommandBody, DesiredContact, IdempotencyKey, Source, SyncCommand};
use shared::identity::{Email, Identity};
use shared::queue::{
    CommandQueue, DedupId, MessageGroupId, Parked, ParkedMessage, SentMessage, WorkerQueues, attribute_text,
};
use shared::state::{Claim, FieldMark, Holder, ManualClock, PersonState, StateError, StateStore};

/// How a suite lets time pass for an implementation: a memory store's clock moves, DynamoDB's
/// real one is waited for.
#[async_trait]
pub trait Time: Send + Sync {
    async fn pass(&self, by: Duration);
}

/// Waits for real.
pub struct RealTime;

#[async_trait]
impl Time for RealTime {
    async fn pass(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }
}

#[async_trait]
impl Time for ManualClock {
    async fn pass(&self, by: Duration) {
        self.advance(by);
    }
}

fn key(ns: &str, name: &str) -> IdempotencyKey {
    IdempotencyKey::derive(&Source::Event(format!("{ns}-{name}")), None, "contract")
}

const LONG: Duration = Duration::from_secs(600);
const SHORT: Duration = Duration::from_millis(100);
/// Longer than [`SHORT`] by a margin a loaded machine cannot eat.
const PAST_SHORT: Duration = Duration::from_millis(400);

/// The state store contract. `ns` keeps the keys of one run apart from another's.
pub async fn state_store_contract(store: &dyn StateStore, time: &dyn Time, ns: &str) {
    claims(store, time, ns).await;
    deferred_claims(store, time, ns).await;
    releases(store, ns).await;
    lapsed_claims(store, time, ns).await;
    values(store, ns).await;
    batch_values(store, ns).await;
    persons(store, ns).await;
    limits(store, ns).await;
}

async fn claims(store: &dyn StateStore, time: &dyn Time, ns: &str) {
    let me = Holder::new();
    // A first claim is fresh; while its lease runs, another attempt is told the key is busy.
    let k = key(ns, "fresh");
    assert_eq!(store.claim(&k, LONG, &me).await.unwrap(), Claim::Fresh);
    assert_eq!(store.claim(&k, LONG, &me).await.unwrap(), Claim::Busy);
    assert!(!store.is_done(&k).await.unwrap(), "a pending claim is not done");

    // Once a lease ran out, the next attempt takes over and the attempts are counted.
    let k = key(ns, "retake");
    assert_eq!(store.claim(&k, SHORT, &me).await.unwrap(), Claim::Fresh);
    time.pass(PAST_SHORT).await;
    assert_eq!(store.claim(&k, SHORT, &me).await.unwrap(), Claim::Retake { attempts: 2 });
    time.pass(PAST_SHORT).await;
    assert_eq!(store.claim(&k, LONG, &me).await.unwrap(), Claim::Retake { attempts: 3 });
    assert_eq!(store.claim(&k, LONG, &me).await.unwrap(), Claim::Busy, "the retake holds a new lease");

    // Completed: every later claim is told it is done, with the recorded result.
    store.complete(&k, "note-123").await.unwrap();
    assert_eq!(store.claim(&k, LONG, &me).await.unwrap(), Claim::Done { result: "note-123".into() });
    assert!(store.is_done(&k).await.unwrap());

    // Completing without a claim records it as done too; a key never claimed is not done.
    let k = key(ns, "complete-unclaimed");
    assert!(!store.is_done(&k).await.unwrap());
    store.complete(&k, "task-9").await.unwrap();
    assert!(store.is_done(&k).await.unwrap());
    assert_eq!(store.claim(&k, LONG, &me).await.unwrap(), Claim::Done { result: "task-9".into() });
}

async fn deferred_claims(store: &dyn StateStore, time: &dyn Time, ns: &str) {
    let me = Holder::new();
    // After an ambiguous failure the claim waits out the grace (not its long lease), then the
    // next attempt takes over and looks first.
    let k = key(ns, "defer");
    assert_eq!(store.claim(&k, LONG, &me).await.unwrap(), Claim::Fresh);
    store.defer_claim(&k, Duration::from_secs(3), &me).await.unwrap();
    assert_eq!(store.claim(&k, LONG, &me).await.unwrap(), Claim::Busy, "within the grace");
    time.pass(Duration::from_millis(3500)).await;
    assert_eq!(store.claim(&k, LONG, &me).await.unwrap(), Claim::Retake { attempts: 2 });

    // Deferring a done or unknown key changes nothing.
    let k = key(ns, "defer-done");
    store.complete(&k, "n-1").await.unwrap();
    store.defer_claim(&k, LONG, &me).await.unwrap();
    assert_eq!(store.claim(&k, LONG, &me).await.unwrap(), Claim::Done { result: "n-1".into() });
    let k = key(ns, "defer-unknown");
    store.defer_claim(&k, LONG, &me).await.unwrap();
    assert_eq!(store.claim(&k, LONG, &me).await.unwrap(), Claim::Fresh);
}

async fn releases(store: &dyn StateStore, ns: &str) {
    let me = Holder::new();
    // A released claim is forgotten: the next attempt starts afresh.
    let k = key(ns, "release");
    assert_eq!(store.claim(&k, LONG, &me).await.unwrap(), Claim::Fresh);
    store.release(&k, &me).await.unwrap();
    assert_eq!(store.claim(&k, LONG, &me).await.unwrap(), Claim::Fresh);

    // Only a pending claim is released: a done entry stays done.
    let k = key(ns, "release-done");
    assert_eq!(store.claim(&k, LONG, &me).await.unwrap(), Claim::Fresh);
    store.complete(&k, "n-2").await.unwrap();
    store.release(&k, &me).await.unwrap();
    assert!(store.is_done(&k).await.unwrap());
    assert_eq!(store.claim(&k, LONG, &me).await.unwrap(), Claim::Done { result: "n-2".into() });

    // Releasing an unknown key is harmless.
    store.release(&key(ns, "release-unknown"), &me).await.unwrap();
}

async fn lapsed_claims(store: &dyn StateStore, time: &dyn Time, ns: &str) {
    let (late, next) = (Holder::new(), Holder::new());
    // An attempt whose lease lapsed was taken over: its late release, deferral or renewal
    // leaves the new holder's claim alone.
    let k = key(ns, "lapsed");
    assert_eq!(store.claim(&k, SHORT, &late).await.unwrap(), Claim::Fresh);
    time.pass(PAST_SHORT).await;
    assert_eq!(store.claim(&k, LONG, &next).await.unwrap(), Claim::Retake { attempts: 2 });
    store.release(&k, &late).await.unwrap();
    assert_eq!(store.claim(&k, LONG, &late).await.unwrap(), Claim::Busy, "a late release does not free it");
    store.defer_claim(&k, Duration::ZERO, &late).await.unwrap();
    assert_eq!(store.claim(&k, LONG, &late).await.unwrap(), Claim::Busy, "a late deferral does not move it");
    assert!(!store.renew_claim(&k, LONG, &late).await.unwrap(), "the late attempt learns it lost the claim");
    // The holder itself may release it.
    store.release(&k, &next).await.unwrap();
    assert_eq!(store.claim(&k, LONG, &late).await.unwrap(), Claim::Fresh);

    // A renewed claim stays busy past its first lease, even after it lapsed unnoticed.
    let k = key(ns, "renew");
    assert_eq!(store.claim(&k, SHORT, &late).await.unwrap(), Claim::Fresh);
    assert!(store.renew_claim(&k, LONG, &late).await.unwrap());
    time.pass(PAST_SHORT).await;
    assert_eq!(store.claim(&k, LONG, &next).await.unwrap(), Claim::Busy, "renewed");
    store.complete(&k, "run-1").await.unwrap();
    assert!(!store.renew_claim(&k, LONG, &late).await.unwrap(), "a done entry is not renewed");
    assert!(!store.renew_claim(&key(ns, "renew-unknown"), LONG, &late).await.unwrap());
}

async fn values(store: &dyn StateStore, ns: &str) {
    let name = format!("{ns}#value");
    assert_eq!(store.get_value(&name).await.unwrap(), None);
    store.put_value(&name, "one", None).await.unwrap();
    assert_eq!(store.get_value(&name).await.unwrap().as_deref(), Some("one"));
    store.put_value(&name, "two", Some(Duration::from_secs(3600))).await.unwrap();
    assert_eq!(store.get_value(&name).await.unwrap().as_deref(), Some("two"), "overwritten, not yet expired");
    store.delete_value(&name).await.unwrap();
    assert_eq!(store.get_value(&name).await.unwrap(), None);
    store.delete_value(&name).await.unwrap();

    // A value whose time is up reads as absent, whenever the table deletes it.
    let gone = format!("{ns}#expired");
    store.put_value(&gone, "old", Some(Duration::ZERO)).await.unwrap();
    assert_eq!(store.get_value(&gone).await.unwrap(), None);
    assert!(store.get_values(std::slice::from_ref(&gone)).await.unwrap().is_empty());

    // A conditional put stores once; a second caller learns the name is taken; an expired
    // value counts as none.
    let once = format!("{ns}#once");
    let day = Duration::from_secs(86_400);
    assert!(store.put_value_if_absent(&once, "first", day).await.unwrap());
    assert!(!store.put_value_if_absent(&once, "second", day).await.unwrap());
    assert_eq!(store.get_value(&once).await.unwrap().as_deref(), Some("first"));
    store.put_value(&gone, "old", Some(Duration::ZERO)).await.unwrap();
    assert!(store.put_value_if_absent(&gone, "new", day).await.unwrap(), "an expired value is no value");
    assert_eq!(store.get_value(&gone).await.unwrap().as_deref(), Some("new"));
}

async fn batch_values(store: &dyn StateStore, ns: &str) {
    // More than one write batch (25) and more than one read batch (100).
    let values: Vec<(String, String)> =
        (0..130).map(|i| (format!("{ns}#batch#{i:03}"), format!("value {i} ✓"))).collect();
    store.put_values(&values, Some(Duration::from_secs(3600))).await.unwrap();
    let mut names: Vec<String> = values.iter().map(|(k, _)| k.clone()).collect();
    names.extend((0..5).map(|i| format!("{ns}#batch#missing-{i}")));
    let got: BTreeMap<String, String> = store.get_values(&names).await.unwrap().into_iter().collect();
    let want: BTreeMap<String, String> = values.into_iter().collect();
    assert_eq!(got, want, "every stored value, none of the missing ones");
    assert!(store.get_values(&[]).await.unwrap().is_empty());
    store.put_values(&[], None).await.unwrap();
    assert_eq!(store.get_value(&format!("{ns}#batch#129")).await.unwrap().as_deref(), Some("value 129 ✓"));
}

async fn persons(store: &dyn StateStore, ns: &str) {
    let ada = Email::parse(&format!("ada.{ns}@example.com")).unwrap();
    let bob = Email::parse(&format!("josé.{ns}@bücher.example")).unwrap();
    assert_eq!(store.person(&ada).await.unwrap(), None);
    let p = PersonState {
        contact_id: "c-ada".into(),
        state_hash: "h1".into(),
        tags: ["sproutvideo".to_string(), "vip".to_string()].into(),
        phone: Some("+14155552671".into()),
        applied_at: 1_790_000_000,
        fields: [
            ("firstName".to_string(), FieldMark { value: "Ada".into(), at_ms: 1_790_000_000_123 }),
            ("cf:contact.plan".to_string(), FieldMark { value: serde_json::json!(["gold", 3]), at_ms: 1 }),
        ]
        .into(),
    };
    store.put_person(&ada, &p).await.unwrap();
    assert_eq!(store.person(&ada).await.unwrap(), Some(p.clone()));
    let q = PersonState {
        contact_id: "c-bob".into(),
        phone: None,
        tags: Default::default(),
        fields: Default::default(),
        ..p.clone()
    };
    store.put_person(&bob, &q).await.unwrap();
    assert_eq!(store.person(&bob).await.unwrap(), Some(q));
    let p2 = PersonState { state_hash: "h2".into(), phone: None, ..p };
    store.put_person(&ada, &p2).await.unwrap();
    assert_eq!(store.person(&ada).await.unwrap(), Some(p2), "replaced as a whole");
}

async fn limits(store: &dyn StateStore, ns: &str) {
    // DynamoDB's item (400 KB) and key (2048 bytes) limits: refused, and not worth retrying.
    let big = "x".repeat(410_000);
    let e = store.put_value(&format!("{ns}#big"), &big, None).await.unwrap_err();
    assert!(matches!(e, StateError::Rejected(_)), "{e:?}");
    assert!(!e.is_retryable());
    let e = store.put_value(&format!("{ns}#{}", "k".repeat(2100)), "v", None).await.unwrap_err();
    assert!(matches!(e, StateError::Rejected(_)), "{e:?}");
    let fits = "y".repeat(300_000);
    store.put_value(&format!("{ns}#fits"), &fits, None).await.unwrap();
    assert_eq!(store.get_value(&format!("{ns}#fits")).await.unwrap().map(|v| v.len()), Some(300_000));
}

/// How a suite reads back what a queue holds.
#[async_trait]
pub trait QueueProbe: Send + Sync {
    /// Takes every message now on the command queue, in delivery order.
    async fn take_sent(&self) -> Vec<SentMessage>;
    /// Takes every message now in the dead-letter queue.
    async fn take_parked(&self) -> Vec<ParkedMessage>;
    /// A receipt handle of a message now on the command queue (sending one if need be).
    async fn receipt_handle(&self, queue: &dyn CommandQueue) -> String;
}

fn person(email: &str) -> Identity {
    Identity { email: Email::parse(email).unwrap(), phone: None }
}

/// The queue contract.
pub async fn queue_contract<Q: CommandQueue + WorkerQueues>(queue: &Q, probe: &dyn QueueProbe, ns: &str) {
    let at = Utc::now();
    let long_address = format!("{}@{}.example.com", "l".repeat(64), "d".repeat(150));
    let people = ["ada@example.com".to_string(), "josé@bücher.example".to_string(), long_address];
    // Seven commands per person (more than one batch call in all) and two video changes.
    let mut commands = Vec::new();
    for (p, email) in people.iter().enumerate() {
        for i in 0..7 {
            let body = CommandBody::AddNote { identity: person(email), body: format!("note {i} ✓") };
            commands.push(SyncCommand::new(Source::Event(format!("{ns}-{p}-{i}")), "add_note", at, body));
        }
    }
    for v in ["video-1", "vidéo 2"] {
        commands.push(SyncCommand::new(
            Source::SproutVideo(format!("{ns}-{v}")),
            "video_changed",
            at,
            CommandBody::VideoChanged { video_id: v.into() },
        ));
    }
    queue.send(&commands).await.unwrap();
    // A re-send within the deduplication window is accepted and dropped. (SQS drops it for five
    // minutes even once the first was consumed; moto only while the first is still queued, so
    // the suite re-sends before consuming.)
    queue.send(&commands[..5]).await.unwrap();
    let sent = probe.take_sent().await;
    assert_eq!(sent.len(), commands.len(), "every command arrives once");
    for m in &sent {
        let c = m.command().unwrap();
        assert!(commands.contains(&c));
        assert_eq!(m.group_id, c.message_group());
        assert_eq!(m.dedup_id, c.dedup_id());
    }
    // Within a group, in the order sent.
    for email in &people {
        let group = MessageGroupId::for_person(&Email::parse(email).unwrap());
        let want: Vec<&IdempotencyKey> =
            commands.iter().filter(|c| c.message_group() == group).map(|c| &c.key).collect();
        let got: Vec<IdempotencyKey> =
            sent.iter().filter(|m| m.group_id == group).map(|m| m.command().unwrap().key).collect();
        assert_eq!(got.iter().collect::<Vec<_>>(), want, "{email}");
    }

    // Characters SQS refuses in a body travel escaped and arrive intact.
    let odd = SyncCommand::new(
        Source::Event(format!("{ns}-odd")),
        "add_note",
        at,
        CommandBody::AddNote { identity: person("ada@example.com"), body: "a\u{FFFF}b\u{1}c".into() },
    );
    queue.send(std::slice::from_ref(&odd)).await.unwrap();
    let got = probe.take_sent().await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].command().unwrap(), odd);

    // Parking keeps the body, the ids, the reason (as SQS can hold it) and the trace id.
    let mut d = DesiredContact::new(Email::parse("ada@example.com").unwrap());
    d.first_name = Some("Ada".into());
    let cmd = SyncCommand::new(
        Source::Event(format!("{ns}-park")),
        "upsert_contact",
        at,
        CommandBody::UpsertContact { contact: d },
    );
    let body = cmd.encode();
    let reason = format!("GHL refused it (422): bad\u{0}field {}", "r".repeat(3000));
    let parked = Parked {
        body: &body,
        group_id: &cmd.message_group(),
        dedup_id: &cmd.dedup_id(),
        reason: &reason,
        trace_id: Some("trace-1"),
    };
    queue.park(parked.clone()).await.unwrap();
    queue.park(parked).await.unwrap();
    let garbage_group = MessageGroupId::parked();
    let garbage_dedup = DedupId::digest(&format!("{ns} message id"));
    queue
        .park(Parked {
            body: "garbage",
            group_id: &garbage_group,
            dedup_id: &garbage_dedup,
            reason: "undecodable message",
            trace_id: None,
        })
        .await
        .unwrap();
    let got = probe.take_parked().await;
    assert_eq!(got.len(), 2, "a second park of one message within the window is dropped: {got:?}");
    let command = got.iter().find(|m| m.body == body).expect("the parked command");
    assert_eq!(
        command,
        &ParkedMessage {
            body: body.clone(),
            group_id: cmd.message_group(),
            dedup_id: cmd.dedup_id(),
            reason: attribute_text(&reason),
            trace_id: Some("trace-1".into()),
        }
    );
    assert!(!command.reason.contains('\u{0}') && command.reason.chars().count() == 1000);
    let garbage = got.iter().find(|m| m.body == "garbage").expect("the parked garbage");
    assert_eq!((&garbage.group_id, &garbage.dedup_id), (&garbage_group, &garbage_dedup));
    assert_eq!(garbage.trace_id, None);

    // A retry waits; a delay below what SQS takes is clamped, not refused. (SQS also refuses to
    // keep a message hidden more than 12 hours in all, moto likewise.)
    let handle = probe.receipt_handle(queue).await;
    queue.delay_retry(&handle, 900).await.unwrap();
    queue.delay_retry(&handle, -5).await.unwrap();
}

/// The budget store contract: a record is written only over the version that was read, and
/// processes taking starts from one record at once are never granted more than its window.
pub async fn budget_store_contract(store: std::sync::Arc<dyn shared::budget::BudgetStore>, ns: &str) {
    use shared::budget::{BudgetError, BudgetSettings, FleetBudget, Lane, WindowState};

    let loc = format!("{ns}-versions");
    assert_eq!(store.load_budget(&loc).await.unwrap(), None);
    let mut st = WindowState { day_used: 1, ..Default::default() };
    assert!(store.swap_budget(&loc, None, &st).await.unwrap(), "the first record is written");
    assert!(!store.swap_budget(&loc, None, &st).await.unwrap(), "a second first record is refused");
    let (read, v1) = store.load_budget(&loc).await.unwrap().unwrap();
    assert_eq!(read, st);
    st.day_used = 2;
    assert!(store.swap_budget(&loc, Some(v1), &st).await.unwrap());
    assert!(!store.swap_budget(&loc, Some(v1), &st).await.unwrap(), "a write over a stale version is refused");
    let (read, v2) = store.load_budget(&loc).await.unwrap().unwrap();
    assert_eq!((read.day_used, v2 > v1), (2, true));

    // Four processes of one location, all busy, on a window that frees nothing during the test.
    let loc = format!("{ns}-fleet");
    let settings = BudgetSettings {
        max: 20,
        interval: Duration::from_secs(600),
        interactive_reserve: 2,
        batch_max: 3,
        ..Default::default()
    };
    let fleet: Vec<_> =
        (0..4).map(|_| std::sync::Arc::new(FleetBudget::new(store.clone(), loc.clone(), settings.clone()))).collect();
    let take_all = |b: std::sync::Arc<FleetBudget>, lane: Lane| async move {
        let mut got = 0;
        loop {
            match b.take(lane, Some(Duration::from_millis(50))).await {
                Ok(()) => got += 1,
                Err(BudgetError::Full(_)) => return got,
                Err(e) => panic!("unexpected: {e}"),
            }
        }
    };
    let bulk: Vec<u32> = futures::future::join_all(fleet.iter().map(|b| tokio::spawn(take_all(b.clone(), Lane::Bulk))))
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(bulk.iter().sum::<u32>(), 18, "bulk work stops two short of the window: {bulk:?}");
    assert_eq!(take_all(fleet[0].clone(), Lane::Interactive).await, 2, "the reserve is left for a person's view");
    assert_eq!(fleet[1].snapshot().await.unwrap().used(), 20);
}
