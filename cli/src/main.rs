//! `tenantry`: run the service, benchmark the store, export the log.

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use store::{Location, Store};

#[derive(Parser, Debug)]
#[command(
    name = "tenantry",
    version,
    about = "Tenantry: an event-sourced multi-tenant analytics backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the store is: the embedded store in a folder (the default) or PostgreSQL.
#[derive(Args, Debug, Clone)]
struct StoreArgs {
    /// Folder of the embedded store.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "./tenantry-data",
        conflicts_with = "store"
    )]
    data: PathBuf,
    /// PostgreSQL URL (postgres://user@host:port/db) instead of the embedded store.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
}

impl StoreArgs {
    fn location(&self) -> Location {
        match &self.store {
            Some(url) => Location::Postgres(url.clone()),
            None => Location::Embedded(self.data.clone()),
        }
    }

    async fn open(&self) -> anyhow::Result<Store> {
        let location = self.location();
        Store::open(&location)
            .await
            .with_context(|| format!("cannot open the store at {}", describe(&location)))
    }
}

fn describe(location: &Location) -> String {
    match location {
        Location::Embedded(dir) => dir.display().to_string(),
        Location::Postgres(_) => "the PostgreSQL URL given".into(),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the HTTP service. Settings: defaults, then --config FILE (or $TENANTRY_CONFIG), then
    /// TENANTRY_* variables, then these flags.
    Serve {
        /// Settings file (TOML).
        #[arg(long, env = "TENANTRY_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
        /// Folder of the embedded store (default ./tenantry-data).
        #[arg(long, value_name = "DIR", conflicts_with = "store")]
        data: Option<PathBuf>,
        /// PostgreSQL URL instead of the embedded store.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
    },
    /// Platform operators.
    Operator {
        #[command(subcommand)]
        what: OperatorCommand,
    },
    /// Rebuild a projection (identity, audit, catalog; all when none is named) from position 1
    /// offline and save it with its checkpoint; report the rate. Under a running server use
    /// `POST /v1/ops/projections/{name}/rebuild` instead (no downtime).
    Rebuild {
        /// The projection to rebuild.
        name: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Recount usage from the raw log for UTC days [--from, --to) and compare it with the daily
    /// rollups and the finalized invoices (SPEC §5); prints the report, writes
    /// `reconciliation.completed`, exits 1 when a difference is found.
    Reconcile {
        /// First UTC day (YYYY-MM-DD).
        #[arg(long)]
        from: String,
        /// The day after the last (YYYY-MM-DD, exclusive).
        #[arg(long)]
        to: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write a realistic, deterministic history through the real command path.
    Seed {
        #[arg(long, default_value_t = 20)]
        tenants: usize,
        #[arg(long, default_value_t = 8)]
        weeks: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The Monday the simulated calendar starts on (YYYY-MM-DD).
        #[arg(long, default_value = "2026-01-05")]
        start: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// The PII engine on standard input.
    Pii {
        #[command(subcommand)]
        what: PiiCommand,
    },
    /// Generated documentation.
    Docs {
        #[command(subcommand)]
        what: DocsCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Read the event log.
    Events {
        #[command(subcommand)]
        what: EventsCommand,
    },
    /// Retention of personal data (ADR 032).
    Retention {
        #[command(subcommand)]
        what: RetentionCommand,
    },
    /// Alert drill against a running server (platform ops token): inject faults, show the page
    /// alert fire in `GET /v1/ops/slo`, stop, show it clear; prints a JSON report (ADR 028).
    Drill(cli::drill::DrillArgs),
    /// Soak running servers over HTTP (open loop, a realistic mix), then check every
    /// acknowledged write; writes soak-report.json and .md, prints the JSON, exits 1 when a
    /// bound does not hold (ADR 033).
    Soak(cli::soak::SoakArgs),
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Backend {
    Embedded,
    Postgres,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Audit log: one tenant's log of N events, the tree projection's cost per event, then one
    /// bundle of the whole log through `app::audit::bundle`. Prints one JSON object.
    Audit {
        #[arg(long, value_enum, default_value = "embedded")]
        backend: Backend,
        #[arg(long, env = "DATABASE_URL")]
        url: Option<String>,
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
    },
    /// Billing: N usage events over T Pro tenants in one month (tenant 0 gets U of them), then
    /// the preview of tenant 0, a reconciliation of the month and the month's invoices. Prints
    /// one JSON object.
    Billing {
        #[arg(long, value_enum, default_value = "embedded")]
        backend: Backend,
        #[arg(long, env = "DATABASE_URL")]
        url: Option<String>,
        #[arg(long, default_value_t = 1_000_000)]
        usage_events: u64,
        #[arg(long, default_value_t = 10_000)]
        tenants: u64,
        #[arg(long, default_value_t = 100_000)]
        preview_units: u64,
    },
    /// An Enterprise tenant with N usage events: the next unit decided by a cold executor.
    ColdStart {
        #[arg(long, value_enum, default_value = "embedded")]
        backend: Backend,
        #[arg(long, env = "DATABASE_URL")]
        url: Option<String>,
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
    },
    /// Feedback: submissions through the use case from many members at once for S seconds, then
    /// the triage board's filtered list over N items. Prints one JSON object.
    Feedback {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 1_000_000)]
        items: usize,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// SSO logins through the use case (signature, claims, replay guard, mapping, token) from C
    /// clients over T tenants, ID tokens signed beforehand (half RS256, half EdDSA). Prints one
    /// JSON object.
    Sso {
        #[arg(long, default_value_t = 8)]
        tenants: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 20_000)]
        logins: usize,
        /// Distinct users (their first login makes the member).
        #[arg(long, default_value_t = 1_000)]
        users: usize,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// SCIM: the directory read model with N users, then the list with a `userName eq` filter
    /// and a page half-way through, through the use case. Prints one JSON object.
    Scim {
        #[arg(long, default_value_t = 100_000)]
        users: usize,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// CSV invites end to end: a server on a fresh embedded store, R imports of N rows each
    /// through `POST /v1/invites/csv` (and their dry runs), timed. Prints one JSON object.
    Invites {
        #[arg(long, default_value_t = 10_000)]
        rows: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Sign-in by emailed code: a server on a fresh embedded store, N `POST /v1/sign-in` for
    /// members' emails and N for unknown ones, alternating; the p50 and p95 of each, and whether
    /// every answer was the same. Prints one JSON object.
    SignIn {
        #[arg(long, default_value_t = 200)]
        requests: usize,
    },
    /// Insights and first-success on a seeded store: rebuild both read models (events/s), then
    /// time the funnel, the cohorts and every user's onboarding view. Prints one JSON object.
    Insights {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Start-up on a long log: fill it to N events, rebuild every projection (events/s), then
    /// time a server to /readyz 200 from persisted projections and from position 1.
    Startup {
        #[arg(long, value_enum, default_value = "embedded")]
        backend: Backend,
        #[arg(long, env = "DATABASE_URL")]
        url: Option<String>,
        /// Folder for the embedded store, kept (and only topped up) across runs (default: a
        /// new temporary folder).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        #[arg(long, default_value_t = 1_000)]
        tenants: usize,
    },
    /// Metering over HTTP: POST /v1/usage spread over Enterprise tenants, then all on one.
    Usage {
        #[arg(long, value_enum, default_value = "embedded")]
        backend: Backend,
        #[arg(long, env = "DATABASE_URL")]
        url: Option<String>,
        #[arg(long, default_value_t = 20)]
        tenants: usize,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Noisy neighbour: tenant A saturates exports (and downloads) of a wide CSV from more
    /// clients than its fair share, tenant B runs small queries at a steady rate; a server in
    /// this process. Prints one JSON object: B's latency and errors, A's exports/s and 429s,
    /// peak RSS.
    Noisy {
        #[arg(long, value_enum, default_value = "embedded")]
        backend: Backend,
        #[arg(long, env = "DATABASE_URL")]
        url: Option<String>,
        /// Size of A's CSV in MB (10^6 bytes; the upload limit is 50 MiB).
        #[arg(long, default_value_t = 50)]
        mb: usize,
        #[arg(long, default_value_t = 40)]
        columns: usize,
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// A's concurrent export clients (its fair share is 2 running exports).
        #[arg(long, default_value_t = 6)]
        a_clients: usize,
        /// B's queries per second.
        #[arg(long, default_value_t = 20.0)]
        b_rate: f64,
    },
    /// Data plane: ingest, load and GROUP BY, and a default-preset export of a rows × 10 CSV.
    Data {
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
    },
    /// PII scan throughput on one core over realistic mixed text; prints one JSON object.
    Pii {
        /// Megabytes of text to scan.
        #[arg(long, default_value_t = 64)]
        mb: usize,
    },
    /// HTTP throughput and latency: sign up tenants, then drive them over keep-alive
    /// connections with a one-event command and an authenticated read. Prints one JSON object.
    Http {
        /// Start a server in this process on this store (ignored with --addr).
        #[arg(long, value_enum, default_value = "embedded")]
        backend: Backend,
        /// PostgreSQL URL for --backend postgres (default: $DATABASE_URL).
        #[arg(long, env = "DATABASE_URL")]
        url: Option<String>,
        /// Drive an already running server at HOST:PORT instead.
        #[arg(long)]
        addr: Option<String>,
        #[arg(long, default_value_t = 20)]
        tenants: usize,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Seconds per phase.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Append and read throughput of a store; prints one JSON object.
    Store {
        #[arg(long, value_enum, default_value = "embedded")]
        backend: Backend,
        /// PostgreSQL URL (default: $DATABASE_URL).
        #[arg(long, env = "DATABASE_URL")]
        url: Option<String>,
        /// Folder for the embedded store (default: a new temporary folder, removed after).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Concurrent writers.
        #[arg(long, default_value_t = 64)]
        writers: usize,
        /// Events to append in all.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Events per append.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// What to append: `usage` events, `member` (member.added-shaped, not personal), or
        /// `member-sealed` (member.added: personal fields sealed, ADR 032).
        #[arg(long, value_enum, default_value = "usage")]
        payload: PayloadArg,
    },
}

#[derive(Subcommand, Debug)]
enum OperatorCommand {
    /// Issue a platform-staff token (works whether or not a server runs on the same store).
    Token {
        #[arg(long)]
        role: domain::PlatformRole,
        /// Days until the token expires.
        #[arg(long, default_value_t = 30)]
        ttl_days: i64,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Args, Debug)]
struct PiiArgs {
    /// A redaction preset; outside a tenant only `default` (every detector, replace) exists.
    #[arg(long)]
    preset: Option<String>,
    /// Comma-separated detectors (default: all): email, phone, card, iban, ipv4, ipv6, ssn, jwt,
    /// bearer_token, secret, url_credentials, mac.
    #[arg(long)]
    detectors: Option<String>,
    /// remove, replace (default), mask or hash.
    #[arg(long)]
    method: Option<String>,
    /// The key of the hash method.
    #[arg(long, env = "TENANTRY_PII_KEY", hide_env_values = true)]
    key: Option<String>,
}

impl PiiArgs {
    fn options(&self) -> anyhow::Result<cli::pii::Options> {
        cli::pii::Options::new(
            self.preset.as_deref(),
            self.detectors.as_deref(),
            self.method.as_deref(),
            self.key.as_deref(),
        )
    }
}

#[derive(Subcommand, Debug)]
enum PiiCommand {
    /// Read UTF-8 lines on standard input; write each scrubbed, one line out for each line in.
    Scrub {
        #[command(flatten)]
        args: PiiArgs,
    },
    /// Read UTF-8 lines on standard input; print the findings (never the values) as JSON.
    Scan {
        #[command(flatten)]
        args: PiiArgs,
    },
}

#[derive(Subcommand, Debug)]
enum DocsCommand {
    /// The permission matrix (docs/permissions.md), from the table in code.
    Permissions,
    /// The OpenAPI 3.1 document the server serves at /openapi.json.
    Openapi,
}

/// The payloads of `tenantry bench store`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PayloadArg {
    Usage,
    Member,
    MemberSealed,
}

#[derive(Subcommand, Debug)]
enum RetentionCommand {
    /// Erase, now, every tenant's personal data past its retention window: record
    /// `erasure.applied`, then destroy the subject keys (finishing any half-done erasure first).
    /// Idempotent; prints a JSON report per tenant.
    Apply {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<domain::TenantId>,
    },
}

#[derive(Subcommand, Debug)]
enum EventsCommand {
    /// Write the log as JSON Lines, one envelope per line, in commit order.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        /// First global position to export.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Only this tenant's events.
        #[arg(long)]
        tenant: Option<domain::TenantId>,
    },
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Postgres => "postgres",
        }
    }
}

/// Where a benchmark's store lives: the folder given, a new temporary folder (removed when the
/// returned guard drops), or PostgreSQL at `url`.
fn bench_location(
    backend: Backend,
    url: Option<String>,
    data: Option<PathBuf>,
) -> anyhow::Result<(Location, Option<tempfile::TempDir>)> {
    Ok(match (backend, data) {
        (Backend::Embedded, Some(dir)) => (Location::Embedded(dir), None),
        (Backend::Embedded, None) => {
            let temp = tempfile::tempdir()?;
            (Location::Embedded(temp.path().to_path_buf()), Some(temp))
        }
        (Backend::Postgres, _) => (
            Location::Postgres(url.context("--url or DATABASE_URL is required for postgres")?),
            None,
        ),
    })
}

/// Start the service for a benchmark on a free local port.
fn start_bench_server(location: Location) -> anyhow::Result<String> {
    let settings = api::settings::Settings {
        listen: "127.0.0.1:0".into(),
        store: location.clone(),
        // The bench signs up its tenants from one address.
        signup_per_minute: 0,
        ..Default::default()
    };
    start_in_background(settings, location)
}

/// Start the service on its own thread (an actix system) and return where it listens.
fn start_in_background(
    settings: api::settings::Settings,
    location: Location,
) -> anyhow::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let store = match Store::open(&location).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            match api::server::start(settings, store).await {
                Ok(running) => {
                    let _ = tx.send(Ok(running.addrs[0].to_string()));
                    let _ = running.server.await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        })
    });
    rx.recv()?.map_err(|e| anyhow::anyhow!(e))
}

fn main() -> std::process::ExitCode {
    // Large transient buffers (checkpoints, exports, results) go back to the system when freed
    // (ADR 038), and before anything opens SQLite, tenants' SQL gets a memory budget of its own
    // (ADR 034).
    malloc_tuning::tune_for_server();
    dataplane::sandbox::split_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Soak(args) => runtime.block_on(async move {
            let report = cli::soak::run(&args).await?;
            cli::soak::write_report(&args.report_dir, &report)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            anyhow::ensure!(
                report.ok,
                "the soak did not hold its bounds (see {})",
                args.report_dir.join("soak-report.md").display()
            );
            anyhow::Ok(())
        }),
        Command::Drill(args) => runtime.block_on(async move {
            let report = cli::drill::run(&args).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            anyhow::ensure!(report.ok, "the drill's alert did not fire and clear");
            anyhow::Ok(())
        }),
        Command::Serve {
            config,
            listen,
            data,
            store,
        } => {
            let env: Vec<(String, String)> = std::env::vars().collect();
            let mut settings = api::settings::Settings::load(config.as_deref(), &env)?;
            if let Some(l) = listen {
                settings.listen = l;
            }
            if let Some(d) = data {
                settings.store = Location::Embedded(d);
            }
            if let Some(s) = store {
                settings.store = Location::Postgres(s);
            }
            api::telemetry::init(&settings.log_format);
            actix_web::rt::System::new().block_on(async move {
                let options = settings.store_options();
                let store = Store::open_with(&settings.store, &options)
                    .await
                    .with_context(|| {
                        format!("cannot open the store at {}", describe(&settings.store))
                    })?;
                api::server::serve(settings, store).await
            })
        }
        Command::Operator {
            what:
                OperatorCommand::Token {
                    role,
                    ttl_days,
                    store,
                },
        } => runtime.block_on(async move {
            api::telemetry::init("pretty");
            anyhow::ensure!(
                (1..=3650).contains(&ttl_days),
                "--ttl-days must be 1 to 3650"
            );
            let store = store.open().await?;
            let issued = cli::ops::issue_operator_token(&store, role, ttl_days).await?;
            store.close().await;
            println!("{}", serde_json::to_string_pretty(&issued)?);
            anyhow::Ok(())
        }),
        Command::Rebuild { name, store } => runtime.block_on(async move {
            api::telemetry::init("pretty");
            let store = store.open().await?;
            let report = cli::ops::rebuild(&store, name.as_deref()).await?;
            store.close().await;
            println!("{}", serde_json::to_string_pretty(&report)?);
            anyhow::Ok(())
        }),
        Command::Retention {
            what: RetentionCommand::Apply { store, tenant },
        } => runtime.block_on(async move {
            api::telemetry::init("pretty");
            let store = store.open().await?;
            let app = app::App::start(
                offline_config(),
                store.clone(),
                std::sync::Arc::new(app::SystemClock),
            )
            .await;
            let result = cli::retention::apply(&app, tenant).await;
            app.projections.shutdown().await;
            store.close().await;
            println!("{}", serde_json::to_string_pretty(&result?)?);
            anyhow::Ok(())
        }),
        Command::Reconcile { from, to, store } => runtime.block_on(async move {
            let (from, to) = (
                cli::billing::parse_day(&from, "--from")?,
                cli::billing::parse_day(&to, "--to")?,
            );
            anyhow::ensure!(from < to, "--to must be after --from");
            let store = store.open().await?;
            let app = app::App::start(
                offline_config(),
                store.clone(),
                std::sync::Arc::new(app::SystemClock),
            )
            .await;
            let result = cli::billing::reconcile(&app, from, to).await;
            app.projections.shutdown().await;
            store.close().await;
            let (report, clean) = result?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !clean {
                std::process::exit(1);
            }
            anyhow::Ok(())
        }),
        Command::Bench {
            what:
                BenchCommand::Audit {
                    backend,
                    url,
                    events,
                },
        } => runtime.block_on(async move {
            let (location, _temp) = bench_location(backend, url, None)?;
            let store = Store::open(&location).await?;
            let config = app::Config {
                refusal_timer: false,
                ..api::settings::Settings::default().app_config()
            };
            let report = cli::audit_bench::run(&store, config, events).await?;
            store.close().await;
            println!("{}", serde_json::to_string(&report)?);
            anyhow::Ok(())
        }),
        Command::Bench {
            what:
                BenchCommand::Billing {
                    backend,
                    url,
                    usage_events,
                    tenants,
                    preview_units,
                },
        } => runtime.block_on(async move {
            anyhow::ensure!(tenants >= 1, "--tenants must be at least 1");
            let (location, _temp) = bench_location(backend, url, None)?;
            let store = Store::open(&location).await?;
            let config = app::Config {
                refusal_timer: false,
                ..api::settings::Settings::default().app_config()
            };
            let report =
                cli::billing::bench(&store, config, usage_events, tenants, preview_units).await?;
            store.close().await;
            println!("{}", serde_json::to_string(&report)?);
            anyhow::Ok(())
        }),
        Command::Seed {
            tenants,
            weeks,
            seed,
            start,
            store,
        } => runtime.block_on(async move {
            api::telemetry::init("pretty");
            anyhow::ensure!(
                (1..=100_000).contains(&tenants),
                "--tenants must be 1 to 100000"
            );
            anyhow::ensure!((1..=520).contains(&weeks), "--weeks must be 1 to 520");
            let date = time::Date::parse(
                &start,
                &time::macros::format_description!("[year]-[month]-[day]"),
            )
            .with_context(|| format!("--start {start:?} is not YYYY-MM-DD"))?;
            let start = date.with_time(time::Time::MIDNIGHT).assume_utc();
            let store = store.open().await?;
            // Decisions carry their simulated time; the registry is published as of the start,
            // and the minute's coalesced refusals are written at the end of each simulated day.
            let config = app::Config {
                refusal_timer: false,
                ..offline_config()
            };
            let clock = std::sync::Arc::new(app::FixedClock(start));
            let app = app::App::start(config, store.clone(), clock).await;
            let report = cli::seed::seed(&app, tenants, weeks, seed, start).await?;
            app.projections.stop();
            store.close().await;
            println!("{}", serde_json::to_string_pretty(&report)?);
            anyhow::Ok(())
        }),
        Command::Pii {
            what: PiiCommand::Scrub { args },
        } => {
            let opts = args.options()?;
            let stdin = std::io::stdin();
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            cli::pii::scrub(&opts, &mut stdin.lock(), &mut out)
        }
        Command::Pii {
            what: PiiCommand::Scan { args },
        } => {
            let opts = args.options()?;
            let stdin = std::io::stdin();
            let report = cli::pii::scan(&opts, &mut stdin.lock())?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Usage {
                    backend,
                    url,
                    tenants,
                    connections,
                    seconds,
                },
        } => {
            api::telemetry::init("pretty");
            let cfg = cli::bench_http::HttpBench {
                tenants,
                connections,
                seconds,
            };
            let (location, _temp) = bench_location(backend, url, None)?;
            let addr = start_bench_server(location)?;
            let report = runtime.block_on(cli::bench_http::run_usage(
                &addr,
                backend.name().into(),
                &cfg,
            ))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::ColdStart {
                    backend,
                    url,
                    events,
                },
        } => runtime.block_on(async move {
            api::telemetry::init("pretty");
            anyhow::ensure!(
                (1..=100_000_000).contains(&events),
                "--events must be 1 to 100000000"
            );
            let (location, _temp) = bench_location(backend, url, None)?;
            let store = Store::open(&location).await?;
            let report = cli::bench::cold_start(&store, events).await?;
            store.close().await;
            println!("{}", serde_json::to_string(&report)?);
            anyhow::Ok(())
        }),
        Command::Bench {
            what:
                BenchCommand::Startup {
                    backend,
                    url,
                    data,
                    events,
                    tenants,
                },
        } => runtime.block_on(async move {
            api::telemetry::init("pretty");
            anyhow::ensure!(
                (1..=100_000_000).contains(&events),
                "--events must be 1 to 100000000"
            );
            let (location, _temp) = bench_location(backend, url, data)?;
            let store = Store::open(&location).await?;
            let report = cli::bench::startup(&store, &location, events, tenants).await?;
            store.close().await;
            println!("{}", serde_json::to_string(&report)?);
            anyhow::Ok(())
        }),
        Command::Bench {
            what:
                BenchCommand::Feedback {
                    seconds,
                    concurrency,
                    items,
                    store,
                },
        } => runtime.block_on(async move {
            api::telemetry::init("pretty");
            anyhow::ensure!(
                (1..=3_600).contains(&seconds),
                "--seconds must be 1 to 3600"
            );
            anyhow::ensure!(
                (1..=1_000).contains(&concurrency),
                "--concurrency must be 1 to 1000"
            );
            anyhow::ensure!(
                (1..=10_000_000).contains(&items),
                "--items must be 1 to 10000000"
            );
            let store = store.open().await?;
            let report = cli::bench_feedback::feedback(
                &store,
                offline_config(),
                seconds,
                concurrency,
                items,
            )
            .await?;
            store.close().await;
            println!("{}", serde_json::to_string(&report)?);
            anyhow::Ok(())
        }),
        Command::Bench {
            what:
                BenchCommand::Sso {
                    tenants,
                    concurrency,
                    logins,
                    users,
                    store,
                },
        } => runtime.block_on(async move {
            api::telemetry::init("pretty");
            anyhow::ensure!(
                (1..=1_000).contains(&tenants),
                "--tenants must be 1 to 1000"
            );
            anyhow::ensure!(
                (1..=1_000).contains(&concurrency),
                "--concurrency must be 1 to 1000"
            );
            anyhow::ensure!(
                (1..=10_000_000).contains(&logins),
                "--logins must be 1 to 10000000"
            );
            anyhow::ensure!(
                (1..=1_000_000).contains(&users),
                "--users must be 1 to 1000000"
            );
            let store = store.open().await?;
            let report = cli::bench_sso::sso(
                &store,
                offline_config(),
                tenants,
                concurrency,
                logins,
                users,
            )
            .await?;
            store.close().await;
            println!("{}", serde_json::to_string(&report)?);
            anyhow::Ok(())
        }),
        Command::Bench {
            what: BenchCommand::Scim { users, store },
        } => runtime.block_on(async move {
            api::telemetry::init("pretty");
            anyhow::ensure!(
                (1..=10_000_000).contains(&users),
                "--users must be 1 to 10000000"
            );
            let store = store.open().await?;
            let report = cli::bench_sso::scim(&store, offline_config(), users).await?;
            store.close().await;
            println!("{}", serde_json::to_string(&report)?);
            anyhow::Ok(())
        }),
        Command::Bench {
            what: BenchCommand::Invites { rows, runs },
        } => {
            let report = cli::bench_invites::invites(rows, runs)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Bench {
            what: BenchCommand::SignIn { requests },
        } => {
            let report = cli::bench_invites::sign_in(requests)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Bench {
            what: BenchCommand::Insights { store },
        } => runtime.block_on(async move {
            api::telemetry::init("pretty");
            let store = store.open().await?;
            let report = cli::bench_insights::insights(&store, offline_config()).await?;
            store.close().await;
            println!("{}", serde_json::to_string(&report)?);
            anyhow::Ok(())
        }),
        Command::Bench {
            what:
                BenchCommand::Noisy {
                    backend,
                    url,
                    mb,
                    columns,
                    seconds,
                    a_clients,
                    b_rate,
                },
        } => {
            anyhow::ensure!((1..=52).contains(&mb), "--mb must be 1 to 52");
            anyhow::ensure!(
                (2..=1_000).contains(&columns),
                "--columns must be 2 to 1000"
            );
            api::telemetry::init("pretty");
            let (location, _temp) = bench_location(backend, url, None)?;
            let addr = start_bench_server(location)?;
            let cfg = cli::bench::NoisyBench {
                mb,
                columns,
                seconds,
                a_clients,
                b_rate,
            };
            let report = cli::bench::noisy(&addr, backend.name().to_owned(), &cfg)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Bench {
            what: BenchCommand::Data { rows },
        } => {
            anyhow::ensure!(
                (1..=20_000_000).contains(&rows),
                "--rows must be 1 to 20000000"
            );
            println!("{}", serde_json::to_string(&cli::pii::bench_data(rows)?)?);
            Ok(())
        }
        Command::Bench {
            what: BenchCommand::Pii { mb },
        } => {
            anyhow::ensure!((1..=4096).contains(&mb), "--mb must be 1 to 4096");
            println!("{}", serde_json::to_string(&cli::pii::bench(mb))?);
            Ok(())
        }
        Command::Docs {
            what: DocsCommand::Permissions,
        } => {
            print!("{}", api::rbac::permissions_markdown());
            Ok(())
        }
        Command::Docs {
            what: DocsCommand::Openapi,
        } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&api::openapi::document())?
            );
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Store {
                    backend,
                    url,
                    data,
                    writers,
                    events,
                    batch,
                    payload,
                },
        } => runtime.block_on(async move {
            let (location, _temp) = bench_location(backend, url, data)?;
            let store = Store::open(&location).await?;
            let cfg = cli::bench::StoreBench {
                writers,
                events,
                batch,
                payload: match payload {
                    PayloadArg::Usage => cli::bench::BenchPayload::Usage,
                    PayloadArg::Member => cli::bench::BenchPayload::Member,
                    PayloadArg::MemberSealed => cli::bench::BenchPayload::MemberSealed,
                },
            };
            api::telemetry::init("pretty");
            let report = cli::bench::run(&store, &cfg).await?;
            store.close().await;
            println!("{}", serde_json::to_string(&report)?);
            anyhow::Ok(())
        }),
        Command::Bench {
            what:
                BenchCommand::Http {
                    backend,
                    url,
                    addr,
                    tenants,
                    connections,
                    seconds,
                },
        } => {
            api::telemetry::init("pretty");
            let cfg = cli::bench_http::HttpBench {
                tenants,
                connections,
                seconds,
            };
            let (addr, backend_name, _temp) = match addr {
                Some(a) => (a, "external".to_owned(), None),
                None => {
                    let (location, temp) = bench_location(backend, url, None)?;
                    (
                        start_bench_server(location)?,
                        backend.name().to_owned(),
                        temp,
                    )
                }
            };
            let report = runtime.block_on(cli::bench_http::run(&addr, backend_name, &cfg))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Events {
            what:
                EventsCommand::Export {
                    store,
                    from,
                    tenant,
                },
        } => runtime.block_on(async move {
            api::telemetry::init("pretty");
            let store = store.open().await?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
            let n = cli::export::export(&store, from, tenant, &mut out).await?;
            store.close().await;
            tracing::info!(events = n, "export complete");
            anyhow::Ok(())
        }),
    }
}

/// What a command-line tool runs the use cases with: the service's defaults (no settings file; a
/// tool is not a server).
fn offline_config() -> app::Config {
    api::settings::Settings::default().app_config()
}
