//! The guided first-success flow (SPEC §9): a user's progress, the resume payload after 30
//! minutes away, the next nudge from the rule table (`app/data/nudges.json`: data, not code),
//! the client's screen reports, dismissals and snoozes, and drop-off per step.

use crate::{App, Ctx, Error};
use domain::insights::Step;
use domain::onboarding::{
    self, DropOff, NudgeRule, OnboardingCommand, Progress, Resume, next_nudge, resume,
};
use domain::{TenantId, UserId};
use std::sync::LazyLock;
use time::{Duration, OffsetDateTime};

/// The nudge rule table, in the order rules are tried.
pub static NUDGES: LazyLock<Vec<NudgeRule>> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../data/nudges.json"))
        .expect("app/data/nudges.json is valid")
});

/// What a user sees of their own flow.
#[derive(Clone, Debug)]
pub struct OnboardingView {
    pub progress: Progress,
    pub next_step: Option<Step>,
    /// Present when the user is back mid-flow after 30 minutes or more away.
    pub resume: Option<Resume>,
    pub nudge: Option<NudgeRule>,
}

/// A user's flow at `now`.
pub fn view(app: &App, tenant: TenantId, user: UserId, now: OffsetDateTime) -> OnboardingView {
    let progress = app
        .first_success
        .progress(tenant, *user.as_uuid())
        .unwrap_or_default();
    OnboardingView {
        next_step: progress.next_step(),
        resume: resume(&progress, now),
        nudge: next_nudge(&progress, &NUDGES, now).cloned(),
        progress,
    }
}

async fn record(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    user: UserId,
    command: OnboardingCommand,
) -> Result<u64, Error> {
    let done = app
        .onboarding
        .execute(
            tenant,
            &onboarding::stream_id(user),
            &command,
            &ctx.meta,
            ctx.now,
        )
        .await?;
    Ok(app.settled(&done.appended).await)
}

/// The client shows `screen` for `step`.
pub async fn report_position(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    user: UserId,
    screen: String,
    step: Step,
) -> Result<u64, Error> {
    record(
        app,
        ctx,
        tenant,
        user,
        OnboardingCommand::ReportPosition { screen, step },
    )
    .await
}

fn known_nudge(nudge: &str) -> Result<(), Error> {
    if NUDGES.iter().any(|r| r.id == nudge) {
        Ok(())
    } else {
        Err(Error::NotFound("no such nudge".into()))
    }
}

/// The user dismissed a nudge: it stays away until its rule brings it back.
pub async fn dismiss(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    user: UserId,
    nudge: &str,
) -> Result<u64, Error> {
    known_nudge(nudge)?;
    let command = OnboardingCommand::Dismiss {
        nudge: nudge.to_owned(),
    };
    record(app, ctx, tenant, user, command).await
}

/// The user snoozed a nudge for `minutes` (1 to 43,200: 30 days).
pub async fn snooze(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    user: UserId,
    nudge: &str,
    minutes: u32,
) -> Result<u64, Error> {
    known_nudge(nudge)?;
    if !(1..=43_200).contains(&minutes) {
        return Err(Error::field("minutes", "must be 1 to 43200"));
    }
    let command = OnboardingCommand::Snooze {
        nudge: nudge.to_owned(),
        until: ctx.now + Duration::minutes(i64::from(minutes)),
    };
    record(app, ctx, tenant, user, command).await
}

/// Drop-off per step over every user, with a window of `window_days` (1 to 365; 14 by default).
pub fn dropoff(app: &App, window_days: Option<u32>) -> Result<Vec<DropOff>, Error> {
    let days = window_days.unwrap_or(14);
    if !(1..=365).contains(&days) {
        return Err(Error::field("window_days", "must be 1 to 365"));
    }
    let users = app.first_success.all();
    Ok(onboarding::dropoff(
        users.iter(),
        Duration::days(i64::from(days)),
    ))
}

/// Drop-off as CSV: `step,reached,completed,dropped,median_seconds,p90_seconds`.
pub fn dropoff_csv(rows: &[DropOff]) -> String {
    let mut out = String::from("step,reached,completed,dropped,median_seconds,p90_seconds\r\n");
    let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{}\r\n",
            r.step.as_str(),
            r.reached,
            opt(r.completed.map(|c| c as i64)),
            opt(r.dropped.map(|d| d as i64)),
            opt(r.median_seconds),
            opt(r.p90_seconds)
        ));
    }
    out
}

/// Drop-off as an SVG bar chart: per step, the users who reached it and, darker, those who went on.
pub fn dropoff_svg(rows: &[DropOff]) -> String {
    let (w, bar, gap, left) = (640.0, 28.0, 14.0, 170.0);
    let h = 50.0 + rows.len() as f64 * (bar + gap);
    let max = rows.first().map_or(0, |r| r.reached).max(1) as f64;
    let scale = (w - left - 150.0) / max;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <title>Drop-off per step</title>\n<text x=\"10\" y=\"22\" font-size=\"15\">Drop-off per step</text>\n"
    );
    for (i, r) in rows.iter().enumerate() {
        let y = 40.0 + i as f64 * (bar + gap);
        let reached = r.reached as f64 * scale;
        let went_on = r.completed.unwrap_or(r.reached) as f64 * scale;
        out.push_str(&format!(
            "<text x=\"10\" y=\"{:.1}\">{}</text>\n<rect x=\"{left}\" y=\"{y}\" width=\"{reached:.1}\" height=\"{bar}\" fill=\"#b9cbe6\"/>\n<rect x=\"{left}\" y=\"{y}\" width=\"{went_on:.1}\" height=\"{bar}\" fill=\"#3b6fb6\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">{} reached, {} dropped</text>\n",
            y + bar * 0.68,
            r.step.as_str(),
            left + reached + 6.0,
            y + bar * 0.68,
            r.reached,
            r.dropped.unwrap_or(0)
        ));
    }
    out.push_str("</svg>\n");
    out
}
