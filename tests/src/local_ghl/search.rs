//! Reads over many contacts: the duplicate lookup, contacts by business, the legacy list and
//! `POST /contacts/search`, with the search index's lag.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::contacts::{find_match, id_of, location_of, reject_unknown};
use super::{DuplicateMiss, MatchField, Reply, SearchView, Store, StoredContact};

// ---- the search index's lag ---------------------------------------------------------------

/// What search shows of a contact created now.
pub(super) fn new_view(fields: &Map<String, Value>, lag: Duration) -> SearchView {
    if lag.is_zero() {
        SearchView::Current
    } else {
        SearchView::Lagging { shown: None, due: VecDeque::from([(Instant::now(), fields.clone())]) }
    }
}

/// Before a contact is written while search lags: search keeps showing it as it is now.
pub(super) fn before_write(c: &mut StoredContact, lag: Duration) {
    if !lag.is_zero() && matches!(c.search, SearchView::Current) {
        c.search = SearchView::Lagging { shown: Some(c.fields.clone()), due: VecDeque::new() };
    }
}

/// After a contact was written: search shows this version once the lag has passed.
pub(super) fn after_write(c: &mut StoredContact, lag: Duration) {
    match &mut c.search {
        SearchView::Lagging { due, .. } if !lag.is_zero() => due.push_back((Instant::now(), c.fields.clone())),
        view => *view = SearchView::Current,
    }
}

/// A contact deleted now: search still shows it until the lag has passed.
pub(super) fn deleted(s: &mut Store, location: &str, c: StoredContact) {
    let lag = s.search_lag();
    if !lag.is_zero()
        && let Some(l) = s.locations.get_mut(location)
    {
        l.deleted_in_search.push((Instant::now(), c));
    }
}

/// The contacts of a location as search sees them now.
fn searchable<'a>(s: &'a mut Store, location: &str) -> Vec<Cow<'a, StoredContact>> {
    let lag = s.search_lag();
    let Some(l) = s.locations.get_mut(location) else {
        return Vec::new();
    };
    if lag.is_zero() {
        l.deleted_in_search.clear();
        return l.contacts.values().map(Cow::Borrowed).collect();
    }
    let now = Instant::now();
    l.deleted_in_search.retain(|(at, _)| *at + lag > now);
    for c in l.contacts.values_mut().chain(l.deleted_in_search.iter_mut().map(|(_, c)| c)) {
        if let SearchView::Lagging { shown, due } = &mut c.search {
            while due.front().is_some_and(|(at, _)| *at + lag <= now) {
                *shown = due.pop_front().map(|(_, f)| f);
            }
        }
    }
    let l = &*l;
    l.contacts
        .values()
        .chain(l.deleted_in_search.iter().map(|(_, c)| c))
        .filter_map(|c| match &c.search {
            SearchView::Current => Some(Cow::Borrowed(c)),
            SearchView::Lagging { shown: Some(fields), .. } => Some(Cow::Owned(StoredContact {
                fields: fields.clone(),
                tasks: Vec::new(),
                notes: Vec::new(),
                appointments: Vec::new(),
                added_ms: c.added_ms,
                search: SearchView::Current,
            })),
            SearchView::Lagging { shown: None, .. } => None,
        })
        .collect()
}

/// `GET /contacts/search/duplicate?locationId&email&number`: `{"contact": {...}}` for the
/// contact the first identifier matches. With "Allow Duplicate Contact" on, email is tried
/// before the phone (OpenAPI); off, the location's unique identifiers in their order.
pub(super) fn duplicate(s: &mut Store, q: &HashMap<String, String>) -> Reply {
    let Some(loc_id) = q.get("locationId").filter(|l| !l.is_empty()) else {
        return Reply::unprocessable(vec!["locationId must be a string".into()]);
    };
    let order = if s.behaviour.allow_duplicates {
        vec![MatchField::Email, MatchField::Phone]
    } else {
        s.behaviour.match_order.clone()
    };
    let miss = s.behaviour.duplicate_miss;
    let loc = s.locations.entry(loc_id.clone()).or_default();
    let wanted = json!({"email": q.get("email"), "phone": q.get("number")});
    match find_match(loc, &order, &wanted) {
        Some((id, _)) => Reply::ok(200, json!({"contact": loc.contacts[&id].fields})),
        None if miss == DuplicateMiss::Null => Reply::ok(200, json!({"contact": null})),
        None => Reply::ok(200, json!({})),
    }
}

