//! Applies queued sync commands to GHL, exactly once in effect.
//!
//! - Upserts are skipped without a GHL call when the desired state's hash equals the last one
//!   applied; otherwise identity is checked when email and phone are both new (an email and a
//!   phone that belong to two contacts are never merged), the upsert carries only fields the
//!   sync owns, and tags go through the tags endpoint.
//! - Notes and tasks are claimed in the ledger before they are created. A claim left behind by
//!   a crash or an ambiguous failure is taken over by looking in GHL first (each note and task
//!   carries a short reference to its key), so a create is never repeated blindly.
//! - Failures are typed: transient ones are retried by the queue with growing delays,
//!   permanent ones are parked in the dead-letter queue with their reason.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use thiserror::Error;
use tracing::Instrument;

use shared::commands::{CommandBody, DesiredContact, IdempotencyKey, SyncCommand};
use shared::ghl::{CreateTaskParams, GhlClient, GhlError, NoteBody, UpsertContactDto, due_date};
use shared::identity::{Email, Identity};
use shared::mapping::{ContactInput, CustomFieldCatalog, Mapping, MappingError, Origin, WatchFacts};
use shared::queue::{CommandQueue, Parked, QueueError, WorkerQueues};
use shared::sprout::{SessionQuery, SproutClient, SproutError};
use shared::state::{Claim, PersonState, StateError, StateStore};

/// Why a command was not applied.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ApplyError {
    /// Worth retrying later (429, 5xx, timeouts, "may have written", a busy claim).
    #[error("{reason}")]
    /// `ambiguous`: GHL may have applied the write.
    Transient { reason: String, trace_id: Option<String>, ambiguous: bool },
    /// Will never succeed as is (422, invalid input, an identity conflict): park it.
    #[error("{reason}")]
    Permanent { reason: String, trace_id: Option<String> },
}

impl ApplyError {
    fn transient(reason: impl Into<String>) -> Self {
        Self::Transient { reason: reason.into(), trace_id: None, ambiguous: false }
    }
    fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent { reason: reason.into(), trace_id: None }
    }
}

impl From<GhlError> for ApplyError {
    fn from(e: GhlError) -> Self {
        let trace_id = e.trace_id().map(str::to_string);
        let reason = match &e {
            GhlError::Unauthorized { .. } | GhlError::Forbidden { .. } => {
                format!("{e}. Fix the GHL credential in the secret, then redrive this message.")
            }
            _ => e.to_string(),
        };
        if e.is_retryable() {
            let ambiguous = matches!(e, GhlError::MayHaveWritten { .. });
            Self::Transient { reason, trace_id, ambiguous }
        } else {
            Self::Permanent { reason, trace_id }
        }
    }
}

impl From<StateError> for ApplyError {
    fn from(e: StateError) -> Self {
        Self::transient(e.to_string())
    }
}

impl From<QueueError> for ApplyError {
    fn from(e: QueueError) -> Self {
        Self::transient(e.to_string())
    }
}

impl From<SproutError> for ApplyError {
    fn from(e: SproutError) -> Self {
        if e.is_retryable() { Self::transient(e.to_string()) } else { Self::permanent(e.to_string()) }
    }
}

impl From<MappingError> for ApplyError {
    fn from(e: MappingError) -> Self {
        if e.is_retryable() { Self::transient(e.to_string()) } else { Self::permanent(e.to_string()) }
    }
}

/// What applying a command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Written,
    /// Nothing to do (already applied, or no change).
    Unchanged,
}

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    Done(Applied),
    /// In the dead-letter queue with its reason.
    Parked,
    /// To be delivered again.
    Retry,
    /// Not started: the invocation's deadline left too little time to finish it. Delivered
    /// again right away, without a retry delay.
    Unfinished,
}

/// When the invocation must have answered, and how much time a command needs at least (the
/// GHL request timeout and a safety margin): no command starts once less than that remains.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Option<tokio::time::Instant>,
    margin: Duration,
}

impl Deadline {
    /// No deadline: every command is started.
    pub const NONE: Deadline = Deadline { at: None, margin: Duration::ZERO };

    pub fn new(at: tokio::time::Instant, margin: Duration) -> Self {
        Self { at: Some(at), margin }
    }

    /// Whether a command started now can still finish before the deadline.
    pub fn allows_start(&self) -> bool {
        self.at.is_none_or(|at| tokio::time::Instant::now() + self.margin <= at)
    }
}

