//! Typed settings: defaults, then a TOML file, then `TENANTRY_*` environment variables, then the
//! command line. Secrets never appear in `Debug`.

use domain::Flag;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use store::Location;

/// A secret setting: kept as given, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: String,
    pub store: Location,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// How long a newly issued token is valid.
    pub token_ttl_days: i64,
    /// How long a read with `min_position` waits for the projections.
    pub read_wait_ms: u64,
    /// Flag defaults for every tenant; tenants get overrides by platform ops.
    pub flags: BTreeMap<Flag, bool>,
    /// `json`, `pretty`, or `auto` (pretty in a terminal, JSON otherwise).
    pub log_format: String,
    /// The public base URL, used in links such as `upgrade_url`.
    pub public_url: String,
    /// Largest dataset upload, in bytes.
    pub dataset_limit: usize,
    /// A query's time budget, in milliseconds.
    pub query_time_ms: u64,
    /// Most rows a query answers with (more is cut, marked `truncated`).
    pub query_max_rows: usize,
    /// Most rows an export writes.
    pub export_max_rows: usize,
    /// Disk for datasets kept loaded for querying, in bytes: the files of the loaded tables
    /// (256 MiB by default; ADR 040).
    pub sandbox_cache_bytes: usize,
    /// Where the loaded tables' files go (a directory of the process's own is made in it): by
    /// default `sandbox/` in an embedded store's directory, the system's temporary directory
    /// with PostgreSQL.
    pub sandbox_dir: Option<PathBuf>,
    /// The plan registry: the defaults of SPEC §4 with the `[plans.<name>]` overrides.
    pub plans: domain::plans::Registry,
    /// Anonymous sign-ups per minute per client address (0: no limit).
    pub signup_per_minute: u32,
    /// Take the client address from the first `X-Forwarded-For` entry (only behind a proxy that
    /// sets it; otherwise a client could choose its own address).
    pub trust_forwarded_for: bool,
    /// The bearer token that `/metrics` asks for. Without one, `/metrics` answers loopback
    /// clients only.
    pub metrics_token: Option<Secret>,
    /// Where the outbox writes invites and sign-in codes, one file per message (ADR 030);
    /// without it, `outbox/` in an embedded store's directory (a PostgreSQL service without it
    /// keeps messages owed in the log until one is set).
    pub outbox_dir: Option<PathBuf>,
    /// An SMTP relay for the outbox instead of the directory (a lettre connection URL:
    /// `smtps://user:pass@host:465`, `smtp://host:587?tls=required`, `smtp://localhost:25`).
    pub smtp_url: Option<Secret>,
    /// The sender of the outbox's mail.
    pub smtp_from: String,
    /// How many queries one tenant may run at once (uploads and exports: half, at least 1).
    pub concurrency_per_tenant: usize,
    /// How often the service applies every tenant's retention policy (erasing personal data
    /// past its window, ADR 032), in seconds; 0: never (then `tenantry retention apply`).
    pub retention_interval_secs: u64,
    /// How many queries may run at once in this instance (uploads and exports: half).
    pub concurrency_global: usize,
    /// The store's time limits and queue (ADR 011): lock wait, statement, one group commit, in
    /// milliseconds; appends allowed to wait for the writer.
    pub store_lock_timeout_ms: u64,
    pub store_statement_timeout_ms: u64,
    pub store_write_timeout_ms: u64,
    pub store_append_queue: usize,
    /// When the nightly billing run starts (UTC `HH:MM`; `None`: never): finalize the previous
    /// month after its 24-hour grace, charge what is due, reconcile yesterday (ADR 024).
    pub billing_nightly_at: Option<String>,
    /// The Stripe API's base URL, and its secret keys for `active_test` and `active_live`
    /// tenants; without a key nothing of that mode is charged.
    pub stripe_base_url: String,
    pub stripe_test_key: Option<Secret>,
    pub stripe_live_key: Option<Secret>,
    /// A canary rehearsal's "bad build" (ADR 033): this instance alone answers this share of
    /// requests 503 `drill-injected` and adds this latency, never to `/v1/ops/`, `/metrics` or
    /// the health checks, and writes no event (unlike a drill, which every instance follows).
    /// 0 (the default) in production.
    pub fault_error_ratio: f64,
    pub fault_added_latency_ms: u64,
}

