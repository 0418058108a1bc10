//! `[logs]` settings: where and how long the log store keeps records.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// `[logs]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogStoreSettings {
    /// Where `<service>.jsonl` files go.
    pub log_dir: PathBuf,
    /// `LOGS` keeps records this long...
    pub max_age_s: u64,
    /// ... and at most this many bytes (oldest dropped first). `LOGS_DLQ`
    /// has the same byte limit.
    pub max_bytes: i64,
    /// Records written per batch (one fsync per file per batch).
    pub batch: usize,
    /// A batch not acknowledged within this time is delivered again (to any
    /// worker; records already in the files are skipped). Fixed: retries are
    /// spaced by the worker's naks, not by a server backoff list, and a batch
    /// being written gets progress acks every third of it.
    pub ack_wait_ms: u64,
    /// A file is rotated (`x.jsonl` → `x.1.jsonl`) before it would grow past
    /// this many bytes...
    pub max_file_bytes: u64,
    /// ... and this many files are kept per service, the current one
    /// included (older ones are deleted).
    pub max_files: usize,
    /// Deliveries of a message before, still not written, it goes to
    /// `LOGS_DLQ`.
    pub max_deliver: u32,
    /// A record that could not be written (disk full, I/O error) is given
    /// back for this long after its first delivery, doubling with each
    /// delivery up to `retry_max_ms`.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for LogStoreSettings {
    fn default() -> Self {
        Self {
            log_dir: PathBuf::from(".switchyard/logstore"),
            max_age_s: 7 * 24 * 3600,
            max_bytes: 1 << 30,
            batch: 500,
            ack_wait_ms: 10_000,
            max_file_bytes: 64 << 20,
            max_files: 5,
            max_deliver: 5,
            retry_min_ms: 1_000,
            retry_max_ms: 30_000,
        }
    }
}

impl LogStoreSettings {
    /// Refuses settings the worker cannot run with.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.batch >= 1, "logs.batch must be at least 1");
        anyhow::ensure!(
            self.max_file_bytes >= 1,
            "logs.max_file_bytes must be at least 1"
        );
        anyhow::ensure!(self.max_files >= 1, "logs.max_files must be at least 1");
        anyhow::ensure!(self.max_deliver >= 1, "logs.max_deliver must be at least 1");
        anyhow::ensure!(
            self.retry_min_ms >= 1 && self.retry_min_ms <= self.retry_max_ms,
            "logs.retry_min_ms must be at least 1 and at most logs.retry_max_ms"
        );
        Ok(())
    }

    /// How long a record not written at delivery `delivered` (1-based) waits
    /// before its next delivery: `retry_min_ms` doubled per delivery, at
    /// most `retry_max_ms`.
    pub fn retry_delay(&self, delivered: u64) -> Duration {
        let doublings = u32::try_from(delivered.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(32);
        let ms = self
            .retry_min_ms
            .saturating_mul(1u64 << doublings)
            .min(self.retry_max_ms);
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        let s = LogStoreSettings::default();
        let delays: Vec<u64> = (0..8)
            .map(|d| s.retry_delay(d).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [1_000, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]
        );
        assert_eq!(s.retry_delay(u64::MAX), Duration::from_secs(30));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(LogStoreSettings::default().check().is_ok());
        for bad in [
            LogStoreSettings {
                batch: 0,
                ..Default::default()
            },
            LogStoreSettings {
                max_files: 0,
                ..Default::default()
            },
            LogStoreSettings {
                max_file_bytes: 0,
                ..Default::default()
            },
            LogStoreSettings {
                max_deliver: 0,
                ..Default::default()
            },
            LogStoreSettings {
                retry_min_ms: 5,
                retry_max_ms: 1,
                ..Default::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
