//! The PostgreSQL backend: one batching writer task per process that group-commits appends, a
//! connection pool for reads, and LISTEN/NOTIFY to wake subscribers.
//!
//! Why readers never skip an event (docs/adr/002): every writing transaction takes one
//! transaction-scoped advisory lock *before* it reads the head position and assigns positions,
//! and holds it until it has committed. PostgreSQL makes a commit visible before it releases the
//! transaction's locks, so when a transaction can assign position `p + 1` the one that wrote `p`
//! is already visible to every new snapshot. Positions therefore become visible in order, and a
//! reader that resumes after the last position it saw cannot jump over a late commit. Positions
//! are also dense, because a transaction that rolls back has written none.

use crate::envelope::{AppendRequest, Appended, Envelope, RawJson};
use crate::error::{Result, StoreError};
use crate::idempotency;
use crate::planner::{Plan, StoredId};
use crate::tls;
use crate::{Health, OVERLOADED_RETRY_AFTER, Snapshot, StoreOptions, WriterState};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use domain::TenantId;
use futures_util::StreamExt;
use futures_util::future::{join, join3, join4};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Row, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;
use uuid::Uuid;

mod blobs;
pub use blobs::BlobChunks;

/// The advisory lock every writing transaction holds from assigning positions until commit.
const WRITE_LOCK: i64 = 0x7465_6e61_6e74; // "tenant"
/// The advisory lock that serializes migrations when several instances start at once.
const MIGRATION_LOCK: i64 = 0x7465_6e61_6e75;
/// How soon the server notices that the liveness session's peer vanished without closing it
/// (a host lost, a network cut): keepalives after 10 s idle, every 5 s, 3 missed (docs/adr/035).
const LIVENESS_KEEPALIVES: &str =
    "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3";
const CHANNEL: &str = "tenantry_events";
/// The most appends one group commit takes from the queue.
const MAX_GROUP: usize = 2048;

const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE events (
        global_position bigint PRIMARY KEY,
        tenant_id uuid NOT NULL,
        stream_id text NOT NULL,
        stream_version bigint NOT NULL,
        event_id uuid NOT NULL,
        event_type text NOT NULL,
        schema_version integer NOT NULL,
        recorded_at timestamptz NOT NULL,
        actor text NOT NULL,
        correlation_id uuid NOT NULL,
        causation_id uuid,
        trace_id text,
        payload text NOT NULL,
        UNIQUE (tenant_id, stream_id, stream_version),
        UNIQUE (event_id, tenant_id)
    );
    CREATE TABLE streams (
        tenant_id uuid NOT NULL,
        stream_id text NOT NULL,
        version bigint NOT NULL,
        PRIMARY KEY (tenant_id, stream_id)
    );
    CREATE TABLE idempotency (
        tenant_id uuid NOT NULL,
        key text NOT NULL,
        request_hash text NOT NULL,
        completed boolean NOT NULL,
        created_at bigint NOT NULL,
        status integer,
        content_type text,
        body bytea,
        PRIMARY KEY (tenant_id, key)
    );
    CREATE TABLE snapshots (
        tenant_id uuid NOT NULL,
        stream_id text NOT NULL,
        kind text NOT NULL,
        version bigint NOT NULL,
        state bytea NOT NULL,
        PRIMARY KEY (tenant_id, stream_id, kind)
    );",
    ),
    (
        2,
        // Row-level security on tenant_id: a connection acting as `tenantry_tenant` sees and writes
        // only the rows of the tenant named in the transaction setting `tenantry.tenant_id`.
        "DO $$ BEGIN
        CREATE ROLE tenantry_tenant NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END $$;
    DO $$ BEGIN
        EXECUTE format('GRANT tenantry_tenant TO %I', current_user);
    EXCEPTION WHEN duplicate_object OR invalid_grant_operation THEN NULL;
    END $$;
    GRANT SELECT, INSERT ON events, streams, snapshots, idempotency TO tenantry_tenant;
    ALTER TABLE events ENABLE ROW LEVEL SECURITY;
    ALTER TABLE streams ENABLE ROW LEVEL SECURITY;
    ALTER TABLE snapshots ENABLE ROW LEVEL SECURITY;
    ALTER TABLE idempotency ENABLE ROW LEVEL SECURITY;
    CREATE POLICY tenant_isolation ON events
        USING (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid)
        WITH CHECK (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid);
    CREATE POLICY tenant_isolation ON streams
        USING (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid)
        WITH CHECK (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid);
    CREATE POLICY tenant_isolation ON snapshots
        USING (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid)
        WITH CHECK (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid);
    CREATE POLICY tenant_isolation ON idempotency
        USING (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid)
        WITH CHECK (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid);",
    ),
    (
        3,
        "CREATE TABLE blobs (
        tenant_id uuid NOT NULL,
        blob_id text NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (tenant_id, blob_id)
    );
    GRANT SELECT, INSERT ON blobs TO tenantry_tenant;
    ALTER TABLE blobs ENABLE ROW LEVEL SECURITY;
    CREATE POLICY tenant_isolation ON blobs
        USING (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid)
        WITH CHECK (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid);",
    ),
    (
        4,
        // Business time beside commit time (NULL for events written before it existed: read as
        // recorded_at; adding a nullable column rewrites nothing), and the persisted state of each
        // read model with its checkpoint (platform-wide, not tenant data).
        "ALTER TABLE events ADD COLUMN occurred_at timestamptz;
    CREATE TABLE projection_state (
        name text PRIMARY KEY,
        position bigint NOT NULL,
        state bytea NOT NULL,
        saved_at timestamptz NOT NULL DEFAULT now()
    );",
    ),
    (
        5,
        // ADR 002's assumption enforced for every writer, psql included (docs/adr/011): an insert
        // into the log takes the global write lock (127978992397940 = WRITE_LOCK) before its
        // first row, and the rows of one statement must be the next positions after the head,
        // without a hole. The check runs as the table owner, so a tenant-scoped session's
        // row-level security does not hide the neighbours it looks for.
        "CREATE FUNCTION tenantry_events_take_write_lock() RETURNS trigger
        LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock(127978992397940);
        RETURN NULL;
    END $$;
    CREATE TRIGGER events_take_write_lock BEFORE INSERT ON events
        FOR EACH STATEMENT EXECUTE FUNCTION tenantry_events_take_write_lock();
    CREATE FUNCTION tenantry_events_dense_positions() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    DECLARE
        lo bigint;
        hi bigint;
        n bigint;
    BEGIN
        SELECT min(global_position), max(global_position), count(*) INTO lo, hi, n
            FROM new_events;
        -- max() is one probe of the primary key's right edge, whatever the plan; a range
        -- condition on a parameter could be planned as a scan of the whole log.
        IF n > 0 AND (hi - lo + 1 <> n
            OR (SELECT max(global_position) FROM events) <> hi
            OR (lo > 1 AND NOT EXISTS (SELECT 1 FROM events WHERE global_position = lo - 1))) THEN
            RAISE EXCEPTION 'events must take the positions right after the head (got % to %)',
                lo, hi USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER events_dense_positions AFTER INSERT ON events
        REFERENCING NEW TABLE AS new_events
        FOR EACH STATEMENT EXECUTE FUNCTION tenantry_events_dense_positions();
    CREATE FUNCTION tenantry_expect_streams(expected bigint, moved bigint) RETURNS bigint
        LANGUAGE plpgsql AS $$
    BEGIN
        IF moved <> expected THEN
            RAISE EXCEPTION 'a stream moved under another writer (% of % at their expected version)',
                moved, expected USING ERRCODE = 'serialization_failure';
        END IF;
        RETURN moved;
    END $$;",
    ),
    (
        6,
        // Who holds an idempotency key: only that request may complete or abandon it (a request
        // that took a stale key over is not undone by the late first owner).
        "ALTER TABLE idempotency ADD COLUMN owner uuid;",
    ),
    (
        7,
        // Row-level security forced (docs/adr/017): the owner is bound by the policies too, and
        // the service acts as one of three roles that own nothing (NOLOGIN, granted to the user
        // that runs the migrations; an operator may create them beforehand, then no CREATEROLE
        // is needed): `tenantry_tenant` sees one tenant's rows and cannot write the log;
        // `tenantry_writer`, used only by the group commit, appends to the log for every
        // tenant; `tenantry_platform` reads the log, keeps projection state and purges expired
        // idempotency records by age. The dense-positions check runs as its caller (the writer
        // sees the whole log; an owner bound by forced policies would see none of it).
        "DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenantry_writer') THEN
            CREATE ROLE tenantry_writer NOLOGIN;
        END IF;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END $$;
    DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenantry_platform') THEN
            CREATE ROLE tenantry_platform NOLOGIN;
        END IF;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END $$;
    DO $$
    DECLARE
        r text;
    BEGIN
        FOREACH r IN ARRAY ARRAY['tenantry_tenant', 'tenantry_writer', 'tenantry_platform'] LOOP
            IF NOT pg_has_role(current_user, r, 'MEMBER') THEN
                EXECUTE format('GRANT %I TO %I', r, current_user);
            END IF;
        END LOOP;
    END $$;
    REVOKE INSERT ON events, streams FROM tenantry_tenant;
    GRANT UPDATE, DELETE ON snapshots, idempotency, blobs TO tenantry_tenant;
    GRANT SELECT, INSERT ON events TO tenantry_writer;
    GRANT SELECT, INSERT, UPDATE ON streams TO tenantry_writer;
    CREATE POLICY group_commit ON events FOR ALL TO tenantry_writer
        USING (true) WITH CHECK (true);
    CREATE POLICY group_commit ON streams FOR ALL TO tenantry_writer
        USING (true) WITH CHECK (true);
    GRANT SELECT ON events TO tenantry_platform;
    CREATE POLICY platform_reads_the_log ON events FOR SELECT TO tenantry_platform USING (true);
    GRANT SELECT, INSERT, UPDATE, DELETE ON projection_state TO tenantry_platform;
    GRANT SELECT (tenant_id, key, created_at), DELETE ON idempotency TO tenantry_platform;
    CREATE POLICY platform_purges_by_age ON idempotency FOR SELECT TO tenantry_platform
        USING (true);
    CREATE POLICY platform_purges ON idempotency FOR DELETE TO tenantry_platform USING (true);
    ALTER FUNCTION tenantry_events_dense_positions() SECURITY INVOKER;
    ALTER TABLE events FORCE ROW LEVEL SECURITY;
    ALTER TABLE streams FORCE ROW LEVEL SECURITY;
    ALTER TABLE snapshots FORCE ROW LEVEL SECURITY;
    ALTER TABLE idempotency FORCE ROW LEVEL SECURITY;
    ALTER TABLE blobs FORCE ROW LEVEL SECURITY;",
    ),
    (
        8,
        // PostgreSQL 16 and later: a non-superuser login that created the roles holds them with
        // ADMIN OPTION only, not SET, so it could not act as them (migration 7's MEMBER check
        // passes on such a grant). Grant SET where it is missing. And the writer stages large
        // groups in a temporary table: it needs TEMPORARY on the database even where PUBLIC
        // lost it (granted when the login may; otherwise an operator step, runbook).
        "DO $$
    DECLARE
        r text;
    BEGIN
        IF current_setting('server_version_num')::int >= 160000 THEN
            FOREACH r IN ARRAY ARRAY['tenantry_tenant', 'tenantry_writer', 'tenantry_platform'] LOOP
                IF NOT pg_has_role(current_user, r, 'SET') THEN
                    EXECUTE format('GRANT %I TO %I WITH SET TRUE', r, current_user);
                END IF;
            END LOOP;
        END IF;
    END $$;
    DO $$ BEGIN
        EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO tenantry_writer', current_database());
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'tenantry_writer needs TEMPORARY on this database (see the runbook)';
    END $$;",
    ),
    (
        9,
        // Subject keys of sealed personal fields (docs/adr/032), tenant-scoped under forced
        // row-level security like every tenant table. Erasure overwrites `secret` with NULL;
        // a key once erased cannot be given a secret again (the trigger), and the old row
        // version is left to VACUUM (what that means for the bytes: ADR 032).
        "CREATE TABLE subject_keys (
        tenant_id uuid NOT NULL,
        key_id text NOT NULL,
        subject text NOT NULL,
        day text NOT NULL,
        event_type text NOT NULL,
        secret bytea,
        created_at timestamptz NOT NULL DEFAULT now(),
        erased_at timestamptz,
        PRIMARY KEY (tenant_id, key_id)
    );
    CREATE INDEX subject_keys_subject ON subject_keys (tenant_id, subject);
    CREATE FUNCTION tenantry_subject_keys_stay_erased() RETURNS trigger
        LANGUAGE plpgsql AS $$
    BEGIN
        IF OLD.secret IS NULL AND NEW.secret IS NOT NULL THEN
            RAISE EXCEPTION 'an erased subject key stays erased' USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER subject_keys_stay_erased BEFORE UPDATE ON subject_keys
        FOR EACH ROW EXECUTE FUNCTION tenantry_subject_keys_stay_erased();
    GRANT SELECT, INSERT, UPDATE ON subject_keys TO tenantry_tenant;
    ALTER TABLE subject_keys ENABLE ROW LEVEL SECURITY;
    CREATE POLICY tenant_isolation ON subject_keys
        USING (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid)
        WITH CHECK (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid);
    ALTER TABLE subject_keys FORCE ROW LEVEL SECURITY;",
    ),
    (
        10,
        // The process instance that began an idempotency record (docs/adr/035): a record in
        // flight whose instance no longer holds its liveness lock is taken over at once. The
        // tenant role's table grants cover the column; the platform role's column grants do not
        // (it purges by age and never needs it). Row-level security stays forced on the table.
        "ALTER TABLE idempotency ADD COLUMN instance uuid;",
    ),
    (
        11,
        // Blobs in chunks beside the single values of migration 3 (docs/adr/036).
        blobs::MIGRATION,
    ),
    (
        12,
        // The idempotency seeds whose events were written, marked by the group commit in the
        // transaction that writes them (docs/adr/035): a retry that takes a key over learns that
        // its request applied even when it would decide other events. Tenant-scoped under
        // forced row-level security; the writer inserts for every tenant, the platform purges
        // by age.
        "CREATE TABLE idempotency_applied (
        tenant_id uuid NOT NULL,
        seed uuid NOT NULL,
        applied_at bigint NOT NULL,
        PRIMARY KEY (tenant_id, seed)
    );
    GRANT SELECT ON idempotency_applied TO tenantry_tenant;
    GRANT SELECT, INSERT ON idempotency_applied TO tenantry_writer;
    GRANT SELECT (applied_at), DELETE ON idempotency_applied TO tenantry_platform;
    ALTER TABLE idempotency_applied ENABLE ROW LEVEL SECURITY;
    CREATE POLICY tenant_isolation ON idempotency_applied
        USING (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid)
        WITH CHECK (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid);
    CREATE POLICY group_commit ON idempotency_applied FOR ALL TO tenantry_writer
        USING (true) WITH CHECK (true);
    CREATE POLICY platform_purges_by_age ON idempotency_applied FOR SELECT TO tenantry_platform
        USING (true);
    CREATE POLICY platform_purges ON idempotency_applied FOR DELETE TO tenantry_platform
        USING (true);
    ALTER TABLE idempotency_applied FORCE ROW LEVEL SECURITY;",
    ),
    (
        13,
        // The rows read models keep instead of memory (docs/adr/039): the platform's reader
        // writes them for every tenant in the projection's transaction order; a tenant's reads
        // see its own rows only (row-level security forced, as on every tenant-scoped table).
        "CREATE TABLE projection_rows (
        projection text NOT NULL,
        tenant_id uuid NOT NULL,
        key bytea NOT NULL,
        value bytea NOT NULL,
        PRIMARY KEY (projection, tenant_id, key)
    );
    GRANT SELECT ON projection_rows TO tenantry_tenant;
    GRANT SELECT, INSERT, UPDATE, DELETE ON projection_rows TO tenantry_platform;
    ALTER TABLE projection_rows ENABLE ROW LEVEL SECURITY;
    CREATE POLICY tenant_isolation ON projection_rows
        USING (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid);
    CREATE POLICY platform_projections ON projection_rows FOR ALL TO tenantry_platform
        USING (true) WITH CHECK (true);
    ALTER TABLE projection_rows FORCE ROW LEVEL SECURITY;",
    ),
];

