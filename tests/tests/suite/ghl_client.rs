//! The GHL client against the local GHL, with every request and response body held to
//! HighLevel's published OpenAPI schemas.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures::TryStreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use shared::ghl::*;
use shared::retry::{MAX_SERVER_WAIT, RetryPolicy};
use shared::secrets::{MemorySecret, SecretCache, SecretError, SecretSource, SecretValue};
use sync_tests::local_ghl::{FaultKind, GhlBehaviour, LocalGhl, LoggedRequest, ScriptedFault};
use sync_tests::spec::{Spec, Strictness, template_for};
use url::Url;

const LOC: &str = "ve9EPM428h8vShlRW1KT";

async fn start(b: GhlBehaviour) -> (LocalGhl, Url) {
    let ghl = LocalGhl::new(b);
    let addr = ghl.spawn("127.0.0.1:0").await.unwrap();
    (ghl, Url::parse(&format!("http://{addr}/")).unwrap())
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
        deadline: Some(Duration::from_secs(20)),
    }
}

fn client_with(url: &Url, tokens: Arc<dyn TokenProvider>) -> GhlClient {
    let mut s = GhlSettings::new(url.clone(), LOC);
    s.retry = fast_retry();
    s.request_timeout = Duration::from_secs(3);
    GhlClient::new(s, tokens).unwrap()
}

fn client(url: &Url) -> GhlClient {
    client_with(url, Arc::new(StaticToken(SecretString::from("pit-test-token"))))
}

/// Every logged request body validates strictly against its DTO, and every documented answer
/// against its response schema.
fn assert_spec(log: &[LoggedRequest]) {
    let contacts = Spec::load("contacts.json");
    let locations = Spec::load("locations.json");
    for r in log {
        let template = template_for(&r.method, &r.path).unwrap_or_else(|| panic!("unknown path {}", r.path));
        let spec = if template.starts_with("/locations") { &locations } else { &contacts };
        if !r.body.is_null() {
            if template == "/contacts/search" {
                // The spec's search body schema is empty; GHL requires these two.
                assert!(r.body["locationId"].is_string() && r.body["pageLimit"].is_number(), "{:?}", r.body);
                assert!(!(r.body.get("page").is_some() && r.body.get("searchAfter").is_some()));
            } else {
                let schema = spec
                    .request_schema(&r.method, template)
                    .unwrap_or_else(|| panic!("{} {template} takes no body", r.method));
                let errs = spec.validate(schema, &r.body, Strictness::Request);
                assert!(errs.is_empty(), "{} {}: request {} invalid: {errs:?}", r.method, r.path, r.body);
            }
        }
        if (200..300).contains(&r.status) {
            assert!(
                spec.documents_status(&r.method, template, r.status),
                "{} {template} answered undocumented {}",
                r.method,
                r.status
            );
            if let Some(schema) = spec.response_schema(&r.method, template, r.status) {
                let errs = spec.validate(schema, &r.response, Strictness::Response);
                assert!(errs.is_empty(), "{} {}: response invalid: {errs:?}\n{}", r.method, r.path, r.response);
            }
        }
    }
}

