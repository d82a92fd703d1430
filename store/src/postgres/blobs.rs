//! PostgreSQL blobs in chunks (docs/adr/036): a blob larger than one chunk is kept as rows of
//! `blob_chunks`, one generation of them named by its row in `chunked_blobs`, written from a
//! reader one chunk at a time inside one transaction and read back as a stream of chunks, one
//! short statement each; a write or a download never holds it whole, here or in a PostgreSQL
//! backend (`get_blob`, for the callers that want the bytes, assembles it once). A blob of one
//! chunk or less stays one `bytea` in `blobs` (the layout before, which old builds still read),
//! and blobs written before in that layout, of any size, still read: a large one in ranges of
//! its value.

use super::{Postgres, Scope, in_scope, tenant_scope};
use crate::BlobBody;
use crate::error::{Result, StoreError};
use deadpool_postgres::{Pool, Transaction};
use domain::TenantId;
use futures_util::future::{join, try_join3};
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

/// What one statement writes or reads of a blob, and the most a blob kept as one value holds.
/// Not part of the layout: every chunk has its own length, so it may change between releases.
pub(crate) const CHUNK: usize = 1 << 20;
/// How many chunks a download asks for ahead of the one being sent (its memory: this many
/// chunks).
const READ_AHEAD: usize = 2;
/// The class of the advisory lock (two `int4` keys, a space apart from the `bigint` locks)
/// that serializes every writer of one blob id in its tenant: puts of either layout, deletes.
const BLOB_LOCK_CLASS: i32 = 0x626c_6f62; // "blob"

/// Migration: the chunked layout (docs/adr/036). Tenant-scoped like `blobs`, under forced
/// row-level security (docs/adr/017); chunks compressed with lz4 where the server has it
/// (cheaper for the server's CPU than the default pglz, at a little more WAL).
pub(crate) const MIGRATION: &str = "CREATE TABLE chunked_blobs (
        tenant_id uuid NOT NULL,
        blob_id text NOT NULL,
        generation uuid NOT NULL,
        size bigint NOT NULL,
        chunks integer NOT NULL,
        PRIMARY KEY (tenant_id, blob_id)
    );
    CREATE TABLE blob_chunks (
        tenant_id uuid NOT NULL,
        blob_id text NOT NULL,
        generation uuid NOT NULL,
        seq integer NOT NULL,
        bytes bytea NOT NULL,
        PRIMARY KEY (tenant_id, blob_id, generation, seq)
    );
    DO $$ BEGIN
        EXECUTE 'ALTER TABLE blob_chunks ALTER COLUMN bytes SET COMPRESSION lz4';
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'blob chunks keep the default compression (no lz4 on this server)';
    END $$;
    GRANT SELECT, INSERT, UPDATE, DELETE ON chunked_blobs, blob_chunks TO tenantry_tenant;
    ALTER TABLE chunked_blobs ENABLE ROW LEVEL SECURITY;
    ALTER TABLE blob_chunks ENABLE ROW LEVEL SECURITY;
    CREATE POLICY tenant_isolation ON chunked_blobs
        USING (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid)
        WITH CHECK (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid);
    CREATE POLICY tenant_isolation ON blob_chunks
        USING (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid)
        WITH CHECK (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid);
    ALTER TABLE chunked_blobs FORCE ROW LEVEL SECURITY;
    ALTER TABLE blob_chunks FORCE ROW LEVEL SECURITY;";

/// Where a blob is and how to read it: one statement, one snapshot. A chunked blob wins over
/// a value of the same id (a writer removes the other layout under the blob's lock; only a
/// writer of a build before the chunks, which takes no lock, could leave both). A value larger
/// than a chunk (written before the chunks) is not fetched here: it is read in ranges.
const LOCATE: &str = "SELECT 0 AS layer, generation, size, chunks, NULL::bytea AS data, \
     NULL::text AS version FROM chunked_blobs WHERE tenant_id = $1 AND blob_id = $2 \
     UNION ALL SELECT 1, NULL::uuid, octet_length(data)::bigint, NULL::integer, \
     CASE WHEN octet_length(data) <= $3 THEN data END, xmin::text \
     FROM blobs WHERE tenant_id = $1 AND blob_id = $2 ORDER BY layer LIMIT 1";

