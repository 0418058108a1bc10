//! The stock ticker.
//!
//! ```text
//! every instance: standby ── kv.create(leader) ok ──▶ leader
//!   leader: resume each symbol's seq and price from STOCKS (last per subject)
//!           every interval: step every symbol, JetStream-publish stocks.<SYM>
//!             (Nats-Msg-Id <SYM>.<seq>, so a retry cannot duplicate a seq)
//!           renew the lease every ttl/3 (update at its revision); stop
//!           publishing at once if renewal fails or the lease may have expired
//!   graceful stop: delete the lease, a standby takes over at once
//! services.stocks.snapshot / symbols ◀─ STOCKS (any instance answers)
//! ```

mod endpoints;
mod leader;
mod settings;
pub mod walk;

use async_nats::jetstream::{kv, stream};
use protocol::names::{buckets, services, streams};
use protocol::subjects;
use runtime::{App, CancellationToken, Settings};
pub use settings::StockSettings;
use std::sync::Arc;
use std::time::Duration;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const DESCRIPTION: &str = "Random-walk market data with replay and a leader lease";

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let stocks: StockSettings = settings.section("stocks")?;
    stocks.validate()?;
    let app = App::connect(services::STOCK_TICKER, settings, shutdown).await?;
    let stream = runtime::js::ensure_stream(
        &app.jetstream,
        stream::Config {
            name: streams::STOCKS.into(),
            description: Some("Recent ticks per symbol".into()),
            subjects: vec![subjects::STOCKS_ALL.into()],
            storage: stream::StorageType::File,
            num_replicas: app.replicas(),
            max_messages_per_subject: stocks.history,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        },
        true,
        app.assets(),
    )
    .await?;
    let lease = runtime::js::ensure_kv(
        &app.jetstream,
        kv::Config {
            bucket: buckets::STOCKS_LEASE.into(),
            description: "The stock-ticker leader lease".into(),
            history: 1,
            max_age: Duration::from_millis(stocks.lease_ttl_ms),
            num_replicas: app.replicas(),
            storage: stream::StorageType::File,
            ..Default::default()
        },
        app.assets(),
    )
    .await?;
    let ticker = Arc::new(leader::Ticker {
        js: app.jetstream.clone(),
        stream,
        lease,
        settings: stocks,
        instance: app.id().to_owned(),
    });
    app.service(VERSION, DESCRIPTION)
        .with_state(ticker)
        .endpoint("snapshot", subjects::STOCKS_SNAPSHOT, endpoints::snapshot)
        .endpoint("symbols", subjects::STOCKS_SYMBOLS, endpoints::symbols)
        .task("ticker", leader::Ticker::run)
        .serve()
        .await
}
