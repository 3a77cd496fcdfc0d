//! Turns facts (a watch, a login, a lead) into the sync commands that make GHL match them. The
//! intake, the worker's video refresh and the reconciler all use these, so the same fact always
//! produces the same commands with the same idempotency keys.

use chrono::{DateTime, Utc};

use crate::commands::{CommandBody, DesiredContact, Source, SyncCommand};
use crate::identity::Identity;
use crate::mapping::{Mapping, PlannedTask, WatchFacts};

/// The source of a rule's actions for one video: with the person the command is about, a rule
/// fires once per person and video, whichever path (webhook, event, reconciliation) sees the
/// watch first.
pub fn rule_source(rule: &str, video_id: &str) -> Source {
    Source::Rule { rule: rule.to_string(), video_id: video_id.to_string() }
}

/// Commands for one watch: the upsert (with the watch's tags and custom fields merged into the
/// person's desired state), then each rule's note and task.
pub fn watch_commands(
    mapping: &Mapping,
    mut desired: DesiredContact,
    watch: &WatchFacts,
    source: &Source,
    occurred_at: DateTime<Utc>,
) -> Vec<SyncCommand> {
    let actions = mapping.watch(&desired.email, watch);
    desired.tags.extend(actions.tags);
    desired.custom_fields.extend(actions.custom_fields);
    let identity = desired.identity();
    let mut out = vec![SyncCommand::new(
        source.clone(),
        "upsert_contact",
        occurred_at,
        CommandBody::UpsertContact { contact: desired },
    )];
    out.extend(rule_commands(&identity, watch, actions.notes, actions.tasks, occurred_at));
    out
}

/// Only the rule actions of a watch (the reconciler diffs the contact separately).
pub fn rule_commands(
    identity: &Identity,
    watch: &WatchFacts,
    notes: Vec<(String, String)>,
    tasks: Vec<(String, PlannedTask)>,
    occurred_at: DateTime<Utc>,
) -> Vec<SyncCommand> {
    let mut out = Vec::new();
    for (rule, body) in notes {
        out.push(SyncCommand::new(
            rule_source(&rule, &watch.video_id),
            "add_note",
            occurred_at,
            CommandBody::AddNote { identity: identity.clone(), body },
        ));
    }
    for (rule, t) in tasks {
        out.push(SyncCommand::new(
            rule_source(&rule, &watch.video_id),
            "create_task",
            occurred_at,
            CommandBody::CreateTask {
                identity: identity.clone(),
                external_id: t.external_id,
                title: t.title,
                body: t.body,
                due_at: t.due_at,
                assigned_to: t.assigned_to,
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Email;
    use crate::mapping::{ContactInput, Origin};

    #[test]
    fn a_watch_past_the_rule_becomes_upsert_note_and_task_with_stable_keys() {
        let m = Mapping::default_mapping();
        let d =
            m.desired(&ContactInput { email: "ada@example.com".into(), ..Default::default() }, Origin::Lead).unwrap();
        let w = WatchFacts {
            video_id: "v1".into(),
            video_title: "Pricing".into(),
            video_tags: vec![],
            percent: 80.0,
            at: Utc::now(),
        };
        let a = watch_commands(&m, d.clone(), &w, &Source::Event("evt-1".into()), w.at);
        let b = watch_commands(&m, d.clone(), &w, &Source::Event("evt-2".into()), w.at);
        // The same watch seen by the worker's video refresh, from a session.
        let c = watch_commands(&m, d, &w, &Source::Session("s-9".into()), w.at);
        assert_eq!(a.len(), 3);
        assert_ne!(a[0].key, b[0].key, "upserts follow their event");
        assert_eq!(a[1].key, b[1].key, "a rule's note is keyed by person, video and rule");
        assert_eq!(a[2].key, b[2].key);
        assert_eq!((a[1].key.clone(), a[2].key.clone()), (c[1].key.clone(), c[2].key.clone()), "whichever path saw it");
        let CommandBody::UpsertContact { contact } = &a[0].body else { panic!() };
        assert!(contact.tags.contains("sv-watched:pricing"));
        let ada = Email::parse("ada@example.com").unwrap();
        assert!(a.iter().all(|cmd| cmd.message_group() == crate::queue::MessageGroupId::for_person(&ada)));

        // Another person watching the same video gets their own note.
        let other =
            m.desired(&ContactInput { email: "bob@example.com".into(), ..Default::default() }, Origin::Lead).unwrap();
        let o = watch_commands(&m, other, &w, &Source::Event("evt-1".into()), w.at);
        assert_ne!(a[0].key, o[0].key, "one event id, two people, two keys");
        assert_ne!(a[1].key, o[1].key);
    }
}
