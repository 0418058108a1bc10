//! Durable pull consumers worked by one instance, the same way in every
//! service: messages are handled concurrently (bounded), each pull asks for
//! no more messages than there are free slots, a running handler's message
//! gets progress acks (so only a stalled process lets it be redelivered),
//! pulling pauses while maintenance mode is on, and on stop:
//!
//! 1. nothing new is pulled; messages the server already sent us that no
//!    handler started are nak'd at once, so another instance takes them now
//!    rather than after the ack wait;
//! 2. in-flight handlers finish, for up to the grace period;
//! 3. handlers still running then are cancelled (their future dropped at its
//!    next await) and their messages nak'd, as a crash would leave them, but
//!    redelivered at once.
//!
//! A handler that panics is logged and its message nak'd; the worker goes on.
//! [`App`](crate::App)'s builder runs these; services do not call them directly.

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::{FutureExt as _, StreamExt as _};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

/// The redelivery delay after failed delivery number `delivered` (1-based):
/// the matching entry of `delays_ms`, the last one past its end, 1 s if empty.
pub fn backoff_after(delays_ms: &[u64], delivered: u32) -> Duration {
    let i = (delivered.max(1) - 1) as usize;
    Duration::from_millis(
        delays_ms
            .get(i)
            .or(delays_ms.last())
            .copied()
            .unwrap_or(1_000),
    )
}

/// How long to wait before pulling again after the server refused a pull.
const PULL_RETRY: Duration = Duration::from_millis(500);

/// What every worker loop needs besides its handler.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    /// Names the worker in logs.
    pub name: String,
    pub consumer: PullConsumer,
    /// Messages handled at once ([`run_pull`]) or taken per batch ([`run_batch`]).
    pub concurrency: usize,
    pub maintenance: watch::Receiver<bool>,
    /// Fires when the service stops.
    pub stop: CancellationToken,
    /// How long in-flight work may go on after `stop`.
    pub grace: Duration,
}

/// Runs `handle` for each message until `stop` fires, with at most
/// `concurrency` at once. `handle` acks, naks or terms its message; while it
/// runs, the message's ack deadline is pushed back (progress acks every third
/// of the consumer's ack wait), so a slow handler is not redelivered.
///
/// Pulls only as many messages as there are free slots (a pull request for
/// exactly that many, expiring after [`PULL_EXPIRY`]): nothing waits in a
/// buffer where its ack wait would run out before a handler starts it.
pub async fn run_pull<F, Fut>(ctx: WorkerContext, handle: F)
where
    F: Fn(jetstream::Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let WorkerContext {
        name,
        consumer,
        concurrency,
        mut maintenance,
        stop,
        grace,
    } = ctx;
    let handle = Arc::new(handle);
    let tracker = TaskTracker::new();
    let cancel_handlers = CancellationToken::new();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let progress_every = progress_interval(&consumer.cached_info().config);
    'pull: loop {
        if !wait_out_maintenance(&name, &mut maintenance, &stop).await {
            break 'pull;
        }
        // A free slot first, then every other slot free now: pull that many.
        let mut slots = tokio::select! {
            _ = stop.cancelled() => break 'pull,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => vec![permit],
                Err(_) => break 'pull,
            },
        };
        while let Ok(permit) = permits.clone().try_acquire_owned() {
            slots.push(permit);
        }
        let pulled = tokio::select! {
            _ = stop.cancelled() => break 'pull,
            pulled = consumer
                .batch()
                .max_messages(slots.len())
                .expires(PULL_EXPIRY)
                .messages() => pulled,
        };
        let mut batch = match pulled {
            Ok(batch) => batch,
            Err(err) if retry_after_refused_pull(&name, &err, &stop).await => continue 'pull,
            Err(_) => break 'pull,
        };
        // Start each message as it comes. On stop or maintenance, what the
        // pull request already brought is given back and the request is
        // dropped: its subscription goes, and the server sends nothing more to
        // a request nobody listens to (a nak'd message is not handed to this
        // same request again).
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => None,
                changed = maintenance.changed() => {
                    if changed.is_err() || *maintenance.borrow() { None } else { continue; }
                }
                next = batch.next() => match next {
                    Some(next) => Some(next),
                    None => break,
                },
            };
            let Some(next) = next else {
                give_back_buffered(&name, batch).await;
                break;
            };
            let message = match next {
                Ok(message) => message,
                Err(err) => {
                    tracing::debug!(worker = %name, error = %err, "pull request ended");
                    break;
                }
            };
            let Some(permit) = slots.pop() else {
                // Cannot happen (the request asked for one per slot); safe anyway.
                nak_now(&name, &message).await;
                continue;
            };
            let handle = handle.clone();
            let cancel = cancel_handlers.clone();
            let name = name.clone();
            // One span per message: the logs of its handling carry the
            // message's trace id (`logship`).
            let traced = message_span(&name, &message);
            tracker.spawn(async move {
                let held = message.clone();
                let span = traced.span().clone();
                let run = AssertUnwindSafe(
                    crate::trace::scope(traced, handle(message)).instrument(span),
                )
                .catch_unwind();
                let outcome = tokio::select! {
                    biased;
                    outcome = run => Some(outcome),
                    _ = cancel.cancelled() => None,
                    () = keep_alive(&held, progress_every) => None,
                };
                match outcome {
                    Some(Ok(())) => {}
                    Some(Err(panic)) => {
                        tracing::error!(worker = %name, panic = panic_message(&panic), "message handler panicked; the message is given back");
                        nak_now(&name, &held).await;
                    }
                    None => {
                        tracing::warn!(worker = %name, "message still in progress after the shutdown grace period; given back");
                        nak_now(&name, &held).await;
                    }
                }
                drop(permit);
            });
        }
        // Slots the pull request did not fill are free again.
        drop(slots);
        if stop.is_cancelled() {
            break 'pull;
        }
    }
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        cancel_handlers.cancel();
        tracker.wait().await;
    }
}