impl Settings {
    /// The canary rehearsal's fault for a request to `path` (`fault_error_ratio`, ADR 033);
    /// `seen` counts the requests it applies to. Exact like a drill's: the k-th fails when
    /// ⌊k·ratio⌋ moves.
    pub fn fault(&self, path: &str, seen: &AtomicU64) -> Option<app::slo::Injection> {
        if (self.fault_error_ratio <= 0.0 && self.fault_added_latency_ms == 0)
            || ["/v1/ops/", "/metrics", "/healthz", "/readyz", "/livez"]
                .iter()
                .any(|p| path.starts_with(p))
        {
            return None;
        }
        let k = seen.fetch_add(1, Ordering::Relaxed) as f64;
        let r = self.fault_error_ratio;
        Some(app::slo::Injection {
            fail: ((k + 1.0) * r).floor() > (k * r).floor(),
            added_latency_ms: self.fault_added_latency_ms,
        })
    }
}

impl Default for Settings {
    fn default() -> Self {
        let defaults = store::StoreOptions::default();
        Self {
            listen: "127.0.0.1:8080".into(),
            store: Location::Embedded(PathBuf::from("./tenantry-data")),
            body_limit: 64 * 1024,
            token_ttl_days: 30,
            read_wait_ms: 2_000,
            flags: Flag::ALL.iter().map(|f| (*f, true)).collect(),
            log_format: "auto".into(),
            public_url: "http://127.0.0.1:8080".into(),
            dataset_limit: 50 * 1024 * 1024,
            query_time_ms: 5_000,
            query_max_rows: 10_000,
            export_max_rows: 2_000_000,
            sandbox_cache_bytes: 256 * 1024 * 1024,
            sandbox_dir: None,
            plans: domain::plans::Registry::default(),
            signup_per_minute: 20,
            trust_forwarded_for: false,
            metrics_token: None,
            outbox_dir: None,
            smtp_url: None,
            smtp_from: "Tenantry <no-reply@tenantry.invalid>".into(),
            concurrency_per_tenant: 4,
            retention_interval_secs: 3_600,
            concurrency_global: 16,
            store_lock_timeout_ms: defaults.lock_timeout.as_millis() as u64,
            store_statement_timeout_ms: defaults.statement_timeout.as_millis() as u64,
            store_write_timeout_ms: defaults.write_timeout.as_millis() as u64,
            store_append_queue: defaults.append_queue,
            billing_nightly_at: Some("02:00".into()),
            stripe_base_url: "https://api.stripe.com".into(),
            stripe_test_key: None,
            stripe_live_key: None,
            fault_error_ratio: 0.0,
            fault_added_latency_ms: 0,
        }
    }
}

/// The file form: every key optional. No `Debug`: it holds the raw store URL (a password).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    data: Option<PathBuf>,
    store: Option<String>,
    body_limit: Option<usize>,
    token_ttl_days: Option<i64>,
    read_wait_ms: Option<u64>,
    log_format: Option<String>,
    public_url: Option<String>,
    dataset_limit: Option<usize>,
    query_time_ms: Option<u64>,
    query_max_rows: Option<usize>,
    export_max_rows: Option<usize>,
    sandbox_cache_bytes: Option<usize>,
    sandbox_dir: Option<PathBuf>,
    signup_per_minute: Option<u32>,
    trust_forwarded_for: Option<bool>,
    metrics_token: Option<String>,
    outbox_dir: Option<PathBuf>,
    smtp_url: Option<String>,
    smtp_from: Option<String>,
    fault_error_ratio: Option<f64>,
    fault_added_latency_ms: Option<u64>,
    concurrency_per_tenant: Option<usize>,
    retention_interval_secs: Option<u64>,
    concurrency_global: Option<usize>,
    store_lock_timeout_ms: Option<u64>,
    store_statement_timeout_ms: Option<u64>,
    store_write_timeout_ms: Option<u64>,
    store_append_queue: Option<usize>,
    /// `HH:MM` UTC, or `off`.
    billing_nightly_at: Option<String>,
    stripe_base_url: Option<String>,
    stripe_test_key: Option<String>,
    stripe_live_key: Option<String>,
    #[serde(default)]
    flags: BTreeMap<String, bool>,
    #[serde(default)]
    plans: BTreeMap<String, domain::plans::PlanOverride>,
}

