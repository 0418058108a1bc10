//! The harness itself: nodes die with their `Cluster`, also when a test
//! panics, and a killed node comes back with its JetStream data.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use std::time::Duration;
use testkit::Cluster;

fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

#[tokio::test]
async fn drop_and_panic_both_stop_every_node() {
    let cluster = Cluster::start(3).await.unwrap();
    let pids = cluster.pids();
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&p| alive(p)));
    drop(cluster);
    assert!(pids.iter().all(|&p| !alive(p)), "drop left {pids:?}");

    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cluster = rt.block_on(Cluster::start(1)).unwrap();
        tx.send(cluster.pids()).unwrap();
        panic!("a failing test");
    })
    .join();
    assert!(panicked.is_err());
    let pids = rx.recv().unwrap();
    assert!(pids.iter().all(|&p| !alive(p)), "panic left {pids:?}");
}

#[tokio::test]
async fn a_killed_node_restarts_with_its_data() {
    let mut cluster = Cluster::start(3).await.unwrap();
    let js = async_nats::jetstream::new(cluster.client_to(0).await.unwrap());
    // Usable from this connection when it returns: the first put needs no retry.
    let kv = testkit::js::r3_kv(&js, "harness").await.unwrap();
    kv.put("k", "v1".into()).await.unwrap();

    cluster.kill_node(2);
    assert_eq!(cluster.pids().len(), 2);
    // Quorum holds with one node down. If node 2 led the bucket's stream, a
    // new leader is elected first (seconds); until then a put has no
    // responder. Wait for the bucket to answer, then put once.
    let probe = runtime::js::kv_probe_subject(&kv);
    runtime::js::wait_usable(
        &js,
        &kv.stream_name,
        probe.as_deref(),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    kv.put("k", "v2".into()).await.unwrap();
    cluster.restart_node(2).await.unwrap();
    assert_eq!(cluster.pids().len(), 3);

    // Ask the restarted node directly once it has caught up.
    let js2 = async_nats::jetstream::new(cluster.client_to(2).await.unwrap());
    let kv2 = js2.get_key_value("harness").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if kv2.get("k").await.ok().flatten().as_deref() == Some(&b"v2"[..]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 2 did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_node_fsyncs_each_write_before_acknowledging_it() {
    let cluster = testkit::shared().await;
    for i in 0..cluster.len() {
        let varz = cluster.varz(i).await.unwrap();
        assert_eq!(
            varz["jetstream"]["config"]["sync_always"], true,
            "node {i}: {}",
            varz["jetstream"]["config"]
        );
    }
}
