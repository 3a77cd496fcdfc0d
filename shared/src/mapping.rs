//! The one place SproutVideo and event facts become GHL fields, tags, notes and tasks.
//!
//! A [`Mapping`] is loaded once from TOML (the embedded default, or `SYNC_MAPPING_FILE`), checked
//! as it is parsed, and then only produces: the desired GHL state of a person
//! ([`DesiredContact`], with a deterministic hash) and the actions engagement triggers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::RwLock;

use crate::commands::DesiredContact;
use crate::ghl::{CustomFieldInput, GhlClient, GhlError};
use crate::identity::{Email, IdentityError, Phone};

/// The mapping every binary embeds.
pub const DEFAULT_MAPPING: &str = include_str!("../../config/mapping.default.toml");

#[derive(Debug, Error)]
pub enum MappingError {
    #[error("mapping file is invalid: {0}")]
    InvalidConfig(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("refusing to match on the shared address '{0}'")]
    SharedIdentifier(String),
    #[error("custom field key '{0}' does not exist in the GHL location; create it or fix the mapping")]
    UnknownCustomField(String),
    #[error("custom field '{key}' expects {data_type}, got {value}")]
    CustomFieldType { key: String, data_type: String, value: String },
    #[error("could not read custom-field definitions from GHL: {0}")]
    Ghl(#[from] GhlError),
}

impl MappingError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Ghl(e) if e.is_retryable())
    }
}

/// Fields an event may carry about a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceField {
    FirstName,
    LastName,
    Name,
    Phone,
    Company,
}

/// GHL standard fields the sync may own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum GhlField {
    #[serde(rename = "firstName")]
    FirstName,
    #[serde(rename = "lastName")]
    LastName,
    #[serde(rename = "phone")]
    Phone,
    #[serde(rename = "companyName")]
    CompanyName,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagTemplates {
    #[serde(default)]
    pub login: Option<String>,
    #[serde(default)]
    pub lead: Option<String>,
    #[serde(default)]
    pub watched: Option<String>,
    #[serde(default)]
    pub completed: Option<String>,
    #[serde(default = "default_completed")]
    pub completed_percent: f64,
}

fn default_completed() -> f64 {
    90.0
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refuse {
    #[serde(default)]
    pub email_local_parts: Vec<String>,
    #[serde(default)]
    pub phones: Vec<String>,
}

/// What the sync does when a person's phone belongs to another GHL contact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhoneConflict {
    /// Write the person without the phone and record the conflict.
    #[default]
    WriteWithoutPhone,
    /// Write nothing: park the command in the dead-letter queue with the conflict as its reason.
    Park,
}

/// How the sync treats identifiers GHL holds on other contacts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityRules {
    #[serde(default)]
    pub on_phone_conflict: PhoneConflict,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRule {
    pub title: String,
    #[serde(default)]
    pub body: Option<String>,
    pub due_in_hours: u32,
    /// GHL user id the task is assigned to.
    #[serde(default)]
    pub assigned_to: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub min_percent: f64,
    /// SproutVideo tag ids; empty means every video.
    #[serde(default)]
    pub video_tags: Vec<String>,
    #[serde(default)]
    pub add_tags: Vec<String>,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub task: Option<TaskRule>,
}

/// An access rule: a GHL contact carrying `tag` gets a SproutVideo login for its email and
/// access grants to the rule's videos; once the tag is gone the grants are revoked.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// The GHL tag that grants access (compared as GHL stores tags: trimmed, lower-cased).
    pub tag: String,
    /// SproutVideo video ids.
    #[serde(default)]
    pub video_ids: Vec<String>,
    /// SproutVideo tag ids: every video carrying one of them (read when the rule is applied).
    #[serde(default)]
    pub video_tag_ids: Vec<String>,
    /// Plays each grant allows; none means unlimited.
    #[serde(default)]
    pub allowed_plays: Option<u32>,
    /// A GHL custom field (`contact.<name>`) holding the date or time access ends; a date ends
    /// at the end of that day (UTC). An empty field means no end.
    #[serde(default)]
    pub access_ends_at_field: Option<String>,
    /// Access ends this many days after the grant is made.
    #[serde(default)]
    pub access_days: Option<u32>,
    /// The GHL custom field (`contact.<name>`) the new login's password is written to, once,
    /// before the login is made (so a GHL workflow can send it).
    pub password_field: String,
    /// Delete the person's login when they meet no access rule any more (their grants go with
    /// it). Off by default: the login stays, without grants.
    #[serde(default)]
    pub delete_login_on_revoke: bool,
}

