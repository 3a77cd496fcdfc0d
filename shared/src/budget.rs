//! One GHL request budget per location, shared by every process that calls GHL for it: the
//! workers, the reconciler and the intake's one-view.
//!
//! GHL counts 100 requests per 10 s (and 200,000 a day) per app and location, whoever sends
//! them. The fleet keeps one record of that window in the state table (`budget#<location>`): the
//! times at which requests were allowed to start. A process asks the record for a start before
//! each request; the record grants it while fewer than the ceiling started within the window, so
//! an idle process takes nothing and a busy one takes what is free. The record is read and
//! written with a version check, so two processes never take the same place.
//!
//! How long a start counts: the window, plus [`BudgetSettings::start_within`] (a granted start
//! not used by then is given up, still counted) plus [`BudgetSettings::arrival_margin`] (how late
//! after it starts a request may reach GHL, and how far two hosts' clocks may differ). GHL thus
//! never sees more than its ceiling in any window, even though it counts a request on arrival.
//!
//! Two lanes share the window. Interactive reads (the one-view) may use all of it; bulk work
//! (workers, reconciler) leaves [`BudgetSettings::interactive_reserve`] places of each window and
//! [`BudgetSettings::daily_reserve`] requests of each day free, so a person's view answers while
//! the same location is saturated with writes.
//!
//! GHL's `X-RateLimit-*` headers count what GHL saw from everyone (another integration on the
//! same app, a request that arrived late). When they say less is left than the record knows,
//! the difference is written into the record as spent; a 429 pauses the whole fleet.
//!
//! [`WindowState`] is the record and its rules, without I/O; [`FleetBudget`] is one process's
//! handle on it, and [`BudgetStore`] is where the record is kept (DynamoDB, or memory in tests).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::time::Instant;

use crate::state::StateError;

/// Who is asking: a person waiting for an answer, or background work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// A read a person waits for (the one-view): may use the whole window and the whole day.
    Interactive,
    /// Workers and the reconciler: leave the reserves free.
    Bulk,
}

/// The budget's ceilings and margins.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSettings {
    /// Requests per window (`GHL_BURST_MAX`, 100) and the window (`GHL_BURST_INTERVAL_MS`, 10 s);
    /// GHL's headers override both when they say otherwise.
    pub max: u32,
    pub interval: Duration,
    /// Requests per day (`GHL_DAILY_MAX`, 200,000); GHL's headers override it.
    pub daily_max: u64,
    /// Places of each window bulk work leaves to interactive reads (`GHL_INTERACTIVE_RESERVE`, 2).
    pub interactive_reserve: u32,
    /// Requests of each day bulk work leaves to interactive reads (`GHL_DAILY_RESERVE`, 2,000).
    pub daily_reserve: u64,
    /// A granted start not used within this is given up (still counted); a start whose grant
    /// came back later than this plus half the arrival margin is given up at once.
    pub start_within: Duration,
    /// How late after its start a request may reach GHL, clock differences between hosts
    /// included (`GHL_ARRIVAL_MARGIN_MS`, 150).
    pub arrival_margin: Duration,
    /// The most starts one process takes in one read-and-write of the record.
    pub batch_max: u32,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            max: 100,
            interval: Duration::from_secs(10),
            daily_max: 200_000,
            interactive_reserve: 2,
            daily_reserve: 2_000,
            start_within: Duration::from_millis(50),
            arrival_margin: Duration::from_millis(150),
            batch_max: 8,
        }
    }
}

/// The shared record of one location's window and day.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowState {
    /// Granted starts, oldest first: `[unix ms, how many]`.
    #[serde(default)]
    pub starts: Vec<[i64; 2]>,
    /// No request starts before this (unix ms; after a 429).
    #[serde(default)]
    pub paused_until: i64,
    /// The UTC day (days since the epoch) `day_used` counts.
    #[serde(default)]
    pub day: i64,
    #[serde(default)]
    pub day_used: u64,
    /// The ceilings GHL's headers last gave, when they differ from the configured ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_max: Option<u64>,
}

