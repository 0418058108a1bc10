//! A receipt for every `events.payment.completed` that names an email,
//! from a durable consumer on `EVENTS`: events published while the notifier
//! was down are not lost, and the Msg-Id `receipt.<payment_id>` keeps it to
//! one receipt per payment.

use crate::Notifier;
use async_nats::jetstream::{self, AckKind};
use lettre::message::Mailbox;
use protocol::email::{self, EmailJob, EmailKind};
use protocol::payment::PaymentEvent;
use std::sync::Arc;

/// The receipt for a completed payment, if it has a usable email.
pub(crate) fn receipt_job(event: &PaymentEvent) -> Option<EmailJob> {
    let to: Mailbox = event.email.as_deref()?.parse().ok()?;
    Some(EmailJob {
        id: format!("rcpt-{}", event.payment_id),
        kind: EmailKind::Receipt,
        to: to.to_string(),
        subject: format!("Receipt for payment {}", event.payment_id),
        body: format!(
            "Thank you. We received your payment.\n\nPayment:  {}\nAmount:   {} {}\nAccount:  {}\nDate:     {}\n",
            event.payment_id, event.amount, event.currency, event.user_id, event.at
        ),
        accepted_at: runtime::time::now_rfc3339(),
        scheduled_for: None,
        idempotency_key: None,
        payment_id: Some(event.payment_id.clone()),
        traceparent: None,
    })
}

pub(crate) async fn receipt(ctx: Arc<Notifier>, message: jetstream::Message) {
    let ctx = ctx.as_ref();
    let event: PaymentEvent = match serde_json::from_slice(&message.payload) {
        Ok(event) => event,
        Err(err) => {
            tracing::warn!(error = %err, "unreadable payment event; no receipt");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let Some(mut job) = receipt_job(&event) else {
        let _ = message.ack().await;
        return;
    };
    // The receipt continues the payment event's trace: this handler's span.
    let context = runtime::trace::current_or(&runtime::trace::Carrier::from_headers(
        message.headers.as_ref(),
    ));
    job.traceparent.clone_from(&context.traceparent);
    let body = match serde_json::to_vec(&job) {
        Ok(body) => body,
        Err(err) => {
            tracing::error!(error = %err, "encoding a receipt");
            return;
        }
    };
    let msg_id = format!("receipt.{}", event.payment_id);
    let queued = runtime::js::publish_durable(
        &ctx.js,
        email::subjects::OUTBOX,
        &msg_id,
        Some(&context.headers()),
        body.into(),
        ctx.budget(),
    )
    .await;
    let reply = match queued {
        // Double ack: the server confirms it, so a lost ack does not bring
        // the event back (it would only queue a duplicate the Msg-Id drops).
        Ok(_) => message.double_ack().await,
        Err(err) => {
            let delivered = message
                .info()
                .map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX))
                .unwrap_or(1);
            let delay = ctx.settings.backoff_after(delivered);
            tracing::warn!(payment_id = %event.payment_id, error = %format!("{err:#}"), ?delay, "receipt not queued; retrying");
            message.ack_with(AckKind::Nak(Some(delay))).await
        }
    };
    if let Err(err) = reply {
        tracing::warn!(error = %err, "could not acknowledge a payment event");
    }
}