impl AccessRule {
    /// The tag as GHL stores it.
    pub fn normalised_tag(&self) -> String {
        normalise_tag(&self.tag)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    #[serde(default)]
    pub source: Option<String>,
    pub default_region: String,
    pub sync_tag: String,
    #[serde(default)]
    pub fields: BTreeMap<SourceField, GhlField>,
    pub tags: TagTemplates,
    #[serde(default)]
    pub custom_fields: BTreeMap<String, String>,
    #[serde(default)]
    pub refuse: Refuse,
    #[serde(default)]
    pub identity: IdentityRules,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Course access from GHL tags (`[[access]]`).
    #[serde(default)]
    pub access: Vec<AccessRule>,
}

/// What an event or SproutVideo says about a person, before mapping.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactInput {
    pub email: String,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub company: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Values by GHL custom-field key.
    #[serde(default)]
    pub custom_fields: BTreeMap<String, Value>,
}

/// How SproutVideo knows the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A viewer login.
    Login,
    /// An email captured by the player (`vemail`), or a lead event.
    Lead,
    /// Any other event.
    Event,
}

/// One video watch by one person.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchFacts {
    pub video_id: String,
    pub video_title: String,
    /// SproutVideo tag ids of the video.
    pub video_tags: Vec<String>,
    /// 0–100.
    pub percent: f64,
    pub at: DateTime<Utc>,
}

/// A follow-up task a rule asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTask {
    pub external_id: String,
    pub title: String,
    pub body: Option<String>,
    pub due_at: DateTime<Utc>,
    pub assigned_to: Option<String>,
}

/// What one watch means in GHL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlannedActions {
    pub tags: BTreeSet<String>,
    pub custom_fields: BTreeMap<String, Value>,
    /// (rule name, note body)
    pub notes: Vec<(String, String)>,
    /// (rule name, task)
    pub tasks: Vec<(String, PlannedTask)>,
}

impl Mapping {
    /// Parses and checks a mapping document.
    pub fn from_toml(text: &str) -> Result<Self, MappingError> {
        let m: Mapping = toml::from_str(text).map_err(|e| MappingError::InvalidConfig(e.to_string()))?;
        m.check()?;
        Ok(m)
    }

    pub fn default_mapping() -> Self {
        Self::from_toml(DEFAULT_MAPPING).expect("the embedded mapping is valid")
    }

    fn check(&self) -> Result<(), MappingError> {
        let bad = |m: String| Err(MappingError::InvalidConfig(m));
        if self.default_region.parse::<phonenumber::country::Id>().is_err() {
            return bad(format!("default_region '{}' is not an ISO 3166 country code", self.default_region));
        }
        if self.sync_tag.trim().is_empty() {
            return bad("sync_tag must not be empty".into());
        }
        if !(0.0..=100.0).contains(&self.tags.completed_percent) {
            return bad("tags.completed_percent must be between 0 and 100".into());
        }
        let mut names = BTreeSet::new();
        for r in &self.rules {
            if !names.insert(r.name.as_str()) {
                return bad(format!("rule name '{}' is used twice", r.name));
            }
            if !(0.0..=100.0).contains(&r.min_percent) {
                return bad(format!("rule '{}': min_percent must be between 0 and 100", r.name));
            }
        }
        for key in self.custom_fields.keys() {
            if !key.starts_with("contact.") {
                return bad(format!("custom field key '{key}' must look like contact.<name>"));
            }
        }
        self.check_access()
    }

