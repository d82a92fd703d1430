//! Where decision time comes from. `serve` reads the system clock; `tenantry seed` plays a
//! simulated calendar and hands each decision its own time through [`crate::Ctx`].

use time::OffsetDateTime;

/// The source of `now` for decisions made without an explicit time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> OffsetDateTime;
}

/// The system's clock, in UTC.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that always reads the same time (a simulation's start, a test's moment).
#[derive(Clone, Copy, Debug)]
pub struct FixedClock(pub OffsetDateTime);

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        self.0
    }
}
