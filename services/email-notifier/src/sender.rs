//! Sends each mail of `email.outbox` once where SMTP allows it: a mail id
//! found in bucket `email-sent` is not sent again, and a send is recorded
//! there right after the transport accepted it (see the crate docs for the
//! one window where a second copy can go out).

use crate::Notifier;
use async_nats::jetstream::{self, AckKind, stream::LastRawMessageErrorKind};
use protocol::email::{self, EmailEvent, EmailJob};
use protocol::subjects;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

/// The value of a key in bucket `email-sent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SentRecord {
    /// When the transport accepted the mail (RFC 3339).
    pub(crate) sent_at: String,
    /// The notifier instance that sent it.
    pub(crate) instance: String,
    /// The mail's `Message-ID` header.
    pub(crate) message_id: String,
}

/// What becomes of one delivery of a mail.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// Done: acknowledged and confirmed by the server (double ack).
    Ack,
    /// Done for good without success: terminated (double ack).
    Term,
    /// Try again after the delay.
    Nak(Duration),
}

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
            finish(&message, "?", Reply::Term).await;
            return;
        }
    };
    if !email::valid_id(&job.id) {
        // Not one of ours either (every id the notifier makes is valid); it
        // cannot be recorded, so it is not sent. No event: its id could not
        // be a Msg-Id.
        tracing::error!(id = ?job.id, "mail job with an invalid id dropped");
        finish(&message, "?", Reply::Term).await;
        return;
    }
    let reply = deliver(ctx, &job, delivered).await;
    finish(&message, &job.id, reply).await;
}

/// One delivery of a valid job: check, send, record, announce.
async fn deliver(ctx: &Notifier, job: &EmailJob, delivered: u32) -> Reply {
    let last = delivered >= ctx.settings.max_deliver;
    let retry = Reply::Nak(ctx.settings.backoff_after(delivered));

    // 1. Sent before? Read from the bucket stream's leader: a follower's
    //    answer could be stale and miss a record just written.
    match recorded(ctx, &job.id).await {
        Ok(Some(record)) => {
            tracing::info!(id = %job.id, sent_at = %record.sent_at, by = %record.instance, "sent before; not sending again");
            return announce(ctx, job, last, retry).await;
        }
        Ok(None) => {}
        Err(err) if last => {
            let error = format!("cannot tell whether it was sent: {err:#}");
            tracing::error!(id = %job.id, %error, delivered, "giving up on a mail");
            let _ = publish(ctx, job, Some(error)).await;
            return Reply::Term;
        }
        Err(err) => {
            tracing::warn!(id = %job.id, error = %format!("{err:#}"), "cannot tell whether the mail was sent; retrying");
            return retry;
        }
    }

    // 2.–4. in the span of this send (a child of the delivery's span).
    let sending = runtime::traced!(
        "email.send",
        &runtime::trace::current_or(&runtime::trace::Carrier::from_traceparent(
            job.traceparent.as_deref()
        )),
        "client",
        otel.name = "send mail",
        id = %job.id,
    );
    send_record_announce(ctx, job, delivered, retry)
        .instrument(sending.span().clone())
        .await
}

/// Steps 2–4 of [`deliver`]: a mail not sent before.
async fn send_record_announce(
    ctx: &Notifier,
    job: &EmailJob,
    delivered: u32,
    retry: Reply,
) -> Reply {
    let last = delivered >= ctx.settings.max_deliver;
    // 2. Send. A running send gets progress acks from the worker, so it is
    //    not redelivered to another instance meanwhile.
    if let Err(error) = ctx.transport.send(job).await {
        if last {
            tracing::error!(id = %job.id, %error, delivered, "giving up on a mail");
            let _ = publish(ctx, job, Some(error)).await;
            return Reply::Term;
        }
        tracing::warn!(id = %job.id, %error, delivered, "transport failed; retrying");
        return retry;
    }

    // 3. Record it at once: from here on a redelivery does not send again.
    //    A store that cannot take the record now (a leader election, a node
    //    down) is waited out: the message stays ours (progress acks), and
    //    giving it back would send the mail again.
    let patience = tokio::time::Instant::now() + RECORD_PATIENCE;
    while let Err(err) = record(ctx, job).await {
        if tokio::time::Instant::now() >= patience {
            // The ambiguous window: without the record a redelivery sends
            // the mail again (same Message-ID).
            tracing::error!(id = %job.id, error = %format!("{err:#}"), "sent, but the send could not be recorded; a redelivery sends it again");
            return if last { Reply::Term } else { retry };
        }
        tracing::warn!(id = %job.id, error = %format!("{err:#}"), "sent, but not recorded yet; trying again");
        tokio::time::sleep(RECORD_RETRY).await;
    }

    // 4. Announce it.
    announce(ctx, job, last, retry).await
}

