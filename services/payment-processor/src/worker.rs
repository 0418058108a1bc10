//! One payment message, start to finish. Every decision is a
//! compare-and-set on the payment's KV revision (the fencing token), and
//! every charge names the payment's idempotency key at the gateway, so a
//! process that pauses anywhere (after checking its claim, inside the
//! charge, before writing the outcome) can at worst repeat a charge the
//! gateway dedupes, and then finds its write refused and does nothing more.
//!
//! ```text
//! decode ──invalid──▶ failed (invalid_message) if the id is readable, DLQ, term
//! claim (create, or update at the read revision)
//!   ├─ final ─────────▶ (our own message: publish its event again) ack
//!   ├─ live elsewhere ─▶ nak until the claim runs out (never taken over while live)
//!   └─ claimed (attempt n)
//!        n > max_attempts ─▶ give up: void the key ─▶ completed (it was charged) or failed + DLQ
//!        rules reject ─────▶ failed + event, term
//!        charge(key) ok ───▶ completed (CAS) ─▶ events.payment.completed ─▶ ack
//!        charge error ─────▶ n = max_attempts: give up; else pending (CAS), nak(backoff)
//! ```

use crate::dlq::Entry;
use crate::gateway::{Charge, Void};
use crate::rules;
use crate::state::Processor;
use crate::store::Claim;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use protocol::payment::{DlqReason, PaymentRecord, PaymentStatus, REPLAY_HEADER};
use std::sync::Arc;
use std::time::Duration;

/// What to tell the server about a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ack,
    /// Never deliver it again (a rule rejection or a payment given up).
    Term,
    Nak(Duration),
    /// Our claim was taken over: leave the message to the new owner.
    Leave,
}

/// One payment message, from the consumer or read back from the stream.
pub(crate) struct Delivery<'a> {
    pub(crate) body: &'a Bytes,
    pub(crate) seq: u64,
    pub(crate) deliveries: u64,
    pub(crate) replay: u32,
    /// The message's W3C `traceparent`, if it has one.
    pub(crate) traceparent: Option<String>,
}

/// The replay number a message carries (0: the original publish).
pub(crate) fn replay_of(headers: Option<&HeaderMap>) -> u32 {
    headers
        .and_then(|h| h.get(REPLAY_HEADER))
        .and_then(|v| v.as_str().parse::<u32>().ok())
        .unwrap_or(0)
}

/// Handles one delivery of a payment message: acks, naks or terms it.
pub(crate) async fn process(ctx: Arc<Processor>, message: jetstream::Message) {
    let ctx = ctx.as_ref();
    let Ok(info) = message.info() else {
        tracing::error!("a pulled message without JetStream metadata");
        return;
    };
    let delivery = Delivery {
        body: &message.payload,
        seq: info.stream_sequence,
        deliveries: u64::try_from(info.delivered).unwrap_or(0),
        replay: replay_of(message.headers.as_ref()),
        traceparent: runtime::trace::of(message.headers.as_ref()),
    };
    let seq = delivery.seq;
    // The runtime's worker keeps the ack deadline moving while this runs.
    let outcome = settle(ctx, &delivery, None).await;
    // Final acks wait for the server's confirmation: a lost one shows as
    // an error here, and the redelivery finds the payment final.
    let reply = match outcome {
        Ok(Outcome::Ack) => message.double_ack().await,
        Ok(Outcome::Term) => message.double_ack_with(AckKind::Term).await,
        Ok(Outcome::Nak(delay)) => message.ack_with(AckKind::Nak(Some(delay))).await,
        Ok(Outcome::Leave) => Ok(()),
        Err(err) => {
            tracing::error!(seq, error = %format!("{err:#}"), "payment not processed; it will be redelivered");
            message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await
        }
    };
    if let Err(err) = reply {
        tracing::warn!(seq, error = %err, "could not acknowledge a payment message; it will be redelivered");
    }
}

