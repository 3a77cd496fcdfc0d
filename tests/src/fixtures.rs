//! Contract fixtures: one example answer per endpoint the GHL and SproutVideo clients read
//! (`tests/fixtures/`, indexed in its README), the client call that reads each, a server that
//! answers with a fixture, a proxy that records what a local fake answered, and the rule that
//! compares a fixture's shape with an answer's.
//!
//! The fixtures carry the names `doctor --capture` gives the answers it saves
//! ([`reconciler::doctor::capture_name`]), so a capture put in their place is checked the same way.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use reconciler::doctor::{Service, capture_name};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use shared::ghl::*;
use shared::retry::RetryPolicy;
use shared::secrets::{MemorySecret, SecretCache};
use shared::sprout::{
    AccessGrant, GrantLimits, NewAccessGrant, SessionQuery, SproutClient, SproutSettings, StaticKey, Video,
};
use url::Url;

/// The location the fixtures and the calls use (the OpenAPI examples' location id).
pub const LOCATION: &str = "ve9EPM428h8vShlRW1KT";

/// The fixtures folder, `tests/fixtures`.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A fixture (`ghl/get_contact.json`) of `dir`.
pub fn load(dir: &Path, name: &str) -> Result<Value, String> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))
}

/// The API fixtures of `dir` (the `ghl/` and `sproutvideo/` files), by name.
pub fn files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for sub in ["ghl", "sproutvideo"] {
        for entry in std::fs::read_dir(dir.join(sub)).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".json") {
                out.insert(format!("{sub}/{name}"));
            }
        }
    }
    out
}

// ---- the calls ----------------------------------------------------------------------------

/// The records a call names: stand-ins against a fixture server, seeded records against a fake.
#[derive(Debug, Clone)]
pub struct Ids {
    pub contact: String,
    pub email: String,
    /// A contact, a task and a note the delete calls remove.
    pub doomed_contact: String,
    pub doomed_task: String,
    pub doomed_note: String,
    pub task: String,
    pub note: String,
    pub business: String,
    pub video: String,
    pub login: String,
    pub grant: String,
    pub custom_field: String,
}

impl Ids {
    pub fn stand_ins() -> Self {
        Self {
            contact: "seD4PfOuKoVMLkEZqohJ".into(),
            email: "rubika@deos.com".into(),
            doomed_contact: "doomedContact0000001".into(),
            doomed_task: "doomedTask0000000001".into(),
            doomed_note: "doomedNote0000000001".into(),
            task: "lJpzYrWdpkC2hX6t2yue".into(),
            note: "HGPcayliwcdoUFzvbTok".into(),
            business: "641c094001436dbc2081e642".into(),
            video: "a098d2bbd33e1c328".into(),
            login: "4a9fdfb4191de6c4".into(),
            grant: "2d9ac2b4de1c4b32".into(),
            custom_field: "MgobCB14YMVKuE4Ka8p1".into(),
        }
    }
}

/// The two clients, and GHL's base URL (the OAuth token endpoint hangs off it).
#[derive(Clone)]
pub struct Clients {
    pub ghl: GhlClient,
    pub sprout: SproutClient,
    pub ghl_base: Url,
}

impl Clients {
    pub fn new(ghl_base: &Url, sprout_base: &Url) -> Self {
        let retry = RetryPolicy {
            max_attempts: 2,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
            deadline: Some(Duration::from_secs(10)),
        };
        let mut g = GhlSettings::new(ghl_base.clone(), LOCATION);
        g.retry = retry.clone();
        let ghl = GhlClient::new(g, Arc::new(StaticToken(SecretString::from("pit-fixtures")))).expect("GHL client");
        let mut s = SproutSettings::new(sprout_base.clone());
        s.retry = retry;
        s.per_minute = 10_000;
        let sprout =
            SproutClient::new(s, Arc::new(StaticKey(SecretString::from("sv-fixtures")))).expect("SproutVideo client");
        Self { ghl, sprout, ghl_base: ghl_base.clone() }
    }
}

/// A client call: how many records it read (a list's items; 1 for one record), or why it
/// could not read the answer.
pub type Call = fn(Clients, Ids) -> BoxFuture<'static, Result<usize, String>>;

