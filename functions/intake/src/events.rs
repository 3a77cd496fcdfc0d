//! Event bodies into sync commands, or the reason they cannot be: signed events (`POST
//! /v1/events`) and SproutVideo's video webhook.
//!
//! A signed event decodes into [`Event`], one variant per event type, whose fields are the
//! checked types of [`crate::fields`]; one small function per type turns it into commands. The
//! same types generate the published JSON Schema (`crate::schema`).

use std::fmt;
use std::str::FromStr;

use chrono::Utc;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use shared::commands::{CommandBody, DesiredContact, Source, SyncCommand};
use shared::mapping::{ContactInput, Mapping, MappingError, Origin, WatchFacts};

use crate::fields::{CustomFields, EventId, NonNegative, OptText, Percent, Tags, Text, Timestamp};

/// Largest accepted body.
pub const MAX_BODY: usize = 256 * 1024;

/// Why a request body was refused. Nothing here knows about HTTP: the routes map each case to
/// an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The body is larger than [`MAX_BODY`].
    #[error("body is larger than {} KiB", MAX_BODY / 1024)]
    TooLarge,
    /// The body is not declared as JSON.
    #[error("Content-Type must be application/json")]
    NotJson,
    /// The body is not JSON, or not a JSON object.
    #[error("{0}")]
    Malformed(String),
    /// A field is missing or invalid; `field` is its path (`contact.email`, `video.tags[2]`).
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
}

impl InputError {
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Field { field: field.into(), reason: reason.into() }
    }

    /// The path of the refused field, when one field is to blame.
    pub fn field_name(&self) -> Option<&str> {
        match self {
            Self::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// The event types the intake accepts (the `type` of a signed event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    LeadCaptured,
    LoginCreated,
    LoginUpdated,
    VideoWatched,
    NoteCreate,
    TaskCreate,
    TaskComplete,
    TagsAdd,
}

impl EventType {
    pub const ALL: [EventType; 8] = [
        Self::LeadCaptured,
        Self::LoginCreated,
        Self::LoginUpdated,
        Self::VideoWatched,
        Self::NoteCreate,
        Self::TaskCreate,
        Self::TaskComplete,
        Self::TagsAdd,
    ];

    /// The name on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::LeadCaptured => "lead.captured",
            Self::LoginCreated => "login.created",
            Self::LoginUpdated => "login.updated",
            Self::VideoWatched => "video.watched",
            Self::NoteCreate => "note.create",
            Self::TaskCreate => "task.create",
            Self::TaskComplete => "task.complete",
            Self::TagsAdd => "tags.add",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = InputError;

    fn from_str(s: &str) -> Result<Self, InputError> {
        Self::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
            InputError::field("type", format!("must be one of {}", names.join(", ")))
        })
    }
}

/// A signed event: the body of `POST /v1/events`, one shape per `type`.
///
/// Sign the raw body: `X-Signature-Timestamp` = unix seconds, `X-Signature` = `v1=` +
/// hex(HMAC-SHA256(signing secret, `{timestamp}.{body}`)). Several `v1=` values may be sent,
/// comma separated.
#[derive(Debug, Clone, JsonSchema)]
// The tag describes the wire shape for the schema; decoding goes through `decode`, which reads
// the tag first so that errors keep the path of the field they name.
#[serde(tag = "type")]
pub enum Event {
    /// A lead was captured (a form, the player's email gate): upserts the contact (lead tag).
    #[serde(rename = "lead.captured")]
    LeadCaptured(ContactEvent),
    /// A viewer login was created: upserts the contact (login tag).
    #[serde(rename = "login.created")]
    LoginCreated(ContactEvent),
    /// A viewer login changed: upserts the contact (login tag).
    #[serde(rename = "login.updated")]
    LoginUpdated(ContactEvent),
    /// Someone watched a video: upserts the contact with the watch tags and applies the rules.
    #[serde(rename = "video.watched")]
    VideoWatched(VideoWatched),
    /// Writes a note on the contact (once per event id).
    #[serde(rename = "note.create")]
    NoteCreate(NoteCreate),
    /// Creates a task on the contact (once per event id).
    #[serde(rename = "task.create")]
    TaskCreate(TaskCreate),
    /// Marks a task created by an earlier `task.create` as completed.
    #[serde(rename = "task.complete")]
    TaskComplete(TaskComplete),
    /// Adds tags to the contact.
    #[serde(rename = "tags.add")]
    TagsAdd(TagsAdd),
}

