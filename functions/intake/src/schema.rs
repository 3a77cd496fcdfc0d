//! The published JSON Schema of signed events (`docs/events.schema.json`), generated from the
//! types the intake decodes them into, so the two cannot drift apart unnoticed.

use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::events::{Event, EventType, examples};

/// Where the schema is published.
pub const SCHEMA_ID: &str = "https://github.com/sv-ghl-sync/schemas/events.schema.json";

/// The JSON Schema (draft 2020-12) of a signed event, with one example of each type.
pub fn event_schema() -> Value {
    let schema = SchemaSettings::draft2020_12().into_generator().into_root_schema_for::<Event>();
    let mut schema = schema.to_value();
    if let Some(root) = schema.as_object_mut() {
        root.insert("$id".into(), json!(SCHEMA_ID));
        root.insert("title".into(), json!("Signed event for POST /v1/events"));
        root.insert(
            "description".into(),
            json!(
                "One shape per `type` (see oneOf). Sign the raw body: X-Signature-Timestamp = unix seconds, \
                 X-Signature = 'v1=' + hex(HMAC-SHA256(signing secret, '{timestamp}.{body}')). Several v1= values \
                 may be sent, comma separated."
            ),
        );
        // The list of types in one place, so that an unknown type fails here and not only as
        // "matches none of oneOf".
        let types: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        root.insert("type".into(), json!("object"));
        root.insert("required".into(), json!(["type"]));
        root.insert(
            "properties".into(),
            json!({ "type": { "description": "What happened; the other fields depend on it.", "enum": types } }),
        );
        root.insert("examples".into(), Value::Array(examples()));
    }
    schema
}

/// The schema as it is committed: pretty JSON with a final newline.
pub fn event_schema_json() -> String {
    let mut text = serde_json::to_string_pretty(&event_schema()).expect("a JSON value serializes");
    text.push('\n');
    text
}
