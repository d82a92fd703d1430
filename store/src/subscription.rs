//! Live subscriptions: the log read in commit order from a checkpoint, waiting for more.
//!
//! A subscription never trusts a notification's content: it only wakes up and re-reads the log
//! from the position after the last event it delivered. It also polls, so an append made by
//! another process on the same store (which cannot wake this one) is seen within a second.

use crate::Store;
use crate::envelope::Envelope;
use crate::error::Result;
use std::collections::VecDeque;
use std::time::Duration;

const PAGE: usize = 1_000;
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct Subscription {
    store: Store,
    next: u64,
    buffer: VecDeque<Envelope>,
}

impl Subscription {
    pub(crate) fn new(store: Store, from_position: u64) -> Self {
        Self {
            store,
            next: from_position.max(1),
            buffer: VecDeque::new(),
        }
    }

    /// The position of the next event this subscription will deliver.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next event, waiting for one if the subscriber has caught up.
    pub async fn next(&mut self) -> Result<Envelope> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.next = event.global_position + 1;
                return Ok(event);
            }
            self.fill_or_wait().await?;
        }
    }

    /// Every event available now (possibly none), without waiting.
    pub async fn poll_batch(&mut self) -> Result<Vec<Envelope>> {
        if self.buffer.is_empty() {
            self.buffer
                .extend(self.store.read_all(self.next, PAGE).await?);
        }
        let batch: Vec<_> = self.buffer.drain(..).collect();
        if let Some(last) = batch.last() {
            self.next = last.global_position + 1;
        }
        Ok(batch)
    }

    /// The next events in commit order, waiting until at least one exists.
    pub async fn next_batch(&mut self) -> Result<Vec<Envelope>> {
        loop {
            let batch = self.poll_batch().await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            self.wait().await;
        }
    }

    async fn fill_or_wait(&mut self) -> Result<()> {
        let page = self.store.read_all(self.next, PAGE).await?;
        if page.is_empty() {
            self.wait().await;
        } else {
            self.buffer.extend(page);
        }
        Ok(())
    }

    async fn wait(&self) {
        let mut head = self.store.head_watch();
        let next = self.next;
        let _ = tokio::time::timeout(POLL, head.wait_for(|h| *h >= next)).await;
    }
}
