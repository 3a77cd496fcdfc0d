//! Chaos soak: events through the whole local pipeline as Lambda runs it (HTTP API → intake →
//! SQS → event-source mapping → worker → local GHL) while the local GHL injects 5xx, 429s, "write
//! then fail" and answers past the client's timeout, and a worker execution environment is killed
//! at random moments (Lambda starts a new one for the next batch). The traffic carries what real
//! senders do: phones another contact already holds, one event id reused for different people,
//! older events after newer ones, replays, and a contact deleted in GHL mid-run. Afterwards every
//! expected contact, note and task exists exactly once, nothing landed on another person, and the
//! dead-letter queue holds exactly the planted poison.
//!
//! The other direction runs alongside: learners are tagged `course-a` in GHL (every third untagged
//! again), while the local GHL redelivers each delivery. Afterwards each
//! tagged learner holds one login and each course video granted once, each untagged one no grant,
//! and no password appears in any log.
//!
//! `make test` runs a short version; `make soak` runs `SOAK_PEOPLE=150 SOAK_SECS=600`.

use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{Value, json};
use sync_tests::pipeline::{Pipeline, SECRET_VALUES};

fn env_num(k: &str, d: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

#[tokio::test]
async fn chaos_soak_loses_and_doubles_nothing() {
    let people = env_num("SOAK_PEOPLE", 12) as usize;
    let budget = Duration::from_secs(env_num("SOAK_SECS", 150));
    let poison = 3;
    let p = Pipeline::start_with(
        "soak",
        &[
            ("GHL_REQUEST_TIMEOUT_MS", "800"),
            ("GHL_RETRY_DEADLINE_MS", "3000"),
            ("WORKER_RETRY_BASE_SECS", "1"),
            ("WORKER_BATCH_CONCURRENCY", "4"),
        ],
    )
    .await;
    let started = Instant::now();
    let ghl_admin = p.url("ghl_base_url");
    let faults = json!({"error_rate": 0.05, "rate_limit_rate": 0.05, "retry_after_secs": 1,
                        "write_then_fail_rate": 0.05, "slow_rate": 0.03, "slow_ms": 1200});
    let r = p.http.put(format!("{ghl_admin}/_admin/faults")).json(&faults).send().await.unwrap();
    assert_eq!(r.status(), 204);
    // GHL's search sees writes two seconds late (the scheduled reconciliation reads through it).
    let r = p.http.put(format!("{ghl_admin}/_admin/search-lag")).json(&json!({"ms": 2000})).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    // Bob is in GHL already, with a phone some senders will also give other people.
    let (status, bob) = p
        .ghl_call(
            reqwest::Method::POST,
            "/contacts/",
            Some(json!({"locationId": p.state["ghl_location_id"], "email": "bob.soak@example.org",
                        "firstName": "Bob", "phone": BOB_PHONE})),
        )
        .await;
    // The local GHL may apply the create and answer 500 (a fault already on): the retry then
    // meets Bob as a duplicate, which names his id.
    let bob_id = match bob["meta"]["contactId"].as_str() {
        Some(id) if status == 400 => id.to_string(),
        _ => {
            assert!(status < 300, "{status} {bob}");
            bob["contact"]["id"].as_str().unwrap().to_string()
        }
    };
    let bob_before = contact_by_id(&p.ghl_contacts().await, &bob_id);

    // The other direction: GHL sends every delivery twice (the same webhookId).
    let hook = format!("{}/webhooks/ghl", p.url("intake_url"));
    let r = p
        .http
        .put(format!("{ghl_admin}/_admin/webhooks"))
        .json(&json!({"url": hook, "duplicate": true}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    // Poison planted straight on the queue, as a broken producer would.
    let sqs = p.sqs().await;
    for i in 0..poison {
        sqs.send_message()
            .queue_url(p.url("queue_url"))
            .message_body(format!("{{\"v\":1,\"poison\":{i}}}"))
            .message_group_id(format!("poison-{i}"))
            .message_deduplication_id(format!("poison-{i}"))
            .send()
            .await
            .unwrap();
    }

    // A killer restarts the worker at random moments while events flow.
    let killer_dir = p.dir.clone();
    let stop_killing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_flag = stop_killing.clone();
    let killer = tokio::spawn(async move {
        let mut kills = 0;
        while !stop_flag.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(2500 + fastrand::u64(0..2500))).await;
            let Ok(raw) = std::fs::read_to_string(killer_dir.join("stack.json")) else { continue };
            let v: Value = serde_json::from_str(&raw).unwrap_or_default();
            let pids: Vec<u64> =
                v["pids"]["sv-worker"].as_array().into_iter().flatten().filter_map(|p| p.as_u64()).collect();
            if !pids.is_empty() {
                let pid = pids[fastrand::usize(..pids.len())];
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
                kills += 1;
            }
        }
        kills
    });

    let (mut sent, mut accepted) = (0, 0);
    let mut replays = Vec::new();
    for i in 0..people {
        let mut contact = json!({"email": format!("soak{i:04}@example.com"), "first_name": format!("Soak{i}")});
        if collides(i) {
            contact["phone"] = json!(BOB_PHONE_AS_SENT);
        }
        let stale = json!({"email": format!("soak{i:04}@example.com"), "first_name": format!("Stale{i}")});
        let events = [
            json!({"id": format!("s-lead-{i}"), "type": "lead.captured", "contact": contact}),
            // Note ids repeat across people (one sender's counter per list): each person's applies.
            json!({"id": format!("s-note-{}", i % 3), "type": "note.create", "contact": contact, "note": {"body": format!("soak note {i}")}}),
            json!({"id": format!("s-task-{i}"), "type": "task.create", "contact": contact,
                   "task": {"external_id": format!("t{i}"), "title": "Soak task", "due_at": "2026-12-24T10:00:00Z"}}),
            json!({"id": format!("s-tag-{i}"), "type": "tags.add", "contact": contact, "tags": ["soaked"]}),
            // An older change arriving last: it must not revert the name.
            json!({"id": format!("s-old-{i}"), "type": "lead.captured", "contact": stale,
                   "occurred_at": (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339()}),
        ];
        for mut e in events {
            if e.get("occurred_at").is_none() {
                e["occurred_at"] = json!(chrono::Utc::now().to_rfc3339());
            }
            sent += 1;
            if send(&p, &e).await {
                accepted += 1;
            }
            if i % 2 == 0 && e["type"] != "lead.captured" {
                replays.push(e);
            }
        }
    }
    // Learners are tagged course-a in GHL by the agency's tools; every third is untagged again
    // once all were tagged.
    let learners = (people / 2).max(4);
    let loc = p.state["ghl_location_id"].as_str().unwrap().to_string();
    let mut learner_ids = Vec::new();
    for i in 0..learners {
        let body = json!({"locationId": loc, "email": learner(i), "firstName": "Lea"});
        let (status, c) = p.ghl_call(reqwest::Method::POST, "contacts/upsert", Some(body)).await;
        assert!(status < 300, "{status} {c}");
        let id = c["contact"]["id"].as_str().unwrap().to_string();
        let tags = format!("contacts/{id}/tags");
        let (status, _) = p.ghl_call(reqwest::Method::POST, &tags, Some(json!({"tags": ["course-a"]}))).await;
        assert!(status < 300, "tagging answered {status}");
        learner_ids.push(id);
    }
    for id in learner_ids.iter().step_by(3) {
        let tags = format!("contacts/{id}/tags");
        let (status, _) = p.ghl_call(reqwest::Method::DELETE, &tags, Some(json!({"tags": ["course-a"]}))).await;
        assert!(status < 300, "untagging answered {status}");
    }

    // Senders replay some events later (after SQS's own de-duplication window would have
    // forgotten them in a long run): they change nothing.
    for e in &replays {
        sent += 1;
        if send(&p, e).await {
            accepted += 1;
        }
    }

    // Wait until every person is complete, or the budget runs out.
    let complete = |c: &[Value]| -> usize {
        (0..people)
            .filter(|i| {
                let email = format!("soak{i:04}@example.com");
                let m: Vec<&Value> = c.iter().filter(|x| x["email"] == email.as_str()).collect();
                m.len() == 1
                    && m[0]["notes"].as_array().is_some_and(|n| !n.is_empty())
                    && m[0]["tasks"].as_array().is_some_and(|n| !n.is_empty())
                    && m[0]["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "soaked"))
            })
            .count()
    };
    let mut contacts = p.ghl_contacts().await;
    while complete(&contacts) < people && started.elapsed() < budget {
        tokio::time::sleep(Duration::from_millis(500)).await;
        contacts = p.ghl_contacts().await;
    }
    // Someone deletes the first person's contact in GHL; a later note for them lands on a new
    // contact that gets back every field the sync wrote.
    let gone = "soak0000@example.com";
    let old_id = contacts.iter().find(|c| c["email"] == gone).map(|c| c["id"].as_str().unwrap().to_string());
    let old_id = old_id.expect("the first person exists");
    let (status, answer) = p.ghl_call(reqwest::Method::DELETE, &format!("/contacts/{old_id}"), None).await;
    // GHL's faults are on: a delete applied and then answered 500 is met as "no such contact"
    // (400) on the retry. Either way the contact must be gone.
    let still_there = p.ghl_contacts().await.iter().any(|c| c["id"] == old_id.as_str());
    assert!(status < 300 || (status == 400 && !still_there), "delete answered {status}: {answer}");
    let after = json!({"id": "s-after-delete", "type": "note.create", "occurred_at": chrono::Utc::now().to_rfc3339(),
                       "contact": {"email": gone}, "note": {"body": "after the delete"}});
    sent += 1;
    if send(&p, &after).await {
        accepted += 1;
    }
    while started.elapsed() < budget + Duration::from_secs(60) {
        let c = p.ghl_contacts().await;
        if c.iter().any(|x| x["email"] == gone && x["notes"].as_array().is_some_and(|n| !n.is_empty())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop_killing.store(true, std::sync::atomic::Ordering::SeqCst);
    let kills = killer.await.unwrap();
    // Let the queue drain with faults off (redeliveries of applied commands must change nothing).
    p.http.put(format!("{ghl_admin}/_admin/faults")).json(&json!({})).send().await.unwrap();
    p.wait_drained(120).await;
    let contacts = p.ghl_contacts().await;

    let (mut missing, mut duplicates, mut misplaced) = (0, 0, Vec::new());
    for i in 0..people {
        let email = format!("soak{i:04}@example.com");
        let m: Vec<&Value> = contacts.iter().filter(|x| x["email"] == email.as_str()).collect();
        match m.len() {
            0 => missing += 3,
            1 => {
                let c = m[0];
                let bodies: Vec<&str> =
                    c["notes"].as_array().into_iter().flatten().filter_map(|n| n["body"].as_str()).collect();
                let tasks = c["tasks"].as_array().map_or(0, Vec::len);
                // The deleted contact took the first note and the task with it.
                let (want_note, want_tasks) = if email == gone {
                    ("after the delete".to_string(), 0usize)
                } else {
                    (format!("soak note {i}\n"), 1)
                };
                missing += usize::from(!bodies.iter().any(|b| b.starts_with(want_note.as_str())));
                missing += want_tasks.saturating_sub(tasks);
                duplicates += bodies.len().saturating_sub(1) + tasks.saturating_sub(want_tasks);
                misplaced.extend(
                    bodies.iter().filter(|b| !b.starts_with(want_note.as_str())).map(|b| format!("{email}: {b}")),
                );
                missing += usize::from(!c["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "soaked")));
                if c["firstName"] != format!("Soak{i}").as_str() {
                    misplaced.push(format!("{email} is named {}", c["firstName"]));
                }
                if !c["phone"].is_null() {
                    misplaced.push(format!("{email} carries a phone: {}", c["phone"]));
                }
            }
            n => duplicates += n - 1,
        }
    }
    assert_eq!(contact_by_id(&contacts, &bob_id), bob_before, "Bob's record is unchanged");

    // Course access ends as GHL holds it: tagged learners have the course, once; untagged, nothing.
    let mut access = learner_access(&p, learners).await;
    let access_deadline = Instant::now() + Duration::from_secs(60);
    while access.missing + access.extra > 0 && Instant::now() < access_deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        access = learner_access(&p, learners).await;
    }
    let parked = dlq_reasons(&p, &sqs).await;
    let (queued, _) = p.queue_depths().await;
    println!(
        "soak tally: people {people}, events sent {sent}, accepted {accepted}, applied people {}, parked {}, \
         duplicates {duplicates}, missing {missing}, misplaced {}, worker kills {kills}, left queued {queued}, \
         learners {learners} (grants {}, missing {}, not revoked {}, doubled {}), {:.0} s",
        complete(&contacts),
        parked.len(),
        misplaced.len(),
        access.granted,
        access.missing,
        access.extra,
        access.doubled,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(access.doubled, 0, "no login or grant made twice: {access:?}");
    assert_eq!(access.missing, 0, "every tagged learner holds the course: {access:?}");
    assert_eq!(access.extra, 0, "every untagged learner's grants are revoked: {access:?}");
    assert!(misplaced.is_empty(), "written onto the wrong person: {misplaced:?}");
    assert_eq!(accepted, sent, "every event was accepted");
    assert_eq!(duplicates, 0, "nothing doubled");
    assert_eq!(missing, 0, "nothing lost");
    assert_eq!(queued, 0, "the queue drained");
    assert_eq!(parked.len(), poison, "exactly the planted poison is parked: {parked:?}");
    assert!(parked.iter().all(|r| r.contains("undecodable")), "{parked:?}");
    let logs = p.service_logs();
    for s in SECRET_VALUES {
        assert!(!logs.contains(s), "a secret value ({s}) appeared in the logs");
    }
    let passwords = learner_passwords(&p).await;
    assert!(!passwords.is_empty(), "the learners' passwords are in GHL");
    assert!(passwords.iter().all(|pw| !logs.contains(pw.as_str())), "a viewer's password appeared in the logs");
    p.stop();
}

const BOB_PHONE: &str = "+14155550100";

/// The demo course: the videos the dev mapping grants for `course-a`.
const COURSE: [&str; 2] = ["a0b1c2d3e4f5a6b7c8", "d1a2b3c4d5e6f7a8b9"];

fn learner(i: usize) -> String {
    format!("learner{i:03}@example.com")
}

/// What the local SproutVideo holds for the learners, against what GHL's tags call for.
#[derive(Debug, Default)]
struct Access {
    granted: usize,
    /// Course videos a tagged learner lacks.
    missing: usize,
    /// Grants an untagged learner still holds.
    extra: usize,
    /// Logins beyond one per email, and grants beyond one per login and video.
    doubled: usize,
}

async fn learner_access(p: &Pipeline, learners: usize) -> Access {
    let a = p.sprout_access().await;
    let mut out = Access::default();
    for i in 0..learners {
        let email = learner(i);
        let logins: Vec<&Value> =
            a["logins"].as_array().unwrap().iter().filter(|l| l["email"] == email.as_str()).collect();
        out.doubled += logins.len().saturating_sub(1);
        let mut videos: Vec<&str> = a["access_grants"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| logins.iter().any(|l| l["id"] == g["login_id"]))
            .filter_map(|g| g["video_id"].as_str())
            .collect();
        videos.sort_unstable();
        let before = videos.len();
        videos.dedup();
        out.doubled += before - videos.len();
        out.granted += videos.len();
        if i % 3 == 0 {
            out.extra += videos.len();
        } else {
            out.missing += COURSE.iter().filter(|v| !videos.contains(v)).count();
        }
    }
    out
}

/// The passwords the sync wrote to the learners' GHL field.
async fn learner_passwords(p: &Pipeline) -> Vec<String> {
    let values = p.custom_field_values("contact.sv_password").await;
    values.into_iter().filter(|(_, email, _)| email.starts_with("learner")).map(|(_, _, v)| v).collect()
}

const BOB_PHONE_AS_SENT: &str = "(415) 555-0100";

/// Every fourth person's sender gives them Bob's phone.
fn collides(i: usize) -> bool {
    i % 4 == 1
}

fn contact_by_id(contacts: &[Value], id: &str) -> Value {
    contacts.iter().find(|c| c["id"] == id).cloned().unwrap_or(Value::Null)
}

/// Sends like a sender that retries until it gets 202 (the intake answers 503 when it cannot
/// queue).
async fn send(p: &Pipeline, e: &Value) -> bool {
    for _ in 0..5 {
        if p.event(e.clone()).await == 202 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// The reasons of every parked message (read without deleting them).
async fn dlq_reasons(p: &Pipeline, sqs: &aws_sdk_sqs::Client) -> Vec<String> {
    let depth = sqs
        .get_queue_attributes()
        .queue_url(p.url("dlq_url"))
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default()
        .get(&QueueAttributeName::ApproximateNumberOfMessages)
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut reasons = Vec::new();
    for _ in 0..(depth / 10 + 2) {
        let got = sqs
            .receive_message()
            .queue_url(p.url("dlq_url"))
            .max_number_of_messages(10)
            .visibility_timeout(60)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        if got.is_empty() {
            break;
        }
        for m in got {
            reasons.push(
                m.message_attributes
                    .and_then(|a| a.get("reason").and_then(|r| r.string_value().map(str::to_string)))
                    .unwrap_or_else(|| "(no reason attribute)".into()),
            );
        }
    }
    reasons
}
