//! The reconciler against moto and the local SproutVideo and GHL, with the worker applying what
//! it queues.

use std::sync::Arc;

use shared::state::StateStore;

use reconciler::reconcile::{ReconcileError, ReconcileInput, Report};
use serde_json::{Value, json};
use sync_tests::aws::{Stack, StackNames, StackSettings, require_emulator, secret_json};
use sync_tests::local_ghl::{GhlBehaviour, LocalGhl};
use sync_tests::local_sprout::{LocalSprout, SessionSeed, SproutBehaviour, VideoSeed};
use worker::{QueueMessage, Worker};

const LOC: &str = "locReconcileTest0001";

const MAPPING: &str = r#"
source = "SproutVideo"
default_region = "US"
sync_tag = "sproutvideo"
[tags]
login = "sv-login"
lead = "sv-lead"
watched = "sv-watched:{video_title}"
completed = "sv-completed:{video_title}"
completed_percent = 90.0
[custom_fields]
"contact.sv_last_video" = "{video_title}"
[[rules]]
name = "hot"
min_percent = 75.0
note = "Watched {percent}% of '{video_title}' on {date}"
[rules.task]
title = "Call about {video_title}"
due_in_hours = 24
"#;

struct Env {
    ghl: LocalGhl,
    sprout: LocalSprout,
    stack: Stack,
    worker: Arc<Worker>,
    reconciler: reconciler::reconcile::Reconciler,
    /// Expected people and how many rule hits each has.
    people: Vec<(String, usize)>,
}

/// Seeds `n` people on two videos (sessions on several pages, some anonymous), and logins.
async fn env(tag: &str, n: usize) -> Env {
    require_emulator();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .try_init();
    let ghl = LocalGhl::new(GhlBehaviour { burst_max: 100_000, ..Default::default() });
    let ghl_url = format!("http://{}/", ghl.spawn("127.0.0.1:0").await.unwrap());
    ghl.define_custom_field(LOC, "Last video", "contact.sv_last_video", "TEXT").await;
    let sprout = LocalSprout::new(SproutBehaviour::default());
    let sprout_url = format!("http://{}/v1", sprout.spawn("127.0.0.1:0").await.unwrap());
    let a = sprout
        .add_video(VideoSeed {
            title: "Pricing".into(),
            duration: Some(200.0),
            require_email: true,
            ..Default::default()
        })
        .await;
    let b = sprout
        .add_video(VideoSeed {
            title: "Welcome".into(),
            duration: Some(100.0),
            require_email: true,
            ..Default::default()
        })
        .await;
    let mut people = Vec::new();
    for i in 0..n {
        let email = format!("person{i:04}@example.com");
        let secs_a = ((i * 37) % 200) as f64;
        sprout
            .add_session(SessionSeed {
                video_id: a.clone(),
                vemail: Some(email.clone()),
                seconds_watched: Some(secs_a),
                ..Default::default()
            })
            .await;
        let mut hits = usize::from(secs_a / 200.0 * 100.0 >= 75.0);
        if i % 3 == 0 {
            let secs_b = ((i * 13) % 100) as f64;
            sprout
                .add_session(SessionSeed {
                    video_id: b.clone(),
                    vemail: Some(email.clone()),
                    seconds_watched: Some(secs_b),
                    ..Default::default()
                })
                .await;
            hits += usize::from(secs_b >= 75.0);
        }
        if i % 10 == 0 {
            sprout
                .add_session(SessionSeed {
                    video_id: a.clone(),
                    vemail: None,
                    seconds_watched: Some(5.0),
                    ..Default::default()
                })
                .await;
        }
        people.push((email, hits));
    }
    for l in 0..3 {
        let email = format!("member{l}@example.com");
        sprout.add_login(&email).await;
        people.push((email, 0));
    }
    let stack = Stack::create(
        StackNames::unique(tag),
        StackSettings { visibility_timeout_secs: 30, max_receive_count: 5 },
        Some(&secret_json("wt", &["sig"], "rk", "pit-recon", Some("sv-key"))),
    )
    .await
    .unwrap();
    let mapping_path = std::env::temp_dir().join(format!("{}-mapping.toml", stack.names.table));
    std::fs::write(&mapping_path, MAPPING).unwrap();
    let extra = [("SYNC_MAPPING_FILE", mapping_path.to_str().unwrap()), ("GHL_BURST_MAX", "100000")];
    let config = stack.config(&ghl_url, &sprout_url, LOC, &extra);
    let worker = worker::build(config.clone()).await.unwrap().0;
    let mut reconciler = reconciler::build(config).await.unwrap().0;
    // Smaller GHL search pages, so page counts show with a few hundred people.
    reconciler.search_page_size = 100;
    Env { ghl, sprout, stack, worker, reconciler, people }
}

