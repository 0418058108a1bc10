//! One batch from the shared consumer, written to the files.

use crate::LogWorker;
use crate::records::{self, Line, REJECTED_FILE};
use async_nats::jetstream::{self, AckKind};
use protocol::logs::LogStats;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Writes a batch to the files (records already there are skipped), counts
/// it, then answers ack for each message; a batch that cannot be written is
/// given back.
pub(crate) async fn write_batch(
    state: Arc<LogWorker>,
    messages: Vec<jetstream::Message>,
) -> Vec<AckKind> {
    let messages = messages.as_slice();
    let mut by_file: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    let mut kinds: HashMap<u64, (String, String)> = HashMap::new();
    for message in messages {
        let Ok(info) = message.info() else { continue };
        let seq = info.stream_sequence;
        match records::line_for(&message.subject, seq, &message.payload) {
            Line::Record { record, line } => {
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
    let files = state.files.clone();
    let written = tokio::task::spawn_blocking(move || {
        let mut files = files
            .lock()
            .map_err(|_| std::io::Error::other("log files lock poisoned"))?;
        let mut written = Vec::new();
        for (name, lines) in by_file {
            let seqs = files.append(&name, &lines)?;
            written.push((name, seqs));
        }
        Ok::<_, std::io::Error>(written)
    })
    .await;
    let written = match written {
        Ok(Ok(written)) => written,
        Ok(Err(err)) => return give_back(messages, &format!("writing log files: {err}")),
        Err(err) => return give_back(messages, &format!("log writer task failed: {err}")),
    };
    let mut delta = LogStats::default();
    for (name, seqs) in &written {
        if name == REJECTED_FILE {
            delta.rejected += seqs.len() as u64;
            continue;
        }
        for seq in seqs {
            if let Some((service, level)) = kinds.get(seq) {
                delta.processed += 1;
                *delta.by_level.entry(level.clone()).or_insert(0) += 1;
                *delta.by_service.entry(service.clone()).or_insert(0) += 1;
            }
        }
    }
    state
        .counters
        .written
        .fetch_add(delta.processed, Ordering::Relaxed);
    if let Err(err) = state.stats.add(&delta).await {
        // The records are safe in the files; only the counters lag.
        tracing::warn!(error = %format!("{err:#}"), "log stats not updated for a batch");
    }
    vec![AckKind::Ack; messages.len()]
}

fn give_back(messages: &[jetstream::Message], why: &str) -> Vec<AckKind> {
    tracing::error!(
        error = why,
        count = messages.len(),
        "a log batch was not written; it will be redelivered"
    );
    vec![AckKind::Nak(Some(Duration::from_secs(1))); messages.len()]
}
