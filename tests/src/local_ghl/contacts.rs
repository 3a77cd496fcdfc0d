//! Contacts: validation of write bodies, the stored read shape, matching on email and phone,
//! create, upsert, update, delete and tags.

use chrono::Utc;
use serde_json::{Map, Value, json};

use super::search::{after_write, before_write, deleted, new_view};
use super::{Location, MatchField, Reply, Store, StoredContact, new_id, now_iso};

// ---- the API ------------------------------------------------------------------------------

const CONTACT_FIELDS: &[&str] = &[
    "firstName",
    "lastName",
    "name",
    "email",
    "gender",
    "phone",
    "address1",
    "city",
    "state",
    "postalCode",
    "website",
    "timezone",
    "dnd",
    "dndSettings",
    "inboundDndSettings",
    "tags",
    "customFields",
    "source",
    "dateOfBirth",
    "country",
    "assignedTo",
];

/// 422 with one message per unknown property, as GHL's validation pipe does.
pub(super) fn reject_unknown(body: &Value, allowed: &[&str], extra: &[&str]) -> Result<(), Reply> {
    let Some(obj) = body.as_object() else {
        return Err(Reply::unprocessable(vec!["body must be a JSON object".into()]));
    };
    let unknown: Vec<String> = obj
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()) && !extra.contains(&k.as_str()))
        .map(|k| format!("property {k} should not exist"))
        .collect();
    if unknown.is_empty() { Ok(()) } else { Err(Reply::unprocessable(unknown)) }
}

fn check_types(body: &Value) -> Result<(), Reply> {
    let mut msgs = Vec::new();
    let obj = body.as_object().cloned().unwrap_or_default();
    for (k, v) in &obj {
        let ok = match k.as_str() {
            "tags" | "customFields" | "followers" => v.is_array(),
            "dnd" | "completed" | "pinned" | "createNewIfDuplicateAllowed" => v.is_boolean(),
            "dndSettings" | "inboundDndSettings" => v.is_object(),
            "dateOfBirth" => v.is_string() || v.is_object() || v.is_null(),
            _ => v.is_string() || v.is_null(),
        };
        if !ok {
            msgs.push(format!("{k} has the wrong type"));
        }
    }
    if let Some(tags) = obj.get("tags").and_then(Value::as_array)
        && tags.iter().any(|t| !t.is_string())
    {
        msgs.push("each value in tags must be a string".into());
    }
    if let Some(phone) = obj.get("phone").and_then(Value::as_str)
        && !phone.is_empty()
        && normalise_phone(phone).is_none()
    {
        msgs.push("phone must be a valid phone number".into());
    }
    if msgs.is_empty() { Ok(()) } else { Err(Reply::unprocessable(msgs)) }
}

/// 422 for custom-field items with properties other than `id`, `key` and `field_value` (the
/// OpenAPI's `customFieldsInput*Schema`); `fieldValue` and `value` pass unless `strict`.
fn check_custom_fields(body: &Value, strict: bool) -> Result<(), Reply> {
    let allowed: &[&str] =
        if strict { &["id", "key", "field_value"] } else { &["id", "key", "field_value", "fieldValue", "value"] };
    let mut msgs = Vec::new();
    for (i, item) in body.get("customFields").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let Some(obj) = item.as_object() else {
            msgs.push(format!("customFields.{i} must be an object"));
            continue;
        };
        msgs.extend(
            obj.keys()
                .filter(|k| !allowed.contains(&k.as_str()))
                .map(|k| format!("customFields.{i}.property {k} should not exist")),
        );
    }
    if msgs.is_empty() { Ok(()) } else { Err(Reply::unprocessable(msgs)) }
}

/// GHL stores phones in E.164; accepts `+` numbers with separators.
fn normalise_phone(raw: &str) -> Option<String> {
    let digits: String = raw.chars().filter(|c| c.is_ascii_digit()).collect();
    (raw.trim_start().starts_with('+') && (8..=15).contains(&digits.len())).then(|| format!("+{digits}"))
}

pub(super) fn not_found(s: &Store, what: &str, id: &str) -> Reply {
    Reply::err(s.behaviour.not_found_status, format!("{what} with id {id} not found"))
}

pub(super) fn with_contact(s: &mut Store, id: &str, f: impl FnOnce(&mut StoredContact, &str) -> Reply) -> Reply {
    let Some(loc) = s.owner.get(id).cloned() else {
        return not_found(s, "Contact", id);
    };
    let c = s.locations.get_mut(&loc).and_then(|l| l.contacts.get_mut(id)).expect("owner index");
    f(c, &loc)
}