impl Env {
    async fn run(&self, input: ReconcileInput) -> Report {
        self.reconciler.run(input, None, &|_| {}).await.unwrap()
    }

    /// Applies everything queued, as the event-source mapping would.
    async fn drain(&self) -> usize {
        let mut total = 0;
        loop {
            let msgs = self.stack.receive(&self.stack.queue_url, 10, 60).await.unwrap();
            if msgs.is_empty() {
                return total;
            }
            let batch: Vec<QueueMessage> = msgs
                .iter()
                .map(|m| QueueMessage {
                    id: m.message_id.clone().unwrap(),
                    body: m.body.clone().unwrap(),
                    receipt_handle: None,
                    group_id: None,
                    receive_count: 1,
                })
                .collect();
            let out = self.worker.process_batch(batch).await;
            assert!(out.failed.is_empty() && out.parked == 0, "{out:?}");
            let entries = msgs
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                        .id(format!("d{i}"))
                        .receipt_handle(m.receipt_handle.clone().unwrap())
                        .build()
                        .unwrap()
                })
                .collect();
            self.stack
                .sqs
                .delete_message_batch()
                .queue_url(&self.stack.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .unwrap();
            total += msgs.len();
        }
    }

    /// What the first run of this seed queues: one upsert per person and a note and a task per hit.
    fn stack_commands_expected(&self) -> usize {
        let hits: usize = self.people.iter().map(|(_, h)| h).sum();
        self.people.len() + 2 * hits
    }

    async fn contacts(&self) -> Vec<Value> {
        self.ghl.state().await["locations"][LOC]["contacts"].as_array().cloned().unwrap_or_default()
    }
}

