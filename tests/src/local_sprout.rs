//! A local SproutVideo: videos, logins, access grants, engagement sessions and the account, with
//! SproutVideo's habits (`SproutVideo-Api-Key`, the paging envelope with full-URL `next_page`,
//! `null` rather than missing fields, `{"error": ...}` bodies, lists in `created_at` order, logins
//! whose only change is their password), a real per-minute window that answers 429, fault
//! injection, and admin paths:
//! - `POST /_admin/videos`, `/_admin/logins`, `/_admin/sessions`: seed records (JSON object or array);
//! - `POST /_admin/generate` `{viewers, videos, sessions_per_viewer, email_share}`: bulk data;
//! - `POST /_admin/webhook` `{video_id, url}`: POST the video JSON to `url`, as SproutVideo does;
//! - `GET /_admin/access`: every login and access grant;
//! - `PUT /_admin/faults` (including `lost_answers`: writes applied, then answered with an
//!   error), `PUT /_admin/config`, `GET /_admin/requests`, `POST /_admin/reset`.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use shared::sprout::session_fields;
use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SproutBehaviour {
    /// Keys accepted; empty means any non-empty key.
    pub api_keys: Vec<String>,
    pub per_minute: u32,
    /// Window length (60 s in SproutVideo; shorter for time-scaled tests).
    pub window_ms: u64,
    /// Write timestamps with a `-05:00` offset instead of `Z`.
    pub offset_timestamps: bool,
    /// `next_page` URLs leave out the request's filters (the reported trap). They always keep
    /// `per_page`, as the documented example (`?page=3&per_page=25`) shows.
    pub next_page_drops_filters: bool,
    /// Base URL written into `next_page`/`previous_page`.
    pub public_base: String,
    /// List keys answered under another name (e.g. `sessions` → `engagement_sessions`), to
    /// show what the clients do when the real API's shape differs from the assumed one.
    pub renamed_list_keys: BTreeMap<String, String>,
}

impl Default for SproutBehaviour {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            per_minute: 100,
            window_ms: 60_000,
            offset_timestamps: false,
            next_page_drops_filters: true,
            public_base: "http://127.0.0.1:4020/v1".into(),
            renamed_list_keys: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SproutFaults {
    pub error_rate: f64,
    pub rate_limit_rate: f64,
    pub retry_after_secs: Option<u64>,
    pub latency_ms: u64,
    /// Statuses for the next requests, in order.
    pub next_statuses: VecDeque<u16>,
    /// Writes that are applied and then answered with an error status instead of their answer
    /// (a lost answer): the first entry whose method and path match is used up.
    pub lost_answers: VecDeque<LostAnswer>,
    /// Writes refused with `status` before anything is applied: the first entry whose method
    /// and path match is used up.
    pub refused: VecDeque<LostAnswer>,
}

/// A write that takes effect but is answered `status` (e.g. a 500 after the grant was made).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LostAnswer {
    pub method: String,
    /// Matches when the request path ends with this (`/access_grants/bulk`).
    pub path_ends_with: String,
    pub status: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SproutRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
}

#[derive(Default)]
struct Store {
    behaviour: SproutBehaviour,
    faults: SproutFaults,
    videos: BTreeMap<String, Map<String, Value>>,
    logins: BTreeMap<String, Map<String, Value>>,
    /// Each login's password, by login id (never part of an answer).
    login_passwords: BTreeMap<String, String>,
    grants: BTreeMap<String, Map<String, Value>>,
    /// The order videos, logins and grants were created in (ties of `created_at`, which has
    /// whole seconds, are listed in this order).
    created: BTreeMap<String, u64>,
    /// In creation order.
    sessions: Vec<Map<String, Value>>,
    window: VecDeque<Instant>,
    log: Vec<SproutRequest>,
    seq: u64,
}

#[derive(Clone)]
pub struct LocalSprout {
    store: Arc<Mutex<Store>>,
    http: reqwest::Client,
}

