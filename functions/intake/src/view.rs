//! The one-view read of a contact.

use std::sync::Arc;

use serde_json::{Value, json};
use shared::ghl::{GhlClient, GhlError};
use shared::identity::{ConflictRecord, Email, conflict_value_name};
use shared::state::{StateError, StateStore};

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
pub async fn contact_view(
    ghl: &GhlClient,
    conflicts: &ConflictReader,
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
    Ok(Some(json!({
        "contact": contact?,
        "tasks": tasks?,
        "notes": notes?,
        "appointments": appointments?,
        "sync": { "identity_conflict": conflict },
    })))
}
