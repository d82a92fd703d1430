//! `tenantry retention apply`: apply the tenants' retention policies offline, on either store,
//! through the same use case the service's schedule runs (`app::erasure`, ADR 032).

use serde::Serialize;

/// What one tenant's run did, as printed.
#[derive(Debug, Serialize)]
pub struct TenantReport {
    pub tenant: String,
    /// Each `erasure.applied` written: its rule, the erased sequences and its position.
    pub erasures: Vec<Erasure>,
    pub events_erased: u64,
    pub keys_destroyed: u64,
    /// Personal fields past their window stored before sealing existed (not erasable by
    /// destroying a key; a bundle covering them fails `retention`, ADR 032).
    pub plaintext_past_window: u64,
}

#[derive(Debug, Serialize)]
pub struct Erasure {
    pub rule: String,
    pub sequences: Vec<u64>,
    pub global_position: u64,
}

/// Apply retention now for `tenant`, or every tenant.
pub async fn apply(
    app: &app::App,
    tenant: Option<domain::TenantId>,
) -> anyhow::Result<Vec<TenantReport>> {
    let ctx = app.ctx(store::Metadata::actor("system:retention-cli"));
    let reports = match tenant {
        Some(t) => vec![app::erasure::apply_retention(app, &ctx, t).await?],
        None => app::erasure::apply_retention_all(app, &ctx).await?,
    };
    Ok(reports
        .into_iter()
        .map(|r| TenantReport {
            tenant: r.tenant.map(|t| t.to_string()).unwrap_or_default(),
            erasures: r
                .recorded
                .into_iter()
                .map(|(rule, sequences, global_position)| Erasure {
                    rule,
                    sequences,
                    global_position,
                })
                .collect(),
            events_erased: r.events_erased,
            keys_destroyed: r.keys_destroyed,
            plaintext_past_window: r.plaintext_past_window,
        })
        .collect())
}
