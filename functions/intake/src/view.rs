//! The one-view read of a contact.

use std::sync::Arc;

use serde_json::{Value, json};
use shared::ghl::{Contact, GhlClient, GhlError};
use shared::identity::{ConflictRecord, Email, conflict_value_name};
use shared::mapping::Mapping;
use shared::sprout::SproutClient;
use shared::state::{StateError, StateStore};

/// What the one-view shows of the person's SproutVideo access, when the mapping has access
/// rules: its login, the videos granted to it, and the rules the contact's tags meet.
pub struct AccessView<'a> {
    pub sprout: &'a SproutClient,
    pub mapping: &'a Mapping,
}

/// Shown in place of the password field's value.
pub const REDACTED: &str = "[redacted]";

/// No GHL retry of a one-view read starts this long after the read began (the intake's function
/// times out after 10 s): a person gets a JSON answer asking to retry, not a gateway timeout.
pub const VIEW_RETRY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The one read of the state table the intake makes: a person's identity conflict record
/// (its IAM policy allows reading only those items).
#[derive(Clone)]
pub struct ConflictReader(Arc<dyn StateStore>);

impl ConflictReader {
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        Self(store)
    }

    /// The person's recorded conflict; a record that cannot be read back counts as none.
    pub async fn get(&self, email: &Email) -> Result<Option<ConflictRecord>, StateError> {
        let raw = self.0.get_value(&conflict_value_name(email)).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }
}

/// Why the one-view could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("GHL could not be read: {0}")]
    Ghl(#[from] GhlError),
    #[error("the sync's records could not be read: {0}")]
    State(#[from] StateError),
}

impl ViewError {
    /// Whether asking again later can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Ghl(e) => e.is_retryable(),
            Self::State(e) => e.is_retryable(),
        }
    }
}

/// The one-view read of a contact: the GHL contact, its tasks, notes and appointments, fetched
/// concurrently, and what the sync knows of the person (`sync.identity_conflict`: the identifier
/// another contact holds, when the last write had to leave it out). `None` when GHL has no
/// contact with this email.
///
/// With `access`, the view also shows `sproutvideo`: the login with the person's email (or
/// null), the video ids granted to it, and the access rules the contact's tags meet; when
/// SproutVideo cannot be read, `{"error": …}` there instead (the rest of the view stands). The
/// value of the mapping's password field is never shown.
pub async fn contact_view(
    ghl: &GhlClient,
    conflicts: &ConflictReader,
    access: Option<AccessView<'_>>,
    email: &Email,
) -> Result<Option<Value>, ViewError> {
    let Some(found) = ghl.find_duplicate(Some(email.as_str()), None).await? else {
        return Ok(None);
    };
    let id = found.id.as_str();
    let (contact, tasks, notes, appointments, conflict) = tokio::join!(
        ghl.get_contact(id),
        ghl.list_tasks(id),
        ghl.list_notes(id),
        ghl.list_appointments(id),
        conflicts.get(email),
    );
    let conflict = conflict?;
    let mut contact = contact?;
    let mut view = json!({
        "tasks": tasks?,
        "notes": notes?,
        "appointments": appointments?,
        "sync": { "identity_conflict": conflict },
    });
    if let Some(a) = access {
        redact_password(ghl, a.mapping, &mut contact).await?;
        view["sproutvideo"] = match sprout_access(a.sprout, email).await {
            Ok(mut v) => {
                let met: Vec<&str> = a.mapping.access_met(&contact.tags).iter().map(|r| r.tag.as_str()).collect();
                v["access_rules_met"] = json!(met);
                v
            }
            Err(e) => json!({ "error": e.to_string() }),
        };
    }
    view["contact"] = json!(contact);
    Ok(Some(view))
}

/// Replaces the password field's value (GHL holds it so a workflow can send it; the view does
/// not show it).
async fn redact_password(ghl: &GhlClient, mapping: &Mapping, contact: &mut Contact) -> Result<(), GhlError> {
    let Some(key) = mapping.password_field() else { return Ok(()) };
    let defs = ghl.custom_fields().await?;
    let Some(id) = defs.into_iter().find(|d| d.field_key.as_deref() == Some(key)).map(|d| d.id) else {
        return Ok(());
    };
    for f in contact.custom_fields.iter_mut().filter(|f| f.id == id) {
        f.value = json!(REDACTED);
    }
    Ok(())
}

/// The person's login and the videos granted to it.
async fn sprout_access(sprout: &SproutClient, email: &Email) -> Result<Value, shared::sprout::SproutError> {
    let login = sprout
        .list_logins()
        .await?
        .into_iter()
        .find(|l| l.email.as_deref().is_some_and(|e| e.trim().eq_ignore_ascii_case(email.as_str())));
    let Some(login) = login else {
        return Ok(json!({ "login": null, "granted_video_ids": [] }));
    };
    let mut videos: Vec<String> = sprout
        .list_access_grants()
        .await?
        .into_iter()
        .filter(|g| g.login_id.as_deref() == Some(login.id.as_str()))
        .filter_map(|g| g.video_id)
        .collect();
    videos.sort();
    Ok(json!({ "login": { "id": login.id, "email": login.email }, "granted_video_ids": videos }))
}
