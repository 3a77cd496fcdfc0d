//! SproutVideo models. Every field tolerates `null`, unknown fields are kept in `extra`, ids are
//! opaque strings, and timestamps accept any RFC 3339 offset.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// An RFC 3339 timestamp with any offset, normalised to UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Timestamp(pub DateTime<Utc>);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(s.trim())
            .map(|t| Timestamp(t.with_timezone(&Utc)))
            .map_err(|e| serde::de::Error::custom(format!("bad timestamp '{s}': {e}")))
    }
}

/// Null-tolerant `Option<Timestamp>` that also treats an unparseable value as absent.
fn lenient_ts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    Ok(match v {
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s.trim()).ok().map(|t| Timestamp(t.with_timezone(&Utc))),
        _ => None,
    })
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Video {
    pub id: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    /// Seconds, fractional; null while processing.
    #[serde(default)]
    pub duration: Option<f64>,
    /// Tag ids.
    #[serde(default, deserialize_with = "null_vec")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub require_email: Option<bool>,
    #[serde(default)]
    pub require_name: Option<bool>,
    #[serde(default, deserialize_with = "lenient_ts")]
    pub created_at: Option<Timestamp>,
    #[serde(default, deserialize_with = "lenient_ts")]
    pub updated_at: Option<Timestamp>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn null_vec<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// A viewer login (email + password for login-protected videos).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Login {
    pub id: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "lenient_ts")]
    pub created_at: Option<Timestamp>,
    #[serde(default, deserialize_with = "lenient_ts")]
    pub updated_at: Option<Timestamp>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AccessGrant {
    pub id: String,
    #[serde(default)]
    pub login_id: Option<String>,
    #[serde(default)]
    pub video_id: Option<String>,
    #[serde(default)]
    pub allowed_plays: Option<i64>,
    #[serde(default, deserialize_with = "lenient_ts")]
    pub access_ends_at: Option<Timestamp>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A grant to create: `login_id` may watch `video_id`, with the optional limits.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NewAccessGrant {
    pub video_id: String,
    pub login_id: String,
    #[serde(flatten)]
    pub limits: GrantLimits,
}

/// A grant's documented settings (`null` clears one).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct GrantLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_plays: Option<Option<i64>>,
    /// RFC 3339, e.g. `2030-04-15T00:00:00+00:00`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_ends_at: Option<Option<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Account {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub company: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The engagement-session field names. SproutVideo does not document the session object, so
/// every name lives here, in one place, and the local SproutVideo emits the first of each list.
pub mod session_fields {
    pub const ID: &[&str] = &["id", "session_id"];
    pub const VIDEO_ID: &[&str] = &["video_id"];
    pub const EMAIL: &[&str] = &["vemail", "email"];
    pub const SECONDS: &[&str] = &["seconds_watched", "num_seconds", "total_seconds"];
    pub const PERCENT: &[&str] = &["percent_watched", "percent", "completion_percent"];
    pub const CREATED: &[&str] = &["created_at", "started_at"];
    pub const UPDATED: &[&str] = &["updated_at", "ended_at"];
}

/// One playback session of a video.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EngagementSession {
    pub id: Option<String>,
    pub video_id: Option<String>,
    /// The email the player captured (`vemail`), when the viewer gave one.
    pub vemail: Option<String>,
    pub seconds_watched: Option<f64>,
    /// 0–100 when SproutVideo reports it.
    pub percent_watched: Option<f64>,
    pub created_at: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
    pub extra: Map<String, Value>,
}

