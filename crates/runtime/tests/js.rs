//! `ensure_stream` / `ensure_kv` return only once the stream answers a
//! publish from the caller's connection, and their probe never stores a
//! message. On one shared 3-node cluster; every test uses its own names.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use async_nats::jetstream::{self, consumer, kv, stream};
use futures::StreamExt as _;
use runtime::js::{ensure_kv, ensure_stream, wait_usable};
use std::time::Duration;

/// A JetStream context on a client connected to each node of the shared cluster.
async fn one_per_node() -> Vec<jetstream::Context> {
    let cluster = testkit::shared().await;
    let mut contexts = Vec::new();
    for i in 0..cluster.len() {
        contexts.push(jetstream::new(cluster.client_to(i).await.unwrap()));
    }
    contexts
}

/// Messages and last sequence, as the stream reports them.
async fn state(js: &jetstream::Context, name: &str) -> (u64, u64) {
    let mut stream = js.get_stream(name).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    (state.messages, state.last_sequence)
}

#[tokio::test]
async fn an_ensured_r3_stream_takes_the_first_publish_from_every_node() {
    let nodes = one_per_node().await;
    // Subject filters with both wildcards, and schedules allowed (as
    // email-notifier's EMAILS): the probe must fit them all.
    let config = stream::Config {
        name: "USABLE_R3".into(),
        subjects: vec!["usable.r3.*.in".into(), "usable.r3b.>".into()],
        num_replicas: 3,
        allow_message_schedules: true,
        ..Default::default()
    };
    // Three instances starting at once, one per node.
    futures::future::try_join_all(nodes.iter().map(|js| {
        ensure_stream(
            js,
            config.clone(),
            true,
            runtime::settings::AssetMode::Create,
        )
    }))
    .await
    .unwrap();
    assert_eq!(
        state(&nodes[0], "USABLE_R3").await,
        (0, 0),
        "a probe was stored"
    );

    for (i, js) in nodes.iter().enumerate() {
        let ack = js
            .publish(format!("usable.r3.n{i}.in"), "first".into())
            .await
            .unwrap()
            .await
            .unwrap_or_else(|err| panic!("first publish via node {i}: {err}"));
        assert_eq!(ack.stream, "USABLE_R3");
    }
    assert_eq!(state(&nodes[1], "USABLE_R3").await, (3, 3));
}

#[tokio::test]
async fn an_ensured_r3_bucket_takes_the_first_put_from_every_node() {
    let nodes = one_per_node().await;
    let config = kv::Config {
        bucket: "usable_r3".into(),
        num_replicas: 3,
        history: 5,
        ..Default::default()
    };
    let stores = futures::future::try_join_all(
        nodes
            .iter()
            .map(|js| ensure_kv(js, config.clone(), runtime::settings::AssetMode::Create)),
    )
    .await
    .unwrap();
    assert_eq!(
        state(&nodes[0], "KV_usable_r3").await,
        (0, 0),
        "a probe was stored"
    );

    for (i, store) in stores.iter().enumerate() {
        store
            .put(format!("key{i}"), "first".into())
            .await
            .unwrap_or_else(|err| panic!("first put via node {i}: {err}"));
    }
    assert_eq!(state(&nodes[2], "KV_usable_r3").await, (3, 3));
    let mut keys: Vec<String> = stores[0]
        .keys()
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    keys.sort();
    assert_eq!(keys, ["key0", "key1", "key2"]);
}

#[tokio::test]
async fn a_work_queue_never_sees_a_probe() {
    let nodes = one_per_node().await;
    let config = stream::Config {
        name: "USABLE_WQ".into(),
        subjects: vec!["usable.wq.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        num_replicas: 3,
        ..Default::default()
    };
    let stream = ensure_stream(
        &nodes[0],
        config.clone(),
        false,
        runtime::settings::AssetMode::Create,
    )
    .await
    .unwrap();
    let worker = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("usable_wq_worker".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    // More instances come up, each probing from its own node, with the
    // worker already there to take whatever gets stored.
    for js in &nodes[1..] {
        ensure_stream(
            js,
            config.clone(),
            true,
            runtime::settings::AssetMode::Create,
        )
        .await
        .unwrap();
    }
    assert_eq!(
        state(&nodes[0], "USABLE_WQ").await,
        (0, 0),
        "a probe was stored"
    );

    for (i, js) in nodes.iter().enumerate() {
        js.publish(format!("usable.wq.job{i}"), format!("job{i}").into())
            .await
            .unwrap()
            .await
            .unwrap_or_else(|err| panic!("first publish via node {i}: {err}"));
    }
    // Acked by the stream's quorum does not mean the consumer's leader has
    // applied it yet: pull until the three jobs are in (or 10 s pass).
    let mut jobs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while jobs.len() < 3 && tokio::time::Instant::now() < deadline {
        let mut batch = worker
            .batch()
            .max_messages(10)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            jobs.push(String::from_utf8(message.payload.to_vec()).unwrap());
            message.ack().await.unwrap();
        }
    }
    jobs.sort();
    assert_eq!(
        jobs,
        ["job0", "job1", "job2"],
        "the worker got a probe or lost a job"
    );
    // Only the three jobs were ever stored.
    assert_eq!(state(&nodes[0], "USABLE_WQ").await.1, 3);
}

#[tokio::test]
async fn waiting_on_a_stream_that_is_not_there_says_so() {
    let nodes = one_per_node().await;
    let err = wait_usable(
        &nodes[0],
        "USABLE_MISSING",
        Some("usable.missing.x"),
        Duration::from_millis(500),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("USABLE_MISSING") && err.contains("not usable"),
        "{err}"
    );

    // A probe subject another stream captures is a mistake, not a wait.
    ensure_stream(
        &nodes[0],
        stream::Config {
            name: "USABLE_OWNER".into(),
            subjects: vec!["usable.owner.>".into()],
            num_replicas: 3,
            ..Default::default()
        },
        false,
        runtime::settings::AssetMode::Create,
    )
    .await
    .unwrap();
    ensure_stream(
        &nodes[0],
        stream::Config {
            name: "USABLE_OTHER".into(),
            subjects: vec!["usable.other".into()],
            num_replicas: 3,
            ..Default::default()
        },
        false,
        runtime::settings::AssetMode::Create,
    )
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    let err = wait_usable(
        &nodes[0],
        "USABLE_OTHER",
        Some("usable.owner.x"),
        Duration::from_secs(10),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("another stream"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it waited: {err}"
    );
    assert_eq!(state(&nodes[0], "USABLE_OWNER").await, (0, 0));
}

#[tokio::test]
async fn a_user_not_permitted_to_publish_on_the_stream_still_gets_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("n.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n\
             authorization {{ users: [ {{ user: \"reader\", password: \"pw\", permissions: {{ \
             publish: {{ allow: [\"$JS.API.>\"] }}, subscribe: {{ allow: [\"_INBOX.>\"] }} }} }} ] }}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut command = std::process::Command::new(testkit::nats_server_bin().unwrap());
    command
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = testkit::spawn_tied(command).unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let mut client = Err(String::new());
    for _ in 0..100 {
        client = async_nats::ConnectOptions::with_user_and_password("reader".into(), "pw".into())
            .connect(&url)
            .await
            .map_err(|e| e.to_string());
        if client.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let js = jetstream::new(client.unwrap());
    let started = tokio::time::Instant::now();
    let result = ensure_kv(
        &js,
        kv::Config {
            bucket: "readonly".into(),
            ..Default::default()
        },
        runtime::settings::AssetMode::Create,
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
