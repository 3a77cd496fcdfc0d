//! A local HighLevel: the Contacts API v2 surface this project uses, in memory, for many
//! locations, with GHL's status codes, bodies and quirks, a real rate-limit window, fault
//! injection, and admin paths to read its state and request log.
//!
//! Admin paths (no auth, not rate limited, not logged):
//! - `GET /_admin/state`: every location's contacts with their tasks, notes and tags;
//! - `GET /_admin/requests` (`DELETE` clears): method, path, query, status and body of every call;
//! - `PUT /_admin/faults`: replace the fault settings ([`Faults`]);
//! - `PUT /_admin/config`: replace [`GhlBehaviour`] (window, duplicates, not-found status);
//! - `POST /_admin/locations/{id}/custom-fields`: define a custom field `{name, fieldKey, dataType}`;
//! - `POST /_admin/locations/{id}/appointments`: add an appointment `{contactId, title, startTime}`;
//! - `POST /_admin/reset`: forget everything.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// How the local GHL behaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GhlBehaviour {
    /// Tokens accepted; empty means any bearer token.
    pub valid_tokens: Vec<String>,
    /// Requests per window per token, and the window.
    pub burst_max: u32,
    pub burst_interval_ms: u64,
    pub daily_max: u64,
    /// Whether locations allow duplicate contacts (create then never answers the duplicate 400).
    pub allow_duplicates: bool,
    /// Status for an unknown contact/task/note id (GHL answers 400; UNCONFIRMED).
    pub not_found_status: u16,
    /// Answer 401 when the `Version` header is missing.
    pub require_version: bool,
    /// Reject fractional seconds in task `dueDate`.
    pub strict_due_dates: bool,
}

impl Default for GhlBehaviour {
    fn default() -> Self {
        Self {
            valid_tokens: Vec::new(),
            burst_max: 100,
            burst_interval_ms: 10_000,
            daily_max: 200_000,
            allow_duplicates: false,
            not_found_status: 400,
            require_version: true,
            strict_due_dates: false,
        }
    }
}

/// Injected faults: rates are probabilities per request (0.0–1.0); `script` is consumed first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    pub error_rate: f64,
    pub rate_limit_rate: f64,
    /// `Retry-After` seconds sent with injected 429s; none means the header is left out.
    pub retry_after_secs: Option<u64>,
    pub latency_ms: u64,
    pub drop_rate: f64,
    /// Applies the write, then answers 500 (writes only).
    pub write_then_fail_rate: f64,
    /// Share of requests answered only after `slow_ms` (the write still lands), to go past a
    /// client's timeout.
    pub slow_rate: f64,
    pub slow_ms: u64,
    pub script: VecDeque<ScriptedFault>,
}

/// One fault for the next request that matches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScriptedFault {
    pub kind: FaultKind,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path_contains: Option<String>,
}

/// `CutOff` applies the request, then sends its answer's headers and half its body and ends the
/// connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FaultKind {
    Status { status: u16 },
    RateLimit { retry_after_secs: Option<u64> },
    WriteThenFail,
    Drop,
    Delay { ms: u64 },
    CutOff,
}

/// One logged API call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    /// 0 when the connection was dropped.
    pub status: u16,
    pub body: Value,
    /// What the local GHL answered (null when dropped).
    pub response: Value,
}

#[derive(Debug, Default)]
struct Location {
    contacts: BTreeMap<String, StoredContact>,
    custom_fields: Vec<Value>,
}

#[derive(Debug, Clone)]
struct StoredContact {
    fields: Map<String, Value>,
    tasks: Vec<Map<String, Value>>,
    notes: Vec<Map<String, Value>>,
    appointments: Vec<Map<String, Value>>,
    added_ms: i64,
}

#[derive(Debug, Default)]
struct Store {
    behaviour: GhlBehaviour,
    faults: Faults,
    locations: BTreeMap<String, Location>,
    owner: HashMap<String, String>,
    log: Vec<LoggedRequest>,
    windows: HashMap<String, VecDeque<Instant>>,
    daily: HashMap<String, u64>,
    /// Refresh tokens that are spent (GHL rotates them on every refresh).
    spent_refresh_tokens: Vec<String>,
    oauth_refreshes: u64,
}