/// Seed for one video.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct VideoSeed {
    pub id: Option<String>,
    pub title: String,
    pub duration: Option<f64>,
    pub tags: Vec<String>,
    pub require_email: bool,
}

/// Seed for one session.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionSeed {
    pub video_id: String,
    pub vemail: Option<String>,
    pub seconds_watched: Option<f64>,
    pub percent_watched: Option<f64>,
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Generate {
    pub viewers: usize,
    pub videos: usize,
    pub sessions_per_viewer: usize,
    /// Share of sessions that carry an email (the rest are anonymous).
    pub email_share: f64,
    /// Also create a login for every n-th viewer (0 = none).
    pub login_every: usize,
    pub email_domain: String,
}

impl Default for Generate {
    fn default() -> Self {
        Self {
            viewers: 10,
            videos: 3,
            sessions_per_viewer: 2,
            email_share: 1.0,
            login_every: 0,
            email_domain: "example.com".into(),
        }
    }
}

impl LocalSprout {
    pub fn new(behaviour: SproutBehaviour) -> Self {
        Self { store: Arc::new(Mutex::new(Store { behaviour, ..Default::default() })), http: reqwest::Client::new() }
    }

    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    /// Serves on `addr` in the background and points `next_page` links at it.
    pub async fn spawn(&self, addr: &str) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        self.store.lock().await.behaviour.public_base = format!("http://{bound}/v1");
        let app = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(bound)
    }

    pub async fn set_faults(&self, f: SproutFaults) {
        self.store.lock().await.faults = f;
    }

    pub async fn update_behaviour(&self, f: impl FnOnce(&mut SproutBehaviour)) {
        f(&mut self.store.lock().await.behaviour);
    }

    pub async fn requests(&self) -> Vec<SproutRequest> {
        self.store.lock().await.log.clone()
    }

    pub async fn add_video(&self, v: VideoSeed) -> String {
        let mut s = self.store.lock().await;
        insert_video(&mut s, v)
    }

    pub async fn add_login(&self, email: &str) -> String {
        let mut s = self.store.lock().await;
        insert_login(&mut s, email)
    }

    /// Forgets a login by email (as if it was deleted in SproutVideo); false when none matched.
    pub async fn remove_login(&self, email: &str) -> bool {
        let mut s = self.store.lock().await;
        let before = s.logins.len();
        s.logins.retain(|_, l| l.get("email").and_then(Value::as_str) != Some(email));
        s.logins.len() != before
    }

    pub async fn add_session(&self, seed: SessionSeed) -> String {
        let mut s = self.store.lock().await;
        insert_session(&mut s, seed)
    }

    pub async fn generate(&self, g: Generate) -> Value {
        let mut s = self.store.lock().await;
        generate(&mut s, &g)
    }

    /// The video JSON SproutVideo would POST to a webhook URL.
    /// Every login and access grant, as the API would list them.
    /// The password the login of `email` was created or last updated with (tests compare it
    /// with what GHL holds); None without such a login.
    pub async fn login_password(&self, email: &str) -> Option<String> {
        let s = self.store.lock().await;
        let id = s.logins.iter().find(|(_, l)| l["email"] == email).map(|(id, _)| id.clone())?;
        s.login_passwords.get(&id).cloned()
    }

    pub async fn access_json(&self) -> Value {
        let s = self.store.lock().await;
        json!({"logins": by_created_at(&s, &s.logins), "access_grants": by_created_at(&s, &s.grants)})
    }

    pub async fn video_json(&self, id: &str) -> Option<Value> {
        let s = self.store.lock().await;
        s.videos.get(id).map(|v| Value::Object(v.clone()))
    }

    /// Sends the video-processed webhook (the bare video JSON) to `url`; returns the status.
    pub async fn send_webhook(&self, video_id: &str, url: &str) -> Result<u16, String> {
        let body = self.video_json(video_id).await.ok_or("no such video")?;
        let r = self.http.post(url).json(&body).send().await.map_err(|e| e.to_string())?;
        Ok(r.status().as_u16())
    }
}

