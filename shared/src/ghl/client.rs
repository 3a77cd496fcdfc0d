//! The HighLevel Contacts API v2 client.
//!
//! Every call is paced by a [`RateLimiter`] corrected from GHL's `X-RateLimit-*` headers, and
//! retried by the shared driver ([`crate::retry`]) on 429, 5xx and transport errors, within
//! attempt and deadline bounds. Writes that are not idempotent (create contact, task, note) are
//! never re-sent after an ambiguous failure: they end in [`GhlError::MayHaveWritten`]. When the
//! daily quota is spent the client stops calling GHL until it resets
//! ([`GhlError::DailyQuotaExhausted`]).
//!
//! Methods the functions do not call (`create_contact`, `update_contact`,
//! `list_contacts_legacy`, `contacts_by_business`, `get_task`, `update_task`, `delete_task`,
//! `get_note`, `update_note`, `delete_note`) are kept on purpose: they are the typed form of the
//! rest of the endpoints the local GHL serves, and the client tests drive them to hold every
//! request and answer of the fake to HighLevel's OpenAPI documents. Each is marked `Not called
//! by the functions`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::time::Instant;
use url::Url;

use super::error::GhlError;
use super::models::*;
use super::token::TokenProvider;
use crate::budget::{BudgetError, FleetBudget, Lane, Observed};
use crate::http::Recorder;
use crate::pacing::RateLimiter;
use crate::retry::{Attempt, Failure, MAX_SERVER_WAIT, Replay, RetryPolicy, Stop, drive, parse_retry_after};

/// The `Version` header every Contacts call carries.
pub const API_VERSION: &str = "2021-07-28";
/// GHL's production base URL.
pub const DEFAULT_BASE_URL: &str = "https://services.leadconnectorhq.com";
/// Once the daily quota is spent, calls are held at least this long.
const DAILY_QUOTA_WAIT_MIN: Duration = Duration::from_secs(60);

/// Settings of a [`GhlClient`].
#[derive(Debug, Clone)]
pub struct GhlSettings {
    pub base_url: Url,
    pub location_id: String,
    /// Burst budget per interval (GHL's default: 100 per 10 s).
    pub burst_max: u32,
    pub burst_interval: Duration,
    /// This process's share of the burst budget in its own limiter (1.0 unless a test splits
    /// it); the fleet's shared budget ([`GhlClient::with_budget`]) is what divides the window
    /// between processes.
    pub budget_share: f64,
    /// Per-attempt timeout.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// Once the daily quota is spent, the longest the client waits before letting one call
    /// through to see whether it was reset. GHL documents no reset time: the client waits until
    /// the next midnight UTC (or GHL's `Retry-After`), at most this long and at least a minute.
    pub daily_quota_wait_max: Duration,
}

impl GhlSettings {
    pub fn new(base_url: Url, location_id: impl Into<String>) -> Self {
        Self {
            base_url,
            location_id: location_id.into(),
            burst_max: 100,
            burst_interval: Duration::from_secs(10),
            budget_share: 1.0,
            request_timeout: Duration::from_secs(15),
            retry: RetryPolicy::default(),
            daily_quota_wait_max: Duration::from_secs(3600),
        }
    }
}

/// Counters a caller can read for metrics.
#[derive(Debug, Default)]
pub struct GhlStats {
    pub requests: AtomicU64,
    pub rate_limited: AtomicU64,
    pub retries: AtomicU64,
    /// Last `X-RateLimit-Remaining` seen (u64::MAX until one is seen).
    pub last_remaining: AtomicU64,
    /// Last `X-RateLimit-Daily-Remaining` seen (u64::MAX until one is seen).
    pub last_daily_remaining: AtomicU64,
    /// Calls refused without asking GHL because the daily quota was spent.
    pub daily_quota_refusals: AtomicU64,
}

impl GhlStats {
    fn new() -> Self {
        let s = Self::default();
        s.last_remaining.store(u64::MAX, Ordering::Relaxed);
        s.last_daily_remaining.store(u64::MAX, Ordering::Relaxed);
        s
    }

    /// The daily budget GHL last reported as left, for a metric (None until GHL said).
    pub fn daily_remaining(&self) -> Option<u64> {
        Some(self.last_daily_remaining.load(Ordering::Relaxed)).filter(|r| *r != u64::MAX)
    }

