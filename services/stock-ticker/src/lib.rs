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
pub mod walk;

use async_nats::jetstream::{kv, stream};
use protocol::names::{buckets, services, streams};
use protocol::stocks::{DEFAULT_SYMBOLS, SYMBOL_MAX_LEN, valid_symbol};
use protocol::subjects;
use runtime::{App, CancellationToken, Settings};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const DESCRIPTION: &str = "Random-walk market data with replay and a leader lease";

/// `[stocks]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StockSettings {
    pub symbols: Vec<String>,
    /// Price of a symbol the stream has never seen.
    pub start_price: String,
    /// Time between ticks (1 ms or more).
    pub interval_ms: u64,
    /// Largest move per tick, in basis points of the price.
    pub volatility_bp: u32,
    /// Ticks kept per symbol in STOCKS.
    pub history: i64,
    /// The leader lease: a standby takes over within this time of a leader's death.
    pub lease_ttl_ms: u64,
}

impl Default for StockSettings {
    fn default() -> Self {
        Self {
            symbols: DEFAULT_SYMBOLS.map(String::from).to_vec(),
            start_price: "100.00".into(),
            interval_ms: 1000,
            volatility_bp: 20,
            history: 1000,
            lease_ttl_ms: 3000,
        }
    }
}

impl StockSettings {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.symbols.is_empty(), "stocks.symbols is empty");
        for s in &self.symbols {
            anyhow::ensure!(
                valid_symbol(s),
                "stocks.symbols: {s:?} must be 1 to {SYMBOL_MAX_LEN} of A-Z 0-9 _ -"
            );
        }
        anyhow::ensure!(
            self.interval_ms >= 1,
            "stocks.interval_ms must be at least 1"
        );
        anyhow::ensure!(
            self.lease_ttl_ms >= 1000,
            "stocks.lease_ttl_ms must be at least 1000"
        );
        anyhow::ensure!(self.history >= 1, "stocks.history must be at least 1");
        self.start_price
            .parse::<rust_decimal::Decimal>()
            .map_err(|_| {
                anyhow::anyhow!("stocks.start_price {:?} is not a decimal", self.start_price)
            })?;
        Ok(())
    }
}

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
