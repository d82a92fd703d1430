//! Command-line actions that are not the server: operator tokens and projection rebuilds.

use commands::{Executor, ExecutorConfig};
use domain::platform::Platform;
use domain::{PlatformRole, UserId};
use projections::{Catalog, FirstSuccess, Identity, Insights, Projection};
use serde::Serialize;
use std::sync::Arc;
use store::{Metadata, Store};
use time::OffsetDateTime;

#[derive(Debug, Serialize)]
pub struct OperatorToken {
    pub operator_id: UserId,
    pub role: PlatformRole,
    pub token: String,
    pub token_expires_at: String,
    pub global_position: u64,
}

/// Issue a platform-staff token through the command path; a running server on the same store
/// picks it up from the log.
pub async fn issue_operator_token(
    store: &Store,
    role: PlatformRole,
    ttl_days: i64,
) -> anyhow::Result<OperatorToken> {
    let executor = Executor::<Platform>::new(store.clone(), ExecutorConfig::new("platform/v1"));
    let ctx = app::Ctx {
        meta: Metadata::actor("cli:operator-token"),
        now: OffsetDateTime::now_utc(),
        id_seed: None,
    };
    let done = app::identity::issue_operator_token(&executor, &ctx, role, ttl_days)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(OperatorToken {
        operator_id: done.operator_id,
        role: done.role,
        token: done.token,
        token_expires_at: store::format_rfc3339_micros(done.expires_at),
        global_position: done.position,
    })
}

#[derive(Debug, Serialize)]
pub struct RebuildReport {
    pub head_position: u64,
    /// The position the rebuilt state was saved at (its checkpoint).
    pub position: u64,
    pub events: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub projections: Vec<&'static str>,
}

/// The read models a server runs, fresh (empty).
pub fn all_projections() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(Identity::default()),
        Arc::new(Catalog::default()),
        Arc::new(Insights::default()),
        Arc::new(FirstSuccess::default()),
        Arc::new(projections::AuditTree::default()),
        Arc::new(projections::FeedbackBoard::default()),
        Arc::new(projections::Directory::default()),
    ]
}

/// Rebuild `name` (or every projection) offline: replay the log from position 1 into a fresh
/// instance, in one pass for all of them, and save each state with its checkpoint under its name,
/// so that the next start resumes from it. A server running on the same store keeps its own state
/// and checkpoints over this one (both are the log applied up to a position); to rebuild under a
/// running server without downtime use `POST /v1/ops/projections/{name}/rebuild`.
pub async fn rebuild(store: &Store, name: Option<&str>) -> anyhow::Result<RebuildReport> {
    let mut projections = all_projections();
    if let Some(name) = name {
        projections.retain(|p| p.name() == name);
        if projections.is_empty() {
            let known: Vec<&str> = all_projections().iter().map(|p| p.name()).collect();
            anyhow::bail!(
                "no projection is named {name:?} (known: {})",
                known.join(", ")
            );
        }
    }
    let head = store.head().await?;
    let replayed = projections::replay(store, &projections, 1, Some(head)).await?;
    for p in &projections {
        projections::save(store, &**p, replayed.position).await?;
    }
    Ok(RebuildReport {
        head_position: head,
        position: replayed.position,
        events: replayed.events,
        seconds: replayed.seconds,
        events_per_sec: replayed.events as f64 / replayed.seconds.max(1e-9),
        projections: projections.iter().map(|p| p.name()).collect(),
    })
}
