//! What is checked after a run, from the outside only (KV `payments`, the
//! gateway ledger, stream `EVENTS`, every revision the payment records
//! went through, and the SMTP sink):
//!
//! - every acknowledged payment ends `completed` or `failed` (none stuck);
//! - the ledger has exactly one charge per completed payment, the one its
//!   record names, and none for a failed one;
//! - exactly one `events.payment.completed` per completed payment, none
//!   for a failed one;
//! - statuses never go backwards (no final status followed by a
//!   non-final one within the same replay);
//! - every accepted email, and the receipt of every completed payment that
//!   has an email address, reaches the SMTP sink at least once; a second
//!   copy only after a notifier was SIGKILLed, and always with the same
//!   Message-ID (copies are counted by Message-ID).

use crate::load::Outcome;
use crate::nemesis::Faults;
use crate::report::Report;
use crate::{Options, System};
use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use protocol::names::buckets;
use protocol::payment::{PaymentEvent, PaymentRecord, PaymentStatus};
use protocol::subjects;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Revision, status and replay number of each write to a payment record, by id.
type Revisions = Arc<Mutex<HashMap<String, Vec<(u64, PaymentStatus, u32)>>>>;

/// Every revision of every payment record, as a watcher saw them.
#[derive(Debug)]
pub(crate) struct History {
    seen: Revisions,
    task: JoinHandle<()>,
}

impl History {
    /// Watches bucket `payments` from its first revision, resuming after
    /// the last one seen whenever the watch breaks (a node down).
    pub(crate) async fn watch(client: &async_nats::Client) -> anyhow::Result<Self> {
        let js = jetstream::new(client.clone());
        let kv = runtime::js::retry("opening bucket payments", Duration::from_secs(60), || {
            js.get_key_value(buckets::PAYMENTS)
        })
        .await?;
        let seen: Revisions = Arc::default();
        let recorder = seen.clone();
        let task = tokio::spawn(async move {
            let mut from = 1;
            loop {
                let Ok(mut watch) = kv.watch_all_from_revision(from).await else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                while let Some(Ok(entry)) = watch.next().await {
                    from = entry.revision + 1;
                    if entry.operation != kv::Operation::Put {
                        continue;
                    }
                    if let Ok(record) = serde_json::from_slice::<PaymentRecord>(&entry.value) {
                        recorder
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(entry.key)
                            .or_default()
                            .push((entry.revision, record.status, record.replays));
                    }
                }
            }
        });
        Ok(Self { seen, task })
    }

    pub(crate) fn stop(&self) {
        self.task.abort();
    }

