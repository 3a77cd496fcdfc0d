//! The documented events hold: every example event in the README, the docs and the published
//! schema is valid under `docs/events.schema.json` and accepted by the intake, and the schema
//! refuses what the intake refuses.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use shared::mapping::Mapping;

const SCHEMA_URL: &str = "https://github.com/sv-ghl-sync/schemas/events.schema.json";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The committed schema, compiled with format assertions (date-time, email) on.
struct Validator {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl Validator {
    fn committed() -> Self {
        let raw = std::fs::read_to_string(repo().join("docs/events.schema.json")).unwrap();
        let schema: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(schema["$id"], SCHEMA_URL);
        let mut compiler = boon::Compiler::new();
        compiler.enable_format_assertions();
        compiler.add_resource(SCHEMA_URL, schema).unwrap();
        let mut schemas = boon::Schemas::new();
        let index = compiler.compile(SCHEMA_URL, &mut schemas).unwrap();
        Validator { schemas, index }
    }

    fn check(&self, event: &Value) -> Result<(), String> {
        self.schemas.validate(event, self.index).map_err(|e| format!("{e:#}"))
    }
}

fn intake_accepts(event: &Value) -> Result<usize, String> {
    intake::events::event_commands(&Mapping::default_mapping(), event.to_string().as_bytes())
        .map(|a| a.commands.len())
        .map_err(|e| e.to_string())
}

/// Event bodies shown in a Markdown file: ```json blocks that are events, and shell
/// `BODY='…'` lines (with any `'$(…)'` substitution replaced by a fixed timestamp).
fn events_in_markdown(text: &str) -> Vec<Value> {
    let mut found = vec![];
    let mut block: Option<String> = None;
    for line in text.lines() {
        match (&mut block, line.trim_start()) {
            (None, l) if l.starts_with("```json") => block = Some(String::new()),
            (Some(b), l) if l.starts_with("```") => {
                if let Ok(v) = serde_json::from_str::<Value>(b)
                    && v.get("occurred_at").is_some()
                {
                    found.push(v);
                }
                block = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, l) => {
                if let Some(body) = l.strip_prefix("BODY='").and_then(|b| b.strip_suffix('\'')) {
                    let body = substitute(body, "2026-11-29T10:00:00Z");
                    found.push(serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}")));
                }
            }
        }
    }
    found
}

fn substitute(shell: &str, with: &str) -> String {
    let mut out = String::new();
    let mut rest = shell;
    while let Some(start) = rest.find("'$(") {
        let Some(len) = rest[start..].find(")'") else { break };
        out.push_str(&rest[..start]);
        out.push_str(with);
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

fn documented_events() -> Vec<(String, Value)> {
    let mut files = vec![repo().join("README.md")];
    if let Ok(dir) = std::fs::read_dir(repo().join("docs")) {
        files.extend(dir.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "md")));
    }
    let mut events = vec![];
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        events.extend(events_in_markdown(&text).into_iter().map(|e| (name.clone(), e)));
    }
    events
}

#[test]
fn every_documented_example_event_is_valid_and_accepted() {
    let validator = Validator::committed();
    let readme = documented_events();
    assert!(readme.len() >= 2, "the README shows a signed event and a curl example: {readme:?}");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("docs/events.schema.json")).unwrap()).unwrap();
    let in_schema = schema["examples"].as_array().unwrap().iter().map(|e| ("schema examples".to_string(), e.clone()));
    let mut types = std::collections::BTreeSet::new();
    for (source, event) in readme.into_iter().chain(in_schema) {
        validator.check(&event).unwrap_or_else(|e| panic!("{source}: {event}\nis not valid under the schema: {e}"));
        let commands = intake_accepts(&event).unwrap_or_else(|e| panic!("{source}: {event}\nis refused: {e}"));
        assert!(commands > 0, "{source}: {event}");
        types.insert(event["type"].as_str().unwrap().to_string());
    }
    let all: std::collections::BTreeSet<String> =
        intake::events::EventType::ALL.iter().map(|t| t.as_str().to_string()).collect();
    assert_eq!(types, all, "an example of every event type");
}

#[test]
fn the_schema_refuses_what_the_intake_refuses() {
    let validator = Validator::committed();
    let base = |kind: &str| {
        json!({"id": "evt-1", "type": kind, "occurred_at": "2026-11-29T10:00:00Z",
               "contact": {"email": "ada@example.com"}})
    };
    let with = |kind: &str, extra: Value| {
        let mut v = base(kind);
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    };
    let refused = vec![
        json!({"type": "lead.captured"}),
        base("lead.fumbled"),
        with("lead.captured", json!({"id": "evt 1"})),
        with("lead.captured", json!({"occurred_at": "yesterday"})),
        with("lead.captured", json!({"contact": {"email": "a@example.com", "shoe_size": 9}})),
        with("lead.captured", json!({"contact": {"email": "a@example.com", "custom_fields": {"plan": "gold"}}})),
        with("lead.captured", json!({"contact": {"email": "a@example.com", "tags": ["ok", " "]}})),
        with("lead.captured", json!({"note": {"body": "a section of another type"}})),
        with("lead.captured", json!({"surprise": 1})),
        base("video.watched"),
        with("video.watched", json!({"video": {"id": "v"}, "watch": {"seconds": 3}})),
        with("video.watched", json!({"video": {"id": "v", "duration": 0}, "watch": {"seconds": 3}})),
        with("video.watched", json!({"video": {"id": "v"}, "watch": {"percent": 130}})),
        with("video.watched", json!({"video": {"id": "v"}, "watch": {}})),
        with("note.create", json!({"note": {"body": " "}})),
        with("task.create", json!({"task": {"external_id": "x", "title": "t"}})),
        with("task.complete", json!({"task": {"external_id": "x", "title": "t"}})),
        base("tags.add"),
        with("tags.add", json!({"tags": []})),
    ];
    for event in refused {
        assert!(intake_accepts(&event).is_err(), "the intake accepts {event}");
        assert!(validator.check(&event).is_err(), "the schema accepts {event}, which the intake refuses");
    }
    // And the reverse for the looser corners: what the schema allows, the intake takes.
    let accepted = vec![
        with("video.watched", json!({"video": {"id": "v"}, "watch": {"percent": 30, "seconds": 3}})),
        with("video.watched", json!({"video": {"id": "v", "duration": 10}, "watch": {"percent": null, "seconds": 3}})),
        with("lead.captured", json!({"contact": {"email": "a@example.com", "first_name": null, "tags": null}})),
        with("tags.add", json!({"tags": ["vip", "course-a"]})),
    ];
    for event in accepted {
        validator.check(&event).unwrap_or_else(|e| panic!("{event}: {e}"));
        intake_accepts(&event).unwrap_or_else(|e| panic!("{event}: {e}"));
    }
}

#[test]
fn markdown_examples_are_found_in_blocks_and_in_shell_lines() {
    let md = "text\n```json\n{\"id\": \"a\", \"occurred_at\": \"x\"}\n```\n```json\n{\"secret\": 1}\n```\n\
              BODY='{\"id\":\"b\",\"occurred_at\":\"'$(date -u +%Y)'\"}'\n";
    let found = events_in_markdown(md);
    assert_eq!(
        found,
        vec![json!({"id": "a", "occurred_at": "x"}), json!({"id": "b", "occurred_at": "2026-11-29T10:00:00Z"})]
    );
}
