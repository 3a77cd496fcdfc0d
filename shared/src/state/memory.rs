//! The state table in process, for tests: the same items, leases, expiry and size limits as
//! [`super::DynamoStore`], on a [`Clock`] a test can move ("forty days later").

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    Claim, Holder, MAX_ITEM_BYTES, MAX_KEY_BYTES, PENDING_CLAIM_TTL, PersonState, StateError, StateStore, ledger_pk,
    person_pk, value_pk,
};
use crate::commands::IdempotencyKey;
use crate::identity::Email;

/// The time as the in-memory store and queue see it.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis()
    }
}

/// A clock that moves only when told to. Clones share one time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn at(t: DateTime<Utc>) -> Self {
        Self(Arc::new(AtomicI64::new(t.timestamp_millis())))
    }

    /// Starts at the current time.
    pub fn starting_now() -> Self {
        Self::at(Utc::now())
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    pub fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.now_ms()).expect("the clock stays in range")
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone)]
enum Entry {
    Person(PersonState),
    Pending { lease_until_ms: i64, attempts: u32, holder: String },
    Done { result: String },
    Value(String),
    Budget { state: crate::budget::WindowState, ver: u64 },
}

#[derive(Debug, Clone)]
struct Item {
    entry: Entry,
    /// Unix seconds after which the item is gone (DynamoDB's TTL attribute).
    expires_at: Option<i64>,
}

/// The state table in memory.
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    items: Mutex<HashMap<String, Item>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Roughly what DynamoDB counts for an item: attribute names and values in bytes.
fn item_bytes(parts: &[(&str, usize)]) -> usize {
    parts.iter().map(|(name, value)| name.len() + value).sum()
}

/// DynamoDB's size rules for a write.
fn check_write(pk: &str, bytes: usize) -> Result<(), StateError> {
    if pk.len() > MAX_KEY_BYTES {
        return Err(StateError::Rejected(format!(
            "the key is {} bytes; DynamoDB takes at most {MAX_KEY_BYTES}",
            pk.len()
        )));
    }
    if bytes > MAX_ITEM_BYTES {
        return Err(StateError::Rejected(format!(
            "the item is about {bytes} bytes; DynamoDB takes at most {MAX_ITEM_BYTES}"
        )));
    }
    Ok(())
}

fn check_read(pk: &str) -> Result<(), StateError> {
    check_write(pk, 0)
}

const EXPIRES_BYTES: (&str, usize) = ("expires_at", 10);

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self { clock, items: Mutex::new(HashMap::new()) }
    }

    fn items(&self) -> MutexGuard<'_, HashMap<String, Item>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_secs(&self) -> i64 {
        self.clock.now_ms().div_euclid(1000)
    }

    fn expiry(&self, ttl: Duration) -> i64 {
        self.now_secs() + ttl.as_secs() as i64
    }

    /// The live entry under `pk` (an expired one is dropped).
    fn live(&self, items: &mut HashMap<String, Item>, pk: &str) -> Option<Entry> {
        let now = self.now_secs();
        match items.get(pk) {
            Some(item) if item.expires_at.is_some_and(|at| at <= now) => {
                items.remove(pk);
                None
            }
            Some(item) => Some(item.entry.clone()),
            None => None,
        }
    }

    /// Whether the item under `pk` would expire some day (for tests of what is kept for good).
    pub fn expires(&self, pk: &str) -> Option<bool> {
        self.items().get(pk).map(|i| i.expires_at.is_some())
    }

    fn value_item(&self, name: &str, value: &str, ttl: Option<Duration>) -> Result<(String, Item), StateError> {
        let pk = value_pk(name);
        let mut parts = vec![("pk", pk.len()), ("value", value.len())];
        if ttl.is_some() {
            parts.push(EXPIRES_BYTES);
        }
        check_write(&pk, item_bytes(&parts))?;
        Ok((pk, Item { entry: Entry::Value(value.to_string()), expires_at: ttl.map(|t| self.expiry(t)) }))
    }
}

