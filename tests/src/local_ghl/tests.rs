//! The local GHL's matching, duplicate lookup, custom-field validation and garbled answers, over
//! HTTP as a client sees them.

use serde_json::{Value, json};

use super::{DuplicateMiss, FaultKind, GhlBehaviour, LocalGhl, MatchField, ScriptedFault};

const LOC: &str = "locFakeTest000000001";

struct Fake {
    ghl: LocalGhl,
    base: String,
    http: reqwest::Client,
}

impl Fake {
    async fn start(b: GhlBehaviour) -> Self {
        let ghl = LocalGhl::new(b);
        let addr = ghl.spawn("127.0.0.1:0").await.unwrap();
        Self { ghl, base: format!("http://{addr}"), http: reqwest::Client::new() }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, String) {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", "Bearer t")
            .header("Version", "2021-07-28");
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, text) = self.call(method, path, body).await;
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
    }

    async fn upsert(&self, body: Value) -> (u16, Value) {
        let mut body = body;
        body["locationId"] = json!(LOC);
        self.json(reqwest::Method::POST, "/contacts/upsert", Some(body)).await
    }

    async fn seed(&self, fields: Value) -> String {
        self.ghl.insert_contact(LOC, fields).await
    }

    async fn contact(&self, id: &str) -> Value {
        let state = self.ghl.state().await;
        state["locations"][LOC]["contacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no contact {id}"))
    }

    async fn duplicate(&self, query: &str) -> Value {
        let (status, v) = self
            .json(reqwest::Method::GET, &format!("/contacts/search/duplicate?locationId={LOC}&{query}"), None)
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }
}

const BOB_PHONE: &str = "+14155552671";

