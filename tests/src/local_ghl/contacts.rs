//! Contacts: validation of write bodies, the stored read shape, matching on email and phone,
//! create, upsert, update, delete and tags.

use chrono::Utc;
use serde_json::{Map, Value, json};

use super::{Location, Reply, Store, StoredContact, new_id, now_iso};

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

pub(super) fn find_match(loc: &Location, email: Option<&str>, phone: Option<&str>) -> Option<(String, &'static str)> {
    let email = email.map(|e| e.trim().to_lowercase()).filter(|e| !e.is_empty());
    let phone = phone.and_then(normalise_phone);
    if let Some(e) = &email
        && let Some((id, _)) = loc
            .contacts
            .iter()
            .find(|(_, c)| c.fields.get("emailLowerCase").and_then(Value::as_str) == Some(e.as_str()))
    {
        return Some((id.clone(), "email"));
    }
    if let Some(p) = &phone
        && let Some((id, _)) =
            loc.contacts.iter().find(|(_, c)| c.fields.get("phone").and_then(Value::as_str) == Some(p.as_str()))
    {
        return Some((id.clone(), "phone"));
    }
    None
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
    if let Err(r) = reject_unknown(body, CONTACT_FIELDS, &["locationId", "companyName"]).and_then(|_| check_types(body))
    {
        return r;
    }
    let loc_id = match location_of(body) {
        Ok(l) => l,
        Err(r) => return r,
    };
    if !s.behaviour.allow_duplicates {
        let loc = s.locations.entry(loc_id.clone()).or_default();
        if let Some((id, field)) = find_match(loc, body["email"].as_str(), body["phone"].as_str()) {
            let name = loc.contacts[&id].fields.get("name").cloned().unwrap_or(Value::Null);
            return Reply::ok(
                400,
                json!({"statusCode": 400, "message": "This location does not allow duplicated contacts.",
                       "meta": {"contactId": id, "contactName": name, "matchingField": field}}),
            );
        }
    }
    match insert_new(s, &loc_id, body) {
        Ok(fields) => Reply::ok(201, json!({"contact": fields})),
        Err(r) => r,
    }
}

pub(super) fn upsert_contact(s: &mut Store, body: &Value) -> Reply {
    if let Err(r) = reject_unknown(body, CONTACT_FIELDS, &["locationId", "companyName", "createNewIfDuplicateAllowed"])
        .and_then(|_| check_types(body))
    {
        return r;
    }
    let loc_id = match location_of(body) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let always_new = s.behaviour.allow_duplicates && body["createNewIfDuplicateAllowed"] == json!(true);
    let loc = s.locations.entry(loc_id.clone()).or_default();
    let existing = if always_new {
        None
    } else {
        find_match(loc, body["email"].as_str(), body["phone"].as_str()).map(|(id, _)| id)
    };
    match existing {
        Some(id) => {
            let defs = loc.custom_fields.clone();
            let c = loc.contacts.get_mut(&id).expect("matched contact");
            // Like GHL: the first identifier in the duplicate order wins; a conflicting second
            // identifier is silently dropped.
            let mut body = body.clone();
            if let Some(obj) = body.as_object_mut() {
                let other_email = c.fields.get("email").and_then(Value::as_str).is_some_and(|e| {
                    obj.get("email").and_then(Value::as_str).is_some_and(|b| !b.eq_ignore_ascii_case(e))
                });
                if other_email {
                    obj.remove("email");
                }
            }
            if let Err(r) = apply_fields(&mut c.fields, &body, &defs) {
                return r;
            }
            Reply::ok(200, json!({"new": false, "contact": c.fields}))
        }
        None => match insert_new(s, &loc_id, body) {
            Ok(fields) => Reply::ok(200, json!({"new": true, "contact": fields})),
            Err(r) => r,
        },
    }
}

pub(super) fn update_contact(s: &mut Store, id: &str, body: &Value) -> Reply {
    if let Err(r) = reject_unknown(body, CONTACT_FIELDS, &[]).and_then(|_| check_types(body)) {
        return r;
    }
    if body.get("gender").is_some() {
        return Reply::unprocessable(vec!["property gender should not exist".into()]);
    }
    let Some(loc) = s.owner.get(id).cloned() else {
        return not_found(s, "Contact", id);
    };
    let l = s.locations.get_mut(&loc).expect("location");
    let defs = l.custom_fields.clone();
    let c = l.contacts.get_mut(id).expect("contact");
    if let Err(r) = apply_fields(&mut c.fields, body, &defs) {
        return r;
    }
    Reply::ok(200, json!({"succeded": true, "contact": c.fields}))
}

pub(super) fn delete_contact(s: &mut Store, id: &str) -> Reply {
    let Some(loc) = s.owner.remove(id) else {
        return not_found(s, "Contact", id);
    };
    s.locations.get_mut(&loc).expect("location").contacts.remove(id);
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
    with_contact(s, id, |c, _| {
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
        Reply::ok(if add { 201 } else { 200 }, json!({"tags": current}))
    })
}