pub(super) fn by_business(s: &mut Store, bid: &str, q: &HashMap<String, String>) -> Reply {
    let Some(loc_id) = q.get("locationId") else {
        return Reply::unprocessable(vec!["locationId must be a string".into()]);
    };
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(25);
    let skip: usize = q.get("skip").and_then(|l| l.parse().ok()).unwrap_or(0);
    let all: Vec<Value> = s
        .locations
        .get(loc_id)
        .into_iter()
        .flat_map(|l| l.contacts.values())
        .filter(|c| c.fields.get("businessId").and_then(Value::as_str) == Some(bid))
        .map(list_item)
        .collect();
    let count = all.len();
    let page: Vec<Value> = all.into_iter().skip(skip).take(limit).collect();
    Reply::ok(200, json!({"contacts": page, "count": count}))
}

/// `GET /contacts/` (deprecated): pages in `dateAdded` order with the `startAfter`/`startAfterId`
/// cursor, and `meta` as the OpenAPI's `ContactsMetaSchema` (its `nextPageUrl` in the form of
/// the documented example, on `host`).
pub(super) fn list_contacts(s: &mut Store, q: &HashMap<String, String>, host: &str) -> Reply {
    let Some(loc_id) = q.get("locationId").filter(|l| !l.is_empty()) else {
        // What GHL answers when a page request loses its location scope.
        return Reply::err(403, "The token does not have access to this location.");
    };
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Reply::unprocessable(vec!["limit must not be greater than 100".into()]);
    }
    let after_id = q.get("startAfterId");
    let after: Option<i64> = q.get("startAfter").and_then(|v| v.parse().ok());
    let mut all: Vec<&StoredContact> = s.locations.get(loc_id).into_iter().flat_map(|l| l.contacts.values()).collect();
    all.sort_by(|a, b| (a.added_ms, id_of(a)).cmp(&(b.added_ms, id_of(b))));
    let total = all.len();
    let rest: Vec<&StoredContact> = match (after_id, after) {
        (Some(aid), Some(ams)) => all.into_iter().filter(|c| (c.added_ms, id_of(c)) > (ams, aid.as_str())).collect(),
        _ => all,
    };
    let before = total - rest.len();
    let more = rest.len() > limit;
    let page: Vec<&StoredContact> = rest.into_iter().take(limit).collect();
    let current = before / limit + 1;
    let last = page.last();
    let next_url = match last {
        Some(c) if more => json!(format!(
            "http://{host}/contacts/?locationId={}&startAfter={}&startAfterId={}",
            urlencoding::encode(loc_id),
            c.added_ms,
            urlencoding::encode(id_of(c))
        )),
        _ => Value::Null,
    };
    let meta = json!({
        "total": total,
        "nextPageUrl": next_url,
        "startAfterId": last.map(|c| id_of(c)),
        "startAfter": last.map(|c| c.added_ms),
        "currentPage": current,
        "nextPage": if more { json!(current + 1) } else { Value::Null },
        "prevPage": if current > 1 { json!(current - 1) } else { Value::Null },
    });
    let contacts: Vec<Value> = page.into_iter().map(list_item).collect();
    Reply::ok(200, json!({"contacts": contacts, "count": total, "meta": meta}))
}

// ---- search -------------------------------------------------------------------------------

const SEARCH_KEYS: &[&str] = &["locationId", "pageLimit", "page", "searchAfter", "query", "filters", "sort"];
const MAX_PAGE_RESULTS: usize = 10_000;

