//! Turning a `LOGS` message into a line for a file: pure, unit-tested.

use protocol::logs::{LogEntry, LogRecord, valid_service};
use protocol::subjects::LOG_LEVELS;

/// Where a message's line goes.
#[derive(Debug, PartialEq)]
pub enum Line {
    /// `<service>.jsonl`
    Record { record: LogRecord, line: String },
    /// `_rejected.jsonl`: the raw body and why, so nothing is lost.
    Rejected { line: String, reason: String },
}

pub const REJECTED_FILE: &str = "_rejected";

/// A record as published; service and level may come from the subject.
#[derive(serde::Deserialize)]
struct RawRecord {
    ts: String,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    level: Option<String>,
    message: String,
    #[serde(default)]
    fields: serde_json::Map<String, serde_json::Value>,
}

/// Checks a message on `subject` with stream sequence `seq`.
pub fn line_for(subject: &str, seq: u64, body: &[u8]) -> Line {
    match check(subject, body) {
        Ok(record) => {
            let entry = LogEntry { record, seq };
            let line = serde_json::to_string(&entry).unwrap_or_default();
            Line::Record {
                record: entry.record,
                line,
            }
        }
        Err(reason) => {
            let raw = String::from_utf8_lossy(body);
            let line =
                serde_json::json!({"seq": seq, "subject": subject, "reason": reason, "body": raw})
                    .to_string();
            Line::Rejected { line, reason }
        }
    }
}

fn check(subject: &str, body: &[u8]) -> Result<LogRecord, String> {
    let mut tokens = subject.split('.');
    let (from_subject_service, from_subject_level) =
        match (tokens.next(), tokens.next(), tokens.next(), tokens.next()) {
            (Some("logs"), Some("process"), None, None) => (None, None),
            (Some("logs"), Some(service), Some(level), None) => (Some(service), Some(level)),
            _ => {
                return Err(format!(
                    "subject {subject:?} is not logs.<service>.<level> or logs.process"
                ));
            }
        };
    if let Some(level) = from_subject_level
        && !LOG_LEVELS.contains(&level)
    {
        return Err(format!("unknown level {level:?} in the subject"));
    }
    // One parse; the body's service and level win, the subject fills them in.
    let raw: RawRecord = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data if body.first() != Some(&b'{') => {
            "the body is not a JSON object".to_owned()
        }
        serde_json::error::Category::Data => format!("invalid record: {e}"),
        _ => format!("malformed JSON: {e}"),
    })?;
    let (Some(service), Some(level)) = (
        raw.service.or(from_subject_service.map(str::to_owned)),
        raw.level.or(from_subject_level.map(str::to_owned)),
    ) else {
        return Err("invalid record: service and level are required on logs.process".to_owned());
    };
    let record = LogRecord {
        ts: raw.ts,
        service,
        level,
        message: raw.message,
        fields: raw.fields,
    };
    if !valid_service(&record.service) {
        return Err(format!(
            "service {:?} must be 1 to 64 characters of A-Z a-z 0-9 _ -",
            record.service
        ));
    }
    if !LOG_LEVELS.contains(&record.level.as_str()) {
        return Err(format!("unknown level {:?}", record.level));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(subject: &str, body: &str) -> String {
        match line_for(subject, 1, body.as_bytes()) {
            Line::Rejected { reason, .. } => reason,
            Line::Record { line, .. } => panic!("accepted: {line}"),
        }
    }

    #[test]
    fn records_get_their_seq() {
        let body = r#"{"ts":"t","service":"math","level":"info","message":"hi","fields":{"a":1}}"#;
        let Line::Record { record, line } = line_for("logs.math.info", 42, body.as_bytes()) else {
            panic!()
        };
        assert_eq!(record.service, "math");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["seq"], 42);
        assert_eq!(v["fields"]["a"], 1);
    }

    #[test]
    fn the_subject_fills_in_service_and_level() {
        let Line::Record { record, .. } =
            line_for("logs.pay.warn", 1, br#"{"ts":"t","message":"m"}"#)
        else {
            panic!()
        };
        assert_eq!(
            (record.service.as_str(), record.level.as_str()),
            ("pay", "warn")
        );
    }

    #[test]
    fn rejections() {
        assert!(reason("logs.math.loud", r#"{"ts":"t","message":"m"}"#).contains("unknown level"));
        assert!(
            reason(
                "logs.process",
                r#"{"ts":"t","service":"m","level":"nope","message":"m"}"#
            )
            .contains("unknown level")
        );
        assert!(reason("logs.process", "not json").contains("malformed JSON"));
        assert!(reason("logs.process", "[1]").contains("not a JSON object"));
        assert!(
            reason("logs.process", r#"{"ts":"t","level":"info","message":"m"}"#)
                .contains("service")
        );
        assert!(
            reason(
                "logs.process",
                r#"{"ts":"t","service":"../x","level":"info","message":"m"}"#
            )
            .contains("service")
        );
        assert!(reason("logs.a.b.c", "{}").contains("subject"));
    }
}
