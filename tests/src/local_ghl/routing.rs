//! The entry point of every request, and the table from method and path to handler.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::admin::admin;
use super::contacts::{
    create_contact, delete_contact, reject_unknown, tags, update_contact, upsert_contact, with_contact,
};
use super::gate::{authorize, gatekeep, oauth_token, take_fault};
use super::records::{NOTE_FIELDS, TASK_FIELDS, child, create_note, create_task, delete_child, update_child};
use super::search::{by_business, duplicate, list_contacts, search};
use super::webhooks::events_after_write;
use super::{FaultKind, LocalGhl, LoggedRequest, Reply, Store, trace_id};

pub(super) async fn handle(
    State(ghl): State<LocalGhl>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    if let Some(rest) = path.strip_prefix("/_admin/") {
        return admin(&ghl, &method, rest, &body).await.into_response();
    }
    if path == "/oauth/token" && method == Method::POST {
        return oauth_token(&ghl, &body).await;
    }
    let parsed_body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()))
    };
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);

    // Faults, auth and the rate window are decided under the lock; latency is slept outside it.
    let (pre, delay, fault, at_ms) = {
        let mut s = ghl.store.lock().await;
        let at_ms = chrono::Utc::now().timestamp_millis();
        let fault = take_fault(&mut s.faults, &method, &path);
        let mut delay = Duration::from_millis(s.faults.latency_ms);
        if s.faults.slow_rate > 0.0 && fastrand::f64() < s.faults.slow_rate {
            delay += Duration::from_millis(s.faults.slow_ms);
        }
        if let Some(FaultKind::Delay { ms }) = &fault {
            delay += Duration::from_millis(*ms);
        }
        let pre = gatekeep(&mut s, token.as_deref(), &headers, &fault);
        (pre, delay, fault, at_ms)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut deliveries = Vec::new();
    let mut delivery_delay = Duration::ZERO;
    let (reply, limits) = match pre {
        Err((reply, limits)) => (reply, limits),
        Ok(limits) => {
            if fault == Some(FaultKind::Drop) {
                let mut s = ghl.store.lock().await;
                s.log.push(LoggedRequest {
                    method: method.to_string(),
                    path: path.clone(),
                    query: query.clone(),
                    status: 0,
                    body: parsed_body.clone(),
                    response: Value::Null,
                    at_ms,
                });
                drop(s);
                // Ends the connection without an answer (no panic message is printed).
                std::panic::resume_unwind(Box::new("local GHL drops this connection"));
            }
            let mut s = ghl.store.lock().await;
            let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let path_contact = match segs.as_slice() {
                ["contacts", id, ..] if !["", "upsert", "search", "business"].contains(id) => Some(id.to_string()),
                _ => None,
            };
            let owner = path_contact.as_ref().and_then(|id| s.owner.get(id).cloned());
            let mut reply = match authorize(&s, token.as_deref(), &method, &path, &query, &parsed_body) {
                Ok(()) => {
                    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
                    route(&mut s, &method, &path, &query, &parsed_body, &body, host)
                }
                Err(refused) => refused,
            };
            let wrote = method != Method::GET && reply.status.is_success();
            if wrote && s.webhooks.url.is_some() {
                let deleted = (method == Method::DELETE && segs.len() == 2)
                    .then(|| path_contact.clone().zip(owner.clone()))
                    .flatten();
                let mut ids: Vec<String> = path_contact.iter().cloned().collect();
                if let Some(id) = reply.body["contact"]["id"].as_str() {
                    ids.push(id.to_string());
                }
                if deleted.is_some() {
                    ids.clear();
                }
                deliveries = events_after_write(&mut s, &ids, deleted);
                delivery_delay = Duration::from_millis(s.webhooks.delay_ms);
            }
            if fault == Some(FaultKind::WriteThenFail) && wrote {
                reply = Reply::err(500, "Internal server error");
            }
            if fault == Some(FaultKind::WriteThenGarbage) && wrote {
                reply.garbled = true;
            }
            (reply, limits)
        }
    };
    let mut body = reply.body;
    if let Value::Object(m) = &mut body
        && !m.contains_key("traceId")
    {
        m.insert("traceId".into(), Value::String(trace_id()));
    }
    // A garbled answer is the JSON cut off halfway, as a connection closed mid-body leaves it.
    let garbled = reply.garbled.then(|| {
        let text = body.to_string();
        text.chars().take(text.chars().count() / 2).collect::<String>()
    });
    {
        let mut s = ghl.store.lock().await;
        s.log.push(LoggedRequest {
            method: method.to_string(),
            path,
            query,
            status: reply.status.as_u16(),
            body: parsed_body,
            response: garbled.clone().map(Value::String).unwrap_or_else(|| body.clone()),
            at_ms,
        });
    }
    let cut_off = (fault == Some(FaultKind::CutOff)).then(|| serde_json::to_vec(&body).expect("JSON body"));
    let mut resp = match garbled {
        Some(text) => (reply.status, [("content-type", "application/json")], text).into_response(),
        None => (reply.status, axum::Json(body)).into_response(),
    };
    if let Some(bytes) = cut_off {
        let half = axum::body::Bytes::copy_from_slice(&bytes[..bytes.len() / 2]);
        let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "local GHL cuts this answer off");
        *resp.body_mut() = axum::body::Body::from_stream(futures::stream::iter([Ok(half), Err(cut)]));
    }
    ghl.send_in_background(deliveries, delivery_delay);
    let h = resp.headers_mut();
    for (k, v) in limits {
        h.insert(k, HeaderValue::from_str(&v).expect("header value"));
    }
    if let Some(ra) = reply.retry_after {
        h.insert("retry-after", HeaderValue::from(ra));
    }
    resp
}

