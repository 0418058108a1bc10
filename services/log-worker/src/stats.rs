//! Cluster-wide counters in KV `log-stats`: each worker owns the key
//! `totals.<worker>` (updated once per batch, so workers never contend), and
//! reading the stats sums every key, so every worker answers the same numbers.

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use protocol::logs::LogStats;
use std::time::Duration;

const PREFIX: &str = "totals.";

#[derive(Debug, Clone)]
pub(crate) struct Stats {
    kv: kv::Store,
    key: String,
}

impl Stats {
    pub(crate) fn new(kv: kv::Store) -> Self {
        Self {
            kv,
            key: format!("{PREFIX}{}", nuid::next()),
        }
    }

    /// The sum over every worker's key.
    pub(crate) async fn read(&self) -> anyhow::Result<LogStats> {
        let mut totals = LogStats::default();
        let mut keys = match self.kv.keys().await {
            Ok(keys) => keys.boxed(),
            Err(err) if err.to_string().contains("no keys") => return Ok(totals),
            Err(err) => return Err(err.into()),
        };
        while let Some(key) = keys.next().await {
            let key = key?;
            if !key.starts_with(PREFIX) {
                continue;
            }
            if let Some(entry) = self.kv.entry(&key).await?
                && entry.operation == kv::Operation::Put
                && let Ok(part) = serde_json::from_slice::<LogStats>(&entry.value)
            {
                merge(&mut totals, &part);
            }
        }
        Ok(totals)
    }

    /// Adds `delta` to this worker's counters.
    pub(crate) async fn add(&self, delta: &LogStats) -> anyhow::Result<()> {
        if delta.processed == 0 && delta.rejected == 0 {
            return Ok(());
        }
        for _ in 0..10 {
            let entry = runtime::js::retry("reading log stats", Duration::from_secs(30), || {
                self.kv.entry(&self.key)
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
                Some(rev) => self.kv.update(&self.key, value, rev).await.is_ok(),
                None => self.kv.create(&self.key, value).await.is_ok(),
            };
            if written {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::bail!("log stats could not be written")
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