    /// The burst budget GHL last reported as left in its window (None until GHL said).
    pub fn burst_remaining(&self) -> Option<u64> {
        Some(self.last_remaining.load(Ordering::Relaxed)).filter(|r| *r != u64::MAX)
    }
}

/// HighLevel Contacts client for one location. Cheap to clone.
#[derive(Clone)]
pub struct GhlClient {
    http: reqwest::Client,
    settings: Arc<GhlSettings>,
    tokens: Arc<dyn TokenProvider>,
    limiter: Arc<RateLimiter>,
    /// The location's budget shared by every process of the fleet, and the lane this client's
    /// calls take in it.
    budget: Option<(Arc<FleetBudget>, Lane)>,
    stats: Arc<GhlStats>,
    /// No call is made before this instant: the daily quota is spent.
    quota_blocked_until: Arc<Mutex<Option<Instant>>>,
    /// Keeps every answer read, when set (see [`GhlClient::recording`]).
    recorder: Option<Arc<Recorder>>,
}

impl std::fmt::Debug for GhlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GhlClient")
            .field("base_url", &self.settings.base_url.as_str())
            .field("location_id", &self.settings.location_id)
            .finish_non_exhaustive()
    }
}

impl GhlClient {
    pub fn new(settings: GhlSettings, tokens: Arc<dyn TokenProvider>) -> Result<Self, GhlError> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("sv-ghl-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GhlError::Transport(e.to_string()))?;
        let limiter = Arc::new(RateLimiter::new(settings.burst_max, settings.burst_interval, settings.budget_share));
        Ok(Self {
            http,
            settings: Arc::new(settings),
            tokens,
            limiter,
            budget: None,
            stats: Arc::new(GhlStats::new()),
            quota_blocked_until: Arc::new(Mutex::new(None)),
            recorder: None,
        })
    }

    /// The same client, also keeping every JSON answer it reads, as received, in `recorder`.
    pub fn recording(&self, recorder: Arc<Recorder>) -> Self {
        Self { recorder: Some(recorder), ..self.clone() }
    }

    /// The same client, taking a start from the fleet's shared budget of its location before
    /// every request, in `lane`.
    pub fn with_budget(&self, budget: Arc<FleetBudget>, lane: Lane) -> Self {
        Self { budget: Some((budget, lane)), ..self.clone() }
    }

    /// The shared budget this client draws from, if any.
    pub fn budget(&self) -> Option<&Arc<FleetBudget>> {
        self.budget.as_ref().map(|(b, _)| b)
    }

    /// The same client with another retry policy (for example a shorter deadline).
    pub fn with_retry(&self, retry: RetryPolicy) -> Self {
        let mut settings = (*self.settings).clone();
        settings.retry = retry;
        Self { settings: Arc::new(settings), ..self.clone() }
    }

    pub fn location_id(&self) -> &str {
        &self.settings.location_id
    }