fn route(s: &mut Store, method: &Method, path: &str, query: &str, body: &Value, raw: &[u8], host: &str) -> Reply {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    if matches!(*method, Method::POST | Method::PUT) && !raw.is_empty() && !body.is_object() {
        return Reply::err(400, "Unexpected token in JSON");
    }
    match (method.as_str(), segs.as_slice()) {
        ("POST", ["contacts", ""]) | ("POST", ["contacts"]) => create_contact(s, body),
        ("GET", ["contacts", ""]) | ("GET", ["contacts"]) => list_contacts(s, &q, host),
        ("POST", ["contacts", "upsert"]) => upsert_contact(s, body),
        ("POST", ["contacts", "search"]) => search(s, body),
        ("GET", ["contacts", "search", "duplicate"]) => duplicate(s, &q),
        ("GET", ["contacts", "business", bid]) => by_business(s, bid, &q),
        ("GET", ["contacts", id]) => with_contact(s, id, |c, _| Reply::ok(200, json!({"contact": c.fields}))),
        ("PUT", ["contacts", id]) => update_contact(s, id, body),
        ("DELETE", ["contacts", id]) => delete_contact(s, id),
        ("POST", ["contacts", id, "tags"]) => tags(s, id, body, true),
        ("DELETE", ["contacts", id, "tags"]) => tags(s, id, body, false),
        ("GET", ["contacts", id, "tasks"]) => with_contact(s, id, |c, _| Reply::ok(200, json!({"tasks": c.tasks}))),
        ("POST", ["contacts", id, "tasks"]) => create_task(s, id, body),
        ("GET", ["contacts", id, "tasks", tid]) => child(s, id, "tasks", tid, |t| Reply::ok(200, json!({"task": t}))),
        ("PUT", ["contacts", id, "tasks", tid]) => update_child(s, id, "tasks", tid, body, TASK_FIELDS),
        ("DELETE", ["contacts", id, "tasks", tid]) => delete_child(s, id, "tasks", tid),
        ("PUT", ["contacts", id, "tasks", tid, "completed"]) => {
            if !body.get("completed").is_some_and(Value::is_boolean) {
                return Reply::unprocessable(vec!["completed must be a boolean value".into()]);
            }
            if let Err(r) = reject_unknown(body, &["completed"], &[]) {
                return r;
            }
            update_child(s, id, "tasks", tid, body, &["completed"])
        }
        ("GET", ["contacts", id, "notes"]) => with_contact(s, id, |c, _| Reply::ok(200, json!({"notes": c.notes}))),
        ("POST", ["contacts", id, "notes"]) => create_note(s, id, body),
        ("GET", ["contacts", id, "notes", nid]) => child(s, id, "notes", nid, |n| Reply::ok(200, json!({"note": n}))),
        ("PUT", ["contacts", id, "notes", nid]) => update_child(s, id, "notes", nid, body, NOTE_FIELDS),
        ("DELETE", ["contacts", id, "notes", nid]) => delete_child(s, id, "notes", nid),
        ("GET", ["contacts", id, "appointments"]) => {
            with_contact(s, id, |c, _| Reply::ok(200, json!({"events": c.appointments})))
        }
        ("GET", ["locations", loc, "customFields"]) => {
            let defs = s.locations.get(*loc).map(|l| l.custom_fields.clone()).unwrap_or_default();
            let model = q.get("model");
            let defs: Vec<Value> =
                defs.into_iter().filter(|d| model.is_none_or(|m| d["model"].as_str() == Some(m.as_str()))).collect();
            Reply::ok(200, json!({"customFields": defs}))
        }
        _ => Reply::err(404, format!("Cannot {} {}", method, path)),
    }
}