fn corrupt(pk: &str) -> StateError {
    StateError::Corrupt(pk.to_string())
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn person(&self, email: &Email) -> Result<Option<PersonState>, StateError> {
        let pk = person_pk(email);
        check_read(&pk)?;
        match self.live(&mut self.items(), &pk) {
            None => Ok(None),
            Some(Entry::Person(p)) => Ok(Some(p)),
            Some(_) => Err(corrupt(&pk)),
        }
    }

    async fn put_person(&self, email: &Email, p: &PersonState) -> Result<(), StateError> {
        let pk = person_pk(email);
        let tags: usize = p.tags.iter().map(|t| t.len() + 3).sum();
        check_write(
            &pk,
            item_bytes(&[
                ("pk", pk.len()),
                ("contact_id", p.contact_id.len()),
                ("state_hash", p.state_hash.len()),
                ("tags", tags + 3),
                ("applied_at", 21),
                ("phone", p.phone.as_ref().map_or(0, String::len)),
                (
                    "fields",
                    if p.fields.is_empty() { 0 } else { serde_json::to_string(&p.fields).map_or(0, |f| f.len()) },
                ),
            ]),
        )?;
        self.items().insert(pk, Item { entry: Entry::Person(p.clone()), expires_at: None });
        Ok(())
    }

    async fn claim(&self, key: &IdempotencyKey, lease: Duration, holder: &Holder) -> Result<Claim, StateError> {
        let pk = ledger_pk(key);
        let now_ms = self.clock.now_ms();
        let lease_until_ms = now_ms + lease.as_millis() as i64;
        let expires_at = Some(self.expiry(PENDING_CLAIM_TTL));
        let mut items = self.items();
        let (claim, attempts) = match self.live(&mut items, &pk) {
            None => (Claim::Fresh, 1),
            Some(Entry::Done { result }) => return Ok(Claim::Done { result }),
            Some(Entry::Pending { lease_until_ms: held, .. }) if held > now_ms => return Ok(Claim::Busy),
            Some(Entry::Pending { attempts, .. }) => (Claim::Retake { attempts: attempts + 1 }, attempts + 1),
            Some(_) => return Err(corrupt(&pk)),
        };
        let holder = holder.as_str().to_string();
        items.insert(pk, Item { entry: Entry::Pending { lease_until_ms, attempts, holder }, expires_at });
        Ok(claim)
    }

    async fn complete(&self, key: &IdempotencyKey, result: &str) -> Result<(), StateError> {
        let pk = ledger_pk(key);
        check_write(&pk, item_bytes(&[("pk", pk.len()), ("status", 4), ("result", result.len()), ("attempts", 2)]))?;
        self.items().insert(pk, Item { entry: Entry::Done { result: result.to_string() }, expires_at: None });
        Ok(())
    }

    async fn defer_claim(&self, key: &IdempotencyKey, grace: Duration, holder: &Holder) -> Result<(), StateError> {
        let pk = ledger_pk(key);
        let until = self.clock.now_ms() + grace.as_millis() as i64;
        let mut items = self.items();
        // Only the holder's live pending claim moves (the lookup drops an expired one).
        if self.live(&mut items, &pk).is_some()
            && let Some(Item { entry: Entry::Pending { lease_until_ms, holder: h, .. }, .. }) = items.get_mut(&pk)
            && h == holder.as_str()
        {
            *lease_until_ms = until;
        }
        Ok(())
    }

    async fn release(&self, key: &IdempotencyKey, holder: &Holder) -> Result<(), StateError> {
        let pk = ledger_pk(key);
        let mut items = self.items();
        if let Some(Entry::Pending { holder: h, .. }) = self.live(&mut items, &pk)
            && h == holder.as_str()
        {
            items.remove(&pk);
        }
        Ok(())
    }

    async fn renew_claim(&self, key: &IdempotencyKey, lease: Duration, holder: &Holder) -> Result<bool, StateError> {
        let pk = ledger_pk(key);
        let now = self.clock.now_ms();
        let expires_at = Some(self.expiry(PENDING_CLAIM_TTL.max(lease)));
        let mut items = self.items();
        if self.live(&mut items, &pk).is_some()
            && let Some(item) = items.get_mut(&pk)
            && let Entry::Pending { lease_until_ms, holder: h, .. } = &mut item.entry
            && h == holder.as_str()
        {
            *lease_until_ms = now + lease.as_millis() as i64;
            item.expires_at = expires_at;
            return Ok(true);
        }
        Ok(false)
    }

    async fn is_done(&self, key: &IdempotencyKey) -> Result<bool, StateError> {
        let pk = ledger_pk(key);
        Ok(matches!(self.live(&mut self.items(), &pk), Some(Entry::Done { .. })))
    }

    async fn get_value(&self, name: &str) -> Result<Option<String>, StateError> {
        let pk = value_pk(name);
        check_read(&pk)?;
        match self.live(&mut self.items(), &pk) {
            None => Ok(None),
            Some(Entry::Value(v)) => Ok(Some(v)),
            Some(_) => Err(corrupt(&pk)),
        }
    }

    async fn put_value(&self, name: &str, value: &str, ttl: Option<Duration>) -> Result<(), StateError> {
        let (pk, item) = self.value_item(name, value, ttl)?;
        self.items().insert(pk, item);
        Ok(())
    }

    async fn put_value_if_absent(&self, name: &str, value: &str, ttl: Duration) -> Result<bool, StateError> {
        let (pk, item) = self.value_item(name, value, Some(ttl))?;
        let mut items = self.items();
        if self.live(&mut items, &pk).is_some() {
            return Ok(false);
        }
        items.insert(pk, item);
        Ok(true)
    }

    async fn delete_value(&self, name: &str) -> Result<(), StateError> {
        self.items().remove(&value_pk(name));
        Ok(())
    }

    async fn swap_value(&self, name: &str, expected: Option<&str>, new: Option<&str>) -> Result<bool, StateError> {
        let pk = value_pk(name);
        let fresh = match new {
            Some(v) => Some(self.value_item(name, v, None)?.1),
            None => None,
        };
        let mut items = self.items();
        let current = match self.live(&mut items, &pk) {
            Some(Entry::Value(v)) => Some(v),
            Some(_) => return Err(StateError::Corrupt(pk)),
            None => None,
        };
        if current.as_deref() != expected {
            return Ok(false);
        }
        match fresh {
            Some(item) => items.insert(pk, item),
            None => items.remove(&pk),
        };
        Ok(true)
    }

    async fn get_values(&self, names: &[String]) -> Result<HashMap<String, String>, StateError> {
        let mut items = self.items();
        let mut out = HashMap::new();
        for name in names {
            let pk = value_pk(name);
            check_read(&pk)?;
            if let Some(Entry::Value(v)) = self.live(&mut items, &pk) {
                out.insert(name.clone(), v);
            }
        }
        Ok(out)
    }

    async fn put_values(&self, values: &[(String, String)], ttl: Option<Duration>) -> Result<(), StateError> {
        // As on DynamoDB: 25 items per call, and a call with an item the table cannot take is
        // refused as a whole (the calls before it stay written).
        for chunk in values.chunks(25) {
            let items: Vec<(String, Item)> =
                chunk.iter().map(|(k, v)| self.value_item(k, v, ttl)).collect::<Result<_, _>>()?;
            self.items().extend(items);
        }
        Ok(())
    }
}