fn hex_id(s: &mut Store, len: usize) -> String {
    s.seq += 1;
    let mut id = format!("{:x}", s.seq);
    while id.len() < len {
        id.insert(0, char::from_digit(fastrand::u32(..16), 16).expect("hex digit"));
    }
    id
}

/// A list's records as SproutVideo lists them: by `created_at`, oldest first (the documented
/// default order of videos, logins and access grants).
fn by_created_at(s: &Store, records: &BTreeMap<String, Map<String, Value>>) -> Vec<Value> {
    let created = |id: &str, m: &Map<String, Value>| {
        let at = m.get("created_at").and_then(Value::as_str).and_then(|t| DateTime::parse_from_rfc3339(t).ok());
        (at.map(|t| t.with_timezone(&Utc)), s.created.get(id).copied().unwrap_or(u64::MAX))
    };
    let mut items: Vec<(&String, &Map<String, Value>)> = records.iter().collect();
    items.sort_by_key(|(id, m)| created(id, m));
    items.into_iter().map(|(_, m)| Value::Object(m.clone())).collect()
}

fn ts(s: &Store, at: DateTime<Utc>) -> Value {
    if s.behaviour.offset_timestamps {
        let off = FixedOffset::west_opt(5 * 3600).expect("offset");
        json!(at.with_timezone(&off).to_rfc3339_opts(SecondsFormat::Secs, false))
    } else {
        json!(at.to_rfc3339_opts(SecondsFormat::Secs, true))
    }
}

fn insert_video(s: &mut Store, v: VideoSeed) -> String {
    let id = v.id.clone().unwrap_or_else(|| hex_id(s, 18));
    let now = ts(s, Utc::now());
    let media = format!("https://images.sproutvideo.com/{id}");
    let files = format!("https://api-files.sproutvideo.com/file/{id}/7ca00d6d622a8e8d");
    let mut m = Map::new();
    for (k, val) in [
        ("id", json!(id)),
        ("title", json!(v.title)),
        ("description", json!("")),
        ("created_at", now.clone()),
        ("updated_at", now),
        ("state", json!("deployed")),
        ("privacy", json!(2)),
        ("password", Value::Null),
        ("duration", json!(v.duration)),
        ("width", json!(1920)),
        ("height", json!(1080)),
        ("plays", json!(0)),
        ("progress", json!(100)),
        ("tags", json!(v.tags)),
        ("folder_id", Value::Null),
        ("embed_code", json!(format!("<iframe src='https://videos.sproutvideo.com/embed/{id}'></iframe>"))),
        ("security_token", json!("7ca00d6d622a8e8d")),
        ("embedded_url", Value::Null),
        ("requires_signed_embeds", Value::Null),
        ("selected_poster_frame_number", json!(0)),
        ("source_video_file_size", json!(10_485_760)),
        ("download_sd", Value::Null),
        ("download_hd", Value::Null),
        ("download_source", Value::Null),
        ("allowed_domains", Value::Null),
        ("allowed_ips", Value::Null),
        ("player_social_sharing", Value::Null),
        ("player_embed_sharing", Value::Null),
        ("require_email", json!(v.require_email)),
        ("require_name", json!(false)),
        ("hide_on_site", json!(false)),
        (
            "assets",
            json!({
                "videos": {
                    "240p": format!("{files}/240.mp4"), "360p": format!("{files}/360.mp4"),
                    "480p": format!("{files}/480.mp4"), "720p": format!("{files}/720.mp4"),
                    "1080p": format!("{files}/1080.mp4"), "2k": null, "4k": null, "8k": null,
                    "source": format!("{files}/source.mp4")
                },
                "thumbnails": [format!("{media}/thumbnail_0.jpg")],
                "poster_frames": [format!("{media}/poster_frame_0.jpg")]
            }),
        ),
    ] {
        m.insert(k.into(), val);
    }
    let seq = s.created.len() as u64;
    s.created.insert(id.clone(), seq);
    s.videos.insert(id.clone(), m);
    id
}

