//! The value types of an event's fields. Each one decodes only what the intake accepts, so a
//! decoded event holds nothing left to check, and each one describes itself in the published
//! JSON Schema.
//!
//! Decoding errors are plain sentences ("must be at most 100 characters"); the decoder in
//! `events` adds the path of the field they came from.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Reads a string field: trimmed, `None` when null or blank; longer than `max` characters
/// (before trimming) is an error.
struct TextVisitor {
    max: usize,
}

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if v.chars().count() > self.max {
            return Err(E::custom(format_args!("must be at most {} characters", self.max)));
        }
        let t = v.trim();
        Ok((!t.is_empty()).then(|| t.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

fn required_text<'de, D: Deserializer<'de>>(d: D, max: usize) -> Result<String, D::Error> {
    d.deserialize_any(TextVisitor { max })?.ok_or_else(|| de::Error::custom("is required"))
}

/// A required string: trimmed, not blank, at most `MAX` characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<const MAX: usize>(String);

impl<const MAX: usize> Text<MAX> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_string(self) -> String {
        self.0
    }
}

impl<'de, const MAX: usize> Deserialize<'de> for Text<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        required_text(d, MAX).map(Text)
    }
}

impl<const MAX: usize> JsonSchema for Text<MAX> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        format!("Text{MAX}").into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "minLength": 1, "maxLength": MAX, "pattern": "\\S" })
    }
}

/// An optional string: trimmed, at most `MAX` characters; null, blank or absent means none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptText<const MAX: usize>(Option<String>);

impl<const MAX: usize> OptText<MAX> {
    pub fn into_option(self) -> Option<String> {
        self.0
    }
}

impl<'de, const MAX: usize> Deserialize<'de> for OptText<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor { max: MAX }).map(OptText)
    }
}

impl<const MAX: usize> JsonSchema for OptText<MAX> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        format!("OptText{MAX}").into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "null"], "maxLength": MAX })
    }
}

/// The sender's id of an event: 1 to 200 letters, digits and `- _ . :`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventId(String);

impl EventId {
    pub const MAX: usize = 200;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = required_text(d, Self::MAX)?;
        if !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
            return Err(de::Error::custom("may contain only letters, digits and - _ . :"));
        }
        Ok(EventId(id))
    }
}

impl JsonSchema for EventId {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "EventId".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "minLength": 1, "maxLength": Self::MAX, "pattern": "^[A-Za-z0-9_.:-]+$" })
    }
}

/// A point in time, written as an RFC 3339 timestamp (at most 64 characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub DateTime<Utc>);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = required_text(d, 64)?;
        DateTime::parse_from_rfc3339(&raw)
            .map(|t| Timestamp(t.to_utc()))
            .map_err(|_| de::Error::custom("must be an RFC 3339 timestamp"))
    }
}

impl JsonSchema for Timestamp {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "date-time", "maxLength": 64 })
    }
}

/// A finite number of zero or more.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct NonNegative(f64);

impl NonNegative {
    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for NonNegative {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NonNegative;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NonNegative, E> {
                if v.is_finite() && v >= 0.0 {
                    Ok(NonNegative(v))
                } else {
                    Err(E::custom("must be a non-negative number"))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NonNegative, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NonNegative, E> {
                self.visit_f64(v as f64)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for NonNegative {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "NonNegative".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "number", "minimum": 0 })
    }
}

/// A share of a whole, from 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Percent {
    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = NonNegative::deserialize(d)?.get();
        if n <= 100.0 { Ok(Percent(n)) } else { Err(de::Error::custom("must be between 0 and 100")) }
    }
}

impl JsonSchema for Percent {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Percent".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "number", "minimum": 0, "maximum": 100 })
    }
}

/// Longest list of tags.
pub const MAX_TAGS: usize = 100;
/// Longest tag, in bytes of UTF-8.
pub const MAX_TAG_BYTES: usize = 100;

