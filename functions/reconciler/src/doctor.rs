//! `doctor`: checks a user's real setup, read-only, and says what to do about each problem.
//!
//! - GHL: the token authenticates and is a location token for `GHL_LOCATION_ID`; the scopes the
//!   sync needs answer (contacts read, custom fields read; nothing is written); every custom
//!   field of the mapping exists with a type its values fit, and so do the access rules' password
//!   (text) and end-date fields; the rate-limit headers are there,
//!   with the burst and daily budget left.
//! - SproutVideo: the key works; videos, logins and engagement sessions answer in the shapes the
//!   client reads (list keys, the fields the mapping and rules read, paging keys).
//! - AWS: the queue, the dead-letter queue, the table and the secret answer, and the secret has
//!   every key.
//!
//! It never writes to GHL or SproutVideo. With a capture folder it also reads one contact (its
//! tasks, notes and appointments, and the duplicate lookup of its email), one video, one login,
//! the access grants and one video's sessions, and saves every answer as it arrived, redacted
//! (emails, names, phones, ids and tokens replaced consistently), under the file names of the
//! contract fixtures in `tests/fixtures/` ([`capture_name`]): a capture put in their place is
//! checked against the clients and the local fakes by the fixture tests.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use shared::deps::Deps;
use shared::ghl::{GhlClient, GhlError, SearchRequest};
use shared::http::{RecordedAnswer, Recorder};
use shared::identity::Email;
use shared::mapping::{WatchFacts, typed_value};
use shared::sprout::{MAX_PER_PAGE, SessionQuery, SproutClient, SproutError};
use shared::state::StateStore;

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub area: &'static str,
    pub what: String,
    pub ok: bool,
    /// What was seen (for a ✓) or what is wrong (for a ✗).
    pub detail: String,
    /// What to do, for a ✗.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DoctorReport {
    pub checks: Vec<Check>,
}

impl DoctorReport {
    pub fn all_ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    fn pass(&mut self, area: &'static str, what: impl Into<String>, detail: impl Into<String>) {
        self.checks.push(Check { area, what: what.into(), ok: true, detail: detail.into(), fix: None });
    }

    fn fail(&mut self, area: &'static str, what: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) {
        self.checks.push(Check { area, what: what.into(), ok: false, detail: detail.into(), fix: Some(fix.into()) });
    }

    /// The table as printed: one line per check, and the fix under every ✗.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let mark = if c.ok { "✓" } else { "✗" };
            out.push_str(&format!("{mark} {:<12} {:<48} {}\n", c.area, c.what, c.detail));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("  {:<12} fix: {fix}\n", ""));
            }
        }
        let failed = self.checks.iter().filter(|c| !c.ok).count();
        out.push_str(&if failed == 0 {
            format!("all {} checks passed\n", self.checks.len())
        } else {
            format!("{failed} of {} checks failed\n", self.checks.len())
        });
        out
    }
}

/// Runs every check. `capture`: a folder to save the redacted answers in.
pub async fn run(deps: &Deps, capture: Option<&Path>) -> DoctorReport {
    let mut r = DoctorReport::default();
    let (ghl_answers, sprout_answers) = (Recorder::new(), Recorder::new());
    let (ghl_client, sprout_client) = match capture {
        Some(_) => (deps.ghl.recording(ghl_answers.clone()), deps.sprout.recording(sprout_answers.clone())),
        None => (deps.ghl.clone(), deps.sprout.clone()),
    };
    aws(deps, &mut r).await;
    let first_contact = ghl(deps, &ghl_client, &mut r).await;
    let first_records = sprout(&sprout_client, &mut r).await;
    if let Some(dir) = capture {
        let mut gaps = Gaps::default();
        capture_ghl(&ghl_client, first_contact.as_ref(), &mut gaps).await;
        capture_sprout(&sprout_client, &first_records, &mut gaps).await;
        let answers: Vec<(Service, RecordedAnswer)> = ghl_answers
            .answers()
            .into_iter()
            .map(|a| (Service::Ghl, a))
            .chain(sprout_answers.answers().into_iter().map(|a| (Service::SproutVideo, a)))
            .collect();
        let what = format!("answers saved to {}", dir.display());
        match save(dir, &answers) {
            Ok(n) => {
                let mut detail = format!("{n} files, redacted");
                if !gaps.none.is_empty() {
                    detail.push_str(&format!("; none to read: {}", gaps.none.join(", ")));
                }
                if gaps.failed.is_empty() {
                    r.pass("capture", what, detail);
                } else {
                    detail.push_str(&format!("; not read: {}", gaps.failed.join("; ")));
                    r.fail("capture", what, detail, "see the message; the other answers are saved");
                }
            }
            Err(e) => r.fail("capture", "answers saved", e.to_string(), "check the folder can be written"),
        }
    }
    r
}

