//! Each function's permissions, enforced: an IAM user per function whose inline policy is the
//! function's `Policies` statements from the template (resolved to the local resources), with its
//! own access keys, passed to that function's processes only. moto checks every call once
//! authorization is switched on (see `moto.rs`), and logs each decision; [`AccessReport`] sets
//! what each function was granted against what it called and what it was refused.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::template::StatementDef;

/// Access keys of one local IAM user.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub user: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("access_key_id", &self.access_key_id).finish()
    }
}

impl Credentials {
    /// Keys moto accepts while authorization is off (anything goes).
    pub fn unchecked() -> Self {
        Self { user: "unchecked".into(), access_key_id: "test".into(), secret_access_key: "test".into() }
    }

    /// An AWS SDK configuration for `endpoint` signing with these keys.
    pub async fn sdk_config(&self, endpoint: &str, region: &str) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_config::Region::new(region.to_string()))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                &self.access_key_id,
                &self.secret_access_key,
                None,
                None,
                "lambda-local",
            ))
            .load()
            .await
    }
}

/// A policy document holding `statements`.
pub fn policy_document(statements: &[StatementDef]) -> String {
    serde_json::json!({ "Version": "2012-10-17", "Statement": statements }).to_string()
}

/// Everything, for the harness's own calls (creating resources, reading queues in tests).
pub fn admin_statements() -> Vec<StatementDef> {
    vec![StatementDef {
        effect: "Allow".into(),
        actions: vec!["*".into()],
        resources: vec!["*".into()],
        condition: None,
    }]
}

/// What the SQS event-source mapping may do (SAM attaches `AWSLambdaSQSQueueExecutionRole` to a
/// function with an SQS event: receive, delete and read the queue's attributes).
pub fn sqs_poller_statements() -> Vec<StatementDef> {
    vec![StatementDef {
        effect: "Allow".into(),
        actions: vec!["sqs:ReceiveMessage".into(), "sqs:DeleteMessage".into(), "sqs:GetQueueAttributes".into()],
        resources: vec!["*".into()],
        condition: None,
    }]
}

/// Creates (or replaces) user `user` with an inline policy of `statements`, and a new access key.
pub async fn create_user(
    iam: &aws_sdk_iam::Client,
    user: &str,
    statements: &[StatementDef],
) -> anyhow::Result<Credentials> {
    if iam.get_user().user_name(user).send().await.is_err() {
        iam.create_user().user_name(user).send().await?;
    }
    iam.put_user_policy()
        .user_name(user)
        .policy_name("template-policy")
        .policy_document(policy_document(statements))
        .send()
        .await?;
    let key = iam
        .create_access_key()
        .user_name(user)
        .send()
        .await?
        .access_key
        .ok_or_else(|| anyhow::anyhow!("moto created no access key for {user}"))?;
    Ok(Credentials { user: user.into(), access_key_id: key.access_key_id, secret_access_key: key.secret_access_key })
}

/// What one identity was granted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    /// The function (or `lambda-sqs-poller`, `admin`).
    pub principal: String,
    pub access_key_id: String,
    pub statements: Vec<StatementDef>,
}

/// One authorization decision moto logged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct AuditEntry {
    pub key: String,
    pub action: String,
    pub resource: String,
    pub allowed: bool,
}

/// Reads moto's decision log (missing: none yet).
pub fn read_audit(path: &Path) -> Vec<AuditEntry> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// IAM's wildcard match (`*` any run, `?` one character), case-sensitive as for resources.
pub fn wildcard(pattern: &str, value: &str) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = (pattern.chars().collect(), value.chars().collect());
    let (mut pi, mut vi, mut star, mut mark) = (0, 0, None, 0);
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = vi;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            vi = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// An action on a resource.
pub type Access = (String, String);

/// What one function was granted, used and refused.
#[derive(Debug, Clone)]
pub struct FunctionAccess {
    pub principal: String,
    /// Every (action, resource) pair its statements allow.
    pub granted: Vec<Access>,
    /// Allowed calls it made.
    pub used: BTreeSet<Access>,
    /// Calls it made that were refused: a missing permission.
    pub denied: BTreeSet<Access>,
    /// Granted pairs no call used: permissions it may not need.
    pub unused: Vec<Access>,
}

