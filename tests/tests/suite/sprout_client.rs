//! The SproutVideo client against the local SproutVideo.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use secrecy::SecretString;
use shared::retry::{MAX_SERVER_WAIT, RetryPolicy};
use shared::secrets::{MemorySecret, SecretCache};
use shared::sprout::*;
use sync_tests::fixtures::{self, FixtureServer};
use sync_tests::local_sprout::{Generate, LocalSprout, SessionSeed, SproutBehaviour, SproutFaults, VideoSeed};
use url::Url;

async fn start(b: SproutBehaviour) -> (LocalSprout, Url) {
    let sv = LocalSprout::new(b);
    let addr = sv.spawn("127.0.0.1:0").await.unwrap();
    (sv, Url::parse(&format!("http://{addr}/v1")).unwrap())
}

fn settings(url: &Url, per_minute: u32) -> SproutSettings {
    let mut s = SproutSettings::new(url.clone());
    s.per_minute = per_minute;
    s.retry = RetryPolicy {
        max_attempts: 5,
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
        deadline: Some(Duration::from_secs(30)),
    };
    s
}

fn client(url: &Url, key: &str, per_minute: u32) -> SproutClient {
    SproutClient::new(settings(url, per_minute), Arc::new(StaticKey(SecretString::from(key.to_string())))).unwrap()
}

