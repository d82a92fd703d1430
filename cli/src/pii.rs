//! `tenantry pii scrub` and `tenantry pii scan`: the PII engine on standard input.

use domain::pii::{self, Detector, Method};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};

/// The only preset that exists outside a tenant: every detector, replaced by its name.
pub const DEFAULT_PRESET: &str = "default";

/// Which detectors and method a command line asks for.
#[derive(Clone, Debug)]
pub struct Options {
    pub detectors: Vec<Detector>,
    pub method: Method,
    pub key: Vec<u8>,
    /// Where phone numbers without a country code are looked up first (`TENANTRY_PII_REGION`,
    /// an ISO 3166 code such as `DE`).
    pub settings: pii::Settings,
}

impl Options {
    pub fn new(
        preset: Option<&str>,
        detectors: Option<&str>,
        method: Option<&str>,
        key: Option<&str>,
    ) -> anyhow::Result<Self> {
        if let Some(p) = preset
            && p != DEFAULT_PRESET
        {
            anyhow::bail!(
                "unknown preset {p:?}: only \"default\" exists outside a tenant (tenants' presets live in the service)"
            );
        }
        let detectors = match detectors {
            None => Detector::ALL.to_vec(),
            Some(list) => list
                .split(',')
                .map(|d| d.trim().parse::<Detector>().map_err(|e| anyhow::anyhow!(e)))
                .collect::<anyhow::Result<Vec<_>>>()?,
        };
        let method = match method {
            None => Method::Replace,
            Some(m) => m.parse::<Method>().map_err(|e| anyhow::anyhow!(e))?,
        };
        let key = match (method, key) {
            (Method::Hash, None) => {
                anyhow::bail!("--method hash needs --key (or TENANTRY_PII_KEY)")
            }
            (_, k) => k.unwrap_or_default().as_bytes().to_vec(),
        };
        let settings = pii::Settings {
            default_region: match std::env::var("TENANTRY_PII_REGION") {
                Ok(r) if !r.is_empty() => Some(
                    r.parse()
                        .map_err(|e: String| anyhow::anyhow!("TENANTRY_PII_REGION: {e}"))?,
                ),
                _ => None,
            },
        };
        Ok(Self {
            detectors,
            method,
            key,
            settings,
        })
    }
}

/// Read lines, call `each(line_number, line)`; a line that is not UTF-8 is an error naming it.
fn for_each_line(
    input: &mut impl BufRead,
    mut each: impl FnMut(usize, &str, bool) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        n += 1;
        let newline = buf.last() == Some(&b'\n');
        if newline {
            buf.pop();
        }
        let line = std::str::from_utf8(&buf).map_err(|e| {
            anyhow::anyhow!("line {n} is not valid UTF-8 (byte {})", e.valid_up_to() + 1)
        })?;
        each(n, line, newline)?;
    }
}

/// Scrub each line of `input` into `output`, one line out for each line in.
pub fn scrub(
    opts: &Options,
    input: &mut impl BufRead,
    output: &mut impl Write,
) -> anyhow::Result<()> {
    for_each_line(input, |_, line, newline| {
        output.write_all(
            pii::scrub_with(
                line,
                &opts.detectors,
                opts.method,
                &opts.key,
                &opts.settings,
            )
            .as_bytes(),
        )?;
        if newline {
            output.write_all(b"\n")?;
        }
        Ok(())
    })?;
    output.flush()?;
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct ScanFinding {
    pub line: usize,
    pub detector: Detector,
    /// Byte offsets within the line.
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Serialize)]
pub struct ScanReport {
    pub lines: usize,
    pub counts: BTreeMap<Detector, usize>,
    pub findings: Vec<ScanFinding>,
}

/// Every finding of `input`, by line; values are never printed.
pub fn scan(opts: &Options, input: &mut impl BufRead) -> anyhow::Result<ScanReport> {
    let mut report = ScanReport {
        lines: 0,
        counts: BTreeMap::new(),
        findings: Vec::new(),
    };
    for_each_line(input, |n, line, _| {
        report.lines = n;
        for f in pii::scan_with(line, &opts.detectors, &opts.settings) {
            *report.counts.entry(f.detector).or_default() += 1;
            report.findings.push(ScanFinding {
                line: n,
                detector: f.detector,
                start: f.start,
                end: f.end,
            });
        }
        Ok(())
    })?;
    Ok(report)
}

#[derive(Debug, Serialize)]
pub struct PiiBenchReport {
    pub bytes: usize,
    pub seconds: f64,
    pub mb_per_sec: f64,
    pub findings: usize,
}

/// Scan `megabytes` of realistic mixed text on one core.
pub fn bench(megabytes: usize) -> PiiBenchReport {
    let text = fixtures::pii_corpus::mixed_text(42, megabytes * 1_000_000);
    let started = std::time::Instant::now();
    let mut findings = 0;
    for line in text.lines() {
        findings += pii::scan(line, Detector::ALL).len();
    }
    let seconds = started.elapsed().as_secs_f64();
    PiiBenchReport {
        bytes: text.len(),
        seconds,
        mb_per_sec: text.len() as f64 / 1e6 / seconds,
        findings,
    }
}

#[derive(Debug, Serialize)]
pub struct DataBenchReport {
    pub rows: usize,
    pub csv_bytes: usize,
    pub ingest_seconds: f64,
    pub load_seconds: f64,
    pub group_by_seconds: f64,
    pub load_and_group_by_seconds: f64,
    pub export_seconds: f64,
    pub export_bytes: u64,
    pub export_badge: dataplane::export::Badge,
}

/// The data-plane numbers: ingest (type inference) of a `rows` × 10 CSV, loading it into the
/// sandbox, a GROUP BY over it, and an export of all of it with the default preset.
pub fn bench_data(rows: usize) -> anyhow::Result<DataBenchReport> {
    use dataplane::sandbox::{Limits, Table};
    use std::time::Instant;
    let csv = fixtures::pii_corpus::dataset_csv(7, rows);
    let t = Instant::now();
    let described = dataplane::ingest::ingest(csv.as_bytes())?;
    let ingest_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let table = Table::load(csv.as_bytes(), &described.columns)?;
    let load_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let grouped = table.query(
        "SELECT city, count(*) FROM data GROUP BY city",
        Limits::default(),
    )?;
    let group_by_seconds = t.elapsed().as_secs_f64();
    anyhow::ensure!(!grouped.rows.is_empty(), "the group-by returned nothing");
    let t = Instant::now();
    let all = table.query(
        "SELECT * FROM data",
        Limits {
            max_rows: rows + 1,
            max_result_bytes: usize::MAX,
            time: std::time::Duration::from_secs(600),
            since: None,
        },
    )?;
    let exported = dataplane::export::export(
        &all,
        dataplane::export::Format::Csv,
        &dataplane::export::Rules::default_preset(),
        b"bench",
    );
    let export_seconds = t.elapsed().as_secs_f64();
    Ok(DataBenchReport {
        rows,
        csv_bytes: csv.len(),
        ingest_seconds,
        load_seconds,
        group_by_seconds,
        load_and_group_by_seconds: load_seconds + group_by_seconds,
        export_seconds,
        export_bytes: exported.size,
        export_badge: exported.badge,
    })
}