#[async_trait]
impl crate::budget::BudgetStore for MemoryStore {
    async fn load_budget(&self, location: &str) -> Result<Option<(crate::budget::WindowState, u64)>, StateError> {
        let pk = crate::budget::budget_pk(location);
        check_read(&pk)?;
        match self.live(&mut self.items(), &pk) {
            None => Ok(None),
            Some(Entry::Budget { state, ver }) => Ok(Some((state, ver))),
            Some(_) => Err(corrupt(&pk)),
        }
    }

    async fn swap_budget(
        &self,
        location: &str,
        expected: Option<u64>,
        state: &crate::budget::WindowState,
    ) -> Result<bool, StateError> {
        let pk = crate::budget::budget_pk(location);
        let text = serde_json::to_string(state).map_err(|e| StateError::Rejected(e.to_string()))?;
        check_write(&pk, item_bytes(&[("pk", pk.len()), ("state", text.len()), ("ver", 8), EXPIRES_BYTES]))?;
        let mut items = self.items();
        let current = match self.live(&mut items, &pk) {
            None => None,
            Some(Entry::Budget { ver, .. }) => Some(ver),
            Some(_) => return Err(corrupt(&pk)),
        };
        if current != expected {
            return Ok(false);
        }
        let ver = expected.map_or(1, |v| v + 1);
        let expires_at = Some(self.expiry(crate::budget::BUDGET_TTL));
        items.insert(pk, Item { entry: Entry::Budget { state: state.clone(), ver }, expires_at });
        Ok(true)
    }
}