pub(super) fn location_of(body: &Value) -> Result<String, Reply> {
    match body.get("locationId").and_then(Value::as_str) {
        Some(l) if !l.is_empty() => Ok(l.to_string()),
        _ => Err(Reply::unprocessable(vec!["locationId must be a string".into()])),
    }
}

/// Builds or updates the stored read shape from a write body.
fn apply_fields(fields: &mut Map<String, Value>, body: &Value, custom_defs: &[Value]) -> Result<(), Reply> {
    let obj = body.as_object().cloned().unwrap_or_default();
    for (k, v) in obj {
        match k.as_str() {
            "locationId" | "createNewIfDuplicateAllowed" | "gender" | "inboundDndSettings" => {}
            "phone" => {
                let p = v.as_str().and_then(normalise_phone);
                fields.insert(k, p.map(Value::String).unwrap_or(Value::Null));
            }
            "email" => {
                fields.insert(k, v.as_str().map(|e| json!(e.trim())).unwrap_or(Value::Null));
            }
            "tags" => {
                let mut tags: Vec<String> = Vec::new();
                for t in v.as_array().into_iter().flatten().filter_map(Value::as_str) {
                    let t = t.trim().to_lowercase();
                    if !t.is_empty() && !tags.contains(&t) {
                        tags.push(t);
                    }
                }
                fields.insert(k, json!(tags));
            }
            "customFields" => {
                let mut current: Vec<Value> =
                    fields.get("customFields").and_then(Value::as_array).cloned().unwrap_or_default();
                for item in v.as_array().into_iter().flatten() {
                    let id = match (item.get("id").and_then(Value::as_str), item.get("key").and_then(Value::as_str)) {
                        (Some(id), _) => id.to_string(),
                        (None, Some(key)) => {
                            let key_full =
                                if key.starts_with("contact.") { key.to_string() } else { format!("contact.{key}") };
                            match custom_defs.iter().find(|d| d["fieldKey"].as_str() == Some(key_full.as_str())) {
                                Some(d) => d["id"].as_str().unwrap_or_default().to_string(),
                                None => {
                                    return Err(Reply::unprocessable(vec![format!("custom field {key} not found")]));
                                }
                            }
                        }
                        _ => {
                            return Err(Reply::unprocessable(vec!["customFields item needs id or key".into()]));
                        }
                    };
                    if !custom_defs.iter().any(|d| d["id"].as_str() == Some(id.as_str())) {
                        return Err(Reply::unprocessable(vec![format!("custom field {id} not found")]));
                    }
                    let value = item
                        .get("field_value")
                        .or_else(|| item.get("fieldValue"))
                        .or_else(|| item.get("value"))
                        .cloned()
                        .unwrap_or(Value::Null);
                    current.retain(|c| c["id"].as_str() != Some(id.as_str()));
                    if !value.is_null() && value != json!("") {
                        current.push(json!({"id": id, "value": value}));
                    }
                }
                fields.insert(k, Value::Array(current));
            }
            _ => {
                fields.insert(k, v);
            }
        }
    }
    refresh_derived(fields);
    Ok(())
}

pub(super) fn refresh_derived(fields: &mut Map<String, Value>) {
    let first = fields.get("firstName").and_then(Value::as_str).unwrap_or("").to_string();
    let last = fields.get("lastName").and_then(Value::as_str).unwrap_or("").to_string();
    if !first.is_empty() || !last.is_empty() {
        let full = format!("{first} {last}").trim().to_string();
        fields.insert("name".into(), json!(full));
        fields.insert("firstNameLowerCase".into(), json!(first.to_lowercase()));
        fields.insert("lastNameLowerCase".into(), json!(last.to_lowercase()));
        fields.insert("fullNameLowerCase".into(), json!(full.to_lowercase()));
    }
    match fields.get("email").and_then(Value::as_str).map(str::to_lowercase) {
        Some(e) => fields.insert("emailLowerCase".into(), json!(e)),
        None => fields.remove("emailLowerCase"),
    };
    fields.insert("dateUpdated".into(), json!(now_iso()));
}

/// An identifier as GHL compares it: emails trimmed and lower-cased, phones in E.164.
fn normalised(field: MatchField, raw: &str) -> Option<String> {
    match field {
        MatchField::Email => Some(raw.trim().to_lowercase()).filter(|e| !e.is_empty()),
        MatchField::Phone => normalise_phone(raw),
    }
}

