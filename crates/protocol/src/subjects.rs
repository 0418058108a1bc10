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
/// A fire-and-forget email request the notifier refused
/// ([`crate::micro::Rejected`]).
pub const EVENT_EMAIL_REJECTED: &str = "events.email.rejected";

// --- payment-processor --------------------------------------------------
/// The `PAYMENTS` stream's subject: payments are JetStream-published here.
pub const PAYMENT_PROCESS: &str = "services.payment.payment-process";
pub const PAYMENT_STATUS: &str = "services.payment.status";
pub const PAYMENT_REPLAY: &str = "services.payment.replay";
/// The `PAYMENTS_DLQ` stream's subject.
pub const PAYMENT_DLQ: &str = "dlq.payments";
pub const EVENT_PAYMENT_COMPLETED: &str = "events.payment.completed";
pub const EVENT_PAYMENT_FAILED: &str = "events.payment.failed";
/// Every payment event (`completed`, `failed`).
pub const EVENT_PAYMENT_ALL: &str = "events.payment.>";

// --- events ---------------------------------------------------------------
/// Everything published here is kept in stream `EVENTS`.
pub const EVENTS_ALL: &str = "events.>";

// --- log-worker -----------------------------------------------------------
/// First token of every log subject.
pub const LOGS_PREFIX: &str = "logs";
/// All log subjects (stream `LOGS`).
pub const LOGS_ALL: &str = "logs.>";
/// Seed-compatible subject; same body as `logs.<service>.<level>`.
pub const LOGS_PROCESS: &str = "logs.process";
pub const LOGS_STATS: &str = "services.logs.stats";
pub const LOGS_QUERY: &str = "services.logs.query";
/// The `LOGS_DLQ` stream's subject (outside `logs.>`, which `LOGS` captures).
pub const LOGS_DLQ: &str = "dlq.logs";
/// Log levels, lowest first.
pub const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// `logs.<service>.>`: every level of one service (what its user may publish).
pub fn logs_of(service: &str) -> Result<String, SubjectError> {
    check_token(service)?;
    Ok(format!("{LOGS_PREFIX}.{service}.>"))
}

/// `logs.<service>.<level>` with `*` for what is not given: the filter of a
/// log query or tail.
pub fn logs_filter(service: Option<&str>, level: Option<&str>) -> Result<String, SubjectError> {
    if let Some(service) = service {
        check_token(service)?;
    }
    if let Some(level) = level.filter(|l| !LOG_LEVELS.contains(l)) {
        return Err(SubjectError::UnknownLevel(level.to_owned()));
    }
    Ok(format!(
        "{LOGS_PREFIX}.{}.{}",
        service.unwrap_or("*"),
        level.unwrap_or("*")
    ))
}

/// `logs.<service>.<level>`.
pub fn logs(service: &str, level: &str) -> Result<String, SubjectError> {
    check_token(service)?;
    if !LOG_LEVELS.contains(&level) {
        return Err(SubjectError::UnknownLevel(level.to_owned()));
    }
    Ok(format!("{LOGS_PREFIX}.{service}.{level}"))
}

// --- stock-ticker -----------------------------------------------------------
/// Apps' own core NATS subjects (the seed playground's `demo.hello`,
/// `demo.tasks`): no service and no stream uses them; `client` may
/// publish and subscribe them.
pub const DEMO_ALL: &str = "demo.>";

/// Seed 004's pub/sub subject (`switchyard role publisher|subscriber`).
pub const SEED_UPDATES: &str = "updates";
/// Seed 004's request-reply subject (`switchyard role requester|replier`).
pub const SEED_PING: &str = "ping";

/// First token of every tick subject.
pub const STOCKS_PREFIX: &str = "stocks";
/// All tick subjects (stream `STOCKS`).
pub const STOCKS_ALL: &str = "stocks.>";
pub const STOCKS_SNAPSHOT: &str = "services.stocks.snapshot";
pub const STOCKS_SYMBOLS: &str = "services.stocks.symbols";

/// `stocks.<SYMBOL>`.
pub fn stock(symbol: &str) -> Result<String, SubjectError> {
    check_token(symbol)?;
    Ok(format!("{STOCKS_PREFIX}.{symbol}"))
}

// --- registry -----------------------------------------------------------------
pub const REGISTRY_REGISTER: &str = "services.registry.register";
pub const REGISTRY_HEARTBEAT: &str = "services.registry.heartbeat";
pub const REGISTRY_DEREGISTER: &str = "services.registry.deregister";
pub const REGISTRY_LIST: &str = "services.registry.list";
/// Prefix of `services.registry.lookup.<name>`.
pub const REGISTRY_LOOKUP_PREFIX: &str = "services.registry.lookup";

/// `services.registry.lookup.*`: what the registry's lookup endpoint serves.
pub fn registry_lookup_all() -> String {
    format!("{REGISTRY_LOOKUP_PREFIX}.*")
}

/// `services.registry.lookup.<name>`.
pub fn registry_lookup(name: &str) -> Result<String, SubjectError> {
    check_token(name)?;
    Ok(format!("{REGISTRY_LOOKUP_PREFIX}.{name}"))
}

