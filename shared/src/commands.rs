//! The sync commands that travel on the queue.
//!
//! On the wire a command is one JSON object: `{"v": 1, "key", "source_event", "occurred_at",
//! "kind", ...}`. `v` is the schema version; a message of an unknown version, or one that does
//! not parse, is a typed [`DecodeError`] (never a panic), so the worker can park it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::identity::{Email, Identity, Phone};

/// The schema version this build writes and reads.
pub const COMMAND_VERSION: u64 = 1;

/// A stable idempotency key: SHA-256 of the source event id and the action, in hex. Used as the
/// SQS deduplication id and as the ledger key, so a redelivered or re-sent command is applied once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn derive(source_event: &str, action: &str) -> Self {
        let mut h = Sha256::new();
        h.update(source_event.as_bytes());
        h.update([0u8]);
        h.update(action.as_bytes());
        Self(hex::encode(h.finalize()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short form for references inside GHL notes and tasks.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }
}

/// What GHL should hold for one person: only the fields this sync owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredContact {
    pub email: Email,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<Phone>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Tags to be present (added, never replaced).
    #[serde(default)]
    pub tags: BTreeSet<String>,
    /// Custom field values by field key (`contact.sv_last_video`).
    #[serde(default)]
    pub custom_fields: BTreeMap<String, Value>,
}

impl DesiredContact {
    pub fn new(email: Email) -> Self {
        Self {
            email,
            phone: None,
            first_name: None,
            last_name: None,
            company_name: None,
            source: None,
            tags: BTreeSet::new(),
            custom_fields: BTreeMap::new(),
        }
    }

    /// A deterministic hash of the desired state (sorted maps and sets, fixed field order).
    pub fn state_hash(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("desired state serialises");
        hex::encode(Sha256::digest(bytes))
    }

    pub fn identity(&self) -> Identity {
        Identity { email: self.email.clone(), phone: self.phone.clone() }
    }

    /// Merges another desired state of the same person: later facts fill or replace fields,
    /// tags and custom fields accumulate.
    pub fn merge(&mut self, other: DesiredContact) {
        self.phone = other.phone.or(self.phone.take());
        self.first_name = other.first_name.or(self.first_name.take());
        self.last_name = other.last_name.or(self.last_name.take());
        self.company_name = other.company_name.or(self.company_name.take());
        self.source = other.source.or(self.source.take());
        self.tags.extend(other.tags);
        self.custom_fields.extend(other.custom_fields);
    }
}

/// What a command does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandBody {
    /// Create or update the person's contact and add its tags (skipped when the same state
    /// was applied last).
    UpsertContact { contact: DesiredContact },
    /// Upsert even if the state was applied before: GHL drifted from it (from the reconciler).
    RepairContact { contact: DesiredContact },
    /// Add tags to the person's contact.
    AddTags { identity: Identity, tags: Vec<String> },
    /// Write a note on the person's contact (once per key).
    AddNote { identity: Identity, body: String },
    /// Create a task on the person's contact (once per key); `external_id` names it for completion.
    CreateTask {
        identity: Identity,
        external_id: String,
        title: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        due_at: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        assigned_to: Option<String>,
    },
    /// Mark the task created under `external_id` as completed.
    CompleteTask { identity: Identity, external_id: String },
    /// A video changed in SproutVideo: re-fetch it and pull its new engagement sessions.
    VideoChanged { video_id: String },
}

impl CommandBody {
    /// The action name that goes into the idempotency key.
    pub fn action_name(&self) -> &'static str {
        match self {
            Self::UpsertContact { .. } => "upsert_contact",
            Self::RepairContact { .. } => "repair_contact",
            Self::AddTags { .. } => "add_tags",
            Self::AddNote { .. } => "add_note",
            Self::CreateTask { .. } => "create_task",
            Self::CompleteTask { .. } => "complete_task",
            Self::VideoChanged { .. } => "video_changed",
        }
    }

    /// The person the command is about (none for a video change).
    pub fn email(&self) -> Option<&Email> {
        match self {
            Self::UpsertContact { contact } | Self::RepairContact { contact } => Some(&contact.email),
            Self::AddTags { identity, .. }
            | Self::AddNote { identity, .. }
            | Self::CreateTask { identity, .. }
            | Self::CompleteTask { identity, .. } => Some(&identity.email),
            Self::VideoChanged { .. } => None,
        }
    }
}

