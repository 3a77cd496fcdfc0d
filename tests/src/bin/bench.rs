//! `sv-bench` (run by `make bench`, under moto): measures the claims the README makes, each figure
//! beside the baseline it is compared with in the same run, and writes `target/bench/results.json`.
//!
//! Rate windows are time-scaled where noted (the ratio to the ceiling is what is reported).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use chrono::Utc;
use reconciler::reconcile::ReconcileInput;
use serde_json::{Value, json};
use shared::commands::{CommandBody, DesiredContact, Source, SyncCommand};
use shared::identity::{Email, Identity};
use shared::queue::{CommandQueue, QueueError, SqsQueue};
use sync_tests::aws::{Stack, StackNames, StackSettings, secret_json};
use sync_tests::local_ghl::{GhlBehaviour, LocalGhl};
use sync_tests::local_sprout::{LocalSprout, SessionSeed, SproutBehaviour, VideoSeed};
use tower::ServiceExt;
use worker::{QueueMessage, Worker};

const LOC: &str = "locBench000000000001";

struct Row {
    name: String,
    value: f64,
    unit: String,
    baseline: f64,
    baseline_name: String,
    note: String,
}

impl Row {
    fn ratio(&self) -> f64 {
        if self.baseline == 0.0 { f64::NAN } else { self.value / self.baseline }
    }
}

fn row(name: &str, value: f64, unit: &str, baseline: f64, baseline_name: &str, note: &str) -> Row {
    Row {
        name: name.into(),
        value,
        unit: unit.into(),
        baseline,
        baseline_name: baseline_name.into(),
        note: note.into(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sync_tests::aws::require_emulator();
    let only = std::env::args().nth(1);
    let want = |s: &str| only.as_deref().is_none_or(|o| o == s);
    let mut rows = Vec::new();
    if want("calls") {
        rows.extend(calls_per_change().await?);
    }
    if want("fleet") {
        rows.extend(fleet_at_real_window().await?);
    }
    if want("locations") {
        rows.extend(many_locations().await?);
    }
    if want("reconcile") {
        rows.extend(reconcile_cost().await?);
    }
    if want("intake") {
        rows.extend(intake_cost().await?);
    }
    if want("start") {
        rows.extend(start_and_size().await?);
    }
    print_table(&rows);
    let out = PathBuf::from("target/bench");
    std::fs::create_dir_all(&out)?;
    let json: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"name": r.name, "value": r.value, "unit": r.unit, "baseline": r.baseline,
                   "baseline_name": r.baseline_name, "ratio": r.ratio(), "note": r.note})
        })
        .collect();
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json!({"when": Utc::now(), "rows": json}))?,
    )?;
    eprintln!("written: target/bench/results.json");
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!("| measure | value | baseline | ratio | note |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} {} | {} {} ({}) | {:.2} | {} |",
            r.name,
            fmt(r.value),
            r.unit,
            fmt(r.baseline),
            r.unit,
            r.baseline_name,
            r.ratio(),
            r.note
        );
    }
}

fn fmt(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e12 { format!("{v:.0}") } else { format!("{v:.2}") }
}

// ---- shared setup -----------------------------------------------------------------------------

struct World {
    ghl: LocalGhl,
    ghl_url: String,
    sprout: LocalSprout,
    sprout_url: String,
    stack: Stack,
}

async fn world(tag: &str, ghl_behaviour: GhlBehaviour) -> anyhow::Result<World> {
    let ghl = LocalGhl::new(ghl_behaviour);
    let ghl_url = format!("http://{}/", ghl.spawn("127.0.0.1:0").await?);
    let sprout = LocalSprout::new(SproutBehaviour { per_minute: 1_000_000, ..Default::default() });
    let sprout_url = format!("http://{}/v1", sprout.spawn("127.0.0.1:0").await?);
    let stack = Stack::create(
        StackNames::unique(tag),
        StackSettings { visibility_timeout_secs: 60, max_receive_count: 8 },
        Some(&secret_json("wt", &["sig"], "rk", "pit-bench", Some("sv-bench"))),
    )
    .await?;
    Ok(World { ghl, ghl_url, sprout, sprout_url, stack })
}

impl World {
    async fn worker(&self, extra: &[(&str, &str)]) -> anyhow::Result<Arc<Worker>> {
        Ok(worker::build(self.stack.config(&self.ghl_url, &self.sprout_url, LOC, extra)).await?.0)
    }
}

fn email(i: usize) -> Email {
    Email::parse(&format!("bench{i:05}@example.com")).expect("valid")
}

fn msg(i: usize, c: &SyncCommand) -> QueueMessage {
    QueueMessage {
        id: format!("m{i}"),
        body: c.encode(),
        receipt_handle: None,
        group_id: Some(c.group_id()),
        receive_count: 1,
    }
}

fn desired(i: usize, first: &str, tags: &[&str]) -> DesiredContact {
    let mut d = DesiredContact::new(email(i));
    d.first_name = Some(first.into());
    d.tags.extend(tags.iter().map(|t| t.to_string()));
    d
}

