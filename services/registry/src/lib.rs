//! The service registry.
//!
//! ```text
//! services.registry.register | heartbeat | deregister ─▶ KV registry (<name>.<instance_id>)
//! services.registry.lookup.<name> | list             ◀─ KV registry (healthy = heartbeat within TTL)
//! reaper: silent for remove_after_ttls × TTL ─▶ delete (at the revision read)
//! GET /metrics (Prometheus) ◀─ $SRV.STATS of every instance + registry health gauges
//! ```

mod endpoints;
mod metrics;
mod store;

use async_nats::jetstream::{kv, stream};
use protocol::names::{buckets, services};
use runtime::{App, CancellationToken, Settings};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const DESCRIPTION: &str = "Service registry with health, and Prometheus metrics of every service";

/// `[registry]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistrySettings {
    /// Where `/metrics` listens (`host:port`); empty disables it.
    pub metrics_addr: String,
    /// TTL given to registrations that do not ask for one.
    pub default_ttl_s: u64,
    /// An instance silent this many TTLs is removed (after being unhealthy).
    pub remove_after_ttls: u64,
    /// How often the reaper looks.
    pub reap_every_ms: u64,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            metrics_addr: "0.0.0.0:9464".into(),
            default_ttl_s: 15,
            remove_after_ttls: 3,
            reap_every_ms: 1_000,
        }
    }
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let registry: RegistrySettings = settings.section("registry")?;
    anyhow::ensure!(
        registry.remove_after_ttls >= 1,
        "registry.remove_after_ttls must be at least 1"
    );
    let Some(app) = App::start(services::REGISTRY, settings, shutdown).await? else {
        return Ok(());
    };
    let kv = runtime::js::ensure_kv(
        &app.jetstream,
        kv::Config {
            bucket: buckets::REGISTRY.into(),
            description: "Registered service instances".into(),
            history: 1,
            num_replicas: app.replicas(),
            storage: stream::StorageType::File,
            ..Default::default()
        },
    )
    .await?;
    let store = store::Store { kv };

    let mut metadata = std::collections::BTreeMap::new();
    let metrics = if registry.metrics_addr.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&registry.metrics_addr)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen for /metrics on {}: {e}",
                    registry.metrics_addr
                )
            })?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
        metadata.insert("metrics".to_owned(), format!("http://{addr}/metrics"));
        Some(tokio::spawn(metrics::serve(
            listener,
            app.client().clone(),
            store.clone(),
            app.shutdown_token().clone(),
        )))
    };
    let reaper = tokio::spawn(reap(
        store.clone(),
        registry.clone(),
        app.shutdown_token().clone(),
    ));
    let service = endpoints::service(&app, store, registry)
        .metadata(metadata)
        .start()
        .await?;
    app.shutdown_token().cancelled().await;
    let _ = reaper.await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    app.serve(vec![service]).await
}

async fn reap(store: store::Store, settings: RegistrySettings, stop: CancellationToken) {
    let every = Duration::from_millis(settings.reap_every_ms.max(100));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(err) = store.reap(settings.remove_after_ttls).await {
            tracing::debug!(error = %format!("{err:#}"), "reaper pass failed");
        }
    }
}