fn insert_login(s: &mut Store, email: &str) -> String {
    let id = hex_id(s, 16);
    let now = ts(s, Utc::now());
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    m.insert("email".into(), json!(email));
    m.insert("created_at".into(), now.clone());
    m.insert("updated_at".into(), now);
    let seq = s.created.len() as u64;
    s.created.insert(id.clone(), seq);
    s.logins.insert(id.clone(), m);
    id
}

/// The session object, written with the first name of each field in [`session_fields`].
fn insert_session(s: &mut Store, seed: SessionSeed) -> String {
    let id = hex_id(s, 16);
    let at = seed.created_at.unwrap_or_else(Utc::now);
    let t = ts(s, at);
    let mut m = Map::new();
    m.insert(session_fields::ID[0].into(), json!(id));
    m.insert(session_fields::VIDEO_ID[0].into(), json!(seed.video_id));
    m.insert(session_fields::EMAIL[0].into(), json!(seed.vemail));
    m.insert(session_fields::SECONDS[0].into(), json!(seed.seconds_watched));
    m.insert(session_fields::PERCENT[0].into(), json!(seed.percent_watched));
    m.insert(session_fields::CREATED[0].into(), t.clone());
    m.insert(session_fields::UPDATED[0].into(), t);
    s.sessions.push(m);
    id
}

fn generate(s: &mut Store, g: &Generate) -> Value {
    let mut videos = Vec::new();
    for i in 0..g.videos.max(1) {
        let id = insert_video(
            s,
            VideoSeed {
                title: format!("Lesson {}", i + 1),
                duration: Some(600.0),
                require_email: true,
                ..Default::default()
            },
        );
        videos.push(id);
    }
    let mut with_email = 0;
    for v in 0..g.viewers {
        let email = format!("viewer{v}@{}", g.email_domain);
        if g.login_every > 0 && v % g.login_every == 0 {
            insert_login(s, &email);
        }
        for k in 0..g.sessions_per_viewer.max(1) {
            let video = videos[(v + k) % videos.len()].clone();
            let gives_email = fastrand::f64() < g.email_share;
            if gives_email {
                with_email += 1;
            }
            insert_session(
                s,
                SessionSeed {
                    video_id: video,
                    vemail: gives_email.then(|| email.clone()),
                    seconds_watched: Some((60 + (v * 37 + k * 101) % 540) as f64),
                    percent_watched: None,
                    created_at: Some(Utc::now() - chrono::Duration::minutes((v + k) as i64)),
                },
            );
        }
    }
    json!({"videos": videos, "viewers": g.viewers, "sessions_with_email": with_email})
}

async fn handle(State(sv): State<LocalSprout>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    if let Some(rest) = path.strip_prefix("/_admin/") {
        return admin(&sv, &method, rest, &body).await;
    }
    let latency = {
        let s = sv.store.lock().await;
        Duration::from_millis(s.faults.latency_ms)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut s = sv.store.lock().await;
    if let Some(i) =
        s.faults.refused.iter().position(|l| l.method == method.as_str() && path.ends_with(&l.path_ends_with))
    {
        let refused = s.faults.refused.remove(i).expect("found above");
        s.log.push(SproutRequest { method: method.to_string(), path, query, status: refused.status });
        let code = StatusCode::from_u16(refused.status).expect("status");
        return (code, axum::Json(json!({"error": "Internal Server Error"}))).into_response();
    }
    let (mut status, mut body, retry_after) = respond(&mut s, &method, &path, &query, &headers, &body);
    if (200..300).contains(&status)
        && let Some(i) =
            s.faults.lost_answers.iter().position(|l| l.method == method.as_str() && path.ends_with(&l.path_ends_with))
    {
        let lost = s.faults.lost_answers.remove(i).expect("found above");
        status = lost.status;
        body = Value::String("<html>Internal Server Error</html>".into());
    }
    s.log.push(SproutRequest { method: method.to_string(), path, query, status });
    let mut resp = if status == 204 {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::from_u16(status).expect("status"), axum::Json(body)).into_response()
    };
    if let Some(ra) = retry_after {
        resp.headers_mut().insert("retry-after", HeaderValue::from(ra));
    }
    resp
}

