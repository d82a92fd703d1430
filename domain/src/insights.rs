//! Partner insights (SPEC §11), as pure computations over what a read model keeps of each tenant:
//! the sign-up funnel, weekly retention cohorts and the quota/upgrade report. Every definition is
//! written here once, with its edges (ADR 021); the read model feeds [`Journey`]s and
//! [`QuotaTally`]s in commit order and asks these functions for the reports.

use crate::tenant::Plan;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use time::{Duration, OffsetDateTime};

/// The funnel's steps, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    SignedUp,
    DatasetUploaded,
    FirstQuery,
    FirstExportPassed,
}

impl Step {
    pub const ALL: [Step; 4] = [
        Step::SignedUp,
        Step::DatasetUploaded,
        Step::FirstQuery,
        Step::FirstExportPassed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::SignedUp => "signed_up",
            Step::DatasetUploaded => "dataset_uploaded",
            Step::FirstQuery => "first_query",
            Step::FirstExportPassed => "first_export_passed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How long after sign-up a plan change still counts as the plan chosen at sign-up (the sign-up
/// session: pick a plan, pay).
pub const SIGNUP_SESSION: Duration = Duration::hours(1);

/// One tenant's path through the funnel and its activity, as the events tell it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journey {
    /// When each step was first reached *after the previous one* (sequential): `steps[0]` is the
    /// sign-up; `steps[k]` the first event of step `k` at or after `steps[k - 1]`.
    pub steps: [Option<OffsetDateTime>; 4],
    /// The plan in force at the end of the sign-up session ([`SIGNUP_SESSION`]).
    pub plan_at_signup: Plan,
    /// Offsets (in weeks from the sign-up's ISO week) of the weeks with at least one admitted
    /// query or export unit.
    pub active_weeks: BTreeSet<u32>,
}

impl Journey {
    /// A tenant signed up at `at` (a second sign-up of the same tenant changes nothing).
    pub fn signed_up(&mut self, at: OffsetDateTime, plan: Plan) {
        if self.steps[0].is_none() {
            self.steps[0] = Some(at);
            self.plan_at_signup = plan;
        }
    }

    /// The plan changed at `at`: it is the plan at sign-up if within the sign-up session.
    pub fn plan_changed(&mut self, at: OffsetDateTime, to: Plan) {
        if let Some(signed_up) = self.steps[0]
            && at >= signed_up
            && at - signed_up <= SIGNUP_SESSION
        {
            self.plan_at_signup = to;
        }
    }

    /// An event of `step` happened at `at`: it is the step's time if the previous step was
    /// reached at or before `at` and this step was not reached yet.
    pub fn reached(&mut self, step: Step, at: OffsetDateTime) {
        let k = step.index();
        if k == 0 || self.steps[k].is_some() {
            return;
        }
        if self.steps[k - 1].is_some_and(|previous| previous <= at) {
            self.steps[k] = Some(at);
        }
    }

    /// An admitted query or export unit at `at`.
    pub fn active(&mut self, at: OffsetDateTime) {
        if let Some(signed_up) = self.steps[0] {
            let weeks = (week_start(at) - week_start(signed_up)).whole_weeks();
            if let Ok(n) = u32::try_from(weeks) {
                self.active_weeks.insert(n);
            }
        }
    }

    /// The steps reached within `window` of sign-up, in order: a step outside the window (or
    /// after one that is) is not reached.
    fn within(&self, window: Duration) -> impl Iterator<Item = (Step, Duration)> + '_ {
        let start = self.steps[0];
        Step::ALL
            .iter()
            .zip(self.steps.iter())
            .map_while(move |(step, at)| {
                let elapsed = (*at)? - start?;
                (elapsed <= window).then_some((*step, elapsed))
            })
    }
}

/// Monday 00:00 UTC of the ISO week of `at`.
pub fn week_start(at: OffsetDateTime) -> OffsetDateTime {
    let at = at.to_offset(time::UtcOffset::UTC);
    let monday = at.date() - Duration::days(i64::from(at.weekday().number_days_from_monday()));
    monday.midnight().assume_utc()
}