    pub fn stats(&self) -> &GhlStats {
        &self.stats
    }

    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// While the daily quota is spent, how long until the client calls GHL again.
    pub fn daily_quota_wait(&self) -> Option<Duration> {
        let until = (*self.quota_blocked_until.lock().expect("quota lock"))?;
        Some(until.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
    }

    /// How long GHL has asked this client to hold every call (the daily quota, or a long
    /// `Retry-After`), when it has: a caller can hold its own work that long.
    pub async fn held_for(&self) -> Option<Duration> {
        match (self.daily_quota_wait(), self.limiter.paused_for().await) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- contacts -------------------------------------------------------------------------

    pub async fn get_contact(&self, id: &str) -> Result<Contact, GhlError> {
        let e: ContactEnvelope =
            self.call(Method::GET, &["contacts", id], &[], None::<&()>, Replay::Idempotent).await?;
        Ok(e.contact)
    }

    /// `POST /contacts/`. A duplicate on a location that forbids them is [`GhlError::Duplicate`]
    /// with the existing id; an ambiguous failure is [`GhlError::MayHaveWritten`].
    /// Not called by the functions (see the module header).
    pub async fn create_contact(&self, body: &CreateContactDto) -> Result<Contact, GhlError> {
        let e: ContactEnvelope = self.call(Method::POST, &["contacts", ""], &[], Some(body), Replay::Once).await?;
        Ok(e.contact)
    }

    /// Not called by the functions (see the module header).
    pub async fn update_contact(&self, id: &str, body: &UpdateContactDto) -> Result<Contact, GhlError> {
        let e: ContactEnvelope = self.call(Method::PUT, &["contacts", id], &[], Some(body), Replay::Idempotent).await?;
        Ok(e.contact)
    }

    pub async fn delete_contact(&self, id: &str) -> Result<bool, GhlError> {
        let s: Succeeded = self.call(Method::DELETE, &["contacts", id], &[], None::<&()>, Replay::Idempotent).await?;
        Ok(s.succeded)
    }

    /// `POST /contacts/upsert`: matches by the location's duplicate setting. Repeating the same
    /// upsert leaves the same state, so it is retried like an idempotent call.
    pub async fn upsert_contact(&self, body: &UpsertContactDto) -> Result<UpsertResponse, GhlError> {
        self.call(Method::POST, &["contacts", "upsert"], &[], Some(body), Replay::Idempotent).await
    }

    /// `GET /contacts/search/duplicate` by email and/or E.164 phone (sent as `number`).
    pub async fn find_duplicate(&self, email: Option<&str>, phone: Option<&str>) -> Result<Option<Contact>, GhlError> {
        let mut q = vec![("locationId", self.settings.location_id.clone())];
        if let Some(e) = email {
            q.push(("email", e.to_string()));
        }
        if let Some(p) = phone {
            q.push(("number", p.to_string()));
        }
        let e: MaybeContactEnvelope =
            self.call(Method::GET, &["contacts", "search", "duplicate"], &q, None::<&()>, Replay::Idempotent).await?;
        Ok(e.contact)
    }

    /// One page of `POST /contacts/search`. `locationId` is filled in from the client.
    pub async fn search_page(&self, req: &SearchRequest) -> Result<SearchResponse, GhlError> {
        let mut req = req.clone();
        req.location_id = self.settings.location_id.clone();
        self.call(Method::POST, &["contacts", "search"], &[], Some(&req), Replay::Idempotent).await
    }

    /// Every contact matching `req`, paging on its own. With [`SearchPaging::SearchAfter`] the
    /// cursor is the last hit's `searchAfter` (or `sort`) value, so it goes past the
    /// 10,000-result cap; a full page without one is an error, never a short read.
    pub fn search(
        &self,
        req: SearchRequest,
        paging: SearchPaging,
    ) -> impl Stream<Item = Result<Contact, GhlError>> + Send + 'static {
        struct St {
            client: GhlClient,
            req: SearchRequest,
            paging: SearchPaging,
            buf: std::collections::VecDeque<Contact>,
            done: bool,
            seen: u64,
        }
        let mut req = req;
        match paging {
            SearchPaging::Pages => {
                req.page = Some(req.page.unwrap_or(1));
                req.search_after = None;
            }
            SearchPaging::SearchAfter => req.page = None,
        }
        let st = St { client: self.clone(), req, paging, buf: Default::default(), done: false, seen: 0 };
        futures::stream::try_unfold(st, |mut st| async move {
            loop {
                if let Some(c) = st.buf.pop_front() {
                    return Ok(Some((c, st)));
                }
                if st.done {
                    return Ok(None);
                }
                let page = st.client.search_page(&st.req).await?;
                let n = page.contacts.len() as u64;
                st.seen += n;
                let total = page.total.unwrap_or(u64::MAX);
                if n == 0 || n < st.req.page_limit as u64 || st.seen >= total {
                    st.done = true;
                }
                match st.paging {
                    SearchPaging::Pages => st.req.page = Some(st.req.page.unwrap_or(1) + 1),
                    SearchPaging::SearchAfter if !st.done => {
                        // The cursor's key is not settled in the documents: `searchAfter`, or
                        // `sort` as in the search engine GHL's search is built on.
                        let last = page.contacts.last();
                        let cursor = last
                            .and_then(|c| c.extra.get("searchAfter").or_else(|| c.extra.get("sort")))
                            .and_then(Value::as_array)
                            .cloned();
                        match cursor {
                            Some(c) => st.req.search_after = Some(c),
                            // More may follow, and nothing says where: stop loudly, not short.
                            None => {
                                let found: Vec<&str> =
                                    last.map(|c| c.extra.keys().map(String::as_str).collect()).unwrap_or_default();
                                return Err(GhlError::Decode(format!(
                                    "a full page of POST /contacts/search has no paging cursor on its last contact \
                                     (expected `searchAfter` or `sort`; its other keys: {found:?})"
                                )));
                            }
                        }
                    }
                    SearchPaging::SearchAfter => {}
                }
                st.buf.extend(page.contacts);
            }
        })
    }

    /// Every contact of the location through the deprecated `GET /contacts/`, sending
    /// `locationId` and `limit` again with the cursor on every page.
    /// Not called by the functions (see the module header).
    pub fn list_contacts_legacy(
        &self,
        limit: u32,
        query: Option<String>,
    ) -> impl Stream<Item = Result<Contact, GhlError>> + Send + 'static {
        let client = self.clone();
        let limit = limit.clamp(1, 100);
        let init = (client, None::<(String, String)>, std::collections::VecDeque::new(), false);
        futures::stream::try_unfold(init, move |(client, cursor, mut buf, done)| {
            let query = query.clone();
            async move {
                if let Some(c) = buf.pop_front() {
                    return Ok(Some((c, (client, cursor, buf, done))));
                }
                if done {
                    return Ok(None);
                }
                let mut q = vec![("locationId", client.settings.location_id.clone()), ("limit", limit.to_string())];
                if let Some(qs) = &query {
                    q.push(("query", qs.clone()));
                }
                if let Some((after_id, after)) = &cursor {
                    q.push(("startAfterId", after_id.clone()));
                    q.push(("startAfter", after.clone()));
                }
                let page: ListResponse =
                    client.call(Method::GET, &["contacts", ""], &q, None::<&()>, Replay::Idempotent).await?;
                let full_page = page.contacts.len() == limit as usize;
                let meta = page.meta.unwrap_or_default();
                let next = match (meta.start_after_id, meta.start_after) {
                    (Some(id), Some(after)) if full_page => Some((
                        id,
                        match after {
                            Value::String(s) => s,
                            v => v.to_string(),
                        },
                    )),
                    _ => None,
                };
                let done = next.is_none() || next == cursor;
                buf.extend(page.contacts);
                Ok(buf.pop_front().map(|c| (c, (client, next, buf, done))))
            }
        })
    }

