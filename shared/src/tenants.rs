//! Many HighLevel locations in one deployment ("tenants").
//!
//! A tenant pairs one GHL location (its own token) with one SproutVideo account (its own key),
//! its own mapping, webhook token and signing keys. The deployment's own configuration (the
//! environment's `GHL_LOCATION_ID`, `SYNC_SECRET_ID` and mapping) is the tenant `default`, so a
//! single-location setup needs none of this. Every other tenant is a record in the state table,
//! written by `sv-admin` and read by the functions (cached for `TENANT_CACHE_TTL_SECS`), so adding,
//! pausing or removing one needs no redeploy:
//! - `kv#tenant#<id>`: the [`TenantRecord`] (location, secret name, mapping, paused);
//! - `kv#tenants`: the ids, for listing;
//! - `kv#tenant-location#<location>`: which tenant a location belongs to (a location has one).
//!
//! A tenant's own state lives under its key prefix (`t#<id>#`, see [`TenantId::key_prefix`]),
//! its commands in its own FIFO groups (`<id>/...`), its GHL budget under its own location.
//!
//! A paused tenant's commands are not applied: the worker holds each in the state table
//! (`t#<id>#kv#held#<n>`, in arrival order) and takes it off the queue; resuming sends them
//! back in order ([`drain_held`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::time::Instant;

use crate::commands::SyncCommand;
use crate::queue::{CommandQueue, QueueError};
use crate::state::{StateError, StateStore};

/// The name of the deployment's own tenant (its environment's configuration).
pub const DEFAULT_TENANT: &str = "default";

/// Longest tenant id; with the FIFO group's own 34 characters it stays well inside SQS's 128.
pub const TENANT_ID_MAX: usize = 32;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum TenantError {
    #[error(
        "'{0}' is not a valid tenant id: use 1-{TENANT_ID_MAX} characters a-z, 0-9 and '-', starting with a letter or digit"
    )]
    InvalidId(String),
    #[error("no tenant '{0}' is registered (see `sv-admin tenant list`)")]
    Unknown(String),
    #[error("the tenant '{0}' is registered already")]
    Exists(String),
    #[error("the location {location} belongs to the tenant '{tenant}' already")]
    LocationTaken { location: String, tenant: String },
    #[error("the tenant '{tenant}' is set up wrongly: {reason}")]
    Invalid { tenant: String, reason: String },
    #[error("the tenant '{0}' is the deployment's own; change it through the stack's parameters")]
    IsDefault(String),
    #[error(transparent)]
    State(#[from] StateError),
}

impl TenantError {
    /// Whether the same call may succeed later without anyone changing the setup.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::State(e) if e.is_retryable())
    }
}

/// A tenant's id: 1-32 characters `a-z`, `0-9`, `-`, not starting with `-`. It names the
/// tenant's FIFO groups, key prefix, metrics dimension and the first part of its tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, TenantError> {
        let ok = !s.is_empty()
            && s.len() <= TENANT_ID_MAX
            && !s.starts_with('-')
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok { Ok(Self(s.to_string())) } else { Err(TenantError::InvalidId(s.chars().take(64).collect())) }
    }

    /// The deployment's own tenant.
    pub fn default_tenant() -> Self {
        Self(DEFAULT_TENANT.into())
    }

    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_TENANT
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the tenant's state-table keys begin with: nothing for `default` (so a
    /// single-location deployment's table is as it always was), `t#<id>#` otherwise.
    pub fn key_prefix(&self) -> String {
        if self.is_default() { String::new() } else { format!("t#{}#", self.0) }
    }

    /// The tenant a presented token names: tokens of a registered tenant begin with its id and a
    /// dot (`acme.3f9…`). `None` for any other token (the default tenant's).
    pub fn from_token(token: &str) -> Option<Self> {
        let (id, rest) = token.split_once('.')?;
        if rest.is_empty() {
            return None;
        }
        Self::parse(id).ok().filter(|t| !t.is_default())
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::default_tenant()
    }
}

