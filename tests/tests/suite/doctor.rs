//! `doctor` against moto and the local GHL and SproutVideo: all ✓ on a good setup, and the
//! matching ✗ with its fix for a token of another location, a missing scope, a missing custom
//! field and sessions answered under another key; and a capture that can stand in for the
//! contract fixtures.

use std::path::PathBuf;

use serde_json::json;
use sync_tests::aws::{Stack, StackNames, StackSettings, require_emulator, secret_json};
use sync_tests::fixtures::{self, cases, client_reads};
use sync_tests::local_ghl::{GhlBehaviour, LocalGhl, TokenGrant};
use sync_tests::local_sprout::{Generate, LocalSprout, SproutBehaviour};

const LOC: &str = "locDoctorTest0000001";
const TOKEN: &str = "pit-doctor";

const MAPPING: &str = r#"
source = "SproutVideo"
default_region = "US"
sync_tag = "sproutvideo"
[tags]
login = "sv-login"
lead = "sv-lead"
[custom_fields]
"contact.sv_last_video" = "{video_title}"
"#;

struct Setup {
    grant: Option<TokenGrant>,
    define_field: bool,
    sessions_key: Option<&'static str>,
    /// A GHL contact with a task, a note and an appointment, and a SproutVideo access grant.
    records: bool,
    capture: Option<PathBuf>,
    /// The mapping has an access rule with password field `contact.sv_password`; this is the
    /// type it is defined with in GHL (`None` inside: not defined).
    access: Option<Option<&'static str>>,
}

impl Default for Setup {
    fn default() -> Self {
        Self { grant: None, define_field: true, sessions_key: None, records: false, capture: None, access: None }
    }
}

const ACCESS_RULE: &str = r#"
[[access]]
tag = "course-a"
video_ids = ["v1"]
password_field = "contact.sv_password"
"#;

