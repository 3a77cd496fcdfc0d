//! Webhooks the local GHL sends, as a Marketplace app receives them: when a write through the
//! API changes a contact's tags, a `ContactTagUpdate` (the flat contact payload, plus
//! `timestamp` and `webhookId`) is POSTed to the configured URL, signed over the raw body with
//! a test key: Ed25519 in `x-ghl-signature`, and/or RSA-SHA256 in the legacy `x-wh-signature`.
//! A contact deleted through the API sends `ContactDelete`.
//!
//! GHL's feed is lossy and doubles events; the settings reproduce that: drop deliveries, send a
//! delivery twice (same `webhookId`), send an event twice (two `webhookId`s), delay every
//! delivery, or hold deliveries until they are released (in order or reversed).
//!
//! Admin paths: `GET /_admin/webhooks` (settings, public keys, deliveries), `PUT /_admin/webhooks`
//! ([`WebhookSettings`]), `POST /_admin/webhooks/release` `{"reverse": bool}`.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{LocalGhl, Store, new_id};
use crate::ghl_signer::GhlSigner;

/// Which signature headers a delivery carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signing {
    /// `x-ghl-signature` only (the current scheme).
    #[default]
    Ed25519,
    /// `x-wh-signature` only (the legacy scheme).
    LegacyRsa,
    /// Both headers.
    Both,
}

/// Where and how webhooks are delivered.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookSettings {
    /// The receiving URL; none sends nothing.
    pub url: Option<String>,
    pub signing: Signing,
    /// Drop the next this many deliveries.
    pub drop_next: u32,
    /// Share of deliveries dropped (0.0–1.0).
    pub drop_rate: f64,
    /// Send every delivery twice, with the same `webhookId` (a redelivery).
    pub duplicate: bool,
    /// Send every event twice, each with its own `webhookId` (GHL's doubled events).
    pub double_events: bool,
    /// Wait this long before each delivery.
    pub delay_ms: u64,
    /// Keep deliveries until `POST /_admin/webhooks/release`.
    pub hold: bool,
}

/// One delivery and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub webhook_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub contact_id: String,
    /// The receiver's status; 0 when it could not be reached; none while held or when dropped.
    pub status: Option<u16>,
    pub dropped: bool,
}

/// How many times a delivery answered 429 is sent again.
pub const REDELIVERIES: u32 = 3;

/// A signed delivery, ready to send.
#[derive(Debug, Clone)]
pub(super) struct Delivery {
    url: String,
    webhook_id: String,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

/// The contact payload fields GHL's contact events carry.
const PAYLOAD_FIELDS: &[&str] = &[
    "address1",
    "city",
    "state",
    "companyName",
    "country",
    "source",
    "dateAdded",
    "dateOfBirth",
    "dnd",
    "email",
    "name",
    "firstName",
    "lastName",
    "phone",
    "postalCode",
    "tags",
    "website",
    "attachments",
    "assignedTo",
    "customFields",
];

fn signer(s: &mut Store) -> GhlSigner {
    s.webhook_signer.get_or_insert_with(GhlSigner::generate).clone()
}

/// Current tags of every contact, as the baseline changes are measured from.
pub(super) fn remember_all_tags(s: &mut Store) {
    let all: Vec<(String, Vec<String>)> =
        s.locations.values().flat_map(|l| l.contacts.iter().map(|(id, c)| (id.clone(), tags_of(&c.fields)))).collect();
    s.last_tags = all.into_iter().collect();
}

fn tags_of(fields: &Map<String, Value>) -> Vec<String> {
    let mut t: Vec<String> = fields
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    t.sort();
    t
}

/// The events a successful API write causes: `contact_ids` are the contacts it may have
/// changed (from the path or the answer); `deleted` (id, location) when it deleted one.
pub(super) fn events_after_write(
    s: &mut Store,
    contact_ids: &[String],
    deleted: Option<(String, String)>,
) -> Vec<Delivery> {
    let Some(url) = s.webhooks.url.clone() else {
        return Vec::new();
    };
    let mut events: Vec<(String, String, Value)> = Vec::new();
    if let Some((id, loc)) = deleted {
        s.last_tags.remove(&id);
        events.push(("ContactDelete".into(), id.clone(), json!({"locationId": loc, "id": id})));
    }
    for id in contact_ids {
        let Some(loc) = s.owner.get(id).cloned() else { continue };
        let Some(c) = s.locations.get(&loc).and_then(|l| l.contacts.get(id)) else { continue };
        let now = tags_of(&c.fields);
        if s.last_tags.get(id) == Some(&now) || (now.is_empty() && !s.last_tags.contains_key(id)) {
            continue;
        }
        let mut payload = Map::new();
        payload.insert("locationId".into(), json!(loc));
        payload.insert("id".into(), json!(id));
        for k in PAYLOAD_FIELDS {
            if let Some(v) = c.fields.get(*k) {
                payload.insert((*k).into(), v.clone());
            }
        }
        s.last_tags.insert(id.clone(), now);
        events.push(("ContactTagUpdate".into(), id.clone(), Value::Object(payload)));
    }
    let mut out = Vec::new();
    for (kind, contact_id, payload) in events {
        let copies = if s.webhooks.double_events { 2 } else { 1 };
        for _ in 0..copies {
            let d = sign(s, &url, &kind, &payload);
            let dropped = if s.webhooks.drop_next > 0 {
                s.webhooks.drop_next -= 1;
                true
            } else {
                s.webhooks.drop_rate > 0.0 && fastrand::f64() < s.webhooks.drop_rate
            };
            s.webhook_log.push(DeliveryRecord {
                webhook_id: d.webhook_id.clone(),
                kind: kind.clone(),
                contact_id: contact_id.clone(),
                status: None,
                dropped,
            });
            if dropped {
                continue;
            }
            let sends = if s.webhooks.duplicate { 2 } else { 1 };
            for _ in 0..sends {
                if s.webhooks.hold {
                    s.held_webhooks.push(d.clone());
                } else {
                    out.push(d.clone());
                }
            }
        }
    }
    out
}

/// The delivery's body (the payload, `type`, `timestamp`, `webhookId`) and its signatures.
fn sign(s: &mut Store, url: &str, kind: &str, payload: &Value) -> Delivery {
    let webhook_id = format!("{}-{}", new_id(), new_id());
    let mut body = payload.as_object().cloned().unwrap_or_default();
    body.insert("type".into(), json!(kind));
    body.insert("timestamp".into(), json!(Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)));
    body.insert("webhookId".into(), json!(webhook_id));
    let body = serde_json::to_vec(&Value::Object(body)).expect("JSON body");
    let signer = signer(s);
    let mut headers = vec![("content-type", "application/json".to_string())];
    if matches!(s.webhooks.signing, Signing::Ed25519 | Signing::Both) {
        headers.push(("x-ghl-signature", signer.ed25519(&body)));
    }
    if matches!(s.webhooks.signing, Signing::LegacyRsa | Signing::Both) {
        headers.push(("x-wh-signature", signer.rsa(&body)));
    }
    Delivery { url: url.to_string(), webhook_id, body, headers }
}