/// The API an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Ghl,
    SproutVideo,
}

/// The file an answer is saved under (below the capture folder), by the API, the request's
/// method and its path below the API's base URL. These are the names of the contract fixtures
/// in `tests/fixtures/`. The answers to creating, reading and changing a login are all a login
/// (`sproutvideo/login.json`), and so are those of creating and reading an access grant.
pub fn capture_name(service: Service, method: &str, path: &str) -> Option<&'static str> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = method.to_ascii_uppercase();
    Some(match service {
        Service::Ghl => match (method.as_str(), segs.as_slice()) {
            ("GET", ["contacts", ""] | ["contacts"]) => "ghl/list_contacts.json",
            ("POST", ["contacts", ""] | ["contacts"]) => "ghl/create_contact.json",
            ("POST", ["contacts", "upsert"]) => "ghl/upsert_contact.json",
            ("POST", ["contacts", "search"]) => "ghl/search.json",
            ("GET", ["contacts", "search", "duplicate"]) => "ghl/duplicate.json",
            ("GET", ["contacts", "business", _]) => "ghl/contacts_by_business.json",
            ("GET", ["contacts", _]) => "ghl/get_contact.json",
            ("PUT", ["contacts", _]) => "ghl/update_contact.json",
            ("DELETE", ["contacts", _]) => "ghl/delete_contact.json",
            ("POST", ["contacts", _, "tags"]) => "ghl/add_tags.json",
            ("DELETE", ["contacts", _, "tags"]) => "ghl/remove_tags.json",
            ("GET", ["contacts", _, "tasks"]) => "ghl/tasks.json",
            ("POST", ["contacts", _, "tasks"]) => "ghl/create_task.json",
            ("GET", ["contacts", _, "tasks", _]) => "ghl/task.json",
            ("PUT", ["contacts", _, "tasks", _]) => "ghl/update_task.json",
            ("DELETE", ["contacts", _, "tasks", _]) => "ghl/delete_task.json",
            ("PUT", ["contacts", _, "tasks", _, "completed"]) => "ghl/complete_task.json",
            ("GET", ["contacts", _, "notes"]) => "ghl/notes.json",
            ("POST", ["contacts", _, "notes"]) => "ghl/create_note.json",
            ("GET", ["contacts", _, "notes", _]) => "ghl/note.json",
            ("PUT", ["contacts", _, "notes", _]) => "ghl/update_note.json",
            ("DELETE", ["contacts", _, "notes", _]) => "ghl/delete_note.json",
            ("GET", ["contacts", _, "appointments"]) => "ghl/appointments.json",
            ("GET", ["locations", _, "customFields"]) => "ghl/custom_fields.json",
            ("POST", ["oauth", "token"]) => "ghl/oauth_token.json",
            _ => return None,
        },
        Service::SproutVideo => match (method.as_str(), segs.as_slice()) {
            ("GET", ["account"]) => "sproutvideo/account.json",
            ("GET", ["videos"]) => "sproutvideo/videos.json",
            ("GET", ["videos", _]) => "sproutvideo/video.json",
            ("GET", ["logins"]) => "sproutvideo/logins.json",
            ("GET" | "PUT", ["logins", _]) | ("POST", ["logins"]) => "sproutvideo/login.json",
            ("GET", ["access_grants"]) => "sproutvideo/access_grants.json",
            ("POST", ["access_grants", "bulk"]) => "sproutvideo/access_grants_bulk.json",
            ("GET" | "PUT", ["access_grants", _]) | ("POST", ["access_grants"]) => "sproutvideo/access_grant.json",
            ("GET", ["stats", "engagement", "sessions"]) => "sproutvideo/sessions.json",
            ("GET", ["stats", "engagement", _, "sessions"]) => "sproutvideo/video_sessions.json",
            _ => return None,
        },
    })
}

