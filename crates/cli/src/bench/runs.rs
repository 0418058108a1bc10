//! The benches.

use super::load::{clients, latency, percentile_us, rss_mb, throughput, until};
use super::names::{self, CLI, RAW_ADD};
use super::{Env, Metric};
use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures::future::join_all;
use protocol::math::Operation;
use protocol::names::{consumers, headers, services, streams};
use protocol::stocks::DEFAULT_SYMBOLS;
use protocol::subjects;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// `services.math.add`.
fn add() -> String {
    subjects::math_operation(Operation::Add)
}

/// The binary of a service (its name if, impossibly, it has none).
fn binary(service: &'static str) -> &'static str {
    services::binary(service).unwrap_or(service)
}
const INFLIGHT: usize = 50;
const CONNECTIONS: usize = 5;

fn body() -> Bytes {
    Bytes::from_static(br#"{"a":2,"b":3}"#)
}

async fn responder_ready(env: &Env, subject: &str) -> anyhow::Result<()> {
    let client = env.client().await?;
    until(
        &format!("a responder on {subject}"),
        Duration::from_secs(30),
        || {
            let client = client.clone();
            let subject = subject.to_owned();
            async move { Ok(client.request(subject, body()).await.is_ok()) }
        },
    )
    .await?;
    Ok(())
}

/// Latency percentiles (1 in flight) and throughput (50 in flight) of two subjects.
async fn compare_rpc(
    env: &Env,
    bench: &'static str,
    ours: &str,
    theirs: &str,
    goals: [Option<(&str, f64)>; 3],
) -> anyhow::Result<Vec<Metric>> {
    let d = env.duration;
    let client = env.client().await?;
    let pool = clients(&env.urls, CONNECTIONS).await?;
    for subject in [ours, theirs] {
        latency(&client, subject, &body(), d / 5).await?;
    }
    let bar = env.phase(&format!("{bench}: latency, 1 in flight"), d * 2);
    let (a, b) = (
        latency(&client, ours, &body(), d).await?,
        latency(&client, theirs, &body(), d).await?,
    );
    bar.finish_and_clear();
    let bar = env.phase(&format!("{bench}: throughput, {INFLIGHT} in flight"), d * 2);
    let ta = throughput(&pool, ours, &body(), INFLIGHT, d).await?;
    let tb = throughput(&pool, theirs, &body(), INFLIGHT, d).await?;
    bar.finish_and_clear();
    let mut out = Vec::new();
    for (label, p, goal) in [
        ("p50 latency", 50.0, goals[0]),
        ("p90 latency", 90.0, None),
        ("p99 latency", 99.0, goals[1]),
        ("max latency", 100.0, None),
    ] {
        out.push(Metric::compared(
            bench,
            label,
            "µs",
            percentile_us(&a, p),
            percentile_us(&b, p),
            goal,
        ));
    }
    out.push(Metric::compared(
        bench,
        &format!("throughput, {INFLIGHT} in flight"),
        "req/s",
        ta,
        tb,
        goals[2],
    ));
    Ok(out)
}

pub(crate) async fn rpc(env: &mut Env) -> anyhow::Result<Vec<Metric>> {
    for _ in 0..2 {
        env.spawn(binary(services::MATH), &[], &[])?;
        env.spawn(CLI, &["bench-helper", "echo", "--subject", RAW_ADD], &[])?;
    }
    env.wait_instances(services::MATH, 2).await?;
    responder_ready(env, RAW_ADD).await?;
    compare_rpc(
        env,
        "rpc",
        &add(),
        RAW_ADD,
        [Some(("<=", 1.15)), Some(("<=", 1.3)), Some((">=", 0.9))],
    )
    .await
}

pub(crate) async fn python(env: &mut Env) -> anyhow::Result<Vec<Metric>> {
    let python = std::env::var("SWITCHYARD_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| env.bin_dir.join("../../.venv/bin/python"));
    let script = env.bin_dir.join("../../clients/python/bench_responder.py");
    anyhow::ensure!(
        python.is_file() && script.is_file(),
        "needs {} and {} (just setup)",
        python.display(),
        script.display()
    );
    env.spawn(binary(services::MATH), &[], &[])?;
    let mut command = Command::new(python);
    command
        .arg(script)
        .arg("--servers")
        .arg(env.urls.join(","))
        .arg("--subject")
        .arg(RAW_ADD);
    command.stdout(Stdio::null());
    let child = testkit::spawn_tied(command)?;
    env.children.push(child);
    env.wait_instances(services::MATH, 1).await?;
    responder_ready(env, RAW_ADD).await?;
    // Goals are switchyard/nats-py: p50 at most half, throughput at least 3×.
    compare_rpc(
        env,
        "python",
        &add(),
        RAW_ADD,
        [Some(("<=", 0.5)), None, Some((">=", 3.0))],
    )
    .await
}

async fn count(js: &jetstream::Context, stream: &str) -> anyhow::Result<u64> {
    let mut s = js.get_stream(stream).await?;
    Ok(s.info().await?.state.messages)
}

/// Publishes `n` messages (acked, pipelined 500 at a time).
async fn publish_many(
    js: &jetstream::Context,
    n: usize,
    subject: impl Fn(usize) -> String,
    payload: impl Fn(usize) -> Bytes,
    msg_id: bool,
) -> anyhow::Result<()> {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut acks = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let mut h = async_nats::HeaderMap::new();
            if msg_id {
                h.insert(
                    headers::MSG_ID,
                    format!("bench-{i}-{}", std::process::id()).as_str(),
                );
            }
            acks.push(js.publish_with_headers(subject(i), h, payload(i)).await?);
        }
        for ack in join_all(acks.into_iter().map(|a| a.into_future())).await {
            ack?;
        }
    }
    Ok(())
}

pub(crate) async fn payments(env: &mut Env) -> anyhow::Result<Vec<Metric>> {
    let n = ((env.duration.as_secs_f64() * 600.0) as usize).max(200);
    let js = jetstream::new(env.client().await?);
    env.spawn(
        binary(services::PAYMENT_PROCESSOR),
        &[],
        &[
            ("SWITCHYARD__PAYMENTS__GATEWAY__LATENCY_MS", "0".into()),
            ("SWITCHYARD__PAYMENTS__GATEWAY__JITTER_MS", "0".into()),
        ],
    )?;
    env.wait_instances(services::PAYMENT_PROCESSOR, 1).await?;
    let run = format!("{}", std::process::id());
    let before = count(&js, streams::EVENTS).await?;
    let bar = env.phase(
        &format!("payments: {n} through payment-processor"),
        env.duration,
    );
    let start = Instant::now();
    publish_many(
        &js,
        n,
        |_| protocol::subjects::PAYMENT_PROCESS.to_owned(),
        |i| {
            Bytes::from(format!(
                r#"{{"payment_id":"b{run}-{i}","user_id":"u","amount":"1.00","currency":"USD"}}"#
            ))
        },
        true,
    )
    .await?;
    until(
        "all payments completed",
        Duration::from_secs(300),
        || async { Ok(count(&js, streams::EVENTS).await? >= before + n as u64) },
    )
    .await?;
    let ours = n as f64 / start.elapsed().as_secs_f64();
    bar.finish_and_clear();

    // The minimal loop: the same JetStream operations, no checks.
    let stream = runtime::js::ensure_stream(
        &js,
        stream::Config {
            name: names::PAY_STREAM.into(),
            subjects: vec![names::PAY_SUBJECT.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            num_replicas: 3.min(env.urls.len()),
            ..Default::default()
        },
        false,
        runtime::settings::AssetMode::Create,
    )
    .await?;
    runtime::js::ensure_stream(
        &js,
        stream::Config {
            name: names::EVENTS_STREAM.into(),
            subjects: vec![names::all(names::EVENTS_PREFIX)],
            num_replicas: 3.min(env.urls.len()),
            ..Default::default()
        },
        false,
        runtime::settings::AssetMode::Create,
    )
    .await?;
    runtime::js::ensure_kv(
        &js,
        kv::Config {
            bucket: names::PAY_BUCKET.into(),
            num_replicas: 3.min(env.urls.len()),
            ..Default::default()
        },
        runtime::settings::AssetMode::Create,
    )
    .await?;
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(names::PAY_CONSUMER.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    env.spawn(CLI, &["bench-helper", "payloop"], &[])?;
    let before = count(&js, names::EVENTS_STREAM).await?;
    let bar = env.phase(
        &format!("payments: {n} through the minimal loop"),
        env.duration,
    );
    let start = Instant::now();
    publish_many(
        &js,
        n,
        |_| names::PAY_SUBJECT.to_owned(),
        |i| Bytes::from(format!(r#"{{"payment_id":"b{i}"}}"#)),
        true,
    )
    .await?;
    until(
        "all baseline payments done",
        Duration::from_secs(300),
        || async { Ok(count(&js, names::EVENTS_STREAM).await? >= before + n as u64) },
    )
    .await?;
    let theirs = n as f64 / start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok(vec![Metric::compared(
        "payments",
        "end-to-end publish → completed",
        "payments/s",
        ours,
        theirs,
        Some((">=", 0.9)),
    )])
}

/// Records per second a consumer's workers acknowledge, from the first ack
/// seen to drained, so process start-up is left out on both sides. When the
/// workers drain everything before the first look at the consumer (a tiny
/// run on a busy machine), there is no interval to measure: the rate is then
/// taken from `spawned`, start-up included, a lower bound rather than zero.
async fn drain_rate(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    total: u64,
    spawned: Instant,
) -> anyhow::Result<f64> {
    let s = js.get_stream(stream).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first: Option<(Instant, u64)> = None;
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{consumer} did not drain {stream}"
        );
        if let Ok(info) = s.consumer_info(consumer).await {
            let acked = info.ack_floor.stream_sequence;
            if first.is_none() && acked > 0 {
                first = Some((Instant::now(), acked));
            }
            if info.num_pending == 0
                && info.num_ack_pending == 0
                && acked >= total
                && let Some((at, from)) = first
            {
                let (at, done) = if acked > from {
                    (at, acked - from)
                } else {
                    (spawned, total)
                };
                return Ok(done as f64 / at.elapsed().as_secs_f64().max(1e-3));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) async fn logs(env: &mut Env) -> anyhow::Result<Vec<Metric>> {
    let n = ((env.duration.as_secs_f64() * 10_000.0) as usize).max(2000);
    let js = jetstream::new(env.client().await?);
    let replicas = 3.min(env.urls.len());
    let config = |name: &str, subject: &str| stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        num_replicas: replicas,
        ..Default::default()
    };
    runtime::js::ensure_stream(
        &js,
        config(streams::LOGS, subjects::LOGS_ALL),
        false,
        runtime::settings::AssetMode::Create,
    )
    .await?;
    let level = "info";
    let record = |i: usize| {
        Bytes::from(format!(
            r#"{{"ts":"2026-11-23T00:00:00Z","service":"{service}","level":"{level}","message":"record {i}","fields":{{}}}}"#,
            service = names::LOG_SERVICE,
        ))
    };
    let subject = subjects::logs(names::LOG_SERVICE, level)?;
    publish_many(&js, n, |_| subject.clone(), record, false).await?;
    let total = count(&js, streams::LOGS).await?;
    let dir = env.dir.path().join("logstore");
    let bar = env.phase(&format!("logs: {n} records, 2 log-workers"), env.duration);
    let spawned = Instant::now();
    for _ in 0..2 {
        env.spawn(
            binary(services::LOG_WORKER),
            &[],
            &[("SWITCHYARD__LOGS__LOG_DIR", dir.display().to_string())],
        )?;
    }
    let ours = drain_rate(&js, streams::LOGS, consumers::LOG_WORKERS, total, spawned).await?;
    bar.finish_and_clear();

    let stream = runtime::js::ensure_stream(
        &js,
        config(names::LOGS_STREAM, &names::all(names::LOGS_PREFIX)),
        false,
        runtime::settings::AssetMode::Create,
    )
    .await?;
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(names::LOGS_CONSUMER.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 50_000,
            ..Default::default()
        })
        .await?;
    let raw_subject = format!("{}.{level}", names::LOGS_PREFIX);
    publish_many(&js, n, |_| raw_subject.clone(), record, false).await?;
    let total = count(&js, names::LOGS_STREAM).await?;
    let raw_dir = env.dir.path().join("raw").display().to_string();
    let bar = env.phase(&format!("logs: {n} records, 2 raw loops"), env.duration);
    let spawned = Instant::now();
    for _ in 0..2 {
        env.spawn(CLI, &["bench-helper", "logloop", "--dir", &raw_dir], &[])?;
    }
    let theirs = drain_rate(
        &js,
        names::LOGS_STREAM,
        names::LOGS_CONSUMER,
        total,
        spawned,
    )
    .await?;
    bar.finish_and_clear();
    Ok(vec![Metric::compared(
        "logs",
        "records written by 2 workers",
        "records/s",
        ours,
        theirs,
        Some((">=", 0.9)),
    )])
}

async fn rate(
    client: &async_nats::Client,
    subject: &str,
    duration: Duration,
) -> anyhow::Result<f64> {
    use futures::StreamExt as _;
    let mut sub = client.subscribe(subject.to_owned()).await?;
    tokio::time::timeout(Duration::from_secs(30), sub.next()).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        if tokio::time::timeout(Duration::from_millis(100), sub.next())
            .await
            .is_ok()
        {
            n += 1;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub(crate) async fn ticker(env: &mut Env) -> anyhow::Result<Vec<Metric>> {
    let client = env.client().await?;
    let mut out = Vec::new();
    // The default symbols, then many symbols on the same 1 ms interval: the
    // rate the ticker can sustain at all, not just keep up with.
    let many: Vec<String> = (0..100).map(|i| format!("S{i:03}")).collect();
    for names in [DEFAULT_SYMBOLS.map(String::from).to_vec(), many] {
        let symbols = names.len();
        env.spawn(
            binary(services::STOCK_TICKER),
            &[],
            &[
                ("SWITCHYARD__STOCKS__INTERVAL_MS", "1".into()),
                ("SWITCHYARD__STOCKS__SYMBOLS", names.join(",")),
            ],
        )?;
        let bar = env.phase(
            &format!("ticker: {symbols} symbols every 1 ms"),
            env.duration,
        );
        let ours = rate(&client, subjects::STOCKS_ALL, env.duration).await?;
        bar.finish_and_clear();
        env.stop_children();
        let count = symbols.to_string();
        env.spawn(
            CLI,
            &[
                "bench-helper",
                "ticks",
                "--symbols",
                &count,
                "--interval-ms",
                "1",
            ],
            &[],
        )?;
        let bar = env.phase("ticker: raw core publish, same schedule", env.duration);
        let theirs = rate(&client, &names::all(names::STOCKS_PREFIX), env.duration).await?;
        bar.finish_and_clear();
        env.stop_children();
        out.push(Metric::compared(
            "ticker",
            &format!("ticks sustained ({symbols} symbols, 1 ms)"),
            "ticks/s",
            ours,
            theirs,
            None,
        ));
    }
    Ok(out)
}

pub(crate) async fn footprint(env: &mut Env) -> anyhow::Result<Vec<Metric>> {
    let mut out = Vec::new();
    let mut pids = Vec::new();
    for name in services::ALL {
        let Some(binary) = services::binary(name) else {
            continue;
        };
        let metrics_addr = if name == services::REGISTRY {
            "127.0.0.1:0"
        } else {
            ""
        };
        pids.push((
            name,
            env.spawn(
                binary,
                &[],
                &[("SWITCHYARD__REGISTRY__METRICS_ADDR", metrics_addr.into())],
            )?,
        ));
    }
    for (name, _) in &pids {
        env.wait_instances(name, 1).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, pid) in &pids {
        if let Some(mb) = rss_mb(*pid) {
            out.push(Metric::single(
                "footprint",
                &format!("idle RSS {name}"),
                "MB",
                mb,
                Some(10.0),
            ));
        }
    }
    // math under the rpc load.
    let math = pids
        .iter()
        .find(|(n, _)| *n == services::MATH)
        .map(|(_, p)| *p);
    if let Some(pid) = math {
        let pool = clients(&env.urls, CONNECTIONS).await?;
        let load = tokio::spawn({
            let d = env.duration;
            async move { throughput(&pool, &add(), &body(), INFLIGHT, d).await }
        });
        let mut peak: f64 = 0.0;
        // Sample at least once, even when the load ends before the first look.
        loop {
            peak = peak.max(rss_mb(pid).unwrap_or(0.0));
            if load.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        load.await??;
        out.push(Metric::single(
            "footprint",
            "RSS math under load (50 in flight)",
            "MB",
            peak,
            None,
        ));
    }
    env.stop_children();
    out.push(Metric::single(
        "footprint",
        "switchyard up: start to ready",
        "s",
        up_to_ready(env).await?,
        None,
    ));
    Ok(out)
}

/// Starts `switchyard up` on free ports and times its ready line.
async fn up_to_ready(env: &Env) -> anyhow::Result<f64> {
    let base = (20_000..60_000)
        .step_by(53)
        .find(|b| (0..40).all(|i| std::net::TcpListener::bind(("127.0.0.1", b + i)).is_ok()))
        .ok_or_else(|| anyhow::anyhow!("no free ports"))?;
    let mut command = Command::new(env.bin_dir.join(CLI));
    command
        .args(["up", "--dir"])
        .arg(env.dir.path().join("up"))
        .args([
            "--port",
            &base.to_string(),
            "--cluster-port",
            &(base + 10).to_string(),
        ])
        .args([
            "--http-port",
            &(base + 20).to_string(),
            "--metrics-port",
            &(base + 30).to_string(),
        ])
        .current_dir(env.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = testkit::spawn_tied(command)?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.starts_with("switchyard ready"))
    });
    let ok = tokio::time::timeout(Duration::from_secs(120), ready).await;
    let took = start.elapsed().as_secs_f64();
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    anyhow::ensure!(
        matches!(ok, Ok(Ok(true))),
        "switchyard up did not get ready"
    );
    Ok(took)
}

pub(crate) async fn seed(env: &mut Env) -> anyhow::Result<Vec<Metric>> {
    let client = env.client().await?;
    let n = 100_000;
    let bar = env.phase("seed: 100,000 publishes", env.duration);
    let start = Instant::now();
    for i in 0..n {
        client
            .publish(names::SEED, Bytes::from(format!("message {i}")))
            .await?;
    }
    client.flush().await?;
    let published = n as f64 / start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    env.spawn(
        CLI,
        &["bench-helper", "echo", "--subject", names::PING],
        &[],
    )?;
    responder_ready(env, names::PING).await?;
    let bar = env.phase("seed: ping/pong round trips", env.duration);
    let samples = latency(&client, names::PING, &body(), env.duration).await?;
    bar.finish_and_clear();
    let per_s = samples.len() as f64 / env.duration.as_secs_f64();
    Ok(vec![
        Metric::single("seed", "100,000-message publish", "msgs/s", published, None),
        Metric::single(
            "seed",
            "ping/pong round trips",
            "round trips/s",
            per_s,
            None,
        ),
        Metric::single(
            "seed",
            "ping/pong p50",
            "µs",
            percentile_us(&samples, 50.0),
            None,
        ),
    ])
}
