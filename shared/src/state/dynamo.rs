//! The state table on DynamoDB.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;

use super::{Claim, Holder, PENDING_CLAIM_TTL, PersonState, StateError, StateStore, ledger_pk, person_pk, value_pk};
use crate::commands::IdempotencyKey;
use crate::identity::Email;

pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    /// Put before every key: empty for the deployment's own (default) tenant, `t#<id>#` for
    /// another tenant, so tenants sharing the table never share an item.
    prefix: String,
}

impl DynamoStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into(), prefix: String::new() }
    }

    /// The same table, every key under `prefix` (see [`crate::tenants::TenantId::key_prefix`]).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The stored key of `pk`.
    fn k(&self, pk: &str) -> AttributeValue {
        AttributeValue::S(format!("{}{pk}", self.prefix))
    }

    /// The item under `pk`, unless it is absent or expired.
    async fn get(&self, pk: &str) -> Result<Option<HashMap<String, AttributeValue>>, StateError> {
        Ok(self.raw_item(pk).await?.filter(live))
    }

    /// The raw item under `pk` as stored, expired or not (to check what the table holds).
    pub async fn raw_item(&self, pk: &str) -> Result<Option<HashMap<String, AttributeValue>>, StateError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", self.k(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| state_error(&e))?;
        Ok(out.item)
    }

    async fn batch_get(&self, pks: Vec<String>) -> Result<Vec<HashMap<String, AttributeValue>>, StateError> {
        use aws_sdk_dynamodb::types::KeysAndAttributes;
        let mut out = Vec::new();
        for chunk in pks.chunks(100) {
            let mut keys: Vec<HashMap<String, AttributeValue>> =
                chunk.iter().map(|pk| HashMap::from([("pk".to_string(), self.k(pk))])).collect();
            for _ in 0..10 {
                if keys.is_empty() {
                    break;
                }
                let ka = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut keys)))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| StateError::Unavailable(e.to_string()))?;
                let r = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, ka)
                    .send()
                    .await
                    .map_err(|e| state_error(&e))?;
                if let Some(mut resp) = r.responses {
                    out.extend(resp.remove(&self.table).unwrap_or_default().into_iter().filter(live));
                }
                keys = r.unprocessed_keys.and_then(|mut u| u.remove(&self.table)).map(|k| k.keys).unwrap_or_default();
            }
            if !keys.is_empty() {
                return Err(StateError::Unavailable("the table kept throttling a batch read".into()));
            }
        }
        Ok(out)
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn expiry(ttl: Duration) -> AttributeValue {
    n(now() + ttl.as_secs() as i64)
}

fn get_s(item: &HashMap<String, AttributeValue>, k: &str) -> Option<String> {
    item.get(k).and_then(|v| v.as_s().ok()).cloned()
}

fn get_n(item: &HashMap<String, AttributeValue>, k: &str) -> Option<i64> {
    item.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

/// Whether an item has not expired (DynamoDB deletes expired items only eventually).
fn live(item: &HashMap<String, AttributeValue>) -> bool {
    get_n(item, "expires_at").is_none_or(|at| at > now())
}

/// A request the table refused as is (`ValidationException`: an item or key too large) cannot
/// succeed on retry; anything else may.
fn state_error<E, R>(e: &SdkError<E, R>) -> StateError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    let text = crate::aws::error_text(e);
    match e.as_service_error().and_then(|s| s.code()) {
        Some("ValidationException") => StateError::Rejected(text),
        _ => StateError::Unavailable(text),
    }
}

fn is_conditional_failure<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error().and_then(|s| s.code()) == Some("ConditionalCheckFailedException")
}

/// A conditional write on a pending claim: when the claim is no longer pending (completed or
/// gone), there is nothing left to change.
fn ok_unless_pending_gone<T, E, R>(r: Result<T, SdkError<E, R>>) -> Result<(), StateError>
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    match r {
        Ok(_) => Ok(()),
        Err(e) if is_conditional_failure(&e) => Ok(()),
        Err(e) => Err(state_error(&e)),
    }
}

