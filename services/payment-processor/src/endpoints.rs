//! `services.payment.status` and `services.payment.replay`.

use crate::state::Processor;
use async_nats::HeaderMap;
use async_nats::jetstream::stream::RawMessageErrorKind;
use protocol::payment::{
    PaymentIdRequest, PaymentRecord, PaymentStatus, REPLAY_HEADER, ReplayReply, StatusReply,
    valid_payment_id,
};
use protocol::{ErrorCode, ServiceError, subjects};
use std::sync::Arc;
use std::time::Duration;

const REPLAY_PUBLISH_BUDGET: Duration = Duration::from_secs(5);

fn check_id(id: &str) -> Result<(), ServiceError> {
    if valid_payment_id(id) {
        Ok(())
    } else {
        Err(ServiceError::invalid_request(format!(
            "payment_id {id:?} must be 1 to 128 characters of A-Z, a-z, 0-9, '_' and '-'"
        )))
    }
}

fn unavailable(err: anyhow::Error) -> ServiceError {
    ServiceError::new(
        ErrorCode::Unavailable,
        format!("payment store unavailable: {err:#}"),
    )
}

pub(crate) async fn status(
    ctx: Arc<Processor>,
    req: PaymentIdRequest,
) -> Result<StatusReply, ServiceError> {
    check_id(&req.payment_id)?;
    match ctx.store.get(&req.payment_id).await.map_err(unavailable)? {
        Some((record, _)) => Ok(StatusReply::from(&record)),
        None => Err(ServiceError::new(
            ErrorCode::NotFound,
            format!("no payment with id {:?}", req.payment_id),
        )),
    }
}

pub(crate) async fn replay(
    ctx: Arc<Processor>,
    req: PaymentIdRequest,
) -> Result<ReplayReply, ServiceError> {
    check_id(&req.payment_id)?;
    let Some((record, _)) = ctx.store.get(&req.payment_id).await.map_err(unavailable)? else {
        return Err(ServiceError::new(
            ErrorCode::NotFound,
            format!(
                "no payment with id {:?} (a message that never decoded cannot be replayed)",
                req.payment_id
            ),
        ));
    };
    match record.status {
        PaymentStatus::Failed => {}
        PaymentStatus::Completed => {
            return Err(ServiceError::new(
                ErrorCode::Conflict,
                format!(
                    "payment {:?} is completed; it cannot be replayed",
                    req.payment_id
                ),
            ));
        }
        other => {
            if !stuck(&ctx, &record).await.map_err(unavailable)? {
                return Err(ServiceError::new(
                    ErrorCode::Conflict,
                    format!(
                        "payment {:?} is still {other} and its message is queued; replay it once it has failed",
                        req.payment_id
                    ),
                ));
            }
        }
    }
    let n = record.replays + 1;
    // Publish first, then mark: a published replay that loses the race to
    // mark is harmless (the processor sees the newer replay number).
    let mut h = HeaderMap::new();
    h.insert(REPLAY_HEADER, n.to_string().as_str());
    let body = serde_json::to_vec(&record.request())
        .map_err(|e| ServiceError::internal(format!("encoding the payment: {e}")))?;
    let msg_id = format!("{}.replay.{n}", record.payment_id);
    runtime::js::publish_durable(
        &ctx.js,
        subjects::PAYMENT_PROCESS,
        &msg_id,
        Some(&h),
        body.into(),
        REPLAY_PUBLISH_BUDGET,
    )
    .await
    .map_err(unavailable)?;
    if !ctx
        .store
        .mark_replayed(&record.payment_id, n, |rec| {
            rec.status == PaymentStatus::Failed || !claim_live(&ctx, rec)
        })
        .await
        .map_err(unavailable)?
    {
        return Err(ServiceError::new(
            ErrorCode::Conflict,
            format!(
                "payment {:?} changed while replaying; look at its status",
                req.payment_id
            ),
        ));
    }
    Ok(ReplayReply {
        payment_id: record.payment_id,
        status: PaymentStatus::Pending,
        replay: n,
    })
}

/// Whether a claim on `record` may still be in use (its lease, plus the
/// clock margin, has not run out).
pub(crate) fn claim_live(ctx: &Processor, record: &PaymentRecord) -> bool {
    record.status == PaymentStatus::Processing
        && record
            .lease_until_ms
            .saturating_add(ctx.settings.clock_margin_ms)
            > runtime::time::now_unix_ms()
}

/// A payment that is neither final nor going anywhere: no live claim, and
/// the message that owned it is no longer in `PAYMENTS`.
pub(crate) async fn stuck(ctx: &Processor, record: &PaymentRecord) -> anyhow::Result<bool> {
    if claim_live(ctx, record) || record.owner_seq == 0 {
        return Ok(false);
    }
    match ctx.payments.get_raw_message(record.owner_seq).await {
        Ok(_) => Ok(false),
        Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => Ok(true),
        Err(err) => Err(err.into()),
    }
}
