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
use crate::queue::{DedupId, MessageGroupId};
use crate::tenants::TenantId;

/// The schema version this build writes and reads.
pub const COMMAND_VERSION: u64 = 1;

/// Where a command comes from: the namespace its source id lives in, and the id. Two sources
/// with the same id in different namespaces (a sender's `evt-1` and a SproutVideo session
/// `evt-1`) are different sources.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A signed event (`POST /v1/events`): the sender's event id.
    Event(String),
    /// A SproutVideo webhook delivery: the video and its version.
    SproutVideo(String),
    /// An engagement session pulled from SproutVideo.
    Session(String),
    /// A rule's actions for one video (and the command's person): a rule acts once per person
    /// and video, whichever path (event, webhook, reconciliation) sees the watch first.
    Rule { rule: String, video_id: String },
    /// A reconciliation run.
    Reconcile(String),
    /// A HighLevel webhook delivery: its `webhookId`, or for an unsigned workflow delivery the
    /// contact, a digest of the body and a time bucket.
    Ghl(String),
}

impl Source {
    /// The namespace that goes into the idempotency key.
    pub fn namespace(&self) -> &'static str {
        match self {
            Self::Event(_) => "event",
            Self::SproutVideo(_) => "sproutvideo",
            Self::Session(_) => "session",
            Self::Rule { .. } => "rule",
            Self::Reconcile(_) => "reconcile",
            Self::Ghl(_) => "ghl",
        }
    }

    /// How the source is named in logs and on the wire (`source_event`): a signed event by the
    /// id its sender gave it, any other as `namespace:id`. Never holds a person's address.
    pub fn label(&self) -> String {
        match self {
            Self::Event(id) => id.clone(),
            Self::SproutVideo(id) | Self::Session(id) | Self::Reconcile(id) | Self::Ghl(id) => {
                format!("{}:{id}", self.namespace())
            }
            Self::Rule { rule, video_id } => format!("rule:{rule}:{video_id}"),
        }
    }
}

/// A bare id is a signed event's id, as its sender gave it.
impl From<&str> for Source {
    fn from(id: &str) -> Self {
        Self::Event(id.to_string())
    }
}

