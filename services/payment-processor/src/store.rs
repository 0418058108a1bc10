//! Payment records in KV bucket `payments`, claimed and updated with
//! expected revisions, so two instances (or two copies of a message) can
//! never both own a payment.

use async_nats::jetstream::kv;
use protocol::payment::{PaymentRecord, PaymentRequest, PaymentStatus};
use runtime::time::now_unix_ms as now_ms;
use std::time::Duration;

const CONTENTION_ROUNDS: usize = 16;

/// The outcome of trying to claim a payment for one delivery.
#[derive(Debug)]
pub(crate) enum Claim {
    /// This delivery owns the payment now; every later write is a
    /// compare-and-set on `revision` (the fencing token).
    Claimed {
        record: PaymentRecord,
        revision: u64,
    },
    /// Completed or failed already (or the message belongs to an older
    /// replay): nothing more to do.
    Final(PaymentRecord),
    /// A delivery (of this message or another) holds a live claim: look
    /// again after `retry_in`.
    Live { retry_in: Duration },
}

/// How long claims hold and how much clock difference they allow for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    pub(crate) hold: Duration,
    pub(crate) clock_margin: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct Store {
    kv: kv::Store,
    budget: Duration,
}

impl Store {
    pub(crate) fn new(kv: kv::Store, budget: Duration) -> Self {
        Self { kv, budget }
    }

    /// Every payment id in the bucket (for the orphan sweep).
    pub(crate) async fn ids(&self) -> anyhow::Result<Vec<String>> {
        use futures::TryStreamExt as _;
        let keys = runtime::js::retry("listing payments", self.budget, || self.kv.keys()).await?;
        Ok(keys.try_collect().await?)
    }

    /// The record and its revision.
    pub(crate) async fn get(&self, id: &str) -> anyhow::Result<Option<(PaymentRecord, u64)>> {
        let entry =
            runtime::js::retry("reading a payment", self.budget, || self.kv.entry(id)).await?;
        Ok(entry.and_then(|e| {
            if e.operation != kv::Operation::Put {
                return None;
            }
            serde_json::from_slice(&e.value)
                .ok()
                .map(|r| (r, e.revision))
        }))
    }