pub(super) fn search(s: &mut Store, body: &Value) -> Reply {
    if let Err(r) = reject_unknown(body, SEARCH_KEYS, &[]) {
        return r;
    }
    let loc_id = match location_of(body) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let Some(limit) = body["pageLimit"].as_u64().filter(|l| (1..=500).contains(l)) else {
        return Reply::unprocessable(vec!["pageLimit must be a number between 1 and 500".into()]);
    };
    let limit = limit as usize;
    if body.get("page").is_some() && body.get("searchAfter").is_some() {
        return Reply::unprocessable(vec!["page and searchAfter cannot be used together".into()]);
    }
    if body["query"].as_str().is_some_and(|q| q.chars().count() > 75) {
        return Reply::unprocessable(vec!["query must be shorter than or equal to 75 characters".into()]);
    }
    let filters = body["filters"].as_array().cloned().unwrap_or_default();
    let query = body["query"].as_str().map(str::to_lowercase).filter(|q| !q.is_empty());
    let visible = searchable(s, &loc_id);
    let mut hits: Vec<&StoredContact> = Vec::new();
    for c in visible.iter().map(|c| c.as_ref()) {
        let mut ok = true;
        for f in &filters {
            match matches(&c.fields, f) {
                Ok(m) => ok &= m,
                Err(msg) => return Reply::unprocessable(vec![msg]),
            }
        }
        if let Some(q) = &query {
            let hay = ["fullNameLowerCase", "emailLowerCase", "phone", "companyName"]
                .iter()
                .filter_map(|k| c.fields.get(*k).and_then(Value::as_str))
                .any(|v| v.to_lowercase().contains(q.as_str()));
            ok &= hay;
        }
        if ok {
            hits.push(c);
        }
    }
    // Sort: requested fields, then dateAdded and id as the stable cursor.
    let sorts: Vec<(String, bool)> = body["sort"]
        .as_array()
        .into_iter()
        .flatten()
        .take(2)
        .filter_map(|s| Some((s["field"].as_str()?.to_string(), s["direction"].as_str() == Some("desc"))))
        .collect();
    hits.sort_by(|a, b| {
        for (field, desc) in &sorts {
            let (x, y) = (sort_key(a, field), sort_key(b, field));
            let o = x.cmp(&y);
            if o != std::cmp::Ordering::Equal {
                return if *desc { o.reverse() } else { o };
            }
        }
        (a.added_ms, id_of(a)).cmp(&(b.added_ms, id_of(b)))
    });
    let total = hits.len();
    let page_hits: Vec<&StoredContact> = if let Some(after) = body["searchAfter"].as_array() {
        let ams = after.first().and_then(Value::as_i64).unwrap_or(i64::MIN);
        let aid = after.get(1).and_then(Value::as_str).unwrap_or("");
        if !sorts.is_empty() {
            return Reply::unprocessable(vec!["searchAfter is only supported with the default sort".into()]);
        }
        hits.into_iter().filter(|c| (c.added_ms, id_of(c)) > (ams, aid)).take(limit).collect()
    } else {
        let page = body["page"].as_u64().unwrap_or(1).max(1) as usize;
        let start = (page - 1) * limit;
        if start + limit > MAX_PAGE_RESULTS && start >= MAX_PAGE_RESULTS {
            return Reply::unprocessable(vec!["page * pageLimit cannot exceed 10000; use searchAfter".into()]);
        }
        hits.into_iter().skip(start).take(limit.min(MAX_PAGE_RESULTS - start)).collect()
    };
    let contacts: Vec<Value> = page_hits.iter().map(|c| search_hit(c)).collect();
    Reply::ok(200, json!({"contacts": contacts, "total": total}))
}

/// A search hit: the properties HighLevel's search document lists for one (first and last name
/// only lower-cased, the street as `address`), those the contact has; the lists it cannot hold
/// through the API empty; and its `searchAfter` cursor.
pub(super) fn search_hit(c: &StoredContact) -> Value {
    let mut m = Map::new();
    for (k, from) in [
        ("id", "id"),
        ("locationId", "locationId"),
        ("firstNameLowerCase", "firstNameLowerCase"),
        ("lastNameLowerCase", "lastNameLowerCase"),
        ("email", "email"),
        ("phone", "phone"),
        ("address", "address1"),
        ("city", "city"),
        ("state", "state"),
        ("country", "country"),
        ("postalCode", "postalCode"),
        ("companyName", "companyName"),
        ("businessId", "businessId"),
        ("assignedTo", "assignedTo"),
        ("tags", "tags"),
        ("type", "type"),
        ("source", "source"),
        ("website", "website"),
        ("dnd", "dnd"),
        ("dateOfBirth", "dateOfBirth"),
        ("dateAdded", "dateAdded"),
        ("dateUpdated", "dateUpdated"),
        ("customFields", "customFields"),
    ] {
        if let Some(v) = c.fields.get(from) {
            m.insert(k.into(), v.clone());
        }
    }
    for k in ["followers", "additionalEmails", "additionalPhones"] {
        m.insert(k.into(), json!([]));
    }
    m.insert("searchAfter".into(), json!([c.added_ms, id_of(c)]));
    Value::Object(m)
}