/// One message as the queue delivered it.
#[derive(Debug, Clone)]
pub struct QueueMessage {
    pub id: String,
    pub body: String,
    pub receipt_handle: Option<String>,
    pub group_id: Option<String>,
    pub receive_count: u32,
}

/// What a batch came to. `failed` lists the ids the queue must deliver again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchOutcome {
    pub failed: Vec<String>,
    pub applied: usize,
    pub unchanged: usize,
    pub parked: usize,
}

pub struct Worker {
    pub ghl: GhlClient,
    pub catalog: Arc<CustomFieldCatalog>,
    pub store: Arc<dyn StateStore>,
    pub queues: Arc<dyn WorkerQueues>,
    pub commands: Arc<dyn CommandQueue>,
    pub sprout: Option<SproutClient>,
    pub mapping: Arc<Mapping>,
    /// How long a claim is held before another attempt may take it over.
    pub lease: Duration,
    /// After an ambiguous failure, how long before a retry may look and write again: longer
    /// than a request can still be in flight (twice the GHL request timeout).
    pub ambiguity_grace: Duration,
    /// First retry delay of a failed message, in seconds (doubles per receive).
    pub retry_base_secs: u64,
    /// Commands applied at once within a batch (one per message group at most).
    pub concurrency: usize,
    /// Look-back for a video's first session pull.
    pub lookback_days: u32,
}

/// Reference appended to notes and tasks so a later attempt can find what an earlier one wrote.
fn reference(key: &IdempotencyKey) -> String {
    format!("[sv-sync {}]", key.short())
}

fn task_value_name(email: &Email, external_id: &str) -> String {
    format!("task#{email}#{external_id}")
}

impl Worker {
    /// Applies one command.
    pub async fn apply(&self, cmd: &SyncCommand) -> Result<Applied, ApplyError> {
        match &cmd.body {
            CommandBody::UpsertContact { contact } => self.upsert(contact, false).await,
            CommandBody::RepairContact { contact } => self.upsert(contact, true).await,
            CommandBody::AddTags { identity, tags } => self.add_tags(identity, tags).await,
            CommandBody::AddNote { identity, body } => self.add_note(&cmd.key, identity, body).await,
            CommandBody::CreateTask { identity, external_id, title, body, due_at, assigned_to } => {
                let contact_id = self.contact_id(identity).await?;
                let marker = reference(&cmd.key);
                let full_body = match body {
                    Some(b) => format!("{b}\n\n{marker}"),
                    None => marker.clone(),
                };
                let params = CreateTaskParams {
                    title: title.clone(),
                    body: Some(full_body),
                    due_date: due_date(*due_at),
                    completed: false,
                    assigned_to: assigned_to.clone(),
                };
                let (task_id, applied) = self
                    .once(
                        &cmd.key,
                        || async {
                            let tasks = self.ghl.list_tasks(&contact_id).await?;
                            Ok(tasks
                                .into_iter()
                                .find(|t| t.body.as_deref().is_some_and(|b| b.contains(&marker)))
                                .map(|t| t.id))
                        },
                        || async { Ok(self.ghl.create_task(&contact_id, &params).await?.id) },
                    )
                    .await?;
                self.store
                    .put_value(
                        &task_value_name(&identity.email, external_id),
                        &format!("{contact_id}/{task_id}"),
                        Some(shared::state::LEDGER_TTL * 12),
                    )
                    .await?;
                Ok(applied)
            }
            CommandBody::CompleteTask { identity, external_id } => {
                let Some(v) = self.store.get_value(&task_value_name(&identity.email, external_id)).await? else {
                    return Err(ApplyError::permanent(format!(
                        "no task with external_id '{external_id}' was created for {} by this sync",
                        identity.email
                    )));
                };
                let (contact_id, task_id) =
                    v.split_once('/').ok_or_else(|| ApplyError::permanent("corrupt task record"))?;
                let (_, applied) = self
                    .once(
                        &cmd.key,
                        || async { Ok(None) },
                        || async {
                            self.ghl.complete_task(contact_id, task_id, true).await?;
                            Ok(task_id.to_string())
                        },
                    )
                    .await?;
                Ok(applied)
            }
            CommandBody::VideoChanged { video_id } => self.video_changed(video_id, &cmd.source_event).await,
        }
    }