#[async_trait]
impl StateStore for DynamoStore {
    async fn person(&self, email: &Email) -> Result<Option<PersonState>, StateError> {
        let pk = person_pk(email);
        let Some(item) = self.get(&pk).await? else {
            return Ok(None);
        };
        let tags = match item.get("tags") {
            Some(AttributeValue::L(l)) => l.iter().filter_map(|v| v.as_s().ok().cloned()).collect(),
            _ => BTreeSet::new(),
        };
        Ok(Some(PersonState {
            contact_id: get_s(&item, "contact_id").ok_or_else(|| StateError::Corrupt(pk.clone()))?,
            state_hash: get_s(&item, "state_hash").unwrap_or_default(),
            tags,
            phone: get_s(&item, "phone"),
            applied_at: get_n(&item, "applied_at").unwrap_or_default(),
            fields: match get_s(&item, "fields") {
                Some(raw) => serde_json::from_str(&raw).map_err(|_| StateError::Corrupt(pk.clone()))?,
                None => Default::default(),
            },
        }))
    }

    async fn put_person(&self, email: &Email, p: &PersonState) -> Result<(), StateError> {
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", self.k(&person_pk(email)))
            .item("contact_id", s(&p.contact_id))
            .item("state_hash", s(&p.state_hash))
            .item("tags", AttributeValue::L(p.tags.iter().map(|t| s(t)).collect()))
            .item("applied_at", n(p.applied_at));
        if let Some(ph) = &p.phone {
            req = req.item("phone", s(ph));
        }
        if !p.fields.is_empty() {
            req = req.item("fields", s(&serde_json::to_string(&p.fields).expect("field marks serialise")));
        }
        req.send().await.map_err(|e| state_error(&e))?;
        Ok(())
    }

