//! A local HighLevel: the Contacts API v2 surface this project uses, in memory, for many
//! locations, with GHL's status codes, bodies and quirks, a real rate-limit window, fault
//! injection, and admin paths to read its state and request log.
//!
//! Admin paths (no auth, not rate limited, not logged):
//! - `GET /_admin/state`: every location's contacts with their tasks, notes and tags;
//! - `GET /_admin/requests` (`DELETE` clears): method, path, query, status and body of every call;
//! - `PUT /_admin/faults`: replace the fault settings ([`Faults`]);
//! - `PUT /_admin/config`: replace [`GhlBehaviour`] (window, duplicates and matching order,
//!   not-found status, custom-field strictness, search lag);
//! - `PUT /_admin/search-lag` `{"ms": 2000}`: how long a write takes to show in search (0: at once);
//! - `POST /_admin/locations/{id}/custom-fields`: define a custom field `{name, fieldKey, dataType}`;
//! - `POST /_admin/locations/{id}/appointments`: add an appointment `{contactId, title, startTime,
//!   ...}` (any property of the OpenAPI's `GetEventSchema`);
//! - `GET`/`PUT /_admin/webhooks`, `POST /_admin/webhooks/release`: signed webhooks on tag
//!   changes, with drop, duplicate, delay and hold modes (see `webhooks`);
//! - `POST /_admin/reset`: forget everything (the webhook settings and keys stay).
//!
//! The server is split by concern: `routing` (the entry point and the path table), `gate` (auth,
//! the rate window, injected faults, OAuth refresh), `contacts` (contact writes, matching,
//! validation), `records` (tasks and notes), `search` (search, the duplicate lookup and lists),
//! `admin` (the admin paths) and `webhooks` (the webhooks it sends).

mod admin;
mod contacts;
mod gate;
mod records;
mod routing;
mod search;
mod webhooks;

pub use webhooks::{DeliveryRecord, Signing, WebhookSettings};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

use admin::{add_appointment, add_custom_field, state_json};
use contacts::{insert_new, refresh_derived};
use routing::handle;
use search::{after_write, before_write};

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
    /// The location's "Allow Duplicate Contact" setting. Off (the default): a create that
    /// matches an existing contact answers 400 with its id, and the duplicate lookup uses the
    /// location's unique identifiers in `match_order`. On: creates never answer that 400, an
    /// upsert with `createNewIfDuplicateAllowed: true` always creates, and the duplicate lookup
    /// tries email first, then phone (as the OpenAPI documents it).
    pub allow_duplicates: bool,
    /// The identifiers an upsert matches an existing contact on, in the location's priority
    /// order. The OpenAPI (upsert description): the contact the first identifier matches is
    /// updated, and a later identifier that belongs to another contact is ignored without an
    /// error. The order is a location setting; email then phone is the order the duplicate
    /// lookup documents, and the default here. Which order "off" uses is UNCONFIRMED.
    pub match_order: Vec<MatchField>,
    /// When an upsert matches a contact by a later identifier (the phone) and the earlier one
    /// (the email) belongs to no contact, whether that email is written onto the matched
    /// contact, replacing its own. UNCONFIRMED: the default (true) follows the documented rule
    /// literally (the matched contact is updated with the body; only an identifier held by
    /// another contact is ignored).
    pub upsert_overwrites_identifiers: bool,
    /// What the duplicate lookup answers when nothing matches. UNCONFIRMED; the default is
    /// `{"contact": null}`.
    pub duplicate_miss: DuplicateMiss,
    /// Custom-field items on writes take their value only as `field_value`, as the OpenAPI's
    /// `customFieldsInput*Schema` say (the default); other properties get 422. Third-party
    /// reports say `fieldValue` and `value` also work (UNCONFIRMED): `false` accepts them.
    pub strict_custom_field_values: bool,
    /// Status for an unknown contact/task/note id (GHL answers 400; UNCONFIRMED).
    pub not_found_status: u16,
    /// Answer 401 when the `Version` header is missing.
    pub require_version: bool,
    /// Reject fractional seconds in task `dueDate`.
    pub strict_due_dates: bool,
    /// How long a contact write takes to show in `POST /contacts/search`, in milliseconds (0, the
    /// default: at once; a change applies to writes already made). HighLevel's search index is
    /// eventually consistent: a write can take a few seconds to show there, and only there (read
    /// a write back by id). Until then search answers the contact as it was before (a new contact
    /// not at all; a deleted one still).
    /// Reads by id, the duplicate lookup, contacts by business and the deprecated list, which no
    /// document describes as lagging, read the contact as written.
    pub search_lag_ms: u64,
    /// What a token may do: the one location it belongs to and its scopes. A token without an
    /// entry may do anything. A request naming another location answers 403 "The token does
    /// not have access to this location."; one needing a scope the token lacks answers 401 "The
    /// token is not authorized for this scope." (messages as the reference records them).
    pub token_grants: BTreeMap<String, TokenGrant>,
}

