//! The worker's logic without AWS: the in-memory state store and queues (on a clock the test
//! moves) and the local GHL in process. Claims, per-group order, parking and its reasons.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use secrecy::SecretString;
use serde_json::Value;
use shared::commands::{CommandBody, DesiredContact, Source, SyncCommand};
use shared::ghl::{GhlClient, GhlSettings, StaticToken};
use shared::identity::{Email, Identity, Phone};
use shared::mapping::{ContactInput, CustomFieldCatalog, Mapping, Origin, WatchFacts};
use shared::queue::{CommandQueue, DedupId, MemoryQueue, MessageGroupId};
use shared::retry::RetryPolicy;
use shared::sprout::{SproutClient, SproutSettings, StaticKey};
use shared::state::{Claim, Holder, ManualClock, MemoryStore, StateStore};
use sync_tests::local_ghl::{FaultKind, GhlBehaviour, LocalGhl, ScriptedFault};
use sync_tests::local_sprout::{LocalSprout, SessionSeed, SproutBehaviour, VideoSeed};
use url::Url;
use worker::{QueueMessage, Worker};

const LOC: &str = "locWorkerLogic000001";
/// Attempts the GHL client makes per call before the worker sees the failure.
const GHL_ATTEMPTS: u32 = 2;
const LEASE: Duration = Duration::from_secs(60);
const GRACE: Duration = Duration::from_secs(4);

struct World {
    ghl: LocalGhl,
    sprout: LocalSprout,
    clock: ManualClock,
    store: Arc<MemoryStore>,
    queue: Arc<MemoryQueue>,
    worker: Worker,
}

impl World {
    async fn new() -> Self {
        Self::with_mapping(Mapping::default_mapping()).await
    }

    async fn with_mapping(mapping: Mapping) -> Self {
        let sprout = LocalSprout::new(SproutBehaviour::default());
        let sprout_url = format!("http://{}/v1", sprout.spawn("127.0.0.1:0").await.unwrap());
        let sprout_client = SproutClient::new(
            SproutSettings::new(Url::parse(&sprout_url).unwrap()),
            Arc::new(StaticKey(SecretString::from("sv-key"))),
        )
        .unwrap();
        let ghl = LocalGhl::new(GhlBehaviour::default());
        let addr = ghl.spawn("127.0.0.1:0").await.unwrap();
        let mut settings = GhlSettings::new(Url::parse(&format!("http://{addr}/")).unwrap(), LOC);
        settings.request_timeout = Duration::from_secs(2);
        settings.retry = RetryPolicy {
            max_attempts: GHL_ATTEMPTS,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(10),
            deadline: Some(Duration::from_secs(5)),
        };
        let client = GhlClient::new(settings, Arc::new(StaticToken(SecretString::from("pit-logic")))).unwrap();
        let clock = ManualClock::starting_now();
        let store = Arc::new(MemoryStore::with_clock(Arc::new(clock.clone())));
        let queue = Arc::new(MemoryQueue::with_clock(Arc::new(clock.clone())));
        let catalog = Arc::new(CustomFieldCatalog::new(client.clone()));
        let worker = worker_over(client, catalog, sprout_client, Arc::new(mapping), &store, &queue);
        Self { ghl, sprout, clock, store, queue, worker }
    }