    async fn claim(&self, key: &IdempotencyKey, lease: Duration, holder: &Holder) -> Result<Claim, StateError> {
        let pk = ledger_pk(key);
        let lease_until = now_ms() + lease.as_millis() as i64;
        // A claim that expired (and was not deleted yet) counts as no claim.
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", self.k(&pk))
            .item("status", s("pending"))
            .item("holder", s(holder.as_str()))
            .item("lease_until", n(lease_until))
            .item("attempts", n(1))
            .item("expires_at", expiry(PENDING_CLAIM_TTL))
            .condition_expression("attribute_not_exists(pk) OR expires_at <= :now")
            .expression_attribute_values(":now", n(now()))
            .send()
            .await;
        match put {
            Ok(_) => return Ok(Claim::Fresh),
            Err(e) if is_conditional_failure(&e) => {}
            Err(e) => return Err(state_error(&e)),
        }
        let Some(item) = self.get(&pk).await? else {
            // Released between our put and get: try once more from the top next time.
            return Ok(Claim::Busy);
        };
        if get_s(&item, "status").as_deref() == Some("done") {
            return Ok(Claim::Done { result: get_s(&item, "result").unwrap_or_default() });
        }
        let old_lease = get_n(&item, "lease_until").unwrap_or(0);
        if old_lease > now_ms() {
            return Ok(Claim::Busy);
        }
        let attempts = get_n(&item, "attempts").unwrap_or(1) + 1;
        let upd = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", self.k(&pk))
            .update_expression("SET lease_until = :new, attempts = :a, expires_at = :exp, holder = :h")
            .condition_expression("#st = :pending AND lease_until = :old")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":new", n(lease_until))
            .expression_attribute_values(":a", n(attempts))
            .expression_attribute_values(":h", s(holder.as_str()))
            .expression_attribute_values(":exp", expiry(PENDING_CLAIM_TTL))
            .expression_attribute_values(":pending", s("pending"))
            .expression_attribute_values(":old", n(old_lease))
            .send()
            .await;
        match upd {
            Ok(_) => Ok(Claim::Retake { attempts: attempts as u32 }),
            Err(e) if is_conditional_failure(&e) => Ok(Claim::Busy),
            Err(e) => Err(state_error(&e)),
        }
    }

    async fn complete(&self, key: &IdempotencyKey, result: &str) -> Result<(), StateError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", self.k(&ledger_pk(key)))
            .update_expression("SET #st = :done, #res = :r REMOVE lease_until, expires_at")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#res", "result")
            .expression_attribute_values(":done", s("done"))
            .expression_attribute_values(":r", s(result))
            .send()
            .await
            .map_err(|e| state_error(&e))?;
        Ok(())
    }

    async fn defer_claim(&self, key: &IdempotencyKey, grace: Duration, holder: &Holder) -> Result<(), StateError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", self.k(&ledger_pk(key)))
            .update_expression("SET lease_until = :until")
            .condition_expression("#st = :pending AND holder = :h")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":until", n(now_ms() + grace.as_millis() as i64))
            .expression_attribute_values(":pending", s("pending"))
            .expression_attribute_values(":h", s(holder.as_str()))
            .send()
            .await;
        ok_unless_pending_gone(r)
    }

    async fn renew_claim(&self, key: &IdempotencyKey, lease: Duration, holder: &Holder) -> Result<bool, StateError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", self.k(&ledger_pk(key)))
            .update_expression("SET lease_until = :until, expires_at = :exp")
            .condition_expression("#st = :pending AND holder = :h")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":until", n(now_ms() + lease.as_millis() as i64))
            .expression_attribute_values(":exp", expiry(PENDING_CLAIM_TTL.max(lease)))
            .expression_attribute_values(":pending", s("pending"))
            .expression_attribute_values(":h", s(holder.as_str()))
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(state_error(&e)),
        }
    }

    async fn release(&self, key: &IdempotencyKey, holder: &Holder) -> Result<(), StateError> {
        let r = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", self.k(&ledger_pk(key)))
            .condition_expression("#st = :pending AND holder = :h")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":pending", s("pending"))
            .expression_attribute_values(":h", s(holder.as_str()))
            .send()
            .await;
        ok_unless_pending_gone(r)
    }

    async fn is_done(&self, key: &IdempotencyKey) -> Result<bool, StateError> {
        Ok(self.get(&ledger_pk(key)).await?.is_some_and(|i| get_s(&i, "status").as_deref() == Some("done")))
    }

    async fn get_value(&self, name: &str) -> Result<Option<String>, StateError> {
        Ok(self.get(&value_pk(name)).await?.and_then(|i| get_s(&i, "value")))
    }

    async fn put_value(&self, name: &str, value: &str, ttl: Option<Duration>) -> Result<(), StateError> {
        let mut req =
            self.client.put_item().table_name(&self.table).item("pk", self.k(&value_pk(name))).item("value", s(value));
        if let Some(t) = ttl {
            req = req.item("expires_at", expiry(t));
        }
        req.send().await.map_err(|e| state_error(&e))?;
        Ok(())
    }

    async fn get_values(&self, names: &[String]) -> Result<HashMap<String, String>, StateError> {
        let items = self.batch_get(names.iter().map(|n| value_pk(n)).collect()).await?;
        Ok(items
            .into_iter()
            .filter_map(|i| {
                let pk = get_s(&i, "pk")?;
                Some((pk.strip_prefix(self.prefix.as_str())?.strip_prefix("kv#")?.to_string(), get_s(&i, "value")?))
            })
            .collect())
    }

    async fn put_values(&self, values: &[(String, String)], ttl: Option<Duration>) -> Result<(), StateError> {
        use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
        for chunk in values.chunks(25) {
            let mut reqs: Vec<WriteRequest> = chunk
                .iter()
                .map(|(k, v)| {
                    let mut item =
                        HashMap::from([("pk".to_string(), self.k(&value_pk(k))), ("value".to_string(), s(v))]);
                    if let Some(t) = ttl {
                        item.insert("expires_at".into(), expiry(t));
                    }
                    WriteRequest::builder()
                        .put_request(PutRequest::builder().set_item(Some(item)).build().expect("item is set"))
                        .build()
                })
                .collect();
            for _ in 0..10 {
                if reqs.is_empty() {
                    break;
                }
                let r = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, std::mem::take(&mut reqs))
                    .send()
                    .await
                    .map_err(|e| state_error(&e))?;
                reqs = r.unprocessed_items.and_then(|mut u| u.remove(&self.table)).unwrap_or_default();
            }
            if !reqs.is_empty() {
                return Err(StateError::Unavailable("the table kept throttling a batch write".into()));
            }
        }
        Ok(())
    }

    async fn put_value_if_absent(&self, name: &str, value: &str, ttl: Duration) -> Result<bool, StateError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", self.k(&value_pk(name)))
            .item("value", s(value))
            .item("expires_at", expiry(ttl))
            // An expired item (not deleted yet) counts as absent.
            .condition_expression("attribute_not_exists(pk) OR expires_at <= :now")
            .expression_attribute_values(":now", n(now()))
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(state_error(&e)),
        }
    }

    async fn swap_value(&self, name: &str, expected: Option<&str>, new: Option<&str>) -> Result<bool, StateError> {
        // An expired item DynamoDB has not deleted yet counts as absent (as everywhere here).
        let (cond, old) = match expected {
            None => ("attribute_not_exists(pk) OR expires_at <= :now", None),
            Some(v) => ("#v = :old AND (attribute_not_exists(expires_at) OR expires_at > :now)", Some(s(v))),
        };
        let r = match new {
            Some(v) => {
                let mut put = self
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .item("pk", self.k(&value_pk(name)))
                    .item("value", s(v))
                    .condition_expression(cond)
                    .expression_attribute_values(":now", n(now()));
                if let Some(old) = old {
                    put = put.expression_attribute_names("#v", "value").expression_attribute_values(":old", old);
                }
                put.send().await.map(|_| ()).map_err(|e| (is_conditional_failure(&e), state_error(&e)))
            }
            None => {
                let mut del = self
                    .client
                    .delete_item()
                    .table_name(&self.table)
                    .key("pk", self.k(&value_pk(name)))
                    .condition_expression(cond)
                    .expression_attribute_values(":now", n(now()));
                if let Some(old) = old {
                    del = del.expression_attribute_names("#v", "value").expression_attribute_values(":old", old);
                }
                del.send().await.map(|_| ()).map_err(|e| (is_conditional_failure(&e), state_error(&e)))
            }
        };
        match r {
            Ok(()) => Ok(true),
            Err((true, _)) => Ok(false),
            Err((false, e)) => Err(e),
        }
    }

    async fn delete_value(&self, name: &str) -> Result<(), StateError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", self.k(&value_pk(name)))
            .send()
            .await
            .map_err(|e| state_error(&e))?;
        Ok(())
    }
}