/// The location and scopes a token was issued for (see [`GhlBehaviour::token_grants`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenGrant {
    pub location_id: Option<String>,
    /// None: every scope.
    pub scopes: Option<Vec<String>>,
}

impl Default for GhlBehaviour {
    fn default() -> Self {
        Self {
            valid_tokens: Vec::new(),
            burst_max: 100,
            burst_interval_ms: 10_000,
            daily_max: 200_000,
            allow_duplicates: false,
            match_order: vec![MatchField::Email, MatchField::Phone],
            upsert_overwrites_identifiers: true,
            duplicate_miss: DuplicateMiss::Null,
            strict_custom_field_values: true,
            not_found_status: 400,
            require_version: true,
            strict_due_dates: false,
            search_lag_ms: 0,
            token_grants: BTreeMap::new(),
        }
    }
}

/// An identifier GHL matches contacts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchField {
    Email,
    Phone,
}

impl MatchField {
    /// The body property that carries it (`email`, `phone`).
    pub fn property(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
        }
    }
}

/// The duplicate lookup's answer when nothing matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateMiss {
    /// `{"contact": null}`
    Null,
    /// `{}` (no `contact` property)
    Omitted,
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FaultKind {
    Status {
        status: u16,
    },
    RateLimit {
        retry_after_secs: Option<u64>,
    },
    WriteThenFail,
    /// Applies the write and answers its 2xx status with a body cut off mid-JSON (writes only).
    WriteThenGarbage,
    /// Applies the request, then sends its answer's headers and half its body and ends the
    /// connection (any method).
    CutOff,
    Drop,
    Delay {
        ms: u64,
    },
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
    /// When the request arrived and was counted in the rate window (unix ms).
    #[serde(default)]
    pub at_ms: i64,
}

#[derive(Debug, Default)]
struct Location {
    contacts: BTreeMap<String, StoredContact>,
    custom_fields: Vec<Value>,
    /// Deleted contacts, with when they were deleted: search shows them until the lag has passed.
    deleted_in_search: Vec<(Instant, StoredContact)>,
}

#[derive(Debug, Clone)]
struct StoredContact {
    fields: Map<String, Value>,
    tasks: Vec<Map<String, Value>>,
    notes: Vec<Map<String, Value>>,
    appointments: Vec<Map<String, Value>>,
    added_ms: i64,
    search: SearchView,
}

/// What search shows of a contact.
#[derive(Debug, Clone, Default)]
enum SearchView {
    /// The contact as written (no lag).
    #[default]
    Current,
    /// Versions written while search lagged: `shown` (none before the first version shows), and
    /// later versions with when each was written; each shows once the lag (as it is when search
    /// is asked) has passed since.
    Lagging { shown: Option<Map<String, Value>>, due: VecDeque<(Instant, Map<String, Value>)> },
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
    webhooks: WebhookSettings,
    webhook_signer: Option<crate::ghl_signer::GhlSigner>,
    /// Each contact's tags as the last webhook (or the webhook set-up) saw them.
    last_tags: HashMap<String, Vec<String>>,
    held_webhooks: Vec<webhooks::Delivery>,
    webhook_log: Vec<DeliveryRecord>,
}

impl Store {
    fn search_lag(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.behaviour.search_lag_ms)
    }
}

/// A handle on a running local GHL.
#[derive(Clone)]
pub struct LocalGhl {
    store: Arc<Mutex<Store>>,
    http: reqwest::Client,
}

impl LocalGhl {
    pub fn new(behaviour: GhlBehaviour) -> Self {
        Self { store: Arc::new(Mutex::new(Store { behaviour, ..Default::default() })), http: reqwest::Client::new() }
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

    /// Adds an appointment `{contactId, title, startTime, ...}` (any property of the OpenAPI's
    /// `GetEventSchema`) to a contact of `location`; returns its id.
    pub async fn add_appointment(&self, location: &str, fields: Value) -> Result<String, String> {
        let mut s = self.store.lock().await;
        add_appointment(&mut s, location, &fields)
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
        let lag = s.search_lag();
        let c = s.locations.get_mut(&loc).and_then(|l| l.contacts.get_mut(id)).expect("owner index");
        if let Value::Object(m) = fields {
            before_write(c, lag);
            for (k, v) in m {
                c.fields.insert(k, v);
            }
            refresh_derived(&mut c.fields);
            after_write(c, lag);
        }
        true
    }

    /// Sets how long a contact write takes to show in search (see
    /// [`GhlBehaviour::search_lag_ms`]).
    pub async fn set_search_lag(&self, lag: std::time::Duration) {
        self.store.lock().await.behaviour.search_lag_ms = lag.as_millis().min(u64::MAX as u128) as u64;
    }
}

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
    /// Answer with the body cut off (see [`FaultKind::WriteThenGarbage`]).
    garbled: bool,
}

impl Reply {
    fn ok(status: u16, body: Value) -> Self {
        Self { status: StatusCode::from_u16(status).expect("valid status"), body, retry_after: None, garbled: false }
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

#[cfg(test)]
mod tests;
