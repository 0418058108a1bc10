//! log-worker on real 3-node clusters.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::future::join_all;
use log_worker::WorkerCounters;
use protocol::logs::{CLAIMED_SERVICE_FIELD, DlqReason, LogQueryReply, LogStats, dlq_headers};
use protocol::names::{consumers, streams};
use protocol::{ErrorCode, subjects};
use runtime::client::{call, request_raw};
use runtime::settings::Value;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use testkit::{Cluster, TestService};
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A log-worker in this process writing to `dir`, and what it counted.
async fn start(cluster: &Cluster, dir: &Path) -> (TestService, Arc<WorkerCounters>) {
    start_with(cluster, dir, &[]).await
}

/// [`start`] with more settings.
async fn start_with(
    cluster: &Cluster,
    dir: &Path,
    settings: &[(&str, Value)],
) -> (TestService, Arc<WorkerCounters>) {
    let counters = Arc::new(WorkerCounters::default());
    let mut all = vec![("logs.log_dir", Value::from(dir.to_str().unwrap()))];
    all.extend(settings.iter().cloned());
    let service = testkit::spawn_service(
        {
            let c = counters.clone();
            move |s, t| log_worker::run_with(s, t, c)
        },
        cluster,
        &all,
    )
    .await;
    (service, counters)
}

/// `seq -> count` over `<name>.jsonl` and its rotated files `<name>.<n>.jsonl`.
fn seqs_rotated(dir: &Path, name: &str) -> HashMap<u64, usize> {
    let mut out = seqs(dir, name);
    for n in 1.. {
        if !dir.join(format!("{name}.{n}.jsonl")).exists() {
            break;
        }
        for (seq, count) in seqs(dir, &format!("{name}.{n}")) {
            *out.entry(seq).or_insert(0) += count;
        }
    }
    out
}