/// One tag: trimmed, not blank, at most 100 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tag(String);

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tag;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a non-empty string of at most {MAX_TAG_BYTES} bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Tag, E> {
                let t = v.trim();
                if t.is_empty() || v.len() > MAX_TAG_BYTES {
                    return Err(E::custom(format_args!("must be a non-empty string of at most {MAX_TAG_BYTES} bytes")));
                }
                Ok(Tag(t.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A list of at least `MIN` and at most 100 tags; null or absent is an empty list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags<const MIN: usize>(Vec<String>);

impl<const MIN: usize> Tags<MIN> {
    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

impl<'de, const MIN: usize> Deserialize<'de> for Tags<MIN> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const MIN: usize>;
        impl<'de, const MIN: usize> Visitor<'de> for V<MIN> {
            type Value = Tags<MIN>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a list of at most {MAX_TAGS} strings")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Tags<MIN>, E> {
                Tags(vec![]).at_least_min()
            }
            fn visit_none<E: de::Error>(self) -> Result<Tags<MIN>, E> {
                self.visit_unit()
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tags<MIN>, A::Error> {
                let mut out = Vec::new();
                while let Some(Tag(t)) = seq.next_element()? {
                    if out.len() == MAX_TAGS {
                        return Err(de::Error::custom(format_args!("must be a list of at most {MAX_TAGS} strings")));
                    }
                    out.push(t);
                }
                Tags(out).at_least_min()
            }
        }
        d.deserialize_any(V::<MIN>)
    }
}

impl<const MIN: usize> Tags<MIN> {
    fn at_least_min<E: de::Error>(self) -> Result<Self, E> {
        if self.0.len() < MIN {
            return Err(E::custom(if MIN == 1 {
                "must list at least one tag".to_string()
            } else {
                format!("must list at least {MIN} tags")
            }));
        }
        Ok(self)
    }
}

impl<const MIN: usize> JsonSchema for Tags<MIN> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        format!("Tags{MIN}").into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let item = json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TAG_BYTES,
            "pattern": "\\S",
            "description": "Trimmed; at most 100 bytes of UTF-8."
        });
        if MIN == 0 {
            json_schema!({ "type": ["array", "null"], "maxItems": MAX_TAGS, "items": item })
        } else {
            json_schema!({ "type": "array", "minItems": MIN, "maxItems": MAX_TAGS, "items": item })
        }
    }
}

/// Longest custom-field key.
pub const MAX_CUSTOM_FIELD_KEY: usize = 100;

/// Values by GHL custom-field key (`contact.<field_key>`, at most 100 bytes); each value a
/// string, number, boolean or list. Null or absent is none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomFields(BTreeMap<String, Value>);

impl CustomFields {
    pub fn into_map(self) -> BTreeMap<String, Value> {
        self.0
    }
}

/// Decodes one custom field's value, checking its key first so that a bad key is reported at
/// `custom_fields.<key>`.
struct CustomFieldValue<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for CustomFieldValue<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if !self.0.starts_with("contact.") || self.0.len() > MAX_CUSTOM_FIELD_KEY {
            return Err(de::Error::custom("keys must look like contact.<field_key>"));
        }
        match Value::deserialize(d)? {
            v @ (Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Array(_)) => Ok(v),
            _ => Err(de::Error::custom("must be a string, number, boolean or list")),
        }
    }
}

