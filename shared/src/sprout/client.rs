//! SproutVideo API v1 client: `SproutVideo-Api-Key` auth (the key read on every call, so a
//! rotation is seen), paced to the account's request budget, retried by the shared driver
//! ([`crate::retry`]) on 429/5xx/transport errors honouring `Retry-After`, and paging that
//! builds every page request itself. Creates (POST) are never re-sent after an ambiguous failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;
use url::Url;

use super::key::ApiKeySource;
use super::models::*;
use crate::http::Recorder;
use crate::pacing::RateLimiter;
use crate::retry::{Attempt, Failure, MAX_SERVER_WAIT, Replay, RetryPolicy, Stop, drive, parse_retry_after};

pub const DEFAULT_BASE_URL: &str = "https://api.sproutvideo.com/v1";
/// Largest page SproutVideo serves.
pub const MAX_PER_PAGE: u32 = 100;
/// Safety stop for a runaway listing.
pub const MAX_PAGES: u32 = 100_000;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum SproutError {
    #[error("SproutVideo rejected the API key ({status}): {message}")]
    Unauthorized { status: u16, message: String },
    #[error("SproutVideo has no such record: {0}")]
    NotFound(String),
    #[error("SproutVideo refused the request ({status}): {message}")]
    Invalid { status: u16, message: String },
    /// 429 after every allowed retry, or a wait SproutVideo asked for that is longer than the
    /// call's deadline allows.
    #[error("SproutVideo rate limit still exceeded after retries (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    #[error("SproutVideo server error ({status}) after retries: {message}")]
    Server { status: u16, message: String },
    /// A create failed in a way that does not say whether SproutVideo applied it.
    #[error("SproutVideo may have applied the write: {0}")]
    MayHaveWritten(String),
    #[error("could not reach SproutVideo: {0}")]
    Transport(String),
    #[error("SproutVideo call gave up at its deadline: {0}")]
    DeadlineExceeded(String),
    #[error("unreadable SproutVideo response: {0}")]
    Decode(String),
    /// SproutVideo answered in a shape this sync does not know (a list under another key, a
    /// session without the fields the rules read). Not retried: the client or the mapping must
    /// learn the new shape (run `make doctor` to see the whole answer).
    #[error("SproutVideo's answer changed shape at {at}: expected {expected}, found keys [{}]", found.join(", "))]
    Drift { at: String, expected: String, found: Vec<String> },
    /// No API key to send: put `sproutvideo_api_key` in the secret.
    #[error("no SproutVideo API key: {0}")]
    NoKey(String),
    /// The key could not be read right now (the secret store did not answer).
    #[error("the SproutVideo API key could not be read: {0}")]
    KeyUnavailable(String),
}

impl SproutError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::MayHaveWritten(_)
                | Self::Transport(_)
                | Self::DeadlineExceeded(_)
                | Self::KeyUnavailable(_)
        )
    }
}

#[derive(Debug, Clone)]
pub struct SproutSettings {
    pub base_url: Url,
    /// Requests per minute for this process (SproutVideo documents 100 per account).
    pub per_minute: u32,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl SproutSettings {
    pub fn new(base_url: Url) -> Self {
        Self {
            base_url,
            per_minute: 100,
            request_timeout: Duration::from_secs(20),
            retry: RetryPolicy {
                max_attempts: 6,
                base: Duration::from_millis(500),
                cap: Duration::from_secs(60),
                deadline: Some(Duration::from_secs(180)),
            },
        }
    }
}

/// Query parameters of an engagement-sessions listing.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    /// `YYYY-MM-DD`.
    pub start_date: Option<chrono::NaiveDate>,
    pub end_date: Option<chrono::NaiveDate>,
    pub vemail: Option<String>,
}

#[derive(Clone)]
pub struct SproutClient {
    http: reqwest::Client,
    settings: Arc<SproutSettings>,
    keys: Arc<dyn ApiKeySource>,
    limiter: Arc<RateLimiter>,
    requests: Arc<AtomicU64>,
    /// Keeps every answer read, when set (see [`SproutClient::recording`]).
    recorder: Option<Arc<Recorder>>,
}

impl std::fmt::Debug for SproutClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SproutClient").field("base_url", &self.settings.base_url.as_str()).finish_non_exhaustive()
    }
}

impl SproutClient {
    pub fn new(settings: SproutSettings, keys: Arc<dyn ApiKeySource>) -> Result<Self, SproutError> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("sv-ghl-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SproutError::Transport(e.to_string()))?;
        let limiter = Arc::new(RateLimiter::new(settings.per_minute.max(1), Duration::from_secs(60), 1.0));
        Ok(Self {
            http,
            settings: Arc::new(settings),
            keys,
            limiter,
            requests: Arc::new(AtomicU64::new(0)),
            recorder: None,
        })
    }

