//! Event bodies into sync commands, or the reason they cannot be: signed events (`POST
//! /v1/events`) and SproutVideo's video webhook.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use shared::commands::{CommandBody, Source, SyncCommand};
use shared::mapping::{ContactInput, Mapping, MappingError, Origin, WatchFacts};

/// Largest accepted body.
pub const MAX_BODY: usize = 256 * 1024;

/// Why a request body was refused.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputError {
    #[serde(skip)]
    pub status: u16,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl InputError {
    fn bad_json(msg: impl Into<String>) -> Self {
        Self { status: 400, error: msg.into(), field: None }
    }
    fn field(field: &str, msg: impl Into<String>) -> Self {
        Self { status: 422, error: msg.into(), field: Some(field.to_string()) }
    }
}

/// Event types the intake accepts.
pub const EVENT_TYPES: &[&str] = &[
    "lead.captured",
    "login.created",
    "login.updated",
    "video.watched",
    "note.create",
    "task.create",
    "task.complete",
    "tags.add",
];

const TOP_FIELDS: &[&str] = &["id", "type", "occurred_at", "contact", "video", "watch", "note", "task", "tags"];

struct Fields<'a> {
    obj: &'a Map<String, Value>,
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    fn name(&self, k: &str) -> String {
        if self.prefix.is_empty() { k.to_string() } else { format!("{}.{k}", self.prefix) }
    }
    fn opt_str(&self, k: &str, max: usize) -> Result<Option<String>, InputError> {
        match self.obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.chars().count() > max => {
                Err(InputError::field(&self.name(k), format!("must be at most {max} characters")))
            }
            Some(Value::String(s)) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
            Some(_) => Err(InputError::field(&self.name(k), "must be a string")),
        }
    }
    fn str(&self, k: &str, max: usize) -> Result<String, InputError> {
        self.opt_str(k, max)?.ok_or_else(|| InputError::field(&self.name(k), "is required"))
    }
    fn opt_num(&self, k: &str) -> Result<Option<f64>, InputError> {
        match self.obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .map(Some)
                .ok_or_else(|| InputError::field(&self.name(k), "must be a non-negative number")),
            Some(_) => Err(InputError::field(&self.name(k), "must be a number")),
        }
    }
    fn string_list(&self, k: &str) -> Result<Vec<String>, InputError> {
        match self.obj.get(k) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(a)) if a.len() <= 100 => a
                .iter()
                .map(|v| match v {
                    Value::String(s) if !s.trim().is_empty() && s.len() <= 100 => Ok(s.trim().to_string()),
                    _ => Err(InputError::field(&self.name(k), "must be a list of non-empty strings")),
                })
                .collect(),
            Some(_) => Err(InputError::field(&self.name(k), "must be a list of at most 100 strings")),
        }
    }
    fn only(&self, allowed: &[&str]) -> Result<(), InputError> {
        match self.obj.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(InputError::field(&self.name(k), "is not a known field")),
            None => Ok(()),
        }
    }
    fn object(&self, k: &str) -> Result<Option<&'a Map<String, Value>>, InputError> {
        match self.obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(_) => Err(InputError::field(&self.name(k), "must be an object")),
        }
    }
}

/// A validated event: its id (for logs and the 202), and the commands it becomes.
#[derive(Debug, Clone)]
pub struct AcceptedEvent {
    pub id: String,
    pub kind: String,
    pub commands: Vec<SyncCommand>,
}

