//! The admin paths: state, request log, faults, behaviour, search lag, custom fields,
//! appointments, reset.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::{Faults, GhlBehaviour, LocalGhl, Store, WebhookSettings, new_id, now_iso};

pub(super) fn add_custom_field(s: &mut Store, location: &str, name: &str, field_key: &str, data_type: &str) -> String {
    let id = new_id();
    s.locations.entry(location.to_string()).or_default().custom_fields.push(json!({
        "id": id, "name": name, "fieldKey": field_key, "dataType": data_type,
        "placeholder": "", "position": 0, "picklistOptions": [], "picklistImageOptions": [],
        "isAllowedCustomOption": false, "isMultiFileAllowed": false, "maxFileLimit": 0, "locationId": location,
        "model": "contact",
    }));
    id
}

/// Adds an appointment to a contact of `location`; returns its id.
pub(super) fn add_appointment(s: &mut Store, location: &str, v: &Value) -> Result<String, String> {
    let Some(cid) = v["contactId"].as_str() else {
        return Err("contactId is required".into());
    };
    let Some(c) = s.locations.get_mut(location).and_then(|l| l.contacts.get_mut(cid)) else {
        return Err("no such contact".into());
    };
    let id = new_id();
    let text = |k: &str, default: &str| json!(v[k].as_str().unwrap_or(default));
    let ids = |k: &str| json!(v[k].as_array().cloned().unwrap_or_default());
    let added = now_iso();
    let mut a = Map::new();
    // Every property of the OpenAPI's `GetEventSchema`.
    for (k, val) in [
        ("id", json!(id)),
        ("calendarId", text("calendarId", "cal1")),
        ("status", text("status", "booked")),
        ("title", text("title", "Appointment")),
        ("assignedUserId", text("assignedUserId", "")),
        ("notes", text("notes", "")),
        ("startTime", text("startTime", "2026-12-01 10:00:00")),
        ("endTime", text("endTime", "2026-12-01 10:30:00")),
        ("address", text("address", "")),
        ("locationId", json!(location)),
        ("contactId", json!(cid)),
        ("groupId", text("groupId", "")),
        ("appointmentStatus", text("appointmentStatus", "confirmed")),
        ("users", ids("users")),
        ("dateAdded", json!(added)),
        ("dateUpdated", json!(added)),
        ("assignedResources", ids("assignedResources")),
    ] {
        a.insert(k.into(), val);
    }
    c.appointments.push(a);
    Ok(id)
}

pub(super) fn state_json(s: &Store) -> Value {
    let mut locs = Map::new();
    for (id, l) in &s.locations {
        let contacts: Vec<Value> = l
            .contacts
            .values()
            .map(|c| {
                let mut v = c.fields.clone();
                v.insert("tasks".into(), Value::Array(c.tasks.iter().cloned().map(Value::Object).collect()));
                v.insert("notes".into(), Value::Array(c.notes.iter().cloned().map(Value::Object).collect()));
                v.insert(
                    "appointments".into(),
                    Value::Array(c.appointments.iter().cloned().map(Value::Object).collect()),
                );
                Value::Object(v)
            })
            .collect();
        locs.insert(id.clone(), json!({ "contacts": contacts, "customFields": l.custom_fields }));
    }
    json!({ "locations": locs })
}

pub(super) async fn admin(ghl: &LocalGhl, method: &Method, rest: &str, body: &[u8]) -> Response {
    let mut s = ghl.store.lock().await;
    let parts: Vec<&str> = rest.split('/').collect();
    let bad = |m: String| (StatusCode::BAD_REQUEST, axum::Json(json!({"error": m}))).into_response();
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["state"]) => axum::Json(state_json(&s)).into_response(),
        ("GET", ["requests"]) => axum::Json(json!({ "requests": s.log })).into_response(),
        ("DELETE", ["requests"]) => {
            s.log.clear();
            StatusCode::NO_CONTENT.into_response()
        }
        ("PUT", ["faults"]) => match serde_json::from_slice::<Faults>(body) {
            Ok(f) => {
                s.faults = f;
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => bad(format!("bad faults: {e}")),
        },
        ("PUT", ["config"]) => match serde_json::from_slice::<GhlBehaviour>(body) {
            Ok(b) => {
                s.behaviour = b;
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => bad(format!("bad config: {e}")),
        },
        ("PUT", ["search-lag"]) => {
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            match v["ms"].as_u64() {
                Some(ms) => {
                    s.behaviour.search_lag_ms = ms;
                    StatusCode::NO_CONTENT.into_response()
                }
                None => bad("ms (milliseconds, 0 or more) is required".into()),
            }
        }
        ("POST", ["reset"]) => {
            let behaviour = s.behaviour.clone();
            let webhooks = s.webhooks.clone();
            let webhook_signer = s.webhook_signer.take();
            *s = Store { behaviour, webhooks, webhook_signer, ..Default::default() };
            StatusCode::NO_CONTENT.into_response()
        }
        ("GET", ["webhooks"]) => {
            drop(s);
            axum::Json(ghl.webhooks_json().await).into_response()
        }
        ("PUT", ["webhooks"]) => match serde_json::from_slice::<WebhookSettings>(body) {
            Ok(w) => {
                drop(s);
                ghl.set_webhooks(w).await;
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => bad(format!("bad webhook settings: {e}")),
        },
        ("POST", ["webhooks", "release"]) => {
            drop(s);
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let statuses = ghl.release_webhooks(v["reverse"].as_bool().unwrap_or(false)).await;
            axum::Json(json!({"statuses": statuses})).into_response()
        }
        ("POST", ["locations", loc, "custom-fields"]) => {
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let (Some(name), Some(key)) = (v["name"].as_str(), v["fieldKey"].as_str()) else {
                return bad("name and fieldKey are required".into());
            };
            let dt = v["dataType"].as_str().unwrap_or("TEXT");
            let id = add_custom_field(&mut s, loc, name, key, dt);
            (StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response()
        }
        ("POST", ["locations", loc, "appointments"]) => {
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            match add_appointment(&mut s, loc, &v) {
                Ok(id) => (StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response(),
                Err(e) => bad(e),
            }
        }
        _ => (StatusCode::NOT_FOUND, axum::Json(json!({"error": "no such admin path"}))).into_response(),
    }
}