/// How long one pull request waits for messages. Also the longest a stop
/// waits for a pull request in flight (what it still brings is given back).
pub const PULL_EXPIRY: Duration = Duration::from_secs(1);

/// Every third of the ack deadline of a first delivery: the consumer's ack
/// wait, or the first entry of its backoff list (which the server then uses
/// as the ack wait), at least 100 ms.
pub fn progress_interval(config: &jetstream::consumer::Config) -> Duration {
    let deadline = match config.backoff.first() {
        Some(first) if !config.ack_wait.is_zero() => (*first).min(config.ack_wait),
        Some(first) => *first,
        None if config.ack_wait.is_zero() => Duration::from_secs(30),
        None => config.ack_wait,
    };
    (deadline / 3).max(Duration::from_millis(100))
}

/// The span a message is handled in, child of its trace context: the
/// worker's name and the subject.
fn message_span(worker: &str, message: &async_nats::jetstream::Message) -> crate::trace::Traced {
    crate::traced!(
        "message",
        &crate::trace::Carrier::from_headers(message.headers.as_ref()),
        "consumer",
        otel.name = %format!("process {}", message.subject),
        worker = %worker,
        subject = %message.subject,
    )
}

/// Sends progress acks for `message` every `every`, forever (the caller
/// drops it when the handler is done).
async fn keep_alive(message: &jetstream::Message, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticks.tick().await;
        if let Err(err) = message.ack_with(AckKind::Progress).await {
            tracing::debug!(error = %err, "progress ack not sent");
        }
    }
}

/// Runs `handle` on batches of up to `concurrency` messages until `stop`
/// fires. `handle` returns what to do with each message of its batch, in
/// the batch's order (ack, nak with or without a delay, term); while it
/// runs, every message of the batch gets progress acks (every third of the
/// consumer's ack wait, as in [`run_pull`]), so a slow batch is not
/// redelivered. The answers are sent only after the progress acks stopped:
/// a progress ack after a delayed nak would restart the message's ack wait
/// and cut the delay short. A message `handle` gave no answer for is given
/// back at once.
///
/// A batch taken is finished when stopping (for up to the grace period;
/// after it, every message of the batch is given back).
pub async fn run_batch<F, Fut>(ctx: WorkerContext, handle: F)
where
    F: Fn(Vec<jetstream::Message>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<AckKind>> + Send + 'static,
{
    let (name, stop) = (ctx.name.as_str(), &ctx.stop);
    let mut maintenance = ctx.maintenance.clone();
    let batch = ctx.concurrency.max(1);
    let progress_every = progress_interval(&ctx.consumer.cached_info().config);
    loop {
        if !wait_out_maintenance(name, &mut maintenance, stop).await {
            return;
        }
        let pulled = tokio::select! {
            _ = stop.cancelled() => return,
            pulled = ctx.consumer.batch().max_messages(batch).expires(Duration::from_millis(300)).messages() => pulled,
        };
        let mut pulled = match pulled {
            Ok(pulled) => pulled,
            Err(err) if retry_after_refused_pull(name, &err, stop).await => continue,
            Err(_) => return,
        };
        let mut messages = Vec::with_capacity(batch);
        while let Some(next) = pulled.next().await {
            match next {
                Ok(message) => messages.push(message),
                Err(err) => {
                    tracing::debug!(worker = %name, error = %err, "batch ended early");
                    break;
                }
            }
        }
        if messages.is_empty() {
            continue;
        }
        let held = messages.clone();
        let run = AssertUnwindSafe(handle(messages)).catch_unwind();
        let grace_over = async {
            stop.cancelled().await;
            tokio::time::sleep(ctx.grace).await;
        };
        let outcome = tokio::select! {
            biased;
            outcome = run => Some(outcome),
            () = grace_over => None,
            () = keep_batch_alive(&held, progress_every) => None,
        };
        match outcome {
            Some(Ok(answers)) => settle(name, &held, &answers).await,
            Some(Err(panic)) => {
                tracing::error!(worker = %name, panic = panic_message(&panic), count = held.len(), "batch handler panicked; the batch is given back");
                nak_all(name, &held).await;
            }
            None => {
                tracing::warn!(worker = %name, count = held.len(), "batch still in progress after the shutdown grace period; given back");
                nak_all(name, &held).await;
                return;
            }
        }
    }
}

/// Sends each message of a batch its answer; one without an answer is
/// given back at once.
async fn settle(name: &str, batch: &[jetstream::Message], answers: &[AckKind]) {
    if answers.len() != batch.len() {
        tracing::error!(
            worker = name,
            messages = batch.len(),
            answers = answers.len(),
            "batch handler did not answer for every message; the rest are given back"
        );
    }
    let sent = futures::future::join_all(batch.iter().enumerate().map(|(i, message)| {
        let answer = answers.get(i).copied().unwrap_or(AckKind::Nak(None));
        message.ack_with(answer)
    }))
    .await;
    let failed = sent.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        tracing::warn!(
            worker = name,
            failed,
            "some acks of a batch were not sent; those messages come again after their ack wait"
        );
    }
}