/// The roles the service acts as (migration 7, docs/adr/017). Every connection of the pool
/// starts as `TENANT_ROLE` with no tenant bound, so a statement sent outside a scope sees
/// nothing.
const TENANT_ROLE: &str = "tenantry_tenant";
/// Binds a tenant-scoped transaction to its tenant (row-level security reads it).
const BIND_TENANT: &str = "SELECT set_config('tenantry.tenant_id', $1, true)";

/// Who a transaction acts as.
#[derive(Clone, Copy, Debug)]
enum Scope {
    /// One tenant's rows, nothing else (`tenantry_tenant`).
    Tenant(TenantId),
    /// The platform's cross-tenant reads: the log, projection state, purges by age
    /// (`tenantry_platform`).
    Platform,
}

type AppendReply = (AppendRequest, oneshot::Sender<Result<Appended>>);

#[derive(Debug)]
pub(crate) struct Postgres {
    pool: Pool,
    queue: std::sync::Mutex<Option<mpsc::Sender<AppendReply>>>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    head: watch::Receiver<u64>,
    state: Arc<WriterState>,
    queue_capacity: usize,
    /// This instance's id; its liveness lock is held by a session of its own (docs/adr/035).
    instance: Uuid,
}

/// Session settings every connection of the store starts with (as startup options, so they
/// cost no round trip): time limits on locks, statements and idle transactions, and durable
/// commits whatever the server's default. Options given in the URL come after and win.
fn configure(config: &mut tokio_postgres::Config, options: &StoreOptions) {
    let ours = format!(
        "-c lock_timeout={} -c statement_timeout={} -c idle_in_transaction_session_timeout={} \
         -c synchronous_commit=on",
        options.lock_timeout.as_millis().max(1),
        options.statement_timeout.as_millis().max(1),
        options.idle_in_transaction_timeout.as_millis().max(1),
    );
    let all = match config.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{ours} {given}"),
        _ => ours,
    };
    config.options(all);
    config.keepalives(true);
    config.keepalives_idle(options.keepalive_idle);
    config.keepalives_interval(Duration::from_secs(5));
    config.keepalives_retries(3);
    // Unacknowledged data on a dead peer fails the connection instead of waiting for the
    // kernel's retransmission limit (about 15 minutes).
    config.tcp_user_timeout(options.keepalive_idle);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
}

