//! Every subject of the contract. Fixed subjects are constants; subjects with
//! a variable token are built by functions that check the token.

use thiserror::Error;

// --- math ---------------------------------------------------------------
pub const MATH_CALCULATE: &str = "services.math.calculate";
/// Prefix of the per-operation endpoints `services.math.<operation>`.
pub const MATH_PREFIX: &str = "services.math";

/// `services.math.<operation>`, e.g. `services.math.add`.
pub fn math_operation(operation: crate::math::Operation) -> String {
    format!("{MATH_PREFIX}.{}", operation.as_str())
}

// --- email-notifier -----------------------------------------------------
pub const EMAIL_SEND: &str = "services.notification.email-send";
pub const EVENT_EMAIL_SENT: &str = "events.email.sent";
pub const EVENT_EMAIL_FAILED: &str = "events.email.failed";

// --- payment-processor --------------------------------------------------
/// The `PAYMENTS` stream's subject: payments are JetStream-published here.
pub const PAYMENT_PROCESS: &str = "services.payment.payment-process";
pub const PAYMENT_STATUS: &str = "services.payment.status";
pub const PAYMENT_REPLAY: &str = "services.payment.replay";
/// The `PAYMENTS_DLQ` stream's subject.
pub const PAYMENT_DLQ: &str = "dlq.payments";
pub const EVENT_PAYMENT_COMPLETED: &str = "events.payment.completed";
pub const EVENT_PAYMENT_FAILED: &str = "events.payment.failed";

// --- events ---------------------------------------------------------------
/// Everything published here is kept in stream `EVENTS`.
pub const EVENTS_ALL: &str = "events.>";

// --- log-worker -----------------------------------------------------------
/// All log subjects (stream `LOGS`).
pub const LOGS_ALL: &str = "logs.>";
/// Seed-compatible subject; same body as `logs.<service>.<level>`.
pub const LOGS_PROCESS: &str = "logs.process";
pub const LOGS_STATS: &str = "services.logs.stats";
pub const LOGS_QUERY: &str = "services.logs.query";
/// Log levels, lowest first.
pub const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// `logs.<service>.<level>`.
pub fn logs(service: &str, level: &str) -> Result<String, SubjectError> {
    check_token(service)?;
    if !LOG_LEVELS.contains(&level) {
        return Err(SubjectError::UnknownLevel(level.to_owned()));
    }
    Ok(format!("logs.{service}.{level}"))
}

// --- stock-ticker -----------------------------------------------------------
/// All tick subjects (stream `STOCKS`).
pub const STOCKS_ALL: &str = "stocks.>";
pub const STOCKS_SNAPSHOT: &str = "services.stocks.snapshot";
pub const STOCKS_SYMBOLS: &str = "services.stocks.symbols";

/// `stocks.<SYMBOL>`.
pub fn stock(symbol: &str) -> Result<String, SubjectError> {
    check_token(symbol)?;
    Ok(format!("stocks.{symbol}"))
}

// --- registry -----------------------------------------------------------------
pub const REGISTRY_REGISTER: &str = "services.registry.register";
pub const REGISTRY_HEARTBEAT: &str = "services.registry.heartbeat";
pub const REGISTRY_DEREGISTER: &str = "services.registry.deregister";
pub const REGISTRY_LIST: &str = "services.registry.list";
/// Prefix of `services.registry.lookup.<name>`.
pub const REGISTRY_LOOKUP_PREFIX: &str = "services.registry.lookup";

/// `services.registry.lookup.<name>`.
pub fn registry_lookup(name: &str) -> Result<String, SubjectError> {
    check_token(name)?;
    Ok(format!("{REGISTRY_LOOKUP_PREFIX}.{name}"))
}

// --- micro discovery ------------------------------------------------------------
pub const SRV_PING: &str = "$SRV.PING";
pub const SRV_INFO: &str = "$SRV.INFO";
pub const SRV_STATS: &str = "$SRV.STATS";

/// A subject token that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubjectError {
    #[error("subject token must not be empty")]
    Empty,
    #[error("subject token {0:?} must not contain '.', '*', '>' or white space")]
    Invalid(String),
    #[error("unknown log level {0:?}: expected one of trace, debug, info, warn, error")]
    UnknownLevel(String),
}

/// One subject token: non-empty, no separators, wildcards or white space.
pub fn check_token(token: &str) -> Result<(), SubjectError> {
    if token.is_empty() {
        return Err(SubjectError::Empty);
    }
    if token
        .chars()
        .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
    {
        return Err(SubjectError::Invalid(token.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::Operation;

    #[test]
    fn builders_make_contract_subjects() {
        assert_eq!(math_operation(Operation::Add), "services.math.add");
        assert_eq!(math_operation(Operation::Sqrt), "services.math.sqrt");
        assert_eq!(logs("math", "info").as_deref(), Ok("logs.math.info"));
        assert_eq!(stock("AAPL").as_deref(), Ok("stocks.AAPL"));
        assert_eq!(
            registry_lookup("math").as_deref(),
            Ok("services.registry.lookup.math")
        );
    }

    #[test]
    fn builders_refuse_tokens_that_change_the_subject() {
        assert_eq!(stock(""), Err(SubjectError::Empty));
        for bad in ["A.B", "*", ">", "A B", "A\tB", "A\nB"] {
            assert!(
                matches!(stock(bad), Err(SubjectError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            logs("math", "loud"),
            Err(SubjectError::UnknownLevel(_))
        ));
    }
}
