//! Command-line actions that are not the server: operator tokens and projection rebuilds.

use commands::{Executor, ExecutorConfig};
use domain::platform::{self, Platform, PlatformCommand};
use domain::{PlatformRole, TenantId, UserId, identity::IssuedToken};
use projections::{Audit, Identity, Projection};
use serde::Serialize;
use std::time::Instant;
use store::{Metadata, Store};
use time::OffsetDateTime;
use uuid::Uuid;

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
    let operator_id = UserId::from_uuid(Uuid::now_v7());
    let token = crate::tokens::generate();
    let issued = IssuedToken {
        token_id: Uuid::now_v7(),
        token_sha256: crate::tokens::sha256_hex(token.as_bytes()),
        expires_at: OffsetDateTime::now_utc() + time::Duration::days(ttl_days),
    };
    let expires_at = issued.expires_at;
    let done = executor
        .execute(
            TenantId::PLATFORM,
            platform::STREAM,
            &PlatformCommand::IssueOperatorToken {
                operator_id,
                role,
                token: issued,
            },
            &Metadata::actor("cli:operator-token"),
            OffsetDateTime::now_utc(),
        )
        .await?;
    Ok(OperatorToken {
        operator_id,
        role,
        token,
        token_expires_at: store::format_rfc3339_micros(expires_at),
        global_position: done.appended.map_or(0, |a| a.last_position()),
    })
}

#[derive(Debug, Serialize)]
pub struct RebuildReport {
    pub head_position: u64,
    pub events: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub projections: Vec<&'static str>,
}

/// Replay the whole log through every projection, as a server does at start.
pub async fn rebuild(store: &Store) -> anyhow::Result<RebuildReport> {
    let projections: Vec<Box<dyn Projection>> =
        vec![Box::new(Identity::default()), Box::new(Audit::default())];
    let head = store.head().await?;
    let started = Instant::now();
    let mut next = 1;
    let mut events = 0u64;
    while next <= head {
        let page = store.read_all(next, 10_000).await?;
        let Some(last) = page.last() else { break };
        next = last.global_position + 1;
        for e in &page {
            for p in &projections {
                p.apply(e);
            }
        }
        events += page.len() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(RebuildReport {
        head_position: head,
        events,
        seconds,
        events_per_sec: events as f64 / seconds.max(1e-9),
        projections: projections.iter().map(|p| p.name()).collect(),
    })
}
