//! `LOGS_DLQ`: records that could not be written by their last delivery.
//! The original body, byte for byte, with the reason and the original
//! subject in headers (the shape of `PAYMENTS_DLQ`).

use async_nats::HeaderMap;
use async_nats::jetstream;
use protocol::logs::{DlqReason, dlq_headers};
use protocol::subjects;
use std::time::Duration;

/// How long one DLQ publish is retried (the batch gets progress acks meanwhile).
const BUDGET: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub(crate) struct Dlq {
    js: jetstream::Context,
}

impl Dlq {
    pub(crate) fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    /// Publishes `message` to `LOGS_DLQ`, once per original message (the
    /// Msg-Id is `dlq.<stream seq>`).
    pub(crate) async fn send(
        &self,
        message: &jetstream::Message,
        reason: DlqReason,
        error: &str,
        stream_seq: u64,
        deliveries: u64,
    ) -> anyhow::Result<()> {
        let mut h = HeaderMap::new();
        h.insert(dlq_headers::REASON, reason.as_str());
        h.insert(
            dlq_headers::ERROR,
            runtime::micro::header_value(error).as_str(),
        );
        h.insert(
            dlq_headers::SUBJECT,
            runtime::micro::header_value(&message.subject).as_str(),
        );
        h.insert(dlq_headers::STREAM_SEQ, stream_seq.to_string().as_str());
        h.insert(dlq_headers::DELIVERIES, deliveries.to_string().as_str());
        runtime::js::publish_durable(
            &self.js,
            subjects::LOGS_DLQ,
            &format!("dlq.{stream_seq}"),
            Some(&h),
            message.payload.clone(),
            BUDGET,
        )
        .await?;
        tracing::warn!(
            reason = reason.as_str(),
            subject = %message.subject,
            stream_seq,
            deliveries,
            error,
            "log record sent to the DLQ"
        );
        Ok(())
    }
}
