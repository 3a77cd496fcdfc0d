//! The one-view read of a contact.

use serde_json::{Value, json};
use shared::ghl::{GhlClient, GhlError};
use shared::identity::{ConflictRecord, Email, conflict_value_name};
use shared::state::{StateError, StateStore};

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
pub async fn contact_view(ghl: &GhlClient, store: &dyn StateStore, email: &Email) -> Result<Option<Value>, ViewError> {
    let Some(found) = ghl.find_duplicate(Some(email.as_str()), None).await? else {
        return Ok(None);
    };
    let id = found.id.as_str();
    let conflict_name = conflict_value_name(email);
    let (contact, tasks, notes, appointments, conflict) = tokio::join!(
        ghl.get_contact(id),
        ghl.list_tasks(id),
        ghl.list_notes(id),
        ghl.list_appointments(id),
        store.get_value(&conflict_name),
    );
    // A record the sync cannot read back is shown as absent rather than failing the view.
    let conflict: Option<ConflictRecord> = conflict?.and_then(|raw| serde_json::from_str(&raw).ok());
    Ok(Some(json!({
        "contact": contact?,
        "tasks": tasks?,
        "notes": notes?,
        "appointments": appointments?,
        "sync": { "identity_conflict": conflict },
    })))
}
