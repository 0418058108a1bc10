//! `[stocks]` settings.

use protocol::stocks::{DEFAULT_SYMBOLS, SYMBOL_MAX_LEN, valid_symbol};
use serde::{Deserialize, Serialize};

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
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
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
