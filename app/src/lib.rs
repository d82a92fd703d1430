//! Tenantry's application layer (ADR 018): one HTTP-free function per use case, owning its flow
//! — checks, metering, the executor calls, settling. `api`'s handlers parse, call one of these
//! and answer; `tenantry seed`, the benches and every other CLI call the same functions.
//!
//! Architecture invariant: nothing here knows HTTP. Errors are [`Error`]s whose variants name the
//! HTTP answer `api` maps them to.

pub mod analysis;
pub mod audit;
pub mod billing;
pub mod clock;
pub mod datasets;
pub mod erasure;
mod error;
pub mod feedback;
pub mod identity;
pub mod insights;
pub mod invites;
pub mod metering;
pub mod onboarding;
pub mod outbox;
pub mod payments;
pub mod presets;
pub mod scim;
pub mod shares;
pub mod slo;
pub mod sso;
pub mod text;
pub mod tokens;

pub use clock::{Clock, FixedClock, ShiftedClock, SystemClock};
pub use error::Error;

use commands::{Executor, ExecutorConfig};
use domain::dataset::Dataset;
use domain::platform::Platform;
use domain::preset::Preset;
use domain::quota::Usage;
use domain::tenant::Tenant;
use domain::{Flag, TenantId};
use projections::{AuditTree, Catalog, FirstSuccess, Identity, Insights, Runtime};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use store::{Appended, Store};
use time::OffsetDateTime;

/// The hot streams of an executor with a stream per thing made (datasets, presets, feedback
/// items).
pub const PER_THING_HOT_STREAMS: usize = 1_024;

/// What the use cases are configured with (from `api::settings::Settings`, or a CLI's flags).
#[derive(Clone, Debug)]
pub struct Config {
    /// The address clients reach the service at (links in answers and messages).
    pub public_url: String,
    /// The plan registry asked for; the one in force is published to the log at start.
    pub plans: domain::plans::Registry,
    pub token_ttl_days: i64,
    /// How long a read waits for `min_position`, and a command for its projections.
    pub read_wait: Duration,
    /// Flags' defaults (a tenant's overrides win).
    pub flags: BTreeMap<Flag, bool>,
    pub dataset_limit: usize,
    pub query_time: Duration,
    pub query_max_rows: usize,
    pub export_max_rows: usize,
    /// The budget of the cache of loaded datasets: of disk when `sandbox_dir` is set, of memory
    /// otherwise.
    pub sandbox_cache_bytes: usize,
    /// Where loaded datasets are kept as files (a directory of this process's own is made in it,
    /// ADR 040); `None`: in memory.
    pub sandbox_dir: Option<std::path::PathBuf>,
    pub concurrency_per_tenant: usize,
    pub concurrency_global: usize,
    /// Write the coalesced refusal counts on a timer once their minute is over (`serve`);
    /// without it the caller writes them with [`App::flush_refusals`] (`tenantry seed`).
    pub refusal_timer: bool,
}

impl Config {
    /// Whether `flag` is on for a tenant with these overrides.
    pub fn flag_enabled(&self, flag: Flag, overrides: &BTreeMap<Flag, bool>) -> bool {
        overrides
            .get(&flag)
            .or_else(|| self.flags.get(&flag))
            .copied()
            .unwrap_or(false)
    }

    /// The fair shares of uploads, queries and exports.
    pub fn shares(&self) -> shares::Shares {
        use shares::Share;
        let (tenant, global) = (self.concurrency_per_tenant, self.concurrency_global);
        let half = Share {
            per_tenant: tenant.div_ceil(2),
            global: global.div_ceil(2),
        };
        shares::Shares::new(
            half,
            Share {
                per_tenant: tenant,
                global,
            },
            half,
        )
    }

    /// Where a tenant changes its plan.
    pub fn upgrade_url(&self) -> String {
        format!("{}/v1/tenant/plan", self.public_url.trim_end_matches('/'))
    }
}