/// A handle on a running local GHL.
#[derive(Clone)]
pub struct LocalGhl {
    store: Arc<Mutex<Store>>,
}

impl LocalGhl {
    pub fn new(behaviour: GhlBehaviour) -> Self {
        Self { store: Arc::new(Mutex::new(Store { behaviour, ..Default::default() })) }
    }

    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    /// Serves on `addr` (port 0 picks one) in the background; returns the bound address.
    pub async fn spawn(&self, addr: &str) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let app = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(bound)
    }

    pub async fn set_faults(&self, f: Faults) {
        self.store.lock().await.faults = f;
    }

    pub async fn push_fault(&self, f: ScriptedFault) {
        self.store.lock().await.faults.script.push_back(f);
    }

    pub async fn set_behaviour(&self, b: GhlBehaviour) {
        self.store.lock().await.behaviour = b;
    }

    pub async fn requests(&self) -> Vec<LoggedRequest> {
        self.store.lock().await.log.clone()
    }

    pub async fn clear_requests(&self) {
        self.store.lock().await.log.clear();
    }

    pub async fn state(&self) -> Value {
        state_json(&*self.store.lock().await)
    }

    /// Adds a custom-field definition and returns its id.
    pub async fn define_custom_field(&self, location: &str, name: &str, field_key: &str, data_type: &str) -> String {
        let mut s = self.store.lock().await;
        add_custom_field(&mut s, location, name, field_key, data_type)
    }

    /// Stores a contact directly (for seeding large states quickly); returns its id.
    pub async fn insert_contact(&self, location: &str, fields: Value) -> String {
        let mut s = self.store.lock().await;
        match insert_new(&mut s, location, &fields) {
            Ok(f) => f["id"].as_str().unwrap_or_default().to_string(),
            Err(r) => panic!("seed contact refused: {}", r.body),
        }
    }

    /// How many OAuth refreshes were served.
    pub async fn oauth_refreshes(&self) -> u64 {
        self.store.lock().await.oauth_refreshes
    }

    /// Changes a stored contact directly (for drift tests): merges `fields`.
    pub async fn edit_contact(&self, id: &str, fields: Value) -> bool {
        let mut s = self.store.lock().await;
        let Some(loc) = s.owner.get(id).cloned() else {
            return false;
        };
        let c = s.locations.get_mut(&loc).and_then(|l| l.contacts.get_mut(id)).expect("owner index");
        if let Value::Object(m) = fields {
            for (k, v) in m {
                c.fields.insert(k, v);
            }
            refresh_derived(&mut c.fields);
        }
        true
    }
}

fn add_custom_field(s: &mut Store, location: &str, name: &str, field_key: &str, data_type: &str) -> String {
    let id = new_id();
    s.locations.entry(location.to_string()).or_default().custom_fields.push(json!({
        "id": id, "name": name, "fieldKey": field_key, "dataType": data_type,
        "placeholder": "", "position": 0, "picklistOptions": [], "isAllowedCustomOption": false,
        "isMultiFileAllowed": false, "maxFileLimit": 0, "locationId": location, "model": "contact",
    }));
    id
}

fn state_json(s: &Store) -> Value {
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

// ---- request handling ---------------------------------------------------------------------

const ID_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A 20-character Firestore-style id.
pub fn new_id() -> String {
    (0..20).map(|_| ID_CHARS[fastrand::usize(..ID_CHARS.len())] as char).collect()
}

fn now_iso() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn trace_id() -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..0x1000),
        fastrand::u16(..),
        fastrand::u64(..1 << 48)
    )
}

struct Reply {
    status: StatusCode,
    body: Value,
    retry_after: Option<u64>,
}

