//! The contract fixtures (`tests/fixtures/ghl/`, `tests/fixtures/sproutvideo/`): every one is read
//! by the client call that asks for it; the local GHL and SproutVideo answer the same requests in
//! the same shape; and the local GHL's search shows a write only once its lag has passed.

use std::net::SocketAddr;
use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use shared::ghl::{SearchFilter, SearchRequest};
use sync_tests::fixtures::{
    self, Clients, Ids, LOCATION, RecordingProxy, capture_names_differ, cases, client_reads, shape_differences,
};
use sync_tests::local_ghl::{GhlBehaviour, LocalGhl};
use sync_tests::local_sprout::{LocalSprout, SessionSeed, SproutBehaviour, VideoSeed};
use url::Url;

#[tokio::test]
async fn every_fixture_is_read_by_the_client_call_that_asks_for_it() {
    let dir = fixtures::dir();
    let cases = cases();
    let failures: Vec<String> =
        join_all(cases.iter().map(|c| client_reads(&dir, c))).await.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "fixtures the clients cannot read:\n{}", failures.join("\n"));

    // Every fixture has a call, and carries the name a capture saves its endpoint under.
    let covered: std::collections::BTreeSet<String> = cases.iter().map(|c| c.file.to_string()).collect();
    let orphans: Vec<String> = fixtures::files(&dir).difference(&covered).cloned().collect();
    assert!(orphans.is_empty(), "fixtures no client call reads: {orphans:?}");
    let misnamed = capture_names_differ();
    assert!(misnamed.is_empty(), "{misnamed:#?}");
}