    /// The same client, also keeping every JSON answer it reads, as received, in `recorder`.
    pub fn recording(&self, recorder: Arc<Recorder>) -> Self {
        Self { recorder: Some(recorder), ..self.clone() }
    }

    /// Requests sent so far (every attempt counts).
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// `GET /account`: a cheap credential check.
    pub async fn account(&self) -> Result<Account, SproutError> {
        self.call(Method::GET, &["account"], &[], None::<&()>).await
    }

    pub async fn get_video(&self, id: &str) -> Result<Video, SproutError> {
        self.call(Method::GET, &["videos", id], &[], None::<&()>).await
    }

    pub async fn list_videos(&self) -> Result<Vec<Video>, SproutError> {
        self.all(&["videos"], "videos", &[]).await
    }

    /// Every video carrying the tag (`GET /videos?tag_id=`).
    pub async fn list_videos_tagged(&self, tag_id: &str) -> Result<Vec<Video>, SproutError> {
        self.all(&["videos"], "videos", &[("tag_id", tag_id.to_string())]).await
    }

    pub async fn list_logins(&self) -> Result<Vec<Login>, SproutError> {
        self.all(&["logins"], "logins", &[]).await
    }

    pub async fn logins_page(&self, page: u32, per_page: u32) -> Result<Page<Login>, SproutError> {
        self.page(&["logins"], "logins", &[], page, per_page).await
    }

    pub async fn get_login(&self, id: &str) -> Result<Login, SproutError> {
        self.call(Method::GET, &["logins", id], &[], None::<&()>).await
    }

    pub async fn create_login(&self, email: &str, password: &SecretString) -> Result<Login, SproutError> {
        let body = serde_json::json!({ "email": email, "password": password.expose_secret() });
        self.call(Method::POST, &["logins"], &[], Some(&body)).await
    }

    /// `PUT /logins/{id}` with a new password: the one change of a login SproutVideo documents.
    pub async fn set_login_password(&self, id: &str, password: &SecretString) -> Result<Login, SproutError> {
        let body = serde_json::json!({ "password": password.expose_secret() });
        self.call(Method::PUT, &["logins", id], &[], Some(&body)).await
    }

    /// `DELETE /logins/{id}`. What SproutVideo answers (a body or none) is not documented;
    /// any 2xx counts.
    pub async fn delete_login(&self, id: &str) -> Result<(), SproutError> {
        self.call::<(), serde::de::IgnoredAny>(Method::DELETE, &["logins", id], &[], None).await.map(|_| ())
    }

    pub async fn get_access_grant(&self, id: &str) -> Result<AccessGrant, SproutError> {
        self.call(Method::GET, &["access_grants", id], &[], None::<&()>).await
    }

    /// `POST /access_grants/bulk`: several grants in one request; the body is a JSON array of
    /// grants, the answer the grants created.
    pub async fn create_access_grants(&self, grants: &[NewAccessGrant]) -> Result<Vec<AccessGrant>, SproutError> {
        self.call(Method::POST, &["access_grants", "bulk"], &[], Some(grants)).await
    }

    /// `PUT /access_grants/{id}` with the grant's documented settings.
    pub async fn update_access_grant(&self, id: &str, limits: &GrantLimits) -> Result<AccessGrant, SproutError> {
        self.call(Method::PUT, &["access_grants", id], &[], Some(limits)).await
    }

    /// `DELETE /access_grants/{id}`: the login can no longer watch the video. Any 2xx counts.
    pub async fn delete_access_grant(&self, id: &str) -> Result<(), SproutError> {
        self.call::<(), serde::de::IgnoredAny>(Method::DELETE, &["access_grants", id], &[], None).await.map(|_| ())
    }

    pub async fn list_access_grants(&self) -> Result<Vec<AccessGrant>, SproutError> {
        self.all(&["access_grants"], "access_grants", &[]).await
    }

    pub async fn create_access_grant(&self, video_id: &str, login_id: &str) -> Result<AccessGrant, SproutError> {
        let body = serde_json::json!({ "video_id": video_id, "login_id": login_id });
        self.call(Method::POST, &["access_grants"], &[], Some(&body)).await
    }

    /// One page of engagement sessions, account-wide or for one video.
    pub async fn sessions_page(
        &self,
        video_id: Option<&str>,
        q: &SessionQuery,
        page: u32,
        per_page: u32,
    ) -> Result<Page<EngagementSession>, SproutError> {
        let params = session_params(q);
        let p = match video_id {
            Some(v) => self.page(&["stats", "engagement", v, "sessions"], "sessions", &params, page, per_page).await?,
            None => self.page(&["stats", "engagement", "sessions"], "sessions", &params, page, per_page).await?,
        };
        check_sessions(&p.items)?;
        Ok(p)
    }