/// One fixture and the request that gets it.
pub struct Case {
    /// Below the fixtures folder: `ghl/get_contact.json`.
    pub file: &'static str,
    pub method: &'static str,
    /// The path below the API's base URL.
    pub path: fn(&Ids) -> String,
    pub call: Call,
    /// JSON paths (`$.contact.ssn`, `$.contacts[].followers[]`) the answer may have or lack, or
    /// hold null at: see [`shape_differences`].
    pub optional: &'static [&'static str],
}

impl Case {
    pub fn service(&self) -> Service {
        if self.file.starts_with("ghl/") { Service::Ghl } else { Service::SproutVideo }
    }
}

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

macro_rules! call {
    (|$c:ident, $ids:ident| $body:expr) => {
        |$c: Clients, $ids: Ids| -> BoxFuture<'static, Result<usize, String>> {
            Box::pin(async move {
                let _ = &$ids;
                $body
            })
        }
    };
}

/// A contact's properties GHL sets through features outside the Contacts API (attribution of
/// forms and ads, activity, business association, files): present when the contact has them.
const CONTACT_SET_ELSEWHERE: &[&str] = &[
    "$.contact.attachments",
    "$.contact.ssn",
    "$.contact.keyword",
    "$.contact.lastActivity",
    "$.contact.businessId",
    "$.contact.attributionSource",
    "$.contact.lastAttributionSource",
    "$.contact.visitorId",
];

/// The create answer: as [`CONTACT_SET_ELSEWHERE`], the last session (a person's visit); DND
/// settings and the birthday, which a contact has only when they were set (the client's create
/// body sets neither); and `name` and `timezone`, which `CreateContactSchema` does not list while
/// the GET schema and the create body do (unsettled, so either way is accepted).
const CREATED_CONTACT_OPTIONAL: &[&str] = &[
    "$.contact.businessId",
    "$.contact.lastSessionActivityAt",
    "$.contact.dndSettings",
    "$.contact.dateOfBirth",
    "$.contact.birthMonth",
    "$.contact.birthDay",
    "$.contact.name",
    "$.contact.timezone",
];

/// Search hits: the label of a phone, the business's name and id, the email check's verdict and
/// the attribution, all set outside the Contacts API.
const SEARCH_HIT_OPTIONAL: &[&str] = &[
    "$.contacts[].phoneLabel",
    "$.contacts[].businessName",
    "$.contacts[].businessId",
    "$.contacts[].validEmail",
    "$.contacts[].attributionSource",
    "$.contacts[].lastAttributionSource",
];

/// Legacy list items: attribution and the business are set outside the API, and followers
/// cannot be given through it.
const LIST_ITEM_OPTIONAL: &[&str] =
    &["$.contacts[].attributions", "$.contacts[].businessId", "$.contacts[].followers[]"];

/// Access grants: `allowed_plays` and `access_ends_at` are optional settings (null when unset).
const GRANT_OPTIONAL: &[&str] = &["$.allowed_plays", "$.access_ends_at"];
const GRANTS_OPTIONAL: &[&str] = &["$.access_grants[].allowed_plays", "$.access_grants[].access_ends_at"];
const GRANTS_BULK_OPTIONAL: &[&str] = &["$[].allowed_plays", "$[].access_ends_at"];

fn upsert_body(email: &str) -> UpsertContactDto {
    UpsertContactDto {
        location_id: LOCATION.into(),
        email: Some(email.into()),
        first_name: Some("Rubika".into()),
        last_name: Some("Deo".into()),
        company_name: Some("DGS VolMAX".into()),
        source: Some("public api".into()),
        ..Default::default()
    }
}

fn task_due() -> String {
    due_date(chrono::Utc::now() + chrono::Duration::days(3))
}

