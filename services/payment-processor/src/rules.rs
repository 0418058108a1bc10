//! Validation and business rules: pure, so every rule is unit-tested.

use protocol::payment::{
    DlqReason, PaymentRecord, PaymentRequest, PaymentStatus, valid_payment_id,
};
use rust_decimal::Decimal;
use std::str::FromStr as _;

/// A message that is not a payment at all: it goes to the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

/// Decodes and checks the shape of a payment message; an absent currency
/// becomes `default_currency`.
pub fn decode(body: &[u8], default_currency: &str) -> Result<(PaymentRequest, Decimal), Invalid> {
    let mut req: PaymentRequest = runtime::micro::decode(body).map_err(|e| Invalid(e.message))?;
    if !valid_payment_id(&req.payment_id) {
        return Err(Invalid(format!(
            "payment_id {:?} must be 1 to 128 characters of A-Z, a-z, 0-9, '_' and '-'",
            req.payment_id
        )));
    }
    if req.currency.is_empty() {
        default_currency.clone_into(&mut req.currency);
    }
    let amount = parse_amount(&req.amount)?;
    Ok((req, amount))
}

/// The exact value of an amount's text: a plain decimal (`99.99`, `-5`,
/// `100.50`) or one with an exponent (`1e2`, `9.999E1`), as JSON numbers
/// may be written. No float on the way.
pub fn parse_amount(text: &str) -> Result<Decimal, Invalid> {
    let text = text.trim();
    let bad = || Invalid(format!("amount {text:?} is not a decimal number"));
    if text.is_empty() || text.starts_with('+') {
        return Err(bad());
    }
    if text.contains(['e', 'E']) {
        Decimal::from_scientific(text).map_err(|_| bad())
    } else {
        Decimal::from_str(text).map_err(|_| bad())
    }
}

/// Decimals a currency's amounts may have (ISO 4217 minor units): 0 for
/// JPY, KRW and the like, 3 for BHD, KWD, OMR, TND, JOD, IQD, LYD, 2 for
/// every other code.
pub fn minor_units(currency: &str) -> u32 {
    match currency {
        "JPY" | "KRW" | "CLP" | "ISK" | "VND" | "UGX" | "XAF" | "XOF" | "PYG" | "RWF" => 0,
        "BHD" | "KWD" | "OMR" | "TND" | "JOD" | "IQD" | "LYD" => 3,
        _ => 2,
    }
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
        traceparent: None,
    })
}

/// The processor's rules: a positive amount within the limit, a known
/// currency, no more decimals than the currency has.
#[derive(Debug, Clone)]
pub struct Rules {
    pub limit: Decimal,
    pub currencies: Vec<String>,
    /// The currency of a payment that names none.
    pub default_currency: String,
}

impl Rules {
    /// [`decode`] with this processor's default currency.
    pub fn decode(&self, body: &[u8]) -> Result<(PaymentRequest, Decimal), Invalid> {
        decode(body, &self.default_currency)
    }

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
        let allowed = minor_units(&req.currency);
        if amount.normalize().scale() > allowed {
            return Err(format!(
                "amount {} has more decimals than {} allows ({allowed})",
                req.amount, req.currency
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
            currencies: vec!["USD".into(), "EUR".into(), "JPY".into()],
            default_currency: "USD".into(),
        }
    }

    fn decode(body: &[u8]) -> Result<(PaymentRequest, Decimal), Invalid> {
        rules().decode(body)
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
            ("99.999", "USD", "more decimals than USD allows (2)"),
            ("10.5", "JPY", "more decimals than JPY allows (0)"),
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
            br#"{"payment_id":"p","user_id":"u","amount":"ten","currency":"USD"}"#,
            br#"{"payment_id":"p","user_id":"u","amount":true,"currency":"USD"}"#,
            br#"{"payment_id":"p","user_id":"u","amount":null,"currency":"USD"}"#,
            br#"{"payment_id":"p","user_id":"u","amount":"+5","currency":"USD"}"#,
            br#"{"payment_id":"p","user_id":"u","amount":"1e","currency":"USD"}"#,
            br#"{"payment_id":"p","user_id":"u"}"#,
        ] {
            assert!(decode(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn seed_001_payment_as_written() {
        // No user, no currency, the amount a JSON number.
        let (r, a) = decode(br#"{"payment_id": "pay-001", "amount": 99.99}"#).unwrap();
        assert_eq!((r.amount.as_str(), r.currency.as_str()), ("99.99", "USD"));
        assert_eq!(r.user_id, "");
        assert_eq!(a, Decimal::from_str("99.99").unwrap());
        assert_eq!(rules().check(&r, a), Ok(()));
    }

    #[test]
    fn json_number_amounts_are_exact() {
        for (literal, text, value) in [
            ("0.1", "0.1", "0.1"),
            ("99.99", "99.99", "99.99"),
            ("100", "100", "100"),
            ("99.990", "99.990", "99.99"),
            ("1e2", "1e2", "100"),
            ("9.999E1", "9.999E1", "99.99"),
            ("1.5e-1", "1.5e-1", "0.15"),
            // Beyond f64's 15-17 digits: still exact.
            (
                "123456789.123456789",
                "123456789.123456789",
                "123456789.123456789",
            ),
        ] {
            let body = format!(r#"{{"payment_id":"p","amount":{literal}}}"#);
            let (r, a) = decode(body.as_bytes()).unwrap();
            assert_eq!(r.amount, text, "{literal}");
            assert_eq!(a, Decimal::from_str(value).unwrap(), "{literal}");
        }
        // Trailing zeros do not count as precision; real extra digits do.
        let (r, a) = decode(br#"{"payment_id":"p","amount":99.990}"#).unwrap();
        assert_eq!(rules().check(&r, a), Ok(()));
        let (r, a) = decode(br#"{"payment_id":"p","amount":0.125}"#).unwrap();
        assert!(rules().check(&r, a).unwrap_err().contains("more decimals"));
        let (r, a) = decode(br#"{"payment_id":"p","amount":123456789.123456789}"#).unwrap();
        assert!(rules().check(&r, a).is_err());
    }

    #[test]
    fn invalid_messages_with_a_readable_id_get_a_failed_record() {
        let body = br#"{"payment_id":"pay-001","amount":[99.99]}"#;
        let why = decode(body).unwrap_err().0;
        let record = invalid_record(body, 7, &why).unwrap();
        assert_eq!(record.payment_id, "pay-001");
        assert_eq!(record.amount, "[99.99]");
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