#[tokio::test]
async fn a_fixture_the_client_cannot_read_fails_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("sv-fixtures-{}", fastrand::u64(..)));
    std::fs::create_dir_all(dir.join("ghl")).unwrap();
    let all = cases();
    let case = all.iter().find(|c| c.file == "ghl/tasks.json").unwrap();

    // A task whose `completed` is a string: the typed decoding refuses it.
    let mut tasks = fixtures::load(&fixtures::dir(), case.file).unwrap();
    tasks["tasks"][0]["completed"] = json!("yes");
    std::fs::write(dir.join(case.file), tasks.to_string()).unwrap();
    let e = client_reads(&dir, case).await.unwrap_err();
    assert!(e.contains("ghl/tasks.json") && e.contains("cannot read"), "{e}");

    // The list under another key reads as nothing, which is no better.
    let renamed = json!({"items": tasks["tasks"].clone()});
    std::fs::write(dir.join(case.file), renamed.to_string()).unwrap();
    let e = client_reads(&dir, case).await.unwrap_err();
    assert!(e.contains("ghl/tasks.json") && e.contains("read nothing"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_shape_rule_names_each_difference_by_its_path() {
    let fixture = json!({
        "contacts": [{"id": "a", "tags": ["x"], "dnd": false, "assignedTo": "u1", "phone": "+1555"}],
        "total": 1,
        "next_page": null
    });
    let same = json!({
        "contacts": [
            {"id": "b", "tags": [], "dnd": true, "phone": "+1666"},
            {"id": "c", "tags": ["y", "z"], "dnd": false, "assignedTo": null, "phone": "+1777"}
        ],
        "total": 7.0,
        "next_page": "https://example.com/next"
    });
    let optional = ["$.contacts[].assignedTo", "$.contacts[].tags[]"];
    assert_eq!(shape_differences(&fixture, &same, &optional), Vec::<String>::new());

    let drifted = json!({
        "items": [],
        "contacts": [{"id": 5, "tags": ["x"], "dnd": false, "assignedTo": "u1", "phone": null, "extra": {}}],
        "total": "1"
    });
    let diffs = shape_differences(&fixture, &drifted, &optional);
    for want in [
        "$.contacts[].id: a number, where the fixture has a string",
        "$.contacts[].phone: null, where the fixture has a string",
        "$.contacts[].extra: not in the fixture (an object)",
        "$.total: a string, where the fixture has a number",
        "$.next_page: missing (the fixture has null)",
        "$.items: not in the fixture (a list)",
    ] {
        assert!(diffs.iter().any(|d| d == want), "{want} not among {diffs:#?}");
    }
    assert_eq!(diffs.len(), 6, "{diffs:#?}");

    // A list of mixed items is a tuple: compared item by item.
    let cursor = json!({"searchAfter": [1764605190468_u64, "id"]});
    assert!(shape_differences(&cursor, &json!({"searchAfter": [1, "x"]}), &[]).is_empty());
    assert_eq!(
        shape_differences(&cursor, &json!({"searchAfter": ["x", 1, 2]}), &[]),
        [
            "$.searchAfter: 3 items, where the fixture has 2",
            "$.searchAfter[0]: a string, where the fixture has a number",
            "$.searchAfter[1]: a number, where the fixture has a string"
        ]
    );
}

// ---- the local fakes answer in the fixtures' shapes ---------------------------------------

/// The local GHL seeded so every answer has what the fixtures show: a contact with every field
/// the API lets a client write, a second one tied to a business (GHL sets that association
/// outside the Contacts API, so it is stored directly), tasks, notes, an appointment, a custom
/// field, and a contact, a task and a note to delete.
async fn seeded_ghl() -> (LocalGhl, SocketAddr, Ids) {
    let ghl = LocalGhl::new(GhlBehaviour::default());
    let addr = ghl.spawn("127.0.0.1:0").await.unwrap();
    let field = ghl.define_custom_field(LOCATION, "Pincode", "contact.pincode", "TEXT").await;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, body: Value| {
        let http = http.clone();
        async move {
            let r = http
                .request(method, format!("http://{addr}{path}"))
                .header("Authorization", "Bearer seed")
                .header("Version", "2021-07-28")
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let v: Value = r.json().await.unwrap();
            assert!(status.is_success(), "seeding {path}: {status} {v}");
            v
        }
    };
    let dnd = json!({"status": "inactive", "message": "", "code": ""});
    let main = call(
        reqwest::Method::POST,
        "/contacts/upsert".into(),
        json!({
            "locationId": LOCATION, "firstName": "Rubika", "lastName": "Deo", "email": "rubika@deos.com",
            "phone": "+18832327657", "companyName": "DGS VolMAX", "address1": "3535 1st St N",
            "city": "Dolomite", "state": "AL", "postalCode": "35061", "country": "US",
            "website": "https://www.tesla.com", "timezone": "Asia/Calcutta", "source": "public api",
            "assignedTo": "y0BeYjuRIlDwsDcOHOJo", "tags": ["nisi sint commodo amet", "consequat"],
            "customFields": [{"id": field, "field_value": "35061"}], "dnd": true,
            "dndSettings": {"Call": dnd, "Email": dnd, "SMS": dnd, "WhatsApp": dnd, "GMB": dnd, "FB": dnd},
            "dateOfBirth": "1990-09-25"
        }),
    )
    .await;
    let contact = main["contact"]["id"].as_str().unwrap().to_string();
    ghl.insert_contact(
        LOCATION,
        json!({"firstName": "Bo", "lastName": "Business", "email": "bo@deos.com", "timezone": "Asia/Calcutta",
               "country": "US", "source": "public api", "tags": ["consequat"], "businessId": "biz00000000000000001",
               "customFields": [{"id": field, "field_value": "35062"}]}),
    )
    .await;
    let doomed_contact = ghl.insert_contact(LOCATION, json!({"email": "gone@deos.com"})).await;
    let task = json!({"title": "Call back", "body": "About the video", "dueDate": "2030-01-01T10:00:00Z",
                      "completed": false, "assignedTo": "y0BeYjuRIlDwsDcOHOJo"});
    let note = json!({"body": "Watched it", "userId": "TUcmRxWrjqzJS8EjkxNK", "title": "Summary",
                      "color": "#FFAA00", "pinned": false});
    let mut made = Vec::new();
    for (kind, body) in [("tasks", &task), ("tasks", &task), ("notes", &note), ("notes", &note)] {
        let v = call(reqwest::Method::POST, format!("/contacts/{contact}/{kind}"), body.clone()).await;
        made.push(v[&kind[..4]]["id"].as_str().unwrap().to_string());
    }
    ghl.add_appointment(
        LOCATION,
        json!({"contactId": contact, "title": "Onboarding call", "assignedUserId": "YlWd2wuCAZQzh2cH1fVZ",
               "notes": "first call", "address": "Zoom", "groupId": "YlWd2wuCAZQzh2cH1fVZ",
               "users": ["YlWd2wuCAZQzh2cH1fVZ"], "assignedResources": ["YlWd2wuCAZQzh2cH1fVZ"]}),
    )
    .await
    .unwrap();
    let ids = Ids {
        contact,
        email: "rubika@deos.com".into(),
        doomed_contact,
        task: made[0].clone(),
        doomed_task: made[1].clone(),
        note: made[2].clone(),
        doomed_note: made[3].clone(),
        business: "biz00000000000000001".into(),
        custom_field: field,
        ..Ids::stand_ins()
    };
    (ghl, addr, ids)
}

/// The local SproutVideo seeded with two of everything (so a one-item page links to the next):
/// videos, logins, access grants with their optional settings, and sessions with an email,
/// seconds and a percent watched.
async fn seeded_sprout(ids: &mut Ids) -> (LocalSprout, SocketAddr) {
    let sv = LocalSprout::new(SproutBehaviour::default());
    let addr = sv.spawn("127.0.0.1:0").await.unwrap();
    let mut videos = Vec::new();
    for title in ["Onboarding, part 1", "Onboarding, part 2"] {
        let seed = VideoSeed {
            title: title.into(),
            duration: Some(140.334),
            tags: vec!["4a32d29b4c4".into()],
            require_email: true,
            ..Default::default()
        };
        videos.push(sv.add_video(seed).await);
    }
    let logins = [sv.add_login("viewer@example.com").await, sv.add_login("second@example.com").await];
    let mut grants = Vec::new();
    for login in &logins {
        let r = reqwest::Client::new()
            .post(format!("http://{addr}/v1/access_grants"))
            .header("SproutVideo-Api-Key", "seed")
            .json(&json!({"video_id": videos[0], "login_id": login, "allowed_plays": 5,
                          "access_ends_at": "2030-04-15T00:00:00+00:00"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let made: Value = r.json().await.unwrap();
        grants.push(made["id"].as_str().unwrap().to_string());
    }
    for email in ["viewer@example.com", "second@example.com"] {
        sv.add_session(SessionSeed {
            video_id: videos[0].clone(),
            vemail: Some(email.into()),
            seconds_watched: Some(84.5),
            percent_watched: Some(60.2),
            created_at: None,
        })
        .await;
    }
    ids.video = videos[0].clone();
    ids.login = logins[0].clone();
    ids.grant = grants[0].clone();
    (sv, addr)
}

#[tokio::test]
async fn the_local_fakes_answer_each_fixture_request_in_the_fixture_shape() {
    let (_ghl, ghl_addr, mut ids) = seeded_ghl().await;
    let (_sprout, sprout_addr) = seeded_sprout(&mut ids).await;
    let (ghl_proxy, sprout_proxy) = (RecordingProxy::start(ghl_addr).await, RecordingProxy::start(sprout_addr).await);
    let clients = Clients::new(
        &Url::parse(&format!("http://{}/", ghl_proxy.addr)).unwrap(),
        &Url::parse(&format!("http://{}/v1", sprout_proxy.addr)).unwrap(),
    );
    let dir = fixtures::dir();
    let mut report = Vec::new();
    for case in cases() {
        let proxy = if case.file.starts_with("ghl/") { &ghl_proxy } else { &sprout_proxy };
        let fixture = fixtures::load(&dir, case.file).unwrap();
        let label = format!("{} ({} {})", case.file, case.method, (case.path)(&ids));
        match (case.call)(clients.clone(), ids.clone()).await {
            Ok(0) => report.push(format!("{label}: the fake answered no record; seed it")),
            Ok(_) => {}
            Err(e) => report.push(format!("{label}: the client cannot read the fake's answer: {e}")),
        }
        match proxy.take_last() {
            None => report.push(format!("{label}: no answer from the fake")),
            Some(answer) => report.extend(
                shape_differences(&fixture, &answer, case.optional).into_iter().map(|d| format!("{label}: {d}")),
            ),
        }
    }
    assert!(report.is_empty(), "the local fakes differ from the fixtures:\n{}", report.join("\n"));
}

// ---- the local GHL's search lag ----------------------------------------------------------

#[tokio::test]
async fn a_contact_written_now_is_missing_from_search_until_the_lag_passes() {
    let ghl = LocalGhl::new(GhlBehaviour { search_lag_ms: 60_000, ..Default::default() });
    let addr = ghl.spawn("127.0.0.1:0").await.unwrap();
    let c =
        Clients::new(&Url::parse(&format!("http://{addr}/")).unwrap(), &Url::parse("http://127.0.0.1:1/v1").unwrap());
    let by_email = |email: &str| SearchRequest {
        location_id: String::new(),
        page_limit: 10,
        page: Some(1),
        search_after: None,
        query: None,
        filters: vec![SearchFilter::eq("email", email)],
        sort: vec![],
    };
    let mut body = shared::ghl::UpsertContactDto {
        location_id: LOCATION.into(),
        email: Some("lag@example.com".into()),
        first_name: Some("Ada".into()),
        ..Default::default()
    };
    let written = c.ghl.upsert_contact(&body).await.unwrap();
    assert!(written.created);
    let id = written.contact.id.clone();

    // Just written: search does not see it yet; reading it by id and the duplicate lookup do.
    assert!(c.ghl.search_page(&by_email("lag@example.com")).await.unwrap().contacts.is_empty());
    assert_eq!(c.ghl.get_contact(&id).await.unwrap().first_name.as_deref(), Some("Ada"));
    assert_eq!(c.ghl.find_duplicate(Some("lag@example.com"), None).await.unwrap().map(|c| c.id), Some(id.clone()));

    // A lag of a moment: once it has passed, search finds the contact.
    ghl.set_search_lag(Duration::from_millis(200)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let hits = c.ghl.search_page(&by_email("lag@example.com")).await.unwrap().contacts;
    assert_eq!(hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), [id.as_str()]);

    // A change shows the old version until the lag has passed; a deleted contact stays found.
    ghl.set_search_lag(Duration::from_secs(60)).await;
    body.first_name = Some("Augusta".into());
    c.ghl.upsert_contact(&body).await.unwrap();
    let hit = &c.ghl.search_page(&by_email("lag@example.com")).await.unwrap().contacts[0];
    assert_eq!(hit.first_name_lower_case.as_deref(), Some("ada"), "search still shows the earlier version");
    assert_eq!(c.ghl.get_contact(&id).await.unwrap().first_name.as_deref(), Some("Augusta"));
    assert!(c.ghl.delete_contact(&id).await.unwrap());
    assert_eq!(c.ghl.search_page(&by_email("lag@example.com")).await.unwrap().contacts.len(), 1);
    ghl.set_search_lag(Duration::ZERO).await;
    assert!(c.ghl.search_page(&by_email("lag@example.com")).await.unwrap().contacts.is_empty());
}

#[tokio::test]
async fn the_search_lag_is_set_through_the_admin_api_and_is_off_by_default() {
    let ghl = LocalGhl::new(GhlBehaviour::default());
    let addr = ghl.spawn("127.0.0.1:0").await.unwrap();
    let c =
        Clients::new(&Url::parse(&format!("http://{addr}/")).unwrap(), &Url::parse("http://127.0.0.1:1/v1").unwrap());
    let search = |email: &'static str| {
        let c = c.clone();
        async move {
            let req = SearchRequest {
                location_id: String::new(),
                page_limit: 10,
                page: None,
                search_after: None,
                query: None,
                filters: vec![SearchFilter::eq("email", email)],
                sort: vec![],
            };
            c.ghl.search_page(&req).await.unwrap().contacts.len()
        }
    };
    let upsert = |email: &'static str| {
        let c = c.clone();
        async move {
            let body = shared::ghl::UpsertContactDto {
                location_id: LOCATION.into(),
                email: Some(email.into()),
                ..Default::default()
            };
            c.ghl.upsert_contact(&body).await.unwrap();
        }
    };
    upsert("now@example.com").await;
    assert_eq!(search("now@example.com").await, 1, "no lag unless asked for");

    let admin = reqwest::Client::new().put(format!("http://{addr}/_admin/search-lag"));
    let r = admin.json(&json!({"ms": 60_000})).send().await.unwrap();
    assert_eq!(r.status(), 204);
    upsert("later@example.com").await;
    assert_eq!(search("later@example.com").await, 0);
    let r =
        reqwest::Client::new().put(format!("http://{addr}/_admin/search-lag")).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 400, "a lag needs its milliseconds");
}
