//! One worker per tenant. A batch from the queue may hold several tenants' messages: each goes
//! to its tenant's [`Worker`] (its own GHL token and budget, SproutVideo key, mapping and state),
//! so one tenant's failure (a revoked token, a spent budget) touches only its own messages.
//!
//! - A paused tenant's messages are held in its state (in arrival order) and taken off the
//!   queue; resuming the tenant sends them back (`sv-admin tenant resume`, and the reconciler).
//!   While any is held, the tenant's new messages are held behind them.
//! - A message of a tenant that is not registered (removed) is parked with that reason.
//! - A tenant whose record cannot be used (its mapping does not load) or cannot be read has its
//!   messages delivered again later.

use std::collections::BTreeMap;
use std::sync::Arc;

use shared::commands::SyncCommand;
use shared::tenants::{Lookup, TenantCache, TenantId};

use crate::apply::{BatchOutcome, Deadline, Disposition, QueueMessage, Worker};

pub struct Fleet {
    pub tenants: TenantCache<Worker>,
}

impl Fleet {
    pub fn default_worker(&self) -> &Arc<Worker> {
        self.tenants.default_tenant()
    }

    /// Applies a batch, each message with its tenant's worker; one outcome per tenant met.
    pub async fn process_batch_within(&self, messages: Vec<QueueMessage>, deadline: Deadline) -> Vec<TenantBatch> {
        let mut by_tenant: BTreeMap<TenantId, Vec<QueueMessage>> = BTreeMap::new();
        for m in messages {
            // An undecodable message goes to the default worker, which parks it with the reason.
            let tenant = SyncCommand::decode(&m.body).map(|c| c.tenant).unwrap_or_default();
            by_tenant.entry(tenant).or_default().push(m);
        }
        futures::future::join_all(
            by_tenant.into_iter().map(|(tenant, msgs)| self.process_tenant(tenant, msgs, deadline)),
        )
        .await
    }

    async fn process_tenant(&self, tenant: TenantId, msgs: Vec<QueueMessage>, deadline: Deadline) -> TenantBatch {
        let fallback = self.default_worker().clone();
        let ran = |worker: Arc<Worker>, outcome| TenantBatch { tenant: tenant.clone(), worker, ran: true, outcome };
        match self.tenants.get(&tenant).await {
            // The deployment's own tenant is never paused: nothing is ever held for it.
            Ok(Lookup::Active(w)) if tenant.is_default() => {
                let out = w.process_batch_within(msgs, deadline).await;
                ran(w, out)
            }
            Ok(Lookup::Paused(w)) => {
                let out = hold_all(&tenant, &w, msgs).await;
                ran(w, out)
            }
            Ok(Lookup::Active(w)) => {
                // While commands are held (a pause just ended, or a worker had not seen it yet),
                // new ones wait behind them, so that none overtakes an older one; commands the
                // drain sent back are applied.
                match shared::tenants::has_held(&*w.store).await {
                    Ok(false) => {
                        let out = w.process_batch_within(msgs, deadline).await;
                        ran(w, out)
                    }
                    Ok(true) => {
                        let (resent, new): (Vec<_>, Vec<_>) =
                            msgs.into_iter().partition(|m| SyncCommand::decode(&m.body).is_ok_and(|c| c.resent > 0));
                        let mut out = w.process_batch_within(resent, deadline).await;
                        let held = hold_all(&tenant, &w, new).await;
                        out.held += held.held;
                        out.failed.extend(held.failed);
                        ran(w, out)
                    }
                    Err(e) => {
                        tracing::warn!(tenant = %tenant, error = %e, "could not read whether commands are held; the batch comes again");
                        let mut out = BatchOutcome::default();
                        for m in msgs {
                            w.delay(&m, Disposition::Retry).await;
                            out.failed.push(m.id);
                        }
                        ran(w, out)
                    }
                }
            }
            Ok(Lookup::Unknown) => {
                let reason = format!(
                    "the tenant '{tenant}' is not registered (removed?): add it again with `sv-admin tenant add` and redrive the dead-letter queue"
                );
                let mut out = BatchOutcome::default();
                for m in msgs {
                    let cmd = SyncCommand::decode(&m.body).ok();
                    match fallback.park(&m, cmd.as_ref(), &reason, None).await {
                        Disposition::Parked => out.parked += 1,
                        _ => out.failed.push(m.id),
                    }
                }
                TenantBatch { tenant, worker: fallback, ran: false, outcome: out }
            }
            Err(e) => {
                tracing::error!(tenant = %tenant, error = %e, retryable = e.is_retryable(), "the tenant's setup cannot be used; its messages come again");
                let mut out = BatchOutcome::default();
                for m in msgs {
                    fallback.delay(&m, Disposition::Retry).await;
                    out.failed.push(m.id);
                }
                TenantBatch { tenant, worker: fallback, ran: false, outcome: out }
            }
        }
    }
}

/// What became of one tenant's part of a batch.
pub struct TenantBatch {
    pub tenant: TenantId,
    /// The tenant's worker, or the default's when the tenant's could not be used.
    pub worker: Arc<Worker>,
    /// Whether `worker` is the tenant's own (its client figures belong to this tenant).
    pub ran: bool,
    pub outcome: BatchOutcome,
}

/// Holds a paused tenant's messages in order. Once one of a message group cannot be held, the
/// group's later messages are not held either (they come again after it, in order).
async fn hold_all(tenant: &TenantId, w: &Worker, msgs: Vec<QueueMessage>) -> BatchOutcome {
    let mut out = BatchOutcome::default();
    let mut stuck: Vec<Option<String>> = Vec::new();
    for m in msgs {
        if stuck.contains(&m.group_id) {
            out.failed.push(m.id);
            continue;
        }
        match shared::tenants::hold(&*w.store, &m.body).await {
            Ok(n) => {
                tracing::info!(tenant = %tenant, message_id = %m.id, held = n, "command held for the paused tenant");
                out.held += 1;
            }
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "could not hold a paused tenant's command; it comes again");
                w.delay(&m, Disposition::Retry).await;
                stuck.push(m.group_id.clone());
                out.failed.push(m.id);
            }
        }
    }
    out
}