/// A contact with a task, a note and an appointment in the local GHL at `base`.
async fn seed_contact(ghl: &LocalGhl, base: &str) {
    let id = ghl.insert_contact(LOC, json!({"email": "ada.capture@example.com", "firstName": "Ada"})).await;
    let http = reqwest::Client::new();
    for (kind, body) in [
        ("tasks", json!({"title": "Call", "dueDate": "2030-01-01T10:00:00Z", "completed": false})),
        ("notes", json!({"body": "Watched it"})),
    ] {
        let r = http
            .post(format!("{base}contacts/{id}/{kind}"))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Version", "2021-07-28")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    ghl.add_appointment(LOC, json!({"contactId": id, "title": "Call"})).await.unwrap();
}

async fn doctor(tag: &str, setup: Setup) -> reconciler::doctor::DoctorReport {
    require_emulator();
    let mut b = GhlBehaviour::default();
    if let Some(g) = setup.grant {
        b.token_grants.insert(TOKEN.into(), g);
    }
    let ghl = LocalGhl::new(b);
    let ghl_url = format!("http://{}/", ghl.spawn("127.0.0.1:0").await.unwrap());
    if setup.define_field {
        ghl.define_custom_field(LOC, "Last video", "contact.sv_last_video", "TEXT").await;
    }
    if setup.records {
        seed_contact(&ghl, &ghl_url).await;
    }
    if let Some(Some(data_type)) = setup.access {
        ghl.define_custom_field(LOC, "SV password", "contact.sv_password", data_type).await;
    }
    let mut sb = SproutBehaviour::default();
    if let Some(k) = setup.sessions_key {
        sb.renamed_list_keys.insert("sessions".into(), k.into());
    }
    let sprout = LocalSprout::new(sb);
    let sprout_url = format!("http://{}/v1", sprout.spawn("127.0.0.1:0").await.unwrap());
    let generated = sprout
        .generate(Generate {
            viewers: 4,
            videos: 2,
            sessions_per_viewer: 1,
            email_share: 1.0,
            login_every: 2,
            ..Default::default()
        })
        .await;
    if setup.records {
        let login = sprout.add_login("grant.capture@example.com").await;
        let r = reqwest::Client::new()
            .post(format!("{sprout_url}/access_grants"))
            .header("SproutVideo-Api-Key", "sv-key")
            .json(&json!({"video_id": generated["videos"][0], "login_id": login}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let stack = Stack::create(
        StackNames::unique(tag),
        StackSettings::default(),
        Some(&secret_json("wt", &["sig"], "rk", TOKEN, Some("sv-key"))),
    )
    .await
    .unwrap();
    let mapping = std::env::temp_dir().join(format!("{}-doctor.toml", stack.names.table));
    let text = if setup.access.is_some() { format!("{MAPPING}{ACCESS_RULE}") } else { MAPPING.to_string() };
    std::fs::write(&mapping, text).unwrap();
    let config = stack.config(&ghl_url, &sprout_url, LOC, &[("SYNC_MAPPING_FILE", mapping.to_str().unwrap())]);
    let (_, deps) = reconciler::build(config).await.unwrap();
    ghl.clear_requests().await;
    let sprout_before = sprout.requests().await.len();
    let report = reconciler::doctor::run(&deps, setup.capture.as_deref()).await;
    let writes: Vec<_> =
        ghl.requests().await.into_iter().filter(|r| r.method != "GET" && r.path != "/contacts/search").collect();
    assert!(writes.is_empty(), "doctor never writes to GHL: {writes:?}");
    let sprout_writes: Vec<_> =
        sprout.requests().await.into_iter().skip(sprout_before).filter(|r| r.method != "GET").collect();
    assert!(sprout_writes.is_empty(), "doctor never writes to SproutVideo");
    println!("{}", report.table());
    report
}

fn failed<'a>(r: &'a reconciler::doctor::DoctorReport, what: &str) -> &'a reconciler::doctor::Check {
    r.checks
        .iter()
        .find(|c| !c.ok && c.what.contains(what))
        .unwrap_or_else(|| panic!("no failed check '{what}' in\n{}", r.table()))
}

#[tokio::test]
async fn a_good_setup_passes_every_check() {
    let r = doctor("doc-ok", Setup::default()).await;
    assert!(r.all_ok(), "{}", r.table());
    for what in [
        "token works for the location",
        "scope contacts.readonly",
        "custom field contact.sv_last_video",
        "rate-limit headers",
        "API key works",
        "engagement sessions: shape",
        "secret has every key",
        "dead-letter queue answers",
    ] {
        assert!(r.checks.iter().any(|c| c.ok && c.what.contains(what)), "{what} missing in\n{}", r.table());
    }
}

#[tokio::test]
async fn a_token_of_another_location_is_named_with_its_fix() {
    let grant = TokenGrant { location_id: Some("locSomewhereElse0001".into()), scopes: None };
    let r = doctor("doc-loc", Setup { grant: Some(grant), ..Default::default() }).await;
    let c = failed(&r, "token works for the location");
    assert!(c.detail.contains("does not have access to this location"), "{c:?}");
    assert!(c.fix.as_deref().unwrap().contains("GHL_LOCATION_ID"), "{c:?}");
    assert!(!r.all_ok());
}

#[tokio::test]
async fn a_missing_scope_is_named_with_its_fix() {
    let scopes = vec!["locations/customFields.readonly".to_string(), "contacts.write".to_string()];
    let grant = TokenGrant { location_id: Some(LOC.into()), scopes: Some(scopes) };
    let r = doctor("doc-scope", Setup { grant: Some(grant), ..Default::default() }).await;
    let c = failed(&r, "scope contacts.readonly");
    assert!(c.fix.as_deref().unwrap().contains("contacts.readonly"), "{c:?}");
    assert!(r.checks.iter().any(|c| c.ok && c.what.contains("token works for the location")));
}

#[tokio::test]
async fn a_missing_custom_field_is_named_with_its_fix() {
    let r = doctor("doc-field", Setup { define_field: false, ..Default::default() }).await;
    let c = failed(&r, "custom field contact.sv_last_video");
    assert!(c.fix.as_deref().unwrap().contains("create it in GHL"), "{c:?}");
}

#[tokio::test]
async fn the_access_password_field_must_exist_as_a_text_field() {
    let r = doctor("doc-access-ok", Setup { access: Some(Some("TEXT")), ..Default::default() }).await;
    assert!(r.all_ok(), "{}", r.table());
    assert!(r.checks.iter().any(|c| c.ok && c.what == "access field contact.sv_password"), "{}", r.table());
    let r = doctor("doc-access-missing", Setup { access: Some(None), ..Default::default() }).await;
    let c = failed(&r, "access field contact.sv_password");
    assert!(c.fix.as_deref().unwrap().contains("create a TEXT field"), "{c:?}");
    let r = doctor("doc-access-type", Setup { access: Some(Some("NUMERICAL")), ..Default::default() }).await;
    let c = failed(&r, "access field contact.sv_password");
    assert!(c.detail.contains("NUMERICAL"), "{c:?}");
}

#[tokio::test]
async fn sessions_under_another_key_are_named_with_both_keys() {
    let r = doctor("doc-sessions", Setup { sessions_key: Some("engagement_sessions"), ..Default::default() }).await;
    let c = failed(&r, "engagement sessions: shape");
    assert!(c.detail.contains("\"sessions\"") && c.detail.contains("engagement_sessions"), "{c:?}");
}

#[tokio::test]
async fn a_capture_saves_each_answer_under_its_fixture_name_and_the_clients_read_it() {
    let dir = std::env::temp_dir().join(format!("sv-capture-{}", fastrand::u64(..)));
    let r = doctor("doc-capture", Setup { records: true, capture: Some(dir.clone()), ..Default::default() }).await;
    assert!(r.all_ok(), "{}", r.table());
    let saved = fixtures::files(&dir);
    let want = [
        "ghl/appointments.json",
        "ghl/custom_fields.json",
        "ghl/duplicate.json",
        "ghl/get_contact.json",
        "ghl/note.json",
        "ghl/notes.json",
        "ghl/search.json",
        "ghl/task.json",
        "ghl/tasks.json",
        "sproutvideo/access_grants.json",
        "sproutvideo/account.json",
        "sproutvideo/login.json",
        "sproutvideo/logins.json",
        "sproutvideo/sessions.json",
        "sproutvideo/video.json",
        "sproutvideo/video_sessions.json",
        "sproutvideo/videos.json",
    ];
    assert_eq!(saved.iter().map(String::as_str).collect::<Vec<_>>(), want);
    let text: String = saved.iter().map(|f| std::fs::read_to_string(dir.join(f)).unwrap()).collect();
    for personal in ["ada.capture@example.com", "viewer0@example.com", "grant.capture@example.com", TOKEN, "sv-key"] {
        assert!(!text.contains(personal), "{personal} left in the capture");
    }

    // Put in the fixtures' place, the capture is read by the same client calls.
    let mut failures = Vec::new();
    for case in cases().iter().filter(|c| saved.contains(c.file)) {
        if let Err(e) = client_reads(&dir, case).await {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    std::fs::remove_dir_all(&dir).ok();
}
