//! `stock-ticker` messages.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One price on `stocks.<SYMBOL>` (Msg-Id `<SYMBOL>.<seq>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Tick {
    pub symbol: String,
    /// Decimal string, two places (`"189.23"`).
    pub price: String,
    /// Change from the previous tick (`"-0.12"`).
    pub change: String,
    pub ts: String,
    /// Rises by exactly 1 per symbol, across leader changes.
    pub seq: u64,
}

/// `services.stocks.snapshot` reply: the last tick of every symbol.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Snapshot {
    pub prices: BTreeMap<String, Tick>,
}

/// `services.stocks.symbols` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Symbols {
    pub symbols: Vec<String>,
}

/// What a ticker publishes unless `stocks.symbols` says otherwise.
pub const DEFAULT_SYMBOLS: [&str; 5] = ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA"];

/// Symbols are subject tokens: 1 to 16 of `A-Z 0-9 _ -`.
pub fn valid_symbol(symbol: &str) -> bool {
    crate::token::check(symbol, SYMBOL_MAX_LEN, crate::token::Charset::UpperSafe).is_ok()
}

/// The longest symbol, in bytes.
pub const SYMBOL_MAX_LEN: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_round_trip() {
        let t = Tick {
            symbol: "AAPL".into(),
            price: "189.23".into(),
            change: "-0.12".into(),
            ts: "t".into(),
            seq: 7,
        };
        let back: Tick = serde_json::from_slice(&serde_json::to_vec(&t).unwrap()).unwrap();
        assert_eq!(back, t);
        let snap = Snapshot {
            prices: [("AAPL".to_owned(), t)].into(),
        };
        assert_eq!(
            serde_json::to_value(&snap).unwrap()["prices"]["AAPL"]["seq"],
            7
        );
    }

    #[test]
    fn symbols() {
        assert!(valid_symbol("AAPL"));
        assert!(valid_symbol("BRK-B"));
        assert!(!valid_symbol("aapl"));
        assert!(!valid_symbol("A.B"));
        assert!(!valid_symbol(""));
    }
}
