//! `[logs]` settings: where and how long the log store keeps records.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[logs]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogStoreSettings {
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
    /// A file is rotated (`x.jsonl` → `x.1.jsonl`) before it would grow past
    /// this many bytes...
    pub max_file_bytes: u64,
    /// ... and this many files are kept per service, the current one
    /// included (older ones are deleted).
    pub max_files: usize,
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