    /// Every engagement session matching `q`, account-wide or for one video.
    pub async fn sessions(
        &self,
        video_id: Option<&str>,
        q: &SessionQuery,
    ) -> Result<Vec<EngagementSession>, SproutError> {
        let params = session_params(q);
        let all = match video_id {
            Some(v) => self.all(&["stats", "engagement", v, "sessions"], "sessions", &params).await?,
            None => self.all(&["stats", "engagement", "sessions"], "sessions", &params).await?,
        };
        check_sessions(&all)?;
        Ok(all)
    }

    /// One page of a list. The request is built here (same path and filters, this page number);
    /// the server's `next_page` URL is only read as "there is more".
    pub async fn page<T: DeserializeOwned>(
        &self,
        path: &[&str],
        items_key: &str,
        params: &[(&str, String)],
        page: u32,
        per_page: u32,
    ) -> Result<Page<T>, SproutError> {
        let mut q: Vec<(&str, String)> = params.to_vec();
        q.push(("page", page.max(1).to_string()));
        q.push(("per_page", per_page.clamp(1, MAX_PER_PAGE).to_string()));
        let mut body: serde_json::Map<String, Value> = self.call(Method::GET, path, &q, None::<&()>).await?;
        let at = format!("/{}", path.join("/"));
        let items = match body.remove(items_key) {
            Some(Value::Array(a)) => a
                .into_iter()
                .map(serde_json::from_value)
                .collect::<Result<Vec<T>, _>>()
                .map_err(|e| SproutError::Decode(format!("{items_key}: {e}")))?,
            other => {
                let mut found: Vec<String> = body.keys().cloned().collect();
                if let Some(v) = &other {
                    found.push(format!("{items_key} (not a list: {})", json_kind(v)));
                }
                found.sort();
                return Err(SproutError::Drift { at, expected: format!("a list under \"{items_key}\""), found });
            }
        };
        let total = body.get("total").and_then(Value::as_u64);
        let next_page = matches!(body.get("next_page"), Some(Value::String(s)) if !s.is_empty());
        // `total`, when given, decides: more even where `next_page` is missing, and no more once
        // everything was seen even if `next_page` keeps coming (a server that ignores `page`).
        let seen = u64::from(page.max(1) - 1) * u64::from(per_page.clamp(1, MAX_PER_PAGE)) + items.len() as u64;
        let has_next = !items.is_empty()
            && match total {
                Some(t) => seen < t,
                None => next_page,
            };
        Ok(Page { items, total, has_next })
    }

