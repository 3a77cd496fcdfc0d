//! HighLevel's webhooks: signature checks over the raw body, the freshness window, and the
//! command a delivery comes to ("this contact changed").
//!
//! - Marketplace-app deliveries (`POST /webhooks/ghl`) are signed. `x-ghl-signature` is an
//!   Ed25519 signature (base64) over the raw body bytes; when it is present it decides alone.
//!   Only without it is the legacy `x-wh-signature` (RSA-SHA256, PKCS#1 v1.5, base64) checked.
//!   A signed body carries `timestamp` and `webhookId`: a delivery outside the window is
//!   refused, and a `webhookId` seen before is answered "duplicate" without a second command.
//! - Workflow deliveries (`POST /webhooks/ghl-workflow/{token}`) are not signed; the token in
//!   the path is the secret's `ghl_workflow_token`.
//!
//! Either way a payload is only a hint: the command names the contact, and the worker reads it
//! from GHL again before acting.
//!
//! Keys (public, so configured by environment, not in the secret):
//! - `GHL_WEBHOOK_ED25519_KEYS`: Ed25519 public keys, comma separated, each a PEM `PUBLIC KEY`
//!   block or base64 of the DER SubjectPublicKeyInfo. Default: [`GHL_ED25519_KEY_UNCONFIRMED`].
//! - `GHL_WEBHOOK_RSA_KEYS`: RSA public keys for the legacy header, same forms. No default: a
//!   delivery signed only with `x-wh-signature` is refused until one is configured.
//! - `GHL_WEBHOOK_MAX_AGE_SECS`: the window either side of now (default 300).

use std::time::Duration;

use aws_lc_rs::signature::{ED25519, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use shared::commands::{CommandBody, Source, SyncCommand};

/// The Ed25519 key third-party code attributes to HighLevel's webhook guide (SPKI, base64).
/// UNCONFIRMED: check it against the official Webhook Integration Guide and set
/// `GHL_WEBHOOK_ED25519_KEYS` to the published key; if it is wrong, every signed delivery is
/// refused with 401 and an error log that names this variable.
pub const GHL_ED25519_KEY_UNCONFIRMED: &str = "MCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=";

/// Default freshness window either side of now.
pub const DEFAULT_MAX_AGE_SECS: i64 = 300;

/// How long a taken `webhookId` is remembered: far longer than the window, so a replay within
/// the window always finds it.
pub const SEEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Unsigned workflow deliveries of the same body for one contact within this many seconds are
/// one command (GHL's own retries); a different body is a different change.
pub const WORKFLOW_BUCKET_SECS: i64 = 60;

/// The name under which a taken delivery is remembered in the state table
/// (`kv#ghl-webhook#<webhookId>`).
pub fn seen_value_name(webhook_id: &str) -> String {
    format!("ghl-webhook#{webhook_id}")
}

/// Which key type a configured key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Ed25519,
    Rsa,
}

