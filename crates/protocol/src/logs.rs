//! `log-worker` messages.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Published on `logs.<service>.<level>` (or `logs.process`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogRecord {
    /// RFC 3339 time of the event.
    pub ts: String,
    /// 1 to 64 characters of `A-Z a-z 0-9 _ -` (it names the log file).
    pub service: String,
    /// trace, debug, info, warn or error.
    pub level: String,
    pub message: String,
    /// Any JSON object.
    #[serde(default)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Whether `service` can name a log file and a subject token.
pub fn valid_service(service: &str) -> bool {
    crate::token::check(service, SERVICE_MAX_LEN, crate::token::Charset::Safe).is_ok()
}

/// The longest service name in a log record, in bytes.
pub const SERVICE_MAX_LEN: usize = 64;

/// A stored record: the record plus its `LOGS` stream sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogEntry {
    #[serde(flatten)]
    pub record: LogRecord,
    pub seq: u64,
}

/// `services.logs.stats` reply: cluster-wide counts of written records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogStats {
    pub processed: u64,
    pub by_level: BTreeMap<String, u64>,
    pub by_service: BTreeMap<String, u64>,
    /// Messages that were not valid records (kept in `_rejected.jsonl`).
    #[serde(default)]
    pub rejected: u64,
}

/// `services.logs.query` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogQuery {
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub level: Option<String>,
    /// RFC 3339: records stored at or after this time.
    #[serde(default)]
    pub since: Option<String>,
    /// The most recent `limit` matches (1 to 1000; default 100).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only records of this W3C trace (32 lower-case hex digits): their
    /// `fields.trace_id` ([`TRACE_ID_FIELD`]).
    #[serde(default)]
    pub trace_id: Option<String>,
}

/// The `fields` key holding a record's W3C trace id: set by the publisher,
/// or by the log-worker from the message's `traceparent` header.
pub const TRACE_ID_FIELD: &str = "trace_id";

/// `services.logs.query` reply, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogQueryReply {
    pub entries: Vec<LogEntry>,
}

/// On `logs.<service>.<level>` the subject decides the service and level. A
/// body that claimed another `service` is stored under the subject's, with
/// what it claimed in this key of `fields`.
pub const CLAIMED_SERVICE_FIELD: &str = "_claimed_service";
/// Like [`CLAIMED_SERVICE_FIELD`], for a `level` the subject overrode.
pub const CLAIMED_LEVEL_FIELD: &str = "_claimed_level";

/// Why a message went to `LOGS_DLQ` (header `Switchyard-Dlq-Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DlqReason {
    /// Its file could not be written (disk full, I/O error, permissions) up
    /// to its last delivery.
    WriteFailed,
}

impl DlqReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::WriteFailed => "write_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::WriteFailed].into_iter().find(|r| r.as_str() == s)
    }
}

/// Headers of a `LOGS_DLQ` message; its body is the original body, byte for
/// byte. The same names as the payments DLQ, plus the original subject.
pub mod dlq_headers {
    pub use crate::payment::dlq_headers::{DELIVERIES, ERROR, REASON, STREAM_SEQ};
    /// The subject the record was published on (`logs.<service>.<level>`).
    pub const SUBJECT: &str = "Switchyard-Subject";
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn record_round_trip_and_default_fields() {
        let r: LogRecord = serde_json::from_value(
            json!({"ts": "t", "service": "math", "level": "info", "message": "m"}),
        )
        .unwrap();
        assert!(r.fields.is_empty());
        let entry = LogEntry { record: r, seq: 7 };
        let v = serde_json::to_value(&entry).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["service"], "math");
        assert_eq!(serde_json::from_value::<LogEntry>(v).unwrap(), entry);
    }

    #[test]
    fn dlq_reasons() {
        let r = DlqReason::WriteFailed;
        assert_eq!(DlqReason::parse(r.as_str()), Some(r));
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        assert_eq!(DlqReason::parse("nope"), None);
    }

    #[test]
    fn services() {
        assert!(valid_service("math-service_1"));
        assert!(!valid_service(""));
        assert!(!valid_service("../etc"));
        assert!(!valid_service("a.b"));
        assert!(!valid_service(&"x".repeat(65)));
    }
}
