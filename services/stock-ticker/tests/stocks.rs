//! stock-ticker on a real 3-node cluster.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use protocol::stocks::{Snapshot, Symbols, Tick};
use protocol::{ErrorCode, subjects};
use runtime::client::{call, request_raw};
use runtime::settings::Value;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use testkit::{Cluster, eventually, instances, spawn_process, spawn_service};
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(5);

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
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());
    // Subscribed before the ticker starts, so the seq checks see its first ticks.
    let mut live = client.subscribe("stocks.>").await.unwrap();
    let ticker = spawn_service(
        stock_ticker::run,
        &cluster,
        &[
            ("stocks.symbols", Value::from(vec!["AAPL", "MSFT"])),
            ("stocks.interval_ms", Value::from(20)),
        ],
    )
    .await;

    // Live ticks: seq +1 per symbol, decimal strings.
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
    ticker.stop().await;
    // Ticks still on their way: read until none came for 300 ms.
    let mut live_rest = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), live.next()).await {
        live_rest.push(serde_json::from_slice::<Tick>(&m.payload).unwrap());
    }
    for t in live_rest {
        last.insert(t.symbol.clone(), t);
    }
    // The endpoints stopped with the ticker; read the snapshot from a fresh one.
    assert!(
        instances(&client, "stock-ticker").await.is_empty(),
        "the stopped ticker still answers $SRV.PING"
    );
    let fresh = spawn_service(
        stock_ticker::run,
        &cluster,
        &[
            ("stocks.symbols", Value::from(vec!["AAPL", "MSFT"])),
            ("stocks.interval_ms", Value::from(60_000)),
        ],
    )
    .await;
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
    fresh.stop().await;
}

/// The seq of the last stored tick of `symbol` (0 if none).
async fn last_seq(stream: &jetstream::stream::Stream, symbol: &str) -> u64 {
    match stream
        .get_last_raw_message_by_subject(&format!("stocks.{symbol}"))
        .await
    {
        Ok(m) => serde_json::from_slice::<Tick>(&m.payload).unwrap().seq,
        Err(_) => 0,
    }
}

#[tokio::test]
async fn a_killed_leader_is_replaced_within_the_ttl_and_seq_continues() {
    let cluster = Cluster::start(3).await.unwrap();
    let env = [
        ("SWITCHYARD__STOCKS__SYMBOLS", "AAPL,MSFT,NVDA"),
        ("SWITCHYARD__STOCKS__INTERVAL_MS", "50"),
        ("SWITCHYARD__STOCKS__LEASE_TTL_MS", "2000"),
        ("SWITCHYARD__LOG__LEVEL", "warn"),
    ];
    let binary = env!("CARGO_BIN_EXE_stock-ticker");
    let mut procs = [
        spawn_process(binary, &cluster, &env).await,
        spawn_process(binary, &cluster, &env).await,
    ];
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());
    let lease = js.get_key_value("stock-ticker-lease").await.unwrap();
    let leader_instance = eventually("a leader", Duration::from_secs(10), || async {
        match lease.get("leader").await.unwrap() {
            Some(v) => {
                let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
                Ok(v["instance"].as_str().unwrap().to_owned())
            }
            None => Err("no lease"),
        }
    })
    .await;
    // Some history before the crash (about 1 s of ticks).
    let stream = js.get_stream("STOCKS").await.unwrap();
    eventually("20 ticks stored", Duration::from_secs(10), || async {
        let mut seqs = Vec::new();
        for symbol in ["AAPL", "MSFT", "NVDA"] {
            seqs.push(last_seq(&stream, symbol).await);
        }
        if seqs.iter().all(|&s| s >= 20) {
            Ok(())
        } else {
            Err(format!("{seqs:?}"))
        }
    })
    .await;
    let mut live = client.subscribe("stocks.AAPL").await.unwrap();
    let leader = procs
        .iter_mut()
        .find(|p| p.id() == leader_instance)
        .expect("the leader is one of ours");
    leader.kill().await;
    let killed = Instant::now();
    // Drain what was in flight, then time the first tick from the standby.
    let mut last_seen = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (gap, taken_over) = loop {
        let m = tokio::time::timeout_at(deadline, live.next())
            .await
            .expect("the standby took over")
            .unwrap();
        let now = Instant::now();
        let quiet = now - last_seen;
        last_seen = now;
        if quiet > Duration::from_millis(500) {
            let tick: Tick = serde_json::from_slice(&m.payload).unwrap();
            break (killed.elapsed(), tick.seq);
        }
    };
    println!("standby published {gap:?} after the leader was SIGKILLed (lease TTL 2 s)");
    assert!(
        gap <= Duration::from_millis(2000 + 1500),
        "took over within the TTL (plus one standby poll): {gap:?}"
    );
    // A few rounds from the new leader, so the history spans the takeover.
    eventually(
        "the new leader stored more rounds",
        Duration::from_secs(10),
        || async {
            let mut seqs = Vec::new();
            for symbol in ["AAPL", "MSFT", "NVDA"] {
                seqs.push(last_seq(&stream, symbol).await);
            }
            if seqs.iter().all(|&s| s >= taken_over + 5) {
                Ok(())
            } else {
                Err(format!("{seqs:?}, took over at {taken_over}"))
            }
        },
    )
    .await;
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
        p.kill().await;
    }
}