fn err(status: u16, msg: &str) -> (u16, Value, Option<u64>) {
    (status, json!({"error": msg}), None)
}

fn respond(
    s: &mut Store,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    raw: &[u8],
) -> (u16, Value, Option<u64>) {
    let key = headers.get("sproutvideo-api-key").and_then(|v| v.to_str().ok()).unwrap_or("");
    if key.is_empty() || (!s.behaviour.api_keys.is_empty() && !s.behaviour.api_keys.iter().any(|k| k == key)) {
        return err(401, "Unauthorized");
    }
    let now = Instant::now();
    let window = Duration::from_millis(s.behaviour.window_ms.max(1));
    while s.window.front().is_some_and(|t| now.duration_since(*t) >= window) {
        s.window.pop_front();
    }
    if s.window.len() as u32 >= s.behaviour.per_minute {
        let wait = s.window.front().map(|t| (window - now.duration_since(*t)).as_secs().max(1));
        return (429, json!({"error": "Too Many Requests"}), wait);
    }
    s.window.push_back(now);
    if let Some(st) = s.faults.next_statuses.pop_front() {
        return if st == 429 {
            (429, json!({"error": "Too Many Requests"}), s.faults.retry_after_secs)
        } else {
            err(st, "Injected failure")
        };
    }
    let roll = |p: f64| p > 0.0 && fastrand::f64() < p;
    if roll(s.faults.rate_limit_rate) {
        return (429, json!({"error": "Too Many Requests"}), s.faults.retry_after_secs);
    }
    if roll(s.faults.error_rate) {
        return (500, Value::String("<html>Internal Server Error</html>".into()), None);
    }
    let q: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let body: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let segs: Vec<&str> = path.trim_start_matches("/v1/").trim_start_matches('/').split('/').collect();
    if !path.starts_with("/v1/") {
        return err(404, "Not Found");
    }
    match (method.as_str(), segs.as_slice()) {
        ("GET", ["account"]) => (
            200,
            json!({"id": "acc1", "company": "Local SproutVideo", "first_name": "Local", "last_name": "Owner",
                   "download_sd": false, "download_hd": false}),
            None,
        ),
        ("GET", ["videos"]) => {
            let mut items = by_created_at(s, &s.videos);
            // The documented `tag_id` filter: videos carrying that tag.
            if let Some(tag) = get("tag_id") {
                items.retain(|v| {
                    v["tags"].as_array().is_some_and(|t| t.iter().any(|x| x.as_str() == Some(tag.as_str())))
                });
            }
            paged(s, "videos", path, &q, items)
        }
        ("GET", ["videos", id]) => match s.videos.get(*id) {
            Some(v) => (200, Value::Object(v.clone()), None),
            None => err(404, "Not Found"),
        },
        ("GET", ["logins"]) => {
            let items = by_created_at(s, &s.logins);
            paged(s, "logins", path, &q, items)
        }
        ("GET", ["logins", id]) => match s.logins.get(*id) {
            Some(v) => (200, Value::Object(v.clone()), None),
            None => err(404, "Not Found"),
        },
        ("POST", ["logins"]) => {
            let (Some(email), Some(pw)) = (body["email"].as_str(), body["password"].as_str()) else {
                return (422, json!({"error": ["email is required", "password is required"]}), None);
            };
            let id = insert_login(s, email);
            s.login_passwords.insert(id.clone(), pw.to_string());
            (201, Value::Object(s.logins[&id].clone()), None)
        }
        // A deleted login's grants go with it (UNCONFIRMED; the plausible reading of "a login
        // can watch a video only if a grant exists for both").
        ("DELETE", ["logins", id]) => match s.logins.remove(*id) {
            Some(_) => {
                s.grants.retain(|_, g| g["login_id"].as_str() != Some(*id));
                (204, Value::Null, None)
            }
            None => err(404, "Not Found"),
        },
        ("PUT", ["logins", id]) => {
            // The documented change of a login is its password; anything else is refused.
            let others: Vec<String> = body
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
                .filter(|k| *k != "password")
                .map(|k| format!("{k} cannot be changed; a login's password can"))
                .collect();
            if !others.is_empty() {
                return (422, json!({ "error": others }), None);
            }
            if body["password"].as_str().is_none_or(str::is_empty) {
                return (422, json!({"error": ["password is required"]}), None);
            }
            let stamp = ts(s, Utc::now());
            let password = body["password"].as_str().unwrap_or_default().to_string();
            match s.logins.get_mut(*id) {
                Some(l) => {
                    l.insert("updated_at".into(), stamp);
                    s.login_passwords.insert(id.to_string(), password);
                    (200, Value::Object(l.clone()), None)
                }
                None => err(404, "Not Found"),
            }
        }
        ("GET", ["access_grants"]) => {
            let items = by_created_at(s, &s.grants);
            paged(s, "access_grants", path, &q, items)
        }
        ("POST", ["access_grants"]) => match insert_grant(s, &body) {
            Ok(id) => (201, Value::Object(s.grants[&id].clone()), None),
            Err(e) => (422, json!({ "error": e }), None),
        },
        ("POST", ["access_grants", "bulk"]) => {
            // The body is a JSON array of grants; all are checked before any is made.
            let Some(list) = body.as_array() else {
                return (422, json!({"error": "the body must be a JSON array of access grants"}), None);
            };
            let refused: Vec<String> =
                list.iter().enumerate().filter_map(|(i, g)| grant_error(g).map(|e| format!("[{i}]: {e}"))).collect();
            if !refused.is_empty() {
                return (422, json!({ "error": refused }), None);
            }
            let made: Vec<Value> = list
                .iter()
                .map(|g| {
                    let id = insert_grant(s, g).expect("checked above");
                    Value::Object(s.grants[&id].clone())
                })
                .collect();
            (201, Value::Array(made), None)
        }
        ("GET", ["access_grants", id]) => match s.grants.get(*id) {
            Some(g) => (200, Value::Object(g.clone()), None),
            None => err(404, "Not Found"),
        },
        ("PUT", ["access_grants", id]) => {
            // The documented settings of a grant; its login and video stay.
            let refused: Vec<String> = body
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| !matches!(k.as_str(), "allowed_plays" | "access_ends_at"))
                .map(|(k, _)| format!("{k} cannot be changed"))
                .collect();
            if !refused.is_empty() {
                return (422, json!({ "error": refused }), None);
            }
            let stamp = ts(s, Utc::now());
            match s.grants.get_mut(*id) {
                Some(g) => {
                    for (k, v) in body.as_object().into_iter().flatten() {
                        g.insert(k.clone(), v.clone());
                    }
                    g.insert("updated_at".into(), stamp);
                    (200, Value::Object(g.clone()), None)
                }
                None => err(404, "Not Found"),
            }
        }
        // What SproutVideo answers to a delete is not documented: here, 204 without a body.
        ("DELETE", ["access_grants", id]) => match s.grants.remove(*id) {
            Some(_) => (204, Value::Null, None),
            None => err(404, "Not Found"),
        },
        ("GET", ["stats", "engagement", "sessions"]) => {
            let items = filter_sessions(s, None, &get);
            paged(s, "sessions", path, &q, items)
        }
        ("GET", ["stats", "engagement", video, "sessions"]) => {
            if !s.videos.contains_key(*video) {
                return err(404, "Not Found");
            }
            let items = filter_sessions(s, Some(video), &get);
            paged(s, "sessions", path, &q, items)
        }
        _ => err(404, "Not Found"),
    }
}