/// Every fixture with the client call that reads it, in an order a fake can answer them in
/// (the deletes after every call that reads the records they remove).
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            file: "ghl/get_contact.json",
            method: "GET",
            path: |i| format!("/contacts/{}", i.contact),
            call: call!(|c, ids| c
                .ghl
                .get_contact(&ids.contact)
                .await
                .map(|c| usize::from(!c.id.is_empty()))
                .map_err(text)),
            optional: CONTACT_SET_ELSEWHERE,
        },
        Case {
            file: "ghl/upsert_contact.json",
            method: "POST",
            path: |_| "/contacts/upsert".into(),
            call: call!(|c, ids| c
                .ghl
                .upsert_contact(&upsert_body(&ids.email))
                .await
                .map(|r| usize::from(!r.contact.id.is_empty()))
                .map_err(text)),
            optional: CONTACT_SET_ELSEWHERE,
        },
        Case {
            file: "ghl/create_contact.json",
            method: "POST",
            path: |_| "/contacts/".into(),
            call: call!(|c, ids| {
                let body = CreateContactDto {
                    location_id: LOCATION.into(),
                    first_name: Some("Nova".into()),
                    last_name: Some("Deo".into()),
                    email: Some("nova@deos.com".into()),
                    phone: Some("+18832327658".into()),
                    address1: Some("3535 1st St N".into()),
                    city: Some("Dolomite".into()),
                    state: Some("AL".into()),
                    postal_code: Some("35061".into()),
                    country: Some("US".into()),
                    website: Some("https://www.tesla.com".into()),
                    timezone: Some("Asia/Calcutta".into()),
                    source: Some("public api".into()),
                    assigned_to: Some("y0BeYjuRIlDwsDcOHOJo".into()),
                    company_name: Some("DGS VolMAX".into()),
                    tags: Some(vec!["consequat".into()]),
                    custom_fields: Some(vec![CustomFieldInput {
                        id: ids.custom_field.clone(),
                        field_value: json!("35061"),
                    }]),
                    ..Default::default()
                };
                c.ghl.create_contact(&body).await.map(|c| usize::from(!c.id.is_empty())).map_err(text)
            }),
            optional: CREATED_CONTACT_OPTIONAL,
        },
        Case {
            file: "ghl/update_contact.json",
            method: "PUT",
            path: |i| format!("/contacts/{}", i.contact),
            call: call!(|c, ids| {
                let body = UpdateContactDto { city: Some("Dolomite".into()), ..Default::default() };
                c.ghl.update_contact(&ids.contact, &body).await.map(|c| usize::from(!c.id.is_empty())).map_err(text)
            }),
            optional: CONTACT_SET_ELSEWHERE,
        },
        Case {
            file: "ghl/duplicate.json",
            method: "GET",
            path: |_| "/contacts/search/duplicate".into(),
            call: call!(|c, ids| c
                .ghl
                .find_duplicate(Some(&ids.email), None)
                .await
                .map(|c| usize::from(c.is_some()))
                .map_err(text)),
            optional: CONTACT_SET_ELSEWHERE,
        },
        Case {
            file: "ghl/search.json",
            method: "POST",
            path: |_| "/contacts/search".into(),
            call: call!(|c, ids| {
                let req = SearchRequest {
                    location_id: String::new(),
                    page_limit: 1,
                    page: Some(1),
                    search_after: None,
                    query: None,
                    filters: vec![SearchFilter::eq("email", ids.email.as_str())],
                    sort: vec![],
                };
                let page = c.ghl.search_page(&req).await.map_err(text)?;
                // The searchAfter paging reads its cursor from the last hit.
                if page.contacts.iter().any(|h| !h.extra.get("searchAfter").is_some_and(Value::is_array)) {
                    return Err("a hit without the searchAfter cursor the paging reads".into());
                }
                Ok(page.contacts.len())
            }),
            optional: SEARCH_HIT_OPTIONAL,
        },
        Case {
            file: "ghl/list_contacts.json",
            method: "GET",
            path: |_| "/contacts/".into(),
            call: call!(|c, ids| {
                let first: Vec<Contact> =
                    c.ghl.list_contacts_legacy(1, None).take(1).try_collect().await.map_err(text)?;
                Ok(first.len())
            }),
            optional: LIST_ITEM_OPTIONAL,
        },
        Case {
            file: "ghl/contacts_by_business.json",
            method: "GET",
            path: |i| format!("/contacts/business/{}", i.business),
            call: call!(|c, ids| c
                .ghl
                .contacts_by_business(&ids.business, 10, 0)
                .await
                .map(|r| r.contacts.len())
                .map_err(text)),
            optional: &["$.contacts[].attributions", "$.contacts[].followers[]"],
        },
        Case {
            file: "ghl/add_tags.json",
            method: "POST",
            path: |i| format!("/contacts/{}/tags", i.contact),
            call: call!(|c, ids| c.ghl.add_tags(&ids.contact, &["minim".into()]).await.map(|t| t.len()).map_err(text)),
            optional: &[],
        },
        Case {
            file: "ghl/remove_tags.json",
            method: "DELETE",
            path: |i| format!("/contacts/{}/tags", i.contact),
            call: call!(|c, ids| c
                .ghl
                .remove_tags(&ids.contact, &["minim".into()])
                .await
                .map(|t| t.len())
                .map_err(text)),
            optional: &[],
        },
        Case {
            file: "ghl/tasks.json",
            method: "GET",
            path: |i| format!("/contacts/{}/tasks", i.contact),
            call: call!(|c, ids| c.ghl.list_tasks(&ids.contact).await.map(|t| t.len()).map_err(text)),
            optional: &[],
        },
        Case {
            file: "ghl/task.json",
            method: "GET",
            path: |i| format!("/contacts/{}/tasks/{}", i.contact, i.task),
            call: call!(|c, ids| c
                .ghl
                .get_task(&ids.contact, &ids.task)
                .await
                .map(|t| usize::from(!t.id.is_empty()))
                .map_err(text)),
            optional: &[],
        },
        Case {
            file: "ghl/create_task.json",
            method: "POST",
            path: |i| format!("/contacts/{}/tasks", i.contact),
            call: call!(|c, ids| {
                let body = CreateTaskParams {
                    title: "Call back".into(),
                    body: Some("About the onboarding video".into()),
                    due_date: task_due(),
                    completed: false,
                    assigned_to: Some("y0BeYjuRIlDwsDcOHOJo".into()),
                };
                c.ghl.create_task(&ids.contact, &body).await.map(|t| usize::from(!t.id.is_empty())).map_err(text)
            }),
            optional: &[],
        },
        Case {
            file: "ghl/update_task.json",
            method: "PUT",
            path: |i| format!("/contacts/{}/tasks/{}", i.contact, i.task),
            call: call!(|c, ids| {
                let body = UpdateTaskBody {
                    title: Some("Call back".into()),
                    due_date: Some(task_due()),
                    ..Default::default()
                };
                c.ghl
                    .update_task(&ids.contact, &ids.task, &body)
                    .await
                    .map(|t| usize::from(!t.id.is_empty()))
                    .map_err(text)
            }),
            optional: &[],
        },
        Case {
            file: "ghl/complete_task.json",
            method: "PUT",
            path: |i| format!("/contacts/{}/tasks/{}/completed", i.contact, i.task),
            call: call!(|c, ids| c
                .ghl
                .complete_task(&ids.contact, &ids.task, true)
                .await
                .map(|t| usize::from(t.completed))
                .map_err(text)),
            optional: &[],
        },
        Case {
            file: "ghl/notes.json",
            method: "GET",
            path: |i| format!("/contacts/{}/notes", i.contact),
            call: call!(|c, ids| c.ghl.list_notes(&ids.contact).await.map(|n| n.len()).map_err(text)),
            optional: &[],
        },
        Case {
            file: "ghl/note.json",
            method: "GET",
            path: |i| format!("/contacts/{}/notes/{}", i.contact, i.note),
            call: call!(|c, ids| c
                .ghl
                .get_note(&ids.contact, &ids.note)
                .await
                .map(|n| usize::from(!n.id.is_empty()))
                .map_err(text)),
            optional: &[],
        },
        Case {
            file: "ghl/create_note.json",
            method: "POST",
            path: |i| format!("/contacts/{}/notes", i.contact),
            call: call!(|c, ids| {
                let body = NoteBody {
                    body: Some("Watched the onboarding video".into()),
                    user_id: Some("TUcmRxWrjqzJS8EjkxNK".into()),
                    title: Some("Follow-up summary".into()),
                    color: Some("#FFAA00".into()),
                    pinned: Some(false),
                };
                c.ghl.create_note(&ids.contact, &body).await.map(|n| usize::from(!n.id.is_empty())).map_err(text)
            }),
            optional: &[],
        },
        Case {
            file: "ghl/update_note.json",
            method: "PUT",
            path: |i| format!("/contacts/{}/notes/{}", i.contact, i.note),
            call: call!(|c, ids| {
                let body = NoteBody { body: Some("Watched it twice".into()), ..Default::default() };
                c.ghl
                    .update_note(&ids.contact, &ids.note, &body)
                    .await
                    .map(|n| usize::from(!n.id.is_empty()))
                    .map_err(text)
            }),
            optional: &[],
        },
        Case {
            file: "ghl/appointments.json",
            method: "GET",
            path: |i| format!("/contacts/{}/appointments", i.contact),
            call: call!(|c, ids| c.ghl.list_appointments(&ids.contact).await.map(|a| a.len()).map_err(text)),
            optional: &[],
        },
        Case {
            file: "ghl/custom_fields.json",
            method: "GET",
            path: |_| format!("/locations/{LOCATION}/customFields"),
            call: call!(|c, ids| c.ghl.custom_fields().await.map(|f| f.len()).map_err(text)),
            // Only option fields have options.
            optional: &["$.customFields[].picklistOptions[]"],
        },
        Case {
            file: "ghl/delete_task.json",
            method: "DELETE",
            path: |i| format!("/contacts/{}/tasks/{}", i.contact, i.doomed_task),
            call: call!(|c, ids| c
                .ghl
                .delete_task(&ids.contact, &ids.doomed_task)
                .await
                .map(usize::from)
                .map_err(text)),
            optional: &[],
        },
        Case {
            file: "ghl/delete_note.json",
            method: "DELETE",
            path: |i| format!("/contacts/{}/notes/{}", i.contact, i.doomed_note),
            call: call!(|c, ids| c
                .ghl
                .delete_note(&ids.contact, &ids.doomed_note)
                .await
                .map(usize::from)
                .map_err(text)),
            optional: &[],
        },
        Case {
            file: "ghl/delete_contact.json",
            method: "DELETE",
            path: |i| format!("/contacts/{}", i.doomed_contact),
            call: call!(|c, ids| c.ghl.delete_contact(&ids.doomed_contact).await.map(usize::from).map_err(text)),
            optional: &[],
        },
        Case {
            file: "ghl/oauth_token.json",
            method: "POST",
            path: |_| "/oauth/token".into(),
            call: call!(|c, ids| refresh_oauth(&c.ghl_base).await),
            optional: &[],
        },
        Case {
            file: "sproutvideo/account.json",
            method: "GET",
            path: |_| "/account".into(),
            call: call!(|c, ids| c.sprout.account().await.map(|a| usize::from(a.id.is_some())).map_err(text)),
            optional: &[],
        },
        Case {
            file: "sproutvideo/video.json",
            method: "GET",
            path: |i| format!("/videos/{}", i.video),
            call: call!(|c, ids| c
                .sprout
                .get_video(&ids.video)
                .await
                .map(|v| usize::from(!v.id.is_empty()))
                .map_err(text)),
            optional: &[],
        },
        Case {
            file: "sproutvideo/videos.json",
            method: "GET",
            path: |_| "/videos".into(),
            call: call!(|c, ids| c
                .sprout
                .page::<Video>(&["videos"], "videos", &[], 1, 1)
                .await
                .map(|p| p.items.len())
                .map_err(text)),
            optional: &[],
        },
        Case {
            file: "sproutvideo/logins.json",
            method: "GET",
            path: |_| "/logins".into(),
            call: call!(|c, ids| c.sprout.logins_page(1, 1).await.map(|p| p.items.len()).map_err(text)),
            optional: &[],
        },
        Case {
            file: "sproutvideo/login.json",
            method: "GET",
            path: |i| format!("/logins/{}", i.login),
            call: call!(|c, ids| c
                .sprout
                .get_login(&ids.login)
                .await
                .map(|l| usize::from(l.email.is_some()))
                .map_err(text)),
            optional: &[],
        },
        Case {
            file: "sproutvideo/login.json",
            method: "POST",
            path: |_| "/logins".into(),
            call: call!(|c, ids| {
                let login = c.sprout.create_login("new.viewer@example.com", &SecretString::from("pw-1")).await;
                login.map(|l| usize::from(l.email.is_some())).map_err(text)
            }),
            optional: &[],
        },
        Case {
            file: "sproutvideo/login.json",
            method: "PUT",
            path: |i| format!("/logins/{}", i.login),
            call: call!(|c, ids| {
                let login = c.sprout.set_login_password(&ids.login, &SecretString::from("pw-2")).await;
                login.map(|l| usize::from(l.email.is_some())).map_err(text)
            }),
            optional: &[],
        },
        Case {
            file: "sproutvideo/access_grants.json",
            method: "GET",
            path: |_| "/access_grants".into(),
            call: call!(|c, ids| {
                let page = c.sprout.page::<AccessGrant>(&["access_grants"], "access_grants", &[], 1, 1).await;
                page.map(|p| p.items.len()).map_err(text)
            }),
            optional: GRANTS_OPTIONAL,
        },
        Case {
            file: "sproutvideo/access_grant.json",
            method: "POST",
            path: |_| "/access_grants".into(),
            call: call!(|c, ids| {
                let grant = c.sprout.create_access_grant(&ids.video, &ids.login).await.map_err(text)?;
                Ok(usize::from(grant.login_id.is_some() && grant.video_id.is_some()))
            }),
            optional: GRANT_OPTIONAL,
        },
        Case {
            file: "sproutvideo/access_grant.json",
            method: "GET",
            path: |i| format!("/access_grants/{}", i.grant),
            call: call!(|c, ids| {
                let grant = c.sprout.get_access_grant(&ids.grant).await.map_err(text)?;
                Ok(usize::from(grant.login_id.is_some() && grant.video_id.is_some()))
            }),
            optional: GRANT_OPTIONAL,
        },
        Case {
            file: "sproutvideo/access_grant.json",
            method: "PUT",
            path: |i| format!("/access_grants/{}", i.grant),
            call: call!(|c, ids| {
                let limits = GrantLimits {
                    allowed_plays: Some(Some(5)),
                    access_ends_at: Some(Some("2030-04-15T00:00:00+00:00".into())),
                };
                let grant = c.sprout.update_access_grant(&ids.grant, &limits).await.map_err(text)?;
                Ok(usize::from(grant.allowed_plays.is_some()))
            }),
            optional: GRANT_OPTIONAL,
        },
        Case {
            file: "sproutvideo/access_grants_bulk.json",
            method: "POST",
            path: |_| "/access_grants/bulk".into(),
            call: call!(|c, ids| {
                let grant = |plays| NewAccessGrant {
                    video_id: ids.video.clone(),
                    login_id: ids.login.clone(),
                    limits: GrantLimits { allowed_plays: Some(plays), access_ends_at: None },
                };
                let made = c.sprout.create_access_grants(&[grant(Some(5)), grant(None)]).await.map_err(text)?;
                Ok(made.iter().filter(|g| g.login_id.is_some() && g.video_id.is_some()).count())
            }),
            optional: GRANTS_BULK_OPTIONAL,
        },
        Case {
            file: "sproutvideo/sessions.json",
            method: "GET",
            path: |_| "/stats/engagement/sessions".into(),
            call: call!(|c, ids| c
                .sprout
                .sessions_page(None, &SessionQuery::default(), 1, 1)
                .await
                .map(|p| p.items.len())
                .map_err(text)),
            optional: &[],
        },
        Case {
            file: "sproutvideo/video_sessions.json",
            method: "GET",
            path: |i| format!("/stats/engagement/{}/sessions", i.video),
            call: call!(|c, ids| {
                let page = c.sprout.sessions_page(Some(&ids.video), &SessionQuery::default(), 1, 1).await;
                page.map(|p| p.items.len()).map_err(text)
            }),
            optional: &[],
        },
    ]
}