#[tokio::test]
async fn a_seeded_account_reconciles_exactly_and_a_second_run_queues_nothing() {
    let e = env("exact", 130).await;
    let r = e.run(ReconcileInput::default()).await;
    assert!(r.complete);
    assert_eq!(r.people_seen as usize, e.people.len());
    assert_eq!(r.to_create as usize, e.people.len());
    let hits: usize = e.people.iter().map(|(_, h)| h).sum();
    assert!(hits > 10, "the seed has rule hits");
    assert_eq!(r.actions_pending as usize, 2 * hits, "a note and a task per hit");
    e.drain().await;

    let contacts = e.contacts().await;
    assert_eq!(contacts.len(), e.people.len(), "every person exactly once");
    for (email, h) in &e.people {
        let matching: Vec<&Value> = contacts.iter().filter(|c| c["email"] == email.as_str()).collect();
        assert_eq!(matching.len(), 1, "{email}");
        let c = matching[0];
        let tags: Vec<&str> = c["tags"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(tags.contains(&"sproutvideo"), "{email}: {tags:?}");
        let origin = if email.starts_with("member") { "sv-login" } else { "sv-lead" };
        assert!(tags.contains(&origin), "{email}: {tags:?}");
        assert_eq!(c["notes"].as_array().unwrap().len(), *h, "{email} notes");
        assert_eq!(c["tasks"].as_array().unwrap().len(), *h, "{email} tasks");
    }
    let lead = contacts.iter().find(|c| c["email"] == "person0001@example.com").unwrap();
    assert_eq!(lead["customFields"].as_array().unwrap().len(), 1, "last video custom field set");

    let again = e.run(ReconcileInput::default()).await;
    assert_eq!(again.commands_queued, 0, "{again:?}");
    assert_eq!(again.in_sync as usize, e.people.len());
    assert_eq!(e.stack.depth(&e.stack.queue_url).await.unwrap(), 0);
}

#[tokio::test]
async fn drift_made_by_hand_is_found_and_fixed_and_nothing_else_is_touched() {
    let e = env("drift", 40).await;
    e.run(ReconcileInput::default()).await;
    e.drain().await;
    let contacts = e.contacts().await;
    let one = contacts.iter().find(|c| c["email"] == "person0002@example.com").unwrap();
    let two = contacts.iter().find(|c| c["email"] == "person0005@example.com").unwrap();
    let (one_id, two_id) = (one["id"].as_str().unwrap().to_string(), two["id"].as_str().unwrap().to_string());
    // By hand: a changed custom field on one, a removed tag on the other.
    let field_id = one["customFields"][0]["id"].as_str().unwrap().to_string();
    assert!(e.ghl.edit_contact(&one_id, json!({"customFields": [{"id": field_id, "value": "Something else"}]})).await);
    let kept: Vec<Value> = two["tags"].as_array().unwrap().iter().filter(|t| *t != "sv-lead").cloned().collect();
    assert!(e.ghl.edit_contact(&two_id, json!({"tags": kept})).await);

    let r = e.run(ReconcileInput::default()).await;
    assert_eq!(r.to_update, 2, "{:?}", r.plan);
    assert_eq!(r.to_create, 0);
    e.ghl.clear_requests().await;
    e.drain().await;
    let writes: Vec<_> = e.ghl.requests().await.into_iter().filter(|x| x.method != "GET").collect();
    assert!(!writes.is_empty());
    for w in &writes {
        let about_them = w.path.contains(&one_id)
            || w.path.contains(&two_id)
            || (w.path == "/contacts/upsert"
                && ["person0002@example.com", "person0005@example.com"]
                    .contains(&w.body["email"].as_str().unwrap_or("")));
        assert!(about_them, "touched something else: {} {} {}", w.method, w.path, w.body);
    }
    let after = e.contacts().await;
    let one = after.iter().find(|c| c["id"] == one_id.as_str()).unwrap();
    assert_eq!(one["customFields"][0]["value"], "Pricing");
    let two = after.iter().find(|c| c["id"] == two_id.as_str()).unwrap();
    assert!(two["tags"].as_array().unwrap().iter().any(|t| t == "sv-lead"));
    assert_eq!(e.run(ReconcileInput::default()).await.commands_queued, 0);
}

#[tokio::test]
async fn a_dry_run_reports_the_same_plan_and_writes_nothing() {
    let e = env("dry", 30).await;
    let dry = e.run(ReconcileInput { dry_run: true, ..Default::default() }).await;
    assert!(dry.dry_run && dry.complete);
    assert!(!dry.plan.is_empty());
    assert!(dry.plan.iter().any(|l| l.action == "create" && l.reason == "not in GHL"));
    assert_eq!(dry.commands_queued, 0);
    assert_eq!(e.stack.depth(&e.stack.queue_url).await.unwrap(), 0, "nothing queued");
    assert!(e.ghl.requests().await.iter().all(|r| r.method == "GET" || r.path == "/contacts/search"), "no GHL writes");
    assert!(e.contacts().await.is_empty());
    let real = e.run(ReconcileInput::default()).await;
    assert_eq!(
        (real.to_create, real.to_update, real.actions_pending),
        (dry.to_create, dry.to_update, dry.actions_pending)
    );
    assert_eq!(real.plan, dry.plan, "the same plan");
}

#[tokio::test]
async fn an_interrupted_run_resumes_from_its_checkpoint_without_repeating_work() {
    let e = env("resume", 230).await;
    let first = e.run(ReconcileInput { max_steps: Some(3), ..Default::default() }).await;
    assert!(!first.complete);
    let mut last = first.clone();
    let mut invocations = 1;
    while !last.complete {
        last = e.run(ReconcileInput { max_steps: Some(2), ..Default::default() }).await;
        invocations += 1;
        assert!(invocations < 50);
    }
    assert!(invocations > 2, "the run really was split");
    // 1 page of videos, 1 of logins, and the session pages: each read exactly once.
    let session_pages =
        e.sprout.requests().await.iter().filter(|r| r.path.ends_with("/stats/engagement/sessions")).count();
    let sessions = 230 + 230usize.div_ceil(3) + 23;
    assert_eq!(session_pages, sessions.div_ceil(100));
    assert_eq!(last.sproutvideo_calls as usize, 2 + session_pages, "no SproutVideo page read twice");
    assert_eq!(last.people_seen as usize, e.people.len());
    let queued = e.drain().await;
    let hits: usize = e.people.iter().map(|(_, h)| h).sum();
    assert_eq!(queued, e.people.len() + 2 * hits, "every command queued once");
    assert_eq!(e.contacts().await.len(), e.people.len());
}

#[tokio::test]
async fn ghl_calls_grow_with_pages_and_changes_not_with_people() {
    let e = env("cost", 250).await;
    e.run(ReconcileInput::default()).await;
    e.drain().await;
    // In sync: the reconciler reads GHL in pages (of 100 here) and makes no per-person call.
    let n = e.people.len();
    let pages = n.div_ceil(100);
    assert!(pages >= 3);
    e.ghl.clear_requests().await;
    let steady = e.run(ReconcileInput::default()).await;
    assert_eq!(steady.commands_queued, 0);
    let calls = e.ghl.requests().await.len();
    assert!(calls <= pages + 1, "{calls} calls for {n} people in sync");
    assert_eq!(steady.ghl_calls as usize, calls);

    // k changes: the reconciler still reads in pages; applying them costs about k.
    let k = 5;
    let contacts = e.contacts().await;
    for c in contacts.iter().filter(|c| c["email"].as_str().unwrap().starts_with("person")).take(k) {
        let kept: Vec<Value> = c["tags"].as_array().unwrap().iter().filter(|t| *t != "sv-lead").cloned().collect();
        e.ghl.edit_contact(c["id"].as_str().unwrap(), json!({"tags": kept})).await;
    }
    e.ghl.clear_requests().await;
    let drifted = e.run(ReconcileInput::default()).await;
    assert_eq!(drifted.to_update as usize, k);
    e.drain().await;
    let total = e.ghl.requests().await.len();
    assert!(total <= pages + 1 + 2 * k, "{total} calls for {n} people with {k} changes");
}

#[tokio::test]
async fn a_dry_run_during_an_unfinished_run_queues_nothing_and_leaves_its_checkpoint() {
    let e = env("dry-during", 230).await;
    let first = e.run(ReconcileInput { max_steps: Some(2), ..Default::default() }).await;
    assert!(!first.complete, "the real run stopped part way");
    let store = store_of(&e);
    let checkpoint = store.get_value("reconcile#checkpoint").await.unwrap().expect("a checkpoint");
    let depth = e.stack.depth(&e.stack.queue_url).await.unwrap();

    let dry = e.run(ReconcileInput { dry_run: true, ..Default::default() }).await;
    assert!(dry.dry_run && dry.complete, "{dry:?}");
    assert_ne!(dry.run_id, first.run_id, "the dry run is a run of its own");
    assert_eq!(dry.commands_queued, 0);
    assert_eq!(e.stack.depth(&e.stack.queue_url).await.unwrap(), depth, "the dry run queued nothing");
    assert_eq!(store.get_value("reconcile#checkpoint").await.unwrap().as_deref(), Some(checkpoint.as_str()));

    let mut last = e.run(ReconcileInput::default()).await;
    assert_eq!(last.run_id, first.run_id, "the real run continues where it stopped");
    while !last.complete {
        last = e.run(ReconcileInput::default()).await;
    }
    assert_eq!(last.people_seen as usize, e.people.len());
}

#[tokio::test]
async fn two_invocations_at_once_do_not_both_work() {
    let e = env("lease", 60).await;
    let (a, b) = tokio::join!(
        e.reconciler.run(ReconcileInput::default(), None, &|_| {}),
        e.reconciler.run(ReconcileInput::default(), None, &|_| {})
    );
    let (ok, busy): (Vec<_>, Vec<_>) = [a, b].into_iter().partition(|r| r.is_ok());
    assert_eq!(ok.len(), 1, "exactly one invocation ran");
    assert!(matches!(busy[0], Err(reconciler::reconcile::ReconcileError::Busy)), "{:?}", busy[0]);
    assert_eq!(e.drain().await, e.stack_commands_expected(), "every command queued once");
    // The lease is released: the next run works.
    assert!(e.reconciler.run(ReconcileInput::default(), None, &|_| {}).await.is_ok());
}

#[tokio::test]
async fn a_login_missing_once_untags_nothing_and_missing_a_day_later_is_untagged_not_deleted() {
    let e = env("orphans", 10).await;
    e.run(ReconcileInput::default()).await;
    e.drain().await;
    let gone = "member1@example.com";
    let id = e.contacts().await.iter().find(|c| c["email"] == gone).unwrap()["id"].as_str().unwrap().to_string();
    assert!(e.sprout.remove_login(gone).await);

    let once = e.run(ReconcileInput::default()).await;
    assert_eq!((once.orphans, once.orphans_pending, once.orphans_untagged), (1, 1, 0), "{once:?}");
    let tags = |c: &Value| {
        c["tags"].as_array().unwrap().iter().filter_map(Value::as_str).map(str::to_string).collect::<Vec<_>>()
    };
    let contact = e.contacts().await.into_iter().find(|c| c["id"] == id.as_str()).unwrap();
    assert!(tags(&contact).contains(&"sv-login".to_string()), "nothing done after one run");

    // A second run soon after: still within the grace.
    let soon = e.run(ReconcileInput::default()).await;
    assert_eq!((soon.orphans_pending, soon.orphans_untagged), (1, 0), "{soon:?}");

    // A day later (the first sighting moved back 25 hours).
    let store = store_of(&e);
    let mark = format!("reconcile#orphan#{gone}");
    let raw: Value = serde_json::from_str(&store.get_value(&mark).await.unwrap().unwrap()).unwrap();
    let earlier = json!({"since": raw["since"].as_i64().unwrap() - 25 * 3600, "run": raw["run"]});
    store.put_value(&mark, &earlier.to_string(), None).await.unwrap();
    let dry = e.run(ReconcileInput { dry_run: true, ..Default::default() }).await;
    assert!(
        dry.plan.iter().any(|l| l.email == gone && l.reason.contains("login tag would be removed")),
        "{:?}",
        dry.plan
    );
    let later = e.run(ReconcileInput::default()).await;
    assert_eq!((later.orphans_untagged, later.orphans_deleted), (1, 0), "{later:?}");
    let contact = e.contacts().await.into_iter().find(|c| c["id"] == id.as_str()).expect("the contact is kept");
    assert!(!tags(&contact).contains(&"sv-login".to_string()), "the login tag is removed");
    assert!(tags(&contact).contains(&"sproutvideo".to_string()), "other tags stay");
    let others = e
        .contacts()
        .await
        .into_iter()
        .filter(|c| c["email"] != gone)
        .all(|c| tags(&c).contains(&"sproutvideo".to_string()));
    assert!(others, "nobody else is touched");
}

fn store_of(e: &Env) -> shared::state::DynamoStore {
    shared::state::DynamoStore::new(e.stack.ddb.clone(), e.stack.names.table.clone())
}

#[tokio::test]
async fn sessions_in_an_unknown_shape_stop_the_run_with_the_reason_instead_of_reporting_nobody() {
    let e = env("drift-shape", 20).await;
    e.sprout
        .update_behaviour(|b| {
            b.renamed_list_keys.insert("sessions".into(), "engagement_sessions".into());
        })
        .await;
    let err = e.reconciler.run(ReconcileInput::default(), None, &|_| {}).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("\"sessions\"") && text.contains("engagement_sessions"), "{text}");
    assert_eq!(e.stack.depth(&e.stack.queue_url).await.unwrap(), 0, "nothing queued from a misread answer");
    assert!(e.contacts().await.is_empty());
}

