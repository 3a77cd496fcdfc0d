//! The sync state table (DynamoDB, one string partition key `pk`, TTL attribute `expires_at`):
//! - `person#<email>`: the GHL contact id, the hash and tags of the last applied state, and when;
//! - `idem#<key>`: the idempotency ledger: "pending" with a lease, or "done" with the created id;
//! - `kv#<name>`: small named values (task ids by external id, checkpoints, high-water marks,
//!   `kv#ghl-webhook#<webhookId>` for HighLevel deliveries already taken, with a TTL, and
//!   `kv#access#<location>/<contact>` for the SproutVideo login a GHL contact's access went to).
//!
//! Conditional writes make two workers racing on one key safe: exactly one claims it.
//!
//! What expires: only a pending claim ([`PENDING_CLAIM_TTL`], long after any delivery of its
//! message can still arrive) and values written with a TTL (a reconciliation run's scratch
//! data). A done ledger entry is what says "this note, task or rule action exists", so it never
//! expires: a rule whose watch shows up again a year later must still find it. Task records
//! (`kv#task#...`, which `complete_task` needs) and person records never expire either. An
//! expired item counts as absent from the moment it expires, whenever DynamoDB deletes it.
//!
//! Storage cost of keeping done entries: about 200 bytes each (key, status, created id and
//! DynamoDB's 100-byte item overhead), one per note, task, task completion or rule action ever
//! applied. A million of them take about 0.2 GB, a few cents a month at on-demand storage prices
//! ($0.25 per GB-month in us-east-1); reads and writes cost the same as before.
//!
//! [`DynamoStore`] is the table on AWS; [`MemoryStore`] keeps the same rules in process (with a
//! clock tests can move) for tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use thiserror::Error;

use crate::commands::IdempotencyKey;
use crate::identity::Email;

pub mod dynamo;
pub mod memory;

pub use dynamo::{DynamoStore, create_table};
pub use memory::{Clock, ManualClock, MemoryStore, SystemClock};

/// How long a pending claim is kept: its message is long gone (the queue keeps a message at
/// most 14 days, and so does the dead-letter queue) before the claim disappears.
pub const PENDING_CLAIM_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// DynamoDB's largest item (attribute names and values, in bytes).
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// DynamoDB's longest partition key, in bytes.
pub const MAX_KEY_BYTES: usize = 2048;

/// The partition key of a person record.
pub fn person_pk(email: &Email) -> String {
    format!("person#{email}")
}

/// The partition key of a ledger entry.
pub fn ledger_pk(key: &IdempotencyKey) -> String {
    format!("idem#{}", key.as_str())
}

/// The named value recording the SproutVideo login a GHL contact's course access went to
/// (`kv#access#<location>/<contact>`), written by the worker, read by the reconciler.
pub fn access_value_name(location_id: &str, contact_id: &str) -> String {
    format!("access#{location_id}/{contact_id}")
}

/// The partition key of a named value.
pub fn value_pk(name: &str) -> String {
    format!("kv#{name}")
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum StateError {
    #[error("the state table is unavailable: {0}")]
    Unavailable(String),
    #[error("the state table holds an unreadable item {0}")]
    Corrupt(String),
    /// The table refused the request as it is (an item or key too large); retrying cannot help.
    #[error("the state table refused the request: {0}")]
    Rejected(String),
}

impl StateError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// What the sync last applied for one person.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PersonState {
    pub contact_id: String,
    pub state_hash: String,
    pub tags: BTreeSet<String>,
    pub phone: Option<String>,
    pub applied_at: i64,
    /// Each field the sync wrote (`firstName`, `phone`, `cf:contact.plan`, ...): the value and
    /// when the change it came from happened. A field an event does not carry stays as known
    /// here; a change older than the one recorded is not applied.
    pub fields: BTreeMap<String, FieldMark>,
}

/// A field's last applied value and the time of the change it came from (unix milliseconds).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FieldMark {
    pub value: serde_json::Value,
    pub at_ms: i64,
}

