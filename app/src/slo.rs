//! SLOs and their error budgets, evaluated in-process (issue 15, items 2 and 3; SPEC §12), and
//! the alert drill's switch.
//!
//! The SLOs are the ones `ops/prometheus/rules/slo.yml` states for Prometheus: availability
//! (99.9 % of requests without a 5xx) and latency of commands (95 % under 100 ms, 99 % under
//! 250 ms), each over a 30-day budget, with the same multi-window, multi-burn-rate alerts. The
//! edge (`api::metrics`) feeds a [`Recorder`] with every request's outcome; [`evaluate`] turns
//! its windows into burn rates, the budget each window spent, and the alerts that would fire.
//! Nothing here knows HTTP: the edge passes numbers.

use crate::{Ctx, Error};
use commands::{ExecuteError, Executor, ExecutorConfig};
use domain::TenantId;
use domain::drill::{DrillCommand, DrillLog, DrillStarted};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use time::OffsetDateTime;

/// The budget's period: 30 days.
pub const BUDGET_PERIOD_SECONDS: u64 = 30 * 86_400;

/// Which requests an SLO counts, and which of them are bad.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sli {
    /// Every request; bad: a 5xx.
    Availability,
    /// Commands (POST, PUT, PATCH, DELETE); bad: slower than this many milliseconds.
    CommandLatency { threshold_ms: u64 },
}

#[derive(Clone, Copy, Debug)]
pub struct Slo {
    pub name: &'static str,
    /// The share of good requests promised (0.999).
    pub objective: f64,
    pub sli: Sli,
    pub description: &'static str,
}

/// SPEC §12's SLOs.
pub const SLOS: &[Slo] = &[
    Slo {
        name: "availability",
        objective: 0.999,
        sli: Sli::Availability,
        description: "99.9 % of requests answered without a 5xx, over 30 days",
    },
    Slo {
        name: "latency-p95",
        objective: 0.95,
        sli: Sli::CommandLatency { threshold_ms: 100 },
        description: "95 % of commands (POST, PUT, PATCH, DELETE) answered within 100 ms",
    },
    Slo {
        name: "latency-p99",
        objective: 0.99,
        sli: Sli::CommandLatency { threshold_ms: 250 },
        description: "99 % of commands (POST, PUT, PATCH, DELETE) answered within 250 ms",
    },
];

/// A multi-window, multi-burn-rate alert: it fires when the burn rate over both windows exceeds
/// `burn_rate` (as the Prometheus rules say: `>`).
#[derive(Clone, Copy, Debug)]
pub struct AlertRule {
    pub name: &'static str,
    pub severity: &'static str,
    pub long_seconds: u64,
    pub short_seconds: u64,
    pub burn_rate: f64,
}

/// SPEC §12's alerts (30-day budget): 2 % of the budget in 1 h, 5 % in 6 h, 10 % in 1 d and 3 d.
pub const ALERTS: &[AlertRule] = &[
    AlertRule {
        name: "page-fast",
        severity: "page",
        long_seconds: 3600,
        short_seconds: 300,
        burn_rate: 14.4,
    },
    AlertRule {
        name: "page-slow",
        severity: "page",
        long_seconds: 6 * 3600,
        short_seconds: 1800,
        burn_rate: 6.0,
    },
    AlertRule {
        name: "ticket-fast",
        severity: "ticket",
        long_seconds: 86_400,
        short_seconds: 2 * 3600,
        burn_rate: 3.0,
    },
    AlertRule {
        name: "ticket-slow",
        severity: "ticket",
        long_seconds: 3 * 86_400,
        short_seconds: 6 * 3600,
        burn_rate: 1.0,
    },
];

/// Counts of requests in some span of time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    /// Answered with a 5xx.
    pub errors: u64,
    /// POST, PUT, PATCH and DELETE requests.
    pub commands: u64,
    /// Commands slower than 100 ms, and than 250 ms.
    pub commands_over_100ms: u64,
    pub commands_over_250ms: u64,
}