/// What a capture's further reads left out: answers that failed, and records there were none of.
#[derive(Debug, Default)]
struct Gaps {
    failed: Vec<String>,
    none: Vec<String>,
}

/// For a capture, the reads of one contact beyond the checks.
async fn capture_ghl(ghl: &GhlClient, contact: Option<&shared::ghl::Contact>, gaps: &mut Gaps) {
    let Some(c) = contact else {
        gaps.none.push("a GHL contact (and its tasks, notes and appointments)".into());
        return;
    };
    let failed = |what: &str, e: GhlError| format!("GHL {what} ({e})");
    let unread = &mut gaps.failed;
    if let Err(e) = ghl.get_contact(&c.id).await {
        unread.push(failed("contact", e));
    }
    match ghl.list_tasks(&c.id).await {
        Ok(tasks) => match tasks.first() {
            Some(t) => {
                if let Err(e) = ghl.get_task(&c.id, &t.id).await {
                    unread.push(failed("task", e));
                }
            }
            None => gaps.none.push("a GHL task".into()),
        },
        Err(e) => unread.push(failed("tasks", e)),
    }
    match ghl.list_notes(&c.id).await {
        Ok(notes) => match notes.first() {
            Some(n) => {
                if let Err(e) = ghl.get_note(&c.id, &n.id).await {
                    unread.push(failed("note", e));
                }
            }
            None => gaps.none.push("a GHL note".into()),
        },
        Err(e) => unread.push(failed("notes", e)),
    }
    if let Err(e) = ghl.list_appointments(&c.id).await {
        unread.push(failed("appointments", e));
    }
    match c.email.as_deref() {
        Some(email) => {
            if let Err(e) = ghl.find_duplicate(Some(email), None).await {
                unread.push(failed("duplicate lookup", e));
            }
        }
        None => gaps.none.push("the GHL duplicate lookup (the contact has no email)".into()),
    }
}

/// The first video and login the checks read, for a capture's further reads.
#[derive(Debug, Default)]
struct FirstRecords {
    video: Option<String>,
    login: Option<String>,
}

/// For a capture, the reads of one video, one login, the access grants and one video's sessions.
async fn capture_sprout(sv: &SproutClient, first: &FirstRecords, gaps: &mut Gaps) {
    let unread = &mut gaps.failed;
    match &first.video {
        Some(v) => {
            if let Err(e) = sv.get_video(v).await {
                unread.push(format!("SproutVideo video ({e})"));
            }
            let q = SessionQuery::default();
            if let Err(e) = sv.sessions_page(Some(v), &q, 1, 5).await {
                unread.push(format!("SproutVideo sessions of a video ({e})"));
            }
        }
        None => gaps.none.push("a SproutVideo video (and its sessions)".into()),
    }
    match &first.login {
        Some(l) => {
            if let Err(e) = sv.get_login(l).await {
                unread.push(format!("SproutVideo login ({e})"));
            }
        }
        None => gaps.none.push("a SproutVideo login".into()),
    }
    if let Err(e) = sv.page::<Value>(&["access_grants"], "access_grants", &[], 1, 5).await {
        unread.push(format!("SproutVideo access grants ({e})"));
    }
}

async fn aws(deps: &Deps, r: &mut DoctorReport) {
    match deps.secrets.get().await {
        Ok(s) => {
            let mut missing = Vec::new();
            if s.signing_secrets.is_empty() {
                missing.push("signing_secrets");
            }
            if s.ghl_token.is_none() && s.ghl_oauth.is_none() {
                missing.push("ghl_token (or ghl_oauth)");
            }
            if s.sproutvideo_api_key.is_none() {
                missing.push("sproutvideo_api_key");
            }
            if missing.is_empty() {
                r.pass("aws", "secret has every key", deps.config.secret_id.clone());
            } else {
                r.fail(
                    "aws",
                    "secret has every key",
                    format!("missing: {}", missing.join(", ")),
                    "put the full JSON value in the secret (README, \"The secret\")",
                );
            }
        }
        Err(e) => r.fail(
            "aws",
            "secret readable",
            e.to_string(),
            "check SYNC_SECRET_ID, that the secret has a value, and the role's secretsmanager:GetSecretValue",
        ),
    }
    match deps.store.get_value("doctor#probe").await {
        Ok(_) => r.pass("aws", "state table answers", deps.config.table.clone()),
        Err(e) => {
            r.fail("aws", "state table answers", e.to_string(), "check SYNC_TABLE and the role's dynamodb:GetItem")
        }
    }
    let sqs = aws_sdk_sqs::Client::new(&deps.aws);
    let queues = [
        ("queue answers", Some(deps.config.queue_url.clone())),
        ("dead-letter queue answers", deps.config.dlq_url.clone()),
    ];
    for (what, url) in queues {
        let Some(url) = url else {
            r.fail("aws", what, "no URL configured", "set SYNC_DLQ_URL (the template sets it)");
            continue;
        };
        match sqs.get_queue_attributes().queue_url(&url).send().await {
            Ok(_) => r.pass("aws", what, url),
            Err(e) => r.fail(
                "aws",
                what,
                shared::aws::error_text(&e),
                "check the queue URL and the role's sqs:GetQueueAttributes",
            ),
        }
    }
}