    fn check_access(&self) -> Result<(), MappingError> {
        let bad = |m: String| Err(MappingError::InvalidConfig(m));
        let field_key = |k: &str| k.strip_prefix("contact.").is_some_and(|n| !n.trim().is_empty() && !n.contains(' '));
        let mut tags = BTreeSet::new();
        for (i, r) in self.access.iter().enumerate() {
            let at = format!("[[access]] #{} (tag '{}')", i + 1, r.tag);
            let tag = r.normalised_tag();
            if tag.is_empty() {
                return bad(format!("[[access]] #{}: tag must name the GHL tag that grants access", i + 1));
            }
            if !tags.insert(tag.clone()) {
                return bad(format!("{at}: another [[access]] rule has the tag '{tag}'; merge the two rules"));
            }
            if r.video_ids.is_empty() && r.video_tag_ids.is_empty() {
                return bad(format!(
                    "{at}: name the videos: video_ids (SproutVideo video ids) and/or video_tag_ids (SproutVideo tag ids)"
                ));
            }
            if r.video_ids.iter().chain(&r.video_tag_ids).any(|v| v.trim().is_empty() || v.trim() != v) {
                return bad(format!("{at}: video_ids and video_tag_ids must not hold blank or padded ids"));
            }
            if r.allowed_plays == Some(0) {
                return bad(format!("{at}: allowed_plays must be at least 1 (leave it out for unlimited plays)"));
            }
            if r.access_days == Some(0) {
                return bad(format!("{at}: access_days must be at least 1 (leave it out for no end)"));
            }
            if r.access_days.is_some() && r.access_ends_at_field.is_some() {
                return bad(format!("{at}: set access_days or access_ends_at_field, not both"));
            }
            if let Some(f) = &r.access_ends_at_field
                && !field_key(f)
            {
                return bad(format!(
                    "{at}: access_ends_at_field '{f}' must be a GHL custom field key like contact.<name>"
                ));
            }
            if !field_key(&r.password_field) {
                return bad(format!(
                    "{at}: password_field '{}' must be a GHL custom field key like contact.<name>",
                    r.password_field
                ));
            }
            if r.access_ends_at_field.as_deref() == Some(r.password_field.as_str()) {
                return bad(format!("{at}: password_field and access_ends_at_field must be different fields"));
            }
            if self.custom_fields.contains_key(&r.password_field) {
                return bad(format!(
                    "{at}: password_field '{}' is also written by [custom_fields]; give the password its own field",
                    r.password_field
                ));
            }
            if let Some(first) = self.access.first()
                && first.password_field != r.password_field
            {
                return bad(format!(
                    "{at}: every [[access]] rule must use one password_field (a person has one SproutVideo \
                     login): '{}' here, '{}' in the first rule",
                    r.password_field, first.password_field
                ));
            }
        }
        Ok(())
    }