impl Reply {
    fn ok(status: u16, body: Value) -> Self {
        Self { status: StatusCode::from_u16(status).expect("valid status"), body, retry_after: None }
    }
    fn err(status: u16, message: impl Into<String>) -> Self {
        let message = message.into();
        let body = match status {
            401 => json!({"statusCode": 401, "message": message, "error": "Unauthorized"}),
            422 => {
                json!({"statusCode": 422, "message": [message], "error": "Unprocessable Entity"})
            }
            _ => json!({"statusCode": status, "message": message}),
        };
        Self::ok(status, body)
    }
    fn unprocessable(messages: Vec<String>) -> Self {
        Self::ok(422, json!({"statusCode": 422, "message": messages, "error": "Unprocessable Entity"}))
    }
}

async fn handle(State(ghl): State<LocalGhl>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
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
    let (pre, delay, fault) = {
        let mut s = ghl.store.lock().await;
        let fault = take_fault(&mut s.faults, &method, &path);
        let mut delay = Duration::from_millis(s.faults.latency_ms);
        if s.faults.slow_rate > 0.0 && fastrand::f64() < s.faults.slow_rate {
            delay += Duration::from_millis(s.faults.slow_ms);
        }
        if let Some(FaultKind::Delay { ms }) = &fault {
            delay += Duration::from_millis(*ms);
        }
        let pre = gatekeep(&mut s, token.as_deref(), &headers, &fault);
        (pre, delay, fault)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
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
                });
                drop(s);
                // Ends the connection without an answer (no panic message is printed).
                std::panic::resume_unwind(Box::new("local GHL drops this connection"));
            }
            let mut s = ghl.store.lock().await;
            let mut reply = route(&mut s, &method, &path, &query, &parsed_body, &body);
            if fault == Some(FaultKind::WriteThenFail) && method != Method::GET && reply.status.is_success() {
                reply = Reply::err(500, "Internal server error");
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
    {
        let mut s = ghl.store.lock().await;
        s.log.push(LoggedRequest {
            method: method.to_string(),
            path,
            query,
            status: reply.status.as_u16(),
            body: parsed_body,
            response: body.clone(),
        });
    }
    let cut_off = (fault == Some(FaultKind::CutOff)).then(|| serde_json::to_vec(&body).expect("JSON body"));
    let mut resp = (reply.status, axum::Json(body)).into_response();
    if let Some(bytes) = cut_off {
        let half = Bytes::copy_from_slice(&bytes[..bytes.len() / 2]);
        let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "local GHL cuts this answer off");
        *resp.body_mut() = axum::body::Body::from_stream(futures::stream::iter([Ok(half), Err(cut)]));
    }
    let h = resp.headers_mut();
    for (k, v) in limits {
        h.insert(k, HeaderValue::from_str(&v).expect("header value"));
    }
    if let Some(ra) = reply.retry_after {
        h.insert("retry-after", HeaderValue::from(ra));
    }
    resp
}

