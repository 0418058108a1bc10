//! Payment records in KV bucket `payments`, claimed and updated with
//! expected revisions, so two instances (or two copies of a message) can
//! never both own a payment.

use async_nats::jetstream::kv;
use protocol::payment::{PaymentRecord, PaymentRequest, PaymentStatus};
use runtime::time::now_unix_ms as now_ms;
use std::time::Duration;

const CONTENTION_ROUNDS: usize = 16;

/// The outcome of trying to claim a payment for one message.
#[derive(Debug)]
pub(crate) enum Claim {
    /// This message owns the payment now; write back with `revision`.
    Claimed {
        record: PaymentRecord,
        revision: u64,
    },
    /// Completed or failed already: nothing more to do.
    Final(PaymentRecord),
    /// Another message holds a live claim and will finish it.
    Busy,
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

    /// Claims `req` for the message at stream sequence `seq`.
    pub(crate) async fn claim(
        &self,
        req: &PaymentRequest,
        seq: u64,
        replay: u32,
        lease: Duration,
    ) -> anyhow::Result<Claim> {
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let fresh = |attempts: u32, replays: u32| PaymentRecord {
            status: PaymentStatus::Processing,
            attempts,
            reason: None,
            updated_at: runtime::time::now_rfc3339(),
            owner_seq: seq,
            lease_until_ms: now_ms().saturating_add(lease_ms),
            replays,
            charge_id: None,
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
                    let newer_replay = replay > rec.replays;
                    if rec.status.is_final() && !newer_replay {
                        return Ok(Claim::Final(rec.clone()));
                    }
                    let live_elsewhere = rec.owner_seq != seq && rec.lease_until_ms > now_ms();
                    if !rec.status.is_final() && !newer_replay && live_elsewhere {
                        return Ok(Claim::Busy);
                    }
                    PaymentRecord {
                        attempts: rec.attempts.saturating_add(1),
                        replays: rec.replays.max(replay),
                        // Keep what the first message said the payment is.
                        ..fresh(0, 0)
                    }
                    .with_original(rec)
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

    /// Re-queues a failed payment as replay `replay`. `Ok(false)`: it is not
    /// failed (any more) and was not marked.
    pub(crate) async fn mark_replayed(&self, id: &str, replay: u32) -> anyhow::Result<bool> {
        for _ in 0..CONTENTION_ROUNDS {
            let Some((rec, revision)) = self.get(id).await? else {
                return Ok(false);
            };
            if rec.replays >= replay {
                // A processor took the replay message first.
                return Ok(true);
            }
            if rec.status != PaymentStatus::Failed {
                return Ok(false);
            }
            let next = PaymentRecord {
                status: PaymentStatus::Pending,
                reason: None,
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

    /// Marks a payment failed unless it is final already; returns the record
    /// written.
    pub(crate) async fn fail_unless_final(
        &self,
        id: &str,
        reason: &str,
    ) -> anyhow::Result<Option<PaymentRecord>> {
        for _ in 0..CONTENTION_ROUNDS {
            let Some((rec, revision)) = self.get(id).await? else {
                return Ok(None);
            };
            if rec.status.is_final() {
                return Ok(None);
            }
            let next = PaymentRecord {
                status: PaymentStatus::Failed,
                reason: Some(reason.to_owned()),
                updated_at: runtime::time::now_rfc3339(),
                ..rec
            };
            if self.put(&next, revision).await?.is_some() {
                return Ok(Some(next));
            }
        }
        anyhow::bail!("payment {id} is contended")
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
    }
}

fn encode(record: &PaymentRecord) -> bytes::Bytes {
    serde_json::to_vec(record).unwrap_or_default().into()
}
