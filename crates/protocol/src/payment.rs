//! `payment-processor` messages, its KV record and its DLQ headers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Published (JetStream, `Nats-Msg-Id: <payment_id>`) on
/// `services.payment.payment-process`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRequest {
    /// 1 to 128 characters of `A-Z a-z 0-9 _ -`; also the KV key.
    pub payment_id: String,
    /// Who pays; optional (empty).
    #[serde(default)]
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    /// A positive decimal: a string such as `"99.99"`, or a JSON number
    /// (`99.99`), taken as its exact text, never through a float
    /// ([`amount_text`]). At most as many decimals as the currency has
    /// (2 for USD, 0 for JPY; trailing zeros do not count).
    #[serde(deserialize_with = "amount_text")]
    #[schemars(with = "AmountSchema")]
    pub amount: String,
    /// An ISO 4217 code from the processor's configured list; optional
    /// (the processor's `payments.default_currency`, USD).
    #[serde(default)]
    pub currency: String,
    /// Where the receipt goes; no email, no receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// What the schema says of `amount`: a decimal string or a JSON number.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code, reason = "only its schema is used")]
enum AmountSchema {
    Text(String),
    Number(f64),
}

/// `amount` as text: a JSON string as it is, a JSON number as the exact
/// characters of its literal (`99.99` stays `99.99`, `0.1` stays `0.1`,
/// `1e2` stays `1e2` for the rules to read exactly). Read through
/// serde_json's `RawValue`, so it needs a serde_json deserializer over the
/// message bytes (`from_slice`, `from_str`), which is how every payment is
/// read.
pub fn amount_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error as _;
    let raw: Box<serde_json::value::RawValue> = Deserialize::deserialize(d)?;
    let text = raw.get().trim();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text).map_err(D::Error::custom),
        Some(b'-' | b'0'..=b'9') => Ok(text.to_owned()),
        _ => Err(D::Error::custom(format!(
            "amount must be a decimal string or a JSON number, not {text}"
        ))),
    }
}

/// Whether `id` can be a payment id (and so a KV key and a Msg-Id prefix).
pub fn valid_payment_id(id: &str) -> bool {
    crate::token::check(id, PAYMENT_ID_MAX_LEN, crate::token::Charset::Safe).is_ok()
}

/// The longest payment id, in bytes.
pub const PAYMENT_ID_MAX_LEN: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Waiting to be (re)tried: after a transient failure, or re-queued by replay.
    Pending,
    /// Claimed by a processor instance that is charging it now.
    Processing,
    Completed,
    Failed,
}

impl PaymentStatus {
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The value stored in KV bucket `payments` under the payment id. Clients
/// may read it directly; `services.payment.status` answers from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRecord {
    pub payment_id: String,
    pub user_id: String,
    #[serde(default)]
    pub subscription_id: Option<String>,
    pub amount: String,
    pub currency: String,
    #[serde(default)]
    pub email: Option<String>,
    pub status: PaymentStatus,
    /// Processing attempts so far (each claim of the payment counts one).
    pub attempts: u32,
    /// Why it failed, or the last transient error while pending.
    #[serde(default)]
    pub reason: Option<String>,
    pub updated_at: String,
    /// The `PAYMENTS` stream sequence of the message that owns the claim.
    #[serde(default)]
    pub owner_seq: u64,
    /// Until when (unix ms) the owner's claim holds against other messages.
    #[serde(default)]
    pub lease_until_ms: u64,
    /// How many times the payment was replayed.
    #[serde(default)]
    pub replays: u32,
    /// The gateway's reference for the charge.
    #[serde(default)]
    pub charge_id: Option<String>,
    /// Why a failed payment went to `PAYMENTS_DLQ` (absent: it did not,
    /// e.g. a rule rejected it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq_reason: Option<DlqReason>,
    /// The W3C `traceparent` of the message that first claimed the payment:
    /// its events continue that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl PaymentRecord {
    /// The gateway idempotency key of the current replay: stable for a
    /// payment and its replay number, so every attempt of one replay asks
    /// the gateway for the same charge.
    pub fn idempotency_key(&self) -> String {
        format!("{}.r{}", self.payment_id, self.replays)
    }
}

impl PaymentRecord {
    /// The original request, for replays.
    pub fn request(&self) -> PaymentRequest {
        PaymentRequest {
            payment_id: self.payment_id.clone(),
            user_id: self.user_id.clone(),
            subscription_id: self.subscription_id.clone(),
            amount: self.amount.clone(),
            currency: self.currency.clone(),
            email: self.email.clone(),
        }
    }
}

/// `services.payment.status` and `services.payment.replay` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentIdRequest {
    pub payment_id: String,
}