/// What the record says to a request for starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// This many starts are granted (at least one).
    Granted(u32),
    /// None now; ask again after this long.
    Wait(Duration),
    /// The day's budget (less the reserve, for bulk work) is spent until the next UTC day.
    DaySpent(Duration),
}

/// What GHL's headers said on an answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    pub max: Option<u32>,
    pub interval: Option<Duration>,
    pub remaining: Option<u32>,
    pub daily_max: Option<u64>,
    pub daily_remaining: Option<u64>,
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// The daily count is written back from GHL's headers only when it is off by more than this, so
/// that an answer does not cost a write of the record.
const DAILY_CORRECTION_MIN: u64 = 20;

impl WindowState {
    fn max(&self, s: &BudgetSettings) -> u32 {
        self.max.unwrap_or(s.max).max(1)
    }

    fn daily_max(&self, s: &BudgetSettings) -> u64 {
        self.daily_max.unwrap_or(s.daily_max)
    }

    /// How long a start counts.
    pub fn span_ms(&self, s: &BudgetSettings) -> i64 {
        let interval = self.interval_ms.unwrap_or(s.interval.as_millis() as u64) as i64;
        interval + s.start_within.as_millis() as i64 + s.arrival_margin.as_millis() as i64
    }

    /// Starts still counting at `now`.
    pub fn used(&self) -> u32 {
        self.starts.iter().map(|[_, n]| *n as u32).sum()
    }

    fn prune(&mut self, now_ms: i64, s: &BudgetSettings) {
        let span = self.span_ms(s);
        self.starts.retain(|[t, _]| now_ms - t < span);
    }

    fn roll_day(&mut self, now_ms: i64) {
        // Only forward: a host whose clock is a little behind must not reopen yesterday.
        let day = now_ms.div_euclid(DAY_MS);
        if day > self.day {
            self.day = day;
            self.day_used = 0;
        }
    }

    fn push(&mut self, now_ms: i64, n: u32) {
        match self.starts.last_mut() {
            Some([t, k]) if *t == now_ms => *k += n as i64,
            _ => self.starts.push([now_ms, n as i64]),
        }
    }

    /// Asks for up to `want` starts at `now_ms`; on a grant the record changed and must be
    /// written back.
    pub fn take(&mut self, now_ms: i64, want: u32, lane: Lane, s: &BudgetSettings) -> Decision {
        self.roll_day(now_ms);
        if self.paused_until > now_ms {
            return Decision::Wait(Duration::from_millis((self.paused_until - now_ms) as u64));
        }
        let daily_reserve = if lane == Lane::Bulk { s.daily_reserve } else { 0 };
        let day_left = self.daily_max(s).saturating_sub(self.day_used).saturating_sub(daily_reserve);
        if day_left == 0 {
            let next_day = (self.day + 1) * DAY_MS;
            return Decision::DaySpent(Duration::from_millis((next_day - now_ms).max(0) as u64));
        }
        self.prune(now_ms, s);
        let max = self.max(s);
        let reserve = if lane == Lane::Bulk { s.interactive_reserve.min(max - 1) } else { 0 };
        let ceiling = max - reserve;
        let used = self.used();
        if used >= ceiling {
            // Room comes back when enough of the oldest starts stop counting.
            let mut still = used;
            let span = self.span_ms(s);
            for [t, n] in &self.starts {
                still -= *n as u32;
                if still < ceiling {
                    return Decision::Wait(Duration::from_millis((t + span - now_ms).max(1) as u64));
                }
            }
            return Decision::Wait(Duration::from_millis(1));
        }
        let n = want.max(1).min(ceiling - used).min(day_left.min(u32::MAX as u64) as u32);
        self.push(now_ms, n);
        self.day_used += n as u64;
        Decision::Granted(n)
    }