/// Parses and validates an event body and maps it to commands.
pub fn event_commands(mapping: &Mapping, body: &[u8]) -> Result<AcceptedEvent, InputError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| InputError::bad_json(format!("body is not valid JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| InputError::bad_json("body must be a JSON object"))?;
    let top = Fields { obj, prefix: "" };
    top.only(TOP_FIELDS)?;
    let id = top.str("id", 200)?;
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
        return Err(InputError::field("id", "may contain only letters, digits and - _ . :"));
    }
    let kind = top.str("type", 50)?;
    if !EVENT_TYPES.contains(&kind.as_str()) {
        return Err(InputError::field("type", format!("must be one of {}", EVENT_TYPES.join(", "))));
    }
    let occurred_raw = top.str("occurred_at", 64)?;
    let occurred_at: DateTime<Utc> = DateTime::parse_from_rfc3339(&occurred_raw)
        .map_err(|_| InputError::field("occurred_at", "must be an RFC 3339 timestamp"))?
        .to_utc();
    let contact_obj = top.object("contact")?.ok_or_else(|| InputError::field("contact", "is required"))?;
    let c = Fields { obj: contact_obj, prefix: "contact" };
    c.only(&["email", "first_name", "last_name", "name", "phone", "company", "tags", "custom_fields"])?;
    let custom_fields = match c.object("custom_fields")? {
        None => Default::default(),
        Some(m) => {
            let mut out = std::collections::BTreeMap::new();
            for (k, v) in m {
                if !k.starts_with("contact.") || k.len() > 100 {
                    return Err(InputError::field(
                        &format!("contact.custom_fields.{k}"),
                        "keys must look like contact.<field_key>",
                    ));
                }
                if !(v.is_string() || v.is_number() || v.is_boolean() || v.is_array()) {
                    return Err(InputError::field(
                        &format!("contact.custom_fields.{k}"),
                        "must be a string, number, boolean or list",
                    ));
                }
                out.insert(k.clone(), v.clone());
            }
            out
        }
    };
    let input = ContactInput {
        email: c.str("email", 254)?,
        first_name: c.opt_str("first_name", 100)?,
        last_name: c.opt_str("last_name", 100)?,
        name: c.opt_str("name", 200)?,
        phone: c.opt_str("phone", 40)?,
        company: c.opt_str("company", 200)?,
        tags: c.string_list("tags")?,
        custom_fields,
    };
    let origin = match kind.as_str() {
        "login.created" | "login.updated" => Origin::Login,
        "lead.captured" | "video.watched" => Origin::Lead,
        _ => Origin::Event,
    };
    let desired = mapping.desired(&input, origin).map_err(|e| match e {
        MappingError::Identity(_) | MappingError::SharedIdentifier(_) => {
            InputError::field("contact.email", e.to_string())
        }
        other => InputError::field("contact", other.to_string()),
    })?;
    let identity = desired.identity();
    let upsert = |desired| {
        SyncCommand::new(
            Source::Event(id.clone()),
            "upsert_contact",
            occurred_at,
            CommandBody::UpsertContact { contact: desired },
        )
    };
    let commands = match kind.as_str() {
        "lead.captured" | "login.created" | "login.updated" => vec![upsert(desired)],
        "video.watched" => {
            let video =
                top.object("video")?.ok_or_else(|| InputError::field("video", "is required for video.watched"))?;
            let vf = Fields { obj: video, prefix: "video" };
            vf.only(&["id", "title", "duration", "tags"])?;
            let video_id = vf.str("id", 100)?;
            let title = vf.opt_str("title", 300)?.unwrap_or_else(|| video_id.clone());
            let duration = vf.opt_num("duration")?;
            let video_tags = vf.string_list("tags")?;
            let watch =
                top.object("watch")?.ok_or_else(|| InputError::field("watch", "is required for video.watched"))?;
            let wf = Fields { obj: watch, prefix: "watch" };
            wf.only(&["percent", "seconds"])?;
            let percent = match (wf.opt_num("percent")?, wf.opt_num("seconds")?) {
                (Some(p), _) if p <= 100.0 => p,
                (Some(_), _) => {
                    return Err(InputError::field("watch.percent", "must be between 0 and 100"));
                }
                (None, Some(s)) => match duration.filter(|d| *d > 0.0) {
                    Some(d) => (s / d * 100.0).min(100.0),
                    None => {
                        return Err(InputError::field(
                            "video.duration",
                            "is required when only watch.seconds is given",
                        ));
                    }
                },
                (None, None) => {
                    return Err(InputError::field("watch.percent", "watch.percent or watch.seconds is required"));
                }
            };
            let w = WatchFacts { video_id, video_title: title, video_tags, percent, at: occurred_at };
            shared::facts::watch_commands(mapping, desired, &w, &Source::Event(id.clone()), occurred_at)
        }
        "note.create" => {
            let note = top.object("note")?.ok_or_else(|| InputError::field("note", "is required for note.create"))?;
            let nf = Fields { obj: note, prefix: "note" };
            nf.only(&["body"])?;
            let body = nf.str("body", 10_000)?;
            vec![
                upsert(desired),
                SyncCommand::new(
                    Source::Event(id.clone()),
                    "add_note",
                    occurred_at,
                    CommandBody::AddNote { identity, body },
                ),
            ]
        }
        "task.create" => {
            let task = top.object("task")?.ok_or_else(|| InputError::field("task", "is required for task.create"))?;
            let tf = Fields { obj: task, prefix: "task" };
            tf.only(&["external_id", "title", "body", "due_at", "assigned_to"])?;
            let external_id = tf.str("external_id", 200)?;
            let title = tf.str("title", 300)?;
            let body = tf.opt_str("body", 10_000)?;
            let due_at = DateTime::parse_from_rfc3339(&tf.str("due_at", 64)?)
                .map_err(|_| InputError::field("task.due_at", "must be an RFC 3339 timestamp"))?
                .to_utc();
            let assigned_to = tf.opt_str("assigned_to", 100)?;
            vec![
                upsert(desired),
                SyncCommand::new(
                    Source::Event(id.clone()),
                    "create_task",
                    occurred_at,
                    CommandBody::CreateTask { identity, external_id, title, body, due_at, assigned_to },
                ),
            ]
        }
        "task.complete" => {
            let task = top.object("task")?.ok_or_else(|| InputError::field("task", "is required for task.complete"))?;
            let tf = Fields { obj: task, prefix: "task" };
            tf.only(&["external_id"])?;
            let external_id = tf.str("external_id", 200)?;
            vec![SyncCommand::new(
                Source::Event(id.clone()),
                "complete_task",
                occurred_at,
                CommandBody::CompleteTask { identity, external_id },
            )]
        }
        "tags.add" => {
            let tags = top.string_list("tags")?;
            if tags.is_empty() {
                return Err(InputError::field("tags", "is required for tags.add"));
            }
            vec![SyncCommand::new(
                Source::Event(id.clone()),
                "add_tags",
                occurred_at,
                CommandBody::AddTags { identity, tags },
            )]
        }
        _ => unreachable!("checked against EVENT_TYPES"),
    };
    Ok(AcceptedEvent { id, kind, commands })
}

