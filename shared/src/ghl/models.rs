//! Serde models for the HighLevel Contacts API v2 (`Version: 2021-07-28`).
//!
//! Read models tolerate missing fields and keep unknown ones in `extra`. Write bodies are one
//! struct per published DTO (`CreateContactDto`, `UpdateContactDto`, `UpsertContactDto`, ...):
//! the server rejects unknown properties, so a field that is not in a DTO cannot be sent by
//! mistake, and `None` fields are left out.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A contact as GHL returns it (`GetContectByIdSchema` plus fields real responses carry).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    pub id: String,
    #[serde(default)]
    pub location_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub first_name_lower_case: Option<String>,
    #[serde(default)]
    pub last_name_lower_case: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub company_name: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub assigned_to: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub custom_fields: Vec<CustomFieldValue>,
    #[serde(default)]
    pub date_added: Option<String>,
    #[serde(default)]
    pub date_updated: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A custom field as read back: by id only (GHL never returns the key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CustomFieldValue {
    pub id: String,
    #[serde(default)]
    pub value: Value,
}

/// A custom field as written: `{id, field_value}`, with the value typed by the field's data type.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CustomFieldInput {
    pub id: String,
    pub field_value: Value,
}

/// Fields every contact write DTO shares; `None` is left out of the body.
macro_rules! contact_write_dto {
    ($(#[$m:meta])* $name:ident { $($extra:tt)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            $($extra)*
            #[serde(skip_serializing_if = "Option::is_none")]
            pub first_name: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub last_name: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub name: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub email: Option<String>,
            /// E.164 (see [`crate::identity::Phone`]).
            #[serde(skip_serializing_if = "Option::is_none")]
            pub phone: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub address1: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub city: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub state: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub postal_code: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub website: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub timezone: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub country: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub source: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub assigned_to: Option<String>,
            /// Replaces every tag of the contact: send only when the whole list is ours.
            #[serde(skip_serializing_if = "Option::is_none")]
            pub tags: Option<Vec<String>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub custom_fields: Option<Vec<CustomFieldInput>>,
        }
    };
}

contact_write_dto!(
    /// Body of `POST /contacts/`.
    CreateContactDto {
        pub location_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub company_name: Option<String>,
    }
);

contact_write_dto!(
    /// Body of `PUT /contacts/{id}`: no `locationId`, no `companyName`.
    UpdateContactDto {}
);

contact_write_dto!(
    /// Body of `POST /contacts/upsert`.
    UpsertContactDto {
        pub location_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub company_name: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub create_new_if_duplicate_allowed: Option<bool>,
    }
);