/// The mixed workload: phases of `people` commands each, and the GHL calls each phase needs at
/// least (a new person: the upsert and the tags call; a repeat: none; every other change: one).
fn workload(people: usize, offset: usize) -> Vec<(&'static str, usize, Vec<SyncCommand>)> {
    let now = Utc::now();
    let id = |i: usize| Identity { email: email(i + offset), phone: None };
    let mk = |phase: &str, i: usize, body: CommandBody| {
        SyncCommand::new(Source::Event(format!("{phase}-{}", i + offset)), phase, now, body)
    };
    vec![
        (
            "new people",
            2,
            (0..people)
                .map(|i| {
                    mk("new", i, CommandBody::UpsertContact { contact: desired(i + offset, "First", &["sproutvideo"]) })
                })
                .collect(),
        ),
        (
            "repeats, no change",
            0,
            (0..people)
                .map(|i| {
                    mk(
                        "repeat",
                        i,
                        CommandBody::UpsertContact { contact: desired(i + offset, "First", &["sproutvideo"]) },
                    )
                })
                .collect(),
        ),
        (
            "field changes",
            1,
            (0..people)
                .map(|i| {
                    mk(
                        "field",
                        i,
                        CommandBody::UpsertContact { contact: desired(i + offset, "Changed", &["sproutvideo"]) },
                    )
                })
                .collect(),
        ),
        (
            "tags",
            1,
            (0..people)
                .map(|i| mk("tag", i, CommandBody::AddTags { identity: id(i), tags: vec!["bench".into()] }))
                .collect(),
        ),
        (
            "notes",
            1,
            (0..people)
                .map(|i| mk("note", i, CommandBody::AddNote { identity: id(i), body: format!("note {i}") }))
                .collect(),
        ),
        (
            "tasks",
            1,
            (0..people)
                .map(|i| {
                    mk(
                        "task",
                        i,
                        CommandBody::CreateTask {
                            identity: id(i),
                            external_id: format!("t{i}"),
                            title: "Call".into(),
                            body: None,
                            due_at: now,
                            assigned_to: None,
                        },
                    )
                })
                .collect(),
        ),
        (
            "completions",
            1,
            (0..people)
                .map(|i| mk("done", i, CommandBody::CompleteTask { identity: id(i), external_id: format!("t{i}") }))
                .collect(),
        ),
    ]
}

async fn run_phase(w: &Worker, cmds: &[SyncCommand]) -> usize {
    let mut failed = 0;
    for (b, chunk) in cmds.chunks(10).enumerate() {
        let batch = chunk.iter().enumerate().map(|(i, c)| msg(b * 10 + i, c)).collect();
        failed += w.process_batch(batch).await.failed.len();
    }
    failed
}

// ---- 1. GHL calls per change ------------------------------------------------------------------

async fn calls_per_change() -> anyhow::Result<Vec<Row>> {
    eprintln!("bench: GHL calls per change (2,100 commands)...");
    let w = world("calls", GhlBehaviour { burst_max: 1_000_000, ..Default::default() }).await?;
    let worker = w.worker(&[("GHL_BURST_MAX", "1000000")]).await?;
    let mut rows = Vec::new();
    let (mut total_calls, mut total_min, mut commands) = (0usize, 0usize, 0usize);
    let started = Instant::now();
    for (name, per, cmds) in workload(300, 0) {
        w.ghl.clear_requests().await;
        let failed = run_phase(&worker, &cmds).await;
        anyhow::ensure!(failed == 0, "{failed} commands failed in phase {name}");
        let calls = w.ghl.requests().await.len();
        total_calls += calls;
        total_min += per * cmds.len();
        commands += cmds.len();
        eprintln!("bench:   {name}: {calls} calls for {} commands (minimum {})", cmds.len(), per * cmds.len());
    }
    let secs = started.elapsed().as_secs_f64();
    rows.push(row(
        "GHL calls for the mixed workload",
        total_calls as f64,
        "calls",
        total_min as f64,
        "minimum the workload needs",
        &format!("{commands} commands: new people, repeats, field changes, tags, notes, tasks, completions"),
    ));
    rows.push(row(
        "worker commands per second (moto + local GHL, 1 worker)",
        commands as f64 / secs,
        "cmd/s",
        0.0,
        "none",
        "informational",
    ));
    Ok(rows)
}

// ---- 2. The whole fleet at GHL's real window -------------------------------------------------

/// Requests per second over the steady state of a request log (arrival times, unix ms): the
/// mean of what every `window_ms` window held, sampled every 100 ms from the end of the first
/// window to the start of the last (ramp-up and tail left out). Also the most any window held.
fn steady_rate(mut at_ms: Vec<i64>, window_ms: i64) -> (f64, f64, usize) {
    at_ms.sort_unstable();
    let (Some(&first), Some(&last)) = (at_ms.first(), at_ms.last()) else { return (0.0, 0.0, 0) };
    let in_window = |t: i64| at_ms.partition_point(|a| *a < t + window_ms) - at_ms.partition_point(|a| *a < t);
    let (mut sum, mut samples) = (0usize, 0usize);
    let mut t = first + window_ms;
    while t + window_ms <= last {
        sum += in_window(t);
        samples += 1;
        t += 100;
    }
    let most = at_ms.iter().map(|t| in_window(*t)).max().unwrap_or(0);
    let steady_secs = (last - first - 2 * window_ms).max(0) as f64 / 1000.0;
    let rate = if samples > 0 { sum as f64 / samples as f64 / (window_ms as f64 / 1000.0) } else { 0.0 };
    (rate, steady_secs, most)
}

/// lead.captured (email and names), then note.create (email only), as users send them, turned
/// into commands by the intake.
fn lead_then_note(i: usize) -> Vec<SyncCommand> {
    let mapping = shared::mapping::Mapping::default_mapping();
    let email = format!("fleet{i:05}@example.com");
    let now = Utc::now().to_rfc3339();
    let lead = json!({"id": format!("lead-{i}"), "type": "lead.captured", "occurred_at": now,
        "contact": {"email": email, "first_name": "Fay", "last_name": format!("Fleet{i}")}});
    let note = json!({"id": format!("note-{i}"), "type": "note.create", "occurred_at": now,
        "contact": {"email": email}, "note": {"body": "Asked about pricing"}});
    [lead, note]
        .iter()
        .flat_map(|e| intake::events::event_commands(&mapping, e.to_string().as_bytes()).expect("valid event").commands)
        .collect()
}