/// The contact holding an identifier (the oldest, when duplicates are allowed).
fn holder(loc: &Location, field: MatchField, raw: Option<&str>) -> Option<String> {
    let want = normalised(field, raw?)?;
    let stored_key = match field {
        MatchField::Email => "emailLowerCase",
        MatchField::Phone => "phone",
    };
    loc.contacts
        .values()
        .filter(|c| c.fields.get(stored_key).and_then(Value::as_str) == Some(want.as_str()))
        .min_by(|a, b| (a.added_ms, id_of(a)).cmp(&(b.added_ms, id_of(b))))
        .map(|c| id_of(c).to_string())
}

pub(super) fn id_of(c: &StoredContact) -> &str {
    c.fields.get("id").and_then(Value::as_str).unwrap_or("")
}

/// The contact the first identifier of `order` that matches anyone matches, and that identifier.
pub(super) fn find_match(loc: &Location, order: &[MatchField], body: &Value) -> Option<(String, MatchField)> {
    order.iter().find_map(|f| holder(loc, *f, body[f.property()].as_str()).map(|id| (id, *f)))
}

pub(super) fn insert_new(s: &mut Store, loc_id: &str, body: &Value) -> Result<Map<String, Value>, Reply> {
    let id = new_id();
    let now = now_iso();
    let mut fields = Map::new();
    fields.insert("id".into(), json!(id));
    fields.insert("locationId".into(), json!(loc_id));
    fields.insert("type".into(), json!("lead"));
    fields.insert("tags".into(), json!([]));
    fields.insert("customFields".into(), json!([]));
    fields.insert("dnd".into(), json!(false));
    fields.insert("dateAdded".into(), json!(now));
    let defs = s.locations.get(loc_id).map(|l| l.custom_fields.clone()).unwrap_or_default();
    apply_fields(&mut fields, body, &defs)?;
    let stored = StoredContact {
        search: new_view(&fields, s.search_lag()),
        fields: fields.clone(),
        tasks: vec![],
        notes: vec![],
        appointments: vec![],
        added_ms: Utc::now().timestamp_millis(),
    };
    s.locations.entry(loc_id.to_string()).or_default().contacts.insert(id.clone(), stored);
    s.owner.insert(id, loc_id.to_string());
    Ok(fields)
}

pub(super) fn create_contact(s: &mut Store, body: &Value) -> Reply {
    if let Err(r) = reject_unknown(body, CONTACT_FIELDS, &["locationId", "companyName"])
        .and_then(|_| check_types(body))
        .and_then(|_| check_custom_fields(body, s.behaviour.strict_custom_field_values))
    {
        return r;
    }
    let loc_id = match location_of(body) {
        Ok(l) => l,
        Err(r) => return r,
    };
    if !s.behaviour.allow_duplicates {
        let order = s.behaviour.match_order.clone();
        let loc = s.locations.entry(loc_id.clone()).or_default();
        if let Some((id, field)) = find_match(loc, &order, body) {
            let name = loc.contacts[&id].fields.get("name").cloned().unwrap_or(Value::Null);
            return Reply::ok(
                400,
                json!({"statusCode": 400, "message": "This location does not allow duplicated contacts.",
                       "meta": {"contactId": id, "contactName": name, "matchingField": field.property()}}),
            );
        }
    }
    match insert_new(s, &loc_id, body) {
        Ok(fields) => Reply::ok(201, json!({"contact": created_answer(fields)})),
        Err(r) => r,
    }
}

/// The contact as the create answer carries it: the OpenAPI's `CreateContactSchema` adds the
/// new contact's flags and empty lists, and the birthday split up (month counted from 0, as in
/// its example).
fn created_answer(mut fields: Map<String, Value>) -> Map<String, Value> {
    for (k, v) in [
        ("deleted", json!(false)),
        ("bounceEmail", json!(false)),
        ("unsubscribeEmail", json!(false)),
        ("offers", json!([])),
        ("products", json!([])),
    ] {
        fields.insert(k.into(), v);
    }
    let birthday = fields
        .get("dateOfBirth")
        .and_then(Value::as_str)
        .and_then(|d| chrono::NaiveDate::parse_from_str(d.get(..10)?, "%Y-%m-%d").ok());
    if let Some(d) = birthday {
        use chrono::Datelike;
        fields.insert("birthMonth".into(), json!(d.month0()));
        fields.insert("birthDay".into(), json!(d.day()));
    }
    fields
}

