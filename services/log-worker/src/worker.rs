//! One batch from the shared consumer, written to the files.
//!
//! Each file is written on its own: the messages of a file that was written
//! (or already held them) are acked; those of a file that could not be
//! written (disk full, I/O error, permissions) are given back with a delay
//! that doubles with each delivery (`logs.retry_min_ms` up to
//! `logs.retry_max_ms`), and at their last delivery (`logs.max_deliver`) go
//! to `LOGS_DLQ` and are termed. One failing file does not hold up the others.

use crate::LogWorker;
use crate::files::Appended;
use crate::records::{self, Line, REJECTED_FILE};
use async_nats::jetstream::{self, AckKind};
use protocol::logs::{DlqReason, LogStats};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Files that failed, and the longest retry delay already logged for each:
/// a warning is logged once per backoff step, not once per batch.
#[derive(Debug, Default)]
pub(crate) struct Trouble(Mutex<HashMap<String, Duration>>);

impl Trouble {
    /// Whether `delay` for `file` is a step not logged yet.
    fn new_step(&self, file: &str, delay: Duration) -> bool {
        let Ok(mut steps) = self.0.lock() else {
            return true;
        };
        match steps.get(file) {
            Some(logged) if *logged >= delay => false,
            _ => {
                steps.insert(file.to_owned(), delay);
                true
            }
        }
    }

    /// Whether `file` had failed before (and now is fine again).
    fn recovered(&self, file: &str) -> bool {
        self.0
            .lock()
            .is_ok_and(|mut steps| steps.remove(file).is_some())
    }
}

/// Writes a batch to the files (records already there are skipped) and
/// counts it; answers ack for what is in the files, and a delayed nak (or,
/// after the DLQ, a term) for the rest.
pub(crate) async fn write_batch(
    state: Arc<LogWorker>,
    messages: Vec<jetstream::Message>,
) -> Vec<AckKind> {
    let mut by_file: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    let mut kinds: HashMap<u64, (String, String)> = HashMap::new();
    // A record written in a trace (it came with a `traceparent`) is a span
    // of that trace, from its batch's start until its file is written.
    let mut spans: Vec<(u64, runtime::trace::Traced)> = Vec::new();
    for message in &messages {
        let Ok(info) = message.info() else { continue };
        let seq = info.stream_sequence;
        let traceparent = runtime::trace::of(message.headers.as_ref());
        match records::line_for(
            &message.subject,
            seq,
            &message.payload,
            traceparent.as_deref(),
        ) {
            Line::Record { record, line } => {
                let carrier = runtime::trace::Carrier::from_headers(message.headers.as_ref());
                if carrier.trace_id().is_some() {
                    let traced = runtime::traced!(
                        "logs.write",
                        &carrier,
                        "consumer",
                        otel.name = "write log record",
                        service = %record.service,
                        seq,
                        written = tracing::field::Empty,
                    );
                    spans.push((seq, traced));
                }
                by_file
                    .entry(record.service.clone())
                    .or_default()
                    .push((seq, line));
                kinds.insert(seq, (record.service, record.level));
            }
            Line::Rejected { line, reason } => {
                tracing::debug!(seq, %reason, "rejected log message kept in _rejected.jsonl");
                by_file
                    .entry(REJECTED_FILE.to_owned())
                    .or_default()
                    .push((seq, line));
            }
        }
    }
    let all_seqs: Vec<(String, Vec<u64>)> = by_file
        .iter()
        .map(|(name, lines)| (name.clone(), lines.iter().map(|(s, _)| *s).collect()))
        .collect();
    let files = state.files.clone();
    let appended = tokio::task::spawn_blocking(move || {
        // A panic while the lock was held leaves only the memory of recent
        // seqs behind, which stays right: go on with it.
        let mut files = files.lock().unwrap_or_else(PoisonError::into_inner);
        by_file
            .into_iter()
            .map(|(name, lines)| {
                let done = files.append(&name, &lines);
                (name, done)
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| format!("log writer task failed: {e}"));
    // Nothing known written when the writer itself failed: every file's
    // records are given back.
    let appended = appended.unwrap_or_else(|why| {
        all_seqs
            .into_iter()
            .map(|(name, seqs)| {
                let done = Appended {
                    written: Vec::new(),
                    unwritten: seqs,
                    error: Some(std::io::Error::other(why.clone())),
                };
                (name, done)
            })
            .collect()
    });

    let mut delta = LogStats::default();
    // seq -> (file, error) of every record not in its file.
    let mut unwritten: HashMap<u64, (String, String)> = HashMap::new();
    for (name, done) in &appended {
        if name == REJECTED_FILE {
            delta.rejected += done.written.len() as u64;
        }
        for seq in &done.written {
            if let Some((service, level)) = kinds.get(seq) {
                delta.processed += 1;
                *delta.by_level.entry(level.clone()).or_insert(0) += 1;
                *delta.by_service.entry(service.clone()).or_insert(0) += 1;
            }
        }
        match &done.error {
            Some(err) => {
                let error = format!("writing {name}.jsonl: {err}");
                for seq in &done.unwritten {
                    unwritten.insert(*seq, (name.clone(), error.clone()));
                }
            }
            None => {
                if state.trouble.recovered(name) {
                    tracing::info!(file = %name, "log file written again");
                }
            }
        }
    }
    for (seq, traced) in spans {
        traced
            .span()
            .record("written", !unwritten.contains_key(&seq));
    }
    state
        .counters
        .written
        .fetch_add(delta.processed, Ordering::Relaxed);
    state
        .counters
        .write_failures
        .fetch_add(unwritten.len() as u64, Ordering::Relaxed);
    if let Err(err) = state.stats.add(&delta).await {
        // The records are safe in the files; only the counters lag.
        tracing::warn!(error = %format!("{err:#}"), "log stats not updated for a batch");
    }

    let state = &*state;
    let answers = messages.iter().map(|message| {
        let failed = message.info().ok().and_then(|info| {
            unwritten
                .get(&info.stream_sequence)
                .map(|f| (info.stream_sequence, info.delivered, f))
        });
        async move {
            match failed {
                None => AckKind::Ack,
                Some((seq, delivered, (file, error))) => {
                    give_back(state, message, seq, delivered, file, error).await
                }
            }
        }
    });
    futures::future::join_all(answers).await
}

/// The answer for a record its file could not take: a nak with a delay, or
/// at its last delivery, once it is in `LOGS_DLQ`, a term.
async fn give_back(
    state: &LogWorker,
    message: &jetstream::Message,
    seq: u64,
    delivered: i64,
    file: &str,
    error: &str,
) -> AckKind {
    let delivered = u64::try_from(delivered).unwrap_or(0);
    if delivered >= u64::from(state.settings.max_deliver) {
        match state
            .dlq
            .send(message, DlqReason::WriteFailed, error, seq, delivered)
            .await
        {
            Ok(()) => {
                state.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => tracing::error!(
                seq,
                error = %format!("{err:#}"),
                "a log record could not be written nor sent to the DLQ; it stays in LOGS only"
            ),
        }
        return AckKind::Term;
    }
    let delay = state.settings.retry_delay(delivered);
    if state.trouble.new_step(file, delay) {
        tracing::warn!(
            file,
            error,
            delivered,
            retry_in_ms = delay.as_millis() as u64,
            "log records not written; given back to retry later"
        );
    }
    AckKind::Nak(Some(delay))
}