/// An event that only says who the person is.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "an object")]
pub struct ContactEvent {
    /// Your id for this event; a retry with the same id is applied once.
    pub id: EventId,
    /// When it happened.
    pub occurred_at: Timestamp,
    pub contact: Contact,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "an object")]
// Without a percent, the share is seconds over the video's duration, which must then be given.
#[schemars(extend(
    "if" = { "properties": { "watch": { "not": { "required": ["percent"], "properties": { "percent": { "type": "number" } } } } } },
    "then" = { "properties": { "video": {
        "required": ["duration"],
        "properties": { "duration": { "type": "number", "exclusiveMinimum": 0 } }
    } } }
))]
pub struct VideoWatched {
    /// Your id for this event; a retry with the same id is applied once.
    pub id: EventId,
    /// When it happened.
    pub occurred_at: Timestamp,
    pub contact: Contact,
    pub video: Video,
    pub watch: Watch,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "an object")]
pub struct NoteCreate {
    /// Your id for this event; a retry with the same id is applied once.
    pub id: EventId,
    /// When it happened.
    pub occurred_at: Timestamp,
    pub contact: Contact,
    pub note: Note,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "an object")]
pub struct TaskCreate {
    /// Your id for this event; a retry with the same id is applied once.
    pub id: EventId,
    /// When it happened.
    pub occurred_at: Timestamp,
    pub contact: Contact,
    pub task: NewTask,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "an object")]
pub struct TaskComplete {
    /// Your id for this event; a retry with the same id is applied once.
    pub id: EventId,
    /// When it happened.
    pub occurred_at: Timestamp,
    pub contact: Contact,
    pub task: TaskRef,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "an object")]
pub struct TagsAdd {
    /// Your id for this event; a retry with the same id is applied once.
    pub id: EventId,
    /// When it happened.
    pub occurred_at: Timestamp,
    pub contact: Contact,
    /// The tags to add (trimmed; GHL stores them in lower case).
    pub tags: Tags<1>,
}

/// The person the event is about, found or created in GHL by email.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "an object")]
pub struct Contact {
    /// The person's email; shared role addresses (info@, sales@, …) are refused.
    #[schemars(extend("format" = "email"))]
    pub email: Text<254>,
    #[serde(default)]
    pub first_name: OptText<100>,
    #[serde(default)]
    pub last_name: OptText<100>,
    /// Split into first and last name when those are absent.
    #[serde(default)]
    pub name: OptText<200>,
    /// Any format; sent to GHL as E.164 (national numbers in the mapping's default region); dropped if invalid.
    #[serde(default)]
    pub phone: OptText<40>,
    #[serde(default)]
    pub company: OptText<200>,
    /// Tags for the contact.
    #[serde(default)]
    pub tags: Tags<0>,
    /// Values by GHL custom-field key (`contact.<field_key>`).
    #[serde(default)]
    pub custom_fields: CustomFields,
}

impl From<Contact> for ContactInput {
    fn from(c: Contact) -> Self {
        ContactInput {
            email: c.email.into_string(),
            first_name: c.first_name.into_option(),
            last_name: c.last_name.into_option(),
            name: c.name.into_option(),
            phone: c.phone.into_option(),
            company: c.company.into_option(),
            tags: c.tags.into_vec(),
            custom_fields: c.custom_fields.into_map(),
        }
    }
}

/// The video that was watched.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "an object")]
pub struct Video {
    /// The SproutVideo video id.
    pub id: Text<100>,
    /// Shown in notes and tasks; the id when absent.
    #[serde(default)]
    pub title: OptText<300>,
    /// Seconds; needed when only watch.seconds is given.
    #[serde(default)]
    pub duration: Option<NonNegative>,
    /// SproutVideo tag ids, for rules limited to tagged videos.
    #[serde(default)]
    pub tags: Tags<0>,
}

/// How much of the video was watched: `percent`, or `seconds` with the video's `duration`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "an object")]
#[schemars(extend("anyOf" = [
    { "required": ["percent"], "properties": { "percent": { "type": "number" } } },
    { "required": ["seconds"], "properties": { "seconds": { "type": "number" } } }
]))]
pub struct Watch {
    /// Share of the video watched, 0 to 100; wins over seconds.
    #[serde(default)]
    pub percent: Option<Percent>,
    /// Seconds watched.
    #[serde(default)]
    pub seconds: Option<NonNegative>,
}

