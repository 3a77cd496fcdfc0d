//! End to end, as `make dev` runs it: `dev-stack` starts moto (with IAM authorization), the local
//! GHL and SproutVideo, and the intake, worker and reconciler through their Lambda entry points
//! behind the local HTTP API, SQS event-source mapping, schedule and Invoke API, each with its
//! template policy. The tests talk to them over HTTP only.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sync_tests::pipeline::{Pipeline, SECRET_VALUES};

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

#[tokio::test]
async fn the_pipeline_runs_end_to_end_as_make_dev_does() {
    let p = Pipeline::start("e2e").await;
    // The reconciler ran at start: the demo SproutVideo people reached GHL without any webhook.
    p.wait_for("the demo people", 60, |c| {
        ["ada.lovelace@example.com", "grace.hopper@example.com", "member.one@example.com", "member.two@example.com"]
            .iter()
            .all(|e| c.iter().any(|x| x["email"] == *e))
    })
    .await;

    // SproutVideo's webhook, sent by the local SproutVideo itself.
    let hook = format!("{}/webhooks/sproutvideo/dev-webhook-token", p.url("intake_url"));
    let r: Value = p
        .http
        .post(format!("{}/_admin/webhook", p.url("sproutvideo_base_url").trim_end_matches("/v1")))
        .json(&json!({"video_id": "d1a2b3c4d5e6f7a8b9", "url": hook}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], 202);

    let contact =
        json!({"email": "new.lead@example.com", "first_name": "New", "last_name": "Lead", "phone": "(415) 555-2671"});
    for (i, (kind, extra)) in [
        ("lead.captured", json!({})),
        ("note.create", json!({"note": {"body": "Asked about pricing"}})),
        (
            "task.create",
            json!({"task": {"external_id": "call-1", "title": "Call back", "due_at": "2026-12-01T15:00:00Z"}}),
        ),
        ("task.complete", json!({"task": {"external_id": "call-1"}})),
        ("tags.add", json!({"tags": ["VIP"]})),
    ]
    .into_iter()
    .enumerate()
    {
        let mut body = json!({"id": format!("e2e-{i}"), "type": kind, "occurred_at": now(), "contact": contact});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        assert_eq!(p.event(body).await, 202, "{kind}");
    }
    let contacts = p
        .wait_for("the new lead with its note, completed task and tag", 60, |c| {
            c.iter().any(|x| {
                x["email"] == "new.lead@example.com"
                    && x["notes"].as_array().is_some_and(|n| n.len() == 1)
                    && x["tasks"].as_array().is_some_and(|t| t.len() == 1 && t[0]["completed"] == true)
                    && x["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "vip"))
            })
        })
        .await;
    let lead = contacts.iter().find(|x| x["email"] == "new.lead@example.com").unwrap();
    assert_eq!(lead["phone"], "+14155552671");
    assert_eq!(lead["firstName"], "New");

    // Addresses SQS could not take as a message group id (non-ASCII, 200 characters) flow too.
    let long = format!("{}@{}.{}.example.com", "a".repeat(60), "b".repeat(63), "c".repeat(63));
    assert_eq!(long.chars().count(), 200);
    let unusual = ["josé.núñez@bücher.example".to_string(), long];
    for (i, email) in unusual.iter().enumerate() {
        let body = json!({"id": format!("e2e-unusual-{i}"), "type": "lead.captured", "occurred_at": now(),
                          "contact": {"email": email, "first_name": "Unusual"}});
        assert_eq!(p.event(body).await, 202, "{email}");
    }
    p.wait_for("the non-ASCII and the 200-character address", 60, |c| {
        unusual.iter().all(|e| c.iter().any(|x| x["email"].as_str().is_some_and(|a| a.eq_ignore_ascii_case(e))))
    })
    .await;

    // The contact view over HTTP.
    let view: Value = p
        .http
        .get(format!("{}/v1/contacts/new.lead@example.com", p.url("intake_url")))
        .bearer_auth("dev-read-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["notes"].as_array().unwrap().len(), 1);

    // A reconciliation invoked as the schedule invokes it: everything already matches.
    assert!(p.wait_drained(30).await, "queue did not drain");
    let report = p.reconcile_once().await;
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["commands_queued"], 0, "{report}");
    assert!(report["in_sync"].as_u64().unwrap() >= 4, "{report}");

    // No secret value in any service log.
    let logs = p.service_logs();
    assert!(logs.contains("event queued"), "logs were captured");
    for s in SECRET_VALUES {
        assert!(!logs.contains(s), "a secret value ({s}) appeared in the logs");
    }
    assert_eq!(p.queue_depths().await.1, 0, "nothing parked");

    // Every call each function made was allowed by its own template policy; what it was granted
    // and never used is listed.
    let access = p.access_report();
    println!("access report:\n{access}");
    assert!(access.denied().is_empty(), "calls refused by the template's policies:\n{access}");
    for f in ["sv-intake", "sv-worker", "sv-reconciler"] {
        assert!(!access.principal(f).unwrap().used.is_empty(), "{f} made AWS calls under its own identity");
    }
    p.stop();
}

#[tokio::test]
async fn killing_the_worker_mid_stream_loses_and_doubles_nothing() {
    // Short GHL timeouts keep the claims a killed worker leaves behind short-lived.
    let p = Pipeline::start_with(
        "kill",
        &[("GHL_REQUEST_TIMEOUT_MS", "1000"), ("GHL_RETRY_DEADLINE_MS", "3000"), ("WORKER_RETRY_BASE_SECS", "1")],
    )
    .await;
    let n = 30;
    for i in 0..n {
        let contact = json!({"email": format!("k{i:02}@example.com")});
        assert_eq!(
            p.event(
                json!({"id": format!("k-lead-{i}"), "type": "lead.captured", "occurred_at": now(), "contact": contact})
            )
            .await,
            202
        );
        let note = json!({"id": format!("k-note-{i}"), "type": "note.create", "occurred_at": now(), "contact": contact,
                          "note": {"body": format!("note {i}")}});
        assert_eq!(p.event(note).await, 202);
    }
    // Kill the worker's execution environments (no clean shutdown) twice while they work through
    // the queue; Lambda starts new ones for the next batches.
    for round in 0..2 {
        p.wait_for("some progress", 60, |c| {
            c.iter().filter(|x| x["email"].as_str().unwrap_or("").starts_with('k')).count() > 5 * (round + 1)
        })
        .await;
        let killed = p.pids("sv-worker");
        assert!(!killed.is_empty(), "the worker runs");
        for pid in &killed {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
        // When every message left was in flight in the killed environments, the next batch comes
        // only after their visibility timeout (30 s in `make dev`).
        let deadline = Instant::now() + Duration::from_secs(90);
        while !p.pids("sv-worker").iter().any(|pid| !killed.contains(pid)) {
            assert!(Instant::now() < deadline, "no new worker environment started");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let contacts = p
        .wait_for("every person with exactly one note", 120, |c| {
            let ks: Vec<&Value> = c.iter().filter(|x| x["email"].as_str().unwrap_or("").starts_with('k')).collect();
            ks.len() == n && ks.iter().all(|x| x["notes"].as_array().is_some_and(|a| !a.is_empty()))
        })
        .await;
    for i in 0..n {
        let email = format!("k{i:02}@example.com");
        let matching: Vec<&Value> = contacts.iter().filter(|x| x["email"] == email.as_str()).collect();
        assert_eq!(matching.len(), 1, "{email} exists exactly once");
        assert_eq!(matching[0]["notes"].as_array().unwrap().len(), 1, "{email} has exactly one note");
    }
    // Messages the killed worker applied but never deleted come back after their visibility
    // timeout and are skipped as already applied: the queue drains, and nothing is parked.
    assert!(p.wait_drained(120).await, "the queue did not drain");
    assert_eq!(p.queue_depths().await.1, 0, "nothing parked");
    let again = p.ghl_contacts().await;
    for i in 0..n {
        let email = format!("k{i:02}@example.com");
        let c = again.iter().find(|x| x["email"] == email.as_str()).unwrap();
        assert_eq!(
            c["notes"].as_array().unwrap().len(),
            1,
            "{email} still has exactly one note after the redeliveries"
        );
    }
    let logs = p.service_logs();
    for s in SECRET_VALUES {
        assert!(!logs.contains(s), "a secret value ({s}) appeared in the logs");
    }
    p.stop();
}