/// Why the configured webhook keys cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{var}: key {index} is neither a PEM PUBLIC KEY block nor base64 DER: {reason}")]
    Encoding { var: &'static str, index: usize, reason: String },
    #[error("{var}: key {index} is not an {kind} public key (SubjectPublicKeyInfo): {reason}")]
    NotAKey { var: &'static str, index: usize, kind: &'static str, reason: String },
    #[error("{var}='{value}' is invalid: {reason}")]
    Invalid { var: &'static str, value: String, reason: String },
}

/// The public keys that may sign HighLevel's deliveries, and the freshness window.
#[derive(Debug, Clone)]
pub struct WebhookKeys {
    ed25519: Vec<Vec<u8>>,
    rsa: Vec<Vec<u8>>,
    max_age_secs: i64,
    /// The Ed25519 keys are the unconfirmed default (said in the log when nothing verifies).
    default_ed25519: bool,
}

const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

impl WebhookKeys {
    /// Keys from the environment (see the module documentation).
    pub fn from_env() -> Result<Self, KeyError> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, KeyError> {
        let ed_var = "GHL_WEBHOOK_ED25519_KEYS";
        let (ed_text, default_ed25519) = match get(ed_var) {
            Some(v) => (v, false),
            None => (GHL_ED25519_KEY_UNCONFIRMED.to_string(), true),
        };
        let ed25519 = parse_keys(ed_var, &ed_text, KeyKind::Ed25519)?;
        let rsa = match get("GHL_WEBHOOK_RSA_KEYS") {
            Some(v) => parse_keys("GHL_WEBHOOK_RSA_KEYS", &v, KeyKind::Rsa)?,
            None => Vec::new(),
        };
        let max_age_secs = match get("GHL_WEBHOOK_MAX_AGE_SECS") {
            None => DEFAULT_MAX_AGE_SECS,
            Some(v) => match v.trim().parse::<i64>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(KeyError::Invalid {
                        var: "GHL_WEBHOOK_MAX_AGE_SECS",
                        value: v,
                        reason: "must be a whole number of seconds, at least 1".into(),
                    });
                }
            },
        };
        Ok(Self { ed25519, rsa, max_age_secs, default_ed25519 })
    }

    /// Keys given directly (DER SubjectPublicKeyInfo), for tools and tests.
    pub fn from_der(ed25519: Vec<Vec<u8>>, rsa: Vec<Vec<u8>>, max_age_secs: i64) -> Self {
        Self { ed25519, rsa, max_age_secs, default_ed25519: false }
    }

    pub fn max_age_secs(&self) -> i64 {
        self.max_age_secs
    }

    /// Checks the delivery's signature over `body`, exactly as received.
    pub fn verify(
        &self,
        ghl_signature: Option<&str>,
        wh_signature: Option<&str>,
        body: &[u8],
    ) -> Result<Scheme, Refused> {
        if let Some(sig) = ghl_signature.map(str::trim).filter(|s| !s.is_empty()) {
            let Ok(sig) = B64.decode(sig) else {
                return Err(Refused::BadSignature("x-ghl-signature is not base64".into()));
            };
            let ok = self.ed25519.iter().any(|k| UnparsedPublicKey::new(&ED25519, k).verify(body, &sig).is_ok());
            if ok {
                return Ok(Scheme::Ed25519);
            }
            if self.default_ed25519 {
                tracing::error!(
                    "an x-ghl-signature did not verify against the built-in Ed25519 key, which is \
                     UNCONFIRMED: set GHL_WEBHOOK_ED25519_KEYS to the key HighLevel publishes"
                );
            }
            return Err(Refused::BadSignature(
                "x-ghl-signature does not verify over the body with the configured Ed25519 key".into(),
            ));
        }
        if let Some(sig) = wh_signature.map(str::trim).filter(|s| !s.is_empty()) {
            if self.rsa.is_empty() {
                tracing::error!(
                    "a delivery signed only with the legacy x-wh-signature was refused: set \
                     GHL_WEBHOOK_RSA_KEYS to HighLevel's RSA webhook key to accept these"
                );
                return Err(Refused::BadSignature(
                    "only the legacy x-wh-signature is present and no RSA key is configured".into(),
                ));
            }
            let Ok(sig) = B64.decode(sig) else {
                return Err(Refused::BadSignature("x-wh-signature is not base64".into()));
            };
            let ok = self
                .rsa
                .iter()
                .any(|k| UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, k).verify(body, &sig).is_ok());
            return if ok {
                Ok(Scheme::LegacyRsa)
            } else {
                Err(Refused::BadSignature(
                    "x-wh-signature does not verify over the body with the configured RSA key".into(),
                ))
            };
        }
        Err(Refused::BadSignature("the delivery carries neither x-ghl-signature nor x-wh-signature".into()))
    }
}

fn parse_keys(var: &'static str, text: &str, kind: KeyKind) -> Result<Vec<Vec<u8>>, KeyError> {
    let keys: Vec<Vec<u8>> = text
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .enumerate()
        .map(|(index, k)| parse_key(var, index, k, kind))
        .collect::<Result<_, _>>()?;
    if keys.is_empty() {
        return Err(KeyError::Invalid { var, value: text.into(), reason: "holds no key".into() });
    }
    Ok(keys)
}

