//! The sync worker against moto (SQS FIFO + DLQ, DynamoDB, Secrets Manager) and the local GHL.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use shared::commands::{CommandBody, DesiredContact, SyncCommand};
use shared::identity::{Email, Identity, Phone};
use sync_tests::aws::{Stack, StackNames, StackSettings, require_emulator, secret_json};
use sync_tests::local_ghl::{FaultKind, Faults, GhlBehaviour, LocalGhl, ScriptedFault};
use sync_tests::local_sprout::{LocalSprout, SessionSeed, SproutBehaviour, VideoSeed};
use worker::{QueueMessage, Worker};

const LOC: &str = "locWorkerTest0000001";

struct Env {
    ghl: LocalGhl,
    ghl_url: String,
    sprout: LocalSprout,
    sprout_url: String,
    stack: Stack,
}

impl Env {
    async fn new(tag: &str, b: GhlBehaviour, secret: Option<String>) -> Self {
        require_emulator();
        let ghl = LocalGhl::new(b);
        let ghl_url = format!("http://{}/", ghl.spawn("127.0.0.1:0").await.unwrap());
        let sprout = LocalSprout::new(SproutBehaviour::default());
        let sprout_url = format!("http://{}/v1", sprout.spawn("127.0.0.1:0").await.unwrap());
        let secret = secret.unwrap_or_else(|| secret_json("wt", &["sig"], "rk", "pit-worker", Some("sv-key")));
        let stack = Stack::create(
            StackNames::unique(tag),
            StackSettings { visibility_timeout_secs: 1, max_receive_count: 5 },
            Some(&secret),
        )
        .await
        .unwrap();
        Self { ghl, ghl_url, sprout, sprout_url, stack }
    }

    async fn worker_with(&self, extra: &[(&str, &str)]) -> Arc<Worker> {
        // A short GHL timeout keeps the grace after an ambiguous write (twice the timeout) short.
        let mut all = vec![("GHL_REQUEST_TIMEOUT_MS", "300"), ("GHL_RETRY_DEADLINE_MS", "3000")];
        all.extend_from_slice(extra);
        let config = self.stack.config(&self.ghl_url, &self.sprout_url, LOC, &all);
        worker::build(config).await.unwrap().0
    }

    async fn worker(&self) -> Arc<Worker> {
        self.worker_with(&[]).await
    }

    async fn contacts(&self) -> Vec<Value> {
        let s = self.ghl.state().await;
        s["locations"][LOC]["contacts"].as_array().cloned().unwrap_or_default()
    }

    async fn contact(&self, email: &str) -> Value {
        self.contacts()
            .await
            .into_iter()
            .find(|c| c["email"] == email)
            .unwrap_or_else(|| panic!("no contact {email} in GHL"))
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
        receipt_handle: None,
        group_id: Some(c.group_id()),
        receive_count: 1,
    }
}

fn upsert(event: &str, e: &str, first: Option<&str>) -> SyncCommand {
    let mut d = DesiredContact::new(email(e));
    d.first_name = first.map(str::to_string);
    d.tags.insert("sproutvideo".into());
    SyncCommand::new(event, "upsert_contact", Utc::now(), CommandBody::UpsertContact { contact: d })
}

fn note(event: &str, e: &str, body: &str) -> SyncCommand {
    SyncCommand::new(event, "add_note", Utc::now(), CommandBody::AddNote { identity: identity(e), body: body.into() })
}

fn task(event: &str, e: &str, external_id: &str) -> SyncCommand {
    SyncCommand::new(
        event,
        "create_task",
        Utc::now(),
        CommandBody::CreateTask {
            identity: identity(e),
            external_id: external_id.into(),
            title: "Follow up".into(),
            body: Some("Call them".into()),
            due_at: Utc::now() + chrono::Duration::hours(24),
            assigned_to: None,
        },
    )
}

