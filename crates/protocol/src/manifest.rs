//! One manifest per service: what it serves, publishes and subscribes, and
//! which streams, consumers and buckets it owns or uses. Everything is built
//! from the constants of [`names`](crate::names) and [`subjects`](crate::subjects),
//! so the manifests add no new spelling of a subject.
//!
//! Generated from (or checked against) the manifests:
//! - the NATS users and their permissions (`switchyard accounts`);
//! - the Python client's subject constants (`switchyard codegen python`);
//! - the subject table of `docs/CONTRACT.md` (`switchyard codegen docs`).

use crate::micro;
use crate::names::{buckets, consumers, keys, queue_groups, services, streams};
use crate::subjects;
use std::sync::LazyLock;

/// Whether a service creates (and configures) an asset or only uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The service creates it with the configuration that matters.
    Owns,
    /// The service uses an asset another service owns, or a shared one
    /// (see [`SHARED_STREAMS`] and [`SHARED_BUCKETS`]).
    Uses,
}

/// A request-reply endpoint the service serves (it answers `$SRV` for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint's name in `$SRV.INFO`.
    pub name: &'static str,
    /// The subject, possibly with a `*` wildcard (`services.registry.lookup.*`).
    pub subject: String,
    pub queue_group: &'static str,
}

/// A JetStream stream the service touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamUse {
    pub stream: &'static str,
    pub role: Role,
    /// The service deletes single messages from it
    /// (`$JS.API.STREAM.MSG.DELETE`). No service deletes or purges a whole
    /// stream.
    pub deletes_messages: bool,
    /// The service reads it through short-lived ordered consumers (queries).
    pub queries: bool,
}

/// A durable consumer the service creates and reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub stream: &'static str,
    pub durable: &'static str,
    /// The filter subject, if the consumer reads part of the stream.
    pub filter: Option<String>,
}

/// A KV bucket the service touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketUse {
    pub bucket: &'static str,
    pub role: Role,
    /// `Some(key)`: the service only reads and watches this one key.
    pub only_key: Option<&'static str>,
}

/// A JetStream advisory the service follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advisory {
    pub subject: String,
    pub queue_group: Option<&'static str>,
}

/// Everything one service does on NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The micro service name (`$SRV.PING`).
    pub service: &'static str,
    /// The binary and Cargo package.
    pub binary: &'static str,
    /// Its NATS user in the locked-down deployments.
    pub user: &'static str,
    /// The environment variable holding that user's password.
    pub password_env: &'static str,
    /// Request-reply endpoints it serves.
    pub endpoints: Vec<Endpoint>,
    /// Core NATS subscriptions besides endpoints and advisories (patterns allowed).
    pub subscribes: Vec<String>,
    /// Core NATS publishes, no reply expected (patterns allowed).
    pub publishes: Vec<String>,
    /// JetStream publishes: subjects a stream stores (patterns allowed).
    pub js_publishes: Vec<String>,
    /// Subjects it sends requests to (patterns allowed).
    pub requests: Vec<String>,
    pub streams: Vec<StreamUse>,
    pub consumers: Vec<Consumer>,
    pub buckets: Vec<BucketUse>,
    pub advisories: Vec<Advisory>,
    /// Reads the state (not the messages) of every stream and consumer, for
    /// `/metrics`: list and info calls only.
    pub observes_jetstream: bool,
}

/// Streams several services use and none owns: whoever publishes first
/// creates them with the runtime's one configuration (`runtime::js`).
pub const SHARED_STREAMS: [&str; 1] = [streams::EVENTS];
/// Buckets every service uses and none owns (`runtime::maintenance`).
pub const SHARED_BUCKETS: [&str; 1] = [buckets::CONFIG];

impl Manifest {
    /// What the runtime does for every service: answer `$SRV`, register with
    /// the registry, ship its logs, and watch the maintenance flag. (The
    /// service's own manifest is this plus what the service itself does.)
    pub fn runtime(service: &'static str) -> Self {
        Self::base(service, "", "", "")
    }