impl<'de> Deserialize<'de> for EngagementSession {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use session_fields as f;
        let mut m = Map::<String, Value>::deserialize(d)?;
        fn take(m: &mut Map<String, Value>, names: &[&str]) -> Option<Value> {
            names.iter().find_map(|n| m.remove(*n).filter(|v| !v.is_null()))
        }
        fn string(v: Option<Value>) -> Option<String> {
            match v? {
                Value::String(s) if !s.trim().is_empty() => Some(s),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        }
        fn number(v: Option<Value>) -> Option<f64> {
            match v? {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }
            .filter(|x: &f64| x.is_finite() && *x >= 0.0)
        }
        fn ts(v: Option<Value>) -> Option<Timestamp> {
            match v? {
                Value::String(s) => {
                    DateTime::parse_from_rfc3339(s.trim()).ok().map(|t| Timestamp(t.with_timezone(&Utc)))
                }
                _ => None,
            }
        }
        Ok(Self {
            id: string(take(&mut m, f::ID)),
            video_id: string(take(&mut m, f::VIDEO_ID)),
            vemail: string(take(&mut m, f::EMAIL)),
            seconds_watched: number(take(&mut m, f::SECONDS)),
            percent_watched: number(take(&mut m, f::PERCENT)),
            created_at: ts(take(&mut m, f::CREATED)),
            updated_at: ts(take(&mut m, f::UPDATED)),
            extra: m,
        })
    }
}

impl EngagementSession {
    /// Watch percent: as reported, else seconds watched over the video's duration; capped at 100.
    pub fn watch_percent(&self, video_duration: Option<f64>) -> Option<f64> {
        let p = self.percent_watched.or_else(|| {
            let secs = self.seconds_watched?;
            let dur = video_duration.filter(|d| *d > 0.0)?;
            Some(secs / dur * 100.0)
        })?;
        Some(p.clamp(0.0, 100.0))
    }

    /// When the session last changed (updated, else created).
    pub fn last_seen(&self) -> Option<Timestamp> {
        self.updated_at.or(self.created_at)
    }
}

/// A list page: the items under the plural key, plus `total`, `next_page`, `previous_page`.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: Option<u64>,
    pub has_next: bool,
}

/// Error body: `error` is a string or an array of strings.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SproutErrorBody {
    #[serde(default)]
    pub error: Option<crate::ghl::OneOrMany>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_with_offsets_become_utc() {
        let t: Timestamp = serde_json::from_str("\"2012-12-20T00:07:54-05:00\"").unwrap();
        assert_eq!(t.0.to_rfc3339(), "2012-12-20T05:07:54+00:00");
        let t: Timestamp = serde_json::from_str("\"2023-06-28T19:50:49Z\"").unwrap();
        assert_eq!(t.0.timestamp(), 1_687_981_849);
        let t: Timestamp = serde_json::from_str("\"2023-06-28T19:50:49.25+00:00\"").unwrap();
        assert_eq!(t.0.timestamp_subsec_millis(), 250);
    }

    #[test]
    fn videos_tolerate_nulls_and_keep_unknown_fields() {
        let v: Video = serde_json::from_str(
            r#"{"id":"a098d2bbd33e1c328","title":"T","duration":null,"tags":null,"created_at":null,
                "updated_at":"2012-12-20T00:07:54-05:00","require_email":true,"embed_code":"<iframe>"}"#,
        )
        .unwrap();
        assert_eq!(v.duration, None);
        assert!(v.tags.is_empty());
        assert_eq!(v.extra.get("embed_code").unwrap(), "<iframe>");
        assert!(v.updated_at.is_some());
    }

    #[test]
    fn sessions_read_alternative_names_and_compute_percent() {
        let s: EngagementSession = serde_json::from_str(
            r#"{"id":"s1","video_id":"v1","vemail":"A@x.io","num_seconds":"30","created_at":"2026-11-01T10:00:00-05:00","device":"ios"}"#,
        )
        .unwrap();
        assert_eq!(s.seconds_watched, Some(30.0));
        assert_eq!(s.watch_percent(Some(120.0)), Some(25.0));
        assert_eq!(s.watch_percent(None), None);
        assert_eq!(s.extra.get("device").unwrap(), "ios");
        let s: EngagementSession =
            serde_json::from_str(r#"{"id":null,"vemail":null,"percent_watched":140,"seconds_watched":1}"#).unwrap();
        assert_eq!(s.vemail, None);
        assert_eq!(s.watch_percent(Some(10.0)), Some(100.0));
    }
}