impl Settings {
    /// The nightly billing run these settings ask for (ADR 024).
    pub fn billing_nightly(&self) -> Option<app::billing::Nightly> {
        let at = parse_hh_mm(self.billing_nightly_at.as_deref()?)?;
        let stripe = |key: &Option<Secret>| -> std::sync::Arc<dyn app::payments::PaymentProvider> {
            match key {
                Some(k) => std::sync::Arc::new(app::payments::Stripe::new(
                    self.stripe_base_url.clone(),
                    k.0.clone(),
                    std::time::Duration::from_secs(30),
                )),
                None => std::sync::Arc::new(app::payments::Unconfigured),
            }
        };
        let providers = (self.stripe_test_key.is_some() || self.stripe_live_key.is_some())
            .then(|| (stripe(&self.stripe_test_key), stripe(&self.stripe_live_key)));
        Some(app::billing::Nightly { at, providers })
    }

    /// The store's limits from these settings (the rest at their defaults).
    pub fn store_options(&self) -> store::StoreOptions {
        let ms = std::time::Duration::from_millis;
        store::StoreOptions {
            append_queue: self.store_append_queue,
            lock_timeout: ms(self.store_lock_timeout_ms),
            statement_timeout: ms(self.store_statement_timeout_ms),
            write_timeout: ms(self.store_write_timeout_ms),
            ..store::StoreOptions::default()
        }
    }

    /// What the use cases are configured with.
    /// Where the outbox delivers (ADR 030).
    pub fn outbox_transport(&self) -> app::outbox::Transport {
        if let Some(url) = &self.smtp_url {
            return app::outbox::Transport::smtp(&url.0, &self.smtp_from).unwrap_or_else(|e| {
                tracing::error!(error = %e, "the SMTP transport is invalid: nothing is delivered");
                app::outbox::Transport::None
            });
        }
        match (&self.outbox_dir, &self.store) {
            (Some(dir), _) => app::outbox::Transport::Directory(dir.clone()),
            (None, Location::Embedded(dir)) => {
                app::outbox::Transport::Directory(dir.join("outbox"))
            }
            (None, _) => app::outbox::Transport::None,
        }
    }

    pub fn app_config(&self) -> app::Config {
        let ms = std::time::Duration::from_millis;
        app::Config {
            public_url: self.public_url.clone(),
            plans: self.plans.clone(),
            token_ttl_days: self.token_ttl_days,
            read_wait: ms(self.read_wait_ms),
            flags: self.flags.clone(),
            dataset_limit: self.dataset_limit,
            query_time: ms(self.query_time_ms),
            query_max_rows: self.query_max_rows,
            export_max_rows: self.export_max_rows,
            sandbox_cache_bytes: self.sandbox_cache_bytes,
            sandbox_dir: Some(match (&self.sandbox_dir, &self.store) {
                (Some(dir), _) => dir.clone(),
                (None, Location::Embedded(data)) => data.join("sandbox"),
                (None, _) => std::env::temp_dir(),
            }),
            concurrency_per_tenant: self.concurrency_per_tenant,
            concurrency_global: self.concurrency_global,
            refusal_timer: true,
        }
    }