impl<'de> Deserialize<'de> for CustomFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V(PhantomData<CustomFields>);
        impl<'de> Visitor<'de> for V {
            type Value = CustomFields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of custom-field values")
            }
            fn visit_unit<E: de::Error>(self) -> Result<CustomFields, E> {
                Ok(CustomFields::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<CustomFields, E> {
                Ok(CustomFields::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CustomFields, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value_seed(CustomFieldValue(&key))?;
                    out.insert(key, value);
                }
                Ok(CustomFields(out))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

impl JsonSchema for CustomFields {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "CustomFields".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["object", "null"],
            "propertyNames": { "pattern": "^contact\\.", "maxLength": MAX_CUSTOM_FIELD_KEY },
            "additionalProperties": { "type": ["string", "number", "boolean", "array"] }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn de<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T, String> {
        T::deserialize(v).map_err(|e| e.to_string())
    }

    #[test]
    fn text_is_trimmed_bounded_and_blank_means_absent() {
        assert_eq!(de::<Text<5>>(json!("  ab ")).unwrap().as_str(), "ab");
        assert_eq!(de::<Text<5>>(json!("abcdef")).unwrap_err(), "must be at most 5 characters");
        assert_eq!(de::<Text<5>>(json!("   ")).unwrap_err(), "is required");
        assert_eq!(de::<Text<5>>(json!(null)).unwrap_err(), "is required");
        assert!(de::<Text<5>>(json!(5)).unwrap_err().contains("expected a string"));
        assert_eq!(de::<OptText<5>>(json!("  ")).unwrap(), OptText(None));
        assert_eq!(de::<OptText<5>>(json!(null)).unwrap(), OptText(None));
        assert_eq!(de::<OptText<5>>(json!(" é ")).unwrap(), OptText(Some("é".into())));
        // Five characters even though they take ten bytes.
        assert!(de::<Text<5>>(json!("ééééé")).is_ok());
    }

    #[test]
    fn event_ids_use_a_small_alphabet() {
        assert_eq!(de::<EventId>(json!("evt-1_a.b:c")).unwrap().as_str(), "evt-1_a.b:c");
        assert_eq!(de::<EventId>(json!("evt 1")).unwrap_err(), "may contain only letters, digits and - _ . :");
        assert!(de::<EventId>(json!("x".repeat(201))).is_err());
    }

    #[test]
    fn timestamps_are_rfc_3339_in_utc() {
        let t = de::<Timestamp>(json!("2026-11-29T10:00:00+01:00")).unwrap();
        assert_eq!(t.0.to_rfc3339(), "2026-11-29T09:00:00+00:00");
        assert_eq!(de::<Timestamp>(json!("yesterday")).unwrap_err(), "must be an RFC 3339 timestamp");
    }

    #[test]
    fn numbers_and_percentages_have_ranges() {
        assert_eq!(de::<NonNegative>(json!(2.5)).unwrap().get(), 2.5);
        assert_eq!(de::<NonNegative>(json!(-1)).unwrap_err(), "must be a non-negative number");
        assert!(de::<NonNegative>(json!("3")).unwrap_err().contains("expected a number"));
        assert_eq!(de::<Percent>(json!(100)).unwrap().get(), 100.0);
        assert_eq!(de::<Percent>(json!(100.5)).unwrap_err(), "must be between 0 and 100");
    }

    #[test]
    fn tag_lists_are_bounded_and_may_be_required() {
        assert_eq!(de::<Tags<0>>(json!([" a ", "b"])).unwrap().into_vec(), vec!["a", "b"]);
        assert_eq!(de::<Tags<0>>(json!(null)).unwrap().into_vec(), Vec::<String>::new());
        assert!(de::<Tags<0>>(json!([""])).is_err());
        assert!(de::<Tags<0>>(json!(["é".repeat(51)])).is_err(), "102 bytes");
        assert!(de::<Tags<0>>(json!(vec!["t"; 101])).is_err());
        assert!(de::<Tags<0>>(json!(vec!["t"; 100])).is_ok());
        assert_eq!(de::<Tags<1>>(json!([])).unwrap_err(), "must list at least one tag");
        assert!(de::<Tags<0>>(json!("vip")).unwrap_err().contains("a list of at most 100 strings"));
    }

    #[test]
    fn custom_fields_need_contact_keys_and_plain_values() {
        let ok = de::<CustomFields>(json!({"contact.plan": "gold", "contact.n": 3, "contact.l": ["a"]})).unwrap();
        assert_eq!(ok.into_map().len(), 3);
        assert_eq!(de::<CustomFields>(json!({"plan": 1})).unwrap_err(), "keys must look like contact.<field_key>");
        assert_eq!(
            de::<CustomFields>(json!({"contact.plan": {"a": 1}})).unwrap_err(),
            "must be a string, number, boolean or list"
        );
        assert_eq!(de::<CustomFields>(json!(null)).unwrap(), CustomFields::default());
    }
}
