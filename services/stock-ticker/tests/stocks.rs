//! stock-ticker on a real 3-node cluster.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use protocol::micro::{PingResponse, Verb};
use protocol::stocks::{Snapshot, Symbols, Tick};
use protocol::{ErrorCode, subjects};
use runtime::client::{call, discover, request_raw};
use runtime::settings::Value;
use runtime::{CancellationToken, Settings};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use testkit::Cluster;
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(5);

async fn tickers_up(cluster: &Cluster) -> usize {
    let client = cluster.client().await.unwrap();
    discover::<PingResponse>(
        &client,
        Verb::Ping,
        Some("stock-ticker"),
        Duration::from_millis(200),
    )
    .await
    .unwrap()
    .len()
}

fn is_cents(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    let Some((whole, frac)) = s.split_once('.') else {
        return false;
    };
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.len() == 2
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// Every stored tick of `symbol`, oldest first.
async fn stored(js: &jetstream::Context, symbol: &str) -> Vec<Tick> {
    let stream = js.get_stream("STOCKS").await.unwrap();
    let reader = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("stocks.{symbol}"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut messages = reader.messages().await.unwrap();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(1), messages.next()).await
    {
        let pending = m.info().unwrap().pending;
        out.push(serde_json::from_slice(&m.payload).unwrap());
        if pending == 0 {
            break;
        }
    }
    out
}

#[tokio::test]
async fn ticks_late_joiners_snapshot_symbols_and_bad_input() {
    let cluster = Cluster::start(3).await.unwrap();
    let settings = Settings::load_with([
        ("nats.urls", Value::from(cluster.urls())),
        ("stocks.symbols", Value::from(vec!["AAPL", "MSFT"])),
        ("stocks.interval_ms", Value::from(20)),
    ])
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(stock_ticker::run(settings, shutdown.clone()));
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());

    // Live ticks: seq +1 per symbol, decimal strings.
    let mut live = client.subscribe("stocks.>").await.unwrap();
    let mut last: HashMap<String, Tick> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while last.values().map(|t| t.seq).min().unwrap_or(0) < 20 || last.len() < 2 {
        let m = tokio::time::timeout_at(deadline, live.next())
            .await
            .expect("ticks")
            .unwrap();
        let tick: Tick = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(m.subject.as_str(), format!("stocks.{}", tick.symbol));
        assert!(is_cents(&tick.price) && is_cents(&tick.change), "{tick:?}");
        assert!(tick.ts.ends_with('Z'));
        if let Some(prev) = last.get(&tick.symbol) {
            assert_eq!(tick.seq, prev.seq + 1, "{tick:?} after {prev:?}");
        }
        last.insert(tick.symbol.clone(), tick);
    }

    // A late joiner starts from the last price (deliver last per subject).
    let stream = js.get_stream("STOCKS").await.unwrap();
    let late = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: "stocks.AAPL".into(),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .unwrap();
    let first: Tick = serde_json::from_slice(
        &late
            .messages()
            .await
            .unwrap()
            .next()
            .await
            .unwrap()
            .unwrap()
            .payload,
    )
    .unwrap();
    assert!(
        first.seq >= last["AAPL"].seq,
        "late joiner got {first:?}, live was at {:?}",
        last["AAPL"]
    );

    // Symbols; bad input.
    let symbols: Symbols = call(&client, subjects::STOCKS_SYMBOLS, &json!({}), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(symbols.symbols, ["AAPL", "MSFT"]);
    for subject in [subjects::STOCKS_SNAPSHOT, subjects::STOCKS_SYMBOLS] {
        let reply = request_raw(&client, subject, None, "not json".into(), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(
            reply.error().map(|e| e.code),
            Some(ErrorCode::InvalidRequest),
            "{subject}"
        );
    }

    // Stop, then the snapshot is exactly the last ticks; the history is
    // gap-free from 1.
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let mut live_rest = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), live.next()).await {
        live_rest.push(serde_json::from_slice::<Tick>(&m.payload).unwrap());
    }
    for t in live_rest {
        last.insert(t.symbol.clone(), t);
    }
    // The endpoints stopped with the ticker; read the snapshot from a fresh one.
    let settings = Settings::load_with([
        ("nats.urls", Value::from(cluster.urls())),
        ("stocks.symbols", Value::from(vec!["AAPL", "MSFT"])),
        ("stocks.interval_ms", Value::from(60_000)),
    ])
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(stock_ticker::run(settings, shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while tickers_up(&cluster).await == 0 {
        assert!(Instant::now() < deadline);
    }
    let snap: Snapshot = call(&client, subjects::STOCKS_SNAPSHOT, &json!({}), TIMEOUT)
        .await
        .unwrap();
    for (symbol, tick) in &snap.prices {
        // The new instance may have published one tick since (it leads now).
        assert!(
            tick.seq == last[symbol].seq || tick.seq == last[symbol].seq + 1,
            "{symbol}: {tick:?} vs {:?}",
            last[symbol]
        );
    }
    for symbol in ["AAPL", "MSFT"] {
        let history = stored(&js, symbol).await;
        assert!(
            history
                .iter()
                .enumerate()
                .all(|(i, t)| t.seq == i as u64 + 1),
            "{symbol}: gap-free from 1"
        );
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_killed_leader_is_replaced_within_the_ttl_and_seq_continues() {
    let cluster = Cluster::start(3).await.unwrap();
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_stock-ticker"))
            .env("SWITCHYARD__NATS__URLS", cluster.urls().join(","))
            .env("SWITCHYARD__STOCKS__SYMBOLS", "AAPL,MSFT,NVDA")
            .env("SWITCHYARD__STOCKS__INTERVAL_MS", "50")
            .env("SWITCHYARD__STOCKS__LEASE_TTL_MS", "2000")
            .env("SWITCHYARD__LOG__LEVEL", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut procs = [spawn(), spawn()];
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while tickers_up(&cluster).await < 2 {
        assert!(Instant::now() < deadline, "tickers did not start");
    }
    let lease = js.get_key_value("stock-ticker-lease").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader_pid = loop {
        if let Some(v) = lease.get("leader").await.unwrap() {
            let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
            break v["pid"].as_u64().unwrap() as u32;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut live = client.subscribe("stocks.AAPL").await.unwrap();
    let leader = procs
        .iter_mut()
        .find(|p| p.id() == Some(leader_pid))
        .expect("the leader is one of ours");
    leader.start_kill().unwrap();
    leader.wait().await.unwrap();
    let killed = Instant::now();
    // Drain what was in flight, then time the first tick from the standby.
    let mut last_seen = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    let gap = loop {
        let m = tokio::time::timeout_at(deadline, live.next())
            .await
            .expect("the standby took over")
            .unwrap();
        let now = Instant::now();
        let quiet = now - last_seen;
        last_seen = now;
        if quiet > Duration::from_millis(500) {
            let _: Tick = serde_json::from_slice(&m.payload).unwrap();
            break killed.elapsed();
        }
    };
    println!("standby published {gap:?} after the leader was SIGKILLed (lease TTL 2 s)");
    assert!(
        gap <= Duration::from_millis(2000 + 1500),
        "took over within the TTL (plus one standby poll): {gap:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for symbol in ["AAPL", "MSFT", "NVDA"] {
        let history = stored(&js, symbol).await;
        let seqs: Vec<u64> = history.iter().map(|t| t.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{symbol}: a gap or duplicate in {seqs:?}"
        );
        assert!(seqs.len() > 20);
    }
    for p in &mut procs {
        let _ = p.start_kill();
        let _ = p.wait().await;
    }
}

#[tokio::test]
async fn max_tick_rate() {
    let cluster = Cluster::start(3).await.unwrap();
    let settings = Settings::load_with([
        ("nats.urls", Value::from(cluster.urls())),
        (
            "stocks.symbols",
            Value::from(vec!["AAPL", "MSFT", "GOOG", "AMZN", "NVDA"]),
        ),
        ("stocks.interval_ms", Value::from(1)),
    ])
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(stock_ticker::run(settings, shutdown.clone()));
    let client = cluster.client().await.unwrap();
    let mut live = client.subscribe("stocks.>").await.unwrap();
    // Warm up, then count for 2 s.
    let _ = tokio::time::timeout(Duration::from_secs(10), live.next())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        if tokio::time::timeout(Duration::from_millis(100), live.next())
            .await
            .is_ok()
        {
            n += 1;
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    println!("ticker sustained {rate:.0} ticks/s (5 symbols, 1 ms interval, R3 stream)");
    assert!(n > 0);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