    async fn contact(&self, email: &str) -> Value {
        let s = self.ghl.state().await;
        s["locations"][LOC]["contacts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["email"] == email)
            .cloned()
            .unwrap_or_else(|| panic!("no contact {email} in GHL"))
    }

    async fn count(&self, method: &str, path_end: &str) -> usize {
        self.ghl.requests().await.iter().filter(|r| r.method == method && r.path.ends_with(path_end)).count()
    }

    async fn fail_next(&self, kind: FaultKind, method: &str, path: &str, times: u32) {
        for _ in 0..times {
            self.ghl
                .push_fault(ScriptedFault {
                    kind: kind.clone(),
                    method: Some(method.into()),
                    path_contains: Some(path.into()),
                })
                .await;
        }
    }
}

fn email(s: &str) -> Email {
    Email::parse(s).unwrap()
}

fn identity(s: &str) -> Identity {
    Identity { email: email(s), phone: None }
}

fn msg(id: &str, c: &SyncCommand) -> QueueMessage {
    QueueMessage {
        id: id.into(),
        body: c.encode(),
        receipt_handle: Some(format!("rh-{id}")),
        group_id: Some(c.group_id()),
        receive_count: 1,
    }
}

fn upsert(event: &str, e: &str) -> SyncCommand {
    let mut d = DesiredContact::new(email(e));
    d.tags.insert("sproutvideo".into());
    SyncCommand::new(
        Source::Event(event.into()),
        "upsert_contact",
        Utc::now(),
        CommandBody::UpsertContact { contact: d },
    )
}

fn note(event: &str, e: &str, body: &str) -> SyncCommand {
    SyncCommand::new(
        Source::Event(event.into()),
        "add_note",
        Utc::now(),
        CommandBody::AddNote { identity: identity(e), body: body.into() },
    )
}

fn task(event: &str, e: &str, external_id: &str) -> SyncCommand {
    SyncCommand::new(
        Source::Event(event.into()),
        "create_task",
        Utc::now(),
        CommandBody::CreateTask {
            identity: identity(e),
            external_id: external_id.into(),
            title: "Follow up".into(),
            body: None,
            due_at: Utc::now() + chrono::Duration::hours(24),
            assigned_to: None,
        },
    )
}

#[tokio::test]
async fn a_note_and_a_task_are_created_once_however_often_they_arrive() {
    let w = World::new().await;
    let cmds =
        [upsert("e1", "ada@example.com"), note("e1", "ada@example.com", "Hello"), task("e1", "ada@example.com", "t-1")];
    let batch: Vec<_> = cmds.iter().enumerate().map(|(i, c)| msg(&format!("m{i}"), c)).collect();
    let first = w.worker.process_batch(batch.clone()).await;
    assert_eq!((first.applied, first.failed.len()), (3, 0), "{first:?}");
    let again = w.worker.process_batch(batch).await;
    assert_eq!((again.applied, again.unchanged), (0, 3), "{again:?}");
    let ada = w.contact("ada@example.com").await;
    assert_eq!(ada["notes"].as_array().unwrap().len(), 1);
    assert_eq!(ada["tasks"].as_array().unwrap().len(), 1);
    assert!(w.store.is_done(&cmds[1].key).await.unwrap());

    // Over a year later, the sender completes the task: its record is still there.
    w.clock.advance(Duration::from_secs(400 * 24 * 3600));
    let done = SyncCommand::new(
        "e2",
        "complete_task",
        Utc::now(),
        CommandBody::CompleteTask { identity: identity("ada@example.com"), external_id: "t-1".into() },
    );
    let out = w.worker.process_batch(vec![msg("c", &done)]).await;
    assert_eq!(out.applied, 1, "{out:?}");
    assert_eq!(w.contact("ada@example.com").await["tasks"][0]["completed"], true);
    // And the note is still known as done: delivering it again writes nothing.
    let late = w.worker.process_batch(vec![msg("m1", &cmds[1])]).await;
    assert_eq!(late.unchanged, 1);
    assert_eq!(w.count("POST", "/notes").await, 1);
}

#[tokio::test]
async fn a_key_another_worker_holds_is_retried_later_and_taken_over_once_its_lease_ran_out() {
    let me = Holder::new();
    let w = World::new().await;
    w.worker.process_batch(vec![msg("u", &upsert("e0", "held@example.com"))]).await;
    let n = note("e1", "held@example.com", "Only once");
    // Another worker claimed the note and then died without a word.
    assert_eq!(w.store.claim(&n.key, LEASE, &me).await.unwrap(), Claim::Fresh);

    let busy = w.worker.process_batch(vec![msg("n", &n)]).await;
    assert_eq!(busy.failed, vec!["n".to_string()]);
    assert_eq!(w.count("POST", "/notes").await, 0, "nothing written while the lease runs");
    let delays = w.queue.delays();
    assert_eq!(delays.len(), 1);
    assert_eq!(delays[0].receipt_handle, "rh-n");
    assert!((0..=10).contains(&delays[0].seconds), "{delays:?}");

    w.clock.advance(LEASE + Duration::from_secs(1));
    let taken = w.worker.process_batch(vec![msg("n", &n)]).await;
    assert_eq!(taken.applied, 1, "{taken:?}");
    assert_eq!(w.count("GET", "/notes").await, 1, "the take-over looked first");
    assert_eq!(w.contact("held@example.com").await["notes"].as_array().unwrap().len(), 1);
    assert_eq!(
        w.store.claim(&n.key, LEASE, &me).await.unwrap(),
        Claim::Done { result: w.contact("held@example.com").await["notes"][0]["id"].as_str().unwrap().to_string() }
    );
}

#[tokio::test]
async fn a_write_that_may_have_landed_is_looked_up_after_the_grace_not_repeated() {
    let w = World::new().await;
    w.worker.process_batch(vec![msg("u", &upsert("e0", "grace@example.com"))]).await;
    w.fail_next(FaultKind::WriteThenFail, "POST", "/notes", 1).await;
    let n = note("e1", "grace@example.com", "Hello");
    let first = w.worker.process_batch(vec![msg("n", &n)]).await;
    assert_eq!(first.failed, vec!["n".to_string()], "retried, not parked");
    let too_soon = w.worker.process_batch(vec![msg("n", &n)]).await;
    assert_eq!(too_soon.failed.len(), 1, "no second attempt while the first could be in flight");

    w.clock.advance(GRACE + Duration::from_secs(1));
    let later = w.worker.process_batch(vec![msg("n", &n)]).await;
    assert_eq!((later.unchanged, later.failed.len()), (1, 0), "{later:?}");
    assert_eq!(w.count("POST", "/notes").await, 1, "the note was found, not written again");
    assert_eq!(w.contact("grace@example.com").await["notes"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_failed_message_holds_back_the_rest_of_its_group_and_only_its_group() {
    let w = World::new().await;
    w.worker.process_batch(vec![msg("u", &upsert("e0", "order@example.com"))]).await;
    // A create is not repeated by the client: one 503, and its outcome is unknown.
    w.fail_next(FaultKind::Status { status: 503 }, "POST", "/notes", 1).await;
    w.ghl.clear_requests().await;
    let first = note("e1", "order@example.com", "first");
    let second = SyncCommand::new(
        "e2",
        "add_tags",
        Utc::now(),
        CommandBody::AddTags { identity: identity("order@example.com"), tags: vec!["later".into()] },
    );
    let other = upsert("e3", "someone.else@example.com");
    assert_eq!(first.message_group(), second.message_group());
    let batch = vec![msg("1", &first), msg("2", &second), msg("3", &other)];
    let out = w.worker.process_batch(batch).await;
    assert_eq!(out.failed, vec!["1".to_string(), "2".to_string()]);
    assert_eq!(out.applied, 1, "other groups go on");
    let order_id = w.contact("order@example.com").await["id"].as_str().unwrap().to_string();
    let tags_path = format!("/contacts/{order_id}/tags");
    assert!(!w.ghl.requests().await.iter().any(|r| r.path == tags_path), "the later command waited");
    let delayed: Vec<String> = w.queue.delays().iter().map(|d| d.receipt_handle.clone()).collect();
    assert_eq!(delayed, ["rh-1", "rh-2"], "both wait before their next delivery");

    // Delivered again once a 5xx on a create can no longer land (GHL is back): applied in their
    // order.
    w.clock.advance(GRACE + Duration::from_secs(1));
    let again = w.worker.process_batch(vec![msg("1", &first), msg("2", &second)]).await;
    assert_eq!(again.applied, 2, "{again:?}");
    let log = w.ghl.requests().await;
    let note_at = log.iter().rposition(|r| r.method == "POST" && r.path.ends_with("/notes")).unwrap();
    let tags_at = log.iter().position(|r| r.path == tags_path).unwrap();
    assert!(note_at < tags_at, "the note before the tags");
}

#[tokio::test]
async fn permanent_failures_are_parked_with_their_reasons_and_ids() {
    let w = World::new().await;
    w.fail_next(FaultKind::Status { status: 422 }, "POST", "/contacts/upsert", 1).await;
    let bad = upsert("e1", "three@example.com");
    let poison = QueueMessage {
        id: "poison-1".into(),
        body: "{\"v\":1,\"kind\":\"nonsense\"}".into(),
        receipt_handle: Some("rh-p".into()),
        group_id: Some("p-0123456789abcdef".into()),
        receive_count: 1,
    };
    // Left by an older sender: a group and message id SQS would not take on the dead-letter queue.
    let odd = QueueMessage {
        id: "message id é".into(),
        body: "not json".into(),
        receipt_handle: Some("rh-o".into()),
        group_id: Some("josé@example.com".into()),
        receive_count: 1,
    };
    let out = w.worker.process_batch(vec![poison.clone(), msg("m422", &bad), odd.clone()]).await;
    assert_eq!((out.parked, out.failed.len()), (3, 0), "{out:?}");

    let parked = w.queue.parked();
    let find = |body: &str| parked.iter().find(|p| p.body == body).unwrap_or_else(|| panic!("{body} not parked"));
    let p = find(&poison.body);
    assert!(p.reason.starts_with("undecodable message"), "{}", p.reason);
    assert_eq!(p.group_id.as_str(), "p-0123456789abcdef", "keeps the group it came with");
    assert_eq!(p.dedup_id.as_str(), "poison-1");

    let p = find(&bad.encode());
    assert!(p.reason.contains("422"), "{}", p.reason);
    assert!(p.trace_id.is_some(), "the 422's traceId travels with it");
    assert_eq!((&p.group_id, &p.dedup_id), (&bad.message_group(), &bad.dedup_id()));

    let p = find("not json");
    assert_eq!(p.group_id, MessageGroupId::parked());
    assert_eq!(p.dedup_id, DedupId::digest("message id é"));
}

#[tokio::test]
async fn an_email_and_a_phone_of_two_different_contacts_are_parked_when_the_mapping_says_so() {
    let text = shared::mapping::DEFAULT_MAPPING
        .replace("on_phone_conflict = \"write_without_phone\"", "on_phone_conflict = \"park\"");
    assert!(text.contains("\"park\""));
    let w = World::with_mapping(Mapping::from_toml(&text).unwrap()).await;
    let phone = Phone::parse("+14155552671", "US").unwrap();
    let mut phone_owner = DesiredContact::new(email("phone.owner@example.com"));
    phone_owner.phone = Some(phone.clone());
    let owner =
        SyncCommand::new("e2", "upsert_contact", Utc::now(), CommandBody::UpsertContact { contact: phone_owner });
    w.worker.process_batch(vec![msg("a", &upsert("e1", "mail.owner@example.com")), msg("b", &owner)]).await;
    let mut both = DesiredContact::new(email("mail.owner@example.com"));
    both.phone = Some(phone);
    let c = SyncCommand::new("e3", "upsert_contact", Utc::now(), CommandBody::UpsertContact { contact: both });
    let out = w.worker.process_batch(vec![msg("c", &c)]).await;
    assert_eq!(out.parked, 1, "{out:?}");
    let parked = w.queue.parked();
    assert!(parked[0].reason.contains("identity conflict"), "{}", parked[0].reason);
    assert_eq!(parked[0].group_id, c.message_group());
    assert_eq!(w.contact("mail.owner@example.com").await["phone"], Value::Null);
}

#[tokio::test]
async fn a_message_the_dead_letter_queue_cannot_take_now_is_delivered_again_not_lost() {
    let w = World::new().await;
    let poison = QueueMessage {
        id: "poison".into(),
        body: "garbage".into(),
        receipt_handle: Some("rh-p".into()),
        group_id: None,
        receive_count: 1,
    };
    w.queue.set_unavailable(true);
    let out = w.worker.process_batch(vec![poison.clone()]).await;
    assert_eq!((out.failed, out.parked), (vec!["poison".to_string()], 0));
    w.queue.set_unavailable(false);
    let out = w.worker.process_batch(vec![poison]).await;
    assert_eq!(out.parked, 1);
    assert_eq!(w.queue.parked()[0].body, "garbage");
}

#[tokio::test]
async fn addresses_sqs_would_refuse_as_group_ids_travel_and_apply() {
    let w = World::new().await;
    let long = format!("{}@{}.example.com", "l".repeat(64), "d".repeat(150));
    for (i, raw) in ["josé@bücher.example", long.as_str()].into_iter().enumerate() {
        let cmds = [upsert(&format!("u{i}"), raw), note(&format!("n{i}"), raw, "Hello")];
        w.queue.send(&cmds).await.unwrap();
        let sent = w.queue.take_sent();
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|m| m.group_id == MessageGroupId::for_person(&email(raw))));
        let batch: Vec<_> = sent
            .iter()
            .enumerate()
            .map(|(j, m)| QueueMessage {
                id: format!("{i}-{j}"),
                body: m.body.clone(),
                receipt_handle: None,
                group_id: Some(m.group_id.to_string()),
                receive_count: 1,
            })
            .collect();
        let out = w.worker.process_batch(batch).await;
        assert_eq!(out.applied, 2, "{raw}: {out:?}");
        assert_eq!(w.contact(raw).await["notes"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn a_rule_acts_once_whichever_path_saw_the_watch_first() {
    let w = World::new().await;
    let vid = w
        .sprout
        .add_video(VideoSeed {
            title: "Pricing walkthrough".into(),
            duration: Some(200.0),
            require_email: true,
            ..Default::default()
        })
        .await;
    w.sprout
        .add_session(SessionSeed {
            video_id: vid.clone(),
            vemail: Some("lead@example.com".into()),
            seconds_watched: Some(190.0),
            ..Default::default()
        })
        .await;

    // A signed event reports the watch first.
    let mapping = Mapping::default_mapping();
    let desired = mapping
        .desired(&ContactInput { email: "lead@example.com".into(), ..Default::default() }, Origin::Lead)
        .unwrap();
    let watch = WatchFacts {
        video_id: vid.clone(),
        video_title: "Pricing walkthrough".into(),
        video_tags: vec![],
        percent: 95.0,
        at: Utc::now(),
    };
    let from_event =
        shared::facts::watch_commands(&mapping, desired, &watch, &Source::Event("evt-watch".into()), watch.at);
    assert_eq!(from_event.len(), 3, "upsert, note, task");
    let batch: Vec<_> = from_event.iter().enumerate().map(|(i, c)| msg(&format!("e{i}"), c)).collect();
    assert_eq!(w.worker.process_batch(batch).await.applied, 3);

    // Then SproutVideo's webhook: the worker pulls the same watch from the sessions.
    let changed = SyncCommand::new(
        Source::SproutVideo(format!("sv-video:{vid}:1")),
        "video_changed",
        Utc::now(),
        CommandBody::VideoChanged { video_id: vid.clone() },
    );
    assert_eq!(w.worker.process_batch(vec![msg("v", &changed)]).await.applied, 1);
    let queued = w.queue.take_sent();
    let rule_keys: Vec<_> = from_event[1..].iter().map(|c| c.key.clone()).collect();
    let queued_keys: Vec<_> = queued.iter().map(|m| m.command().unwrap().key).collect();
    assert!(rule_keys.iter().all(|k| queued_keys.contains(k)), "the same rule keys from the session");
    let batch: Vec<_> = queued
        .iter()
        .enumerate()
        .map(|(i, m)| QueueMessage {
            id: format!("s{i}"),
            body: m.body.clone(),
            receipt_handle: None,
            group_id: Some(m.group_id.to_string()),
            receive_count: 1,
        })
        .collect();
    let out = w.worker.process_batch(batch).await;
    assert!(out.failed.is_empty() && out.parked == 0, "{out:?}");
    let lead = w.contact("lead@example.com").await;
    assert_eq!(lead["notes"].as_array().unwrap().len(), 1, "one note");
    assert_eq!(lead["tasks"].as_array().unwrap().len(), 1, "one task");
}

#[tokio::test]
async fn an_attempt_slower_than_its_lease_writes_nothing_once_another_took_the_command_over() {
    let mut w = World::new().await;
    w.worker.process_batch(vec![msg("u", &upsert("e0", "slow@example.com"))]).await;
    // The worker's first claim is answered only after its lease ran out, by which time another
    // worker took the command over.
    let slow = Arc::new(sync_tests::faulty_store::FaultyStore::new(w.store.clone()));
    let (store, clock, other) = (w.store.clone(), w.clock.clone(), Holder::new());
    let n = note("e1", "slow@example.com", "Only once");
    let key = n.key.clone();
    slow.after_next_claim(move || {
        clock.advance(LEASE + Duration::from_secs(1));
        let taken = futures::executor::block_on(store.claim(&key, LEASE, &other)).unwrap();
        assert_eq!(taken, Claim::Retake { attempts: 2 });
    });
    w.worker.store = slow;
    let slow = w.worker.process_batch(vec![msg("n", &n)]).await;
    assert_eq!(slow.failed, vec!["n".to_string()], "retried: {slow:?}");
    assert_eq!(w.count("POST", "/notes").await, 0, "the slow attempt did not write behind the other's back");
}

#[tokio::test]
async fn new_people_sent_as_a_lead_then_a_note_cost_three_ghl_requests_each() {
    let w = World::new().await;
    let mapping = Mapping::default_mapping();
    // Within one GHL window (100 requests per 10 s), so no command waits past its deadline.
    let people = 30;
    // As users send them: lead.captured (email and names), then note.create (email only), each
    // turned into commands by the intake and applied in order per person.
    let mut batch = Vec::new();
    for i in 0..people {
        let email = format!("cost{i:03}@example.com");
        let lead = serde_json::json!({"id": format!("lead-{i}"), "type": "lead.captured",
            "occurred_at": Utc::now().to_rfc3339(),
            "contact": {"email": email, "first_name": "Cora", "last_name": format!("Cost{i}")}});
        let note = serde_json::json!({"id": format!("note-{i}"), "type": "note.create",
            "occurred_at": Utc::now().to_rfc3339(), "contact": {"email": email}, "note": {"body": "Called"}});
        for event in [lead, note] {
            let accepted = intake::events::event_commands(&mapping, event.to_string().as_bytes()).unwrap();
            for (k, c) in accepted.commands.iter().enumerate() {
                batch.push(msg(&format!("{}-{k}", accepted.id), c));
            }
        }
    }
    for chunk in batch.chunks(10) {
        let out = w.worker.process_batch(chunk.to_vec()).await;
        assert!(out.failed.is_empty() && out.parked == 0, "{out:?}");
    }
    let requests = w.ghl.requests().await;
    let rate_limited = requests.iter().filter(|r| r.status == 429).count();
    let per_person = requests.len() as f64 / people as f64;
    println!("lead then note: {} GHL requests for {people} people ({per_person:.2} each)", requests.len());
    assert_eq!(rate_limited, 0);
    assert!(per_person <= 3.0, "{per_person:.2} GHL requests per person: {:?}", {
        let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
        for r in &requests {
            let path =
                if r.path.starts_with("/contacts/") && r.path.len() > 10 { "/contacts/{id}/..." } else { &r.path };
            *kinds.entry(format!("{} {path}", r.method)).or_default() += 1;
        }
        kinds
    });
}

/// A worker over these clients, store and queue, with the tests' lease and grace.
fn worker_over(
    ghl: GhlClient,
    catalog: Arc<CustomFieldCatalog>,
    sprout: SproutClient,
    mapping: Arc<Mapping>,
    store: &Arc<MemoryStore>,
    queue: &Arc<MemoryQueue>,
) -> Worker {
    Worker {
        ghl,
        catalog,
        store: store.clone(),
        queues: queue.clone(),
        commands: queue.clone(),
        sprout,
        mapping,
        lease: LEASE,
        ambiguity_grace: GRACE,
        retry_base_secs: 5,
        concurrency: 4,
        lookback_days: 30,
        identity_conflicts: Default::default(),
        api_drift: Default::default(),
    }
}

/// Another worker over `w`'s GHL, SproutVideo, store and queue.
fn worker_of(w: &World) -> Worker {
    let x = &w.worker;
    worker_over(x.ghl.clone(), x.catalog.clone(), x.sprout.clone(), x.mapping.clone(), &w.store, &w.queue)
}

/// The worker fleet: the deployment's own worker over `own`, and for the registered tenant
/// `acme` a worker over `acme` (its own GHL, store and queue).
fn fleet(own: &World, acme: &World, registry: Arc<MemoryStore>) -> worker::Fleet {
    use shared::tenants::{Registry, TenantCache};
    let acme_worker = std::sync::Mutex::new(Some(worker_of(acme)));
    worker::Fleet {
        tenants: TenantCache::new(Registry::new(registry), Duration::ZERO, Arc::new(worker_of(own)), move |r| {
            assert_eq!(r.id.as_str(), "acme");
            acme_worker.lock().unwrap().take().ok_or_else(|| anyhow::anyhow!("the tenant's setup did not change"))
        }),
    }
}

fn for_tenant(mut c: SyncCommand, tenant: &str) -> SyncCommand {
    c.tenant = shared::tenants::TenantId::parse(tenant).unwrap();
    c
}

#[tokio::test]
async fn a_removed_tenants_message_is_parked_and_a_resumed_tenants_new_commands_wait_behind_its_held_ones() {
    use shared::tenants::{Registry, TenantId, TenantRecord, drain_held};
    let (own, acme) = (World::new().await, World::new().await);
    let registry = Arc::new(MemoryStore::new());
    let fleet = fleet(&own, &acme, registry.clone());
    let acme_id = TenantId::parse("acme").unwrap();

    // A tenant nobody registered (removed): parked with the reason, nothing written anywhere.
    let gone = for_tenant(upsert("g-1", "gina@example.com"), "gone");
    let out = fleet.process_batch_within(vec![msg("m-gone", &gone)], worker::Deadline::NONE).await;
    assert_eq!(out.iter().map(|b| b.outcome.parked).sum::<usize>(), 1);
    let parked = own.queue.take_parked();
    assert!(parked[0].reason.contains("'gone' is not registered"), "{}", parked[0].reason);
    assert!(parked[0].group_id.as_str().starts_with("gone/"));

    // Paused: held, nothing applied.
    Registry::new(registry.clone())
        .add(&TenantRecord { paused: true, ..TenantRecord::new(acme_id.clone(), "locAcmeLogic00000001", "unused") })
        .await
        .unwrap();
    let first = for_tenant(upsert("a-1", "ada@example.com"), "acme");
    let out = fleet.process_batch_within(vec![msg("m-1", &first)], worker::Deadline::NONE).await;
    assert_eq!(out[0].outcome.held, 1);
    assert_eq!(acme.count("POST", "/contacts/upsert").await, 0);

    // Resumed, its held command not sent back yet: a new one waits behind it.
    Registry::new(registry.clone()).update(&acme_id, |r| r.paused = false).await.unwrap();
    let second = for_tenant(upsert("a-2", "ada.b@example.com"), "acme");
    let out = fleet.process_batch_within(vec![msg("m-2", &second)], worker::Deadline::NONE).await;
    assert_eq!((out[0].outcome.held, out[0].outcome.applied), (1, 0), "{:?}", out[0].outcome);

    // The drain sends both back in order; applied then, and nothing is held any more.
    let resend = MemoryQueue::new();
    assert_eq!(drain_held(&*acme.store, &resend, &|_, _| {}).await.unwrap(), 2);
    let back: Vec<SyncCommand> = resend.commands();
    assert_eq!(back.iter().map(|c| c.key.clone()).collect::<Vec<_>>(), [first.key.clone(), second.key.clone()]);
    let msgs: Vec<QueueMessage> = back.iter().enumerate().map(|(i, c)| msg(&format!("r-{i}"), c)).collect();
    let out = fleet.process_batch_within(msgs, worker::Deadline::NONE).await;
    assert_eq!(out[0].outcome.applied, 2, "{:?}", out[0].outcome);
    acme.contact("ada@example.com").await;
    acme.contact("ada.b@example.com").await;
    let third = for_tenant(upsert("a-3", "ada.c@example.com"), "acme");
    let out = fleet.process_batch_within(vec![msg("m-3", &third)], worker::Deadline::NONE).await;
    assert_eq!((out[0].outcome.held, out[0].outcome.applied), (0, 1), "running as before");
}
