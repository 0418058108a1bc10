//! Turning a `LOGS` message into a line for a file: pure, unit-tested.

use protocol::logs::{
    CLAIMED_LEVEL_FIELD, CLAIMED_SERVICE_FIELD, LogEntry, LogRecord, TRACE_ID_FIELD, valid_service,
};
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

/// A record as published. On `logs.<service>.<level>` the subject decides
/// service and level; on `logs.process` the body does.
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

/// The service of a plain-text record on `logs.process`.
pub const PLAIN_TEXT_SERVICE: &str = "process";

/// `body` as plain text, when it is one: UTF-8, not empty, not JSON, and
/// not starting like a JSON object or array (a broken JSON record stays a
/// rejection that says why).
fn plain_text(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if text.is_empty()
        || text.starts_with(['{', '['])
        || serde_json::from_str::<serde_json::Value>(text).is_ok()
    {
        return None;
    }
    Some(text)
}

/// Checks a message on `subject` with stream sequence `seq`; a record
/// without a `fields.trace_id` gets the trace id of the message's
/// `traceparent`, if it has a valid one.
pub fn line_for(subject: &str, seq: u64, body: &[u8], traceparent: Option<&str>) -> Line {
    match check(subject, body) {
        Ok(mut record) => {
            if let Some(trace) = traceparent.and_then(runtime::trace::trace_id)
                && !record.fields.contains_key(TRACE_ID_FIELD)
            {
                record
                    .fields
                    .insert(TRACE_ID_FIELD.to_owned(), trace.to_owned().into());
            }
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
    let from_subject = match (tokens.next(), tokens.next(), tokens.next(), tokens.next()) {
        (Some("logs"), Some("process"), None, None) => None,
        (Some("logs"), Some(service), Some(level), None) => Some((service, level)),
        _ => {
            return Err(format!(
                "subject {subject:?} is not logs.<service>.<level> or logs.process"
            ));
        }
    };
    if let Some((service, level)) = from_subject {
        if !valid_service(service) {
            return Err(format!(
                "service {service:?} in the subject must be 1 to 64 characters of A-Z a-z 0-9 _ -"
            ));
        }
        if !LOG_LEVELS.contains(&level) {
            return Err(format!("unknown level {level:?} in the subject"));
        }
    }
    if let Some(text) = plain_text(body) {
        // Seed 000 publishes plain text: a record whose message is the text,
        // from service `process` at `info` on logs.process (the subject
        // decides elsewhere).
        let (service, level) = from_subject.unwrap_or((PLAIN_TEXT_SERVICE, "info"));
        return Ok(LogRecord {
            ts: runtime::time::now_rfc3339(),
            service: service.to_owned(),
            level: level.to_owned(),
            message: text.to_owned(),
            fields: serde_json::Map::new(),
        });
    }
    let raw: RawRecord = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data if body.first() != Some(&b'{') => {
            "the body is not a JSON object".to_owned()
        }
        serde_json::error::Category::Data => format!("invalid record: {e}"),
        _ => format!("malformed JSON: {e}"),
    })?;
    let mut fields = raw.fields;
    let (service, level) = match from_subject {
        // The subject decides (a service may only publish on its own
        // subjects); a body that claims otherwise is kept, with the claim.
        Some((service, level)) => {
            for (key, claimed, actual) in [
                (CLAIMED_SERVICE_FIELD, raw.service, service),
                (CLAIMED_LEVEL_FIELD, raw.level, level),
            ] {
                if let Some(claimed) = claimed.filter(|c| c != actual) {
                    fields.insert(key.to_owned(), claimed.into());
                }
            }
            (service.to_owned(), level.to_owned())
        }
        // logs.process has no service in its subject: the body says it.
        None => match (raw.service, raw.level) {
            (Some(service), Some(level)) => (service, level),
            _ => {
                return Err(
                    "invalid record: service and level are required on logs.process".to_owned(),
                );
            }
        },
    };
    let record = LogRecord {
        ts: raw.ts,
        service,
        level,
        message: raw.message,
        fields,
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
        match line_for(subject, 1, body.as_bytes(), None) {
            Line::Rejected { reason, .. } => reason,
            Line::Record { line, .. } => panic!("accepted: {line}"),
        }
    }

    #[test]
    fn records_get_their_seq() {
        let body = r#"{"ts":"t","service":"math","level":"info","message":"hi","fields":{"a":1}}"#;
        let Line::Record { record, line } = line_for("logs.math.info", 42, body.as_bytes(), None)
        else {
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
            line_for("logs.pay.warn", 1, br#"{"ts":"t","message":"m"}"#, None)
        else {
            panic!()
        };
        assert_eq!(
            (record.service.as_str(), record.level.as_str()),
            ("pay", "warn")
        );
    }

    #[test]
    fn the_subject_decides_over_the_body() {
        let body = br#"{"ts":"t","service":"payment-processor","level":"error","message":"m","fields":{"a":1}}"#;
        let Line::Record { record, line } = line_for("logs.math-service.info", 3, body, None)
        else {
            panic!()
        };
        assert_eq!(
            (record.service.as_str(), record.level.as_str()),
            ("math-service", "info")
        );
        assert_eq!(record.fields[CLAIMED_SERVICE_FIELD], "payment-processor");
        assert_eq!(record.fields[CLAIMED_LEVEL_FIELD], "error");
        assert_eq!(record.fields["a"], 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["service"], "math-service");
        // A body that agrees (or says nothing) gets no note.
        let Line::Record { record, .. } = line_for(
            "logs.math.warn",
            4,
            br#"{"ts":"t","service":"math","level":"warn","message":"m"}"#,
            None,
        ) else {
            panic!()
        };
        assert!(record.fields.is_empty());
        // Even a body service that could not name a file is only a claim.
        let Line::Record { record, .. } = line_for(
            "logs.math.info",
            5,
            br#"{"ts":"t","service":"../etc/passwd","level":"loud","message":"m"}"#,
            None,
        ) else {
            panic!()
        };
        assert_eq!(record.service, "math");
        assert_eq!(record.fields[CLAIMED_SERVICE_FIELD], "../etc/passwd");
    }

    #[test]
    fn plain_text_is_a_record() {
        let Line::Record { record, .. } = line_for("logs.process", 3, b"Log message 7", None)
        else {
            panic!("plain text rejected")
        };
        assert_eq!(
            (
                record.service.as_str(),
                record.level.as_str(),
                record.message.as_str()
            ),
            ("process", "info", "Log message 7")
        );
        assert!(runtime::time::parse_unix_ms(&record.ts).is_some());
        let Line::Record { record, .. } = line_for("logs.math.warn", 4, b"  disk low \n", None)
        else {
            panic!("plain text rejected")
        };
        assert_eq!(
            (
                record.service.as_str(),
                record.level.as_str(),
                record.message.as_str()
            ),
            ("math", "warn", "disk low")
        );
        assert!(matches!(
            line_for("logs.process", 5, &[0xff, 0xfe], None),
            Line::Rejected { .. }
        ));
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
        assert!(reason("logs.process", "{not json").contains("malformed JSON"));
        assert!(reason("logs.process", "").contains("JSON"));
        assert!(reason("logs.process", "42").contains("not a JSON object"));
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
        assert!(reason("logs.a:b.info", r#"{"ts":"t","message":"m"}"#).contains("subject"));
    }
}