/// Publishes `body` on `subject` to `LOGS`; its stream sequence.
async fn publish(js: &jetstream::Context, subject: &str, body: bytes::Bytes) -> u64 {
    js.publish(subject.to_owned(), body)
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

async fn query(client: &async_nats::Client, q: serde_json::Value) -> LogQueryReply {
    call(client, subjects::LOGS_QUERY, &q, TIMEOUT)
        .await
        .unwrap()
}

/// Messages of the `log-workers` consumer delivered and not yet acked.
async fn ack_pending(js: &jetstream::Context) -> usize {
    let stream = js.get_stream(streams::LOGS).await.unwrap();
    let mut consumer: PullConsumer = stream.get_consumer(consumers::LOG_WORKERS).await.unwrap();
    consumer.info().await.unwrap().num_ack_pending
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
        start(&cluster, dir.path()).await,
        start(&cluster, dir.path()).await,
        start(&cluster, dir.path()).await,
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
        // Pacing, not waiting: spread over time, the messages reach every
        // worker's pulls.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let written = || {
        workers
            .iter()
            .map(|(_, c)| c.written.load(Ordering::Relaxed))
            .collect::<Vec<u64>>()
    };
    testkit::eventually("all 30 written", Duration::from_secs(15), || async {
        let split = written();
        if split.iter().sum::<u64>() >= 30 {
            Ok(())
        } else {
            Err(format!("not all 30 written: {split:?}"))
        }
    })
    .await;
    let split = written();
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
    js.publish(subjects::LOGS_PROCESS, "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let totals = testkit::eventually(
        "40 processed and 2 rejected",
        Duration::from_secs(15),
        || async {
            let s = stats(&client).await;
            if s.processed >= 40 && s.rejected >= 2 {
                Ok(s)
            } else {
                Err(format!("stats: {s:?}"))
            }
        },
    )
    .await;
    assert_eq!(totals.processed, 40);
    assert_eq!(totals.rejected, 2);
    assert_eq!(totals.by_service.get("seed"), Some(&30));
    assert_eq!(totals.by_service.get("math"), Some(&7));
    assert_eq!(totals.by_level.get("error"), Some(&2));

    // Seed 000's plain-text messages: records of service `process`, found
    // by a query.
    for i in 0..3 {
        js.publish(subjects::LOGS_PROCESS, format!("Log message {i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let plain = testkit::eventually(
        "3 plain-text records queryable",
        Duration::from_secs(15),
        || async {
            let r = query(&client, json!({"service": "process"})).await;
            if r.entries.len() >= 3 {
                Ok(r)
            } else {
                Err(format!("{r:?}"))
            }
        },
    )
    .await;
    let messages: Vec<&str> = plain
        .entries
        .iter()
        .map(|e| e.record.message.as_str())
        .collect();
    assert_eq!(
        messages,
        ["Log message 0", "Log message 1", "Log message 2"]
    );
    assert!(plain.entries.iter().all(|e| e.record.level == "info"));

    // Trace ids: from the message's traceparent header, or the record's own
    // fields.trace_id; services.logs.query filters by it.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    js.publish_with_headers(
        "logs.tracer-a.info",
        runtime::trace::headers(&format!("00-{trace}-00f067aa0ba902b7-01")),
        record("tracer-a", "info", "traced by header"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    js.publish(
        "logs.tracer-b.info",
        json!({"ts": runtime::time::now_rfc3339(), "message": "traced by field", "fields": {"trace_id": trace}})
            .to_string()
            .into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let traced = testkit::eventually(
        "both traced records queryable by trace id",
        Duration::from_secs(15),
        || async {
            let r = query(&client, json!({"trace_id": trace})).await;
            if r.entries.len() >= 2 {
                Ok(r)
            } else {
                Err(format!("{r:?}"))
            }
        },
    )
    .await;
    let messages: Vec<&str> = traced
        .entries
        .iter()
        .map(|e| e.record.message.as_str())
        .collect();
    assert_eq!(messages, ["traced by header", "traced by field"]);
    let bad = request_raw(
        &client,
        subjects::LOGS_QUERY,
        None,
        r#"{"trace_id":"XYZ"}"#.into(),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&bad.payload).contains("32 lower-case hex digits"),
        "{bad:?}"
    );
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
    for (w, _) in workers {
        w.stop().await;
    }
}

#[tokio::test]
async fn three_worker_processes_one_sigkilled_write_each_record_once() {
    let cluster = Cluster::start(3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().to_str().unwrap();
    let env = [
        ("SWITCHYARD__LOGS__LOG_DIR", log_dir),
        ("SWITCHYARD__LOGS__BATCH", "100"),
        ("SWITCHYARD__LOGS__ACK_WAIT_MS", "2000"),
        ("SWITCHYARD__LOG__SHIP", "true"),
        ("SWITCHYARD__LOG__LEVEL", "info"),
    ];
    let bin = env!("CARGO_BIN_EXE_log-worker");
    let (p0, p1, p2) = tokio::join!(
        testkit::spawn_process(bin, &cluster, &env),
        testkit::spawn_process(bin, &cluster, &env),
        testkit::spawn_process(bin, &cluster, &env),
    );
    let mut procs = vec![p0, p1, p2];
    let client = cluster.client().await.unwrap();
    testkit::eventually("3 workers up", Duration::from_secs(30), || async {
        match testkit::instances(&client, "log-worker").await.len() {
            n if n >= 3 => Ok(()),
            n => Err(format!("workers did not start: {n} of 3 up")),
        }
    })
    .await;
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
    testkit::eventually("1000 written", Duration::from_secs(60), || async {
        match written(dir.path()) {
            n if n >= 1000 => Ok(()),
            n => Err(format!("no progress: {n} written")),
        }
    })
    .await;
    procs[0].kill().await;
    println!(
        "SIGKILLed one of 3 workers with {} of {total} written",
        written(dir.path())
    );
    publisher.await.unwrap();
    testkit::eventually("all written", Duration::from_secs(90), || async {
        match written(dir.path()) {
            n if n >= total => Ok(()),
            n => Err(format!("{n} of {total} written")),
        }
    })
    .await;
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
    testkit::eventually("the workers paused", Duration::from_secs(15), || async {
        let reply = request_raw(&client, subjects::LOGS_STATS, None, "{}".into(), TIMEOUT)
            .await
            .map_err(|e| format!("{e:#}"))?;
        match reply.error().map(|e| e.code) {
            Some(ErrorCode::Maintenance) => Ok(()),
            other => Err(format!("stats answered {other:?}, not maintenance")),
        }
    })
    .await;
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
    testkit::eventually("backlog drained", Duration::from_secs(60), || async {
        match seqs(dir.path(), "svc-t").len() {
            n if n >= backlog => Ok(()),
            n => Err(format!("backlog not drained: {n} of {backlog}")),
        }
    })
    .await;
    let took = resumed.elapsed();
    println!(
        "2 workers wrote a backlog of {backlog} records in {took:?}: {:.0} records/s",
        backlog as f64 / took.as_secs_f64()
    );

    // The workers ship their own logs too (log.ship): their start-up
    // records reached log-worker.jsonl through LOGS.
    testkit::eventually("shipped logs arrived", Duration::from_secs(15), || async {
        let own = std::fs::read_to_string(dir.path().join("log-worker.jsonl")).unwrap_or_default();
        if own.contains("micro service started") {
            Ok(())
        } else {
            Err(format!("shipped logs never arrived: {own}"))
        }
    })
    .await;
    for mut p in procs.drain(1..) {
        p.kill().await;
    }
}

#[tokio::test]
async fn the_subject_decides_the_service_and_rotated_files_keep_every_record() {
    let cluster = Cluster::start(3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (worker, _) = start_with(
        &cluster,
        dir.path(),
        &[
            ("logs.max_file_bytes", Value::from(1024)),
            ("logs.max_files", Value::from(100)),
        ],
    )
    .await;
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());

    // math-service claims to be payment-processor: filed as math-service.
    let spoof = publish(
        &js,
        "logs.math-service.info",
        record("payment-processor", "info", "not really payments"),
    )
    .await;
    testkit::eventually("the spoof written", Duration::from_secs(15), || async {
        match seqs(dir.path(), "math-service").get(&spoof) {
            Some(1) => Ok(()),
            other => Err(format!("math-service.jsonl has it {other:?} times")),
        }
    })
    .await;
    assert!(
        !dir.path().join("payment-processor.jsonl").exists(),
        "nothing was written into payment-processor's file"
    );
    let line = std::fs::read_to_string(dir.path().join("math-service.jsonl")).unwrap();
    let stored: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(stored["service"], "math-service");
    assert_eq!(stored["fields"][CLAIMED_SERVICE_FIELD], "payment-processor");
    let q = query(&client, json!({"service": "payment-processor"})).await;
    assert!(q.entries.is_empty(), "{q:?}");
    let q = query(&client, json!({})).await;
    let entry = q.entries.iter().find(|e| e.seq == spoof).unwrap();
    assert_eq!(entry.record.service, "math-service");
    let s = testkit::eventually("counted", Duration::from_secs(15), || async {
        let s = stats(&client).await;
        if s.processed >= 1 {
            Ok(s)
        } else {
            Err(format!("stats: {s:?}"))
        }
    })
    .await;
    assert_eq!(s.by_service.get("math-service"), Some(&1));
    assert_eq!(s.by_service.get("payment-processor"), None);

    // Rotation: 40 records of ~200 bytes in files of at most 1 KiB.
    let mut published = HashSet::new();
    for i in 0..40 {
        published.insert(
            publish(
                &js,
                "logs.rot.info",
                record(
                    "rot",
                    "info",
                    &format!("rotating {i:02} {}", "x".repeat(80)),
                ),
            )
            .await,
        );
    }
    testkit::eventually("all 40 written", Duration::from_secs(15), || async {
        match seqs_rotated(dir.path(), "rot").len() {
            40 => Ok(()),
            n => Err(format!("{n} of 40 written")),
        }
    })
    .await;
    let counts = seqs_rotated(dir.path(), "rot");
    assert!(counts.values().all(|&n| n == 1), "a record written twice");
    assert_eq!(counts.keys().copied().collect::<HashSet<_>>(), published);
    let files: Vec<u64> = std::iter::once("rot.jsonl".to_owned())
        .chain((1..).map(|n| format!("rot.{n}.jsonl")))
        .map_while(|name| std::fs::metadata(dir.path().join(name)).ok())
        .map(|m| m.len())
        .collect();
    assert!(files.len() >= 5, "rotated into {} files", files.len());
    assert!(files.iter().all(|&len| len <= 1024), "{files:?}");
    let q = query(&client, json!({"service": "rot", "limit": 1000})).await;
    assert_eq!(
        q.entries.iter().map(|e| e.seq).collect::<HashSet<_>>(),
        published,
        "the query returns every record, rotated or not"
    );
    worker.stop().await;
}

#[tokio::test]
async fn disk_full_backs_off_then_writes_or_dead_letters() {
    let cluster = Cluster::start(3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (worker, counters) = start_with(
        &cluster,
        dir.path(),
        &[
            ("logs.max_deliver", Value::from(4)),
            ("logs.retry_min_ms", Value::from(500)),
            ("logs.retry_max_ms", Value::from(2000)),
            ("logs.ack_wait_ms", Value::from(3000)),
        ],
    )
    .await;
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());
    // Writes to /dev/full fail with ENOSPC: a full disk, without root.
    let full = dir.path().join("full.jsonl");
    std::os::unix::fs::symlink("/dev/full", &full).unwrap();

    // A full file holds back only its own records.
    let held = publish(&js, "logs.full.info", record("full", "info", "wait")).await;
    let fine = publish(&js, "logs.ok.info", record("ok", "info", "fine")).await;
    testkit::eventually("a write failed", Duration::from_secs(15), || async {
        match counters.write_failures.load(Ordering::Relaxed) {
            0 => Err("no write failed yet"),
            _ => Ok(()),
        }
    })
    .await;
    testkit::eventually("ok written", Duration::from_secs(15), || async {
        match seqs(dir.path(), "ok").get(&fine) {
            Some(1) => Ok(()),
            other => Err(format!("ok.jsonl has it {other:?} times")),
        }
    })
    .await;
    assert!(
        ack_pending(&js).await >= 1,
        "the full file's record is not acked"
    );
    assert!(worker.is_running());
    // Room again: the record comes back and is written.
    std::fs::remove_file(&full).unwrap();
    testkit::eventually("held written", Duration::from_secs(15), || async {
        match seqs(dir.path(), "full").get(&held) {
            Some(1) => Ok(()),
            other => Err(format!("full.jsonl has it {other:?} times")),
        }
    })
    .await;
    testkit::eventually("all acked", Duration::from_secs(15), || async {
        match ack_pending(&js).await {
            0 => Ok(()),
            n => Err(format!("{n} pending")),
        }
    })
    .await;
    assert_eq!(counters.dead_lettered.load(Ordering::Relaxed), 0);

    // Still full at the last delivery: to LOGS_DLQ, as published, and termed.
    let doomed = dir.path().join("doomed.jsonl");
    std::os::unix::fs::symlink("/dev/full", &doomed).unwrap();
    let body = record("doomed", "warn", "no room");
    let seq = publish(&js, "logs.doomed.warn", body.clone()).await;
    let dlq = js.get_stream(streams::LOGS_DLQ).await.unwrap();
    let entry = testkit::eventually("in the DLQ", Duration::from_secs(30), || async {
        dlq.get_last_raw_message_by_subject(subjects::LOGS_DLQ)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let header = |name: &str| {
        entry
            .headers
            .get(name)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(entry.payload, body);
    assert_eq!(header(dlq_headers::REASON), DlqReason::WriteFailed.as_str());
    assert_eq!(header(dlq_headers::SUBJECT), "logs.doomed.warn");
    assert_eq!(header(dlq_headers::STREAM_SEQ), seq.to_string());
    assert_eq!(header(dlq_headers::DELIVERIES), "4");
    assert!(
        header(dlq_headers::ERROR).contains("No space left"),
        "{}",
        header(dlq_headers::ERROR)
    );
    testkit::eventually("termed", Duration::from_secs(15), || async {
        match ack_pending(&js).await {
            0 => Ok(()),
            n => Err(format!("{n} pending")),
        }
    })
    .await;
    assert_eq!(counters.dead_lettered.load(Ordering::Relaxed), 1);
    assert!(doomed.is_symlink(), "nothing replaced the full file");
    assert!(worker.is_running());
    worker.stop().await;
}
