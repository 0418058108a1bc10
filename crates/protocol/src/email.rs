//! `email-notifier` messages.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `services.notification.email-send`, published or requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EmailRequest {
    /// One address (`a@b.example`, or `Name <a@b.example>`).
    pub to: String,
    pub subject: String,
    /// Plain text; optional (a mail with an empty body).
    #[serde(default)]
    pub body: String,
    /// RFC 3339; in the future, the mail waits (durably) until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<String>,
    /// The same key within the idempotency window sends once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The reply to a requested send: the mail is durable in JetStream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EmailAccepted {
    pub accepted: bool,
    pub id: String,
    /// When it will be sent, or `null` for now.
    pub scheduled_for: Option<String>,
}

/// Why a mail was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EmailKind {
    Request,
    /// A receipt for `events.payment.completed`.
    Receipt,
}

/// A queued mail, as stored in stream `EMAILS` (subject `email.outbox`, or
/// `email.scheduled.<id>` until its time comes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EmailJob {
    pub id: String,
    pub kind: EmailKind,
    pub to: String,
    pub subject: String,
    pub body: String,
    pub accepted_at: String,
    #[serde(default)]
    pub scheduled_for: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// For receipts.
    #[serde(default)]
    pub payment_id: Option<String>,
    /// The W3C `traceparent` of what queued the mail (a receipt: its
    /// payment event's); the mail's own events continue that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// `events.email.sent` / `events.email.failed` (Msg-Id `<id>.<sent|failed>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EmailEvent {
    pub id: String,
    pub to: String,
    pub subject: String,
    pub at: String,
    /// Why it failed; `null` when sent.
    pub error: Option<String>,
}

/// The longest email id, in bytes: `rcpt-` and the longest payment id.
pub const EMAIL_ID_MAX_LEN: usize = 5 + crate::payment::PAYMENT_ID_MAX_LEN;

/// Whether `id` can be an email id: 1 to [`EMAIL_ID_MAX_LEN`] bytes of
/// `A-Z a-z 0-9 _ -`, so it is also a valid KV key (bucket `email-sent`), a
/// subject token, a file name and the local part of its `Message-ID`. Every id
/// the notifier makes passes: `em-<nuid>`, `em-<24 hex digits>` (from an
/// idempotency key) and `rcpt-<payment_id>`.
pub fn valid_id(id: &str) -> bool {
    crate::token::check(id, EMAIL_ID_MAX_LEN, crate::token::Charset::Safe).is_ok()
}

/// The `Message-ID` header of mail `id`: `<id@switchyard>`. The same for
/// every delivery of the same mail, so receivers can drop a second copy.
pub fn message_id(id: &str) -> String {
    format!("<{id}@switchyard>")
}

/// Subjects of stream `EMAILS`.
pub mod subjects {
    /// Mails ready to send.
    pub const OUTBOX: &str = "email.outbox";
    /// Scheduled mails wait here (one subject per mail).
    pub const SCHEDULED_PREFIX: &str = "email.scheduled";
    pub const ALL: [&str; 2] = ["email.outbox", "email.scheduled.>"];

    pub fn scheduled(id: &str) -> String {
        format!("{SCHEDULED_PREFIX}.{id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_round_trip() {
        let raw = json!({"to": "a@b.example", "subject": "Hi", "body": "Hello"});
        let req: EmailRequest = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(req.send_at, None);
        assert_eq!(serde_json::to_value(&req).unwrap(), raw);
    }

    #[test]
    fn accepted_keeps_null_schedule() {
        let a = EmailAccepted {
            accepted: true,
            id: "em-1".into(),
            scheduled_for: None,
        };
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            json!({"accepted": true, "id": "em-1", "scheduled_for": null})
        );
    }

    #[test]
    fn event_and_job_round_trip() {
        let e = EmailEvent {
            id: "em-1".into(),
            to: "a@b.example".into(),
            subject: "s".into(),
            at: "t".into(),
            error: None,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["error"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<EmailEvent>(v).unwrap(), e);
        let job = EmailJob {
            id: "em-1".into(),
            kind: EmailKind::Receipt,
            to: "a@b.example".into(),
            subject: "s".into(),
            body: "b".into(),
            accepted_at: "t".into(),
            scheduled_for: None,
            idempotency_key: None,
            payment_id: Some("p".into()),
            traceparent: None,
        };
        let back: EmailJob = serde_json::from_slice(&serde_json::to_vec(&job).unwrap()).unwrap();
        assert_eq!(back, job);
        assert_eq!(subjects::scheduled("em-1"), "email.scheduled.em-1");
    }

    #[test]
    fn ids_and_message_ids() {
        assert!(valid_id("em-4vWGYd3cBvHqPYXUQ2Mf0b"));
        assert!(valid_id("rcpt-pay_001"));
        assert!(valid_id(&format!("rcpt-{}", "p".repeat(128))));
        assert!(!valid_id(&format!("rcpt-{}", "p".repeat(129))));
        for bad in ["", "em.1", "em 1", "em*", "em>", "<em>", "em@x", "em/1"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        assert_eq!(message_id("em-1"), "<em-1@switchyard>");
    }
}