type Limits = Vec<(&'static str, String)>;

fn take_fault(f: &mut Faults, method: &Method, path: &str) -> Option<FaultKind> {
    if let Some(pos) = f.script.iter().position(|sf| {
        sf.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
            && sf.path_contains.as_deref().is_none_or(|p| path.contains(p))
    }) {
        return f.script.remove(pos).map(|sf| sf.kind);
    }
    let roll = |p: f64| p > 0.0 && fastrand::f64() < p;
    if roll(f.drop_rate) {
        Some(FaultKind::Drop)
    } else if roll(f.rate_limit_rate) {
        Some(FaultKind::RateLimit { retry_after_secs: f.retry_after_secs })
    } else if roll(f.error_rate) {
        Some(FaultKind::Status { status: 500 })
    } else if *method != Method::GET && roll(f.write_then_fail_rate) {
        Some(FaultKind::WriteThenFail)
    } else {
        None
    }
}

/// Auth, version header, the rate window and status faults. Ok carries the rate headers.
fn gatekeep(
    s: &mut Store,
    token: Option<&str>,
    headers: &HeaderMap,
    fault: &Option<FaultKind>,
) -> Result<Limits, (Reply, Limits)> {
    let b = s.behaviour.clone();
    let key = token.unwrap_or("").to_string();
    let now = Instant::now();
    let interval = Duration::from_millis(b.burst_interval_ms.max(1));
    let window = s.windows.entry(key.clone()).or_default();
    while window.front().is_some_and(|t| now.duration_since(*t) >= interval) {
        window.pop_front();
    }
    let over = window.len() as u32 >= b.burst_max;
    if !over {
        window.push_back(now);
    }
    let used = window.len() as u32;
    let daily = s.daily.entry(key).or_default();
    let daily_spent = *daily >= b.daily_max;
    if !over && !daily_spent {
        *daily += 1;
    }
    let limits: Limits = vec![
        ("x-ratelimit-limit-daily", b.daily_max.to_string()),
        ("x-ratelimit-daily-remaining", b.daily_max.saturating_sub(*daily).to_string()),
        ("x-ratelimit-interval-milliseconds", b.burst_interval_ms.to_string()),
        ("x-ratelimit-max", b.burst_max.to_string()),
        ("x-ratelimit-remaining", b.burst_max.saturating_sub(used).to_string()),
    ];
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err((Reply::err(401, "Invalid JWT"), limits));
    };
    if !b.valid_tokens.is_empty() && !b.valid_tokens.iter().any(|t| t == token) {
        return Err((Reply::err(401, "Invalid JWT"), limits));
    }
    if b.require_version && headers.get("version").is_none() {
        return Err((Reply::err(401, "version header was not found."), limits));
    }
    if over || daily_spent {
        let mut r = Reply::ok(429, json!({"statusCode": 429, "message": "Too many requests"}));
        r.retry_after = None;
        return Err((r, limits));
    }
    match fault {
        Some(FaultKind::RateLimit { retry_after_secs }) => {
            let mut r = Reply::ok(429, json!({"statusCode": 429, "message": "Too many requests"}));
            r.retry_after = *retry_after_secs;
            Err((r, limits))
        }
        Some(FaultKind::Status { status }) => Err((Reply::err(*status, "Injected failure"), limits)),
        _ => Ok(limits),
    }
}

async fn admin(ghl: &LocalGhl, method: &Method, rest: &str, body: &[u8]) -> Response {
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
        ("POST", ["reset"]) => {
            let behaviour = s.behaviour.clone();
            *s = Store { behaviour, ..Default::default() };
            StatusCode::NO_CONTENT.into_response()
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
            let Some(cid) = v["contactId"].as_str() else {
                return bad("contactId is required".into());
            };
            let Some(c) = s.locations.get_mut(*loc).and_then(|l| l.contacts.get_mut(cid)) else {
                return bad("no such contact".into());
            };
            let id = new_id();
            let mut a = Map::new();
            a.insert("id".into(), json!(id));
            a.insert("calendarId".into(), json!(v["calendarId"].as_str().unwrap_or("cal1")));
            a.insert("title".into(), json!(v["title"].as_str().unwrap_or("Appointment")));
            a.insert("status".into(), json!("booked"));
            a.insert("appointmentStatus".into(), json!("confirmed"));
            a.insert("startTime".into(), json!(v["startTime"].as_str().unwrap_or("2026-12-01 10:00:00")));
            a.insert("endTime".into(), json!(v["endTime"].as_str().unwrap_or("2026-12-01 10:30:00")));
            a.insert("locationId".into(), json!(loc));
            a.insert("contactId".into(), json!(cid));
            a.insert("dateAdded".into(), json!(now_iso()));
            c.appointments.push(a);
            (StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response()
        }
        _ => (StatusCode::NOT_FOUND, axum::Json(json!({"error": "no such admin path"}))).into_response(),
    }
}