impl Watch {
    /// The share watched: `percent`, else `seconds` over the video's duration (at most 100).
    fn share(&self, duration: Option<NonNegative>) -> Result<f64, InputError> {
        match (self.percent, self.seconds) {
            (Some(p), _) => Ok(p.get()),
            (None, Some(s)) => match duration.map(NonNegative::get).filter(|d| *d > 0.0) {
                Some(d) => Ok((s.get() / d * 100.0).min(100.0)),
                None => Err(InputError::field("video.duration", "is required when only watch.seconds is given")),
            },
            (None, None) => Err(InputError::field("watch.percent", "watch.percent or watch.seconds is required")),
        }
    }
}

/// A note for the contact.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "an object")]
pub struct Note {
    pub body: Text<10_000>,
}

/// A task for the contact.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "an object")]
pub struct NewTask {
    /// Your name for the task; task.complete refers to it.
    pub external_id: Text<200>,
    pub title: Text<300>,
    #[serde(default)]
    pub body: OptText<10_000>,
    pub due_at: Timestamp,
    /// GHL user id.
    #[serde(default)]
    pub assigned_to: OptText<100>,
}

/// A task created by an earlier task.create.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "an object")]
pub struct TaskRef {
    /// The external_id given to task.create.
    pub external_id: Text<200>,
}

impl Event {
    pub fn kind(&self) -> EventType {
        match self {
            Event::LeadCaptured(_) => EventType::LeadCaptured,
            Event::LoginCreated(_) => EventType::LoginCreated,
            Event::LoginUpdated(_) => EventType::LoginUpdated,
            Event::VideoWatched(_) => EventType::VideoWatched,
            Event::NoteCreate(_) => EventType::NoteCreate,
            Event::TaskCreate(_) => EventType::TaskCreate,
            Event::TaskComplete(_) => EventType::TaskComplete,
            Event::TagsAdd(_) => EventType::TagsAdd,
        }
    }

    /// The sender's id of the event.
    pub fn id(&self) -> &str {
        match self {
            Event::LeadCaptured(e) | Event::LoginCreated(e) | Event::LoginUpdated(e) => e.id.as_str(),
            Event::VideoWatched(e) => e.id.as_str(),
            Event::NoteCreate(e) => e.id.as_str(),
            Event::TaskCreate(e) => e.id.as_str(),
            Event::TaskComplete(e) => e.id.as_str(),
            Event::TagsAdd(e) => e.id.as_str(),
        }
    }

    /// The commands the event becomes.
    pub fn commands(self, mapping: &Mapping) -> Result<Vec<SyncCommand>, InputError> {
        match self {
            Event::LeadCaptured(e) => contact_seen(mapping, e, Origin::Lead),
            Event::LoginCreated(e) | Event::LoginUpdated(e) => contact_seen(mapping, e, Origin::Login),
            Event::VideoWatched(e) => video_watched(mapping, e),
            Event::NoteCreate(e) => note_create(mapping, e),
            Event::TaskCreate(e) => task_create(mapping, e),
            Event::TaskComplete(e) => task_complete(mapping, e),
            Event::TagsAdd(e) => tags_add(mapping, e),
        }
    }
}

/// What the mapping makes of the person; a refused email names `contact.email`.
fn desired(mapping: &Mapping, contact: Contact, origin: Origin) -> Result<DesiredContact, InputError> {
    mapping.desired(&contact.into(), origin).map_err(|e| match e {
        MappingError::Identity(_) | MappingError::SharedIdentifier(_) => {
            InputError::field("contact.email", e.to_string())
        }
        MappingError::UnknownCustomField(ref key) | MappingError::CustomFieldType { ref key, .. } => {
            InputError::field(format!("contact.custom_fields.{key}"), e.to_string())
        }
        other => InputError::field("contact", other.to_string()),
    })
}

fn upsert(id: &EventId, at: &Timestamp, contact: DesiredContact) -> SyncCommand {
    SyncCommand::new(Source::Event(id.as_str().into()), "upsert_contact", at.0, CommandBody::UpsertContact { contact })
}

/// `lead.captured`, `login.created`, `login.updated`: upsert the contact.
fn contact_seen(mapping: &Mapping, e: ContactEvent, origin: Origin) -> Result<Vec<SyncCommand>, InputError> {
    let desired = desired(mapping, e.contact, origin)?;
    Ok(vec![upsert(&e.id, &e.occurred_at, desired)])
}

/// `video.watched`: the watch facts through the mapping's rules.
fn video_watched(mapping: &Mapping, e: VideoWatched) -> Result<Vec<SyncCommand>, InputError> {
    let desired = desired(mapping, e.contact, Origin::Lead)?;
    let percent = e.watch.share(e.video.duration)?;
    let video_id = e.video.id.into_string();
    let watch = WatchFacts {
        video_title: e.video.title.into_option().unwrap_or_else(|| video_id.clone()),
        video_id,
        video_tags: e.video.tags.into_vec(),
        percent,
        at: e.occurred_at.0,
    };
    Ok(shared::facts::watch_commands(mapping, desired, &watch, &Source::Event(e.id.as_str().into()), e.occurred_at.0))
}