#[tokio::test]
async fn a_command_delivered_twice_creates_one_note_and_one_task() {
    let env = Env::new("twice", GhlBehaviour::default(), None).await;
    let w = env.worker().await;
    let cmds = [
        upsert("e1", "ada@example.com", Some("Ada")),
        note("e1", "ada@example.com", "Watched 87%"),
        task("e1", "ada@example.com", "t-1"),
    ];
    let batch: Vec<_> = cmds.iter().enumerate().map(|(i, c)| msg(&format!("m{i}"), c)).collect();
    let out = w.process_batch(batch.clone()).await;
    assert_eq!((out.applied, out.failed.len()), (3, 0), "{out:?}");
    let again = w.process_batch(batch).await;
    assert_eq!((again.applied, again.unchanged), (0, 3), "{again:?}");
    let c = env.contact("ada@example.com").await;
    assert_eq!(c["notes"].as_array().unwrap().len(), 1);
    assert_eq!(c["tasks"].as_array().unwrap().len(), 1);
    assert!(c["notes"][0]["body"].as_str().unwrap().starts_with("Watched 87%"));
    assert_eq!(c["tasks"][0]["dueDate"].as_str().unwrap().len(), 20, "whole seconds");

    // Completing the task by its external id, twice, completes it once.
    let done = SyncCommand::new(
        "e2",
        "complete_task",
        Utc::now(),
        CommandBody::CompleteTask { identity: identity("ada@example.com"), external_id: "t-1".into() },
    );
    env.ghl.clear_requests().await;
    for _ in 0..2 {
        let out = w.process_batch(vec![msg("c", &done)]).await;
        assert!(out.failed.is_empty());
    }
    assert_eq!(env.ghl.requests().await.len(), 1, "the second completion makes no call");
    assert_eq!(env.contact("ada@example.com").await["tasks"][0]["completed"], true);
}

#[tokio::test]
async fn write_then_fail_on_note_creation_leaves_exactly_one_note() {
    let env = Env::new("wtf", GhlBehaviour::default(), None).await;
    let w = env.worker().await;
    w.process_batch(vec![msg("u", &upsert("e1", "grace@example.com", None))]).await;
    env.ghl
        .push_fault(ScriptedFault {
            kind: FaultKind::WriteThenFail,
            method: Some("POST".into()),
            path_contains: Some("/notes".into()),
        })
        .await;
    let n = note("e1", "grace@example.com", "Hello");
    let first = w.process_batch(vec![msg("n", &n)]).await;
    assert_eq!(first.failed, vec!["n".to_string()], "ambiguous write is retried, not parked");
    let too_soon = w.process_batch(vec![msg("n", &n)]).await;
    assert_eq!(too_soon.failed.len(), 1, "no retry while the first request could still be in flight");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = w.process_batch(vec![msg("n", &n)]).await;
    assert!(second.failed.is_empty(), "{second:?}");
    let c = env.contact("grace@example.com").await;
    assert_eq!(c["notes"].as_array().unwrap().len(), 1);
    let posts = env.ghl.requests().await.iter().filter(|r| r.method == "POST" && r.path.ends_with("/notes")).count();
    assert_eq!(posts, 1, "the retry looked before writing");
}