    fn base(
        service: &'static str,
        binary: &'static str,
        user: &'static str,
        password_env: &'static str,
    ) -> Self {
        Self {
            service,
            binary,
            user,
            password_env,
            endpoints: vec![],
            subscribes: vec![micro::SRV_ALL.to_owned()],
            publishes: vec![logs_of(service)],
            js_publishes: vec![],
            requests: vec![
                subjects::REGISTRY_REGISTER.to_owned(),
                subjects::REGISTRY_HEARTBEAT.to_owned(),
                subjects::REGISTRY_DEREGISTER.to_owned(),
            ],
            streams: vec![],
            consumers: vec![],
            buckets: vec![BucketUse {
                bucket: buckets::CONFIG,
                role: Role::Uses,
                only_key: Some(keys::SITE_MAINTENANCE),
            }],
            advisories: vec![],
            observes_jetstream: false,
        }
    }

    fn endpoint(
        mut self,
        name: &'static str,
        subject: impl Into<String>,
        queue: &'static str,
    ) -> Self {
        self.endpoints.push(Endpoint {
            name,
            subject: subject.into(),
            queue_group: queue,
        });
        self
    }

    fn stream(mut self, stream: &'static str, role: Role) -> Self {
        self.streams.push(StreamUse {
            stream,
            role,
            deletes_messages: false,
            queries: false,
        });
        self
    }

    /// Like [`Self::stream`], for a stream the service queries through
    /// ordered consumers of its own.
    fn stream_queried(mut self, stream: &'static str, role: Role) -> Self {
        self.streams.push(StreamUse {
            stream,
            role,
            deletes_messages: false,
            queries: true,
        });
        self
    }

    /// Like [`Self::stream`], for a stream the service deletes single
    /// messages from.
    fn stream_deleting_messages(mut self, stream: &'static str, role: Role) -> Self {
        self.streams.push(StreamUse {
            stream,
            role,
            deletes_messages: true,
            queries: false,
        });
        self
    }

    fn bucket(mut self, bucket: &'static str, role: Role) -> Self {
        self.buckets.push(BucketUse {
            bucket,
            role,
            only_key: None,
        });
        self
    }

    fn consumer(
        mut self,
        stream: &'static str,
        durable: &'static str,
        filter: Option<&str>,
    ) -> Self {
        self.consumers.push(Consumer {
            stream,
            durable,
            filter: filter.map(str::to_owned),
        });
        self
    }

    fn js_publish(mut self, subject: impl Into<String>) -> Self {
        self.js_publishes.push(subject.into());
        self
    }

    /// Every subject the service subscribes to: endpoints, other
    /// subscriptions and advisories.
    pub fn all_subscribed(&self) -> Vec<&str> {
        self.endpoints
            .iter()
            .map(|e| e.subject.as_str())
            .chain(self.subscribes.iter().map(String::as_str))
            .chain(self.advisories.iter().map(|a| a.subject.as_str()))
            .collect()
    }

    /// Every subject the service publishes to: core, JetStream and requests.
    pub fn all_published(&self) -> Vec<&str> {
        self.publishes
            .iter()
            .chain(&self.js_publishes)
            .chain(&self.requests)
            .map(String::as_str)
            .collect()
    }
}

fn logs_of(service: &str) -> String {
    // Service names are constants that pass the token check (tested below).
    subjects::logs_of(service).unwrap_or_default()
}

