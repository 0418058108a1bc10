//! Standby until the lease is ours, then publish ticks while it holds.

use crate::StockSettings;
use crate::walk::{MAX_SEQ, cents, resume_from, step};
use async_nats::jetstream::{self, kv, stream};
use futures::future::try_join_all;
use protocol::stocks::Tick;
use rand::SeedableRng as _;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

const KEY: &str = "leader";

/// The ticker's state: what it publishes, where, and its lease.
pub(crate) struct Ticker {
    pub(crate) js: jetstream::Context,
    pub(crate) stream: stream::Stream,
    pub(crate) lease: kv::Store,
    pub(crate) settings: StockSettings,
    pub(crate) instance: String,
}

enum Outcome {
    Stopped,
    SteppedDown,
}

/// Last published seq and price per symbol.
type State = BTreeMap<String, (u64, Decimal)>;

impl Ticker {
    fn ttl(&self) -> Duration {
        Duration::from_millis(self.settings.lease_ttl_ms)
    }

    fn lease_value(&self) -> bytes::Bytes {
        serde_json::json!({"instance": self.instance, "pid": std::process::id()})
            .to_string()
            .into()
    }

    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) -> anyhow::Result<()> {
        loop {
            // Standby: the lease key expires (bucket max_age) when its holder
            // stops renewing; creating it is taking the lead.
            let revision = loop {
                if let Ok(revision) = self.lease.create(KEY, self.lease_value()).await {
                    break revision;
                }
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(self.ttl() / 4) => {}
                }
            };
            let acquired = Instant::now();
            tracing::info!(instance = %self.instance, "took the ticker lease: publishing");
            match self.lead(revision, acquired, &stop).await {
                Ok(Outcome::Stopped) => return Ok(()),
                Ok(Outcome::SteppedDown) => tracing::warn!("stepped down; standing by"),
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "leading failed; standing by")
                }
            }
        }
    }

    async fn lead(
        &self,
        mut revision: u64,
        acquired: Instant,
        stop: &CancellationToken,
    ) -> anyhow::Result<Outcome> {
        let ttl = self.ttl();
        // Stop publishing well before the server could expire the lease.
        let margin = ttl / 4;
        let mut valid_until = acquired + ttl - margin;
        let mut state = self.resume().await?;
        let mut renew = tokio::time::interval(ttl / 3);
        renew.tick().await;
        let mut ticks = tokio::time::interval(Duration::from_millis(self.settings.interval_ms));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut rng = rand::rngs::StdRng::from_os_rng();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    // Hand over at once instead of after the TTL.
                    let _ = self.lease.delete_expect_revision(KEY, Some(revision)).await;
                    return Ok(Outcome::Stopped);
                }
                _ = renew.tick() => {
                    let sent = Instant::now();
                    match self.lease.update(KEY, self.lease_value(), revision).await {
                        Ok(next) => {
                            revision = next;
                            valid_until = sent + ttl - margin;
                        }
                        Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            tracing::warn!("another instance holds the lease");
                            return Ok(Outcome::SteppedDown);
                        }
                        Err(err) => tracing::warn!(error = %err, "lease renewal failed"),
                    }
                }
                _ = ticks.tick() => {
                    if Instant::now() >= valid_until {
                        tracing::warn!("the lease may have expired");
                        return Ok(Outcome::SteppedDown);
                    }
                    if let Err(err) = self.publish_round(&mut state, &mut rng, valid_until).await {
                        tracing::warn!(error = %format!("{err:#}"), "ticks not stored");
                        return Ok(Outcome::SteppedDown);
                    }
                }
            }
        }
    }

    /// Each symbol continues from its last stored tick.
    async fn resume(&self) -> anyhow::Result<State> {
        let start: Decimal = self.settings.start_price.parse()?;
        let mut state = State::new();
        for symbol in &self.settings.symbols {
            let subject = protocol::subjects::stock(symbol)?;
            let last = runtime::js::retry("reading the last tick", self.ttl(), || async {
                match self.stream.get_last_raw_message_by_subject(&subject).await {
                    Ok(message) => Ok(serde_json::from_slice::<Tick>(&message.payload).ok()),
                    Err(err) if err.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                        Ok(None)
                    }
                    Err(err) => Err(err),
                }
            })
            .await?;
            let resumed = match last {
                Some(tick) => resume_from(tick.seq, &tick.price).unwrap_or_else(|why| {
                    // Its seq goes on where it can (a restart at 0 would reuse
                    // Msg-Ids the dedup window still remembers); the price restarts.
                    tracing::error!(%symbol, %why, "the last stored tick is not usable; its price restarts");
                    (tick.seq.min(MAX_SEQ), start)
                }),
                None => (0, start),
            };
            state.insert(symbol.clone(), resumed);
        }
        Ok(state)
    }

    /// One tick of every symbol, stored before the state moves on.
    async fn publish_round(
        &self,
        state: &mut State,
        rng: &mut impl rand::Rng,
        valid_until: Instant,
    ) -> anyhow::Result<()> {
        let ts = runtime::time::now_rfc3339();
        let budget = valid_until.saturating_duration_since(Instant::now());
        let next: Vec<(String, u64, Decimal, Tick)> = state
            .iter()
            .map(|(symbol, (seq, price))| {
                let (new_price, change) = step(*price, self.settings.volatility_bp, rng);
                let tick = Tick {
                    symbol: symbol.clone(),
                    price: cents(new_price),
                    change: cents(change),
                    ts: ts.clone(),
                    seq: seq + 1,
                };
                (symbol.clone(), seq + 1, new_price, tick)
            })
            .collect();
        // One trace per round: its ticks are the round span's children.
        let round = runtime::traced!(
            "stocks.round",
            &runtime::trace::Carrier::default(),
            "internal",
            otel.name = "tick round",
            symbols = next.len(),
        );
        let span = round.span().clone();
        let publishes = try_join_all(next.iter().map(|(symbol, seq, _, tick)| async move {
            let body = serde_json::to_vec(tick)?;
            let subject = protocol::subjects::stock(symbol)?;
            runtime::js::publish_durable(
                &self.js,
                &subject,
                &format!("{symbol}.{seq}"),
                None,
                body.into(),
                budget,
            )
            .await
        }));
        runtime::trace::scope(round, publishes)
            .instrument(span)
            .await?;
        for (symbol, seq, price, _) in next {
            state.insert(symbol, (seq, price));
        }
        Ok(())
    }
}
