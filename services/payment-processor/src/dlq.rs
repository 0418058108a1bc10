//! The dead-letter queue: the original body, byte for byte, with the reason
//! in headers. Fed by the worker (invalid messages, a gateway that failed on
//! the last delivery) and by the server's MAX_DELIVERIES advisory.

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use protocol::payment::{DlqReason, dlq_headers};
use protocol::subjects;
use std::time::Duration;

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