    async fn all<T: DeserializeOwned>(
        &self,
        path: &[&str],
        items_key: &str,
        params: &[(&str, String)],
    ) -> Result<Vec<T>, SproutError> {
        let mut out = Vec::new();
        let mut page = 1;
        loop {
            let p: Page<T> = self.page(path, items_key, params, page, MAX_PER_PAGE).await?;
            let n = p.items.len();
            out.extend(p.items);
            if !p.has_next || n == 0 || page >= MAX_PAGES {
                return Ok(out);
            }
            page += 1;
        }
    }

    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        crate::http::build_url(&self.settings.base_url, segments, query)
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T, SproutError> {
        let url = self.url(segments, query);
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| SproutError::Decode(e.to_string()))?),
            None => None,
        };
        // GET, PUT and DELETE leave the same state when repeated; a POST creates.
        let replay = if method == Method::POST { Replay::Once } else { Replay::Idempotent };
        let renewed = AtomicBool::new(false);
        let what = format!("SproutVideo {method} {}", url.path());
        let (method, url, body, renewed) = (&method, &url, &body, &renewed);
        drive(&self.settings.retry, replay, &what, move |a| self.attempt(method, url, body.as_deref(), a, renewed))
            .await
            .map_err(|stop| match stop {
                Stop::Failed(e) => e,
                Stop::MayHaveWritten(e) => SproutError::MayHaveWritten(format!("{method} {}: {e}", url.path())),
                Stop::Deadline { wait, last: SproutError::RateLimited { .. }, .. } => {
                    SproutError::RateLimited { retry_after: Some(wait) }
                }
                Stop::Deadline { last: e @ SproutError::KeyUnavailable(_), .. } => e,
                Stop::Deadline { attempts, last, .. } => {
                    SproutError::DeadlineExceeded(format!("after {attempts} attempt(s): {last}"))
                }
            })
    }

    /// One attempt: pacing, the key, the request, and what its answer means for a retry.
    async fn attempt<T: DeserializeOwned>(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&[u8]>,
        a: Attempt,
        renewed: &AtomicBool,
    ) -> Result<T, Failure<SproutError>> {
        // The key first: the wait for a place in the window, taken last, is bounded by what is
        // left of the deadline after it.
        let began = std::time::Instant::now();
        let key = self.keys.key().await.map_err(|e| {
            if e.is_retryable() { Failure::NotApplied { error: e, wait: None } } else { Failure::Final(e) }
        })?;
        // A pause SproutVideo asked for, or a full window, that outlasts the deadline ends the
        // call rather than waiting.
        let _slot = match self.limiter.acquire_within(a.time_left.map(|t| t.saturating_sub(began.elapsed()))).await {
            Ok(slot) => slot,
            Err(left) => return Err(Failure::Final(SproutError::RateLimited { retry_after: Some(left) })),
        };
        let mut rb = self
            .http
            .request(method.clone(), url.clone())
            .header("SproutVideo-Api-Key", key.expose_secret())
            .header("Accept", "application/json");
        if let Some(b) = body {
            rb = rb.header("Content-Type", "application/json;charset=utf-8").body(b.to_vec());
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                let error = SproutError::Transport(what.into());
                // A connection that was never made carried nothing.
                return Err(if e.is_connect() {
                    Failure::NotApplied { error, wait: None }
                } else {
                    Failure::Unknown { error, wait: None }
                });
            }
        };
        let status = resp.status();
        let retry_after = parse_retry_after(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()));
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(_) => {
                let error = SproutError::Transport(format!("the answer ({status}) was cut off"));
                return Err(Failure::Unknown { error, wait: None });
            }
        };
        if status.is_success() {
            if let Some(r) = &self.recorder {
                r.keep(method.as_str(), &self.settings.base_url, url, &bytes);
            }
            // An empty answer reads as null: a call that expects a record fails on it loudly.
            let json: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"null" } else { &bytes };
            return serde_json::from_slice(json).map_err(|e| Failure::Final(SproutError::Decode(e.to_string())));
        }
        let message = error_message(&bytes, status);
        match status {
            StatusCode::TOO_MANY_REQUESTS => {
                let wait = retry_after.unwrap_or_else(|| self.settings.retry.backoff(a.number)).min(MAX_SERVER_WAIT);
                self.limiter.pause(wait).await;
                Err(Failure::NotApplied { error: SproutError::RateLimited { retry_after }, wait: Some(wait) })
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let err = SproutError::Unauthorized { status: status.as_u16(), message };
                if !renewed.swap(true, Ordering::SeqCst) && self.keys.renew_after_unauthorized(&key).await {
                    Err(Failure::Renewed(err))
                } else {
                    Err(Failure::Final(err))
                }
            }
            StatusCode::NOT_FOUND => Err(Failure::Final(SproutError::NotFound(message))),
            s if s.is_server_error() => {
                Err(Failure::Unknown { error: SproutError::Server { status: s.as_u16(), message }, wait: retry_after })
            }
            s => Err(Failure::Final(SproutError::Invalid { status: s.as_u16(), message })),
        }
    }
}

/// Every session must carry what the rules read: the video, and how much was watched (seconds
/// or percent, under one of the names in [`session_fields`]). A session without them would read
/// as "watched 0%", so it is a shape error instead.
fn check_sessions(items: &[EngagementSession]) -> Result<(), SproutError> {
    use super::models::session_fields as f;
    for s in items {
        let missing = if s.video_id.is_none() {
            Some(format!("a video id under one of {:?}", f::VIDEO_ID))
        } else if s.seconds_watched.is_none() && s.percent_watched.is_none() {
            Some(format!("seconds watched under one of {:?} or a percent under one of {:?}", f::SECONDS, f::PERCENT))
        } else {
            None
        };
        if let Some(expected) = missing {
            let mut found: Vec<String> = s.extra.keys().cloned().collect();
            found.sort();
            return Err(SproutError::Drift { at: "an engagement session".into(), expected, found });
        }
    }
    Ok(())
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn session_params(q: &SessionQuery) -> Vec<(&'static str, String)> {
    let mut p = Vec::new();
    if let Some(d) = q.start_date {
        p.push(("start_date", d.format("%Y-%m-%d").to_string()));
    }
    if let Some(d) = q.end_date {
        p.push(("end_date", d.format("%Y-%m-%d").to_string()));
    }
    if let Some(e) = &q.vemail {
        p.push(("vemail", e.clone()));
    }
    p
}

fn error_message(bytes: &[u8], status: StatusCode) -> String {
    match serde_json::from_slice::<SproutErrorBody>(bytes).ok().and_then(|b| b.error) {
        Some(e) => e.into_vec().join("; "),
        None => {
            let raw: String = String::from_utf8_lossy(bytes).chars().take(200).collect();
            if raw.trim().is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { raw }
        }
    }
}
