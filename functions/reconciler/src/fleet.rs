//! Reconciles every tenant on the schedule: the deployment's own and each registered one, a few
//! at a time, each with its own clients, budget and checkpoint. One tenant's failure (a bad key,
//! a revoked token) is reported with that tenant and stops no other.
//!
//! A tenant that is running again after a pause first gets the commands held for it sent back
//! to the queue (the backstop of `sv-admin tenant resume`); a paused tenant is skipped.

use futures::StreamExt;
use serde::Serialize;
use shared::tenants::{Lookup, TenantCache, TenantId, drain_held, held_count};
use tokio::time::Instant;

use crate::reconcile::{ReconcileError, ReconcileInput, Reconciler, Report};

/// Tenants reconciled at once (each draws on its own GHL budget).
pub const TENANTS_AT_ONCE: usize = 4;

/// No tenant's run starts with less than this left before the deadline.
pub const MIN_TENANT_TIME: std::time::Duration = std::time::Duration::from_secs(60);

/// The named value (in the deployment's own part of the table) holding the tenant the next
/// scheduled run starts with, so that when a run cannot reach every tenant the next one starts
/// where it stopped.
const NEXT_TENANT: &str = "reconcile-next-tenant";

pub struct Fleet {
    pub tenants: TenantCache<Reconciler>,
}

/// What became of one registered tenant in a run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum TenantOutcome {
    Reconciled {
        /// Commands held while the tenant was paused, sent back to the queue now.
        resent_held: u64,
        #[serde(flatten)]
        report: Box<Report>,
    },
    Paused {
        held: u64,
    },
    Failed {
        error: String,
        retryable: bool,
    },
    /// The invocation's time ran out before its turn: the next run starts with it.
    NotReached,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantRun {
    pub tenant: TenantId,
    #[serde(flatten)]
    pub outcome: TenantOutcome,
}

/// A run over the fleet: the deployment's own report, as a single-location deployment has
/// always had it, and one entry per registered tenant.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    #[serde(flatten)]
    pub own: Report,
    pub tenants: Vec<TenantRun>,
}

impl FleetReport {
    /// The tenants whose run failed.
    pub fn failed(&self) -> impl Iterator<Item = &TenantRun> {
        self.tenants.iter().filter(|t| matches!(t.outcome, TenantOutcome::Failed { .. }))
    }
}

impl Fleet {
    /// Reconciles the deployment's own tenant and every registered one (`only`: that tenant
    /// alone). The own tenant's failure is the run's error; another's is in its entry.
    pub async fn run(
        &self,
        input: ReconcileInput,
        deadline: Option<Instant>,
        only: Option<&TenantId>,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<FleetReport, ReconcileError> {
        let mut ids: Vec<TenantId> = match only {
            Some(t) if t.is_default() => Vec::new(),
            Some(t) => vec![t.clone()],
            None => match self.tenants.registry().list().await {
                Ok(records) => records.into_iter().map(|r| r.id).collect(),
                Err(e) => {
                    // The own tenant is still reconciled; the others wait for the next run.
                    progress(&format!("could not list the tenants ({e}); reconciling the deployment's own only"));
                    Vec::new()
                }
            },
        };
        ids.retain(|t| !t.is_default());
        // The deployment's own location can be no tenant's.
        let own_location = self.tenants.default_tenant().ghl.location_id().to_string();
        if let Err(e) = self.tenants.registry().claim_own_location(&own_location).await {
            progress(&format!("could not mark the deployment's own location in the tenant registry ({e})"));
        }
        // Start where the last run stopped (tenants sorted by id, wrapping around).
        let own_store = self.tenants.default_tenant().store.clone();
        if only.is_none()
            && !ids.is_empty()
            && let Ok(Some(next)) = own_store.get_value(NEXT_TENANT).await
        {
            let at = ids.iter().position(|t| t.as_str() >= next.as_str()).unwrap_or(0);
            ids.rotate_left(at);
        }
        let own = async {
            if only.is_some_and(|t| !t.is_default()) {
                return None;
            }
            let r = self.tenants.default_tenant();
            Some(r.run(input.clone(), deadline, progress).await)
        };
        let others = futures::stream::iter(ids.into_iter().enumerate())
            .map(|(i, id)| {
                let input = input.clone();
                async move {
                    if deadline.is_some_and(|d| d.saturating_duration_since(Instant::now()) < MIN_TENANT_TIME) {
                        return (i, TenantRun { tenant: id, outcome: TenantOutcome::NotReached });
                    }
                    let outcome = self.run_tenant(&id, input, deadline, progress).await;
                    if let TenantOutcome::Failed { error, .. } = &outcome {
                        progress(&format!("tenant {id}: failed: {error}"));
                    }
                    (i, TenantRun { tenant: id, outcome })
                }
            })
            // A slow tenant holds only its own slot.
            .buffer_unordered(TENANTS_AT_ONCE)
            .collect::<Vec<_>>();
        let (own, mut tenants) = futures::join!(own, others);
        tenants.sort_by_key(|(i, _)| *i);
        let tenants: Vec<TenantRun> = tenants.into_iter().map(|(_, t)| t).collect();
        if only.is_none() && !input.dry_run {
            // The next run starts with the first tenant this one did not reach, or this one's first.
            let next = tenants
                .iter()
                .find(|t| matches!(t.outcome, TenantOutcome::NotReached))
                .or(tenants.first())
                .map(|t| t.tenant.to_string());
            if let Some(next) = next
                && let Err(e) = own_store.put_value(NEXT_TENANT, &next, None).await
            {
                progress(&format!("could not record where the next run starts ({e})"));
            }
        }
        let own = match own {
            Some(r) => r?,
            None => Report { dry_run: input.dry_run, complete: true, ..Default::default() },
        };
        Ok(FleetReport { own, tenants })
    }

    async fn run_tenant(
        &self,
        id: &TenantId,
        input: ReconcileInput,
        deadline: Option<Instant>,
        progress: &(dyn Fn(&str) + Sync),
    ) -> TenantOutcome {
        let failed = |error: String, retryable: bool| TenantOutcome::Failed { error, retryable };
        let r = match self.tenants.get(id).await {
            Ok(Lookup::Active(r)) => r,
            Ok(Lookup::Paused(r)) => {
                return match held_count(&*r.store).await {
                    Ok(held) => TenantOutcome::Paused { held },
                    Err(e) => failed(e.to_string(), e.is_retryable()),
                };
            }
            Ok(Lookup::Unknown) => return failed(format!("the tenant '{id}' is not registered"), false),
            Err(e) => return failed(e.to_string(), e.is_retryable()),
        };
        let tenant_progress = |line: &str| progress(&format!("tenant {id}: {line}"));
        let resent_held = if input.dry_run {
            0
        } else {
            match drain_held(&*r.store, &*r.queue, &|sent, total| {
                tenant_progress(&format!("sent back {sent} of {total} held command(s)"))
            })
            .await
            {
                Ok(n) => n,
                Err(e) => return failed(format!("could not send back the held commands: {e:#}"), true),
            }
        };
        match r.run(input, deadline, &tenant_progress).await {
            Ok(report) => TenantOutcome::Reconciled { resent_held, report: Box::new(report) },
            Err(e) => failed(e.to_string(), e.is_retryable()),
        }
    }
}