    /// Takes in what GHL's headers said; true when the record changed and must be written.
    pub fn observe(&mut self, now_ms: i64, o: &Observed, s: &BudgetSettings) -> bool {
        let mut changed = false;
        if let Some(m) = o.max.filter(|m| *m > 0 && *m != self.max(s)) {
            self.max = Some(m);
            changed = true;
        }
        let interval_ms = o.interval.map(|i| i.as_millis() as u64).filter(|i| *i > 0);
        if let Some(i) = interval_ms.filter(|i| Some(*i) != self.interval_ms && *i != s.interval.as_millis() as u64) {
            self.interval_ms = Some(i);
            changed = true;
        }
        if let Some(d) = o.daily_max.filter(|d| *d > 0 && *d != self.daily_max(s)) {
            self.daily_max = Some(d);
            changed = true;
        }
        self.roll_day(now_ms);
        self.prune(now_ms, s);
        if let Some(r) = o.remaining {
            // GHL counted more than the record holds: someone else spent the difference.
            let seen = self.max(s).saturating_sub(r);
            let known = self.used();
            if seen > known {
                self.push(now_ms, seen - known);
                changed = true;
            }
        }
        if let Some(r) = o.daily_remaining {
            let seen = self.daily_max(s).saturating_sub(r);
            if seen > self.day_used + DAILY_CORRECTION_MIN {
                self.day_used = seen;
                changed = true;
            }
        }
        changed
    }

    /// Holds every start of the fleet until `until_ms`; true when that moved the pause on.
    pub fn pause(&mut self, until_ms: i64) -> bool {
        if until_ms > self.paused_until {
            self.paused_until = until_ms;
            true
        } else {
            false
        }
    }
}

/// Where the fleet's records are kept: one item per location, written only when it still has the
/// version that was read.
#[async_trait]
pub trait BudgetStore: Send + Sync {
    /// The record and its version (None when there is none yet).
    async fn load_budget(&self, location: &str) -> Result<Option<(WindowState, u64)>, StateError>;
    /// Writes the record if its version is still `expected` (None: if there is none); false when
    /// another process wrote it first.
    async fn swap_budget(&self, location: &str, expected: Option<u64>, state: &WindowState)
    -> Result<bool, StateError>;
}

/// The partition key of a location's budget record.
pub fn budget_pk(location: &str) -> String {
    format!("budget#{location}")
}

/// How long an untouched record is kept (it holds a day's count).
pub const BUDGET_TTL: Duration = Duration::from_secs(2 * 24 * 3600);

/// Why no start was granted.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum BudgetError {
    /// The window is full (or paused) for longer than the caller may wait.
    #[error("the location's GHL window is full for another {} ms", .0.as_millis())]
    Full(Duration),
    /// The day's budget is spent for this lane.
    #[error("the location's GHL daily budget is spent for background work; it resumes in {} s", .0.as_secs())]
    DaySpent(Duration),
    /// The record could not be read or written.
    #[error("the shared GHL budget could not be used: {0}")]
    Store(StateError),
}

/// What one process's handle did, for metrics.
#[derive(Debug, Default)]
pub struct BudgetStats {
    /// Reads of the record.
    pub reads: AtomicU64,
    /// Writes of the record, and writes refused because another process wrote first.
    pub writes: AtomicU64,
    pub conflicts: AtomicU64,
    /// Starts granted to this process, and how long its callers waited for them in all (ms).
    pub granted: AtomicU64,
    pub waited_ms: AtomicU64,
    /// Starts given up because the write that took them came back too late to use them.
    pub late: AtomicU64,
}

/// How many read-and-write rounds a request makes before the record counts as unavailable.
const MAX_ROUNDS: u32 = 50;

#[derive(Debug, Default)]
struct Stash {
    left: u32,
    until: Option<Instant>,
}

/// One process's handle on a location's budget. Starts taken in one round and not yet used are
/// kept briefly for the process's next requests of the same lane.
pub struct FleetBudget {
    store: Arc<dyn BudgetStore>,
    location: String,
    settings: BudgetSettings,
    stash: [std::sync::Mutex<Stash>; 2],
    rounds: [tokio::sync::Mutex<()>; 2],
    waiting: [AtomicU32; 2],
    /// The record as last read, to tell without a read whether GHL's headers say anything new.
    last_seen: std::sync::Mutex<WindowState>,
    stats: BudgetStats,
    now_ms: fn() -> i64,
}

impl std::fmt::Debug for FleetBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetBudget").field("location", &self.location).field("settings", &self.settings).finish()
    }
}

fn system_now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn lane_index(l: Lane) -> usize {
    match l {
        Lane::Interactive => 0,
        Lane::Bulk => 1,
    }
}

