//! Erasure of personal data (issue 12, items 1 and 5; ADR 032): retention (the fields past their
//! policy window) and a member's erasure at their request. Personal fields are sealed by the store
//! with a key per tenant, subject, UTC day and event type; erasing destroys keys, so the stored
//! bytes, the audit tree and every checkpoint and proof stay as they were.
//!
//! Crash-safe order: the `erasure.applied` event is recorded first, then the keys are destroyed.
//! Every run first finishes what an earlier run recorded and did not destroy, so re-running
//! completes a half-done erasure, and an erasure already recorded is not recorded again.

use crate::audit::current_tree;
use crate::{App, Ctx, Error};
use commands::ExecuteError;
use domain::TenantId;
use domain::audit::{AuditCommand, ERASURES_STREAM, ErasureApplied, RETENTION_STREAM};
use domain::personal;
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;

/// Events read from the store per round trip while a tenant's log is scanned.
const READ_CHUNK: usize = 4_096;
/// The read models that hold personal fields: rebuilt after an erasure so they show it.
const PERSONAL_READ_MODELS: &[&str] = &["identity", "feedback", "directory"];

/// What one erasure run did for a tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErasureReport {
    pub tenant: Option<TenantId>,
    /// Each `erasure.applied` recorded now: its rule, the sequences and its position.
    pub recorded: Vec<(String, Vec<u64>, u64)>,
    /// Subject keys destroyed now (those of earlier, half-done erasures included).
    pub keys_destroyed: u64,
    /// Events erased now.
    pub events_erased: u64,
    /// Events whose personal fields are past a window but were stored in plaintext before
    /// sealing existed: they cannot be erased by destroying a key (ADR 032).
    pub plaintext_past_window: u64,
}

/// A sealed event of the tenant's log, as much as erasure needs.
#[derive(Clone, Debug)]
struct Sealed {
    sequence: u64,
    event_type: String,
    stream: String,
    occurred_at: i64,
}

/// The tenant's log, scanned raw: which events each key sealed, and the plaintext personal ones.
#[derive(Debug, Default)]
struct Scan {
    by_key: BTreeMap<String, Vec<Sealed>>,
    plaintext: Vec<Sealed>,
    /// Member (user id) → the SCIM users (SCIM ids) ever linked to them: a SCIM user's fields
    /// are sealed under the SCIM user (ADR 037), and a member's erasure erases them too.
    scim_users: BTreeMap<String, BTreeSet<String>>,
}

fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

fn audit_error(e: ExecuteError<domain::audit::AuditError>) -> Error {
    match e {
        ExecuteError::Store(s) => Error::Store(s),
        ExecuteError::Decode(d) => Error::Decode(d.to_string()),
        ExecuteError::TooManyConflicts { .. } => Error::Busy,
        ExecuteError::Domain(d) => Error::Conflict {
            slug: "audit-conflict",
            detail: d.to_string(),
        },
    }
}

/// Read every event of `tenant` (as the audit tree has them, by sequence) raw.
async fn scan(app: &App, tenant: TenantId) -> Result<Scan, Error> {
    current_tree(app).await?;
    let view = app.audit_tree.view(&app.store, tenant).await?;
    let raw = app.store.raw();
    let mut out = Scan::default();
    let mut sequence = 0u64;
    while sequence < view.size {
        let upto = (sequence + READ_CHUNK as u64).min(view.size);
        let positions = view.positions[sequence as usize..upto as usize].to_vec();
        let events = raw.read_positions(positions).await?;
        if events.len() as u64 != upto - sequence {
            return Err(Error::Internal(
                "events of the tenant are missing from the log".into(),
            ));
        }
        for (e, s) in events.iter().zip(sequence..) {
            let Some(row) = personal::fields_of(&e.event_type) else {
                continue;
            };
            if matches!(
                e.event_type.as_str(),
                "scim.user_provisioned" | "scim.user_updated"
            ) {
                // The link is not personal: it stays plaintext in the sealed payload.
                let value = e.payload.to_value();
                if let (Some(user), Some(scim)) = (
                    value.get("user_id").and_then(|v| v.as_str()),
                    value.get("scim_id").and_then(|v| v.as_str()),
                ) {
                    out.scim_users
                        .entry(user.to_owned())
                        .or_default()
                        .insert(scim.to_owned());
                }
            }
            let item = Sealed {
                sequence: s,
                event_type: e.event_type.clone(),
                stream: e.stream_id.clone(),
                occurred_at: micros(e.occurred_at),
            };
            if personal::is_sealed_version(e.schema_version) {
                for kid in store::key_ids_of(&e.event_type, e.schema_version, &e.payload) {
                    out.by_key.entry(kid).or_default().push(item.clone());
                }
            } else {
                let value = e.payload.to_value();
                if row
                    .fields
                    .iter()
                    .any(|f| value.pointer(f).is_some_and(|v| !v.is_null()))
                {
                    out.plaintext.push(item);
                }
            }
        }
        sequence = upto;
    }
    Ok(out)
}