/// The nearest-rank percentile `p` (0–100) of sorted `values`: an element of the set, never an
/// interpolation (the 50th of 1, 2, 3, 4 is 2).
pub fn percentile(sorted: &[i64], p: u32) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (u64::from(p) * sorted.len() as u64).div_ceil(100).max(1) as usize;
    sorted.get(rank - 1).copied()
}

/// Which tenants a funnel counts, and its window.
#[derive(Clone, Copy, Debug)]
pub struct FunnelQuery {
    /// Each step must be reached within this long of sign-up (inclusive).
    pub window: Duration,
    /// Only tenants who signed up at or after this instant.
    pub signed_up_from: Option<OffsetDateTime>,
    /// Only tenants who signed up before this instant.
    pub signed_up_to: Option<OffsetDateTime>,
}

/// One step of a funnel.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FunnelStep {
    pub step: Step,
    /// Unique tenants that reached this step (and every one before it) within the window.
    pub tenants: u64,
    /// `tenants` ÷ the tenants that signed up (1 for the first step; 0 when none signed up).
    pub conversion_overall: f64,
    /// `tenants` ÷ the previous step's tenants (`None` for the first step).
    pub conversion_from_previous: Option<f64>,
    /// Median (nearest rank) time from sign-up to this step, in seconds.
    pub median_seconds_from_signup: Option<i64>,
}

/// A funnel, for all tenants and by plan at sign-up.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Funnel {
    pub window_days: f64,
    pub steps: Vec<FunnelStep>,
    /// Median (nearest rank) time from sign-up to the last step, of the tenants that reached it.
    pub median_seconds_to_convert: Option<i64>,
    pub by_plan: BTreeMap<&'static str, Vec<FunnelStep>>,
}

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}

fn funnel_steps<'a>(
    journeys: impl Iterator<Item = &'a Journey>,
    window: Duration,
) -> Vec<FunnelStep> {
    let mut elapsed: [Vec<i64>; 4] = Default::default();
    for j in journeys {
        for (step, d) in j.within(window) {
            elapsed[step.index()].push(d.whole_seconds());
        }
    }
    let signed_up = elapsed[0].len() as u64;
    let mut previous: Option<u64> = None;
    Step::ALL
        .iter()
        .map(|step| {
            let times = &mut elapsed[step.index()];
            times.sort_unstable();
            let tenants = times.len() as u64;
            let s = FunnelStep {
                step: *step,
                tenants,
                conversion_overall: ratio(tenants, signed_up),
                conversion_from_previous: previous.map(|p| ratio(tenants, p)),
                median_seconds_from_signup: percentile(times, 50),
            };
            previous = Some(tenants);
            s
        })
        .collect()
}

/// The funnel of `journeys` (tenants that never signed up are not counted).
pub fn funnel<'a>(journeys: impl Iterator<Item = &'a Journey> + Clone, q: FunnelQuery) -> Funnel {
    let chosen = journeys.filter(move |j| {
        j.steps[0].is_some_and(|at| {
            q.signed_up_from.is_none_or(|from| at >= from)
                && q.signed_up_to.is_none_or(|to| at < to)
        })
    });
    let steps = funnel_steps(chosen.clone(), q.window);
    let mut last: Vec<i64> = chosen
        .clone()
        .filter_map(|j| j.within(q.window).nth(3).map(|(_, d)| d.whole_seconds()))
        .collect();
    last.sort_unstable();
    let by_plan = [Plan::Free, Plan::Pro, Plan::Enterprise]
        .into_iter()
        .map(|plan| {
            (
                plan.as_str(),
                funnel_steps(
                    chosen.clone().filter(|j| j.plan_at_signup == plan),
                    q.window,
                ),
            )
        })
        .collect();
    Funnel {
        window_days: q.window.as_seconds_f64() / 86_400.0,
        steps,
        median_seconds_to_convert: percentile(&last, 50),
        by_plan,
    }
}

/// How retention counts a week.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Retention {
    /// Retained in week N if active in week N.
    On,
    /// Retained in week N if active in week N or any later week.
    OnOrAfter,
}

