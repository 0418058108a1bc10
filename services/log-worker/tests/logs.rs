//! log-worker on real 3-node clusters.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use async_nats::jetstream;
use futures::future::join_all;
use log_worker::Local;
use protocol::logs::{LogQueryReply, LogStats};
use protocol::micro::{PingResponse, Verb};
use protocol::{ErrorCode, subjects};
use runtime::client::{call, discover, request_raw};
use runtime::settings::Value;
use runtime::{CancellationToken, Settings};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use testkit::Cluster;
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(5);

struct Worker {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    local: Arc<Local>,
}

async fn workers_up(cluster: &Cluster) -> usize {
    let client = cluster.client().await.unwrap();
    discover::<PingResponse>(
        &client,
        Verb::Ping,
        Some("log-worker"),
        Duration::from_millis(200),
    )
    .await
    .unwrap()
    .len()
}

impl Worker {
    async fn start(cluster: &Cluster, dir: &Path) -> Worker {
        let settings = Settings::load_with([
            ("nats.urls", Value::from(cluster.urls())),
            ("logs.log_dir", Value::from(dir.to_str().unwrap())),
        ])
        .unwrap();
        let before = workers_up(cluster).await;
        let shutdown = CancellationToken::new();
        let local = Arc::new(Local::default());
        let task = tokio::spawn(log_worker::run_with(
            settings,
            shutdown.clone(),
            local.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        while workers_up(cluster).await <= before {
            assert!(Instant::now() < deadline, "log-worker did not start");
        }
        Worker {
            shutdown,
            task,
            local,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// `seq -> count` over every line of `<dir>/<name>.jsonl`.
fn seqs(dir: &Path, name: &str) -> HashMap<u64, usize> {
    let mut out = HashMap::new();
    for line in std::fs::read_to_string(dir.join(format!("{name}.jsonl")))
        .unwrap_or_default()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *out.entry(v["seq"].as_u64().unwrap()).or_insert(0) += 1;
    }
    out
}

fn record(service: &str, level: &str, message: &str) -> bytes::Bytes {
    json!({"ts": runtime::time::now_rfc3339(), "service": service, "level": level, "message": message, "fields": {"n": 1}})
        .to_string()
        .into()
}

async fn stats(client: &async_nats::Client) -> LogStats {
    call(client, subjects::LOGS_STATS, &json!({}), TIMEOUT)
        .await
        .unwrap()
}

#[tokio::test]
async fn seed_workers_share_messages_stats_query_and_bad_input() {
    let cluster = Cluster::start(3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let workers = [
        Worker::start(&cluster, dir.path()).await,
        Worker::start(&cluster, dir.path()).await,
        Worker::start(&cluster, dir.path()).await,
    ];
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());

    // The seed: 3 workers share 30 messages on logs.process.
    for i in 0..30 {
        js.publish(
            subjects::LOGS_PROCESS,
            record("seed", "info", &format!("task {i}")),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while workers
        .iter()
        .map(|w| w.local.written.load(Ordering::Relaxed))
        .sum::<u64>()
        < 30
    {
        assert!(Instant::now() < deadline, "not all 30 written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let split: Vec<u64> = workers
        .iter()
        .map(|w| w.local.written.load(Ordering::Relaxed))
        .collect();
    println!("30 seed messages split across 3 workers: {split:?}");
    assert_eq!(split.iter().sum::<u64>(), 30);
    assert!(
        split.iter().filter(|&&n| n > 0).count() >= 2,
        "the workers share the load: {split:?}"
    );
    let seed = seqs(dir.path(), "seed");
    assert_eq!(seed.len(), 30);
    assert!(seed.values().all(|&n| n == 1));

    // Per-service subjects, then stats and queries.
    for (service, level, n) in [
        ("math", "info", 5),
        ("math", "error", 2),
        ("payments", "warn", 3),
    ] {
        for i in 0..n {
            let subject = subjects::logs(service, level).unwrap();
            js.publish(
                subject,
                record(service, level, &format!("{service} {level} {i}")),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    }
    // Bad input: kept aside, counted, nothing lost.
    js.publish("logs.math.loud", record("math", "info", "x"))
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish(subjects::LOGS_PROCESS, "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let totals = loop {
        let s = stats(&client).await;
        if s.processed >= 40 && s.rejected >= 2 {
            break s;
        }
        assert!(Instant::now() < deadline, "stats: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(totals.processed, 40);
    assert_eq!(totals.rejected, 2);
    assert_eq!(totals.by_service.get("seed"), Some(&30));
    assert_eq!(totals.by_service.get("math"), Some(&7));
    assert_eq!(totals.by_level.get("error"), Some(&2));
    assert_eq!(totals.by_level.get("info"), Some(&35));
    // Every worker answers the same numbers.
    for _ in 0..5 {
        assert_eq!(stats(&client).await, totals);
    }
    assert_eq!(seqs(dir.path(), "_rejected").len(), 2);

    let q: LogQueryReply = call(
        &client,
        subjects::LOGS_QUERY,
        &json!({"service": "math", "limit": 3}),
        TIMEOUT,
    )
    .await
    .unwrap();
    let messages: Vec<&str> = q
        .entries
        .iter()
        .map(|e| e.record.message.as_str())
        .collect();
    assert_eq!(
        messages,
        ["math info 4", "math error 0", "math error 1"],
        "the most recent 3, oldest first"
    );
    assert!(q.entries.windows(2).all(|w| w[0].seq < w[1].seq));
    let q: LogQueryReply = call(
        &client,
        subjects::LOGS_QUERY,
        &json!({"level": "warn"}),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(q.entries.len(), 3);
    let q: LogQueryReply = call(
        &client,
        subjects::LOGS_QUERY,
        &json!({"service": "seed", "level": "info", "limit": 1000}),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(
        q.entries.len(),
        30,
        "logs.process records are filtered by their body"
    );
    let future =
        runtime::time::format_rfc3339(time::OffsetDateTime::now_utc() + time::Duration::hours(1));
    let q: LogQueryReply = call(
        &client,
        subjects::LOGS_QUERY,
        &json!({"since": future}),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert!(q.entries.is_empty());
    for (body, code) in [
        (r#"{"level":"loud"}"#, ErrorCode::InvalidRequest),
        (r#"{"limit":0}"#, ErrorCode::InvalidRequest),
        (r#"{"since":"yesterday"}"#, ErrorCode::InvalidRequest),
        (r#"{"service":"a.b"}"#, ErrorCode::InvalidRequest),
        ("[", ErrorCode::InvalidRequest),
    ] {
        let reply = request_raw(
            &client,
            subjects::LOGS_QUERY,
            None,
            body.to_owned().into(),
            TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(reply.error().map(|e| e.code), Some(code), "{body}");
    }
    let reply = request_raw(&client, subjects::LOGS_STATS, None, "nope".into(), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        reply.error().map(|e| e.code),
        Some(ErrorCode::InvalidRequest)
    );
    for w in workers {
        w.stop().await;
    }
}

#[tokio::test]
async fn three_worker_processes_one_sigkilled_write_each_record_once() {
    let cluster = Cluster::start(3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_log-worker"))
            .env("SWITCHYARD__NATS__URLS", cluster.urls().join(","))
            .env("SWITCHYARD__LOGS__LOG_DIR", dir.path())
            .env("SWITCHYARD__LOGS__BATCH", "100")
            .env("SWITCHYARD__LOGS__ACK_WAIT_MS", "2000")
            .env("SWITCHYARD__LOG__SHIP", "true")
            .env("SWITCHYARD__LOG__LEVEL", "info")
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut procs = vec![spawn(), spawn(), spawn()];
    let deadline = Instant::now() + Duration::from_secs(30);
    while workers_up(&cluster).await < 3 {
        assert!(Instant::now() < deadline, "workers did not start");
    }
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());
    let services = ["svc-a", "svc-b", "svc-c"];
    let total = 3000;
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for chunk in (0..total).collect::<Vec<_>>().chunks(100) {
                join_all(chunk.iter().map(|i| {
                    let js = js.clone();
                    let service = services[i % 3];
                    async move {
                        js.publish(
                            format!("logs.{service}.info"),
                            record(service, "info", &format!("r{i}")),
                        )
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                    }
                }))
                .await;
            }
        })
    };
    let written = |dir: &Path| services.iter().map(|s| seqs(dir, s).len()).sum::<usize>();
    let deadline = Instant::now() + Duration::from_secs(60);
    while written(dir.path()) < 1000 {
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    procs[0].start_kill().unwrap();
    procs[0].wait().await.unwrap();
    println!(
        "SIGKILLed one of 3 workers with {} of {total} written",
        written(dir.path())
    );
    publisher.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while written(dir.path()) < total {
        assert!(
            Instant::now() < deadline,
            "{} of {total} written",
            written(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut all = HashSet::new();
    for s in services {
        let counts = seqs(dir.path(), s);
        assert!(
            counts.values().all(|&n| n == 1),
            "{s}: a record written twice"
        );
        assert_eq!(counts.len(), total / 3, "{s}");
        all.extend(counts.into_keys());
    }
    assert_eq!(all.len(), total);

    // Ingestion rate of the 2 remaining workers: queue 6,000 records while
    // maintenance pauses them, then time the drain.
    runtime::maintenance::set(&js, 3, true).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let backlog = 6000;
    for chunk in (0..backlog).collect::<Vec<_>>().chunks(500) {
        join_all(chunk.iter().map(|i| {
            let js = js.clone();
            async move {
                js.publish("logs.svc-t.info", record("svc-t", "info", &format!("t{i}")))
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }))
        .await;
    }
    runtime::maintenance::set(&js, 3, false).await.unwrap();
    let resumed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seqs(dir.path(), "svc-t").len() < backlog {
        assert!(Instant::now() < deadline, "backlog not drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = resumed.elapsed();
    println!(
        "2 workers wrote a backlog of {backlog} records in {took:?}: {:.0} records/s",
        backlog as f64 / took.as_secs_f64()
    );

    // The workers ship their own logs too (log.ship): their start-up
    // records reached log-worker.jsonl through LOGS.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let own = std::fs::read_to_string(dir.path().join("log-worker.jsonl")).unwrap_or_default();
        if own.contains("micro service started") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shipped logs never arrived: {own}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for mut p in procs.drain(1..) {
        p.start_kill().unwrap();
        p.wait().await.unwrap();
    }
}
