//! Payment messages the server stopped delivering. Two ways in, one way
//! out ([`give_up`]):
//!
//! - the server's MAX_DELIVERIES advisory, kept by stream
//!   `PAYMENTS_ADVISORIES` until a processor handles it (so an advisory
//!   sent while every processor was down still arrives);
//! - the sweep, a backstop for advisories that never made it into the
//!   stream: messages still in `PAYMENTS` that the consumer delivered long
//!   ago and whose payment has not moved since.
//!
//! Either way the payment is finished without a new charge attempt
//! (completed if its key was charged, else voided and failed with reason
//! `max_deliveries`), and the message is removed from the work queue.
//!
//! A third way, for data the cluster lost ([`sweep_orphans`]): a payment
//! record left neither final nor claimed whose message is no longer in
//! `PAYMENTS` at all (a power cut with a lazy `sync_interval` can lose the
//! message but keep an older record) is finished the same way from the
//! record itself, so nothing stays stuck.

use crate::state::Processor;
use crate::worker::{self, Delivery, Outcome};
use async_nats::jetstream::{self, AckKind, stream};
use protocol::payment::PaymentStatus;
use protocol::subjects;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>` body (the part we use).
#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
}

/// Handles one advisory from `PAYMENTS_ADVISORIES`.
pub(crate) async fn handle(ctx: Arc<Processor>, message: jetstream::Message) {
    let Ok(advisory) = serde_json::from_slice::<MaxDeliveries>(&message.payload) else {
        tracing::warn!("unreadable MAX_DELIVERIES advisory dropped");
        let _ = message.double_ack_with(AckKind::Term).await;
        return;
    };
    let error = format!(
        "delivered {} times without being acknowledged",
        advisory.deliveries
    );
    let reply = match give_up(&ctx, advisory.stream_seq, advisory.deliveries, &error).await {
        Ok(None) => message.double_ack().await,
        Ok(Some(retry_in)) => message.ack_with(AckKind::Nak(Some(retry_in))).await,
        Err(err) => {
            tracing::error!(seq = advisory.stream_seq, error = %format!("{err:#}"), "handling a MAX_DELIVERIES advisory; it will be redelivered");
            message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await
        }
    };
    if let Err(err) = reply {
        tracing::warn!(error = %err, "could not acknowledge an advisory; it will be redelivered");
    }
}

/// Finishes the payment of `PAYMENTS` message `seq` without charging and
/// removes the message. `Some(delay)`: not now (a live claim holds it).
async fn give_up(
    ctx: &Processor,
    seq: u64,
    deliveries: u64,
    error: &str,
) -> anyhow::Result<Option<Duration>> {
    let budget = ctx.budget();
    let original = runtime::js::retry("reading a payment message", budget, || async {
        match ctx.payments.get_raw_message(seq).await {
            Ok(message) => Ok(Some(message)),
            Err(err) if err.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(err),
        }
    })
    .await?;
    let Some(original) = original else {
        // Gone already: acked or termed after all.
        return Ok(None);
    };
    let delivery = Delivery {
        body: &original.payload,
        seq,
        deliveries,
        replay: worker::replay_of(Some(&original.headers)),
        traceparent: runtime::trace::of(Some(&original.headers)),
    };
    match worker::settle(ctx, &delivery, Some(error)).await? {
        Outcome::Nak(retry_in) => return Ok(Some(retry_in)),
        // Taken over: look again later (it will be final, or live).
        Outcome::Leave => return Ok(Some(ctx.lease().hold)),
        Outcome::Ack | Outcome::Term => {}
    }
    runtime::js::retry("removing a payment message", budget, || async {
        match ctx.payments.delete_message(seq).await {
            Ok(_) => Ok(()),
            Err(err)
                if err.to_string().contains("no message found")
                    || err.to_string().contains("10057") =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    })
    .await?;
    Ok(None)
}

/// Every `sweep_interval_ms` (and at start): payment messages the consumer
/// delivered, older than `stuck_after_ms`, whose payment is not final and
/// has not changed for that long, are given up; messages of final
/// payments left behind (their ack was lost after the last delivery) are
/// removed after their event is made sure of.
pub(crate) async fn sweep(ctx: Arc<Processor>, stop: CancellationToken) -> anyhow::Result<()> {
    let every = Duration::from_millis(ctx.settings.sweep_interval_ms);
    // Orphans need a look at every record: at start, then once per
    // `stuck_after_ms` (they are only finished after that long anyway).
    let orphans_every = Duration::from_millis(ctx.settings.stuck_after_ms);
    let mut orphans_next = tokio::time::Instant::now();
    loop {
        if let Err(err) = sweep_once(&ctx, &stop).await {
            tracing::warn!(error = %format!("{err:#}"), "payment sweep failed; trying again later");
        }
        if tokio::time::Instant::now() >= orphans_next {
            match sweep_orphans(&ctx, &stop).await {
                Ok(()) => orphans_next = tokio::time::Instant::now() + orphans_every,
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "orphan sweep failed; trying again later");
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Records not final, not claimed, unchanged for `stuck_after_ms`, whose
/// message (`owner_seq`) is no longer in `PAYMENTS`: the cluster lost it
/// (normally a message leaves the work queue only after its payment is
/// final). Finished from the record, as the MAX_DELIVERIES path finishes a
/// message: completed if its key was charged, else voided and failed.
async fn sweep_orphans(ctx: &Processor, stop: &CancellationToken) -> anyhow::Result<()> {
    let stuck_after = ctx.settings.stuck_after_ms;
    let mut finished = 0;
    for id in ctx.store.ids().await?.into_iter().take(ORPHAN_LIMIT) {
        if stop.is_cancelled() {
            break;
        }
        let Some((record, _)) = ctx.store.get(&id).await? else {
            continue;
        };
        let now = runtime::time::now_unix_ms();
        let changed = runtime::time::parse_unix_ms(&record.updated_at).unwrap_or(now);
        if record.status.is_final()
            || now.saturating_sub(changed) < stuck_after
            || !crate::endpoints::stuck(ctx, &record).await?
        {
            continue;
        }
        tracing::warn!(payment_id = %id, status = %record.status, seq = record.owner_seq, "sweep: payment whose message is gone from PAYMENTS; finishing it from its record");
        let body = bytes::Bytes::from(serde_json::to_vec(&record.request())?);
        let delivery = Delivery {
            body: &body,
            seq: record.owner_seq,
            deliveries: 0,
            replay: record.replays,
            traceparent: record.traceparent.clone(),
        };
        let why = "its message is no longer in PAYMENTS (lost by the cluster; found by the sweep)";
        match worker::settle(ctx, &delivery, Some(why)).await? {
            Outcome::Ack | Outcome::Term => finished += 1,
            Outcome::Nak(_) | Outcome::Leave => {}
        }
    }
    if finished > 0 {
        tracing::warn!(
            finished,
            "sweep: payments finished whose messages the cluster lost"
        );
    }
    Ok(())
}

/// Records looked at per orphan sweep, at most.
const ORPHAN_LIMIT: usize = 100_000;

/// Messages looked at per sweep, at most.
const SWEEP_LIMIT: usize = 10_000;

async fn sweep_once(ctx: &Processor, stop: &CancellationToken) -> anyhow::Result<()> {
    let mut consumer = ctx.consumer.clone();
    let delivered = consumer.info().await?.delivered.stream_sequence;
    let stuck_after = ctx.settings.stuck_after_ms;
    let now = runtime::time::now_unix_ms();
    let mut next = 1;
    let mut looked = 0;
    while next <= delivered && looked < SWEEP_LIMIT && !stop.is_cancelled() {
        let message = match ctx
            .payments
            .direct_get_next_for_subject(subjects::PAYMENT_PROCESS, Some(next))
            .await
        {
            Ok(message) => message,
            Err(err) if err.kind() == stream::DirectGetErrorKind::NotFound => break,
            Err(err) => return Err(err.into()),
        };
        let seq = message.sequence;
        if seq > delivered {
            break;
        }
        next = seq + 1;
        looked += 1;
        let published_ms =
            u64::try_from(message.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        if now.saturating_sub(published_ms) < stuck_after {
            // Newer messages are newer still.
            break;
        }
        let Ok((req, _)) = ctx.rules.decode(&message.payload) else {
            // Never decoded: the advisory or a delivery will DLQ it.
            continue;
        };
        let moved_recently = match ctx.store.get(&req.payment_id).await? {
            Some((record, _)) => {
                let changed = runtime::time::parse_unix_ms(&record.updated_at).unwrap_or(now);
                !record.status.is_final()
                    && (record.status == PaymentStatus::Processing
                        && record
                            .lease_until_ms
                            .saturating_add(ctx.settings.clock_margin_ms)
                            > now
                        || now.saturating_sub(changed) < stuck_after)
            }
            None => false,
        };
        if moved_recently {
            continue;
        }
        tracing::warn!(seq, payment_id = %req.payment_id, "sweep: payment message no longer delivered; finishing it");
        if let Some(retry_in) = give_up(
            ctx,
            seq,
            0,
            "the server stopped delivering it (found by the sweep)",
        )
        .await?
        {
            tracing::info!(seq, ?retry_in, "sweep: payment still claimed; next sweep");
        }
    }
    Ok(())
}
