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
//! (`t#<id>#kv#held#<n>`, in arrival order, without gaps) and takes it off the queue; resuming
//! sends them back in order ([`drain_held`]), and while any is held a running tenant's new
//! commands are held behind them (so that none overtakes an older one).

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
    /// A running tenant added now, with the deployment's mapping and API addresses.
    pub fn new(id: TenantId, location_id: impl Into<String>, secret_id: impl Into<String>) -> Self {
        Self {
            id,
            location_id: location_id.into(),
            secret_id: secret_id.into(),
            mapping: None,
            ghl_base_url: None,
            sprout_base_url: None,
            paused: false,
            added_at: Utc::now(),
        }
    }

    /// Everything the functions build the tenant's clients from (all but `paused`): a change
    /// here rebuilds them.
    fn setup(&self) -> impl PartialEq + '_ {
        (&self.location_id, &self.secret_id, &self.mapping, &self.ghl_base_url, &self.sprout_base_url)
    }
}

fn record_name(id: &TenantId) -> String {
    format!("tenant#{id}")
}

/// The location an id was first added with (kept after a removal).
fn origin_name(id: &TenantId) -> String {
    format!("tenant-origin#{id}")
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

    /// Marks `location` as the deployment's own, so that no tenant can be added for it (the
    /// functions build no tenant on it either). `true` when the mark is (now) there.
    pub async fn claim_own_location(&self, location: &str) -> Result<bool, TenantError> {
        let name = location_name(location);
        if self.store.swap_value(&name, None, Some(DEFAULT_TENANT)).await? {
            return Ok(true);
        }
        Ok(self.store.get_value(&name).await?.as_deref() == Some(DEFAULT_TENANT))
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

    /// Whether a tenant `id` could be added for `location` now (see [`Registry::add`]): to check
    /// before creating anything for it.
    pub async fn check_new(&self, id: &TenantId, location: &str) -> Result<(), TenantError> {
        if id.is_default() {
            return Err(TenantError::IsDefault(id.to_string()));
        }
        if self.get(id).await?.is_some() {
            return Err(TenantError::Exists(id.to_string()));
        }
        if let Some(first) = self.store.get_value(&origin_name(id)).await?
            && first != location
        {
            return Err(TenantError::Invalid {
                tenant: id.to_string(),
                reason: format!(
                    "the id was used for the location {first}, whose state it keeps; choose another id for {location}"
                ),
            });
        }
        if let Some(owner) = self.by_location(location).await? {
            return Err(TenantError::LocationTaken { location: location.to_string(), tenant: owner.to_string() });
        }
        Ok(())
    }

    /// Registers a new tenant: its location must belong to no other, and an id used before
    /// keeps the location it was first added with (its state, kept after a removal, is that
    /// location's: people's contact ids, what was applied, commands held).
    pub async fn add(&self, record: &TenantRecord) -> Result<(), TenantError> {
        self.check_new(&record.id, &record.location_id).await?;
        let origin = origin_name(&record.id);
        let json = serde_json::to_string(record).expect("records serialise");
        if !self.store.swap_value(&record_name(&record.id), None, Some(&json)).await? {
            return Err(TenantError::Exists(record.id.to_string()));
        }
        let undo_record = async {
            let _ = self.store.swap_value(&record_name(&record.id), Some(&json), None).await;
        };
        match self.store.swap_value(&location_name(&record.location_id), None, Some(record.id.as_str())).await {
            Ok(true) => {}
            Ok(false) => {
                undo_record.await;
                let tenant = self.by_location(&record.location_id).await?.map(|t| t.to_string()).unwrap_or_default();
                return Err(TenantError::LocationTaken { location: record.location_id.clone(), tenant });
            }
            Err(e) => {
                undo_record.await;
                return Err(e.into());
            }
        }
        if let Err(e) = self.change_list(|ids| ids.push(record.id.clone())).await {
            let _ = self.store.swap_value(&location_name(&record.location_id), Some(record.id.as_str()), None).await;
            undo_record.await;
            return Err(e);
        }
        if let Err(e) = self.store.swap_value(&origin, None, Some(&record.location_id)).await {
            tracing::warn!(tenant = %record.id, error = %e, "could not record the location the id was added with");
        }
        Ok(())
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
    record: TenantRecord,
    built: Arc<T>,
}

impl<T> Cached<T> {
    fn lookup(&self) -> Lookup<T> {
        let b = self.built.clone();
        if self.record.paused { Lookup::Paused(b) } else { Lookup::Active(b) }
    }
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
    /// mapping, a bad URL) is [`TenantError::Invalid`]. Only registered tenants are kept (an id
    /// nobody registered is read again each time), and no lock is held while the registry is read.
    pub async fn get(&self, id: &TenantId) -> Result<Lookup<T>, TenantError> {
        if id.is_default() {
            return Ok(Lookup::Active(self.default.clone()));
        }
        if let Some(c) = self.entries.lock().await.get(id).filter(|c| c.read_at.elapsed() < self.ttl) {
            return Ok(c.lookup());
        }
        let read_at = Instant::now();
        let Some(record) = self.registry.get(id).await? else {
            self.entries.lock().await.remove(id);
            return Ok(Lookup::Unknown);
        };
        let kept =
            self.entries.lock().await.get(id).filter(|c| c.record.setup() == record.setup()).map(|c| c.built.clone());
        let built = match kept {
            Some(b) => b,
            None => Arc::new(
                (self.build)(&record)
                    .map_err(|e| TenantError::Invalid { tenant: id.to_string(), reason: format!("{e:#}") })?,
            ),
        };
        let cached = Cached { read_at, record, built };
        let lookup = cached.lookup();
        let mut entries = self.entries.lock().await;
        // A read that started later (another caller's) is the newer one: keep it.
        if entries.get(id).is_none_or(|c| c.read_at <= read_at) {
            entries.insert(id.clone(), cached);
        }
        Ok(lookup)
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
        if let Some(other) = commands.iter().find(|c| !c.tenant.is_default() && c.tenant != self.tenant) {
            return Err(QueueError::Rejected {
                failed: 1,
                total: commands.len(),
                reason: format!(
                    "a command of the tenant '{}' sent through the queue of '{}'",
                    other.tenant, self.tenant
                ),
            });
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

/// What a held place holds once its command was sent back (kept, so no late writer takes the
/// place again; gone after [`SENT_TTL`]).
const SENT: &str = "-";

/// How long a sent place stays taken: far longer than a worker takes between reading where the
/// held commands end and writing its own.
pub const SENT_TTL: Duration = Duration::from_secs(7 * 86_400);

fn held_name(n: u64) -> String {
    format!("held#{n:012}")
}

async fn read_counter(store: &dyn StateStore, name: &str) -> Result<(Option<String>, u64), StateError> {
    let raw = store.get_value(name).await?;
    let n = raw.as_deref().map(|r| r.parse().map_err(|_| StateError::Corrupt(format!("kv#{name}")))).transpose()?;
    Ok((raw, n.unwrap_or(0)))
}

/// Moves a counter forward to `to` (never back).
async fn advance(store: &dyn StateStore, name: &str, to: u64) -> Result<(), StateError> {
    for _ in 0..20 {
        let (raw, now) = read_counter(store, name).await?;
        if now >= to || store.swap_value(name, raw.as_deref(), Some(&to.to_string())).await? {
            return Ok(());
        }
    }
    Err(StateError::Unavailable(format!("kv#{name} kept changing under this write")))
}

/// Holds a paused tenant's command (its message body) in the tenant's store, after every
/// command held before it: in the first free place from where the held commands end, taken
/// with a conditional write (of two workers, one gets each place), so the places fill without a
/// gap. `store` is the tenant's (prefixed) store. Returns the place.
pub async fn hold(store: &dyn StateStore, body: &str) -> Result<u64, StateError> {
    let (_, next) = read_counter(store, HELD_NEXT).await?;
    let (_, first) = read_counter(store, HELD_FIRST).await?;
    for n in (next.max(first)..).take(100) {
        if store.swap_value(&held_name(n), None, Some(body)).await? {
            // A hint for the next writer; a writer that stops here leaves it behind, which
            // only costs the next one a probe.
            if let Err(e) = advance(store, HELD_NEXT, n + 1).await {
                tracing::warn!(error = %e, "could not move the held commands' end forward; the next writer probes past it");
            }
            return Ok(n);
        }
    }
    Err(StateError::Unavailable("could not find a free place for a held command".into()))
}

/// Whether commands are held: from where the next drain starts, a place holds a command before
/// the first free one (places already sent are passed over).
/// (One item read at a time: the worker, which asks, reads no batches.)
pub async fn has_held(store: &dyn StateStore) -> Result<bool, StateError> {
    let (_, mut n) = read_counter(store, HELD_FIRST).await?;
    loop {
        match store.get_value(&held_name(n)).await?.as_deref() {
            None => return Ok(false),
            Some(SENT) => n += 1,
            Some(_) => return Ok(true),
        }
    }
}

/// How many commands are held (at least; a writer that stopped before moving the end is
/// counted by the next drain).
pub async fn held_count(store: &dyn StateStore) -> Result<u64, StateError> {
    let (_, first) = read_counter(store, HELD_FIRST).await?;
    let (_, next) = read_counter(store, HELD_NEXT).await?;
    Ok(next.saturating_sub(first))
}

/// Sends a resumed tenant's held commands back to the queue, in the order they were held, until
/// none is left (including any held meanwhile). Each goes with a new deduplication id (SQS would
/// drop one sent again within five minutes under its old id); applying one twice is harmless
/// (the idempotency ledger). Its place is then marked sent. Returns how many were sent.
pub async fn drain_held(
    store: &dyn StateStore,
    queue: &dyn CommandQueue,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<u64, anyhow::Error> {
    let (mut first_raw, mut first) = read_counter(store, HELD_FIRST).await?;
    let mut sent = 0;
    loop {
        let names: Vec<String> = (first..first + crate::queue::SQS_BATCH_MAX as u64).map(held_name).collect();
        let found = store.get_values(&names).await?;
        let mut batch = Vec::new();
        let mut upto = first;
        for name in &names {
            match found.get(name) {
                Some(body) if body == SENT => {}
                Some(body) => {
                    let mut cmd = SyncCommand::decode(body)
                        .map_err(|e| anyhow::anyhow!("the held command {name} cannot be read: {e}"))?;
                    cmd.resent += 1;
                    batch.push(cmd);
                }
                None => break,
            }
            upto += 1;
        }
        if upto == first {
            return Ok(sent);
        }
        if !batch.is_empty() {
            queue.send(&batch).await?;
        }
        let marks: Vec<(String, String)> = (first..upto).map(|n| (held_name(n), SENT.to_string())).collect();
        store.put_values(&marks, Some(SENT_TTL)).await?;
        sent += batch.len() as u64;
        let new = upto.to_string();
        if !store.swap_value(HELD_FIRST, first_raw.as_deref(), Some(&new)).await? {
            anyhow::bail!("another drain of the same tenant is running; it carries on");
        }
        first_raw = Some(new);
        first = upto;
        let (_, next) = read_counter(store, HELD_NEXT).await?;
        progress(sent, sent + next.saturating_sub(first));
    }
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
        TenantRecord::new(TenantId::parse(id).unwrap(), loc, format!("sv/{id}"))
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
        // A removed id comes back only with its own location (its state is that location's).
        let e = reg.add(&record("acme", "locZ")).await.unwrap_err().to_string();
        assert!(e.contains("used for the location locA"), "{e}");
        reg.remove(&TenantId::parse("gamma").unwrap()).await.unwrap();
        reg.add(&record("acme", "locA")).await.unwrap();
    }

    #[tokio::test]
    async fn held_commands_go_back_in_order_once_each_with_new_dedup_ids() {
        let store = MemoryStore::new();
        let queue = crate::queue::MemoryQueue::new();
        let cmd = |i: usize| {
            let mut c = SyncCommand::new(
                crate::commands::Source::Event(format!("e{i}")),
                "add_note",
                Utc::now(),
                crate::commands::CommandBody::AddNote {
                    identity: crate::identity::Identity {
                        email: crate::identity::Email::parse("ada@example.com").unwrap(),
                        phone: None,
                    },
                    body: format!("note {i}"),
                },
            );
            c.tenant = TenantId::parse("acme").unwrap();
            c
        };
        assert!(!has_held(&store).await.unwrap());
        // In the order they came...
        for i in 0..3 {
            assert_eq!(hold(&store, &cmd(i).encode()).await.unwrap(), i as u64);
        }
        // ...and workers holding at once each get their own place, without a gap.
        let bodies: Vec<String> = (3..12).map(|i| cmd(i).encode()).collect();
        let places = futures::future::join_all(bodies.iter().map(|b| hold(&store, b))).await;
        let mut places: Vec<u64> = places.into_iter().map(Result::unwrap).collect();
        places.sort();
        assert_eq!(places, (3..12).collect::<Vec<u64>>());
        assert!(has_held(&store).await.unwrap());
        assert_eq!(held_count(&store).await.unwrap(), 12);

        assert_eq!(drain_held(&store, &queue, &|_, _| {}).await.unwrap(), 12);
        assert!(!has_held(&store).await.unwrap());
        let got = queue.commands();
        let first: Vec<SyncCommand> = got.iter().take(3).cloned().collect();
        assert_eq!(
            first.iter().map(|c| c.key.clone()).collect::<Vec<_>>(),
            (0..3).map(|i| cmd(i).key).collect::<Vec<_>>()
        );
        assert!(got.iter().all(|c| c.resent == 1 && c.tenant.as_str() == "acme"));
        assert!(first.iter().zip(0..3).all(|(c, i)| c.dedup_id() != cmd(i).dedup_id()), "a new deduplication id");
        assert_eq!(drain_held(&store, &queue, &|_, _| {}).await.unwrap(), 0, "each goes back once");

        // Held later: after the sent ones, and sent on the next drain.
        assert_eq!(hold(&store, &cmd(99).encode()).await.unwrap(), 12);
        assert_eq!(drain_held(&store, &queue, &|_, _| {}).await.unwrap(), 1);
        assert_eq!(queue.commands().len(), 13);
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
