//! Partner insights (SPEC §11): the funnel, weekly cohorts and the quota/upgrade report, answered
//! from the insights read model (never a scan of the log), as data, CSV (RFC 4180, stable column
//! order) and SVG charts.

use crate::{App, Error};
use domain::insights::{self, Cohort, Funnel, FunnelQuery, FunnelStep, QuotaRow, Retention};
use domain::tenant::Plan;
use std::fmt::Write;
use time::{Duration, OffsetDateTime};

/// What a funnel is asked for, as a client sends it.
#[derive(Clone, Copy, Debug)]
pub struct FunnelAsk {
    /// 1 to 365 days (14 when absent).
    pub window_days: Option<u32>,
    pub signed_up_from: Option<time::Date>,
    /// Inclusive: tenants who signed up on this day are counted.
    pub signed_up_to: Option<time::Date>,
}

/// The funnel of every tenant the read model knows.
pub fn funnel(app: &App, ask: FunnelAsk) -> Result<Funnel, Error> {
    let days = ask.window_days.unwrap_or(14);
    if !(1..=365).contains(&days) {
        return Err(Error::field("window_days", "must be 1 to 365"));
    }
    // A `signed_up_to` before `signed_up_from` is an empty range: a funnel of no tenant.
    let journeys = app.insights.journeys();
    Ok(insights::funnel(
        journeys.iter(),
        FunnelQuery {
            window: Duration::days(i64::from(days)),
            signed_up_from: ask.signed_up_from.map(|d| d.midnight().assume_utc()),
            signed_up_to: ask
                .signed_up_to
                .map(|d| d.midnight().assume_utc() + Duration::days(1)),
        },
    ))
}

/// Weekly cohorts at `now`, with at most `weeks` columns (1 to 104; 12 when absent).
pub fn cohorts(
    app: &App,
    mode: Retention,
    weeks: Option<u32>,
    now: OffsetDateTime,
) -> Result<Vec<Cohort>, Error> {
    let weeks = weeks.unwrap_or(12);
    if !(1..=104).contains(&weeks) {
        return Err(Error::field("weeks", "must be 1 to 104"));
    }
    let journeys = app.insights.journeys();
    Ok(insights::cohorts(journeys.iter(), mode, weeks, now))
}

/// One row of the quota/upgrade report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaLine {
    /// Monday 00:00 UTC of the ISO week.
    pub week_start: OffsetDateTime,
    pub plan: Plan,
    pub row: QuotaRow,
}

/// The quota/upgrade report, by ISO week and plan, oldest first.
pub fn quota_report(app: &App) -> Vec<QuotaLine> {
    app.insights
        .quota()
        .rows
        .into_iter()
        .flat_map(|(week, plans)| {
            let week_start =
                OffsetDateTime::from_unix_timestamp(week).unwrap_or(OffsetDateTime::UNIX_EPOCH);
            plans.into_iter().map(move |(plan, row)| QuotaLine {
                week_start,
                plan,
                row,
            })
        })
        .collect()
}

fn date(t: OffsetDateTime) -> String {
    let d = t.date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn rate(r: f64) -> String {
    format!("{r:.4}")
}

fn steps_csv(out: &mut String, segment: &str, steps: &[FunnelStep]) {
    for s in steps {
        let _ = writeln!(
            out,
            "{segment},{},{},{},{},{}\r",
            s.step.as_str(),
            s.tenants,
            rate(s.conversion_overall),
            opt(s.conversion_from_previous.map(rate)),
            opt(s.median_seconds_from_signup),
        );
    }
}

/// The funnel as CSV: `segment,step,tenants,conversion_overall,conversion_from_previous,
/// median_seconds_from_signup`; segment `all`, then one per plan at sign-up.
pub fn funnel_csv(f: &Funnel) -> String {
    let mut out = String::from(
        "segment,step,tenants,conversion_overall,conversion_from_previous,median_seconds_from_signup\r\n",
    );
    steps_csv(&mut out, "all", &f.steps);
    for (plan, steps) in &f.by_plan {
        steps_csv(&mut out, &format!("plan:{plan}"), steps);
    }
    out
}

/// The cohorts as CSV: `cohort_week,cohort_size,week,retained,rate,incomplete`, one row per cell.
pub fn cohorts_csv(cohorts: &[Cohort]) -> String {
    let mut out = String::from("cohort_week,cohort_size,week,retained,rate,incomplete\r\n");
    for c in cohorts {
        for w in &c.weeks {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{}\r",
                date(c.week_start),
                c.size,
                w.week,
                w.retained,
                rate(w.rate),
                w.incomplete
            );
        }
    }
    out
}