    /// `GET /contacts/business/{businessId}`.
    /// Not called by the functions (see the module header).
    pub async fn contacts_by_business(
        &self,
        business_id: &str,
        limit: u32,
        skip: u32,
    ) -> Result<BusinessContactsResponse, GhlError> {
        let q = vec![
            ("locationId", self.settings.location_id.clone()),
            ("limit", limit.to_string()),
            ("skip", skip.to_string()),
        ];
        self.call(Method::GET, &["contacts", "business", business_id], &q, None::<&()>, Replay::Idempotent).await
    }

    // ---- tags -----------------------------------------------------------------------------

    /// Adds tags (merging); returns the contact's tags afterwards.
    pub async fn add_tags(&self, contact_id: &str, tags: &[String]) -> Result<Vec<String>, GhlError> {
        let body = TagsDto { tags: tags.to_vec() };
        let r: TagsResponse =
            self.call(Method::POST, &["contacts", contact_id, "tags"], &[], Some(&body), Replay::Idempotent).await?;
        Ok(r.tags)
    }

    /// Removes tags (a DELETE with a JSON body); returns the contact's tags afterwards.
    pub async fn remove_tags(&self, contact_id: &str, tags: &[String]) -> Result<Vec<String>, GhlError> {
        let body = TagsDto { tags: tags.to_vec() };
        let r: TagsResponse =
            self.call(Method::DELETE, &["contacts", contact_id, "tags"], &[], Some(&body), Replay::Idempotent).await?;
        Ok(r.tags)
    }

    // ---- tasks ----------------------------------------------------------------------------

    pub async fn list_tasks(&self, contact_id: &str) -> Result<Vec<Task>, GhlError> {
        let e: TasksEnvelope =
            self.call(Method::GET, &["contacts", contact_id, "tasks"], &[], None::<&()>, Replay::Idempotent).await?;
        Ok(e.tasks)
    }

    /// Not called by the functions (see the module header).
    pub async fn get_task(&self, contact_id: &str, task_id: &str) -> Result<Task, GhlError> {
        let e: TaskEnvelope = self
            .call(Method::GET, &["contacts", contact_id, "tasks", task_id], &[], None::<&()>, Replay::Idempotent)
            .await?;
        Ok(e.task)
    }

