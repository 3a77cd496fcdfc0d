//! Many HighLevel locations in one deployment, as `make dev` runs it: the deployment's own
//! location (the dev stack's local GHL and SproutVideo) and a tenant added with `sv-admin`, whose
//! GHL and SproutVideo are fakes of its own. Events reach each tenant's GHL only; a revoked
//! token in one tenant parks only that tenant's messages; a paused tenant's events are held and
//! applied on resume, none lost; a tenant whose reconciliation fails stops no other. Every call
//! goes through the functions' Lambda entry points with their template policies enforced.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sync_tests::local_ghl::{GhlBehaviour, LocalGhl};
use sync_tests::local_sprout::{LocalSprout, SproutBehaviour, VideoSeed};
use sync_tests::pipeline::Pipeline;

const ACME_LOC: &str = "locAcmeTenant0000001";

/// A tenant with its own GHL and SproutVideo.
struct Tenant {
    id: &'static str,
    ghl: LocalGhl,
    sprout: LocalSprout,
    secret: Value,
}

impl Tenant {
    async fn add(p: &Pipeline, id: &'static str, location: &str) -> Self {
        let ghl = LocalGhl::new(GhlBehaviour::default());
        let ghl_addr = ghl.spawn("127.0.0.1:0").await.unwrap();
        let sprout = LocalSprout::new(SproutBehaviour::default());
        let sprout_addr = sprout.spawn("127.0.0.1:0").await.unwrap();
        // Its own mapping: its own tags.
        let mapping = p.dir.join(format!("{id}-mapping.toml"));
        std::fs::write(
            &mapping,
            format!("default_region = \"US\"\nsync_tag = \"{id}-viewers\"\n[tags]\nlead = \"{id}-lead\"\n"),
        )
        .unwrap();
        let given = json!({"ghl_token": format!("pit-{id}"), "sproutvideo_api_key": format!("sv-{id}")});
        let (ok, out) = p.sv_admin(
            &[
                "tenant",
                "add",
                id,
                "--location",
                location,
                "--secret-file",
                "-",
                "--mapping",
                mapping.to_str().unwrap(),
                "--ghl-base-url",
                &format!("http://{ghl_addr}/"),
                "--sproutvideo-base-url",
                &format!("http://{sprout_addr}/v1"),
            ],
            Some(&given.to_string()),
        );
        assert!(ok, "sv-admin tenant add failed: {out}");
        let prefix = p.state["tenant_secret_prefix"].as_str().unwrap();
        let secret = p.secret_value(&format!("{prefix}{id}")).await;
        for key in ["webhook_token", "read_api_key", "ghl_workflow_token"] {
            let token = secret[key].as_str().unwrap();
            assert!(token.starts_with(&format!("{id}.")), "{key} names the tenant");
            assert!(!out.contains(token), "sv-admin prints no token: {out}");
        }
        // The functions read the registry every second here (TENANT_CACHE_TTL_SECS=1).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Self { id, ghl, sprout, secret }
    }

    async fn event(&self, p: &Pipeline, body: Value) -> u16 {
        p.tenant_event(self.id, self.secret["signing_secrets"][0].as_str().unwrap(), body).await
    }

    async fn contacts(&self) -> Vec<Value> {
        self.ghl.state().await["locations"][ACME_LOC]["contacts"].as_array().cloned().unwrap_or_default()
    }