/// One cell of a cohort's row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CohortWeek {
    /// Weeks after the cohort's week (0 is the cohort's own).
    pub week: u32,
    pub retained: u64,
    pub rate: f64,
    /// The week is not over at `now`.
    pub incomplete: bool,
}

/// The tenants that signed up in one ISO week, and how many were active in each later week.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cohort {
    /// Monday 00:00 UTC of the sign-up week.
    #[serde(with = "time::serde::rfc3339")]
    pub week_start: OffsetDateTime,
    pub size: u64,
    pub incomplete: bool,
    pub weeks: Vec<CohortWeek>,
}

/// Weekly cohorts of `journeys` at `now`, each with at most `columns` weeks (week 0 included),
/// never beyond `now`'s week.
pub fn cohorts<'a>(
    journeys: impl Iterator<Item = &'a Journey>,
    mode: Retention,
    columns: u32,
    now: OffsetDateTime,
) -> Vec<Cohort> {
    let current = week_start(now);
    let mut by_week: BTreeMap<OffsetDateTime, Vec<&Journey>> = BTreeMap::new();
    for j in journeys {
        if let Some(at) = j.steps[0] {
            by_week.entry(week_start(at)).or_default().push(j);
        }
    }
    by_week
        .into_iter()
        .filter(|(week, _)| *week <= current)
        .map(|(week, members)| {
            let size = members.len() as u64;
            let elapsed = u32::try_from((current - week).whole_weeks()).unwrap_or(u32::MAX);
            let shown = columns.min(elapsed.saturating_add(1));
            let weeks = (0..shown)
                .map(|n| {
                    let retained = if n == 0 {
                        size
                    } else {
                        members
                            .iter()
                            .filter(|j| match mode {
                                Retention::On => j.active_weeks.contains(&n),
                                Retention::OnOrAfter => j.active_weeks.range(n..).next().is_some(),
                            })
                            .count() as u64
                    };
                    CohortWeek {
                        week: n,
                        retained,
                        rate: ratio(retained, size),
                        incomplete: n == elapsed,
                    }
                })
                .collect();
            Cohort {
                week_start: week,
                size,
                incomplete: week == current,
                weeks,
            }
        })
        .collect()
}

/// One row of the quota/upgrade report: a plan in one ISO week.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRow {
    /// Refused attempts (402), counted as `usage.blocked` counts them.
    pub blocked_attempts: u64,
    /// Meters that entered their grace period.
    pub grace_entries: u64,
    /// Upgrades from this plan.
    pub upgrades: u64,
    /// Upgrades from this plan within 7 days after one of the tenant's refused attempts.
    pub upgrades_within_7_days_of_a_block: u64,
}

/// The quota/upgrade report, kept incrementally: ISO week start (Unix seconds) → plan → row.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaTally {
    pub rows: BTreeMap<i64, BTreeMap<Plan, QuotaRow>>,
}

/// How long after a refused attempt an upgrade counts as one "after a block".
pub const UPGRADE_AFTER_BLOCK: Duration = Duration::days(7);

impl QuotaTally {
    fn row(&mut self, at: OffsetDateTime, plan: Plan) -> &mut QuotaRow {
        self.rows
            .entry(week_start(at).unix_timestamp())
            .or_default()
            .entry(plan)
            .or_default()
    }

    pub fn blocked(&mut self, at: OffsetDateTime, plan: Plan, attempts: u64) {
        self.row(at, plan).blocked_attempts += attempts;
    }

    pub fn grace_started(&mut self, at: OffsetDateTime, plan: Plan) {
        self.row(at, plan).grace_entries += 1;
    }