impl Counts {
    /// One request.
    pub fn of(method: &str, status: u16, seconds: f64) -> Counts {
        let command = matches!(method, "POST" | "PUT" | "PATCH" | "DELETE");
        Counts {
            requests: 1,
            errors: u64::from(status >= 500),
            commands: u64::from(command),
            commands_over_100ms: u64::from(command && seconds > 0.1),
            commands_over_250ms: u64::from(command && seconds > 0.25),
        }
    }

    fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.commands += o.commands;
        self.commands_over_100ms += o.commands_over_100ms;
        self.commands_over_250ms += o.commands_over_250ms;
    }

    /// (valid events, bad events) for an SLI.
    pub fn events(&self, sli: Sli) -> (u64, u64) {
        match sli {
            Sli::Availability => (self.requests, self.errors),
            Sli::CommandLatency { threshold_ms } if threshold_ms <= 100 => {
                (self.commands, self.commands_over_100ms)
            }
            Sli::CommandLatency { .. } => (self.commands, self.commands_over_250ms),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    stamp: u64,
    counts: Counts,
}

const SECOND_SLOTS: usize = 3600;
const MINUTE_SLOTS: usize = 3 * 24 * 60;

/// Request counts per second for the last hour and per minute for the last three days (the
/// longest alert window): about 300 KiB, whatever the traffic.
#[derive(Debug)]
pub struct Recorder {
    rings: Mutex<(Vec<Slot>, Vec<Slot>)>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            rings: Mutex::new((
                vec![Slot::default(); SECOND_SLOTS],
                vec![Slot::default(); MINUTE_SLOTS],
            )),
        }
    }
}

fn bump(ring: &mut [Slot], stamp: u64, c: &Counts) {
    let slot = &mut ring[(stamp % ring.len() as u64) as usize];
    if slot.stamp > stamp {
        // Older than what the ring keeps (a clock stepping back): not counted.
        return;
    }
    if slot.stamp < stamp {
        *slot = Slot {
            stamp,
            counts: Counts::default(),
        };
    }
    slot.counts.add(c);
}

impl Recorder {
    /// Count `c` at `unix_seconds`.
    pub fn record(&self, unix_seconds: u64, c: Counts) {
        let mut rings = self.rings.lock().expect("slo ring lock");
        bump(&mut rings.0, unix_seconds, &c);
        bump(&mut rings.1, unix_seconds / 60, &c);
    }

    /// The counts of the last `seconds` up to `now` (whole seconds up to an hour, whole minutes
    /// beyond; at most three days).
    pub fn window(&self, now: u64, seconds: u64) -> Counts {
        let rings = self.rings.lock().expect("slo ring lock");
        let mut out = Counts::default();
        let (ring, now, span) = if seconds <= SECOND_SLOTS as u64 {
            (&rings.0, now, seconds)
        } else {
            (
                &rings.1,
                now / 60,
                seconds.div_ceil(60).min(MINUTE_SLOTS as u64),
            )
        };
        for slot in ring.iter() {
            if slot.stamp <= now && slot.stamp + span > now && slot.counts.requests > 0 {
                out.add(&slot.counts);
            }
        }
        out
    }
}