/// Refreshes an OAuth token that is about to expire through the token endpoint at `ghl_base`
/// (as the worker's token provider does); 1 when a new access token came back.
async fn refresh_oauth(ghl_base: &Url) -> Result<usize, String> {
    let secret = json!({
        "webhook_token": "wt", "signing_secrets": ["sig"], "read_api_key": "rk",
        "ghl_oauth": {
            "access_token": "at-old", "refresh_token": "rt-old",
            "expires_at": chrono::Utc::now().timestamp() + 30,
            "client_id": "cid", "client_secret": "csecret",
            "token_url": ghl_base.join("oauth/token").map_err(text)?.to_string()
        }
    });
    let cache = Arc::new(SecretCache::new(Arc::new(MemorySecret::new(secret.to_string())), Duration::from_secs(600)));
    let tokens = SecretTokenProvider::new(cache, ghl_base, TokenRefresh::Allowed);
    let token = tokens.token().await.map_err(text)?;
    Ok(usize::from(!token.expose_secret().is_empty() && token.expose_secret() != "at-old"))
}

// ---- a server that answers fixtures -------------------------------------------------------

/// A local server that answers each `(method, path)` it was given with its JSON body, and 404
/// naming the request otherwise.
pub struct FixtureServer {
    pub addr: SocketAddr,
    misses: Arc<Mutex<Vec<String>>>,
}

