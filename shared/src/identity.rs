//! Identities we match people on: parsed once, so an invalid one cannot travel further.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IdentityError {
    #[error("email is blank")]
    BlankEmail,
    #[error("'{0}' is not an email address")]
    InvalidEmail(String),
    #[error("phone is blank")]
    BlankPhone,
    #[error("'{0}' is not a valid phone number for region {1}")]
    InvalidPhone(String, String),
    #[error("unknown default phone region '{0}'")]
    UnknownRegion(String),
}

/// A normalised email address: trimmed, lower-cased, with one `@`, a local part and a dotted
/// domain. Comparing two `Email`s compares people.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, IdentityError> {
        let s = raw.trim().to_lowercase();
        if s.is_empty() {
            return Err(IdentityError::BlankEmail);
        }
        let bad = || IdentityError::InvalidEmail(raw.trim().chars().take(80).collect());
        let (local, domain) = s.split_once('@').ok_or_else(bad)?;
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || !c.is_ascii());
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local.chars().all(|c| !c.is_whitespace() && !c.is_control() && !"\"(),:;<>@[\\]".contains(c));
        if !domain_ok || !local_ok || s.len() > 254 {
            return Err(bad());
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn local_part(&self) -> &str {
        self.0.split_once('@').map(|(l, _)| l).unwrap_or("")
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Email::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A phone number in E.164 (`+14155550123`), valid for its region by libphonenumber's rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Phone(String);

impl Phone {
    /// Parses `raw` (international, or national in `default_region`, an ISO-3166 code).
    pub fn parse(raw: &str, default_region: &str) -> Result<Self, IdentityError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(IdentityError::BlankPhone);
        }
        let region: Option<phonenumber::country::Id> = if trimmed.starts_with('+') {
            None
        } else {
            Some(
                default_region
                    .trim()
                    .to_ascii_uppercase()
                    .parse()
                    .map_err(|_| IdentityError::UnknownRegion(default_region.to_string()))?,
            )
        };
        let bad = || IdentityError::InvalidPhone(redact_phone(trimmed), default_region.to_string());
        let n = phonenumber::parse(region, trimmed).map_err(|_| bad())?;
        if !phonenumber::is_valid(&n) {
            return Err(bad());
        }
        Ok(Self(n.format().mode(phonenumber::Mode::E164).to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Phone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if !s.starts_with('+') {
            return Err(serde::de::Error::custom("phone must be E.164"));
        }
        Phone::parse(&s, "US").map_err(serde::de::Error::custom)
    }
}

/// Keeps the last two digits of a number for log lines.
pub fn redact_phone(raw: &str) -> String {
    let digits: Vec<char> = raw.chars().filter(|c| c.is_ascii_digit()).collect();
    let tail: String = digits.iter().rev().take(2).rev().collect();
    format!("…{tail}")
}

/// An identity conflict the worker met: the person's phone is held by another GHL contact.
/// Kept in the state table as `kv#<conflict_value_name(email)>` for the reconciler's report and
/// the one-view, and forgotten once the phone goes through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictRecord {
    /// The identifier another contact holds (`phone`).
    pub field: String,
    /// Redacted (last two digits).
    pub phone: String,
    /// The person's contact, when one was written or found.
    #[serde(default)]
    pub contact_id: Option<String>,
    pub other_contact_id: String,
    /// The command was parked instead of written.
    #[serde(default)]
    pub parked: bool,
    /// RFC 3339, UTC.
    pub at: String,
}

/// The state-table value name of a person's last identity conflict.
pub fn conflict_value_name(email: &Email) -> String {
    format!("conflict#{email}")
}

/// How long a conflict record is kept (about a year).
pub const CONFLICT_RECORD_TTL: std::time::Duration = std::time::Duration::from_secs(360 * 24 * 3600);

/// Who a command is about: always an email (our match key), and a phone when known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub email: Email,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<Phone>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_or_refused() {
        let cases: &[(&str, Result<&str, ()>)] = &[
            ("  Ada@Example.COM ", Ok("ada@example.com")),
            ("first.last+tag@sub.example.co.uk", Ok("first.last+tag@sub.example.co.uk")),
            ("", Err(())),
            ("   ", Err(())),
            ("no-at-sign.example.com", Err(())),
            ("a@b", Err(())),
            ("a@@b.com", Err(())),
            ("a b@c.com", Err(())),
            ("@example.com", Err(())),
            ("a@.example.com", Err(())),
            ("a..b@example.com", Err(())),
        ];
        for (raw, want) in cases {
            let got = Email::parse(raw).map(|e| e.as_str().to_string()).map_err(|_| ());
            assert_eq!(got, want.map(str::to_string), "input {raw:?}");
        }
    }

    #[test]
    fn phones_become_e164_or_are_refused() {
        let cases: &[(&str, &str, Result<&str, ()>)] = &[
            ("+1 415-555-2671", "US", Ok("+14155552671")),
            ("(415) 555 2671", "US", Ok("+14155552671")),
            ("415.555.2671", "US", Ok("+14155552671")),
            ("020 7946 0018", "GB", Ok("+442079460018")),
            ("+44 20 7946 0018", "US", Ok("+442079460018")),
            ("030 123456", "DE", Ok("+4930123456")),
            ("12", "US", Err(())),
            ("not a phone", "US", Err(())),
            ("", "US", Err(())),
            ("+1 000 000 0000", "US", Err(())),
        ];
        for (raw, region, want) in cases {
            let got = Phone::parse(raw, region).map(|p| p.as_str().to_string()).map_err(|_| ());
            assert_eq!(got, want.map(str::to_string), "input {raw:?} in {region}");
        }
    }

    #[test]
    fn phone_errors_do_not_echo_the_number() {
        let e = Phone::parse("555 12", "US").unwrap_err().to_string();
        assert!(!e.contains("555 12"), "{e}");
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<Email>("\"nope\"").is_err());
        assert_eq!(serde_json::from_str::<Email>("\"A@B.io\"").unwrap().as_str(), "a@b.io");
        assert!(serde_json::from_str::<Phone>("\"4155552671\"").is_err());
    }
}
