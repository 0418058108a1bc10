//! Sends each mail of `email.outbox` once, retrying transport errors.

use crate::Notifier;
use async_nats::jetstream::{self, AckKind};
use protocol::email::{EmailEvent, EmailJob};
use protocol::subjects;
use std::sync::Arc;

pub(crate) async fn send(ctx: Arc<Notifier>, message: jetstream::Message) {
    let ctx = ctx.as_ref();
    let delivered = message
        .info()
        .map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let job: EmailJob = match serde_json::from_slice(&message.payload) {
        Ok(job) => job,
        Err(err) => {
            // Only we write this subject; an unreadable job cannot get better.
            tracing::error!(error = %err, "unreadable mail job dropped");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let reply = match ctx.transport.send(&job).await {
        Ok(()) => match publish(ctx, &job, None).await {
            Ok(()) => {
                tracing::info!(id = %job.id, to = %job.to, "mail sent");
                message.ack().await
            }
            Err(err) => {
                tracing::warn!(id = %job.id, error = %format!("{err:#}"), "sent, but the event did not go out; retrying");
                message
                    .ack_with(AckKind::Nak(Some(ctx.settings.backoff_after(1))))
                    .await
            }
        },
        Err(error) if delivered >= ctx.settings.max_deliver => {
            tracing::error!(id = %job.id, %error, delivered, "giving up on a mail");
            let _ = publish(ctx, &job, Some(error)).await;
            message.ack_with(AckKind::Term).await
        }
        Err(error) => {
            let delay = ctx.settings.backoff_after(delivered);
            tracing::warn!(id = %job.id, %error, delivered, ?delay, "transport failed; retrying");
            message.ack_with(AckKind::Nak(Some(delay))).await
        }
    };
    if let Err(err) = reply {
        tracing::warn!(id = %job.id, error = %err, "could not acknowledge a mail; it will be redelivered");
    }
}

/// `events.email.sent` or, with an error, `events.email.failed`.
async fn publish(ctx: &Notifier, job: &EmailJob, error: Option<String>) -> anyhow::Result<()> {
    let (subject, status) = match error {
        None => (subjects::EVENT_EMAIL_SENT, "sent"),
        Some(_) => (subjects::EVENT_EMAIL_FAILED, "failed"),
    };
    let event = EmailEvent {
        id: job.id.clone(),
        to: job.to.clone(),
        subject: job.subject.clone(),
        at: runtime::time::now_rfc3339(),
        error,
    };
    let body = serde_json::to_vec(&event)?;
    runtime::js::publish_durable(
        &ctx.js,
        subject,
        &format!("{}.{status}", job.id),
        None,
        body.into(),
        ctx.budget(),
    )
    .await?;
    Ok(())
}
