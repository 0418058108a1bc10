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
}

impl Default for LogStoreSettings {
    fn default() -> Self {
        Self {
            log_dir: PathBuf::from(".switchyard/logstore"),
            max_age_s: 7 * 24 * 3600,
            max_bytes: 1 << 30,
            batch: 500,
            ack_wait_ms: 10_000,
        }
    }
}
