//! Scheduled reconciliation: works out what GHL should hold for every SproutVideo person, reads
//! what GHL does hold in bulk, and queues only the difference, as the same commands the intake
//! sends.
//!
//! A run moves through stages, each a sequence of pages, and saves a checkpoint after every page
//! in the state table, so a run cut short by its deadline (or `max_steps`) continues where it
//! stopped on the next invocation without reading or queueing anything twice:
//! 1. `videos`: every video (titles, tags, durations);
//! 2. `logins`: every viewer login;
//! 3. `sessions`: engagement sessions in the look-back window, aggregated per person (best watch
//!    percent per video, last activity), kept per person in the state table for the run;
//! 4. `diff`: per person, desired state and rule actions against GHL (read in bulk with search
//!    by the sync tag, `searchAfter` paging) and the idempotency ledger; differences are queued;
//! 5. `orphans`: contacts tagged as logins whose SproutVideo login is gone. A contact is only
//!    judged by an unfiltered run, only when the sync's own record says it wrote that contact
//!    under that email, and only after its login was missing from two complete runs at least a
//!    day apart. Then the login tag is removed (the contact and its history stay); deletion is
//!    opt-in and capped per run. A dry run shows what would happen and records nothing;
//! 6. `access` (with `[[access]]` rules in the mapping): every GHL contact carrying a rule's tag
//!    against the SproutVideo login of its email and that login's grants; a contact missing its
//!    login or a grant, and one whose login holds grants of rules it no longer meets (access the
//!    sync recorded granting), gets a "contact changed" command, which the worker applies as it
//!    applies GHL's webhooks. A dry run lists them (`grant access`, `revoke access`).
//!
//! Runs and checkpoints:
//! - one run at a time: a run holds a lease in the state table while it works; a second
//!   invocation that finds the lease held stops at once and says so;
//! - a dry run has its own checkpoint and scratch data: it never resumes, changes or finishes a
//!   real run, and never queues;
//! - the checkpoint stays a few hundred bytes whatever the backfill's size (page lists are
//!   counted, not named; plan lines are capped).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use tokio::time::Instant;

use shared::commands::{CommandBody, DesiredContact, IdempotencyKey, Source, SyncCommand};
use shared::facts::rule_commands;
use shared::ghl::{Contact, GhlClient, GhlError, SearchFilter, SearchPaging, SearchRequest};
use shared::identity::{ConflictRecord, Email, conflict_value_name};
use shared::mapping::{ContactInput, CustomFieldCatalog, Mapping, MappingError, Origin, WatchFacts};
use shared::queue::{CommandQueue, QueueError};
use shared::sprout::{MAX_PER_PAGE, SessionQuery, SproutClient, SproutError};
use shared::state::{Claim, Holder, StateError, StateStore};

const CHECKPOINT: &str = "reconcile#checkpoint";
const DRY_CHECKPOINT: &str = "reconcile#checkpoint#dry";
/// A contact whose login was first found missing, by email: `{"since": unix seconds, "run": id}`.
const ORPHAN_PREFIX: &str = "reconcile#orphan#";
/// How long a login must have been missing (across complete runs) before the contact is acted on.
const ORPHAN_GRACE_SECS: i64 = 24 * 3600;
/// A run's lease when the invocation has no deadline (a local run).
const LOCAL_LEASE: Duration = Duration::from_secs(3600);
const LAST_REPORT: &str = "reconcile#last";
/// Scratch data of a run lives this long.
const SCRATCH_TTL: Duration = Duration::from_secs(3 * 24 * 3600);
/// An unfinished run older than this starts over: its first pages' scratch data may be gone.
const RESUME_LIMIT_SECS: i64 = 2 * 24 * 3600;
/// GHL search page size for the bulk read (the largest GHL is known to serve).
pub const SEARCH_PAGE: u32 = 500;

/// What an invocation was asked to do (the Lambda input, or the local command's flags).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileInput {
    /// Plan only: report what would change, queue nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Backfill: look at sessions since this day instead of the look-back window.
    #[serde(default)]
    pub since: Option<NaiveDate>,
    /// Only these people.
    #[serde(default)]
    pub emails: Option<Vec<String>>,
    /// Stop after this many pages of work; the next invocation continues.
    #[serde(default)]
    pub max_steps: Option<u32>,
    /// Drop an unfinished run and start over.
    #[serde(default)]
    pub restart: bool,
}

#[derive(Debug, Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Sprout(#[from] SproutError),
    #[error(transparent)]
    Ghl(#[from] GhlError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("invalid input: {0}")]
    Input(String),
    #[error(
        "another reconciliation run holds the lease (a scheduled run still working, or one that stopped \
         less than its lease ago); this invocation did nothing"
    )]
    Busy,
    #[error(
        "another run took over this run's lease (this one was paused longer than its lease); it stopped \
         without writing its checkpoint"
    )]
    LeaseLost,
    #[error(
        "this run's page data expired before it finished (it is kept three days); the run was dropped and \
         the next invocation starts over"
    )]
    ScratchGone,
}

impl ReconcileError {
    /// Whether the next run may succeed without anyone changing the setup.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Sprout(e) => e.is_retryable(),
            Self::Ghl(e) => e.is_retryable(),
            Self::State(e) => e.is_retryable(),
            Self::Queue(_) | Self::Busy | Self::LeaseLost | Self::ScratchGone => true,
            Self::Mapping(_) | Self::Input(_) => false,
        }
    }
}

/// The lease that lets one run work at a time, renewed at every checkpoint.
struct RunLease {
    key: IdempotencyKey,
    holder: Holder,
    deadline: Option<Instant>,
    margin: Duration,
}