/// What to do about a GHL error, by its kind.
fn ghl_fix(e: &GhlError, scope: &str) -> String {
    match e {
        GhlError::Unauthorized { .. } => format!(
            "use a sub-account Private Integration Token (or OAuth location token) with the {scope} scope, in the secret's ghl_token"
        ),
        GhlError::Forbidden { .. } => {
            "the token belongs to another location: set GHL_LOCATION_ID to the token's sub-account, or use that sub-account's token".into()
        }
        e if e.is_retryable() => "GHL did not answer in time; run doctor again".into(),
        _ => "see the message; check GHL_BASE_URL and GHL_LOCATION_ID".into(),
    }
}

/// The GHL checks; returns the first contact of the location, when there is one.
async fn ghl(deps: &Deps, ghl: &GhlClient, r: &mut DoctorReport) -> Option<shared::ghl::Contact> {
    let location = ghl.location_id().to_string();
    let defs = match ghl.custom_fields().await {
        Ok(defs) => {
            r.pass("ghl", "token works for the location", format!("location {location}"));
            r.pass("ghl", "scope locations/customFields.readonly", format!("{} custom fields", defs.len()));
            Some(defs)
        }
        Err(e) => {
            let fix = ghl_fix(&e, "locations/customFields.readonly");
            r.fail("ghl", "token works for the location", e.to_string(), fix);
            None
        }
    };
    let search = SearchRequest {
        location_id: String::new(),
        page_limit: 1,
        page: Some(1),
        search_after: None,
        query: None,
        filters: vec![],
        sort: vec![],
    };
    let first = match ghl.search_page(&search).await {
        Ok(page) => {
            r.pass("ghl", "scope contacts.readonly", format!("{} contacts in the location", page.total.unwrap_or(0)));
            page.contacts.into_iter().next()
        }
        Err(e) => {
            let fix = ghl_fix(&e, "contacts.readonly");
            r.fail("ghl", "scope contacts.readonly", e.to_string(), fix);
            None
        }
    };
    if let Some(defs) = defs {
        let mapping = &deps.config.mapping;
        let sample = WatchFacts {
            video_id: "v".into(),
            video_title: "A video".into(),
            video_tags: vec![],
            percent: 80.0,
            at: Utc::now(),
        };
        let email = Email::parse("doctor@example.com").expect("a valid email");
        let values = mapping.summary_fields(1, Some(&sample), &email);
        for key in mapping.custom_fields.keys() {
            let field_key = key.as_str();
            match defs.iter().find(|d| d.field_key.as_deref() == Some(field_key)) {
                None => r.fail(
                    "ghl",
                    format!("custom field {field_key}"),
                    "no such field in the location",
                    format!(
                        "create it in GHL (Settings → Custom Fields, key {field_key}) or remove it from the mapping"
                    ),
                ),
                Some(d) => {
                    let data_type = d.data_type.clone().unwrap_or_else(|| "TEXT".into());
                    match values.get(key).map(|v| typed_value(key, &data_type, v)) {
                        Some(Err(e)) => r.fail(
                            "ghl",
                            format!("custom field {field_key}"),
                            e.to_string(),
                            "change the field's type in GHL or the mapping's template",
                        ),
                        _ => r.pass("ghl", format!("custom field {field_key}"), format!("exists, {data_type}")),
                    }
                }
            }
        }
        // Course access: the password field (text) and any end-date field must exist.
        let mut access_fields: Vec<(&str, &[&str], &str)> = Vec::new();
        if let Some(key) = mapping.password_field() {
            access_fields.push((key, &["TEXT", "LARGE_TEXT"], "the new login's password"));
        }
        for rule in &mapping.access {
            if let Some(key) = rule.access_ends_at_field.as_deref() {
                access_fields.push((key, &["DATE", "TEXT"], "when access ends"));
            }
        }
        for (key, types, role) in access_fields {
            let what = format!("access field {key}");
            match defs.iter().find(|d| d.field_key.as_deref() == Some(key)) {
                None => r.fail(
                    "ghl",
                    what,
                    "no such field in the location",
                    format!(
                        "create a {} field with key {key} in GHL (Settings → Custom Fields): it holds {role}",
                        types[0]
                    ),
                ),
                Some(d) => {
                    let data_type = d.data_type.clone().unwrap_or_else(|| "TEXT".into());
                    if types.contains(&data_type.as_str()) {
                        r.pass("ghl", what, format!("exists, {data_type}"));
                    } else {
                        r.fail(
                            "ghl",
                            what,
                            format!("the field is {data_type}"),
                            format!("use a {} field: it holds {role}", types.join(" or ")),
                        );
                    }
                }
            }
        }
    }
    let stats = ghl.stats();
    match (stats.burst_remaining(), stats.daily_remaining()) {
        (Some(burst), Some(daily)) => {
            r.pass("ghl", "rate-limit headers", format!("{burst} left in the burst window, {daily} left today"))
        }
        _ => r.fail(
            "ghl",
            "rate-limit headers",
            "GHL's answers carry no X-RateLimit-Remaining / X-RateLimit-Daily-Remaining",
            "the pacing falls back to the configured budget (GHL_BURST_MAX); check GHL_BASE_URL points at the API",
        ),
    }
    first
}