    pub async fn create_task(&self, contact_id: &str, body: &CreateTaskParams) -> Result<Task, GhlError> {
        let e: TaskEnvelope =
            self.call(Method::POST, &["contacts", contact_id, "tasks"], &[], Some(body), Replay::Once).await?;
        Ok(e.task)
    }

    /// Not called by the functions (see the module header).
    pub async fn update_task(&self, contact_id: &str, task_id: &str, body: &UpdateTaskBody) -> Result<Task, GhlError> {
        let e: TaskEnvelope = self
            .call(Method::PUT, &["contacts", contact_id, "tasks", task_id], &[], Some(body), Replay::Idempotent)
            .await?;
        Ok(e.task)
    }

    /// `PUT .../tasks/{taskId}/completed`.
    pub async fn complete_task(&self, contact_id: &str, task_id: &str, completed: bool) -> Result<Task, GhlError> {
        let body = serde_json::json!({ "completed": completed });
        let e: TaskEnvelope = self
            .call(
                Method::PUT,
                &["contacts", contact_id, "tasks", task_id, "completed"],
                &[],
                Some(&body),
                Replay::Idempotent,
            )
            .await?;
        Ok(e.task)
    }

    /// Not called by the functions (see the module header).
    pub async fn delete_task(&self, contact_id: &str, task_id: &str) -> Result<bool, GhlError> {
        let s: Succeeded = self
            .call(Method::DELETE, &["contacts", contact_id, "tasks", task_id], &[], None::<&()>, Replay::Idempotent)
            .await?;
        Ok(s.succeded)
    }

    // ---- notes ----------------------------------------------------------------------------

    pub async fn list_notes(&self, contact_id: &str) -> Result<Vec<Note>, GhlError> {
        let e: NotesEnvelope =
            self.call(Method::GET, &["contacts", contact_id, "notes"], &[], None::<&()>, Replay::Idempotent).await?;
        Ok(e.notes)
    }

    /// Not called by the functions (see the module header).
    pub async fn get_note(&self, contact_id: &str, note_id: &str) -> Result<Note, GhlError> {
        let e: NoteEnvelope = self
            .call(Method::GET, &["contacts", contact_id, "notes", note_id], &[], None::<&()>, Replay::Idempotent)
            .await?;
        Ok(e.note)
    }

    pub async fn create_note(&self, contact_id: &str, body: &NoteBody) -> Result<Note, GhlError> {
        let e: NoteEnvelope =
            self.call(Method::POST, &["contacts", contact_id, "notes"], &[], Some(body), Replay::Once).await?;
        Ok(e.note)
    }

    /// Not called by the functions (see the module header).
    pub async fn update_note(&self, contact_id: &str, note_id: &str, body: &NoteBody) -> Result<Note, GhlError> {
        let e: NoteEnvelope = self
            .call(Method::PUT, &["contacts", contact_id, "notes", note_id], &[], Some(body), Replay::Idempotent)
            .await?;
        Ok(e.note)
    }

    /// Not called by the functions (see the module header).
    pub async fn delete_note(&self, contact_id: &str, note_id: &str) -> Result<bool, GhlError> {
        let s: Succeeded = self
            .call(Method::DELETE, &["contacts", contact_id, "notes", note_id], &[], None::<&()>, Replay::Idempotent)
            .await?;
        Ok(s.succeded)
    }

    // ---- appointments, custom fields -------------------------------------------------------

    pub async fn list_appointments(&self, contact_id: &str) -> Result<Vec<Appointment>, GhlError> {
        let e: EventsEnvelope = self
            .call(Method::GET, &["contacts", contact_id, "appointments"], &[], None::<&()>, Replay::Idempotent)
            .await?;
        Ok(e.events)
    }

    /// Contact custom-field definitions of the location (`?model=contact`).
    pub async fn custom_fields(&self) -> Result<Vec<CustomFieldDefinition>, GhlError> {
        let loc = self.settings.location_id.clone();
        let e: CustomFieldsEnvelope = self
            .call(
                Method::GET,
                &["locations", &loc, "customFields"],
                &[("model", "contact".to_string())],
                None::<&()>,
                Replay::Idempotent,
            )
            .await?;
        Ok(e.custom_fields)
    }

