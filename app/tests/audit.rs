//! The audit use cases on a real embedded store: a tenant's checkpoint is recorded when its tree
//! grew enough or long enough ago, once (a second recorder of the same size is refused), outside
//! the tenant's own log; a bundle then proves consistency from it.

use app::{App, Ctx, SystemClock};
use domain::audit::checkpoints_stream;
use domain::tenant::TenantName;
use domain::{Email, PersonName, TenantId};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config() -> app::Config {
    app::Config {
        public_url: "http://localhost".into(),
        plans: domain::plans::Registry::default(),
        token_ttl_days: 30,
        read_wait: Duration::from_secs(5),
        flags: BTreeMap::new(),
        dataset_limit: 1 << 20,
        query_time: Duration::from_secs(1),
        query_max_rows: 1000,
        export_max_rows: 1000,
        sandbox_cache_bytes: 1 << 20,
        sandbox_dir: None,
        concurrency_per_tenant: 4,
        concurrency_global: 16,
        refusal_timer: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_checkpoints_are_recorded_when_due_once_and_outside_the_tenants_tree() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::Store::open_embedded(dir.path()).unwrap();
    let app: Arc<App> = App::start(config(), store.clone(), Arc::new(SystemClock)).await;
    let ctx: Ctx = app.ctx(store::Metadata::actor("test"));
    let admitted = app::identity::sign_up(
        &app,
        &ctx,
        app::identity::SignUp {
            tenant_name: TenantName::parse("Acme").unwrap(),
            email: Email::parse("owner@acme.test").unwrap(),
            name: PersonName::parse("Owner").unwrap(),
            token: None,
        },
    )
    .await
    .unwrap();
    let tenant: TenantId = admitted.tenant_id;
    let size = app.audit_tree.size(tenant);
    assert_eq!(size, 3, "signed up, owner added, token issued");

    // Grown by 3 < 1,000 events, and nothing recorded before: not due yet.
    let (recorded, _) = app::audit::record_checkpoint(&app, &ctx, tenant, size, None)
        .await
        .unwrap();
    assert_eq!(recorded, 0);

    // The last one was recorded more than the period ago: due.
    let long_ago = Instant::now()
        .checked_sub(app::audit::CHECKPOINT_EVERY + Duration::from_secs(1))
        .unwrap();
    let (recorded, _) =
        app::audit::record_checkpoint(&app, &ctx, tenant, size, Some((0, long_ago)))
            .await
            .unwrap();
    assert_eq!(recorded, 3);
    // A second recorder that still thinks nothing was recorded is refused, and told the size.
    let (recorded, _) =
        app::audit::record_checkpoint(&app, &ctx, tenant, size, Some((0, long_ago)))
            .await
            .unwrap();
    assert_eq!(recorded, 3);
    let (state, _) = app
        .audit_log
        .load(TenantId::PLATFORM, &checkpoints_stream(tenant))
        .await
        .unwrap();
    assert_eq!(state.checkpoint_sizes, vec![3]);
    assert_eq!(
        app.audit_tree.size(tenant),
        3,
        "recording a checkpoint does not grow the tree it signs"
    );

    // The checkpoint handed out now is of the same size: recorded already, nothing more written.
    let now = app::audit::checkpoint(&app, &ctx, tenant).await.unwrap();
    assert_eq!(now.size, 3);
    let (state, _) = app
        .audit_log
        .load(TenantId::PLATFORM, &checkpoints_stream(tenant))
        .await
        .unwrap();
    assert_eq!(state.checkpoint_sizes, vec![3]);

    // A bundle of everything verifies its own shape and names a consistency proof from size 3.
    let b = app::audit::bundle(
        &app,
        &ctx,
        tenant,
        time::OffsetDateTime::UNIX_EPOCH,
        time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    )
    .await
    .unwrap();
    assert_eq!(b.event_count, 3);
    assert_eq!(b.tree_size, 3);
    assert!(b.bytes > 0);
    store.close().await;
}
