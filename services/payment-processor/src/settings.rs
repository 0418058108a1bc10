//! `[payments]` settings.

use crate::gateway::SimulatorSettings;
use crate::rules;
use anyhow::Context as _;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::str::FromStr as _;
use std::time::Duration;

/// `[payments]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PaymentSettings {
    /// Largest accepted amount (a decimal string).
    pub limit: String,
    /// Accepted currency codes.
    pub currencies: Vec<String>,
    /// Deliveries of one message before it goes to the DLQ.
    pub max_deliver: u32,
    /// How long a delivered message may go unacknowledged (progress acks
    /// extend it while a charge is running).
    pub ack_wait_ms: u64,
    /// Redelivery delays after the 1st, 2nd, ... failed delivery; also the
    /// consumer's server-side backoff after an ack timeout.
    pub backoff_ms: Vec<u64>,
    /// Dedup window of `PAYMENTS` and `EVENTS` (at least 120 s).
    pub duplicate_window_s: u64,
    /// Payments processed at once by this instance.
    pub concurrency: usize,
    /// How long to retry KV/stream calls (leader elections) before giving a
    /// message back for redelivery.
    pub infra_retry_ms: u64,
    /// A charge that takes longer counts as a failed attempt.
    pub gateway_timeout_ms: u64,
    pub gateway: SimulatorSettings,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self {
            limit: "10000.00".into(),
            currencies: ["USD", "EUR", "GBP", "JPY", "CHF"]
                .map(String::from)
                .to_vec(),
            max_deliver: 3,
            ack_wait_ms: 10_000,
            backoff_ms: vec![1_000, 5_000],
            duplicate_window_s: 120,
            concurrency: 64,
            infra_retry_ms: 30_000,
            gateway_timeout_ms: 10_000,
            gateway: SimulatorSettings::default(),
        }
    }
}

impl PaymentSettings {
    pub fn rules(&self) -> anyhow::Result<rules::Rules> {
        let limit = Decimal::from_str(&self.limit)
            .with_context(|| format!("payments.limit {:?} is not a decimal", self.limit))?;
        anyhow::ensure!(limit > Decimal::ZERO, "payments.limit must be positive");
        anyhow::ensure!(!self.currencies.is_empty(), "payments.currencies is empty");
        Ok(rules::Rules {
            limit,
            currencies: self.currencies.clone(),
        })
    }

    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_deliver >= 1,
            "payments.max_deliver must be at least 1"
        );
        anyhow::ensure!(
            self.backoff_ms.len() <= self.max_deliver as usize,
            "payments.backoff_ms has more entries than payments.max_deliver"
        );
        anyhow::ensure!(
            self.concurrency >= 1,
            "payments.concurrency must be at least 1"
        );
        anyhow::ensure!(
            self.ack_wait_ms >= 100,
            "payments.ack_wait_ms must be at least 100"
        );
        Ok(())
    }

    /// Delay before delivery `delivered + 1` after a failure.
    pub fn backoff_after(&self, delivered: u32) -> Duration {
        runtime::worker::backoff_after(&self.backoff_ms, delivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let s = PaymentSettings::default();
        s.validate().unwrap();
        s.rules().unwrap();
        assert_eq!(s.backoff_after(1), Duration::from_secs(1));
        assert_eq!(s.backoff_after(2), Duration::from_secs(5));
        assert_eq!(s.backoff_after(7), Duration::from_secs(5));
    }

    #[test]
    fn bad_settings_are_refused() {
        let s = PaymentSettings {
            limit: "lots".into(),
            ..Default::default()
        };
        assert!(s.rules().is_err());
        let s = PaymentSettings {
            backoff_ms: vec![1, 2, 3, 4],
            ..Default::default()
        };
        assert!(s.validate().is_err());
    }
}