#[derive(Debug, Clone, Deserialize)]
pub struct ContactEnvelope {
    pub contact: Contact,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MaybeContactEnvelope {
    #[serde(default)]
    pub contact: Option<Contact>,
}

/// Answer of `POST /contacts/upsert`.
#[derive(Debug, Clone, Deserialize)]
pub struct UpsertResponse {
    /// `true` when the upsert created the contact.
    #[serde(rename = "new", default)]
    pub created: bool,
    pub contact: Contact,
    #[serde(default, rename = "traceId")]
    pub trace_id: Option<String>,
}

/// Success flag; GHL spells it `succeded` (v3 adds `succeeded`).
#[derive(Debug, Clone, Deserialize)]
pub struct Succeeded {
    #[serde(default, alias = "succeeded")]
    pub succeded: bool,
}

/// A task (`TaskSchema`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub id: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub assigned_to: Option<String>,
    #[serde(default)]
    pub due_date: Option<String>,
    #[serde(default)]
    pub completed: bool,
    #[serde(default)]
    pub contact_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Body of `POST /contacts/{id}/tasks` (`CreateTaskParams`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTaskParams {
    pub title: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Whole seconds, `YYYY-MM-DDTHH:MM:SSZ` (see [`due_date`]).
    pub due_date: String,
    pub completed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_to: Option<String>,
}

/// Body of `PUT /contacts/{id}/tasks/{taskId}` (`UpdateTaskBody`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateTaskBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_to: Option<String>,
}

/// Formats a task due date the way GHL accepts it everywhere: UTC, whole seconds.
pub fn due_date(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[derive(Debug, Clone, Deserialize)]
pub struct TaskEnvelope {
    pub task: Task,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TasksEnvelope {
    #[serde(default)]
    pub tasks: Vec<Task>,
}

/// A note (`GetNoteSchema`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Note {
    pub id: String,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub date_added: Option<String>,
    #[serde(default)]
    pub contact_id: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Body of note create (`NotesDTO`) and update (`UpdateNoteDTO`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NoteBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NoteEnvelope {
    pub note: Note,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NotesEnvelope {
    #[serde(default)]
    pub notes: Vec<Note>,
}

/// An appointment of a contact (`GetEventSchema`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Appointment {
    pub id: String,
    #[serde(default)]
    pub calendar_id: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub appointment_status: Option<String>,
    #[serde(default)]
    pub start_time: Option<String>,
    #[serde(default)]
    pub end_time: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventsEnvelope {
    #[serde(default)]
    pub events: Vec<Appointment>,
}

/// Body of tag add/remove (`TagsDTO`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TagsDto {
    pub tags: Vec<String>,
}

/// Answer of tag add/remove: the contact's tags after the change.
#[derive(Debug, Clone, Deserialize)]
pub struct TagsResponse {
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A custom-field definition from `GET /locations/{id}/customFields`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CustomFieldDefinition {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub field_key: Option<String>,
    #[serde(default)]
    pub data_type: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomFieldsEnvelope {
    #[serde(default)]
    pub custom_fields: Vec<CustomFieldDefinition>,
}

/// One search filter: a condition, or a nested AND/OR group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SearchFilter {
    Condition {
        field: String,
        operator: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<Value>,
    },
    Group {
        group: String,
        filters: Vec<SearchFilter>,
    },
}

impl SearchFilter {
    pub fn eq(field: &str, value: impl Into<Value>) -> Self {
        Self::Condition { field: field.into(), operator: "eq".into(), value: Some(value.into()) }
    }
    pub fn contains(field: &str, value: impl Into<Value>) -> Self {
        Self::Condition { field: field.into(), operator: "contains".into(), value: Some(value.into()) }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SearchSort {
    pub field: String,
    pub direction: String,
}

/// Body of `POST /contacts/search`. `locationId` and `pageLimit` are always present;
/// `page` and `searchAfter` are never sent together.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SearchRequest {
    pub location_id: String,
    pub page_limit: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_after: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub filters: Vec<SearchFilter>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub sort: Vec<SearchSort>,
}

/// How a search pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchPaging {
    /// `page`/`pageLimit` (stops at 10,000 results).
    Pages,
    /// `searchAfter` cursors (no cap).
    SearchAfter,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchResponse {
    #[serde(default)]
    pub contacts: Vec<Contact>,
    #[serde(default)]
    pub total: Option<u64>,
}

/// Cursor meta of the deprecated `GET /contacts/`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    #[serde(default)]
    pub total: Option<u64>,
    #[serde(default)]
    pub start_after_id: Option<String>,
    #[serde(default)]
    pub start_after: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListResponse {
    #[serde(default)]
    pub contacts: Vec<Contact>,
    #[serde(default)]
    pub meta: Option<ListMeta>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BusinessContactsResponse {
    #[serde(default)]
    pub contacts: Vec<Contact>,
    #[serde(default)]
    pub count: Option<u64>,
}

/// Error body (NestJS style): `message` is a string, or an array on 422.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    #[serde(default)]
    pub status_code: Option<u16>,
    #[serde(default)]
    pub message: Option<OneOrMany>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub meta: Option<Value>,
    #[serde(default)]
    pub trace_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn due_dates_go_out_in_whole_seconds() {
        let at = chrono::Utc.timestamp_millis_opt(1_764_605_190_468).unwrap();
        assert_eq!(due_date(at), "2025-12-01T16:06:30Z");
    }

    #[test]
    fn update_dto_cannot_carry_location_or_company() {
        let v = serde_json::json!({"locationId": "x"});
        assert!(serde_json::from_value::<UpdateContactDto>(v).is_err());
        let body =
            serde_json::to_value(UpdateContactDto { first_name: Some("Ana".into()), ..Default::default() }).unwrap();
        assert_eq!(body, serde_json::json!({"firstName": "Ana"}));
    }

    #[test]
    fn succeeded_accepts_both_spellings_and_errors_take_both_shapes() {
        let a: Succeeded = serde_json::from_str(r#"{"succeded":true}"#).unwrap();
        let b: Succeeded = serde_json::from_str(r#"{"succeeded":true}"#).unwrap();
        assert!(a.succeded && b.succeded);
        let e: ErrorBody = serde_json::from_str(r#"{"statusCode":422,"message":["a","b"]}"#).unwrap();
        assert_eq!(e.message.unwrap().into_vec(), vec!["a", "b"]);
    }
}