/// A whole blob in one statement (one snapshot): its chunks in order, or its one value.
const WHOLE: &str = "SELECT 0 AS layer, c.seq, c.bytes FROM chunked_blobs h JOIN blob_chunks c \
     ON c.tenant_id = h.tenant_id AND c.blob_id = h.blob_id AND c.generation = h.generation \
     WHERE h.tenant_id = $1 AND h.blob_id = $2 \
     UNION ALL SELECT 1, 0, data FROM blobs WHERE tenant_id = $1 AND blob_id = $2 \
     ORDER BY 1, 2";

const CHUNK_OF: &str = "SELECT bytes FROM blob_chunks \
     WHERE tenant_id = $1 AND blob_id = $2 AND generation = $3 AND seq = $4";

/// A range of a value written before the chunks, of the same row version (`xmin`) as located:
/// a value replaced meanwhile answers nothing instead of a mix of two blobs.
const RANGE_OF: &str = "SELECT substring(data FROM $3 FOR $4) FROM blobs \
     WHERE tenant_id = $1 AND blob_id = $2 AND xmin::text = $5";

/// A blob being read from PostgreSQL, chunk by chunk, in order (`BlobBody::Chunks`). Each
/// chunk is one short statement on a pooled connection, held only while it runs. A blob
/// replaced or removed while it is read ends the stream with an error, never a mix of two.
pub struct BlobChunks(BoxStream<'static, Result<Vec<u8>>>);

impl Stream for BlobChunks {
    type Item = Result<Vec<u8>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_next_unpin(cx)
    }
}

impl std::fmt::Debug for BlobChunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlobChunks")
    }
}

/// Where the bytes of a blob being written come from, one chunk at a time.
enum Source {
    Bytes {
        bytes: Vec<u8>,
        at: usize,
    },
    /// A blocking reader (a file), read on the blocking pool; `None` once a read failed.
    Reader(Option<Box<dyn Read + Send>>),
}

impl Source {
    /// The next chunk: `CHUNK` bytes, fewer at the end, empty after it.
    async fn next(&mut self) -> Result<Vec<u8>> {
        match self {
            Source::Bytes { bytes, at } => {
                let end = (*at + CHUNK).min(bytes.len());
                let chunk = bytes[*at..end].to_vec();
                *at = end;
                Ok(chunk)
            }
            Source::Reader(slot) => {
                let mut reader = slot
                    .take()
                    .ok_or_else(|| StoreError::Backend("the blob's reader failed".into()))?;
                let (reader, chunk) = tokio::task::spawn_blocking(move || {
                    let mut chunk = Vec::with_capacity(CHUNK);
                    let read = (&mut reader).take(CHUNK as u64).read_to_end(&mut chunk);
                    (reader, read.map(|_| chunk))
                })
                .await
                .map_err(StoreError::backend)?;
                let chunk =
                    chunk.map_err(|e| StoreError::Backend(format!("reading a blob: {e}")))?;
                *slot = Some(reader);
                Ok(chunk)
            }
        }
    }
}

/// Where `LOCATE` found a blob.
enum Located {
    Chunked {
        generation: Uuid,
        size: u64,
        chunks: i32,
    },
    /// One value of at most a chunk, here whole.
    Value(Vec<u8>),
    /// One value larger than a chunk (written before the chunks), to read in ranges.
    LargeValue { size: u64, version: String },
}

fn located(row: &Row) -> Located {
    let size = row.get::<_, i64>(2) as u64;
    if row.get::<_, i32>(0) == 0 {
        Located::Chunked {
            generation: row.get(1),
            size,
            chunks: row.get(3),
        }
    } else {
        match row.get::<_, Option<Vec<u8>>>(4) {
            Some(bytes) => Located::Value(bytes),
            None => Located::LargeValue {
                size,
                version: row.get(5),
            },
        }
    }
}

/// The blob in `WHOLE`'s rows (those of the first layout found).
fn whole(rows: &[Row]) -> Option<Vec<u8>> {
    let layer = rows.first()?.get::<_, i32>(0);
    let mut out = Vec::new();
    for row in rows.iter().take_while(|r| r.get::<_, i32>(0) == layer) {
        out.extend_from_slice(row.get::<_, &[u8]>(2));
    }
    Some(out)
}

fn gone(id: &str) -> StoreError {
    StoreError::Backend(format!(
        "blob {id:?} was replaced or removed while it was read"
    ))
}