impl FleetBudget {
    pub fn new(store: Arc<dyn BudgetStore>, location: impl Into<String>, settings: BudgetSettings) -> Self {
        Self {
            store,
            location: location.into(),
            settings,
            stash: Default::default(),
            rounds: Default::default(),
            waiting: Default::default(),
            last_seen: Default::default(),
            stats: BudgetStats::default(),
            now_ms: system_now_ms,
        }
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn settings(&self) -> &BudgetSettings {
        &self.settings
    }

    pub fn stats(&self) -> &BudgetStats {
        &self.stats
    }

    fn take_stashed(&self, lane: Lane) -> bool {
        let mut s = self.stash[lane_index(lane)].lock().unwrap_or_else(|e| e.into_inner());
        if s.left > 0 && s.until.is_some_and(|u| u > Instant::now()) {
            s.left -= 1;
            true
        } else {
            false
        }
    }

    /// Waits for one start of `lane`, at most `max_wait` (None: as long as it takes, short of
    /// a spent day).
    pub async fn take(&self, lane: Lane, max_wait: Option<Duration>) -> Result<(), BudgetError> {
        let asked = Instant::now();
        let i = lane_index(lane);
        // Counted while waiting, and no longer once this call ends or is dropped.
        struct Waiting<'a>(&'a AtomicU32);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiting[i].fetch_add(1, Ordering::SeqCst);
        let waiting = Waiting(&self.waiting[i]);
        let r = async {
            loop {
                if self.take_stashed(lane) {
                    return Ok(());
                }
                let wait = {
                    let _round = self.rounds[i].lock().await;
                    if self.take_stashed(lane) {
                        return Ok(());
                    }
                    let want = self.waiting[i].load(Ordering::SeqCst).clamp(1, self.settings.batch_max.max(1));
                    match self.round(lane, want).await? {
                        (Decision::Granted(n), stamped) => {
                            // The starts count from when they were stamped. One used after
                            // `start_within` eats into the arrival margin; past half of it, it
                            // could reach GHL after the record stops counting it, so a write
                            // that came back that late gives its starts up (still counted).
                            let until = stamped + self.settings.start_within;
                            if Instant::now() >= until + self.settings.arrival_margin / 2 {
                                self.stats.late.fetch_add(n as u64, Ordering::Relaxed);
                                continue;
                            }
                            let mut s = self.stash[i].lock().unwrap_or_else(|e| e.into_inner());
                            s.left = n - 1;
                            s.until = Some(until);
                            return Ok(());
                        }
                        (Decision::DaySpent(d), _) => return Err(BudgetError::DaySpent(d)),
                        (Decision::Wait(d), _) => d,
                    }
                };
                if let Some(m) = max_wait
                    && asked.elapsed() + wait > m
                {
                    return Err(BudgetError::Full(wait));
                }
                // A little spread, so that processes woken for the same place do not all ask at once.
                tokio::time::sleep(wait + Duration::from_millis(fastrand::u64(0..16))).await;
            }
        }
        .await;
        drop(waiting);
        if r.is_ok() {
            self.stats.granted.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.waited_ms.fetch_add(asked.elapsed().as_millis() as u64, Ordering::Relaxed);
        r
    }

    /// One read-and-write of the record: the decision, and when its starts were stamped.
    async fn round(&self, lane: Lane, want: u32) -> Result<(Decision, Instant), BudgetError> {
        for _ in 0..MAX_ROUNDS {
            let (mut st, ver) = self.load().await?;
            let stamped = Instant::now();
            let d = st.take((self.now_ms)(), want, lane, &self.settings);
            if !matches!(d, Decision::Granted(_)) {
                return Ok((d, stamped));
            }
            if self.swap(ver, &st).await? {
                return Ok((d, stamped));
            }
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..3))).await;
        }
        Err(BudgetError::Store(StateError::Unavailable(format!(
            "the budget record of {} kept changing under {MAX_ROUNDS} attempts to write it",
            self.location
        ))))
    }

    async fn swap(&self, ver: Option<u64>, st: &WindowState) -> Result<bool, BudgetError> {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        let written = self.store.swap_budget(&self.location, ver, st).await.map_err(BudgetError::Store)?;
        if written {
            self.saw(st);
        } else {
            self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        Ok(written)
    }

    async fn load(&self) -> Result<(WindowState, Option<u64>), BudgetError> {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        let (st, ver) = match self.store.load_budget(&self.location).await.map_err(BudgetError::Store)? {
            Some((st, v)) => (st, Some(v)),
            None => (WindowState::default(), None),
        };
        self.saw(&st);
        Ok((st, ver))
    }

    fn saw(&self, st: &WindowState) {
        *self.last_seen.lock().unwrap_or_else(|e| e.into_inner()) = st.clone();
    }

    /// Changes the record with `f` (true: it changed), retrying on a version conflict.
    async fn update(&self, f: impl Fn(&mut WindowState, i64) -> bool) -> Result<(), BudgetError> {
        for _ in 0..MAX_ROUNDS {
            let (mut st, ver) = self.load().await?;
            if !f(&mut st, (self.now_ms)()) {
                return Ok(());
            }
            if self.swap(ver, &st).await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..3))).await;
        }
        Err(BudgetError::Store(StateError::Unavailable("the budget record kept changing".into())))
    }

    /// Takes in what GHL's headers said. Writes the record only when they say more was spent
    /// than it holds (or the ceilings changed); a failure to write is logged, not returned: the
    /// answer it came with stands.
    pub async fn observe(&self, o: Observed) {
        // Most answers agree with the record: only when they do not against the record as last
        // seen is it read again (and written if it still disagrees).
        let settings = &self.settings;
        let news = {
            let mut seen = self.last_seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
            seen.observe((self.now_ms)(), &o, settings)
        };
        if !news {
            return;
        }
        if let Err(e) = self.update(|st, now| st.observe(now, &o, settings)).await {
            tracing::warn!(location = %self.location, error = %e, "could not correct the shared GHL budget");
        }
    }

    /// Holds every process's requests for `d` (after a 429).
    pub async fn pause(&self, d: Duration) {
        let until = (self.now_ms)() + d.as_millis().min(i64::MAX as u128) as i64;
        if let Err(e) = self.update(|st, _| st.pause(until)).await {
            tracing::warn!(location = %self.location, error = %e, "could not pause the shared GHL budget");
        }
    }

    /// The record as it stands (for the doctor and tests).
    pub async fn snapshot(&self) -> Result<WindowState, BudgetError> {
        Ok(self.load().await?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BudgetSettings {
        BudgetSettings {
            max: 10,
            interval: Duration::from_secs(10),
            daily_max: 1000,
            interactive_reserve: 2,
            daily_reserve: 100,
            start_within: Duration::from_millis(100),
            arrival_margin: Duration::from_millis(150),
            batch_max: 8,
        }
    }

    const T0: i64 = 1_800_000_000_000;

    #[test]
    fn bulk_work_leaves_the_interactive_reserve_free() {
        let s = settings();
        let mut w = WindowState::default();
        assert_eq!(w.take(T0, 5, Lane::Bulk, &s), Decision::Granted(5));
        assert_eq!(w.take(T0, 5, Lane::Bulk, &s), Decision::Granted(3), "two places are kept");
        let Decision::Wait(d) = w.take(T0 + 1, 1, Lane::Bulk, &s) else { panic!("bulk must wait") };
        assert_eq!(d, Duration::from_millis(10_250 - 1), "until the first starts stop counting");
        assert_eq!(w.take(T0 + 1, 5, Lane::Interactive, &s), Decision::Granted(2));
        assert!(matches!(w.take(T0 + 2, 1, Lane::Interactive, &s), Decision::Wait(_)));
        assert_eq!(w.used(), 10);
    }

    #[test]
    fn a_start_counts_for_the_window_plus_its_margins() {
        let s = settings();
        let mut w = WindowState::default();
        assert_eq!(w.take(T0, 10, Lane::Interactive, &s), Decision::Granted(10));
        assert!(matches!(w.take(T0 + 10_249, 1, Lane::Interactive, &s), Decision::Wait(_)));
        assert_eq!(w.take(T0 + 10_250, 1, Lane::Interactive, &s), Decision::Granted(1));
    }

    #[test]
    fn interactive_reads_get_each_freed_place_before_bulk_work() {
        let s = settings();
        let mut w = WindowState::default();
        for k in 0..8 {
            assert_eq!(w.take(T0 + k, 1, Lane::Bulk, &s), Decision::Granted(1));
        }
        assert_eq!(w.take(T0 + 10, 2, Lane::Interactive, &s), Decision::Granted(2));
        // The first bulk start stops counting: bulk still sees the reserve short, a read does not.
        let later = T0 + 10_250;
        assert!(matches!(w.take(later, 1, Lane::Bulk, &s), Decision::Wait(_)));
        assert_eq!(w.take(later, 1, Lane::Interactive, &s), Decision::Granted(1));
    }

    #[test]
    fn the_day_is_counted_and_bulk_work_leaves_its_reserve() {
        let s = settings();
        let mut w = WindowState::default();
        let mut now = T0;
        let mut bulk = 0;
        loop {
            match w.take(now, 8, Lane::Bulk, &s) {
                Decision::Granted(n) => bulk += n,
                Decision::Wait(d) => now += d.as_millis() as i64,
                Decision::DaySpent(d) => {
                    assert!(d <= Duration::from_secs(24 * 3600));
                    break;
                }
            }
        }
        assert_eq!(bulk, 900, "the daily reserve of 100 is left");
        assert!(matches!(w.take(now, 1, Lane::Interactive, &s), Decision::Granted(1) | Decision::Wait(_)));
        // A new UTC day starts the count again.
        let tomorrow = (T0.div_euclid(DAY_MS) + 1) * DAY_MS;
        assert_eq!(w.take(tomorrow, 1, Lane::Bulk, &s), Decision::Granted(1));
        assert_eq!(w.day_used, 1);
    }

    #[test]
    fn ghl_headers_correct_the_record_only_upwards() {
        let s = settings();
        let mut w = WindowState::default();
        assert_eq!(w.take(T0, 2, Lane::Bulk, &s), Decision::Granted(2));
        // GHL says 5 are left of 10: three more than the record knows were spent elsewhere.
        assert!(w.observe(T0 + 5, &Observed { remaining: Some(5), ..Default::default() }, &s));
        assert_eq!(w.used(), 5);
        // Saying more is left than the record knows changes nothing (requests still on their way).
        assert!(!w.observe(T0 + 6, &Observed { remaining: Some(9), ..Default::default() }, &s));
        // New ceilings are taken from the headers.
        let o = Observed { max: Some(20), interval: Some(Duration::from_secs(5)), ..Default::default() };
        assert!(w.observe(T0 + 7, &o, &s));
        assert_eq!((w.max, w.interval_ms), (Some(20), Some(5000)));
        assert!(!w.observe(T0 + 8, &o, &s), "the same ceilings again change nothing");
        // The daily count follows GHL when it is off by more than a little.
        assert!(!w.observe(T0 + 9, &Observed { daily_remaining: Some(990), ..Default::default() }, &s));
        assert!(w.observe(T0 + 9, &Observed { daily_remaining: Some(500), ..Default::default() }, &s));
        assert_eq!(w.day_used, 500);
    }

    #[test]
    fn a_pause_holds_every_lane() {
        let s = settings();
        let mut w = WindowState::default();
        assert!(w.pause(T0 + 3000));
        assert!(!w.pause(T0 + 1000), "a shorter pause does not shorten it");
        assert_eq!(w.take(T0, 1, Lane::Interactive, &s), Decision::Wait(Duration::from_millis(3000)));
        assert_eq!(w.take(T0 + 3000, 1, Lane::Bulk, &s), Decision::Granted(1));
    }

    #[test]
    fn the_record_reads_back_as_written() {
        let mut w = WindowState::default();
        w.take(T0, 3, Lane::Bulk, &settings());
        let text = serde_json::to_string(&w).unwrap();
        assert_eq!(serde_json::from_str::<WindowState>(&text).unwrap(), w);
        assert!(!text.contains("interval_ms"), "unset ceilings are left out: {text}");
    }
}