/// An item of the legacy list and of contacts by business: the properties of the OpenAPI's
/// `ContactsSearchSchema`, with `contactName`, `dnd` and `dateUpdated` that real answers carry;
/// those the contact has, and its followers (none through the API).
fn list_item(c: &StoredContact) -> Value {
    let mut m = Map::new();
    for k in [
        "id",
        "locationId",
        "email",
        "timezone",
        "country",
        "source",
        "dateAdded",
        "dateUpdated",
        "customFields",
        "tags",
        "dnd",
        "businessId",
    ] {
        if let Some(v) = c.fields.get(k) {
            m.insert(k.into(), v.clone());
        }
    }
    if let Some(name) = c.fields.get("name") {
        m.insert("contactName".into(), name.clone());
    }
    m.insert("followers".into(), json!([]));
    Value::Object(m)
}

fn sort_key(c: &StoredContact, field: &str) -> String {
    match field {
        "dateAdded" => format!("{:020}", c.added_ms),
        "email" => c.fields.get("emailLowerCase").and_then(Value::as_str).unwrap_or("").to_string(),
        f => c.fields.get(f).map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string())).unwrap_or_default(),
    }
}

fn field_value<'a>(fields: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    if let Some(id) = field.strip_prefix("customFields.") {
        return fields
            .get("customFields")?
            .as_array()?
            .iter()
            .find(|c| c["id"].as_str() == Some(id))
            .map(|c| &c["value"]);
    }
    let key = match field {
        "email" => "emailLowerCase",
        "contactName" => "fullNameLowerCase",
        "businessName" => "companyName",
        f => f,
    };
    fields.get(key).filter(|v| !v.is_null())
}

fn matches(fields: &Map<String, Value>, f: &Value) -> Result<bool, String> {
    if let Some(group) = f.get("group").and_then(Value::as_str) {
        let subs = f["filters"].as_array().cloned().unwrap_or_default();
        let mut results = Vec::new();
        for sf in &subs {
            results.push(matches(fields, sf)?);
        }
        return Ok(if group.eq_ignore_ascii_case("OR") {
            results.iter().any(|r| *r)
        } else {
            results.iter().all(|r| *r)
        });
    }
    let field = f["field"].as_str().ok_or("filters.field must be a string")?;
    let op = f["operator"].as_str().ok_or("filters.operator must be a string")?;
    let want = &f["value"];
    if want.as_str().is_some_and(|v| v.chars().count() > 75) {
        return Err("filter value must be shorter than or equal to 75 characters".into());
    }
    let have = field_value(fields, field);
    let text = |v: &Value| v.as_str().map(str::to_lowercase).unwrap_or_else(|| v.to_string());
    let eq = |have: &Value| -> bool {
        match have {
            Value::Array(items) => items.iter().any(|i| text(i) == text(want)),
            h => text(h) == text(want),
        }
    };
    let contains = |have: &Value| -> bool {
        let w = text(want);
        match have {
            Value::Array(items) => items.iter().any(|i| text(i).contains(&w)),
            h => text(h).contains(&w),
        }
    };
    let present = |v: &Value| !(v.as_array().is_some_and(|a| a.is_empty()) || v == &json!(""));
    Ok(match op {
        "eq" => have.is_some_and(eq),
        "not_eq" => !have.is_some_and(eq),
        "contains" => have.is_some_and(contains),
        "not_contains" => !have.is_some_and(contains),
        "exists" => have.is_some_and(present),
        "not_exists" => !have.is_some_and(present),
        other => return Err(format!("operator {other} is not supported")),
    })
}
