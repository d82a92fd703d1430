//! A writer process for crash tests: appends forever from many tasks and prints one line per
//! acknowledged append (`ack <append id> <first position> <events>`), flushed at once, so the
//! test that kills it with SIGKILL knows exactly what was acknowledged before the kill.
//!
//! Usage: crash-writer (--data DIR | --store URL) WRITERS

use std::io::Write;
use std::sync::{Arc, Mutex};
use store::{AppendRequest, Expected, Location, Metadata, NewEvent, RawJson, Store};
use uuid::Uuid;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (location, writers) = match args.as_slice() {
        [_, flag, target, writers] if flag == "--data" => {
            (Location::Embedded(target.into()), writers.parse()?)
        }
        [_, flag, target, writers] if flag == "--store" => {
            (Location::Postgres(target.clone()), writers.parse()?)
        }
        _ => anyhow::bail!("usage: crash-writer (--data DIR | --store URL) WRITERS"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(location, writers))
}

async fn run(location: Location, writers: u64) -> anyhow::Result<()> {
    let store = Store::open(&location).await?;
    let tenant = domain::TenantId::from_uuid(Uuid::from_u128(0x7e57));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, out) = (store.clone(), out.clone());
            tokio::spawn(async move {
                for i in 0u64.. {
                    let append = Uuid::new_v4();
                    let count = 1 + (w + i) % 5;
                    let events = (0..count)
                        .map(|index| {
                            let payload = serde_json::json!({
                                "append": append, "count": count, "index": index,
                            });
                            NewEvent::new("crash.test", RawJson::from_value(&payload))
                        })
                        .collect();
                    let request = AppendRequest {
                        tenant_id: tenant,
                        stream_id: format!("s{}", (w * 31 + i) % 16),
                        expected: Expected::Any,
                        events,
                        metadata: Metadata::actor("crash-writer"),
                    };
                    let appended = store.append(request).await?;
                    let mut out = out.lock().expect("stdout lock");
                    writeln!(out, "ack {append} {} {count}", appended.positions[0])?;
                    out.flush()?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}
