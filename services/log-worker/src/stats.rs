//! Cluster-wide counters in KV `log-stats` / `totals`, updated once per
//! batch with an expected revision, so every worker answers the same numbers.

use async_nats::jetstream::kv;
use protocol::logs::LogStats;
use std::time::Duration;

const KEY: &str = "totals";

#[derive(Debug, Clone)]
pub(crate) struct Stats {
    kv: kv::Store,
}

impl Stats {
    pub(crate) fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    pub(crate) async fn read(&self) -> anyhow::Result<LogStats> {
        let entry = runtime::js::retry("reading log stats", Duration::from_secs(5), || {
            self.kv.entry(KEY)
        })
        .await?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| serde_json::from_slice(&e.value).ok())
            .unwrap_or_default())
    }

    /// Adds `delta` to the totals.
    pub(crate) async fn add(&self, delta: &LogStats) -> anyhow::Result<()> {
        if delta.processed == 0 && delta.rejected == 0 {
            return Ok(());
        }
        for _ in 0..50 {
            let entry = runtime::js::retry("reading log stats", Duration::from_secs(30), || {
                self.kv.entry(KEY)
            })
            .await?;
            let (mut totals, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice::<LogStats>(&e.value).unwrap_or_default(),
                    Some(e.revision),
                ),
                _ => (LogStats::default(), None),
            };
            merge(&mut totals, delta);
            let value = serde_json::to_vec(&totals)?.into();
            let written = match revision {
                Some(rev) => self.kv.update(KEY, value, rev).await.is_ok(),
                None => self.kv.create(KEY, value).await.is_ok(),
            };
            if written {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::bail!("log stats stayed contended")
    }
}

pub(crate) fn merge(totals: &mut LogStats, delta: &LogStats) {
    totals.processed += delta.processed;
    totals.rejected += delta.rejected;
    for (k, v) in &delta.by_level {
        *totals.by_level.entry(k.clone()).or_insert(0) += v;
    }
    for (k, v) in &delta.by_service {
        *totals.by_service.entry(k.clone()).or_insert(0) += v;
    }
}