// --- core NATS and JetStream ------------------------------------------------------
/// The inbox prefix of a connection without a user (local development
/// without auth): async-nats's and nats.py's default.
pub const INBOX_PREFIX: &str = "_INBOX";
/// Every reply inbox of connections without a user (`_INBOX.>`). No user of
/// the locked-down deployments may subscribe to it: see [`inbox_prefix`].
pub const INBOX_ALL: &str = "_INBOX.>";
/// What every per-user inbox prefix starts with: `_INBOX_<user>`.
pub const USER_INBOX_PREFIX: &str = "_INBOX_";

/// `_INBOX_<user>`: the inbox prefix of connections as NATS user `user`.
/// Its replies, KV and direct-get answers and JetStream pull deliveries all
/// arrive under it, and the user may subscribe only to
/// [`user_inbox_all`]`(user)`, so no other user can read them.
pub fn inbox_prefix(user: &str) -> String {
    format!("{USER_INBOX_PREFIX}{user}")
}

/// `_INBOX_<user>.>`: every inbox of user `user`.
pub fn user_inbox_all(user: &str) -> String {
    format!("{}.>", inbox_prefix(user))
}

/// True when `subject` is a reply inbox: `_INBOX.<...>` or
/// `_INBOX_<user>.<...>`. Services answer requests only there, so a
/// request cannot make a service publish to a subject of the contract
/// (say `events.payment.completed`) by naming it as its reply subject.
pub fn is_inbox(subject: &str) -> bool {
    let rest = if let Some(rest) = subject.strip_prefix("_INBOX.") {
        rest
    } else if let Some(user_and_rest) = subject.strip_prefix(USER_INBOX_PREFIX) {
        match user_and_rest.split_once('.') {
            Some((user, rest)) if !user.is_empty() => rest,
            _ => return false,
        }
    } else {
        return false;
    };
    !rest.is_empty()
        && rest
            .split('.')
            .all(|token| !token.is_empty() && token != "*" && token != ">")
}

/// Prefix of the readiness probe subject every Switchyard stream also
/// captures (see [`stream_probe`]).
pub const STREAM_PROBE_PREFIX: &str = "_switchyard.probe";

/// `_switchyard.probe.<STREAM>`: a subject stream `<STREAM>` captures only so
/// that a client can check the stream answers publishes from its connection
/// (`runtime::js::wait_usable`). Probes on it are refused by the stream and
/// never stored, and no wildcard a client uses for the stream's own subjects
/// (`stocks.>`, `events.>`, ...) sees them.
pub fn stream_probe(stream: &str) -> String {
    format!("{STREAM_PROBE_PREFIX}.{stream}")
}
/// Prefix of `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`.
pub const ADVISORY_MAX_DELIVERIES_PREFIX: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES";

/// The advisory the server publishes when a message of `stream` ran out of
/// deliveries on `consumer`.
pub fn max_deliveries_advisory(stream: &str, consumer: &str) -> String {
    format!("{ADVISORY_MAX_DELIVERIES_PREFIX}.{stream}.{consumer}")
}

/// `$KV.<bucket>.<key>`: where a KV put or delete of `key` is published.
pub fn kv_key(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

// --- micro discovery ------------------------------------------------------------
// `$SRV` subjects are built by `crate::micro::Verb::subject` only.

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
    use crate::token::{self, Charset, TokenError};
    token::check(token, token::UNLIMITED, Charset::Subject).map_err(|err| match err {
        TokenError::Empty => SubjectError::Empty,
        TokenError::Invalid(t) => SubjectError::Invalid(t),
        TokenError::TooLong { .. } => SubjectError::Invalid(token.to_owned()),
    })
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
        assert_eq!(logs_of("math").as_deref(), Ok("logs.math.>"));
        assert_eq!(
            logs_filter(Some("math"), None).as_deref(),
            Ok("logs.math.*")
        );
        assert_eq!(
            logs_filter(None, Some("warn")).as_deref(),
            Ok("logs.*.warn")
        );
        assert!(logs_filter(Some("a.b"), None).is_err());
        assert!(logs_filter(None, Some("loud")).is_err());
        assert_eq!(registry_lookup_all(), "services.registry.lookup.*");
        assert_eq!(
            max_deliveries_advisory("PAYMENTS", "payment-processor"),
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.PAYMENTS.payment-processor"
        );
        assert_eq!(
            kv_key("config", "site_maintenance"),
            "$KV.config.site_maintenance"
        );
        assert_eq!(
            registry_lookup("math").as_deref(),
            Ok("services.registry.lookup.math")
        );
    }

    #[test]
    fn inboxes_are_the_default_and_per_user_prefixes_only() {
        assert_eq!(inbox_prefix("math"), "_INBOX_math");
        assert_eq!(user_inbox_all("math"), "_INBOX_math.>");
        for inbox in [
            "_INBOX.abc",
            "_INBOX.abc.1",
            "_INBOX_math.abc",
            "_INBOX_client.Xyz.Q7",
            "_INBOX_payment-processor.a",
        ] {
            assert!(is_inbox(inbox), "{inbox}");
        }
        for other in [
            EVENT_PAYMENT_COMPLETED,
            "events._INBOX.x",
            "_INBOX",
            "_INBOX.",
            "_INBOX_",
            "_INBOX_.x",
            "_INBOX_math",
            "_INBOX_math.",
            "_INBOX..x",
            "_INBOX.a..b",
            "_INBOX.>",
            "_INBOX_math.*",
            "_INBOXES.x",
            "_inbox.x",
            "",
        ] {
            assert!(!is_inbox(other), "{other:?}");
        }
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
