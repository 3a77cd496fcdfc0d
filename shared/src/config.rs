//! One typed configuration, read from the environment. Secrets are referenced by name
//! (`SYNC_SECRET_ID`), never carried in variables.

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use url::Url;

use crate::mapping::{Mapping, MappingError};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{0} is not set; {1}")]
    Missing(&'static str, &'static str),
    #[error("{0}='{1}' is invalid: {2}")]
    Invalid(&'static str, String, String),
    #[error("could not read the mapping file {0}: {1}")]
    MappingFile(String, String),
    #[error(transparent)]
    Mapping(#[from] MappingError),
}

/// Everything the three functions read from their environment, for one tenant: the
/// environment's own is `default`; [`Config::for_tenant`] makes a registered tenant's.
#[derive(Debug, Clone)]
pub struct Config {
    /// Whose configuration this is.
    pub tenant: crate::tenants::TenantId,
    /// How long a tenant's registry record is trusted before it is read again
    /// (`TENANT_CACHE_TTL_SECS`, 30): an added, paused or resumed tenant is seen within that long.
    pub tenant_cache_ttl: Duration,
    /// Name or ARN of the Secrets Manager secret (`SYNC_SECRET_ID`).
    pub secret_id: String,
    /// How long a read secret is trusted before it is read again (`SECRET_CACHE_TTL_SECS`, 300).
    pub secret_ttl: Duration,
    /// The FIFO queue (`SYNC_QUEUE_URL`) and its dead-letter queue (`SYNC_DLQ_URL`).
    pub queue_url: String,
    pub dlq_url: Option<String>,
    /// DynamoDB state table (`SYNC_TABLE`).
    pub table: String,
    /// HighLevel (`GHL_BASE_URL`, `GHL_LOCATION_ID`, `GHL_BURST_MAX`, `GHL_BURST_INTERVAL_MS`).
    pub ghl_base_url: Url,
    pub ghl_location_id: String,
    pub ghl_burst_max: u32,
    pub ghl_burst_interval: Duration,
    /// Per-attempt GHL timeout (`GHL_REQUEST_TIMEOUT_MS`, 15000).
    pub ghl_request_timeout: Duration,
    /// No GHL retry starts this long after a call began (`GHL_RETRY_DEADLINE_MS`, 60000).
    pub ghl_retry_deadline: Duration,
    /// The fleet's shared GHL budget per location: requests per day (`GHL_DAILY_MAX`, 200000),
    /// places of each window and requests of each day left to interactive reads
    /// (`GHL_INTERACTIVE_RESERVE`, 2; `GHL_DAILY_RESERVE`, 2000), and how late a request may reach
    /// GHL after it starts (`GHL_ARRIVAL_MARGIN_MS`, 150).
    pub ghl_daily_max: u64,
    pub ghl_interactive_reserve: u32,
    pub ghl_daily_reserve: u64,
    pub ghl_arrival_margin: Duration,
    /// Commands applied at once inside one worker batch (`WORKER_BATCH_CONCURRENCY`, 4).
    pub batch_concurrency: usize,
    /// First retry delay of a failed message, doubling per receive (`WORKER_RETRY_BASE_SECS`, 5).
    pub retry_base_secs: u64,
    /// SproutVideo (`SPROUTVIDEO_BASE_URL`, `SPROUTVIDEO_PER_MINUTE`, 90).
    pub sprout_base_url: Url,
    pub sprout_per_minute: u32,
    /// Reconciler (`RECONCILE_LOOKBACK_DAYS` 7, `RECONCILE_PLAN_LINES` 200, `RECONCILE_DELETE_ORPHANS`
    /// false, `RECONCILE_MAX_ORPHAN_DELETES` 25 per run).
    pub lookback_days: u32,
    pub plan_lines: usize,
    pub delete_orphans: bool,
    pub max_orphan_deletes: u64,
    /// The field mapping (`SYNC_MAPPING_FILE`, else the embedded default).
    pub mapping: Arc<Mapping>,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let need = |k: &'static str, hint: &'static str| get(k).ok_or(ConfigError::Missing(k, hint));
        let url = |k: &'static str, default: &str| -> Result<Url, ConfigError> {
            let v = get(k).unwrap_or_else(|| default.to_string());
            Url::parse(&v).map_err(|e| ConfigError::Invalid(k, v, e.to_string()))
        };
        fn num<T: std::str::FromStr>(
            get: &impl Fn(&str) -> Option<String>,
            k: &'static str,
            default: T,
        ) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            match get(k) {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid(k, v, e.to_string())),
            }
        }
        let mapping = match get("SYNC_MAPPING_FILE") {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError::MappingFile(path.clone(), e.to_string()))?;
                Mapping::from_toml(&text)?
            }
            None => Mapping::default_mapping(),
        };
        let ghl_burst_max: u32 = num(&get, "GHL_BURST_MAX", 100)?;
        if ghl_burst_max == 0 {
            return Err(ConfigError::Invalid("GHL_BURST_MAX", "0".into(), "must be at least 1".into()));
        }
        let ghl_interactive_reserve: u32 = num(&get, "GHL_INTERACTIVE_RESERVE", 2)?;
        if ghl_interactive_reserve >= ghl_burst_max {
            return Err(ConfigError::Invalid(
                "GHL_INTERACTIVE_RESERVE",
                ghl_interactive_reserve.to_string(),
                format!("must be less than GHL_BURST_MAX ({ghl_burst_max}), or background work could never call GHL"),
            ));
        }
        Ok(Self {
            tenant: crate::tenants::TenantId::default_tenant(),
            tenant_cache_ttl: Duration::from_secs(num(&get, "TENANT_CACHE_TTL_SECS", 30)?),
            secret_id: need("SYNC_SECRET_ID", "set it to the name or ARN of the sync's Secrets Manager secret")?,
            secret_ttl: Duration::from_secs(num(&get, "SECRET_CACHE_TTL_SECS", 300)?),
            queue_url: need("SYNC_QUEUE_URL", "set it to the URL of the sync's FIFO queue")?,
            dlq_url: get("SYNC_DLQ_URL"),
            table: need("SYNC_TABLE", "set it to the name of the sync's DynamoDB state table")?,
            ghl_base_url: url("GHL_BASE_URL", crate::ghl::DEFAULT_BASE_URL)?,
            ghl_location_id: need("GHL_LOCATION_ID", "set it to the HighLevel sub-account (location) id")?,
            ghl_burst_max,
            ghl_burst_interval: Duration::from_millis(num(&get, "GHL_BURST_INTERVAL_MS", 10_000)?),
            ghl_request_timeout: Duration::from_millis(num(&get, "GHL_REQUEST_TIMEOUT_MS", 15_000)?.max(100)),
            ghl_retry_deadline: Duration::from_millis(num(&get, "GHL_RETRY_DEADLINE_MS", 60_000)?.max(100)),
            ghl_daily_max: num(&get, "GHL_DAILY_MAX", 200_000)?,
            ghl_interactive_reserve,
            ghl_daily_reserve: num(&get, "GHL_DAILY_RESERVE", 2_000)?,
            ghl_arrival_margin: Duration::from_millis(num(&get, "GHL_ARRIVAL_MARGIN_MS", 150)?),
            batch_concurrency: num(&get, "WORKER_BATCH_CONCURRENCY", 4usize)?.max(1),
            retry_base_secs: num(&get, "WORKER_RETRY_BASE_SECS", 5u64)?.max(1),
            sprout_base_url: url("SPROUTVIDEO_BASE_URL", crate::sprout::DEFAULT_BASE_URL)?,
            sprout_per_minute: num(&get, "SPROUTVIDEO_PER_MINUTE", 90)?,
            lookback_days: num(&get, "RECONCILE_LOOKBACK_DAYS", 7)?,
            plan_lines: num(&get, "RECONCILE_PLAN_LINES", 200)?,
            delete_orphans: num(&get, "RECONCILE_DELETE_ORPHANS", false)?,
            max_orphan_deletes: num(&get, "RECONCILE_MAX_ORPHAN_DELETES", 25)?,
            mapping: Arc::new(mapping),
        })
    }

    /// The configuration of a registered tenant: the deployment's settings with the tenant's
    /// location, secret, mapping and (when set) API addresses.
    pub fn for_tenant(&self, record: &crate::tenants::TenantRecord) -> Result<Self, ConfigError> {
        if record.location_id == self.ghl_location_id {
            return Err(ConfigError::Invalid(
                "GHL_LOCATION_ID",
                record.location_id.clone(),
                format!("is the deployment's own location; the tenant '{}' needs another", record.id),
            ));
        }
        let mut c = self.clone();
        c.tenant = record.id.clone();
        c.ghl_location_id = record.location_id.clone();
        c.secret_id = record.secret_id.clone();
        if let Some(toml) = &record.mapping {
            c.mapping = Arc::new(Mapping::from_toml(toml)?);
        }
        if let Some(u) = &record.ghl_base_url {
            c.ghl_base_url = u.clone();
        }
        if let Some(u) = &record.sprout_base_url {
            c.sprout_base_url = u.clone();
        }
        Ok(c)
    }

    /// How long one attempt at a ledgered write can take at most (lookup and create, each within
    /// the retry deadline plus one request): a claim is held this long.
    pub fn claim_lease(&self) -> Duration {
        (self.ghl_retry_deadline + self.ghl_request_timeout) * 2
    }

    /// GHL client settings. The process's own limiter may use the whole window: the fleet's
    /// shared budget ([`Config::budget_settings`]) divides it between processes.
    pub fn ghl_settings(&self) -> crate::ghl::GhlSettings {
        let mut s = crate::ghl::GhlSettings::new(self.ghl_base_url.clone(), self.ghl_location_id.clone());
        s.burst_max = self.ghl_burst_max;
        s.burst_interval = self.ghl_burst_interval;
        s.budget_share = 1.0;
        s.request_timeout = self.ghl_request_timeout;
        s.retry.deadline = Some(self.ghl_retry_deadline);
        s
    }

    /// The fleet's shared GHL budget of the location.
    pub fn budget_settings(&self) -> crate::budget::BudgetSettings {
        crate::budget::BudgetSettings {
            max: self.ghl_burst_max,
            interval: self.ghl_burst_interval,
            daily_max: self.ghl_daily_max,
            interactive_reserve: self.ghl_interactive_reserve,
            daily_reserve: self.ghl_daily_reserve,
            arrival_margin: self.ghl_arrival_margin,
            ..Default::default()
        }
    }

    pub fn sprout_settings(&self) -> crate::sprout::SproutSettings {
        let mut s = crate::sprout::SproutSettings::new(self.sprout_base_url.clone());
        s.per_minute = self.sprout_per_minute;
        s
    }
}

