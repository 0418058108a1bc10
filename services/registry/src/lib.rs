//! The service registry.
//!
//! ```text
//! services.registry.register | heartbeat | deregister ─▶ KV registry (<name>.<instance_id>)
//! services.registry.lookup.<name> | list             ◀─ KV registry (healthy = heartbeat within TTL)
//! reaper: silent for remove_after_ttls × TTL ─▶ delete (at the revision read)
//! GET /metrics (Prometheus) ◀─ $SRV.STATS of every instance + registry health gauges
//! GET / (live dashboard)     ◀─ the same + stocks.>, logs.>, events.payment.> (read only)
//! ```

mod dashboard;
mod endpoints;
mod metrics;
mod settings;
mod store;

use async_nats::jetstream::{kv, stream};
use protocol::names::{buckets, services};
use protocol::subjects;
use runtime::{App, CancellationToken, Settings};
pub use settings::RegistrySettings;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const DESCRIPTION: &str = "Service registry with health, and Prometheus metrics of every service";

/// The registry's state, shared by the endpoints, the reaper and `/metrics`.
#[derive(Debug)]
pub(crate) struct Registry {
    pub(crate) client: async_nats::Client,
    /// For the stream and consumer gauges of `/metrics` (state only).
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) store: store::Store,
    pub(crate) settings: RegistrySettings,
    /// The live dashboard served next to `/metrics`.
    pub(crate) dashboard: dashboard::Dashboard,
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let registry: RegistrySettings = settings.section("registry")?;
    anyhow::ensure!(
        registry.remove_after_ttls >= 1,
        "registry.remove_after_ttls must be at least 1"
    );
    // Provisioning serves nothing (and must not take the port of a
    // registry that is running).
    let provisioning = settings.jetstream.assets == runtime::settings::AssetMode::Provision;
    let metrics = match registry.metrics_addr.as_str() {
        _ if provisioning => None,
        "" => None,
        addr => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen for /metrics on {addr}: {e}"))?,
        ),
    };
    let app = App::connect(services::REGISTRY, settings, shutdown).await?;
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
        app.assets(),
    )
    .await?;
    let state = Arc::new(Registry {
        client: app.client().clone(),
        js: app.jetstream.clone(),
        store: store::Store { kv },
        settings: registry,
        dashboard: dashboard::Dashboard::new(
            app.settings.nats.clone(),
            app.replicas(),
            app.maintenance(),
        ),
    });
    let mut service = app
        .service(VERSION, DESCRIPTION)
        .with_state(state)
        .endpoint("register", subjects::REGISTRY_REGISTER, endpoints::register)
        .endpoint(
            "heartbeat",
            subjects::REGISTRY_HEARTBEAT,
            endpoints::heartbeat,
        )
        .endpoint(
            "deregister",
            subjects::REGISTRY_DEREGISTER,
            endpoints::deregister,
        )
        .endpoint_with_subject(
            "lookup",
            &subjects::registry_lookup_all(),
            endpoints::lookup,
        )
        .endpoint("list", subjects::REGISTRY_LIST, endpoints::list)
        .task("reaper", reap);
    if let Some(listener) = metrics {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics and the dashboard at /");
        let url = format!("http://{addr}/metrics");
        let dashboard = format!("http://{addr}/");
        service = service
            .metadata(BTreeMap::from([
                ("metrics".to_owned(), url),
                ("dashboard".to_owned(), dashboard),
            ]))
            .task("metrics", move |state, stop| {
                metrics::serve(state, listener, stop)
            })
            .task("dashboard-feed", dashboard::feed)
            .task("dashboard-sampler", dashboard::sample);
    }
    service.serve().await
}

/// Removes instances silent for `remove_after_ttls` TTLs, every `reap_every_ms`.
async fn reap(state: Arc<Registry>, stop: CancellationToken) -> anyhow::Result<()> {
    let every = Duration::from_millis(state.settings.reap_every_ms.max(100));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(err) = state.store.reap(state.settings.remove_after_ttls).await {
            tracing::debug!(error = %format!("{err:#}"), "reaper pass failed");
        }
    }
}