fn registry() -> Manifest {
    Manifest::base(
        services::REGISTRY,
        "registry",
        "registry",
        "REGISTRY_PASSWORD",
    )
    .endpoint(
        "register",
        subjects::REGISTRY_REGISTER,
        queue_groups::MICRO_DEFAULT,
    )
    .endpoint(
        "heartbeat",
        subjects::REGISTRY_HEARTBEAT,
        queue_groups::MICRO_DEFAULT,
    )
    .endpoint(
        "deregister",
        subjects::REGISTRY_DEREGISTER,
        queue_groups::MICRO_DEFAULT,
    )
    .endpoint(
        "lookup",
        subjects::registry_lookup_all(),
        queue_groups::MICRO_DEFAULT,
    )
    .endpoint("list", subjects::REGISTRY_LIST, queue_groups::MICRO_DEFAULT)
    .bucket(buckets::REGISTRY, Role::Owns)
    .with_requests([micro::SRV_ALL]) // it asks every instance for `$SRV.STATS`
    .observing_jetstream() // stream and consumer gauges in `/metrics`
    // The live dashboard (`GET /`): ticks, every service's log lines and
    // payment events, read only (core subscriptions, nothing published).
    .subscribing([
        subjects::STOCKS_ALL,
        subjects::LOGS_ALL,
        subjects::EVENT_PAYMENT_ALL,
    ])
}

fn math() -> Manifest {
    let mut m = Manifest::base(services::MATH, "math-service", "math", "MATH_PASSWORD").endpoint(
        "calculate",
        subjects::MATH_CALCULATE,
        queue_groups::MICRO_DEFAULT,
    );
    for op in crate::math::Operation::ALL {
        m = m.endpoint(
            op.as_str(),
            subjects::math_operation(op),
            queue_groups::MICRO_DEFAULT,
        );
    }
    m
}

fn email_notifier() -> Manifest {
    Manifest::base(
        services::EMAIL_NOTIFIER,
        "email-notifier",
        "email",
        "EMAIL_PASSWORD",
    )
    .endpoint(
        "email-send",
        subjects::EMAIL_SEND,
        queue_groups::EMAIL_NOTIFIER,
    )
    .stream(streams::EMAILS, Role::Owns)
    .stream(streams::EVENTS, Role::Uses)
    .bucket(buckets::EMAIL_SENT, Role::Owns)
    .consumer(
        streams::EMAILS,
        consumers::EMAIL_SENDER,
        Some(crate::email::subjects::OUTBOX),
    )
    .consumer(
        streams::EVENTS,
        consumers::EMAIL_RECEIPTS,
        Some(subjects::EVENT_PAYMENT_COMPLETED),
    )
    .js_publish(crate::email::subjects::OUTBOX)
    .js_publish(crate::email::subjects::scheduled(">"))
    .js_publish(subjects::EVENT_EMAIL_SENT)
    .js_publish(subjects::EVENT_EMAIL_FAILED)
    // Refused fire-and-forget sends (runtime `rejections_to`).
    .js_publish(subjects::EVENT_EMAIL_REJECTED)
}

fn payment_processor() -> Manifest {
    Manifest::base(
        services::PAYMENT_PROCESSOR,
        "payment-processor",
        "payments",
        "PAYMENTS_PASSWORD",
    )
    .endpoint(
        "status",
        subjects::PAYMENT_STATUS,
        queue_groups::MICRO_DEFAULT,
    )
    .endpoint(
        "replay",
        subjects::PAYMENT_REPLAY,
        queue_groups::MICRO_DEFAULT,
    )
    // Advisories: a request that exhausted its deliveries is moved to the
    // DLQ and deleted from PAYMENTS (`advisories.rs`).
    .stream_deleting_messages(streams::PAYMENTS, Role::Owns)
    .stream(streams::PAYMENTS_DLQ, Role::Owns)
    .stream(streams::PAYMENTS_ADVISORIES, Role::Owns)
    .stream(streams::EVENTS, Role::Uses)
    .consumer(streams::PAYMENTS, consumers::PAYMENT_PROCESSOR, None)
    .consumer(
        streams::PAYMENTS_ADVISORIES,
        consumers::PAYMENT_ADVISORIES,
        None,
    )
    .bucket(buckets::PAYMENTS, Role::Owns)
    // Replays re-queue the original request.
    .js_publish(subjects::PAYMENT_PROCESS)
    .js_publish(subjects::PAYMENT_DLQ)
    .js_publish(subjects::EVENT_PAYMENT_COMPLETED)
    .js_publish(subjects::EVENT_PAYMENT_FAILED)
}

