//! The server's word that a payment message was delivered `max_deliver`
//! times without an ack: it goes to the DLQ and the payment is marked failed.

use crate::dlq::Entry;
use crate::state::Processor;
use anyhow::Context as _;
use async_nats::jetstream::stream;
use futures::StreamExt as _;
use protocol::names::{consumers, queue_groups, streams};
use protocol::payment::DlqReason;
use protocol::subjects;
use serde::Deserialize;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>` body (the part we use).
#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
}

/// Handles the server's word that a message was delivered `max_deliver`
/// times without an ack (e.g. every processor that got it crashed): DLQ it,
/// mark the payment failed, and remove it from the work queue. One
/// instance of the queue group handles each advisory.
pub(crate) async fn follow(
    ctx: Arc<Processor>,
    payments: stream::Stream,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let subject =
        subjects::max_deliveries_advisory(streams::PAYMENTS, consumers::PAYMENT_PROCESSOR);
    let mut advisories = ctx
        .client
        .queue_subscribe(subject, queue_groups::PAYMENT_PROCESSOR.to_owned())
        .await
        .context("subscribing to MAX_DELIVERIES advisories")?;
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            message = advisories.next() => message,
        };
        let Some(message) = message else {
            return Ok(());
        };
        let Ok(advisory) = serde_json::from_slice::<MaxDeliveries>(&message.payload) else {
            tracing::warn!("unreadable MAX_DELIVERIES advisory");
            continue;
        };
        if let Err(err) = dead_letter(&ctx, &payments, &advisory).await {
            tracing::error!(error = %format!("{err:#}"), seq = advisory.stream_seq, "handling a MAX_DELIVERIES advisory");
        }
    }
}

async fn dead_letter(
    ctx: &Processor,
    payments: &stream::Stream,
    advisory: &MaxDeliveries,
) -> anyhow::Result<()> {
    let budget = ctx.budget();
    let Ok(original) = payments.get_raw_message(advisory.stream_seq).await else {
        // Gone already: acked or termed after all.
        return Ok(());
    };
    let decoded = crate::rules::decode(&original.payload).ok();
    let payment_id = decoded.as_ref().map(|(req, _)| req.payment_id.as_str());
    let error = format!(
        "delivered {} times without being acknowledged",
        advisory.deliveries
    );
    ctx.dlq
        .send(
            Entry {
                reason: DlqReason::MaxDeliveries,
                error: &error,
                payment_id,
                stream_seq: advisory.stream_seq,
                deliveries: advisory.deliveries,
            },
            original.payload.clone(),
            budget,
        )
        .await?;
    if let Some(id) = payment_id
        && let Some(record) = ctx.store.fail_unless_final(id, &error).await?
    {
        ctx.publish_event(&record).await?;
    }
    let _ = payments.delete_message(advisory.stream_seq).await;
    Ok(())
}
