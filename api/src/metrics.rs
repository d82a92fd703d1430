//! Prometheus metrics in text format: request latency histograms by route and status, events
//! appended, idempotent replays, projection lag.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; 13],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
    pub events_appended: AtomicU64,
    pub idempotent_replays: AtomicU64,
    pub blocked_attempts: AtomicU64,
    pub grace_entries: AtomicU64,
    pub upgrades: AtomicU64,
    pub upgrades_after_block: AtomicU64,
}

impl Metrics {
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut map = self.requests.lock().expect("metrics lock");
        let h = map
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default();
        let bucket = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        h.counts[bucket] += 1;
        h.sum += seconds;
        h.count += 1;
    }

    pub fn appended(&self, events: usize) {
        self.events_appended
            .fetch_add(events as u64, Ordering::Relaxed);
    }

    /// The exposition text; `lag` is each projection's distance behind the log's head.
    pub fn render(&self, lag: &[(&str, u64)]) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP tenantry_http_request_duration_seconds Request latency by route and status.\n",
        );
        out.push_str("# TYPE tenantry_http_request_duration_seconds histogram\n");
        let map = self.requests.lock().expect("metrics lock");
        for ((method, route, status), h) in map.iter() {
            let labels = format!(
                "method=\"{method}\",route=\"{}\",status=\"{status}\"",
                escape(route)
            );
            let mut cumulative = 0;
            for (i, le) in BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                let _ = writeln!(
                    out,
                    "tenantry_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "tenantry_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "tenantry_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "tenantry_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        drop(map);
        let _ = writeln!(
            out,
            "# HELP tenantry_events_appended_total Events appended by this instance."
        );
        let _ = writeln!(out, "# TYPE tenantry_events_appended_total counter");
        let _ = writeln!(
            out,
            "tenantry_events_appended_total {}",
            self.events_appended.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP tenantry_idempotent_replays_total Responses replayed for a repeated Idempotency-Key."
        );
        let _ = writeln!(out, "# TYPE tenantry_idempotent_replays_total counter");
        let _ = writeln!(
            out,
            "tenantry_idempotent_replays_total {}",
            self.idempotent_replays.load(Ordering::Relaxed)
        );
        for (name, help, value) in [
            (
                "tenantry_quota_blocked_attempts_total",
                "Metered requests refused with 402.",
                &self.blocked_attempts,
            ),
            (
                "tenantry_quota_grace_entries_total",
                "Meters that entered their grace period.",
                &self.grace_entries,
            ),
            (
                "tenantry_plan_upgrades_total",
                "Plan upgrades.",
                &self.upgrades,
            ),
            (
                "tenantry_plan_upgrades_after_block_total",
                "Plan upgrades within 7 days of a blocked attempt.",
                &self.upgrades_after_block,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP tenantry_projection_lag_events Events in the log not yet applied, per projection."
        );
        let _ = writeln!(out, "# TYPE tenantry_projection_lag_events gauge");
        for (name, behind) in lag {
            let _ = writeln!(
                out,
                "tenantry_projection_lag_events{{projection=\"{name}\"}} {behind}"
            );
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