/// Record `sequences` erased under `rule` (nothing when every one was recorded before).
async fn record(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    rule: &str,
    sequences: Vec<u64>,
) -> Result<Option<(String, Vec<u64>, u64)>, Error> {
    let done = app
        .audit_log
        .execute(
            tenant,
            ERASURES_STREAM,
            &AuditCommand::RecordErasure(ErasureApplied {
                rule: rule.to_owned(),
                sequences,
            }),
            &ctx.meta,
            ctx.now,
        )
        .await
        .map_err(audit_error)?;
    let position = app.settled(&done.appended).await;
    Ok(done.events.iter().find_map(|e| match e {
        domain::audit::AuditEvent::ErasureApplied(er) => {
            Some((er.rule.clone(), er.sequences.clone(), position))
        }
        _ => None,
    }))
}

/// Destroy `keys`, then make the caches of the plaintext they sealed forget it: the hot state
/// and snapshots of the streams they touch. Answers how many keys were live (0: nothing to do,
/// the read models need no rebuild).
async fn destroy(
    app: &App,
    tenant: TenantId,
    keys: Vec<String>,
    streams: BTreeSet<String>,
) -> Result<u64, Error> {
    let n = app.store.erase_subject_keys(tenant, keys).await?;
    if n > 0 {
        for stream in &streams {
            app.store.drop_snapshots(tenant, stream).await?;
            app.tenants.forget(tenant, stream);
            app.feedback.forget(tenant, stream);
            app.sso.scim.forget(tenant, stream);
            app.sso.logins.forget(tenant, stream);
        }
    }
    Ok(n)
}

/// Rebuild the read models that show personal fields, so they show the erasure. A rebuild
/// already running may have read the events before the keys went: wait for it (bounded), then
/// start one that reads after.
async fn rebuild_personal_read_models(app: &App) {
    for name in PERSONAL_READ_MODELS {
        let mut waited = std::time::Duration::ZERO;
        loop {
            match app.projections.rebuild(name) {
                Ok(_) => break,
                Err(projections::RebuildError::AlreadyRunning(_))
                    if waited < std::time::Duration::from_secs(30) =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    waited += std::time::Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::warn!(error = %e, projection = name, "no rebuild after an erasure");
                    break;
                }
            }
        }
    }
}

/// The keys (and the streams of their events) of every recorded sequence: what an erasure
/// recorded must have destroyed.
fn keys_of_sequences(scan: &Scan, erased: &BTreeSet<u64>) -> (Vec<String>, BTreeSet<String>) {
    let mut keys = Vec::new();
    let mut streams = BTreeSet::new();
    for (kid, events) in &scan.by_key {
        if events.iter().any(|e| erased.contains(&e.sequence)) {
            keys.push(kid.clone());
            streams.extend(events.iter().map(|e| e.stream.clone()));
        }
    }
    (keys, streams)
}

async fn recorded_erasures(app: &App, tenant: TenantId) -> Result<BTreeSet<u64>, Error> {
    let (state, _) = app
        .audit_log
        .load(tenant, ERASURES_STREAM)
        .await
        .map_err(audit_error)?;
    Ok(state.erased)
}

/// Apply `tenant`'s retention policy now (`ctx.now`): every key whose events are all past the
/// shortest window of the rules covering their type is recorded (`erasure.applied`, one per
/// rule) and destroyed. Finishes half-done erasures first. Idempotent.
pub async fn apply_retention(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
) -> Result<ErasureReport, Error> {
    let report = retention_of(app, ctx, tenant).await?;
    if report.keys_destroyed > 0 {
        rebuild_personal_read_models(app).await;
    }
    Ok(report)
}

