//! The rows read models keep instead of memory (ADR 039), in a SQLite file of their own beside the
//! log (`projections.db`): written by the projections runtime on a connection of its own, so they
//! never take the log's write lock from a group commit, and read on reader connections.
//!
//! Rows are derived from the log and are written with `synchronous=NORMAL` (a commit does not
//! wait for the disk), by the projections runtime's writer task, off the path of the reader
//! (SQLite's automatic checkpoints run inside those commits). A checkpoint of a projection must not cover rows that a power cut could take back, so
//! [`Rows::sync`] — one small commit with `synchronous=FULL`, which syncs the whole WAL and so
//! every row committed before it — runs before every projection state is saved. A data directory whose `projections.db` is missing (deleted,
//! or not restored from a backup) while the log holds projection states has those states
//! forgotten at open: every projection replays from position 1 rather than trust rows it lacks.

use super::ReaderPool;
use crate::error::{Result, StoreError};
use crate::{ProjectionRow, RowWrite};
use domain::TenantId;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE projection_rows (
        projection TEXT NOT NULL,
        tenant_id BLOB NOT NULL,
        key BLOB NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (projection, tenant_id, key)
    ) WITHOUT ROWID;
    CREATE TABLE synced (id INTEGER PRIMARY KEY, at INTEGER NOT NULL);",
)];

#[derive(Debug)]
pub(super) struct Rows {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<ReaderPool>,
}

impl Rows {
    /// Open (creating if needed) `projections.db` in `dir`. The answer's flag is true when the
    /// file was created now.
    pub(super) fn open(dir: &Path) -> Result<(Self, bool)> {
        let path = dir.join("projections.db");
        let created = !path.exists();
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(30))?;
        super::stable_plans(&conn)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -4096)?;
        super::migrate(&mut conn, MIGRATIONS)?;
        Ok((
            Self {
                writer: Arc::new(Mutex::new(conn)),
                readers: Arc::new(ReaderPool::new(path)),
            },
            created,
        ))
    }

    pub(super) async fn put(&self, writes: Vec<(String, Vec<ProjectionRow>)>) -> Result<()> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO projection_rows (projection, tenant_id, key, value) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (projection, tenant_id, key) \
                     DO UPDATE SET value = excluded.value",
                )?;
                let mut insert_new = tx.prepare_cached(
                    "INSERT INTO projection_rows (projection, tenant_id, key, value) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (projection, tenant_id, key) DO NOTHING",
                )?;
                let mut delete = tx.prepare_cached(
                    "DELETE FROM projection_rows \
                     WHERE projection = ?1 AND tenant_id = ?2 AND key = ?3",
                )?;
                for (projection, r) in writes
                    .iter()
                    .flat_map(|(p, rows)| rows.iter().map(move |r| (p, r)))
                {
                    let tenant = r.tenant.as_uuid().as_bytes();
                    match &r.write {
                        RowWrite::Put(v) => {
                            insert.execute(params![projection, tenant, r.key, v])?
                        }
                        RowWrite::Insert(v) => {
                            insert_new.execute(params![projection, tenant, r.key, v])?
                        }
                        RowWrite::Delete => delete.execute(params![projection, tenant, r.key])?,
                    };
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(StoreError::backend)?
    }

    pub(super) async fn read(
        &self,
        projection: &str,
        tenant: TenantId,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (pool, projection) = (self.readers.clone(), projection.to_owned());
        let (from, to) = (from.to_vec(), to.to_vec());
        tokio::task::spawn_blocking(move || {
            let conn = pool.get()?;
            let out = (|| {
                let mut stmt = conn.prepare_cached(
                    "SELECT key, value FROM projection_rows \
                     WHERE projection = ?1 AND tenant_id = ?2 AND key BETWEEN ?3 AND ?4 \
                     ORDER BY key LIMIT ?5",
                )?;
                let rows = stmt.query_map(
                    params![
                        projection,
                        tenant.as_uuid().as_bytes(),
                        from,
                        to,
                        i64::try_from(limit).unwrap_or(i64::MAX)
                    ],
                    |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)),
                )?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(StoreError::from)
            })();
            pool.put(conn);
            out
        })
        .await
        .map_err(StoreError::backend)?
    }

    pub(super) async fn read_at(
        &self,
        projection: &str,
        keys: Vec<(TenantId, Vec<u8>)>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let (pool, projection) = (self.readers.clone(), projection.to_owned());
        tokio::task::spawn_blocking(move || {
            let conn = pool.get()?;
            let out = (|| {
                let mut stmt = conn.prepare_cached(
                    "SELECT value FROM projection_rows \
                     WHERE projection = ?1 AND tenant_id = ?2 AND key = ?3",
                )?;
                let tx = conn.unchecked_transaction()?;
                let mut out = Vec::with_capacity(keys.len());
                for (tenant, key) in &keys {
                    out.push(
                        stmt.query_row(
                            params![projection, tenant.as_uuid().as_bytes(), key],
                            |r| r.get::<_, Vec<u8>>(0),
                        )
                        .optional()?,
                    );
                }
                tx.finish()?;
                Ok(out)
            })();
            pool.put(conn);
            out
        })
        .await
        .map_err(StoreError::backend)?
    }

    /// Make every row committed so far durable, before a projection state that covers them is
    /// saved: a commit with `synchronous=FULL` syncs the WAL, which holds every earlier commit
    /// not yet copied back.
    pub(super) async fn sync(&self) -> Result<()> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            conn.pragma_update(None, "synchronous", "FULL")?;
            let written = conn.execute(
                "INSERT INTO synced (id, at) VALUES (1, ?1) \
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                [crate::envelope::to_micros(crate::envelope::now_micros())],
            );
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            written?;
            Ok(())
        })
        .await
        .map_err(StoreError::backend)?
    }
}