    async fn upsert(&self, desired: &DesiredContact, force: bool) -> Result<Applied, ApplyError> {
        let hash = desired.state_hash();
        let prev = self.store.person(&desired.email).await?;
        if !force && prev.as_ref().is_some_and(|p| p.state_hash == hash) {
            return Ok(Applied::Unchanged);
        }
        let phone = desired.phone.as_ref().map(|p| p.as_str().to_string());
        let phone_is_new = phone.is_some() && prev.as_ref().and_then(|p| p.phone.clone()) != phone;
        if phone_is_new {
            let by_email = self.ghl.find_duplicate(Some(desired.email.as_str()), None).await?;
            let by_phone = self.ghl.find_duplicate(None, phone.as_deref()).await?;
            if let (Some(e), Some(p)) = (&by_email, &by_phone)
                && e.id != p.id
            {
                return Err(ApplyError::permanent(format!(
                    "identity conflict: {} matches GHL contact {} but its phone matches contact {}; not merging them. \
                     Resolve the duplicate in GHL, then redrive.",
                    desired.email, e.id, p.id
                )));
            }
        }
        let custom_fields = self.catalog.resolve(&desired.custom_fields).await?;
        let body = UpsertContactDto {
            location_id: self.ghl.location_id().to_string(),
            email: Some(desired.email.to_string()),
            phone,
            first_name: desired.first_name.clone(),
            last_name: desired.last_name.clone(),
            company_name: desired.company_name.clone(),
            source: desired.source.clone(),
            custom_fields: (!custom_fields.is_empty()).then_some(custom_fields),
            ..Default::default()
        };
        let resp = self.ghl.upsert_contact(&body).await?;
        let have: BTreeSet<String> = resp.contact.tags.iter().map(|t| t.to_lowercase()).collect();
        let missing: Vec<String> = desired.tags.iter().filter(|t| !have.contains(*t)).cloned().collect();
        if !missing.is_empty() {
            self.ghl.add_tags(&resp.contact.id, &missing).await?;
        }
        let mut tags = prev.map(|p| p.tags).unwrap_or_default();
        tags.extend(desired.tags.iter().cloned());
        self.store
            .put_person(
                &desired.email,
                &PersonState {
                    contact_id: resp.contact.id,
                    state_hash: hash,
                    tags,
                    phone: desired.phone.as_ref().map(|p| p.to_string()),
                    applied_at: chrono::Utc::now().timestamp(),
                },
            )
            .await?;
        Ok(Applied::Written)
    }

    /// The person's GHL contact id, upserting a minimal contact (email, phone) when the sync
    /// has none recorded yet.
    async fn contact_id(&self, identity: &Identity) -> Result<String, ApplyError> {
        if let Some(p) = self.store.person(&identity.email).await? {
            return Ok(p.contact_id);
        }
        let resp = self
            .ghl
            .upsert_contact(&UpsertContactDto {
                location_id: self.ghl.location_id().to_string(),
                email: Some(identity.email.to_string()),
                phone: identity.phone.as_ref().map(|p| p.to_string()),
                source: self.mapping.source.clone(),
                ..Default::default()
            })
            .await?;
        let tags: BTreeSet<String> = resp.contact.tags.iter().cloned().collect();
        self.store
            .put_person(
                &identity.email,
                &PersonState {
                    contact_id: resp.contact.id.clone(),
                    state_hash: String::new(),
                    tags,
                    phone: identity.phone.as_ref().map(|p| p.to_string()),
                    applied_at: chrono::Utc::now().timestamp(),
                },
            )
            .await?;
        Ok(resp.contact.id)
    }

    async fn add_tags(&self, identity: &Identity, tags: &[String]) -> Result<Applied, ApplyError> {
        let wanted: BTreeSet<String> =
            tags.iter().map(|t| shared::mapping::normalise_tag(t)).filter(|t| !t.is_empty()).collect();
        let contact_id = self.contact_id(identity).await?;
        let mut person = self.store.person(&identity.email).await?.unwrap_or_default();
        let missing: Vec<String> = wanted.iter().filter(|t| !person.tags.contains(*t)).cloned().collect();
        if missing.is_empty() {
            return Ok(Applied::Unchanged);
        }
        self.ghl.add_tags(&contact_id, &missing).await?;
        person.contact_id = contact_id;
        person.tags.extend(missing);
        self.store.put_person(&identity.email, &person).await?;
        Ok(Applied::Written)
    }