#[tokio::test]
async fn pages_through_several_pages_building_each_request_itself() {
    let (sv, url) = start(SproutBehaviour::default()).await;
    let g = sv
        .generate(Generate {
            viewers: 130,
            videos: 2,
            sessions_per_viewer: 2,
            email_share: 1.0,
            login_every: 1,
            ..Default::default()
        })
        .await;
    let c = client(&url, "key", 1000);
    let logins = c.list_logins().await.unwrap();
    assert_eq!(logins.len(), 130);
    let video = g["videos"][0].as_str().unwrap();
    // The local SproutVideo's next_page drops filters; the client must keep its own.
    let sessions = c.sessions(Some(video), &SessionQuery::default()).await.unwrap();
    assert_eq!(sessions.len(), 130);
    assert!(sessions.iter().all(|s| s.video_id.as_deref() == Some(video)));
    let all = c.sessions(None, &SessionQuery::default()).await.unwrap();
    assert_eq!(all.len(), 260);
    let reqs = sv.requests().await;
    let session_pages: Vec<_> = reqs.iter().filter(|r| r.path.contains(video)).collect();
    assert_eq!(session_pages.len(), 2);
    assert!(session_pages.iter().all(|r| r.query.contains("per_page=100")));
    assert!(session_pages[1].query.contains("page=2"));
    let one = c
        .sessions(Some(video), &SessionQuery { vemail: Some("viewer3@example.com".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].vemail.as_deref(), Some("viewer3@example.com"));
}

#[tokio::test]
async fn requests_are_paced_to_the_per_minute_budget_and_429s_are_retried() {
    // A time-scaled window: 10 requests per second.
    let (sv, url) = start(SproutBehaviour { per_minute: 10, window_ms: 1000, ..Default::default() }).await;
    // Fill the server's window, then script a 429 (with Retry-After) and a 503 on top.
    let c = client(&url, "k", 1000);
    for _ in 0..10 {
        c.account().await.unwrap();
    }
    sv.set_faults(SproutFaults { next_statuses: [429, 503].into(), retry_after_secs: Some(1), ..Default::default() })
        .await;
    let t = std::time::Instant::now();
    c.account().await.unwrap();
    assert!(t.elapsed() >= Duration::from_secs(1), "Retry-After honoured");
    let statuses: Vec<u16> = sv.requests().await.iter().map(|r| r.status).collect();
    assert!(statuses.contains(&429));
    assert_eq!(*statuses.last().unwrap(), 200);
}

#[tokio::test]
async fn the_client_limiter_holds_calls_past_its_budget() {
    let (sv, url) = start(SproutBehaviour::default()).await;
    // A deadline past the minute: a fourth call inside the minute waits for room.
    let mut patient = settings(&url, 3);
    patient.retry.deadline = Some(Duration::from_secs(120));
    let c = SproutClient::new(patient, Arc::new(StaticKey(SecretString::from("k")))).unwrap();
    for _ in 0..3 {
        c.account().await.unwrap();
    }
    let blocked = tokio::time::timeout(Duration::from_millis(300), c.account()).await;
    assert!(blocked.is_err(), "a fourth call inside the minute waits");
    assert_eq!(sv.requests().await.len(), 3);

    // A deadline inside the minute: the call ends at once, rate limited, and nothing is sent.
    let c = client(&url, "k", 3);
    for _ in 0..3 {
        c.account().await.unwrap();
    }
    let err = tokio::time::timeout(Duration::from_secs(10), c.account())
        .await
        .expect("no wait past the deadline")
        .unwrap_err();
    assert!(matches!(err, SproutError::RateLimited { retry_after: Some(_) }), "{err:?}");
    assert_eq!(sv.requests().await.len(), 6);
}

#[tokio::test]
async fn nulls_offsets_and_unknown_fields_are_tolerated() {
    let (sv, url) = start(SproutBehaviour { offset_timestamps: true, ..Default::default() }).await;
    let id = sv.add_video(VideoSeed { title: "Intro".into(), duration: None, ..Default::default() }).await;
    sv.add_session(SessionSeed {
        video_id: id.clone(),
        vemail: None,
        seconds_watched: Some(12.0),
        ..Default::default()
    })
    .await;
    let c = client(&url, "k", 1000);
    let v = c.get_video(&id).await.unwrap();
    assert_eq!(v.duration, None);
    assert!(v.created_at.is_some(), "offset timestamp parsed");
    assert!(v.extra.contains_key("embed_code"));
    let raw = sv.video_json(&id).await.unwrap();
    assert!(raw["created_at"].as_str().unwrap().ends_with("-05:00"));
    assert!(raw["folder_id"].is_null(), "null, not missing");
    let s = &c.sessions(Some(&id), &SessionQuery::default()).await.unwrap()[0];
    assert_eq!(s.vemail, None);
    assert_eq!(s.watch_percent(v.duration), None);
    assert!(s.created_at.is_some());
    assert_eq!(c.list_videos().await.unwrap().len(), 1);
    let err = c.get_video("nope").await.unwrap_err();
    assert!(matches!(err, SproutError::NotFound(_)));
}

#[tokio::test]
async fn a_bad_key_is_unauthorized_and_not_retried() {
    let (sv, url) = start(SproutBehaviour { api_keys: vec!["right".into()], ..Default::default() }).await;
    let err = client(&url, "wrong", 1000).account().await.unwrap_err();
    assert!(matches!(err, SproutError::Unauthorized { status: 401, .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(!err.to_string().contains("wrong"));
    assert_eq!(sv.requests().await.len(), 1);
    client(&url, "right", 1000).account().await.unwrap();
}

#[tokio::test]
async fn logins_and_access_grants_can_be_written() {
    let (_sv, url) = start(SproutBehaviour::default()).await;
    let c = client(&url, "k", 1000);
    let login = c.create_login("new@example.com", &SecretString::from("pw")).await.unwrap();
    assert_eq!(login.email.as_deref(), Some("new@example.com"));
    let got = c.get_login(&login.id).await.unwrap();
    assert_eq!(got.id, login.id);
    let updated = c.set_login_password(&login.id, &SecretString::from("new-pw")).await.unwrap();
    assert_eq!(updated.email.as_deref(), Some("new@example.com"));
    assert!(
        !serde_json::to_string(&updated).unwrap().contains("new-pw"),
        "a login's answer never carries its password"
    );
    let grant = c.create_access_grant("vid1", &login.id).await.unwrap();
    assert_eq!(grant.login_id.as_deref(), Some(login.id.as_str()));
    assert_eq!(c.list_access_grants().await.unwrap().len(), 1);
    let page = c.logins_page(1, 10).await.unwrap();
    assert_eq!(page.total, Some(1));
    assert!(!page.has_next);
}

// ---- cut-off answers, long waits, the key from the secret ---------------------------------

/// A SproutVideo stand-in whose first `cut` answers are a 200 whose body stops halfway (the
/// connection ends), then full answers. Returns its base URL and the request count.
async fn cutting_server(cut: usize) -> (Url, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let app = axum::Router::new().fallback(move || {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let full = serde_json::json!({"id": "abc123", "title": "Intro", "email": "new@example.com"}).to_string();
            let body = if n < cut {
                let half = axum::body::Bytes::copy_from_slice(&full.as_bytes()[..full.len() / 2]);
                let err = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut off");
                Body::from_stream(futures::stream::iter([Ok(half), Err(err)]))
            } else {
                Body::from(full)
            };
            Response::builder().status(StatusCode::OK).header("content-type", "application/json").body(body).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (Url::parse(&format!("http://{addr}/v1")).unwrap(), count)
}

#[tokio::test]
async fn a_read_whose_answer_is_cut_off_is_sent_again_within_the_deadline() {
    let (url, count) = cutting_server(2).await;
    let v = client(&url, "k", 1000).get_video("abc123").await.unwrap();
    assert_eq!(v.title.as_deref(), Some("Intro"));
    assert_eq!(count.load(Ordering::SeqCst), 3, "two cut-off answers, then a whole one");
}

#[tokio::test]
async fn a_create_whose_answer_is_cut_off_may_have_written_and_is_not_sent_again() {
    let (url, count) = cutting_server(1).await;
    let err = client(&url, "k", 1000).create_login("new@example.com", &SecretString::from("pw")).await.unwrap_err();
    assert!(matches!(err, SproutError::MayHaveWritten(_)), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(count.load(Ordering::SeqCst), 1, "no blind re-send of a create");
}

#[tokio::test]
async fn the_deadline_is_checked_after_a_cut_off_answer() {
    let (url, count) = cutting_server(1).await;
    let mut s = settings(&url, 1000);
    s.retry.deadline = Some(Duration::ZERO);
    let c = SproutClient::new(s, Arc::new(StaticKey(SecretString::from("k")))).unwrap();
    let err = c.get_video("abc123").await.unwrap_err();
    assert!(matches!(err, SproutError::DeadlineExceeded(_)), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_huge_retry_after_ends_the_call_with_a_typed_error_instead_of_sleeping() {
    let (sv, url) = start(SproutBehaviour::default()).await;
    sv.set_faults(SproutFaults {
        next_statuses: [429].into(),
        retry_after_secs: Some(99_999_999_999),
        ..Default::default()
    })
    .await;
    let c = client(&url, "k", 1000);
    // Were the wait slept, this would not end for years.
    let err = tokio::time::timeout(Duration::from_secs(30), c.account())
        .await
        .expect("the call ends without sleeping out Retry-After")
        .unwrap_err();
    let SproutError::RateLimited { retry_after: Some(wait) } = err else {
        panic!("expected a rate limit with its wait, got {err:?}");
    };
    assert!(wait <= MAX_SERVER_WAIT && wait > Duration::from_secs(30), "{wait:?}");
    assert!(err.is_retryable());
    assert_eq!(sv.requests().await.len(), 1);
}

#[tokio::test]
async fn the_key_is_read_from_the_secret_so_a_key_set_or_rotated_later_is_used() {
    let (sv, url) = start(SproutBehaviour { api_keys: vec!["sv-first".into()], ..Default::default() }).await;
    let base = r#""webhook_token":"wt","signing_secrets":["sig"],"read_api_key":"rk","ghl_token":"pit""#;
    let secret = Arc::new(MemorySecret::new(format!("{{{base}}}")));
    // Re-read on every call, as after the cache's TTL.
    let keys = Arc::new(SecretApiKey::new(Arc::new(SecretCache::new(secret.clone(), Duration::ZERO))));
    let c = SproutClient::new(settings(&url, 1000), keys).unwrap();
    let err = c.account().await.unwrap_err();
    assert!(matches!(err, SproutError::NoKey(_)), "{err:?}");
    assert!(!err.is_retryable(), "a person has to put the key in the secret");
    assert!(sv.requests().await.is_empty());

    // The key is put in the secret after start.
    secret.set(format!(r#"{{{base},"sproutvideo_api_key":"sv-first"}}"#));
    c.account().await.unwrap();

    // Rotated: SproutVideo refuses the old key; a client whose cached copy is older re-reads it.
    let cached = Arc::new(SecretApiKey::new(Arc::new(SecretCache::new(secret.clone(), Duration::from_secs(600)))));
    let c = SproutClient::new(settings(&url, 1000), cached).unwrap();
    c.account().await.unwrap();
    sv.update_behaviour(|b| b.api_keys = vec!["sv-second".into()]).await;
    secret.set(format!(r#"{{{base},"sproutvideo_api_key":"sv-second"}}"#));
    c.account().await.unwrap();
    let statuses: Vec<u16> = sv.requests().await.iter().map(|r| r.status).collect();
    assert!(statuses.ends_with(&[200, 401, 200]), "{statuses:?}");
}

#[tokio::test]
async fn sessions_under_another_key_are_an_error_naming_both_keys_not_an_empty_list() {
    // The sessions fixture with its list under another key, and the videos fixture as it is.
    let dir = fixtures::dir();
    let mut sessions = fixtures::load(&dir, "sproutvideo/sessions.json").unwrap();
    let items = sessions.as_object_mut().unwrap().remove("sessions").unwrap();
    sessions["engagement_sessions"] = items;
    let videos = fixtures::load(&dir, "sproutvideo/videos.json").unwrap();
    let server = FixtureServer::start(vec![
        ("GET".into(), "/v1/stats/engagement/sessions".into(), sessions),
        ("GET".into(), "/v1/videos".into(), videos),
    ])
    .await;
    let c = client(&server.sprout_base(), "key", 1000);
    let e = c.sessions(None, &SessionQuery::default()).await.unwrap_err();
    assert!(matches!(e, SproutError::Drift { .. }), "{e:?}");
    assert!(!e.is_retryable(), "a changed shape does not heal by retrying");
    let text = e.to_string();
    assert!(text.contains("\"sessions\"") && text.contains("engagement_sessions"), "{text}");
    // The other lists still read as before.
    assert!(!c.list_videos().await.unwrap().is_empty());
}

#[tokio::test]
async fn paging_goes_on_while_total_says_there_is_more_even_without_next_page() {
    let (sv, url) = start(SproutBehaviour::default()).await;
    for i in 0..7 {
        sv.add_login(&format!("l{i}@example.com")).await;
    }
    // A server that leaves next_page out: only `total` says there is more.
    let proxy = axum::Router::new().fallback({
        let upstream = url.clone();
        move |req: axum::http::Request<Body>| {
            let upstream = upstream.clone();
            async move {
                let path_q = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
                let target = format!("{}{}", upstream.as_str().trim_end_matches("/v1"), path_q);
                let r = reqwest::Client::new().get(target).header("SproutVideo-Api-Key", "key").send().await.unwrap();
                let mut v: serde_json::Value = r.json().await.unwrap();
                v.as_object_mut().unwrap().remove("next_page");
                Response::builder().status(StatusCode::OK).body(Body::from(v.to_string())).unwrap()
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, proxy).await });
    let c = client(&Url::parse(&format!("http://{addr}/v1")).unwrap(), "key", 1000);
    let first = c.logins_page(1, 3).await.unwrap();
    assert!(first.has_next, "3 of 7 seen");
    let last = c.logins_page(3, 3).await.unwrap();
    assert_eq!(last.items.len(), 1);
    assert!(!last.has_next, "7 of 7 seen");
    assert_eq!(c.list_logins().await.unwrap().len(), 7);
}

// ---- what the local SproutVideo does as the documents describe it ------------------------

#[tokio::test]
async fn lists_come_oldest_first_and_page_links_keep_per_page() {
    let (sv, url) = start(SproutBehaviour::default()).await;
    let emails: Vec<String> = (0..5).map(|i| format!("l{i}@example.com")).collect();
    for e in &emails {
        sv.add_login(e).await;
    }
    let c = client(&url, "key", 1000);
    let listed: Vec<String> = c.list_logins().await.unwrap().into_iter().filter_map(|l| l.email).collect();
    assert_eq!(listed, emails, "logins by created_at, oldest first, whatever their ids");

    // The documented page link: a full URL with page and per_page.
    let raw = |q: &'static str| {
        let url = url.clone();
        async move {
            let v: serde_json::Value = reqwest::Client::new()
                .get(format!("{url}/logins?{q}"))
                .header("SproutVideo-Api-Key", "key")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        }
    };
    let first = raw("per_page=2").await;
    let next = Url::parse(first["next_page"].as_str().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = next.query_pairs().into_owned().collect();
    assert_eq!((q.get("page").map(String::as_str), q.get("per_page").map(String::as_str)), (Some("2"), Some("2")));
    assert!(first["previous_page"].is_null(), "null on the first page, not left out");
    let last = raw("per_page=2&page=3").await;
    assert!(last["next_page"].is_null());
    assert_eq!(last["logins"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn page_links_drop_filters_but_not_per_page_while_the_trap_is_on() {
    let (sv, url) = start(SproutBehaviour::default()).await;
    let video = sv.add_video(VideoSeed { title: "V".into(), duration: Some(60.0), ..Default::default() }).await;
    for _ in 0..3 {
        sv.add_session(SessionSeed {
            video_id: video.clone(),
            vemail: Some("a@example.com".into()),
            seconds_watched: Some(5.0),
            ..Default::default()
        })
        .await;
    }
    let next_of = || {
        let url = url.clone();
        let video = video.clone();
        async move {
            let v: serde_json::Value = reqwest::Client::new()
                .get(format!("{url}/stats/engagement/{video}/sessions?vemail=a%40example.com&per_page=1"))
                .header("SproutVideo-Api-Key", "key")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let next = Url::parse(v["next_page"].as_str().unwrap()).unwrap();
            next.query_pairs().into_owned().collect::<std::collections::HashMap<_, _>>()
        }
    };
    let dropped = next_of().await;
    assert_eq!(dropped.get("per_page").map(String::as_str), Some("1"));
    assert!(!dropped.contains_key("vemail"), "the reported trap: filters left out");
    sv.update_behaviour(|b| b.next_page_drops_filters = false).await;
    let kept = next_of().await;
    assert_eq!(kept.get("vemail").map(String::as_str), Some("a@example.com"));
    assert_eq!(kept.get("per_page").map(String::as_str), Some("1"));
}

#[tokio::test]
async fn a_login_change_other_than_its_password_is_refused() {
    let (sv, url) = start(SproutBehaviour::default()).await;
    let id = sv.add_login("kept@example.com").await;
    let put = |body: serde_json::Value| {
        let url = url.clone();
        let id = id.clone();
        async move {
            let r = reqwest::Client::new()
                .put(format!("{url}/logins/{id}"))
                .header("SproutVideo-Api-Key", "key")
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, body) = put(serde_json::json!({"email": "changed@example.com"})).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].to_string().contains("email"), "{body}");
    let (status, body) = put(serde_json::json!({"password": "new-secret"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["email"], "kept@example.com");
    assert!(!body.to_string().contains("new-secret"));
    let login = client(&url, "key", 1000).get_login(&id).await.unwrap();
    assert_eq!(login.email.as_deref(), Some("kept@example.com"));
}

#[tokio::test]
async fn access_grants_are_made_in_bulk_limited_and_taken_away() {
    let (sv, url) = start(SproutBehaviour::default()).await;
    let c = client(&url, "sv-key", 10_000);
    let course = [
        sv.add_video(VideoSeed { title: "Course A, part 1".into(), ..Default::default() }).await,
        sv.add_video(VideoSeed { title: "Course A, part 2".into(), ..Default::default() }).await,
    ];
    let login = c.create_login("buyer@example.com", &SecretString::from("a-strong-one")).await.unwrap();
    let grant = |video: &str, plays| NewAccessGrant {
        video_id: video.into(),
        login_id: login.id.clone(),
        limits: GrantLimits { allowed_plays: Some(plays), access_ends_at: None },
    };
    let made = c.create_access_grants(&[grant(&course[0], Some(3)), grant(&course[1], None)]).await.unwrap();
    assert_eq!(made.len(), 2);
    assert_eq!((made[0].allowed_plays, made[1].allowed_plays), (Some(3), None));

    // One bad grant in a bulk request: refused whole, naming it; nothing is made.
    let bad = NewAccessGrant { login_id: String::new(), ..grant(&course[0], None) };
    let err = c.create_access_grants(&[grant(&course[0], None), bad]).await.unwrap_err();
    assert!(matches!(&err, SproutError::Invalid { status: 422, .. }) && err.to_string().contains("[1]"), "{err}");
    assert_eq!(c.list_access_grants().await.unwrap().len(), 2);

    // Limits change; a null clears one.
    let until = "2030-04-15T00:00:00+00:00".to_string();
    let limits = GrantLimits { allowed_plays: Some(None), access_ends_at: Some(Some(until)) };
    let changed = c.update_access_grant(&made[0].id, &limits).await.unwrap();
    assert_eq!(changed.allowed_plays, None);
    assert!(changed.access_ends_at.is_some());
    assert_eq!(c.get_access_grant(&made[0].id).await.unwrap(), changed);

    // Taken away: the grant, then the login with the grants it had left.
    c.delete_access_grant(&made[0].id).await.unwrap();
    assert!(matches!(c.get_access_grant(&made[0].id).await, Err(SproutError::NotFound(_))));
    assert!(matches!(c.delete_access_grant(&made[0].id).await, Err(SproutError::NotFound(_))));
    assert_eq!(c.list_access_grants().await.unwrap().len(), 1);
    c.delete_login(&login.id).await.unwrap();
    assert!(c.list_access_grants().await.unwrap().is_empty(), "a deleted login's grants go with it");
    assert!(matches!(c.get_login(&login.id).await, Err(SproutError::NotFound(_))));
}