/// `services.payment.status` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StatusReply {
    pub payment_id: String,
    pub status: PaymentStatus,
    pub amount: String,
    pub currency: String,
    pub attempts: u32,
    pub updated_at: String,
    /// Present as `null` when there is none.
    pub reason: Option<String>,
    pub user_id: String,
    pub replays: u32,
}

impl From<&PaymentRecord> for StatusReply {
    fn from(r: &PaymentRecord) -> Self {
        Self {
            payment_id: r.payment_id.clone(),
            status: r.status,
            amount: r.amount.clone(),
            currency: r.currency.clone(),
            attempts: r.attempts,
            updated_at: r.updated_at.clone(),
            reason: r.reason.clone(),
            user_id: r.user_id.clone(),
            replays: r.replays,
        }
    }
}

/// `services.payment.replay` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReplayReply {
    pub payment_id: String,
    /// Always `pending`: the payment is queued again.
    pub status: PaymentStatus,
    /// Which replay this is (1 for the first).
    pub replay: u32,
}

/// `events.payment.completed` / `events.payment.failed`, with
/// `Nats-Msg-Id: <payment_id>.<status>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentEvent {
    pub payment_id: String,
    pub user_id: String,
    pub amount: String,
    pub currency: String,
    pub email: Option<String>,
    pub status: PaymentStatus,
    pub reason: Option<String>,
    pub at: String,
}

/// Why a message went to `PAYMENTS_DLQ` (header `Switchyard-Dlq-Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DlqReason {
    /// The body is not a valid payment request.
    InvalidMessage,
    /// The gateway kept failing until the last delivery.
    GatewayFailed,
    /// The server gave up redelivering it (MAX_DELIVERIES advisory).
    MaxDeliveries,
}

impl DlqReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidMessage => "invalid_message",
            Self::GatewayFailed => "gateway_failed",
            Self::MaxDeliveries => "max_deliveries",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::InvalidMessage,
            Self::GatewayFailed,
            Self::MaxDeliveries,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// Headers of a `PAYMENTS_DLQ` message; its body is the original body, byte for byte.
pub mod dlq_headers {
    pub const REASON: &str = "Switchyard-Dlq-Reason";
    /// A human sentence: what went wrong last.
    pub const ERROR: &str = "Switchyard-Dlq-Error";
    /// Present when the body had a readable payment id.
    pub const PAYMENT_ID: &str = "Switchyard-Payment-Id";
    /// The `PAYMENTS` stream sequence of the original message.
    pub const STREAM_SEQ: &str = "Switchyard-Stream-Seq";
    pub const DELIVERIES: &str = "Switchyard-Deliveries";
}

/// Header on a re-queued payment: which replay it is.
pub const REPLAY_HEADER: &str = "Switchyard-Replay";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_round_trip_and_optional_fields() {
        let raw = json!({"payment_id": "pay-001", "user_id": "user-123", "amount": "99.99", "currency": "USD"});
        let req: PaymentRequest = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(req.email, None);
        assert_eq!(serde_json::to_value(&req).unwrap(), raw);
        let full = json!({"payment_id": "p", "user_id": "u", "subscription_id": "sub-monthly",
            "amount": "1", "currency": "EUR", "email": "a@b.example"});
        let req: PaymentRequest = serde_json::from_value(full.clone()).unwrap();
        assert_eq!(serde_json::to_value(&req).unwrap(), full);
    }

    #[test]
    fn payment_ids() {
        assert!(valid_payment_id("pay-001"));
        assert!(valid_payment_id("A_b-9"));
        assert!(!valid_payment_id(""));
        assert!(!valid_payment_id("pay.001"));
        assert!(!valid_payment_id("pay 001"));
        assert!(!valid_payment_id("pay*"));
        assert!(!valid_payment_id(&"x".repeat(129)));
    }

    #[test]
    fn status_reply_keeps_null_reason() {
        let record = PaymentRecord {
            payment_id: "p".into(),
            user_id: "u".into(),
            subscription_id: None,
            amount: "1.00".into(),
            currency: "USD".into(),
            email: None,
            status: PaymentStatus::Completed,
            attempts: 1,
            reason: None,
            updated_at: "2026-11-23T00:00:00Z".into(),
            owner_seq: 3,
            lease_until_ms: 0,
            dlq_reason: None,
            replays: 0,
            charge_id: Some("ch".into()),
            traceparent: None,
        };
        let v = serde_json::to_value(StatusReply::from(&record)).unwrap();
        assert_eq!(v["reason"], serde_json::Value::Null);
        assert_eq!(v["status"], "completed");
        let back: PaymentRecord =
            serde_json::from_slice(&serde_json::to_vec(&record).unwrap()).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.request().payment_id, "p");
    }

    #[test]
    fn dlq_reasons() {
        for r in [
            DlqReason::InvalidMessage,
            DlqReason::GatewayFailed,
            DlqReason::MaxDeliveries,
        ] {
            assert_eq!(DlqReason::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}