#[tokio::test]
async fn max_tick_rate() {
    let cluster = Cluster::start(3).await.unwrap();
    let client = cluster.client().await.unwrap();
    let mut live = client.subscribe("stocks.>").await.unwrap();
    let ticker = spawn_service(
        stock_ticker::run,
        &cluster,
        &[
            (
                "stocks.symbols",
                Value::from(vec!["AAPL", "MSFT", "GOOG", "AMZN", "NVDA"]),
            ),
            ("stocks.interval_ms", Value::from(1)),
        ],
    )
    .await;
    // Warm up: the first tick, then 500 ms of ticking (a measurement's
    // warm-up is time by nature, not a condition), then count for 2 s.
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
    ticker.stop().await;
}

#[tokio::test]
async fn a_poisoned_last_tick_is_not_resumed_and_nothing_panics() {
    let cluster = Cluster::start(3).await.unwrap();
    let js = jetstream::new(cluster.client().await.unwrap());
    let only = |symbol: &str| {
        vec![
            ("stocks.symbols", Value::from(vec![symbol])),
            ("stocks.interval_ms", Value::from(50)),
        ]
    };
    // A first leader makes the stream, then stops (and hands the lease back).
    spawn_service(stock_ticker::run, &cluster, &only("POISON"))
        .await
        .stop()
        .await;
    // Anyone allowed to publish on stocks.> could store this: a price decimal
    // arithmetic cannot step from.
    let poison = json!({"symbol": "POISON", "price": "79228162514264337593543950335",
        "change": "0.00", "ts": "2026-11-25T00:00:00Z", "seq": 1_000_000});
    js.publish("stocks.POISON", poison.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let ticker = spawn_service(stock_ticker::run, &cluster, &only("POISON")).await;
    let ticks = eventually(
        "ticks after the poisoned one",
        Duration::from_secs(15),
        || async {
            let after: Vec<Tick> = stored(&js, "POISON")
                .await
                .into_iter()
                .filter(|t| t.seq > 1_000_000)
                .collect();
            if after.len() >= 3 {
                Ok(after)
            } else {
                Err(format!("{after:?}"))
            }
        },
    )
    .await;
    // The seq goes on; the price starts afresh from the configured start.
    assert_eq!(ticks[0].seq, 1_000_001, "{ticks:?}");
    for tick in &ticks {
        assert!(is_cents(&tick.price), "{tick:?}");
        let price: f64 = tick.price.parse().unwrap();
        assert!((50.0..150.0).contains(&price), "{tick:?}");
    }
    assert!(ticker.is_running(), "the ticker stopped");
    ticker.stop().await;
}
