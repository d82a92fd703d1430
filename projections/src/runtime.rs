//! The projections runtime: one task per projection, each with its own subscription and
//! checkpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Envelope, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A read model fed by the log, in commit order, each event exactly once.
pub trait Projection: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn apply(&self, event: &Envelope);
}

#[derive(Debug)]
struct Running {
    name: &'static str,
    checkpoint: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

/// The running projections of one process.
#[derive(Debug)]
pub struct Runtime {
    store: Store,
    running: Vec<Running>,
}

impl Runtime {
    /// Start every projection from position 1.
    pub fn start(store: &Store, projections: Vec<Arc<dyn Projection>>) -> Self {
        let running = projections
            .into_iter()
            .map(|p| {
                let (tx, rx) = watch::channel(0u64);
                let store = store.clone();
                let name = p.name();
                let task = tokio::spawn(async move {
                    let mut sub = store.subscribe(1);
                    loop {
                        match sub.next_batch().await {
                            Ok(batch) => {
                                for e in &batch {
                                    p.apply(e);
                                }
                                if let Some(last) = batch.last() {
                                    tx.send_replace(last.global_position);
                                }
                            }
                            Err(e) => {
                                tracing::warn!(projection = name, error = %e, "projection read failed; retrying");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                });
                Running {
                    name,
                    checkpoint: rx,
                    task,
                }
            })
            .collect();
        Self {
            store: store.clone(),
            running,
        }
    }

    /// Each projection's name and checkpoint.
    pub fn checkpoints(&self) -> Vec<(&'static str, u64)> {
        self.running
            .iter()
            .map(|r| (r.name, *r.checkpoint.borrow()))
            .collect()
    }

    /// Wait until every projection has applied `position` (or until `timeout`). True if reached.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for r in &self.running {
            let mut rx = r.checkpoint.clone();
            let left = deadline.saturating_duration_since(Instant::now());
            let reached = tokio::time::timeout(left, rx.wait_for(|c| *c >= position)).await;
            if !matches!(reached, Ok(Ok(_))) {
                return false;
            }
        }
        true
    }

    /// Wait until every projection has caught up with the log's head as it is now.
    pub async fn catch_up(&self, timeout: Duration) -> bool {
        match self.store.head().await {
            Ok(head) => self.wait_for(head, timeout).await,
            Err(_) => false,
        }
    }

    pub fn stop(&self) {
        for r in &self.running {
            r.task.abort();
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop();
    }
}