    /// Defaults, then `file` (if given), then the environment.
    pub fn load(file: Option<&Path>, env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut s = Settings::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read settings file {}: {e}", path.display())
            })?;
            let f: FileSettings = toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("settings file {}: {e}", path.display()))?;
            s.apply_file(f)?;
        }
        s.apply_env(env)?;
        s.validate()?;
        Ok(s)
    }

    fn apply_file(&mut self, f: FileSettings) -> anyhow::Result<()> {
        if let Some(v) = f.listen {
            self.listen = v;
        }
        if let Some(v) = f.data {
            self.store = Location::Embedded(v);
        }
        if let Some(v) = f.store {
            self.store = Location::Postgres(v);
        }
        if let Some(v) = f.body_limit {
            self.body_limit = v;
        }
        if let Some(v) = f.token_ttl_days {
            self.token_ttl_days = v;
        }
        if let Some(v) = f.read_wait_ms {
            self.read_wait_ms = v;
        }
        if let Some(v) = f.log_format {
            self.log_format = v;
        }
        if let Some(v) = f.public_url {
            self.public_url = v;
        }
        if let Some(v) = f.dataset_limit {
            self.dataset_limit = v;
        }
        if let Some(v) = f.query_time_ms {
            self.query_time_ms = v;
        }
        if let Some(v) = f.query_max_rows {
            self.query_max_rows = v;
        }
        if let Some(v) = f.export_max_rows {
            self.export_max_rows = v;
        }
        if let Some(v) = f.sandbox_cache_bytes {
            self.sandbox_cache_bytes = v;
        }
        if let Some(v) = f.sandbox_dir {
            self.sandbox_dir = Some(v);
        }
        if let Some(v) = f.signup_per_minute {
            self.signup_per_minute = v;
        }
        if let Some(v) = f.trust_forwarded_for {
            self.trust_forwarded_for = v;
        }
        if let Some(v) = f.metrics_token {
            self.metrics_token = Some(Secret(v));
        }
        if let Some(v) = f.outbox_dir {
            self.outbox_dir = Some(v);
        }
        if let Some(v) = f.smtp_url {
            self.smtp_url = Some(Secret(v));
        }
        if let Some(v) = f.smtp_from {
            self.smtp_from = v;
        }
        if let Some(v) = f.fault_error_ratio {
            self.fault_error_ratio = v;
        }
        if let Some(v) = f.fault_added_latency_ms {
            self.fault_added_latency_ms = v;
        }
        if let Some(v) = f.concurrency_per_tenant {
            self.concurrency_per_tenant = v;
        }
        if let Some(v) = f.retention_interval_secs {
            self.retention_interval_secs = v;
        }
        if let Some(v) = f.concurrency_global {
            self.concurrency_global = v;
        }
        if let Some(v) = f.store_lock_timeout_ms {
            self.store_lock_timeout_ms = v;
        }
        if let Some(v) = f.store_statement_timeout_ms {
            self.store_statement_timeout_ms = v;
        }
        if let Some(v) = f.store_write_timeout_ms {
            self.store_write_timeout_ms = v;
        }
        if let Some(v) = f.store_append_queue {
            self.store_append_queue = v;
        }
        if let Some(v) = f.billing_nightly_at {
            self.billing_nightly_at = (v != "off").then_some(v);
        }
        if let Some(v) = f.stripe_base_url {
            self.stripe_base_url = v;
        }
        if let Some(v) = f.stripe_test_key {
            self.stripe_test_key = Some(Secret(v));
        }
        if let Some(v) = f.stripe_live_key {
            self.stripe_live_key = Some(Secret(v));
        }
        let mut overrides = Vec::new();
        for (name, o) in &f.plans {
            let plan = domain::tenant::Plan::parse(name).ok_or_else(|| {
                anyhow::anyhow!("unknown plan {name:?} in [plans] (free, pro or enterprise)")
            })?;
            overrides.push((plan, o));
        }
        self.plans = domain::plans::Registry::with_overrides(overrides);
        for (name, on) in f.flags {
            let flag = Flag::from_str(&name).map_err(|e| anyhow::anyhow!(e))?;
            self.flags.insert(flag, on);
        }
        Ok(())
    }

    fn apply_env(&mut self, env: &[(String, String)]) -> anyhow::Result<()> {
        for (key, value) in env {
            let Some(name) = key.strip_prefix("TENANTRY_") else {
                continue;
            };
            let bad = |what: &str| anyhow::anyhow!("{key}={value:?}: {what}");
            match name {
                "LISTEN" => self.listen = value.clone(),
                "DATA" => self.store = Location::Embedded(value.into()),
                "STORE" => self.store = Location::Postgres(value.clone()),
                "BODY_LIMIT" => {
                    self.body_limit = value.parse().map_err(|_| bad("not a byte count"))?
                }
                "TOKEN_TTL_DAYS" => {
                    self.token_ttl_days = value.parse().map_err(|_| bad("not a number of days"))?
                }
                "READ_WAIT_MS" => {
                    self.read_wait_ms = value.parse().map_err(|_| bad("not milliseconds"))?
                }
                "LOG_FORMAT" => self.log_format = value.clone(),
                "PUBLIC_URL" => self.public_url = value.clone(),
                "DATASET_LIMIT" => {
                    self.dataset_limit = value.parse().map_err(|_| bad("not a byte count"))?
                }
                "QUERY_TIME_MS" => {
                    self.query_time_ms = value.parse().map_err(|_| bad("not milliseconds"))?
                }
                "QUERY_MAX_ROWS" => {
                    self.query_max_rows = value.parse().map_err(|_| bad("not a row count"))?
                }
                "EXPORT_MAX_ROWS" => {
                    self.export_max_rows = value.parse().map_err(|_| bad("not a row count"))?
                }
                "SANDBOX_CACHE_BYTES" => {
                    self.sandbox_cache_bytes = value.parse().map_err(|_| bad("not a byte count"))?
                }
                "SIGNUP_PER_MINUTE" => {
                    self.signup_per_minute = value.parse().map_err(|_| bad("not a count"))?
                }
                "TRUST_FORWARDED_FOR" => {
                    self.trust_forwarded_for = match value.to_ascii_lowercase().as_str() {
                        "1" | "true" | "on" | "yes" => true,
                        "0" | "false" | "off" | "no" => false,
                        _ => return Err(bad("expected on or off")),
                    }
                }
                "METRICS_TOKEN" => self.metrics_token = Some(Secret(value.clone())),
                "OUTBOX_DIR" => self.outbox_dir = Some(PathBuf::from(value)),
                "SANDBOX_DIR" => self.sandbox_dir = Some(PathBuf::from(value)),
                "SMTP_URL" => self.smtp_url = Some(Secret(value.clone())),
                "SMTP_FROM" => self.smtp_from = value.clone(),
                "FAULT_ERROR_RATIO" => {
                    self.fault_error_ratio = value.parse().map_err(|_| bad("not a ratio"))?
                }
                "FAULT_ADDED_LATENCY_MS" => {
                    self.fault_added_latency_ms =
                        value.parse().map_err(|_| bad("not milliseconds"))?
                }
                "CONCURRENCY_PER_TENANT" => {
                    self.concurrency_per_tenant = value.parse().map_err(|_| bad("not a count"))?
                }
                "RETENTION_INTERVAL_SECS" => {
                    self.retention_interval_secs = value.parse().map_err(|_| bad("not seconds"))?
                }
                "CONCURRENCY_GLOBAL" => {
                    self.concurrency_global = value.parse().map_err(|_| bad("not a count"))?
                }
                "STORE_LOCK_TIMEOUT_MS" => {
                    self.store_lock_timeout_ms =
                        value.parse().map_err(|_| bad("not milliseconds"))?
                }
                "STORE_STATEMENT_TIMEOUT_MS" => {
                    self.store_statement_timeout_ms =
                        value.parse().map_err(|_| bad("not milliseconds"))?
                }
                "STORE_WRITE_TIMEOUT_MS" => {
                    self.store_write_timeout_ms =
                        value.parse().map_err(|_| bad("not milliseconds"))?
                }
                "STORE_APPEND_QUEUE" => {
                    self.store_append_queue = value.parse().map_err(|_| bad("not a count"))?
                }
                "BILLING_NIGHTLY_AT" => {
                    self.billing_nightly_at = (value != "off").then(|| value.clone())
                }
                "STRIPE_BASE_URL" => self.stripe_base_url = value.clone(),
                "STRIPE_TEST_KEY" => self.stripe_test_key = Some(Secret(value.clone())),
                "STRIPE_LIVE_KEY" => self.stripe_live_key = Some(Secret(value.clone())),
                other => {
                    if let Some(flag) = other.strip_prefix("FLAG_") {
                        let flag = Flag::ALL
                            .iter()
                            .find(|f| f.as_str().eq_ignore_ascii_case(flag))
                            .ok_or_else(|| bad("unknown flag"))?;
                        let on = match value.to_ascii_lowercase().as_str() {
                            "1" | "true" | "on" | "yes" => true,
                            "0" | "false" | "off" | "no" => false,
                            _ => return Err(bad("expected on or off")),
                        };
                        self.flags.insert(*flag, on);
                    }
                    // Other TENANTRY_* variables (TENANTRY_LOG, TENANTRY_CONFIG) are read elsewhere.
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.smtp_url {
            app::outbox::Transport::smtp(&url.0, &self.smtp_from).map_err(anyhow::Error::msg)?;
        }
        if let Some(at) = &self.billing_nightly_at {
            anyhow::ensure!(
                parse_hh_mm(at).is_some(),
                "billing_nightly_at must be HH:MM (UTC) or off, not {at:?}"
            );
        }
        anyhow::ensure!(
            self.body_limit >= 1024,
            "body_limit must be at least 1024 bytes"
        );
        anyhow::ensure!(
            (1..=3650).contains(&self.token_ttl_days),
            "token_ttl_days must be between 1 and 3650"
        );
        anyhow::ensure!(
            self.dataset_limit >= 1024,
            "dataset_limit must be at least 1024 bytes"
        );
        anyhow::ensure!(
            (10..=600_000).contains(&self.query_time_ms),
            "query_time_ms must be between 10 and 600000"
        );
        anyhow::ensure!(
            self.query_max_rows >= 1 && self.export_max_rows >= 1,
            "row caps must be at least 1"
        );
        anyhow::ensure!(
            self.metrics_token
                .as_ref()
                .is_none_or(|t| t.0.len() >= 16 && t.0.bytes().all(|b| b.is_ascii_graphic())),
            "metrics_token must be at least 16 printable characters"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.fault_error_ratio) && self.fault_added_latency_ms <= 60_000,
            "fault_error_ratio must be 0 to 1 and fault_added_latency_ms at most 60000"
        );
        anyhow::ensure!(
            self.retention_interval_secs <= 31_536_000,
            "retention_interval_secs must be 0 (never) to 31536000 (a year)"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.concurrency_per_tenant)
                && (1..=100_000).contains(&self.concurrency_global)
                && self.concurrency_per_tenant <= self.concurrency_global,
            "concurrency_per_tenant must be 1 to concurrency_global"
        );
        anyhow::ensure!(
            (10..=3_600_000).contains(&self.store_lock_timeout_ms)
                && (10..=3_600_000).contains(&self.store_statement_timeout_ms)
                && (10..=3_600_000).contains(&self.store_write_timeout_ms)
                && (1..=10_000_000).contains(&self.store_append_queue),
            "store time limits must be 10 ms to 1 h, store_append_queue 1 to 10000000"
        );
        anyhow::ensure!(
            ["auto", "json", "pretty"].contains(&self.log_format.as_str()),
            "log_format must be auto, json or pretty"
        );
        Ok(())
    }

    /// Whether `flag` is on for a tenant with these overrides.
    pub fn flag_enabled(&self, flag: Flag, overrides: &BTreeMap<Flag, bool>) -> bool {
        overrides
            .get(&flag)
            .or_else(|| self.flags.get(&flag))
            .copied()
            .unwrap_or(false)
    }
}

