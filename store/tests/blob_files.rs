//! Blobs kept from a file and read back as a stream where the backend allows
//! (`Store::put_blob_file`, `Store::open_blob`), on both backends: an export is written to a
//! temporary file and kept from it, and a download reads it back without holding it whole on the
//! embedded store.

use domain::TenantId;
use std::io::{Read, Write};
use store::BlobBody;
use store::testing::TestStore;
use uuid::Uuid;

fn contents(body: BlobBody) -> Vec<u8> {
    match body {
        BlobBody::File(mut f, len) => {
            let mut out = Vec::new();
            f.read_to_end(&mut out).unwrap();
            assert_eq!(out.len() as u64, len, "the length is the file's");
            out
        }
        BlobBody::Bytes(b) => b,
    }
}

async fn a_blob_kept_from_a_file_reads_back_the_same_bytes(h: TestStore, streamed: bool) {
    let s = &h.store;
    let t = TenantId::from_uuid(Uuid::new_v4());
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let bytes: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    file.write_all(&bytes).unwrap();
    file.flush().unwrap();
    assert!(s.open_blob(t, "ex-1").await.unwrap().is_none());
    s.put_blob_file(t, "ex-1", file.path()).await.unwrap();
    // The source file is the caller's: it is still there, to be removed by its owner.
    assert!(file.path().exists());
    drop(file);
    let body = s.open_blob(t, "ex-1").await.unwrap().unwrap();
    assert_eq!(matches!(body, BlobBody::File(..)), streamed);
    assert_eq!(contents(body), bytes);
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
    a_blob_kept_from_a_file_reads_back_the_same_bytes(TestStore::embedded().await, true).await;
}

#[tokio::test]
async fn a_blob_kept_from_a_file_reads_back_whole_on_postgresql() {
    a_blob_kept_from_a_file_reads_back_the_same_bytes(TestStore::postgres().await, false).await;
}