#[tokio::test]
async fn an_identity_conflict_the_worker_met_shows_in_the_report() {
    let e = env("conflicts", 6).await;
    e.run(ReconcileInput::default()).await;
    e.drain().await;
    // Bob holds a phone; a login.updated gives person0001 the same phone.
    let bob = e.ghl.insert_contact(LOC, json!({"email": "bob@example.com", "phone": "+14155552671"})).await;
    let mut d =
        shared::commands::DesiredContact::new(shared::identity::Email::parse("person0001@example.com").unwrap());
    d.phone = Some(shared::identity::Phone::parse("+14155552671", "US").unwrap());
    let cmd = shared::commands::SyncCommand::new(
        "login-9",
        "upsert_contact",
        chrono::Utc::now(),
        shared::commands::CommandBody::UpsertContact { contact: d },
    );
    let msg =
        QueueMessage { id: "m".into(), body: cmd.encode(), receipt_handle: None, group_id: None, receive_count: 1 };
    assert_eq!(e.worker.process_batch(vec![msg]).await.identity_conflicts, 1);

    for dry_run in [true, false] {
        let r = e.run(ReconcileInput { dry_run, ..Default::default() }).await;
        assert_eq!(r.identity_conflicts, 1, "{r:?}");
        let line = &r.conflicts[0];
        assert_eq!(line.email, "person0001@example.com");
        assert_eq!((line.record.field.as_str(), line.record.other_contact_id.as_str()), ("phone", bob.as_str()));
        assert!(!serde_json::to_string(&r).unwrap().contains("5552671"), "the report keeps only the last digits");
    }
}