impl Postgres {
    pub(crate) async fn connect(url: &str, options: &StoreOptions) -> Result<Self> {
        let connect = tls::parse(url)?;
        let mut config = connect.config.clone();
        configure(&mut config, options);
        // Migrations run as the URL's user (the tables' owner), on a connection of their own;
        // every other connection starts as the tenant role, bound to no tenant (docs/adr/017).
        migrate(&config, &connect.tls).await?;
        // Alive from before the first begin until the store is closed or dropped.
        let instance = Uuid::new_v4();
        let mut liveness_config = config.clone();
        let with_keepalives = match config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {LIVENESS_KEEPALIVES}"),
            _ => LIVENESS_KEEPALIVES.to_owned(),
        };
        liveness_config.options(with_keepalives);
        let first_session = hold_liveness(&liveness_config, &connect.tls, instance).await?;
        let liveness = tokio::spawn(liveness_loop(
            liveness_config,
            connect.tls.clone(),
            instance,
            first_session,
        ));
        let role = format!("-c role={TENANT_ROLE}");
        let all = match config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {role}"),
            _ => role,
        };
        config.options(all);
        let manager = Manager::from_config(
            config.clone(),
            connect.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(options.lock_timeout + options.statement_timeout))
            .build()
            .map_err(StoreError::backend)?;
        let head = {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(HEAD).await?;
            let rows = in_scope(&client, Scope::Platform, client.query(&stmt, &[])).await?;
            head_of(&rows)
        };
        let (head_tx, head_rx) = watch::channel(head);
        let queue_capacity = options.append_queue.max(1);
        let (tx, rx) = mpsc::channel(queue_capacity);
        let state = Arc::new(WriterState::default());
        let writer = tokio::spawn(supervise(
            pool.clone(),
            rx,
            head_tx.clone(),
            state.clone(),
            options.write_timeout,
        ));
        let listener = tokio::spawn(listen_loop(config, connect.tls, head_tx));
        Ok(Self {
            pool,
            queue: std::sync::Mutex::new(Some(tx)),
            tasks: std::sync::Mutex::new(vec![writer, listener, liveness]),
            head: head_rx,
            state,
            queue_capacity,
            instance,
        })
    }

    pub(crate) fn instance(&self) -> Uuid {
        self.instance
    }

    pub(crate) async fn append(&self, request: AppendRequest) -> Result<Appended> {
        let (tx, rx) = oneshot::channel();
        {
            let queue = self.queue.lock().expect("queue lock");
            let queue = queue.as_ref().ok_or(StoreError::Closed)?;
            queue.try_send((request, tx)).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Overloaded {
                    queued: self.queue_capacity,
                    retry_after: OVERLOADED_RETRY_AFTER,
                },
                mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
            })?;
        }
        // The writer answers every append it takes, unless it dies holding it: then the
        // group may or may not have committed.
        rx.await.map_err(|_| {
            StoreError::OutcomeUnknown("the writer stopped while it held this append".into())
        })?
    }

    pub(crate) fn health(&self) -> Health {
        let (queued_appends, queue_capacity, open) = match &*self.queue.lock().expect("queue lock")
        {
            Some(q) => (q.max_capacity() - q.capacity(), q.max_capacity(), true),
            None => (0, self.queue_capacity, false),
        };
        let supervisor_alive = self
            .tasks
            .lock()
            .expect("tasks lock")
            .first()
            .is_some_and(|t| !t.is_finished());
        Health {
            writer_running: open && supervisor_alive && !self.state.stopped.load(Ordering::SeqCst),
            writer_restarts: self.state.restarts.load(Ordering::SeqCst),
            queued_appends,
            queue_capacity,
        }
    }

    pub(crate) fn writer_state(&self) -> &WriterState {
        &self.state
    }

    pub(crate) fn head_watch(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    pub(crate) async fn read_all(
        &self,
        from: u64,
        limit: usize,
        tenant: Option<TenantId>,
    ) -> Result<Vec<Envelope>> {
        let client = self.pool.get().await?;
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match tenant {
            // The projections' reader: every tenant's events, through the platform role.
            None => {
                let stmt = client
                    .prepare_cached(&format!(
                        "{SELECT} WHERE global_position >= $1 ORDER BY global_position LIMIT $2"
                    ))
                    .await?;
                in_scope(
                    &client,
                    Scope::Platform,
                    client.query(&stmt, &[&from, &limit]),
                )
                .await?
            }
            Some(t) => {
                let stmt = client
                    .prepare_cached(&format!(
                        "{SELECT} WHERE tenant_id = $1 AND global_position >= $2 \
                         ORDER BY global_position LIMIT $3"
                    ))
                    .await?;
                in_scope(
                    &client,
                    Scope::Tenant(t),
                    client.query(&stmt, &[t.as_uuid(), &from, &limit]),
                )
                .await?
            }
        };
        rows.iter().map(envelope).collect()
    }

    pub(crate) async fn read_stream(
        &self,
        tenant: TenantId,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "{SELECT} WHERE tenant_id = $1 AND stream_id = $2 AND stream_version >= $3 \
                 ORDER BY stream_version LIMIT $4"
            ))
            .await?;
        let from = i64::try_from(from_version).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = in_scope(
            &client,
            Scope::Tenant(tenant),
            client.query(&stmt, &[tenant.as_uuid(), &stream, &from, &limit]),
        )
        .await?;
        rows.iter().map(envelope).collect()
    }

    pub(crate) async fn stream_version(&self, tenant: TenantId, stream: &str) -> Result<u64> {
        let client = self.pool.get().await?;
        // Prepared once per connection: the check a refusal makes before it answers is then one
        // round trip on the primary key (the tenant scope rides in the same pipeline).
        let stmt = client
            .prepare_cached("SELECT version FROM streams WHERE tenant_id = $1 AND stream_id = $2")
            .await?;
        let rows = in_scope(
            &client,
            Scope::Tenant(tenant),
            client.query(&stmt, &[tenant.as_uuid(), &stream]),
        )
        .await?;
        Ok(head_of(&rows))
    }

    pub(crate) async fn head(&self) -> Result<u64> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(HEAD).await?;
        let rows = in_scope(&client, Scope::Platform, client.query(&stmt, &[])).await?;
        Ok(head_of(&rows))
    }

    /// Subject keys (ADR 032), each operation one transaction bound to its tenant.
    pub(crate) async fn key_op(
        &self,
        op: crate::sealing::KeyOp,
    ) -> Result<crate::sealing::KeyAnswer> {
        use crate::sealing::{KeyAnswer, KeyOp};
        let mut client = self.pool.get().await?;
        match op {
            KeyOp::Get { tenant, ids } => {
                let tx = tenant_scope(&mut client, tenant).await?;
                let rows = tx
                    .query(
                        "SELECT key_id, secret FROM subject_keys \
                         WHERE tenant_id = $1 AND key_id = ANY($2)",
                        &[tenant.as_uuid(), &ids],
                    )
                    .await?;
                tx.commit().await?;
                Ok(KeyAnswer::Keys(
                    rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
                ))
            }
            KeyOp::OfSubject { tenant, subject } => {
                let tx = tenant_scope(&mut client, tenant).await?;
                let rows = tx
                    .query(
                        "SELECT key_id FROM subject_keys WHERE tenant_id = $1 AND subject = $2 \
                         AND secret IS NOT NULL ORDER BY key_id",
                        &[tenant.as_uuid(), &subject],
                    )
                    .await?;
                tx.commit().await?;
                Ok(KeyAnswer::Ids(rows.iter().map(|r| r.get(0)).collect()))
            }
            KeyOp::GetOrCreate { tenant, keys } => {
                let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
                let subjects: Vec<&str> = keys.iter().map(|k| k.subject.as_str()).collect();
                let days: Vec<&str> = keys.iter().map(|k| k.day.as_str()).collect();
                let types: Vec<&str> = keys.iter().map(|k| k.event_type.as_str()).collect();
                let secrets: Vec<&[u8]> = keys.iter().map(|k| k.secret.as_slice()).collect();
                let tx = tenant_scope(&mut client, tenant).await?;
                tx.execute(
                    "INSERT INTO subject_keys (tenant_id, key_id, subject, day, event_type, secret) \
                     SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::bytea[]) ON CONFLICT (tenant_id, key_id) DO NOTHING",
                    &[tenant.as_uuid(), &ids, &subjects, &days, &types, &secrets],
                )
                .await?;
                let rows = tx
                    .query(
                        "SELECT key_id, secret FROM subject_keys \
                         WHERE tenant_id = $1 AND key_id = ANY($2)",
                        &[tenant.as_uuid(), &ids],
                    )
                    .await?;
                tx.commit().await?;
                Ok(KeyAnswer::Keys(
                    rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
                ))
            }
            KeyOp::DropSnapshots { tenant, stream } => {
                let tx = tenant_scope(&mut client, tenant).await?;
                let n = tx
                    .execute(
                        "DELETE FROM snapshots WHERE tenant_id = $1 AND stream_id = $2",
                        &[tenant.as_uuid(), &stream],
                    )
                    .await?;
                tx.commit().await?;
                Ok(KeyAnswer::Count(n))
            }
            KeyOp::Erase { tenant, ids } => {
                let tx = tenant_scope(&mut client, tenant).await?;
                let n = tx
                    .execute(
                        "UPDATE subject_keys SET secret = NULL, erased_at = now() \
                         WHERE tenant_id = $1 AND key_id = ANY($2) AND secret IS NOT NULL",
                        &[tenant.as_uuid(), &ids],
                    )
                    .await?;
                tx.commit().await?;
                Ok(KeyAnswer::Count(n))
            }
        }
    }

    /// Events by position, whoever's they are: the projections' look-ups (platform role).
    pub(crate) async fn read_positions(&self, positions: Vec<u64>) -> Result<Vec<Envelope>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "{SELECT} WHERE global_position = ANY($1) ORDER BY global_position"
            ))
            .await?;
        let positions: Vec<i64> = positions.into_iter().map(|p| p as i64).collect();
        let rows = in_scope(&client, Scope::Platform, client.query(&stmt, &[&positions])).await?;
        rows.iter().map(envelope).collect()
    }

    pub(crate) async fn idempotency(&self, op: idempotency::Op) -> Result<idempotency::OpResult> {
        use idempotency::{Op, OpResult};
        let now = crate::envelope::to_micros(crate::envelope::now_micros());
        let mut client = self.pool.get().await?;
        match op {
            Op::Begin {
                tenant,
                key,
                request_hash,
                owner,
                instance,
                seed,
            } => {
                let tx = tenant_scope(&mut client, tenant).await?;
                // Lock the key (or its absence) for the decision, across instances.
                tx.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1::text || $2, 0))",
                    &[&tenant.as_uuid().to_string(), &key],
                )
                .await?;
                let row = tx
                    .query_opt(
                        "SELECT request_hash, completed, created_at, status, content_type, body, \
                         instance FROM idempotency WHERE tenant_id = $1 AND key = $2",
                        &[tenant.as_uuid(), &key],
                    )
                    .await?
                    .map(|r| {
                        let completed: bool = r.get(1);
                        idempotency::Row {
                            request_hash: r.get(0),
                            completed,
                            created_at_micros: r.get(2),
                            response: completed.then(|| idempotency::StoredResponse {
                                status: r.get::<_, i32>(3) as u16,
                                content_type: r.get(4),
                                body: r.get(5),
                            }),
                            instance: r.get(6),
                        }
                    });
                // The owner is alive while its session holds the exclusive liveness lock; a
                // shared one is granted only when nobody does (released with this transaction).
                let alive = match row
                    .as_ref()
                    .and_then(|r| idempotency::owner_to_ask(r, &request_hash, now, instance))
                {
                    Some(other) => {
                        let (a, b) = liveness_key(other);
                        let free: bool = tx
                            .query_one("SELECT pg_try_advisory_xact_lock_shared($1, $2)", &[&a, &b])
                            .await?
                            .get(0);
                        !free
                    }
                    None => true,
                };
                let found = idempotency::decide(row, &request_hash, now, instance, |_| alive);
                if found.is_none() {
                    tx.execute(
                        "INSERT INTO idempotency (tenant_id, key, request_hash, completed, created_at, \
                         owner, instance) VALUES ($1, $2, $3, false, $4, $5, $6) \
                         ON CONFLICT (tenant_id, key) DO \
                         UPDATE SET request_hash = excluded.request_hash, completed = false, \
                         created_at = excluded.created_at, status = NULL, content_type = NULL, \
                         body = NULL, owner = excluded.owner, instance = excluded.instance",
                        &[tenant.as_uuid(), &key, &request_hash, &now, &owner, &instance],
                    )
                    .await?;
                }
                // An earlier attempt of this request (taken over, or abandoned after an answer
                // worth retrying) may have written its events (docs/adr/035).
                let applied = match seed.filter(|_| found.is_none()) {
                    Some(seed) => tx
                        .query_one(
                            "SELECT EXISTS (SELECT 1 FROM idempotency_applied \
                             WHERE tenant_id = $1 AND seed = $2 AND applied_at >= $3)",
                            &[tenant.as_uuid(), &seed, &idempotency::retained_since(now)],
                        )
                        .await?
                        .get(0),
                    None => false,
                };
                tx.commit().await?;
                Ok(OpResult::Begin(found.unwrap_or(if applied {
                    idempotency::Begin::Applied
                } else {
                    idempotency::Begin::Started
                })))
            }
            Op::Complete {
                tenant,
                key,
                owner,
                response,
            } => {
                let tx = tenant_scope(&mut client, tenant).await?;
                let n = tx
                    .execute(
                        "UPDATE idempotency SET completed = true, status = $3, content_type = $4, \
                         body = $5 WHERE tenant_id = $1 AND key = $2 AND owner = $6 \
                         AND NOT completed",
                        &[
                            tenant.as_uuid(),
                            &key,
                            &i32::from(response.status),
                            &response.content_type,
                            &response.body,
                            &owner,
                        ],
                    )
                    .await?;
                tx.commit().await?;
                Ok(OpResult::Owned(n == 1))
            }
            Op::Abandon { tenant, key, owner } => {
                let tx = tenant_scope(&mut client, tenant).await?;
                let n = tx
                    .execute(
                        "DELETE FROM idempotency WHERE tenant_id = $1 AND key = $2 AND owner = $3 \
                         AND NOT completed",
                        &[tenant.as_uuid(), &key, &owner],
                    )
                    .await?;
                tx.commit().await?;
                Ok(OpResult::Owned(n == 1))
            }
            Op::Purge { before_micros } => {
                // Every tenant's expired records, by age alone (platform role).
                let tx = platform_scope(&mut client).await?;
                let n = tx
                    .execute(
                        "DELETE FROM idempotency WHERE created_at < $1",
                        &[&before_micros],
                    )
                    .await?;
                tx.execute(
                    "DELETE FROM idempotency_applied WHERE applied_at < $1",
                    &[&before_micros],
                )
                .await?;
                tx.commit().await?;
                Ok(OpResult::Purged(n))
            }
        }
    }

    pub(crate) async fn save_snapshot(&self, s: Snapshot) -> Result<()> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO snapshots (tenant_id, stream_id, kind, version, state) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, stream_id, kind) \
                 DO UPDATE SET version = excluded.version, state = excluded.state \
                 WHERE excluded.version >= snapshots.version",
            )
            .await?;
        let version = s.version as i64;
        in_scope(
            &client,
            Scope::Tenant(s.tenant_id),
            client.execute(
                &stmt,
                &[
                    s.tenant_id.as_uuid(),
                    &s.stream_id,
                    &s.kind,
                    &version,
                    &s.state,
                ],
            ),
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn save_projection(&self, p: crate::ProjectionState) -> Result<()> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO projection_state (name, position, state, saved_at) \
                 VALUES ($1, $2, $3, now()) ON CONFLICT (name) DO UPDATE SET \
                 position = excluded.position, state = excluded.state, saved_at = now()",
            )
            .await?;
        let position = p.position as i64;
        in_scope(
            &client,
            Scope::Platform,
            client.execute(&stmt, &[&p.name, &position, &p.state]),
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn load_projection(
        &self,
        name: &str,
    ) -> Result<Option<crate::ProjectionState>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT position, state FROM projection_state WHERE name = $1")
            .await?;
        let rows = in_scope(&client, Scope::Platform, client.query(&stmt, &[&name])).await?;
        Ok(rows.first().map(|r| crate::ProjectionState {
            name: name.to_owned(),
            position: r.get::<_, i64>(0) as u64,
            state: r.get(1),
        }))
    }

    pub(crate) async fn put_rows_of(
        &self,
        writes: Vec<(String, Vec<crate::ProjectionRow>)>,
    ) -> Result<()> {
        let mut client = self.pool.get().await?;
        // Columns: projection, tenant, key (and value).
        type Columns<'a> = (Vec<&'a str>, Vec<Uuid>, Vec<&'a [u8]>, Vec<&'a [u8]>);
        let (mut put, mut insert): (Columns<'_>, Columns<'_>) = Default::default();
        let mut gone: (Vec<&str>, Vec<Uuid>, Vec<&[u8]>) = Default::default();
        for (projection, r) in writes
            .iter()
            .flat_map(|(p, rows)| rows.iter().map(move |r| (p.as_str(), r)))
        {
            let (tenant, key) = (*r.tenant.as_uuid(), r.key.as_slice());
            match &r.write {
                crate::RowWrite::Put(v) => {
                    put.0.push(projection);
                    put.1.push(tenant);
                    put.2.push(key);
                    put.3.push(v.as_slice());
                }
                crate::RowWrite::Insert(v) => {
                    insert.0.push(projection);
                    insert.1.push(tenant);
                    insert.2.push(key);
                    insert.3.push(v.as_slice());
                }
                crate::RowWrite::Delete => {
                    gone.0.push(projection);
                    gone.1.push(tenant);
                    gone.2.push(key);
                }
            }
        }
        let tx = platform_scope(&mut client).await?;
        for (columns, conflict) in [
            (&put, "DO UPDATE SET value = excluded.value"),
            (&insert, "DO NOTHING"),
        ] {
            if columns.0.is_empty() {
                continue;
            }
            let stmt = tx
                .prepare_cached(&format!(
                    "INSERT INTO projection_rows (projection, tenant_id, key, value) \
                     SELECT * FROM unnest($1::text[], $2::uuid[], $3::bytea[], $4::bytea[]) \
                     ON CONFLICT (projection, tenant_id, key) {conflict}"
                ))
                .await?;
            tx.execute(&stmt, &[&columns.0, &columns.1, &columns.2, &columns.3])
                .await?;
        }
        if !gone.0.is_empty() {
            let stmt = tx
                .prepare_cached(
                    "DELETE FROM projection_rows r \
                     USING unnest($1::text[], $2::uuid[], $3::bytea[]) AS g (projection, tenant_id, key) \
                     WHERE r.projection = g.projection AND r.tenant_id = g.tenant_id \
                     AND r.key = g.key",
                )
                .await?;
            tx.execute(&stmt, &[&gone.0, &gone.1, &gone.2]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn projection_rows(
        &self,
        projection: &str,
        tenant: TenantId,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT key, value FROM projection_rows \
                 WHERE projection = $1 AND tenant_id = $2 AND key BETWEEN $3 AND $4 \
                 ORDER BY key LIMIT $5",
            )
            .await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = in_scope(
            &client,
            Scope::Tenant(tenant),
            client.query(&stmt, &[&projection, tenant.as_uuid(), &from, &to, &limit]),
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
            .collect())
    }

    pub(crate) async fn projection_rows_at(
        &self,
        projection: &str,
        keys: Vec<(TenantId, Vec<u8>)>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT k.i, r.value FROM unnest($2::uuid[], $3::bytea[]) \
                 WITH ORDINALITY AS k (tenant_id, key, i) \
                 JOIN projection_rows r ON r.projection = $1 \
                 AND r.tenant_id = k.tenant_id AND r.key = k.key",
            )
            .await?;
        let tenants: Vec<Uuid> = keys.iter().map(|(t, _)| *t.as_uuid()).collect();
        let bytes: Vec<&[u8]> = keys.iter().map(|(_, k)| k.as_slice()).collect();
        let first = keys[0].0;
        let scope = if keys.iter().all(|(t, _)| *t == first) {
            Scope::Tenant(first)
        } else {
            Scope::Platform
        };
        let rows = in_scope(
            &client,
            scope,
            client.query(&stmt, &[&projection, &tenants, &bytes]),
        )
        .await?;
        let mut out = vec![None; keys.len()];
        for r in rows {
            let i = r.get::<_, i64>(0) as usize;
            if let Some(slot) = out.get_mut(i.wrapping_sub(1)) {
                *slot = Some(r.get::<_, Vec<u8>>(1));
            }
        }
        Ok(out)
    }

    pub(crate) async fn delete_projection(&self, name: &str) -> Result<()> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("DELETE FROM projection_state WHERE name = $1")
            .await?;
        in_scope(&client, Scope::Platform, client.execute(&stmt, &[&name])).await?;
        Ok(())
    }

    pub(crate) async fn load_snapshot(
        &self,
        tenant: TenantId,
        stream: &str,
        kind: &str,
    ) -> Result<Option<Snapshot>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT version, state FROM snapshots \
                 WHERE tenant_id = $1 AND stream_id = $2 AND kind = $3",
            )
            .await?;
        let rows = in_scope(
            &client,
            Scope::Tenant(tenant),
            client.query(&stmt, &[tenant.as_uuid(), &stream, &kind]),
        )
        .await?;
        Ok(rows.first().map(|r| Snapshot {
            tenant_id: tenant,
            stream_id: stream.to_owned(),
            kind: kind.to_owned(),
            version: r.get::<_, i64>(0) as u64,
            state: r.get(1),
        }))
    }

    pub(crate) async fn close(&self) {
        drop(self.queue.lock().expect("queue lock").take());
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        let mut tasks = tasks.into_iter();
        if let Some(writer) = tasks.next() {
            let _ = writer.await;
        }
        for t in tasks {
            t.abort();
        }
        self.pool.close();
    }
}