impl Postgres {
    /// Keep a blob, replacing any of that id: in chunks when it is larger than one.
    pub(crate) async fn put_blob(&self, tenant: TenantId, id: &str, bytes: Vec<u8>) -> Result<()> {
        self.put(tenant, id, Source::Bytes { bytes, at: 0 }).await
    }

    /// Keep what `reader` gives as a blob, one chunk in memory at a time (a few while one is
    /// sent and the next read). A reader that fails leaves nothing of this write visible.
    pub(crate) async fn put_blob_reader(
        &self,
        tenant: TenantId,
        id: &str,
        reader: Box<dyn Read + Send>,
    ) -> Result<()> {
        self.put(tenant, id, Source::Reader(Some(reader))).await
    }

    async fn put(&self, tenant: TenantId, id: &str, mut source: Source) -> Result<()> {
        // Two chunks decide the layout: a blob that ends within the first stays one value.
        let first = match &mut source {
            Source::Bytes { bytes, .. } if bytes.len() <= CHUNK => std::mem::take(bytes),
            _ => source.next().await?,
        };
        let second = if first.len() < CHUNK {
            Vec::new()
        } else {
            source.next().await?
        };
        let mut client = self.pool.get().await?;
        let tx = tenant_scope(&mut client, tenant).await?;
        if second.is_empty() {
            lock(&tx, tenant, id).await?;
            keep_value(&tx, tenant, id, &first, true).await?;
        } else {
            let generation = Uuid::new_v4();
            let (size, chunks) =
                write_chunks(&tx, tenant, id, generation, first, second, &mut source).await?;
            lock(&tx, tenant, id).await?;
            keep_chunked(&tx, tenant, id, generation, size, chunks).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Keep `bytes` unless a blob of that id exists (in either layout); answer what is kept.
    pub(crate) async fn put_blob_if_absent(
        &self,
        tenant: TenantId,
        id: &str,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let mut client = self.pool.get().await?;
        let tx = tenant_scope(&mut client, tenant).await?;
        lock(&tx, tenant, id).await?;
        let stmt = tx.prepare_cached(WHOLE).await?;
        if let Some(kept) = whole(&tx.query(&stmt, &[tenant.as_uuid(), &id]).await?) {
            tx.commit().await?;
            return Ok(kept);
        }
        let kept = if bytes.len() <= CHUNK {
            // A build before the chunks takes no lock: the value's key still decides.
            keep_value(&tx, tenant, id, &bytes, false).await?;
            let row = tx
                .query_one(
                    "SELECT data FROM blobs WHERE tenant_id = $1 AND blob_id = $2",
                    &[tenant.as_uuid(), &id],
                )
                .await?;
            row.get(0)
        } else {
            let generation = Uuid::new_v4();
            let mut source = Source::Bytes { bytes, at: 0 };
            let first = source.next().await?;
            let second = source.next().await?;
            let (size, chunks) =
                write_chunks(&tx, tenant, id, generation, first, second, &mut source).await?;
            keep_chunked(&tx, tenant, id, generation, size, chunks).await?;
            let Source::Bytes { bytes, .. } = source else {
                unreachable!("the source is the bytes")
            };
            bytes
        };
        tx.commit().await?;
        Ok(kept)
    }

    /// The whole blob, in memory (small blobs: keys, secrets; a dataset loaded into the
    /// sandbox). Downloads use `open_blob`.
    pub(crate) async fn get_blob(&self, tenant: TenantId, id: &str) -> Result<Option<Vec<u8>>> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(WHOLE).await?;
        // Row by row: each chunk is appended and its row dropped, so the blob is in memory
        // once, not twice (the rows and the copy).
        let params: [&(dyn ToSql + Sync); 2] = [tenant.as_uuid(), &id];
        let read = async {
            let rows = client.query_raw(&stmt, params).await?;
            let mut rows = std::pin::pin!(rows);
            let (mut out, mut layer) = (None::<Vec<u8>>, None);
            while let Some(row) = rows.next().await.transpose()? {
                // The rows of the first layout found; a value after chunks is not the blob.
                let of = row.get::<_, i32>(0);
                if *layer.get_or_insert(of) == of {
                    out.get_or_insert_with(Vec::new)
                        .extend_from_slice(row.get::<_, &[u8]>(2));
                }
            }
            Ok::<_, tokio_postgres::Error>(out)
        };
        in_scope(&client, Scope::Tenant(tenant), read).await
    }

    /// A blob to stream: a value of at most a chunk comes whole; anything larger comes as
    /// `BlobBody::Chunks`, read a chunk (or a range of an old value) at a time.
    pub(crate) async fn open_blob(&self, tenant: TenantId, id: &str) -> Result<Option<BlobBody>> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(LOCATE).await?;
        let limit = CHUNK as i32;
        let rows = in_scope(
            &client,
            Scope::Tenant(tenant),
            client.query(&stmt, &[tenant.as_uuid(), &id, &limit]),
        )
        .await?;
        drop(client);
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let id = id.to_owned();
        Ok(Some(match located(row) {
            Located::Value(bytes) => BlobBody::Bytes(bytes),
            Located::Chunked {
                generation,
                size,
                chunks,
            } => {
                let pool = self.pool.clone();
                let reads = stream::iter(0..chunks).map(move |seq| {
                    let (pool, id) = (pool.clone(), id.clone());
                    async move {
                        let params: [&(dyn ToSql + Sync); 4] =
                            [tenant.as_uuid(), &id, &generation, &seq];
                        read_one(&pool, tenant, CHUNK_OF, &params, &id).await
                    }
                });
                BlobBody::Chunks(size, checked(reads.buffered(READ_AHEAD), size))
            }
            Located::LargeValue { size, version } => {
                let pool = self.pool.clone();
                let ranges = size.div_ceil(CHUNK as u64) as i32;
                let reads = stream::iter(0..ranges).map(move |i| {
                    let (pool, id, version) = (pool.clone(), id.clone(), version.clone());
                    async move {
                        // substring counts from 1.
                        let (from, len) = (i * CHUNK as i32 + 1, CHUNK as i32);
                        let params: [&(dyn ToSql + Sync); 5] =
                            [tenant.as_uuid(), &id, &from, &len, &version];
                        read_one(&pool, tenant, RANGE_OF, &params, &id).await
                    }
                });
                BlobBody::Chunks(size, checked(reads.buffered(READ_AHEAD), size))
            }
        }))
    }