/// A stable idempotency key: SHA-256, in hex, of the source's namespace and id, the person and
/// the action. Used as the SQS deduplication id and as the ledger key, so a redelivered or
/// re-sent command is applied once, and two senders (or two people) never share a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of `action` on `person` (none for a video) from `source`.
    ///
    /// Each part is length-prefixed, so no two different inputs share a key. A rule's key keeps
    /// the form it has always had (`rule:<rule>:<email>:<video>`, a zero byte, the action), so
    /// ledger entries written before still count as done.
    pub fn derive(source: &Source, person: Option<&Email>, action: &str) -> Self {
        let email = person.map(Email::as_str).unwrap_or("");
        let mut h = Sha256::new();
        match source {
            Source::Rule { rule, video_id } => {
                h.update(format!("rule:{rule}:{email}:{video_id}").as_bytes());
                h.update([0u8]);
                h.update(action.as_bytes());
            }
            Source::Event(id)
            | Source::SproutVideo(id)
            | Source::Session(id)
            | Source::Reconcile(id)
            | Source::Ghl(id) => {
                for part in [source.namespace(), id.as_str(), email, action] {
                    h.update((part.len() as u64).to_be_bytes());
                    h.update(part.as_bytes());
                }
            }
        }
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

impl TryFrom<String> for IdempotencyKey {
    type Error = String;

    /// A key read back from the wire: 64 lower-case hex digits, as [`IdempotencyKey::derive`]
    /// makes them.
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(Self(s))
        } else {
            Err("an idempotency key is 64 lower-case hex digits".into())
        }
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
    /// A HighLevel contact changed (a webhook said so): re-read it and bring the person's
    /// SproutVideo access in line with the mapping's access rules and the contact's tags now.
    ContactChanged { location_id: String, contact_id: String },
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
            Self::ContactChanged { .. } => "contact_changed",
        }
    }

    /// The person the command is about (none for a video change, nor for a contact change,
    /// which names the contact by its GHL id).
    pub fn email(&self) -> Option<&Email> {
        match self {
            Self::UpsertContact { contact } | Self::RepairContact { contact } => Some(&contact.email),
            Self::AddTags { identity, .. }
            | Self::AddNote { identity, .. }
            | Self::CreateTask { identity, .. }
            | Self::CompleteTask { identity, .. } => Some(&identity.email),
            Self::VideoChanged { .. } | Self::ContactChanged { .. } => None,
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
    /// Whose command this is ([`TenantId::default_tenant`], the deployment's own, unless a
    /// tenant's intake or reconciler queued it).
    #[serde(default, skip_serializing_if = "TenantId::is_default")]
    pub tenant: TenantId,
    /// How many times it was sent again after being held for a paused tenant (each time with a
    /// new deduplication id).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resent: u32,
    #[serde(flatten)]
    pub body: CommandBody,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl SyncCommand {
    /// A command from `source` whose key derives from the source, the person the body is about
    /// and `action` (which must be unique among the commands one source produces for one person,
    /// e.g. `add_note`).
    pub fn new(source: impl Into<Source>, action: &str, occurred_at: DateTime<Utc>, body: CommandBody) -> Self {
        let source = source.into();
        Self {
            key: IdempotencyKey::derive(&source, body.email(), action),
            source_event: source.label(),
            occurred_at,
            tenant: TenantId::default_tenant(),
            resent: 0,
            body,
        }
    }

    /// The FIFO message group: one person's commands apply in order, one at a time (and one
    /// video's refreshes, and one GHL contact's changes). Derived from a hash, so it is valid
    /// for SQS whatever the address.
    /// A tenant's groups are its own (`<tenant>/` before the group): one tenant's commands never
    /// wait behind another's, and deduplication (per group) never spans two tenants.
    pub fn message_group(&self) -> MessageGroupId {
        let group = self.own_group();
        if self.tenant.is_default() {
            group
        } else {
            MessageGroupId::new(format!("{}/{group}", self.tenant)).expect("a tenant id and a group make a valid id")
        }
    }

    fn own_group(&self) -> MessageGroupId {
        match &self.body {
            CommandBody::VideoChanged { video_id } => MessageGroupId::for_video(video_id),
            CommandBody::ContactChanged { location_id, contact_id } => {
                MessageGroupId::for_contact(location_id, contact_id)
            }
            CommandBody::UpsertContact { contact } | CommandBody::RepairContact { contact } => {
                MessageGroupId::for_person(&contact.email)
            }
            CommandBody::AddTags { identity, .. }
            | CommandBody::AddNote { identity, .. }
            | CommandBody::CreateTask { identity, .. }
            | CommandBody::CompleteTask { identity, .. } => MessageGroupId::for_person(&identity.email),
        }
    }

    /// [`Self::message_group`] as text (as a received message reports its group).
    pub fn group_id(&self) -> String {
        self.message_group().as_str().to_string()
    }

    /// The SQS deduplication id: the idempotency key (and, for a command sent again after it was
    /// held, how many times).
    pub fn dedup_id(&self) -> DedupId {
        if self.resent == 0 {
            DedupId::new(self.key.as_str()).expect("a key is 64 hex digits")
        } else {
            DedupId::digest(&format!("{}/resent/{}", self.key.as_str(), self.resent))
        }
    }

    pub fn encode(&self) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            v: u64,
            #[serde(flatten)]
            cmd: &'a SyncCommand,
        }
        let json = serde_json::to_string(&Wire { v: COMMAND_VERSION, cmd: self }).expect("commands serialise");
        // SQS refuses U+FFFE and U+FFFF in a body; JSON writes them raw (only inside strings),
        // so they travel escaped. serde_json already escapes the control characters SQS refuses.
        if json.contains(['\u{FFFE}', '\u{FFFF}']) {
            json.replace('\u{FFFE}', "\\ufffe").replace('\u{FFFF}', "\\uffff")
        } else {
            json
        }
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
            SyncCommand::new(
                Source::Ghl("wh-1".into()),
                "contact_changed",
                at,
                CommandBody::ContactChanged { location_id: "loc1".into(), contact_id: "c1".into() },
            ),
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
        let ada = email("ada@example.com");
        let key = |source: &Source, action: &str| IdempotencyKey::derive(source, Some(&ada), action);
        let e = Source::Event("e".into());
        assert_eq!(key(&e, "a"), key(&e, "a"));
        assert_ne!(key(&e, "a"), key(&e, "b"));
        assert_ne!(key(&Source::Event("ea".into()), ""), key(&e, "a"));
        assert_eq!(key(&e, "a").as_str().len(), 64);
    }

    #[test]
    fn two_senders_using_one_event_id_for_different_people_get_different_keys() {
        let at = Utc::now();
        let note =
            |e: &str| CommandBody::AddNote { identity: Identity { email: email(e), phone: None }, body: "x".into() };
        let ada = SyncCommand::new(Source::Event("evt-1".into()), "add_note", at, note("ada@example.com"));
        let bob = SyncCommand::new(Source::Event("evt-1".into()), "add_note", at, note("bob@example.com"));
        assert_ne!(ada.key, bob.key);
        assert_ne!(ada.dedup_id(), bob.dedup_id());
        // The same id in another namespace is another source.
        let session = SyncCommand::new(Source::Session("evt-1".into()), "add_note", at, note("ada@example.com"));
        assert_ne!(ada.key, session.key);
        // A sender's retry is the same command.
        assert_eq!(ada.key, SyncCommand::new("evt-1", "add_note", at, note("ada@example.com")).key);
        assert_eq!(ada.source_event, "evt-1");
    }

    #[test]
    fn rule_keys_keep_their_established_form() {
        let ada = email("ada@example.com");
        let rule = Source::Rule { rule: "watched-75".into(), video_id: "v1".into() };
        let want = hex::encode(Sha256::digest(b"rule:watched-75:ada@example.com:v1\0add_note"));
        assert_eq!(IdempotencyKey::derive(&rule, Some(&ada), "add_note").as_str(), want);
        assert_eq!(rule.label(), "rule:watched-75:v1", "no address in logs");
    }

    #[test]
    fn every_command_has_a_valid_group_and_dedup_id_whatever_the_address() {
        let long = format!("{}@{}.example.com", "l".repeat(64), "d".repeat(150));
        let at = Utc::now();
        for raw in ["josé@example.com", "ada@bücher.example", long.as_str()] {
            let c = SyncCommand::new(
                "e",
                "upsert_contact",
                at,
                CommandBody::UpsertContact { contact: DesiredContact::new(email(raw)) },
            );
            assert!(MessageGroupId::new(c.group_id()).is_ok(), "{raw}");
            assert!(DedupId::new(c.key.as_str()).is_ok());
            let again = SyncCommand::new(
                "other",
                "add_tags",
                at,
                CommandBody::AddTags {
                    identity: Identity { email: email(&raw.to_uppercase()), phone: None },
                    tags: vec![],
                },
            );
            assert_eq!(c.message_group(), again.message_group(), "one person, one group");
        }
        let v =
            SyncCommand::new("hook", "video_changed", at, CommandBody::VideoChanged { video_id: "vidéo ".repeat(40) });
        assert!(MessageGroupId::new(v.group_id()).is_ok());
    }

    #[test]
    fn bodies_with_characters_sqs_refuses_travel_escaped() {
        let at = Utc::now();
        let body = "a\u{FFFF}b\u{FFFE}c\u{1}d\u{0}".to_string();
        let c = SyncCommand::new(
            "e",
            "add_note",
            at,
            CommandBody::AddNote { identity: Identity { email: email("a@example.com"), phone: None }, body },
        );
        let wire = c.encode();
        assert_eq!(crate::queue::check_body(&wire), Ok(()));
        assert_eq!(SyncCommand::decode(&wire).unwrap(), c);
    }

    #[test]
    fn a_contact_change_is_grouped_by_contact_and_keyed_by_its_delivery() {
        let at = Utc::now();
        let change = |source: &str, contact: &str| {
            SyncCommand::new(
                Source::Ghl(source.into()),
                "contact_changed",
                at,
                CommandBody::ContactChanged { location_id: "loc1".into(), contact_id: contact.into() },
            )
        };
        assert_eq!(change("wh-1", "c1").message_group(), change("wh-2", "c1").message_group());
        assert_ne!(change("wh-1", "c1").message_group(), change("wh-1", "c2").message_group());
        assert_eq!(change("wh-1", "c1").key, change("wh-1", "c1").key, "a redelivery is the same command");
        assert_ne!(change("wh-1", "c1").key, change("wh-2", "c1").key);
        assert_ne!(
            change("wh-1", "c1").key,
            SyncCommand::new("wh-1", "contact_changed", at, change("x", "c1").body).key
        );
        assert_eq!(change("wh-1", "c1").source_event, "ghl:wh-1");
        assert!(change("wh-1", "c1").group_id().starts_with("c-"));
    }

    #[test]
    fn keys_read_from_the_wire_are_checked() {
        let wire = sample()[0].encode();
        let key = sample()[0].key.as_str().to_string();
        assert!(matches!(SyncCommand::decode(&wire.replace(&key, "not a key")), Err(DecodeError::Invalid(_))));
        assert!(matches!(SyncCommand::decode(&wire.replace(&key, &key.to_uppercase())), Err(DecodeError::Invalid(_))));
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
    fn decode_never_panics_on_near_misses(i in 0usize..8, cut in 0usize..400, junk in "[ -~]{0,8}") {
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
                   let c = SyncCommand::new(event.as_str(), body.action_name(), at, body);
                   prop_assert_eq!(SyncCommand::decode(&c.encode()).unwrap(), c);
               }
           }
       }
}
