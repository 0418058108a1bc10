//! `switchyard role publisher|subscriber|requester|replier`: seed 004's four
//! client roles of one binary, on core NATS (no service involved):
//!
//! - `publisher` publishes `--count` (100,000) messages to `updates`;
//! - `subscriber` counts (and shows a few of) what arrives on `updates`,
//!   and reports what the client had to drop. Core NATS is at most once:
//!   a subscriber that cannot keep up loses messages (the client drops them
//!   as a slow consumer, or the server cuts it off), so it reports rather
//!   than expects;
//! - `replier` answers `ping` with `pong` (only to inbox replies, like
//!   every Switchyard service);
//! - `requester` sends one `ping` and prints the answer.
//!
//! They connect as the `demo` user (its password `DEMO_PASSWORD` in the
//! secrets file) when the cluster has accounts. Compose runs them as the
//! services `publisher`, `subscriber`, `requester`, `replier` (profile
//! `seed004`).

use async_nats::Event;
use futures::StreamExt as _;
use protocol::subjects;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Which {
    /// Publishes --count messages to `updates`.
    #[value(alias = "pub")]
    Publisher,
    /// Counts messages on `updates` until --expect arrived or Ctrl-C.
    #[value(alias = "sub")]
    Subscriber,
    /// Sends one request to `ping` and prints the reply.
    #[value(alias = "req")]
    Requester,
    /// Answers `ping` with `pong` until Ctrl-C.
    #[value(alias = "rep")]
    Replier,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RoleArgs {
    #[arg(value_enum)]
    role: Which,
    /// publisher: how many messages.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// subscriber: stop after this many messages (default: run until Ctrl-C).
    #[arg(long)]
    expect: Option<u64>,
    /// subscriber: stop after this long without a message, once one came.
    #[arg(long, value_parser = runtime::time::parse_duration)]
    idle: Option<Duration>,
}

/// How many messages the subscriber prints before only counting.
const SHOWN: u64 = 5;

pub(crate) async fn run(
    servers: &[String],
    timeout: Duration,
    args: RoleArgs,
) -> anyhow::Result<()> {
    let settings = crate::client_settings_as(servers, crate::Role::Demo)?;
    let dropped = Arc::new(AtomicU64::new(0));
    let seen = dropped.clone();
    let name = format!("switchyard-{:?}", args.role).to_lowercase();
    let client = runtime::nats::options(&settings.nats, &name)
        .await?
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                match event {
                    Event::SlowConsumer(_) => {
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::Disconnected => eprintln!("disconnected; reconnecting"),
                    Event::Connected => eprintln!("connected"),
                    Event::ServerError(e) => eprintln!("server error: {e}"),
                    _ => {}
                }
            }
        })
        .connect(settings.nats.urls.clone())
        .await?;
    let shutdown = runtime::shutdown::on_signal();
    match args.role {
        Which::Publisher => {
            let started = Instant::now();
            for i in 0..args.count {
                client
                    .publish(subjects::SEED_UPDATES, format!("update {i}").into())
                    .await?;
            }
            client.flush().await?;
            let took = started.elapsed();
            crate::say(format_args!(
                "published {} messages to {} in {:.2?} ({:.0}/s)",
                args.count,
                subjects::SEED_UPDATES,
                took,
                args.count as f64 / took.as_secs_f64().max(1e-9)
            ));
        }
        Which::Subscriber => {
            let mut updates = client.subscribe(subjects::SEED_UPDATES).await?;
            client.flush().await?;
            crate::say(format_args!("listening on {}", subjects::SEED_UPDATES));
            let mut received = 0u64;
            loop {
                let wait = match (args.idle, received) {
                    (Some(idle), 1..) => idle,
                    _ => Duration::from_secs(3600),
                };
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    next = tokio::time::timeout(wait, updates.next()) => match next {
                        Ok(Some(message)) => {
                            received += 1;
                            if received <= SHOWN {
                                crate::say(format_args!("{}", String::from_utf8_lossy(&message.payload)));
                            } else if received.is_multiple_of(10_000) {
                                crate::say(format_args!("… {received} received"));
                            }
                            if args.expect.is_some_and(|n| received >= n) {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => break,
                    },
                }
            }
            crate::say(format_args!(
                "received {received} messages on {}; the client dropped {} as a slow consumer",
                subjects::SEED_UPDATES,
                dropped.load(Ordering::Relaxed)
            ));
        }
        Which::Replier => {
            let mut pings = client.subscribe(subjects::SEED_PING).await?;
            client.flush().await?;
            crate::say(format_args!("answering {} with pong", subjects::SEED_PING));
            let mut answered = 0u64;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    next = pings.next() => {
                        let Some(message) = next else { break };
                        match message.reply {
                            Some(reply) if subjects::is_inbox(&reply) => {
                                client.publish(reply, "pong".into()).await?;
                                answered += 1;
                            }
                            _ => eprintln!("a ping without an inbox to answer: ignored"),
                        }
                    }
                }
            }
            client.flush().await?;
            crate::say(format_args!("answered {answered} pings"));
        }
        Which::Requester => {
            let reply =
                tokio::time::timeout(timeout, client.request(subjects::SEED_PING, "ping".into()))
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!("no pong within {timeout:?}: is a replier running?")
                    })?
                    .map_err(|e| anyhow::anyhow!("ping: {e} (is a replier running?)"))?;
            crate::say(format_args!("{}", String::from_utf8_lossy(&reply.payload)));
        }
    }
    client.drain().await?;
    Ok(())
}
