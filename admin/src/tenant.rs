//! What `sv-admin tenant add` puts in a new tenant's secret: the caller's values (the GHL token
//! or OAuth credentials, the SproutVideo key), and generated ones for whatever the caller left
//! out (webhook token, read key, workflow token, signing secret). A tenant's tokens begin with
//! its id and a dot, which is how the intake knows whose a request is.

use secrecy::ExposeSecret;
use serde_json::{Map, Value};
use shared::secrets::SyncSecrets;
use shared::tenants::TenantId;

/// The keys of the secret that are tokens a caller presents (and so name the tenant).
pub const TOKEN_KEYS: [&str; 3] = ["webhook_token", "read_api_key", "ghl_workflow_token"];

/// `bytes` random bytes from the OS, as hex.
fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("the OS gave no random bytes: {e}"))?;
    Ok(hex::encode(b))
}

/// The secret value of tenant `id` from the caller's partial value `given`: missing tokens are
/// generated (`<id>.<48 hex digits>`), a missing signing secret too; a given token must begin
/// with `<id>.`. The result is checked as the functions will read it. Errors name keys, never
/// values.
pub fn complete_secret(id: &TenantId, given: &str) -> anyhow::Result<String> {
    let mut v: Map<String, Value> = match serde_json::from_str::<Value>(given) {
        Ok(Value::Object(m)) => m,
        Ok(_) => anyhow::bail!("the secret file must hold a JSON object"),
        Err(e) => anyhow::bail!("the secret file is not JSON (line {}, column {})", e.line(), e.column()),
    };
    for key in TOKEN_KEYS {
        match v.get(key) {
            None | Some(Value::Null) => {
                v.insert(key.into(), Value::String(format!("{id}.{}", random_hex(24)?)));
            }
            Some(Value::String(t)) if TenantId::from_token(t).as_ref() == Some(id) => {}
            Some(_) => anyhow::bail!(
                "`{key}` of the tenant '{id}' must begin with '{id}.' (the intake finds the tenant from it); \
                 leave it out to have one generated"
            ),
        }
    }
    if !v.contains_key("signing_secrets") {
        v.insert("signing_secrets".into(), Value::Array(vec![Value::String(random_hex(32)?)]));
    }
    let json = Value::Object(v).to_string();
    SyncSecrets::parse(&json).map_err(|e| anyhow::anyhow!("the tenant's secret would not work: {e}"))?;
    Ok(json)
}

/// Checks an existing secret's value for tenant `id` (its tokens must name the tenant).
pub fn check_secret(id: &TenantId, value: &str) -> anyhow::Result<()> {
    let s = SyncSecrets::parse(value).map_err(|e| anyhow::anyhow!("the tenant's secret would not work: {e}"))?;
    let expose = |s: &secrecy::SecretString| s.expose_secret().to_string();
    for (key, token) in [("webhook_token", expose(&s.webhook_token)), ("read_api_key", expose(&s.read_api_key))]
        .into_iter()
        .chain(s.ghl_workflow_token.as_ref().map(|t| ("ghl_workflow_token", expose(t))))
    {
        anyhow::ensure!(
            TenantId::from_token(&token).as_ref() == Some(id),
            "`{key}` of the tenant '{id}' must begin with '{id}.' (the intake finds the tenant from it)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    #[test]
    fn missing_tokens_are_generated_under_the_tenant_and_given_ones_must_name_it() {
        let json = complete_secret(&acme(), r#"{"ghl_token":"pit-1","sproutvideo_api_key":"sv-1"}"#).unwrap();
        let v: Value = serde_json::from_str(&json).unwrap();
        for key in TOKEN_KEYS {
            let t = v[key].as_str().unwrap();
            assert!(t.starts_with("acme.") && t.len() == 5 + 48, "{key}");
        }
        assert_eq!(v["signing_secrets"].as_array().unwrap().len(), 1);
        check_secret(&acme(), &json).unwrap();
        let again = complete_secret(&acme(), r#"{"ghl_token":"pit-1"}"#).unwrap();
        assert_ne!(
            serde_json::from_str::<Value>(&again).unwrap()["webhook_token"],
            v["webhook_token"],
            "each tenant gets its own"
        );

        let e = complete_secret(&acme(), r#"{"ghl_token":"pit-1","webhook_token":"other.abc"}"#).unwrap_err();
        assert!(e.to_string().contains("`webhook_token`") && !e.to_string().contains("other.abc"), "{e}");
        let e = complete_secret(&acme(), r#"{"sproutvideo_api_key":"sv-1"}"#).unwrap_err();
        assert!(e.to_string().contains("ghl_token"), "{e}");
        let e = complete_secret(&acme(), r#"["x"]"#).unwrap_err();
        assert!(e.to_string().contains("JSON object"), "{e}");
        let plain = r#"{"ghl_token":"t","webhook_token":"w","read_api_key":"r","signing_secrets":["s"]}"#;
        assert!(check_secret(&acme(), plain).unwrap_err().to_string().contains("must begin with 'acme.'"));
    }
}