/// `HH:MM` as a time of day.
fn parse_hh_mm(s: &str) -> Option<time::Time> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    time::Time::from_hms(h.parse().ok()?, m.parse().ok()?, 0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn store_limits_come_from_the_settings() {
        let s = Settings::load(
            None,
            &env(&[
                ("TENANTRY_STORE_LOCK_TIMEOUT_MS", "250"),
                ("TENANTRY_STORE_APPEND_QUEUE", "64"),
            ]),
        )
        .unwrap();
        let o = s.store_options();
        assert_eq!(o.lock_timeout, std::time::Duration::from_millis(250));
        assert_eq!(o.append_queue, 64);
        assert_eq!(
            o.write_timeout,
            store::StoreOptions::default().write_timeout
        );
        assert!(Settings::load(None, &env(&[("TENANTRY_STORE_WRITE_TIMEOUT_MS", "0")])).is_err());
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let s = Settings::load(
            None,
            &env(&[
                (
                    "TENANTRY_STORE",
                    "postgres://tenantry:hunter2-secret@db.internal:5432/t",
                ),
                ("TENANTRY_METRICS_TOKEN", "scrape-token-0123456789"),
                (
                    "TENANTRY_SMTP_URL",
                    "smtp://mailer:smtp-pass-secret@relay.internal:25",
                ),
            ]),
        )
        .unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("smtp-pass-secret"), "{shown}");
        let transport = format!("{:?}", s.outbox_transport());
        assert!(!transport.contains("smtp-pass-secret"), "{transport}");
        assert!(transport.contains("Smtp"), "{transport}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(!shown.contains("scrape-token-0123456789"), "{shown}");
        assert!(
            shown.contains("db.internal"),
            "the rest of the URL still helps: {shown}"
        );
        assert_eq!(
            s.metrics_token,
            Some(Secret("scrape-token-0123456789".into()))
        );
        let short = Settings::load(None, &env(&[("TENANTRY_METRICS_TOKEN", "short")]));
        assert!(short.is_err());
    }

    #[test]
    fn defaults_then_file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tenantry.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9000\"\nbody_limit = 4096\n[flags]\nauditV12 = false\ninsightsV11 = false\n",
        )
        .unwrap();
        let s = Settings::load(
            Some(&file),
            &env(&[
                ("TENANTRY_BODY_LIMIT", "8192"),
                ("TENANTRY_FLAG_INSIGHTSV11", "on"),
            ]),
        )
        .unwrap();
        assert_eq!(s.listen, "0.0.0.0:9000");
        assert_eq!(s.body_limit, 8192, "the environment wins over the file");
        assert!(!s.flags[&Flag::AuditV12]);
        assert!(s.flags[&Flag::InsightsV11]);
        assert!(s.flags[&Flag::FeedbackMvp], "defaults stay");
    }

    #[test]
    fn bad_settings_are_refused_with_the_key_named() {
        let err = Settings::load(None, &env(&[("TENANTRY_BODY_LIMIT", "lots")])).unwrap_err();
        assert!(err.to_string().contains("TENANTRY_BODY_LIMIT"), "{err}");
        let err = Settings::load(None, &env(&[("TENANTRY_FLAG_NOPE", "on")])).unwrap_err();
        assert!(err.to_string().contains("unknown flag"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "lisen = \"typo\"\n").unwrap();
        let err = Settings::load(Some(&file), &[]).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn plans_can_be_overridden_in_the_settings_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(
            &file,
            "[plans.free]\nqueries = 500\nseats = 5\n[plans.enterprise]\nseats = 0\n",
        )
        .unwrap();
        let s = Settings::load(Some(&file), &[]).unwrap();
        let free = s.plans.get(domain::tenant::Plan::Free);
        assert_eq!((free.queries, free.exports, free.seats), (500, 20, Some(5)));
        // The version is the log's to give: publishing at start makes these version 2 (ADR 010).
        assert_eq!(s.plans.get(domain::tenant::Plan::Pro).queries, 20_000);
        std::fs::write(&file, "[plans.gold]\nqueries = 1\n").unwrap();
        assert!(
            Settings::load(Some(&file), &[])
                .unwrap_err()
                .to_string()
                .contains("gold")
        );
        std::fs::write(&file, "[plans.free]\nquerys = 1\n").unwrap();
        assert!(Settings::load(Some(&file), &[]).is_err());
    }

    #[test]
    fn tenant_overrides_win_over_defaults() {
        let s = Settings::default();
        let mut overrides = BTreeMap::new();
        assert!(s.flag_enabled(Flag::AuditV12, &overrides));
        overrides.insert(Flag::AuditV12, false);
        assert!(!s.flag_enabled(Flag::AuditV12, &overrides));
    }

    #[test]
    fn a_canary_fault_fails_its_exact_share_and_spares_ops_and_probes() {
        let s = Settings::load(
            None,
            &env(&[
                ("TENANTRY_FAULT_ERROR_RATIO", "0.25"),
                ("TENANTRY_FAULT_ADDED_LATENCY_MS", "7"),
            ]),
        )
        .unwrap();
        let seen = AtomicU64::new(0);
        let faults: Vec<_> = (0..100)
            .filter_map(|_| s.fault("/v1/tenant", &seen))
            .collect();
        assert_eq!(faults.len(), 100);
        assert_eq!(faults.iter().filter(|f| f.fail).count(), 25);
        assert!(faults.iter().all(|f| f.added_latency_ms == 7));
        for path in ["/v1/ops/slo", "/metrics", "/readyz", "/healthz"] {
            assert_eq!(s.fault(path, &seen), None, "{path}");
        }
        assert_eq!(Settings::default().fault("/v1/tenant", &seen), None);
        assert!(Settings::load(None, &env(&[("TENANTRY_FAULT_ERROR_RATIO", "1.5")])).is_err());
    }
}