/// Why a grant to create is refused, if it is.
fn grant_error(g: &Value) -> Option<String> {
    if g["video_id"].as_str().is_none_or(str::is_empty) || g["login_id"].as_str().is_none_or(str::is_empty) {
        return Some("video_id and login_id are required".into());
    }
    if g.get("allowed_plays").is_some_and(|p| !p.is_null() && !p.is_i64()) {
        return Some("allowed_plays must be a whole number".into());
    }
    None
}

fn insert_grant(s: &mut Store, body: &Value) -> Result<String, String> {
    if let Some(e) = grant_error(body) {
        return Err(e);
    }
    let id = hex_id(s, 16);
    let now = ts(s, Utc::now());
    let mut m = Map::new();
    for (k, val) in [
        ("id", json!(id)),
        ("video_id", body["video_id"].clone()),
        ("login_id", body["login_id"].clone()),
        ("allowed_plays", body.get("allowed_plays").cloned().unwrap_or(Value::Null)),
        ("access_ends_at", body.get("access_ends_at").cloned().unwrap_or(Value::Null)),
        ("created_at", now.clone()),
        ("updated_at", now),
    ] {
        m.insert(k.into(), val);
    }
    let seq = s.created.len() as u64;
    s.created.insert(id.clone(), seq);
    s.grants.insert(id.clone(), m);
    Ok(id)
}