async fn retention_of(app: &App, ctx: &Ctx, tenant: TenantId) -> Result<ErasureReport, Error> {
    let scan = scan(app, tenant).await?;
    let mut report = ErasureReport {
        tenant: Some(tenant),
        ..ErasureReport::default()
    };
    let mut erased = recorded_erasures(app, tenant).await?;
    let (policy, _) = app
        .audit_log
        .load(tenant, RETENTION_STREAM)
        .await
        .map_err(audit_error)?;
    let rules = policy.policy.map(|p| p.rules).unwrap_or_default();
    let now = micros(ctx.now);
    // The rule with the shortest window over each event type (the first one wins a tie).
    let window = |event_type: &str| {
        rules
            .iter()
            .filter(|r| r.event_types.iter().any(|t| t == event_type))
            .min_by_key(|r| r.keep_days)
    };
    let keep = |days: u32| i64::from(days) * 86_400_000_000;
    // The sequences each rule erases now: every event of every key past its window.
    let mut by_rule: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for events in scan.by_key.values() {
        let Some(rule) = window(&events[0].event_type) else {
            continue;
        };
        let latest = events
            .iter()
            .map(|e| e.occurred_at)
            .max()
            .unwrap_or(i64::MAX);
        if latest.saturating_add(keep(rule.keep_days)) > now {
            continue;
        }
        by_rule
            .entry(rule.name.clone())
            .or_default()
            .extend(events.iter().map(|e| e.sequence));
    }
    report.plaintext_past_window = scan
        .plaintext
        .iter()
        .filter(|e| {
            window(&e.event_type)
                .is_some_and(|r| e.occurred_at.saturating_add(keep(r.keep_days)) <= now)
        })
        .count() as u64;
    for (rule, sequences) in &by_rule {
        if let Some(r) = record(app, ctx, tenant, rule, sequences.clone()).await? {
            report.events_erased += r.1.len() as u64;
            erased.extend(r.1.iter().copied());
            report.recorded.push(r);
        }
    }
    // Recorded (now or by an earlier run): destroy.
    let (keys, streams) = keys_of_sequences(&scan, &erased);
    report.keys_destroyed = destroy(app, tenant, keys, streams).await?;
    Ok(report)
}

/// Apply every tenant's retention policy (the platform tenant has none).
pub async fn apply_retention_all(app: &App, ctx: &Ctx) -> Result<Vec<ErasureReport>, Error> {
    let mut out = Vec::new();
    let mut failed = None;
    for (tenant, _) in app.audit_tree.sizes() {
        if tenant == TenantId::PLATFORM {
            continue;
        }
        // One tenant's failure does not stop the others; the first is answered after them.
        match retention_of(app, ctx, tenant).await {
            Ok(r) => out.push(r),
            Err(e) => {
                tracing::warn!(error = %e, tenant = %tenant.as_uuid(), "retention not applied");
                failed.get_or_insert(e);
            }
        }
    }
    if out.iter().any(|r| r.keys_destroyed > 0) {
        rebuild_personal_read_models(app).await;
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Erase a member's personal data at their request (the right to erasure): every event sealed
/// with one of their keys is recorded as erased (`erasure.applied` with the reason
/// [`personal::SUBJECT_REQUEST`]) and the keys are destroyed. Inside any window: that is what
/// the reason says, and what the verifier accepts for it (docs/audit-bundle.md).
pub async fn erase_member(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    user_id: domain::UserId,
) -> Result<ErasureReport, Error> {
    let scan = scan(app, tenant).await?;
    // The member's own subject, and the SCIM users ever linked to them (ADR 037).
    let mut subjects = vec![personal::user_subject(&user_id.to_string())];
    subjects.extend(
        scan.scim_users
            .get(&user_id.to_string())
            .into_iter()
            .flatten()
            .map(|s| personal::scim_user_subject(s)),
    );
    let mut live: BTreeSet<String> = BTreeSet::new();
    for subject in &subjects {
        live.extend(app.store.subject_key_ids(tenant, subject).await?);
    }
    let mut report = ErasureReport {
        tenant: Some(tenant),
        ..ErasureReport::default()
    };
    let mut erased = recorded_erasures(app, tenant).await?;
    let sequences: Vec<u64> = scan
        .by_key
        .iter()
        .filter(|(kid, _)| live.contains(*kid))
        .flat_map(|(_, events)| events.iter().map(|e| e.sequence))
        .collect();
    if !sequences.is_empty()
        && let Some(r) = record(app, ctx, tenant, personal::SUBJECT_REQUEST, sequences).await?
    {
        report.events_erased += r.1.len() as u64;
        erased.extend(r.1.iter().copied());
        report.recorded.push(r);
    }
    let (keys, streams) = keys_of_sequences(&scan, &erased);
    report.keys_destroyed = destroy(app, tenant, keys, streams).await?;
    if report.keys_destroyed > 0 {
        rebuild_personal_read_models(app).await;
    }
    Ok(report)
}

/// Apply every tenant's retention policy on a timer for as long as `app` lives.
pub fn start_retention_schedule(app: &std::sync::Arc<App>, every: std::time::Duration) {
    let weak = std::sync::Arc::downgrade(app);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(app) = weak.upgrade() else { return };
            let ctx = app.ctx(store::Metadata::actor("system:retention"));
            match apply_retention_all(&app, &ctx).await {
                Ok(reports) => {
                    let keys: u64 = reports.iter().map(|r| r.keys_destroyed).sum();
                    let events: u64 = reports.iter().map(|r| r.events_erased).sum();
                    if keys > 0 || events > 0 {
                        tracing::info!(keys, events, "retention applied");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "retention not applied"),
            }
        }
    });
}
