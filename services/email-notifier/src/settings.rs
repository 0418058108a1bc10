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
    /// Requests with the same `idempotency_key` within this window send once.
    pub idempotency_window_s: u64,
    /// Deliveries of one mail before it is given up (`events.email.failed`).
    pub max_deliver: u32,
    /// Delays before the 2nd, 3rd, ... delivery after a transport error.
    pub backoff_ms: Vec<u64>,
    /// Mails sent at once by this instance.
    pub concurrency: usize,
    /// How far ahead `send_at` may be.
    pub max_schedule_days: u64,
}

impl Default for EmailSettings {
    fn default() -> Self {
        Self {
            from: "Switchyard <noreply@switchyard.local>".into(),
            outbox_dir: PathBuf::from(".switchyard/outbox"),
            smtp_url: None,
            idempotency_window_s: 600,
            max_deliver: 5,
            backoff_ms: vec![1_000, 5_000, 15_000, 30_000],
            concurrency: 16,
            max_schedule_days: 366,
        }
    }
}

impl EmailSettings {
    pub(crate) fn backoff_after(&self, delivered: u32) -> Duration {
        runtime::worker::backoff_after(&self.backoff_ms, delivered)
    }
}
