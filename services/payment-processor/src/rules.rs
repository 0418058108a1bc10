//! Validation and business rules: pure, so every rule is unit-tested.

use protocol::payment::{
    DlqReason, PaymentRecord, PaymentRequest, PaymentStatus, valid_payment_id,
};
use rust_decimal::Decimal;
use std::str::FromStr as _;

/// A message that is not a payment at all: it goes to the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

/// Decodes and checks the shape of a payment message.
pub fn decode(body: &[u8]) -> Result<(PaymentRequest, Decimal), Invalid> {
    let req: PaymentRequest = runtime::micro::decode(body).map_err(|e| Invalid(e.message))?;
    if !valid_payment_id(&req.payment_id) {
        return Err(Invalid(format!(
            "payment_id {:?} must be 1 to 128 characters of A-Z, a-z, 0-9, '_' and '-'",
            req.payment_id
        )));
    }
    if req.user_id.trim().is_empty() {
        return Err(Invalid("user_id must not be empty".into()));
    }
    let amount = Decimal::from_str(req.amount.trim())
        .map_err(|_| Invalid(format!("amount {:?} is not a decimal number", req.amount)))?;
    Ok((req, amount))
}

/// The payment id of a message that did not decode, if it has a usable one.
pub fn readable_id(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = value.get("payment_id")?.as_str()?;
    valid_payment_id(id).then(|| id.to_owned())
}

/// The `failed` record of an invalid message whose id is readable: the
/// fields it has, as text, and reason `invalid_message: <why>`.
pub fn invalid_record(body: &[u8], seq: u64, why: &str) -> Option<PaymentRecord> {
    let payment_id = readable_id(body)?;
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = |field: &str| match value.get(field) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let optional = |field: &str| value.get(field).and_then(|v| v.as_str()).map(str::to_owned);
    Some(PaymentRecord {
        payment_id,
        user_id: text("user_id"),
        subscription_id: optional("subscription_id"),
        amount: text("amount"),
        currency: text("currency"),
        email: optional("email"),
        status: PaymentStatus::Failed,
        attempts: 0,
        reason: Some(format!("{}: {why}", DlqReason::InvalidMessage.as_str())),
        updated_at: runtime::time::now_rfc3339(),
        owner_seq: seq,
        lease_until_ms: 0,
        replays: 0,
        charge_id: None,
        dlq_reason: Some(DlqReason::InvalidMessage),
    })
}

/// The processor's rules: a positive amount within the limit, a known currency.
#[derive(Debug, Clone)]
pub struct Rules {
    pub limit: Decimal,
    pub currencies: Vec<String>,
}

impl Rules {
    /// `Err(reason)`: the payment is rejected for good (status `failed`).
    pub fn check(&self, req: &PaymentRequest, amount: Decimal) -> Result<(), String> {
        if amount <= Decimal::ZERO {
            return Err(format!("amount {} must be greater than zero", req.amount));
        }
        if amount > self.limit {
            return Err(format!(
                "amount {} is over the limit of {}",
                req.amount, self.limit
            ));
        }
        if !self.currencies.iter().any(|c| c == &req.currency) {
            return Err(format!(
                "currency {:?} is not accepted; accepted: {}",
                req.currency,
                self.currencies.join(", ")
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            limit: Decimal::from(1000),
            currencies: vec!["USD".into(), "EUR".into()],
        }
    }

    fn req(amount: &str, currency: &str) -> Vec<u8> {
        format!(
            r#"{{"payment_id":"p-1","user_id":"u","amount":"{amount}","currency":"{currency}"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn valid_payment_passes() {
        let (r, a) = decode(&req("99.99", "USD")).unwrap();
        assert_eq!(a, Decimal::from_str("99.99").unwrap());
        assert_eq!(rules().check(&r, a), Ok(()));
        let (r, a) = decode(&req("1000", "EUR")).unwrap();
        assert_eq!(rules().check(&r, a), Ok(()), "the limit itself is allowed");
    }

    #[test]
    fn rule_rejections() {
        for (amount, currency, want) in [
            ("0", "USD", "greater than zero"),
            ("-5.00", "USD", "greater than zero"),
            ("1000.01", "USD", "over the limit"),
            ("10", "XXX", "not accepted"),
            ("10", "usd", "not accepted"),
        ] {
            let (r, a) = decode(&req(amount, currency)).unwrap();
            let reason = rules().check(&r, a).unwrap_err();
            assert!(reason.contains(want), "{amount} {currency}: {reason}");
        }
    }

    #[test]
    fn invalid_messages() {
        for body in [
            &b"not json"[..],
            b"",
            b"{}",
            br#"{"payment_id":"p.1","user_id":"u","amount":"1","currency":"USD"}"#,
            br#"{"payment_id":"p","user_id":" ","amount":"1","currency":"USD"}"#,
            br#"{"payment_id":"p","user_id":"u","amount":"ten","currency":"USD"}"#,
            br#"{"payment_id":"p","user_id":"u","amount":10,"currency":"USD"}"#,
        ] {
            assert!(decode(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn invalid_messages_with_a_readable_id_get_a_failed_record() {
        let body = br#"{"payment_id":"pay-001","amount":99.99}"#;
        let why = decode(body).unwrap_err().0;
        let record = invalid_record(body, 7, &why).unwrap();
        assert_eq!(record.payment_id, "pay-001");
        assert_eq!(record.amount, "99.99");
        assert_eq!(record.status, PaymentStatus::Failed);
        assert_eq!(record.owner_seq, 7);
        assert!(record.reason.unwrap().starts_with("invalid_message: "));
        for body in [
            &b"not json"[..],
            br#"{"payment_id":"p.1"}"#,
            br#"{"payment_id":5}"#,
            b"[]",
        ] {
            assert_eq!(invalid_record(body, 1, "x"), None);
            assert_eq!(readable_id(body), None);
        }
    }
}
