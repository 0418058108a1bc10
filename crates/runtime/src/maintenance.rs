//! Maintenance mode: every service follows KV `config` / `site_maintenance`
//! and exposes the flag as a `watch::Receiver<bool>`.
//!
//! How: a core NATS subscription on the key's own subject
//! (`$KV.config.site_maintenance`), where every put and delete of the key is
//! published. It is pushed, needs no JetStream consumer (so nothing has to
//! be re-placed when a node dies), and the client re-subscribes by itself
//! after a reconnect. The current value is read from the bucket at start
//! and after every reconnect, to catch changes made while we were away; a
//! read is dropped if a pushed change arrived while it was in flight (the
//! push is at least as new).

use crate::settings::AssetMode;
use async_nats::Client;
use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use protocol::names::{buckets, keys, maintenance_flag};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The subject a KV put or delete of the flag is published on.
pub fn flag_subject() -> String {
    protocol::subjects::kv_key(buckets::CONFIG, keys::SITE_MAINTENANCE)
}

/// Opens bucket `config`, creating it (with `replicas`) when missing and
/// `mode` creates.
pub async fn config_bucket(
    js: &jetstream::Context,
    replicas: usize,
    mode: AssetMode,
) -> anyhow::Result<kv::Store> {
    crate::js::ensure_kv(
        js,
        kv::Config {
            bucket: buckets::CONFIG.to_owned(),
            description: "Switchyard site-wide flags (site_maintenance)".to_owned(),
            history: 5,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        },
        mode,
    )
    .await
}

/// Turns maintenance mode on or off for the whole site.
pub async fn set(js: &jetstream::Context, replicas: usize, on: bool) -> anyhow::Result<()> {
    let store = config_bucket(js, replicas, AssetMode::Create).await?;
    let value = if on { "true" } else { "false" };
    crate::js::retry(
        "writing the maintenance flag",
        Duration::from_secs(30),
        || store.put(keys::SITE_MAINTENANCE, value.into()),
    )
    .await?;
    Ok(())
}

/// Follows the flag until `stop` fires. The receiver starts at `false`.
/// `reconnects` changes whenever the connection comes back.
pub fn watch(
    client: Client,
    js: jetstream::Context,
    replicas: usize,
    mode: AssetMode,
    reconnects: watch::Receiver<u64>,
    stop: CancellationToken,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            () = follow(client, js, replicas, mode, tx, reconnects) => {}
        }
    });
    (rx, task)
}

type Read = Pin<Box<dyn Future<Output = bool> + Send>>;

async fn follow(
    client: Client,
    mut js: jetstream::Context,
    replicas: usize,
    mode: AssetMode,
    tx: watch::Sender<bool>,
    mut reconnects: watch::Receiver<u64>,
) {
    // While a stream leader is being elected, API calls get no answer:
    // retrying every second beats waiting out the 5 s default.
    js.set_timeout(Duration::from_secs(1));
    let mut pushes = loop {
        match client.subscribe(flag_subject()).await {
            Ok(sub) => break sub,
            Err(err) => {
                tracing::warn!(error = %err, "cannot subscribe to the maintenance flag yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let apply = |on: bool, source: &str| {
        tx.send_if_modified(|current| {
            let changed = *current != on;
            if changed {
                tracing::warn!(maintenance = on, source, "maintenance mode changed");
            }
            *current = on;
            changed
        });
    };
    let mut pushed = 0u64;
    let mut read: Option<(u64, Read)> =
        Some((pushed, Box::pin(read_current(js.clone(), replicas, mode))));
    reconnects.borrow_and_update();
    loop {
        let read_done = async {
            match read.as_mut() {
                Some((_, fut)) => fut.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            on = read_done => {
                if let Some((started_at, _)) = read.take()
                    && started_at == pushed
                {
                    apply(on, "read");
                }
            }
            message = pushes.next() => {
                let Some(message) = message else { return };
                pushed += 1;
                let deleted = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
                apply(!deleted && maintenance_flag(&message.payload), "push");
            }
            changed = reconnects.changed() => {
                if changed.is_err() {
                    return;
                }
                tracing::debug!("reconnected: reading the maintenance flag again");
                read = Some((pushed, Box::pin(read_current(js.clone(), replicas, mode))));
            }
        }
    }
}

/// The flag's current value, retried until it can be read.
async fn read_current(js: jetstream::Context, replicas: usize, mode: AssetMode) -> bool {
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt =
            async {
                let store = config_bucket(&js, replicas, mode).await?;
                let entry = store.entry(keys::SITE_MAINTENANCE).await?;
                anyhow::Ok(entry.is_some_and(|e| {
                    e.operation == kv::Operation::Put && maintenance_flag(&e.value)
                }))
            };
        match attempt.await {
            Ok(on) => return on,
            Err(err) => {
                tracing::debug!(error = %format!("{err:#}"), "reading the maintenance flag; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}
