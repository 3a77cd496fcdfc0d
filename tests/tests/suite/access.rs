//! Course access from a HighLevel tag. A contact tagged `course-a` in GHL gets a SproutVideo
//! login for its email and grants to the course's videos, with the password written to a GHL
//! custom field first; removing the tag revokes the grants. Doubled, late and out-of-order
//! changes end in the state GHL holds; a grant or login whose answer was lost is not made twice.
//!
//! `worker_*` tests drive the worker's logic in process against the local GHL and SproutVideo;
//! `pipeline_*` tests run the whole chain as `make dev` does (the local GHL's signed webhook, the
//! intake, the queue, the worker).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use intake::ghl_webhook::WebhookKeys;
use secrecy::SecretString;
use serde_json::{Value, json};
use shared::commands::{CommandBody, Source, SyncCommand};
use shared::ghl::{GhlClient, GhlSettings, StaticToken};
use shared::mapping::{CustomFieldCatalog, Mapping};
use shared::queue::MemoryQueue;
use shared::retry::RetryPolicy;
use shared::sprout::{SproutClient, SproutSettings, StaticKey};
use shared::state::{MemoryStore, StateStore};
use sync_tests::local_ghl::{
    DeliveryRecord, FaultKind, GhlBehaviour, LocalGhl, ScriptedFault, Signing, WebhookSettings,
};
use sync_tests::local_sprout::{LocalSprout, LostAnswer, SproutBehaviour, SproutFaults, VideoSeed};
use sync_tests::pipeline::{Pipeline, SECRET_VALUES};
use url::Url;
use worker::{Applied, Worker};

const LOC: &str = "locAccessTest0000001";
const PASSWORD_KEY: &str = "contact.sv_password";

fn mapping(delete_login_on_revoke: bool) -> Mapping {
    Mapping::from_toml(&format!(
        r#"
default_region = "US"
sync_tag = "sproutvideo"
[tags]
[[access]]
tag = "course-a"
video_ids = ["vidintro000000001"]
video_tag_ids = ["tagcoursea0"]
allowed_plays = 10
password_field = "{PASSWORD_KEY}"
delete_login_on_revoke = {delete_login_on_revoke}
"#
    ))
    .unwrap()
}

struct World {
    ghl: LocalGhl,
    sprout: LocalSprout,
    store: Arc<MemoryStore>,
    worker: Worker,
    password_field_id: String,
    /// The course's videos: the listed one and the two carrying the course's SproutVideo tag.
    course: Vec<String>,
    /// A video no rule names.
    other_video: String,
}

impl World {
    async fn new(delete_login_on_revoke: bool) -> Self {
        let sprout = LocalSprout::new(SproutBehaviour { per_minute: 10_000, ..Default::default() });
        let sprout_url = format!("http://{}/v1", sprout.spawn("127.0.0.1:0").await.unwrap());
        let mut sprout_settings = SproutSettings::new(Url::parse(&sprout_url).unwrap());
        sprout_settings.per_minute = 10_000;
        let sprout_client =
            SproutClient::new(sprout_settings, Arc::new(StaticKey(SecretString::from("sv-key")))).unwrap();
        let ghl = LocalGhl::new(GhlBehaviour::default());
        let addr = ghl.spawn("127.0.0.1:0").await.unwrap();
        let mut settings = GhlSettings::new(Url::parse(&format!("http://{addr}/")).unwrap(), LOC);
        settings.retry = RetryPolicy {
            max_attempts: 2,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(10),
            deadline: Some(Duration::from_secs(5)),
        };
        let client = GhlClient::new(settings, Arc::new(StaticToken(SecretString::from("pit-access")))).unwrap();
        let password_field_id = ghl.define_custom_field(LOC, "SV password", PASSWORD_KEY, "TEXT").await;
        let intro = sprout
            .add_video(VideoSeed { id: Some("vidintro000000001".into()), title: "Intro".into(), ..Default::default() })
            .await;
        let mut course = vec![intro];
        for t in ["Lesson 1", "Lesson 2"] {
            course.push(
                sprout
                    .add_video(VideoSeed { title: t.into(), tags: vec!["tagcoursea0".into()], ..Default::default() })
                    .await,
            );
        }
        let other_video = sprout.add_video(VideoSeed { title: "Webinar".into(), ..Default::default() }).await;
        course.sort();
        let store = Arc::new(MemoryStore::new());
        let queue = Arc::new(MemoryQueue::new());
        let worker = Worker {
            ghl: client.clone(),
            catalog: Arc::new(CustomFieldCatalog::new(client)),
            store: store.clone(),
            queues: queue.clone(),
            commands: queue,
            sprout: sprout_client,
            mapping: Arc::new(mapping(delete_login_on_revoke)),
            lease: Duration::from_secs(60),
            ambiguity_grace: Duration::from_secs(1),
            retry_base_secs: 5,
            concurrency: 4,
            lookback_days: 30,
            identity_conflicts: Default::default(),
            api_drift: Default::default(),
        };
        Self { ghl, sprout, store, worker, password_field_id, course, other_video }
    }