#[tokio::test]
async fn an_upsert_whose_phone_belongs_to_another_contact_updates_the_email_contact_and_ignores_the_phone() {
    let f = Fake::start(GhlBehaviour::default()).await;
    let eve = f.seed(json!({"email": "eve@example.com", "firstName": "Eve"})).await;
    let bob = f.seed(json!({"email": "bob@example.com", "firstName": "Bob", "phone": BOB_PHONE})).await;
    let bob_before = f.contact(&bob).await;
    let (status, v) = f.upsert(json!({"email": "eve@example.com", "phone": BOB_PHONE, "lastName": "Adams"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["new"], false);
    assert_eq!(v["contact"]["id"], eve.as_str());
    let eve_after = f.contact(&eve).await;
    assert_eq!(eve_after["lastName"], "Adams");
    assert!(eve_after.get("phone").is_none_or(Value::is_null), "the phone was not written: {eve_after}");
    assert_eq!(f.contact(&bob).await, bob_before, "Bob is untouched");
}

#[tokio::test]
async fn an_upsert_matched_only_by_phone_overwrites_that_contacts_email_unless_configured_otherwise() {
    let f = Fake::start(GhlBehaviour::default()).await;
    let bob = f.seed(json!({"email": "bob@example.com", "phone": BOB_PHONE})).await;
    let (_, v) = f.upsert(json!({"email": "eve@example.com", "phone": BOB_PHONE})).await;
    assert_eq!(v["contact"]["id"], bob.as_str(), "the phone matched Bob");
    assert_eq!(f.contact(&bob).await["email"], "eve@example.com", "Eve's email landed on Bob");

    let f = Fake::start(GhlBehaviour { upsert_overwrites_identifiers: false, ..Default::default() }).await;
    let bob = f.seed(json!({"email": "bob@example.com", "phone": BOB_PHONE})).await;
    f.upsert(json!({"email": "eve@example.com", "phone": BOB_PHONE, "firstName": "Eve"})).await;
    let after = f.contact(&bob).await;
    assert_eq!((after["email"].as_str(), after["firstName"].as_str()), (Some("bob@example.com"), Some("Eve")));
}

#[tokio::test]
async fn the_location_order_decides_which_identifier_wins() {
    let f = Fake::start(GhlBehaviour { match_order: vec![MatchField::Phone, MatchField::Email], ..Default::default() })
        .await;
    let eve = f.seed(json!({"email": "eve@example.com"})).await;
    let bob = f.seed(json!({"email": "bob@example.com", "phone": BOB_PHONE})).await;
    let (_, v) = f.upsert(json!({"email": "eve@example.com", "phone": BOB_PHONE, "firstName": "X"})).await;
    assert_eq!(v["contact"]["id"], bob.as_str());
    assert_eq!(f.contact(&bob).await["email"], "bob@example.com", "Eve's email is held by Eve: ignored");
    assert!(f.contact(&eve).await.get("firstName").is_none());
}

#[tokio::test]
async fn an_upsert_with_only_new_identifiers_creates_and_a_free_phone_is_added_to_the_email_contact() {
    let f = Fake::start(GhlBehaviour::default()).await;
    let eve = f.seed(json!({"email": "eve@example.com"})).await;
    let (_, v) = f.upsert(json!({"email": "eve@example.com", "phone": "+1 415 555 2672"})).await;
    assert_eq!(v["contact"]["id"], eve.as_str());
    assert_eq!(f.contact(&eve).await["phone"], "+14155552672");
    let (_, v) = f.upsert(json!({"email": "new@example.com", "phone": BOB_PHONE})).await;
    assert_eq!(v["new"], true);
}

#[tokio::test]
async fn the_duplicate_lookup_answers_one_contact_by_priority_or_none() {
    let f = Fake::start(GhlBehaviour::default()).await;
    let eve = f.seed(json!({"email": "eve@example.com"})).await;
    let bob = f.seed(json!({"email": "bob@example.com", "phone": BOB_PHONE})).await;
    let both = f.duplicate("email=EVE%40example.com&number=%2B14155552671").await;
    assert_eq!(both["contact"]["id"], eve.as_str(), "email first");
    let keys: Vec<&String> = both.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["contact", "traceId"], "only the contact (and the traceId every answer has)");
    assert_eq!(f.duplicate("number=%2B14155552671").await["contact"]["id"], bob.as_str());
    let miss = f.duplicate("email=nobody%40example.com").await;
    assert!(miss.get("contact").is_some_and(Value::is_null), "{miss}");

    let f = Fake::start(GhlBehaviour { duplicate_miss: DuplicateMiss::Omitted, ..Default::default() }).await;
    let miss = f.duplicate("email=nobody%40example.com").await;
    assert!(miss.get("contact").is_none(), "{miss}");

    // "Allow Duplicate Contact" on: email first, whatever the upsert order.
    let f = Fake::start(GhlBehaviour {
        allow_duplicates: true,
        match_order: vec![MatchField::Phone, MatchField::Email],
        ..Default::default()
    })
    .await;
    let eve = f.seed(json!({"email": "eve@example.com"})).await;
    f.seed(json!({"email": "bob@example.com", "phone": BOB_PHONE})).await;
    assert_eq!(f.duplicate("email=eve%40example.com&number=%2B14155552671").await["contact"]["id"], eve.as_str());
}

#[tokio::test]
async fn custom_field_values_are_written_as_field_value_only() {
    let f = Fake::start(GhlBehaviour::default()).await;
    let field = f.ghl.define_custom_field(LOC, "Last video", "contact.sv_last_video", "TEXT").await;
    for key in ["fieldValue", "value"] {
        let (status, v) =
            f.upsert(json!({"email": "cf@example.com", "customFields": [{"id": field, key: "Pricing"}]})).await;
        assert_eq!(status, 422, "{key}: {v}");
        assert_eq!(v["message"], json!([format!("customFields.0.property {key} should not exist")]));
    }
    assert!(f.ghl.state().await["locations"][LOC]["contacts"].as_array().is_none_or(Vec::is_empty), "nothing written");
    let (status, v) =
        f.upsert(json!({"email": "cf@example.com", "customFields": [{"id": field, "field_value": "Pricing"}]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["contact"]["customFields"], json!([{"id": field, "value": "Pricing"}]));

    let f = Fake::start(GhlBehaviour { strict_custom_field_values: false, ..Default::default() }).await;
    let field = f.ghl.define_custom_field(LOC, "Last video", "contact.sv_last_video", "TEXT").await;
    let (status, v) = f.upsert(json!({"email": "cf@example.com", "customFields": [{"id": field, "value": "P"}]})).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn write_then_garbage_writes_and_answers_a_cut_off_body() {
    let f = Fake::start(GhlBehaviour::default()).await;
    let id = f.seed(json!({"email": "g@example.com"})).await;
    f.ghl
        .push_fault(ScriptedFault {
            kind: FaultKind::WriteThenGarbage,
            method: Some("POST".into()),
            path_contains: Some("/notes".into()),
        })
        .await;
    let (status, text) =
        f.call(reqwest::Method::POST, &format!("/contacts/{id}/notes"), Some(json!({"body": "hello"}))).await;
    assert_eq!(status, 201);
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    assert_eq!(f.contact(&id).await["notes"].as_array().unwrap().len(), 1, "the note was written");
}

/// A receiver that keeps every request's headers and raw body.
async fn receiver() -> (String, std::sync::Arc<tokio::sync::Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>) {
    let got = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let keep = got.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
        let keep = keep.clone();
        async move {
            keep.lock().await.push((headers, body.to_vec()));
            axum::http::StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), got)
}

#[tokio::test]
async fn a_tag_change_through_the_api_sends_a_signed_contact_tag_update() {
    use super::{Signing, WebhookSettings};
    use aws_lc_rs::signature::{ED25519, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;

    let f = Fake::start(GhlBehaviour::default()).await;
    let (url, got) = receiver().await;
    let id = f.seed(json!({"email": "ada@example.com", "firstName": "Ada", "tags": ["vip"]})).await;
    f.ghl.set_webhooks(WebhookSettings { url: Some(url), signing: Signing::Both, ..Default::default() }).await;
    // A write that leaves the tags as they are sends nothing.
    let (status, _) = f.call(reqwest::Method::PUT, &format!("/contacts/{id}"), Some(json!({"firstName": "A"}))).await;
    assert_eq!(status, 200);
    let (status, _) =
        f.call(reqwest::Method::POST, &format!("/contacts/{id}/tags"), Some(json!({"tags": ["Course-A"]}))).await;
    assert_eq!(status, 201);
    // Wait until the delivery was answered (nothing here measures how long it took).
    for _ in 0..500 {
        if f.ghl.webhook_deliveries().await.iter().all(|d| d.status.is_some()) && !got.lock().await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let got = got.lock().await.clone();
    assert_eq!(got.len(), 1, "one delivery, for the tag change only");
    let (headers, body) = &got[0];
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["type"], "ContactTagUpdate");
    assert_eq!((v["locationId"].as_str(), v["id"].as_str()), (Some(LOC), Some(id.as_str())));
    assert_eq!(v["tags"], json!(["vip", "course-a"]));
    assert_eq!(v["email"], "ada@example.com");
    assert!(v["webhookId"].is_string() && v["timestamp"].as_str().unwrap().ends_with('Z'));
    // Both signatures verify over the raw bytes with the published test keys.
    let (ed, rsa) = f.ghl.webhook_public_keys().await;
    let sig = |h: &str| b64.decode(headers.get(h).unwrap().to_str().unwrap()).unwrap();
    UnparsedPublicKey::new(&ED25519, b64.decode(ed).unwrap()).verify(body, &sig("x-ghl-signature")).unwrap();
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, b64.decode(rsa).unwrap())
        .verify(body, &sig("x-wh-signature"))
        .unwrap();
    let log = f.ghl.webhook_deliveries().await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].status, Some(200));
}

#[tokio::test]
async fn a_delivery_answered_429_is_sent_again_as_it_was_and_others_are_not() {
    use super::{Signing, WebhookSettings};
    // The receiver answers 429 to the first delivery it sees, and 500 to the second contact's.
    let got = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::<(axum::http::HeaderMap, Vec<u8>)>::new()));
    let keep = got.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
        let keep = keep.clone();
        async move {
            let mut k = keep.lock().await;
            k.push((headers, body.to_vec()));
            let v: Value = serde_json::from_slice(&body).unwrap();
            let answer = if v["email"] == "bob@example.com" {
                axum::http::StatusCode::INTERNAL_SERVER_ERROR
            } else if k.len() == 1 {
                axum::http::StatusCode::TOO_MANY_REQUESTS
            } else {
                axum::http::StatusCode::OK
            };
            (answer, [("retry-after", "0")])
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let f = Fake::start(GhlBehaviour::default()).await;
    let ada = f.seed(json!({"email": "ada@example.com"})).await;
    let bob = f.seed(json!({"email": "bob@example.com"})).await;
    let url = format!("http://{addr}/hook");
    f.ghl.set_webhooks(WebhookSettings { url: Some(url), signing: Signing::Ed25519, ..Default::default() }).await;
    for id in [&ada, &bob] {
        let (status, _) =
            f.call(reqwest::Method::POST, &format!("/contacts/{id}/tags"), Some(json!({"tags": ["course-a"]}))).await;
        assert_eq!(status, 201);
    }
    for _ in 0..500 {
        if f.ghl.webhook_deliveries().await.iter().filter(|d| d.status.is_some()).count() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let got = got.lock().await.clone();
    let bodies: Vec<Value> = got.iter().map(|(_, b)| serde_json::from_slice(b).unwrap()).collect();
    let to = |email: &str| got.iter().zip(&bodies).filter(|(_, v)| v["email"] == email).count();
    assert_eq!(to("ada@example.com"), 2, "the 429 brought the delivery again");
    assert_eq!(to("bob@example.com"), 1, "a 500 is not retried, as with GHL");
    let ada_sent: Vec<_> = got.iter().zip(&bodies).filter(|(_, v)| v["email"] == "ada@example.com").collect();
    assert_eq!(ada_sent[0].0.1, ada_sent[1].0.1, "the same bytes");
    assert_eq!(ada_sent[0].0.0.get("x-ghl-signature"), ada_sent[1].0.0.get("x-ghl-signature"), "the same signature");
    let log = f.ghl.webhook_deliveries().await;
    let status_of = |id: &str| log.iter().find(|d| d.contact_id == id).and_then(|d| d.status);
    assert_eq!((status_of(&ada), status_of(&bob)), (Some(200), Some(500)));
}
