//! Course access from GHL tags: brings one GHL contact's SproutVideo access in line with the
//! mapping's `[[access]]` rules and the tags the contact carries now.
//!
//! Every step looks before it writes, so a doubled, late or out-of-order change ends in the
//! state GHL holds when it is applied:
//! 1. the contact is read from GHL (a webhook payload is only a hint);
//! 2. the grants its tags call for are worked out (video ids, and the videos of SproutVideo tag
//!    ids), with their limits;
//! 3. the login with the contact's email is looked up (the recorded one by its id, else in the
//!    list of logins). None, and a rule is met: a password is
//!    made (OS random source), written to the mapping's `password_field` first, and only then
//!    is the login created, so a login never exists with a password nobody has. An existing
//!    login is reused and the field is never touched again;
//! 4. missing grants are created in one bulk request; grants on videos of rules no longer met
//!    are deleted; limits that differ are updated. Grants on videos no rule names are left.
//!
//! A create whose answer was lost (a 500, a timeout) is looked up again at once, and on the
//! next attempt, before anything is created a second time.
//!
//! The login a contact's access went to is recorded as `kv#access#<location>/<contact>`
//! (`{"login_id", "email"}`) while the contact meets a rule, so a contact that was deleted, or
//! whose email changed, has the grants of its old login revoked. A contact that meets no rule
//! and has no such record costs no SproutVideo call (most contact changes). The password itself is held in a [`SecretString`] and is
//! never logged, returned in an error, or stored by the sync.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use shared::ghl::{Contact, CustomFieldInput, GhlError, UpdateContactDto};
use shared::identity::Email;
use shared::mapping::AccessRule;
use shared::sprout::{AccessGrant, GrantLimits, Login, NewAccessGrant, SproutError};

use crate::apply::{Applied, ApplyError, Worker};

/// Length of a new login's password.
pub const PASSWORD_LEN: usize = 24;

const PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";

/// A new password: [`PASSWORD_LEN`] characters drawn uniformly (rejection sampling) from the OS
/// random source, over an alphabet without look-alike characters.
pub fn new_password() -> Result<SecretString, ApplyError> {
    let n = PASSWORD_ALPHABET.len();
    // The largest multiple of the alphabet's size that fits in a byte: bytes above it are drawn again.
    let limit = (256 / n * n) as u8;
    let mut out = String::with_capacity(PASSWORD_LEN);
    let mut buf = [0u8; 64];
    while out.len() < PASSWORD_LEN {
        getrandom::fill(&mut buf).map_err(|e| ApplyError::Transient {
            reason: format!("the OS random source failed: {e}"),
            trace_id: None,
            ambiguous: false,
        })?;
        for b in buf {
            if b < limit && out.len() < PASSWORD_LEN {
                out.push(PASSWORD_ALPHABET[b as usize % n] as char);
            }
        }
    }
    Ok(SecretString::from(out))
}

pub use shared::state::access_value_name;

/// What `kv#access#<location>/<contact>` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessRecord {
    pub login_id: String,
    pub email: String,
    /// The login is to be deleted (a revoked rule says so): kept until it is, so a retry after
    /// the grants were revoked still deletes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_login: bool,
}

/// When a grant's access ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ends {
    Never,
    At(DateTime<Utc>),
    /// This many days after the grant is made (set when it is created, never moved after).
    DaysAfterGrant(u32),
}

/// One grant the contact's tags call for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DesiredGrant {
    pub allowed_plays: Option<i64>,
    pub ends: Ends,
}

impl DesiredGrant {
    /// Two rules granting one video: the more generous settings win.
    fn merge(self, other: DesiredGrant) -> DesiredGrant {
        let allowed_plays = match (self.allowed_plays, other.allowed_plays) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        let ends = match (self.ends, other.ends) {
            (Ends::Never, _) | (_, Ends::Never) => Ends::Never,
            (Ends::At(a), Ends::At(b)) => Ends::At(a.max(b)),
            (Ends::DaysAfterGrant(a), Ends::DaysAfterGrant(b)) => Ends::DaysAfterGrant(a.max(b)),
            (first, _) => first,
        };
        DesiredGrant { allowed_plays, ends }
    }

