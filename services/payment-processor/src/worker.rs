//! One payment message, applied once: decode, claim, rules, charge, finish.

use crate::dlq::Entry;
use crate::gateway::Charge;
use crate::rules;
use crate::state::Processor;
use crate::store::Claim;
use async_nats::jetstream::{self, AckKind};
use protocol::payment::{DlqReason, PaymentRecord, PaymentStatus, REPLAY_HEADER};
use std::sync::Arc;
use std::time::Duration;

/// What to tell the server about a message.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ack,
    /// Never deliver it again (a rule rejection or the last failed delivery).
    Term,
    Nak(Duration),
    /// Our claim was taken over: let the ack wait run out, the owner decides.
    Leave,
}

/// Handles one delivery of a payment message: acks, naks or terms it.
pub(crate) async fn process(ctx: Arc<Processor>, message: jetstream::Message) {
    let ctx = ctx.as_ref();
    let Ok(info) = message.info() else {
        tracing::error!("a pulled message without JetStream metadata");
        return;
    };
    let (seq, delivered) = (
        info.stream_sequence,
        u32::try_from(info.delivered).unwrap_or(u32::MAX),
    );
    let replay = message
        .headers
        .as_ref()
        .and_then(|h| h.get(REPLAY_HEADER))
        .and_then(|v| v.as_str().parse::<u32>().ok())
        .unwrap_or(0);

    // The runtime's worker keeps the ack deadline moving while this runs.
    let outcome = handle(ctx, &message, seq, delivered, replay).await;
    let reply = match outcome {
        Ok(Outcome::Ack) => message.ack().await,
        Ok(Outcome::Term) => message.ack_with(AckKind::Term).await,
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

async fn handle(
    ctx: &Processor,
    message: &jetstream::Message,
    seq: u64,
    delivered: u32,
    replay: u32,
) -> anyhow::Result<Outcome> {
    let (req, amount) = match rules::decode(&message.payload) {
        Ok(decoded) => decoded,
        Err(rules::Invalid(why)) => {
            let entry = Entry {
                reason: DlqReason::InvalidMessage,
                error: &why,
                payment_id: None,
                stream_seq: seq,
                deliveries: u64::from(delivered),
            };
            ctx.dlq
                .send(entry, message.payload.clone(), ctx.budget())
                .await?;
            return Ok(Outcome::Ack);
        }
    };
    let (mut record, revision) = match ctx.store.claim(&req, seq, replay, ctx.lease()).await? {
        Claim::Claimed { record, revision } => (record, revision),
        Claim::Final(record) => {
            // Our own message again (the ack was lost, or we crashed before
            // the event went out): make sure the event exists; the Msg-Id
            // keeps it to one.
            if record.owner_seq == seq {
                ctx.publish_event(&record).await?;
            } else {
                tracing::info!(payment_id = %req.payment_id, status = %record.status, "duplicate payment ignored");
            }
            return Ok(Outcome::Ack);
        }
        Claim::Busy => {
            tracing::info!(payment_id = %req.payment_id, "payment is being processed by another message; ignoring this one");
            return Ok(Outcome::Ack);
        }
    };

    if let Err(reason) = ctx.rules.check(&req, amount) {
        record.status = PaymentStatus::Failed;
        record.reason = Some(reason);
        return finish(ctx, record, revision, Outcome::Term).await;
    }

    let charge = Charge {
        payment_id: req.payment_id.clone(),
        user_id: req.user_id.clone(),
        amount,
        currency: req.currency.clone(),
    };
    let charged = tokio::time::timeout(ctx.gateway_timeout(), ctx.gateway.charge(&charge)).await;
    let error = match charged {
        Ok(Ok(charge_id)) => {
            record.status = PaymentStatus::Completed;
            record.reason = None;
            record.charge_id = Some(charge_id);
            return finish(ctx, record, revision, Outcome::Ack).await;
        }
        Ok(Err(err)) => err.to_string(),
        Err(_) => format!("gateway did not answer within {:?}", ctx.gateway_timeout()),
    };
    if delivered >= ctx.settings.max_deliver {
        let entry = Entry {
            reason: DlqReason::GatewayFailed,
            error: &error,
            payment_id: Some(&req.payment_id),
            stream_seq: seq,
            deliveries: u64::from(delivered),
        };
        ctx.dlq
            .send(entry, message.payload.clone(), ctx.budget())
            .await?;
        record.status = PaymentStatus::Failed;
        record.reason = Some(format!(
            "gateway failed on all {delivered} deliveries: {error}"
        ));
        return finish(ctx, record, revision, Outcome::Term).await;
    }
    record.status = PaymentStatus::Pending;
    record.reason = Some(format!("gateway: {error} (will retry)"));
    record.lease_until_ms = 0;
    record.updated_at = runtime::time::now_rfc3339();
    let delay = ctx.settings.backoff_after(delivered);
    tracing::info!(payment_id = %req.payment_id, delivered, ?delay, %error, "charge failed; retrying later");
    Ok(match ctx.store.put(&record, revision).await? {
        Some(_) => Outcome::Nak(delay),
        None => Outcome::Leave,
    })
}

/// Records the final state, then publishes its event, then lets `outcome`
/// go to the server. A crash in between is repaired by the redelivery.
async fn finish(
    ctx: &Processor,
    mut record: PaymentRecord,
    revision: u64,
    outcome: Outcome,
) -> anyhow::Result<Outcome> {
    record.updated_at = runtime::time::now_rfc3339();
    if ctx.store.put(&record, revision).await?.is_none() {
        tracing::warn!(payment_id = %record.payment_id, "claim taken over by another message; leaving it to that one");
        return Ok(Outcome::Leave);
    }
    ctx.publish_event(&record).await?;
    Ok(outcome)
}
