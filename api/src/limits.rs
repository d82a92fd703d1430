//! Rate limits at the door: anonymous sign-up per client address (GCRA, the `governor` crate).
//!
//! A sign-up costs an append and makes a tenant; without a limit one client makes a thousand in a
//! second. The limit is per address: the peer's IP address, or with `trust_forwarded_for` the
//! first address of `X-Forwarded-For` (only behind a proxy that sets it). Addresses not seen for a
//! while are forgotten, so a flood of distinct addresses cannot grow the table without bound.

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sign-ups per minute per client address, with a burst of the same size.
#[derive(Debug)]
pub struct SignupLimiter {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    checks: AtomicU64,
}

impl SignupLimiter {
    /// `per_minute == 0` turns the limit off.
    pub fn new(per_minute: u32) -> Self {
        Self {
            limiter: NonZeroU32::new(per_minute)
                .map(|n| RateLimiter::keyed(Quota::per_minute(n).allow_burst(n))),
            checks: AtomicU64::new(0),
        }
    }

    /// `Ok` to go ahead, or how long until this address may sign up again.
    pub fn check(&self, address: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        // Forget idle addresses now and then (cheap: amortized over many checks).
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&key_of(address)).map_err(|not_until| {
            not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ))
        })
    }
}

/// The key an address is limited under: an IPv4 address, or an IPv6 address's /64 (one host
/// commonly holds a whole /64, so per-address limits would not bind it).
fn key_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_burst_then_waits() {
        let l = SignupLimiter::new(3);
        let (a, b): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(l.check(a), Ok(()));
        }
        let wait = l.check(a).unwrap_err();
        assert!(
            wait > Duration::from_secs(1) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert_eq!(l.check(b), Ok(()), "another address is not limited");
    }

    #[test]
    fn an_ipv6_host_is_limited_by_its_64_not_per_address() {
        let l = SignupLimiter::new(2);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other_in_same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(l.check(one), Ok(()));
        assert_eq!(l.check(other_in_same_64), Ok(()));
        assert!(l.check("2001:db8:1:2::abcd".parse().unwrap()).is_err());
        assert_eq!(l.check(other_64), Ok(()));
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let l = SignupLimiter::new(0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..1_000 {
            assert_eq!(l.check(a), Ok(()));
        }
    }
}
