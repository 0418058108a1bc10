//! Names of micro services, queue groups, JetStream streams, consumers, KV
//! buckets and keys.

/// Micro service names, as `$SRV.PING` reports them.
pub mod services {
    pub const MATH: &str = "math";
    pub const EMAIL_NOTIFIER: &str = "email-notifier";
    pub const PAYMENT_PROCESSOR: &str = "payment-processor";
    pub const LOG_WORKER: &str = "log-worker";
    pub const STOCK_TICKER: &str = "stock-ticker";
    pub const REGISTRY: &str = "registry";

    /// All six, in the order `switchyard up` starts them.
    pub const ALL: [&str; 6] = [
        REGISTRY,
        MATH,
        EMAIL_NOTIFIER,
        PAYMENT_PROCESSOR,
        LOG_WORKER,
        STOCK_TICKER,
    ];

    /// The binary (and Cargo package) that runs a service.
    /// (Kept in the service's [`Manifest`](crate::manifest::Manifest).)
    pub fn binary(service: &str) -> Option<&'static str> {
        crate::manifest::of(service).map(|m| m.binary)
    }
}

/// Queue groups.
pub mod queue_groups {
    /// The NATS micro protocol's default queue group, which `math` uses.
    pub const MICRO_DEFAULT: &str = "q";
    pub const EMAIL_NOTIFIER: &str = "email-notifier";
    /// Registry instances share the reaper's work through it.
    pub const REGISTRY: &str = "registry";
}

/// JetStream streams.
pub mod streams {
    pub const PAYMENTS: &str = "PAYMENTS";
    pub const PAYMENTS_DLQ: &str = "PAYMENTS_DLQ";
    /// Keeps the server's MAX_DELIVERIES advisories for `PAYMENTS` until a
    /// processor handles them (a core subscription misses those sent while
    /// no processor runs).
    pub const PAYMENTS_ADVISORIES: &str = "PAYMENTS_ADVISORIES";
    pub const EVENTS: &str = "EVENTS";
    pub const LOGS: &str = "LOGS";
    /// Log records a log-worker could not write by their last delivery.
    pub const LOGS_DLQ: &str = "LOGS_DLQ";
    pub const STOCKS: &str = "STOCKS";
    /// Durable (and scheduled) outgoing email.
    pub const EMAILS: &str = "EMAILS";
    /// Every stream of the system (a new one goes here, and the manifest
    /// tests then want an owner for it).
    pub const ALL: [&str; 8] = [
        PAYMENTS,
        PAYMENTS_DLQ,
        PAYMENTS_ADVISORIES,
        EVENTS,
        LOGS,
        LOGS_DLQ,
        STOCKS,
        EMAILS,
    ];
}

/// Durable JetStream consumers.
pub mod consumers {
    pub const PAYMENT_PROCESSOR: &str = "payment-processor";
    /// On `PAYMENTS_ADVISORIES`, shared by every payment-processor instance.
    pub const PAYMENT_ADVISORIES: &str = "payment-advisories";
    pub const LOG_WORKERS: &str = "log-workers";
    pub const EMAIL_RECEIPTS: &str = "email-receipts";
    pub const EMAIL_SENDER: &str = "email-sender";
}

/// JetStream key-value buckets.
pub mod buckets {
    /// Site-wide flags such as [`keys::SITE_MAINTENANCE`](super::keys::SITE_MAINTENANCE).
    pub const CONFIG: &str = "config";
    pub const PAYMENTS: &str = "payments";
    pub const REGISTRY: &str = "registry";
    /// The stock-ticker leader lease (key `leader`, entries expire after the TTL).
    pub const STOCKS_LEASE: &str = "stock-ticker-lease";
    /// Cluster-wide log-worker counters (key `totals`).
    pub const LOG_STATS: &str = "log-stats";
    /// The email-notifier's durable record of mails the SMTP relay accepted
    /// (key = email id, written right after the relay's 250).
    pub const EMAIL_SENT: &str = "email-sent";
    /// Every bucket of the system.
    pub const ALL: [&str; 6] = [
        CONFIG,
        PAYMENTS,
        REGISTRY,
        STOCKS_LEASE,
        LOG_STATS,
        EMAIL_SENT,
    ];
}

/// Well-known KV keys.
pub mod keys {
    /// In bucket `config`: the raw bytes `true` or `false`.
    pub const SITE_MAINTENANCE: &str = "site_maintenance";
    /// In every bucket: the key of the readiness probe (`runtime::js::wait_usable`),
    /// refused by the bucket's stream and never stored.
    pub const USABLE_PROBE: &str = "_switchyard_usable_probe";
}

/// NATS headers the contract uses.
pub mod headers {
    pub const SERVICE_ERROR: &str = "Nats-Service-Error";
    pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";
    pub const MSG_ID: &str = "Nats-Msg-Id";
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C `tracestate`, carried along with `traceparent` when present.
    pub const TRACESTATE: &str = "tracestate";
    /// JetStream message scheduling (server 2.12+): `@at <RFC 3339>`.
    pub const SCHEDULE: &str = "Nats-Schedule";
    /// Where a scheduled message is published when its time comes.
    pub const SCHEDULE_TARGET: &str = "Nats-Schedule-Target";
}

/// Parses the maintenance flag's raw value: `true` (any case, surrounding
/// white space ignored) means on; anything else, including an empty or
/// deleted key, means off.
pub fn maintenance_flag(value: &[u8]) -> bool {
    std::str::from_utf8(value).is_ok_and(|s| s.trim().eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_a_binary() {
        for name in services::ALL {
            assert!(services::binary(name).is_some(), "{name}");
        }
        assert_eq!(services::binary("nope"), None);
    }

    #[test]
    fn maintenance_flag_is_strict_about_true() {
        assert!(maintenance_flag(b"true"));
        assert!(maintenance_flag(b" TRUE\n"));
        assert!(!maintenance_flag(b"false"));
        assert!(!maintenance_flag(b""));
        assert!(!maintenance_flag(b"\"true\""));
        assert!(!maintenance_flag(&[0xff, 0xfe]));
    }
}