/// Sends progress acks for every message of `batch` every `every`, forever
/// (the caller drops it when the batch is done). Progress acks for messages
/// the handler already acked are ignored by the server.
async fn keep_batch_alive(batch: &[jetstream::Message], every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticks.tick().await;
        let sent =
            futures::future::join_all(batch.iter().map(|m| m.ack_with(AckKind::Progress))).await;
        if let Some(Err(err)) = sent.into_iter().find(Result::is_err) {
            tracing::debug!(error = %err, "progress ack not sent");
        }
    }
}

/// Returns at once while maintenance mode is off; while it is on, waits
/// until it is off (true) or `stop` fires (false).
async fn wait_out_maintenance(
    name: &str,
    maintenance: &mut watch::Receiver<bool>,
    stop: &CancellationToken,
) -> bool {
    while *maintenance.borrow_and_update() {
        tracing::warn!(worker = name, "maintenance mode: paused");
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = maintenance.wait_for(|on| !*on) => {
                tracing::info!(worker = name, "maintenance over: resuming");
            }
        }
    }
    true
}

/// After the server refused a pull: waits [`PULL_RETRY`] to try again
/// (true), or returns false if `stop` fires first.
async fn retry_after_refused_pull(
    name: &str,
    err: &(dyn std::fmt::Display + Sync),
    stop: &CancellationToken,
) -> bool {
    tracing::warn!(worker = name, error = %err, "cannot pull yet; retrying");
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(PULL_RETRY) => true,
    }
}

/// Naks what a pull request brought that no handler took, then drops it.
async fn give_back_buffered(name: &str, mut batch: jetstream::consumer::pull::Batch) {
    let mut given_back = 0usize;
    while let Some(Some(next)) = batch.next().now_or_never() {
        if let Ok(message) = next {
            nak_now(name, &message).await;
            given_back += 1;
        }
    }
    if given_back > 0 {
        tracing::info!(worker = name, given_back, "unstarted messages given back");
    }
}

async fn nak_all(name: &str, messages: &[jetstream::Message]) {
    for message in messages {
        nak_now(name, message).await;
    }
}

async fn nak_now(name: &str, message: &jetstream::Message) {
    if let Err(err) = message.ack_with(AckKind::Nak(None)).await {
        tracing::warn!(worker = name, error = %err, "could not give a message back; it comes again after its ack wait");
    }
}

/// The text of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_uses_the_last_entry_past_the_end() {
        assert_eq!(backoff_after(&[100, 200], 1), Duration::from_millis(100));
        assert_eq!(backoff_after(&[100, 200], 2), Duration::from_millis(200));
        assert_eq!(backoff_after(&[100, 200], 9), Duration::from_millis(200));
        assert_eq!(backoff_after(&[], 3), Duration::from_secs(1));
        assert_eq!(backoff_after(&[100], 0), Duration::from_millis(100));
    }

    #[test]
    fn progress_acks_come_three_times_per_ack_deadline() {
        let config = |ack_wait_ms: u64, backoff_ms: &[u64]| jetstream::consumer::Config {
            ack_wait: Duration::from_millis(ack_wait_ms),
            backoff: backoff_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            progress_interval(&config(30_000, &[])),
            Duration::from_secs(10)
        );
        assert_eq!(
            progress_interval(&config(10_000, &[1_000, 5_000])),
            Duration::from_secs(1) / 3
        );
        assert_eq!(progress_interval(&config(0, &[])), Duration::from_secs(10));
        assert_eq!(
            progress_interval(&config(90, &[])),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn panic_messages_are_read_from_str_and_string() {
        let p: Box<dyn std::any::Any + Send> = Box::new("boom");
        assert_eq!(panic_message(p.as_ref()), "boom");
        let p: Box<dyn std::any::Any + Send> = Box::new(String::from("bang"));
        assert_eq!(panic_message(p.as_ref()), "bang");
        let p: Box<dyn std::any::Any + Send> = Box::new(7u8);
        assert_eq!(panic_message(p.as_ref()), "a panic without a message");
    }
}