/// One key: a PEM `PUBLIC KEY` block or base64 DER, checked to be a key of `kind`.
fn parse_key(var: &'static str, index: usize, text: &str, kind: KeyKind) -> Result<Vec<u8>, KeyError> {
    let b64: String = if text.contains("-----BEGIN") {
        let inner = text
            .split("-----BEGIN PUBLIC KEY-----")
            .nth(1)
            .and_then(|rest| rest.split("-----END PUBLIC KEY-----").next())
            .ok_or_else(|| KeyError::Encoding {
                var,
                index,
                reason: "a PEM key must be a -----BEGIN PUBLIC KEY----- block".into(),
            })?;
        inner.chars().filter(|c| !c.is_whitespace()).collect()
    } else {
        text.chars().filter(|c| !c.is_whitespace()).collect()
    };
    let der = B64.decode(b64).map_err(|e| KeyError::Encoding { var, index, reason: e.to_string() })?;
    match kind {
        KeyKind::Ed25519 => {
            if der.len() != 44 || der[..12] != ED25519_SPKI_PREFIX {
                return Err(KeyError::NotAKey {
                    var,
                    index,
                    kind: "Ed25519",
                    reason: format!("expected the 44-byte Ed25519 SubjectPublicKeyInfo, got {} bytes", der.len()),
                });
            }
        }
        KeyKind::Rsa => {
            aws_lc_rs::rsa::PublicEncryptingKey::from_der(&der).map_err(|e| KeyError::NotAKey {
                var,
                index,
                kind: "RSA",
                reason: e.to_string(),
            })?;
        }
    }
    Ok(der)
}

/// Which signature a delivery was accepted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Ed25519,
    LegacyRsa,
}

/// Why a delivery was not taken. The routes map each to its answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// 401: the signature is missing or does not verify.
    #[error("{0}")]
    BadSignature(String),
    /// 400: the body is not a delivery this route reads.
    #[error("{0}")]
    Malformed(String),
    /// 400: the delivery's timestamp is outside the window (a replay or a stale retry).
    #[error("{0}")]
    Stale(String),
}

/// A delivery's timestamp: ISO 8601, or unix seconds or milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Stamp {
    Text(String),
    Number(i64),
}

impl Stamp {
    fn at(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Text(t) => DateTime::parse_from_rfc3339(t.trim())
                .ok()
                .map(|d| d.to_utc())
                .or_else(|| t.trim().parse::<i64>().ok().and_then(|n| Self::Number(n).at())),
            // Milliseconds from 10^11 on (year 5138 in seconds).
            Self::Number(n) if n.abs() >= 100_000_000_000 => DateTime::from_timestamp_millis(*n),
            Self::Number(n) => DateTime::from_timestamp(*n, 0),
        }
    }
}

/// The fields of a signed delivery this sync reads (`ContactCreate`, `ContactUpdate`,
/// `ContactDelete`, `ContactDndUpdate`, `ContactTagUpdate`: the contact is `id`; note and task
/// events name it `contactId`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignedDelivery {
    #[serde(rename = "type")]
    kind: Option<String>,
    location_id: Option<String>,
    id: Option<String>,
    webhook_id: Option<String>,
    timestamp: Option<Stamp>,
}

/// Event types that say a contact changed.
pub const CONTACT_EVENTS: [&str; 5] =
    ["ContactCreate", "ContactUpdate", "ContactDelete", "ContactDndUpdate", "ContactTagUpdate"];

/// What a delivery comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Queue this; `webhook_id` is remembered first when there is one.
    Change { command: Box<SyncCommand>, webhook_id: Option<String>, kind: String },
    /// Taken and answered 200, but nothing to do (another event type, another location).
    Ignored(String),
}

/// The location a delivery names (to find its tenant), when the body says.
pub fn delivery_location(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Location {
        location_id: Option<String>,
    }
    serde_json::from_slice::<Location>(body).ok()?.location_id.filter(|l| !l.is_empty())
}

