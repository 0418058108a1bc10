//! The dead-letter queue: the original body, byte for byte, with the reason
//! in headers. Fed by the worker (invalid messages, a gateway that failed on
//! the last delivery) and by the server's MAX_DELIVERIES advisory.

use crate::worker::Ctx;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt as _;
use protocol::names::{consumers, queue_groups, streams};
use protocol::payment::{DlqReason, dlq_headers};
use protocol::subjects;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub(crate) struct Dlq {
    js: jetstream::Context,
}

/// What goes with a DLQ entry.
pub(crate) struct Entry<'a> {
    pub(crate) reason: DlqReason,
    pub(crate) error: &'a str,
    pub(crate) payment_id: Option<&'a str>,
    pub(crate) stream_seq: u64,
    pub(crate) deliveries: u64,
}

impl Dlq {
    pub(crate) fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    /// Publishes `body` to `PAYMENTS_DLQ`, once per original message (the
    /// Msg-Id is `dlq.<stream seq>`, so the worker and the advisory handler
    /// cannot both add it).
    pub(crate) async fn send(
        &self,
        entry: Entry<'_>,
        body: Bytes,
        budget: Duration,
    ) -> anyhow::Result<()> {
        let mut h = HeaderMap::new();
        h.insert(dlq_headers::REASON, entry.reason.as_str());
        h.insert(
            dlq_headers::ERROR,
            runtime::micro::header_value(entry.error).as_str(),
        );
        if let Some(id) = entry.payment_id {
            h.insert(dlq_headers::PAYMENT_ID, id);
        }
        h.insert(
            dlq_headers::STREAM_SEQ,
            entry.stream_seq.to_string().as_str(),
        );
        h.insert(
            dlq_headers::DELIVERIES,
            entry.deliveries.to_string().as_str(),
        );
        let msg_id = format!("dlq.{}", entry.stream_seq);
        runtime::js::publish_durable(
            &self.js,
            subjects::PAYMENT_DLQ,
            &msg_id,
            Some(&h),
            body,
            budget,
        )
        .await?;
        tracing::warn!(
            reason = entry.reason.as_str(),
            payment_id = entry.payment_id.unwrap_or("-"),
            stream_seq = entry.stream_seq,
            error = entry.error,
            "payment sent to the DLQ"
        );
        Ok(())
    }
}

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
pub(crate) async fn follow_advisories(
    client: Client,
    ctx: Arc<Ctx>,
    payments: stream::Stream,
    stop: CancellationToken,
) {
    let subject = format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
        streams::PAYMENTS,
        consumers::PAYMENT_PROCESSOR
    );
    let mut advisories = match client
        .queue_subscribe(subject, queue_groups::PAYMENT_PROCESSOR.to_owned())
        .await
    {
        Ok(sub) => sub,
        Err(err) => {
            tracing::error!(error = %err, "cannot follow MAX_DELIVERIES advisories");
            return;
        }
    };
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            message = advisories.next() => message,
        };
        let Some(message) = message else { return };
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
    ctx: &Ctx,
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
