//! Prometheus metrics, encoded by the `prometheus-client` crate (OpenMetrics text): request
//! latency histograms by method, route and status, events appended, idempotent replays, quota
//! counters, projection lag.
//!
//! Labels are bounded: the method is one of the standard ones or `other`, the route is the
//! matched pattern of the route table or `unmatched`, the status is a number. A client inventing
//! methods or paths cannot grow the exposition.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Routes the SLOs leave out: health checks and scrapes.
const NOT_IN_SLO: &[&str] = &["/readyz", "/healthz", "/livez", "/metrics"];

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms)]
enum Method {
    GET,
    HEAD,
    POST,
    PUT,
    PATCH,
    DELETE,
    OPTIONS,
    /// Anything else a client sends.
    OTHER,
}

impl Method {
    fn of(method: &str) -> Self {
        match method {
            "GET" => Method::GET,
            "HEAD" => Method::HEAD,
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            "DELETE" => Method::DELETE,
            "OPTIONS" => Method::OPTIONS,
            _ => Method::OTHER,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: Method,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectionLabels {
    projection: String,
}

type Requests = Family<RequestLabels, Histogram, fn() -> Histogram>;

#[derive(Debug)]
pub struct Metrics {
    requests: Requests,
    pub idempotent_replays: AtomicU64,
    pub signups_limited: AtomicU64,
    /// Requests the canary rehearsal's fault applied to (`Settings::fault`, ADR 033).
    pub fault_seen: AtomicU64,
    /// The same requests counted per second and minute for the in-process SLOs
    /// (`GET /v1/ops/slo`, `app::slo`).
    pub slo: app::slo::Recorder,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS.iter().copied())
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::new_with_constructor(latency_histogram),
            idempotent_replays: AtomicU64::new(0),
            signups_limited: AtomicU64::new(0),
            fault_seen: AtomicU64::new(0),
            slo: app::slo::Recorder::default(),
        }
    }
}

impl Metrics {
    /// One request's latency. `route` must be a pattern of the route table or `unmatched`.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: Method::of(method),
                route: route.to_owned(),
                status,
            })
            .observe(seconds);
        // Health checks and scrapes are not requests of the SLO: `/readyz` answers 503 while
        // this instance applies another's writes (ADR 033; the rules in ops/prometheus agree).
        if !NOT_IN_SLO.contains(&route) {
            self.slo.record(
                unix_seconds_now(),
                app::slo::Counts::of(method, status, seconds),
            );
        }
    }

    /// The in-process SLO report: every window divided by `scale` (1: as stated).
    pub fn slo_report(&self, scale: u64) -> app::slo::SloReport {
        let now = unix_seconds_now();
        app::slo::evaluate(|seconds| self.slo.window(now, seconds), scale)
    }

    /// The exposition text: the edge's counters and the application's (`counters`); `lag` is
    /// each projection's distance behind the log's head.
    /// `gauges` are the service's other readings: name, help and value.
    pub fn render(
        &self,
        counters: &app::Counters,
        lag: &[(&str, u64)],
        gauges: &[(&str, &str, u64)],
    ) -> String {
        let mut registry = Registry::with_prefix("tenantry");
        registry.register(
            "http_request_duration_seconds",
            "Request latency by method, route and status",
            self.requests.clone(),
        );
        for (name, help, value) in [
            (
                "events_appended",
                "Events appended by this instance",
                &counters.events_appended,
            ),
            (
                "idempotent_replays",
                "Responses replayed for a repeated Idempotency-Key",
                &self.idempotent_replays,
            ),
            (
                "quota_blocked_attempts",
                "Metered requests refused with 402",
                &counters.blocked_attempts,
            ),
            (
                "quota_grace_entries",
                "Meters that entered their grace period",
                &counters.grace_entries,
            ),
            ("plan_upgrades", "Plan upgrades", &counters.upgrades),
            (
                "plan_upgrades_after_block",
                "Plan upgrades within 7 days of a blocked attempt",
                &counters.upgrades_after_block,
            ),
            (
                "signups_rate_limited",
                "Sign-ups refused by the per-address rate limit",
                &self.signups_limited,
            ),
        ] {
            registry.register(name, help, ConstCounter::new(value.load(Ordering::Relaxed)));
        }
        if let Some(bytes) = resident_memory_bytes() {
            // What the soak watches for growth (`tenantry soak`, ADR 033).
            let rss = Gauge::<i64>::default();
            rss.set(i64::try_from(bytes).unwrap_or(i64::MAX));
            registry.register(
                "process_resident_memory_bytes",
                "Resident memory of this process (Linux /proc/self/status VmRSS)",
                rss,
            );
        }
        for (name, help, value) in gauges {
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::try_from(*value).unwrap_or(i64::MAX));
            registry.register(*name, *help, gauge);
        }
        let lag_family = Family::<ProjectionLabels, Gauge>::default();
        for (name, events) in lag {
            lag_family
                .get_or_create(&ProjectionLabels {
                    projection: (*name).to_owned(),
                })
                .set(i64::try_from(*events).unwrap_or(i64::MAX));
        }
        registry.register(
            "projection_lag_events",
            "Events in the log not yet applied, per projection",
            lag_family,
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("encoding into a String cannot fail");
        out
    }
}

/// This process's resident memory, where `/proc` tells it (Linux).
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn unix_seconds_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label_value() {
        let m = Metrics::default();
        for method in ["GET", "BREW", "PROPFIND", "X-ANYTHING"] {
            m.observe_request(method, "/v1/me", 200, 0.001);
        }
        let text = m.render(
            &app::Counters::default(),
            &[("identity", 3)],
            &[("dataset_cache_bytes", "Cached", 42)],
        );
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tenantry_http_request_duration_seconds_count"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(text.contains(r#"method="OTHER""#), "{text}");
        assert!(!text.contains("BREW"), "{text}");
        assert!(
            text.contains(r#"tenantry_projection_lag_events{projection="identity"} 3"#),
            "{text}"
        );
        assert!(text.contains("tenantry_events_appended_total 0"), "{text}");
        assert!(text.contains("tenantry_dataset_cache_bytes 42"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn readiness_503s_do_not_count_against_the_slo() {
        let m = Metrics::default();
        for _ in 0..10 {
            m.observe_request("GET", "/readyz", 503, 0.001);
            m.observe_request("GET", "/metrics", 200, 0.001);
        }
        m.observe_request("GET", "/v1/plans", 200, 0.001);
        let report = m.slo_report(1);
        let availability = report
            .slos
            .iter()
            .find(|s| s.slo == "availability")
            .unwrap();
        let five = availability
            .windows
            .iter()
            .find(|w| w.window == "5m")
            .unwrap();
        assert_eq!((five.events, five.bad), (1, 0));
        assert!(report.firing.is_empty(), "{:?}", report.firing);
    }

    #[test]
    fn resident_memory_is_exposed_on_linux() {
        let text = Metrics::default().render(&app::Counters::default(), &[], &[]);
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("tenantry_process_resident_memory_bytes "))
            .expect("the gauge is there on Linux")
            .parse()
            .unwrap();
        assert!(rss > 1_000_000.0, "{text}");
    }
}