    /// The access rules a contact with `tags` meets.
    pub fn access_met<'a>(&'a self, tags: &[String]) -> Vec<&'a AccessRule> {
        let have: BTreeSet<String> = tags.iter().map(|t| normalise_tag(t)).collect();
        self.access.iter().filter(|r| have.contains(&r.normalised_tag())).collect()
    }

    /// The custom field the password of a new login goes to (one for every rule).
    pub fn password_field(&self) -> Option<&str> {
        self.access.first().map(|r| r.password_field.as_str())
    }

    /// Normalises an email, refusing blank, malformed and shared role addresses.
    pub fn email(&self, raw: &str) -> Result<Email, MappingError> {
        let e = Email::parse(raw)?;
        if self.refuse.email_local_parts.iter().any(|p| p.eq_ignore_ascii_case(e.local_part())) {
            return Err(MappingError::SharedIdentifier(e.to_string()));
        }
        Ok(e)
    }

    /// Normalises a phone to E.164. An invalid or shared phone is dropped with a logged reason.
    pub fn phone(&self, raw: Option<&str>) -> Option<Phone> {
        let raw = raw.map(str::trim).filter(|p| !p.is_empty())?;
        match Phone::parse(raw, &self.default_region) {
            Ok(p)
                if self.refuse.phones.iter().any(|r| Phone::parse(r, &self.default_region).is_ok_and(|rp| rp == p)) =>
            {
                tracing::warn!(phone = %crate::identity::redact_phone(raw), "dropping a shared phone number");
                None
            }
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(reason = %e, "dropping an invalid phone number");
                None
            }
        }
    }

    /// The desired GHL state of the person an input describes.
    pub fn desired(&self, input: &ContactInput, origin: Origin) -> Result<DesiredContact, MappingError> {
        let mut d = DesiredContact::new(self.email(&input.email)?);
        d.source = self.source.clone();
        let clean = |v: &Option<String>| v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
        let (mut first, mut last) = (clean(&input.first_name), clean(&input.last_name));
        if first.is_none()
            && last.is_none()
            && let Some(name) = clean(&input.name)
        {
            match name.split_once(' ') {
                Some((f, l)) => (first, last) = (Some(f.to_string()), Some(l.trim().to_string())),
                None => first = Some(name),
            }
        }
        for (src, dst) in self.effective_fields() {
            let value = match src {
                SourceField::FirstName => first.clone(),
                SourceField::LastName => last.clone(),
                SourceField::Name => clean(&input.name),
                SourceField::Company => clean(&input.company),
                SourceField::Phone => clean(&input.phone),
            };
            let Some(value) = value else { continue };
            match dst {
                GhlField::FirstName => d.first_name = Some(value),
                GhlField::LastName => d.last_name = Some(value),
                GhlField::CompanyName => d.company_name = Some(value),
                GhlField::Phone => d.phone = self.phone(Some(&value)),
            }
        }
        d.tags.insert(self.sync_tag.clone());
        let origin_tag = match origin {
            Origin::Login => self.tags.login.clone(),
            Origin::Lead => self.tags.lead.clone(),
            Origin::Event => None,
        };
        d.tags.extend(origin_tag);
        d.tags.extend(input.tags.iter().map(|t| normalise_tag(t)).filter(|t| !t.is_empty()));
        for (k, v) in &input.custom_fields {
            d.custom_fields.insert(k.clone(), v.clone());
        }
        Ok(d)
    }

    fn effective_fields(&self) -> Vec<(SourceField, GhlField)> {
        if self.fields.is_empty() {
            vec![
                (SourceField::FirstName, GhlField::FirstName),
                (SourceField::LastName, GhlField::LastName),
                (SourceField::Phone, GhlField::Phone),
                (SourceField::Company, GhlField::CompanyName),
            ]
        } else {
            self.fields.iter().map(|(s, d)| (*s, *d)).collect()
        }
    }

    /// Tags, custom fields, notes and tasks one watch triggers.
    pub fn watch(&self, email: &Email, w: &WatchFacts) -> PlannedActions {
        let percent = w.percent.clamp(0.0, 100.0);
        let vars = vars_for(email, w, percent);
        let mut out = PlannedActions::default();
        if let Some(t) = &self.tags.watched {
            out.tags.extend(render(t, &vars).map(|t| normalise_tag(&t)));
        }
        if percent >= self.tags.completed_percent
            && let Some(t) = &self.tags.completed
        {
            out.tags.extend(render(t, &vars).map(|t| normalise_tag(&t)));
        }
        for (key, template) in &self.custom_fields {
            if let Some(v) = render(template, &vars) {
                out.custom_fields.insert(key.clone(), Value::String(v));
            }
        }
        for r in &self.rules {
            let video_ok = r.video_tags.is_empty() || r.video_tags.iter().any(|t| w.video_tags.contains(t));
            if !video_ok || percent < r.min_percent {
                continue;
            }
            out.tags.extend(r.add_tags.iter().map(|t| normalise_tag(t)));
            if let Some(n) = &r.note
                && let Some(body) = render(n, &vars)
            {
                out.notes.push((r.name.clone(), body));
            }
            if let Some(t) = &r.task {
                out.tasks.push((
                    r.name.clone(),
                    PlannedTask {
                        external_id: format!("rule:{}:{}", r.name, w.video_id),
                        title: render(&t.title, &vars).unwrap_or_else(|| t.title.clone()),
                        body: t.body.as_ref().and_then(|b| render(b, &vars)),
                        due_at: w.at + Duration::hours(t.due_in_hours as i64),
                        assigned_to: t.assigned_to.clone(),
                    },
                ));
            }
        }
        out
    }

    /// Custom fields over a person's whole history (used by the reconciler).
    pub fn summary_fields(
        &self,
        videos_watched: usize,
        last: Option<&WatchFacts>,
        email: &Email,
    ) -> BTreeMap<String, Value> {
        let mut vars: HashMap<&str, String> = HashMap::new();
        vars.insert("videos_watched", videos_watched.to_string());
        if let Some(w) = last {
            vars.extend(vars_for(email, w, w.percent.clamp(0.0, 100.0)));
        }
        self.custom_fields.iter().filter_map(|(k, t)| render(t, &vars).map(|v| (k.clone(), Value::String(v)))).collect()
    }
}