    /// Remove a blob in either layout; removing one that does not exist is not an error.
    pub(crate) async fn delete_blob(&self, tenant: TenantId, id: &str) -> Result<()> {
        let mut client = self.pool.get().await?;
        let tx = tenant_scope(&mut client, tenant).await?;
        lock(&tx, tenant, id).await?;
        let t = tenant.as_uuid();
        let heads = tx
            .prepare_cached("DELETE FROM chunked_blobs WHERE tenant_id = $1 AND blob_id = $2")
            .await?;
        let chunks = tx
            .prepare_cached("DELETE FROM blob_chunks WHERE tenant_id = $1 AND blob_id = $2")
            .await?;
        let value = tx
            .prepare_cached("DELETE FROM blobs WHERE tenant_id = $1 AND blob_id = $2")
            .await?;
        try_join3(
            tx.execute(&heads, &[t, &id]),
            tx.execute(&chunks, &[t, &id]),
            tx.execute(&value, &[t, &id]),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Take the blob's lock for the rest of the transaction.
async fn lock(tx: &Transaction<'_>, tenant: TenantId, id: &str) -> Result<()> {
    let stmt = tx
        .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .await?;
    tx.execute(&stmt, &[&BLOB_LOCK_CLASS, &format!("{tenant}/{id}")])
        .await?;
    Ok(())
}

/// Keep `bytes` as the blob's one value (replacing it, or only if absent), and remove a
/// chunked blob of the id.
async fn keep_value(
    tx: &Transaction<'_>,
    tenant: TenantId,
    id: &str,
    bytes: &[u8],
    replace: bool,
) -> Result<()> {
    let t = tenant.as_uuid();
    let upsert = tx
        .prepare_cached(if replace {
            "INSERT INTO blobs (tenant_id, blob_id, data) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, blob_id) DO UPDATE SET data = excluded.data"
        } else {
            "INSERT INTO blobs (tenant_id, blob_id, data) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, blob_id) DO NOTHING"
        })
        .await?;
    let heads = tx
        .prepare_cached("DELETE FROM chunked_blobs WHERE tenant_id = $1 AND blob_id = $2")
        .await?;
    let chunks = tx
        .prepare_cached("DELETE FROM blob_chunks WHERE tenant_id = $1 AND blob_id = $2")
        .await?;
    try_join3(
        tx.execute(&upsert, &[t, &id, &bytes]),
        tx.execute(&heads, &[t, &id]),
        tx.execute(&chunks, &[t, &id]),
    )
    .await?;
    Ok(())
}

/// Make `generation` the blob's chunks (its row in `chunked_blobs`), and remove every other
/// generation and a value of the id. Called under the blob's lock: of two writers of one id,
/// the later one removes the earlier one's chunks.
async fn keep_chunked(
    tx: &Transaction<'_>,
    tenant: TenantId,
    id: &str,
    generation: Uuid,
    size: u64,
    chunks: i32,
) -> Result<()> {
    let t = tenant.as_uuid();
    let size = i64::try_from(size).map_err(StoreError::backend)?;
    let head = tx
        .prepare_cached(
            "INSERT INTO chunked_blobs (tenant_id, blob_id, generation, size, chunks) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, blob_id) DO UPDATE \
             SET generation = excluded.generation, size = excluded.size, chunks = excluded.chunks",
        )
        .await?;
    let others = tx
        .prepare_cached(
            "DELETE FROM blob_chunks WHERE tenant_id = $1 AND blob_id = $2 AND generation <> $3",
        )
        .await?;
    let value = tx
        .prepare_cached("DELETE FROM blobs WHERE tenant_id = $1 AND blob_id = $2")
        .await?;
    try_join3(
        tx.execute(&head, &[t, &id, &generation, &size, &chunks]),
        tx.execute(&others, &[t, &id, &generation]),
        tx.execute(&value, &[t, &id]),
    )
    .await?;
    Ok(())
}

/// Write the chunks of one generation, `first` and `second` then the rest of `source`, each
/// insert sent while the chunk after the next is read. Answers the size and the count.
async fn write_chunks(
    tx: &Transaction<'_>,
    tenant: TenantId,
    id: &str,
    generation: Uuid,
    first: Vec<u8>,
    second: Vec<u8>,
    source: &mut Source,
) -> Result<(u64, i32)> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO blob_chunks (tenant_id, blob_id, generation, seq, bytes) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    let (mut current, mut upcoming) = (first, second);
    let (mut seq, mut size) = (0i32, 0u64);
    loop {
        let params: [&(dyn ToSql + Sync); 5] = [tenant.as_uuid(), &id, &generation, &seq, &current];
        let send = tx.execute(&insert, &params);
        let read = async {
            if upcoming.is_empty() {
                Ok(Vec::new())
            } else {
                source.next().await
            }
        };
        let (sent, after) = join(send, read).await;
        sent?;
        size += current.len() as u64;
        seq = seq
            .checked_add(1)
            .ok_or_else(|| StoreError::Backend("a blob of too many chunks".into()))?;
        if upcoming.is_empty() {
            return Ok((size, seq));
        }
        current = std::mem::replace(&mut upcoming, after?);
    }
}

/// One row's one `bytea` column, in a statement of its own on a pooled connection.
async fn read_one(
    pool: &Pool,
    tenant: TenantId,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    id: &str,
) -> Result<Vec<u8>> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(sql).await?;
    let rows = in_scope(&client, Scope::Tenant(tenant), client.query(&stmt, params)).await?;
    rows.first().map(|r| r.get(0)).ok_or_else(|| gone(id))
}

/// The chunks as they come, checked against the size the blob was located with: a stream that
/// would give more, or ends short, ends with an error instead. The first error ends it.
fn checked(chunks: impl Stream<Item = Result<Vec<u8>>> + Send + 'static, size: u64) -> BlobChunks {
    let state = (chunks.boxed(), 0u64, false);
    let body = stream::unfold(state, move |(mut chunks, sent, ended)| async move {
        if ended {
            return None;
        }
        let short =
            || StoreError::Backend(format!("a blob's chunks do not add up to its size {size}"));
        match chunks.next().await {
            Some(Ok(chunk)) => {
                let sent = sent + chunk.len() as u64;
                if sent > size {
                    Some((Err(short()), (chunks, sent, true)))
                } else {
                    Some((Ok(chunk), (chunks, sent, false)))
                }
            }
            Some(Err(e)) => Some((Err(e), (chunks, sent, true))),
            None if sent == size => None,
            None => Some((Err(short()), (chunks, sent, true))),
        }
    });
    BlobChunks(body.boxed())
}