/// Takes a payment message as far as it can go. `give_up`: the server
/// stopped delivering it (or the sweep found it stuck), with why; the
/// payment is then finished without a new charge attempt.
pub(crate) async fn settle(
    ctx: &Processor,
    delivery: &Delivery<'_>,
    give_up: Option<&str>,
) -> anyhow::Result<Outcome> {
    let (req, amount) = match ctx.rules.decode(delivery.body) {
        Ok(decoded) => decoded,
        Err(rules::Invalid(why)) => {
            invalid(ctx, delivery, &why).await?;
            return Ok(Outcome::Term);
        }
    };
    let claim = ctx
        .store
        .claim(
            &req,
            delivery.seq,
            delivery.replay,
            ctx.lease(),
            delivery.traceparent.as_deref(),
        )
        .await?;
    let (record, revision) = match claim {
        Claim::Claimed { record, revision } => (record, revision),
        Claim::Final(record) => {
            // Our own message again (the ack was lost, or we crashed before
            // the event went out): make sure the event (and DLQ entry)
            // exist; their Msg-Ids keep them to one.
            if record.owner_seq == delivery.seq && record.replays == delivery.replay {
                repair(ctx, &record, delivery).await?;
            } else {
                tracing::info!(payment_id = %req.payment_id, status = %record.status, "duplicate payment message ignored");
            }
            return Ok(Outcome::Ack);
        }
        Claim::Live { retry_in } => {
            tracing::info!(payment_id = %req.payment_id, ?retry_in, "payment is claimed by a live delivery; looking again later");
            return Ok(Outcome::Nak(retry_in.max(Duration::from_millis(100))));
        }
    };
    let max = ctx.settings.max_attempts;
    let given_up = match give_up {
        Some(why) => Some(why.to_owned()),
        None if record.attempts > max => Some(format!(
            "{max} attempts used up without an outcome (the last one never finished)"
        )),
        None => None,
    };
    if let Some(why) = given_up {
        let reason = DlqReason::MaxDeliveries;
        return abandon(ctx, record, revision, delivery, reason, &why).await;
    }
    if let Err(reason) = ctx.rules.check(&req, amount) {
        if record.attempts > 1 {
            // An earlier attempt, under other rules, may have charged.
            if let Some(outcome) = completed_if_charged(ctx, &record, revision).await? {
                return Ok(outcome);
            }
        }
        let failed = PaymentRecord {
            status: PaymentStatus::Failed,
            reason: Some(reason),
            ..record
        };
        return finish(ctx, failed, revision, delivery, Outcome::Term).await;
    }

    let charge = Charge {
        idempotency_key: record.idempotency_key(),
        payment_id: req.payment_id.clone(),
        user_id: req.user_id.clone(),
        amount,
        currency: req.currency.clone(),
    };
    let charged = tokio::time::timeout(ctx.gateway_timeout(), ctx.gateway.charge(&charge)).await;
    let error = match charged {
        Ok(Ok(charge_id)) => return complete(ctx, record, revision, delivery, charge_id).await,
        Ok(Err(err)) => err.to_string(),
        Err(_) => format!("gateway did not answer within {:?}", ctx.gateway_timeout()),
    };
    if record.attempts >= max {
        let why = format!("gateway failed on all {max} attempts: {error}");
        return abandon(
            ctx,
            record,
            revision,
            delivery,
            DlqReason::GatewayFailed,
            &why,
        )
        .await;
    }
    let delay = ctx.settings.backoff_after(record.attempts);
    tracing::info!(payment_id = %req.payment_id, attempt = record.attempts, ?delay, %error, "charge failed; retrying later");
    release(
        ctx,
        record,
        revision,
        format!("gateway: {error} (will retry)"),
        delay,
    )
    .await
}

/// Gives the claim back as `pending` (so the next delivery need not wait
/// out the lease) and asks for a redelivery after `delay`.
async fn release(
    ctx: &Processor,
    record: PaymentRecord,
    revision: u64,
    reason: String,
    delay: Duration,
) -> anyhow::Result<Outcome> {
    let pending = PaymentRecord {
        status: PaymentStatus::Pending,
        reason: Some(reason),
        lease_until_ms: 0,
        updated_at: runtime::time::now_rfc3339(),
        ..record
    };
    Ok(match ctx.store.put(&pending, revision).await? {
        Some(_) => Outcome::Nak(delay),
        None => Outcome::Leave,
    })
}

/// Ends a payment that will not be attempted again: its key is voided at
/// the gateway first, so no charge can happen after it is marked failed
/// (and if one happened already, it is completed instead).
async fn abandon(
    ctx: &Processor,
    record: PaymentRecord,
    revision: u64,
    delivery: &Delivery<'_>,
    reason: DlqReason,
    why: &str,
) -> anyhow::Result<Outcome> {
    let voided = tokio::time::timeout(
        ctx.gateway_timeout(),
        ctx.gateway.void(&record.idempotency_key()),
    )
    .await;
    match voided {
        Ok(Ok(Void::AlreadyCharged(charge_id))) => {
            complete(ctx, record, revision, delivery, charge_id).await
        }
        Ok(Ok(Void::Voided)) => {
            tracing::warn!(payment_id = %record.payment_id, reason = reason.as_str(), why, "payment given up");
            let failed = PaymentRecord {
                status: PaymentStatus::Failed,
                reason: Some(why.to_owned()),
                dlq_reason: Some(reason),
                ..record
            };
            finish(ctx, failed, revision, delivery, Outcome::Term).await
        }
        Ok(Err(err)) => {
            let delay = ctx.settings.backoff_after(record.attempts);
            let reason = format!("giving up, but the gateway could not void the charge: {err}");
            release(ctx, record, revision, reason, delay).await
        }
        Err(_) => {
            let delay = ctx.settings.backoff_after(record.attempts);
            let reason = format!(
                "giving up, but the gateway did not answer the void within {:?}",
                ctx.gateway_timeout()
            );
            release(ctx, record, revision, reason, delay).await
        }
    }
}