    async fn add_note(&self, key: &IdempotencyKey, identity: &Identity, body: &str) -> Result<Applied, ApplyError> {
        let contact_id = self.contact_id(identity).await?;
        let marker = reference(key);
        let note = NoteBody { body: Some(format!("{body}\n\n{marker}")), ..Default::default() };
        let (_, applied) = self
            .once(
                key,
                || async {
                    let notes = self.ghl.list_notes(&contact_id).await?;
                    Ok(notes.into_iter().find(|n| n.body.as_deref().is_some_and(|b| b.contains(&marker))).map(|n| n.id))
                },
                || async { Ok(self.ghl.create_note(&contact_id, &note).await?.id) },
            )
            .await?;
        Ok(applied)
    }

    /// Runs `create` at most once per key: claims the key, looks first when an earlier attempt
    /// may have written, and records the result.
    async fn once<L, LF, C, CF>(
        &self,
        key: &IdempotencyKey,
        lookup: L,
        create: C,
    ) -> Result<(String, Applied), ApplyError>
    where
        L: FnOnce() -> LF,
        LF: Future<Output = Result<Option<String>, ApplyError>>,
        C: FnOnce() -> CF,
        CF: Future<Output = Result<String, ApplyError>>,
    {
        match self.store.claim(key, self.lease).await? {
            Claim::Done { result } => return Ok((result, Applied::Unchanged)),
            Claim::Busy => {
                return Err(ApplyError::transient("another worker is applying this command right now"));
            }
            Claim::Retake { attempts } => {
                tracing::info!(
                    key = key.short(),
                    attempts,
                    "taking over an unfinished attempt; looking before writing"
                );
                if let Some(id) = lookup().await? {
                    self.store.complete(key, &id).await?;
                    return Ok((id, Applied::Unchanged));
                }
            }
            Claim::Fresh => {}
        }
        match create().await {
            Ok(id) => {
                self.store.complete(key, &id).await?;
                Ok((id, Applied::Written))
            }
            Err(e) => {
                // Ambiguous or transient: a later attempt takes over once nothing can still be in
                // flight, and looks first. Permanent: nothing was written; forget the claim.
                let outcome = match &e {
                    ApplyError::Transient { ambiguous: true, .. } => {
                        self.store.defer_claim(key, self.ambiguity_grace).await
                    }
                    _ => self.store.release(key).await,
                };
                if let Err(se) = outcome {
                    tracing::warn!(error = %se, "could not update the ledger after a failed attempt");
                }
                Err(e)
            }
        }
    }