impl RunLease {
    /// Until the invocation's deadline (and the margin), or [`LOCAL_LEASE`] without one.
    fn length(&self) -> Duration {
        match self.deadline {
            Some(d) => d.saturating_duration_since(Instant::now()) + self.margin,
            None => LOCAL_LEASE,
        }
    }

    /// Extends the lease; an error when another run took it over.
    async fn renew(&self, store: &dyn StateStore) -> Result<(), ReconcileError> {
        if store.renew_claim(&self.key, self.length(), &self.holder).await? {
            Ok(())
        } else {
            Err(ReconcileError::LeaseLost)
        }
    }
}

/// One line of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanLine {
    pub email: String,
    pub action: String,
    pub reason: String,
}

/// The summary a run returns and logs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub run_id: String,
    pub dry_run: bool,
    /// False when the run stopped at its deadline and continues next time.
    pub complete: bool,
    pub since: Option<NaiveDate>,
    pub until: Option<NaiveDate>,
    pub people_seen: u64,
    pub in_sync: u64,
    pub to_create: u64,
    pub to_update: u64,
    pub actions_pending: u64,
    /// Contacts whose login is missing in this run (including those still within their grace).
    pub orphans: u64,
    /// Of those, first found missing now or less than a day ago: nothing done yet.
    pub orphans_pending: u64,
    pub orphans_untagged: u64,
    pub orphans_deleted: u64,
    pub commands_queued: u64,
    pub ghl_calls: u64,
    pub sproutvideo_calls: u64,
    pub duration_ms: u64,
    pub plan: Vec<PlanLine>,
    /// Plan lines left out beyond the configured limit.
    pub plan_omitted: u64,
    /// People of this run whose last write had to leave out an identifier (a phone) that
    /// another GHL contact holds; listed in `conflicts` up to the plan limit.
    #[serde(default)]
    pub identity_conflicts: u64,
    #[serde(default)]
    pub conflicts: Vec<ConflictLine>,
    /// GHL contacts carrying an access rule's tag.
    #[serde(default)]
    pub access_contacts: u64,
    /// Of those, missing their login or a grant.
    #[serde(default)]
    pub access_to_grant: u64,
    /// Logins holding grants of rules their contact no longer meets.
    #[serde(default)]
    pub access_to_revoke: u64,
}

/// A person's standing identity conflict, as the worker recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictLine {
    pub email: String,
    #[serde(flatten)]
    pub record: ConflictRecord,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stage {
    Videos,
    Logins,
    Sessions,
    Diff,
    Orphans,
    Access,
    Done,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    input: ReconcileInput,
    stage: Stage,
    /// Next page of the current listing stage.
    page: u32,
    /// Video pages stored for this run.
    video_pages: u32,
    /// How many lists of people first seen on a page were stored (`new#0`, `new#1`, ...).
    people_pages: usize,
    /// Next list to diff.
    diff_index: usize,
    started_at: i64,
    report: Report,
}

/// What SproutVideo says about one person in this run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Aggregate {
    #[serde(default)]
    login: bool,
    #[serde(default)]
    lead: bool,
    /// video id → (best percent, last activity as unix seconds)
    #[serde(default)]
    videos: BTreeMap<String, (f64, i64)>,
    /// The list of people first seen (`new#N`) this person was put on. A list the checkpoint
    /// does not count yet (its invocation failed before saving) is written again on the retry,
    /// with the person on it.
    #[serde(default)]
    listed: Option<usize>,
}