    fn limits(&self, now: DateTime<Utc>) -> GrantLimits {
        GrantLimits {
            allowed_plays: self.allowed_plays.map(Some),
            access_ends_at: match self.ends {
                Ends::Never => None,
                Ends::At(t) => Some(Some(t.to_rfc3339())),
                Ends::DaysAfterGrant(d) => Some(Some((now + ChronoDuration::days(i64::from(d))).to_rfc3339())),
            },
        }
    }

    /// What to change on an existing grant, if anything: plays that differ, and a fixed end
    /// that differs (an end counted from the grant stays as it was set).
    fn changes(&self, g: &AccessGrant) -> Option<GrantLimits> {
        let mut limits = GrantLimits::default();
        if g.allowed_plays != self.allowed_plays {
            limits.allowed_plays = Some(self.allowed_plays);
        }
        let current = g.access_ends_at.as_ref().map(|t| t.0);
        match self.ends {
            Ends::At(t) if current != Some(t) => limits.access_ends_at = Some(Some(t.to_rfc3339())),
            Ends::Never if current.is_some() => limits.access_ends_at = Some(None),
            _ => {}
        }
        (limits.allowed_plays.is_some() || limits.access_ends_at.is_some()).then_some(limits)
    }
}

/// Reads a GHL date or date-time field value: RFC 3339, `YYYY-MM-DD` (access ends at the end
/// of that day, UTC) or unix milliseconds.
pub fn read_end(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::Number(n) => n.as_i64().and_then(DateTime::from_timestamp_millis),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Some(t.to_utc());
            }
            if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                return d.and_hms_opt(23, 59, 59).map(|t| t.and_utc());
            }
            s.parse::<i64>().ok().and_then(DateTime::from_timestamp_millis)
        }
        _ => None,
    }
}

fn transient(reason: impl Into<String>) -> ApplyError {
    ApplyError::Transient { reason: reason.into(), trace_id: None, ambiguous: false }
}

fn permanent(reason: impl Into<String>) -> ApplyError {
    ApplyError::Permanent { reason: reason.into(), trace_id: None }
}

/// A SproutVideo create failed in a way that may hide a write.
fn may_have_written(e: &SproutError) -> bool {
    matches!(
        e,
        SproutError::MayHaveWritten(_)
            | SproutError::Server { .. }
            | SproutError::Transport(_)
            | SproutError::DeadlineExceeded(_)
            | SproutError::Decode(_)
    )
}

fn same_email(login: &Login, email: &Email) -> bool {
    login.email.as_deref().is_some_and(|e| e.trim().eq_ignore_ascii_case(email.as_str()))
}

