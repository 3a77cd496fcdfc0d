//! Applies queued sync commands to GHL, exactly once in effect.
//!
//! - Upserts are skipped without a GHL call when the desired state's hash equals the last one
//!   applied; otherwise the upsert carries only fields the sync owns, and tags go through the
//!   tags endpoint.
//! - Identity: the email decides which contact is written. A phone that GHL holds on another
//!   contact is never sent: the person is written without it and the conflict is recorded
//!   (`kv#conflict#<email>`, a warning, the `IdentityConflicts` metric), or the command is
//!   parked when the mapping says so. Every write of a contact (upsert, repair, the minimal
//!   contact behind a note, task or tag) goes through this check.
//! - A recorded contact id that GHL no longer knows (merged or deleted) is resolved again by
//!   email, once, and the note, task or tag goes to that contact.
//! - Notes and tasks are claimed in the ledger before they are created. A claim is released only
//!   when GHL certainly wrote nothing; a claim left behind by a crash or an ambiguous failure is
//!   taken over by looking in GHL first (each note and task carries a short reference to its
//!   key), so a create is never repeated blindly.
//! - Failures are typed: transient ones are retried by the queue with growing delays,
//!   permanent ones are parked in the dead-letter queue with their reason.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use thiserror::Error;
use tracing::Instrument;

use shared::commands::{CommandBody, DesiredContact, IdempotencyKey, Source, SyncCommand};
use shared::ghl::{CreateTaskParams, GhlClient, GhlError, NoteBody, UpsertContactDto, due_date};
use shared::identity::{
    CONFLICT_RECORD_TTL, ConflictRecord, Email, Identity, Phone, conflict_value_name, redact_phone,
};
use shared::mapping::{
    ContactInput, CustomFieldCatalog, Mapping, MappingError, Origin, PhoneConflict as OnPhoneConflict, WatchFacts,
};
use shared::queue::{CommandQueue, DedupId, MessageGroupId, Parked, QueueError, WorkerQueues};
use shared::sprout::{SessionQuery, SproutClient, SproutError};
use shared::state::{Claim, FieldMark, Holder, PersonState, StateError, StateStore};

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
            GhlError::DailyQuotaExhausted { .. } => format!("{e}; the message is held until then"),
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
        if e.is_retryable() { Self::transient(e.to_string()) } else { Self::permanent(e.to_string()) }
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

/// How an action on a person's contact failed.
#[derive(Debug)]
enum ActionError {
    /// GHL does not know the contact (merged or deleted): nothing was written, and the person
    /// can be resolved again.
    ContactGone(ApplyError),
    Other(ApplyError),
}

impl ActionError {
    /// A failed call on a contact's id: "not found" means the contact is gone.
    fn on_contact(e: GhlError) -> Self {
        match e {
            GhlError::NotFound { .. } => Self::ContactGone(e.into()),
            e => Self::Other(e.into()),
        }
    }

    /// A failed create. A 2xx whose body could not be read, or a 408/409/425, says nothing
    /// about whether the write landed: worth another attempt, which looks first.
    fn after_write(e: GhlError) -> Self {
        match e {
            GhlError::Decode(_) | GhlError::Unexpected { status: 408 | 409 | 425, .. } => {
                let trace_id = e.trace_id().map(str::to_string);
                Self::Other(ApplyError::Transient { reason: e.to_string(), trace_id, ambiguous: true })
            }
            e => Self::on_contact(e),
        }
    }
}

impl From<ApplyError> for ActionError {
    fn from(e: ApplyError) -> Self {
        Self::Other(e)
    }
}

impl From<StateError> for ActionError {
    fn from(e: StateError) -> Self {
        Self::Other(e.into())
    }
}

impl From<ActionError> for ApplyError {
    fn from(e: ActionError) -> Self {
        match e {
            ActionError::ContactGone(e) | ActionError::Other(e) => e,
        }
    }
}

/// Whether a failed write certainly left nothing in GHL: refused before it was applied (a 400,
/// the credential, access, an unknown contact, the rate limit) or never sent. A 422 (GHL has
/// created on a 422), a 2xx it could not read, other statuses, 5xx, a lost answer or a deadline
/// may hide a write.
fn surely_not_written(e: &GhlError) -> bool {
    match e {
        GhlError::Unauthorized { .. }
        | GhlError::Forbidden { .. }
        | GhlError::NotFound { .. }
        | GhlError::Duplicate { .. }
        | GhlError::RateLimited { .. } => true,
        GhlError::Invalid { status, .. } => *status == 400,
        // Creates end in a transport error only when the connection was never made (otherwise
        // in MayHaveWritten); the idempotent writes that go through here may repeat anyway.
        GhlError::Transport(_) => true,
        _ => false,
    }
}

