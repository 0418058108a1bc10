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
    /// The currency of a payment that names none (one of `currencies`).
    pub default_currency: String,
    /// Gateway attempts per payment (and per replay). The attempt after the
    /// last does no work: the payment is failed (after voiding its key at
    /// the gateway) and dead-lettered.
    pub max_attempts: u32,
    /// The consumer's `max_deliver`: the server's own cap, a backstop above
    /// `max_attempts` (deliveries also go to waiting out another instance's
    /// claim). Must be greater than `max_attempts`.
    pub max_deliver: u32,
    /// How long a delivered message may go unacknowledged. Fixed (no server
    /// backoff list): progress acks every third of it keep a running
    /// payment's message, so only a process stalled or gone for about this
    /// long lets the message be redelivered.
    pub ack_wait_ms: u64,
    /// Delays (NAK with delay) before the 2nd, 3rd, ... attempt after a
    /// failed charge.
    pub backoff_ms: Vec<u64>,
    /// Allowed difference between two hosts' clocks: a claim written by
    /// another instance counts as live for this much longer than it says.
    pub clock_margin_ms: u64,
    /// How often the sweep looks for payment messages the server stopped
    /// delivering (a backstop for the MAX_DELIVERIES advisories).
    pub sweep_interval_ms: u64,
    /// A payment message older than this, whose payment has not changed
    /// for this long, counts as stuck to the sweep.
    pub stuck_after_ms: u64,
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
            default_currency: "USD".into(),
            max_attempts: 3,
            max_deliver: 10,
            ack_wait_ms: 30_000,
            backoff_ms: vec![1_000, 5_000],
            clock_margin_ms: 2_000,
            sweep_interval_ms: 60_000,
            stuck_after_ms: 600_000,
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
        anyhow::ensure!(
            self.currencies.contains(&self.default_currency),
            "payments.default_currency {:?} is not one of payments.currencies ({})",
            self.default_currency,
            self.currencies.join(", ")
        );
        Ok(rules::Rules {
            limit,
            currencies: self.currencies.clone(),
            default_currency: self.default_currency.clone(),
        })
    }

    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_attempts >= 1,
            "payments.max_attempts must be at least 1"
        );
        anyhow::ensure!(
            self.max_deliver > self.max_attempts,
            "payments.max_deliver ({}) must be greater than payments.max_attempts ({}): the server's cap is the backstop above the processor's",
            self.max_deliver,
            self.max_attempts
        );
        anyhow::ensure!(
            self.backoff_ms.len() <= self.max_attempts as usize,
            "payments.backoff_ms has more entries than payments.max_attempts"
        );
        anyhow::ensure!(
            self.stuck_after_ms > self.ack_wait_ms + self.gateway_timeout_ms + self.clock_margin_ms,
            "payments.stuck_after_ms must be longer than ack_wait_ms + gateway_timeout_ms + clock_margin_ms"
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

    /// Delay before attempt `attempt + 1` after a failed charge.
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        runtime::worker::backoff_after(&self.backoff_ms, attempt)
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
        let s = PaymentSettings {
            max_deliver: 3,
            ..Default::default()
        };
        assert!(
            s.validate().is_err(),
            "max_deliver must exceed max_attempts"
        );
    }
}