/// Business counters the use cases keep (exposed by `api`'s `/metrics`).
#[derive(Debug, Default)]
pub struct Counters {
    pub events_appended: AtomicU64,
    pub blocked_attempts: AtomicU64,
    pub grace_entries: AtomicU64,
    pub upgrades: AtomicU64,
    pub upgrades_after_block: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Who asks and when: the metadata every event of the use case carries (actor, correlation,
/// causation, the idempotency seed of its event ids), and the decision time (`occurred_at`).
#[derive(Clone, Debug)]
pub struct Ctx {
    pub meta: store::Metadata,
    pub now: OffsetDateTime,
    /// When set, the ids the use case makes (datasets, queries, exports) are derived from it
    /// (UUIDv5), so a simulation replays with the same ids; otherwise they are fresh UUIDv7s.
    pub id_seed: Option<uuid::Uuid>,
}

impl Ctx {
    /// A new id for `purpose` (`dataset`, `query`, `export`, …).
    pub fn new_id(&self, purpose: &str) -> uuid::Uuid {
        match self.id_seed {
            Some(seed) => uuid::Uuid::new_v5(&seed, purpose.as_bytes()),
            None => uuid::Uuid::now_v7(),
        }
    }
}

/// Everything the use cases need, and nothing of HTTP.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub tenants: Executor<Tenant>,
    pub platform: Executor<Platform>,
    pub datasets: Executor<Dataset>,
    pub presets: Executor<Preset>,
    pub usage: Executor<Usage>,
    /// Tenants' billing modes (stream `billing`) and the invoice book (platform `invoices`).
    pub billing_accounts: Executor<domain::billing::BillingAccount>,
    pub invoices: Executor<domain::billing::InvoiceBook>,
    /// Daily usage rollups and usage by price (invoices, previews, reconciliation).
    pub rollups: Arc<projections::DailyRollups>,
    /// Each tenant's billing mode and plan events (invoicing reads no stream).
    pub billing_view: Arc<projections::BillingView>,
    pub identity: Arc<Identity>,
    /// Each tenant's audit Merkle tree (ADR 023), and the audit feed's index (ADR 039).
    pub audit_tree: Arc<AuditTree>,
    /// The audit log's own records: the keyring and the bundles exported.
    pub audit_log: Executor<domain::audit::AuditLog>,
    pub catalog: Arc<Catalog>,
    pub insights: Arc<Insights>,
    pub first_success: Arc<FirstSuccess>,
    /// Each user's onboarding records (screen reports, dismissed and snoozed nudges).
    pub onboarding: Executor<domain::onboarding::Onboarding>,
    /// In-product feedback items (stream `feedback-{id}`) and the triage board.
    pub feedback: Executor<domain::feedback::Feedback>,
    /// Each tenant's feedback settings (stream `feedback-settings-{tenant}`).
    pub feedback_settings: Executor<domain::feedback::FeedbackSettings>,
    pub feedback_board: Arc<projections::FeedbackBoard>,
    pub projections: Runtime,
    pub shares: shares::Shares,
    pub sandbox: dataplane::sandbox::Cache,
    pub counters: Counters,
    /// The alert drill: its record and the drill in force (issue 15).
    pub drills: slo::Drills,
    /// SSO settings, mapping and logins, and the SCIM directory (ADR 031).
    pub sso: sso::Sso,
    /// SCIM users and groups, and the groups users last came with (ADR 031).
    pub directory: Arc<projections::Directory>,
    refusals: metering::Refusals,
    /// This app, for the work it schedules for later (a minute's refusal count).
    me: std::sync::Weak<App>,
    /// The platform secret that keys every tenant's PII hashes (never leaves the store).
    pii_secret: Vec<u8>,
}

impl App {
    /// Start on `store`: publish the plan registry the configuration asks for (the one in force
    /// is the log's, ADR 010), load the PII secret, start the projections.
    pub async fn start(mut config: Config, store: Store, clock: Arc<dyn Clock>) -> Arc<Self> {
        match metering::publish_registry(&store, &config.plans, clock.now()).await {
            Ok(registry) => {
                tracing::info!(version = registry.version(), "plan registry in force");
                config.plans = registry;
            }
            Err(e) => tracing::error!(error = %e, "plan registry not published"),
        }
        let sandbox = match &config.sandbox_dir {
            None => dataplane::sandbox::Cache::new(config.sandbox_cache_bytes),
            Some(dir) => match dataplane::sandbox::Cache::in_dir(config.sandbox_cache_bytes, dir) {
                Ok(cache) => cache,
                Err(e) => {
                    tracing::error!(error = %e, dir = %dir.display(),
                        "the dataset cache's directory cannot be made: datasets are cached in memory");
                    dataplane::sandbox::Cache::new(config.sandbox_cache_bytes)
                }
            },
        };
        // 1 GiB for queries, plus the loaded tables when they are in memory (and, when SQLite's
        // memory could not be split, for the store's own SQLite: ADR 034).
        let cap = (1u64 << 30)
            + if sandbox.dir().is_none() {
                config.sandbox_cache_bytes as u64
            } else {
                0
            };
        match dataplane::sandbox::set_memory_cap(cap) {
            Ok(dataplane::sandbox::MemoryCap::Sandbox) => {
                tracing::info!(bytes = cap, "tenants' SQL has a memory budget of its own")
            }
            Ok(dataplane::sandbox::MemoryCap::Process) => tracing::warn!(
                bytes = cap,
                "SQLite's memory is not split: tenants' SQL shares its cap with the embedded store"
            ),
            Err(e) => tracing::warn!(error = %e, "SQLite memory cap not set"),
        }
        let pii_secret = pii_secret(&store).await;
        let identity = Arc::new(Identity::default());
        let catalog = Arc::new(Catalog::default());
        let rollups = Arc::new(projections::DailyRollups::default());
        let billing_view = Arc::new(projections::BillingView::default());
        let insights = Arc::new(Insights::default());
        let first_success = Arc::new(FirstSuccess::default());
        let audit_tree = Arc::new(AuditTree::default());
        let feedback_board = Arc::new(projections::FeedbackBoard::default());
        let directory = Arc::new(projections::Directory::default());
        let projections = Runtime::start(
            &store,
            vec![
                identity.clone(),
                catalog.clone(),
                insights.clone(),
                first_success.clone(),
                audit_tree.clone(),
                rollups.clone(),
                billing_view.clone(),
                feedback_board.clone(),
                directory.clone(),
            ],
        );
        let executor = |kind: &'static str| ExecutorConfig::new(kind);
        // Executors with a stream per thing made (a dataset, a preset, a feedback item) see
        // mostly one command per stream, at its creation: a small hot set holds their working
        // set, where the default (8,192) kept thousands of finished streams' states for minutes
        // after they were last used (ADR 040).
        let per_thing = |kind: &'static str| ExecutorConfig {
            max_hot_streams: PER_THING_HOT_STREAMS,
            ..ExecutorConfig::new(kind)
        };
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            billing_accounts: Executor::new(store.clone(), executor("billing-account/v1")),
            invoices: Executor::new(store.clone(), executor("invoice-book/v1")),
            datasets: Executor::new(store.clone(), per_thing("dataset/v1")),
            presets: Executor::new(store.clone(), per_thing("preset/v1")),
            usage: Executor::new(
                store.clone(),
                ExecutorConfig {
                    // Busy meters are contended by design (many clients, several instances):
                    // retry longer before giving up.
                    max_retries: 64,
                    ..executor("usage/v1")
                },
            ),
            // v2: members leave, tokens have owners, invites and sign-ins (issue 10).
            tenants: Executor::new(store.clone(), executor("tenant/v2")),
            platform: Executor::new(store.clone(), executor("platform/v1")),
            onboarding: Executor::new(store.clone(), executor("onboarding/v1")),
            feedback: Executor::new(store.clone(), per_thing("feedback/v1")),
            feedback_settings: Executor::new(store.clone(), executor("feedback-settings/v1")),
            audit_log: Executor::new(store.clone(), executor("audit/v1")),
            sandbox,
            shares: config.shares(),
            refusals: metering::Refusals::default(),
            drills: slo::Drills::new(store.clone()),
            sso: sso::Sso::new(&store),
            directory,
            counters: Counters::default(),
            config,
            store,
            clock,
            identity,
            audit_tree,
            catalog,
            rollups,
            billing_view,
            insights,
            first_success,
            feedback_board,
            projections,
            pii_secret,
        })
    }

    /// This app as an owned handle (for spawned work); `None` while it is being dropped.
    pub(crate) fn me(&self) -> Option<Arc<App>> {
        self.me.upgrade()
    }

    /// A context for a decision made now, by the clock.
    /// Streams whose state the executors keep hot now, all executors together (each keeps at
    /// most its `max_hot_streams`).
    pub fn hot_streams(&self) -> usize {
        self.tenants.hot_streams()
            + self.platform.hot_streams()
            + self.datasets.hot_streams()
            + self.presets.hot_streams()
            + self.usage.hot_streams()
            + self.billing_accounts.hot_streams()
            + self.invoices.hot_streams()
            + self.audit_log.hot_streams()
            + self.onboarding.hot_streams()
            + self.feedback.hot_streams()
            + self.feedback_settings.hot_streams()
    }

    pub fn ctx(&self, meta: store::Metadata) -> Ctx {
        Ctx {
            id_seed: meta.event_id_seed,
            meta,
            now: self.clock.now(),
        }
    }

    /// The key of a tenant's PII hashes: SHA-256 of the platform secret and the tenant id, so
    /// hashes are stable within a tenant, differ across tenants, and cannot be recomputed from
    /// anything a client can see.
    pub fn pii_key(&self, tenant: TenantId) -> Vec<u8> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(&self.pii_secret);
        h.update(tenant.as_uuid().as_bytes());
        h.finalize().to_vec()
    }

    /// The secret other keys are derived from (the seal of replayed tokens).
    pub fn platform_secret(&self) -> &[u8] {
        &self.pii_secret
    }

    /// The last position a command wrote (0 for a command that wrote nothing), counting what it
    /// appended.
    pub fn committed(&self, appended: &Option<Appended>) -> u64 {
        match appended {
            Some(a) => {
                if !a.replayed {
                    self.counters
                        .events_appended
                        .fetch_add(a.positions.len() as u64, Ordering::Relaxed);
                }
                a.last_position()
            }
            None => 0,
        }
    }

    /// `committed`, then wait (bounded, never failing) for this instance's projections to apply
    /// it, so that reads here see the change.
    pub async fn settled(&self, appended: &Option<Appended>) -> u64 {
        let position = self.committed(appended);
        self.settle(position).await;
        position
    }

    /// After a command has committed: wait, bounded, for this instance's projections to apply
    /// it. Never an error: the change is stored whatever happens here, and turning a late
    /// projection into a failure would make a client retry a command that went through.
    pub async fn settle(&self, position: u64) {
        if !self
            .projections
            .wait_for(position, self.config.read_wait)
            .await
        {
            tracing::warn!(
                position,
                "projections did not reach a committed position in time"
            );
        }
    }

    /// Wait, bounded, until the projections have applied `min_position` (read-your-writes). A
    /// position beyond the log's head is the client's error; one written but not applied here yet
    /// is worth a retry.
    pub async fn wait_for(&self, min_position: Option<u64>) -> Result<(), Error> {
        let Some(position) = min_position else {
            return Ok(());
        };
        if self.projections.wait_for(position, Duration::ZERO).await {
            return Ok(());
        }
        let head = self.store.head().await?;
        if position > head {
            return Err(Error::PositionNotWritten { position, head });
        }
        if self
            .projections
            .wait_for(position, self.config.read_wait)
            .await
        {
            Ok(())
        } else {
            Err(Error::NotCaughtUp { position })
        }
    }

    /// Write the coalesced refusal counts not written yet, whatever their minute (at a graceful
    /// stop, and by a simulation at the end of each simulated day).
    pub async fn flush_refusals(&self) {
        metering::flush_refusals(self).await;
    }
}

/// The platform's PII secret: 32 random bytes made on first start and kept in the store (the
/// first instance to make one wins, so every instance on one database uses the same).
async fn pii_secret(store: &Store) -> Vec<u8> {
    let mut fresh = uuid::Uuid::new_v4().as_bytes().to_vec();
    fresh.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    match store
        .put_blob_if_absent(TenantId::PLATFORM, "pii-secret", fresh.clone())
        .await
    {
        Ok(stored) => stored,
        Err(e) => {
            // Without the store there is no service anyway; hashes made now would not match later ones.
            tracing::error!(error = %e, "PII secret not loaded; using a temporary one");
            fresh
        }
    }
}
