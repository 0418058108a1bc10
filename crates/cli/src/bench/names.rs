//! Names of the raw-NATS baselines (`switchyard bench-helper`): the bench's
//! own subjects, streams, consumers and bucket, written once here and used by
//! both the runs and the helper processes. The contract's names come from
//! the protocol crate.

/// The CLI binary, which also runs the helpers.
pub(crate) const CLI: &str = "switchyard";
/// The raw responder's subject and queue group.
pub(crate) const RAW_ADD: &str = "bench.math.add";
pub(crate) const ECHO_QUEUE: &str = "bench";
/// Core NATS publish and ping/pong of the seed comparison.
pub(crate) const SEED: &str = "bench.seed";
pub(crate) const PING: &str = "bench.ping";
/// The minimal payment loop: work-queue stream, its consumer, KV and events.
pub(crate) const PAY_STREAM: &str = "BENCH_PAY";
pub(crate) const PAY_SUBJECT: &str = "bench.pay";
pub(crate) const PAY_CONSUMER: &str = "bench-pay";
pub(crate) const PAY_BUCKET: &str = "bench_pay";
pub(crate) const EVENTS_STREAM: &str = "BENCH_EVENTS";
pub(crate) const EVENTS_PREFIX: &str = "bench.events";
/// The raw log loop.
pub(crate) const LOGS_STREAM: &str = "BENCH_LOGS";
pub(crate) const LOGS_PREFIX: &str = "bench.logs";
pub(crate) const LOGS_CONSUMER: &str = "bench-logs";
/// The service name in the bench's log records (`logs.bench.info`).
pub(crate) const LOG_SERVICE: &str = "bench";
/// Raw ticks: `bench.stocks.<symbol>`.
pub(crate) const STOCKS_PREFIX: &str = "bench.stocks";

/// `<prefix>.>`.
pub(crate) fn all(prefix: &str) -> String {
    format!("{prefix}.>")
}
