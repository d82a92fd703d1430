//! Shared reads of the log's head: one store round trip serves every caller that asked before it
//! began, so a flood of callers (unknown bearer tokens, say) costs one read per round trip, not one
//! each, and no caller is ever answered with a head read before it asked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::Mutex;

/// The last head read: when it began and what it found.
#[derive(Debug, Default)]
pub(crate) struct HeadProbe {
    last: Mutex<Option<(Instant, u64)>>,
    reads: AtomicU64,
}

impl HeadProbe {
    /// The head from a read that began at or after this call: the last one when it qualifies,
    /// otherwise a new one made with `read`. Callers queue in order (tokio's mutex is fair), so the
    /// ones waiting behind a read that began after they asked take its answer.
    pub(crate) async fn after_now<F, Fut, E>(&self, read: F) -> Result<u64, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<u64, E>>,
    {
        let asked = Instant::now();
        let mut last = self.last.lock().await;
        if let Some((began, head)) = *last
            && began >= asked
        {
            return Ok(head);
        }
        let began = Instant::now();
        self.reads.fetch_add(1, Ordering::Relaxed);
        let head = read().await?;
        *last = Some((began, head));
        Ok(head)
    }

    /// How many reads went to the store.
    pub(crate) fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}