fn filter_sessions(s: &Store, video: Option<&str>, get: &dyn Fn(&str) -> Option<String>) -> Vec<Value> {
    let day = |k: &str| get(k).and_then(|d| chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok());
    let (start, end, vemail) = (day("start_date"), day("end_date"), get("vemail"));
    s.sessions
        .iter()
        .filter(|m| video.is_none_or(|v| m[session_fields::VIDEO_ID[0]].as_str() == Some(v)))
        .filter(|m| {
            vemail
                .as_deref()
                .is_none_or(|e| m[session_fields::EMAIL[0]].as_str().is_some_and(|x| x.eq_ignore_ascii_case(e)))
        })
        .filter(|m| {
            let d = m[session_fields::CREATED[0]]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc).date_naive());
            match d {
                Some(d) => start.is_none_or(|s| d >= s) && end.is_none_or(|e| d <= e),
                None => true,
            }
        })
        .cloned()
        .map(Value::Object)
        .collect()
}

fn paged(s: &Store, key: &str, path: &str, q: &[(String, String)], items: Vec<Value>) -> (u16, Value, Option<u64>) {
    let get = |k: &str| q.iter().find(|(n, _)| n == k).and_then(|(_, v)| v.parse::<usize>().ok());
    let page = get("page").unwrap_or(1).max(1);
    let per_page = get("per_page").unwrap_or(25).clamp(1, 100);
    let total = items.len();
    let start = (page - 1) * per_page;
    let slice: Vec<Value> = items.into_iter().skip(start).take(per_page).collect();
    // Page links are full URLs with `page` and `per_page` (the documented example); the request's
    // filters follow unless the reported trap is on.
    let link = |p: usize| {
        let base = format!("{}{}", s.behaviour.public_base, path.trim_start_matches("/v1"));
        let mut params: Vec<(String, String)> =
            vec![("page".into(), p.to_string()), ("per_page".into(), per_page.to_string())];
        if !s.behaviour.next_page_drops_filters {
            params.extend(q.iter().filter(|(k, _)| k != "page" && k != "per_page").cloned());
        }
        let qs: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
        json!(format!("{base}?{qs}"))
    };
    let next = if start + per_page < total { link(page + 1) } else { Value::Null };
    let prev = if page > 1 { link(page - 1) } else { Value::Null };
    let key = s.behaviour.renamed_list_keys.get(key).map(String::as_str).unwrap_or(key);
    (200, json!({ key: slice, "total": total, "next_page": next, "previous_page": prev }), None)
}