/// Granted against used, per principal.
#[derive(Debug, Clone)]
pub struct AccessReport {
    pub principals: Vec<FunctionAccess>,
}

impl AccessReport {
    pub fn build(grants: &[Grant], audit: &[AuditEntry]) -> Self {
        let principals = grants
            .iter()
            .map(|g| {
                let granted: Vec<Access> = g
                    .statements
                    .iter()
                    .filter(|s| s.effect == "Allow")
                    .flat_map(|s| {
                        s.actions.iter().flat_map(move |a| s.resources.iter().map(move |r| (a.clone(), r.clone())))
                    })
                    .collect();
                let mine = audit.iter().filter(|e| e.key == g.access_key_id);
                let used: BTreeSet<Access> =
                    mine.clone().filter(|e| e.allowed).map(|e| (e.action.clone(), e.resource.clone())).collect();
                let denied: BTreeSet<Access> =
                    mine.filter(|e| !e.allowed).map(|e| (e.action.clone(), e.resource.clone())).collect();
                let unused = granted
                    .iter()
                    .filter(|(a, r)| !used.iter().any(|(ua, ur)| wildcard(a, ua) && wildcard(r, ur)))
                    .cloned()
                    .collect();
                FunctionAccess { principal: g.principal.clone(), granted, used, denied, unused }
            })
            .collect();
        Self { principals }
    }

    /// Every refused call, with its principal.
    pub fn denied(&self) -> Vec<(String, Access)> {
        self.principals.iter().flat_map(|p| p.denied.iter().map(|d| (p.principal.clone(), d.clone()))).collect()
    }

    pub fn principal(&self, name: &str) -> Option<&FunctionAccess> {
        self.principals.iter().find(|p| p.principal == name)
    }
}

impl fmt::Display for AccessReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.principals {
            writeln!(f, "{}:", p.principal)?;
            for (a, r) in &p.granted {
                let used = p.used.iter().any(|(ua, ur)| wildcard(a, ua) && wildcard(r, ur));
                writeln!(f, "  {} {a} on {r}", if used { "used  " } else { "UNUSED" })?;
            }
            for (a, r) in &p.denied {
                writeln!(f, "  DENIED {a} on {r}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_iam() {
        assert!(wildcard("*", "arn:aws:sqs:us-east-1:1:q"));
        assert!(wildcard("sqs:*", "sqs:SendMessage"));
        assert!(wildcard("arn:aws:secretsmanager:*:secret:sync-??????", "arn:aws:secretsmanager:r:secret:sync-AbCdEf"));
        assert!(!wildcard("sqs:SendMessage", "sqs:SendMessageBatch"));
        assert!(!wildcard("arn:q", "arn:q2"));
    }

    #[test]
    fn the_report_sets_grants_against_calls() {
        let grants = vec![Grant {
            principal: "fn".into(),
            access_key_id: "K1".into(),
            statements: vec![StatementDef {
                effect: "Allow".into(),
                actions: vec!["sqs:SendMessage".into(), "sqs:ChangeMessageVisibility".into()],
                resources: vec!["arn:q".into()],
                condition: None,
            }],
        }];
        let e = |key: &str, action: &str, allowed| AuditEntry {
            key: key.into(),
            action: action.into(),
            resource: "arn:q".into(),
            allowed,
        };
        let audit =
            vec![e("K1", "sqs:SendMessage", true), e("K1", "sqs:ReceiveMessage", false), e("K2", "sqs:X", true)];
        let r = AccessReport::build(&grants, &audit);
        let p = r.principal("fn").unwrap();
        assert_eq!(p.used.len(), 1);
        assert_eq!(p.unused, vec![("sqs:ChangeMessageVisibility".to_string(), "arn:q".to_string())]);
        assert_eq!(r.denied(), vec![("fn".to_string(), ("sqs:ReceiveMessage".to_string(), "arn:q".to_string()))]);
        let text = r.to_string();
        assert!(text.contains("UNUSED sqs:ChangeMessageVisibility") && text.contains("DENIED sqs:ReceiveMessage"));
    }
}