/// How long a sent mail's record is retried before the message is given
/// back (and the mail sent again): long enough to outlast a leader election
/// or a node restart.
const RECORD_PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);
/// The pause between two rounds of recording retries.
const RECORD_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Publishes `events.email.sent` for a recorded mail. Not published: the
/// mail comes again (unless this was its last delivery) and only this
/// is retried.
async fn announce(ctx: &Notifier, job: &EmailJob, last: bool, retry: Reply) -> Reply {
    match publish(ctx, job, None).await {
        Ok(()) => {
            tracing::info!(
                id = %job.id,
                to = %job.to,
                trace_id = job
                    .traceparent
                    .as_deref()
                    .and_then(runtime::trace::trace_id)
                    .unwrap_or_default(),
                "mail sent"
            );
            Reply::Ack
        }
        Err(err) if last => {
            tracing::error!(id = %job.id, error = %format!("{err:#}"), "mail sent, but events.email.sent could not be published in any delivery");
            Reply::Term
        }
        Err(err) => {
            tracing::warn!(id = %job.id, error = %format!("{err:#}"), "mail sent, but the event did not go out; retrying the event only");
            retry
        }
    }
}

/// Acks (double: the server confirms), terms (double) or naks.
async fn finish(message: &jetstream::Message, id: &str, reply: Reply) {
    let done = match reply {
        Reply::Ack => message.double_ack().await,
        Reply::Term => message.double_ack_with(AckKind::Term).await,
        Reply::Nak(delay) => message.ack_with(AckKind::Nak(Some(delay))).await,
    };
    if let Err(err) = done {
        tracing::warn!(%id, error = %err, "could not acknowledge a mail; it will be redelivered (and not sent again if it was sent)");
    }
}

/// The record of mail `id`, read through the `$JS.API.STREAM.MSG.GET` API
/// of the bucket's stream, which its leader answers (a direct get may be
/// answered by a follower that has not seen the latest write).
async fn recorded(ctx: &Notifier, id: &str) -> anyhow::Result<Option<SentRecord>> {
    runtime::js::retry(&format!("reading the record of {id}"), ctx.budget(), || {
        read_record(ctx, id)
    })
    .await
}

/// One try of [`recorded`].
async fn read_record(ctx: &Notifier, id: &str) -> Result<Option<SentRecord>, String> {
    let subject = subjects::kv_key(&ctx.sent.name, id);
    let raw = match ctx
        .sent
        .stream
        .get_last_raw_message_by_subject(&subject)
        .await
    {
        Ok(raw) => raw,
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(err) => return Err(format!("reading {subject}: {err}")),
    };
    // A delete or purge marker means no record (the notifier writes none).
    if raw
        .headers
        .get("KV-Operation")
        .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE")
    {
        return Ok(None);
    }
    // Any value means sent; one that does not parse is still a record.
    Ok(Some(serde_json::from_slice(&raw.payload).unwrap_or_else(
        |_| SentRecord {
            sent_at: "?".into(),
            instance: "?".into(),
            message_id: email::message_id(id),
        },
    )))
}

/// Writes the record of a sent mail (create: the first record stays),
/// retried for the publish budget. A record already there is success; so is
/// one found after a failed create (its ack was lost).
async fn record(ctx: &Notifier, job: &EmailJob) -> anyhow::Result<()> {
    let record = SentRecord {
        sent_at: runtime::time::now_rfc3339(),
        instance: ctx.instance.clone(),
        message_id: email::message_id(&job.id),
    };
    let value = bytes::Bytes::from(serde_json::to_vec(&record)?);
    runtime::js::retry(
        &format!("recording {} as sent", job.id),
        ctx.budget(),
        || async {
            match ctx.sent.create(&job.id, value.clone()).await {
                Ok(_) => Ok(()),
                Err(err)
                    if err.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists =>
                {
                    Ok(())
                }
                // Written after all (a lost ack), or not: one leader read tells.
                Err(err) => match read_record(ctx, &job.id).await {
                    Ok(Some(_)) => Ok(()),
                    _ => Err(err),
                },
            }
        },
    )
    .await
}

/// `events.email.sent` or, with an error, `events.email.failed`, with
/// Msg-Id `<id>.sent` / `<id>.failed`: publishing it again (after a
/// redelivery) within the `EVENTS` duplicate window stores it once.
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
    // The mail's event continues the trace of what queued it (the span
    // sending it, or the job's kept context).
    let headers = runtime::trace::Carrier::from_traceparent(job.traceparent.as_deref()).headers();
    runtime::js::publish_durable(
        &ctx.js,
        subject,
        &format!("{}.{status}", job.id),
        Some(&headers),
        body.into(),
        ctx.budget(),
    )
    .await?;
    Ok(())
}
