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
    /// Run the HTTP service.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        #[command(flatten)]
        store: StoreArgs,
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
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Backend {
    Embedded,
    Postgres,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
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

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TENANTRY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve { listen, store } => actix_web::rt::System::new().block_on(async move {
            let store = store.open().await?;
            api::server::serve(store, &listen).await
        }),
        Command::Bench {
            what:
                BenchCommand::Store {
                    backend,
                    url,
                    data,
                    writers,
                    events,
                    batch,
                },
        } => runtime.block_on(async move {
            let _temp;
            let store = match backend {
                Backend::Embedded => {
                    let dir = match data {
                        Some(d) => d,
                        None => {
                            _temp = tempfile::tempdir()?;
                            _temp.path().to_path_buf()
                        }
                    };
                    Store::open_embedded(&dir)?
                }
                Backend::Postgres => {
                    let url = url.context("--url or DATABASE_URL is required for postgres")?;
                    Store::connect_postgres(&url).await?
                }
            };
            let cfg = api::bench::StoreBench {
                writers,
                events,
                batch,
            };
            let report = api::bench::run(&store, &cfg).await?;
            store.close().await;
            println!("{}", serde_json::to_string(&report)?);
            anyhow::Ok(())
        }),
        Command::Events {
            what:
                EventsCommand::Export {
                    store,
                    from,
                    tenant,
                },
        } => runtime.block_on(async move {
            let store = store.open().await?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
            let n = api::export::export(&store, from, tenant, &mut out).await?;
            store.close().await;
            tracing::info!(events = n, "export complete");
            anyhow::Ok(())
        }),
    }
}