/// The quota report as CSV: `week,plan,blocked_attempts,grace_entries,upgrades,
/// upgrades_within_7_days_of_a_block`.
pub fn quota_csv(lines: &[QuotaLine]) -> String {
    let mut out = String::from(
        "week,plan,blocked_attempts,grace_entries,upgrades,upgrades_within_7_days_of_a_block\r\n",
    );
    for l in lines {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{}\r",
            date(l.week_start),
            l.plan.as_str(),
            l.row.blocked_attempts,
            l.row.grace_entries,
            l.row.upgrades,
            l.row.upgrades_within_7_days_of_a_block
        );
    }
    out
}

/// Text for SVG: `&`, `<`, `>` and quotes escaped.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The funnel as horizontal bars (SVG), one per step, with counts and overall conversion.
pub fn funnel_svg(f: &Funnel) -> String {
    let (w, bar, gap, left) = (640.0, 28.0, 12.0, 170.0);
    let h = 50.0 + f.steps.len() as f64 * (bar + gap);
    let max = f.steps.first().map_or(0, |s| s.tenants).max(1) as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <title>Funnel ({} day window)</title>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\">Funnel — {} day window</text>\n",
        f.window_days, f.window_days
    );
    for (i, s) in f.steps.iter().enumerate() {
        let y = 40.0 + i as f64 * (bar + gap);
        let len = (w - left - 120.0) * s.tenants as f64 / max;
        let _ = write!(
            out,
            "<text x=\"10\" y=\"{}\">{}</text>\n<rect x=\"{left}\" y=\"{y}\" width=\"{len:.1}\" height=\"{bar}\" fill=\"#3b6fb6\"/>\n<text x=\"{:.1}\" y=\"{}\">{} ({:.1} %)</text>\n",
            y + bar * 0.68,
            esc(s.step.as_str()),
            left + len + 6.0,
            y + bar * 0.68,
            s.tenants,
            s.conversion_overall * 100.0
        );
    }
    out.push_str("</svg>\n");
    out
}

/// The cohorts as a heatmap (SVG): one row per cohort, one cell per week, darker for more retained.
pub fn cohorts_svg(cohorts: &[Cohort]) -> String {
    let columns = cohorts.iter().map(|c| c.weeks.len()).max().unwrap_or(0);
    let (cell, left, top) = (44.0, 150.0, 50.0);
    let w = left + columns as f64 * cell + 10.0;
    let h = top + cohorts.len() as f64 * cell + 10.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <title>Weekly retention cohorts</title>\n\
         <text x=\"10\" y=\"20\" font-size=\"15\">Weekly retention cohorts</text>\n"
    );
    for n in 0..columns {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\">W{n}</text>",
            left + n as f64 * cell + 10.0,
            top - 8.0
        );
    }
    for (i, c) in cohorts.iter().enumerate() {
        let y = top + i as f64 * cell;
        let _ = writeln!(
            out,
            "<text x=\"10\" y=\"{:.1}\">{} ({})</text>",
            y + cell * 0.6,
            date(c.week_start),
            c.size
        );
        for cw in &c.weeks {
            let x = left + cw.week as f64 * cell;
            let shade = (235.0 - 180.0 * cw.rate).round() as u8;
            let _ = writeln!(
                out,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{}\" height=\"{}\" fill=\"rgb({shade},{shade},255)\"{}/><text x=\"{:.1}\" y=\"{:.1}\">{:.0}%</text>",
                cell - 2.0,
                cell - 2.0,
                if cw.incomplete {
                    " stroke=\"#999\" stroke-dasharray=\"3,2\""
                } else {
                    ""
                },
                x + 6.0,
                y + cell * 0.6,
                cw.rate * 100.0
            );
        }
    }
    out.push_str("</svg>\n");
    out
}