/// One SLO over one window.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowStatus {
    /// The window's nominal name (`1h`), and its length as evaluated (divided by the scale).
    pub window: &'static str,
    pub seconds: u64,
    pub events: u64,
    pub bad: u64,
    /// bad / events (0 without events).
    pub bad_ratio: f64,
    /// bad_ratio / (1 − objective): 1 spends the budget exactly over the period.
    pub burn_rate: f64,
    /// The share of the 30-day budget this window spent: burn_rate × nominal window / 30 days.
    pub budget_spent: f64,
    /// 1 − budget_spent: what is left of the budget if the rest of the period was clean.
    pub budget_remaining: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AlertStatus {
    pub alert: &'static str,
    pub severity: &'static str,
    pub long_window: &'static str,
    pub short_window: &'static str,
    pub burn_rate: f64,
    pub firing: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SloStatus {
    pub slo: &'static str,
    pub objective: f64,
    pub description: &'static str,
    pub windows: Vec<WindowStatus>,
    pub alerts: Vec<AlertStatus>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SloReport {
    /// Windows are divided by this (1: as stated; 60: an hour lasts a minute, for drills).
    pub scale: u64,
    pub slos: Vec<SloStatus>,
    /// `slo:alert` of every alert firing, e.g. `availability:page-fast`.
    pub firing: Vec<String>,
}

/// The windows the alerts read, shortest first.
pub const WINDOWS: &[(&str, u64)] = &[
    ("5m", 300),
    ("30m", 1800),
    ("1h", 3600),
    ("2h", 7200),
    ("6h", 21_600),
    ("1d", 86_400),
    ("3d", 259_200),
];

fn window_name(seconds: u64) -> &'static str {
    WINDOWS
        .iter()
        .find(|(_, s)| *s == seconds)
        .map_or("?", |(n, _)| n)
}

/// Evaluate every SLO and alert from the counts of each window; `counts(seconds)` gives the last
/// `seconds` of requests. With `scale` > 1 every window is divided by it (at least 1 second), so a
/// drill sees an hour's alert in a minute.
pub fn evaluate(counts: impl Fn(u64) -> Counts, scale: u64) -> SloReport {
    let scale = scale.max(1);
    let measured: Vec<(&'static str, u64, u64, Counts)> = WINDOWS
        .iter()
        .map(|(name, seconds)| {
            let effective = (seconds / scale).max(1);
            (*name, *seconds, effective, counts(effective))
        })
        .collect();
    let mut firing = Vec::new();
    let slos = SLOS
        .iter()
        .map(|slo| {
            let budget = 1.0 - slo.objective;
            let windows: Vec<WindowStatus> = measured
                .iter()
                .map(|(name, nominal, effective, c)| {
                    let (events, bad) = c.events(slo.sli);
                    let bad_ratio = if events == 0 {
                        0.0
                    } else {
                        bad as f64 / events as f64
                    };
                    let burn_rate = bad_ratio / budget;
                    let budget_spent = burn_rate * *nominal as f64 / BUDGET_PERIOD_SECONDS as f64;
                    WindowStatus {
                        window: name,
                        seconds: *effective,
                        events,
                        bad,
                        bad_ratio,
                        burn_rate,
                        budget_spent,
                        budget_remaining: 1.0 - budget_spent,
                    }
                })
                .collect();
            let burn = |seconds: u64| {
                windows
                    .iter()
                    .zip(WINDOWS)
                    .find(|(_, (_, s))| *s == seconds)
                    .map_or(0.0, |(w, _)| w.burn_rate)
            };
            let alerts = ALERTS
                .iter()
                .map(|rule| {
                    let on = burn(rule.long_seconds) > rule.burn_rate
                        && burn(rule.short_seconds) > rule.burn_rate;
                    if on {
                        firing.push(format!("{}:{}", slo.name, rule.name));
                    }
                    AlertStatus {
                        alert: rule.name,
                        severity: rule.severity,
                        long_window: window_name(rule.long_seconds),
                        short_window: window_name(rule.short_seconds),
                        burn_rate: rule.burn_rate,
                        firing: on,
                    }
                })
                .collect();
            SloStatus {
                slo: slo.name,
                objective: slo.objective,
                description: slo.description,
                windows,
                alerts,
            }
        })
        .collect();
    SloReport {
        scale,
        slos,
        firing,
    }
}

/// Paths a drill never touches: the operations routes (the drill must stay stoppable and the
/// SLO readable), the scrape and the health checks.
const NEVER_DRILLED: &[&str] = &["/v1/ops/", "/metrics", "/healthz", "/readyz", "/livez"];

/// What the edge does to one request under a drill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injection {
    /// Answer 503 `drill-injected` instead of running the request.
    pub fail: bool,
    pub added_latency_ms: u64,
}

/// The alert drill: its record (stream `drills` of the platform tenant) and the drill in force,
/// which the edge reads on every request.
#[derive(Debug)]
pub struct Drills {
    log: Executor<DrillLog>,
    active: RwLock<Option<DrillStarted>>,
    matched: AtomicU64,
}

impl Drills {
    pub fn new(store: store::Store) -> Self {
        Self {
            log: Executor::new(store, ExecutorConfig::new("drill/v1")),
            active: RwLock::new(None),
            matched: AtomicU64::new(0),
        }
    }

    /// The drill in force at `now`, if any.
    pub fn active(&self, now: OffsetDateTime) -> Option<DrillStarted> {
        self.active
            .read()
            .expect("drill lock")
            .as_ref()
            .filter(|d| d.expires_at > now)
            .cloned()
    }

    /// What to do to a request for `path` at `now`. The error ratio is exact, not random: the
    /// k-th matching request fails when ⌊k·ratio⌋ moves.
    pub fn injection(&self, path: &str, now: OffsetDateTime) -> Option<Injection> {
        if NEVER_DRILLED.iter().any(|p| path.starts_with(p)) {
            return None;
        }
        let guard = self.active.read().expect("drill lock");
        let d = guard.as_ref()?;
        if d.expires_at <= now || !path.starts_with(&d.route_prefix) {
            return None;
        }
        let k = self.matched.fetch_add(1, Ordering::Relaxed) as f64;
        let fail = ((k + 1.0) * d.error_ratio).floor() > (k * d.error_ratio).floor();
        Some(Injection {
            fail,
            added_latency_ms: d.added_latency_ms,
        })
    }
}

/// How often an instance reads the drill stream, to follow drills started or stopped through
/// another instance on the same store, and one running when it started.
pub const DRILL_FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl Drills {
    /// Set the drill in force from the log's record (the counter restarts with a new drill).
    fn adopt(&self, drill: Option<DrillStarted>) {
        let mut active = self.active.write().expect("drill lock");
        let same = match (&*active, &drill) {
            (Some(a), Some(b)) => a.drill_id == b.drill_id,
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.matched.store(0, Ordering::Relaxed);
        }
        *active = drill;
    }

    /// Read the drill stream and adopt what it says is in force now.
    pub async fn follow_log(&self, now: OffsetDateTime) -> Result<(), Error> {
        let (log, _) = self
            .log
            .load(TenantId::PLATFORM, domain::drill::STREAM)
            .await
            .map_err(execute_error)?;
        self.adopt(log.active(now).cloned());
        Ok(())
    }
}

/// Under `serve`: follow the drill stream every [`DRILL_FOLLOW_EVERY`], so that every instance
/// on one store applies the same drill, and a restarted one resumes a drill still running.
pub fn start_drill_follower(app: &std::sync::Arc<crate::App>) {
    let weak = std::sync::Arc::downgrade(app);
    tokio::spawn(async move {
        loop {
            let Some(app) = weak.upgrade() else { return };
            if let Err(e) = app.drills.follow_log(app.clock.now()).await {
                tracing::warn!(error = %e, "the drill stream could not be read");
            }
            drop(app);
            tokio::time::sleep(DRILL_FOLLOW_EVERY).await;
        }
    });
}

fn execute_error(e: ExecuteError<std::convert::Infallible>) -> Error {
    match e {
        ExecuteError::Domain(never) => match never {},
        ExecuteError::Store(s) => Error::Store(s),
        ExecuteError::Decode(d) => Error::Decode(d.to_string()),
        ExecuteError::TooManyConflicts { .. } => Error::Busy,
    }
}

/// A drill asked for: `minutes` 0 stops the running one.
#[derive(Clone, Debug)]
pub struct DrillRequest {
    pub error_ratio: f64,
    pub added_latency_ms: u64,
    pub route_prefix: String,
    pub minutes: u64,
}

/// Longest drill, and most latency added.
pub const MAX_DRILL_MINUTES: u64 = 240;
pub const MAX_ADDED_LATENCY_MS: u64 = 10_000;

/// After a drill command: the drill in force (none after a stop) and the position written.
#[derive(Clone, Debug)]
pub struct DrillOutcome {
    pub drill: Option<DrillStarted>,
    pub position: u64,
}

/// `PUT /v1/ops/drill`: start a drill (recorded as `ops.drill_started`, replacing one running),
/// or stop it with `minutes: 0` (`ops.drill_stopped`).
pub async fn set_drill(
    app: &crate::App,
    ctx: &Ctx,
    req: DrillRequest,
) -> Result<DrillOutcome, Error> {
    let mut invalid = Vec::new();
    if !(0.0..=1.0).contains(&req.error_ratio) {
        invalid.push((
            "error_ratio".to_owned(),
            "must be between 0 and 1".to_owned(),
        ));
    }
    if req.added_latency_ms > MAX_ADDED_LATENCY_MS {
        invalid.push((
            "added_latency_ms".to_owned(),
            format!("must be at most {MAX_ADDED_LATENCY_MS}"),
        ));
    }
    if !req.route_prefix.starts_with('/') || req.route_prefix.chars().count() > 200 {
        invalid.push((
            "route_prefix".to_owned(),
            "must start with / (at most 200 characters)".to_owned(),
        ));
    }
    if req.minutes > MAX_DRILL_MINUTES {
        invalid.push((
            "minutes".to_owned(),
            format!("must be at most {MAX_DRILL_MINUTES}"),
        ));
    }
    if !invalid.is_empty() {
        return Err(Error::Validation(invalid));
    }
    let command = if req.minutes == 0 {
        DrillCommand::Stop
    } else {
        DrillCommand::Start(DrillStarted {
            drill_id: ctx.new_id("drill"),
            error_ratio: req.error_ratio,
            added_latency_ms: req.added_latency_ms,
            route_prefix: req.route_prefix,
            started_at: ctx.now,
            expires_at: ctx.now + time::Duration::minutes(req.minutes as i64),
        })
    };
    let drills = &app.drills;
    let (done, state) = drills
        .log
        .execute_with_state(
            TenantId::PLATFORM,
            domain::drill::STREAM,
            &command,
            &ctx.meta,
            ctx.now,
        )
        .await
        .map_err(execute_error)?;
    let drill = state.active(ctx.now).cloned();
    drills.adopt(drill.clone());
    let position = app.committed(&done.appended);
    match &drill {
        Some(d) => tracing::warn!(
            drill = %d.drill_id,
            error_ratio = d.error_ratio,
            added_latency_ms = d.added_latency_ms,
            route_prefix = %d.route_prefix,
            expires_at = %d.expires_at,
            actor = %ctx.meta.actor,
            "alert drill started: faults are being injected"
        ),
        None => tracing::warn!(actor = %ctx.meta.actor, "alert drill stopped"),
    }
    Ok(DrillOutcome { drill, position })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(n: u64) -> Counts {
        Counts {
            requests: n,
            commands: n,
            ..Counts::default()
        }
    }

    fn failed(n: u64) -> Counts {
        Counts {
            requests: n,
            errors: n,
            commands: n,
            commands_over_100ms: n,
            commands_over_250ms: n,
        }
    }

    #[test]
    fn the_recorder_keeps_seconds_for_an_hour_and_minutes_for_three_days() {
        let r = Recorder::default();
        let now = 1_800_000_000;
        r.record(now, ok(1));
        r.record(now - 10, ok(2));
        r.record(now - 4000, ok(4));
        r.record(now - 2 * 86_400, ok(8));
        r.record(now - 4 * 86_400, ok(16));
        assert_eq!(r.window(now, 1).requests, 1);
        assert_eq!(r.window(now, 11).requests, 3);
        assert_eq!(r.window(now, 3600).requests, 3);
        assert_eq!(r.window(now, 7200).requests, 7);
        assert_eq!(r.window(now, 3 * 86_400).requests, 15);
        assert_eq!(
            Counts::of("POST", 503, 0.3),
            failed(1),
            "a slow failed command is bad for every SLO"
        );
        assert_eq!(
            Counts::of("GET", 200, 0.3),
            Counts {
                requests: 1,
                ..Counts::default()
            }
        );
    }

    #[test]
    fn the_page_alert_fires_on_both_windows_and_clears_with_the_short_one() {
        // 2 % errors over the last hour and the last 5 minutes: 20× the 0.1 % budget.
        let report = evaluate(
            |s| {
                if s <= 300 {
                    failed(2) + ok(98)
                } else {
                    failed(20) + ok(980)
                }
            },
            1,
        );
        assert!(
            report.firing.contains(&"availability:page-fast".to_owned()),
            "{report:?}"
        );
        // The same requests are 2 % slow commands: 2× the p99 budget, 0.4× the p95's.
        assert!(
            !report
                .firing
                .iter()
                .any(|f| f.starts_with("latency-p99:page"))
        );
        assert!(!report.firing.iter().any(|f| f.starts_with("latency-p95")));
        let a = &report.slos[0];
        assert!((a.windows[2].burn_rate - 20.0).abs() < 1e-9);
        // 1 h at 20× spends 20/720 of the budget.
        assert!((a.windows[2].budget_remaining - (1.0 - 20.0 / 720.0)).abs() < 1e-9);
        // The last 5 minutes are clean: the page clears though the hour still burns.
        let report = evaluate(
            |s| {
                if s <= 300 {
                    ok(100)
                } else {
                    failed(20) + ok(980)
                }
            },
            1,
        );
        assert!(
            !report.firing.contains(&"availability:page-fast".to_owned()),
            "{report:?}"
        );
        // 1 % over both: 10× is below 14.4×, nothing pages.
        let report = evaluate(|_| failed(1) + ok(99), 1);
        assert!(
            !report
                .firing
                .iter()
                .any(|f| f.starts_with("availability:page-fast"))
        );
        assert!(report.firing.contains(&"availability:page-slow".to_owned()));
        // No traffic, no burn.
        assert!(evaluate(|_| Counts::default(), 1).firing.is_empty());
    }

    #[test]
    fn a_scaled_evaluation_divides_every_window() {
        let seen = Mutex::new(Vec::new());
        let report = evaluate(
            |s| {
                seen.lock().unwrap().push(s);
                Counts::default()
            },
            60,
        );
        assert_eq!(report.scale, 60);
        assert_eq!(*seen.lock().unwrap(), [5, 30, 60, 120, 360, 1440, 4320]);
        assert_eq!(report.slos[0].windows[0].window, "5m");
    }

    #[tokio::test]
    async fn an_instance_follows_a_drill_started_through_another_and_spares_the_ops_routes() {
        let t = store::testing::TestStore::embedded().await;
        let (one, two) = (Drills::new(t.store.clone()), Drills::new(t.store.clone()));
        let now = OffsetDateTime::now_utc();
        let drill = DrillStarted {
            drill_id: uuid::Uuid::from_u128(7),
            error_ratio: 0.5,
            added_latency_ms: 3,
            route_prefix: "/v1/".into(),
            started_at: now,
            expires_at: now + time::Duration::minutes(5),
        };
        let meta = store::Metadata::actor("test");
        one.log
            .execute(
                TenantId::PLATFORM,
                domain::drill::STREAM,
                &DrillCommand::Start(drill.clone()),
                &meta,
                now,
            )
            .await
            .unwrap();
        assert_eq!(two.injection("/v1/plans", now), None, "not followed yet");
        two.follow_log(now).await.unwrap();
        assert_eq!(two.active(now), Some(drill));
        let fails: Vec<bool> = (0..4)
            .map(|_| two.injection("/v1/plans", now).unwrap().fail)
            .collect();
        assert_eq!(fails, [false, true, false, true]);
        assert_eq!(two.injection("/v1/ops/slo", now), None);
        assert_eq!(two.injection("/healthz", now), None);
        assert_eq!(two.injection("/metrics", now), None);
        assert_eq!(
            two.injection("/openapi.json", now),
            None,
            "outside the prefix"
        );
        // Expired: nothing injected, without an event.
        let later = now + time::Duration::minutes(6);
        two.follow_log(later).await.unwrap();
        assert_eq!(two.injection("/v1/plans", later), None);
    }

    impl std::ops::Add for Counts {
        type Output = Counts;
        fn add(mut self, o: Counts) -> Counts {
            Counts::add(&mut self, &o);
            self
        }
    }
}