impl Aggregate {
    fn merge(&mut self, o: &Aggregate) {
        self.login |= o.login;
        self.lead |= o.lead;
        for (v, (p, at)) in &o.videos {
            let e = self.videos.entry(v.clone()).or_insert((0.0, 0));
            e.0 = e.0.max(*p);
            e.1 = e.1.max(*at);
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct VideoInfo {
    title: String,
    duration: Option<f64>,
    tags: Vec<String>,
}

pub struct Reconciler {
    pub sprout: SproutClient,
    pub ghl: GhlClient,
    pub catalog: Arc<CustomFieldCatalog>,
    pub store: Arc<dyn StateStore>,
    pub queue: Arc<dyn CommandQueue>,
    pub mapping: Arc<Mapping>,
    pub lookback_days: u32,
    pub plan_lines: usize,
    pub delete_orphans: bool,
    /// Most contacts deleted in one run when `delete_orphans` is on.
    pub max_orphan_deletes: u64,
    /// Stop this long before the deadline.
    pub safety_margin: Duration,
    /// Contacts per GHL search page ([`SEARCH_PAGE`]).
    pub search_page_size: u32,
}

struct Run<'a> {
    r: &'a Reconciler,
    lease: &'a RunLease,
    cp: Checkpoint,
    run_id: String,
    filter: Option<BTreeSet<String>>,
    deadline: Option<Instant>,
    steps_left: Option<u32>,
    videos: HashMap<String, VideoInfo>,
    actual: Option<HashMap<String, Contact>>,
}

impl Reconciler {
    /// Runs (or continues) a reconciliation until it is done, `deadline` is near, or the
    /// input's `max_steps` are spent. `progress` receives one line per page.
    pub async fn run(
        &self,
        input: ReconcileInput,
        deadline: Option<Instant>,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Report, ReconcileError> {
        let lease = RunLease {
            key: IdempotencyKey::derive(
                &Source::Reconcile(if input.dry_run { "lease:dry" } else { "lease" }.into()),
                None,
                "reconcile_run",
            ),
            holder: Holder::new(),
            deadline,
            margin: self.safety_margin,
        };
        match self.store.claim(&lease.key, lease.length(), &lease.holder).await? {
            Claim::Fresh | Claim::Retake { .. } => {}
            Claim::Busy | Claim::Done { .. } => return Err(ReconcileError::Busy),
        }
        let out = self.run_leased(input, &lease, progress).await;
        // Only this run's own lease is released: a lapsed one may be another run's now.
        if let Err(e) = self.store.release(&lease.key, &lease.holder).await {
            tracing::warn!(error = %e, "could not release the run lease; the next run waits for it to lapse");
        }
        out
    }

    async fn run_leased(
        &self,
        input: ReconcileInput,
        lease: &RunLease,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Report, ReconcileError> {
        let deadline = lease.deadline;
        let started = Instant::now();
        let ghl_before = self.ghl.stats().requests.load(Ordering::Relaxed);
        let sprout_before = self.sprout.requests_sent();
        let checkpoint = checkpoint_name(input.dry_run);
        let existing = match self.store.get_value(checkpoint).await? {
            Some(raw) if !input.restart => serde_json::from_str::<Checkpoint>(&raw).ok(),
            _ => None,
        };
        let cp = match existing {
            Some(cp) if cp.stage != Stage::Done && Utc::now().timestamp() - cp.started_at > RESUME_LIMIT_SECS => {
                progress(&format!(
                    "run {} started more than {} hours ago and its page data may have expired; starting over",
                    cp.report.run_id,
                    RESUME_LIMIT_SECS / 3600
                ));
                self.new_checkpoint(input)?
            }
            Some(cp) if cp.stage != Stage::Done => {
                progress(&format!("continuing run {} at stage {:?}", cp.report.run_id, cp.stage));
                let mut cp = cp;
                cp.input.max_steps = input.max_steps;
                cp
            }
            _ => self.new_checkpoint(input)?,
        };
        let run_id = cp.report.run_id.clone();
        let filter = cp
            .input
            .emails
            .as_ref()
            .map(|l| l.iter().filter_map(|e| Email::parse(e).ok()).map(|e| e.to_string()).collect());
        let steps_left = cp.input.max_steps;
        let mut run =
            Run { r: self, lease, cp, run_id, filter, deadline, steps_left, videos: HashMap::new(), actual: None };
        let finished = run.drive(progress).await?;
        lease.renew(self.store.as_ref()).await?;
        let mut report = run.cp.report.clone();
        report.ghl_calls += self.ghl.stats().requests.load(Ordering::Relaxed) - ghl_before;
        report.sproutvideo_calls += self.sprout.requests_sent() - sprout_before;
        report.duration_ms += started.elapsed().as_millis() as u64;
        report.complete = finished;
        if finished {
            self.store.delete_value(checkpoint).await?;
            if !report.dry_run {
                let mut last = report.clone();
                last.plan.clear();
                self.store.put_value(LAST_REPORT, &serde_json::to_string(&last).expect("report"), None).await?;
            }
        } else {
            run.cp.report = report.clone();
            self.save(&run.cp).await?;
        }
        Ok(report)
    }

    fn new_checkpoint(&self, input: ReconcileInput) -> Result<Checkpoint, ReconcileError> {
        let today = Utc::now().date_naive();
        let since = input.since.unwrap_or_else(|| today - chrono::Duration::days(self.lookback_days as i64));
        if since > today {
            return Err(ReconcileError::Input(format!("since {since} is in the future")));
        }
        let run_id = format!("{}-{:04x}", Utc::now().format("%Y%m%dT%H%M%S"), fastrand::u16(..));
        Ok(Checkpoint {
            stage: Stage::Videos,
            page: 1,
            video_pages: 0,
            people_pages: 0,
            diff_index: 0,
            started_at: Utc::now().timestamp(),
            report: Report {
                run_id,
                dry_run: input.dry_run,
                since: Some(since),
                until: Some(today),
                ..Default::default()
            },
            input,
        })
    }

    async fn save(&self, cp: &Checkpoint) -> Result<(), ReconcileError> {
        let mut slim = cp.clone();
        slim.report.plan.truncate(self.plan_lines);
        let name = checkpoint_name(cp.input.dry_run);
        self.store.put_value(name, &serde_json::to_string(&slim).expect("checkpoint"), Some(SCRATCH_TTL)).await?;
        Ok(())
    }
}

impl Run<'_> {
    fn key(&self, what: &str) -> String {
        format!("recon#{}#{what}", self.run_id)
    }

    /// One unit of work was done; false when the run must stop here.
    fn may_continue(&mut self) -> bool {
        if let Some(s) = &mut self.steps_left {
            *s = s.saturating_sub(1);
            if *s == 0 {
                return false;
            }
        }
        match self.deadline {
            Some(d) => Instant::now() + self.r.safety_margin < d,
            None => true,
        }
    }

    /// Renews the lease, then saves the run's progress (a run that lost its lease writes nothing).
    async fn checkpoint(&mut self) -> Result<(), ReconcileError> {
        self.lease.renew(self.r.store.as_ref()).await?;
        self.r.save(&self.cp).await
    }

    /// Returns true when the run finished.
    async fn drive(&mut self, progress: &(dyn Fn(&str) + Sync)) -> Result<bool, ReconcileError> {
        loop {
            let stage = self.cp.stage;
            match stage {
                Stage::Videos => {
                    let page = self
                        .r
                        .sprout
                        .page::<shared::sprout::Video>(&["videos"], "videos", &[], self.cp.page, MAX_PER_PAGE)
                        .await?;
                    let infos: HashMap<String, VideoInfo> = page
                        .items
                        .iter()
                        .map(|v| {
                            let info = VideoInfo {
                                title: v.title.clone().unwrap_or_else(|| v.id.clone()),
                                duration: v.duration,
                                tags: v.tags.clone(),
                            };
                            (v.id.clone(), info)
                        })
                        .collect();
                    if !infos.is_empty() {
                        let name = self.key(&format!("videos#{}", self.cp.page));
                        self.r
                            .store
                            .put_value(&name, &serde_json::to_string(&infos).expect("videos"), Some(SCRATCH_TTL))
                            .await?;
                        self.cp.video_pages = self.cp.page;
                        self.videos.extend(infos);
                    }
                    progress(&format!("videos: page {} ({} videos)", self.cp.page, page.items.len()));
                    self.advance(page.has_next && !page.items.is_empty(), Stage::Logins);
                }
                Stage::Logins => {
                    let page = self.r.sprout.logins_page(self.cp.page, MAX_PER_PAGE).await?;
                    let mut frags: HashMap<String, Aggregate> = HashMap::new();
                    for l in &page.items {
                        if let Some(e) = l.email.as_deref().and_then(|e| self.person(e)) {
                            frags.entry(e).or_default().login = true;
                        }
                    }
                    let new = self.merge_people(frags).await?;
                    progress(&format!(
                        "logins: page {} ({} logins, {} new people)",
                        self.cp.page,
                        page.items.len(),
                        new
                    ));
                    self.advance(page.has_next && !page.items.is_empty(), Stage::Sessions);
                }
                Stage::Sessions => {
                    self.load_videos().await?;
                    let q =
                        SessionQuery { start_date: self.cp.report.since, end_date: self.cp.report.until, vemail: None };
                    let page = self.r.sprout.sessions_page(None, &q, self.cp.page, MAX_PER_PAGE).await?;
                    let mut frags: HashMap<String, Aggregate> = HashMap::new();
                    for s in &page.items {
                        let Some(e) = s.vemail.as_deref().and_then(|e| self.person(e)) else { continue };
                        let a = frags.entry(e).or_default();
                        a.lead = true;
                        if let Some(v) = &s.video_id {
                            let dur = self.videos.get(v).and_then(|i| i.duration);
                            let p = s.watch_percent(dur).unwrap_or(0.0);
                            let at = s.last_seen().map(|t| t.0.timestamp()).unwrap_or(0);
                            let entry = a.videos.entry(v.clone()).or_insert((0.0, 0));
                            entry.0 = entry.0.max(p);
                            entry.1 = entry.1.max(at);
                        }
                    }
                    let new = self.merge_people(frags).await?;
                    progress(&format!(
                        "sessions: page {} ({} sessions, {} new people)",
                        self.cp.page,
                        page.items.len(),
                        new
                    ));
                    self.advance(page.has_next && !page.items.is_empty(), Stage::Diff);
                }
                Stage::Diff => {
                    if self.cp.diff_index >= self.cp.people_pages {
                        self.cp.stage = Stage::Orphans;
                        self.checkpoint().await?;
                        continue;
                    }
                    self.load_videos().await?;
                    self.load_actual(progress).await?;
                    let name = self.key(&format!("new#{}", self.cp.diff_index));
                    let emails: Vec<String> = match self.r.store.get_value(&name).await? {
                        Some(raw) => serde_json::from_str(&raw).unwrap_or_default(),
                        None => return Err(self.scratch_gone().await),
                    };
                    let queued = self.diff_people(&emails).await?;
                    progress(&format!(
                        "diff: {}/{} ({} people, {} commands)",
                        self.cp.diff_index + 1,
                        self.cp.people_pages,
                        emails.len(),
                        queued
                    ));
                    self.cp.diff_index += 1;
                    self.checkpoint().await?;
                    if !self.may_continue() {
                        return Ok(false);
                    }
                }
                Stage::Orphans => {
                    self.load_actual(progress).await?;
                    // Untagging or deleting is done only by the run holding the lease.
                    self.lease.renew(self.r.store.as_ref()).await?;
                    self.orphans().await?;
                    self.cp.stage = Stage::Access;
                    progress(&format!("orphans: {}", self.cp.report.orphans));
                    self.checkpoint().await?;
                }
                Stage::Access => {
                    if !self.r.mapping.access.is_empty() {
                        let queued = self.access().await?;
                        progress(&format!(
                            "access: {} contacts with a rule's tag, {} to grant, {} to revoke ({queued} commands)",
                            self.cp.report.access_contacts,
                            self.cp.report.access_to_grant,
                            self.cp.report.access_to_revoke
                        ));
                    }
                    self.cp.stage = Stage::Done;
                }
                Stage::Done => return Ok(true),
            }
            // Listing stages save their progress after every page (the diff stage does so above).
            if matches!(stage, Stage::Videos | Stage::Logins | Stage::Sessions) {
                self.checkpoint().await?;
                if !self.may_continue() {
                    return Ok(false);
                }
            }
        }
    }

    /// Moves to the next page, or to `next` stage at page 1.
    fn advance(&mut self, more: bool, next: Stage) {
        if more {
            self.cp.page += 1;
        } else {
            self.cp.stage = next;
            self.cp.page = 1;
        }
    }

    /// A normalised email this run covers (the `emails` filter applied).
    fn person(&self, raw: &str) -> Option<String> {
        let e = self.r.mapping.email(raw).ok()?.to_string();
        match &self.filter {
            Some(f) if !f.contains(&e) => None,
            _ => Some(e),
        }
    }

    /// Merges a page's fragments into the run's per-person aggregates; records who is new.
    /// The list of new people is written before their aggregates, and a person counts as seen
    /// only on a list the checkpoint counts: a failure between the writes, or before the
    /// checkpoint, lists them again on the retry instead of leaving them out of the diff.
    async fn merge_people(&mut self, frags: HashMap<String, Aggregate>) -> Result<usize, ReconcileError> {
        if frags.is_empty() {
            return Ok(0);
        }
        let list = self.cp.people_pages;
        let names: Vec<String> = frags.keys().map(|e| self.key(&format!("p#{e}"))).collect();
        let existing = self.r.store.get_values(&names).await?;
        let mut writes = Vec::with_capacity(frags.len());
        let mut new_people = Vec::new();
        for (email, frag) in frags {
            let name = self.key(&format!("p#{email}"));
            let mut agg: Aggregate =
                existing.get(&name).and_then(|raw| serde_json::from_str(raw).ok()).unwrap_or_default();
            if agg.listed.is_none_or(|k| k >= list) {
                new_people.push(email.clone());
                agg.listed = Some(list);
            }
            agg.merge(&frag);
            writes.push((name, serde_json::to_string(&agg).expect("aggregate")));
        }
        let n = new_people.len();
        if n > 0 {
            // A list written by an attempt that failed before its checkpoint keeps its people
            // (a page read again may have shifted).
            let name = self.key(&format!("new#{list}"));
            if let Some(raw) = self.r.store.get_value(&name).await? {
                let earlier: Vec<String> = serde_json::from_str(&raw).unwrap_or_default();
                new_people.extend(earlier);
            }
            new_people.sort();
            new_people.dedup();
            self.r
                .store
                .put_value(&name, &serde_json::to_string(&new_people).expect("list"), Some(SCRATCH_TTL))
                .await?;
        }
        self.r.store.put_values(&writes, Some(SCRATCH_TTL)).await?;
        if n > 0 {
            self.cp.people_pages += 1;
            self.cp.report.people_seen += new_people.len() as u64;
        }
        Ok(n)
    }

    async fn load_videos(&mut self) -> Result<(), ReconcileError> {
        if !self.videos.is_empty() || self.cp.video_pages == 0 {
            return Ok(());
        }
        let names: Vec<String> = (1..=self.cp.video_pages).map(|p| self.key(&format!("videos#{p}"))).collect();
        for raw in self.r.store.get_values(&names).await?.values() {
            if let Ok(m) = serde_json::from_str::<HashMap<String, VideoInfo>>(raw) {
                self.videos.extend(m);
            }
        }
        Ok(())
    }

    /// Every contact carrying the sync tag, by email, read in bulk once per invocation.
    async fn load_actual(&mut self, progress: &(dyn Fn(&str) + Sync)) -> Result<(), ReconcileError> {
        if self.actual.is_some() {
            return Ok(());
        }
        let req = SearchRequest {
            location_id: String::new(),
            page_limit: self.r.search_page_size,
            page: None,
            search_after: None,
            query: None,
            filters: vec![SearchFilter::eq("tags", self.r.mapping.sync_tag.clone())],
            sort: vec![],
        };
        let all: Vec<Contact> = self.r.ghl.search(req, SearchPaging::SearchAfter).try_collect().await?;
        progress(&format!("GHL: {} contacts carry the '{}' tag", all.len(), self.r.mapping.sync_tag));
        self.actual =
            Some(all.into_iter().filter_map(|c| Some((c.email.as_deref()?.trim().to_lowercase(), c))).collect());
        Ok(())
    }

    fn plan(&mut self, email: &str, action: &str, reason: String) {
        if self.cp.report.plan.len() < self.r.plan_lines {
            self.cp.report.plan.push(PlanLine { email: email.into(), action: action.into(), reason });
        } else {
            self.cp.report.plan_omitted += 1;
        }
    }

    /// Diffs people and queues their differences; returns the number of commands.
    async fn diff_people(&mut self, emails: &[String]) -> Result<usize, ReconcileError> {
        let names: Vec<String> = emails.iter().map(|e| self.key(&format!("p#{e}"))).collect();
        let aggs = self.r.store.get_values(&names).await?;
        self.conflicts(emails).await?;
        let mut commands = Vec::new();
        let now = Utc::now();
        for email in emails {
            let Some(raw) = aggs.get(&self.key(&format!("p#{email}"))) else {
                return Err(self.scratch_gone().await);
            };
            let Ok(agg) = serde_json::from_str::<Aggregate>(raw) else {
                continue;
            };
            let origin = if agg.login { Origin::Login } else { Origin::Lead };
            let mut desired =
                self.r.mapping.desired(&ContactInput { email: email.clone(), ..Default::default() }, origin)?;
            if agg.login
                && agg.lead
                && let Some(t) = &self.r.mapping.tags.lead
            {
                desired.tags.insert(t.clone());
            }
            let mut rule_cmds = Vec::new();
            let mut last: Option<WatchFacts> = None;
            for (video_id, (percent, at)) in &agg.videos {
                let info = self.videos.get(video_id).cloned().unwrap_or_default();
                let w = WatchFacts {
                    video_id: video_id.clone(),
                    video_title: if info.title.is_empty() { video_id.clone() } else { info.title },
                    video_tags: info.tags,
                    percent: *percent,
                    at: chrono::DateTime::from_timestamp(*at, 0).unwrap_or(now),
                };
                let actions = self.r.mapping.watch(&desired.email, &w);
                desired.tags.extend(actions.tags);
                let identity = desired.identity();
                for c in rule_commands(&identity, &w, actions.notes, actions.tasks, now) {
                    if !self.r.store.is_done(&c.key).await? {
                        rule_cmds.push(c);
                    }
                }
                if last.as_ref().is_none_or(|l| w.at >= l.at) {
                    last = Some(w);
                }
            }
            desired.custom_fields.extend(self.r.mapping.summary_fields(
                agg.videos.len(),
                last.as_ref(),
                &desired.email,
            ));
            let found = self.actual.as_ref().and_then(|a| a.get(email.as_str())).cloned();
            let actual = match found {
                Some(c) => Some(c),
                None => self.recorded_contact(email).await?,
            };
            let diff = match &actual {
                None => Some(("create", "not in GHL".to_string())),
                Some(c) => self.differences(&desired, c).await?.map(|r| ("update", r)),
            };
            match &diff {
                Some((action, reason)) => {
                    if *action == "create" {
                        self.cp.report.to_create += 1;
                    } else {
                        self.cp.report.to_update += 1;
                    }
                    self.plan(email, action, reason.clone());
                    commands.push(SyncCommand::new(
                        Source::Reconcile(self.run_id.clone()),
                        "repair_contact",
                        now,
                        CommandBody::RepairContact { contact: desired },
                    ));
                }
                None if rule_cmds.is_empty() => self.cp.report.in_sync += 1,
                None => {}
            }
            for c in &rule_cmds {
                let what = match &c.body {
                    CommandBody::AddNote { .. } => "note",
                    _ => "task",
                };
                self.plan(email, what, "rule action not applied yet".into());
            }
            self.cp.report.actions_pending += rule_cmds.len() as u64;
            commands.extend(rule_cmds);
        }
        let n = commands.len();
        if !self.cp.input.dry_run && n > 0 {
            // Nothing is queued by a run another one took over.
            self.lease.renew(self.r.store.as_ref()).await?;
            self.r.queue.send(&commands).await?;
            self.cp.report.commands_queued += n as u64;
        }
        Ok(n)
    }

    /// Course access: compares what the access rules call for with the logins and grants
    /// SproutVideo holds, and queues a "contact changed" for each contact that differs.
    async fn access(&mut self) -> Result<usize, ReconcileError> {
        let rules = self.r.mapping.access.clone();
        let location = self.r.ghl.location_id().to_string();
        // Every contact carrying a rule's tag.
        let mut tagged: BTreeMap<String, Contact> = BTreeMap::new();
        for r in &rules {
            let req = SearchRequest {
                location_id: String::new(),
                page_limit: self.r.search_page_size,
                page: None,
                search_after: None,
                query: None,
                filters: vec![SearchFilter::eq("tags", r.normalised_tag())],
                sort: vec![],
            };
            let found: Vec<Contact> = self.r.ghl.search(req, SearchPaging::SearchAfter).try_collect().await?;
            tagged.extend(found.into_iter().map(|c| (c.id.clone(), c)));
        }
        // Each rule's videos, and every video a rule names.
        let mut by_tag_id: HashMap<String, Vec<String>> = HashMap::new();
        let mut videos_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in &rules {
            let mut v: BTreeSet<String> = r.video_ids.iter().cloned().collect();
            for t in &r.video_tag_ids {
                if !by_tag_id.contains_key(t) {
                    let list = self.r.sprout.list_videos_tagged(t).await?;
                    by_tag_id.insert(t.clone(), list.into_iter().map(|x| x.id).collect());
                }
                v.extend(by_tag_id[t].iter().cloned());
            }
            videos_of.insert(r.tag.clone(), v);
        }
        let managed: BTreeSet<&String> = videos_of.values().flatten().collect();
        let logins: HashMap<String, String> = self
            .r
            .sprout
            .list_logins()
            .await?
            .into_iter()
            .filter_map(|l| Some((l.email.as_deref()?.trim().to_lowercase(), l.id)))
            .collect();
        let mut granted: HashMap<String, BTreeSet<String>> = HashMap::new();
        for g in self.r.sprout.list_access_grants().await? {
            if let (Some(login), Some(video)) = (g.login_id, g.video_id) {
                granted.entry(login).or_default().insert(video);
            }
        }
        let mut changed: BTreeMap<String, String> = BTreeMap::new();
        let mut tagged_emails: BTreeSet<String> = BTreeSet::new();
        for c in tagged.values() {
            let Some(email) = c.email.as_deref().and_then(|e| self.person(e)) else { continue };
            tagged_emails.insert(email.clone());
            self.cp.report.access_contacts += 1;
            let desired: BTreeSet<&String> = self
                .r
                .mapping
                .access_met(&c.tags)
                .iter()
                .flat_map(|r| videos_of.get(&r.tag).into_iter().flatten())
                .collect();
            let have = logins.get(&email).and_then(|l| granted.get(l));
            let missing = desired.iter().filter(|v| !have.is_some_and(|h| h.contains(**v))).count();
            let extra = have.map_or(0, |h| h.iter().filter(|v| managed.contains(v) && !desired.contains(v)).count());
            if !logins.contains_key(&email) {
                self.cp.report.access_to_grant += 1;
                self.plan(&email, "grant access", "no SproutVideo login for the email".into());
            } else if missing > 0 {
                self.cp.report.access_to_grant += 1;
                self.plan(&email, "grant access", format!("{missing} grant(s) missing"));
            } else if extra > 0 {
                self.cp.report.access_to_revoke += 1;
                self.plan(&email, "revoke access", format!("{extra} grant(s) of rules no longer met"));
            } else {
                continue;
            }
            changed.insert(c.id.clone(), email);
        }
        // Logins holding the rules' videos whose contact carries no rule's tag: revoked when the
        // sync recorded granting that contact access (grants made by hand are left alone).
        for (email, login) in &logins {
            if tagged_emails.contains(email) || self.person(email).is_none() {
                continue;
            }
            let extra = granted.get(login).map_or(0, |h| h.iter().filter(|v| managed.contains(v)).count());
            if extra == 0 {
                continue;
            }
            let Some(contact) = self.r.ghl.find_duplicate(Some(email), None).await? else { continue };
            let record = shared::state::access_value_name(&location, &contact.id);
            if self.r.store.get_value(&record).await?.is_none() {
                continue;
            }
            self.cp.report.access_to_revoke += 1;
            self.plan(email, "revoke access", format!("{extra} grant(s), and the contact carries no rule's tag"));
            changed.insert(contact.id.clone(), email.clone());
        }
        let now = Utc::now();
        let commands: Vec<SyncCommand> = changed
            .keys()
            .map(|contact_id| {
                SyncCommand::new(
                    Source::Reconcile(format!("{}:access:{contact_id}", self.run_id)),
                    "contact_changed",
                    now,
                    CommandBody::ContactChanged { location_id: location.clone(), contact_id: contact_id.clone() },
                )
            })
            .collect();
        let n = commands.len();
        if !self.cp.input.dry_run && n > 0 {
            self.lease.renew(self.r.store.as_ref()).await?;
            self.r.queue.send(&commands).await?;
            self.cp.report.commands_queued += n as u64;
        }
        Ok(n)
    }

    /// The run's page data is gone (it expired): the run cannot finish correctly. Its checkpoint
    /// is dropped, so the next invocation starts over.
    async fn scratch_gone(&self) -> ReconcileError {
        if let Err(e) = self.r.store.delete_value(checkpoint_name(self.cp.input.dry_run)).await {
            return e.into();
        }
        ReconcileError::ScratchGone
    }

    /// The contact the sync recorded for a person the bulk search did not return, read by id:
    /// GHL's search sees a write only after a short delay, so a contact written moments ago is
    /// not missing. `None` when the sync recorded none or GHL no longer has it.
    async fn recorded_contact(&self, email: &str) -> Result<Option<Contact>, ReconcileError> {
        let Ok(e) = Email::parse(email) else { return Ok(None) };
        let Some(person) = self.r.store.person(&e).await? else { return Ok(None) };
        match self.r.ghl.get_contact(&person.contact_id).await {
            // Only while it still carries the person's email: a contact whose email was changed
            // in GHL (or that was merged) is not theirs any more.
            Ok(c) if c.email.as_deref().is_some_and(|m| m.trim().eq_ignore_ascii_case(email)) => Ok(Some(c)),
            Ok(_) | Err(GhlError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Adds the people's recorded identity conflicts to the report.
    async fn conflicts(&mut self, emails: &[String]) -> Result<(), ReconcileError> {
        let names: Vec<String> =
            emails.iter().filter_map(|e| Email::parse(e).ok()).map(|e| conflict_value_name(&e)).collect();
        let found = self.r.store.get_values(&names).await?;
        for email in emails {
            let Some(record) = Email::parse(email)
                .ok()
                .and_then(|e| found.get(&conflict_value_name(&e)))
                .and_then(|raw| serde_json::from_str::<ConflictRecord>(raw).ok())
            else {
                continue;
            };
            self.cp.report.identity_conflicts += 1;
            if self.cp.report.conflicts.len() < self.r.plan_lines {
                self.cp.report.conflicts.push(ConflictLine { email: email.clone(), record });
            }
        }
        Ok(())
    }

    /// Why the contact differs from the desired state (fields the sync owns only), if it does.
    async fn differences(&self, d: &DesiredContact, c: &Contact) -> Result<Option<String>, ReconcileError> {
        let mut reasons = Vec::new();
        let lower = |s: &Option<String>| s.as_deref().map(|x| x.trim().to_lowercase());
        let first_have = c.first_name_lower_case.clone().or_else(|| lower(&c.first_name));
        if let Some(f) = &d.first_name
            && first_have.as_deref() != Some(f.to_lowercase().as_str())
        {
            reasons.push("firstName differs".to_string());
        }
        let last_have = c.last_name_lower_case.clone().or_else(|| lower(&c.last_name));
        if let Some(l) = &d.last_name
            && last_have.as_deref() != Some(l.to_lowercase().as_str())
        {
            reasons.push("lastName differs".to_string());
        }
        if let Some(p) = &d.phone
            && c.phone.as_deref() != Some(p.as_str())
        {
            reasons.push("phone differs".to_string());
        }
        if let Some(co) = &d.company_name
            && c.company_name.as_deref() != Some(co.as_str())
        {
            reasons.push("companyName differs".to_string());
        }
        let have: BTreeSet<String> = c.tags.iter().map(|t| t.to_lowercase()).collect();
        let missing: Vec<&str> = d.tags.iter().filter(|t| !have.contains(*t)).map(String::as_str).collect();
        if !missing.is_empty() {
            reasons.push(format!("missing tags: {}", missing.join(", ")));
        }
        if !d.custom_fields.is_empty() {
            for input in self.r.catalog.resolve(&d.custom_fields).await? {
                let current = c.custom_fields.iter().find(|f| f.id == input.id).map(|f| &f.value);
                if current != Some(&input.field_value) && !loosely_equal(current, &input.field_value) {
                    reasons.push(format!("custom field {} differs", input.id));
                }
            }
        }
        Ok((!reasons.is_empty()).then(|| reasons.join("; ")))
    }

    /// Contacts tagged as logins whose login is gone, judged over complete runs (see the module
    /// header). Only unfiltered runs judge: a run limited to some emails did not list everyone.
    async fn orphans(&mut self) -> Result<(), ReconcileError> {
        let Some(login_tag) = self.r.mapping.tags.login.clone() else { return Ok(()) };
        if self.filter.is_some() {
            return Ok(());
        }
        let candidates: Vec<(String, String)> = self
            .actual
            .as_ref()
            .map(|a| {
                a.iter()
                    .filter(|(_, c)| c.tags.iter().any(|t| t.eq_ignore_ascii_case(&login_tag)))
                    .map(|(e, c)| (e.clone(), c.id.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let now = Utc::now().timestamp();
        let mut deleted_this_run = 0u64;
        for chunk in candidates.chunks(100) {
            let names: Vec<String> = chunk.iter().map(|(e, _)| self.key(&format!("p#{e}"))).collect();
            let known = self.r.store.get_values(&names).await?;
            let marks: Vec<String> = chunk.iter().map(|(e, _)| format!("{ORPHAN_PREFIX}{e}")).collect();
            let marked = self.r.store.get_values(&marks).await?;
            for (email, id) in chunk {
                let mark = format!("{ORPHAN_PREFIX}{email}");
                let login_now = known
                    .get(&self.key(&format!("p#{email}")))
                    .and_then(|r| serde_json::from_str::<Aggregate>(r).ok())
                    .is_some_and(|a| a.login);
                if login_now {
                    if marked.contains_key(&mark) && !self.cp.input.dry_run {
                        self.r.store.delete_value(&mark).await?;
                    }
                    continue;
                }
                // Only a contact the sync itself wrote under this email: an email changed by hand
                // in GHL is not proof that anyone left.
                let ours = match Email::parse(email) {
                    Ok(e) => self.r.store.person(&e).await?.is_some_and(|p| p.contact_id == *id),
                    Err(_) => false,
                };
                if !ours {
                    continue;
                }
                self.cp.report.orphans += 1;
                let first: Option<OrphanMark> = marked.get(&mark).and_then(|r| serde_json::from_str(r).ok());
                let due = first.as_ref().is_some_and(|m| m.run != self.run_id && now - m.since >= ORPHAN_GRACE_SECS);
                if !due {
                    self.cp.report.orphans_pending += 1;
                    if first.is_none() && !self.cp.input.dry_run {
                        let m = OrphanMark { since: now, run: self.run_id.clone() };
                        self.r.store.put_value(&mark, &serde_json::to_string(&m).expect("mark"), None).await?;
                    }
                    self.plan(
                        email,
                        "orphan",
                        "login missing in SproutVideo; acted on only if still missing in a complete run a day later"
                            .into(),
                    );
                    continue;
                }
                let delete = self.r.delete_orphans && deleted_this_run < self.r.max_orphan_deletes;
                if self.cp.input.dry_run {
                    let what = if delete { "would be deleted" } else { "login tag would be removed" };
                    self.plan(email, "orphan", format!("login missing for over a day; {what}"));
                    continue;
                }
                if delete {
                    self.r.ghl.delete_contact(id).await?;
                    deleted_this_run += 1;
                    self.cp.report.orphans_deleted += 1;
                    self.plan(email, "orphan", "login missing for over a day; contact deleted (opt-in)".into());
                } else {
                    self.r.ghl.remove_tags(id, std::slice::from_ref(&login_tag)).await?;
                    self.cp.report.orphans_untagged += 1;
                    let capped = if self.r.delete_orphans { " (deletion cap reached for this run)" } else { "" };
                    self.plan(email, "orphan", format!("login missing for over a day; login tag removed{capped}"));
                }
                self.r.store.delete_value(&mark).await?;
            }
        }
        Ok(())
    }
}

/// When a contact's login was first found missing.
#[derive(Debug, Serialize, Deserialize)]
struct OrphanMark {
    since: i64,
    run: String,
}

fn checkpoint_name(dry_run: bool) -> &'static str {
    if dry_run { DRY_CHECKPOINT } else { CHECKPOINT }
}

/// Numbers GHL returns as strings (and the reverse) count as equal.
fn loosely_equal(have: Option<&Value>, want: &Value) -> bool {
    match (have, want) {
        (Some(Value::String(a)), Value::Number(b)) | (Some(Value::Number(b)), Value::String(a)) => {
            a.parse::<f64>().ok() == b.as_f64()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_keep_the_best_watch_and_latest_activity() {
        let mut a = Aggregate { login: true, ..Default::default() };
        a.videos.insert("v".into(), (40.0, 100));
        let mut b = Aggregate { lead: true, ..Default::default() };
        b.videos.insert("v".into(), (30.0, 200));
        b.videos.insert("w".into(), (90.0, 50));
        a.merge(&b);
        assert!(a.login && a.lead);
        assert_eq!(a.videos["v"], (40.0, 200));
        assert_eq!(a.videos["w"], (90.0, 50));
    }

    #[test]
    fn inputs_parse_from_the_documented_shapes() {
        let i: ReconcileInput = serde_json::from_str(r#"{"dry_run": true}"#).unwrap();
        assert!(i.dry_run);
        let i: ReconcileInput = serde_json::from_str(r#"{"since": "2026-11-01"}"#).unwrap();
        assert_eq!(i.since, NaiveDate::from_ymd_opt(2026, 11, 1));
        let i: ReconcileInput = serde_json::from_str(r#"{"emails": ["a@example.com"]}"#).unwrap();
        assert_eq!(i.emails.unwrap().len(), 1);
        assert!(serde_json::from_str::<ReconcileInput>(r#"{"dryrun": true}"#).is_err());
        let _: ReconcileInput = serde_json::from_str("{}").unwrap();
    }

    #[test]
    fn numbers_and_numeric_strings_compare_equal() {
        assert!(loosely_equal(Some(&Value::from("3")), &Value::from(3)));
        assert!(!loosely_equal(Some(&Value::from("x")), &Value::from(3)));
        assert!(!loosely_equal(None, &Value::from(3)));
    }
}
