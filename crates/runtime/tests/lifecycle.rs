//! The one service lifecycle (`App::connect → service() … serve()`) on a
//! real 3-node cluster: what a stop does to pulled messages, and what a
//! failing part does to the whole service.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use protocol::ServiceError;
use runtime::micro::NoInput;
use runtime::settings::Value;
use runtime::{App, CancellationToken, Settings};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use testkit::{Cluster, eventually};
use tokio::time::Instant;

fn settings(cluster: &Cluster, grace_ms: u64) -> Settings {
    Settings::load_with([
        ("nats.urls", Value::from(cluster.urls())),
        ("service.shutdown_grace_ms", Value::from(grace_ms)),
    ])
    .unwrap()
}

/// A work-queue stream `name` on `<name>.>` with one durable pull consumer
/// whose ack wait is a minute: anything redelivered sooner was given back.
async fn work_queue(js: &jetstream::Context, name: &str) -> consumer::PullConsumer {
    work_queue_with(js, name, Duration::from_secs(60)).await
}

async fn work_queue_with(
    js: &jetstream::Context,
    name: &str,
    ack_wait: Duration,
) -> consumer::PullConsumer {
    let stream = runtime::js::ensure_stream(
        js,
        stream::Config {
            name: name.into(),
            subjects: vec![format!("{name}.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            num_replicas: 3,
            ..Default::default()
        },
        false,
        runtime::settings::AssetMode::Create,
    )
    .await
    .unwrap();
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("workers".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// `work_queue(name)` holding `n` messages `body`.
async fn filled_queue(
    js: &jetstream::Context,
    name: &str,
    n: usize,
    body: &'static str,
) -> consumer::PullConsumer {
    let consumer = work_queue(js, name).await;
    for _ in 0..n {
        publish(js, &format!("{name}.job"), body).await;
    }
    consumer
}

/// A connected app with `grace_ms` of shutdown grace, and its shutdown token.
async fn connect(cluster: &Cluster, name: &str, grace_ms: u64) -> (App, CancellationToken) {
    let shutdown = CancellationToken::new();
    let app = App::connect(name, settings(cluster, grace_ms), shutdown.clone())
        .await
        .unwrap();
    (app, shutdown)
}

/// Waits until work-queue stream `name` holds nothing (every message acked).
async fn drained(js: &jetstream::Context, name: &str, within: Duration) {
    eventually(&format!("{name} drained"), within, || async {
        let info = js
            .get_stream(name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        match info.state.messages {
            0 => Ok(()),
            n => Err(format!("{n} left")),
        }
    })
    .await;
}

/// Waits until `n` handlers have started.
async fn started(counter: &AtomicUsize, n: usize) {
    eventually(
        &format!("{n} handlers running"),
        Duration::from_secs(10),
        || async {
            match counter.load(Ordering::SeqCst) {
                m if m == n => Ok(()),
                m => Err(format!("{m} started")),
            }
        },
    )
    .await;
}

async fn publish(js: &jetstream::Context, subject: &str, body: &'static str) {
    js.publish(subject.to_owned(), body.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// The stream sequences `consumer` hands out within `wait`; each message
/// is given back at once, so a later call can see it again.
async fn take(consumer: &consumer::PullConsumer, wait: Duration) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let mut batch = consumer
        .fetch()
        .max_messages(100)
        .expires(wait)
        .messages()
        .await
        .unwrap();
    while let Some(Ok(m)) = batch.next().await {
        out.insert(m.info().unwrap().stream_sequence);
        m.ack_with(jetstream::AckKind::Nak(None)).await.unwrap();
    }
    out
}

#[tokio::test]
async fn stop_gives_unfinished_and_unstarted_messages_back_at_once() {
    let cluster = testkit::shared().await;
    let js = jetstream::new(cluster.client().await.unwrap());
    let consumer = filled_queue(&js, "LC_GIVE_BACK", 10, "stuck").await;
    let count = Arc::new(AtomicUsize::new(0));
    let (app, shutdown) = connect(cluster, "lc-give-back", 300).await;
    let serving = tokio::spawn(
        app.service("0.0.0", "handlers that never finish")
            .with_state(count.clone())
            .pull_worker(
                "stuck",
                consumer.clone(),
                4,
                |started, _message| async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                },
            )
            .serve(),
    );
    started(&count, 4).await;

    let stopping = Instant::now();
    shutdown.cancel();
    serving.await.unwrap().unwrap();
    let stopped_in = stopping.elapsed();
    assert!(
        stopped_in < Duration::from_secs(5),
        "stop took {stopped_in:?} with a 300 ms grace period"
    );
    assert_eq!(count.load(Ordering::SeqCst), 4, "only four were started");

    // All ten come again at once (the ack wait is a minute): the four that
    // were running, those the pull stream had buffered (it asks for more
    // while the last permits are taken) and those the server kept.
    let seen = std::sync::Mutex::new(BTreeSet::new());
    eventually("all ten back", Duration::from_secs(10), || async {
        let again = take(&consumer, Duration::from_millis(500)).await;
        let mut seen = seen.lock().unwrap();
        seen.extend(again);
        if seen.len() == 10 {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), 10);
}

#[tokio::test]
async fn in_flight_messages_finish_within_the_grace_period() {
    let cluster = testkit::shared().await;
    let js = jetstream::new(cluster.client().await.unwrap());
    let consumer = filled_queue(&js, "LC_FINISH", 3, "slow").await;
    let count = Arc::new(AtomicUsize::new(0));
    let (app, shutdown) = connect(cluster, "lc-finish", 10_000).await;
    let serving = tokio::spawn(
        app.service("0.0.0", "slow handlers that finish")
            .with_state(count.clone())
            .pull_worker("slow", consumer.clone(), 3, |started, message| async move {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(800)).await;
                // Confirmed by the server before the handler returns.
                message.double_ack().await.unwrap();
            })
            .serve(),
    );
    started(&count, 3).await;
    shutdown.cancel();
    serving.await.unwrap().unwrap();
    // serve() returned after the (confirmed) acks: the consumer has all three.
    let info = consumer.clone().info().await.unwrap().clone();
    assert_eq!(info.ack_floor.consumer_sequence, 3, "{info:?}");
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
}

#[tokio::test]
async fn a_panicking_handler_gives_its_message_back_and_the_worker_goes_on() {
    let cluster = testkit::shared().await;
    let js = jetstream::new(cluster.client().await.unwrap());
    let consumer = work_queue(&js, "LC_PANIC").await;
    publish(&js, "LC_PANIC.job", "boom").await;
    publish(&js, "LC_PANIC.job", "fine").await;
    let (app, shutdown) = connect(cluster, "lc-panic", 1_000).await;
    let serving = tokio::spawn(
        app.service("0.0.0", "a handler that panics once")
            .pull_worker("panicky", consumer, 1, |(), message| async move {
                let first = message.info().unwrap().delivered == 1;
                if first && &message.payload[..] == b"boom" {
                    panic!("boom");
                }
                message.ack().await.unwrap();
            })
            .serve(),
    );
    // Given back at once (not after the minute of ack wait), then acked.
    drained(&js, "LC_PANIC", Duration::from_secs(10)).await;
    assert!(
        !serving.is_finished(),
        "a handler panic stopped the service"
    );
    shutdown.cancel();
    serving.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_failing_or_panicking_task_stops_the_service_with_an_error() {
    let cluster = testkit::shared().await;
    let client = cluster.client().await.unwrap();
    for (name, panics) in [("lc-fails", false), ("lc-panics", true)] {
        let (app, _shutdown) = connect(cluster, name, 1_000).await;
        let subject = format!("lc.{name}.ping");
        let serving = tokio::spawn(
            app.service("0.0.0", "a task that gives up")
                .endpoint("ping", &subject, |(), _: NoInput| async {
                    Ok::<_, ServiceError>("pong")
                })
                .task("doomed", move |(), _stop| async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if panics {
                        panic!("the doomed task panicked");
                    }
                    anyhow::bail!("the doomed task gave up")
                })
                .serve(),
        );
        // Serving until the task fails...
        let reply = eventually("the endpoint answers", Duration::from_secs(5), || async {
            client.request(subject.clone(), "".into()).await
        })
        .await;
        assert_eq!(&reply.payload[..], br#""pong""#);
        // ...then stopped, with an error naming the task, and gone.
        let err = tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("the service stopped by itself")
            .unwrap()
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("doomed"), "{text}");
        let why = if panics { "panicked" } else { "gave up" };
        assert!(text.contains(why), "{text}");
        let gone = client.request(subject, "".into()).await.unwrap_err();
        assert_eq!(
            gone.kind(),
            async_nats::client::RequestErrorKind::NoResponders,
            "{gone}"
        );
    }
}

/// The service of `docs/WRITE_A_SERVICE.md`, compiled and run as written.
#[allow(
    dead_code,
    unreachable_pub,
    reason = "its main() is for `cargo run --example`"
)]
#[path = "../examples/hello.rs"]
mod hello;

#[tokio::test]
async fn the_documented_skeleton_runs_as_written() {
    let cluster = testkit::shared().await;
    let service = testkit::spawn_service(hello::run, cluster, &[]).await;
    assert_eq!(service.name(), "hello");
    let client = cluster.client().await.unwrap();
    let greeting: serde_json::Value = runtime::client::call(
        &client,
        "services.hello.greet",
        &serde_json::json!({"name": " Ada "}),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(greeting["message"], "Hello, Ada!");
    let err = runtime::client::call::<_, serde_json::Value>(
        &client,
        "services.hello.greet",
        &serde_json::json!({"name": ""}),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.code(),
        Some(protocol::ErrorCode::InvalidRequest),
        "{err}"
    );
    service.stop().await;

    // The page shows this file as it is.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("../../docs/WRITE_A_SERVICE.md")).unwrap();
    let example = std::fs::read_to_string(root.join("examples/hello.rs")).unwrap();
    assert!(
        page.contains(&example),
        "docs/WRITE_A_SERVICE.md no longer shows crates/runtime/examples/hello.rs as it is"
    );
}

#[tokio::test]
async fn a_handler_slower_than_the_ack_wait_is_not_redelivered() {
    let cluster = testkit::shared().await;
    let js = jetstream::new(cluster.client().await.unwrap());
    // An ack wait of 1 s and a handler that takes 3.5 s: without progress
    // acks the server would hand the message out again three times.
    let mut consumer = work_queue_with(&js, "LC_SLOW", Duration::from_secs(1)).await;
    publish(&js, "LC_SLOW.job", "slow").await;
    let deliveries = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (app, shutdown) = connect(cluster, "lc-slow", 10_000).await;
    let serving = tokio::spawn(
        app.service("0.0.0", "a slow handler")
            .with_state(deliveries.clone())
            .pull_worker("slow", consumer.clone(), 4, |seen, message| async move {
                let delivered = message.info().unwrap().delivered;
                seen.lock().unwrap().push(delivered);
                tokio::time::sleep(Duration::from_millis(3_500)).await;
                message.double_ack().await.unwrap();
            })
            .serve(),
    );
    drained(&js, "LC_SLOW", Duration::from_secs(15)).await;
    assert_eq!(
        *deliveries.lock().unwrap(),
        vec![1],
        "delivered again while running"
    );
    let info = consumer.info().await.unwrap();
    assert_eq!(info.num_redelivered, 0, "{info:?}");
    shutdown.cancel();
    serving.await.unwrap().unwrap();
}

#[tokio::test]
async fn only_as_many_messages_are_pulled_as_there_are_free_slots() {
    let cluster = testkit::shared().await;
    let js = jetstream::new(cluster.client().await.unwrap());
    let mut consumer = filled_queue(&js, "LC_SLOTS", 20, "stuck").await;
    let count = Arc::new(AtomicUsize::new(0));
    let (app, shutdown) = connect(cluster, "lc-slots", 300).await;
    let serving = tokio::spawn(
        app.service("0.0.0", "three slots, handlers that never finish")
            .with_state(count.clone())
            .pull_worker(
                "stuck",
                consumer.clone(),
                3,
                |started, _message| async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                },
            )
            .serve(),
    );
    started(&count, 3).await;
    // Several pull rounds later, the server has still handed out only three:
    // nothing waits unstarted in a buffer while its ack wait runs.
    tokio::time::sleep(3 * runtime::worker::PULL_EXPIRY).await;
    let info = consumer.info().await.unwrap().clone();
    assert_eq!(info.num_ack_pending, 3, "{info:?}");
    assert_eq!(info.num_pending, 17, "{info:?}");
    shutdown.cancel();
    serving.await.unwrap().unwrap();
}