/// A SproutVideo failure: what to do about it.
fn sprout_fix(e: &SproutError) -> String {
    match e {
        SproutError::Unauthorized { .. } | SproutError::NoKey(_) => {
            "put a valid key in the secret's sproutvideo_api_key (SproutVideo → Account Settings → API)".into()
        }
        SproutError::Drift { .. } => {
            "the API answers in a shape this version does not read: run `make doctor CAPTURE=dir`, and report the captured answer".into()
        }
        e if e.is_retryable() => "SproutVideo did not answer in time; run doctor again".into(),
        _ => "see the message; check SPROUTVIDEO_BASE_URL".into(),
    }
}

/// A list to read: its name, path, items key, and the fields (each with its alternative names)
/// the sync reads from every item.
type ListCheck = (&'static str, &'static [&'static str], &'static str, &'static [&'static [&'static str]]);

/// The keys an item lacks, of those the sync reads.
fn missing_keys(item: &Value, needed: &[&[&str]]) -> Vec<String> {
    needed
        .iter()
        .filter(|alts| !alts.iter().any(|k| item.get(*k).is_some_and(|v| !v.is_null())))
        .map(|alts| alts.join(" or "))
        .collect()
}

/// The SproutVideo checks; returns the first video and login they read.
async fn sprout(sv: &SproutClient, r: &mut DoctorReport) -> FirstRecords {
    let mut first = FirstRecords::default();
    match sv.account().await {
        Ok(_) => r.pass("sproutvideo", "API key works", "account answered"),
        Err(e) => {
            let fix = sprout_fix(&e);
            r.fail("sproutvideo", "API key works", e.to_string(), fix);
            return first;
        }
    }
    let lists: [ListCheck; 2] = [
        ("videos", &["videos"], "videos", &[&["id"], &["title"], &["duration"], &["tags"]]),
        ("logins", &["logins"], "logins", &[&["id"], &["email"]]),
    ];
    for (name, path, key, needed) in lists {
        match sv.page::<Value>(path, key, &[], 1, 5).await {
            Ok(page) => {
                let id = page.items.first().and_then(|i| i["id"].as_str()).map(str::to_string);
                if name == "videos" {
                    first.video = id;
                } else {
                    first.login = id;
                }
                let missing: Vec<String> = page.items.iter().flat_map(|i| missing_keys(i, needed)).collect();
                if !missing.is_empty() {
                    r.fail(
                        "sproutvideo",
                        format!("{name}: fields the sync reads"),
                        format!("missing: {}", dedup(missing).join(", ")),
                        "the API answers in a shape this version does not read; report the captured answer",
                    );
                } else if page.total.is_none() {
                    r.fail(
                        "sproutvideo",
                        format!("{name}: paging keys"),
                        "no total in the list answer",
                        "paging relies on next_page alone; report the captured answer",
                    );
                } else {
                    r.pass("sproutvideo", format!("{name}: shape"), format!("{} in all", page.total.unwrap_or(0)));
                }
            }
            Err(e) => {
                let fix = sprout_fix(&e);
                r.fail("sproutvideo", format!("{name}: shape"), e.to_string(), fix);
            }
        }
    }
    let q = SessionQuery { start_date: None, end_date: None, vemail: None };
    match sv.sessions_page(None, &q, 1, MAX_PER_PAGE.min(20)).await {
        Ok(page) => {
            let with_email = page.items.iter().filter(|s| s.vemail.is_some()).count();
            r.pass(
                "sproutvideo",
                "engagement sessions: shape",
                format!(
                    "{} in all; {with_email} of the first {} carry an email",
                    page.total.unwrap_or(0),
                    page.items.len()
                ),
            );
        }
        Err(e) => {
            let fix = sprout_fix(&e);
            r.fail("sproutvideo", "engagement sessions: shape", e.to_string(), fix);
        }
    }
    first
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// Saves each answer, redacted, under its [`capture_name`] (the first answer of a name wins);
/// returns how many files were written.
fn save(dir: &Path, answers: &[(Service, RecordedAnswer)]) -> std::io::Result<usize> {
    let mut redactor = Redactor::default();
    let mut written = BTreeSet::new();
    for (service, a) in answers {
        let Some(name) = capture_name(*service, &a.method, &a.path) else {
            continue;
        };
        if !written.insert(name) {
            continue;
        }
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let clean = redactor.redact(&a.body, "");
        std::fs::write(&path, serde_json::to_string_pretty(&clean).expect("JSON") + "\n")?;
    }
    Ok(written.len())
}

/// Replaces personal data and identifiers, the same value always by the same stand-in, so the
/// fixtures keep their shape and their cross references.
#[derive(Default)]
pub struct Redactor {
    seen: HashMap<(String, String), String>,
}

impl Redactor {
    pub fn redact(&mut self, v: &Value, key: &str) -> Value {
        match v {
            Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), self.redact(v, k))).collect()),
            Value::Array(a) => Value::Array(a.iter().map(|v| self.redact(v, key)).collect()),
            Value::String(s) => Value::String(self.replace(key, s)),
            other => other.clone(),
        }
    }

    fn replace(&mut self, key: &str, s: &str) -> String {
        let k = key.to_ascii_lowercase();
        let field_key = k == "fieldkey" || k == "field_key";
        let kind = if field_key {
            return s.to_string();
        } else if k.contains("token")
            || k.contains("secret")
            || k.contains("key")
            || k.contains("password")
            || k.contains("embed")
            || s.starts_with("http://")
            || s.starts_with("https://")
        {
            "secret"
        } else if k.contains("email") {
            "email"
        } else if k.contains("phone") {
            "phone"
        } else if k.contains("name") {
            "name"
        } else if k == "id" || k.ends_with("_id") || k.ends_with("id") && k.len() > 2 || k == "searchafter" {
            "id"
        } else if s.contains('@') {
            "email"
        } else if kept_as_is(&k) {
            return s.to_string();
        } else {
            // Anything else may be personal (a note's body, an address, a birthday, a custom
            // field's value): only its type is kept.
            "text"
        };
        if s.is_empty() {
            return String::new();
        }
        let n = self.seen.len() + 1;
        self.seen
            .entry((kind.to_string(), s.to_string()))
            .or_insert_with(|| match kind {
                "secret" => "REDACTED".to_string(),
                "email" => format!("person{n}@example.com"),
                "phone" => format!("+1555010{:04}", n % 10_000),
                "name" => format!("Name{n}"),
                "text" => format!("text{n}"),
                _ => format!("id{n:04}"),
            })
            .clone()
    }
}