#[tokio::test]
async fn two_workers_racing_on_one_key_create_one_note() {
    let env = Env::new("race", GhlBehaviour::default(), None).await;
    let (a, b) = (env.worker().await, env.worker().await);
    a.process_batch(vec![msg("u", &upsert("e1", "race@example.com", None))]).await;
    env.ghl.set_faults(Faults { latency_ms: 150, ..Default::default() }).await;
    let n = note("e9", "race@example.com", "Only once");
    let (ra, rb) = tokio::join!(a.process_batch(vec![msg("n", &n)]), b.process_batch(vec![msg("n", &n)]));
    assert_eq!(ra.failed.len() + rb.failed.len(), 1, "one wins, the other is told to retry: {ra:?} {rb:?}");
    // The loser's retry finds the winner's record.
    let retry = b.process_batch(vec![msg("n", &n)]).await;
    assert!(retry.failed.is_empty());
    assert_eq!(env.contact("race@example.com").await["notes"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_unchanged_upsert_makes_no_call_and_a_changed_one_the_minimum() {
    let env = Env::new("hash", GhlBehaviour::default(), None).await;
    let w = env.worker().await;
    w.process_batch(vec![msg("a", &upsert("e1", "min@example.com", Some("Min")))]).await;
    env.ghl.clear_requests().await;
    let same = w.process_batch(vec![msg("b", &upsert("e2", "min@example.com", Some("Min")))]).await;
    assert_eq!(same.unchanged, 1);
    assert!(env.ghl.requests().await.is_empty(), "no GHL call for an unchanged state");

    let changed = w.process_batch(vec![msg("c", &upsert("e3", "min@example.com", Some("Minnie")))]).await;
    assert_eq!(changed.applied, 1);
    let log = env.ghl.requests().await;
    assert_eq!(log.len(), 1, "one upsert, tags already present: {log:?}");
    assert_eq!(log[0].path, "/contacts/upsert");
    assert!(log[0].body.get("tags").is_none(), "tags never replace the list");
    assert_eq!(env.contact("min@example.com").await["firstName"], "Minnie");

    // A new tag costs one tags call more.
    env.ghl.clear_requests().await;
    let mut d = DesiredContact::new(email("min@example.com"));
    d.first_name = Some("Minnie".into());
    d.tags.extend(["sproutvideo".to_string(), "vip".to_string()]);
    let c = SyncCommand::new("e4", "upsert_contact", Utc::now(), CommandBody::UpsertContact { contact: d });
    w.process_batch(vec![msg("d", &c)]).await;
    let paths: Vec<String> = env.ghl.requests().await.iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.len(), 2);
    assert!(paths[1].ends_with("/tags"));
}

#[tokio::test]
async fn an_older_change_delivered_after_a_newer_one_changes_nothing() {
    let env = Env::new("order", GhlBehaviour::default(), None).await;
    let w = env.worker().await;
    let at = |mins: i64| Utc::now() - chrono::Duration::minutes(mins);
    let login = |event: &str, first: &str, when| {
        let mut d = DesiredContact::new(email("late@example.com"));
        d.first_name = Some(first.into());
        d.company_name = Some(format!("{first} Ltd"));
        SyncCommand::new(event, "upsert_contact", when, CommandBody::UpsertContact { contact: d })
    };
    w.process_batch(vec![msg("new", &login("login-2", "Newer", at(1)))]).await;
    env.ghl.clear_requests().await;
    // The sender's retry of an older login.updated arrives after the newer one.
    let late = w.process_batch(vec![msg("old", &login("login-1", "Older", at(30)))]).await;
    assert_eq!((late.applied, late.unchanged, late.failed.len()), (0, 1, 0), "{late:?}");
    assert!(env.ghl.requests().await.is_empty(), "no GHL call for a change older than the one applied");
    let c = env.contact("late@example.com").await;
    assert_eq!((c["firstName"].as_str(), c["companyName"].as_str()), (Some("Newer"), Some("Newer Ltd")));

    // A newer change of one field goes through; the others stay as they are.
    let mut d = DesiredContact::new(email("late@example.com"));
    d.company_name = Some("Newest Ltd".into());
    let c = SyncCommand::new("login-3", "upsert_contact", at(0), CommandBody::UpsertContact { contact: d });
    assert_eq!(w.process_batch(vec![msg("newest", &c)]).await.applied, 1);
    let c = env.contact("late@example.com").await;
    assert_eq!((c["firstName"].as_str(), c["companyName"].as_str()), (Some("Newer"), Some("Newest Ltd")));
}

#[tokio::test]
async fn a_note_for_a_known_person_costs_only_the_note() {
    let env = Env::new("known", GhlBehaviour::default(), None).await;
    let w = env.worker().await;
    // lead.captured (email and names), then note.create (email only), as the intake queues them.
    let lead = upsert("lead-1", "known@example.com", Some("Kim"));
    w.process_batch(vec![msg("l", &lead)]).await;
    let mut email_only = DesiredContact::new(email("known@example.com"));
    email_only.tags.insert("sproutvideo".into());
    let again =
        SyncCommand::new("note-1", "upsert_contact", Utc::now(), CommandBody::UpsertContact { contact: email_only });
    let out = w.process_batch(vec![msg("u", &again), msg("n", &note("note-1", "known@example.com", "Called"))]).await;
    assert_eq!((out.applied, out.unchanged), (1, 1), "{out:?}");
    let paths: Vec<String> = env.ghl.requests().await.iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert_eq!(paths.iter().filter(|p| p.ends_with("/contacts/upsert")).count(), 1, "{paths:?}");
    assert_eq!(paths.len(), 3, "upsert, tags, note: {paths:?}");
    assert_eq!(env.contact("known@example.com").await["firstName"], "Kim", "a field the note does not carry stays");
}

const BOB_PHONE: &str = "+14155552671";

/// Bob, already in GHL with his phone, and his record as the local GHL holds it (notes and
/// tasks included), serialised.
async fn seed_bob(env: &Env) -> (String, String) {
    let id =
        env.ghl.insert_contact(LOC, json!({"email": "bob@example.com", "firstName": "Bob", "phone": BOB_PHONE})).await;
    let record = bob_record(env, &id).await;
    (id, record)
}

/// Bob's record by id, so a change of his email shows as a difference too.
async fn bob_record(env: &Env, id: &str) -> String {
    let c = env.contacts().await.into_iter().find(|c| c["id"] == id);
    c.unwrap_or_else(|| panic!("Bob's contact {id} is gone")).to_string()
}

async fn conflict_of(w: &Worker, e: &str) -> Value {
    let raw =
        w.store.get_value(&format!("conflict#{e}")).await.unwrap().unwrap_or_else(|| panic!("no conflict for {e}"));
    serde_json::from_str(&raw).unwrap()
}

fn upsert_with_phone(event: &str, e: &str, first: &str, phone: &str) -> SyncCommand {
    let mut d = DesiredContact::new(email(e));
    d.first_name = Some(first.into());
    d.phone = Some(Phone::parse(phone, "US").unwrap());
    SyncCommand::new(event, "upsert_contact", Utc::now(), CommandBody::UpsertContact { contact: d })
}

/// The intake's one-view of a person, reading the same state table as the worker.
async fn one_view(env: &Env, w: &Worker, e: &str) -> Value {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let config = env.stack.config(&env.ghl_url, &env.sprout_url, LOC, &[]);
    let deps = shared::deps::Deps::new(config).await.unwrap();
    let app = intake::router(intake::AppState {
        secrets: deps.secrets.clone(),
        queue: Arc::new(deps.queue.clone()),
        mapping: deps.config.mapping.clone(),
        ghl: deps.ghl.clone(),
        sprout: deps.sprout.clone(),
        conflicts: intake::view::ConflictReader::new(w.store.clone()),
        ghl_webhooks: intake::GhlWebhooks::new(
            intake::ghl_webhook::WebhookKeys::from_lookup(|_| None).expect("the default keys load"),
            w.store.clone(),
        ),
    });
    let req = axum::http::Request::get(format!("/v1/contacts/{e}"))
        .header("authorization", "Bearer rk")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

/// No request the worker sent carried Bob's phone in a body.
async fn no_write_carried(env: &Env, phone: &str) {
    for r in env.ghl.requests().await {
        assert!(!r.body.to_string().contains(phone), "{} {} sent the phone: {}", r.method, r.path, r.body);
    }
}

#[tokio::test]
async fn eve_with_bobs_phone_is_written_without_it_and_bob_is_untouched() {
    let env = Env::new("eve", GhlBehaviour::default(), None).await;
    let w = env.worker().await;
    let (bob_id, bob_before) = seed_bob(&env).await;

    let out = w.process_batch(vec![msg("e", &upsert_with_phone("e1", "eve@example.com", "Eve", BOB_PHONE))]).await;
    assert_eq!((out.applied, out.parked, out.failed.len()), (1, 0, 0), "{out:?}");
    assert_eq!(out.identity_conflicts, 1);
    let line = w.emf_line(&shared::tenants::TenantId::default(), &out, true);
    assert!(!w.emf_line(&shared::tenants::TenantId::default(), &out, false).contains("GhlCalls"));
    assert!(line.contains("\"IdentityConflicts\":1") && line.contains("\"Tenant\":\"default\""), "{line}");

    assert_eq!(bob_record(&env, &bob_id).await, bob_before, "Bob's record is byte-for-byte unchanged");
    let eve = env.contact("eve@example.com").await;
    assert_ne!(eve["id"], bob_id.as_str());
    assert_eq!(eve["firstName"], "Eve");
    assert!(eve.get("phone").is_none_or(Value::is_null), "Eve has no phone: {eve}");
    no_write_carried(&env, BOB_PHONE).await;

    let conflict = conflict_of(&w, "eve@example.com").await;
    assert_eq!(conflict["field"], "phone");
    assert_eq!(conflict["other_contact_id"], bob_id.as_str());
    assert_eq!(conflict["contact_id"], eve["id"]);
    assert_eq!(conflict["parked"], false);
    assert!(!conflict.to_string().contains("5552671"), "the record keeps only the last digits: {conflict}");
    assert!(conflict["at"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()));
    // The one-view shows it next to Eve's contact.
    let view = one_view(&env, &w, "eve@example.com").await;
    assert_eq!(view["contact"]["id"], eve["id"]);
    assert_eq!(view["sync"]["identity_conflict"], conflict, "{view}");

    // A repair (the reconciler's forced upsert) checks again and still leaves Bob alone.
    let mut d = DesiredContact::new(email("eve@example.com"));
    d.first_name = Some("Eve".into());
    d.phone = Some(Phone::parse(BOB_PHONE, "US").unwrap());
    let repair = SyncCommand::new("e2", "repair_contact", Utc::now(), CommandBody::RepairContact { contact: d });
    let out = w.process_batch(vec![msg("r", &repair)]).await;
    assert_eq!((out.applied, out.identity_conflicts), (1, 1), "{out:?}");
    assert_eq!(bob_record(&env, &bob_id).await, bob_before);
}

#[tokio::test]
async fn a_note_for_a_new_person_with_bobs_phone_creates_her_without_it() {
    let env = Env::new("evenote", GhlBehaviour::default(), None).await;
    let w = env.worker().await;
    let (bob_id, bob_before) = seed_bob(&env).await;
    let eve = Identity { email: email("eve@example.com"), phone: Some(Phone::parse(BOB_PHONE, "US").unwrap()) };
    let n = SyncCommand::new("e1", "add_note", Utc::now(), CommandBody::AddNote { identity: eve, body: "Hi".into() });
    let out = w.process_batch(vec![msg("n", &n)]).await;
    assert_eq!((out.applied, out.parked, out.identity_conflicts), (1, 0, 1), "{out:?}");
    assert_eq!(bob_record(&env, &bob_id).await, bob_before, "no note and no field landed on Bob");
    let eve = env.contact("eve@example.com").await;
    assert!(eve.get("phone").is_none_or(Value::is_null), "{eve}");
    assert_eq!(eve["notes"].as_array().unwrap().len(), 1);
    no_write_carried(&env, BOB_PHONE).await;
    assert_eq!(conflict_of(&w, "eve@example.com").await["other_contact_id"], bob_id.as_str());
}

#[tokio::test]
async fn an_email_and_phone_of_two_different_contacts_are_parked_when_the_mapping_says_so() {
    let env = Env::new("conflict", GhlBehaviour::default(), None).await;
    let mapping = std::env::temp_dir().join(format!("mapping-park-{}.toml", sync_tests::local_ghl::new_id()));
    let text = shared::mapping::DEFAULT_MAPPING
        .replace("on_phone_conflict = \"write_without_phone\"", "on_phone_conflict = \"park\"");
    assert!(text.contains("\"park\""));
    std::fs::write(&mapping, text).unwrap();
    let w = env.worker_with(&[("SYNC_MAPPING_FILE", mapping.to_str().unwrap())]).await;
    // Two people already in GHL: one with the email, another with the phone.
    w.process_batch(vec![
        msg("a", &upsert("e1", "mail.owner@example.com", None)),
        msg("b", &upsert_with_phone("e2", "phone.owner@example.com", "Phil", BOB_PHONE)),
    ])
    .await;
    let owner_before = env.contact("phone.owner@example.com").await.to_string();
    let mail_before = env.contact("mail.owner@example.com").await.to_string();
    let c = upsert_with_phone("e3", "mail.owner@example.com", "Mel", BOB_PHONE);
    let out = w.process_batch(vec![msg("c", &c)]).await;
    assert_eq!((out.parked, out.identity_conflicts), (1, 1), "{out:?}");
    let parked = env.stack.receive(&env.stack.dlq_url, 10, 30).await.unwrap();
    let reason = parked[0].message_attributes.as_ref().unwrap()["reason"].string_value().unwrap().to_string();
    assert!(reason.contains("identity conflict"), "{reason}");
    assert!(!reason.contains("5552671"), "the reason does not carry the phone: {reason}");
    assert_eq!(env.contact("mail.owner@example.com").await.to_string(), mail_before, "nothing written");
    assert_eq!(env.contact("phone.owner@example.com").await.to_string(), owner_before);
    assert_eq!(conflict_of(&w, "mail.owner@example.com").await["parked"], true);
}

#[tokio::test]
async fn a_contact_deleted_in_ghl_between_two_notes_gets_the_second_note_on_the_new_contact() {
    let env = Env::new("gone", GhlBehaviour::default(), None).await;
    let w = env.worker().await;
    w.process_batch(vec![msg("u", &upsert("e0", "ada@example.com", Some("Ada")))]).await;
    let first = w.process_batch(vec![msg("n1", &note("e1", "ada@example.com", "first"))]).await;
    assert_eq!(first.applied, 1);
    let old_id = env.contact("ada@example.com").await["id"].as_str().unwrap().to_string();
    // Someone deletes (or merges away) the contact in GHL.
    assert!(w.ghl.delete_contact(&old_id).await.unwrap());

    let second = w.process_batch(vec![msg("n2", &note("e2", "ada@example.com", "second"))]).await;
    assert_eq!((second.applied, second.parked, second.failed.len()), (1, 0, 0), "{second:?}");
    let ada = env.contact("ada@example.com").await;
    assert_ne!(ada["id"], old_id.as_str(), "a new contact for the same person");
    let notes = ada["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 1);
    assert!(notes[0]["body"].as_str().unwrap().starts_with("second"));
    let person = w.store.person(&email("ada@example.com")).await.unwrap().unwrap();
    assert_eq!(person.contact_id, ada["id"].as_str().unwrap(), "the recorded id healed");
    assert_eq!(ada["firstName"], "Ada", "what the sync wrote before went onto the new contact");
    let tags: Vec<&str> = ada["tags"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(tags.contains(&"sproutvideo"), "her tags are back: {tags:?}");

    // The next upsert of her state finds everything in place.
    let again = w.process_batch(vec![msg("u2", &upsert("e3", "ada@example.com", Some("Ada")))]).await;
    assert_eq!((again.applied, again.unchanged), (0, 1), "{again:?}");
}

#[tokio::test]
async fn an_upsert_onto_a_contact_that_replaced_the_recorded_one_carries_every_known_field() {
    let env = Env::new("replaced", GhlBehaviour::default(), None).await;
    let w = env.worker().await;
    let mut d = DesiredContact::new(email("rita@example.com"));
    d.first_name = Some("Rita".into());
    d.company_name = Some("Old Co".into());
    let c = SyncCommand::new("r1", "upsert_contact", Utc::now(), CommandBody::UpsertContact { contact: d });
    w.process_batch(vec![msg("a", &c)]).await;
    let old_id = env.contact("rita@example.com").await["id"].as_str().unwrap().to_string();
    assert!(w.ghl.delete_contact(&old_id).await.unwrap());

    // Only the company changes; the first name is known and unchanged.
    let mut d = DesiredContact::new(email("rita@example.com"));
    d.first_name = Some("Rita".into());
    d.company_name = Some("New Co".into());
    let c = SyncCommand::new("r2", "upsert_contact", Utc::now(), CommandBody::UpsertContact { contact: d });
    let out = w.process_batch(vec![msg("b", &c)]).await;
    assert_eq!((out.applied, out.failed.len()), (1, 0), "{out:?}");
    let rita = env.contact("rita@example.com").await;
    assert_ne!(rita["id"], old_id.as_str());
    assert_eq!((rita["firstName"].as_str(), rita["companyName"].as_str()), (Some("Rita"), Some("New Co")), "{rita}");
}

#[tokio::test]
async fn a_note_create_answered_with_an_unreadable_body_makes_one_note_after_redelivery() {
    let env = Env::new("garbage", GhlBehaviour::default(), None).await;
    let w = env.worker().await;
    w.process_batch(vec![msg("u", &upsert("e1", "garb@example.com", None))]).await;
    env.ghl
        .push_fault(ScriptedFault {
            kind: FaultKind::WriteThenGarbage,
            method: Some("POST".into()),
            path_contains: Some("/notes".into()),
        })
        .await;
    let n = note("e1", "garb@example.com", "Hello");
    let first = w.process_batch(vec![msg("n", &n)]).await;
    assert_eq!((first.failed.len(), first.parked), (1, 0), "retried, not parked: {first:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = w.process_batch(vec![msg("n", &n)]).await;
    assert_eq!((second.failed.len(), second.unchanged), (0, 1), "{second:?}");
    assert_eq!(env.contact("garb@example.com").await["notes"].as_array().unwrap().len(), 1);
    let posts = env.ghl.requests().await.iter().filter(|r| r.method == "POST" && r.path.ends_with("/notes")).count();
    assert_eq!(posts, 1, "the redelivery found the note instead of writing another");
}

#[tokio::test]
async fn a_refused_note_create_releases_its_claim_and_is_written_on_redrive() {
    let env = Env::new("refused", GhlBehaviour::default(), None).await;
    let w = env.worker().await;
    w.process_batch(vec![msg("u", &upsert("e1", "ref@example.com", None))]).await;
    env.ghl
        .push_fault(ScriptedFault {
            kind: FaultKind::Status { status: 401 },
            method: Some("POST".into()),
            path_contains: Some("/notes".into()),
        })
        .await;
    let n = note("e1", "ref@example.com", "Hello");
    let first = w.process_batch(vec![msg("n", &n)]).await;
    assert_eq!(first.parked, 1, "a refused credential is parked: {first:?}");
    env.ghl.clear_requests().await;
    // The redrive writes at once: nothing could have landed, so there is nothing to look for.
    let redrive = w.process_batch(vec![msg("n", &n)]).await;
    assert_eq!(redrive.applied, 1, "{redrive:?}");
    let paths: Vec<String> = env.ghl.requests().await.iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert!(paths.iter().all(|p| !p.starts_with("GET")), "no look before the write: {paths:?}");
    assert_eq!(env.contact("ref@example.com").await["notes"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_batch_with_poison_a_422_and_a_429_reports_and_parks_the_right_ones() {
    let env = Env::new("mixed", GhlBehaviour::default(), None).await;
    let w = env.worker().await;
    w.process_batch(vec![
        msg("s1", &upsert("e0", "one@example.com", None)),
        msg("s2", &upsert("e0", "two@example.com", None)),
    ])
    .await;
    env.ghl
        .push_fault(ScriptedFault {
            kind: FaultKind::Status { status: 422 },
            method: Some("POST".into()),
            path_contains: Some("/contacts/upsert".into()),
        })
        .await;
    for _ in 0..5 {
        env.ghl
            .push_fault(ScriptedFault {
                kind: FaultKind::RateLimit { retry_after_secs: Some(0) },
                method: Some("POST".into()),
                path_contains: Some("/notes".into()),
            })
            .await;
    }
    let poison = QueueMessage {
        id: "poison".into(),
        body: "{\"v\":1,\"kind\":\"nonsense\"}".into(),
        receipt_handle: None,
        group_id: Some("x@example.com".into()),
        receive_count: 1,
    };
    let bad = upsert("e1", "three@example.com", Some("Three"));
    let limited = note("e2", "two@example.com", "Hi");
    let out = w.process_batch(vec![poison, msg("m422", &bad), msg("m429", &limited)]).await;
    assert_eq!(out.failed, vec!["m429".to_string()], "{out:?}");
    assert_eq!(out.parked, 2);
    let parked = env.stack.receive(&env.stack.dlq_url, 10, 30).await.unwrap();
    assert_eq!(parked.len(), 2);
    let reasons: Vec<String> = parked
        .iter()
        .map(|m| m.message_attributes.as_ref().unwrap()["reason"].string_value().unwrap().to_string())
        .collect();
    assert!(reasons.iter().any(|r| r.contains("undecodable")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("422")), "{reasons:?}");
    assert!(
        parked.iter().any(|m| m.message_attributes.as_ref().unwrap().contains_key("ghl_trace_id")),
        "the 422's traceId travels with it"
    );
    let later = w.process_batch(vec![msg("m429", &limited)]).await;
    assert!(later.failed.is_empty());
    assert_eq!(env.contact("two@example.com").await["notes"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_failed_message_holds_back_the_rest_of_its_group() {
    let env = Env::new("fifo", GhlBehaviour::default(), None).await;
    let w = env.worker().await;
    w.process_batch(vec![msg("u", &upsert("e0", "order@example.com", None))]).await;
    for _ in 0..5 {
        env.ghl
            .push_fault(ScriptedFault {
                kind: FaultKind::Status { status: 503 },
                method: Some("POST".into()),
                path_contains: Some("/notes".into()),
            })
            .await;
    }
    env.ghl.clear_requests().await;
    let first = note("e1", "order@example.com", "first");
    let second = SyncCommand::new(
        "e2",
        "add_tags",
        Utc::now(),
        CommandBody::AddTags { identity: identity("order@example.com"), tags: vec!["later".into()] },
    );
    let other = upsert("e3", "someone.else@example.com", None);
    let out = w.process_batch(vec![msg("1", &first), msg("2", &second), msg("3", &other)]).await;
    assert_eq!(out.failed, vec!["1".to_string(), "2".to_string()]);
    assert_eq!(out.applied, 1, "other groups go on");
    let order_id = env.contact("order@example.com").await["id"].as_str().unwrap().to_string();
    assert!(
        !env.ghl.requests().await.iter().any(|r| r.path == format!("/contacts/{order_id}/tags")),
        "the later command of the failed group was not applied out of order"
    );
}

#[tokio::test]
async fn a_401_after_a_rotation_recovers_by_rereading_the_secret() {
    let env = Env::new(
        "rotate",
        GhlBehaviour { valid_tokens: vec!["old-token".into()], ..Default::default() },
        Some(secret_json("wt", &["sig"], "rk", "old-token", None)),
    )
    .await;
    let w = env.worker().await;
    w.process_batch(vec![msg("a", &upsert("e1", "rot@example.com", None))]).await;
    // The token is rotated: GHL accepts only the new one, the secret holds it, the cache does not.
    env.ghl.set_behaviour(GhlBehaviour { valid_tokens: vec!["new-token".into()], ..Default::default() }).await;
    env.stack.put_secret(&secret_json("wt", &["sig"], "rk", "new-token", None)).await.unwrap();
    let out = w.process_batch(vec![msg("b", &note("e2", "rot@example.com", "after rotation"))]).await;
    assert!(out.failed.is_empty() && out.parked == 0, "{out:?}");
    let statuses: Vec<u16> = env.ghl.requests().await.iter().map(|r| r.status).collect();
    assert!(statuses.contains(&401) && statuses.ends_with(&[201]), "{statuses:?}");
}

#[tokio::test]
async fn an_oauth_token_near_expiry_is_refreshed_once_for_many_callers() {
    // The token URL is the local GHL's; it is known only once it listens, so the secret is put after.
    let env = Env::new(
        "oauth",
        GhlBehaviour { valid_tokens: vec!["unused".into()], ..Default::default() },
        Some(secret_json("wt", &["sig"], "rk", "placeholder", None)),
    )
    .await;
    let secret = json!({
        "webhook_token": "wt", "signing_secrets": ["sig"], "read_api_key": "rk",
        "ghl_oauth": {
            "access_token": "at-old", "refresh_token": "rt-first",
            "expires_at": Utc::now().timestamp() + 30,
            "client_id": "cid", "client_secret": "csecret",
            "token_url": format!("{}oauth/token", env.ghl_url)
        }
    });
    env.stack.put_secret(&secret.to_string()).await.unwrap();
    let w = env.worker_with(&[("WORKER_BATCH_CONCURRENCY", "8")]).await;
    let batch: Vec<_> =
        (0..8).map(|i| msg(&format!("m{i}"), &upsert(&format!("e{i}"), &format!("p{i}@example.com"), None))).collect();
    let out = w.process_batch(batch).await;
    assert_eq!(out.applied, 8, "{out:?}");
    assert_eq!(env.ghl.oauth_refreshes().await, 1, "single flight");
    let stored = env.stack.sm.get_secret_value().secret_id(&env.stack.names.secret).send().await.unwrap();
    let v: Value = serde_json::from_str(stored.secret_string().unwrap()).unwrap();
    assert_ne!(v["ghl_oauth"]["refresh_token"], "rt-first", "the rotated refresh token was stored");
    assert!(v["ghl_oauth"]["expires_at"].as_i64().unwrap() > Utc::now().timestamp() + 3600);
}

#[tokio::test]
async fn workers_sharing_the_budget_never_trip_the_window() {
    // GHL's window, time-scaled: 40 requests per 2 s, shared by 3 workers.
    let env =
        Env::new("pace", GhlBehaviour { burst_max: 40, burst_interval_ms: 2000, ..Default::default() }, None).await;
    // 120 calls take three windows (6 s); a call may wait its turn longer than the suite's usual
    // 3 s retry deadline when the machine is loaded, so this run's deadline covers the whole run.
    let extra = [("GHL_BURST_MAX", "40"), ("GHL_BURST_INTERVAL_MS", "2000"), ("GHL_RETRY_DEADLINE_MS", "20000")];
    let workers = [env.worker_with(&extra).await, env.worker_with(&extra).await, env.worker_with(&extra).await];
    let started = std::time::Instant::now();
    let runs = workers.iter().enumerate().map(|(k, w)| {
        let w = w.clone();
        async move {
            for b in 0..2 {
                let batch: Vec<_> = (0..10)
                    .map(|i| {
                        let e = format!("w{k}b{b}i{i}@example.com");
                        msg(&e.clone(), &upsert(&e, &e, None))
                    })
                    .collect();
                let out = w.process_batch(batch).await;
                assert!(out.failed.is_empty(), "{out:?}");
            }
        }
    });
    futures::future::join_all(runs).await;
    let log = env.ghl.requests().await;
    assert_eq!(log.iter().filter(|r| r.status == 429).count(), 0, "no 429 in a steady run");
    assert_eq!(log.len(), 120, "an upsert and a tags call per new person");
    assert!(started.elapsed() >= Duration::from_secs(4), "120 calls at 40 per 2 s span at least three windows");
}

#[tokio::test]
async fn a_video_change_pulls_new_sessions_into_the_queue() {
    let env = Env::new("video", GhlBehaviour::default(), None).await;
    let vid = env
        .sprout
        .add_video(VideoSeed {
            title: "Pricing walkthrough".into(),
            duration: Some(200.0),
            require_email: true,
            ..Default::default()
        })
        .await;
    for (e, secs) in [(Some("lead.one@example.com"), 190.0), (Some("lead.two@example.com"), 20.0), (None, 100.0)] {
        env.sprout
            .add_session(SessionSeed {
                video_id: vid.clone(),
                vemail: e.map(str::to_string),
                seconds_watched: Some(secs),
                ..Default::default()
            })
            .await;
    }
    let w = env.worker().await;
    let c =
        SyncCommand::new("hook-1", "video_changed", Utc::now(), CommandBody::VideoChanged { video_id: vid.clone() });
    let out = w.process_batch(vec![msg("v", &c)]).await;
    assert_eq!(out.applied, 1, "{out:?}");
    // lead.one passed the 75% rule: upsert, note, task; lead.two: upsert only.
    let queued = env.stack.receive(&env.stack.queue_url, 20, 30).await.unwrap();
    assert_eq!(queued.len(), 4, "{queued:?}");
    let batch: Vec<QueueMessage> = queued
        .iter()
        .map(|m| QueueMessage {
            id: m.message_id.clone().unwrap(),
            body: m.body.clone().unwrap(),
            receipt_handle: None,
            group_id: None,
            receive_count: 1,
        })
        .collect();
    let applied = w.process_batch(batch).await;
    assert_eq!(applied.applied, 4, "{applied:?}");
    let one = env.contact("lead.one@example.com").await;
    assert!(one["tags"].as_array().unwrap().iter().any(|t| t == "sv-completed:pricing walkthrough"));
    assert_eq!(one["notes"].as_array().unwrap().len(), 1);
    assert_eq!(one["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(env.contact("lead.two@example.com").await["notes"].as_array().unwrap().len(), 0);
}