/// What the identity check allows a contact write to carry.
#[derive(Debug)]
struct IdentityCheck {
    /// The phone to send: none when the person has none, or another contact holds it.
    phone: Option<String>,
    /// Another contact holds the person's phone.
    conflict: Option<ConflictingPhone>,
}

#[derive(Debug)]
struct ConflictingPhone {
    phone: Phone,
    other_contact_id: String,
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
pub(crate) enum Disposition {
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
    /// Held for a paused tenant (taken off the queue, kept in the state table).
    pub held: usize,
    /// Phones another GHL contact holds, met while applying the batch.
    pub identity_conflicts: u64,
    /// SproutVideo answers in a shape the client does not read (the messages are parked).
    pub api_drift: u64,
}

pub struct Worker {
    pub ghl: GhlClient,
    pub catalog: Arc<CustomFieldCatalog>,
    pub store: Arc<dyn StateStore>,
    pub queues: Arc<dyn WorkerQueues>,
    pub commands: Arc<dyn CommandQueue>,
    pub sprout: SproutClient,
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
    /// Phones left out of a write (or parked) because another contact holds them.
    pub identity_conflicts: AtomicU64,
    /// SproutVideo answers met in a shape the client does not read.
    pub api_drift: AtomicU64,
}

/// Reference appended to notes and tasks so a later attempt can find what an earlier one wrote.
fn reference(key: &IdempotencyKey) -> String {
    format!("[sv-sync {}]", key.short())
}

/// The fields of a desired state the sync writes, by name (custom fields as `cf:<key>`).
fn field_values(d: &DesiredContact) -> Vec<(String, serde_json::Value)> {
    let mut out: Vec<(String, serde_json::Value)> = [
        ("phone", d.phone.as_ref().map(|p| p.as_str().to_string())),
        ("firstName", d.first_name.clone()),
        ("lastName", d.last_name.clone()),
        ("companyName", d.company_name.clone()),
        ("source", d.source.clone()),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_string(), serde_json::Value::String(v?))))
    .collect();
    out.extend(d.custom_fields.iter().map(|(k, v)| (format!("cf:{k}"), v.clone())));
    out
}

fn task_value_name(email: &Email, external_id: &str) -> String {
    format!("task#{email}#{external_id}")
}