/// `POST /oauth/token` with `grant_type=refresh_token`: issues a new access token (accepted from
/// then on) and a new refresh token; the old refresh token is spent.
async fn oauth_token(ghl: &LocalGhl, body: &[u8]) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let mut s = ghl.store.lock().await;
    let bad = |m: &str| {
        (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_grant", "message": m}))).into_response()
    };
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return bad("unsupported grant_type");
    }
    let Some(rt) = form.get("refresh_token").filter(|t| !t.is_empty()) else {
        return bad("refresh_token is required");
    };
    if s.spent_refresh_tokens.contains(rt) {
        return bad("refresh token already used");
    }
    s.spent_refresh_tokens.push(rt.clone());
    s.oauth_refreshes += 1;
    let access = format!("at-{}", new_id());
    let refresh = format!("rt-{}", new_id());
    if !s.behaviour.valid_tokens.is_empty() {
        s.behaviour.valid_tokens.push(access.clone());
    }
    axum::Json(json!({
        "access_token": access, "token_type": "Bearer", "expires_in": 86399, "refresh_token": refresh,
        "scope": "contacts.readonly contacts.write", "userType": "Location", "locationId": "loc",
        "userId": "u1"
    }))
    .into_response()
}

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
const TASK_FIELDS: &[&str] = &["title", "body", "dueDate", "completed", "assignedTo"];
const NOTE_FIELDS: &[&str] = &["userId", "body", "title", "color", "pinned"];