/// Reads a verified Marketplace delivery: checks the window and names the contact.
pub fn signed_delivery(
    body: &[u8],
    location_id: &str,
    max_age_secs: i64,
    now: DateTime<Utc>,
) -> Result<Delivery, Refused> {
    let d: SignedDelivery = serde_json::from_slice(body)
        .map_err(|e| Refused::Malformed(format!("the body is not a HighLevel webhook delivery: {e}")))?;
    let stamp = d.timestamp.as_ref().ok_or_else(|| Refused::Malformed("timestamp is required".into()))?;
    let at = stamp.at().ok_or_else(|| Refused::Malformed("timestamp is not an ISO 8601 time".into()))?;
    let age = (now - at).num_seconds();
    if age.abs() > max_age_secs {
        return Err(Refused::Stale(format!(
            "the delivery's timestamp {} is {}s from now, outside the {max_age_secs}s window",
            at.to_rfc3339(),
            age
        )));
    }
    let webhook_id = d
        .webhook_id
        .filter(|w| !w.trim().is_empty())
        .ok_or_else(|| Refused::Malformed("webhookId is required".into()))?;
    let kind = d.kind.unwrap_or_default();
    if !CONTACT_EVENTS.contains(&kind.as_str()) {
        return Ok(Delivery::Ignored(format!("event type '{kind}' does not change access")));
    }
    if d.location_id.as_deref() != Some(location_id) {
        return Ok(Delivery::Ignored("the delivery is for another location".into()));
    }
    let contact_id =
        d.id.filter(|i| valid_id(i)).ok_or_else(|| Refused::Malformed("id (the contact id) is required".into()))?;
    let command = SyncCommand::new(
        Source::Ghl(webhook_id.clone()),
        "contact_changed",
        now,
        CommandBody::ContactChanged { location_id: location_id.to_string(), contact_id },
    );
    Ok(Delivery::Change { command: Box::new(command), webhook_id: Some(webhook_id), kind })
}

/// A location id as a workflow sends it: `location.id`, `locationId` or `location_id`.
#[derive(Debug, Clone, Deserialize)]
struct LocationRef {
    id: Option<String>,
}

/// The fields of a workflow webhook this sync reads: the contact's id (`contact_id`, as
/// workflows send it, or `contactId`/`id`) and its location.
#[derive(Debug, Clone, Deserialize)]
struct WorkflowDelivery {
    #[serde(alias = "contactId")]
    contact_id: Option<String>,
    id: Option<String>,
    location: Option<LocationRef>,
    #[serde(alias = "locationId")]
    location_id: Option<String>,
}

/// Reads a workflow delivery (token already checked).
pub fn workflow_delivery(body: &[u8], location_id: &str, now: DateTime<Utc>) -> Result<Delivery, Refused> {
    let d: WorkflowDelivery = serde_json::from_slice(body)
        .map_err(|e| Refused::Malformed(format!("the body is not a JSON object with contact_id: {e}")))?;
    let contact_id = d
        .contact_id
        .or(d.id)
        .filter(|i| valid_id(i))
        .ok_or_else(|| Refused::Malformed("contact_id is required (send {{contact.id}})".into()))?;
    let loc = d.location_id.or(d.location.and_then(|l| l.id));
    if loc.as_deref().is_some_and(|l| l != location_id) {
        return Ok(Delivery::Ignored("the delivery is for another location".into()));
    }
    let bucket = now.timestamp().div_euclid(WORKFLOW_BUCKET_SECS);
    let digest = hex::encode(&Sha256::digest(body)[..8]);
    let command = SyncCommand::new(
        Source::Ghl(format!("workflow:{contact_id}:{digest}:{bucket}")),
        "contact_changed",
        now,
        CommandBody::ContactChanged { location_id: location_id.to_string(), contact_id },
    );
    Ok(Delivery::Change { command: Box::new(command), webhook_id: None, kind: "workflow".into() })
}