    /// Claims `req` for the message at stream sequence `seq` carrying
    /// replay number `replay`. Decided by the create/update result alone:
    /// a read (which a follower may answer stale) only supplies the
    /// revision to compare against, and a stale one makes the write fail.
    /// A live claim is never taken over, not even by a redelivery of the
    /// same message: its owner may only be paused.
    pub(crate) async fn claim(
        &self,
        req: &PaymentRequest,
        seq: u64,
        replay: u32,
        lease: Lease,
        traceparent: Option<&str>,
    ) -> anyhow::Result<Claim> {
        let hold_ms = u64::try_from(lease.hold.as_millis()).unwrap_or(u64::MAX);
        let margin_ms = u64::try_from(lease.clock_margin.as_millis()).unwrap_or(u64::MAX);
        let fresh = |attempts: u32, replays: u32| PaymentRecord {
            status: PaymentStatus::Processing,
            attempts,
            reason: None,
            updated_at: runtime::time::now_rfc3339(),
            owner_seq: seq,
            lease_until_ms: now_ms().saturating_add(hold_ms),
            replays,
            charge_id: None,
            dlq_reason: None,
            traceparent: traceparent.map(str::to_owned),
            ..record_from(req)
        };
        // Most payments are new: try to create first, read only on conflict.
        let first = fresh(1, replay);
        match self.kv.create(&req.payment_id, encode(&first)).await {
            Ok(revision) => {
                return Ok(Claim::Claimed {
                    record: first,
                    revision,
                });
            }
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(err) => tracing::debug!(error = %err, "create failed; reading the record"),
        }
        // Conflicts (someone wrote in between) are bounded by rounds;
        // infrastructure errors (a leader election) by the retry budget.
        let deadline = tokio::time::Instant::now() + self.budget;
        let mut conflicts = 0;
        while conflicts < CONTENTION_ROUNDS {
            let entry = runtime::js::retry("reading a payment", self.budget, || {
                self.kv.entry(&req.payment_id)
            })
            .await?;
            let current = entry.as_ref().and_then(|e| {
                (e.operation == kv::Operation::Put)
                    .then(|| serde_json::from_slice::<PaymentRecord>(&e.value).ok())
                    .flatten()
            });
            let next = match &current {
                None => fresh(1, replay),
                Some(rec) => {
                    if rec.replays > replay {
                        // A message of an older replay: that replay ended
                        // (only a failed payment is replayed).
                        return Ok(Claim::Final(rec.clone()));
                    }
                    let newer_replay = replay > rec.replays;
                    if rec.status.is_final() && !newer_replay {
                        return Ok(Claim::Final(rec.clone()));
                    }
                    let live_until = rec.lease_until_ms.saturating_add(margin_ms);
                    let now = now_ms();
                    if rec.status == PaymentStatus::Processing && !newer_replay && live_until > now
                    {
                        return Ok(Claim::Live {
                            retry_in: Duration::from_millis(live_until - now),
                        });
                    }
                    let attempts = if newer_replay {
                        1
                    } else {
                        rec.attempts.saturating_add(1)
                    };
                    fresh(attempts, replay.max(rec.replays)).with_original(rec)
                }
            };
            let written = match &entry {
                None => self
                    .kv
                    .create(&req.payment_id, encode(&next))
                    .await
                    .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists),
                Some(e) => self
                    .kv
                    .update(&req.payment_id, encode(&next), e.revision)
                    .await
                    .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
            };
            match written {
                Ok(revision) => {
                    return Ok(Claim::Claimed {
                        record: next,
                        revision,
                    });
                }
                // Someone else wrote in between: look again.
                Err(true) => conflicts += 1,
                Err(false) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(false) => {
                    anyhow::bail!("cannot write payment {}: KV unavailable", req.payment_id)
                }
            }
        }
        anyhow::bail!("payment {} is contended; giving it back", req.payment_id)
    }

    /// Writes `record` if the stored revision is still `revision`.
    /// `Ok(None)`: someone else wrote first (this claim is lost).
    pub(crate) async fn put(
        &self,
        record: &PaymentRecord,
        revision: u64,
    ) -> anyhow::Result<Option<u64>> {
        let value = encode(record);
        let id = record.payment_id.as_str();
        let outcome = runtime::js::retry("writing a payment", self.budget, || async {
            match self.kv.update(id, value.clone(), revision).await {
                Ok(rev) => Ok(Some(rev)),
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(err) => Err(err),
            }
        })
        .await?;
        if outcome.is_some() {
            return Ok(outcome);
        }
        // A retry after a lost reply also sees a newer revision: if the
        // stored value is ours, the write did happen.
        let entry =
            runtime::js::retry("reading a payment", self.budget, || self.kv.entry(id)).await?;
        Ok(entry.filter(|e| e.value == value).map(|e| e.revision))
    }

    /// Re-queues a payment as replay `replay` if it is not completed and
    /// `allowed` says it may be replayed (failed, or stuck). `Ok(false)`:
    /// it was not marked.
    pub(crate) async fn mark_replayed(
        &self,
        id: &str,
        replay: u32,
        allowed: impl Fn(&PaymentRecord) -> bool,
    ) -> anyhow::Result<bool> {
        for _ in 0..CONTENTION_ROUNDS {
            let Some((rec, revision)) = self.get(id).await? else {
                return Ok(false);
            };
            if rec.replays >= replay {
                // A processor took the replay message first.
                return Ok(true);
            }
            if rec.status == PaymentStatus::Completed || !allowed(&rec) {
                return Ok(false);
            }
            let next = PaymentRecord {
                status: PaymentStatus::Pending,
                reason: None,
                attempts: 0,
                dlq_reason: None,
                charge_id: None,
                replays: replay,
                owner_seq: 0,
                lease_until_ms: 0,
                updated_at: runtime::time::now_rfc3339(),
                ..rec
            };
            if self.put(&next, revision).await?.is_some() {
                return Ok(true);
            }
        }
        anyhow::bail!("payment {id} is contended")
    }

    /// Records a payment whose message could not be read as failed with
    /// reason `invalid_message`, if no record exists under its id (a real
    /// payment with the same id is left alone). Returns the record written.
    pub(crate) async fn fail_invalid(
        &self,
        record: PaymentRecord,
    ) -> anyhow::Result<Option<PaymentRecord>> {
        let value = encode(&record);
        let id = record.payment_id.as_str();
        let created = runtime::js::retry("recording an invalid payment", self.budget, || async {
            match self.kv.create(id, value.clone()).await {
                Ok(_) => Ok(true),
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(err) => Err(err),
            }
        })
        .await?;
        if created {
            return Ok(Some(record));
        }
        // Ours (a redelivery, or a lost reply), or a real payment's.
        Ok(self
            .get(id)
            .await?
            .map(|(existing, _)| existing)
            .filter(|existing| {
                existing.owner_seq == record.owner_seq
                    && existing.dlq_reason == Some(protocol::payment::DlqReason::InvalidMessage)
            }))
    }
}

trait WithOriginal {
    fn with_original(self, original: &PaymentRecord) -> PaymentRecord;
}

impl WithOriginal for PaymentRecord {
    /// Keeps the payment's own fields from the stored record.
    fn with_original(self, original: &PaymentRecord) -> PaymentRecord {
        PaymentRecord {
            payment_id: original.payment_id.clone(),
            user_id: original.user_id.clone(),
            subscription_id: original.subscription_id.clone(),
            amount: original.amount.clone(),
            currency: original.currency.clone(),
            email: original.email.clone(),
            charge_id: original.charge_id.clone(),
            // The trace of the message that first claimed it.
            traceparent: original.traceparent.clone().or(self.traceparent),
            ..self
        }
    }
}

fn record_from(req: &PaymentRequest) -> PaymentRecord {
    PaymentRecord {
        payment_id: req.payment_id.clone(),
        user_id: req.user_id.clone(),
        subscription_id: req.subscription_id.clone(),
        amount: req.amount.clone(),
        currency: req.currency.clone(),
        email: req.email.clone(),
        status: PaymentStatus::Pending,
        attempts: 0,
        reason: None,
        updated_at: runtime::time::now_rfc3339(),
        owner_seq: 0,
        lease_until_ms: 0,
        replays: 0,
        charge_id: None,
        dlq_reason: None,
        traceparent: None,
    }
}

fn encode(record: &PaymentRecord) -> bytes::Bytes {
    serde_json::to_vec(record).unwrap_or_default().into()
}
