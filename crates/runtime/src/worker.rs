//! A durable pull consumer worked by one instance: messages are handled
//! concurrently (bounded), pulling pauses while maintenance mode is on, and
//! on stop nothing new is taken while in-flight messages finish.

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// Runs `handle` for each message of `consumer` until `stop` fires, with at
/// most `concurrency` at once. `handle` acks, naks or terms the message.
pub async fn run_pull<F, Fut>(
    name: &str,
    consumer: PullConsumer,
    concurrency: usize,
    mut maintenance: watch::Receiver<bool>,
    stop: CancellationToken,
    handle: F,
) where
    F: Fn(jetstream::Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    'pull: loop {
        if *maintenance.borrow_and_update() {
            tracing::warn!(worker = name, "maintenance mode: paused");
            tokio::select! {
                _ = stop.cancelled() => break 'pull,
                _ = maintenance.wait_for(|on| !*on) => {
                    tracing::info!(worker = name, "maintenance over: resuming");
                    continue 'pull;
                }
            }
        }
        let messages = consumer
            .stream()
            .max_messages_per_batch(concurrency.max(1))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(worker = name, error = %err, "cannot pull yet; retrying");
                tokio::select! {
                    _ = stop.cancelled() => break 'pull,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue 'pull,
                }
            }
        };
        loop {
            // A free slot first, so we never hold messages we cannot start.
            let permit = tokio::select! {
                _ = stop.cancelled() => break 'pull,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break 'pull,
                },
            };
            let next = tokio::select! {
                _ = stop.cancelled() => break 'pull,
                changed = maintenance.changed() => {
                    if changed.is_err() { break 'pull; }
                    continue 'pull;
                }
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    let handle = handle.clone();
                    tracker.spawn(async move {
                        handle(message).await;
                        drop(permit);
                    });
                }
                Some(Err(err)) => {
                    tracing::warn!(worker = name, error = %err, "pull stream error; pulling again");
                    continue 'pull;
                }
                None => continue 'pull,
            }
        }
    }
    tracker.close();
    tracker.wait().await;
}