/// `note.create`: upsert the contact, then the note.
fn note_create(mapping: &Mapping, e: NoteCreate) -> Result<Vec<SyncCommand>, InputError> {
    let desired = desired(mapping, e.contact, Origin::Event)?;
    let identity = desired.identity();
    let body = CommandBody::AddNote { identity, body: e.note.body.into_string() };
    Ok(vec![
        upsert(&e.id, &e.occurred_at, desired),
        SyncCommand::new(Source::Event(e.id.as_str().into()), "add_note", e.occurred_at.0, body),
    ])
}

/// `task.create`: upsert the contact, then the task.
fn task_create(mapping: &Mapping, e: TaskCreate) -> Result<Vec<SyncCommand>, InputError> {
    let desired = desired(mapping, e.contact, Origin::Event)?;
    let body = CommandBody::CreateTask {
        identity: desired.identity(),
        external_id: e.task.external_id.into_string(),
        title: e.task.title.into_string(),
        body: e.task.body.into_option(),
        due_at: e.task.due_at.0,
        assigned_to: e.task.assigned_to.into_option(),
    };
    Ok(vec![
        upsert(&e.id, &e.occurred_at, desired),
        SyncCommand::new(Source::Event(e.id.as_str().into()), "create_task", e.occurred_at.0, body),
    ])
}

/// `task.complete`: complete the task (the contact is not upserted).
fn task_complete(mapping: &Mapping, e: TaskComplete) -> Result<Vec<SyncCommand>, InputError> {
    let identity = desired(mapping, e.contact, Origin::Event)?.identity();
    let body = CommandBody::CompleteTask { identity, external_id: e.task.external_id.into_string() };
    Ok(vec![SyncCommand::new(Source::Event(e.id.as_str().into()), "complete_task", e.occurred_at.0, body)])
}

/// `tags.add`: add the tags (the contact is not upserted).
fn tags_add(mapping: &Mapping, e: TagsAdd) -> Result<Vec<SyncCommand>, InputError> {
    let identity = desired(mapping, e.contact, Origin::Event)?.identity();
    let body = CommandBody::AddTags { identity, tags: e.tags.into_vec() };
    Ok(vec![SyncCommand::new(Source::Event(e.id.as_str().into()), "add_tags", e.occurred_at.0, body)])
}

/// Decodes a signed event's body. Not JSON, or not an object, is [`InputError::Malformed`];
/// anything else wrong is an [`InputError::Field`] naming the field's path.
pub fn decode(body: &[u8]) -> Result<Event, InputError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| InputError::Malformed(format!("body is not valid JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(InputError::Malformed("body must be a JSON object".into()));
    };
    let kind = Text::<50>::deserialize(object.remove("type").unwrap_or(Value::Null))
        .map_err(|e| InputError::field("type", reason(&e.to_string())))?;
    let kind: EventType = kind.as_str().parse()?;
    let rest = Value::Object(object);
    Ok(match kind {
        EventType::LeadCaptured => Event::LeadCaptured(fields(kind, rest)?),
        EventType::LoginCreated => Event::LoginCreated(fields(kind, rest)?),
        EventType::LoginUpdated => Event::LoginUpdated(fields(kind, rest)?),
        EventType::VideoWatched => Event::VideoWatched(fields(kind, rest)?),
        EventType::NoteCreate => Event::NoteCreate(fields(kind, rest)?),
        EventType::TaskCreate => Event::TaskCreate(fields(kind, rest)?),
        EventType::TaskComplete => Event::TaskComplete(fields(kind, rest)?),
        EventType::TagsAdd => Event::TagsAdd(fields(kind, rest)?),
    })
}

/// Decodes the fields of one event type, keeping the path of a refused field.
fn fields<T: DeserializeOwned>(kind: EventType, value: Value) -> Result<T, InputError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let depth = e.path().iter().count();
        field_error(kind, depth, &e.path().to_string(), &e.inner().to_string())
    })
}