impl TryFrom<String> for TenantId {
    type Error = TenantError;
    fn try_from(s: String) -> Result<Self, TenantError> {
        Self::parse(&s)
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> String {
        t.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One registered tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: TenantId,
    /// The GHL location (sub-account) id.
    pub location_id: String,
    /// Name or ARN of the tenant's Secrets Manager secret (the same JSON shape as the
    /// deployment's own, see README "The secret").
    pub secret_id: String,
    /// The tenant's mapping (TOML); `None` takes the deployment's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<String>,
    /// Where the tenant's GHL and SproutVideo APIs are, when not the deployment's (a staging
    /// account, or local fakes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ghl_base_url: Option<url::Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sprout_base_url: Option<url::Url>,
    #[serde(default)]
    pub paused: bool,
    pub added_at: DateTime<Utc>,
}

impl TenantRecord {
    /// Everything the functions build the tenant's clients from (all but `paused`): a change
    /// here rebuilds them.
    fn setup(&self) -> impl PartialEq + '_ {
        (&self.location_id, &self.secret_id, &self.mapping, &self.ghl_base_url, &self.sprout_base_url)
    }
}

fn record_name(id: &TenantId) -> String {
    format!("tenant#{id}")
}

fn location_name(location: &str) -> String {
    format!("tenant-location#{location}")
}

const LIST_NAME: &str = "tenants";

/// The tenants registered in the state table (read and written through the deployment's own,
/// unprefixed store).
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn StateStore>,
}

impl Registry {
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        Self { store }
    }

    pub async fn get(&self, id: &TenantId) -> Result<Option<TenantRecord>, TenantError> {
        match self.store.get_value(&record_name(id)).await? {
            None => Ok(None),
            Some(raw) => serde_json::from_str(&raw)
                .map(Some)
                .map_err(|e| TenantError::State(StateError::Corrupt(format!("kv#{}: {e}", record_name(id))))),
        }
    }

    /// The tenant `location` belongs to.
    pub async fn by_location(&self, location: &str) -> Result<Option<TenantId>, TenantError> {
        match self.store.get_value(&location_name(location)).await? {
            None => Ok(None),
            Some(id) => Ok(Some(TenantId::parse(&id)?)),
        }
    }

    async fn ids(&self) -> Result<(Option<String>, Vec<TenantId>), TenantError> {
        let raw = self.store.get_value(LIST_NAME).await?;
        let ids: Vec<TenantId> = match &raw {
            None => Vec::new(),
            Some(r) => serde_json::from_str(r)
                .map_err(|e| TenantError::State(StateError::Corrupt(format!("kv#{LIST_NAME}: {e}"))))?,
        };
        Ok((raw, ids))
    }

    /// Every registered tenant, by id.
    pub async fn list(&self) -> Result<Vec<TenantRecord>, TenantError> {
        let (_, ids) = self.ids().await?;
        let names: Vec<String> = ids.iter().map(record_name).collect();
        let mut raw = self.store.get_values(&names).await?;
        let mut out = Vec::new();
        for (id, name) in ids.iter().zip(&names) {
            if let Some(r) = raw.remove(name) {
                out.push(
                    serde_json::from_str(&r)
                        .map_err(|e| TenantError::State(StateError::Corrupt(format!("kv#{name}: {e}"))))?,
                );
            } else {
                tracing::warn!(tenant = %id, "listed tenant has no record; skipped");
            }
        }
        Ok(out)
    }

    /// Changes the list of ids with `change` (version-checked: two admins at once both land).
    async fn change_list(&self, change: impl Fn(&mut Vec<TenantId>)) -> Result<(), TenantError> {
        for _ in 0..20 {
            let (raw, mut ids) = self.ids().await?;
            change(&mut ids);
            ids.sort();
            ids.dedup();
            let new = serde_json::to_string(&ids).expect("ids serialise");
            if self.store.swap_value(LIST_NAME, raw.as_deref(), Some(&new)).await? {
                return Ok(());
            }
        }
        Err(TenantError::State(StateError::Unavailable("the tenant list kept changing under this write".into())))
    }

    /// Registers a new tenant: its location must belong to no other.
    pub async fn add(&self, record: &TenantRecord) -> Result<(), TenantError> {
        if record.id.is_default() {
            return Err(TenantError::IsDefault(record.id.to_string()));
        }
        let json = serde_json::to_string(record).expect("records serialise");
        if !self.store.swap_value(&record_name(&record.id), None, Some(&json)).await? {
            return Err(TenantError::Exists(record.id.to_string()));
        }
        if !self.store.swap_value(&location_name(&record.location_id), None, Some(record.id.as_str())).await? {
            let tenant = self.by_location(&record.location_id).await?.map(|t| t.to_string()).unwrap_or_default();
            self.store.swap_value(&record_name(&record.id), Some(&json), None).await?;
            return Err(TenantError::LocationTaken { location: record.location_id.clone(), tenant });
        }
        self.change_list(|ids| ids.push(record.id.clone())).await
    }

    /// Changes a registered tenant's record with `change` (version-checked).
    pub async fn update(&self, id: &TenantId, change: impl Fn(&mut TenantRecord)) -> Result<TenantRecord, TenantError> {
        if id.is_default() {
            return Err(TenantError::IsDefault(id.to_string()));
        }
        for _ in 0..20 {
            let raw =
                self.store.get_value(&record_name(id)).await?.ok_or_else(|| TenantError::Unknown(id.to_string()))?;
            let mut rec: TenantRecord = serde_json::from_str(&raw)
                .map_err(|e| TenantError::State(StateError::Corrupt(format!("kv#{}: {e}", record_name(id)))))?;
            let location = rec.location_id.clone();
            change(&mut rec);
            if rec.location_id != location || rec.id != *id {
                return Err(TenantError::Invalid {
                    tenant: id.to_string(),
                    reason: "a tenant's id and location stay as added; remove it and add it again".into(),
                });
            }
            let new = serde_json::to_string(&rec).expect("records serialise");
            if self.store.swap_value(&record_name(id), Some(&raw), Some(&new)).await? {
                return Ok(rec);
            }
        }
        Err(TenantError::State(StateError::Unavailable("the tenant record kept changing under this write".into())))
    }

    /// Removes a tenant from the registry. Its state (and anything held for it) stays in the
    /// table, so adding it again with the same id carries on where it stopped.
    pub async fn remove(&self, id: &TenantId) -> Result<TenantRecord, TenantError> {
        let rec = self.get(id).await?.ok_or_else(|| TenantError::Unknown(id.to_string()))?;
        self.change_list(|ids| ids.retain(|t| t != id)).await?;
        self.store.swap_value(&location_name(&rec.location_id), Some(id.as_str()), None).await?;
        self.store.delete_value(&record_name(id)).await?;
        Ok(rec)
    }
}

