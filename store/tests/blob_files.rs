//! Blobs kept from a file and read back as a stream (`Store::put_blob_file`,
//! `Store::open_blob`), on both backends: an export is written to a temporary file and kept
//! from it, and a download reads it back without holding it whole: the embedded store's file in
//! pieces, PostgreSQL's chunks one at a time (docs/adr/036).

use domain::TenantId;
use futures_util::StreamExt;
use std::io::{Read, Write};
use store::BlobBody;
use store::testing::TestStore;
use uuid::Uuid;

#[derive(Debug, PartialEq)]
enum Kind {
    File,
    Chunks,
}

async fn contents(body: BlobBody) -> (Kind, Vec<u8>) {
    match body {
        BlobBody::File(mut f, len) => {
            let mut out = Vec::new();
            f.read_to_end(&mut out).unwrap();
            assert_eq!(out.len() as u64, len, "the length is the file's");
            (Kind::File, out)
        }
        BlobBody::Chunks(len, mut chunks) => {
            let mut out = Vec::new();
            let mut pieces = 0;
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.unwrap();
                assert!(chunk.len() <= 1 << 20, "a chunk at a time");
                out.extend_from_slice(&chunk);
                pieces += 1;
            }
            assert_eq!(out.len() as u64, len, "the length is the blob's");
            assert_eq!(pieces, out.len().div_ceil(1 << 20), "one piece per chunk");
            (Kind::Chunks, out)
        }
        BlobBody::Bytes(b) => panic!("a blob of {} bytes arrived whole", b.len()),
    }
}

async fn a_blob_kept_from_a_file_reads_back_the_same_bytes(h: TestStore, streamed: Kind) {
    let s = &h.store;
    let t = TenantId::from_uuid(Uuid::new_v4());
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let bytes: Vec<u8> = (0..3 * 1024 * 1024 + 512 * 1024u32)
        .map(|i| (i % 251) as u8)
        .collect();
    file.write_all(&bytes).unwrap();
    file.flush().unwrap();
    assert!(s.open_blob(t, "ex-1").await.unwrap().is_none());
    s.put_blob_file(t, "ex-1", file.path()).await.unwrap();
    // The source file is the caller's: it is still there, to be removed by its owner.
    assert!(file.path().exists());
    drop(file);
    let body = s.open_blob(t, "ex-1").await.unwrap().unwrap();
    assert_eq!(contents(body).await, (streamed, bytes.clone()));
    assert_eq!(s.get_blob(t, "ex-1").await.unwrap(), Some(bytes));
    let other = TenantId::from_uuid(Uuid::new_v4());
    assert!(
        s.open_blob(other, "ex-1").await.unwrap().is_none(),
        "blobs are per tenant"
    );
    s.delete_blob(t, "ex-1").await.unwrap();
    assert!(s.open_blob(t, "ex-1").await.unwrap().is_none());
}

#[tokio::test]
async fn a_blob_kept_from_a_file_reads_back_as_a_file_on_the_embedded_store() {
    a_blob_kept_from_a_file_reads_back_the_same_bytes(TestStore::embedded().await, Kind::File)
        .await;
}

#[tokio::test]
async fn a_blob_kept_from_a_file_reads_back_in_chunks_on_postgresql() {
    a_blob_kept_from_a_file_reads_back_the_same_bytes(TestStore::postgres().await, Kind::Chunks)
        .await;
}