async fn admin(sv: &LocalSprout, method: &Method, rest: &str, body: &[u8]) -> Response {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let items = |v: &Value| -> Vec<Value> {
        match v {
            Value::Array(a) => a.clone(),
            Value::Null => vec![],
            o => vec![o.clone()],
        }
    };
    let bad = |m: String| (StatusCode::BAD_REQUEST, axum::Json(json!({"error": m}))).into_response();
    match (method.as_str(), rest) {
        ("POST", "videos") => {
            let mut ids = Vec::new();
            let mut s = sv.store.lock().await;
            for it in items(&v) {
                match serde_json::from_value::<VideoSeed>(it) {
                    Ok(seed) => ids.push(insert_video(&mut s, seed)),
                    Err(e) => return bad(format!("bad video: {e}")),
                }
            }
            (StatusCode::CREATED, axum::Json(json!({"ids": ids}))).into_response()
        }
        ("POST", "logins") => {
            let mut ids = Vec::new();
            let mut s = sv.store.lock().await;
            for it in items(&v) {
                match it["email"].as_str() {
                    Some(e) => ids.push(insert_login(&mut s, e)),
                    None => return bad("email is required".into()),
                }
            }
            (StatusCode::CREATED, axum::Json(json!({"ids": ids}))).into_response()
        }
        ("POST", "sessions") => {
            let mut ids = Vec::new();
            let mut s = sv.store.lock().await;
            for it in items(&v) {
                match serde_json::from_value::<SessionSeed>(it) {
                    Ok(seed) => ids.push(insert_session(&mut s, seed)),
                    Err(e) => return bad(format!("bad session: {e}")),
                }
            }
            (StatusCode::CREATED, axum::Json(json!({"ids": ids}))).into_response()
        }
        ("POST", "generate") => match serde_json::from_value::<Generate>(if v.is_null() { json!({}) } else { v }) {
            Ok(g) => {
                let mut s = sv.store.lock().await;
                (StatusCode::CREATED, axum::Json(generate(&mut s, &g))).into_response()
            }
            Err(e) => bad(format!("bad generate request: {e}")),
        },
        ("POST", "webhook") => {
            let (Some(id), Some(url)) = (v["video_id"].as_str(), v["url"].as_str()) else {
                return bad("video_id and url are required".into());
            };
            match sv.send_webhook(id, url).await {
                Ok(status) => axum::Json(json!({"status": status})).into_response(),
                Err(e) => (StatusCode::BAD_GATEWAY, axum::Json(json!({"error": e}))).into_response(),
            }
        }
        ("PUT", "faults") => match serde_json::from_value::<SproutFaults>(v) {
            Ok(f) => {
                sv.store.lock().await.faults = f;
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => bad(format!("bad faults: {e}")),
        },
        ("PUT", "config") => match serde_json::from_value::<SproutBehaviour>(v) {
            Ok(b) => {
                sv.store.lock().await.behaviour = b;
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => bad(format!("bad config: {e}")),
        },
        ("GET", "requests") => axum::Json(json!({"requests": sv.store.lock().await.log})).into_response(),
        ("GET", "access") => axum::Json(sv.access_json().await).into_response(),
        ("POST", "reset") => {
            let mut s = sv.store.lock().await;
            let behaviour = s.behaviour.clone();
            *s = Store { behaviour, ..Default::default() };
            StatusCode::NO_CONTENT.into_response()
        }
        _ => (StatusCode::NOT_FOUND, axum::Json(json!({"error": "no such admin path"}))).into_response(),
    }
}
