//! Maintenance mode: every service watches KV `config` / `site_maintenance`
//! (a push watch, re-established after any error or reconnect) and exposes
//! the flag as a `watch::Receiver<bool>`.

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use protocol::names::{buckets, keys, maintenance_flag};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Opens bucket `config`, creating it (with `replicas`) when missing.
pub async fn config_bucket(js: &jetstream::Context, replicas: usize) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(buckets::CONFIG).await {
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: buckets::CONFIG.to_owned(),
            description: "Switchyard site-wide flags (site_maintenance)".to_owned(),
            history: 5,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another service created it first, or with other settings: use it.
        Err(err) => js
            .get_key_value(buckets::CONFIG)
            .await
            .with_context(|| format!("creating KV bucket {:?}: {err}", buckets::CONFIG)),
    }
}

/// Turns maintenance mode on or off for the whole site.
pub async fn set(js: &jetstream::Context, replicas: usize, on: bool) -> anyhow::Result<()> {
    let store = config_bucket(js, replicas).await?;
    let value = if on { "true" } else { "false" };
    store
        .put(keys::SITE_MAINTENANCE, value.into())
        .await
        .context("writing the maintenance flag")?;
    Ok(())
}

/// Watches the flag until `stop` fires. The receiver starts at `false`.
pub fn watch(
    js: jetstream::Context,
    replicas: usize,
    stop: CancellationToken,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut delay = Duration::from_millis(100);
        loop {
            let attempt = follow(&js, replicas, &tx, &mut delay);
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = attempt => outcome,
            };
            match outcome {
                Ok(()) => tracing::debug!("maintenance watch ended; watching again"),
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "maintenance watch failed; retrying")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    });
    (rx, task)
}

async fn follow(
    js: &jetstream::Context,
    replicas: usize,
    tx: &watch::Sender<bool>,
    delay: &mut Duration,
) -> anyhow::Result<()> {
    let store = config_bucket(js, replicas).await?;
    // With history: the current value arrives first, so a flag that changed
    // while we were disconnected is picked up when the watch is re-made.
    let mut entries = store
        .watch_with_history(keys::SITE_MAINTENANCE)
        .await
        .context("watching the maintenance flag")?;
    *delay = Duration::from_millis(100);
    while let Some(entry) = entries.next().await {
        let entry = entry.context("reading the maintenance watch")?;
        let on = entry.operation == kv::Operation::Put && maintenance_flag(&entry.value);
        tx.send_if_modified(|current| {
            let changed = *current != on;
            if changed {
                tracing::warn!(maintenance = on, "maintenance mode changed");
            }
            *current = on;
            changed
        });
    }
    Ok(())
}
