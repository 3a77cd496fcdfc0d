//! Tasks and notes of a contact.

use serde_json::{Map, Value, json};

use super::contacts::{not_found, reject_unknown, with_contact};
use super::{Reply, Store, StoredContact, new_id, now_iso};

pub(super) const TASK_FIELDS: &[&str] = &["title", "body", "dueDate", "completed", "assignedTo"];
pub(super) const NOTE_FIELDS: &[&str] = &["userId", "body", "title", "color", "pinned"];

fn valid_due_date(v: &str, strict: bool) -> bool {
    chrono::DateTime::parse_from_rfc3339(v).is_ok() && (!strict || !v.contains('.'))
}

pub(super) fn create_task(s: &mut Store, id: &str, body: &Value) -> Reply {
    if let Err(r) = reject_unknown(body, TASK_FIELDS, &[]) {
        return r;
    }
    let mut missing = Vec::new();
    if !body["title"].is_string() {
        missing.push("title must be a string".to_string());
    }
    if !body["dueDate"].as_str().is_some_and(|d| valid_due_date(d, s.behaviour.strict_due_dates)) {
        missing.push("dueDate must be a valid ISO 8601 date string".to_string());
    }
    if !body["completed"].is_boolean() {
        missing.push("completed must be a boolean value".to_string());
    }
    if !missing.is_empty() {
        return Reply::unprocessable(missing);
    }
    with_contact(s, id, |c, _| {
        let mut t = Map::new();
        t.insert("id".into(), json!(new_id()));
        for k in TASK_FIELDS {
            if let Some(v) = body.get(*k) {
                t.insert((*k).into(), v.clone());
            }
        }
        t.insert("contactId".into(), json!(id));
        c.tasks.push(t.clone());
        Reply::ok(201, json!({"task": t}))
    })
}

pub(super) fn create_note(s: &mut Store, id: &str, body: &Value) -> Reply {
    if let Err(r) = reject_unknown(body, NOTE_FIELDS, &[]) {
        return r;
    }
    if !body["body"].is_string() {
        return Reply::unprocessable(vec!["body must be a string".into()]);
    }
    with_contact(s, id, |c, _| {
        let mut n = Map::new();
        n.insert("id".into(), json!(new_id()));
        for k in NOTE_FIELDS {
            if let Some(v) = body.get(*k) {
                n.insert((*k).into(), v.clone());
            }
        }
        n.insert("contactId".into(), json!(id));
        n.insert("dateAdded".into(), json!(now_iso()));
        c.notes.push(n.clone());
        Reply::ok(201, json!({"note": n}))
    })
}

fn children<'a>(c: &'a mut StoredContact, kind: &str) -> &'a mut Vec<Map<String, Value>> {
    if kind == "tasks" { &mut c.tasks } else { &mut c.notes }
}

pub(super) fn child(
    s: &mut Store,
    id: &str,
    kind: &str,
    cid: &str,
    f: impl FnOnce(&Map<String, Value>) -> Reply,
) -> Reply {
    let what = if kind == "tasks" { "Task" } else { "Note" };
    let nf = not_found(s, what, cid);
    with_contact(s, id, |c, _| match children(c, kind).iter().find(|t| t["id"].as_str() == Some(cid)) {
        Some(t) => f(t),
        None => nf,
    })
}

pub(super) fn update_child(s: &mut Store, id: &str, kind: &str, cid: &str, body: &Value, allowed: &[&str]) -> Reply {
    if let Err(r) = reject_unknown(body, allowed, &[]) {
        return r;
    }
    if kind == "tasks"
        && let Some(d) = body.get("dueDate")
        && !d.as_str().is_some_and(|d| valid_due_date(d, s.behaviour.strict_due_dates))
    {
        return Reply::unprocessable(vec!["dueDate must be a valid ISO 8601 date string".into()]);
    }
    let what = if kind == "tasks" { "Task" } else { "Note" };
    let nf = not_found(s, what, cid);
    let key = if kind == "tasks" { "task" } else { "note" };
    with_contact(s, id, |c, _| match children(c, kind).iter_mut().find(|t| t["id"].as_str() == Some(cid)) {
        Some(t) => {
            for (k, v) in body.as_object().into_iter().flatten() {
                t.insert(k.clone(), v.clone());
            }
            Reply::ok(200, json!({ key: t }))
        }
        None => nf,
    })
}

pub(super) fn delete_child(s: &mut Store, id: &str, kind: &str, cid: &str) -> Reply {
    let what = if kind == "tasks" { "Task" } else { "Note" };
    let nf = not_found(s, what, cid);
    with_contact(s, id, |c, _| {
        let list = children(c, kind);
        let before = list.len();
        list.retain(|t| t["id"].as_str() != Some(cid));
        if list.len() == before { nf } else { Reply::ok(200, json!({"succeded": true})) }
    })
}