fn vars_for(email: &Email, w: &WatchFacts, percent: f64) -> HashMap<&'static str, String> {
    HashMap::from([
        ("video_title", w.video_title.clone()),
        ("video_id", w.video_id.clone()),
        ("percent", format!("{}", percent.round() as i64)),
        ("date", w.at.format("%Y-%m-%d").to_string()),
        ("last_activity", w.at.format("%Y-%m-%d").to_string()),
        ("email", email.to_string()),
    ])
}

/// Fills `{name}` placeholders; `None` when a placeholder has no value.
pub fn render(template: &str, vars: &HashMap<&str, String>) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after.find('}')?;
        out.push_str(vars.get(&after[..end])?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// GHL stores tags lower-cased and trimmed.
pub fn normalise_tag(t: &str) -> String {
    t.trim().to_lowercase()
}

/// Resolves custom-field keys to ids and types through GHL, cached; refetched once when a key
/// is unknown (a field may have been created since).
pub struct CustomFieldCatalog {
    client: GhlClient,
    cache: RwLock<Option<HashMap<String, (String, String)>>>,
}

impl CustomFieldCatalog {
    pub fn new(client: GhlClient) -> Self {
        Self { client, cache: RwLock::new(None) }
    }

    async fn load(&self) -> Result<HashMap<String, (String, String)>, MappingError> {
        let defs = self.client.custom_fields().await?;
        let map: HashMap<_, _> = defs
            .into_iter()
            .filter_map(|d| Some((d.field_key?, (d.id, d.data_type.unwrap_or_else(|| "TEXT".into())))))
            .collect();
        *self.cache.write().await = Some(map.clone());
        Ok(map)
    }

    /// A field's id and data type by its key (refetched once when the key is unknown).
    pub async fn definition(&self, key: &str) -> Result<(String, String), MappingError> {
        let cached = self.cache.read().await.clone();
        let mut defs = match cached {
            Some(d) => d,
            None => self.load().await?,
        };
        if !defs.contains_key(key) {
            defs = self.load().await?;
        }
        defs.get(key).cloned().ok_or_else(|| MappingError::UnknownCustomField(key.to_string()))
    }

    /// `{id, field_value}` items for the given values by key, typed by each field's data type.
    pub async fn resolve(&self, values: &BTreeMap<String, Value>) -> Result<Vec<CustomFieldInput>, MappingError> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        // Bind the cached copy first: the read guard must be gone before `load` takes the write lock.
        let cached = self.cache.read().await.clone();
        let mut defs = match cached {
            Some(d) => d,
            None => self.load().await?,
        };
        if values.keys().any(|k| !defs.contains_key(k)) {
            defs = self.load().await?;
        }
        values
            .iter()
            .map(|(key, value)| {
                let (id, data_type) = defs.get(key).ok_or_else(|| MappingError::UnknownCustomField(key.clone()))?;
                Ok(CustomFieldInput { id: id.clone(), field_value: typed_value(key, data_type, value)? })
            })
            .collect()
    }
}