    fn backwards(&self) -> Vec<String> {
        backwards(&self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Every final status followed by a different one within the same replay.
fn backwards(seen: &HashMap<String, Vec<(u64, PaymentStatus, u32)>>) -> Vec<String> {
    let mut out = Vec::new();
    for (id, revisions) in seen {
        let mut revisions = revisions.clone();
        revisions.sort_by_key(|r| r.0);
        revisions.dedup_by_key(|r| r.0);
        for pair in revisions.windows(2) {
            let ((_, before, replay_before), (rev, after, replay_after)) = (pair[0], pair[1]);
            if before.is_final() && replay_after == replay_before && before != after {
                out.push(format!("{id}: {before} then {after} at revision {rev}"));
            }
        }
    }
    out
}

/// Waits until every acknowledged payment is final (or `settle` passes),
/// then checks everything.
pub(crate) async fn check(
    system: &System,
    client: &async_nats::Client,
    outcome: &Outcome,
    history: &History,
    faults: &Faults,
    opts: &Options,
) -> anyhow::Result<Report> {
    let js = jetstream::new(client.clone());
    let kv = runtime::js::retry("opening bucket payments", Duration::from_secs(60), || {
        js.get_key_value(buckets::PAYMENTS)
    })
    .await;
    // A power loss can take the whole bucket: then every record is lost.
    let kv = match kv {
        Ok(kv) => Some(kv),
        Err(e) if opts.power_loss.is_some() => {
            eprintln!("chaos: bucket {} is gone: {e:#}", buckets::PAYMENTS);
            None
        }
        Err(e) => return Err(e),
    };
    let deadline = Instant::now() + opts.settle;
    let mut records: BTreeMap<String, PaymentRecord> = BTreeMap::new();
    while let Some(kv) = &kv {
        for id in outcome.payments.keys() {
            if records.get(id).is_some_and(|r| r.status.is_final()) {
                continue;
            }
            if let Ok(Some(entry)) = kv.entry(id.as_str()).await
                && let Ok(record) = serde_json::from_slice::<PaymentRecord>(&entry.value)
            {
                records.insert(id.clone(), record);
            }
        }
        let open = outcome
            .payments
            .keys()
            .filter(|id| !records.get(*id).is_some_and(|r| r.status.is_final()))
            .count();
        if open == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut report = Report {
        acked: outcome.payments.len(),
        unacked: outcome.unacked_payments,
        emails_accepted: outcome.emails.len(),
        faults: faults.by_kind.clone(),
        fault_log: faults.log.clone(),
        ..Report::default()
    };
    let charges = payment_processor::gateway::read_charges(&system.ledger)?;
    let mut charged: HashMap<&str, Vec<&str>> = HashMap::new();
    for line in &charges {
        charged
            .entry(line.payment_id.as_str())
            .or_default()
            .push(line.charge_id.as_deref().unwrap_or(""));
    }
    let completed_events = if opts.power_loss.is_some()
        && js
            .get_stream(protocol::names::streams::EVENTS)
            .await
            .is_err_and(|e| e.to_string().contains("not found"))
    {
        // A power loss took the whole stream: no event is left to count.
        eprintln!("chaos: stream {} is gone", protocol::names::streams::EVENTS);
        HashMap::new()
    } else {
        // A completed payment whose event publish failed (a node down)
        // keeps its message, which is redelivered (after a nak delay, or
        // the ack wait when its processor died) and publishes the event
        // then: wait for those within the settle time, at least a minute.
        let completed: Vec<&String> = records
            .iter()
            .filter(|(_, r)| r.status == PaymentStatus::Completed)
            .map(|(id, _)| id)
            .collect();
        let until = deadline.max(Instant::now() + Duration::from_secs(60));
        loop {
            let events = count_events(&js, subjects::EVENT_PAYMENT_COMPLETED).await;
            if completed.iter().all(|id| events.contains_key(*id)) || Instant::now() >= until {
                break events;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let mut receipts_due = Vec::new();
    for (id, req) in &outcome.payments {
        let Some(record) = records.get(id) else {
            report.violation("payment lost (no record)", id.clone());
            if let Some(charges) = charged.get(id.as_str()) {
                report.violation(
                    "lost after being charged",
                    format!("{id}: {} charges", charges.len()),
                );
            }
            continue;
        };
        let charges = charged.get(id.as_str()).map_or(&[][..], Vec::as_slice);
        let events = completed_events.get(id).copied().unwrap_or(0);
        match record.status {
            PaymentStatus::Completed => {
                report.completed += 1;
                if req.email.is_some() {
                    receipts_due.push(id.clone());
                }
            }
            PaymentStatus::Failed => report.failed += 1,
            PaymentStatus::Pending | PaymentStatus::Processing => {}
        }
        for (kind, what) in judge(id, record, charges, events) {
            report.violation(kind, what);
        }
    }
    for line in history.backwards() {
        report.violation("status went backwards", line);
    }

    // Mail: wait (within what is left of the settle time) for every
    // accepted email and due receipt, then count copies by Message-ID.
    let mut wanted: Vec<String> = outcome.emails.keys().cloned().collect();
    wanted.extend(receipts_due.iter().map(|id| format!("rcpt-{id}")));
    let mail_deadline = deadline.max(Instant::now() + Duration::from_secs(30));
    let copies_at = loop {
        let copies = copies_by_message_id(&system.sink);
        let missing = wanted
            .iter()
            .filter(|id| !copies.contains_key(&protocol::email::message_id(id)))
            .count();
        if missing == 0 || Instant::now() >= mail_deadline {
            break copies;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for id in &wanted {
        let n = copies_at
            .get(&protocol::email::message_id(id))
            .map_or(0, Vec::len);
        let receipt = id.starts_with("rcpt-");
        match n {
            0 if receipt => report.violation("receipt never sent", id.clone()),
            0 => report.violation("accepted email never sent", id.clone()),
            1 => {}
            _ if killed_between(
                &copies_at,
                &protocol::email::message_id(id),
                &faults.notifier_kills,
            ) =>
            {
                report.duplicate_copies += n - 1;
            }
            _ => report.violation(
                "second copy without a notifier killed",
                format!("{id}: {n} copies"),
            ),
        }
        if n > 0 {
            if receipt {
                report.receipts_sent += 1;
            } else {
                report.emails_sent += 1;
            }
        }
    }
    report.receipts_due = receipts_due.len();
    Ok(report)
}

/// What is wrong with one payment at the end: its record, the charge ids
/// the ledger holds for it, and how many completed events it has.
fn judge(
    id: &str,
    record: &PaymentRecord,
    charges: &[&str],
    events: usize,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    match record.status {
        PaymentStatus::Completed => {
            match charges {
                [one] if Some(*one) == record.charge_id.as_deref() => {}
                [] => out.push(("completed but never charged", id.to_owned())),
                [_] => out.push((
                    "completed with another charge than the ledger's",
                    id.to_owned(),
                )),
                many => out.push((
                    "charged more than once",
                    format!("{id}: {} charges", many.len()),
                )),
            }
            match events {
                1 => {}
                0 => out.push((
                    "completed event missing",
                    format!("{id}: no events.payment.completed"),
                )),
                n => out.push((
                    "completed events > 1",
                    format!("{id}: {n} events.payment.completed"),
                )),
            }
        }
        PaymentStatus::Failed => {
            if !charges.is_empty() {
                out.push(("failed but charged", id.to_owned()));
            }
            if events != 0 {
                out.push(("failed with a completed event", id.to_owned()));
            }
        }
        other => out.push(("stuck", format!("{id}: {other}"))),
    }
    out
}

/// `events.payment.completed` per payment id.
async fn count_events(js: &jetstream::Context, subject: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for message in testkit::js::read_stream(js, protocol::names::streams::EVENTS, subject).await {
        if let Ok(event) = serde_json::from_slice::<PaymentEvent>(&message.payload) {
            *out.entry(event.payment_id).or_insert(0) += 1;
        }
    }
    out
}

/// When each copy arrived at the sink, by Message-ID.
type CopiesAt = HashMap<String, Vec<SystemTime>>;

/// Copies the sink received, by Message-ID, with their arrival times.
fn copies_by_message_id(sink: &testkit::smtp::Sink) -> CopiesAt {
    let mut out: CopiesAt = HashMap::new();
    for (at, raw) in sink.received_at() {
        if let Some(id) = testkit::smtp::header(&raw, "Message-ID") {
            out.entry(id).or_default().push(at);
        }
    }
    out
}

/// Whether a notifier was SIGKILLed between the first copy of a mail (less
/// a second: the kill lands while the relay's 250 is on its way) and its
/// last copy — the one window in which a second copy is allowed.
fn killed_between(copies: &CopiesAt, message_id: &str, kills: &[SystemTime]) -> bool {
    let Some(times) = copies.get(message_id) else {
        return false;
    };
    let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
        return false;
    };
    let from = first.checked_sub(Duration::from_secs(1)).unwrap_or(*first);
    kills.iter().any(|k| *k >= from && k <= last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use PaymentStatus::{Completed, Failed, Pending, Processing};

    fn record(status: PaymentStatus, charge_id: Option<&str>) -> PaymentRecord {
        PaymentRecord {
            payment_id: "p".into(),
            user_id: "u".into(),
            subscription_id: None,
            amount: "1.00".into(),
            currency: "USD".into(),
            email: None,
            status,
            attempts: 1,
            reason: None,
            updated_at: String::new(),
            owner_seq: 1,
            lease_until_ms: 0,
            replays: 0,
            charge_id: charge_id.map(str::to_owned),
            dlq_reason: None,
            traceparent: None,
        }
    }

    #[test]
    fn each_payment_is_judged_by_its_record_charges_and_events() {
        let kinds = |r: &PaymentRecord, charges: &[&str], events| {
            judge("p", r, charges, events)
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        };
        let done = record(Completed, Some("ch_1"));
        assert!(kinds(&done, &["ch_1"], 1).is_empty());
        assert_eq!(
            kinds(&done, &["ch_1", "ch_2"], 1),
            ["charged more than once"]
        );
        assert_eq!(kinds(&done, &[], 1), ["completed but never charged"]);
        assert_eq!(
            kinds(&done, &["ch_9"], 1),
            ["completed with another charge than the ledger's"]
        );
        assert_eq!(kinds(&done, &["ch_1"], 2), ["completed events > 1"]);
        assert_eq!(kinds(&done, &["ch_1"], 0), ["completed event missing"]);
        let failed = record(Failed, None);
        assert!(kinds(&failed, &[], 0).is_empty());
        assert_eq!(kinds(&failed, &["ch_1"], 0), ["failed but charged"]);
        assert_eq!(kinds(&failed, &[], 1), ["failed with a completed event"]);
        assert_eq!(kinds(&record(Processing, None), &[], 0), ["stuck"]);
        assert_eq!(kinds(&record(Pending, None), &[], 0), ["stuck"]);
    }

    #[test]
    fn a_second_copy_needs_a_notifier_kill_between_the_copies() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let copies: CopiesAt = HashMap::from([("<m@switchyard>".to_owned(), vec![at(10), at(14)])]);
        let id = "<m@switchyard>";
        assert!(killed_between(&copies, id, &[at(12)]));
        assert!(
            killed_between(&copies, id, &[at(10)]),
            "as the 250 goes out"
        );
        assert!(
            !killed_between(&copies, id, &[at(5), at(20)]),
            "before or after"
        );
        assert!(!killed_between(&copies, id, &[]));
        assert!(!killed_between(&copies, "<other@switchyard>", &[at(12)]));
    }

    #[test]
    fn a_final_status_followed_by_another_in_the_same_replay_is_backwards() {
        let seen = HashMap::from([
            // Fine: forwards, and a replay may start over after a failure.
            (
                "ok".to_owned(),
                vec![
                    (1, Processing, 0),
                    (3, Pending, 0),
                    (5, Processing, 0),
                    (7, Failed, 0),
                    (9, Pending, 1),
                    (11, Completed, 1),
                ],
            ),
            // Seen out of order and twice: still fine.
            (
                "dup".to_owned(),
                vec![(4, Completed, 0), (2, Processing, 0), (4, Completed, 0)],
            ),
            (
                "bad".to_owned(),
                vec![(1, Processing, 0), (2, Completed, 0), (6, Processing, 0)],
            ),
            ("flip".to_owned(), vec![(1, Failed, 0), (2, Completed, 0)]),
        ]);
        let mut found = backwards(&seen);
        found.sort();
        assert_eq!(
            found,
            [
                "bad: completed then processing at revision 6",
                "flip: failed then completed at revision 2"
            ]
        );
    }
}