    /// An upgrade from `from` at `at`; `last_block` is the tenant's last refused attempt before it.
    pub fn upgraded(&mut self, at: OffsetDateTime, from: Plan, last_block: Option<OffsetDateTime>) {
        let row = self.row(at, from);
        row.upgrades += 1;
        if last_block.is_some_and(|b| b <= at && at - b <= UPGRADE_AFTER_BLOCK) {
            row.upgrades_within_7_days_of_a_block += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const DAY: Duration = Duration::days(1);

    fn q() -> FunnelQuery {
        FunnelQuery {
            window: Duration::days(14),
            signed_up_from: None,
            signed_up_to: None,
        }
    }

    fn tenants(f: &Funnel) -> Vec<u64> {
        f.steps.iter().map(|s| s.tenants).collect()
    }

    #[test]
    fn a_step_done_out_of_order_counts_only_when_done_again_after_the_previous() {
        let t0 = datetime!(2026-03-02 10:00 UTC);
        let mut j = Journey::default();
        j.signed_up(t0, Plan::Free);
        j.reached(Step::DatasetUploaded, t0 + DAY);
        // A PASS export before any query: not the last step yet.
        j.reached(Step::FirstExportPassed, t0 + DAY * 2);
        j.reached(Step::FirstQuery, t0 + DAY * 3);
        assert_eq!(tenants(&funnel([j.clone()].iter(), q())), [1, 1, 1, 0]);
        j.reached(Step::FirstExportPassed, t0 + DAY * 4);
        let f = funnel([j].iter(), q());
        assert_eq!(tenants(&f), [1, 1, 1, 1]);
        assert_eq!(f.median_seconds_to_convert, Some(4 * 86_400));
    }

    #[test]
    fn the_window_is_inclusive_to_the_second() {
        let t0 = datetime!(2026-03-02 10:00 UTC);
        let journey = |last: OffsetDateTime| {
            let mut j = Journey::default();
            j.signed_up(t0, Plan::Free);
            j.reached(Step::DatasetUploaded, t0 + Duration::hours(1));
            j.reached(Step::FirstQuery, t0 + Duration::hours(2));
            j.reached(Step::FirstExportPassed, last);
            j
        };
        // On the window's last day, at its very end: in. A day (or a second) after: out.
        let on_last_day = journey(t0 + Duration::days(14));
        let day_after = journey(t0 + Duration::days(15));
        let second_after = journey(t0 + Duration::days(14) + Duration::seconds(1));
        assert_eq!(tenants(&funnel([on_last_day].iter(), q())), [1, 1, 1, 1]);
        assert_eq!(tenants(&funnel([day_after].iter(), q())), [1, 1, 1, 0]);
        assert_eq!(tenants(&funnel([second_after].iter(), q())), [1, 1, 1, 0]);
    }

    #[test]
    fn a_second_signup_of_a_tenant_counts_once_from_the_first() {
        let t0 = datetime!(2026-03-02 10:00 UTC);
        let mut j = Journey::default();
        j.signed_up(t0, Plan::Free);
        j.signed_up(t0 + DAY * 20, Plan::Pro);
        j.reached(Step::DatasetUploaded, t0 + DAY * 21);
        let f = funnel([j].iter(), q());
        // The upload is 21 days after the (first) sign-up: outside the window.
        assert_eq!(tenants(&f), [1, 0, 0, 0]);
        assert_eq!(f.by_plan["free"][0].tenants, 1);
    }

    #[test]
    fn conversions_and_plan_breakdown_and_signup_filter() {
        let t0 = datetime!(2026-03-02 10:00 UTC);
        let mut a = Journey::default();
        a.signed_up(t0, Plan::Free);
        a.plan_changed(t0 + Duration::minutes(5), Plan::Pro);
        a.reached(Step::DatasetUploaded, t0 + DAY);
        let mut b = Journey::default();
        b.signed_up(t0 + DAY * 10, Plan::Free);
        b.plan_changed(t0 + DAY * 10 + Duration::hours(2), Plan::Pro);
        let f = funnel([a.clone(), b.clone()].iter(), q());
        assert_eq!(tenants(&f), [2, 1, 0, 0]);
        assert_eq!(f.steps[1].conversion_overall, 0.5);
        assert_eq!(f.steps[1].conversion_from_previous, Some(0.5));
        assert_eq!(f.steps[2].conversion_from_previous, Some(0.0));
        assert_eq!(
            f.by_plan["pro"][0].tenants, 1,
            "a chose Pro within the session"
        );
        assert_eq!(
            f.by_plan["free"][0].tenants, 1,
            "b upgraded after the session"
        );
        let only_b = funnel(
            [a, b].iter(),
            FunnelQuery {
                signed_up_from: Some(t0 + DAY),
                ..q()
            },
        );
        assert_eq!(tenants(&only_b), [1, 0, 0, 0]);
    }

    #[test]
    fn iso_weeks_cross_a_year_boundary_and_week_53() {
        // 2026-12-31 is a Thursday of ISO week 53 of 2026, which starts on Monday 2026-12-28.
        assert_eq!(
            week_start(datetime!(2026-12-31 23:59 UTC)),
            datetime!(2026-12-28 00:00 UTC)
        );
        assert_eq!(
            week_start(datetime!(2027-01-03 12:00 UTC)),
            datetime!(2026-12-28 00:00 UTC)
        );
        assert_eq!(
            week_start(datetime!(2027-01-04 00:00 UTC)),
            datetime!(2027-01-04 00:00 UTC)
        );
        let mut j = Journey::default();
        j.signed_up(datetime!(2026-12-30 09:00 UTC), Plan::Free);
        j.active(datetime!(2027-01-02 09:00 UTC)); // same ISO week: week 0
        j.active(datetime!(2027-01-05 09:00 UTC)); // week 1
        j.active(datetime!(2027-01-20 09:00 UTC)); // week 3
        assert_eq!(j.active_weeks, BTreeSet::from([0, 1, 3]));
        let c = cohorts(
            [j.clone()].iter(),
            Retention::On,
            5,
            datetime!(2027-03-01 00:00 UTC),
        );
        let retained: Vec<u64> = c[0].weeks.iter().map(|w| w.retained).collect();
        assert_eq!(retained, [1, 1, 0, 1, 0]);
        let c = cohorts(
            [j].iter(),
            Retention::OnOrAfter,
            5,
            datetime!(2027-03-01 00:00 UTC),
        );
        let retained: Vec<u64> = c[0].weeks.iter().map(|w| w.retained).collect();
        assert_eq!(retained, [1, 1, 1, 1, 0]);
    }

    #[test]
    fn a_cohort_in_the_current_week_is_incomplete_and_has_only_week_0() {
        let now = datetime!(2026-11-27 12:00 UTC);
        let mut old = Journey::default();
        old.signed_up(datetime!(2026-11-16 09:00 UTC), Plan::Free);
        let mut new = Journey::default();
        new.signed_up(datetime!(2026-11-24 09:00 UTC), Plan::Free);
        let c = cohorts([old, new].iter(), Retention::On, 12, now);
        assert_eq!(c.len(), 2);
        assert!(!c[0].incomplete);
        assert_eq!(c[0].weeks.len(), 2, "week 0 and week 1 (this week)");
        assert!(c[0].weeks[1].incomplete);
        assert!(c[1].incomplete);
        assert_eq!(c[1].weeks.len(), 1);
        assert_eq!((c[1].weeks[0].retained, c[1].weeks[0].rate), (1, 1.0));
    }

    #[test]
    fn upgrades_within_seven_days_of_a_block_are_counted_by_week_and_plan() {
        let t = datetime!(2026-03-02 10:00 UTC);
        let mut tally = QuotaTally::default();
        tally.blocked(t, Plan::Free, 3);
        tally.grace_started(t, Plan::Free);
        tally.upgraded(t + DAY * 7, Plan::Free, Some(t)); // exactly 7 days: in
        tally.upgraded(t + DAY * 8, Plan::Free, Some(t)); // 8 days: out
        let row = |at: OffsetDateTime| &tally.rows[&week_start(at).unix_timestamp()][&Plan::Free];
        assert_eq!(row(t).blocked_attempts, 3);
        assert_eq!(row(t).grace_entries, 1);
        let next = row(t + DAY * 7);
        assert_eq!(
            (next.upgrades, next.upgrades_within_7_days_of_a_block),
            (2, 1)
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[5], 90), Some(5));
        assert_eq!(percentile(&[1, 2, 3, 4], 50), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90), Some(9));
    }
}