    /// Re-fetches a video and turns its new engagement sessions into commands on the queue.
    async fn video_changed(&self, video_id: &str, source_event: &str) -> Result<Applied, ApplyError> {
        let sprout = self
            .sprout
            .as_ref()
            .ok_or_else(|| ApplyError::permanent("no SproutVideo API key in the secret; cannot refresh videos"))?;
        let video = match sprout.get_video(video_id).await {
            Ok(v) => v,
            Err(SproutError::NotFound(_)) => {
                tracing::info!(video_id, "video no longer exists in SproutVideo; nothing to do");
                return Ok(Applied::Unchanged);
            }
            Err(e) => return Err(e.into()),
        };
        let mark = format!("video#{video_id}#since");
        let since = match self.store.get_value(&mark).await? {
            Some(d) => chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok(),
            None => None,
        }
        .unwrap_or_else(|| (chrono::Utc::now() - chrono::Duration::days(self.lookback_days as i64)).date_naive());
        let sessions =
            sprout.sessions(Some(video_id), &SessionQuery { start_date: Some(since), ..Default::default() }).await?;
        let title = video.title.clone().unwrap_or_else(|| video_id.to_string());
        let mut commands = Vec::new();
        for s in &sessions {
            let Some(raw) = s.vemail.as_deref() else {
                continue;
            };
            let desired = match self
                .mapping
                .desired(&ContactInput { email: raw.to_string(), ..Default::default() }, Origin::Lead)
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(reason = %e, "skipping a session email");
                    continue;
                }
            };
            let at = s.last_seen().map(|t| t.0).unwrap_or_else(chrono::Utc::now);
            let watch = WatchFacts {
                video_id: video_id.to_string(),
                video_title: title.clone(),
                video_tags: video.tags.clone(),
                percent: s.watch_percent(video.duration).unwrap_or(0.0),
                at,
            };
            let sid = s.id.clone().unwrap_or_else(|| format!("{raw}:{}", at.timestamp()));
            commands.extend(shared::facts::watch_commands(
                &self.mapping,
                desired,
                &watch,
                &format!("session:{sid}"),
                at,
            ));
        }
        if !commands.is_empty() {
            self.commands.send(&commands).await?;
        }
        // Overlap by a day: repeats are harmless (upserts are hash-skipped, rule actions ledgered).
        let next = (chrono::Utc::now() - chrono::Duration::days(1)).date_naive();
        self.store.put_value(&mark, &next.format("%Y-%m-%d").to_string(), None).await?;
        tracing::info!(video_id, source_event, sessions = sessions.len(), queued = commands.len(), "video refreshed");
        Ok(if commands.is_empty() { Applied::Unchanged } else { Applied::Written })
    }

    /// Applies a batch with no deadline (see [`Worker::process_batch_within`]).
    pub async fn process_batch(&self, messages: Vec<QueueMessage>) -> BatchOutcome {
        self.process_batch_within(messages, Deadline::NONE).await
    }

    /// Applies a batch: per message, never per batch. Within a FIFO group, once a message fails
    /// the later ones are reported as failures too, so order is kept. Groups run concurrently,
    /// at most `concurrency` at a time. No command starts a GHL or SproutVideo call once the
    /// deadline leaves less than its margin: those are reported as failures, so the answer is a
    /// partial batch response instead of a timed-out invocation.
    pub async fn process_batch_within(&self, messages: Vec<QueueMessage>, deadline: Deadline) -> BatchOutcome {
        let mut groups: Vec<(Option<String>, Vec<QueueMessage>)> = Vec::new();
        for m in messages {
            match groups.iter_mut().find(|(g, _)| g.is_some() && *g == m.group_id) {
                Some((_, v)) => v.push(m),
                None => groups.push((m.group_id.clone(), vec![m])),
            }
        }
        let results: Vec<Vec<(String, Disposition)>> = futures::stream::iter(groups)
            .map(|(_, msgs)| self.process_group(msgs, deadline))
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await;
        let mut out = BatchOutcome::default();
        for (id, r) in results.into_iter().flatten() {
            match r {
                Disposition::Done(Applied::Written) => out.applied += 1,
                Disposition::Done(Applied::Unchanged) => out.unchanged += 1,
                Disposition::Parked => out.parked += 1,
                Disposition::Retry | Disposition::Unfinished => out.failed.push(id),
            }
        }
        out
    }

    async fn process_group(&self, msgs: Vec<QueueMessage>, deadline: Deadline) -> Vec<(String, Disposition)> {
        let mut out = Vec::with_capacity(msgs.len());
        let mut blocked: Option<Disposition> = None;
        for m in msgs {
            if let Some(b) = blocked {
                self.delay(&m, b).await;
                out.push((m.id, b));
                continue;
            }
            let r = self.process_one(&m, deadline).await;
            if matches!(r, Disposition::Retry | Disposition::Unfinished) {
                blocked = Some(r);
                self.delay(&m, r).await;
            }
            out.push((m.id, r));
        }
        out
    }

    async fn process_one(&self, m: &QueueMessage, deadline: Deadline) -> Disposition {
        let cmd = match SyncCommand::decode(&m.body) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(message_id = %m.id, reason = %e, "parking an undecodable message");
                return self.park(m, None, &format!("undecodable message: {e}"), None).await;
            }
        };
        if !deadline.allows_start() {
            tracing::info!(message_id = %m.id, "not starting: too little time left before the invocation's deadline");
            return Disposition::Unfinished;
        }
        let span = tracing::info_span!("command", event_id = %cmd.source_event, key = cmd.key.short());
        match self.apply(&cmd).instrument(span).await {
            Ok(a) => {
                tracing::info!(event_id = %cmd.source_event, kind = cmd.body.action_name(), outcome = ?a, "applied");
                Disposition::Done(a)
            }
            Err(ApplyError::Transient { reason, .. }) => {
                tracing::warn!(event_id = %cmd.source_event, kind = cmd.body.action_name(), receive_count = m.receive_count, %reason, "will retry");
                Disposition::Retry
            }
            Err(ApplyError::Permanent { reason, trace_id }) => {
                tracing::error!(event_id = %cmd.source_event, kind = cmd.body.action_name(), %reason, "parking in the dead-letter queue");
                self.park(m, Some(&cmd), &reason, trace_id.as_deref()).await
            }
        }
    }

    /// Sends a message to the dead-letter queue; when that fails, the message is retried.
    async fn park(
        &self,
        m: &QueueMessage,
        cmd: Option<&SyncCommand>,
        reason: &str,
        trace_id: Option<&str>,
    ) -> Disposition {
        let group = cmd.map(|c| c.group_id()).or_else(|| m.group_id.clone()).unwrap_or_default();
        let dedup = cmd.map(|c| c.key.as_str().to_string()).unwrap_or_else(|| {
            let mut id: String = m.id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            id.truncate(128);
            if id.is_empty() { "unknown".into() } else { id }
        });
        match self.queues.park(Parked { body: &m.body, group_id: &group, dedup_id: &dedup, reason, trace_id }).await {
            Ok(()) => Disposition::Parked,
            Err(e) => {
                tracing::error!(error = %e, "could not park the message; it will be delivered again");
                Disposition::Retry
            }
        }
    }

    /// Spreads retries out: the message stays hidden for an exponentially growing time. One the
    /// deadline left unstarted is delivered again right away.
    async fn delay(&self, m: &QueueMessage, why: Disposition) {
        let Some(handle) = &m.receipt_handle else {
            return;
        };
        let secs = match why {
            Disposition::Unfinished => 0,
            _ => retry_delay_secs(self.retry_base_secs, m.receive_count),
        };
        if let Err(e) = self.queues.delay_retry(handle, secs).await {
            tracing::warn!(error = %e, "could not delay the retry");
        }
    }

    /// One CloudWatch embedded-metric-format line for this invocation.
    pub fn emf_line(&self, outcome: &BatchOutcome) -> String {
        let stats = self.ghl.stats();
        let remaining = stats.last_remaining.load(Ordering::Relaxed);
        json!({
            "_aws": {
                "Timestamp": chrono::Utc::now().timestamp_millis(),
                "CloudWatchMetrics": [{
                    "Namespace": "SvGhlSync",
                    "Dimensions": [[]],
                    "Metrics": [
                        {"Name": "Applied", "Unit": "Count"},
                        {"Name": "SkippedUnchanged", "Unit": "Count"},
                        {"Name": "Retried", "Unit": "Count"},
                        {"Name": "Parked", "Unit": "Count"},
                        {"Name": "GhlCalls", "Unit": "Count"},
                        {"Name": "GhlRateLimited", "Unit": "Count"},
                        {"Name": "GhlRateHeadroom", "Unit": "Count"}
                    ]
                }]
            },
            "Applied": outcome.applied,
            "SkippedUnchanged": outcome.unchanged,
            "Retried": outcome.failed.len(),
            "Parked": outcome.parked,
            "GhlCalls": stats.requests.load(Ordering::Relaxed),
            "GhlRateLimited": stats.rate_limited.load(Ordering::Relaxed),
            "GhlRateHeadroom": if remaining == u64::MAX { serde_json::Value::Null } else { json!(remaining) },
        })
        .to_string()
    }
}

/// Visibility delay before retry number `receive_count`: `base` seconds doubling, capped at 15
/// minutes, with jitter.
pub fn retry_delay_secs(base: u64, receive_count: u32) -> i32 {
    let base = base.saturating_mul(1u64 << receive_count.min(8));
    let capped = base.min(900);
    (capped / 2 + fastrand::u64(0..=capped / 2)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_stay_bounded() {
        for n in 0..20 {
            let d = retry_delay_secs(5, n);
            assert!((0..=900).contains(&d), "{d}");
        }
        assert!(retry_delay_secs(5, 0) <= 5);
        assert!(retry_delay_secs(5, 6) >= 160);
    }

    #[test]
    fn ghl_errors_map_to_transient_or_permanent() {
        let t: ApplyError = GhlError::MayHaveWritten { reason: "x".into() }.into();
        assert!(matches!(t, ApplyError::Transient { .. }));
        let p: ApplyError =
            GhlError::Invalid { status: 422, messages: vec!["bad".into()], trace_id: Some("tr".into()) }.into();
        assert!(matches!(p, ApplyError::Permanent { trace_id: Some(ref t), .. } if t == "tr"));
    }
}