impl Drop for Postgres {
    /// The writer ends when its queue closes; the listener must be told.
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter().skip(1) {
                t.abort();
            }
        }
    }
}

/// A transaction that acts as `tenantry_tenant` for one tenant: row-level security then lets it
/// see and write that tenant's rows only, whatever its SQL says.
async fn tenant_scope(
    client: &mut deadpool_postgres::Object,
    tenant: TenantId,
) -> Result<deadpool_postgres::Transaction<'_>> {
    let tx = client.transaction().await?;
    let role = tx.prepare_cached("SET LOCAL ROLE tenantry_tenant");
    let scope = tx.prepare_cached(BIND_TENANT);
    let (role, scope) = tokio::try_join!(role, scope)?;
    let tenant = tenant.to_string();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&tenant];
    tokio::try_join!(tx.execute(&role, &[]), tx.execute(&scope, &params))?;
    Ok(tx)
}

/// A transaction that acts as `tenantry_platform`: the platform's cross-tenant work.
async fn platform_scope(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>> {
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL ROLE tenantry_platform").await?;
    Ok(tx)
}

/// Run one statement (`work`, not yet polled, one request: a prepared statement) in a transaction that acts as `scope`, as one
/// pipeline and one round trip: BEGIN with SET LOCAL ROLE, the tenant binding, the statement,
/// COMMIT. A failed statement turns the COMMIT into a ROLLBACK, so no transaction stays open.
async fn in_scope<T>(
    client: &deadpool_postgres::Object,
    scope: Scope,
    work: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    let bind = client.prepare_cached(BIND_TENANT).await?;
    let (begin, tenant) = match scope {
        Scope::Tenant(t) => ("BEGIN; SET LOCAL ROLE tenantry_tenant", Some(t.to_string())),
        Scope::Platform => ("BEGIN; SET LOCAL ROLE tenantry_platform", None),
    };
    let bind_q = async {
        match &tenant {
            Some(t) => client.execute(&bind, &[t]).await.map(|_| ()),
            None => Ok(()),
        }
    };
    let (begun, bound, done, committed) = join4(
        client.batch_execute(begin),
        bind_q,
        work,
        client.batch_execute("COMMIT"),
    )
    .await;
    // The first error in pipeline order is the cause; those after it only echo it (25P02).
    begun?;
    bound?;
    let done = done?;
    committed?;
    Ok(done)
}

fn head_of(rows: &[Row]) -> u64 {
    rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64)
}