/// 422 with one message per unknown property, as GHL's validation pipe does.
fn reject_unknown(body: &Value, allowed: &[&str], extra: &[&str]) -> Result<(), Reply> {
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

fn not_found(s: &Store, what: &str, id: &str) -> Reply {
    Reply::err(s.behaviour.not_found_status, format!("{what} with id {id} not found"))
}

fn route(s: &mut Store, method: &Method, path: &str, query: &str, body: &Value, raw: &[u8]) -> Reply {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    if matches!(*method, Method::POST | Method::PUT) && !raw.is_empty() && !body.is_object() {
        return Reply::err(400, "Unexpected token in JSON");
    }
    match (method.as_str(), segs.as_slice()) {
        ("POST", ["contacts", ""]) | ("POST", ["contacts"]) => create_contact(s, body),
        ("GET", ["contacts", ""]) | ("GET", ["contacts"]) => list_contacts(s, &q),
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

fn with_contact(s: &mut Store, id: &str, f: impl FnOnce(&mut StoredContact, &str) -> Reply) -> Reply {
    let Some(loc) = s.owner.get(id).cloned() else {
        return not_found(s, "Contact", id);
    };
    let c = s.locations.get_mut(&loc).and_then(|l| l.contacts.get_mut(id)).expect("owner index");
    f(c, &loc)
}

fn location_of(body: &Value) -> Result<String, Reply> {
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

fn refresh_derived(fields: &mut Map<String, Value>) {
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

fn find_match(loc: &Location, email: Option<&str>, phone: Option<&str>) -> Option<(String, &'static str)> {
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

fn insert_new(s: &mut Store, loc_id: &str, body: &Value) -> Result<Map<String, Value>, Reply> {
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

fn create_contact(s: &mut Store, body: &Value) -> Reply {
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

fn upsert_contact(s: &mut Store, body: &Value) -> Reply {
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

fn update_contact(s: &mut Store, id: &str, body: &Value) -> Reply {
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

fn delete_contact(s: &mut Store, id: &str) -> Reply {
    let Some(loc) = s.owner.remove(id) else {
        return not_found(s, "Contact", id);
    };
    s.locations.get_mut(&loc).expect("location").contacts.remove(id);
    Reply::ok(200, json!({"succeded": true}))
}

fn tags(s: &mut Store, id: &str, body: &Value, add: bool) -> Reply {
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

fn valid_due_date(v: &str, strict: bool) -> bool {
    chrono::DateTime::parse_from_rfc3339(v).is_ok() && (!strict || !v.contains('.'))
}

fn create_task(s: &mut Store, id: &str, body: &Value) -> Reply {
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
        t.insert("dateAdded".into(), json!(now_iso()));
        c.tasks.push(t.clone());
        Reply::ok(201, json!({"task": t}))
    })
}

fn create_note(s: &mut Store, id: &str, body: &Value) -> Reply {
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

fn child(s: &mut Store, id: &str, kind: &str, cid: &str, f: impl FnOnce(&Map<String, Value>) -> Reply) -> Reply {
    let what = if kind == "tasks" { "Task" } else { "Note" };
    let nf = not_found(s, what, cid);
    with_contact(s, id, |c, _| match children(c, kind).iter().find(|t| t["id"].as_str() == Some(cid)) {
        Some(t) => f(t),
        None => nf,
    })
}

fn update_child(s: &mut Store, id: &str, kind: &str, cid: &str, body: &Value, allowed: &[&str]) -> Reply {
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

fn delete_child(s: &mut Store, id: &str, kind: &str, cid: &str) -> Reply {
    let what = if kind == "tasks" { "Task" } else { "Note" };
    let nf = not_found(s, what, cid);
    with_contact(s, id, |c, _| {
        let list = children(c, kind);
        let before = list.len();
        list.retain(|t| t["id"].as_str() != Some(cid));
        if list.len() == before { nf } else { Reply::ok(200, json!({"succeded": true})) }
    })
}

fn duplicate(s: &mut Store, q: &HashMap<String, String>) -> Reply {
    let Some(loc_id) = q.get("locationId").filter(|l| !l.is_empty()) else {
        return Reply::unprocessable(vec!["locationId must be a string".into()]);
    };
    let loc = s.locations.entry(loc_id.clone()).or_default();
    match find_match(loc, q.get("email").map(String::as_str), q.get("number").map(String::as_str)) {
        Some((id, _)) => Reply::ok(200, json!({"contact": loc.contacts[&id].fields})),
        None => Reply::ok(200, json!({"contact": null})),
    }
}

fn by_business(s: &mut Store, bid: &str, q: &HashMap<String, String>) -> Reply {
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
        .map(|c| Value::Object(c.fields.clone()))
        .collect();
    let count = all.len();
    let page: Vec<Value> = all.into_iter().skip(skip).take(limit).collect();
    Reply::ok(200, json!({"contacts": page, "count": count}))
}

fn list_contacts(s: &mut Store, q: &HashMap<String, String>) -> Reply {
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
    let page: Vec<&StoredContact> = rest.into_iter().take(limit).collect();
    let meta = match page.last() {
        Some(last) => {
            json!({"total": total, "startAfterId": id_of(last), "startAfter": last.added_ms,
                             "currentPage": null, "nextPage": null, "prevPage": null, "nextPageUrl": null})
        }
        None => json!({"total": total}),
    };
    let contacts: Vec<Value> = page.iter().map(|c| Value::Object(c.fields.clone())).collect();
    Reply::ok(200, json!({"contacts": contacts, "count": total, "meta": meta}))
}

fn id_of(c: &StoredContact) -> &str {
    c.fields.get("id").and_then(Value::as_str).unwrap_or("")
}

// ---- search -------------------------------------------------------------------------------

const SEARCH_KEYS: &[&str] = &["locationId", "pageLimit", "page", "searchAfter", "query", "filters", "sort"];
const MAX_PAGE_RESULTS: usize = 10_000;

fn search(s: &mut Store, body: &Value) -> Reply {
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
    let mut hits: Vec<&StoredContact> = Vec::new();
    for c in s.locations.get(&loc_id).into_iter().flat_map(|l| l.contacts.values()) {
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
    let contacts: Vec<Value> = page_hits
        .iter()
        .map(|c| {
            let mut m = Map::new();
            for k in [
                "id",
                "locationId",
                "firstNameLowerCase",
                "lastNameLowerCase",
                "email",
                "phone",
                "companyName",
                "source",
                "tags",
                "customFields",
                "dateAdded",
                "dateUpdated",
                "type",
                "dnd",
                "assignedTo",
                "timezone",
                "country",
                "businessId",
            ] {
                if let Some(v) = c.fields.get(k) {
                    m.insert(k.into(), v.clone());
                }
            }
            m.insert("followers".into(), json!([]));
            m.insert("searchAfter".into(), json!([c.added_ms, id_of(c)]));
            Value::Object(m)
        })
        .collect();
    Reply::ok(200, json!({"contacts": contacts, "total": total}))
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
