//! The baselines: the same NATS work as a service, written plainly with
//! async-nats, run as their own processes (`switchyard bench-helper ...`).

use super::names;
use async_nats::jetstream::{self, AckKind, consumer};
use bytes::Bytes;
use futures::StreamExt as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

#[derive(Debug, clap::Args)]
pub(crate) struct HelperArgs {
    #[command(subcommand)]
    kind: Kind,
}

#[derive(Debug, clap::Subcommand)]
enum Kind {
    /// A raw responder: `{"a","b"}` in, `{"result": a+b}` out (queue group `bench`).
    Echo {
        #[arg(long)]
        subject: String,
    },
    /// Pull from BENCH_PAY, KV put, publish an event (acked), ack.
    Payloop {
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Pull from BENCH_LOGS in batches, append + fsync, ack.
    Logloop {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
    /// Core-publish ticks for `symbols` symbols every `interval_ms`.
    Ticks {
        #[arg(long, default_value_t = 5)]
        symbols: usize,
        #[arg(long, default_value_t = 1)]
        interval_ms: u64,
    },
}

pub(crate) async fn run(servers: &[String], args: HelperArgs) -> anyhow::Result<()> {
    let urls = crate::client_settings(servers)?.nats.urls;
    let client = async_nats::connect(urls.clone())
        .await
        .map_err(|e| anyhow::anyhow!("bench helper: connecting to {urls:?}: {e}"))?;
    match args.kind {
        Kind::Echo { subject } => {
            let mut sub = client
                .queue_subscribe(subject, names::ECHO_QUEUE.into())
                .await?;
            while let Some(msg) = sub.next().await {
                let Some(reply) = msg.reply else { continue };
                let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
                let result = v["a"].as_f64().unwrap_or(0.0) + v["b"].as_f64().unwrap_or(0.0);
                let body = serde_json::to_vec(&serde_json::json!({ "result": result }))?;
                client.publish(reply, body.into()).await?;
            }
        }
        Kind::Payloop { concurrency } => {
            let js = jetstream::new(client.clone());
            let kv = js.get_key_value(names::PAY_BUCKET).await?;
            let consumer: consumer::PullConsumer = js
                .get_stream(names::PAY_STREAM)
                .await?
                .get_consumer(names::PAY_CONSUMER)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let permits = Arc::new(Semaphore::new(concurrency));
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(concurrency)
                .messages()
                .await?;
            while let Some(Ok(msg)) = messages.next().await {
                let permit = permits.clone().acquire_owned().await?;
                let (js, kv) = (js.clone(), kv.clone());
                tokio::spawn(async move {
                    let id = msg
                        .info()
                        .map(|i| i.stream_sequence)
                        .unwrap_or(0)
                        .to_string();
                    let _ = kv.put(&id, msg.payload.clone()).await;
                    if let Ok(ack) = js
                        .publish(
                            format!("{}.{id}", names::EVENTS_PREFIX),
                            msg.payload.clone(),
                        )
                        .await
                    {
                        let _ = ack.await;
                    }
                    let _ = msg.ack().await;
                    drop(permit);
                });
            }
        }
        Kind::Logloop { dir, batch } => {
            let js = jetstream::new(client.clone());
            let consumer: consumer::PullConsumer = js
                .get_stream(names::LOGS_STREAM)
                .await?
                .get_consumer(names::LOGS_CONSUMER)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            std::fs::create_dir_all(&dir)?;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("bench-{}.jsonl", std::process::id())))?;
            loop {
                let mut got = consumer
                    .batch()
                    .max_messages(batch)
                    .expires(Duration::from_millis(300))
                    .messages()
                    .await?;
                let mut msgs = Vec::new();
                while let Some(Ok(m)) = got.next().await {
                    msgs.push(m);
                }
                if msgs.is_empty() {
                    continue;
                }
                let mut out = Vec::new();
                for m in &msgs {
                    out.extend_from_slice(&m.payload);
                    out.push(b'\n');
                }
                file.write_all(&out)?;
                file.sync_data()?;
                futures::future::join_all(msgs.iter().map(|m| m.ack_with(AckKind::Ack))).await;
            }
        }
        Kind::Ticks {
            symbols,
            interval_ms,
        } => {
            let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut seq = 0u64;
            loop {
                tick.tick().await;
                seq += 1;
                for s in 0..symbols {
                    let body = serde_json::json!({"symbol": format!("S{s}"), "price": "100.00", "change": "0.00", "ts": "", "seq": seq});
                    client
                        .publish(
                            format!("{}.S{s}", names::STOCKS_PREFIX),
                            Bytes::from(serde_json::to_vec(&body)?),
                        )
                        .await?;
                }
            }
        }
    }
    Ok(())
}