    // ---- transport ------------------------------------------------------------------------

    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        crate::http::build_url(&self.settings.base_url, segments, query)
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
        replay: Replay,
    ) -> Result<T, GhlError> {
        let url = self.url(segments, query);
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| GhlError::Decode(e.to_string()))?),
            None => None,
        };
        let renewed = AtomicBool::new(false);
        let what = format!("GHL {method} {}", url.path());
        let (method, url, body, renewed) = (&method, &url, &body, &renewed);
        drive(&self.settings.retry, replay, &what, move |a| self.attempt(method, url, body.as_deref(), a, renewed))
            .await
            .map_err(|stop| match stop {
                Stop::Failed(e) => e,
                Stop::MayHaveWritten(e) => GhlError::MayHaveWritten { reason: format!("{method} {}: {e}", url.path()) },
                Stop::Deadline { wait, last: GhlError::RateLimited { .. }, .. } => {
                    GhlError::RateLimited { retry_after: Some(wait) }
                }
                Stop::Deadline { last: e @ GhlError::CredentialUnavailable(_), .. } => e,
                Stop::Deadline { attempts, last, .. } => {
                    GhlError::DeadlineExceeded { attempts, last: last.to_string() }
                }
            })
    }

    /// One attempt: pacing, the token, the request, and what its answer means for a retry.
    async fn attempt<T: DeserializeOwned>(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&[u8]>,
        a: Attempt,
        renewed: &AtomicBool,
    ) -> Result<T, Failure<GhlError>> {
        if let Some(retry_in) = self.daily_quota_wait() {
            self.stats.daily_quota_refusals.fetch_add(1, Ordering::Relaxed);
            return Err(Failure::Final(GhlError::DailyQuotaExhausted { retry_in }));
        }
        if a.number > 1 {
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
        }
        // The credential first: the wait for a place in the window, taken last, is bounded by
        // what is left of the deadline after it, so no request starts after the deadline.
        let began = std::time::Instant::now();
        let token = self.tokens.token().await.map_err(|e| {
            if e.is_retryable() { Failure::NotApplied { error: e, wait: None } } else { Failure::Final(e) }
        })?;
        // A pause GHL asked for, or a full window, that outlasts the deadline ends the call
        // rather than waiting.
        let _slot = match self.limiter.acquire_within(a.time_left.map(|t| t.saturating_sub(began.elapsed()))).await {
            Ok(slot) => slot,
            Err(left) => return Err(Failure::Final(GhlError::RateLimited { retry_after: Some(left) })),
        };
        if let Some((budget, lane)) = &self.budget {
            let left = a.time_left.map(|t| t.saturating_sub(began.elapsed()));
            match budget.take(*lane, left).await {
                Ok(()) => {}
                Err(BudgetError::Full(wait)) => {
                    return Err(Failure::Final(GhlError::RateLimited { retry_after: Some(wait) }));
                }
                Err(BudgetError::DaySpent(until_reset)) => {
                    // Held like a spent quota, so a worker holds its messages until the day
                    // turns instead of spending their receives.
                    self.stats.daily_quota_refusals.fetch_add(1, Ordering::Relaxed);
                    let retry_in = self.block_until_daily_reset(Some(until_reset));
                    return Err(Failure::Final(GhlError::DailyQuotaExhausted { retry_in }));
                }
                Err(e @ BudgetError::Store(_)) => {
                    return Err(Failure::NotApplied { error: GhlError::BudgetUnavailable(e.to_string()), wait: None });
                }
            }
        }
        let mut rb = self
            .http
            .request(method.clone(), url.clone())
            .header("Authorization", format!("Bearer {}", token.expose_secret()))
            .header("Version", API_VERSION)
            .header("Accept", "application/json");
        if let Some(b) = body {
            rb = rb.header("Content-Type", "application/json").body(b.to_vec());
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) => {
                let error = GhlError::Transport(transport_message(&e));
                // A connection that was never made carried nothing.
                return Err(if e.is_connect() {
                    Failure::NotApplied { error, wait: None }
                } else {
                    Failure::Unknown { error, wait: None }
                });
            }
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        self.observe_headers(&headers).await;
        let retry_after = parse_retry_after(headers.get("retry-after").and_then(|v| v.to_str().ok()));
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                let error =
                    GhlError::Transport(format!("the answer ({status}) was cut off: {}", transport_message(&e)));
                return Err(Failure::Unknown { error, wait: None });
            }
        };
        if status.is_success() {
            if let Some(r) = &self.recorder {
                r.keep(method.as_str(), &self.settings.base_url, url, &bytes);
            }
            return serde_json::from_slice(&bytes).map_err(|e| Failure::Final(GhlError::Decode(e.to_string())));
        }
        let err = classify(status, &bytes);
        match status {
            StatusCode::TOO_MANY_REQUESTS => {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                if daily_limit_hit(&headers, &bytes) {
                    let retry_in = self.block_until_daily_reset(retry_after);
                    return Err(Failure::Final(GhlError::DailyQuotaExhausted { retry_in }));
                }
                let interval = header_u64(&headers, "x-ratelimit-interval-milliseconds").map(Duration::from_millis);
                let wait = retry_after
                    .or(interval)
                    .unwrap_or_else(|| self.settings.retry.backoff(a.number))
                    .min(MAX_SERVER_WAIT);
                self.limiter.pause(wait).await;
                // The whole fleet pauses when GHL says its window is spent (or says nothing); a
                // 429 while GHL reports budget left pauses only this process.
                let window_spent = header_u64(&headers, "x-ratelimit-remaining").is_none_or(|r| r == 0);
                if let Some((budget, _)) = &self.budget
                    && window_spent
                {
                    budget.pause(wait).await;
                }
                Err(Failure::NotApplied { error: GhlError::RateLimited { retry_after }, wait: Some(wait) })
            }
            StatusCode::UNAUTHORIZED if !renewed.swap(true, Ordering::SeqCst) => {
                match self.tokens.renew_after_unauthorized(&token).await {
                    Ok(true) => Err(Failure::Renewed(err)),
                    Ok(false) => Err(Failure::Final(err)),
                    Err(e) => Err(Failure::Final(e)),
                }
            }
            s if s.is_server_error() => Err(Failure::Unknown { error: err, wait: retry_after }),
            _ => Err(Failure::Final(err)),
        }
    }

    /// Stops every call until the daily quota resets; returns how long that is.
    fn block_until_daily_reset(&self, retry_after: Option<Duration>) -> Duration {
        let wait = retry_after
            .unwrap_or_else(until_next_utc_midnight)
            .min(self.settings.daily_quota_wait_max)
            .clamp(DAILY_QUOTA_WAIT_MIN, MAX_SERVER_WAIT);
        let until = Instant::now() + wait;
        let mut blocked = self.quota_blocked_until.lock().expect("quota lock");
        if blocked.is_none_or(|b| b < until) {
            *blocked = Some(until);
        }
        tracing::warn!(wait_secs = wait.as_secs(), "GHL's daily request quota is spent; holding calls until it resets");
        wait
    }

    async fn observe_headers(&self, h: &reqwest::header::HeaderMap) {
        let remaining = header_u64(h, "x-ratelimit-remaining");
        let max = header_u64(h, "x-ratelimit-max");
        let interval = header_u64(h, "x-ratelimit-interval-milliseconds").map(Duration::from_millis);
        if let Some(r) = remaining {
            self.stats.last_remaining.store(r, Ordering::Relaxed);
        }
        let daily_remaining = header_u64(h, "x-ratelimit-daily-remaining");
        if let Some((budget, _)) = &self.budget {
            let o = Observed {
                max: max.map(|m| m.min(u32::MAX as u64) as u32),
                interval: interval.map(|i| i.min(MAX_SERVER_WAIT)),
                remaining: remaining.map(|r| r.min(u32::MAX as u64) as u32),
                daily_max: header_u64(h, "x-ratelimit-limit-daily"),
                daily_remaining,
            };
            budget.observe(o).await;
        }
        if let Some(d) = daily_remaining {
            self.stats.last_daily_remaining.store(d, Ordering::Relaxed);
            if d == 0 {
                self.block_until_daily_reset(None);
            }
        }
        if remaining.is_some() || max.is_some() || interval.is_some() {
            self.limiter
                .observe(
                    max.map(|m| m.min(u32::MAX as u64) as u32),
                    interval.map(|i| i.min(MAX_SERVER_WAIT)),
                    remaining.map(|r| r.min(u32::MAX as u64) as u32),
                )
                .await;
        }
    }
}