impl FixtureServer {
    pub async fn start(routes: Vec<(String, String, Value)>) -> Self {
        let misses = Arc::new(Mutex::new(Vec::new()));
        let seen = misses.clone();
        let routes = Arc::new(routes);
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri| {
            let routes = routes.clone();
            let seen = seen.clone();
            async move {
                let path = uri.path();
                match routes.iter().find(|(m, p, _)| m.eq_ignore_ascii_case(method.as_str()) && p == path) {
                    Some((_, _, body)) => (StatusCode::OK, axum::Json(body.clone())).into_response(),
                    None => {
                        let what = format!("{method} {path}");
                        seen.lock().expect("misses").push(what.clone());
                        let body = json!({"statusCode": 404, "message": format!("no fixture at {what}")});
                        (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
                    }
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, misses }
    }

    /// GHL's base URL on this server.
    pub fn ghl_base(&self) -> Url {
        Url::parse(&format!("http://{}/", self.addr)).expect("URL")
    }

    /// SproutVideo's base URL on this server.
    pub fn sprout_base(&self) -> Url {
        Url::parse(&format!("http://{}/v1", self.addr)).expect("URL")
    }

    /// Requests no fixture answered.
    pub fn misses(&self) -> Vec<String> {
        self.misses.lock().expect("misses").clone()
    }
}

/// The path a case's request reaches the server at (SproutVideo's below `/v1`).
pub fn served_path(case: &Case, ids: &Ids) -> String {
    match case.service() {
        Service::Ghl => (case.path)(ids),
        Service::SproutVideo => format!("/v1{}", (case.path)(ids)),
    }
}

/// Serves the case's fixture of `dir` where its client call asks for it, and makes the call:
/// the client reads the answer through its own decoding. Err says why, naming the file.
pub async fn client_reads(dir: &Path, case: &Case) -> Result<(), String> {
    let fixture = load(dir, case.file)?;
    let ids = Ids::stand_ins();
    let server = FixtureServer::start(vec![(case.method.into(), served_path(case, &ids), fixture)]).await;
    let clients = Clients::new(&server.ghl_base(), &server.sprout_base());
    let read = (case.call)(clients, ids).await;
    let misses = server.misses();
    match read {
        _ if !misses.is_empty() => Err(format!(
            "{} ({} {}): the client asked for {} instead",
            case.file,
            case.method,
            (case.path)(&Ids::stand_ins()),
            misses.join(", ")
        )),
        Ok(0) => Err(format!("{}: the client read nothing from it (no record where it expects one)", case.file)),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{}: the client cannot read it: {e}", case.file)),
    }
}

// ---- a proxy that records what a fake answered -------------------------------------------

/// Forwards every request to `upstream` and keeps the last JSON answer.
pub struct RecordingProxy {
    pub addr: SocketAddr,
    last: Arc<Mutex<Option<Value>>>,
}

impl RecordingProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let last = Arc::new(Mutex::new(None));
        let keep = last.clone();
        let http = reqwest::Client::new();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let keep = keep.clone();
            let http = http.clone();
            async move {
                let target = format!("http://{upstream}{}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
                let mut rb = http.request(method, target);
                for (k, v) in &headers {
                    if k != "host" && k != "content-length" {
                        rb = rb.header(k, v);
                    }
                }
                let Ok(resp) = rb.body(body).send().await else {
                    return StatusCode::BAD_GATEWAY.into_response();
                };
                let status = resp.status();
                let content_type = resp.headers().get("content-type").cloned();
                let bytes = resp.bytes().await.unwrap_or_default();
                if status.is_success()
                    && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
                {
                    *keep.lock().expect("last answer") = Some(v);
                }
                let mut out = Response::builder().status(status.as_u16());
                if let Some(ct) = content_type {
                    out = out.header("content-type", ct);
                }
                out.body(axum::body::Body::from(bytes)).expect("response")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, last }
    }

    /// Takes the last JSON answer that came through.
    pub fn take_last(&self) -> Option<Value> {
        self.last.lock().expect("last answer").take()
    }
}

// ---- the shape rule -----------------------------------------------------------------------

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Where `answer`'s shape differs from `fixture`'s, each difference with its JSON path:
/// - objects have the same keys, recursively; a key on one side only is a difference unless its
///   path is in `optional`;
/// - values have the same JSON type (integers and decimals are both numbers); the items of a
///   list are each compared with the fixture's first item; an empty list where the fixture has
///   items is a difference unless `<path>[]` is optional (a fixture's empty list says nothing of
///   its items' shape); a fixture list whose items differ in type is a tuple (the search cursor
///   `[epochMs, id]`): item by item, of the same length;
/// - null: an answer may be null where the fixture is null (documented as nullable); null
///   against a value, on either side, is tolerated only at an optional path.
///
/// Paths read `$.contacts[].email`: a list's items share the path `[]` (a tuple's are numbered).
pub fn shape_differences(fixture: &Value, answer: &Value, optional: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    compare(fixture, answer, "$", optional, &mut out);
    out.dedup();
    out
}

/// A list whose items are not all of one type: a tuple such as the `[epochMs, id]` cursor.
fn is_tuple(items: &[Value]) -> bool {
    items.iter().any(|v| kind(v) != kind(&items[0]))
}

fn compare(fixture: &Value, answer: &Value, at: &str, optional: &[&str], out: &mut Vec<String>) {
    let is_optional = |p: &str| optional.contains(&p);
    match (fixture, answer) {
        (Value::Null, _) => {}
        (_, Value::Null) if is_optional(at) => {}
        (_, Value::Null) => out.push(format!("{at}: null, where the fixture has {}", kind(fixture))),
        (Value::Object(f), Value::Object(a)) => {
            for (k, fv) in f {
                let p = format!("{at}.{k}");
                match a.get(k) {
                    Some(av) => compare(fv, av, &p, optional, out),
                    None if is_optional(&p) => {}
                    None => out.push(format!("{p}: missing (the fixture has {})", kind(fv))),
                }
            }
            for (k, av) in a {
                let p = format!("{at}.{k}");
                if !f.contains_key(k) && !is_optional(&p) {
                    out.push(format!("{p}: not in the fixture ({})", kind(av)));
                }
            }
        }
        (Value::Array(f), Value::Array(a)) if is_tuple(f) => {
            if f.len() != a.len() {
                out.push(format!("{at}: {} items, where the fixture has {}", a.len(), f.len()));
            }
            for (i, (fv, av)) in f.iter().zip(a).enumerate() {
                compare(fv, av, &format!("{at}[{i}]"), optional, out);
            }
        }
        (Value::Array(f), Value::Array(a)) => {
            let p = format!("{at}[]");
            match (f.first(), a.is_empty()) {
                (None, _) => {}
                (Some(_), true) if is_optional(&p) => {}
                (Some(_), true) => out.push(format!("{at}: an empty list, where the fixture has items")),
                (Some(first), false) => {
                    for item in a {
                        compare(first, item, &p, optional, out);
                    }
                }
            }
        }
        (f, a) if kind(f) != kind(a) => out.push(format!("{at}: {}, where the fixture has {}", kind(a), kind(f))),
        _ => {}
    }
}

/// Checks that every case's file name is the one `doctor --capture` saves its endpoint under.
pub fn capture_names_differ() -> Vec<String> {
    let ids = Ids::stand_ins();
    cases()
        .iter()
        .filter_map(|c| {
            let path = (c.path)(&ids);
            let named = capture_name(c.service(), c.method, &path);
            (named != Some(c.file))
                .then(|| format!("{} {path}: the capture names it {named:?}, the fixture is {}", c.method, c.file))
        })
        .collect()
}