const SELECT: &str = "SELECT global_position, tenant_id, stream_id, stream_version, event_id, \
    event_type, schema_version, recorded_at, actor, correlation_id, causation_id, trace_id, payload, \
    coalesce(occurred_at, recorded_at) FROM events";

fn envelope(r: &Row) -> Result<Envelope> {
    Ok(Envelope {
        global_position: r.try_get::<_, i64>(0)? as u64,
        tenant_id: TenantId::from_uuid(r.try_get(1)?),
        stream_id: r.try_get(2)?,
        stream_version: r.try_get::<_, i64>(3)? as u64,
        event_id: r.try_get(4)?,
        event_type: r.try_get(5)?,
        schema_version: u16::try_from(r.try_get::<_, i32>(6)?).map_err(StoreError::backend)?,
        occurred_at: r.try_get(13)?,
        recorded_at: r.try_get(7)?,
        actor: r.try_get(8)?,
        correlation_id: r.try_get(9)?,
        causation_id: r.try_get(10)?,
        trace_id: r.try_get(11)?,
        payload: RawJson::from_stored(r.try_get(12)?),
    })
}

async fn migrate(config: &tokio_postgres::Config, tls: &MakeRustlsConnect) -> Result<()> {
    let (mut client, connection) = config.connect(tls.clone()).await?;
    let driver = tokio::spawn(connection);
    let migrated = migrate_on(&mut client).await;
    drop(client);
    let _ = driver.await;
    migrated
}

