//! The one-view read of a contact.

use serde_json::{Value, json};
use shared::ghl::{GhlClient, GhlError};
use shared::identity::Email;

/// The one-view read of a contact: the GHL contact, its tasks, notes and appointments, fetched
/// concurrently. `None` when GHL has no contact with this email.
pub async fn contact_view(ghl: &GhlClient, email: &Email) -> Result<Option<Value>, GhlError> {
    let Some(found) = ghl.find_duplicate(Some(email.as_str()), None).await? else {
        return Ok(None);
    };
    let id = found.id.as_str();
    let (contact, tasks, notes, appointments) =
        tokio::join!(ghl.get_contact(id), ghl.list_tasks(id), ghl.list_notes(id), ghl.list_appointments(id));
    Ok(Some(json!({
        "contact": contact?,
        "tasks": tasks?,
        "notes": notes?,
        "appointments": appointments?,
    })))
}