/// A GHL id: 1–64 characters of `A-Za-z0-9_-`.
fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};

    const LOC: &str = "locA";

    fn ed_key() -> (Ed25519KeyPair, Vec<u8>) {
        let kp = Ed25519KeyPair::generate().unwrap();
        let der = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(kp.public_key()).unwrap().as_ref().to_vec();
        (kp, der)
    }

    #[test]
    fn keys_load_from_pem_or_base64_der_and_bad_ones_name_the_variable() {
        let (_, der) = ed_key();
        let b64 = B64.encode(&der);
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n");
        for text in [b64.clone(), pem, format!("{b64}, {}", GHL_ED25519_KEY_UNCONFIRMED)] {
            let keys = WebhookKeys::from_lookup(|k| (k == "GHL_WEBHOOK_ED25519_KEYS").then(|| text.clone())).unwrap();
            assert!(!keys.default_ed25519);
        }
        let default = WebhookKeys::from_lookup(|_| None).unwrap();
        assert!(default.default_ed25519 && default.rsa.is_empty() && default.max_age_secs == 300);
        let e = WebhookKeys::from_lookup(|k| (k == "GHL_WEBHOOK_RSA_KEYS").then(|| b64.clone())).unwrap_err();
        assert!(matches!(e, KeyError::NotAKey { var: "GHL_WEBHOOK_RSA_KEYS", kind: "RSA", .. }), "{e}");
        let e = WebhookKeys::from_lookup(|k| (k == "GHL_WEBHOOK_ED25519_KEYS").then(|| "not base64!".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("GHL_WEBHOOK_ED25519_KEYS") && e.contains("key 0"), "{e}");
        let e = WebhookKeys::from_lookup(|k| (k == "GHL_WEBHOOK_MAX_AGE_SECS").then(|| "0".into())).unwrap_err();
        assert!(e.to_string().contains("GHL_WEBHOOK_MAX_AGE_SECS='0'"), "{e}");
    }

    #[test]
    fn timestamps_read_as_iso_or_unix_seconds_or_millis() {
        let want = DateTime::parse_from_rfc3339("2026-11-30T05:00:00Z").unwrap().to_utc();
        assert_eq!(Stamp::Text("2026-11-30T05:00:00.000Z".into()).at(), Some(want));
        assert_eq!(Stamp::Number(want.timestamp()).at(), Some(want));
        assert_eq!(Stamp::Number(want.timestamp_millis()).at(), Some(want));
        assert_eq!(Stamp::Text(want.timestamp_millis().to_string()).at(), Some(want));
        assert_eq!(Stamp::Text("yesterday".into()).at(), None);
    }

    #[test]
    fn a_signed_contact_event_becomes_one_contact_change_and_other_events_are_ignored() {
        let now = Utc::now();
        let body = |kind: &str, loc: &str| {
            serde_json::json!({"type": kind, "locationId": loc, "id": "c1", "webhookId": "wh-1",
                               "timestamp": now.to_rfc3339()})
            .to_string()
        };
        let Delivery::Change { command, webhook_id, .. } =
            signed_delivery(body("ContactTagUpdate", LOC).as_bytes(), LOC, 300, now).unwrap()
        else {
            panic!("a change")
        };
        assert_eq!(webhook_id.as_deref(), Some("wh-1"));
        assert_eq!(command.body, CommandBody::ContactChanged { location_id: LOC.into(), contact_id: "c1".into() });
        assert!(matches!(signed_delivery(body("NoteCreate", LOC).as_bytes(), LOC, 300, now), Ok(Delivery::Ignored(_))));
        assert!(matches!(
            signed_delivery(body("ContactUpdate", "other").as_bytes(), LOC, 300, now),
            Ok(Delivery::Ignored(_))
        ));
        let stale = now - chrono::Duration::seconds(301);
        assert!(matches!(
            signed_delivery(body("ContactUpdate", LOC).as_bytes(), LOC, 300, stale),
            Err(Refused::Stale(_))
        ));
        let early = now + chrono::Duration::seconds(301);
        assert!(matches!(
            signed_delivery(body("ContactUpdate", LOC).as_bytes(), LOC, 300, early),
            Err(Refused::Stale(_))
        ));
        let no_id =
            serde_json::json!({"type": "ContactUpdate", "locationId": LOC, "id": "c1", "timestamp": now.to_rfc3339()});
        assert_eq!(
            signed_delivery(no_id.to_string().as_bytes(), LOC, 300, now),
            Err(Refused::Malformed("webhookId is required".into()))
        );
    }

    #[test]
    fn workflow_deliveries_are_one_command_per_body_and_minute() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T05:00:10Z").unwrap().to_utc();
        let body = serde_json::json!({"contact_id": "c1", "location": {"id": LOC}, "tags": "course-a"}).to_string();
        let key = |b: &str, at: DateTime<Utc>| match workflow_delivery(b.as_bytes(), LOC, at).unwrap() {
            Delivery::Change { command, .. } => command.key,
            Delivery::Ignored(r) => panic!("{r}"),
        };
        assert_eq!(key(&body, now), key(&body, now + chrono::Duration::seconds(30)), "a retry of the same body");
        let other = serde_json::json!({"contact_id": "c1", "location": {"id": LOC}, "tags": ""}).to_string();
        assert_ne!(key(&body, now), key(&other, now), "another change");
        assert!(matches!(
            workflow_delivery(br#"{"contactId":"c1","locationId":"other"}"#, LOC, now),
            Ok(Delivery::Ignored(_))
        ));
        assert!(matches!(workflow_delivery(br#"{"contact_id":"../x"}"#, LOC, now), Err(Refused::Malformed(_))));
        assert!(matches!(workflow_delivery(b"[]", LOC, now), Err(Refused::Malformed(_))));
    }
}