async fn fleet_at_real_window() -> anyhow::Result<Vec<Row>> {
    let people = 260usize;
    let recon_people = 30usize;
    eprintln!(
        "bench: the fleet at GHL's real window (100 per 10 s): 3 workers applying lead-then-note for {people} people, \
         a reconciliation beside them (about 90 s)..."
    );
    let w = world("fleet", GhlBehaviour::default()).await?;
    let workers = [w.worker(&[]).await?, w.worker(&[]).await?, w.worker(&[]).await?];
    let vid = w
        .sprout
        .add_video(VideoSeed {
            title: "Intro".into(),
            duration: Some(300.0),
            require_email: true,
            ..Default::default()
        })
        .await;
    for i in 0..recon_people {
        w.sprout
            .add_session(SessionSeed {
                video_id: vid.clone(),
                vemail: Some(format!("missed{i:03}@example.com")),
                seconds_watched: Some(60.0),
                ..Default::default()
            })
            .await;
    }
    let mapping = std::env::temp_dir().join(format!("{}-fleet-mapping.toml", w.stack.names.table));
    std::fs::write(&mapping, RECON_MAPPING)?;
    let recon_config = w.stack.config(
        &w.ghl_url,
        &w.sprout_url,
        LOC,
        &[("SYNC_MAPPING_FILE", mapping.to_str().unwrap_or_default()), ("SPROUTVIDEO_PER_MINUTE", "1000000")],
    );
    let (rec, rec_deps) = reconciler::build(recon_config).await?;
    let rec_budget = rec_deps.ghl.budget().cloned();
    let started = Instant::now();
    let runs = workers.iter().enumerate().map(|(k, worker)| {
        let worker = worker.clone();
        async move {
            // Each worker gets every third person; a batch holds five people's two events.
            let msgs: Vec<QueueMessage> = (k..people)
                .step_by(3)
                .flat_map(lead_then_note)
                .enumerate()
                .map(|(n, c)| msg(k * 100_000 + n, &c))
                .collect();
            let mut failed = 0;
            for chunk in msgs.chunks(10) {
                failed += worker.process_batch(chunk.to_vec()).await.failed.len();
            }
            failed
        }
    });
    let reconcile = async {
        // The reconciliation starts once the workers are busy.
        tokio::time::sleep(Duration::from_secs(15)).await;
        rec.run(ReconcileInput::default(), None, &|_| {}).await
    };
    let (failed, report) = tokio::join!(futures::future::join_all(runs), reconcile);
    let failed: usize = failed.into_iter().sum();
    let report = report?;
    let events_log = w.ghl.requests().await;
    // What the reconciliation queued is applied by the fleet too.
    let mut drained = 0;
    while drained < report.commands_queued as usize {
        let got = w.stack.receive(&w.stack.queue_url, 10, 120).await?;
        anyhow::ensure!(!got.is_empty(), "the reconciliation's commands did not arrive");
        let batch: Vec<QueueMessage> = got
            .iter()
            .filter_map(|m| SyncCommand::decode(m.body()?).ok())
            .enumerate()
            .map(|(n, c)| msg(900_000 + drained + n, &c))
            .collect();
        drained += batch.len();
        failed_after(&workers[0], batch).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let log = w.ghl.requests().await;
    let limited = log.iter().filter(|r| r.status == 429).count();
    let applied: Vec<i64> = log.iter().filter(|r| (200..300).contains(&r.status)).map(|r| r.at_ms).collect();
    // What the shared budget cost in DynamoDB requests (the workers' handles and the reconciler's).
    let handles: Vec<_> = workers.iter().map(|w| w.ghl.budget()).chain([rec_budget.as_ref()]).flatten().collect();
    let (reads, writes, conflicts) = handles.iter().fold((0, 0, 0), |(r, w, c), b| {
        let s = b.stats();
        (
            r + s.reads.load(Ordering::Relaxed),
            w + s.writes.load(Ordering::Relaxed),
            c + s.conflicts.load(Ordering::Relaxed),
        )
    });
    let (rate, steady_secs, most) = steady_rate(applied.clone(), 10_000);
    // The lead-then-note cost, counted per person as the events were sent (the reconciliation's
    // own reads, its search pages, are left out).
    let event_requests = events_log.iter().filter(|r| r.path != "/contacts/search").count();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for r in events_log.iter().filter(|r| r.path != "/contacts/search") {
        let path = match r.path.rsplit('/').next() {
            Some(last @ ("tags" | "notes" | "upsert")) => last.to_string(),
            _ => r.path.clone(),
        };
        *kinds.entry(format!("{} {path}", r.method)).or_default() += 1;
    }
    Ok(vec![
        row(
            "applied GHL requests per second over the steady state, 3 workers and a reconciliation, real window",
            rate,
            "req/s",
            10.0,
            "GHL's ceiling (100 per 10 s)",
            &format!(
                "{} applied in {secs:.0} s, steady state {steady_secs:.0} s; most in any 10 s window: {most}; \
                 {failed} commands retried; reconciliation queued {}",
                applied.len(),
                report.commands_queued
            ),
        ),
        row(
            "429 answers during the fleet run",
            limited as f64,
            "429s",
            0.0,
            "none expected",
            "one budget for the fleet",
        ),
        row(
            "DynamoDB requests of the shared budget per applied GHL request",
            (reads + writes) as f64 / applied.len().max(1) as f64,
            "req",
            2.0,
            "one read and one write per GHL request, unbatched",
            &format!("{reads} reads, {writes} writes ({conflicts} refused: another process wrote first)"),
        ),
        row(
            "GHL requests per person, lead.captured then note.create as sent",
            event_requests as f64 / people as f64,
            "req",
            3.0,
            "upsert, tags, note",
            &format!("{people} people: {kinds:?}"),
        ),
    ])
}

async fn failed_after(worker: &Worker, batch: Vec<QueueMessage>) -> anyhow::Result<()> {
    let out = worker.process_batch(batch).await;
    anyhow::ensure!(out.failed.is_empty(), "reconciliation commands failed: {out:?}");
    Ok(())
}

// ---- 2b. Many locations -----------------------------------------------------------------------

/// `tenants` registered tenants served by one worker fleet (`worker::Fleet`, as the Lambda
/// runs it): each with its own location and token (so its own window at the local GHL), its own
/// shared budget and its own state. Eight concurrent "invocations" take batches of ten from one
/// queue where the tenants' new people are interleaved, as SQS delivers them, for `secs`
/// seconds on a window of 100 per 10 s. Returns each location's applied requests per second over
/// the steady state, and the 429s.
/// One tenants run's scenario.
#[derive(Clone, Copy)]
struct Scenario {
    tenants: usize,
    secs: u64,
    dynamodb: bool,
    /// Worker invocations running at once.
    invocations: usize,
    /// How long the local GHL takes to answer each request.
    latency_ms: u64,
}

/// What a tenants run measured.
struct TenantsRun {
    /// Each tenant's applied GHL requests per second over the steady state.
    rates: Vec<f64>,
    limited: usize,
    /// Applied GHL requests, commands applied, state-table calls and budget-record requests.
    ghl_ok: usize,
    commands: usize,
    state_calls: u64,
    budget_requests: u64,
}

async fn tenants_run(s: Scenario) -> anyhow::Result<TenantsRun> {
    let Scenario { tenants, secs, dynamodb, invocations, latency_ms } = s;
    use shared::budget::{FleetBudget, Lane};
    use shared::ghl::{GhlClient, GhlSettings, StaticToken};
    use shared::state::StateStore;
    use shared::tenants::{Registry, TenantCache, TenantId, TenantRecord};
    use std::collections::VecDeque;
    let ghl = LocalGhl::new(GhlBehaviour::default());
    if latency_ms > 0 {
        ghl.set_faults(sync_tests::local_ghl::Faults { latency_ms, ..Default::default() }).await;
    }
    let url = url::Url::parse(&format!("http://{}/", ghl.spawn("127.0.0.1:0").await?))?;
    // The state table: the registry in its own part, each tenant's state and budget under its
    // prefix, as the functions keep them (on moto, or in memory); state calls are counted.
    type Counted = Arc<sync_tests::faulty_store::FaultyStore>;
    enum Table {
        Dynamo(aws_sdk_dynamodb::Client, String, std::sync::Mutex<Vec<Counted>>),
        Memory(std::sync::Mutex<BTreeMap<TenantId, (Arc<shared::state::MemoryStore>, Counted)>>),
    }
    impl Table {
        fn part(&self, t: &TenantId) -> (Arc<dyn StateStore>, Arc<dyn shared::budget::BudgetStore>) {
            use sync_tests::faulty_store::FaultyStore;
            match self {
                Table::Dynamo(ddb, name, counted) => {
                    let s = Arc::new(
                        shared::state::DynamoStore::new(ddb.clone(), name.clone()).with_prefix(t.key_prefix()),
                    );
                    let c = Arc::new(FaultyStore::new(s.clone()));
                    counted.lock().unwrap().push(c.clone());
                    (c, s)
                }
                Table::Memory(parts) => {
                    let (m, c) = parts
                        .lock()
                        .unwrap()
                        .entry(t.clone())
                        .or_insert_with(|| {
                            let m = Arc::new(shared::state::MemoryStore::new());
                            (m.clone(), Arc::new(FaultyStore::new(m)))
                        })
                        .clone();
                    (c, m)
                }
            }
        }
        fn state_calls(&self) -> u64 {
            let n = |c: &sync_tests::faulty_store::FaultyStore| c.calls.load(Ordering::Relaxed);
            match self {
                Table::Dynamo(_, _, counted) => counted.lock().unwrap().iter().map(|c| n(c)).sum(),
                Table::Memory(parts) => parts.lock().unwrap().values().map(|(_, c)| n(c)).sum(),
            }
        }
    }
    let table = Arc::new(if dynamodb {
        let stack = Stack::create(StackNames::unique(&format!("ten{tenants}")), StackSettings::default(), None).await?;
        Table::Dynamo(stack.ddb.clone(), stack.names.table.clone(), Default::default())
    } else {
        Table::Memory(Default::default())
    });
    let registry = Registry::new(table.part(&TenantId::default()).0);
    let queue = Arc::new(shared::queue::MemoryQueue::new());
    let make = {
        let (url, table, queue) = (url.clone(), table.clone(), queue.clone());
        move |tenant: &TenantId, location: &str| -> anyhow::Result<Worker> {
            let (state, budgets) = table.part(tenant);
            let client = GhlClient::new(
                GhlSettings::new(url.clone(), location),
                Arc::new(StaticToken(secrecy::SecretString::from(format!("pit-{tenant}")))),
            )?
            .with_budget(Arc::new(FleetBudget::new(budgets, location, Default::default())), Lane::Bulk);
            Ok(Worker {
                ghl: client.clone(),
                catalog: Arc::new(shared::mapping::CustomFieldCatalog::new(client)),
                store: state,
                queues: queue.clone(),
                commands: queue.clone(),
                sprout: shared::sprout::SproutClient::new(
                    shared::sprout::SproutSettings::new(url::Url::parse("http://127.0.0.1:9/v1")?),
                    Arc::new(shared::sprout::StaticKey(secrecy::SecretString::from("unused"))),
                )?,
                mapping: Arc::new(shared::mapping::Mapping::from_toml(RECON_MAPPING)?),
                lease: Duration::from_secs(120),
                ambiguity_grace: Duration::from_secs(30),
                retry_base_secs: 5,
                concurrency: 10,
                lookback_days: 7,
                identity_conflicts: Default::default(),
                api_drift: Default::default(),
            })
        }
    };
    let ids: Vec<TenantId> = (0..tenants).map(|t| TenantId::parse(&format!("tenant{t:02}")).unwrap()).collect();
    for (t, id) in ids.iter().enumerate() {
        registry
            .add(&TenantRecord::new(id.clone(), format!("locTenant{t:011}"), format!("sv-ghl-sync/tenants/{id}")))
            .await?;
    }
    let default_worker = Arc::new(make(&TenantId::default(), LOC)?);
    let fleet = Arc::new(worker::Fleet {
        tenants: TenantCache::new(registry, Duration::from_secs(30), default_worker, move |r| {
            make(&r.id, &r.location_id)
        }),
    });
    // The queue: each tenant's new people, interleaved.
    let per_tenant = (secs as usize) * 12;
    let now = Utc::now();
    let mut pending = VecDeque::new();
    for n in 0..per_tenant {
        for id in &ids {
            let email = Email::parse(&format!("p{n}@{id}.example.com"))?;
            let mut c = SyncCommand::new(
                Source::Event(format!("{id}-{n}")),
                "upsert",
                now,
                CommandBody::UpsertContact { contact: DesiredContact::new(email) },
            );
            c.tenant = id.clone();
            pending.push_back(c);
        }
    }
    let pending = Arc::new(tokio::sync::Mutex::new(pending));
    let until = Instant::now() + Duration::from_secs(secs);
    let applied = Arc::new(AtomicUsize::new(0));
    let invocations: Vec<_> = (0..invocations)
        .map(|_| {
            let applied = applied.clone();
            let (fleet, pending) = (fleet.clone(), pending.clone());
            tokio::spawn(async move {
                let mut i = 0usize;
                while Instant::now() < until {
                    let batch: Vec<QueueMessage> = {
                        let mut p = pending.lock().await;
                        (0..10)
                            .filter_map(|_| p.pop_front())
                            .map(|c| {
                                i += 1;
                                msg(i, &c)
                            })
                            .collect()
                    };
                    if batch.is_empty() {
                        break;
                    }
                    for b in fleet.process_batch_within(batch, worker::Deadline::NONE).await {
                        applied.fetch_add(b.outcome.applied + b.outcome.unchanged, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    futures::future::join_all(invocations).await;
    let log = ghl.requests().await;
    let limited = log.iter().filter(|r| r.status == 429).count();
    let mut per: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in log.iter().filter(|r| (200..300).contains(&r.status)) {
        let loc = r.body.get("locationId").and_then(Value::as_str).unwrap_or("?").to_string();
        per.entry(loc).or_default().push(r.at_ms);
    }
    let ghl_ok = per.values().map(Vec::len).sum();
    let rates = per.into_values().map(|at| steady_rate(at, 10_000).0).collect();
    let mut budget_requests = 0;
    for id in ids.iter().chain([&TenantId::default()]) {
        if let Ok(shared::tenants::Lookup::Active(w)) = fleet.tenants.get(id).await
            && let Some(b) = w.ghl.budget()
        {
            let st = b.stats();
            budget_requests += st.reads.load(Ordering::Relaxed) + st.writes.load(Ordering::Relaxed);
        }
    }
    Ok(TenantsRun {
        rates,
        limited,
        ghl_ok,
        commands: applied.load(Ordering::Relaxed),
        state_calls: table.state_calls(),
        budget_requests,
    })
}

async fn many_locations() -> anyhow::Result<Vec<Row>> {
    let secs = 35;
    let mut rows = Vec::new();
    let mut one = 0.0;
    // The state in memory: moto, one Python process on the same two cores, cannot serve sixteen
    // busy tenants' DynamoDB requests; the last row shows what it does serve.
    for (tenants, dynamodb) in [(1usize, false), (4, false), (16, false), (16, true)] {
        let kept = if dynamodb { "DynamoDB on moto" } else { "memory" };
        eprintln!(
            "bench: {tenants} tenant(s) in one worker fleet, each location on its own window of 100 per 10 s, state in {kept}, {secs} s..."
        );
        let run = tenants_run(Scenario { tenants, secs, dynamodb, invocations: 8, latency_ms: 0 }).await?;
        let (rates, limited) = (run.rates, run.limited);
        let total: f64 = rates.iter().sum();
        if tenants == 1 {
            one = total;
        }
        let fair = 10.0;
        let lowest = rates.iter().cloned().fold(f64::INFINITY, f64::min);
        rows.push(row(
            &format!(
                "aggregate applied GHL requests per second, {tenants} tenant(s) in one worker fleet, state in {kept}"
            ),
            total,
            "req/s",
            one * tenants as f64,
            &format!("{tenants} × one tenant's figure"),
            &format!(
                "{} tenants answered; lowest tenant {:.2} req/s = {:.2} of its ceiling; {limited} × 429",
                rates.len(),
                lowest,
                lowest / fair
            ),
        ));
    }
    rows.extend(thousand_locations().await?);
    Ok(rows)
}

/// 1,000 busy locations, simulated: a worker fleet with more tenants than its invocations can
/// keep busy, against a GHL that answers in `LATENCY_MS` (an assumption: the local GHL answers
/// in microseconds), measures what one invocation applies and what each GHL request costs in
/// DynamoDB requests and queue messages; scaled to 1,000 locations at their ceiling (10,000 GHL
/// requests per second) and set against the services' published default quotas, the largest
/// ratio names the limit that binds first.
async fn thousand_locations() -> anyhow::Result<Vec<Row>> {
    const LATENCY_MS: u64 = 200;
    const LOCATIONS: f64 = 1000.0;
    let s = Scenario { tenants: 48, secs: 30, dynamodb: false, invocations: 8, latency_ms: LATENCY_MS };
    eprintln!(
        "bench: simulating many locations: {} tenants, {} invocations, GHL answering in {LATENCY_MS} ms, {} s...",
        s.tenants, s.invocations, s.secs
    );
    let run = tenants_run(s).await?;
    let total: f64 = run.rates.iter().sum();
    let per_invocation = total / s.invocations as f64;
    let ghl = run.ghl_ok.max(1) as f64;
    let ddb_per_request = (run.state_calls + run.budget_requests) as f64 / ghl;
    let messages_per_request = run.commands as f64 / ghl;
    let need_ghl = LOCATIONS * 10.0;
    // Published default quotas (each adjustable): Lambda concurrency per account and region;
    // DynamoDB on-demand throughput per table (40,000 read and 40,000 write request units a
    // second; reads and writes counted together here, so the ratio errs high); SQS
    // high-throughput FIFO, 70,000 transactions a second per API action in the largest regions
    // (a batch of ten messages is one transaction; counted per message here, erring high).
    let limits = [
        ("Lambda concurrent executions (worker invocations)", need_ghl / per_invocation, 1000.0, "invocations"),
        ("DynamoDB requests per second on the state table", need_ghl * ddb_per_request, 40_000.0, "req/s"),
        ("SQS FIFO messages per second", need_ghl * messages_per_request, 70_000.0, "msg/s"),
    ];
    let binding = limits.iter().max_by(|a, b| (a.1 / a.2).total_cmp(&(b.1 / b.2))).map(|l| l.0).unwrap_or("none");
    let mut rows = vec![row(
        &format!(
            "simulation: applied GHL requests per second per worker invocation, {} tenants on {} invocations, GHL answering in {LATENCY_MS} ms",
            s.tenants, s.invocations
        ),
        per_invocation,
        "req/s",
        10.0,
        "10 req/s, one location's ceiling",
        &format!(
            "{:.1} req/s in all, {} × 429; {ddb_per_request:.2} DynamoDB requests and {messages_per_request:.2} queue messages per GHL request",
            total, run.limited
        ),
    )];
    for (name, need, quota, unit) in limits {
        rows.push(row(
            &format!("1,000 busy locations (10,000 GHL req/s): {name}"),
            need,
            unit,
            quota,
            "the published default quota",
            if name == binding { "binds first" } else { "" },
        ));
    }
    Ok(rows)
}

// ---- 3. Reconciliation cost -------------------------------------------------------------------

const RECON_MAPPING: &str = r#"
source = "SproutVideo"
default_region = "US"
sync_tag = "sproutvideo"
[tags]
login = "sv-login"
lead = "sv-lead"
watched = "sv-watched:{video_title}"
completed_percent = 90.0
"#;

async fn reconcile_cost() -> anyhow::Result<Vec<Row>> {
    let people = 10_000usize;
    let videos = 10usize;
    eprintln!("bench: reconciliation of {people} people with 1% drift...");
    let w = world("recon", GhlBehaviour { burst_max: 1_000_000, ..Default::default() }).await?;
    let mut titles = Vec::new();
    for v in 0..videos {
        let title = format!("Lesson {v}");
        let id = w
            .sprout
            .add_video(VideoSeed {
                title: title.clone(),
                duration: Some(600.0),
                require_email: true,
                ..Default::default()
            })
            .await;
        titles.push((id, title));
    }
    for i in 0..people {
        let (vid, title) = &titles[i % videos];
        let e = format!("r{i:05}@example.com");
        w.sprout
            .add_session(SessionSeed {
                video_id: vid.clone(),
                vemail: Some(e.clone()),
                seconds_watched: Some(120.0),
                ..Default::default()
            })
            .await;
        let mut tags = vec!["sproutvideo".to_string(), format!("sv-watched:{}", title.to_lowercase())];
        if i % 100 != 0 {
            tags.push("sv-lead".into()); // 1% drift: a tag removed by hand
        }
        w.ghl.insert_contact(LOC, json!({"email": e, "tags": tags})).await;
    }
    let mapping = std::env::temp_dir().join(format!("{}-bench-mapping.toml", w.stack.names.table));
    std::fs::write(&mapping, RECON_MAPPING)?;
    let config = w.stack.config(
        &w.ghl_url,
        &w.sprout_url,
        LOC,
        &[("SYNC_MAPPING_FILE", mapping.to_str().unwrap_or_default()), ("SPROUTVIDEO_PER_MINUTE", "1000000")],
    );
    let (rec, _) = reconciler::build(config).await?;
    w.ghl.clear_requests().await;
    let rss_before = peak_rss_kib(std::process::id());
    let started = Instant::now();
    let report = rec.run(ReconcileInput::default(), None, &|_| {}).await?;
    let secs = started.elapsed().as_secs_f64();
    let ghl_calls = w.ghl.requests().await.len();
    let sprout_calls = report.sproutvideo_calls as usize;
    let ghl_pages = people.div_ceil(reconciler::reconcile::SEARCH_PAGE as usize);
    let sv_pages = 2 + people.div_ceil(100);
    let changes = people / 100;
    Ok(vec![
        row(
            "reconcile: GHL calls",
            ghl_calls as f64,
            "calls",
            ghl_pages as f64,
            "GHL search pages (500 per page)",
            "no per-person calls",
        ),
        row(
            "reconcile: SproutVideo calls",
            sprout_calls as f64,
            "calls",
            sv_pages as f64,
            "videos + logins + session pages",
            "",
        ),
        row(
            "reconcile: commands queued",
            report.commands_queued as f64,
            "cmds",
            changes as f64,
            "drifted people (1%)",
            &format!("to_update {}, in_sync {}", report.to_update, report.in_sync),
        ),
        row(
            "reconcile: wall time (moto + local fakes)",
            secs,
            "s",
            0.0,
            "none",
            &format!("{people} people, SproutVideo time-scaled (no 100/min wait)"),
        ),
        row(
            "reconcile: peak RSS of the bench process",
            peak_rss_kib(std::process::id()) as f64 / 1024.0,
            "MiB",
            rss_before as f64 / 1024.0,
            "peak before the run (fakes seeded)",
            "includes the in-process fakes",
        ),
    ])
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

// ---- 4. Intake cost ---------------------------------------------------------------------------

struct CountingQueue(AtomicUsize);

#[async_trait::async_trait]
impl CommandQueue for CountingQueue {
    async fn send(&self, c: &[SyncCommand]) -> Result<(), QueueError> {
        self.0.fetch_add(c.len(), Ordering::Relaxed);
        Ok(())
    }
}

struct FixedSecret(String);

#[async_trait::async_trait]
impl shared::secrets::SecretSource for FixedSecret {
    async fn read(&self) -> Result<shared::secrets::SecretValue, shared::secrets::SecretError> {
        Ok(shared::secrets::SecretValue { value: secrecy::SecretString::from(self.0.clone()), version_id: None })
    }
    async fn write(&self, _: &str, _: &str) -> Result<(), shared::secrets::SecretError> {
        Err(shared::secrets::SecretError::Conflict)
    }
}

fn intake_router() -> axum::Router {
    let ghl = shared::ghl::GhlClient::new(
        shared::ghl::GhlSettings::new(url::Url::parse("http://127.0.0.1:9/").expect("url"), LOC),
        Arc::new(shared::ghl::StaticToken(secrecy::SecretString::from("t"))),
    )
    .expect("client");
    intake::router(intake::AppState {
        secrets: Arc::new(shared::secrets::SecretCache::new(
            Arc::new(FixedSecret(secret_json("wt", &["bench-key"], "rk", "pit", None))),
            Duration::from_secs(3600),
        )),
        queue: Arc::new(CountingQueue(AtomicUsize::new(0))),
        mapping: Arc::new(shared::mapping::Mapping::default_mapping()),
        ghl,
        sprout: shared::sprout::SproutClient::new(
            shared::sprout::SproutSettings::new(url::Url::parse("http://127.0.0.1:9/v1").unwrap()),
            Arc::new(shared::sprout::StaticKey(secrecy::SecretString::from("k"))),
        )
        .unwrap(),
        conflicts: intake::view::ConflictReader::new(Arc::new(shared::state::MemoryStore::new())),
        ghl_webhooks: intake::GhlWebhooks::new(
            intake::ghl_webhook::WebhookKeys::from_lookup(|_| None).expect("the default keys load"),
            Arc::new(shared::state::MemoryStore::new()),
        ),
    })
}

/// Reads the body and answers 202: the floor any intake pays.
fn baseline_router() -> axum::Router {
    axum::Router::new().route(
        "/v1/events",
        axum::routing::post(|body: axum::body::Bytes| async move {
            std::hint::black_box(body.len());
            (axum::http::StatusCode::ACCEPTED, "{}")
        }),
    )
}

fn event_body(i: usize) -> String {
    json!({"id": format!("bench-{i}"), "type": "video.watched", "occurred_at": "2026-11-29T10:00:00Z",
           "contact": {"email": format!("p{i}@example.com"), "first_name": "Pat", "phone": "+1 415 555 2671"},
           "video": {"id": "v1", "title": "Pricing", "duration": 300}, "watch": {"seconds": 250}})
    .to_string()
}

fn signed_request(body: &str) -> axum::http::Request<Body> {
    let ts = Utc::now().timestamp();
    axum::http::Request::post("/v1/events")
        .header("content-type", "application/json")
        .header("x-signature-timestamp", ts.to_string())
        .header("x-signature", intake::auth::sign("bench-key", ts, body.as_bytes()))
        .body(Body::from(body.to_string()))
        .expect("request")
}

fn cpu_time() -> Duration {
    let mut ts = std::mem::MaybeUninit::<[i64; 2]>::uninit();
    // clock_gettime(CLOCK_PROCESS_CPUTIME_ID = 2)
    unsafe extern "C" {
        fn clock_gettime(clk: i32, ts: *mut [i64; 2]) -> i32;
    }
    // SAFETY: clock_gettime writes a timespec (two longs on 64-bit Linux) into `ts`.
    let ts = unsafe {
        clock_gettime(2, ts.as_mut_ptr());
        ts.assume_init()
    };
    Duration::new(ts[0] as u64, ts[1] as u32)
}

async fn per_request_cpu(app: axum::Router, n: usize) -> f64 {
    let bodies: Vec<String> = (0..n).map(event_body).collect();
    // Warm up.
    for b in bodies.iter().take(200) {
        let _ = app.clone().oneshot(signed_request(b)).await;
    }
    let before = cpu_time();
    for b in &bodies {
        let r = app.clone().oneshot(signed_request(b)).await.expect("infallible");
        assert_eq!(r.status(), 202);
    }
    (cpu_time() - before).as_secs_f64() * 1e6 / n as f64
}

async fn load(app: axum::Router, secs: u64, conns: usize) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let done = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let tasks = (0..conns).map(|c| {
        let done = done.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut i = c * 1_000_000;
            while Instant::now() < until {
                let body = event_body(i);
                let ts = Utc::now().timestamp();
                let ok = http
                    .post(format!("http://{addr}/v1/events"))
                    .header("content-type", "application/json")
                    .header("x-signature-timestamp", ts.to_string())
                    .header("x-signature", intake::auth::sign("bench-key", ts, body.as_bytes()))
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 202);
                if ok {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        })
    });
    futures::future::join_all(tasks).await;
    server.abort();
    done.load(Ordering::Relaxed) as f64 / secs as f64
}

async fn intake_cost() -> anyhow::Result<Vec<Row>> {
    eprintln!("bench: intake cost (in-process CPU per request, loopback load, queue send)...");
    let n = 5000;
    let full = per_request_cpu(intake_router(), n).await;
    let base = per_request_cpu(baseline_router(), n).await;
    let rps_full = load(intake_router(), 5, 16).await;
    let rps_base = load(baseline_router(), 5, 16).await;
    // The queue send, separately: one event's commands to SQS on moto.
    let w = world("intake", GhlBehaviour::default()).await?;
    let q = SqsQueue::new(w.stack.sqs.clone(), w.stack.queue_url.clone(), None);
    let mapping = shared::mapping::Mapping::default_mapping();
    let sends = 200;
    let started = Instant::now();
    for i in 0..sends {
        let accepted = intake::events::event_commands(&mapping, event_body(i).as_bytes())?;
        q.send(&accepted.commands).await?;
    }
    let send_ms = started.elapsed().as_secs_f64() * 1000.0 / sends as f64;
    Ok(vec![
        row(
            "intake CPU per request (authenticate, validate, map, encode)",
            full,
            "µs",
            base,
            "router that reads the body and answers 202",
            &format!("{n} requests in process"),
        ),
        row(
            "intake requests per second on loopback (16 connections, queue stubbed)",
            rps_full,
            "req/s",
            rps_base,
            "baseline router, same load",
            "load generator shares the 2 cores",
        ),
        row("queue send per event (SendMessageBatch to moto)", send_ms, "ms", 0.0, "none", "measured separately"),
    ])
}

// ---- 5. Start and size ------------------------------------------------------------------------

async fn start_and_size() -> anyhow::Result<Vec<Row>> {
    eprintln!("bench: start time and memory of the release binaries...");
    let bins = PathBuf::from("target/x86_64-unknown-linux-gnu/release");
    anyhow::ensure!(bins.join("hello-lambda").is_file(), "release binaries missing: run `make bench` (it builds them)");
    let w = world("start", GhlBehaviour::default()).await?;
    let env = w.stack.config(&w.ghl_url, &w.sprout_url, LOC, &[]);
    let mut fn_env: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in [
        ("SYNC_SECRET_ID", env.secret_id.clone()),
        ("SYNC_QUEUE_URL", env.queue_url.clone()),
        ("SYNC_DLQ_URL", env.dlq_url.clone().unwrap_or_default()),
        ("SYNC_TABLE", env.table.clone()),
        ("GHL_BASE_URL", w.ghl_url.clone()),
        ("GHL_LOCATION_ID", LOC.into()),
        ("SPROUTVIDEO_BASE_URL", w.sprout_url.clone()),
        ("SPROUTVIDEO_PER_MINUTE", "100000".into()),
        ("RUST_LOG", "warn".into()),
    ] {
        fn_env.insert(k.into(), v);
    }
    let apigw = json!({"version":"2.0","routeKey":"GET /health","rawPath":"/health","rawQueryString":"","headers":{"host":"x"},
        "requestContext":{"accountId":"1","apiId":"a","domainName":"x","domainPrefix":"x","requestId":"r","routeKey":"GET /health",
        "stage":"$default","time":"29/Nov/2026:10:00:00 +0000","timeEpoch":0,
        "http":{"method":"GET","path":"/health","protocol":"HTTP/1.1","sourceIp":"127.0.0.1","userAgent":"bench"}},"isBase64Encoded":false});
    let cases = [
        ("hello-lambda", json!({"hello": "world"})),
        ("sv-intake", apigw),
        ("sv-worker", json!({"Records": []})),
        ("sv-reconciler", json!({"dry_run": true, "max_steps": 1})),
    ];
    let mut measured = BTreeMap::new();
    for (bin, event) in cases {
        let mut times = Vec::new();
        let mut rss = 0;
        for _ in 0..5 {
            let (t, r) = first_invocation(&bins.join(bin), &fn_env, event.clone()).await?;
            times.push(t);
            rss = rss.max(r);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        measured.insert(bin, (times[times.len() / 2], rss));
    }
    let (hello_ms, hello_rss) = measured["hello-lambda"];
    let mut rows = Vec::new();
    for bin in ["sv-intake", "sv-worker", "sv-reconciler"] {
        let (ms, rss) = measured[bin];
        rows.push(row(
            &format!("{bin}: start to first handled invocation (median of 5)"),
            ms,
            "ms",
            hello_ms,
            "hello-world lambda_runtime",
            "",
        ));
        rows.push(row(
            &format!("{bin}: peak RSS"),
            rss as f64 / 1024.0,
            "MiB",
            hello_rss as f64 / 1024.0,
            "hello-world lambda_runtime",
            "",
        ));
        let zip = Path::new("target/lambda-x86_64").join(bin).join("bootstrap.zip");
        let hello_zip = Path::new("target/lambda-bench/hello-lambda/bootstrap.zip");
        if let (Ok(z), Ok(h)) = (std::fs::metadata(&zip), std::fs::metadata(hello_zip)) {
            rows.push(row(
                &format!("{bin}: deployment zip"),
                z.len() as f64 / 1_048_576.0,
                "MiB",
                h.len() as f64 / 1_048_576.0,
                "hello-world zip",
                "",
            ));
        }
    }
    Ok(rows)
}

/// Starts a function binary against a minimal Lambda Runtime API and times its first answer.
async fn first_invocation(bin: &Path, env: &BTreeMap<String, String>, event: Value) -> anyhow::Result<(f64, u64)> {
    use axum::routing::{get, post};
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(4);
    let served = Arc::new(AtomicUsize::new(0));
    let event = Arc::new(event);
    let app = axum::Router::new()
        .route(
            "/2018-06-01/runtime/invocation/next",
            get({
                let served = served.clone();
                let event = event.clone();
                move || async move {
                    if served.fetch_add(1, Ordering::SeqCst) > 0 {
                        std::future::pending::<()>().await;
                    }
                    let deadline = (Utc::now().timestamp_millis() + 60_000).to_string();
                    (
                        [
                            ("lambda-runtime-aws-request-id", "req-1".to_string()),
                            ("lambda-runtime-deadline-ms", deadline),
                            (
                                "lambda-runtime-invoked-function-arn",
                                "arn:aws:lambda:us-east-1:123456789012:function:bench".to_string(),
                            ),
                            ("lambda-runtime-trace-id", "Root=1-0-0".to_string()),
                        ],
                        axum::Json((*event).clone()),
                    )
                }
            }),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post({
                let tx = tx.clone();
                move || async move {
                    let _ = tx.send(Instant::now()).await;
                    axum::http::StatusCode::ACCEPTED
                }
            }),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            post(|body: String| async move {
                eprintln!("bench: invocation error: {body}");
                axum::http::StatusCode::ACCEPTED
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .envs(env)
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or_default();
    let answered =
        tokio::time::timeout(Duration::from_secs(30), rx.recv()).await?.ok_or_else(|| anyhow::anyhow!("no answer"))?;
    let rss = peak_rss_kib(pid);
    let _ = child.kill().await;
    server.abort();
    Ok(((answered - started).as_secs_f64() * 1000.0, rss))
}