/// A decoding error as the field it names and why; `path` has `depth` segments. serde reports
/// a missing field at the enclosing object, so that one names the field from serde's message.
fn field_error(kind: EventType, depth: usize, path: &str, message: &str) -> InputError {
    let top = depth == 0;
    let under = |name: &str| if top { name.to_string() } else { format!("{path}.{name}") };
    if let Some(name) = message.strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
        let reason = if top { format!("is required for {kind}") } else { "is required".to_string() };
        return InputError::field(under(name), reason);
    }
    if message.starts_with("unknown field `") {
        let reason =
            if depth == 1 { format!("is not a field of {kind} events") } else { "is not a known field".to_string() };
        return InputError::field(path, reason);
    }
    if top {
        return InputError::Malformed(message.to_string());
    }
    InputError::field(path, reason(message))
}

/// serde's wording of a type mismatch as what the field must be.
fn reason(message: &str) -> String {
    if message.starts_with("invalid type: null") {
        return "is required".into();
    }
    match message.strip_prefix("invalid type: ").and_then(|m| m.split_once(", expected ")) {
        Some((_, expected)) => format!("must be {expected}"),
        None => message.to_string(),
    }
}

/// A validated event: its id (for logs and the 202), and the commands it becomes.
#[derive(Debug, Clone)]
pub struct AcceptedEvent {
    pub id: String,
    pub kind: &'static str,
    pub commands: Vec<SyncCommand>,
}

/// Parses and validates a signed event's body and maps it to commands.
pub fn event_commands(mapping: &Mapping, body: &[u8]) -> Result<AcceptedEvent, InputError> {
    let event = decode(body)?;
    let (id, kind) = (event.id().to_string(), event.kind().as_str());
    let commands = event.commands(mapping)?;
    Ok(AcceptedEvent { id, kind, commands })
}

/// What the intake reads of SproutVideo's webhook (a whole video object): its id, and its
/// `updated_at` as the version of the change.
#[derive(Debug, Deserialize)]
struct VideoNotice {
    id: Text<100>,
    #[serde(default, deserialize_with = "string_or_nothing")]
    updated_at: Option<String>,
}

/// A string, or nothing for anything else: an odd `updated_at` does not lose the notice.
fn string_or_nothing<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        _ => None,
    })
}

/// SproutVideo's webhook (a bare video object): a "video changed" command with only its id.
pub fn webhook_commands(body: &[u8]) -> Result<AcceptedEvent, InputError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| InputError::Malformed(format!("body is not valid JSON: {e}")))?;
    let notice = match value {
        Value::Object(_) => VideoNotice::deserialize(value).ok(),
        _ => None,
    }
    .ok_or_else(|| InputError::field("id", "the video JSON must carry its id"))?;
    let id = notice.id.into_string();
    let event_id = format!("sv-video:{id}:{}", notice.updated_at.as_deref().unwrap_or(""));
    let cmd = SyncCommand::new(
        Source::SproutVideo(event_id.clone()),
        "video_changed",
        Utc::now(),
        CommandBody::VideoChanged { video_id: id },
    );
    Ok(AcceptedEvent { id: event_id, kind: "video.processed", commands: vec![cmd] })
}