/// Shapes a value for a field's data type: number for NUMERICAL/MONETORY, string list for
/// CHECKBOX/MULTIPLE_OPTIONS, string otherwise.
pub fn typed_value(key: &str, data_type: &str, value: &Value) -> Result<Value, MappingError> {
    let mismatch = || MappingError::CustomFieldType {
        key: key.to_string(),
        data_type: data_type.to_string(),
        value: value.to_string(),
    };
    Ok(match data_type {
        "NUMERICAL" | "MONETORY" => match value {
            Value::Number(_) => value.clone(),
            Value::String(s) => {
                let n: f64 = s.trim().parse().map_err(|_| mismatch())?;
                serde_json::Number::from_f64(n).map(Value::Number).ok_or_else(mismatch)?
            }
            _ => return Err(mismatch()),
        },
        "CHECKBOX" | "MULTIPLE_OPTIONS" => match value {
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) => Ok(Value::String(s.clone())),
                        Value::Number(n) => Ok(Value::String(n.to_string())),
                        _ => Err(mismatch()),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Value::String(s) => Value::Array(
                s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(|p| Value::String(p.to_string())).collect(),
            ),
            _ => return Err(mismatch()),
        },
        "FILE" => match value {
            Value::Object(_) => value.clone(),
            _ => return Err(mismatch()),
        },
        _ => match value {
            Value::String(_) => value.clone(),
            Value::Number(n) => Value::String(n.to_string()),
            Value::Bool(b) => Value::String(b.to_string()),
            _ => return Err(mismatch()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m() -> Mapping {
        Mapping::default_mapping()
    }

    fn input(email: &str) -> ContactInput {
        ContactInput { email: email.into(), ..Default::default() }
    }

    #[test]
    fn the_embedded_default_loads() {
        let m = m();
        assert_eq!(m.sync_tag, "sproutvideo");
        assert_eq!(m.rules.len(), 1);
    }

    #[test]
    fn bad_mapping_files_are_refused_with_a_reason() {
        let cases = [
            ("default_region = \"ZZ\"\nsync_tag = \"s\"\n[tags]\n", "default_region"),
            ("default_region = \"US\"\nsync_tag = \"\"\n[tags]\n", "sync_tag"),
            ("default_region = \"US\"\nsync_tag = \"s\"\n[tags]\n[custom_fields]\nfoo = \"x\"\n", "contact."),
            ("default_region = \"US\"\nsync_tag = \"s\"\nsurprise = 1\n[tags]\n", "surprise"),
            ("default_region = \"US\"\nsync_tag = \"s\"\n[fields]\nfirst_name = \"gender\"\n[tags]\n", "gender"),
        ];
        for (text, needle) in cases {
            let e = Mapping::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
    }

    const ACCESS_BASE: &str = "default_region = \"US\"\nsync_tag = \"s\"\n[tags]\n";

    #[test]
    fn access_rules_load_and_say_which_tags_they_answer() {
        let text = format!(
            "{ACCESS_BASE}[[access]]\ntag = \" Course-A \"\nvideo_ids = [\"v1\", \"v2\"]\nallowed_plays = 5\n\
             access_days = 30\npassword_field = \"contact.sv_password\"\n\
             [[access]]\ntag = \"course-b\"\nvideo_tag_ids = [\"t1\"]\naccess_ends_at_field = \"contact.course_b_ends\"\n\
             password_field = \"contact.sv_password\"\ndelete_login_on_revoke = true\n"
        );
        let m = Mapping::from_toml(&text).unwrap();
        assert_eq!(m.access.len(), 2);
        assert_eq!(m.access[0].allowed_plays, Some(5));
        assert!(!m.access[0].delete_login_on_revoke, "the login stays by default");
        assert!(m.access[1].delete_login_on_revoke);
        let met: Vec<&str> = m.access_met(&["course-a".into(), "VIP".into()]).iter().map(|r| r.tag.as_str()).collect();
        assert_eq!(met, [" Course-A "]);
        assert!(m.access_met(&["course".into()]).is_empty());
        assert_eq!(m.password_field(), Some("contact.sv_password"));
        assert_eq!(Mapping::default_mapping().password_field(), None, "no access rules by default");
    }

    #[test]
    fn bad_access_rules_are_refused_saying_what_to_fix() {
        let rule = |body: &str| format!("{ACCESS_BASE}[[access]]\n{body}\n");
        let pw = "password_field = \"contact.pw\"";
        let cases = [
            (rule(&format!("tag = \" \"\nvideo_ids = [\"v1\"]\n{pw}")), "tag must name"),
            (rule(&format!("tag = \"a\"\n{pw}")), "name the videos"),
            (rule(&format!("tag = \"a\"\nvideo_ids = [\" v1\"]\n{pw}")), "blank or padded"),
            (
                rule(&format!("tag = \"a\"\nvideo_ids = [\"v1\"]\nallowed_plays = 0\n{pw}")),
                "allowed_plays must be at least 1",
            ),
            (rule(&format!("tag = \"a\"\nvideo_ids = [\"v1\"]\nallowed_plays = -1\n{pw}")), "allowed_plays"),
            (
                rule(&format!("tag = \"a\"\nvideo_ids = [\"v1\"]\naccess_days = 0\n{pw}")),
                "access_days must be at least 1",
            ),
            (
                rule(&format!(
                    "tag = \"a\"\nvideo_ids = [\"v1\"]\naccess_days = 3\naccess_ends_at_field = \"contact.e\"\n{pw}"
                )),
                "not both",
            ),
            (
                rule(&format!("tag = \"a\"\nvideo_ids = [\"v1\"]\naccess_ends_at_field = \"ends\"\n{pw}")),
                "contact.<name>",
            ),
            (
                rule("tag = \"a\"\nvideo_ids = [\"v1\"]\npassword_field = \"sv_password\""),
                "password_field 'sv_password'",
            ),
            (rule("tag = \"a\"\nvideo_ids = [\"v1\"]"), "password_field"),
            (rule(&format!("tag = \"a\"\nvideo_ids = [\"v1\"]\n{pw}\nsurprise = 1")), "surprise"),
            (
                format!(
                    "{}[[access]]\ntag = \"A\"\nvideo_ids = [\"v2\"]\n{pw}\n",
                    rule(&format!("tag = \"a\"\nvideo_ids = [\"v1\"]\n{pw}"))
                ),
                "merge the two rules",
            ),
            (
                format!(
                    "{}[[access]]\ntag = \"b\"\nvideo_ids = [\"v2\"]\npassword_field = \"contact.other\"\n",
                    rule(&format!("tag = \"a\"\nvideo_ids = [\"v1\"]\n{pw}"))
                ),
                "one password_field",
            ),
        ];
        for (text, needle) in cases {
            let e = Mapping::from_toml(&text).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
    }

    #[test]
    fn people_are_mapped_table_driven() {
        struct Case {
            input: ContactInput,
            origin: Origin,
            email: &'static str,
            phone: Option<&'static str>,
            first: Option<&'static str>,
            last: Option<&'static str>,
            tags: &'static [&'static str],
        }
        let cases = vec![
            Case {
                input: ContactInput {
                    email: "  ADA@Example.com ".into(),
                    first_name: Some("Ada".into()),
                    last_name: Some(" Lovelace ".into()),
                    phone: Some("(415) 555-2671".into()),
                    ..Default::default()
                },
                origin: Origin::Lead,
                email: "ada@example.com",
                phone: Some("+14155552671"),
                first: Some("Ada"),
                last: Some("Lovelace"),
                tags: &["sproutvideo", "sv-lead"],
            },
            Case {
                input: ContactInput {
                    email: "grace@example.com".into(),
                    name: Some("Grace Brewster Hopper".into()),
                    phone: Some("12".into()),
                    tags: vec![" VIP ".into()],
                    ..Default::default()
                },
                origin: Origin::Login,
                email: "grace@example.com",
                phone: None,
                first: Some("Grace"),
                last: Some("Brewster Hopper"),
                tags: &["sproutvideo", "sv-login", "vip"],
            },
            Case {
                input: input("nameless@example.com"),
                origin: Origin::Event,
                email: "nameless@example.com",
                phone: None,
                first: None,
                last: None,
                tags: &["sproutvideo"],
            },
        ];
        for c in cases {
            let d = m().desired(&c.input, c.origin).unwrap();
            assert_eq!(d.email.as_str(), c.email);
            assert_eq!(d.phone.as_ref().map(|p| p.as_str()), c.phone);
            assert_eq!(d.first_name.as_deref(), c.first);
            assert_eq!(d.last_name.as_deref(), c.last);
            assert_eq!(d.tags.iter().map(String::as_str).collect::<Vec<_>>(), c.tags);
            assert_eq!(d.source.as_deref(), Some("SproutVideo"));
        }
    }

    #[test]
    fn blank_bad_and_shared_identifiers_are_refused() {
        for bad in ["", "   ", "nope", "info@example.com", "NoReply@example.com"] {
            assert!(m().desired(&input(bad), Origin::Lead).is_err(), "{bad}");
        }
        let mut with_shared_phone = Mapping::default_mapping();
        with_shared_phone.refuse.phones = vec!["+1 415 555 2671".into()];
        let d = with_shared_phone
            .desired(&ContactInput { phone: Some("4155552671".into()), ..input("a@example.com") }, Origin::Lead)
            .unwrap();
        assert_eq!(d.phone, None);
    }

    #[test]
    fn watching_triggers_rules_and_templates() {
        let email = Email::parse("ada@example.com").unwrap();
        let at = DateTime::parse_from_rfc3339("2026-11-29T09:00:00Z").unwrap().to_utc();
        let w = WatchFacts {
            video_id: "v1".into(),
            video_title: "Pricing walkthrough".into(),
            video_tags: vec![],
            percent: 87.4,
            at,
        };
        let a = m().watch(&email, &w);
        assert!(a.tags.contains("sv-watched:pricing walkthrough"));
        assert!(!a.tags.iter().any(|t| t.starts_with("sv-completed")));
        assert!(a.tags.contains("sv-engaged"));
        assert_eq!(a.notes, vec![("watched-most".into(), "Watched 87% of 'Pricing walkthrough' on 2026-11-29".into())]);
        let (_, task) = &a.tasks[0];
        assert_eq!(task.due_at, at + Duration::hours(24));
        assert_eq!(task.external_id, "rule:watched-most:v1");
        let low = m().watch(&email, &WatchFacts { percent: 10.0, ..w.clone() });
        assert!(low.notes.is_empty() && low.tasks.is_empty());
        let done = m().watch(&email, &WatchFacts { percent: 100.0, ..w });
        assert!(done.tags.contains("sv-completed:pricing walkthrough"));
    }

    #[test]
    fn rules_can_be_limited_to_tagged_videos() {
        let mut m = Mapping::default_mapping();
        m.rules[0].video_tags = vec!["tag-pricing".into()];
        let email = Email::parse("a@example.com").unwrap();
        let w = WatchFacts {
            video_id: "v".into(),
            video_title: "T".into(),
            video_tags: vec!["other".into()],
            percent: 99.0,
            at: Utc::now(),
        };
        assert!(m.watch(&email, &w).notes.is_empty());
        let w = WatchFacts { video_tags: vec!["tag-pricing".into()], ..w };
        assert_eq!(m.watch(&email, &w).notes.len(), 1);
    }

    #[test]
    fn custom_field_values_follow_their_type() {
        let cases = [
            ("TEXT", json!(12), Some(json!("12"))),
            ("NUMERICAL", json!("12.5"), Some(json!(12.5))),
            ("MONETORY", json!(3), Some(json!(3))),
            ("NUMERICAL", json!("lots"), None),
            ("CHECKBOX", json!("a, b"), Some(json!(["a", "b"]))),
            ("MULTIPLE_OPTIONS", json!(["x", 2]), Some(json!(["x", "2"]))),
            ("FILE", json!("x"), None),
            ("SINGLE_OPTIONS", json!("gold"), Some(json!("gold"))),
            ("LARGE_TEXT", json!({"a": 1}), None),
        ];
        for (dt, input, want) in cases {
            assert_eq!(typed_value("contact.k", dt, &input).ok(), want, "{dt} {input}");
        }
    }

    #[test]
    fn a_phone_conflict_writes_without_the_phone_unless_the_mapping_parks_it() {
        assert_eq!(m().identity.on_phone_conflict, PhoneConflict::WriteWithoutPhone);
        let parked = Mapping::from_toml(
            "default_region = \"US\"\nsync_tag = \"s\"\n[tags]\n[identity]\non_phone_conflict = \"park\"\n",
        )
        .unwrap();
        assert_eq!(parked.identity.on_phone_conflict, PhoneConflict::Park);
        let e = Mapping::from_toml(
            "default_region = \"US\"\nsync_tag = \"s\"\n[tags]\n[identity]\non_phone_conflict = \"merge\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("merge"), "{e}");
    }

    #[test]
    fn render_needs_every_placeholder() {
        let vars = HashMap::from([("a", "1".to_string())]);
        assert_eq!(render("x{a}y", &vars).as_deref(), Some("x1y"));
        assert_eq!(render("x{b}y", &vars), None);
        assert_eq!(render("plain", &vars).as_deref(), Some("plain"));
    }
}
