//! `[email]` settings.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// `[email]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EmailSettings {
    /// The From: mailbox.
    pub from: String,
    /// Where `.eml` files go when no SMTP relay is configured.
    pub outbox_dir: PathBuf,
    /// `smtp://user:pass@host:port` (or `smtps://`); unset: the outbox.
    pub smtp_url: Option<String>,
    /// The longest one SMTP send may take, connect to the relay's final
    /// reply; after it the send counts as failed and is retried (a relay that
    /// accepted the mail after we gave up is the ambiguous case SMTP has).
    pub smtp_timeout_ms: u64,
    /// Requests with the same `idempotency_key` within this window are
    /// accepted once (JetStream deduplication).
    pub idempotency_window_s: u64,
    /// How long the record of a sent mail (bucket `email-sent`) is kept; a
    /// mail id found there is never sent again. See [`EmailSettings::sent_ttl`].
    pub sent_ttl_s: u64,
    /// Deliveries of one mail before it is given up (`events.email.failed`).
    pub max_deliver: u32,
    /// Delays before the 2nd, 3rd, ... delivery after a failed one.
    pub backoff_ms: Vec<u64>,
    /// The ack wait of the `email-sender` and `email-receipts` consumers. A
    /// running send gets progress acks every third of it, so only a stalled
    /// notifier lets a mail be redelivered; it is a fixed wait (no server
    /// backoff list): retries are spaced by `backoff_ms` naks.
    pub ack_wait_ms: u64,
    /// How long a JetStream write (the sent record, an event) is retried
    /// before the mail is given back (nak) to be tried again later.
    pub publish_budget_ms: u64,
    /// Mails sent at once by this instance.
    pub concurrency: usize,
    /// How far ahead `send_at` may be.
    pub max_schedule_days: u64,
}

/// The shortest [`EmailSettings::sent_ttl_s`]: comfortably longer than all
/// the redeliveries of one mail.
pub(crate) const MIN_SENT_TTL_S: u64 = 3600;
/// The shortest [`EmailSettings::ack_wait_ms`]: progress acks come every
/// third of it and no faster than every 100 ms.
pub(crate) const MIN_ACK_WAIT_MS: u64 = 300;

impl Default for EmailSettings {
    fn default() -> Self {
        Self {
            from: "Switchyard <noreply@switchyard.local>".into(),
            outbox_dir: PathBuf::from(".switchyard/outbox"),
            smtp_url: None,
            smtp_timeout_ms: 30_000,
            idempotency_window_s: 600,
            sent_ttl_s: 7 * 24 * 3600,
            max_deliver: 5,
            backoff_ms: vec![1_000, 5_000, 15_000, 30_000],
            ack_wait_ms: 30_000,
            publish_budget_ms: 10_000,
            concurrency: 16,
            max_schedule_days: 366,
        }
    }
}

impl EmailSettings {
    /// Refuses settings the notifier cannot keep its promises with.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_deliver >= 1,
            "email.max_deliver must be at least 1"
        );
        anyhow::ensure!(
            self.smtp_timeout_ms >= 1,
            "email.smtp_timeout_ms must be at least 1"
        );
        anyhow::ensure!(
            self.ack_wait_ms >= MIN_ACK_WAIT_MS,
            "email.ack_wait_ms must be at least {MIN_ACK_WAIT_MS}"
        );
        anyhow::ensure!(
            self.publish_budget_ms >= 1,
            "email.publish_budget_ms must be at least 1"
        );
        anyhow::ensure!(
            self.sent_ttl_s >= self.idempotency_window_s.max(MIN_SENT_TTL_S),
            "email.sent_ttl_s ({}) must be at least email.idempotency_window_s ({}) and {MIN_SENT_TTL_S}",
            self.sent_ttl_s,
            self.idempotency_window_s
        );
        Ok(())
    }

    pub(crate) fn backoff_after(&self, delivered: u32) -> Duration {
        runtime::worker::backoff_after(&self.backoff_ms, delivered)
    }

    pub fn smtp_timeout(&self) -> Duration {
        Duration::from_millis(self.smtp_timeout_ms)
    }

    pub fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms)
    }

    pub fn publish_budget(&self) -> Duration {
        Duration::from_millis(self.publish_budget_ms)
    }

    /// The `max_age` of bucket `email-sent`. A week by default, the
    /// retention of stream `EVENTS`: a receipt job made again from a
    /// `events.payment.completed` that is replayed (a recreated
    /// `email-receipts` consumer reads the whole week) still finds its
    /// record and is not sent twice. Much longer than every redelivery of a
    /// mail (minutes) and than the idempotency window, which is all that is
    /// needed for the rest. A record is ~200 bytes, so a week of records
    /// costs little next to the mails themselves.
    pub fn sent_ttl(&self) -> Duration {
        Duration::from_secs(self.sent_ttl_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_bad_settings_are_refused() {
        assert!(EmailSettings::default().check().is_ok());
        let bad = [
            EmailSettings {
                max_deliver: 0,
                ..Default::default()
            },
            EmailSettings {
                smtp_timeout_ms: 0,
                ..Default::default()
            },
            EmailSettings {
                ack_wait_ms: 299,
                ..Default::default()
            },
            EmailSettings {
                publish_budget_ms: 0,
                ..Default::default()
            },
            EmailSettings {
                sent_ttl_s: 3599,
                ..Default::default()
            },
            EmailSettings {
                idempotency_window_s: 8 * 24 * 3600,
                ..Default::default()
            },
        ];
        for settings in bad {
            assert!(settings.check().is_err(), "{settings:?}");
        }
    }
}