/// Who holds a claim: one attempt (a worker's try at a command, a reconciliation run). Only
/// the holder may defer, release or renew it, so a late attempt whose lease lapsed and was
/// taken over cannot free or move the new holder's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder(String);

impl Holder {
    /// A new, unique holder.
    pub fn new() -> Self {
        Self(format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Holder {
    fn default() -> Self {
        Self::new()
    }
}

/// The answer to "may I perform this action now?".
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Nobody tried before: go ahead.
    Fresh,
    /// An earlier attempt did not finish (crashed, or its outcome was unknown): look in GHL
    /// before writing. `attempts` counts this one.
    Retake { attempts: u32 },
    /// Already applied; `result` is what was recorded (e.g. the created note id).
    Done { result: String },
    /// Another worker holds the lease right now.
    Busy,
}

#[async_trait]
pub trait StateStore: Send + Sync {
    async fn person(&self, email: &Email) -> Result<Option<PersonState>, StateError>;
    async fn put_person(&self, email: &Email, p: &PersonState) -> Result<(), StateError>;
    /// Claims `key` for `lease` on behalf of `holder` (see [`Claim`]); a new claim is pending
    /// and expires after [`PENDING_CLAIM_TTL`].
    async fn claim(&self, key: &IdempotencyKey, lease: Duration, holder: &Holder) -> Result<Claim, StateError>;
    /// Records `key` as done with `result`, for good (a done entry never expires).
    async fn complete(&self, key: &IdempotencyKey, result: &str) -> Result<(), StateError>;
    /// The outcome of `holder`'s attempt is unknown: the next attempt may take over after
    /// `grace` (long enough for a request still in flight to have landed), and will look first.
    /// Only the holder's own pending claim moves: once another attempt took it over, nothing.
    async fn defer_claim(&self, key: &IdempotencyKey, grace: Duration, holder: &Holder) -> Result<(), StateError>;
    /// Forgets `holder`'s pending claim when its attempt certainly wrote nothing (a claim
    /// another attempt took over, or a done entry, stays).
    async fn release(&self, key: &IdempotencyKey, holder: &Holder) -> Result<(), StateError>;
    /// Extends `holder`'s pending claim to `lease` from now; `false` when another attempt took
    /// it over, it was completed or it is gone (stop working on it).
    async fn renew_claim(&self, key: &IdempotencyKey, lease: Duration, holder: &Holder) -> Result<bool, StateError>;
    /// Whether an action was applied (read-only; used by the reconciler).
    async fn is_done(&self, key: &IdempotencyKey) -> Result<bool, StateError>;
    async fn get_value(&self, name: &str) -> Result<Option<String>, StateError>;
    /// Stores a named value; with a `ttl` it is gone after that long, without one it stays.
    async fn put_value(&self, name: &str, value: &str, ttl: Option<Duration>) -> Result<(), StateError>;
    /// Stores a named value only when none is stored (an expired one counts as none), with a
    /// `ttl`: `true` when this call stored it, `false` when a live value was there already.
    /// Two callers racing on one name: exactly one gets `true`.
    async fn put_value_if_absent(&self, name: &str, value: &str, ttl: Duration) -> Result<bool, StateError>;
    async fn delete_value(&self, name: &str) -> Result<(), StateError>;
    /// Replaces a named value (without a TTL) only if it still is `expected` (`None`: absent);
    /// `new` `None` deletes it. `true` when this call changed it: of two callers that read the
    /// same value and swap it, exactly one wins.
    async fn swap_value(&self, name: &str, expected: Option<&str>, new: Option<&str>) -> Result<bool, StateError>;
    /// Many named values at once (missing names are left out of the answer).
    async fn get_values(&self, names: &[String]) -> Result<HashMap<String, String>, StateError>;
    /// Many named values at once.
    async fn put_values(&self, values: &[(String, String)], ttl: Option<Duration>) -> Result<(), StateError>;
}
