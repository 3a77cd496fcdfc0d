//! Permissions enforced as AWS enforces them: a function runs with its own credentials, whose
//! policy is its template statements; moto refuses a call the policy does not allow, and the
//! access report names it. Each case runs on its own moto (authorization is server-wide).

use std::path::PathBuf;

use aws_lambda_events::event::apigw::ApiGatewayV2httpResponse;
use chrono::Utc;
use serde_json::Value;
use sync_tests::aws::{Stack, StackNames, StackSettings, secret_json};
use sync_tests::lambda_local::iam::{AccessReport, Credentials};
use sync_tests::lambda_local::moto::Moto;
use sync_tests::lambda_local::template::StatementDef;
use sync_tests::lambda_local::{DeploySettings, Deployment, REGION};
use sync_tests::pipeline::bin_dir;

const SIGNING: &str = "iam-signing-secret";

/// Deploys the intake (with `policy` instead of its template statements when given) on a fresh
/// moto with authorization on, sends it one signed event, and returns its answer and the report.
async fn intake_with(tag: &str, policy: Option<Vec<StatementDef>>) -> (u16, AccessReport, String) {
    let dir = std::env::temp_dir().join(format!("sv-iam-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let moto = Moto::start(&dir).await.unwrap();
    let setup = Credentials::unchecked().sdk_config(&moto.endpoint, REGION).await;
    let secret = secret_json("iam-webhook-token", &[SIGNING], "iam-read-key", "iam-ghl-token", None);
    let stack =
        Stack::create_in(setup, StackNames::unique(tag), StackSettings::default(), Some(&secret)).await.unwrap();
    let queue_arn = stack.resource_values().await.unwrap()["SyncQueue"].attributes["Arn"].clone();
    let mut ds = DeploySettings::new(bin_dir(), dir.join("logs"), &moto.endpoint);
    ds.iam = true;
    ds.stack_name = format!("iam-{tag}");
    ds.parameters = vec![("GhlLocationId".into(), "locIam".into())];
    ds.only = Some(vec!["sv-intake".into()]);
    ds.env = [("LOG_FORMAT".to_string(), "text".to_string())].into();
    if let Some(p) = policy {
        ds.policy_overrides.insert("sv-intake".into(), p);
    }
    let d = Deployment::deploy(&stack, ds).await.unwrap();

    let raw = r#"{"id":"iam-1","type":"lead.captured","occurred_at":"2026-11-29T10:00:00Z","contact":{"email":"iam@example.com"}}"#;
    let mut event: Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/lambda/apigw-v2-signed-event.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let ts = Utc::now().timestamp();
    event["body"] = Value::String(raw.into());
    event["headers"]["x-signature-timestamp"] = Value::String(ts.to_string());
    event["headers"]["x-signature"] = Value::String(intake::auth::sign(SIGNING, ts, raw.as_bytes()));
    let out = d.function("sv-intake").invoke_json(&event, true, None).await.unwrap();
    let r: ApiGatewayV2httpResponse = serde_json::from_value(out).unwrap();
    let report = d.access_report(&moto.audit_log);
    d.shutdown().await;
    drop(moto);
    let _ = std::fs::remove_dir_all(&dir);
    (r.status_code as u16, report, queue_arn)
}

#[tokio::test]
async fn a_function_uses_only_what_its_template_policy_grants() {
    let (status, report, queue) = intake_with("granted", None).await;
    println!("{report}");
    assert_eq!(status, 202, "the intake queued the event with its template policy");
    assert!(report.denied().is_empty(), "{report}");
    let intake = report.principal("sv-intake").unwrap();
    assert!(intake.used.contains(&("sqs:SendMessage".to_string(), queue)), "{report}");
    assert!(intake.used.iter().any(|(a, _)| a == "secretsmanager:GetSecretValue"), "{report}");
}

#[tokio::test]
async fn a_permission_missing_from_a_policy_is_refused_and_reported() {
    // The intake's statements without sqs:SendMessage: reading the secret still works.
    let only_secret = vec![StatementDef {
        effect: "Allow".into(),
        actions: vec!["secretsmanager:GetSecretValue".into()],
        resources: vec!["*".into()],
        condition: None,
    }];
    let (status, report, queue) = intake_with("missing", Some(only_secret)).await;
    println!("{report}");
    assert_eq!(status, 503, "the queue refused the intake, so the sender is told to retry");
    assert_eq!(report.denied(), vec![("sv-intake".to_string(), ("sqs:SendMessage".to_string(), queue))]);
}

#[tokio::test]
async fn a_dynamodb_leading_keys_condition_admits_only_the_keys_it_names() {
    use sync_tests::lambda_local::iam::create_user;
    let dir = std::env::temp_dir().join(format!("sv-iam-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let moto = Moto::start(&dir).await.unwrap();
    let setup = Credentials::unchecked().sdk_config(&moto.endpoint, REGION).await;
    let ddb = aws_sdk_dynamodb::Client::new(&setup);
    shared::state::create_table(&ddb, "keys").await.unwrap();
    let table_arn = format!("arn:aws:dynamodb:{REGION}:*:table/keys");
    // As the template writes the intake's: one read on the tenant registry only.
    let reader = create_user(
        &aws_sdk_iam::Client::new(&setup),
        "reader",
        &[StatementDef {
            effect: "Allow".into(),
            actions: vec!["dynamodb:GetItem".into()],
            resources: vec![table_arn],
            condition: Some(serde_json::json!({
                "ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["kv#tenant#*", "t#*#budget#*"]}
            })),
        }],
    )
    .await
    .unwrap();
    sync_tests::lambda_local::moto::enforce_iam(&moto.endpoint).await.unwrap();
    let as_reader = aws_sdk_dynamodb::Client::new(&reader.sdk_config(&moto.endpoint, REGION).await);
    let get = |pk: &str| {
        as_reader.get_item().table_name("keys").key("pk", aws_sdk_dynamodb::types::AttributeValue::S(pk.into())).send()
    };
    assert!(get("kv#tenant#acme").await.is_ok(), "a key the condition names");
    assert!(get("t#acme#budget#loc1").await.is_ok(), "a key the condition names");
    for refused in ["person#ada@example.com", "kv#tenants", "t#acme#kv#tenant#x"] {
        let e = get(refused).await.expect_err(refused);
        assert!(shared::aws::error_text(&e).starts_with("AccessDenied"), "{refused}: {e:?}");
    }
    drop(moto);
    let _ = std::fs::remove_dir_all(&dir);
}