/// One example of each event type, as documented in the published schema.
pub fn examples() -> Vec<Value> {
    use serde_json::json;
    let at = "2026-11-29T10:00:00Z";
    let contact = json!({"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace"});
    let with = |id: &str, kind: EventType, extra: Value| {
        let mut v = json!({"id": id, "type": kind.as_str(), "occurred_at": at, "contact": contact});
        if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
            v.extend(extra);
        }
        v
    };
    vec![
        with(
            "evt-1",
            EventType::LeadCaptured,
            json!({"contact": {"email": "ada@example.com", "name": "Ada Lovelace", "phone": "+1 415 555 2671",
                               "company": "Engines Ltd", "tags": ["course-a"], "custom_fields": {"contact.plan": "gold"}}}),
        ),
        with("evt-2", EventType::LoginCreated, json!({})),
        with("evt-3", EventType::LoginUpdated, json!({})),
        with(
            "evt-4",
            EventType::VideoWatched,
            json!({"video": {"id": "a098d2bbd33e1c328", "title": "Pricing walkthrough", "duration": 300},
                   "watch": {"seconds": 261}}),
        ),
        with("evt-5", EventType::NoteCreate, json!({"note": {"body": "Asked about pricing."}})),
        with(
            "evt-6",
            EventType::TaskCreate,
            json!({"task": {"external_id": "call-ada", "title": "Call back", "due_at": "2026-12-01T15:00:00Z",
                            "body": "About the gold plan"}}),
        ),
        with("evt-7", EventType::TaskComplete, json!({"task": {"external_id": "call-ada"}})),
        with("evt-8", EventType::TagsAdd, json!({"tags": ["vip"]})),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use serde_json::json;
    use shared::queue::MessageGroupId;

    fn ev(v: Value) -> Result<AcceptedEvent, InputError> {
        event_commands(&Mapping::default_mapping(), v.to_string().as_bytes())
    }

    /// The HTTP status and field a refusal answers with.
    fn answer(e: &InputError) -> (u16, Option<&str>) {
        (e.clone().into_response().status().as_u16(), e.field_name())
    }

    fn base(kind: &str) -> Value {
        json!({"id": "evt-1", "type": kind, "occurred_at": "2026-11-29T10:00:00+01:00",
               "contact": {"email": "Ada@Example.com", "first_name": "Ada"}})
    }

    #[test]
    fn each_event_type_becomes_its_commands() {
        let cases: Vec<(Value, &[&str])> = vec![
            (base("lead.captured"), &["upsert_contact"]),
            (base("login.created"), &["upsert_contact"]),
            (base("login.updated"), &["upsert_contact"]),
            (
                {
                    let mut v = base("video.watched");
                    v["video"] = json!({"id": "v1", "title": "Pricing", "duration": 100});
                    v["watch"] = json!({"seconds": 80});
                    v
                },
                &["upsert_contact", "add_note", "create_task"],
            ),
            (
                {
                    let mut v = base("note.create");
                    v["note"] = json!({"body": "hello"});
                    v
                },
                &["upsert_contact", "add_note"],
            ),
            (
                {
                    let mut v = base("task.create");
                    v["task"] = json!({"external_id": "x", "title": "Call", "due_at": "2026-12-01T00:00:00Z"});
                    v
                },
                &["upsert_contact", "create_task"],
            ),
            (
                {
                    let mut v = base("task.complete");
                    v["task"] = json!({"external_id": "x"});
                    v
                },
                &["complete_task"],
            ),
            (
                {
                    let mut v = base("tags.add");
                    v["tags"] = json!(["vip"]);
                    v
                },
                &["add_tags"],
            ),
        ];
        for (v, want) in cases {
            let a = ev(v.clone()).unwrap_or_else(|e| panic!("{v}: {e:?}"));
            let kinds: Vec<&str> = a.commands.iter().map(|c| c.body.action_name()).collect();
            assert_eq!(kinds, want, "{v}");
            assert_eq!(a.kind, v["type"]);
            let ada = shared::identity::Email::parse("ada@example.com").unwrap();
            assert!(a.commands.iter().all(|c| c.message_group() == MessageGroupId::for_person(&ada)));
        }
    }

    #[test]
    fn fields_are_trimmed_and_blank_optional_fields_are_absent() {
        let mut v = base(" task.create ");
        v["id"] = json!("  evt-9 ");
        v["contact"]["last_name"] = json!("   ");
        v["contact"]["tags"] = json!([" Course-A "]);
        v["task"] = json!({"external_id": " x ", "title": " Call ", "due_at": "2026-12-01T00:00:00Z", "body": ""});
        let a = ev(v).unwrap();
        assert_eq!(a.id, "evt-9");
        let CommandBody::UpsertContact { contact } = &a.commands[0].body else { panic!("{:?}", a.commands) };
        assert_eq!(contact.last_name, None);
        assert!(contact.tags.contains("course-a"), "{:?}", contact.tags);
        let CommandBody::CreateTask { external_id, title, body, .. } = &a.commands[1].body else { panic!() };
        assert_eq!((external_id.as_str(), title.as_str(), body), ("x", "Call", &None));
    }

    #[test]
    fn a_watch_share_comes_from_percent_or_from_seconds_over_the_duration() {
        let share = |watch: Value, duration: Value| {
            let mut v = base("video.watched");
            v["video"] = json!({"id": "v1", "duration": duration});
            v["watch"] = watch;
            match decode(v.to_string().as_bytes()).unwrap() {
                Event::VideoWatched(e) => e.watch.share(e.video.duration),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(share(json!({"percent": 40, "seconds": 90}), json!(100)), Ok(40.0));
        assert_eq!(share(json!({"seconds": 25}), json!(50)), Ok(50.0));
        assert_eq!(share(json!({"seconds": 80}), json!(50)), Ok(100.0));
        assert_eq!(share(json!({"seconds": 8}), json!(0)).unwrap_err().field_name(), Some("video.duration"));
        assert_eq!(share(json!({}), json!(10)).unwrap_err().field_name(), Some("watch.percent"));
    }

    #[test]
    fn bad_events_name_the_field() {
        let with = |kind: &str, f: &dyn Fn(&mut Value)| {
            let mut v = base(kind);
            f(&mut v);
            v
        };
        let cases: Vec<(Value, u16, Option<&str>)> = vec![
            (json!([1]), 400, None),
            (json!("event"), 400, None),
            (json!({"type": "lead.captured"}), 422, Some("id")),
            (json!({"id": "x"}), 422, Some("type")),
            (with("lead.captured", &|v| v["type"] = json!("nope")), 422, Some("type")),
            (with("lead.captured", &|v| v["type"] = json!(7)), 422, Some("type")),
            (with("lead.captured", &|v| v["id"] = json!("evt 1")), 422, Some("id")),
            (with("lead.captured", &|v| v["id"] = json!("  ")), 422, Some("id")),
            (with("lead.captured", &|v| v["id"] = json!("x".repeat(201))), 422, Some("id")),
            (with("lead.captured", &|v| v["occurred_at"] = json!("yesterday")), 422, Some("occurred_at")),
            (with("lead.captured", &|v| v["contact"] = json!(null)), 422, Some("contact")),
            (with("lead.captured", &|v| v["contact"] = json!("ada@example.com")), 422, Some("contact")),
            (with("lead.captured", &|v| v["contact"]["email"] = json!("not-an-email")), 422, Some("contact.email")),
            (with("lead.captured", &|v| v["contact"]["email"] = json!("info@example.com")), 422, Some("contact.email")),
            (with("lead.captured", &|v| v["contact"]["email"] = json!(" ")), 422, Some("contact.email")),
            (with("lead.captured", &|v| v["contact"]["phone"] = json!("1".repeat(41))), 422, Some("contact.phone")),
            (with("lead.captured", &|v| v["contact"]["first_name"] = json!(5)), 422, Some("contact.first_name")),
            (with("lead.captured", &|v| v["contact"]["shoe_size"] = json!(9)), 422, Some("contact.shoe_size")),
            (with("lead.captured", &|v| v["contact"]["tags"] = json!("vip")), 422, Some("contact.tags")),
            (with("lead.captured", &|v| v["contact"]["tags"] = json!(["ok", " "])), 422, Some("contact.tags[1]")),
            (with("lead.captured", &|v| v["contact"]["tags"] = json!(vec!["t"; 101])), 422, Some("contact.tags")),
            (with("lead.captured", &|v| v["surprise"] = json!(1)), 422, Some("surprise")),
            (with("lead.captured", &|v| v["note"] = json!({"body": "b"})), 422, Some("note")),
            (base("video.watched"), 422, Some("video")),
            (
                with("video.watched", &|v| {
                    v["video"] = json!({"id": "v"});
                    v["watch"] = json!({"seconds": 3});
                }),
                422,
                Some("video.duration"),
            ),
            (
                with("video.watched", &|v| {
                    v["video"] = json!({"id": "v"});
                    v["watch"] = json!({"percent": 130});
                }),
                422,
                Some("watch.percent"),
            ),
            (
                with("video.watched", &|v| {
                    v["video"] = json!({"id": "v"});
                    v["watch"] = json!({"percent": -1});
                }),
                422,
                Some("watch.percent"),
            ),
            (
                with("video.watched", &|v| {
                    v["video"] = json!({"id": "v"});
                    v["watch"] = json!({});
                }),
                422,
                Some("watch.percent"),
            ),
            (
                with("video.watched", &|v| {
                    v["video"] = json!({"id": "v", "length": 3});
                    v["watch"] = json!({"percent": 3});
                }),
                422,
                Some("video.length"),
            ),
            (
                with("task.create", &|v| v["task"] = json!({"external_id": "x", "title": "t", "due_at": "no"})),
                422,
                Some("task.due_at"),
            ),
            (with("task.create", &|v| v["task"] = json!({"external_id": "x", "title": "t"})), 422, Some("task.due_at")),
            (
                with("task.complete", &|v| v["task"] = json!({"external_id": "x", "title": "t"})),
                422,
                Some("task.title"),
            ),
            (with("note.create", &|v| v["note"] = json!({"body": ""})), 422, Some("note.body")),
            (base("tags.add"), 422, Some("tags")),
            (with("tags.add", &|v| v["tags"] = json!([])), 422, Some("tags")),
            (
                with("lead.captured", &|v| v["contact"]["custom_fields"] = json!({"x": 1})),
                422,
                Some("contact.custom_fields.x"),
            ),
            (
                with("lead.captured", &|v| v["contact"]["custom_fields"] = json!({"contact.plan": null})),
                422,
                Some("contact.custom_fields.contact.plan"),
            ),
        ];
        for (v, status, field) in cases {
            let e = ev(v.clone()).unwrap_err();
            assert_eq!(answer(&e), (status, field), "{v}: {e:?}");
        }
    }

    #[test]
    fn refusals_say_why() {
        let e = ev(json!({"type": "lead.captured"})).unwrap_err();
        assert_eq!(e.to_string(), "id: is required for lead.captured");
        let mut v = base("lead.captured");
        v["note"] = json!({"body": "b"});
        assert_eq!(ev(v).unwrap_err().to_string(), "note: is not a field of lead.captured events");
        let mut v = base("lead.captured");
        v["contact"]["first_name"] = json!(5);
        assert_eq!(ev(v).unwrap_err().to_string(), "contact.first_name: must be a string");
        let mut v = base("lead.captured");
        v["contact"]["email"] = json!(null);
        assert_eq!(ev(v).unwrap_err().to_string(), "contact.email: is required");
        let mut v = base("lead.captured");
        v["type"] = json!("nope");
        assert!(ev(v).unwrap_err().to_string().starts_with("type: must be one of lead.captured, login.created"));
    }

    #[test]
    fn the_examples_map_to_commands() {
        let examples = examples();
        let kinds: Vec<&str> = examples.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, EventType::ALL.map(EventType::as_str));
        for e in examples {
            let a = ev(e.clone()).unwrap_or_else(|err| panic!("{e}: {err}"));
            assert!(!a.commands.is_empty());
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn near_event() -> impl Strategy<Value = Vec<u8>> {
            let kinds = proptest::sample::select(EventType::ALL.to_vec());
            (kinds, "[ -~]{0,40}", any::<u16>(), proptest::collection::vec(any::<u8>(), 0..16)).prop_map(
                |(kind, email, n, junk)| {
                    let mut v = base(kind.as_str());
                    v["contact"]["email"] = json!(email);
                    match kind {
                        EventType::VideoWatched => {
                            v["video"] = json!({"id": format!("v{n}"), "duration": n});
                            v["watch"] = json!({"seconds": n, "percent": n % 150});
                        }
                        EventType::NoteCreate => v["note"] = json!({"body": email}),
                        EventType::TaskCreate => {
                            v["task"] = json!({"external_id": email, "title": "t", "due_at": "2026-12-01T00:00:00Z"})
                        }
                        EventType::TaskComplete => v["task"] = json!({"external_id": email}),
                        EventType::TagsAdd => v["tags"] = json!([email]),
                        _ => {}
                    }
                    // Now and then a section of another type, which must be refused by name.
                    if n % 5 == 0 {
                        v["note"] = json!({"body": "b"});
                    }
                    let mut bytes = v.to_string().into_bytes();
                    let at = (n as usize) % (bytes.len() + 1);
                    if n % 3 == 0 {
                        bytes.splice(at..at, junk);
                    }
                    bytes
                },
            )
        }

        proptest! {
            #[test]
            fn event_decoding_never_panics_and_fails_only_with_a_4xx(body in proptest::collection::vec(any::<u8>(), 0..512)) {
                if let Err(e) = event_commands(&Mapping::default_mapping(), &body) {
                    let (status, _) = answer(&e);
                    prop_assert!(status == 400 || status == 422);
                }
                let _ = webhook_commands(&body);
            }

            #[test]
            fn near_valid_events_map_or_name_a_field(body in near_event()) {
                match event_commands(&Mapping::default_mapping(), &body) {
                    Ok(a) => prop_assert!(!a.commands.is_empty()),
                    Err(e) => prop_assert!(answer(&e).0 == 400 || e.field_name().is_some_and(|f| !f.is_empty()), "{:?}", e),
                }
            }
        }
    }

    #[test]
    fn webhooks_need_a_video_id() {
        let a = webhook_commands(br#"{"id":"abc123","state":"deployed","updated_at":"2026-11-29T10:00:00Z"}"#).unwrap();
        assert_eq!(a.commands[0].message_group(), MessageGroupId::for_video("abc123"));
        assert_eq!(a.id, "sv-video:abc123:2026-11-29T10:00:00Z");
        let odd = webhook_commands(br#"{"id":" abc123 ","updated_at":7,"tags":[]}"#).unwrap();
        assert_eq!(odd.id, "sv-video:abc123:");
        assert_eq!(answer(&webhook_commands(b"{}").unwrap_err()), (422, Some("id")));
        assert_eq!(answer(&webhook_commands(br#"["abc"]"#).unwrap_err()), (422, Some("id")));
        assert_eq!(answer(&webhook_commands(b"nope").unwrap_err()), (400, None));
    }
}