impl Worker {
    /// Applies one command.
    pub async fn apply(&self, cmd: &SyncCommand) -> Result<Applied, ApplyError> {
        match &cmd.body {
            CommandBody::UpsertContact { contact } => self.upsert(contact, cmd.occurred_at, false).await,
            CommandBody::RepairContact { contact } => self.upsert(contact, cmd.occurred_at, true).await,
            CommandBody::AddTags { identity, tags } => self.add_tags(identity, tags).await,
            CommandBody::AddNote { identity, body } => self.add_note(&cmd.key, identity, body).await,
            CommandBody::CreateTask { identity, external_id, title, body, due_at, assigned_to } => {
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
                let (marker, params) = (&marker, &params);
                let (contact_id, task_id, applied) = self
                    .on_contact(identity, |contact_id| async move {
                        let (task_id, applied) = self
                            .once(
                                &cmd.key,
                                || async {
                                    let tasks = self.ghl.list_tasks(&contact_id).await?;
                                    Ok(tasks
                                        .into_iter()
                                        .find(|t| t.body.as_deref().is_some_and(|b| b.contains(marker)))
                                        .map(|t| t.id))
                                },
                                || async { Ok(self.ghl.create_task(&contact_id, params).await?.id) },
                            )
                            .await?;
                        Ok((contact_id, task_id, applied))
                    })
                    .await?;
                // Kept for good: the task can be completed whenever its sender asks.
                self.store
                    .put_value(&task_value_name(&identity.email, external_id), &format!("{contact_id}/{task_id}"), None)
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
            CommandBody::ContactChanged { location_id, contact_id } => {
                self.contact_changed(location_id, contact_id).await
            }
        }
    }

    /// Writes what changed of the person's desired state. A field the command does not carry
    /// is unknown, not changed; a field whose recorded change is newer than this command's
    /// (`occurred_at`) is left alone, so a replayed or late event never reverts newer data.
    /// Nothing to write and no tag missing: no GHL call. `force` (a repair after drift found in
    /// GHL) writes every field the command carries, newer ones excepted.
    async fn upsert(
        &self,
        desired: &DesiredContact,
        occurred_at: chrono::DateTime<chrono::Utc>,
        force: bool,
    ) -> Result<Applied, ApplyError> {
        // A sender's clock ahead of ours must not date a change into the future (it would block
        // every later change of the field until then).
        let at_ms = occurred_at.timestamp_millis().min(chrono::Utc::now().timestamp_millis());
        let prev = self.store.person(&desired.email).await?;
        let known = prev.as_ref().map(|p| p.fields.clone()).unwrap_or_default();
        let mut write: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let mut stale = Vec::new();
        for (name, value) in field_values(desired) {
            match known.get(&name) {
                Some(mark) if mark.at_ms > at_ms => stale.push(name),
                Some(mark) if mark.value == value && !force => {}
                _ => {
                    write.insert(name, value);
                }
            }
        }
        if !stale.is_empty() {
            tracing::info!(fields = ?stale, "left alone: GHL holds a newer change of these fields");
        }
        let recorded_tags = prev.as_ref().map(|p| p.tags.clone()).unwrap_or_default();
        let tags_missing = desired.tags.iter().any(|t| !recorded_tags.contains(t));
        if prev.is_some() && write.is_empty() && !tags_missing && !force {
            return Ok(Applied::Unchanged);
        }
        let phone =
            write.get("phone").and_then(|v| v.as_str()).and_then(|p| desired.phone.clone().filter(|d| d.as_str() == p));
        let check = self.check_identity(&desired.email, phone.as_ref()).await?;
        let body = self.upsert_body(&desired.email, &write, check.phone.clone()).await?;
        let resp = self.ghl.upsert_contact(&body).await?;
        self.settle_identity(&desired.email, &check, &resp.contact.id).await?;
        if prev.as_ref().is_some_and(|p| p.contact_id != resp.contact.id) {
            // GHL holds the person on another contact now (the recorded one was merged or
            // deleted): it has none of the fields left out above as already written.
            self.rewrite_known(&desired.email, &resp.contact.id, &known, &write).await?;
        }
        let have: BTreeSet<String> = resp.contact.tags.iter().map(|t| t.to_lowercase()).collect();
        let missing: Vec<String> = desired.tags.iter().filter(|t| !have.contains(*t)).cloned().collect();
        if !missing.is_empty() {
            self.ghl.add_tags(&resp.contact.id, &missing).await?;
        }
        // Tags recorded for another contact id do not travel to this one; the known fields were
        // written to it again above.
        let same_contact = prev.as_ref().is_some_and(|p| p.contact_id == resp.contact.id);
        let mut tags = if same_contact { recorded_tags } else { BTreeSet::new() };
        tags.extend(desired.tags.iter().cloned());
        let mut fields = known;
        for (name, value) in write {
            // A phone left out for an identity conflict was not written.
            if name == "phone" && check.phone.is_none() {
                continue;
            }
            fields.insert(name, FieldMark { value, at_ms });
        }
        let phone = fields.get("phone").and_then(|m| m.value.as_str()).map(str::to_string);
        self.store
            .put_person(
                &desired.email,
                &PersonState {
                    contact_id: resp.contact.id,
                    state_hash: desired.state_hash(),
                    tags,
                    phone,
                    applied_at: chrono::Utc::now().timestamp(),
                    fields,
                },
            )
            .await?;
        Ok(Applied::Written)
    }

    /// An upsert body for `email` carrying `values` (by field name, custom fields as
    /// `cf:<key>`); the phone only as given, i.e. as the identity check allowed it.
    async fn upsert_body(
        &self,
        email: &Email,
        values: &BTreeMap<String, serde_json::Value>,
        phone: Option<String>,
    ) -> Result<UpsertContactDto, ApplyError> {
        let text = |k: &str| values.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let custom: BTreeMap<String, serde_json::Value> =
            values.iter().filter_map(|(k, v)| Some((k.strip_prefix("cf:")?.to_string(), v.clone()))).collect();
        let custom_fields = self.catalog.resolve(&custom).await?;
        Ok(UpsertContactDto {
            location_id: self.ghl.location_id().to_string(),
            email: Some(email.to_string()),
            phone,
            first_name: text("firstName"),
            last_name: text("lastName"),
            company_name: text("companyName"),
            source: text("source"),
            custom_fields: (!custom_fields.is_empty()).then_some(custom_fields),
            ..Default::default()
        })
    }

    /// Writes the fields the sync recorded for the person (except those in `written`) onto
    /// `contact_id`, a contact that replaced the recorded one: the phone after its identity
    /// check. Nothing when nothing is left to write.
    async fn rewrite_known(
        &self,
        email: &Email,
        contact_id: &str,
        known: &BTreeMap<String, FieldMark>,
        written: &BTreeMap<String, serde_json::Value>,
    ) -> Result<(), ApplyError> {
        let rest: BTreeMap<String, serde_json::Value> = known
            .iter()
            .filter(|(k, _)| !written.contains_key(*k) && k.as_str() != "phone")
            .map(|(k, m)| (k.clone(), m.value.clone()))
            .collect();
        let phone = known
            .get("phone")
            .filter(|_| !written.contains_key("phone"))
            .and_then(|m| m.value.as_str())
            .and_then(|p| Phone::parse(p, &self.mapping.default_region).ok());
        if rest.is_empty() && phone.is_none() {
            return Ok(());
        }
        let check = self.check_identity(email, phone.as_ref()).await?;
        let body = self.upsert_body(email, &rest, check.phone.clone()).await?;
        let resp = self.ghl.upsert_contact(&body).await?;
        if resp.contact.id != contact_id {
            return Err(ApplyError::transient(format!(
                "GHL answered with contact {} for {email} where {contact_id} was just written; trying again",
                resp.contact.id
            )));
        }
        self.settle_identity(email, &check, contact_id).await
    }

    /// The identity check before a contact write. The email decides which contact is written;
    /// the phone goes with it only when no other GHL contact holds it. A phone held by another
    /// contact is a conflict: left out of the write (and recorded once the write is done by
    /// [`Self::settle_identity`]), or the command is parked when the mapping says so.
    async fn check_identity(&self, email: &Email, phone: Option<&Phone>) -> Result<IdentityCheck, ApplyError> {
        let Some(phone) = phone else {
            return Ok(IdentityCheck { phone: None, conflict: None });
        };
        let by_email = self.ghl.find_duplicate(Some(email.as_str()), None).await?;
        if by_email.as_ref().is_some_and(|c| c.phone.as_deref() == Some(phone.as_str())) {
            return Ok(IdentityCheck { phone: Some(phone.to_string()), conflict: None });
        }
        let by_phone = self.ghl.find_duplicate(None, Some(phone.as_str())).await?;
        let other = by_phone.filter(|p| by_email.as_ref().is_none_or(|e| e.id != p.id));
        let Some(other) = other else {
            return Ok(IdentityCheck { phone: Some(phone.to_string()), conflict: None });
        };
        let conflict = ConflictingPhone { phone: phone.clone(), other_contact_id: other.id };
        if self.mapping.identity.on_phone_conflict == OnPhoneConflict::Park {
            let own = by_email.map(|c| c.id);
            self.record_conflict(email, &conflict, own.as_deref(), true).await?;
            return Err(ApplyError::permanent(format!(
                "identity conflict: the phone {} of {email} belongs to GHL contact {}{}; nothing was written. \
                 Resolve the duplicate in GHL, then redrive.",
                redact_phone(phone.as_str()),
                conflict.other_contact_id,
                own.map(|id| format!(" and the email to contact {id}")).unwrap_or_default(),
            )));
        }
        Ok(IdentityCheck { phone: None, conflict: Some(conflict) })
    }

    /// After a write that passed [`Self::check_identity`]: records the conflict it found, or
    /// forgets an earlier one once the phone went through.
    async fn settle_identity(&self, email: &Email, check: &IdentityCheck, contact_id: &str) -> Result<(), ApplyError> {
        match (&check.conflict, &check.phone) {
            (Some(c), _) => self.record_conflict(email, c, Some(contact_id), false).await,
            (None, Some(_)) => Ok(self.store.delete_value(&conflict_value_name(email)).await?),
            (None, None) => Ok(()),
        }
    }

    /// Makes a phone conflict visible: a warning without the number, the `IdentityConflicts`
    /// metric, and `kv#conflict#<email>` in the state table.
    async fn record_conflict(
        &self,
        email: &Email,
        c: &ConflictingPhone,
        contact_id: Option<&str>,
        parked: bool,
    ) -> Result<(), ApplyError> {
        self.identity_conflicts.fetch_add(1, Ordering::Relaxed);
        let outcome = if parked { "parked; nothing written" } else { "written without the phone" };
        tracing::warn!(
            %email,
            contact_id,
            other_contact_id = %c.other_contact_id,
            phone = %redact_phone(c.phone.as_str()),
            outcome,
            "the phone belongs to another GHL contact"
        );
        let record = ConflictRecord {
            field: "phone".into(),
            phone: redact_phone(c.phone.as_str()),
            contact_id: contact_id.map(str::to_string),
            other_contact_id: c.other_contact_id.clone(),
            parked,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let value = serde_json::to_string(&record).expect("a conflict record serialises");
        self.store.put_value(&conflict_value_name(email), &value, Some(CONFLICT_RECORD_TTL)).await?;
        Ok(())
    }

    /// The person's GHL contact id: the recorded one (`cached`), or else the one
    /// [`Self::resolve_contact`] finds or creates.
    async fn contact_id(&self, identity: &Identity) -> Result<(String, bool), ApplyError> {
        if let Some(p) = self.store.person(&identity.email).await? {
            return Ok((p.contact_id, true));
        }
        Ok((self.resolve_contact(identity).await?, false))
    }

    /// Finds the person's contact by email in GHL, creating one when there is none, and records
    /// it in place of whatever was recorded before. The contact gets the email, the phone when
    /// no other contact holds it, the source, and every field the sync recorded for the person.
    async fn resolve_contact(&self, identity: &Identity) -> Result<String, ApplyError> {
        // What the sync wrote for the person before (onto a contact since merged or deleted)
        // goes onto the contact found or created now, with the times of its changes kept.
        let before = self.store.person(&identity.email).await?.unwrap_or_default();
        let known = before.fields;
        let mut values: BTreeMap<String, serde_json::Value> =
            known.iter().filter(|(k, _)| k.as_str() != "phone").map(|(k, m)| (k.clone(), m.value.clone())).collect();
        if let Some(source) = &self.mapping.source {
            values.entry("source".into()).or_insert_with(|| serde_json::Value::String(source.clone()));
        }
        let known_phone = known
            .get("phone")
            .and_then(|m| m.value.as_str())
            .and_then(|p| Phone::parse(p, &self.mapping.default_region).ok());
        let phone = identity.phone.clone().or(known_phone);
        let check = self.check_identity(&identity.email, phone.as_ref()).await?;
        let body = self.upsert_body(&identity.email, &values, check.phone.clone()).await?;
        let resp = self.ghl.upsert_contact(&body).await?;
        self.settle_identity(&identity.email, &check, &resp.contact.id).await?;
        // The phone's mark stays only when that phone went onto this contact.
        let mut fields = known;
        if fields.get("phone").and_then(|m| m.value.as_str()) != check.phone.as_deref() {
            fields.remove("phone");
        }
        let mut tags: BTreeSet<String> = resp.contact.tags.iter().map(|t| t.to_lowercase()).collect();
        // The tags the person's contact had, and the sync's own, go onto this contact too (added:
        // tags on an upsert would replace the contact's own).
        let mut wanted = before.tags;
        wanted.insert(shared::mapping::normalise_tag(&self.mapping.sync_tag));
        let missing: Vec<String> = wanted.into_iter().filter(|t| !t.is_empty() && !tags.contains(t)).collect();
        if !missing.is_empty() {
            self.ghl.add_tags(&resp.contact.id, &missing).await?;
            tags.extend(missing);
        }
        self.store
            .put_person(
                &identity.email,
                &PersonState {
                    contact_id: resp.contact.id.clone(),
                    state_hash: String::new(),
                    tags,
                    phone: check.phone,
                    applied_at: chrono::Utc::now().timestamp(),
                    fields,
                },
            )
            .await?;
        Ok(resp.contact.id)
    }

    /// Runs `action` on the person's contact. When GHL no longer has the recorded contact (it
    /// was merged or deleted), the person is resolved again by email, once, and `action` runs
    /// on that contact.
    async fn on_contact<T, F, Fut>(&self, identity: &Identity, action: F) -> Result<T, ApplyError>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, ActionError>>,
    {
        let (contact_id, cached) = self.contact_id(identity).await?;
        match action(contact_id.clone()).await {
            Err(ActionError::ContactGone(e)) if cached => {
                tracing::info!(%contact_id, reason = %e, "the recorded GHL contact is gone; resolving the person again");
                let contact_id = self.resolve_contact(identity).await?;
                Ok(action(contact_id).await?)
            }
            r => Ok(r?),
        }
    }

    async fn add_tags(&self, identity: &Identity, tags: &[String]) -> Result<Applied, ApplyError> {
        let wanted: BTreeSet<String> =
            tags.iter().map(|t| shared::mapping::normalise_tag(t)).filter(|t| !t.is_empty()).collect();
        let wanted = &wanted;
        self.on_contact(identity, |contact_id| async move {
            let mut person = self.store.person(&identity.email).await?.unwrap_or_default();
            let missing: Vec<String> = wanted.iter().filter(|t| !person.tags.contains(*t)).cloned().collect();
            if missing.is_empty() {
                return Ok(Applied::Unchanged);
            }
            self.ghl.add_tags(&contact_id, &missing).await.map_err(ActionError::on_contact)?;
            person.contact_id = contact_id;
            person.tags.extend(missing);
            self.store.put_person(&identity.email, &person).await?;
            Ok(Applied::Written)
        })
        .await
    }

    async fn add_note(&self, key: &IdempotencyKey, identity: &Identity, body: &str) -> Result<Applied, ApplyError> {
        let marker = reference(key);
        let note = NoteBody { body: Some(format!("{body}\n\n{marker}")), ..Default::default() };
        let (marker, note) = (&marker, &note);
        self.on_contact(identity, |contact_id| async move {
            let (_, applied) = self
                .once(
                    key,
                    || async {
                        let notes = self.ghl.list_notes(&contact_id).await?;
                        Ok(notes
                            .into_iter()
                            .find(|n| n.body.as_deref().is_some_and(|b| b.contains(marker)))
                            .map(|n| n.id))
                    },
                    || async { Ok(self.ghl.create_note(&contact_id, note).await?.id) },
                )
                .await?;
            Ok(applied)
        })
        .await
    }

    /// Runs `create` at most once per key: claims the key, looks first when an earlier attempt
    /// may have written, and records the result. A claim is released only when GHL certainly
    /// wrote nothing; otherwise it is deferred, and the next attempt looks before it writes.
    async fn once<L, LF, C, CF>(
        &self,
        key: &IdempotencyKey,
        lookup: L,
        create: C,
    ) -> Result<(String, Applied), ActionError>
    where
        L: FnOnce() -> LF,
        LF: Future<Output = Result<Option<String>, GhlError>>,
        C: FnOnce() -> CF,
        CF: Future<Output = Result<String, GhlError>>,
    {
        let me = Holder::new();
        match self.store.claim(key, self.lease, &me).await? {
            Claim::Done { result } => return Ok((result, Applied::Unchanged)),
            Claim::Busy => {
                return Err(ApplyError::transient("another worker is applying this command right now").into());
            }
            Claim::Retake { attempts } => {
                tracing::info!(
                    key = key.short(),
                    attempts,
                    "taking over an unfinished attempt; looking before writing"
                );
                match lookup().await {
                    Ok(Some(id)) => {
                        self.store.complete(key, &id).await?;
                        return Ok((id, Applied::Unchanged));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // Nothing was written; the next attempt may take over at once and looks again.
                        self.settle_claim(key, Duration::ZERO, &me).await;
                        return Err(ActionError::on_contact(e));
                    }
                }
            }
            Claim::Fresh => {}
        }
        self.hold_for_write(key, &me).await?;
        let writing = std::time::Instant::now();
        let created = create().await;
        // The GHL client's deadline bounds a create to half the lease; longer means this process
        // stood still (paused, starved), and another attempt may have taken over meanwhile.
        if writing.elapsed() > self.lease / 2 {
            tracing::warn!(
                key = key.short(),
                took_ms = writing.elapsed().as_millis() as u64,
                lease_ms = self.lease.as_millis() as u64,
                "a create outlasted its claim's lease"
            );
        }
        match created {
            Ok(id) => {
                self.store.complete(key, &id).await?;
                Ok((id, Applied::Written))
            }
            Err(e) => {
                if surely_not_written(&e) {
                    if let Err(se) = self.store.release(key, &me).await {
                        tracing::warn!(error = %se, "could not release the claim after a refused write");
                    }
                } else {
                    // A later attempt takes over once nothing can still be in flight, and looks first.
                    self.settle_claim(key, self.ambiguity_grace, &me).await;
                }
                Err(ActionError::after_write(e))
            }
        }
    }

    /// Renews the claim right before its create, so the lease covers the whole call (its retry
    /// deadline and request timeout are half the lease) however long the claim, the contact's
    /// resolution or the look-first took. Another attempt that took the claim over meanwhile
    /// (this one was slower than its lease) ends this one without writing.
    async fn hold_for_write(&self, key: &IdempotencyKey, me: &Holder) -> Result<(), ActionError> {
        let asked = std::time::Instant::now();
        if !self.store.renew_claim(key, self.lease, me).await? {
            return Err(ApplyError::transient(
                "another attempt took this command over while this one was slow; it is retried and found done",
            )
            .into());
        }
        // A renewal that took long left less than a full lease for the write.
        if asked.elapsed() > self.lease / 4 {
            if let Err(se) = self.store.release(key, me).await {
                tracing::warn!(error = %se, "could not release the claim after a slow renewal");
            }
            return Err(
                ApplyError::transient("the state table answered too slowly to hold the claim for the write").into()
            );
        }
        Ok(())
    }

    /// Defers a claim: another attempt may take it over after `grace`, looking first.
    async fn settle_claim(&self, key: &IdempotencyKey, grace: Duration, me: &Holder) {
        if let Err(se) = self.store.defer_claim(key, grace, me).await {
            tracing::warn!(error = %se, "could not update the ledger after a failed attempt");
        }
    }

    /// A SproutVideo failure as an apply error; an answer in an unknown shape is counted (the
    /// `ApiDrift` metric) and parked with the keys expected and found.
    fn sprout_error(&self, e: SproutError) -> ApplyError {
        if matches!(e, SproutError::Drift { .. }) {
            self.api_drift.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "SproutVideo answered in a shape this version does not read");
        }
        e.into()
    }

    /// Re-fetches a video and turns its new engagement sessions into commands on the queue.
    async fn video_changed(&self, video_id: &str, source_event: &str) -> Result<Applied, ApplyError> {
        let sprout = &self.sprout;
        let video = match sprout.get_video(video_id).await {
            Ok(v) => v,
            Err(SproutError::NotFound(_)) => {
                tracing::info!(video_id, "video no longer exists in SproutVideo; nothing to do");
                return Ok(Applied::Unchanged);
            }
            Err(e) => return Err(self.sprout_error(e)),
        };
        let mark = format!("video#{video_id}#since");
        let since = match self.store.get_value(&mark).await? {
            Some(d) => chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok(),
            None => None,
        }
        .unwrap_or_else(|| (chrono::Utc::now() - chrono::Duration::days(self.lookback_days as i64)).date_naive());
        let sessions = sprout
            .sessions(Some(video_id), &SessionQuery { start_date: Some(since), ..Default::default() })
            .await
            .map_err(|e| self.sprout_error(e))?;
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
            commands.extend(shared::facts::watch_commands(&self.mapping, desired, &watch, &Source::Session(sid), at));
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
        let conflicts_before = self.identity_conflicts.load(Ordering::Relaxed);
        let drift_before = self.api_drift.load(Ordering::Relaxed);
        let results: Vec<Vec<(String, Disposition)>> = futures::stream::iter(groups)
            .map(|(_, msgs)| self.process_group(msgs, deadline))
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await;
        let mut out = BatchOutcome {
            identity_conflicts: self.identity_conflicts.load(Ordering::Relaxed).saturating_sub(conflicts_before),
            api_drift: self.api_drift.load(Ordering::Relaxed).saturating_sub(drift_before),
            ..Default::default()
        };
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
    pub(crate) async fn park(
        &self,
        m: &QueueMessage,
        cmd: Option<&SyncCommand>,
        reason: &str,
        trace_id: Option<&str>,
    ) -> Disposition {
        // A command keeps its group and key; an undecodable message the group it came with and
        // its message id (hashed when SQS would not take it as an id).
        let (group, dedup) = match cmd {
            Some(c) => (c.message_group(), c.dedup_id()),
            None => (
                m.group_id.as_deref().and_then(|g| MessageGroupId::new(g).ok()).unwrap_or_else(MessageGroupId::parked),
                DedupId::new(m.id.as_str()).unwrap_or_else(|_| DedupId::digest(&m.id)),
            ),
        };
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
    pub(crate) async fn delay(&self, m: &QueueMessage, why: Disposition) {
        let Some(handle) = &m.receipt_handle else {
            return;
        };
        let mut secs = match why {
            Disposition::Unfinished => 0,
            _ => retry_delay_secs(self.retry_base_secs, m.receive_count),
        };
        if let Some(held) = self.ghl.held_for().await {
            // GHL's daily quota is spent (or GHL asked for a long pause): hold the message until
            // then rather than spend its receives.
            secs = secs.max(hold_secs(held));
        }
        if let Err(e) = self.queues.delay_retry(handle, secs).await {
            tracing::warn!(error = %e, "could not delay the retry");
        }
    }

    /// One CloudWatch embedded-metric-format line for this invocation.
    /// The batch's metrics as a CloudWatch embedded-metric line, for the whole deployment and
    /// by `Tenant`. `client_figures`: whether this worker's GHL client figures belong to
    /// `tenant` (false when this worker only parked or returned another tenant's messages).
    pub fn emf_line(&self, tenant: &shared::tenants::TenantId, outcome: &BatchOutcome, client_figures: bool) -> String {
        let stats = self.ghl.stats();
        let remaining = stats.last_remaining.load(Ordering::Relaxed);
        let budget = self.ghl.budget().map(|b| b.stats());
        let mut line = json!({
            "_aws": {
                "Timestamp": chrono::Utc::now().timestamp_millis(),
                "CloudWatchMetrics": [{
                    "Namespace": "SvGhlSync",
                    "Dimensions": [[], ["Tenant"]],
                    "Metrics": [
                        {"Name": "Applied", "Unit": "Count"},
                        {"Name": "Held", "Unit": "Count"},
                        {"Name": "SkippedUnchanged", "Unit": "Count"},
                        {"Name": "Retried", "Unit": "Count"},
                        {"Name": "Parked", "Unit": "Count"},
                        {"Name": "IdentityConflicts", "Unit": "Count"},
                        {"Name": "GhlCalls", "Unit": "Count"},
                        {"Name": "GhlRateLimited", "Unit": "Count"},
                        {"Name": "GhlRateHeadroom", "Unit": "Count"},
                        {"Name": "GhlDailyRemaining", "Unit": "Count"},
                        {"Name": "GhlDailyQuotaRefusals", "Unit": "Count"},
                        {"Name": "ApiDrift", "Unit": "Count"},
                        {"Name": "GhlBudgetWaitMs", "Unit": "Milliseconds"},
                        {"Name": "GhlBudgetWrites", "Unit": "Count"},
                        {"Name": "GhlBudgetConflicts", "Unit": "Count"}
                    ]
                }]
            },
            "Tenant": tenant.as_str(),
            "Applied": outcome.applied,
            "Held": outcome.held,
            "SkippedUnchanged": outcome.unchanged,
            "Retried": outcome.failed.len(),
            "Parked": outcome.parked,
            "IdentityConflicts": outcome.identity_conflicts,
            "GhlCalls": stats.requests.load(Ordering::Relaxed),
            "GhlRateLimited": stats.rate_limited.load(Ordering::Relaxed),
            "GhlRateHeadroom": if remaining == u64::MAX { serde_json::Value::Null } else { json!(remaining) },
            "GhlDailyRemaining": stats.daily_remaining(),
            "GhlDailyQuotaRefusals": stats.daily_quota_refusals.load(Ordering::Relaxed),
            "ApiDrift": outcome.api_drift,
            "GhlBudgetWaitMs": budget.map(|b| b.waited_ms.load(Ordering::Relaxed)),
            "GhlBudgetWrites": budget.map(|b| b.writes.load(Ordering::Relaxed)),
            "GhlBudgetConflicts": budget.map(|b| b.conflicts.load(Ordering::Relaxed)),
        });
        if !client_figures && let Some(o) = line.as_object_mut() {
            for k in [
                "GhlCalls",
                "GhlRateLimited",
                "GhlRateHeadroom",
                "GhlDailyRemaining",
                "GhlDailyQuotaRefusals",
                "GhlBudgetWaitMs",
                "GhlBudgetWrites",
                "GhlBudgetConflicts",
            ] {
                o.remove(k);
            }
            if let Some(list) = o["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array_mut() {
                list.retain(|m| !m["Name"].as_str().is_some_and(|n| n.starts_with("Ghl")));
            }
        }
        line.to_string()
    }
}

/// Visibility delay before retry number `receive_count`: `base` seconds doubling, capped at 15
/// minutes, with jitter.
pub fn retry_delay_secs(base: u64, receive_count: u32) -> i32 {
    let base = base.saturating_mul(1u64 << receive_count.min(8));
    let capped = base.min(900);
    (capped / 2 + fastrand::u64(0..=capped / 2)) as i32
}

/// Visibility delay that holds a message for `held` (SQS allows at most 12 hours).
pub fn hold_secs(held: Duration) -> i32 {
    held.as_secs().saturating_add(1).min(43_200) as i32
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
        let q: ApplyError = GhlError::DailyQuotaExhausted { retry_in: Duration::from_secs(3600) }.into();
        assert!(matches!(q, ApplyError::Transient { ambiguous: false, .. }), "{q:?}");
        assert_eq!(hold_secs(Duration::from_secs(3600)), 3601);
        assert_eq!(hold_secs(Duration::from_secs(86_400 * 7)), 43_200);
    }

    #[test]
    fn a_claim_is_released_only_when_ghl_surely_wrote_nothing() {
        let invalid = |status| GhlError::Invalid { status, messages: vec!["x".into()], trace_id: None };
        let unexpected = |status| GhlError::Unexpected { status, message: "x".into(), trace_id: None };
        let released = [
            invalid(400),
            GhlError::Unauthorized { message: "Invalid JWT".into(), trace_id: None },
            GhlError::Forbidden { message: "no access".into(), trace_id: None },
            GhlError::NotFound { message: "Contact with id x not found".into(), trace_id: None },
            GhlError::RateLimited { retry_after: None },
            GhlError::Transport("connection failed".into()),
        ];
        for e in released {
            assert!(surely_not_written(&e), "{e:?}");
        }
        let deferred = [
            invalid(422),
            GhlError::Decode("EOF while parsing".into()),
            unexpected(408),
            unexpected(409),
            GhlError::MayHaveWritten { reason: "500".into() },
            GhlError::Server { status: 502, message: "x".into(), trace_id: None },
            GhlError::DeadlineExceeded { attempts: 3, last: "x".into() },
        ];
        for e in deferred {
            assert!(!surely_not_written(&e), "{e:?}");
        }
    }

    #[test]
    fn an_unreadable_2xx_or_a_408_is_retried_and_a_missing_contact_is_told_apart() {
        for e in
            [GhlError::Decode("EOF".into()), GhlError::Unexpected { status: 408, message: "x".into(), trace_id: None }]
        {
            let a = ActionError::after_write(e);
            assert!(matches!(a, ActionError::Other(ApplyError::Transient { ambiguous: true, .. })), "{a:?}");
        }
        let gone = ActionError::after_write(GhlError::NotFound { message: "x".into(), trace_id: None });
        assert!(matches!(gone, ActionError::ContactGone(ApplyError::Permanent { .. })), "{gone:?}");
        let refused = ActionError::after_write(GhlError::Invalid { status: 422, messages: vec![], trace_id: None });
        assert!(matches!(refused, ActionError::Other(ApplyError::Permanent { .. })), "{refused:?}");
    }
}