#[tokio::test]
async fn a_backfill_over_old_sessions_creates_nothing_already_created() {
    let e = env("backfill", 4).await;
    // Sessions from two months ago, outside the look-back window: three people watched most of
    // an old course video.
    let old =
        e.sprout.add_video(VideoSeed { title: "Old course".into(), duration: Some(100.0), ..Default::default() }).await;
    let long_ago = chrono::Utc::now() - chrono::Duration::days(60);
    let viewers: Vec<String> = (0..3).map(|i| format!("old{i}@example.com")).collect();
    for v in &viewers {
        e.sprout
            .add_session(SessionSeed {
                video_id: old.clone(),
                vemail: Some(v.clone()),
                seconds_watched: Some(90.0),
                created_at: Some(long_ago),
                ..Default::default()
            })
            .await;
    }
    let recent = e.run(ReconcileInput::default()).await;
    assert_eq!(recent.people_seen as usize, e.people.len(), "the look-back window leaves the old sessions out");
    e.drain().await;

    let since = Some((long_ago - chrono::Duration::days(30)).date_naive());
    let first = e.run(ReconcileInput { since, ..Default::default() }).await;
    assert_eq!(first.actions_pending, 2 * viewers.len() as u64, "a note and a task per old viewer: {first:?}");
    e.drain().await;
    let notes_of = |contacts: &[Value], v: &str| {
        contacts.iter().find(|c| c["email"] == v).map(|c| c["notes"].as_array().unwrap().len()).unwrap_or(0)
    };
    let contacts = e.contacts().await;
    for v in &viewers {
        assert_eq!(notes_of(&contacts, v), 1, "{v}");
    }

    // The same backfill again, as a user repeating it: nothing new is planned or written.
    e.ghl.clear_requests().await;
    let again = e.run(ReconcileInput { since, ..Default::default() }).await;
    assert_eq!((again.actions_pending, again.commands_queued), (0, 0), "{again:?}");
    assert_eq!(e.drain().await, 0);
    let contacts = e.contacts().await;
    for v in &viewers {
        assert_eq!(notes_of(&contacts, v), 1, "{v} still has one note");
        let tasks = contacts.iter().find(|c| c["email"] == v.as_str()).unwrap()["tasks"].as_array().unwrap().len();
        assert_eq!(tasks, 1, "{v} still has one task");
    }
    let writes =
        e.ghl.requests().await.into_iter().filter(|r| r.method != "GET" && r.path != "/contacts/search").count();
    assert_eq!(writes, 0, "a repeated backfill writes nothing to GHL");
}

