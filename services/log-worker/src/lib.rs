//! The log worker: a persistent, distributed logger.
//!
//! ```text
//! logs.<service>.<level> | logs.process ─▶ LOGS (R3, limits by age/size)
//!   ─▶ durable pull consumer log-workers (N workers split the load)
//!       batch ─▶ <log_dir>/<service>.jsonl (dedup by stream seq, fsync) ─▶ counters in KV ─▶ ack
//! services.logs.stats  ← KV log-stats (cluster-wide)
//! services.logs.query  ← reads the LOGS stream (not the files)
//! ```

mod endpoints;
pub mod files;
pub mod records;
mod stats;
mod worker;

use async_nats::jetstream::{self, consumer, kv, stream};
use protocol::names::{buckets, consumers, services, streams};
use protocol::subjects;
use runtime::js::{ensure_kv, ensure_stream, retry};
use runtime::{App, CancellationToken, Settings};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const DESCRIPTION: &str = "Persistent distributed logger: logs.> to JSON-lines files";

/// `[logs]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogSettings {
    /// Where `<service>.jsonl` files go.
    pub log_dir: PathBuf,
    /// `LOGS` keeps records this long...
    pub max_age_s: u64,
    /// ... and at most this many bytes (oldest dropped first).
    pub max_bytes: i64,
    /// Records written per batch (one fsync per file per batch).
    pub batch: usize,
    /// A batch not acknowledged within this time is delivered again (to any
    /// worker; records already in the files are skipped).
    pub ack_wait_ms: u64,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            log_dir: PathBuf::from(".switchyard/logstore"),
            max_age_s: 7 * 24 * 3600,
            max_bytes: 1 << 30,
            batch: 500,
            ack_wait_ms: 10_000,
        }
    }
}

/// Counters of this instance, for tests and the seed demo.
#[derive(Debug, Default)]
pub struct Local {
    /// Records this instance wrote to the files.
    pub written: AtomicU64,
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(settings, shutdown, Arc::default()).await
}

pub async fn run_with(
    settings: Settings,
    shutdown: CancellationToken,
    local: Arc<Local>,
) -> anyhow::Result<()> {
    let logs: LogSettings = settings.section("logs")?;
    anyhow::ensure!(logs.batch >= 1, "logs.batch must be at least 1");
    let files = files::Files::new(logs.log_dir.clone())
        .map_err(|e| anyhow::anyhow!("cannot use logs.log_dir {}: {e}", logs.log_dir.display()))?;
    let Some(app) = App::start(services::LOG_WORKER, settings, shutdown).await? else {
        return Ok(());
    };
    let (stream, consumer, kv) = ensure_assets(&app.jetstream, app.replicas(), &logs).await?;
    let stats = stats::Stats::new(kv);
    let stop_work = CancellationToken::new();
    let worker = tokio::spawn(worker::run(
        consumer,
        files,
        stats.clone(),
        local,
        logs.batch,
        app.maintenance(),
        stop_work.clone(),
    ));
    let service = endpoints::service(&app, stats, stream).start().await?;
    app.shutdown_token().cancelled().await;
    stop_work.cancel();
    let _ = worker.await;
    app.serve(vec![service]).await
}

async fn ensure_assets(
    js: &jetstream::Context,
    replicas: usize,
    settings: &LogSettings,
) -> anyhow::Result<(stream::Stream, consumer::PullConsumer, kv::Store)> {
    let stream = ensure_stream(
        js,
        stream::Config {
            name: streams::LOGS.into(),
            description: Some("Structured logs of every service".into()),
            subjects: vec![subjects::LOGS_ALL.into()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(settings.max_age_s),
            max_bytes: settings.max_bytes,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        },
        true,
    )
    .await?;
    let config = consumer::pull::Config {
        durable_name: Some(consumers::LOG_WORKERS.into()),
        description: Some("Shared by every log-worker".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_millis(settings.ack_wait_ms.max(500)),
        max_ack_pending: 50_000,
        ..Default::default()
    };
    let consumer = retry(
        "creating the log-workers consumer",
        Duration::from_secs(30),
        || stream.create_consumer(config.clone()),
    )
    .await?;
    let kv = ensure_kv(
        js,
        kv::Config {
            bucket: buckets::LOG_STATS.into(),
            description: "Cluster-wide log-worker counters".into(),
            history: 1,
            num_replicas: replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        },
    )
    .await?;
    Ok((stream, consumer, kv))
}