    async fn contact(&self, email: &str, tags: &[&str]) -> String {
        self.ghl.insert_contact(LOC, json!({"email": email, "firstName": "Ada", "tags": tags})).await
    }

    async fn set_tags(&self, contact_id: &str, tags: &[&str]) {
        assert!(self.ghl.edit_contact(contact_id, json!({"tags": tags})).await);
    }

    /// What a webhook about the contact queues: "this contact changed".
    async fn changed(&self, contact_id: &str, delivery: &str) -> Result<Applied, worker::ApplyError> {
        let cmd = SyncCommand::new(
            Source::Ghl(delivery.into()),
            "contact_changed",
            Utc::now(),
            CommandBody::ContactChanged { location_id: LOC.into(), contact_id: contact_id.into() },
        );
        self.worker.apply(&cmd).await
    }

    async fn logins(&self, email: &str) -> Vec<Value> {
        let a = self.sprout.access_json().await;
        a["logins"].as_array().unwrap().iter().filter(|l| l["email"] == email).cloned().collect()
    }

    /// The video ids granted to the email's login, sorted (a doubled grant shows twice).
    async fn granted(&self, email: &str) -> Vec<String> {
        let logins = self.logins(email).await;
        let a = self.sprout.access_json().await;
        let mut v: Vec<String> = a["access_grants"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| logins.iter().any(|l| l["id"] == g["login_id"]))
            .map(|g| g["video_id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }

    async fn password_in_ghl(&self, contact_id: &str) -> Option<String> {
        let s = self.ghl.state().await;
        let c = s["locations"][LOC]["contacts"].as_array()?.iter().find(|c| c["id"] == contact_id)?.clone();
        c["customFields"]
            .as_array()?
            .iter()
            .find(|f| f["id"] == self.password_field_id.as_str())
            .and_then(|f| f["value"].as_str().map(str::to_string))
    }

    async fn sprout_calls(&self, method: &str, path_end: &str) -> usize {
        self.sprout.requests().await.iter().filter(|r| r.method == method && r.path.ends_with(path_end)).count()
    }
}

#[tokio::test]
async fn worker_a_tagged_contact_gets_a_login_its_password_in_ghl_and_the_course_grants() {
    let w = World::new(false).await;
    let ada = w.contact("ada@example.com", &["course-a", "vip"]).await;
    assert_eq!(w.changed(&ada, "wh-1").await.unwrap(), Applied::Written);

    let logins = w.logins("ada@example.com").await;
    assert_eq!(logins.len(), 1, "one login for the email");
    assert_eq!(w.granted("ada@example.com").await, w.course, "the listed video and the course tag's videos");
    let a = w.sprout.access_json().await;
    assert!(a["access_grants"].as_array().unwrap().iter().all(|g| g["allowed_plays"] == 10));
    assert!(!w.granted("ada@example.com").await.contains(&w.other_video));
    let password = w.password_in_ghl(&ada).await.expect("the password is in the GHL field");
    assert!(password.len() >= 20, "a strong password");
    assert_eq!(
        w.sprout.login_password("ada@example.com").await.as_deref(),
        Some(password.as_str()),
        "it opens the login"
    );

    // The password reached GHL before the login was made.
    let ghl_put = w.ghl.requests().await.iter().position(|r| r.method == "PUT" && r.path.contains(&ada));
    assert!(ghl_put.is_some(), "the field was written through the API");
    let record = w.store.get_value(&format!("access#{LOC}/{ada}")).await.unwrap().unwrap();
    assert!(record.contains(logins[0]["id"].as_str().unwrap()) && !record.contains(&password));
}

#[tokio::test]
async fn worker_a_doubled_event_changes_nothing_and_never_touches_the_password_again() {
    let w = World::new(false).await;
    let ada = w.contact("ada@example.com", &["course-a"]).await;
    w.changed(&ada, "wh-1").await.unwrap();
    let password = w.password_in_ghl(&ada).await.unwrap();
    let (logins_made, grants_made) = (w.sprout_calls("POST", "/logins").await, w.sprout_calls("POST", "/bulk").await);

    // GHL doubles the event (another webhookId), and a reconciliation sends it once more.
    let listings = w.sprout_calls("GET", "/logins").await;
    assert_eq!(w.changed(&ada, "wh-2").await.unwrap(), Applied::Unchanged);
    assert_eq!(w.sprout_calls("GET", "/logins").await, listings, "the recorded login is read by its id");
    assert_eq!(w.changed(&ada, "wh-3").await.unwrap(), Applied::Unchanged);
    assert_eq!(w.sprout_calls("POST", "/logins").await, logins_made);
    assert_eq!(w.sprout_calls("POST", "/bulk").await, grants_made);
    assert_eq!(w.password_in_ghl(&ada).await.unwrap(), password, "the field is written once");
    assert_eq!(w.granted("ada@example.com").await, w.course);
}

#[tokio::test]
async fn worker_removing_the_tag_revokes_the_grants_and_keeps_the_login() {
    let w = World::new(false).await;
    let ada = w.contact("ada@example.com", &["course-a"]).await;
    w.changed(&ada, "wh-1").await.unwrap();
    let password = w.password_in_ghl(&ada).await.unwrap();
    // A grant made by hand, to a video no rule names, is not the sync's to revoke.
    let login_id = w.logins("ada@example.com").await[0]["id"].as_str().unwrap().to_string();
    w.worker.sprout.create_access_grant(&w.other_video, &login_id).await.unwrap();

    w.set_tags(&ada, &["vip"]).await;
    assert_eq!(w.changed(&ada, "wh-2").await.unwrap(), Applied::Written);
    assert_eq!(w.granted("ada@example.com").await, vec![w.other_video.clone()]);
    assert_eq!(w.logins("ada@example.com").await.len(), 1, "the login stays");

    // Tagged again: the same login gets the grants back; the password is not changed.
    w.set_tags(&ada, &["vip", "Course-A"]).await;
    w.changed(&ada, "wh-3").await.unwrap();
    let mut want = w.course.clone();
    want.push(w.other_video.clone());
    want.sort();
    assert_eq!(w.granted("ada@example.com").await, want);
    assert_eq!(w.logins("ada@example.com").await.len(), 1);
    assert_eq!(w.password_in_ghl(&ada).await.unwrap(), password);
}

#[tokio::test]
async fn worker_out_of_order_events_end_in_the_state_ghl_holds_now() {
    let w = World::new(false).await;
    let ada = w.contact("ada@example.com", &["course-a"]).await;
    // The tag is added and removed again before either event is applied; the events arrive
    // in reverse order. Each re-reads the contact, so neither grants anything.
    w.set_tags(&ada, &[]).await;
    assert_eq!(w.changed(&ada, "wh-removed").await.unwrap(), Applied::Unchanged);
    assert_eq!(w.changed(&ada, "wh-added").await.unwrap(), Applied::Unchanged);
    assert!(w.logins("ada@example.com").await.is_empty(), "no login for someone without the tag");
    assert_eq!(w.password_in_ghl(&ada).await, None);

    // Added, applied, removed, then the late "added" event: it revokes, as GHL says now.
    w.set_tags(&ada, &["course-a"]).await;
    w.changed(&ada, "wh-added-2").await.unwrap();
    w.set_tags(&ada, &[]).await;
    w.changed(&ada, "wh-added-2-late-copy").await.unwrap();
    assert!(w.granted("ada@example.com").await.is_empty());
}

#[tokio::test]
async fn worker_a_bulk_grant_answered_500_after_it_was_made_is_not_doubled() {
    let w = World::new(false).await;
    let ada = w.contact("ada@example.com", &["course-a"]).await;
    w.sprout
        .set_faults(SproutFaults {
            lost_answers: [LostAnswer {
                method: "POST".into(),
                path_ends_with: "/access_grants/bulk".into(),
                status: 500,
            }]
            .into(),
            ..Default::default()
        })
        .await;
    let first = w.changed(&ada, "wh-1").await;
    assert!(first.is_ok(), "the grants are found on the second look: {first:?}");
    assert_eq!(w.granted("ada@example.com").await, w.course, "each grant once");
    w.changed(&ada, "wh-1").await.unwrap();
    assert_eq!(w.granted("ada@example.com").await, w.course, "a redelivery makes none again");
    assert_eq!(w.sprout_calls("POST", "/access_grants/bulk").await, 1);
    let bulk = w.sprout.requests().await.into_iter().find(|r| r.path.ends_with("/bulk")).unwrap();
    assert_eq!(bulk.status, 500, "the answer the worker saw was a 500");
}

#[tokio::test]
async fn worker_no_login_is_made_when_the_password_could_not_be_written_to_ghl() {
    let w = World::new(false).await;
    let ada = w.contact("ada@example.com", &["course-a"]).await;
    w.ghl
        .push_fault(ScriptedFault {
            kind: FaultKind::Status { status: 422 },
            method: Some("PUT".into()),
            path_contains: Some(ada.clone()),
        })
        .await;
    let e = w.changed(&ada, "wh-1").await.unwrap_err();
    assert!(matches!(e, worker::ApplyError::Permanent { .. }), "{e:?}");
    assert_eq!(w.sprout_calls("POST", "/logins").await, 0, "no login with a password nobody has");
    assert!(w.logins("ada@example.com").await.is_empty());
    // Once GHL takes the field, the next attempt makes the login with the password it holds.
    w.changed(&ada, "wh-1").await.unwrap();
    assert_eq!(w.logins("ada@example.com").await.len(), 1);
    assert!(w.password_in_ghl(&ada).await.is_some());
}

#[tokio::test]
async fn worker_a_login_answered_500_after_it_was_made_is_reused_with_the_password_in_ghl() {
    let w = World::new(false).await;
    let ada = w.contact("ada@example.com", &["course-a"]).await;
    w.sprout
        .set_faults(SproutFaults {
            lost_answers: [LostAnswer { method: "POST".into(), path_ends_with: "/logins".into(), status: 500 }].into(),
            ..Default::default()
        })
        .await;
    w.changed(&ada, "wh-1").await.unwrap();
    w.changed(&ada, "wh-2").await.unwrap();
    assert_eq!(w.logins("ada@example.com").await.len(), 1);
    assert_eq!(w.sprout_calls("POST", "/logins").await, 1, "created once");
    let in_ghl = w.password_in_ghl(&ada).await;
    assert!(in_ghl.as_ref().is_some_and(|p| p.len() >= 20), "a strong password is in GHL");
    assert_eq!(in_ghl, w.sprout.login_password("ada@example.com").await, "the password in GHL opens the login");
    assert_eq!(w.granted("ada@example.com").await, w.course);
}

#[tokio::test]
async fn worker_only_the_missing_grants_are_made() {
    let w = World::new(false).await;
    let ada = w.contact("ada@example.com", &["course-a"]).await;
    assert_eq!(w.changed(&ada, "wh-1").await.unwrap(), Applied::Written);
    // One grant disappears (revoked by hand in SproutVideo): the next change makes only it.
    let a = w.sprout.access_json().await;
    let one = a["access_grants"][0]["id"].as_str().unwrap().to_string();
    w.worker.sprout.delete_access_grant(&one).await.unwrap();
    w.changed(&ada, "wh-2").await.unwrap();
    assert_eq!(w.granted("ada@example.com").await, w.course);
    let a = w.sprout.access_json().await;
    assert_eq!(a["access_grants"].as_array().unwrap().len(), w.course.len(), "the others were left alone");
}

#[tokio::test]
async fn worker_the_login_goes_on_revoke_when_the_rule_says_so() {
    let w = World::new(true).await;
    let ada = w.contact("ada@example.com", &["course-a"]).await;
    w.changed(&ada, "wh-1").await.unwrap();
    assert_eq!(w.logins("ada@example.com").await.len(), 1);
    w.set_tags(&ada, &[]).await;
    w.changed(&ada, "wh-2").await.unwrap();
    assert!(w.logins("ada@example.com").await.is_empty(), "deleted with its grants");
    assert!(w.granted("ada@example.com").await.is_empty());
    // Tagged again: a new login, and a new password in the field.
    let old = w.password_in_ghl(&ada).await.unwrap();
    w.set_tags(&ada, &["course-a"]).await;
    w.changed(&ada, "wh-3").await.unwrap();
    assert_eq!(w.logins("ada@example.com").await.len(), 1);
    assert_ne!(w.password_in_ghl(&ada).await.unwrap(), old);
}

#[tokio::test]
async fn worker_a_login_whose_deletion_failed_after_its_grants_went_is_deleted_on_the_retry() {
    let w = World::new(true).await;
    let ada = w.contact("ada@example.com", &["course-a"]).await;
    w.changed(&ada, "wh-1").await.unwrap();
    let login = w.logins("ada@example.com").await[0]["id"].as_str().unwrap().to_string();
    w.set_tags(&ada, &[]).await;
    w.sprout
        .set_faults(SproutFaults {
            // Every attempt the client makes within this delivery is refused.
            refused: (0..10)
                .map(|_| LostAnswer {
                    method: "DELETE".into(),
                    path_ends_with: format!("/logins/{login}"),
                    status: 500,
                })
                .collect(),
            ..Default::default()
        })
        .await;
    assert!(w.changed(&ada, "wh-2").await.is_err(), "the login could not be deleted");
    w.sprout.set_faults(SproutFaults::default()).await;
    assert!(w.granted("ada@example.com").await.is_empty(), "its grants went first");
    assert_eq!(w.logins("ada@example.com").await.len(), 1);
    // The retry finds no grant left to revoke, and still deletes the login.
    w.changed(&ada, "wh-2").await.unwrap();
    assert!(w.logins("ada@example.com").await.is_empty(), "deleted on the retry");
    assert_eq!(w.store.get_value(&format!("access#{LOC}/{ada}")).await.unwrap(), None, "nothing left to take back");
}

#[tokio::test]
async fn worker_a_deleted_contact_has_its_grants_revoked_through_the_recorded_login() {
    let w = World::new(false).await;
    let ada = w.contact("ada@example.com", &["course-a"]).await;
    w.changed(&ada, "wh-1").await.unwrap();
    let ghl = w.worker.ghl.clone();
    assert!(ghl.delete_contact(&ada).await.unwrap());
    assert_eq!(w.changed(&ada, "wh-deleted").await.unwrap(), Applied::Written);
    assert!(w.granted("ada@example.com").await.is_empty());
    assert_eq!(w.store.get_value(&format!("access#{LOC}/{ada}")).await.unwrap(), None);
}

#[tokio::test]
async fn worker_a_contact_without_the_tag_or_an_email_gets_nothing() {
    let w = World::new(false).await;
    let bob = w.contact("bob@example.com", &["vip"]).await;
    assert_eq!(w.changed(&bob, "wh-1").await.unwrap(), Applied::Unchanged);
    let phone_only = w.ghl.insert_contact(LOC, json!({"phone": "+14155552671", "tags": ["course-a"]})).await;
    assert_eq!(w.changed(&phone_only, "wh-2").await.unwrap(), Applied::Unchanged);
    assert!(w.sprout.access_json().await["logins"].as_array().unwrap().is_empty());
    assert_eq!(w.sprout_calls("POST", "/logins").await, 0);
}

// ---- the chain in process: the local GHL's signed webhooks → the intake → the queue → the worker

/// The world above, with the intake listening for the local GHL's webhooks.
struct Chain {
    w: World,
    queue: Arc<MemoryQueue>,
    intake_url: String,
}

impl Chain {
    async fn new(settings: WebhookSettings) -> Self {
        let w = World::new(false).await;
        let queue = Arc::new(MemoryQueue::new());
        let (ed, rsa) = w.ghl.webhook_public_keys().await;
        let keys = WebhookKeys::from_lookup(|k| match k {
            "GHL_WEBHOOK_ED25519_KEYS" => Some(ed.clone()),
            "GHL_WEBHOOK_RSA_KEYS" => Some(rsa.clone()),
            _ => None,
        })
        .unwrap();
        let secret = sync_tests::aws::secret_json("wt", &["sig"], "rk", "pit", None);
        let app = intake::router(intake::AppState {
            secrets: Arc::new(shared::secrets::SecretCache::new(
                Arc::new(FixedSecret(secret)),
                Duration::from_secs(600),
            )),
            queue: queue.clone(),
            mapping: w.worker.mapping.clone(),
            ghl: w.worker.ghl.clone(),
            sprout: w.worker.sprout.clone(),
            conflicts: intake::view::ConflictReader::new(w.store.clone()),
            ghl_webhooks: intake::GhlWebhooks::new(keys, w.store.clone()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        w.ghl.set_webhooks(WebhookSettings { url: Some(format!("http://{addr}/webhooks/ghl")), ..settings }).await;
        Self { w, queue, intake_url: format!("http://{addr}") }
    }

    /// Waits until every delivery sent so far has its answer.
    async fn delivered(&self) -> Vec<DeliveryRecord> {
        for _ in 0..600 {
            let d = self.w.ghl.webhook_deliveries().await;
            if d.iter().all(|r| r.dropped || r.status.is_some()) {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the local GHL's webhooks were not answered: {:?}", self.w.ghl.webhook_deliveries().await);
    }

    /// Applies what the intake queued, as the worker's event source would deliver it.
    async fn work(&self) -> usize {
        let sent = self.queue.take_sent();
        let messages: Vec<worker::QueueMessage> = sent
            .iter()
            .enumerate()
            .map(|(i, m)| worker::QueueMessage {
                id: format!("m{i}"),
                body: m.body.clone(),
                receipt_handle: Some(format!("rh{i}")),
                group_id: Some(m.group_id.as_str().to_string()),
                receive_count: 1,
            })
            .collect();
        let n = messages.len();
        let outcome = self.w.worker.process_batch(messages).await;
        assert!(outcome.failed.is_empty() && outcome.parked == 0, "{outcome:?}");
        n
    }

    async fn tag(&self, contact_id: &str, add: bool) {
        let tags = vec!["course-a".to_string()];
        if add {
            self.w.worker.ghl.add_tags(contact_id, &tags).await.unwrap();
        } else {
            self.w.worker.ghl.remove_tags(contact_id, &tags).await.unwrap();
        }
    }
}

struct FixedSecret(String);

#[async_trait::async_trait]
impl shared::secrets::SecretSource for FixedSecret {
    async fn read(&self) -> Result<shared::secrets::SecretValue, shared::secrets::SecretError> {
        Ok(shared::secrets::SecretValue { value: SecretString::from(self.0.clone()), version_id: None })
    }
    async fn write(&self, _: &str, _: &str) -> Result<(), shared::secrets::SecretError> {
        Err(shared::secrets::SecretError::Conflict)
    }
}

#[tokio::test]
async fn chain_tagging_a_contact_in_ghl_grants_the_course_and_untagging_revokes_it() {
    for signing in [Signing::Ed25519, Signing::LegacyRsa] {
        let c = Chain::new(WebhookSettings { signing, ..Default::default() }).await;
        let ada = c.w.contact("ada@example.com", &[]).await;
        c.tag(&ada, true).await;
        let d = c.delivered().await;
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].kind.as_str(), d[0].status), ("ContactTagUpdate", Some(202)), "{signing:?}");
        assert_eq!(c.work().await, 1);
        assert_eq!(c.w.granted("ada@example.com").await, c.w.course);
        assert!(c.w.password_in_ghl(&ada).await.is_some());

        c.tag(&ada, false).await;
        c.delivered().await;
        c.work().await;
        assert!(c.w.granted("ada@example.com").await.is_empty());
        assert_eq!(c.w.logins("ada@example.com").await.len(), 1, "the login stays");
    }
}

#[tokio::test]
async fn chain_duplicated_deliveries_and_doubled_events_end_in_one_login_and_one_grant_each() {
    let c = Chain::new(WebhookSettings { duplicate: true, double_events: true, ..Default::default() }).await;
    let ada = c.w.contact("ada@example.com", &[]).await;
    c.tag(&ada, true).await;
    let d = c.delivered().await;
    assert_eq!(d.len(), 2, "an event sent twice, each under its own webhookId: {d:?}");
    // Each webhookId was delivered twice: the second copy of each is answered "duplicate".
    assert_eq!(c.work().await, 2, "one command per webhookId");
    assert_eq!(c.w.logins("ada@example.com").await.len(), 1);
    assert_eq!(c.w.granted("ada@example.com").await, c.w.course, "no grant twice");
}

#[tokio::test]
async fn chain_out_of_order_deliveries_end_in_the_state_ghl_holds() {
    let c = Chain::new(WebhookSettings { hold: true, ..Default::default() }).await;
    let ada = c.w.contact("ada@example.com", &[]).await;
    c.tag(&ada, true).await;
    c.tag(&ada, false).await;
    c.tag(&ada, true).await;
    // Delivered newest first: whatever the order, the contact holds the tag now.
    let statuses = c.w.ghl.release_webhooks(true).await;
    assert_eq!(statuses, vec![202, 202, 202]);
    c.work().await;
    assert_eq!(c.w.granted("ada@example.com").await, c.w.course);

    c.tag(&ada, false).await;
    c.tag(&ada, true).await;
    c.tag(&ada, false).await;
    c.w.ghl.release_webhooks(true).await;
    c.work().await;
    assert!(c.w.granted("ada@example.com").await.is_empty(), "the tag is gone now, so are the grants");
}

#[tokio::test]
async fn chain_a_dropped_delivery_is_made_good_by_the_next_change() {
    let c = Chain::new(WebhookSettings { drop_next: 1, ..Default::default() }).await;
    let ada = c.w.contact("ada@example.com", &["vip"]).await;
    c.tag(&ada, true).await;
    let d = c.delivered().await;
    assert!(d[0].dropped);
    assert_eq!(c.work().await, 0, "GHL lost it: nothing reached the intake");
    assert!(c.w.granted("ada@example.com").await.is_empty());
    // Any later change of the contact brings the whole state.
    c.w.worker.ghl.add_tags(&ada, &["newsletter".to_string()]).await.unwrap();
    c.delivered().await;
    c.work().await;
    assert_eq!(c.w.granted("ada@example.com").await, c.w.course);
}

#[tokio::test]
async fn chain_the_one_view_shows_the_login_and_grants_and_never_the_password() {
    let c = Chain::new(WebhookSettings::default()).await;
    let ada = c.w.contact("ada@example.com", &[]).await;
    c.tag(&ada, true).await;
    c.delivered().await;
    c.work().await;
    let password = c.w.password_in_ghl(&ada).await.unwrap();
    let http = reqwest::Client::new();
    let raw = http
        .get(format!("{}/v1/contacts/ada@example.com", c.intake_url))
        .bearer_auth("rk")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!raw.contains(&password), "the view never shows the password");
    let view: Value = serde_json::from_str(&raw).unwrap();
    let sv = &view["sproutvideo"];
    assert_eq!(sv["login"]["email"], "ada@example.com", "{view}");
    assert_eq!(sv["granted_video_ids"], json!(c.w.course));
    assert_eq!(sv["access_rules_met"], json!(["course-a"]));
    let field = view["contact"]["customFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == c.w.password_field_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(field["value"], intake::view::REDACTED);

    // Someone without access: no login, nothing granted.
    c.w.contact("bob@example.com", &["vip"]).await;
    let view: Value = http
        .get(format!("{}/v1/contacts/bob@example.com", c.intake_url))
        .bearer_auth("rk")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["sproutvideo"], json!({"login": null, "granted_video_ids": [], "access_rules_met": []}));
}

// ---- end to end, as `make dev` runs it

/// The login and grants the local SproutVideo holds for an email: (login id, granted video ids sorted).
async fn sprout_access(p: &Pipeline, email: &str) -> (Option<String>, Vec<String>) {
    let a = p.sprout_access().await;
    let login = a["logins"].as_array().unwrap().iter().find(|l| l["email"] == email).map(|l| l["id"].clone());
    let Some(login) = login else { return (None, Vec::new()) };
    let mut videos: Vec<String> = a["access_grants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["login_id"] == login)
        .map(|g| g["video_id"].as_str().unwrap().to_string())
        .collect();
    videos.sort();
    (login.as_str().map(str::to_string), videos)
}

async fn wait_access(p: &Pipeline, email: &str, what: &str, ok: impl Fn(&(Option<String>, Vec<String>)) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let a = sprout_access(p, email).await;
        if ok(&a) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}; SproutVideo holds {a:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn admin_put(p: &Pipeline, url: String, body: Value) {
    let r = p.http.put(url).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

#[tokio::test]
async fn pipeline_tagging_course_a_in_ghl_grants_the_course_and_untagging_revokes_it() {
    let p = Pipeline::start("access").await;
    let loc = p.state["ghl_location_id"].as_str().unwrap().to_string();
    let ghl_admin = p.url("ghl_base_url");
    let sprout_admin = p.url("sproutvideo_base_url").trim_end_matches("/v1").to_string();
    let course = vec!["a0b1c2d3e4f5a6b7c8".to_string(), "d1a2b3c4d5e6f7a8b9".to_string()];
    let email = "student@example.com";

    // The agency's own tools create the contact and tag it in GHL.
    let (status, created) = p
        .ghl_call(
            reqwest::Method::POST,
            "contacts/upsert",
            Some(json!({"locationId": loc, "email": email, "firstName": "Stu"})),
        )
        .await;
    assert!(status < 300, "{status} {created}");
    let id = created["contact"]["id"].as_str().unwrap().to_string();
    let tags_path = format!("contacts/{id}/tags");
    let tag = |add: bool| {
        let method = if add { reqwest::Method::POST } else { reqwest::Method::DELETE };
        p.ghl_call(method, &tags_path, Some(json!({"tags": ["course-a"]})))
    };
    assert!(tag(true).await.0 < 300);
    wait_access(&p, email, "the login and the course's grants", |(l, v)| l.is_some() && *v == course).await;

    // The password sits in the GHL custom field, ready for a workflow to email it.
    let password = p
        .custom_field_values("contact.sv_password")
        .await
        .into_iter()
        .find(|(contact, _, _)| *contact == id)
        .map(|(_, _, v)| v)
        .expect("the password is in contact.sv_password");
    assert!(password.len() >= 20);
    let (login, _) = sprout_access(&p, email).await;

    // Removing the tag revokes the grants; the login stays.
    assert!(tag(false).await.0 < 300);
    wait_access(&p, email, "the grants revoked", |(l, v)| *l == login && v.is_empty()).await;

    // GHL doubles every delivery and they arrive out of order: remove, add, remove are held and
    // released newest first, each twice. The contact ends without the tag, so without grants.
    let hook = format!("{}/webhooks/ghl", p.url("intake_url"));
    admin_put(&p, format!("{ghl_admin}/_admin/webhooks"), json!({"url": hook, "hold": true, "duplicate": true})).await;
    assert!(tag(true).await.0 < 300);
    assert!(tag(false).await.0 < 300);
    let r: Value = p
        .http
        .post(format!("{ghl_admin}/_admin/webhooks/release"))
        .json(&json!({"reverse": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses: Vec<u64> = r["statuses"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()).collect();
    assert_eq!(statuses.len(), 4, "two events, each delivered twice: {r}");
    assert!(statuses.contains(&200), "a redelivery is answered as a duplicate: {r}");
    assert!(p.wait_drained(60).await, "the queue drained");
    assert_eq!(sprout_access(&p, email).await, (login.clone(), vec![]), "out-of-order events end as GHL holds");

    // The bulk grant request is made but answered 500: the worker looks again and makes none twice.
    admin_put(&p, format!("{ghl_admin}/_admin/webhooks"), json!({"url": hook, "duplicate": true})).await;
    admin_put(
        &p,
        format!("{sprout_admin}/_admin/faults"),
        json!({"lost_answers": [{"method": "POST", "path_ends_with": "/access_grants/bulk", "status": 500}]}),
    )
    .await;
    assert!(tag(true).await.0 < 300);
    wait_access(&p, email, "the course granted again", |(l, v)| *l == login && *v == course).await;
    assert!(p.wait_drained(60).await, "the queue drained");
    assert_eq!(sprout_access(&p, email).await, (login.clone(), course.clone()), "each grant once");
    let requests: Value =
        p.http.get(format!("{sprout_admin}/_admin/requests")).send().await.unwrap().json().await.unwrap();
    assert!(
        requests["requests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["path"].as_str().unwrap().ends_with("/bulk") && r["status"] == 500),
        "the lost answer happened"
    );

    // The same login throughout, so the password in GHL is still the one it was made with; and
    // the password, like every secret value, never appears in any service log.
    let contact = p.ghl_contacts().await.into_iter().find(|c| c["id"] == id.as_str()).unwrap();
    assert!(contact["customFields"].as_array().unwrap().iter().any(|f| f["value"] == password.as_str()));
    let logs = p.service_logs();
    assert!(logs.contains("access applied"), "the worker's logs were captured");
    assert!(!logs.contains(&password), "the password appeared in a log");
    for s in SECRET_VALUES {
        assert!(!logs.contains(s), "a secret value ({s}) appeared in the logs");
    }
    assert_eq!(p.queue_depths().await.1, 0, "nothing parked");
    let access = p.access_report();
    assert!(access.denied().is_empty(), "calls refused by the template's policies:\n{access}");
    p.stop();
}

// ---- the reconciler repairs access the lossy feed missed

fn reconciler_for(w: &World, queue: Arc<MemoryQueue>) -> reconciler::reconcile::Reconciler {
    reconciler::reconcile::Reconciler {
        sprout: w.worker.sprout.clone(),
        ghl: w.worker.ghl.clone(),
        catalog: w.worker.catalog.clone(),
        store: w.store.clone(),
        queue,
        mapping: w.worker.mapping.clone(),
        lookback_days: 7,
        plan_lines: 200,
        delete_orphans: false,
        max_orphan_deletes: 0,
        safety_margin: Duration::from_secs(1),
        search_page_size: 100,
    }
}

/// Runs a reconciliation; the access plan lines and the contact changes it queued.
async fn reconcile(
    w: &World,
    dry_run: bool,
) -> (reconciler::reconcile::Report, Vec<(String, String)>, Vec<SyncCommand>) {
    let queue = Arc::new(MemoryQueue::new());
    let r = reconciler_for(w, queue.clone());
    let input = reconciler::reconcile::ReconcileInput { dry_run, ..Default::default() };
    let report = r.run(input, None, &|_| {}).await.unwrap();
    let plan = report
        .plan
        .iter()
        .filter(|l| l.action.ends_with("access"))
        .map(|l| (l.email.clone(), l.action.clone()))
        .collect();
    let changes =
        queue.commands().into_iter().filter(|c| matches!(c.body, CommandBody::ContactChanged { .. })).collect();
    (report, plan, changes)
}

#[tokio::test]
async fn reconciler_repairs_missing_and_extra_grants_and_a_dry_run_only_plans() {
    let w = World::new(false).await;
    // Tagged in GHL, but the webhook was lost: no login, no grants.
    let ada = w.contact("ada@example.com", &["course-a"]).await;
    let (report, plan, queued) = reconcile(&w, true).await;
    assert_eq!(plan, vec![("ada@example.com".to_string(), "grant access".to_string())]);
    assert!(queued.is_empty(), "a dry run queues nothing");
    assert_eq!((report.access_contacts, report.access_to_grant), (1, 1));
    assert!(w.logins("ada@example.com").await.is_empty());

    let (_, _, queued) = reconcile(&w, false).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].body, CommandBody::ContactChanged { location_id: LOC.into(), contact_id: ada.clone() });
    w.worker.apply(&queued[0]).await.unwrap();
    assert_eq!(w.granted("ada@example.com").await, w.course);
    let (report, plan, queued) = reconcile(&w, false).await;
    assert!(plan.is_empty() && queued.is_empty(), "in line now: {plan:?}");
    assert_eq!(report.access_to_grant, 0);

    // A grant went missing in SproutVideo: repaired.
    let a = w.sprout.access_json().await;
    w.worker.sprout.delete_access_grant(a["access_grants"][0]["id"].as_str().unwrap()).await.unwrap();
    let (_, plan, queued) = reconcile(&w, false).await;
    assert_eq!(plan, vec![("ada@example.com".to_string(), "grant access".to_string())]);
    w.worker.apply(&queued[0]).await.unwrap();
    assert_eq!(w.granted("ada@example.com").await, w.course);

    // The tag was removed in GHL and that webhook was lost too: the grants are revoked.
    w.set_tags(&ada, &["vip"]).await;
    let (report, plan, queued) = reconcile(&w, true).await;
    assert_eq!(plan, vec![("ada@example.com".to_string(), "revoke access".to_string())]);
    assert_eq!(report.access_to_revoke, 1);
    assert!(queued.is_empty());
    let (_, _, queued) = reconcile(&w, false).await;
    w.worker.apply(&queued[0]).await.unwrap();
    assert!(w.granted("ada@example.com").await.is_empty());
    assert_eq!(w.logins("ada@example.com").await.len(), 1, "the login stays");
    let (_, plan, queued) = reconcile(&w, false).await;
    assert!(plan.is_empty() && queued.is_empty(), "{plan:?}");

    // Grants made by hand to someone the sync never granted are left alone.
    let bob_login = w.worker.sprout.create_login("bob@example.com", &SecretString::from("hand-made-1")).await.unwrap();
    w.worker.sprout.create_access_grant(&w.course[0], &bob_login.id).await.unwrap();
    w.contact("bob@example.com", &[]).await;
    let (_, plan, queued) = reconcile(&w, false).await;
    assert!(plan.is_empty() && queued.is_empty(), "{plan:?}");
}
