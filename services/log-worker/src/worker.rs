//! Takes batches from the shared consumer and writes them to the files.

use crate::Local;
use crate::files::Files;
use crate::records::{self, Line, REJECTED_FILE};
use crate::stats::Stats;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt as _;
use protocol::logs::LogStats;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub(crate) async fn run(
    consumer: PullConsumer,
    files: Files,
    stats: Stats,
    local: Arc<Local>,
    batch: usize,
    mut maintenance: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let files = Arc::new(Mutex::new(files));
    loop {
        if *maintenance.borrow_and_update() {
            tracing::warn!("maintenance mode: not writing logs");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = maintenance.wait_for(|on| !*on) => continue,
            }
        }
        let pulled = tokio::select! {
            _ = stop.cancelled() => return,
            pulled = consumer.batch().max_messages(batch).expires(Duration::from_millis(300)).messages() => pulled,
        };
        let mut pulled = match pulled {
            Ok(pulled) => pulled,
            Err(err) => {
                tracing::warn!(error = %err, "cannot pull logs yet; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        let mut messages = Vec::with_capacity(batch);
        while let Some(next) = pulled.next().await {
            match next {
                Ok(message) => messages.push(message),
                Err(err) => {
                    tracing::debug!(error = %err, "batch ended early");
                    break;
                }
            }
        }
        if !messages.is_empty() {
            // A batch taken is finished, even when stopping.
            write_batch(&messages, &files, &stats, &local).await;
        }
    }
}

async fn write_batch(
    messages: &[jetstream::Message],
    files: &Arc<Mutex<Files>>,
    stats: &Stats,
    local: &Local,
) {
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
    let files = files.clone();
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
        Ok(Err(err)) => return give_back(messages, &format!("writing log files: {err}")).await,
        Err(err) => return give_back(messages, &format!("log writer task failed: {err}")).await,
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
    local.written.fetch_add(delta.processed, Ordering::Relaxed);
    if let Err(err) = stats.add(&delta).await {
        // The records are safe in the files; only the counters lag.
        tracing::warn!(error = %format!("{err:#}"), "log stats not updated for a batch");
    }
    let acks = futures::future::join_all(messages.iter().map(|m| m.ack())).await;
    let failed = acks.iter().filter(|a| a.is_err()).count();
    if failed > 0 {
        tracing::warn!(
            failed,
            "some log acks failed; those records come again and are skipped as written"
        );
    }
}

async fn give_back(messages: &[jetstream::Message], why: &str) {
    tracing::error!(
        error = why,
        count = messages.len(),
        "a log batch was not written; it will be redelivered"
    );
    for m in messages {
        let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
    }
}
