//! A state store that fails chosen calls: the state table refusing a write at the worst moment.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use shared::commands::IdempotencyKey;
use shared::identity::Email;
use shared::state::{Claim, Holder, PersonState, StateError, StateStore};

/// Delegates to `inner`, except that batch writes (`put_values`) and writes of one named value
/// fail as [`FaultyStore::fail_batch_writes`] and [`FaultyStore::fail_writes_of`] say, and that
/// [`FaultyStore::after_next_claim`] runs once a claim is taken (what happens meanwhile). It
/// counts the calls made to it ([`FaultyStore::calls`]).
pub struct FaultyStore {
    pub inner: Arc<dyn StateStore>,
    batch_write_failures: AtomicU32,
    /// Batch writes let through before the failures start.
    batch_writes_before: AtomicU32,
    value: std::sync::Mutex<Option<String>>,
    value_write_failures: AtomicU32,
    value_writes_before: AtomicU32,
    after_claim: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Calls made to the store (each one request to the table; a batch call counts once).
    pub calls: AtomicU64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn StateStore>) -> Self {
        Self {
            inner,
            batch_write_failures: AtomicU32::new(0),
            batch_writes_before: AtomicU32::new(0),
            value: std::sync::Mutex::new(None),
            value_write_failures: AtomicU32::new(0),
            value_writes_before: AtomicU32::new(0),
            after_claim: std::sync::Mutex::new(None),
            calls: AtomicU64::new(0),
        }
    }

    /// Runs `f` once, right after the next claim is taken and before its answer is returned:
    /// a claim answered late, after the world moved on.
    pub fn after_next_claim(&self, f: impl FnOnce() + Send + 'static) {
        *self.after_claim.lock().expect("lock") = Some(Box::new(f));
    }

    /// After `after` more successful writes of the value `name`, the next `count` fail.
    pub fn fail_writes_of(&self, name: &str, after: u32, count: u32) {
        *self.value.lock().expect("lock") = Some(name.to_string());
        self.value_writes_before.store(after, Ordering::SeqCst);
        self.value_write_failures.store(count, Ordering::SeqCst);
    }

    /// After `after` more successful batch writes, the next `count` fail as unavailable.
    pub fn fail_batch_writes(&self, after: u32, count: u32) {
        self.batch_writes_before.store(after, Ordering::SeqCst);
        self.batch_write_failures.store(count, Ordering::SeqCst);
    }
}

fn take(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1)).is_ok()
}

#[async_trait]
impl StateStore for FaultyStore {
    async fn person(&self, email: &Email) -> Result<Option<PersonState>, StateError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.person(email).await
    }
    async fn put_person(&self, email: &Email, p: &PersonState) -> Result<(), StateError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.put_person(email, p).await
    }
    async fn claim(&self, key: &IdempotencyKey, lease: Duration, holder: &Holder) -> Result<Claim, StateError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let claim = self.inner.claim(key, lease, holder).await;
        let hook = self.after_claim.lock().expect("lock").take();
        if let Some(f) = hook {
            f();
        }
        claim
    }
    async fn complete(&self, key: &IdempotencyKey, result: &str) -> Result<(), StateError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.complete(key, result).await
    }
    async fn defer_claim(&self, key: &IdempotencyKey, grace: Duration, holder: &Holder) -> Result<(), StateError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.defer_claim(key, grace, holder).await
    }
    async fn release(&self, key: &IdempotencyKey, holder: &Holder) -> Result<(), StateError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.release(key, holder).await
    }
    async fn renew_claim(&self, key: &IdempotencyKey, lease: Duration, holder: &Holder) -> Result<bool, StateError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.renew_claim(key, lease, holder).await
    }
    async fn is_done(&self, key: &IdempotencyKey) -> Result<bool, StateError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.is_done(key).await
    }
    async fn get_value(&self, name: &str) -> Result<Option<String>, StateError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.get_value(name).await
    }
    async fn put_value(&self, name: &str, value: &str, ttl: Option<Duration>) -> Result<(), StateError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let watched = self.value.lock().expect("lock").as_deref() == Some(name);
        if watched && !take(&self.value_writes_before) && take(&self.value_write_failures) {
            return Err(StateError::Unavailable(format!("injected: writing {name} failed")));
        }
        self.inner.put_value(name, value, ttl).await
    }
    async fn put_value_if_absent(&self, name: &str, value: &str, ttl: Duration) -> Result<bool, StateError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.put_value_if_absent(name, value, ttl).await
    }
    async fn delete_value(&self, name: &str) -> Result<(), StateError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.delete_value(name).await
    }
    async fn swap_value(&self, name: &str, expected: Option<&str>, new: Option<&str>) -> Result<bool, StateError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.swap_value(name, expected, new).await
    }
    async fn get_values(&self, names: &[String]) -> Result<HashMap<String, String>, StateError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.get_values(names).await
    }
    async fn put_values(&self, values: &[(String, String)], ttl: Option<Duration>) -> Result<(), StateError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !take(&self.batch_writes_before) && take(&self.batch_write_failures) {
            return Err(StateError::Unavailable("injected: the batch write failed".into()));
        }
        self.inner.put_values(values, ttl).await
    }
}
