//! Power loss on a 3-node cluster whose stores sit on lazy filesystems
//! (`ClusterOptions::lazy_storage`, crates/lazyfs): every node loses what it
//! did not fsync at once, then the cluster must come back.
//!
//! With `sync_interval: always` (what Switchyard ships) no acknowledged
//! message may be lost; with the server's default the loss is printed
//! (`POWER-LOSS` lines), not asserted: that is the finding issue 18 is about.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use async_nats::jetstream::{self, stream};
use std::time::Duration;
use testkit::{Cluster, ClusterOptions, LazyMode};

async fn lazy_cluster(sync_always: bool) -> Cluster {
    lazyfs::preflight().unwrap_or_else(|e| panic!("{e}"));
    Cluster::start_retrying(ClusterOptions {
        nodes: 3,
        sync_always,
        lazy_storage: Some(LazyMode::Lazy),
        ready_timeout: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Acked publishes; a publish whose answer is lost while a leader is being
/// elected is sent again with the same `Nats-Msg-Id` (stored once).
async fn publish(js: &jetstream::Context, from: u64, n: u64) {
    for i in from..from + n {
        let mut tries = 0;
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("m{i}").as_str());
            let acked = async {
                js.publish_with_headers(format!("loss.{i}"), headers, format!("{i}").into())
                    .await?
                    .await
            }
            .await;
            match acked {
                Ok(_) => break,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("publish {i}: {e}; again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("publish {i}: {e}"),
            }
        }
    }
}

/// (messages, last sequence) of LOSS once it answers; `None` if the stream
/// is gone.
async fn count(cluster: &Cluster) -> Option<(u64, u64)> {
    let js = jetstream::new(cluster.client().await.unwrap());
    match js.get_stream("LOSS").await {
        Err(e) if e.to_string().contains("not found") => return None,
        _ => {}
    }
    runtime::js::wait_usable(&js, "LOSS", Some("loss.probe"), Duration::from_secs(30))
        .await
        .unwrap();
    let mut s = js.get_stream("LOSS").await.unwrap();
    let info = s.info().await.unwrap();
    Some((info.state.messages, info.state.last_sequence))
}

async fn make_stream(cluster: &Cluster) -> jetstream::Context {
    let js = jetstream::new(cluster.client().await.unwrap());
    js.create_stream(stream::Config {
        name: "LOSS".into(),
        subjects: vec!["loss.>".into()],
        num_replicas: 3,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    js
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acked_message_is_lost_when_all_nodes_lose_power_with_sync_always() {
    let mut cluster = lazy_cluster(true).await;
    let js = make_stream(&cluster).await;
    publish(&js, 0, 100).await;
    let reports = cluster.power_off_all().await.unwrap();
    for (i, r) in reports.iter().enumerate() {
        println!(
            "POWER-LOSS sync_interval=always node {i}: {r}: {:?}",
            r.files
        );
    }
    let after = count(&cluster).await;
    println!("POWER-LOSS sync_interval=always: after power_off_all {after:?} of 100 acked");
    assert_eq!(after, Some((100, 100)));

    // One node alone, under the same rule; the stream keeps taking writes.
    let r = cluster.power_off(1).await.unwrap();
    println!("POWER-LOSS sync_interval=always node 1 alone: {r}");
    assert_eq!(count(&cluster).await, Some((100, 100)));
    let js = jetstream::new(cluster.client().await.unwrap());
    publish(&js, 100, 10).await;
    assert_eq!(count(&cluster).await, Some((110, 110)));
    println!(
        "POWER-LOSS FUSE operations on node 0: {:?}",
        cluster.lazy_fs(0).unwrap().op_counts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_comes_back_after_power_loss_with_the_default_sync_interval() {
    let mut cluster = lazy_cluster(false).await;
    let js = make_stream(&cluster).await;
    publish(&js, 0, 100).await;
    let reports = cluster.power_off_all().await.unwrap();
    for (i, r) in reports.iter().enumerate() {
        println!("POWER-LOSS sync_interval=default node {i}: {r}");
    }
    let after = count(&cluster).await;
    println!(
        "POWER-LOSS sync_interval=default: after power_off_all the stream has {after:?} (messages, last seq) of 100 acked"
    );
    // The cluster itself works again: a new stream takes acked writes.
    let js = jetstream::new(cluster.client().await.unwrap());
    js.create_stream(stream::Config {
        name: "AFTER".into(),
        subjects: vec!["after.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("after.1", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
}
