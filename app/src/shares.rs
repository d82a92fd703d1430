//! Fair shares of the expensive work — uploads, queries, exports — between tenants.
//!
//! Each kind of work has a per-tenant limit (how many of one tenant's requests may run at once)
//! and a global one (how many may run at once in this instance). Past its own limit a tenant is
//! refused at once ([`Error::TooManyConcurrent`], HTTP 429 `too-many-concurrent`); a request
//! within its tenant's share waits for a global slot only as long as its own time budget allows
//! (the wait counts against the budget), then is refused too. A tenant that floods the service fills its
//! own share, never the others'.

use crate::Error;
use domain::TenantId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    Upload,
    Query,
    Export,
}

impl Work {
    pub fn as_str(self) -> &'static str {
        match self {
            Work::Upload => "uploads",
            Work::Query => "queries",
            Work::Export => "exports",
        }
    }
}

/// The limits of one kind of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub per_tenant: usize,
    pub global: usize,
}

#[derive(Debug)]
struct Kind {
    share: Share,
    global: Arc<Semaphore>,
}

#[derive(Debug)]
pub struct Shares {
    kinds: HashMap<Work, Kind>,
    running: Arc<Mutex<HashMap<(TenantId, Work), usize>>>,
}

/// A tenant's slot for one kind of work, given back when dropped — also when the request that
/// holds it goes away while it waits for a global slot.
#[derive(Debug)]
struct TenantSlot {
    running: Arc<Mutex<HashMap<(TenantId, Work), usize>>>,
    key: (TenantId, Work),
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut running = self.running.lock().expect("shares lock");
        if let Some(n) = running.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.key);
            }
        }
    }
}

/// A running piece of work; dropping it gives its slots back.
#[derive(Debug)]
pub struct Permit {
    _tenant: TenantSlot,
    _global: OwnedSemaphorePermit,
}

impl Shares {
    pub fn new(uploads: Share, queries: Share, exports: Share) -> Self {
        let kind = |share: Share| Kind {
            share,
            global: Arc::new(Semaphore::new(share.global.max(1))),
        };
        Self {
            kinds: HashMap::from([
                (Work::Upload, kind(uploads)),
                (Work::Query, kind(queries)),
                (Work::Export, kind(exports)),
            ]),
            running: Arc::default(),
        }
    }

    /// Take a slot for `work` of `tenant`, waiting at most `wait` for a global one.
    pub async fn acquire(
        &self,
        tenant: TenantId,
        work: Work,
        wait: Duration,
    ) -> Result<Permit, Error> {
        let kind = &self.kinds[&work];
        let key = (tenant, work);
        let slot = {
            let mut running = self.running.lock().expect("shares lock");
            let n = running.entry(key).or_default();
            if *n >= kind.share.per_tenant.max(1) {
                return Err(too_many(work, kind.share.per_tenant, "your tenant has"));
            }
            *n += 1;
            TenantSlot {
                running: self.running.clone(),
                key,
            }
        };
        // The tenant's slot is held by `slot` from here: a timeout, or this future being dropped
        // while it waits, gives it back.
        match tokio::time::timeout(wait, kind.global.clone().acquire_owned()).await {
            Ok(Ok(global)) => Ok(Permit {
                _tenant: slot,
                _global: global,
            }),
            _ => Err(too_many(work, kind.share.global, "the service has")),
        }
    }
}

fn too_many(work: Work, limit: usize, whose: &'static str) -> Error {
    Error::TooManyConcurrent {
        work: work.as_str(),
        limit,
        whose,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::from_uuid(uuid::Uuid::new_v4())
    }

    #[tokio::test]
    async fn a_tenant_past_its_share_is_refused_and_others_are_not() {
        let s = Share {
            per_tenant: 2,
            global: 3,
        };
        let shares = Shares::new(s, s, s);
        let (a, b) = (tenant(), tenant());
        let wait = Duration::from_millis(50);
        let a1 = shares.acquire(a, Work::Query, wait).await.unwrap();
        let _a2 = shares.acquire(a, Work::Query, wait).await.unwrap();
        let refused = shares.acquire(a, Work::Query, wait).await.unwrap_err();
        assert!(
            matches!(refused, Error::TooManyConcurrent { limit: 2, .. }),
            "{refused:?}"
        );
        // Other kinds and other tenants have their own shares.
        let _ax = shares.acquire(a, Work::Export, wait).await.unwrap();
        let _b1 = shares.acquire(b, Work::Query, wait).await.unwrap();
        // The global limit (3) is reached: b waits, then is refused after its wait.
        let started = std::time::Instant::now();
        assert!(shares.acquire(b, Work::Query, wait).await.is_err());
        assert!(started.elapsed() >= wait);
        // A finished query gives both its slots back.
        drop(a1);
        let _b2 = shares.acquire(b, Work::Query, wait).await.unwrap();
        assert!(
            shares.acquire(a, Work::Query, wait).await.is_err(),
            "global is full again"
        );
    }

    #[tokio::test]
    async fn a_request_that_goes_away_while_waiting_gives_its_tenant_slot_back() {
        let s = Share {
            per_tenant: 1,
            global: 1,
        };
        let shares = std::sync::Arc::new(Shares::new(s, s, s));
        let (a, b) = (tenant(), tenant());
        let busy = shares
            .acquire(a, Work::Upload, Duration::ZERO)
            .await
            .unwrap();
        // b waits for the global slot, then its client disconnects (the future is dropped).
        let waiting = {
            let shares = shares.clone();
            tokio::spawn(async move {
                shares
                    .acquire(b, Work::Upload, Duration::from_secs(30))
                    .await
                    .map(|_| ())
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(busy);
        // b's slot came back: it can run at once.
        assert!(
            shares
                .acquire(b, Work::Upload, Duration::from_millis(50))
                .await
                .is_ok()
        );
    }
}
