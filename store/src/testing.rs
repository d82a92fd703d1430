//! Test support: a fresh, empty store per test, embedded (a temp folder) or PostgreSQL (a new
//! database).
//!
//! `DATABASE_URL` (set by `scripts/test.sh`, which starts a throwaway cluster when none is given)
//! names a server the tests may create databases on.

use crate::{Location, Store, StoreOptions};
use std::str::FromStr;

/// A store made for one test, removed (embedded) or abandoned (PostgreSQL) after it.
#[derive(Debug)]
pub struct TestStore {
    pub location: Location,
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
}

impl TestStore {
    pub async fn embedded() -> Self {
        Self::embedded_with(&StoreOptions::default()).await
    }

    pub async fn postgres() -> Self {
        Self::postgres_with(&StoreOptions::default()).await
    }

    /// An embedded store with these limits (a small queue, short timeouts).
    pub async fn embedded_with(options: &StoreOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let location = Location::Embedded(dir.path().to_path_buf());
        let store = Store::open_with(&location, options)
            .await
            .expect("open embedded store");
        Self {
            location,
            store,
            _dir: Some(dir),
        }
    }

    /// A PostgreSQL store on a fresh database, with these limits.
    pub async fn postgres_with(options: &StoreOptions) -> Self {
        let location = Location::Postgres(fresh_postgres_url().await);
        let store = Store::open_with(&location, options)
            .await
            .expect("connect to PostgreSQL");
        Self {
            location,
            store,
            _dir: None,
        }
    }

    /// A second, independent handle on the same store (its own writer), as a second process or
    /// a second API instance would have.
    pub async fn another_handle(&self) -> Store {
        Store::open(&self.location)
            .await
            .expect("open another handle")
    }

    /// Close the store and open it again.
    pub async fn reopen(&mut self) {
        self.store.close().await;
        self.store = self.another_handle().await;
    }
}

/// Create an empty database and return its URL. Panics with a clear message when
/// `DATABASE_URL` is not set: the PostgreSQL half of the suite must run, never silently skip.
pub async fn fresh_postgres_url() -> String {
    let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: run the suite with scripts/test.sh, which starts PostgreSQL"
        )
    });
    let config = tokio_postgres::Config::from_str(&base).expect("DATABASE_URL is a valid URL");
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("DATABASE_URL is reachable");
    let driver = tokio::spawn(connection);
    let name = format!("tenantry_test_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("can create a test database");
    drop(client);
    let _ = driver.await;
    with_database(&base, &name)
}

/// The embedded store's database, opened beside the store for raw SQL.
fn embedded_db(dir: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join("events.db")).expect("open events.db");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

/// Run one statement on a connection of its own, as the URL's user: the rows it changed.
async fn postgres_execute(
    url: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> u64 {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(conn);
    let n = client.execute(sql, params).await.expect(sql);
    drop(client);
    let _ = driver.await;
    n
}

/// Make the idempotency records of `tenant` (only `key`'s when given) look begun `secs` seconds
/// earlier and, with `in_flight`, not completed: what a process that died mid-request leaves
/// behind. Raw SQL through the backend's own driver, for tests of takeovers and purges.
pub async fn rewind_idempotency(
    location: &Location,
    tenant: domain::TenantId,
    key: Option<&str>,
    secs: i64,
    in_flight: bool,
) {
    let shift = secs * 1_000_000;
    match location {
        Location::Embedded(dir) => {
            let conn = embedded_db(dir);
            conn.execute(
                "UPDATE idempotency SET created_at = created_at - ?1, \
                 completed = CASE WHEN ?3 THEN 0 ELSE completed END \
                 WHERE tenant_id = ?2 AND (?4 IS NULL OR key = ?4)",
                rusqlite::params![shift, tenant.as_uuid().as_bytes(), in_flight, key],
            )
            .expect("rewind idempotency records");
        }
        Location::Postgres(url) => {
            postgres_execute(
                url,
                "UPDATE idempotency SET created_at = created_at - $1, \
                 completed = CASE WHEN $3 THEN false ELSE completed END \
                 WHERE tenant_id = $2 AND ($4::text IS NULL OR key = $4)",
                &[&shift, tenant.as_uuid(), &in_flight, &key],
            )
            .await;
        }
    }
}

/// Make `key`'s idempotency record of `tenant` look begun by `instance` and not completed: what
/// an instance that died after its command committed and before it kept the answer leaves
/// behind (docs/adr/035). Raw SQL through the backend's own driver.
pub async fn orphan_idempotency(
    location: &Location,
    tenant: domain::TenantId,
    key: &str,
    instance: uuid::Uuid,
) {
    match location {
        Location::Embedded(dir) => {
            let conn = embedded_db(dir);
            let n = conn
                .execute(
                    "UPDATE idempotency SET completed = 0, instance = ?3 \
                     WHERE tenant_id = ?1 AND key = ?2",
                    rusqlite::params![tenant.as_uuid().as_bytes(), key, &instance.as_bytes()[..]],
                )
                .expect("orphan the idempotency record");
            assert_eq!(n, 1, "one record under {key}");
        }
        Location::Postgres(url) => {
            let n = postgres_execute(
                url,
                "UPDATE idempotency SET completed = false, instance = $3 \
                 WHERE tenant_id = $1 AND key = $2",
                &[tenant.as_uuid(), &key, &instance],
            )
            .await;
            assert_eq!(n, 1, "one record under {key}");
        }
    }
}

/// Delete `key`'s idempotency record of `tenant`: what an attempt leaves behind when it answered
/// something worth retrying (a 5xx after its append committed) and abandoned its key, while its
/// events, and the mark of its seed, stay (docs/adr/035). Raw SQL through the backend's driver.
pub async fn abandon_idempotency(location: &Location, tenant: domain::TenantId, key: &str) {
    match location {
        Location::Embedded(dir) => {
            let conn = embedded_db(dir);
            let n = conn
                .execute(
                    "DELETE FROM idempotency WHERE tenant_id = ?1 AND key = ?2",
                    rusqlite::params![tenant.as_uuid().as_bytes(), key],
                )
                .expect("abandon the idempotency record");
            assert_eq!(n, 1, "one record under {key}");
        }
        Location::Postgres(url) => {
            let n = postgres_execute(
                url,
                "DELETE FROM idempotency WHERE tenant_id = $1 AND key = $2",
                &[tenant.as_uuid(), &key],
            )
            .await;
            assert_eq!(n, 1, "one record under {key}");
        }
    }
}

/// `base` with its database name replaced by `name`.
pub fn with_database(base: &str, name: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base, None),
    };
    let authority_end = head
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| head[start..].find('/').map(|j| start + j))
        .unwrap_or(head.len());
    let mut url = format!("{}/{}", &head[..authority_end], name);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced_in_any_url_shape() {
        assert_eq!(
            with_database("postgres://u@h:5/postgres", "t"),
            "postgres://u@h:5/t"
        );
        assert_eq!(with_database("postgres://u@h:5", "t"), "postgres://u@h:5/t");
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "t"),
            "postgresql://u:p@h/t?sslmode=disable"
        );
    }
}