/// What a process knows of a tenant at the moment.
pub enum Lookup<T> {
    /// Registered (or the default) and running.
    Active(Arc<T>),
    /// Registered and paused: hold its work.
    Paused(Arc<T>),
    /// Not registered (never, or removed).
    Unknown,
}

struct Cached<T> {
    read_at: Instant,
    record: Option<TenantRecord>,
    built: Option<Arc<T>>,
}

type Build<T> = Box<dyn Fn(&TenantRecord) -> anyhow::Result<T> + Send + Sync>;

/// Each tenant's clients (whatever `T` a function builds for one tenant), built on first use
/// from its record and rebuilt when the record's setup changes. A record is trusted for `ttl`
/// (`TENANT_CACHE_TTL_SECS`): a tenant added, paused or resumed is seen within that long.
pub struct TenantCache<T> {
    registry: Registry,
    ttl: Duration,
    default: Arc<T>,
    build: Build<T>,
    entries: tokio::sync::Mutex<HashMap<TenantId, Cached<T>>>,
}

impl<T> TenantCache<T> {
    pub fn new(
        registry: Registry,
        ttl: Duration,
        default: Arc<T>,
        build: impl Fn(&TenantRecord) -> anyhow::Result<T> + Send + Sync + 'static,
    ) -> Self {
        Self { registry, ttl, default, build: Box::new(build), entries: Default::default() }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn default_tenant(&self) -> &Arc<T> {
        &self.default
    }

    /// The tenant's clients, or what stops their use. A record that cannot be built (a bad
    /// mapping, a bad URL) is [`TenantError::Invalid`].
    pub async fn get(&self, id: &TenantId) -> Result<Lookup<T>, TenantError> {
        if id.is_default() {
            return Ok(Lookup::Active(self.default.clone()));
        }
        let mut entries = self.entries.lock().await;
        let fresh = entries.get(id).is_some_and(|c| c.read_at.elapsed() < self.ttl);
        if !fresh {
            let record = self.registry.get(id).await?;
            let old = entries.remove(id);
            let built = match (&old, &record) {
                (Some(Cached { record: Some(was), built: Some(b), .. }), Some(now)) if was.setup() == now.setup() => {
                    Some(b.clone())
                }
                _ => None,
            };
            entries.insert(id.clone(), Cached { read_at: Instant::now(), record, built });
        }
        let cached = entries.get_mut(id).expect("inserted above");
        let Some(record) = &cached.record else { return Ok(Lookup::Unknown) };
        let built = match &cached.built {
            Some(b) => b.clone(),
            None => {
                let b = Arc::new(
                    (self.build)(record)
                        .map_err(|e| TenantError::Invalid { tenant: id.to_string(), reason: format!("{e:#}") })?,
                );
                cached.built = Some(b.clone());
                b
            }
        };
        Ok(if record.paused { Lookup::Paused(built) } else { Lookup::Active(built) })
    }

    /// Forgets what was read, so the next [`TenantCache::get`] reads the registry again.
    pub async fn forget(&self) {
        self.entries.lock().await.clear();
    }
}

/// A command queue that files every command under one tenant (its FIFO groups and the
/// `tenant` its worker reads).
pub struct TenantQueue {
    pub tenant: TenantId,
    pub inner: Arc<dyn CommandQueue>,
}

#[async_trait::async_trait]
impl CommandQueue for TenantQueue {
    async fn send(&self, commands: &[SyncCommand]) -> Result<(), QueueError> {
        if self.tenant.is_default() && commands.iter().all(|c| c.tenant.is_default()) {
            return self.inner.send(commands).await;
        }
        let stamped: Vec<SyncCommand> = commands
            .iter()
            .cloned()
            .map(|mut c| {
                c.tenant = self.tenant.clone();
                c
            })
            .collect();
        self.inner.send(&stamped).await
    }
}

const HELD_NEXT: &str = "held-next";
const HELD_FIRST: &str = "held-first";

fn held_name(n: u64) -> String {
    format!("held#{n:012}")
}

/// How long a reserved place that never got its command is waited for before a drain passes it
/// (the worker that reserved it stopped; its message came back and was held again elsewhere).
pub const HELD_GAP_GRACE: Duration = Duration::from_secs(600);

async fn read_counter(store: &dyn StateStore, name: &str) -> Result<(Option<String>, u64), StateError> {
    let raw = store.get_value(name).await?;
    let n = raw.as_deref().map(|r| r.parse().map_err(|_| StateError::Corrupt(format!("kv#{name}")))).transpose()?;
    Ok((raw, n.unwrap_or(0)))
}

/// Holds a paused tenant's command (its message body) in the tenant's store, after every
/// command held before it. `store` is the tenant's (prefixed) store.
pub async fn hold(store: &dyn StateStore, body: &str) -> Result<u64, StateError> {
    for _ in 0..50 {
        let (raw, next) = read_counter(store, HELD_NEXT).await?;
        if store.swap_value(HELD_NEXT, raw.as_deref(), Some(&(next + 1).to_string())).await? {
            store.put_value(&held_name(next), body, None).await?;
            return Ok(next);
        }
    }
    Err(StateError::Unavailable("the held-command counter kept changing under this write".into()))
}

/// How many commands are held.
pub async fn held_count(store: &dyn StateStore) -> Result<u64, StateError> {
    let (_, first) = read_counter(store, HELD_FIRST).await?;
    let (_, next) = read_counter(store, HELD_NEXT).await?;
    Ok(next.saturating_sub(first))
}

/// Sends a resumed tenant's held commands back to the queue, in the order they were held, and
/// forgets each once the queue took it. Each goes with a new deduplication id (SQS would drop
/// one sent again within five minutes under its old id); applying it twice is harmless (the
/// idempotency ledger). Returns how many were sent; stops at a place reserved but not written
/// yet, unless it stayed empty for [`HELD_GAP_GRACE`].
pub async fn drain_held(
    store: &dyn StateStore,
    queue: &dyn CommandQueue,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<u64, anyhow::Error> {
    let (_, next) = read_counter(store, HELD_NEXT).await?;
    let (mut first_raw, mut first) = read_counter(store, HELD_FIRST).await?;
    let total = next.saturating_sub(first);
    let mut sent = 0;
    while first < next {
        let end = (first + crate::queue::SQS_BATCH_MAX as u64).min(next);
        let names: Vec<String> = (first..end).map(held_name).collect();
        let found = store.get_values(&names).await?;
        let mut batch = Vec::new();
        let mut upto = first;
        for (i, name) in names.iter().enumerate() {
            let n = first + i as u64;
            match found.get(name) {
                Some(body) => {
                    let mut cmd = SyncCommand::decode(body)
                        .map_err(|e| anyhow::anyhow!("held command {n} cannot be read: {e}"))?;
                    cmd.resent += 1;
                    batch.push(cmd);
                }
                None => {
                    let gap = format!("held-gap#{n:012}");
                    let now = Utc::now().timestamp();
                    store.put_value_if_absent(&gap, &now.to_string(), Duration::from_secs(86_400)).await?;
                    let seen: i64 = store.get_value(&gap).await?.and_then(|v| v.parse().ok()).unwrap_or(now);
                    if now - seen < HELD_GAP_GRACE.as_secs() as i64 {
                        break;
                    }
                }
            }
            upto = n + 1;
        }
        if upto == first {
            break;
        }
        if !batch.is_empty() {
            queue.send(&batch).await?;
        }
        for n in first..upto {
            store.delete_value(&held_name(n)).await?;
        }
        sent += batch.len() as u64;
        let new = upto.to_string();
        if !store.swap_value(HELD_FIRST, first_raw.as_deref(), Some(&new)).await? {
            anyhow::bail!("another drain of the same tenant is running; it carries on");
        }
        first_raw = Some(new);
        first = upto;
        progress(sent, total);
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;

    #[test]
    fn tenant_ids_follow_their_rules_and_tokens_name_their_tenant() {
        for ok in ["acme", "a", "client-42", &"x".repeat(32)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "Acme", "a_b", "a.b", &"x".repeat(33), "a/b"] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(TenantId::from_token("acme.3f9a").unwrap().as_str(), "acme");
        assert_eq!(TenantId::from_token("dev-webhook-token"), None);
        assert_eq!(TenantId::from_token("default.x"), None);
        assert_eq!(TenantId::from_token("acme."), None);
        assert_eq!(TenantId::default().key_prefix(), "");
        assert_eq!(TenantId::parse("acme").unwrap().key_prefix(), "t#acme#");
    }

    fn record(id: &str, loc: &str) -> TenantRecord {
        TenantRecord {
            id: TenantId::parse(id).unwrap(),
            location_id: loc.into(),
            secret_id: format!("sv/{id}"),
            mapping: None,
            ghl_base_url: None,
            sprout_base_url: None,
            paused: false,
            added_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn the_registry_adds_lists_pauses_and_removes_and_a_location_has_one_tenant() {
        let reg = Registry::new(Arc::new(MemoryStore::new()));
        reg.add(&record("acme", "locA")).await.unwrap();
        reg.add(&record("beta", "locB")).await.unwrap();
        assert_eq!(reg.add(&record("acme", "locC")).await, Err(TenantError::Exists("acme".into())));
        assert_eq!(
            reg.add(&record("gamma", "locA")).await,
            Err(TenantError::LocationTaken { location: "locA".into(), tenant: "acme".into() })
        );
        assert!(reg.get(&TenantId::parse("gamma").unwrap()).await.unwrap().is_none(), "rolled back");
        assert!(matches!(reg.add(&record("default", "locD")).await, Err(TenantError::IsDefault(_))));
        let ids: Vec<String> = reg.list().await.unwrap().into_iter().map(|r| r.id.to_string()).collect();
        assert_eq!(ids, ["acme", "beta"]);
        let acme = TenantId::parse("acme").unwrap();
        assert!(reg.update(&acme, |r| r.paused = true).await.unwrap().paused);
        assert_eq!(reg.by_location("locA").await.unwrap(), Some(acme.clone()));
        reg.remove(&acme).await.unwrap();
        assert_eq!(reg.by_location("locA").await.unwrap(), None);
        let ids: Vec<String> = reg.list().await.unwrap().into_iter().map(|r| r.id.to_string()).collect();
        assert_eq!(ids, ["beta"]);
        reg.add(&record("gamma", "locA")).await.unwrap();
    }

    #[tokio::test]
    async fn the_cache_builds_once_sees_pauses_and_rebuilds_on_a_new_setup() {
        let store = Arc::new(MemoryStore::new());
        let reg = Registry::new(store.clone());
        reg.add(&record("acme", "locA")).await.unwrap();
        let builds = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let b = builds.clone();
        let cache = TenantCache::new(reg.clone(), Duration::ZERO, Arc::new("default".to_string()), move |r| {
            b.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(r.secret_id.clone())
        });
        let acme = TenantId::parse("acme").unwrap();
        assert!(matches!(cache.get(&acme).await.unwrap(), Lookup::Active(s) if *s == "sv/acme"));
        reg.update(&acme, |r| r.paused = true).await.unwrap();
        assert!(matches!(cache.get(&acme).await.unwrap(), Lookup::Paused(_)));
        assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 1, "a pause rebuilds nothing");
        reg.update(&acme, |r| {
            r.paused = false;
            r.secret_id = "sv/acme-2".into();
        })
        .await
        .unwrap();
        assert!(matches!(cache.get(&acme).await.unwrap(), Lookup::Active(s) if *s == "sv/acme-2"));
        assert!(matches!(cache.get(&TenantId::parse("nobody").unwrap()).await.unwrap(), Lookup::Unknown));
        assert!(matches!(cache.get(&TenantId::default()).await.unwrap(), Lookup::Active(s) if *s == "default"));
    }
}