impl Worker {
    /// A GHL contact changed: brings its SproutVideo access in line with the rules.
    pub(crate) async fn contact_changed(&self, location_id: &str, contact_id: &str) -> Result<Applied, ApplyError> {
        if self.mapping.access.is_empty() {
            tracing::info!(contact_id, "contact change: the mapping has no access rules");
            return Ok(Applied::Unchanged);
        }
        if location_id != self.ghl.location_id() {
            return Err(permanent(format!(
                "the contact change is for location {location_id}, and this sync serves {}",
                self.ghl.location_id()
            )));
        }
        let contact = match self.ghl.get_contact(contact_id).await {
            Ok(c) => Some(c),
            Err(GhlError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let record_name = access_value_name(location_id, contact_id);
        let recorded: Option<AccessRecord> =
            self.store.get_value(&record_name).await?.and_then(|v| serde_json::from_str(&v).ok());
        let email = contact.as_ref().and_then(|c| c.email.as_deref()).and_then(|e| Email::parse(e).ok());
        let tags = contact.as_ref().map(|c| c.tags.clone()).unwrap_or_default();
        let met = self.mapping.access_met(&tags);
        if met.is_empty() && recorded.is_none() {
            // No rule met, and no access of the sync's to take back: no SproutVideo call.
            return Ok(Applied::Unchanged);
        }

        let (managed, videos_of) = self.rule_videos().await?;
        let desired = match &contact {
            Some(c) => self.desired_grants(c, &met, &videos_of).await?,
            None => BTreeMap::new(),
        };
        let mut written = false;

        // The login the contact's access went to before, when it is not this email's any more
        // (the contact was deleted, or its email changed): its managed grants are revoked.
        if let Some(old) = &recorded
            && email.as_ref().is_none_or(|e| !e.as_str().eq_ignore_ascii_case(&old.email))
        {
            let grants = self.sprout.list_access_grants().await?;
            let stale: Vec<&AccessGrant> = grants
                .iter()
                .filter(|g| g.login_id.as_deref() == Some(old.login_id.as_str()))
                .filter(|g| g.video_id.as_deref().is_some_and(|v| managed.contains(v)))
                .collect();
            written |= self.delete_grants(&stale).await?;
            tracing::info!(contact_id, login_id = %old.login_id, revoked = stale.len(), "access of the contact's previous login revoked");
            self.store.delete_value(&record_name).await?;
        }

        let Some(email) = email else {
            if !met.is_empty() {
                tracing::warn!(contact_id, "the contact meets an access rule but has no usable email; no login made");
            }
            return Ok(if written { Applied::Written } else { Applied::Unchanged });
        };
        let contact = contact.expect("an email comes from a contact");

        let login = match self.find_login(&email, recorded.as_ref()).await? {
            Some(l) => Some(l),
            None if desired.is_empty() => None,
            None => {
                written = true;
                Some(self.create_login(&contact, &email).await?)
            }
        };
        let Some(login) = login else {
            if met.is_empty() && recorded.is_some() {
                self.store.delete_value(&record_name).await?;
            }
            return Ok(if written { Applied::Written } else { Applied::Unchanged });
        };
        if !desired.is_empty() {
            let record =
                AccessRecord { login_id: login.id.clone(), email: email.as_str().to_string(), delete_login: false };
            if recorded.as_ref() != Some(&record) {
                self.store
                    .put_value(&record_name, &serde_json::to_string(&record).expect("a record serialises"), None)
                    .await?;
            }
        }

        let grants: Vec<AccessGrant> = self
            .sprout
            .list_access_grants()
            .await?
            .into_iter()
            .filter(|g| g.login_id.as_deref() == Some(login.id.as_str()))
            .collect();
        let have: BTreeMap<&str, &AccessGrant> =
            grants.iter().filter_map(|g| Some((g.video_id.as_deref()?, g))).collect();
        let missing: Vec<(&String, &DesiredGrant)> =
            desired.iter().filter(|(v, _)| !have.contains_key(v.as_str())).collect();
        let extra: Vec<&AccessGrant> = grants
            .iter()
            .filter(|g| g.video_id.as_deref().is_some_and(|v| managed.contains(v) && !desired.contains_key(v)))
            .collect();

        // No rule met any more: the login goes when a revoked rule says so and it holds no grant
        // the rules do not manage. Decided before the grants go, and written down, so that a
        // retry that finds them gone still deletes the login.
        let revoked_rules_delete = self.mapping.access.iter().any(|r| {
            r.delete_login_on_revoke
                && extra.iter().any(|g| {
                    g.video_id.as_deref().is_some_and(|v| videos_of.get(&r.tag).is_some_and(|s| s.contains(v)))
                })
        });
        let delete_pending = recorded.as_ref().is_some_and(|r| r.delete_login && r.login_id == login.id);
        if met.is_empty()
            && revoked_rules_delete
            && !delete_pending
            && let Some(r) = recorded.as_ref().filter(|r| r.login_id == login.id)
        {
            let record = AccessRecord { delete_login: true, ..r.clone() };
            self.store
                .put_value(&record_name, &serde_json::to_string(&record).expect("a record serialises"), None)
                .await?;
        }

        if !missing.is_empty() {
            written = true;
            self.create_grants(&login.id, &missing).await?;
        }
        for (video, want) in &desired {
            if let Some(g) = have.get(video.as_str())
                && let Some(change) = want.changes(g)
            {
                written = true;
                match self.sprout.update_access_grant(&g.id, &change).await {
                    Ok(_) | Err(SproutError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        written |= self.delete_grants(&extra).await?;

        let unmanaged_left = grants.iter().any(|g| g.video_id.as_deref().is_none_or(|v| !managed.contains(v)));
        if met.is_empty() && (revoked_rules_delete || delete_pending) && !unmanaged_left {
            match self.sprout.delete_login(&login.id).await {
                Ok(()) | Err(SproutError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            written = true;
            tracing::info!(contact_id, login_id = %login.id, "login deleted: the contact meets no access rule");
        }
        if met.is_empty() {
            // Everything the sync granted is revoked: nothing is left to take back later.
            self.store.delete_value(&record_name).await?;
        }
        tracing::info!(
            contact_id,
            login_id = %login.id,
            rules_met = met.len(),
            granted = missing.len(),
            revoked = extra.len(),
            "access applied"
        );
        Ok(if written { Applied::Written } else { Applied::Unchanged })
    }

    /// The login with the email: the recorded one when it still exists under that email (one
    /// read), else a look through every login (SproutVideo has no lookup by email).
    async fn find_login(&self, email: &Email, recorded: Option<&AccessRecord>) -> Result<Option<Login>, ApplyError> {
        if let Some(r) = recorded.filter(|r| r.email.eq_ignore_ascii_case(email.as_str())) {
            match self.sprout.get_login(&r.login_id).await {
                Ok(l) if same_email(&l, email) => return Ok(Some(l)),
                Ok(_) | Err(SproutError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.sprout.list_logins().await?.into_iter().find(|l| same_email(l, email)))
    }

    /// Every video a rule names (by id or SproutVideo tag), and each rule's videos by its tag.
    async fn rule_videos(&self) -> Result<(BTreeSet<String>, BTreeMap<String, BTreeSet<String>>), ApplyError> {
        let mut by_tag_id: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for r in &self.mapping.access {
            for t in &r.video_tag_ids {
                if !by_tag_id.contains_key(t.as_str()) {
                    let videos = self.sprout.list_videos_tagged(t).await?;
                    by_tag_id.insert(t, videos.into_iter().map(|v| v.id).collect());
                }
            }
        }
        let mut all = BTreeSet::new();
        let mut per_rule = BTreeMap::new();
        for r in &self.mapping.access {
            let mut videos: BTreeSet<String> = r.video_ids.iter().cloned().collect();
            for t in &r.video_tag_ids {
                videos.extend(by_tag_id.get(t.as_str()).into_iter().flatten().cloned());
            }
            all.extend(videos.iter().cloned());
            per_rule.insert(r.tag.clone(), videos);
        }
        Ok((all, per_rule))
    }

    /// The grants the rules a contact meets call for, by video.
    async fn desired_grants(
        &self,
        contact: &Contact,
        met: &[&AccessRule],
        videos_of: &BTreeMap<String, BTreeSet<String>>,
    ) -> Result<BTreeMap<String, DesiredGrant>, ApplyError> {
        let mut out: BTreeMap<String, DesiredGrant> = BTreeMap::new();
        for r in met {
            let ends = match (&r.access_ends_at_field, r.access_days) {
                (Some(key), _) => {
                    let (id, _) = self.catalog.definition(key).await?;
                    let value = contact.custom_fields.iter().find(|f| f.id == id).map(|f| &f.value);
                    match value {
                        None | Some(Value::Null) => Ends::Never,
                        Some(Value::String(s)) if s.trim().is_empty() => Ends::Never,
                        Some(v) => match read_end(v) {
                            Some(t) => Ends::At(t),
                            None => {
                                return Err(permanent(format!(
                                    "the contact's {key} holds {v}, which is not a date: fix the field in GHL"
                                )));
                            }
                        },
                    }
                }
                (None, Some(days)) => Ends::DaysAfterGrant(days),
                (None, None) => Ends::Never,
            };
            let want = DesiredGrant { allowed_plays: r.allowed_plays.map(i64::from), ends };
            for v in videos_of.get(&r.tag).into_iter().flatten() {
                let merged = match out.get(v) {
                    Some(prev) => prev.merge(want),
                    None => want,
                };
                out.insert(v.clone(), merged);
            }
        }
        Ok(out)
    }

    /// Writes a new password to the contact's password field, then creates the login with it.
    async fn create_login(&self, contact: &Contact, email: &Email) -> Result<Login, ApplyError> {
        let key = self.mapping.password_field().expect("access rules name a password field");
        let (field_id, data_type) = self.catalog.definition(key).await?;
        if !matches!(data_type.as_str(), "TEXT" | "LARGE_TEXT") {
            return Err(permanent(format!(
                "password_field {key} is a {data_type} field in GHL; it must be a text field"
            )));
        }
        let password = new_password()?;
        // What the field held before: put back if the login turns out to exist already, so the
        // field never offers a password that login does not have.
        let previous = contact
            .custom_fields
            .iter()
            .find(|f| f.id == field_id)
            .map(|f| f.value.clone())
            .filter(|v| !v.is_null())
            .unwrap_or_else(|| Value::String(String::new()));
        let body = UpdateContactDto {
            custom_fields: Some(vec![CustomFieldInput {
                id: field_id.clone(),
                field_value: Value::String(password.expose_secret().to_string()),
            }]),
            ..Default::default()
        };
        self.ghl.update_contact(&contact.id, &body).await?;
        drop(body);
        match self.sprout.create_login(email.as_str(), &password).await {
            Ok(l) => {
                tracing::info!(contact_id = %contact.id, login_id = %l.id, "SproutVideo login created; its password is in GHL");
                Ok(l)
            }
            Err(e) if may_have_written(&e) || matches!(e, SproutError::Invalid { .. }) => {
                // The login may exist now (a lost answer, or another attempt made it): look.
                let found = self.sprout.list_logins().await?.into_iter().find(|l| same_email(l, email));
                match found {
                    // Refused: the login was there before this attempt (made by hand, by another
                    // contact with this email, or by an earlier attempt the list had not shown)
                    // and keeps its own password. The field gets its earlier value back.
                    Some(l) if matches!(e, SproutError::Invalid { .. }) => {
                        let restore = UpdateContactDto {
                            custom_fields: Some(vec![CustomFieldInput { id: field_id, field_value: previous }]),
                            ..Default::default()
                        };
                        self.ghl.update_contact(&contact.id, &restore).await?;
                        tracing::info!(contact_id = %contact.id, login_id = %l.id, "an existing SproutVideo login is used; its password is unchanged");
                        Ok(l)
                    }
                    Some(l) => Ok(l),
                    None if e.is_retryable() => {
                        Err(transient(format!("creating the login failed ({e}); will look again")))
                    }
                    None => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the missing grants in one bulk request. A failure that may hide a write is
    /// looked at again before anything is created a second time.
    async fn create_grants(&self, login_id: &str, missing: &[(&String, &DesiredGrant)]) -> Result<(), ApplyError> {
        let now = Utc::now();
        let new: Vec<NewAccessGrant> = missing
            .iter()
            .map(|(video, want)| NewAccessGrant {
                video_id: (*video).clone(),
                login_id: login_id.to_string(),
                limits: want.limits(now),
            })
            .collect();
        match self.sprout.create_access_grants(&new).await {
            Ok(_) => Ok(()),
            Err(e) if may_have_written(&e) => {
                let made: BTreeSet<String> = self
                    .sprout
                    .list_access_grants()
                    .await?
                    .into_iter()
                    .filter(|g| g.login_id.as_deref() == Some(login_id))
                    .filter_map(|g| g.video_id)
                    .collect();
                let still_missing = missing.iter().filter(|(v, _)| !made.contains(v.as_str())).count();
                if still_missing == 0 {
                    tracing::info!(login_id, "the grants were made although their answer was lost");
                    Ok(())
                } else {
                    Err(transient(format!(
                        "{still_missing} grant(s) not made ({e}); the next attempt looks again before creating"
                    )))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes grants (one already gone counts as deleted); whether any was deleted.
    async fn delete_grants(&self, grants: &[&AccessGrant]) -> Result<bool, ApplyError> {
        for g in grants {
            match self.sprout.delete_access_grant(&g.id).await {
                Ok(()) | Err(SproutError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(!grants.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_random_and_from_the_alphabet() {
        let a = new_password().unwrap();
        let b = new_password().unwrap();
        assert_eq!(a.expose_secret().len(), PASSWORD_LEN);
        assert!(a.expose_secret().bytes().all(|c| PASSWORD_ALPHABET.contains(&c)));
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(!format!("{a:?}").contains(a.expose_secret()), "Debug never shows it");
    }

    #[test]
    fn end_dates_read_as_dates_times_or_millis() {
        let t = DateTime::parse_from_rfc3339("2027-01-31T23:59:59Z").unwrap().to_utc();
        assert_eq!(read_end(&Value::from("2027-01-31")), Some(t));
        assert_eq!(read_end(&Value::from("2027-01-31T23:59:59Z")), Some(t));
        assert_eq!(read_end(&Value::from(t.timestamp_millis())), Some(t));
        assert_eq!(read_end(&Value::from("soon")), None);
    }

    #[test]
    fn two_rules_on_one_video_grant_the_more_generous_settings() {
        let t1 = DateTime::parse_from_rfc3339("2027-01-01T00:00:00Z").unwrap().to_utc();
        let t2 = DateTime::parse_from_rfc3339("2028-01-01T00:00:00Z").unwrap().to_utc();
        let g = |p: Option<i64>, e: Ends| DesiredGrant { allowed_plays: p, ends: e };
        assert_eq!(g(Some(3), Ends::At(t1)).merge(g(Some(5), Ends::At(t2))), g(Some(5), Ends::At(t2)));
        assert_eq!(g(None, Ends::At(t1)).merge(g(Some(5), Ends::Never)), g(None, Ends::Never));
    }

    #[test]
    fn an_existing_grant_changes_only_where_it_differs() {
        let t = DateTime::parse_from_rfc3339("2027-01-01T00:00:00Z").unwrap().to_utc();
        let grant = |plays: Option<i64>, ends: Option<DateTime<Utc>>| AccessGrant {
            id: "g".into(),
            allowed_plays: plays,
            access_ends_at: ends.map(shared::sprout::Timestamp),
            ..Default::default()
        };
        let want = DesiredGrant { allowed_plays: Some(5), ends: Ends::At(t) };
        assert_eq!(want.changes(&grant(Some(5), Some(t))), None);
        let c = want.changes(&grant(Some(3), Some(t))).unwrap();
        assert_eq!((c.allowed_plays, c.access_ends_at), (Some(Some(5)), None));
        let days = DesiredGrant { allowed_plays: None, ends: Ends::DaysAfterGrant(30) };
        assert_eq!(days.changes(&grant(None, Some(t))), None, "an end counted from the grant stays");
        let never = DesiredGrant { allowed_plays: None, ends: Ends::Never };
        assert_eq!(never.changes(&grant(None, Some(t))).unwrap().access_ends_at, Some(None));
    }
}
