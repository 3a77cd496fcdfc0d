//! Checks JSON bodies against HighLevel's published OpenAPI documents (read at test time from
//! `../shared/reference/ghl-openapi/`).
//!
//! Request bodies are checked strictly (GHL rejects unknown properties, so any property not in
//! the DTO is an error); response bodies are checked for the types of the properties the spec
//! names (real responses carry more fields than the spec lists).

use std::path::PathBuf;

use serde_json::Value;

pub struct Spec {
    doc: Value,
}

/// Whether unknown properties are errors.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    Request,
    Response,
}

impl Spec {
    /// Loads `contacts.json` (or another document of the folder).
    pub fn load(name: &str) -> Self {
        let path = reference_dir().join("ghl-openapi").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        Self { doc: serde_json::from_str(&text).expect("spec is JSON") }
    }

    /// The named component schema.
    pub fn schema(&self, name: &str) -> &Value {
        let s = &self.doc["components"]["schemas"][name];
        assert!(!s.is_null(), "no schema {name} in the spec");
        s
    }

    /// The request schema name of an operation, and its response schema for `status`.
    pub fn operation(&self, method: &str, path: &str) -> &Value {
        let op = &self.doc["paths"][path][method.to_ascii_lowercase()];
        assert!(!op.is_null(), "no operation {method} {path} in the spec");
        op
    }

    pub fn request_schema(&self, method: &str, path: &str) -> Option<&Value> {
        let s = &self.operation(method, path)["requestBody"]["content"]["application/json"]["schema"];
        (!s.is_null()).then_some(s)
    }

    pub fn response_schema(&self, method: &str, path: &str, status: u16) -> Option<&Value> {
        let s = &self.operation(method, path)["responses"][status.to_string()]["content"]["application/json"]["schema"];
        (!s.is_null()).then_some(s)
    }

    /// Whether `status` is a documented response of the operation.
    pub fn documents_status(&self, method: &str, path: &str, status: u16) -> bool {
        !self.operation(method, path)["responses"][status.to_string()].is_null()
    }

    /// Validates `value` against `schema`; returns every problem found.
    pub fn validate(&self, schema: &Value, value: &Value, strict: Strictness) -> Vec<String> {
        let mut errs = Vec::new();
        self.check(schema, value, strict, "$", &mut errs);
        errs
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.rsplit('/').next().unwrap_or_default();
                self.resolve(self.schema(name))
            }
            None => schema,
        }
    }

    fn check(&self, schema: &Value, value: &Value, strict: Strictness, at: &str, errs: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if value.is_null() {
            if schema["nullable"] == Value::Bool(true) || strict == Strictness::Response {
                return;
            }
            errs.push(format!("{at}: null is not allowed"));
            return;
        }
        if let Some(any) = schema.get("anyOf").or_else(|| schema.get("oneOf")).and_then(Value::as_array) {
            let ok = any.iter().any(|s| {
                let mut e = Vec::new();
                self.check(s, value, strict, at, &mut e);
                e.is_empty()
            });
            if !ok {
                errs.push(format!("{at}: matches none of the alternatives"));
            }
            return;
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for s in all {
                self.check(s, value, strict, at, errs);
            }
            return;
        }
        let ty = schema.get("type").and_then(Value::as_str);
        let has_props = schema.get("properties").is_some();
        match ty {
            Some("string") if !value.is_string() => errs.push(format!("{at}: expected a string, got {value}")),
            Some("number") if !value.is_number() => errs.push(format!("{at}: expected a number, got {value}")),
            Some("integer") if !value.is_i64() && !value.is_u64() => errs.push(format!("{at}: expected an integer")),
            Some("boolean") if !value.is_boolean() => errs.push(format!("{at}: expected a boolean, got {value}")),
            Some("array") => match value.as_array() {
                None => errs.push(format!("{at}: expected an array")),
                Some(items) => {
                    if let Some(item_schema) = schema.get("items") {
                        for (i, item) in items.iter().enumerate() {
                            self.check(item_schema, item, strict, &format!("{at}[{i}]"), errs);
                        }
                    }
                }
            },
            Some("object") | None if has_props => match value.as_object() {
                None => errs.push(format!("{at}: expected an object")),
                Some(obj) => {
                    let props = schema["properties"].as_object().cloned().unwrap_or_default();
                    for req in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                        if let Some(r) = req.as_str()
                            && !obj.contains_key(r)
                        {
                            errs.push(format!("{at}: missing required property {r}"));
                        }
                    }
                    for (k, v) in obj {
                        match props.get(k) {
                            Some(ps) => self.check(ps, v, strict, &format!("{at}.{k}"), errs),
                            None if strict == Strictness::Request => {
                                errs.push(format!("{at}: property {k} should not exist"))
                            }
                            None => {}
                        }
                    }
                }
            },
            Some("object") if !value.is_object() => errs.push(format!("{at}: expected an object")),
            _ => {}
        }
        if let Some(en) = schema.get("enum").and_then(Value::as_array)
            && !en.contains(value)
        {
            errs.push(format!("{at}: {value} is not one of {en:?}"));
        }
    }
}

/// The reference folder: `SYNC_REFERENCE_DIR`, else `shared/reference` beside the project root
/// (`../shared/reference`) or beside any of its parents.
pub fn reference_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SYNC_REFERENCE_DIR") {
        return PathBuf::from(d);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.ancestors()
        .skip(1)
        .map(|a| a.join("shared/reference"))
        .find(|p| p.join("ghl-openapi/contacts.json").is_file())
        .unwrap_or_else(|| {
            panic!(
                "HighLevel's OpenAPI documents were not found in shared/reference/ghl-openapi beside {} or its parents; \
                 set SYNC_REFERENCE_DIR to the folder holding ghl-openapi/",
                root.display()
            )
        })
}

/// The spec path template an API path belongs to (for looking up its schemas).
pub fn template_for(method: &str, path: &str) -> Option<&'static str> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    Some(match (method, segs.as_slice()) {
        (_, ["contacts", ""]) | (_, ["contacts"]) => "/contacts/",
        (_, ["contacts", "upsert"]) => "/contacts/upsert",
        (_, ["contacts", "search"]) => "/contacts/search",
        (_, ["contacts", "search", "duplicate"]) => "/contacts/search/duplicate",
        (_, ["contacts", "business", _]) => "/contacts/business/{businessId}",
        (_, ["contacts", _]) => "/contacts/{contactId}",
        (_, ["contacts", _, "tags"]) => "/contacts/{contactId}/tags",
        (_, ["contacts", _, "tasks"]) => "/contacts/{contactId}/tasks",
        (_, ["contacts", _, "tasks", _]) => "/contacts/{contactId}/tasks/{taskId}",
        (_, ["contacts", _, "tasks", _, "completed"]) => "/contacts/{contactId}/tasks/{taskId}/completed",
        (_, ["contacts", _, "notes"]) => "/contacts/{contactId}/notes",
        (_, ["contacts", _, "notes", _]) => "/contacts/{contactId}/notes/{id}",
        (_, ["contacts", _, "appointments"]) => "/contacts/{contactId}/appointments",
        (_, ["locations", _, "customFields"]) => "/locations/{locationId}/customFields",
        _ => return None,
    })
}