/// One queued command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncCommand {
    pub key: IdempotencyKey,
    /// The id of the event (or reconciliation item) this came from.
    pub source_event: String,
    pub occurred_at: DateTime<Utc>,
    #[serde(flatten)]
    pub body: CommandBody,
}

impl SyncCommand {
    /// A command whose key derives from `source_event` and `action` (which must be unique among
    /// the commands one event produces, e.g. `add_note:rule-name`).
    pub fn new(source_event: &str, action: &str, occurred_at: DateTime<Utc>, body: CommandBody) -> Self {
        Self {
            key: IdempotencyKey::derive(source_event, action),
            source_event: source_event.to_string(),
            occurred_at,
            body,
        }
    }

    /// The FIFO message group: one person's commands apply in order, one at a time.
    pub fn group_id(&self) -> String {
        match &self.body {
            CommandBody::VideoChanged { video_id } => format!("video:{video_id}"),
            b => b.email().map(|e| e.as_str().to_string()).unwrap_or_default(),
        }
    }

    pub fn encode(&self) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            v: u64,
            #[serde(flatten)]
            cmd: &'a SyncCommand,
        }
        serde_json::to_string(&Wire { v: COMMAND_VERSION, cmd: self }).expect("commands serialise")
    }

    pub fn decode(body: &str) -> Result<Self, DecodeError> {
        let mut v: Value = serde_json::from_str(body).map_err(|e| DecodeError::NotJson(e.to_string()))?;
        let obj = v.as_object_mut().ok_or(DecodeError::NotAnObject)?;
        match obj.remove("v") {
            None => return Err(DecodeError::MissingVersion),
            Some(Value::Number(n)) if n.as_u64() == Some(COMMAND_VERSION) => {}
            Some(other) => return Err(DecodeError::UnknownVersion(other.to_string())),
        }
        serde_json::from_value(v).map_err(|e| DecodeError::Invalid(e.to_string()))
    }
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum DecodeError {
    #[error("message body is not JSON: {0}")]
    NotJson(String),
    #[error("message body is not a JSON object")]
    NotAnObject,
    #[error("message has no schema version (v)")]
    MissingVersion,
    #[error("message schema version {0} is not supported by this worker (expects {COMMAND_VERSION})")]
    UnknownVersion(String),
    #[error("message does not match the command schema: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn email(s: &str) -> Email {
        Email::parse(s).unwrap()
    }

    fn sample() -> Vec<SyncCommand> {
        let at = DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z").unwrap().to_utc();
        let id = Identity { email: email("a@example.com"), phone: Some(Phone::parse("+14155552671", "US").unwrap()) };
        let mut c = DesiredContact::new(email("a@example.com"));
        c.tags.insert("sproutvideo".into());
        c.custom_fields.insert("contact.x".into(), Value::from(3));
        vec![
            SyncCommand::new("e1", "upsert", at, CommandBody::UpsertContact { contact: c.clone() }),
            SyncCommand::new("e1", "repair", at, CommandBody::RepairContact { contact: c }),
            SyncCommand::new("e1", "tags", at, CommandBody::AddTags { identity: id.clone(), tags: vec!["t".into()] }),
            SyncCommand::new("e1", "note", at, CommandBody::AddNote { identity: id.clone(), body: "hi".into() }),
            SyncCommand::new(
                "e1",
                "task",
                at,
                CommandBody::CreateTask {
                    identity: id.clone(),
                    external_id: "x1".into(),
                    title: "Call".into(),
                    body: None,
                    due_at: at,
                    assigned_to: Some("u1".into()),
                },
            ),
            SyncCommand::new("e1", "done", at, CommandBody::CompleteTask { identity: id, external_id: "x1".into() }),
            SyncCommand::new("e2", "video", at, CommandBody::VideoChanged { video_id: "abc".into() }),
        ]
    }

    #[test]
    fn every_command_round_trips() {
        for c in sample() {
            let wire = c.encode();
            assert!(wire.contains("\"v\":1"), "{wire}");
            assert_eq!(SyncCommand::decode(&wire).unwrap(), c);
        }
    }

    #[test]
    fn unknown_versions_and_bad_payloads_are_typed_errors() {
        let wire = sample()[2].encode();
        assert_eq!(
            SyncCommand::decode(&wire.replace("\"v\":1", "\"v\":2")),
            Err(DecodeError::UnknownVersion("2".into()))
        );
        assert_eq!(SyncCommand::decode(&wire.replace("\"v\":1,", "")), Err(DecodeError::MissingVersion));
        assert!(matches!(SyncCommand::decode("[1]"), Err(DecodeError::NotAnObject)));
        assert!(matches!(SyncCommand::decode("{"), Err(DecodeError::NotJson(_))));
        assert!(matches!(
            SyncCommand::decode(&wire.replace("a@example.com", "not-an-email")),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn keys_are_stable_and_distinct_per_action() {
        assert_eq!(IdempotencyKey::derive("e", "a"), IdempotencyKey::derive("e", "a"));
        assert_ne!(IdempotencyKey::derive("e", "a"), IdempotencyKey::derive("e", "b"));
        assert_ne!(IdempotencyKey::derive("ea", ""), IdempotencyKey::derive("e", "a"));
        assert_eq!(IdempotencyKey::derive("e", "a").as_str().len(), 64);
    }

    #[test]
    fn hash_ignores_insertion_order() {
        let mut a = DesiredContact::new(email("x@example.com"));
        let mut b = a.clone();
        a.tags.insert("one".into());
        a.tags.insert("two".into());
        b.tags.insert("two".into());
        b.tags.insert("one".into());
        assert_eq!(a.state_hash(), b.state_hash());
        b.first_name = Some("X".into());
        assert_ne!(a.state_hash(), b.state_hash());
    }

    proptest! {
           #[test]
           fn decode_never_panics(s in ".*") {
               let _ = SyncCommand::decode(&s);
           }

           #[test]
    fn decode_never_panics_on_near_misses(i in 0usize..7, cut in 0usize..400, junk in "[ -~]{0,8}") {
               let wire = sample()[i].encode();
               let cut = cut.min(wire.len());
               let mangled = format!("{}{}{}", &wire[..cut], junk, &wire[cut..]);
               let _ = SyncCommand::decode(&mangled);
           }

           #[test]
           fn encode_decode_round_trips(
               event in "[a-zA-Z0-9_-]{1,40}",
               local in "[a-z][a-z0-9]{0,10}(\\.[a-z0-9]{1,5})?",
               note in "\\PC{0,200}",
               tags in proptest::collection::vec("[a-z0-9:-]{1,20}", 0..5),
               secs in 0i64..4_000_000_000,
           ) {
               let at = DateTime::from_timestamp(secs, 0).unwrap();
               let identity = Identity { email: Email::parse(&format!("{local}@example.com")).unwrap(), phone: None };
               for body in [
                   CommandBody::AddNote { identity: identity.clone(), body: note.clone() },
                   CommandBody::AddTags { identity: identity.clone(), tags: tags.clone() },
                   CommandBody::CompleteTask { identity: identity.clone(), external_id: event.clone() },
               ] {
                   let c = SyncCommand::new(&event, body.action_name(), at, body);
                   prop_assert_eq!(SyncCommand::decode(&c.encode()).unwrap(), c);
               }
           }
       }
}