fn upsert_body(email: &str) -> UpsertContactDto {
    UpsertContactDto {
        location_id: LOC.into(),
        email: Some(email.into()),
        first_name: Some("Ada".into()),
        last_name: Some("Lovelace".into()),
        phone: Some("+14155552671".into()),
        company_name: Some("Analytical Engines".into()),
        source: Some("SproutVideo".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn upsert_creates_then_updates() {
    let (ghl, url) = start(GhlBehaviour::default()).await;
    let c = client(&url);
    let first = c.upsert_contact(&upsert_body("ada@example.com")).await.unwrap();
    assert!(first.created);
    let mut again = upsert_body("ada@example.com");
    again.first_name = Some("Augusta Ada".into());
    let second = c.upsert_contact(&again).await.unwrap();
    assert!(!second.created);
    assert_eq!(first.contact.id, second.contact.id);
    assert_eq!(first.contact.id.len(), 20);
    let got = c.get_contact(&first.contact.id).await.unwrap();
    assert_eq!(got.first_name.as_deref(), Some("Augusta Ada"));
    assert_eq!(got.phone.as_deref(), Some("+14155552671"));
    let log = ghl.requests().await;
    assert_eq!(log.iter().filter(|r| r.path == "/contacts/upsert").count(), 2);
    assert_spec(&log);
}

#[tokio::test]
async fn duplicate_create_is_recovered_through_meta_contact_id() {
    let (ghl, url) = start(GhlBehaviour::default()).await;
    let c = client(&url);
    let body = CreateContactDto {
        location_id: LOC.into(),
        email: Some("grace@example.com".into()),
        first_name: Some("Grace".into()),
        ..Default::default()
    };
    let created = c.create_contact(&body).await.unwrap();
    let err = c.create_contact(&body).await.unwrap_err();
    let GhlError::Duplicate { contact_id, matching_field, .. } = err else {
        panic!("expected a duplicate, got {err:?}");
    };
    assert_eq!(contact_id, created.id);
    assert_eq!(matching_field, "email");
    let updated = c
        .update_contact(&contact_id, &UpdateContactDto { last_name: Some("Hopper".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(updated.last_name.as_deref(), Some("Hopper"));
    let dup = c.find_duplicate(Some("GRACE@example.com"), None).await.unwrap();
    assert_eq!(dup.map(|d| d.id), Some(created.id));
    assert!(c.find_duplicate(Some("nobody@example.com"), None).await.unwrap().is_none());
    assert_spec(&ghl.requests().await);
}

#[tokio::test]
async fn search_pages_in_both_modes_and_the_legacy_list_keeps_its_location() {
    let (ghl, url) = start(GhlBehaviour::default()).await;
    let c = client(&url);
    for i in 0..25 {
        let mut b = upsert_body(&format!("p{i}@example.com"));
        b.phone = None;
        b.tags = Some(vec!["sproutvideo".into()]);
        c.upsert_contact(&b).await.unwrap();
    }
    c.upsert_contact(&UpsertContactDto {
        location_id: LOC.into(),
        email: Some("other@example.com".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    ghl.clear_requests().await;
    let req = SearchRequest {
        location_id: String::new(),
        page_limit: 10,
        page: None,
        search_after: None,
        query: None,
        filters: vec![SearchFilter::eq("tags", "sproutvideo")],
        sort: vec![],
    };
    let by_page: Vec<Contact> = c.search(req.clone(), SearchPaging::Pages).try_collect().await.unwrap();
    assert_eq!(by_page.len(), 25);
    let by_cursor: Vec<Contact> = c.search(req, SearchPaging::SearchAfter).try_collect().await.unwrap();
    assert_eq!(by_cursor.len(), 25);
    let mut ids: Vec<_> = by_cursor.iter().map(|c| c.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 25, "searchAfter paging must not repeat contacts");
    let log = ghl.requests().await;
    let searches: Vec<_> = log.iter().filter(|r| r.path == "/contacts/search").collect();
    assert_eq!(searches.len(), 6, "3 pages each way");
    assert!(searches[3..].iter().skip(1).all(|r| r.body["searchAfter"].is_array()));

    ghl.clear_requests().await;
    let all: Vec<Contact> = c.list_contacts_legacy(10, None).try_collect().await.unwrap();
    assert_eq!(all.len(), 26);
    let log = ghl.requests().await;
    assert!(log.len() >= 3);
    for r in &log {
        assert!(r.query.contains(&format!("locationId={LOC}")), "page lost its location: {}", r.query);
        assert_eq!(r.status, 200);
    }
    assert_spec(&ghl.requests().await);
}

#[tokio::test]
async fn tasks_notes_tags_appointments_and_custom_fields_round_trip() {
    let (ghl, url) = start(GhlBehaviour::default()).await;
    let c = client(&url);
    let field_id = ghl.define_custom_field(LOC, "Last video", "contact.sv_last_video", "TEXT").await;
    let defs = c.custom_fields().await.unwrap();
    assert_eq!(defs[0].field_key.as_deref(), Some("contact.sv_last_video"));
    let mut body = upsert_body("tasks@example.com");
    body.custom_fields = Some(vec![CustomFieldInput { id: field_id.clone(), field_value: json!("Pricing") }]);
    let contact = c.upsert_contact(&body).await.unwrap().contact;
    assert_eq!(contact.custom_fields[0].id, field_id);
    let id = contact.id.clone();

    let tags = c.add_tags(&id, &["a".into(), "b".into()]).await.unwrap();
    assert_eq!(tags, vec!["a", "b"]);
    let tags = c.remove_tags(&id, &["a".into()]).await.unwrap();
    assert_eq!(tags, vec!["b"]);

    let due = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:15:30.123Z").unwrap().to_utc();
    let task = c
        .create_task(
            &id,
            &CreateTaskParams {
                title: "Call".into(),
                body: Some("Follow up".into()),
                due_date: due_date(due),
                completed: false,
                assigned_to: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(task.due_date.as_deref(), Some("2026-12-01T10:15:30Z"));
    let t = c
        .update_task(
            &id,
            &task.id,
            &UpdateTaskBody { title: Some("Call back".into()), due_date: Some(due_date(due)), ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(t.title.as_deref(), Some("Call back"));
    assert!(c.complete_task(&id, &task.id, true).await.unwrap().completed);
    assert!(c.get_task(&id, &task.id).await.unwrap().completed);
    assert_eq!(c.list_tasks(&id).await.unwrap().len(), 1);
    assert!(c.delete_task(&id, &task.id).await.unwrap());
    assert!(c.list_tasks(&id).await.unwrap().is_empty());

    let note = c.create_note(&id, &NoteBody { body: Some("Watched 87%".into()), ..Default::default() }).await.unwrap();
    let n = c
        .update_note(&id, &note.id, &NoteBody { body: Some("Watched 90%".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(n.body.as_deref(), Some("Watched 90%"));
    assert_eq!(c.get_note(&id, &note.id).await.unwrap().body.as_deref(), Some("Watched 90%"));
    assert_eq!(c.list_notes(&id).await.unwrap().len(), 1);
    assert!(c.delete_note(&id, &note.id).await.unwrap());

    assert!(c.list_appointments(&id).await.unwrap().is_empty());
    assert!(c.contacts_by_business("biz1", 25, 0).await.unwrap().contacts.is_empty());
    let err = c.get_task(&id, "nope").await.unwrap_err();
    assert!(matches!(err, GhlError::NotFound { .. }), "{err:?}");
    assert!(c.delete_contact(&id).await.unwrap());
    let err = c.get_contact(&id).await.unwrap_err();
    assert!(matches!(err, GhlError::NotFound { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert_spec(&ghl.requests().await);
}

#[tokio::test]
async fn unknown_properties_get_422_with_messages_as_an_array() {
    let (_ghl, url) = start(GhlBehaviour::default()).await;
    let raw = reqwest::Client::new()
        .put(url.join("contacts/abc").unwrap())
        .header("Authorization", "Bearer x")
        .header("Version", API_VERSION)
        .json(&json!({"gender": "male", "locationId": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 422);
    let body: Value = raw.json().await.unwrap();
    assert!(body["message"].is_array());
    assert!(body["traceId"].is_string());
}

#[tokio::test]
async fn rate_limits_are_paced_and_429s_retried() {
    let (ghl, url) = start(GhlBehaviour { burst_max: 5, burst_interval_ms: 500, ..Default::default() }).await;
    let mut s = GhlSettings::new(url.clone(), LOC);
    s.retry = fast_retry();
    s.burst_max = 5;
    s.burst_interval = Duration::from_millis(500);
    let c = GhlClient::new(s, Arc::new(StaticToken(SecretString::from("t")))).unwrap();
    let started = std::time::Instant::now();
    let calls = (0..12).map(|i| {
        let c = c.clone();
        async move { c.find_duplicate(Some(&format!("n{i}@example.com")), None).await }
    });
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    assert!(started.elapsed() >= Duration::from_millis(1000), "12 calls at 5 per 500 ms take two windows");
    let log = ghl.requests().await;
    assert_eq!(log.iter().filter(|r| r.status == 429).count(), 0, "paced client never trips the window");

    // Injected 429s, with and without Retry-After, are waited out and retried.
    ghl.clear_requests().await;
    for retry_after_secs in [Some(1), None] {
        ghl.push_fault(ScriptedFault {
            kind: FaultKind::RateLimit { retry_after_secs },
            method: None,
            path_contains: Some("/contacts/search/duplicate".into()),
        })
        .await;
        let t = std::time::Instant::now();
        c.find_duplicate(Some("x@example.com"), None).await.unwrap();
        if retry_after_secs.is_some() {
            assert!(t.elapsed() >= Duration::from_secs(1), "Retry-After honoured");
        }
    }
    let statuses: Vec<u16> = ghl.requests().await.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 200, 429, 200]);
    assert_eq!(c.stats().rate_limited.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn server_errors_are_retried_only_where_safe() {
    let (ghl, url) = start(GhlBehaviour::default()).await;
    let c = client(&url);
    let id = c.upsert_contact(&upsert_body("s@example.com")).await.unwrap().contact.id;
    ghl.clear_requests().await;
    // A read is retried through a 500 and a dropped connection.
    for kind in [FaultKind::Status { status: 500 }, FaultKind::Drop] {
        ghl.push_fault(ScriptedFault { kind, method: Some("GET".into()), path_contains: None }).await;
    }
    c.get_contact(&id).await.unwrap();
    let statuses: Vec<u16> = ghl.requests().await.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![500, 0, 200]);

    // A create is not: a 500 surfaces as "may have written" after one attempt.
    ghl.clear_requests().await;
    ghl.push_fault(ScriptedFault {
        kind: FaultKind::Status { status: 503 },
        method: Some("POST".into()),
        path_contains: Some("/notes".into()),
    })
    .await;
    let err = c.create_note(&id, &NoteBody { body: Some("hello".into()), ..Default::default() }).await.unwrap_err();
    assert!(matches!(err, GhlError::MayHaveWritten { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(ghl.requests().await.len(), 1, "no blind re-send of a create");

    // A dropped connection on a create is just as ambiguous.
    ghl.push_fault(ScriptedFault {
        kind: FaultKind::Drop,
        method: Some("POST".into()),
        path_contains: Some("/tasks".into()),
    })
    .await;
    let err = c
        .create_task(
            &id,
            &CreateTaskParams {
                title: "t".into(),
                body: None,
                due_date: "2026-12-01T00:00:00Z".into(),
                completed: false,
                assigned_to: None,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GhlError::MayHaveWritten { .. }), "{err:?}");
}

#[tokio::test]
async fn write_then_fail_reports_a_possible_write_and_the_write_is_there() {
    let (ghl, url) = start(GhlBehaviour::default()).await;
    let c = client(&url);
    let id = c.upsert_contact(&upsert_body("w@example.com")).await.unwrap().contact.id;
    ghl.push_fault(ScriptedFault {
        kind: FaultKind::WriteThenFail,
        method: Some("POST".into()),
        path_contains: Some("/notes".into()),
    })
    .await;
    let err = c.create_note(&id, &NoteBody { body: Some("once".into()), ..Default::default() }).await.unwrap_err();
    assert!(matches!(err, GhlError::MayHaveWritten { .. }), "{err:?}");
    assert_eq!(c.list_notes(&id).await.unwrap().len(), 1, "the write landed although GHL answered 500");
}

#[tokio::test]
async fn unauthorized_is_surfaced_and_a_refresh_is_used_once() {
    let (ghl, url) = start(GhlBehaviour { valid_tokens: vec!["good-token".into()], ..Default::default() }).await;
    let c = client_with(&url, Arc::new(StaticToken(SecretString::from("stale-token"))));
    let err = c.find_duplicate(Some("a@example.com"), None).await.unwrap_err();
    assert!(matches!(err, GhlError::Unauthorized { .. }), "{err:?}");
    assert!(!err.to_string().contains("stale-token"));

    struct Rotating(AtomicBool);
    #[async_trait::async_trait]
    impl TokenProvider for Rotating {
        async fn token(&self) -> Result<SecretString, GhlError> {
            Ok(SecretString::from(if self.0.load(Ordering::SeqCst) { "good-token" } else { "stale-token" }))
        }
        async fn renew_after_unauthorized(&self, _: &SecretString) -> Result<bool, GhlError> {
            Ok(!self.0.swap(true, Ordering::SeqCst))
        }
    }
    ghl.clear_requests().await;
    let c = client_with(&url, Arc::new(Rotating(AtomicBool::new(false))));
    c.find_duplicate(Some("a@example.com"), None).await.unwrap();
    let statuses: Vec<u16> = ghl.requests().await.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![401, 200]);
}

#[tokio::test]
async fn retries_stop_at_the_deadline() {
    let (ghl, url) = start(GhlBehaviour::default()).await;
    ghl.set_faults(sync_tests::local_ghl::Faults { error_rate: 1.0, ..Default::default() }).await;
    let c = client(&url).with_retry(RetryPolicy {
        max_attempts: 100,
        base: Duration::from_millis(200),
        cap: Duration::from_millis(400),
        deadline: Some(Duration::from_millis(600)),
    });
    let t = std::time::Instant::now();
    let err = c.get_contact("x").await.unwrap_err();
    assert!(err.is_retryable());
    assert!(t.elapsed() < Duration::from_secs(2), "gave up near the deadline");
}

// ---- cut-off answers, long waits, the daily quota -----------------------------------------

fn cut_off(method: &str, path: &str) -> ScriptedFault {
    ScriptedFault { kind: FaultKind::CutOff, method: Some(method.into()), path_contains: Some(path.into()) }
}

#[tokio::test]
async fn a_read_whose_answer_is_cut_off_is_sent_again_within_the_deadline() {
    let (ghl, url) = start(GhlBehaviour::default()).await;
    let c = client(&url);
    let id = c.upsert_contact(&upsert_body("cut@example.com")).await.unwrap().contact.id;
    ghl.clear_requests().await;
    ghl.push_fault(cut_off("GET", "/contacts/")).await;
    let got = c.get_contact(&id).await.unwrap();
    assert_eq!(got.id, id);
    let statuses: Vec<u16> = ghl.requests().await.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 200], "the 200 whose body was cut off, then the full one");
    assert_eq!(c.stats().retries.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_create_whose_answer_is_cut_off_may_have_written_and_is_not_sent_again() {
    let (ghl, url) = start(GhlBehaviour::default()).await;
    let c = client(&url);
    let id = c.upsert_contact(&upsert_body("cutnote@example.com")).await.unwrap().contact.id;
    ghl.clear_requests().await;
    ghl.push_fault(cut_off("POST", "/notes")).await;
    let err = c.create_note(&id, &NoteBody { body: Some("once".into()), ..Default::default() }).await.unwrap_err();
    assert!(matches!(err, GhlError::MayHaveWritten { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(ghl.requests().await.len(), 1, "no blind re-send of a create");
    assert_eq!(c.list_notes(&id).await.unwrap().len(), 1, "the note landed although its answer was cut off");
}

#[tokio::test]
async fn the_deadline_is_checked_after_a_cut_off_answer() {
    let (ghl, url) = start(GhlBehaviour::default()).await;
    let c = client(&url);
    let id = c.upsert_contact(&upsert_body("late@example.com")).await.unwrap().contact.id;
    ghl.clear_requests().await;
    ghl.push_fault(cut_off("GET", "/contacts/")).await;
    // No time is left after the first attempt: the cut-off answer must not be followed by another.
    let c = c.with_retry(RetryPolicy { deadline: Some(Duration::ZERO), ..fast_retry() });
    let err = c.get_contact(&id).await.unwrap_err();
    assert!(matches!(err, GhlError::DeadlineExceeded { attempts: 1, .. }), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(ghl.requests().await.len(), 1);
}

#[tokio::test]
async fn a_huge_retry_after_ends_the_call_with_a_typed_error_instead_of_sleeping() {
    let (ghl, url) = start(GhlBehaviour::default()).await;
    let c = client(&url);
    ghl.push_fault(ScriptedFault {
        kind: FaultKind::RateLimit { retry_after_secs: Some(99_999_999_999) },
        method: None,
        path_contains: Some("/contacts/search/duplicate".into()),
    })
    .await;
    // Were the wait slept, this would not end for years.
    let call = tokio::time::timeout(Duration::from_secs(30), c.find_duplicate(Some("x@example.com"), None));
    let err = call.await.expect("the call ends without sleeping out Retry-After").unwrap_err();
    let GhlError::RateLimited { retry_after: Some(wait) } = err else {
        panic!("expected a rate limit with its wait, got {err:?}");
    };
    assert!(wait <= MAX_SERVER_WAIT && wait > Duration::from_secs(20), "{wait:?}");
    assert_eq!(ghl.requests().await.len(), 1);
    // The pause GHL asked for holds the client's other calls too, without a request.
    let err = c.get_contact("abc").await.unwrap_err();
    assert!(matches!(err, GhlError::RateLimited { retry_after: Some(_) }), "{err:?}");
    assert_eq!(ghl.requests().await.len(), 1);
    assert!(c.held_for().await.is_some());
}

#[tokio::test]
async fn a_spent_daily_quota_stops_calls_until_it_resets() {
    let (ghl, url) = start(GhlBehaviour { daily_max: 3, ..Default::default() }).await;
    let c = client(&url);
    for i in 0..3 {
        c.find_duplicate(Some(&format!("q{i}@example.com")), None).await.unwrap();
    }
    assert_eq!(c.stats().daily_remaining(), Some(0), "GHL's daily budget is visible for a metric");
    // The last answer said none is left: the client does not ask again.
    let err = c.find_duplicate(Some("q3@example.com"), None).await.unwrap_err();
    let GhlError::DailyQuotaExhausted { retry_in } = err else {
        panic!("expected the daily quota, got {err:?}");
    };
    assert!(err.is_retryable());
    assert!(retry_in >= Duration::from_secs(59) && retry_in <= Duration::from_secs(3600), "{retry_in:?}");
    assert_eq!(err.retry_hint(), Some(retry_in));
    assert_eq!(ghl.requests().await.len(), 3, "no request once the quota is spent");
    assert_eq!(c.stats().daily_quota_refusals.load(Ordering::Relaxed), 1);
    assert!(c.held_for().await.is_some_and(|h| h >= Duration::from_secs(30)));

    // A process that has not seen it yet learns it from GHL's 429, once, without retrying.
    let other = client(&url);
    let err = other.get_contact("abc").await.unwrap_err();
    assert!(matches!(err, GhlError::DailyQuotaExhausted { .. }), "{err:?}");
    let log = ghl.requests().await;
    assert_eq!(log.len(), 4);
    assert_eq!(log[3].status, 429);
    assert!(other.daily_quota_wait().is_some());
}

// ---- credentials from the secret ----------------------------------------------------------

fn oauth_secret(access: &str, refresh: &str, expires_at: i64, token_url: &Url) -> String {
    json!({
        "webhook_token": "wt-value", "signing_secrets": ["sig-value"], "read_api_key": "rk-value",
        "ghl_oauth": {
            "access_token": access, "refresh_token": refresh, "expires_at": expires_at,
            "client_id": "cid", "client_secret": "csecret-value",
            "token_url": token_url.join("oauth/token").unwrap().to_string()
        }
    })
    .to_string()
}

/// One process's view of the secret: its own cache and token provider, and a client.
fn process(source: Arc<dyn SecretSource>, url: &Url, refresh: TokenRefresh) -> (GhlClient, Arc<SecretTokenProvider>) {
    let cache = Arc::new(SecretCache::new(source, Duration::from_secs(600)));
    let mut tokens = SecretTokenProvider::new(cache, url, refresh);
    tokens.reread_every = Duration::from_millis(50);
    tokens.wait_for_other_refresh = Duration::from_secs(5);
    let tokens = Arc::new(tokens);
    (client_with(url, tokens.clone()), tokens)
}

fn stored_refresh_token(secret: &MemorySecret) -> String {
    let v: Value = serde_json::from_str(&secret.value().unwrap()).unwrap();
    v["ghl_oauth"]["refresh_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_process_that_may_not_write_the_secret_never_spends_the_refresh_token() {
    let (ghl, url) = start(GhlBehaviour { valid_tokens: vec!["at-live".into()], ..Default::default() }).await;
    // Due for a refresh (within five minutes of expiry) but still valid: a reader just uses it.
    let secret = Arc::new(MemorySecret::new(oauth_secret("at-live", "rt-1", Utc::now().timestamp() + 30, &url)));
    let (reader, _) = process(secret.clone(), &url, TokenRefresh::Never);
    reader.find_duplicate(Some("r@example.com"), None).await.unwrap();
    assert_eq!(ghl.oauth_refreshes().await, 0);

    // Expired: the reader re-reads the secret and waits; it never calls the token endpoint.
    secret.set(oauth_secret("at-live", "rt-1", Utc::now().timestamp() - 10, &url));
    let (reader, _) = process(secret.clone(), &url, TokenRefresh::Never);
    let reader = reader.with_retry(RetryPolicy { deadline: Some(Duration::from_millis(300)), ..fast_retry() });
    ghl.clear_requests().await;
    let err = reader.find_duplicate(Some("r@example.com"), None).await.unwrap_err();
    assert!(matches!(err, GhlError::CredentialUnavailable(_)), "{err:?}");
    assert!(err.is_retryable(), "a reader waits for the worker; its work is not parked");
    assert!(ghl.requests().await.is_empty(), "no call with an expired token");
    assert_eq!(ghl.oauth_refreshes().await, 0);
    assert_eq!(stored_refresh_token(&secret), "rt-1");

    // GHL refuses a token that has not expired: the reader still does not refresh.
    ghl.set_behaviour(GhlBehaviour { valid_tokens: vec!["at-other".into()], ..Default::default() }).await;
    secret.set(oauth_secret("at-revoked", "rt-1", Utc::now().timestamp() + 3600, &url));
    let (reader2, _) = process(secret.clone(), &url, TokenRefresh::Never);
    let err = reader2.find_duplicate(Some("r@example.com"), None).await.unwrap_err();
    assert!(matches!(err, GhlError::CredentialUnavailable(_)), "{err:?}");
    assert_eq!(ghl.oauth_refreshes().await, 0);
    assert_eq!(stored_refresh_token(&secret), "rt-1");

    // The worker refreshes and stores; the waiting reader picks the new token up from the secret.
    ghl.set_behaviour(GhlBehaviour { valid_tokens: vec!["at-other".into()], ..Default::default() }).await;
    secret.set(oauth_secret("at-live", "rt-1", Utc::now().timestamp() - 10, &url));
    let (worker, _) = process(secret.clone(), &url, TokenRefresh::Allowed);
    worker.find_duplicate(Some("w@example.com"), None).await.unwrap();
    assert_eq!(ghl.oauth_refreshes().await, 1);
    assert_ne!(stored_refresh_token(&secret), "rt-1", "the rotated refresh token is stored");
    reader.find_duplicate(Some("r@example.com"), None).await.unwrap();
    assert_eq!(ghl.oauth_refreshes().await, 1);
}

/// A secret whose writes take a while, so a second refresher asks GHL before the first one's
/// new tokens are stored.
struct SlowWrites(Arc<MemorySecret>);

#[async_trait::async_trait]
impl SecretSource for SlowWrites {
    async fn read(&self) -> Result<SecretValue, SecretError> {
        self.0.read().await
    }
    async fn write(&self, value: &str, idempotency: &str) -> Result<(), SecretError> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.0.write(value, idempotency).await
    }
}

#[tokio::test]
async fn two_refreshers_at_once_both_end_with_a_working_token() {
    let (ghl, url) = start(GhlBehaviour { valid_tokens: vec!["at-unused".into()], ..Default::default() }).await;
    let secret = Arc::new(MemorySecret::new(oauth_secret("at-old", "rt-1", Utc::now().timestamp() + 30, &url)));
    let source: Arc<dyn SecretSource> = Arc::new(SlowWrites(secret.clone()));
    let (a, a_tokens) = process(source.clone(), &url, TokenRefresh::Allowed);
    let (b, b_tokens) = process(source, &url, TokenRefresh::Allowed);
    // Both are due for a refresh and ask at the same time; GHL spends rt-1 for the first and
    // refuses it to the second, which then finds the first one's tokens in the secret.
    let (ra, rb) =
        tokio::join!(a.find_duplicate(Some("a@example.com"), None), b.find_duplicate(Some("b@example.com"), None));
    ra.unwrap();
    rb.unwrap();
    assert_eq!(ghl.oauth_refreshes().await, 1, "one refresh token spent");
    assert_eq!(secret.writes(), 1, "one set of tokens stored");
    let stored: Value = serde_json::from_str(&secret.value().unwrap()).unwrap();
    let access = stored["ghl_oauth"]["access_token"].as_str().unwrap();
    assert_ne!(access, "at-old");
    assert_eq!(a_tokens.token().await.unwrap().expose_secret(), access);
    assert_eq!(b_tokens.token().await.unwrap().expose_secret(), access);
    let log = ghl.requests().await;
    assert!(
        log.iter().all(|r| r.status == 200),
        "no call was refused: {:?}",
        log.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    // Both keep working.
    a.find_duplicate(Some("a2@example.com"), None).await.unwrap();
    b.find_duplicate(Some("b2@example.com"), None).await.unwrap();
}

/// A secret store that refuses the next `fail` writes as unavailable.
struct FailingWrites {
    inner: Arc<MemorySecret>,
    fail: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl SecretSource for FailingWrites {
    async fn read(&self) -> Result<SecretValue, SecretError> {
        self.inner.read().await
    }
    async fn write(&self, value: &str, idempotency: &str) -> Result<(), SecretError> {
        if self.fail.load(Ordering::SeqCst) > 0 {
            self.fail.fetch_sub(1, Ordering::SeqCst);
            return Err(SecretError::Unavailable("throttled".into()));
        }
        self.inner.write(value, idempotency).await
    }
}

#[tokio::test]
async fn refreshed_tokens_that_could_not_be_stored_are_kept_and_stored_later() {
    let (ghl, url) = start(GhlBehaviour { valid_tokens: vec!["at-unused".into()], ..Default::default() }).await;
    let secret = Arc::new(MemorySecret::new(oauth_secret("at-old", "rt-1", Utc::now().timestamp() + 30, &url)));
    let source = Arc::new(FailingWrites { inner: secret.clone(), fail: 3.into() });
    let (c, _) = process(source.clone(), &url, TokenRefresh::Allowed);
    // Every write of the refresh fails: the new tokens are used, and not thrown away.
    c.find_duplicate(Some("s1@example.com"), None).await.unwrap();
    assert_eq!(ghl.oauth_refreshes().await, 1);
    assert_eq!(stored_refresh_token(&secret), "rt-1", "not stored yet");
    // The next call stores them before it uses them.
    c.find_duplicate(Some("s2@example.com"), None).await.unwrap();
    assert_ne!(stored_refresh_token(&secret), "rt-1", "stored once the secret store answers");
    assert_eq!(ghl.oauth_refreshes().await, 1, "the spent refresh token is not asked for again");
}

#[tokio::test]
async fn two_workers_refreshing_through_secrets_manager_share_one_new_token() {
    use sync_tests::aws::{Stack, StackNames, StackSettings, require_emulator};
    require_emulator();
    let (ghl, url) = start(GhlBehaviour { valid_tokens: vec!["at-unused".into()], ..Default::default() }).await;
    let stack = Stack::create(
        StackNames::unique("ghl-oauth"),
        StackSettings::default(),
        Some(&oauth_secret("at-old", "rt-1", Utc::now().timestamp() + 30, &url)),
    )
    .await
    .unwrap();
    let source = || -> Arc<dyn SecretSource> {
        Arc::new(shared::secrets::SecretsManagerSource::new(stack.sm.clone(), stack.names.secret.clone()))
    };
    let (a, _) = process(source(), &url, TokenRefresh::Allowed);
    let (b, _) = process(source(), &url, TokenRefresh::Allowed);
    let runs = (0..4).map(|i| {
        let c = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move { c.find_duplicate(Some(&format!("sm{i}@example.com")), None).await }
    });
    for r in futures::future::join_all(runs).await {
        r.unwrap();
    }
    assert_eq!(ghl.oauth_refreshes().await, 1);
    let stored = stack.sm.get_secret_value().secret_id(&stack.names.secret).send().await.unwrap();
    let v: Value = serde_json::from_str(stored.secret_string().unwrap()).unwrap();
    assert_ne!(v["ghl_oauth"]["refresh_token"], "rt-1");
    assert!(v["ghl_oauth"]["expires_at"].as_i64().unwrap() > Utc::now().timestamp() + 3600);
}

#[tokio::test]
async fn a_malformed_secret_fails_calls_without_echoing_its_values() {
    let (ghl, url) = start(GhlBehaviour::default()).await;
    let raw = r#"{"webhook_token":"wt-do-not-print","signing_secrets":"sig-do-not-print","read_api_key":"rk-do-not-print","ghl_token":"pit-do-not-print"}"#;
    let (c, _) = process(Arc::new(MemorySecret::new(raw)), &url, TokenRefresh::Allowed);
    let err = c.find_duplicate(Some("m@example.com"), None).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("do-not-print"), "{text}");
    assert!(text.contains("signing_secrets"), "the error names the key: {text}");
    assert!(!err.is_retryable(), "a person has to fix the secret");
    assert!(ghl.requests().await.is_empty());
}

/// A search page of two hits, each carrying `cursor_key` (or no cursor at all).
fn search_page(cursor_key: Option<&str>, total: u64) -> Value {
    let hit = |id: &str, at: u64| {
        let mut c = json!({"id": id, "locationId": "loc", "email": format!("{id}@example.com"), "tags": []});
        if let Some(k) = cursor_key {
            c[k] = json!([at, id]);
        }
        c
    };
    json!({"contacts": [hit("c1", 1), hit("c2", 2)], "total": total})
}

fn search_request() -> SearchRequest {
    SearchRequest {
        location_id: String::new(),
        page_limit: 2,
        page: None,
        search_after: None,
        query: None,
        filters: vec![],
        sort: vec![],
    }
}

#[tokio::test]
async fn a_full_search_page_without_a_cursor_is_an_error_not_a_short_read() {
    let server = sync_tests::fixtures::FixtureServer::start(vec![(
        "POST".into(),
        "/contacts/search".into(),
        search_page(None, 10),
    )])
    .await;
    let clients = sync_tests::fixtures::Clients::new(&server.ghl_base(), &server.sprout_base());
    let read: Result<Vec<_>, _> = clients.ghl.search(search_request(), SearchPaging::SearchAfter).try_collect().await;
    let err = read.expect_err("ten contacts, two read, and no way to the rest").to_string();
    assert!(err.contains("searchAfter") && err.contains("sort"), "{err}");

    // The cursor under `sort` pages as well as under `searchAfter`.
    let server = sync_tests::fixtures::FixtureServer::start(vec![(
        "POST".into(),
        "/contacts/search".into(),
        search_page(Some("sort"), 4),
    )])
    .await;
    let clients = sync_tests::fixtures::Clients::new(&server.ghl_base(), &server.sprout_base());
    let all: Vec<_> = clients.ghl.search(search_request(), SearchPaging::SearchAfter).try_collect().await.unwrap();
    assert_eq!(all.len(), 4, "two pages read through the `sort` cursor");
}

#[tokio::test]
async fn background_work_past_the_days_budget_less_the_reserve_is_held_without_calling_ghl() {
    use shared::budget::{BudgetSettings, BudgetStore, FleetBudget, Lane, WindowState};
    let (ghl, url) = start(GhlBehaviour::default()).await;
    let store = Arc::new(shared::state::MemoryStore::new());
    let settings = BudgetSettings { daily_max: 1000, daily_reserve: 100, ..Default::default() };
    // The fleet has spent 900 of the location's 1,000 today: what is left is the reserve.
    let today = Utc::now().timestamp_millis().div_euclid(24 * 3600 * 1000);
    let spent = WindowState { day: today, day_used: 900, ..Default::default() };
    assert!(store.swap_budget("loc1", None, &spent).await.unwrap());
    let budget = Arc::new(FleetBudget::new(store.clone(), "loc1", settings));
    let bulk = client(&url).with_budget(budget.clone(), Lane::Bulk);
    let err = bulk.get_contact("c1").await.unwrap_err();
    let GhlError::DailyQuotaExhausted { retry_in } = err else { panic!("{err:?}") };
    assert!(retry_in >= Duration::from_secs(60), "{retry_in:?}");
    assert!(bulk.held_for().await.is_some(), "a worker holds its messages until the day turns");
    assert!(ghl.requests().await.is_empty(), "GHL was not called");
    // A person's view still reads from the reserve.
    let view = client(&url).with_budget(budget, Lane::Interactive);
    assert!(matches!(view.get_contact("c1").await, Err(GhlError::NotFound { .. })), "it reached GHL");
    assert_eq!(ghl.requests().await.len(), 1);
}
