//! `tenantry events export`: the log as JSON Lines, one envelope per line, in commit order.

use domain::TenantId;
use std::io::Write;
use store::Store;

const PAGE: usize = 10_000;

/// Write every event from `from` (inclusive), optionally of one tenant, to `out`.
/// Returns how many events were written.
pub async fn export(
    store: &Store,
    from: u64,
    tenant: Option<TenantId>,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let mut next = from.max(1);
    let mut written = 0;
    loop {
        let page = match tenant {
            Some(t) => store.read_tenant(t, next, PAGE).await?,
            None => store.read_all(next, PAGE).await?,
        };
        for e in &page {
            serde_json::to_writer(&mut *out, e)?;
            out.write_all(b"\n")?;
        }
        written += page.len() as u64;
        match page.last() {
            Some(last) if page.len() == PAGE => next = last.global_position + 1,
            _ => break,
        }
    }
    out.flush()?;
    Ok(written)
}