pub(super) fn upsert_contact(s: &mut Store, body: &Value) -> Reply {
    if let Err(r) = reject_unknown(body, CONTACT_FIELDS, &["locationId", "companyName", "createNewIfDuplicateAllowed"])
        .and_then(|_| check_types(body))
        .and_then(|_| check_custom_fields(body, s.behaviour.strict_custom_field_values))
    {
        return r;
    }
    let loc_id = match location_of(body) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let b = s.behaviour.clone();
    let lag = s.search_lag();
    let always_new = b.allow_duplicates && body["createNewIfDuplicateAllowed"] == json!(true);
    let loc = s.locations.entry(loc_id.clone()).or_default();
    let existing = if always_new { None } else { find_match(loc, &b.match_order, body) };
    let Some((id, matched_by)) = existing else {
        return match insert_new(s, &loc_id, body) {
            Ok(fields) => Reply::ok(200, json!({"new": true, "contact": fields})),
            Err(r) => r,
        };
    };
    // The contact the first matching identifier found is updated. Identifiers before it in the
    // order matched nobody; those after it are ignored when another contact holds them.
    let mut body = body.clone();
    let obj = body.as_object_mut().expect("checked to be an object");
    let position = b.match_order.iter().position(|f| *f == matched_by).unwrap_or(0);
    for (i, field) in b.match_order.iter().enumerate() {
        let key = field.property();
        let Some(value) = obj.get(key).and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        let drop = match i.cmp(&position) {
            std::cmp::Ordering::Equal => false,
            std::cmp::Ordering::Greater => holder(loc, *field, Some(&value)).is_some_and(|other| other != id),
            std::cmp::Ordering::Less => {
                let own = loc.contacts[&id].fields.get(key).and_then(Value::as_str).and_then(|v| normalised(*field, v));
                !b.upsert_overwrites_identifiers && own.is_some_and(|own| Some(own) != normalised(*field, &value))
            }
        };
        if drop {
            obj.remove(key);
        }
    }
    let defs = loc.custom_fields.clone();
    let c = loc.contacts.get_mut(&id).expect("matched contact");
    before_write(c, lag);
    let applied = apply_fields(&mut c.fields, &body, &defs);
    after_write(c, lag);
    if let Err(r) = applied {
        return r;
    }
    Reply::ok(200, json!({"new": false, "contact": c.fields}))
}

pub(super) fn update_contact(s: &mut Store, id: &str, body: &Value) -> Reply {
    if let Err(r) = reject_unknown(body, CONTACT_FIELDS, &[])
        .and_then(|_| check_types(body))
        .and_then(|_| check_custom_fields(body, s.behaviour.strict_custom_field_values))
    {
        return r;
    }
    if body.get("gender").is_some() {
        return Reply::unprocessable(vec!["property gender should not exist".into()]);
    }
    let Some(loc) = s.owner.get(id).cloned() else {
        return not_found(s, "Contact", id);
    };
    let lag = s.search_lag();
    let l = s.locations.get_mut(&loc).expect("location");
    let defs = l.custom_fields.clone();
    let c = l.contacts.get_mut(id).expect("contact");
    before_write(c, lag);
    let applied = apply_fields(&mut c.fields, body, &defs);
    after_write(c, lag);
    if let Err(r) = applied {
        return r;
    }
    Reply::ok(200, json!({"succeded": true, "contact": c.fields}))
}

pub(super) fn delete_contact(s: &mut Store, id: &str) -> Reply {
    let Some(loc) = s.owner.remove(id) else {
        return not_found(s, "Contact", id);
    };
    if let Some(c) = s.locations.get_mut(&loc).expect("location").contacts.remove(id) {
        deleted(s, &loc, c);
    }
    Reply::ok(200, json!({"succeded": true}))
}

pub(super) fn tags(s: &mut Store, id: &str, body: &Value, add: bool) -> Reply {
    if let Err(r) = reject_unknown(body, &["tags"], &[]) {
        return r;
    }
    let Some(list) = body.get("tags").and_then(Value::as_array) else {
        return Reply::unprocessable(vec!["tags must be an array".into()]);
    };
    let incoming: Vec<String> = list.iter().filter_map(Value::as_str).map(|t| t.trim().to_lowercase()).collect();
    let lag = s.search_lag();
    with_contact(s, id, |c, _| {
        before_write(c, lag);
        let mut current: Vec<String> = c
            .fields
            .get("tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        if add {
            for t in incoming {
                if !t.is_empty() && !current.contains(&t) {
                    current.push(t);
                }
            }
        } else {
            current.retain(|t| !incoming.contains(t));
        }
        c.fields.insert("tags".into(), json!(current));
        c.fields.insert("dateUpdated".into(), json!(now_iso()));
        after_write(c, lag);
        Reply::ok(if add { 201 } else { 200 }, json!({"tags": current}))
    })
}
