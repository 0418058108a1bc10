//! What every Switchyard service does the same way, written once:
//! settings, telemetry, connecting to the cluster, micro endpoints with the
//! contract's errors, maintenance mode, and graceful shutdown.
//!
//! A service's `main.rs` is one call to [`main`]; its `lib.rs` has
//! `run(settings, shutdown)` which starts an [`App`], adds endpoints, and
//! hands over to [`App::serve`].

pub mod client;
pub mod js;
pub mod logship;
pub mod maintenance;
pub mod micro;
pub mod nats;
pub mod registration;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod worker;

pub use micro::{Service, ServiceBuilder};
pub use settings::Settings;
pub use tokio_util::sync::CancellationToken;

use async_nats::jetstream;
use std::time::Duration;
use tokio::sync::watch;

/// How long closing the connection may take after the services stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a service binary: loads settings, starts telemetry, installs the
/// signal handler, then calls `run`.
pub async fn main<F, Fut>(service: &'static str, run: F) -> anyhow::Result<()>
where
    F: FnOnce(Settings, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings = Settings::load()?;
    telemetry::init_for(&settings.log, Some(service));
    let shutdown = shutdown::on_signal();
    tracing::info!(service, version = env!("CARGO_PKG_VERSION"), urls = ?settings.nats.urls, "starting");
    let result = run(settings, shutdown).await;
    match &result {
        Ok(()) => tracing::info!(service, "stopped"),
        Err(err) => tracing::error!(service, error = %format!("{err:#}"), "failed"),
    }
    result
}

/// A connected service: the client, JetStream, the maintenance flag and the
/// shutdown token, ready to start micro services on.
#[derive(Debug)]
pub struct App {
    name: String,
    pub settings: Settings,
    connection: nats::Connection,
    pub jetstream: jetstream::Context,
    shutdown: CancellationToken,
    background: CancellationToken,
    maintenance: watch::Receiver<bool>,
    replicas: usize,
}

impl App {
    /// Connects (waiting for the cluster as long as it takes) and starts
    /// watching the maintenance flag. `Ok(None)`: shutdown came first.
    pub async fn start(
        name: &str,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Option<App>> {
        let Some(connection) = nats::connect(&settings.nats, name, &shutdown).await? else {
            return Ok(None);
        };
        let jetstream = jetstream::new(connection.client.clone());
        logship::attach(&connection.client);
        let replicas = nats::effective_replicas(&connection.client, settings.jetstream.replicas);
        let background = CancellationToken::new();
        let (maintenance, _task) = maintenance::watch(
            connection.client.clone(),
            jetstream.clone(),
            replicas,
            connection.reconnects(),
            background.clone(),
        );
        Ok(Some(App {
            name: name.to_owned(),
            settings,
            connection,
            jetstream,
            shutdown,
            background,
            maintenance,
            replicas,
        }))
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.connection.client
    }

    /// Replicas for streams and buckets (1 against a lone server).
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The maintenance flag, as it is now and as it changes.
    pub fn maintenance(&self) -> watch::Receiver<bool> {
        self.maintenance.clone()
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// A micro service named after this app, wired to the settings' limits
    /// and the maintenance flag.
    pub fn service(&self, version: &str, description: &str) -> ServiceBuilder {
        let builder = ServiceBuilder::new(self.client().clone(), &self.name, version)
            .description(description)
            .metadata(self.settings.service.metadata.clone())
            .max_payload(self.settings.service.max_payload)
            .max_in_flight(self.settings.service.max_in_flight)
            .maintenance(self.maintenance());
        let registry = self.settings.service.registry.clone();
        if registry.enabled {
            builder.register(registry)
        } else {
            builder
        }
    }

    /// Waits for shutdown, then stops the services (finishing in-flight
    /// requests), stops background work and drains the connection.
    pub async fn serve(self, services: Vec<Service>) -> anyhow::Result<()> {
        self.shutdown.cancelled().await;
        let grace = self.settings.service.shutdown_grace();
        let stops = services.into_iter().map(|s| s.shutdown(grace));
        let all_finished = futures::future::join_all(stops)
            .await
            .into_iter()
            .all(|f| f);
        self.background.cancel();
        self.connection.drain(DRAIN_TIMEOUT).await;
        anyhow::ensure!(
            all_finished,
            "some requests were still running after the {grace:?} shutdown grace period"
        );
        Ok(())
    }
}