/// Creates the state table (for local runs and tests; production uses the SAM template).
pub async fn create_table(client: &aws_sdk_dynamodb::Client, table: &str) -> Result<(), StateError> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TimeToLiveSpecification,
    };
    let r = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("complete"),
        )
        .key_schema(KeySchemaElement::builder().attribute_name("pk").key_type(KeyType::Hash).build().expect("complete"))
        .send()
        .await;
    match r {
        Ok(_) => {}
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {
            return Ok(());
        }
        Err(e) => return Err(state_error(&e)),
    }
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder().attribute_name("expires_at").enabled(true).build().expect("complete"),
        )
        .send()
        .await
        .map_err(|e| state_error(&e))?;
    Ok(())
}

#[async_trait]
impl crate::budget::BudgetStore for DynamoStore {
    async fn load_budget(&self, location: &str) -> Result<Option<(crate::budget::WindowState, u64)>, StateError> {
        let pk = crate::budget::budget_pk(location);
        let Some(item) = self.get(&pk).await? else { return Ok(None) };
        let state = get_s(&item, "state")
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| StateError::Corrupt(pk.clone()))?;
        let ver = get_n(&item, "ver").ok_or_else(|| StateError::Corrupt(pk.clone()))?;
        Ok(Some((state, ver as u64)))
    }

    async fn swap_budget(
        &self,
        location: &str,
        expected: Option<u64>,
        state: &crate::budget::WindowState,
    ) -> Result<bool, StateError> {
        let pk = crate::budget::budget_pk(location);
        let text = serde_json::to_string(state).map_err(|e| StateError::Rejected(e.to_string()))?;
        let ver = expected.map_or(1, |v| v + 1);
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", self.k(&pk))
            .item("state", s(&text))
            .item("ver", n(ver as i64))
            .item("expires_at", expiry(crate::budget::BUDGET_TTL));
        req = match expected {
            // An expired record DynamoDB has not deleted yet counts as none.
            None => req
                .condition_expression("attribute_not_exists(pk) OR expires_at <= :now")
                .expression_attribute_values(":now", n(now())),
            Some(v) => req
                .condition_expression("ver = :v AND expires_at > :now")
                .expression_attribute_values(":v", n(v as i64))
                .expression_attribute_values(":now", n(now())),
        };
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(state_error(&e)),
        }
    }
}