/// The string fields a capture keeps as they are: times and the API's own enumerations, none
/// of them about a person. Every other string is replaced.
fn kept_as_is(key: &str) -> bool {
    const ENUMS: &[&str] = &[
        "type",
        "datatype",
        "status",
        "state",
        "appointmentstatus",
        "privacy",
        "timezone",
        "token_type",
        "usertype",
        "scope",
        "currency",
        "model",
        "position",
    ];
    let time = key.ends_with("_at") || key.ends_with("date") || key.ends_with("time") || key.starts_with("date");
    (time && key != "dateofbirth") || ENUMS.contains(&key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redaction_replaces_people_and_ids_consistently_and_keeps_the_shape() {
        let mut r = Redactor::default();
        let v = json!({
            "logins": [{"id": "abc", "email": "ada@example.com", "created_at": "2026-11-01T00:00:00Z"},
                       {"id": "def", "email": "ada@example.com"}],
            "sessions": [{"video_id": "abc", "vemail": "ada@example.com", "seconds_watched": 12}],
            "contact": {"firstName": "Ada", "phone": "+14155552671", "fieldKey": "contact.plan",
                        "address1": "1 Lovelace Row", "city": "Marylebone", "postalCode": "NW1 5LR",
                        "dateOfBirth": "1815-12-10", "dateAdded": "2026-11-01T00:00:00Z",
                        "customFields": [{"id": "cf1", "value": "Analytical Engine"}],
                        "attributionSource": {"ip": "203.0.113.9", "userAgent": "Mozilla/5.0 Ada"}},
            "notes": [{"id": "n1", "body": "Called Ada about the engine"}],
            "tasks": [{"id": "t1", "title": "Call Ada back", "dueDate": "2026-12-01T00:00:00Z"}],
            "appointments": [{"id": "a1", "title": "Demo", "notes": "bring the cards", "address": "Somerset House",
                              "appointmentStatus": "confirmed"}],
            "searchAfter": [1764605190468_u64, "abc"],
            "access_token": "pit-123",
            "password": "video-pw",
            "embed_code": "<iframe src='https://videos.sproutvideo.com/embed/x/y?security_token=s'></iframe>",
            "assets": {"thumbnails": ["https://cdn.example/t.jpg?signature=abc"]}
        });
        let out = r.redact(&v, "");
        let text = out.to_string();
        for secret in [
            "ada@example.com",
            "Ada\"",
            "+14155552671",
            "pit-123",
            "\"abc\"",
            "video-pw",
            "security_token",
            "signature",
            "Lovelace",
            "Marylebone",
            "NW1 5LR",
            "1815-12-10",
            "Analytical",
            "203.0.113.9",
            "Mozilla",
            "Called Ada",
            "Call Ada back",
            "bring the cards",
            "Somerset",
        ] {
            assert!(!text.contains(secret), "{secret} left in {text}");
        }
        assert_eq!(out["logins"][0]["email"], out["logins"][1]["email"], "the same person stays the same");
        assert_eq!(out["logins"][0]["id"], out["sessions"][0]["video_id"], "cross references survive");
        assert_eq!(
            out["searchAfter"],
            json!([1764605190468_u64, out["logins"][0]["id"].clone()]),
            "the cursor's id too"
        );
        assert_eq!(out["logins"][0]["created_at"], "2026-11-01T00:00:00Z");
        assert_eq!(out["sessions"][0]["seconds_watched"], 12);
        assert_eq!(out["contact"]["fieldKey"], "contact.plan", "field keys are not personal");
        assert_eq!(out["contact"]["dateAdded"], "2026-11-01T00:00:00Z", "times are kept");
        assert_eq!(out["tasks"][0]["dueDate"], "2026-12-01T00:00:00Z");
        assert_eq!(out["appointments"][0]["appointmentStatus"], "confirmed", "the API's enumerations are kept");
        assert!(out["notes"][0]["body"].is_string(), "a replaced value keeps its type");
    }

    #[test]
    fn the_table_marks_failures_with_their_fix() {
        let mut r = DoctorReport::default();
        r.pass("ghl", "token works", "location L");
        r.fail("ghl", "custom field contact.x", "no such field", "create it");
        let t = r.table();
        assert!(t.contains("✓ ghl") && t.contains("✗ ghl") && t.contains("fix: create it"), "{t}");
        assert!(t.contains("1 of 2 checks failed"));
        assert!(!r.all_ok());
    }
}
