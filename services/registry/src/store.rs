//! Registrations in KV bucket `registry`, key `<name>.<instance_id>`.

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use protocol::registry::{InstanceInfo, Registration};
pub(crate) use runtime::time::now_unix_ms as now_ms;

/// Healthy while the last heartbeat is within the TTL.
pub(crate) fn healthy(r: &Registration, now_ms: u64) -> bool {
    now_ms.saturating_sub(r.last_seen_ms) <= r.ttl_s.saturating_mul(1000)
}

pub(crate) fn info(r: &Registration, now_ms: u64) -> InstanceInfo {
    let last_seen =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.last_seen_ms) * 1_000_000)
            .map(runtime::time::format_rfc3339)
            .unwrap_or_default();
    InstanceInfo {
        instance_id: r.instance_id.clone(),
        version: r.version.clone(),
        healthy: healthy(r, now_ms),
        last_seen,
        endpoints: r.endpoints.clone(),
        metadata: r.metadata.clone(),
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Store {
    pub(crate) kv: kv::Store,
}

impl Store {
    pub(crate) async fn get(&self, key: &str) -> anyhow::Result<Option<Registration>> {
        Ok(self
            .kv
            .entry(key)
            .await?
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| serde_json::from_slice(&e.value).ok()))
    }

    pub(crate) async fn put(&self, key: &str, r: &Registration) -> anyhow::Result<()> {
        self.kv.put(key, serde_json::to_vec(r)?.into()).await?;
        Ok(())
    }

    pub(crate) async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.kv.delete(key).await?;
        Ok(())
    }

    /// Every registration with its revision (keys whose prefix is
    /// `<name>.` when `name` is given).
    pub(crate) async fn all(&self, name: Option<&str>) -> anyhow::Result<Vec<(Registration, u64)>> {
        let mut keys = match self.kv.keys().await {
            Ok(keys) => keys.boxed(),
            // An empty bucket has no keys to list.
            Err(err) if err.to_string().contains("no keys") => return Ok(Vec::new()),
            Err(err) => return Err(err.into()),
        };
        let prefix = name.map(|n| format!("{n}."));
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key?;
            if prefix
                .as_ref()
                .is_some_and(|p| !key.starts_with(p.as_str()))
            {
                continue;
            }
            if let Some(entry) = self.kv.entry(&key).await?
                && entry.operation == kv::Operation::Put
                && let Ok(r) = serde_json::from_slice::<Registration>(&entry.value)
            {
                out.push((r, entry.revision));
            }
        }
        out.sort_by(|a, b| (&a.0.name, &a.0.instance_id).cmp(&(&b.0.name, &b.0.instance_id)));
        Ok(out)
    }

    /// Removes instances silent for `remove_after_ttls` TTLs; a delete at the
    /// revision read cannot remove one that heartbeated meanwhile.
    pub(crate) async fn reap(&self, remove_after_ttls: u64) -> anyhow::Result<usize> {
        let now = now_ms();
        let mut removed = 0;
        for (r, revision) in self.all(None).await? {
            let limit = r
                .ttl_s
                .saturating_mul(1000)
                .saturating_mul(remove_after_ttls);
            if now.saturating_sub(r.last_seen_ms) > limit {
                let key = protocol::registry::key(&r.name, &r.instance_id);
                if self
                    .kv
                    .delete_expect_revision(&key, Some(revision))
                    .await
                    .is_ok()
                {
                    tracing::warn!(service = %r.name, instance = %r.instance_id, "removed an instance that stopped heartbeating");
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}