async fn migrate_on(client: &mut tokio_postgres::Client) -> Result<()> {
    let tx = client.transaction().await?;
    // Migrations may wait for another instance's, and may take long: no time limits here.
    tx.batch_execute("SET LOCAL lock_timeout = 0; SET LOCAL statement_timeout = 0")
        .await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    for (version, sql) in MIGRATIONS {
        let applied = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if !applied {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// What the writer remembers between groups: the head position and stream versions it last
/// committed. Another instance may have moved on since; the database catches every stale value
/// (the primary key on positions, the compare-and-swap on stream versions), and the group is
/// then planned again from fresh reads.
#[derive(Debug, Default)]
struct WriterCache {
    head: Option<u64>,
    streams: HashMap<(TenantId, String), u64>,
}

const MAX_CACHED_STREAMS: usize = 200_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Plan from the cache and let constraints catch staleness and duplicate ids.
    Optimistic,
    /// Read everything the group touches under the write lock, then plan.
    Careful,
}

/// A sign that the optimistic plan may be wrong (a stream moved under another instance); the
/// group is rolled back and planned again carefully.
#[derive(Debug)]
struct Replan;

/// Run the writer, and start it again when it dies (a panic is a bug, but one bug must not
/// stop every append of the process). The queue outlives each writer: appends that were
/// waiting are taken by the next one; the group the dead writer held answers
/// `OutcomeUnknown`. The supervisor ends when the queue is closed and drained.
async fn supervise(
    pool: Pool,
    rx: mpsc::Receiver<AppendReply>,
    head: watch::Sender<u64>,
    state: Arc<WriterState>,
    write_timeout: Duration,
) {
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    loop {
        let writer = tokio::spawn(writer_loop(
            pool.clone(),
            rx.clone(),
            head.clone(),
            state.clone(),
            write_timeout,
        ));
        match writer.await {
            Ok(()) => break,
            Err(e) if e.is_panic() => {
                let restarts = state.restarts.fetch_add(1, Ordering::SeqCst) + 1;
                tracing::error!(restarts, "the PostgreSQL writer died; starting it again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => break,
        }
    }
    state.stopped.store(true, Ordering::SeqCst);
}

/// The batching writer: take everything queued, commit it in one transaction, answer each.
async fn writer_loop(
    pool: Pool,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<AppendReply>>>,
    head: watch::Sender<u64>,
    state: Arc<WriterState>,
    write_timeout: Duration,
) {
    let mut rx = rx.lock().await;
    let mut batch = Vec::new();
    let mut cache = WriterCache::default();
    while rx.recv_many(&mut batch, MAX_GROUP).await > 0 {
        state.check_injected_fault();
        let requests: Vec<&AppendRequest> = batch.iter().map(|(r, _)| r).collect();
        match write_group(&pool, &mut cache, &requests, write_timeout).await {
            Ok(results) => {
                let new_head = cache.head.unwrap_or(0);
                head.send_if_modified(|h| {
                    let moved = new_head > *h;
                    *h = (*h).max(new_head);
                    moved
                });
                for ((_, reply), result) in batch.drain(..).zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                match &e {
                    StoreError::OutcomeUnknown(_) => {
                        tracing::error!(error = %e, "group commit lost its connection during COMMIT; its outcome is unknown");
                    }
                    _ => {
                        tracing::error!(error = %e, "group commit failed; nothing of it was written")
                    }
                }
                cache = WriterCache::default();
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One group, optimistically from the cache first; planned again carefully (in a new
/// transaction) only when the database caught a stale cache. A time limit or an unknown
/// outcome ends the group at once: trying again would only wait again, or could write twice.
async fn write_group(
    pool: &Pool,
    cache: &mut WriterCache,
    requests: &[&AppendRequest],
    write_timeout: Duration,
) -> Result<Vec<Result<Appended>>> {
    let careful = match commit_in_time(pool, cache, requests, Mode::Optimistic, write_timeout).await
    {
        Ok(Ok(results)) => return Ok(results),
        Err(e @ (StoreError::OutcomeUnknown(_) | StoreError::Timeout(_))) => return Err(e),
        Ok(Err(Replan)) => "a stream moved under another writer".to_owned(),
        Err(e) => e.to_string(),
    };
    tracing::debug!(reason = %careful, "optimistic group failed; planning it again carefully");
    *cache = WriterCache::default();
    commit_in_time(pool, cache, requests, Mode::Careful, write_timeout)
        .await?
        .map_err(|Replan| StoreError::Backend("the careful plan was stale".into()))
}

/// `commit_group` within `write_timeout`, the bound for what PostgreSQL's own time limits do
/// not see (a half-open connection, a stalled network). A connection that ran out of time is
/// closed, never returned to the pool.
async fn commit_in_time(
    pool: &Pool,
    cache: &mut WriterCache,
    requests: &[&AppendRequest],
    mode: Mode,
    write_timeout: Duration,
) -> Result<std::result::Result<Vec<Result<Appended>>, Replan>> {
    let commit_sent = AtomicBool::new(false);
    let mut held: Option<deadpool_postgres::Object> = None;
    let outcome = tokio::time::timeout(write_timeout, async {
        let client = held.insert(pool.get().await?);
        commit_group(client, cache, requests, mode, &commit_sent).await
    })
    .await;
    match outcome {
        Ok(result) => result,
        Err(_) => {
            if let Some(client) = held.take() {
                drop(deadpool_postgres::Object::take(client));
            }
            Err(if commit_sent.load(Ordering::SeqCst) {
                StoreError::OutcomeUnknown(format!("no answer to COMMIT within {write_timeout:?}"))
            } else {
                StoreError::Timeout(format!(
                    "the group did not reach COMMIT within {write_timeout:?}; nothing was written"
                ))
            })
        }
    }
}

/// What a group reads before it is planned.
#[derive(Debug, Default)]
struct Loaded {
    head: Option<u64>,
    /// Streams asked for that have no row (version 0).
    unknown: HashSet<(TenantId, String)>,
    /// Stream versions read.
    streams: Vec<((TenantId, String), u64)>,
    /// Event ids of the group that are already stored.
    ids: Vec<(TenantId, Uuid, StoredId)>,
}

/// The statements of a group commit, prepared (and cached per connection) before a group
/// starts: a pipeline must never wait for a prepare between two of its requests, or a later
/// request could overtake an earlier one.
struct Statements {
    lock: Statement,
    head: Statement,
    streams_by_key: Statement,
    events_by_id: Statement,
    update_streams: Statement,
    insert_streams: Statement,
    insert_events: Statement,
    notify: Statement,
    mark_applied: Statement,
}

async fn statements(
    client: &deadpool_postgres::Object,
) -> std::result::Result<Statements, tokio_postgres::Error> {
    let (lock, head, streams_by_key, events_by_id, update_streams, insert_streams) = tokio::try_join!(
        client.prepare_cached("SELECT pg_advisory_xact_lock($1)"),
        client.prepare_cached(HEAD),
        client.prepare_cached(STREAMS_BY_KEY),
        client.prepare_cached(EVENTS_BY_ID),
        client.prepare_cached(UPDATE_STREAMS),
        client.prepare_cached(INSERT_STREAMS),
    )?;
    let (insert_events, notify, mark_applied) = tokio::try_join!(
        client.prepare_cached(INSERT_EVENTS),
        client.prepare_cached("SELECT pg_notify($1, $2)"),
        client.prepare_cached(MARK_APPLIED),
    )?;
    Ok(Statements {
        lock,
        head,
        streams_by_key,
        events_by_id,
        update_streams,
        insert_streams,
        insert_events,
        notify,
        mark_applied,
    })
}

/// Read what the plan needs and the cache does not have; `careful` reads everything (head,
/// every stream, every event id). Sent in one pipeline after the lock, so the server runs the
/// reads once the lock is granted: they see every commit before ours.
async fn load(
    client: &deadpool_postgres::Object,
    s: &Statements,
    cache: &WriterCache,
    requests: &[&AppendRequest],
    careful: bool,
) -> std::result::Result<Loaded, tokio_postgres::Error> {
    let mut unknown = HashSet::new();
    let (mut st_tenants, mut st_ids) = (Vec::new(), Vec::new());
    let (mut id_tenants, mut id_ids) = (Vec::new(), Vec::new());
    for r in requests {
        let key = (r.tenant_id, r.stream_id.clone());
        let cached = !careful && cache.streams.contains_key(&key);
        if !cached && !unknown.contains(&key) {
            st_tenants.push(*r.tenant_id.as_uuid());
            st_ids.push(r.stream_id.as_str());
            unknown.insert(key);
        }
        if careful || r.replay_only() {
            for e in &r.events {
                id_tenants.push(*r.tenant_id.as_uuid());
                id_ids.push(e.event_id);
            }
        }
    }
    let need_head = careful || cache.head.is_none();
    let head_q = async {
        if need_head {
            let row = client.query_one(&s.head, &[]).await?;
            Ok::<_, tokio_postgres::Error>(Some(row.get::<_, i64>(0) as u64))
        } else {
            Ok(None)
        }
    };
    let streams_q = async {
        if st_tenants.is_empty() {
            return Ok(Vec::new());
        }
        client
            .query(&s.streams_by_key, &[&st_tenants, &st_ids])
            .await
    };
    let ids_q = async {
        if id_tenants.is_empty() {
            return Ok(Vec::new());
        }
        client.query(&s.events_by_id, &[&id_tenants, &id_ids]).await
    };
    let (head, stream_rows, id_rows) = join3(head_q, streams_q, ids_q).await;
    let (head, stream_rows, id_rows) = (head?, stream_rows?, id_rows?);
    let mut loaded = Loaded {
        head,
        ..Loaded::default()
    };
    for r in &stream_rows {
        let key = (TenantId::from_uuid(r.get(0)), r.get::<_, String>(1));
        unknown.remove(&key);
        loaded.streams.push((key, r.get::<_, i64>(2) as u64));
    }
    loaded.unknown = unknown;
    for r in &id_rows {
        loaded
            .ids
            .push((TenantId::from_uuid(r.get(0)), r.get(1), stored_id(r)));
    }
    Ok(loaded)
}

/// Decide every append of the group from what was loaded, the cache filling the rest. Also
/// tells whether any append met a version conflict.
fn plan_group(
    loaded: &Loaded,
    cache: &WriterCache,
    requests: &[&AppendRequest],
    now: OffsetDateTime,
) -> (Plan, Vec<Result<Appended>>, bool) {
    let mut plan = Plan::new(loaded.head.or(cache.head).unwrap_or(0));
    for (tenant, stream) in &loaded.unknown {
        plan.load_stream(*tenant, stream, 0);
    }
    for ((tenant, stream), version) in &loaded.streams {
        plan.load_stream(*tenant, stream, *version);
    }
    for r in requests {
        if !plan.has_stream(r.tenant_id, &r.stream_id) {
            let version = cache.streams[&(r.tenant_id, r.stream_id.clone())];
            plan.load_stream(r.tenant_id, &r.stream_id, version);
        }
    }
    for (tenant, id, stored) in &loaded.ids {
        plan.load_id(*tenant, *id, stored.clone());
    }
    let mut conflicted = false;
    let results = requests
        .iter()
        .map(|r| {
            let result = plan.decide(r, now);
            conflicted |= matches!(result, Err(StoreError::Conflict { .. }));
            result
        })
        .collect();
    (plan, results, conflicted)
}

/// Whether an error leaves a sent COMMIT's outcome open: the server did not say (the connection
/// broke: no SQLSTATE, or class 08), or ended the session (an operator, a shutdown, a crash:
/// 57P01–57P04). Any other error of the server aborted the transaction, and the COMMIT behind it
/// became a ROLLBACK; a cancelled statement (57014, `statement_timeout`) is one of those, since
/// PostgreSQL does not take a cancel inside COMMIT's critical section.
fn outcome_open(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("57P")
        }
    }
}

/// SQLSTATE of `tenantry_expect_streams`: a stream moved since it was cached.
const STREAM_MOVED: &str = "40001";

/// One group commit on `client`. Whatever it leaves open on an error is rolled back here (a
/// ROLLBACK after a COMMIT, or on a broken connection, is harmless).
async fn commit_group(
    client: &mut deadpool_postgres::Object,
    cache: &mut WriterCache,
    requests: &[&AppendRequest],
    mode: Mode,
    commit_sent: &AtomicBool,
) -> Result<std::result::Result<Vec<Result<Appended>>, Replan>> {
    let outcome = run_group(client, cache, requests, mode, commit_sent).await;
    if !matches!(outcome, Ok(Ok(_))) {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    outcome
}

/// The round trips of a group:
/// - **one** when the cache knows the head and every stream and the plan meets no conflict
///   (the steady state of a single instance): BEGIN, the write lock, the compare-and-swap, the
///   insert, NOTIFY and COMMIT go out as one pipeline;
/// - otherwise **two**: BEGIN, the lock and the reads as one pipeline, then the writes and COMMIT;
///   a conflict the cache did not foresee is re-decided from fresh reads in the same
///   transaction, never by rolling back the group (one more round trip);
/// - a group large enough for COPY sends COMMIT after the copy ends (one more).
async fn run_group(
    client: &mut deadpool_postgres::Object,
    cache: &mut WriterCache,
    requests: &[&AppendRequest],
    mode: Mode,
    commit_sent: &AtomicBool,
) -> Result<std::result::Result<Vec<Result<Appended>>, Replan>> {
    let now = crate::envelope::now_micros();
    let s = statements(client).await?;
    let mut read_everything = mode == Mode::Careful;
    // A replay-only append is decided from its ids as stored: never on the cache alone.
    if mode == Mode::Optimistic
        && cache.head.is_some()
        && requests.iter().all(|r| {
            !r.replay_only()
                && cache
                    .streams
                    .contains_key(&(r.tenant_id, r.stream_id.clone()))
        })
    {
        let (plan, results, conflicted) = plan_group(&Loaded::default(), cache, requests, now);
        if conflicted {
            // A stale cache, or a retry of an append that went through: look it all up.
            read_everything = true;
        } else if plan.rows().len() <= COPY_THRESHOLD {
            if let Err(Replan) = write_rows(client, &s, &plan, true, commit_sent).await? {
                return Ok(Err(Replan));
            }
            remember(cache, &Loaded::default(), &plan);
            return Ok(Ok(results));
        }
    }
    let fresh = WriterCache::default();
    let basis = if read_everything { &fresh } else { &*cache };
    let (begun, locked, loaded) = join3(
        client.batch_execute(WRITER_BEGIN),
        client.execute(&s.lock, &[&WRITE_LOCK]),
        load(client, &s, basis, requests, read_everything),
    )
    .await;
    // The first error in pipeline order is the cause; those after it only echo it (25P02).
    begun?;
    locked?;
    let loaded = loaded?;
    let (mut plan, mut results, conflicted) = plan_group(&loaded, basis, requests, now);
    let mut loaded = loaded;
    if conflicted && !read_everything {
        // The cache may be stale, or an append may be a retry of one that went through. The
        // lock is held and nothing is written yet: read everything afresh in this same
        // transaction and decide again. Real conflicts then fail their append alone.
        loaded = load(client, &s, &fresh, requests, true).await?;
        (plan, results, _) = plan_group(&loaded, &fresh, requests, now);
    }
    if plan.rows().is_empty() {
        // Nothing to write: every answer (replays, conflicts) was decided from committed rows
        // under the lock, and stays true whatever becomes of this read-only transaction.
        if let Err(e) = client.batch_execute("COMMIT").await {
            tracing::debug!(error = %e, "a group without writes failed to end; answered anyway");
        }
        cache.head = Some(plan.head());
        return Ok(Ok(results));
    }
    if let Err(Replan) = write_rows(client, &s, &plan, false, commit_sent).await? {
        return Ok(Err(Replan));
    }
    remember(cache, &loaded, &plan);
    Ok(Ok(results))
}

/// What a committed group teaches the cache.
fn remember(cache: &mut WriterCache, loaded: &Loaded, plan: &Plan) {
    cache.head = Some(plan.head());
    if cache.streams.len() > MAX_CACHED_STREAMS {
        cache.streams.clear();
    }
    cache.streams.extend(loaded.streams.iter().cloned());
    for key in &loaded.unknown {
        cache.streams.entry(key.clone()).or_insert(0);
    }
    for (tenant, stream, _, after) in plan.stream_updates() {
        cache.streams.insert((tenant, stream.to_owned()), after);
    }
}

/// Write the plan's rows and commit, as one pipeline: (BEGIN and the lock when `begin`), the
/// compare-and-swap on each stream's version (an error when a stream moved, so that the COMMIT
/// behind it turns into a ROLLBACK), new streams, the events (`INSERT … unnest` or binary COPY),
/// NOTIFY, COMMIT. After a COPY, COMMIT waits for the copy's end.
async fn write_rows(
    client: &deadpool_postgres::Object,
    s: &Statements,
    plan: &Plan,
    begin: bool,
    commit_sent: &AtomicBool,
) -> Result<std::result::Result<(), Replan>> {
    let (mut up_t, mut up_s, mut up_before, mut up_after) = (vec![], vec![], vec![], vec![]);
    let (mut new_t, mut new_s, mut new_v) = (vec![], vec![], vec![]);
    for (tenant, stream, before, after) in plan.stream_updates() {
        if before == 0 {
            new_t.push(*tenant.as_uuid());
            new_s.push(stream);
            new_v.push(after as i64);
        } else {
            up_t.push(*tenant.as_uuid());
            up_s.push(stream);
            up_before.push(before as i64);
            up_after.push(after as i64);
        }
    }
    let up_count = up_t.len() as i64;
    let rows = plan.rows();
    let copy = rows.len() > COPY_THRESHOLD;
    let positions: Vec<i64> = rows.iter().map(|e| e.global_position as i64).collect();
    let tenants: Vec<Uuid> = rows.iter().map(|e| *e.tenant_id.as_uuid()).collect();
    let streams: Vec<&str> = rows.iter().map(|e| e.stream_id.as_str()).collect();
    let versions: Vec<i64> = rows.iter().map(|e| e.stream_version as i64).collect();
    let ids: Vec<Uuid> = rows.iter().map(|e| e.event_id).collect();
    let types: Vec<&str> = rows.iter().map(|e| e.event_type.as_str()).collect();
    let schemas: Vec<i32> = rows.iter().map(|e| i32::from(e.schema_version)).collect();
    let recorded: Vec<OffsetDateTime> = rows.iter().map(|e| e.recorded_at).collect();
    let occurred: Vec<OffsetDateTime> = rows.iter().map(|e| e.occurred_at).collect();
    let actors: Vec<&str> = rows.iter().map(|e| e.actor.as_str()).collect();
    let correlations: Vec<Uuid> = rows.iter().map(|e| e.correlation_id).collect();
    let causations: Vec<Option<Uuid>> = rows.iter().map(|e| e.causation_id).collect();
    let traces: Vec<Option<&str>> = rows.iter().map(|e| e.trace_id.as_deref()).collect();
    let payloads: Vec<&str> = rows.iter().map(|e| e.payload.as_str()).collect();
    let notify = plan.head().to_string();
    let (seed_tenants, seeds): (Vec<Uuid>, Vec<Uuid>) = plan
        .applied_seeds()
        .iter()
        .map(|(t, s)| (*t.as_uuid(), *s))
        .unzip();
    let applied_at = crate::envelope::to_micros(crate::envelope::now_micros());

    // Each future sends its request when first polled; `join`, `join3` and `join4` poll in
    // argument order, so the server receives the requests in this order. All are awaited (an
    // error makes the server fail the rest at once), and the first error in order is the cause.
    let begin_q = async {
        if begin {
            client.batch_execute(WRITER_BEGIN).await?;
        }
        Ok(())
    };
    let lock_q = async {
        if begin {
            client.execute(&s.lock, &[&WRITE_LOCK]).await?;
        }
        Ok(())
    };
    let update_q = async {
        if up_t.is_empty() {
            return Ok(());
        }
        client
            .query_one(
                &s.update_streams,
                &[&up_t, &up_s, &up_before, &up_after, &up_count],
            )
            .await
            .map(|_| ())
    };
    let insert_streams_q = async {
        if new_t.is_empty() {
            return Ok(());
        }
        client
            .execute(&s.insert_streams, &[&new_t, &new_s, &new_v])
            .await
            .map(|_| ())
    };
    let insert_events_q = async {
        if copy {
            return copy_events(client, rows).await.map(|_| ());
        }
        client
            .execute(
                &s.insert_events,
                &[
                    &positions,
                    &tenants,
                    &streams,
                    &versions,
                    &ids,
                    &types,
                    &schemas,
                    &recorded,
                    &actors,
                    &correlations,
                    &causations,
                    &traces,
                    &payloads,
                    &occurred,
                ],
            )
            .await
            .map(|_| ())
    };
    let mark_q = async {
        if seeds.is_empty() {
            return Ok(());
        }
        client
            .execute(&s.mark_applied, &[&seed_tenants, &seeds, &applied_at])
            .await
            .map(|_| ())
    };
    let notify_q = async {
        client
            .execute(&s.notify, &[&CHANNEL, &notify])
            .await
            .map(|_| ())
    };
    let commit_q = async {
        if copy {
            return Ok(());
        }
        commit_sent.store(true, Ordering::SeqCst);
        client.batch_execute("COMMIT").await
    };
    let (
        (begun, locked, updated, inserted_streams),
        (inserted_events, marked, notified, committed),
    ) = join(
        join4(begin_q, lock_q, update_q, insert_streams_q),
        join4(insert_events_q, mark_q, notify_q, commit_q),
    )
    .await;
    let first_error = [
        begun,
        locked,
        updated,
        inserted_streams,
        inserted_events,
        marked,
        notified,
        committed,
    ]
    .into_iter()
    .find_map(|r| r.err());
    let written = match first_error {
        Some(e) => Err(e),
        None if copy => {
            commit_sent.store(true, Ordering::SeqCst);
            client.batch_execute("COMMIT").await
        }
        None => Ok(()),
    };
    match written {
        Ok(()) => Ok(Ok(())),
        Err(e) if commit_sent.load(Ordering::SeqCst) && outcome_open(&e) => {
            Err(StoreError::OutcomeUnknown(format!(
                "the connection failed while COMMIT was under way: {e}"
            )))
        }
        Err(e) if e.code().map(|c| c.code()) == Some(STREAM_MOVED) => {
            // Another instance moved a stream this writer had cached.
            Ok(Err(Replan))
        }
        Err(e) => Err(e.into()),
    }
}

/// A group commit's transaction acts as the writer's role: the one path that appends to the log
/// and moves stream versions for every tenant (docs/adr/017).
const WRITER_BEGIN: &str = "BEGIN; SET LOCAL ROLE tenantry_writer";

/// Above this many rows a group is written with binary COPY, which PostgreSQL ingests faster
/// than an INSERT of unnested arrays; below it the INSERT saves a round trip.
const COPY_THRESHOLD: usize = 256;

/// PostgreSQL refuses `COPY FROM` into a table whose row-level security applies (forced on
/// `events`, docs/adr/017), so a large group is copied into a temporary table of the writer's
/// session (emptied at commit; gone with a rollback that created it) and moved into the log
/// with one `INSERT … SELECT`, which the policies and triggers see like any insert.
const COPY_STAGING: &str = "SET LOCAL client_min_messages = warning; \
    CREATE TEMP TABLE IF NOT EXISTS tenantry_copy (global_position bigint, tenant_id uuid, \
    stream_id text, stream_version bigint, event_id uuid, event_type text, \
    schema_version integer, recorded_at timestamptz, actor text, correlation_id uuid, \
    causation_id uuid, trace_id text, payload text, occurred_at timestamptz) \
    ON COMMIT DELETE ROWS";
const COPY_COLUMNS: &str = "global_position, tenant_id, stream_id, stream_version, event_id, \
    event_type, schema_version, recorded_at, actor, correlation_id, causation_id, trace_id, \
    payload, occurred_at";

async fn copy_events(
    client: &deadpool_postgres::Object,
    rows: &[Envelope],
) -> std::result::Result<u64, tokio_postgres::Error> {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;
    let copy = format!("COPY tenantry_copy ({COPY_COLUMNS}) FROM STDIN BINARY");
    let (staged, sink) = join(
        client.batch_execute(COPY_STAGING),
        client.copy_in(copy.as_str()),
    )
    .await;
    staged?;
    let sink = sink?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT8,
            Type::UUID,
            Type::TEXT,
            Type::INT8,
            Type::UUID,
            Type::TEXT,
            Type::INT4,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::UUID,
            Type::UUID,
            Type::TEXT,
            Type::TEXT,
            Type::TIMESTAMPTZ,
        ],
    );
    futures_util::pin_mut!(writer);
    for e in rows {
        writer
            .as_mut()
            .write(&[
                &(e.global_position as i64),
                e.tenant_id.as_uuid(),
                &e.stream_id,
                &(e.stream_version as i64),
                &e.event_id,
                &e.event_type,
                &i32::from(e.schema_version),
                &e.recorded_at,
                &e.actor,
                &e.correlation_id,
                &e.causation_id,
                &e.trace_id,
                &e.payload.as_str(),
                &e.occurred_at,
            ])
            .await?;
    }
    let n = writer.finish().await?;
    client
        .batch_execute(&format!(
            "INSERT INTO events ({COPY_COLUMNS}) SELECT {COPY_COLUMNS} FROM tenantry_copy"
        ))
        .await?;
    Ok(n)
}

fn stored_id(r: &Row) -> StoredId {
    StoredId {
        global_position: r.get::<_, i64>(2) as u64,
        stream_id: r.get(3),
        stream_version: r.get::<_, i64>(4) as u64,
        event_type: r.get(5),
        schema_version: r.get::<_, i32>(6) as u16,
        payload: r.get(7),
    }
}

// The LIMIT 1 inside each LATERAL keeps PostgreSQL from flattening the look-up into a hash join
// over the whole table: each key is one index probe.
const STREAMS_BY_KEY: &str = "SELECT k.tenant_id, k.stream_id, s.version \
    FROM unnest($1::uuid[], $2::text[]) AS k (tenant_id, stream_id) \
    CROSS JOIN LATERAL (SELECT version FROM streams s \
        WHERE s.tenant_id = k.tenant_id AND s.stream_id = k.stream_id LIMIT 1) s";
const EVENTS_BY_ID: &str = "SELECT k.tenant_id, k.event_id, e.global_position, e.stream_id, \
    e.stream_version, e.event_type, e.schema_version, e.payload \
    FROM unnest($1::uuid[], $2::uuid[]) AS k (tenant_id, event_id) \
    CROSS JOIN LATERAL (SELECT * FROM events e \
        WHERE e.event_id = k.event_id AND e.tenant_id = k.tenant_id LIMIT 1) e";
/// The compare-and-swap: it fails (SQLSTATE 40001, from a function of migration 5) unless every
/// stream was at its expected version, so that a pipelined COMMIT behind it cannot commit a
/// stale plan.
const UPDATE_STREAMS: &str = "WITH moved AS (UPDATE streams s SET version = k.after \
    FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[]) \
         AS k (tenant_id, stream_id, before, after) \
    WHERE s.tenant_id = k.tenant_id AND s.stream_id = k.stream_id AND s.version = k.before \
    RETURNING 1) SELECT tenantry_expect_streams($5::bigint, count(*)) FROM moved";
const HEAD: &str = "SELECT coalesce(max(global_position), 0) FROM events";
/// Mark the idempotency seeds of a group's fresh writes applied (docs/adr/035).
const MARK_APPLIED: &str = "INSERT INTO idempotency_applied (tenant_id, seed, applied_at) \
    SELECT t, s, $3 FROM unnest($1::uuid[], $2::uuid[]) AS m (t, s) ON CONFLICT DO NOTHING";
const INSERT_STREAMS: &str = "INSERT INTO streams (tenant_id, stream_id, version) \
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[])";
const INSERT_EVENTS: &str = "INSERT INTO events (global_position, tenant_id, stream_id, \
    stream_version, event_id, event_type, schema_version, recorded_at, actor, correlation_id, \
    causation_id, trace_id, payload, occurred_at) SELECT * FROM unnest($1::bigint[], $2::uuid[], \
    $3::text[], $4::bigint[], $5::uuid[], $6::text[], $7::integer[], $8::timestamptz[], $9::text[], \
    $10::uuid[], $11::uuid[], $12::text[], $13::text[], $14::timestamptz[])";

/// Keep a LISTEN connection open and move the head watch forward on every notification.
/// Notifications only wake readers: readers always re-read the table, and also poll.
/// The advisory lock that says an instance is alive: two `int4` keys, a space apart from the
/// `bigint` locks (the write lock, migrations, idempotency keys), from the instance id's first
/// 64 bits.
fn liveness_key(instance: Uuid) -> (i32, i32) {
    let b = instance.as_bytes();
    (
        i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
    )
}

/// The session that holds an instance's liveness lock: the client (kept, or the session ends)
/// and the connection that must be driven.
type LivenessSession = (
    tokio_postgres::Client,
    std::pin::Pin<
        Box<
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
                    tokio_postgres::Socket,
                >>::Stream,
            >,
        >,
    >,
);

/// A session of its own that holds `instance`'s liveness lock (session-level: released when the
/// session ends, however it ends: the process killed, the store dropped or closed, the
/// connection cut or terminated by the server).
async fn hold_liveness(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    instance: Uuid,
) -> Result<LivenessSession> {
    let (client, connection) = config.connect(tls.clone()).await?;
    let mut connection = Box::pin(connection);
    let (a, b) = liveness_key(instance);
    // The connection is driven here only while the statement runs; the caller drives it after.
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&a, &b];
    let lock = client.execute("SELECT pg_advisory_lock($1, $2)", &params);
    match futures_util::future::select(Box::pin(lock), connection.as_mut()).await {
        futures_util::future::Either::Left((locked, _)) => {
            locked?;
        }
        futures_util::future::Either::Right((ended, _)) => {
            ended?;
            return Err(StoreError::Backend("the liveness session closed".into()));
        }
    }
    Ok((client, connection))
}

/// Keep this instance's liveness lock for the store's lifetime: while the session lives, wait;
/// when it ends (the server restarted, a network cut), take the lock again on a new one. Between
/// the two the instance looks dead and its keys in flight can be taken over, which is safe
/// (docs/adr/035). Aborting the task drops the session and releases the lock.
async fn liveness_loop(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    instance: Uuid,
    first: LivenessSession,
) {
    let mut session = Some(first);
    loop {
        if let Some((client, connection)) = session.take() {
            match connection.await {
                Err(e) => {
                    tracing::warn!(error = %e, "liveness session ended; taking the lock again")
                }
                Ok(()) => tracing::warn!("liveness session closed; taking the lock again"),
            }
            drop(client);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        match hold_liveness(&config, &tls, instance).await {
            Ok(s) => session = Some(s),
            Err(e) => tracing::warn!(error = %e, "liveness lock not taken; retrying"),
        }
    }
}

async fn listen_loop(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    head: watch::Sender<u64>,
) {
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(Ok(message)) = messages.next().await {
                        if let AsyncMessage::Notification(n) = message {
                            let _ = tx.send(n.payload().parse::<u64>().unwrap_or(0));
                        }
                    }
                });
                if client
                    .batch_execute(&format!("LISTEN {CHANNEL}"))
                    .await
                    .is_ok()
                {
                    while let Some(position) = rx.recv().await {
                        head.send_if_modified(|h| {
                            let moved = position > *h;
                            *h = (*h).max(position);
                            moved
                        });
                    }
                }
                driver.abort();
            }
            Err(e) => tracing::warn!(error = %e, "LISTEN connection failed; retrying"),
        }
        if head.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