    async fn wait_for(&self, what: &str, secs: u64, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let c = self.contacts().await;
            if ok(&c) {
                return c;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; the tenant's GHL holds {c:#?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

async fn start(tag: &str) -> Pipeline {
    Pipeline::start_with(tag, &[("TENANT_CACHE_TTL_SECS", "1")]).await
}

fn lead(id: &str, email: &str, first: &str) -> Value {
    json!({"id": id, "type": "lead.captured", "occurred_at": chrono::Utc::now().to_rfc3339(),
           "contact": {"email": email, "first_name": first}})
}

fn has(c: &[Value], email: &str) -> bool {
    c.iter().any(|x| x["email"] == email)
}

#[tokio::test]
async fn two_tenants_with_their_own_ghl_and_sproutvideo_each_get_only_their_own_people() {
    let p = start("tenants-two").await;
    let acme = Tenant::add(&p, "acme", ACME_LOC).await;
    let (ok, out) = p.sv_admin(&["tenant", "list"], None);
    assert!(ok && out.contains("acme") && out.contains(ACME_LOC) && out.contains("running"), "{out}");

    assert_eq!(p.event(lead("own-1", "ada@example.com", "Ada")).await, 202);
    assert_eq!(acme.event(&p, lead("acme-1", "bob@example.com", "Bob")).await, 202);
    // A tenant's key id with another tenant's signature, and a tenant nobody added: refused.
    let wrong = p.tenant_event("acme", "dev-signing-secret", lead("acme-2", "eve@example.com", "Eve")).await;
    assert_eq!(wrong, 401);
    assert_eq!(p.tenant_event("nobody", "dev-signing-secret", lead("x-1", "eve@example.com", "Eve")).await, 401);

    let theirs = acme
        .wait_for("Bob with the tenant's own tags", 60, |c| {
            c.iter().any(|x| {
                x["email"] == "bob@example.com"
                    && ["acme-lead", "acme-viewers"]
                        .iter()
                        .all(|t| x["tags"].as_array().unwrap().iter().any(|v| v == t))
            })
        })
        .await;
    let own = p.wait_for("Ada", 60, |c| has(c, "ada@example.com")).await;
    assert!(!has(&own, "bob@example.com"), "the tenant's person never reaches the deployment's own GHL");
    assert!(!has(&theirs, "ada@example.com"), "the deployment's person never reaches the tenant's GHL");
    let ada = own.iter().find(|x| x["email"] == "ada@example.com").unwrap();
    assert!(ada["tags"].as_array().unwrap().iter().all(|t| !t.as_str().unwrap().starts_with("acme")), "{ada}");

    // The one-view: each read key opens its own tenant's GHL.
    let view = |email: &str, key: &str| {
        p.http
            .get(format!("{}/v1/contacts/{email}", p.url("intake_url")))
            .header("authorization", format!("Bearer {key}"))
            .send()
    };
    let acme_key = acme.secret["read_api_key"].as_str().unwrap();
    let r = view("bob@example.com", acme_key).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["contact"]["firstName"], "Bob");
    assert_eq!(view("bob@example.com", "dev-read-key").await.unwrap().status(), 404, "not in the own GHL");
    assert_eq!(view("bob@example.com", "acme.wrong").await.unwrap().status(), 401);

    // SproutVideo's webhook with the tenant's path token is the tenant's (its worker reads the
    // video from the tenant's SproutVideo); a wrong token is refused.
    let video = acme.sprout.add_video(VideoSeed { title: "Acme onboarding".into(), ..Default::default() }).await;
    let hook = |token: &str| {
        p.http.post(format!("{}/webhooks/sproutvideo/{token}", p.url("intake_url"))).json(&json!({"id": video})).send()
    };
    assert_eq!(hook(acme.secret["webhook_token"].as_str().unwrap()).await.unwrap().status(), 202);
    assert_eq!(hook("acme.wrong").await.unwrap().status(), 401);

    // HighLevel's signed webhooks (one URL for the whole Marketplace app) go to the tenant whose
    // location the delivery names; a location nobody serves is ignored. The dev stack's GHL signs
    // them with the key the intake trusts.
    let mut statuses = Vec::new();
    for (location, email) in [(ACME_LOC, "hook@acme.example.com"), ("locNobodysLocation01", "hook@nobody.example.com")]
    {
        let (status, created) = p
            .ghl_call(reqwest::Method::POST, "contacts/upsert", Some(json!({"locationId": location, "email": email})))
            .await;
        assert!(status < 300, "{status} {created}");
        let id = created["contact"]["id"].as_str().unwrap().to_string();
        let tagged =
            p.ghl_call(reqwest::Method::POST, &format!("contacts/{id}/tags"), Some(json!({"tags": ["vip"]}))).await;
        assert!(tagged.0 < 300, "{tagged:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            let hooks = p.get_json(&format!("{}/_admin/webhooks", p.url("ghl_base_url"))).await;
            let mine = hooks["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["contact_id"] == id.as_str() && d["status"].is_u64())
                .cloned();
            if let Some(s) = mine.and_then(|d| d["status"].as_u64()) {
                break s;
            }
            assert!(Instant::now() < deadline, "no answered delivery for {email}: {hooks}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        statuses.push(status);
    }
    assert_eq!(statuses, [202, 200], "the tenant's delivery is queued, the unknown location's ignored");

    assert!(p.wait_drained(60).await, "the queue drains");
    let read = acme.sprout.requests().await;
    assert!(
        read.iter().any(|r| r.path.contains(&video)),
        "the tenant's SproutVideo was asked about its video: {read:?}"
    );
    assert_eq!(p.queue_depths().await.1, 0, "nothing parked: {:?}", p.dead_letters().await);
    let report = p.access_report();
    assert!(report.denied().is_empty(), "every call within the template's policies: {report}");
    p.stop();
}

#[tokio::test]
async fn a_revoked_token_in_one_tenant_parks_only_that_tenants_messages() {
    let p = start("tenants-revoked").await;
    let acme = Tenant::add(&p, "acme", ACME_LOC).await;
    // The tenant's GHL no longer takes its token (revoked in GHL).
    acme.ghl.set_behaviour(GhlBehaviour { valid_tokens: vec!["pit-rotated".into()], ..Default::default() }).await;

    assert_eq!(acme.event(&p, lead("acme-r1", "dave@example.com", "Dave")).await, 202);
    assert_eq!(p.event(lead("own-r1", "carol@example.com", "Carol")).await, 202);
    p.wait_for("Carol, in the deployment's own GHL", 60, |c| has(c, "carol@example.com")).await;

    let deadline = Instant::now() + Duration::from_secs(90);
    let parked = loop {
        let dead = p.dead_letters().await;
        if !dead.is_empty() && p.wait_drained(1).await {
            break dead;
        }
        assert!(Instant::now() < deadline, "the tenant's message was not parked; dead letters: {dead:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (body, group, reason) in &parked {
        assert!(group.starts_with("acme/"), "only the tenant's messages are parked: {group} {body}");
        assert!(body.contains("dave@example.com"), "{body}");
        assert!(reason.contains("401"), "the reason says what GHL answered: {reason}");
        assert!(!reason.contains("pit-acme"), "no token in a reason: {reason}");
    }
    assert!(acme.contacts().await.is_empty());

    // The scheduled reconciliation: the tenant's failure is in its entry; the deployment's own
    // run completes.
    let report = p.reconcile_once().await;
    assert_eq!(report["complete"], true, "{report}");
    let entry = report["tenants"].as_array().unwrap().iter().find(|t| t["tenant"] == "acme").cloned();
    let entry = entry.unwrap_or_else(|| panic!("no entry for acme in {report}"));
    assert_eq!(entry["outcome"], "failed", "{entry}");
    assert!(entry["error"].as_str().unwrap().contains("401"), "{entry}");
    assert_eq!(entry["retryable"], false, "{entry}");
    assert!(!p.service_logs().contains("pit-acme"), "no tenant token in any log");
    p.stop();
}

#[tokio::test]
async fn a_paused_tenant_holds_its_events_and_applies_them_all_on_resume() {
    let p = start("tenants-paused").await;
    let acme = Tenant::add(&p, "acme", ACME_LOC).await;
    let (ok, out) = p.sv_admin(&["tenant", "pause", "acme"], None);
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let people = ["erin1@example.com", "erin2@example.com", "erin3@example.com"];
    for (i, e) in people.iter().enumerate() {
        assert_eq!(
            acme.event(&p, lead(&format!("acme-p{i}"), e, "Erin")).await,
            202,
            "a paused tenant's events are taken"
        );
    }
    assert_eq!(p.event(lead("own-p1", "frank@example.com", "Frank")).await, 202);
    p.wait_for("Frank: the other tenants carry on", 60, |c| has(c, "frank@example.com")).await;
    assert!(p.wait_drained(60).await, "the paused tenant's messages leave the queue (held)");
    assert!(acme.contacts().await.is_empty(), "nothing is applied while paused");
    let (ok, out) = p.sv_admin(&["tenant", "list"], None);
    assert!(ok && out.contains("paused"), "{out}");
    let held: u64 = out
        .lines()
        .find(|l| l.starts_with("acme "))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no held count for acme in {out}"));
    assert!(held >= 3, "every event's commands are held: {out}");

    let (ok, out) = p.sv_admin(&["tenant", "resume", "acme"], None);
    assert!(ok && out.contains(&format!("{held} held command(s) are queued again")), "{out}");
    acme.wait_for("every held event applied", 60, |c| people.iter().all(|e| has(c, e))).await;
    assert!(p.wait_drained(60).await);
    assert_eq!(p.queue_depths().await.1, 0, "nothing parked: {:?}", p.dead_letters().await);
    let (ok, out) = p.sv_admin(&["tenant", "list"], None);
    assert!(ok && out.lines().any(|l| l.starts_with("acme ") && l.contains("running")), "{out}");

    // Removed: the registry forgets it, its tokens open nothing, and its id comes back only with
    // its own location.
    let (ok, out) = p.sv_admin(&["tenant", "remove", "acme"], None);
    assert!(ok, "{out}");
    let (_, out) = p.sv_admin(&["tenant", "list"], None);
    assert!(out.contains("no tenants are registered"), "{out}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(acme.event(&p, lead("acme-gone", "gina@example.com", "Gina")).await, 401);
    let (ok, out) = p.sv_admin(
        &[
            "tenant",
            "add",
            "acme",
            "--location",
            "locSomewhereElse0001",
            "--secret-id",
            &format!("{}acme", p.state["tenant_secret_prefix"].as_str().unwrap()),
        ],
        None,
    );
    assert!(!ok && out.contains("used for the location"), "{out}");
    p.stop();
}