/// Whether this process runs under a Lambda runtime (Lambda itself, or a local stand-in that
/// serves the Runtime API): `AWS_LAMBDA_RUNTIME_API` is set.
pub fn in_lambda() -> bool {
    std::env::var("AWS_LAMBDA_RUNTIME_API").is_ok()
}

/// Sets up `tracing`: JSON lines (`LOG_FORMAT=json`, the default in Lambda) or text, filtered by
/// `RUST_LOG` (default `info`).
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").map(|f| f == "json").unwrap_or(in_lambda());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let _ = if json {
        builder.json().flatten_event(true).with_current_span(true).without_time().try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    const BASE: &[(&str, &str)] =
        &[("SYNC_SECRET_ID", "sync"), ("SYNC_QUEUE_URL", "http://q"), ("SYNC_TABLE", "t"), ("GHL_LOCATION_ID", "loc")];

    #[test]
    fn defaults_fill_the_rest() {
        let c = Config::from_lookup(env(BASE)).unwrap();
        assert_eq!(c.ghl_burst_max, 100);
        assert_eq!(c.ghl_settings().budget_share, 1.0);
        assert_eq!(c.budget_settings(), crate::budget::BudgetSettings::default());
        assert_eq!(c.ghl_base_url.as_str(), "https://services.leadconnectorhq.com/");
        assert_eq!(c.lookback_days, 7);
    }

    #[test]
    fn errors_name_the_variable_and_say_what_to_do() {
        let e = Config::from_lookup(env(&BASE[1..])).unwrap_err().to_string();
        assert!(e.contains("SYNC_SECRET_ID") && e.contains("Secrets Manager"), "{e}");
        let mut bad = BASE.to_vec();
        bad.push(("GHL_BURST_MAX", "lots"));
        let e = Config::from_lookup(env(&bad)).unwrap_err().to_string();
        assert!(e.contains("GHL_BURST_MAX='lots'"), "{e}");
        let mut bad = BASE.to_vec();
        bad.push(("GHL_INTERACTIVE_RESERVE", "100"));
        let e = Config::from_lookup(env(&bad)).unwrap_err().to_string();
        assert!(e.contains("GHL_INTERACTIVE_RESERVE='100'") && e.contains("less than GHL_BURST_MAX"), "{e}");
        let mut bad = BASE.to_vec();
        bad.push(("SYNC_MAPPING_FILE", "/nonexistent/mapping.toml"));
        assert!(Config::from_lookup(env(&bad)).unwrap_err().to_string().contains("/nonexistent/mapping.toml"));
    }
}