#[tokio::test]
async fn a_run_paused_past_its_lease_and_taken_over_stops_without_writing() {
    let mut e = env("lease", 5).await;
    let clock = shared::state::ManualClock::starting_now();
    let store = Arc::new(shared::state::MemoryStore::with_clock(Arc::new(clock.clone())));
    e.reconciler.store = store.clone();
    let lease_key = shared::commands::IdempotencyKey::derive(
        &shared::commands::Source::Reconcile("lease".into()),
        None,
        "reconcile_run",
    );
    let other = shared::state::Holder::new();
    // The process stalls for two hours (a laptop asleep) after its bulk read of GHL, just before
    // it would queue the first people's commands, and another run takes the lapsed lease.
    let stalled = std::sync::atomic::AtomicBool::new(false);
    let stall = |line: &str| {
        if line.starts_with("GHL: ") && !stalled.swap(true, std::sync::atomic::Ordering::SeqCst) {
            clock.advance(std::time::Duration::from_secs(2 * 3600));
            let took = futures::executor::block_on(store.claim(&lease_key, std::time::Duration::from_secs(60), &other));
            assert!(matches!(took.unwrap(), shared::state::Claim::Retake { .. }));
        }
    };
    let err = e.reconciler.run(ReconcileInput::default(), None, &stall).await.unwrap_err();
    assert!(matches!(err, reconciler::reconcile::ReconcileError::LeaseLost), "{err}");
    assert!(stalled.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(e.stack.depth(&e.stack.queue_url).await.unwrap(), 0, "nothing queued after the lease was lost");
    let cp: Value = serde_json::from_str(&store.get_value("reconcile#checkpoint").await.unwrap().unwrap()).unwrap();
    assert_eq!(cp["diff_index"], 0, "the checkpoint was not advanced without the lease");
    // Its end did not release the other run's lease.
    assert!(matches!(e.reconciler.run(ReconcileInput::default(), None, &|_| {}).await, Err(ReconcileError::Busy)));
    store.release(&lease_key, &other).await.unwrap();
    let next = e.run(ReconcileInput::default()).await;
    assert!(next.complete && next.people_seen as usize == e.people.len(), "{next:?}");
}

#[tokio::test]
async fn a_page_whose_people_were_half_written_is_listed_again_and_nobody_is_left_out() {
    let mut e = env("halfway", 150).await;
    let faulty = Arc::new(sync_tests::faulty_store::FaultyStore::new(e.reconciler.store.clone()));
    e.reconciler.store = faulty.clone();
    // The logins page's people and aggregates are written, then its checkpoint is refused.
    faulty.fail_writes_of("reconcile#checkpoint", 1, 1);
    let err = e.reconciler.run(ReconcileInput::default(), None, &|_| {}).await.unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    // On the retry, the list of a sessions page's new people is written and their aggregates
    // are refused.
    faulty.fail_batch_writes(1, 1);
    let err = e.reconciler.run(ReconcileInput::default(), None, &|_| {}).await.unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    let r = e.run(ReconcileInput::default()).await;
    assert!(r.complete);
    assert_eq!(r.people_seen as usize, e.people.len(), "{r:?}");
    assert_eq!(r.to_create as usize, e.people.len(), "everyone is diffed: {r:?}");
}

#[tokio::test]
async fn an_unfinished_run_older_than_two_days_starts_over() {
    let e = env("stale-run", 20).await;
    let first = e.run(ReconcileInput { max_steps: Some(2), ..Default::default() }).await;
    assert!(!first.complete);
    // Three days later (the checkpoint's start moved back).
    let store = store_of(&e);
    let mut cp: Value = serde_json::from_str(&store.get_value("reconcile#checkpoint").await.unwrap().unwrap()).unwrap();
    cp["started_at"] = json!(cp["started_at"].as_i64().unwrap() - 3 * 24 * 3600);
    store.put_value("reconcile#checkpoint", &cp.to_string(), None).await.unwrap();
    let lines = std::sync::Mutex::new(Vec::new());
    let later = e.reconciler.run(ReconcileInput::default(), None, &|l| lines.lock().unwrap().push(l.to_string())).await;
    let later = later.unwrap();
    assert!(later.complete);
    assert_ne!(later.run_id, first.run_id, "a new run");
    assert_eq!(later.people_seen as usize, e.people.len());
    assert!(lines.lock().unwrap().iter().any(|l| l.contains("starting over")), "{:?}", lines.lock().unwrap());
}

#[tokio::test]
async fn contacts_written_moments_ago_are_not_missing_while_search_lags() {
    let e = env("lag", 30).await;
    // GHL's search sees writes only after a while; a minute here, so the whole test runs inside it.
    e.ghl.set_search_lag(std::time::Duration::from_secs(60)).await;
    let first = e.run(ReconcileInput::default()).await;
    assert_eq!(first.to_create as usize, e.people.len());
    e.drain().await;
    // Right after: the search returns none of them yet; each is read by the id the sync recorded.
    e.ghl.clear_requests().await;
    let again = e.run(ReconcileInput::default()).await;
    let by_id = e.ghl.requests().await.iter().filter(|r| r.method == "GET" && r.path.starts_with("/contacts/")).count();
    assert_eq!(by_id, e.people.len(), "every person was read by id: the search still lagged");
    assert_eq!((again.to_create, again.to_update, again.commands_queued), (0, 0, 0), "{again:?}");
    assert_eq!(again.in_sync as usize, e.people.len());
}