/// SproutVideo's webhook (a bare video object): a "video changed" command with only its id.
pub fn webhook_commands(body: &[u8]) -> Result<AcceptedEvent, InputError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| InputError::bad_json(format!("body is not valid JSON: {e}")))?;
    let id = match v.get("id") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 100 => s.trim().to_string(),
        _ => return Err(InputError::field("id", "the video JSON must carry its id")),
    };
    let version = v.get("updated_at").and_then(Value::as_str).unwrap_or("");
    let event_id = format!("sv-video:{id}:{version}");
    let cmd = SyncCommand::new(
        Source::SproutVideo(event_id.clone()),
        "video_changed",
        Utc::now(),
        CommandBody::VideoChanged { video_id: id },
    );
    Ok(AcceptedEvent { id: event_id, kind: "video.processed".into(), commands: vec![cmd] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shared::queue::MessageGroupId;

    fn ev(v: Value) -> Result<AcceptedEvent, InputError> {
        event_commands(&Mapping::default_mapping(), v.to_string().as_bytes())
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
            let ada = shared::identity::Email::parse("ada@example.com").unwrap();
            assert!(a.commands.iter().all(|c| c.message_group() == MessageGroupId::for_person(&ada)));
        }
    }

    #[test]
    fn bad_events_name_the_field() {
        let cases: Vec<(Value, u16, Option<&str>)> = vec![
            (json!([1]), 400, None),
            (json!({"type": "lead.captured"}), 422, Some("id")),
            (
                {
                    let mut v = base("lead.captured");
                    v["type"] = json!("nope");
                    v
                },
                422,
                Some("type"),
            ),
            (
                {
                    let mut v = base("lead.captured");
                    v["occurred_at"] = json!("yesterday");
                    v
                },
                422,
                Some("occurred_at"),
            ),
            (
                {
                    let mut v = base("lead.captured");
                    v["contact"]["email"] = json!("not-an-email");
                    v
                },
                422,
                Some("contact.email"),
            ),
            (
                {
                    let mut v = base("lead.captured");
                    v["contact"]["email"] = json!("info@example.com");
                    v
                },
                422,
                Some("contact.email"),
            ),
            (
                {
                    let mut v = base("lead.captured");
                    v["contact"]["shoe_size"] = json!(9);
                    v
                },
                422,
                Some("contact.shoe_size"),
            ),
            (
                {
                    let mut v = base("lead.captured");
                    v["surprise"] = json!(1);
                    v
                },
                422,
                Some("surprise"),
            ),
            (base("video.watched"), 422, Some("video")),
            (
                {
                    let mut v = base("video.watched");
                    v["video"] = json!({"id": "v"});
                    v["watch"] = json!({"seconds": 3});
                    v
                },
                422,
                Some("video.duration"),
            ),
            (
                {
                    let mut v = base("video.watched");
                    v["video"] = json!({"id": "v"});
                    v["watch"] = json!({"percent": 130});
                    v
                },
                422,
                Some("watch.percent"),
            ),
            (
                {
                    let mut v = base("task.create");
                    v["task"] = json!({"external_id": "x", "title": "t", "due_at": "no"});
                    v
                },
                422,
                Some("task.due_at"),
            ),
            (base("tags.add"), 422, Some("tags")),
            (
                {
                    let mut v = base("lead.captured");
                    v["contact"]["custom_fields"] = json!({"x": 1});
                    v
                },
                422,
                Some("contact.custom_fields.x"),
            ),
        ];
        for (v, status, field) in cases {
            let e = ev(v.clone()).unwrap_err();
            assert_eq!((e.status, e.field.as_deref()), (status, field), "{v}: {e:?}");
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn near_event() -> impl Strategy<Value = Vec<u8>> {
            let kinds = proptest::sample::select(EVENT_TYPES.to_vec());
            (kinds, "[ -~]{0,40}", any::<u16>(), proptest::collection::vec(any::<u8>(), 0..16)).prop_map(
                |(kind, email, n, junk)| {
                    let mut v = base(kind);
                    v["contact"]["email"] = json!(email);
                    v["video"] = json!({"id": format!("v{n}"), "duration": n});
                    v["watch"] = json!({"seconds": n, "percent": n % 150});
                    v["note"] = json!({"body": email});
                    v["task"] = json!({"external_id": email, "title": "t", "due_at": "2026-12-01T00:00:00Z"});
                    v["tags"] = json!([email]);
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
                    prop_assert!(e.status == 400 || e.status == 422);
                }
                let _ = webhook_commands(&body);
            }

            #[test]
            fn near_valid_events_map_or_name_a_field(body in near_event()) {
                match event_commands(&Mapping::default_mapping(), &body) {
                    Ok(a) => prop_assert!(!a.commands.is_empty()),
                    Err(e) => prop_assert!(e.status == 400 || e.field.is_some(), "{:?}", e),
                }
            }
        }
    }

    #[test]
    fn webhooks_need_a_video_id() {
        let a = webhook_commands(br#"{"id":"abc123","state":"deployed","updated_at":"2026-11-29T10:00:00Z"}"#).unwrap();
        assert_eq!(a.commands[0].message_group(), MessageGroupId::for_video("abc123"));
        assert_eq!(webhook_commands(b"{}").unwrap_err().status, 422);
        assert_eq!(webhook_commands(b"nope").unwrap_err().status, 400);
    }
}