/// `Some(completed)` if the current key was charged by an earlier attempt.
async fn completed_if_charged(
    ctx: &Processor,
    record: &PaymentRecord,
    revision: u64,
) -> anyhow::Result<Option<Outcome>> {
    let voided = tokio::time::timeout(
        ctx.gateway_timeout(),
        ctx.gateway.void(&record.idempotency_key()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the gateway did not answer a void"))?
    .map_err(|e| anyhow::anyhow!("voiding at the gateway: {e}"))?;
    let Void::AlreadyCharged(charge_id) = voided else {
        return Ok(None);
    };
    let completed = PaymentRecord {
        status: PaymentStatus::Completed,
        reason: None,
        charge_id: Some(charge_id),
        ..record.clone()
    };
    Ok(Some(match ctx.store.put(&completed, revision).await? {
        Some(_) => {
            ctx.publish_event(&completed).await?;
            Outcome::Ack
        }
        None => Outcome::Leave,
    }))
}

async fn complete(
    ctx: &Processor,
    record: PaymentRecord,
    revision: u64,
    delivery: &Delivery<'_>,
    charge_id: String,
) -> anyhow::Result<Outcome> {
    let completed = PaymentRecord {
        status: PaymentStatus::Completed,
        reason: None,
        charge_id: Some(charge_id),
        ..record
    };
    finish(ctx, completed, revision, delivery, Outcome::Ack).await
}

/// Records the final state (compare-and-set on the claim's revision), then
/// publishes its DLQ entry and event, then lets `outcome` go to the
/// server. A crash in between is repaired by the redelivery ([`repair`]).
/// If the write is refused, the claim was taken over: nothing is
/// recorded or published by this instance.
async fn finish(
    ctx: &Processor,
    mut record: PaymentRecord,
    revision: u64,
    delivery: &Delivery<'_>,
    outcome: Outcome,
) -> anyhow::Result<Outcome> {
    record.updated_at = runtime::time::now_rfc3339();
    record.lease_until_ms = 0;
    if ctx.store.put(&record, revision).await?.is_none() {
        tracing::warn!(payment_id = %record.payment_id, "claim taken over by another delivery; leaving the payment to it");
        return Ok(Outcome::Leave);
    }
    repair(ctx, &record, delivery).await?;
    Ok(outcome)
}

/// What follows a final record: its DLQ entry (if it has one) and its event.
async fn repair(
    ctx: &Processor,
    record: &PaymentRecord,
    delivery: &Delivery<'_>,
) -> anyhow::Result<()> {
    if record.status == PaymentStatus::Failed
        && let Some(reason) = record.dlq_reason
    {
        let entry = Entry {
            reason,
            error: record.reason.as_deref().unwrap_or(""),
            payment_id: Some(&record.payment_id),
            stream_seq: delivery.seq,
            deliveries: delivery.deliveries,
        };
        ctx.dlq
            .send(entry, delivery.body.clone(), ctx.budget())
            .await?;
    }
    ctx.publish_event(record).await
}

/// A message that is not a payment: if its id is readable, the payment is
/// recorded `failed` (reason `invalid_message`) so `status` can say so.
async fn invalid(ctx: &Processor, delivery: &Delivery<'_>, why: &str) -> anyhow::Result<()> {
    let record = rules::invalid_record(delivery.body, delivery.seq, why);
    let recorded = match record {
        Some(record) => ctx.store.fail_invalid(record).await?,
        None => None,
    };
    let id = rules::readable_id(delivery.body);
    let entry = Entry {
        reason: DlqReason::InvalidMessage,
        error: why,
        payment_id: id.as_deref(),
        stream_seq: delivery.seq,
        deliveries: delivery.deliveries,
    };
    ctx.dlq
        .send(entry, delivery.body.clone(), ctx.budget())
        .await?;
    if let Some(record) = recorded {
        ctx.publish_event(&record).await?;
    }
    Ok(())
}
