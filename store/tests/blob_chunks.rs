//! PostgreSQL's blobs in chunks (docs/adr/036), what only PostgreSQL has: blobs written before
//! the chunks (one `bytea` in `blobs`) still read, whole and in ranges; a blob replaced while
//! it is read ends the read with an error, never a mix of two blobs; replaced, removed and
//! failed writes leave no chunk behind; chunks are compressed with lz4.
//!
//! The checks of the stored rows connect as the cluster's superuser (which bypasses row-level
//! security); the store acts through its roles, as the service does.

use domain::TenantId;
use futures_util::StreamExt;
use store::{BlobBody, Store};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + seed) % 251) as u8).collect()
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// The chunks a stream gives until its end or its first error.
async fn read(body: BlobBody) -> (Vec<Vec<u8>>, Option<store::StoreError>) {
    let BlobBody::Chunks(_, mut chunks) = body else {
        panic!("expected a stream of chunks, got {body:?}");
    };
    let mut got = Vec::new();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(c) => got.push(c),
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

/// `(blob rows, chunk rows, chunk rows of the blob's generation)` of one blob, as stored.
async fn stored(admin: &Client, tenant: TenantId, id: &str) -> (i64, i64, i64) {
    let row = admin
        .query_one(
            "SELECT (SELECT count(*) FROM blobs WHERE tenant_id = $1 AND blob_id = $2), \
             (SELECT count(*) FROM blob_chunks WHERE tenant_id = $1 AND blob_id = $2), \
             (SELECT count(*) FROM blob_chunks c JOIN chunked_blobs h USING \
              (tenant_id, blob_id, generation) WHERE c.tenant_id = $1 AND c.blob_id = $2)",
            &[tenant.as_uuid(), &id],
        )
        .await
        .expect("count rows");
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_written_before_the_chunks_still_reads_whole_and_in_ranges() {
    let url = store::testing::fresh_postgres_url().await;
    let store = Store::connect_postgres(&url).await.expect("connect");
    let admin = connect(&url).await;
    let t = TenantId::from_uuid(Uuid::new_v4());
    // Rows as the build before wrote them: one value each, whatever its size.
    let (small, large) = (pattern(100, 1), pattern(2 * MIB + 500_001, 2));
    for (id, bytes) in [("old-small", &small), ("old-large", &large)] {
        admin
            .execute(
                "INSERT INTO blobs (tenant_id, blob_id, data) VALUES ($1, $2, $3)",
                &[t.as_uuid(), &id, bytes],
            )
            .await
            .expect("an old-layout blob");
    }
    match store.open_blob(t, "old-small").await.expect("open") {
        Some(BlobBody::Bytes(b)) => assert_eq!(b, small),
        other => panic!("a small old blob arrives whole: {other:?}"),
    }
    let body = store
        .open_blob(t, "old-large")
        .await
        .expect("open")
        .expect("found");
    assert!(matches!(body, BlobBody::Chunks(len, _) if len == large.len() as u64));
    let (chunks, err) = read(body).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(chunks.len(), 3, "read in ranges of a chunk");
    assert_eq!(chunks.concat(), large);
    assert_eq!(
        store.get_blob(t, "old-large").await.expect("get"),
        Some(large)
    );
    assert_eq!(
        store.get_blob(t, "old-small").await.expect("get"),
        Some(small)
    );
    // Replaced, an old blob moves to the chunks and its value is gone.
    let new = pattern(3 * MIB, 3);
    store
        .put_blob(t, "old-large", new.clone())
        .await
        .expect("replace");
    assert_eq!(stored(&admin, t, "old-large").await, (0, 3, 3));
    assert_eq!(
        store.get_blob(t, "old-large").await.expect("get"),
        Some(new)
    );
    store.delete_blob(t, "old-small").await.expect("delete");
    assert_eq!(stored(&admin, t, "old-small").await, (0, 0, 0));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_replaced_while_it_is_read_ends_in_an_error_not_a_mix() {
    let url = store::testing::fresh_postgres_url().await;
    let store = Store::connect_postgres(&url).await.expect("connect");
    let admin = connect(&url).await;
    let t = TenantId::from_uuid(Uuid::new_v4());
    for layout in ["chunks", "old value"] {
        let old = pattern(5 * MIB, 5);
        if layout == "chunks" {
            store.put_blob(t, "b", old.clone()).await.expect("put");
        } else {
            store.delete_blob(t, "b").await.expect("delete");
            admin
                .execute(
                    "INSERT INTO blobs (tenant_id, blob_id, data) VALUES ($1, 'b', $2)",
                    &[t.as_uuid(), &old],
                )
                .await
                .expect("an old-layout blob");
        }
        let BlobBody::Chunks(_, mut chunks) = store.open_blob(t, "b").await.unwrap().unwrap()
        else {
            panic!("a stream");
        };
        let first = chunks.next().await.expect("a chunk").expect("read");
        store
            .put_blob(t, "b", pattern(5 * MIB, 6))
            .await
            .expect("replace while it is read");
        let mut got = vec![first];
        let mut failed = false;
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(c) => got.push(c),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(
            failed,
            "{layout}: the read of a replaced blob ends in an error"
        );
        let got = got.concat();
        assert!(got.len() < old.len(), "{layout}");
        assert_eq!(
            got,
            old[..got.len()],
            "{layout}: what came is the old blob's"
        );
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_removed_and_failed_writes_leave_no_chunk_behind() {
    let url = store::testing::fresh_postgres_url().await;
    let store = Store::connect_postgres(&url).await.expect("connect");
    let admin = connect(&url).await;
    let t = TenantId::from_uuid(Uuid::new_v4());
    store
        .put_blob(t, "b", pattern(4 * MIB, 1))
        .await
        .expect("put");
    assert_eq!(stored(&admin, t, "b").await, (0, 4, 4));
    store
        .put_blob(t, "b", pattern(2 * MIB + 1, 2))
        .await
        .expect("replace");
    assert_eq!(
        stored(&admin, t, "b").await,
        (0, 3, 3),
        "the old generation is gone"
    );
    store
        .put_blob(t, "b", b"small".to_vec())
        .await
        .expect("small");
    assert_eq!(
        stored(&admin, t, "b").await,
        (1, 0, 0),
        "a small blob is one value"
    );
    let failing = std::io::Read::chain(std::io::Cursor::new(vec![1u8; 3 * MIB]), Broken);
    assert!(store.put_blob_reader(t, "b", failing).await.is_err());
    assert_eq!(
        stored(&admin, t, "b").await,
        (1, 0, 0),
        "the failed write left nothing"
    );
    assert_eq!(
        store.get_blob(t, "b").await.unwrap().as_deref(),
        Some(&b"small"[..])
    );
    store
        .put_blob(t, "b", pattern(2 * MIB, 3))
        .await
        .expect("put");
    store.delete_blob(t, "b").await.expect("delete");
    assert_eq!(stored(&admin, t, "b").await, (0, 0, 0));
    let heads: i64 = admin
        .query_one("SELECT count(*) FROM chunked_blobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(heads, 0);
    // Chunks are compressed with lz4 where the server has it (this one does).
    let compression: i8 = admin
        .query_one(
            "SELECT attcompression FROM pg_attribute \
             WHERE attrelid = 'blob_chunks'::regclass AND attname = 'bytes'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(compression as u8, b'l');
    store.close().await;
}

/// A source that fails at once (after the bytes chained before it).
struct Broken;

impl std::io::Read for Broken {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("the source went away"))
    }
}
