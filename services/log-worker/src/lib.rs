//! The log worker: a persistent, distributed logger.
//!
//! ```text
//! logs.<service>.<level> | logs.process ─▶ LOGS (R3, limits by age/size)
//!   ─▶ durable pull consumer log-workers (N workers split the load; fixed ack
//!      wait, bounded max_deliver, progress acks while a batch is written)
//!       batch ─▶ <log_dir>/<service>.jsonl (the subject names the service;
//!                dedup by stream seq, fsync, rotated by size)
//!             ─▶ counters in KV ─▶ ack
//!       a file that cannot be written ─▶ nak(growing delay) … last delivery ─▶ LOGS_DLQ, term
//! services.logs.stats  ← KV log-stats (cluster-wide)
//! services.logs.query  ← reads the LOGS stream (not the files)
//! ```

mod assets;
mod dlq;
mod endpoints;
pub mod files;
pub mod records;
mod settings;
mod stats;
mod worker;

use async_nats::jetstream::stream;
use protocol::names::services;
use protocol::subjects;
use runtime::{App, CancellationToken, Settings};
pub use settings::LogStoreSettings;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const DESCRIPTION: &str = "Persistent distributed logger: logs.> to JSON-lines files";

/// What this instance did, for tests and the seed demo.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Records this instance wrote to the files.
    pub written: AtomicU64,
    /// Deliveries of records this instance could not write (I/O errors).
    pub write_failures: AtomicU64,
    /// Records this instance sent to `LOGS_DLQ`.
    pub dead_lettered: AtomicU64,
}

/// The log-worker's state, shared by the batch worker and the endpoints.
#[derive(Debug)]
pub(crate) struct LogWorker {
    pub(crate) files: Arc<Mutex<files::Files>>,
    pub(crate) stats: stats::Stats,
    pub(crate) stream: stream::Stream,
    pub(crate) counters: Arc<WorkerCounters>,
    pub(crate) dlq: dlq::Dlq,
    pub(crate) settings: LogStoreSettings,
    pub(crate) trouble: worker::Trouble,
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(settings, shutdown, Arc::default()).await
}

/// Runs the worker, counting what it writes in `counters`.
pub async fn run_with(
    settings: Settings,
    shutdown: CancellationToken,
    counters: Arc<WorkerCounters>,
) -> anyhow::Result<()> {
    let logs: LogStoreSettings = settings.section("logs")?;
    logs.check()?;
    let limits = files::Limits {
        max_file_bytes: logs.max_file_bytes,
        max_files: logs.max_files,
        ..files::Limits::default()
    };
    let files = files::Files::new(logs.log_dir.clone(), limits)
        .map_err(|e| anyhow::anyhow!("cannot use logs.log_dir {}: {e}", logs.log_dir.display()))?;
    let app = App::connect(services::LOG_WORKER, settings, shutdown).await?;
    let assets = assets::ensure(&app.jetstream, app.replicas(), app.assets(), &logs).await?;
    let state = Arc::new(LogWorker {
        files: Arc::new(Mutex::new(files)),
        stats: stats::Stats::new(assets.kv),
        stream: assets.stream,
        counters,
        dlq: dlq::Dlq::new(app.jetstream.clone()),
        settings: logs.clone(),
        trouble: worker::Trouble::default(),
    });
    app.service(VERSION, DESCRIPTION)
        .with_state(state)
        .endpoint("stats", subjects::LOGS_STATS, endpoints::stats)
        .endpoint("query", subjects::LOGS_QUERY, endpoints::query)
        .batch_worker(
            "log-writer",
            assets.consumer,
            logs.batch,
            worker::write_batch,
        )
        .serve()
        .await
}