impl LocalGhl {
    /// Sends deliveries in the background, each after the configured delay, in order.
    pub(super) fn send_in_background(&self, deliveries: Vec<Delivery>, delay: Duration) {
        if deliveries.is_empty() {
            return;
        }
        let ghl = self.clone();
        tokio::spawn(async move {
            for d in deliveries {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                ghl.deliver(d).await;
            }
        });
    }

    /// Sends one delivery. GHL sends a delivery again only when it was answered 429: here up to
    /// [`REDELIVERIES`] times, the same bytes and signatures, after the answer's `Retry-After`
    /// (at most 5 s; 1 s without one). The schedule of GHL's own redeliveries is not documented.
    async fn deliver(&self, d: Delivery) -> u16 {
        let mut status = 0;
        for attempt in 0..=REDELIVERIES {
            let mut rb = self.http.post(&d.url).body(d.body.clone()).timeout(Duration::from_secs(30));
            for (k, v) in &d.headers {
                rb = rb.header(*k, v);
            }
            let answer = rb.send().await;
            status = answer.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
            if status != 429 || attempt == REDELIVERIES {
                break;
            }
            let wait = answer
                .ok()
                .and_then(|r| r.headers().get("retry-after")?.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1)
                .min(5);
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
        let mut s = self.store.lock().await;
        if let Some(r) = s.webhook_log.iter_mut().rev().find(|r| r.webhook_id == d.webhook_id) {
            r.status = Some(status);
        }
        status
    }

    /// Replaces the webhook settings; tag changes are measured from the contacts as they are now.
    pub async fn set_webhooks(&self, settings: WebhookSettings) {
        let mut s = self.store.lock().await;
        s.webhooks = settings;
        remember_all_tags(&mut s);
    }

    /// The public keys deliveries are signed with (base64 DER SubjectPublicKeyInfo): Ed25519, RSA.
    pub async fn webhook_public_keys(&self) -> (String, String) {
        let signer = signer(&mut *self.store.lock().await);
        (signer.ed25519_public(), signer.rsa_public())
    }

    /// Every delivery so far.
    pub async fn webhook_deliveries(&self) -> Vec<DeliveryRecord> {
        self.store.lock().await.webhook_log.clone()
    }

    /// Sends the held deliveries, one after the other (reversed when asked); their statuses.
    pub async fn release_webhooks(&self, reverse: bool) -> Vec<u16> {
        let mut held = std::mem::take(&mut self.store.lock().await.held_webhooks);
        if reverse {
            held.reverse();
        }
        let mut out = Vec::new();
        for d in held {
            out.push(self.deliver(d).await);
        }
        out
    }

    /// The admin view of webhooks.
    pub(super) async fn webhooks_json(&self) -> Value {
        let (ed, rsa) = self.webhook_public_keys().await;
        let s = self.store.lock().await;
        json!({
            "settings": s.webhooks,
            "ed25519_public_key": ed,
            "rsa_public_key": rsa,
            "held": s.held_webhooks.len(),
            "deliveries": s.webhook_log,
        })
    }
}