fn log_worker() -> Manifest {
    Manifest::base(services::LOG_WORKER, "log-worker", "logs", "LOGS_PASSWORD")
        .endpoint("stats", subjects::LOGS_STATS, queue_groups::MICRO_DEFAULT)
        .endpoint("query", subjects::LOGS_QUERY, queue_groups::MICRO_DEFAULT)
        // `services.logs.query` reads LOGS through an ordered consumer.
        .stream_queried(streams::LOGS, Role::Owns)
        .stream(streams::LOGS_DLQ, Role::Owns)
        .consumer(streams::LOGS, consumers::LOG_WORKERS, None)
        .bucket(buckets::LOG_STATS, Role::Owns)
        .js_publish(subjects::LOGS_DLQ)
}

fn stock_ticker() -> Manifest {
    Manifest::base(
        services::STOCK_TICKER,
        "stock-ticker",
        "stocks",
        "STOCKS_PASSWORD",
    )
    .endpoint(
        "snapshot",
        subjects::STOCKS_SNAPSHOT,
        queue_groups::MICRO_DEFAULT,
    )
    .endpoint(
        "symbols",
        subjects::STOCKS_SYMBOLS,
        queue_groups::MICRO_DEFAULT,
    )
    .stream(streams::STOCKS, Role::Owns)
    .bucket(buckets::STOCKS_LEASE, Role::Owns)
    .js_publish(subjects::STOCKS_ALL)
}

impl Manifest {
    fn observing_jetstream(mut self) -> Self {
        self.observes_jetstream = true;
        self
    }

    fn subscribing<const N: usize>(mut self, subjects: [&str; N]) -> Self {
        self.subscribes
            .extend(subjects.iter().map(|s| (*s).to_owned()));
        self
    }

    fn with_requests<const N: usize>(mut self, subjects: [&str; N]) -> Self {
        self.requests
            .extend(subjects.iter().map(|s| (*s).to_owned()));
        self
    }
}

/// The six manifests, in [`services::ALL`] order.
pub static ALL: LazyLock<[Manifest; 6]> = LazyLock::new(|| {
    [
        registry(),
        math(),
        email_notifier(),
        payment_processor(),
        log_worker(),
        stock_ticker(),
    ]
});

/// The manifest of `service` (a name of [`services`]).
pub fn of(service: &str) -> Option<&'static Manifest> {
    ALL.iter().find(|m| m.service == service)
}

/// Whether `subject` is a valid NATS subject or subscription pattern:
/// non-empty tokens without white space, `*` only as a whole token, `>` only
/// as the whole last token.
pub fn valid_subject(subject: &str) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && !t.chars().any(|c| c.is_whitespace() || c.is_control())
            && (*t == "*" || *t == ">" || !t.contains(['*', '>']))
            && (*t != ">" || i == tokens.len() - 1)
    })
}