/// Whether a 429 is about the daily quota rather than the burst window: the daily budget
/// header says none is left, or the message speaks of the daily limit.
fn daily_limit_hit(h: &reqwest::header::HeaderMap, body: &[u8]) -> bool {
    let says_daily = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.message)
        .is_some_and(|m| m.into_vec().iter().any(|m| m.to_ascii_lowercase().contains("daily")));
    header_u64(h, "x-ratelimit-daily-remaining") == Some(0) || says_daily
}

fn until_next_utc_midnight() -> Duration {
    let now = chrono::Utc::now();
    let midnight = (now.date_naive() + chrono::Days::new(1)).and_hms_opt(0, 0, 0).expect("midnight exists").and_utc();
    (midnight - now).to_std().unwrap_or(Duration::from_secs(3600))
}

fn header_u64(h: &reqwest::header::HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Describes a transport error without echoing the URL's query or any header.
fn transport_message(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() { kind.to_string() } else { format!("{kind} ({detail})") }
}

/// Turns a non-2xx answer into a typed error.
fn classify(status: StatusCode, bytes: &[u8]) -> GhlError {
    let body: ErrorBody = serde_json::from_slice(bytes).unwrap_or_default();
    let trace_id = body.trace_id.clone();
    let messages = match body.message.clone() {
        Some(m) => m.into_vec(),
        None => {
            let raw = String::from_utf8_lossy(bytes).chars().take(300).collect::<String>();
            if raw.trim().is_empty() {
                vec![status.canonical_reason().unwrap_or("error").to_string()]
            } else {
                vec![raw]
            }
        }
    };
    let message = messages.join("; ");
    let code = status.as_u16();
    match code {
        401 => GhlError::Unauthorized { message, trace_id },
        403 => GhlError::Forbidden { message, trace_id },
        404 => GhlError::NotFound { message, trace_id },
        400 => {
            if let Some(meta) = body.meta.as_ref()
                && let Some(id) = meta.get("contactId").and_then(Value::as_str)
            {
                return GhlError::Duplicate {
                    contact_id: id.to_string(),
                    matching_field: meta.get("matchingField").and_then(Value::as_str).unwrap_or("unknown").to_string(),
                    trace_id,
                };
            }
            if message.to_ascii_lowercase().contains("not found") {
                GhlError::NotFound { message, trace_id }
            } else {
                GhlError::Invalid { status: code, messages, trace_id }
            }
        }
        422 => GhlError::Invalid { status: code, messages, trace_id },
        429 => GhlError::RateLimited { retry_after: None },
        s if s >= 500 => GhlError::Server { status: code, message, trace_id },
        _ => GhlError::Unexpected { status: code, message, trace_id },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ghl::StaticToken;
    use secrecy::SecretString;

    #[test]
    fn duplicate_body_is_recognised() {
        let body = br#"{"statusCode":400,"message":"This location does not allow duplicated contacts.","meta":{"contactId":"abc","contactName":"A B","matchingField":"email"},"traceId":"t"}"#;
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, body),
            GhlError::Duplicate {
                contact_id: "abc".into(),
                matching_field: "email".into(),
                trace_id: Some("t".into())
            }
        );
    }

    #[test]
    fn unknown_id_400_is_not_found_and_non_json_5xx_keeps_text() {
        let e = classify(StatusCode::BAD_REQUEST, br#"{"message":"Contact with id x not found"}"#);
        assert!(matches!(e, GhlError::NotFound { .. }));
        let e = classify(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert!(matches!(e, GhlError::Server { status: 502, ref message, .. } if message.contains("bad gateway")));
    }

    #[test]
    fn urls_keep_trailing_slash_and_encode_segments() {
        let c = GhlClient::new(
            GhlSettings::new(Url::parse("http://h/").unwrap(), "loc"),
            Arc::new(StaticToken(SecretString::from("t"))),
        )
        .unwrap();
        assert_eq!(c.url(&["contacts", ""], &[]).as_str(), "http://h/contacts/");
        assert_eq!(
            c.url(&["contacts", "search", "duplicate"], &[("number", "+1555".into())]).as_str(),
            "http://h/contacts/search/duplicate?number=%2B1555"
        );
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = GhlClient::new(
            GhlSettings::new(Url::parse("http://h/").unwrap(), "loc"),
            Arc::new(StaticToken(SecretString::from("pit-very-secret"))),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("pit-very-secret"));
    }
}