/// Whether subscription pattern `pattern` matches literal-or-pattern `subject`
/// (a pattern matches another when it covers every subject the other does).
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn one_manifest_per_service_in_order() {
        let names: Vec<&str> = ALL.iter().map(|m| m.service).collect();
        assert_eq!(names, services::ALL);
        for name in services::ALL {
            assert_eq!(of(name).map(|m| m.service), Some(name));
            assert!(crate::token::check(name, 64, crate::token::Charset::Safe).is_ok());
        }
        assert_eq!(of("nope"), None);
        let users: std::collections::BTreeSet<_> = ALL.iter().map(|m| m.user).collect();
        assert_eq!(users.len(), ALL.len(), "users are distinct");
    }

    #[test]
    fn every_subject_is_a_valid_nats_subject() {
        for m in ALL.iter() {
            for s in m.all_subscribed().into_iter().chain(m.all_published()) {
                assert!(valid_subject(s), "{}: {s:?}", m.service);
            }
            for c in &m.consumers {
                if let Some(f) = &c.filter {
                    assert!(valid_subject(f), "{}: {f:?}", m.service);
                }
            }
        }
        assert!(valid_subject("a.*.c") && valid_subject("a.>") && valid_subject("$SRV.>"));
        for bad in ["", "a..b", "a.>.b", "a.b*", "a b", "."] {
            assert!(!valid_subject(bad), "{bad:?}");
        }
    }

    #[test]
    fn no_two_services_serve_the_same_endpoint() {
        let mut seen = BTreeMap::new();
        for m in ALL.iter() {
            for e in &m.endpoints {
                if let Some(other) = seen.insert(e.subject.clone(), m.service) {
                    panic!("{} served by {other} and {}", e.subject, m.service);
                }
            }
        }
        let all: Vec<&String> = seen.keys().collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert!(!matches(a, b) && !matches(b, a), "{a} overlaps {b}");
            }
        }
    }

    #[test]
    fn every_stream_and_bucket_has_one_owner_or_is_shared() {
        let (all_streams, all_buckets) = (streams::ALL, buckets::ALL);
        for stream in all_streams {
            let owners = ALL
                .iter()
                .filter(|m| {
                    m.streams
                        .iter()
                        .any(|s| s.stream == stream && s.role == Role::Owns)
                })
                .count();
            let users = ALL
                .iter()
                .filter(|m| m.streams.iter().any(|s| s.stream == stream))
                .count();
            let expected = usize::from(!SHARED_STREAMS.contains(&stream));
            assert_eq!(owners, expected, "owners of stream {stream}");
            assert!(users >= 1, "nobody uses stream {stream}");
        }
        for bucket in all_buckets {
            let owners = ALL
                .iter()
                .filter(|m| {
                    m.buckets
                        .iter()
                        .any(|b| b.bucket == bucket && b.role == Role::Owns)
                })
                .count();
            let expected = usize::from(!SHARED_BUCKETS.contains(&bucket));
            assert_eq!(owners, expected, "owners of bucket {bucket}");
        }
        // Every asset a manifest names is one of the above.
        for m in ALL.iter() {
            for s in &m.streams {
                assert!(all_streams.contains(&s.stream), "{}", s.stream);
            }
            for b in &m.buckets {
                assert!(all_buckets.contains(&b.bucket), "{}", b.bucket);
            }
        }
    }

    #[test]
    fn consumers_are_on_streams_the_service_touches_and_are_unique() {
        let mut seen = BTreeMap::new();
        for m in ALL.iter() {
            for c in &m.consumers {
                assert!(
                    m.streams.iter().any(|s| s.stream == c.stream),
                    "{}: consumer {} on {} it does not declare",
                    m.service,
                    c.durable,
                    c.stream
                );
                assert!(
                    seen.insert((c.stream, c.durable), m.service).is_none(),
                    "{}",
                    c.durable
                );
            }
        }
    }

    #[test]
    fn every_service_ships_its_logs_and_answers_discovery() {
        for m in ALL.iter() {
            assert!(m.publishes.contains(&logs_of(m.service)), "{}", m.service);
            assert!(m.subscribes.iter().any(|s| s == micro::SRV_ALL));
            let logs = subjects::logs(m.service, "info").unwrap_or_default();
            assert!(m.all_published().iter().any(|p| matches(p, &logs)));
        }
    }

    #[test]
    fn subject_patterns_match() {
        assert!(matches("logs.>", "logs.math.info"));
        assert!(matches("logs.*.info", "logs.math.info"));
        assert!(matches("stocks.>", "stocks.>"));
        assert!(!matches("logs.*", "logs.math.info"));
        assert!(!matches("services.math.add", "services.math.*"));
        assert!(matches("services.math.*", "services.math.add"));
    }
}
