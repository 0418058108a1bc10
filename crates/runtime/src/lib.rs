//! What every Switchyard service does the same way, written once:
//! settings, telemetry, connecting to the cluster, micro endpoints with the
//! contract's errors, maintenance mode, and graceful shutdown.
//!
//! A service's `main.rs` is one call to [`main`]; its `lib.rs` has
//! `run(settings, shutdown)`, which connects an [`App`], builds the service
//! on it (state, endpoints, workers, tasks) and serves it: see [`app`] for
//! the lifecycle and `docs/WRITE_A_SERVICE.md` for a whole service.

pub mod app;
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
pub mod trace;
pub mod worker;

pub use app::{App, Builder, Stopped, is_stopped};
pub use micro::{Service, ServiceBuilder};
pub use settings::Settings;
pub use tokio_util::sync::CancellationToken;
/// For [`traced!`]: `tracing`, whatever the caller depends on.
#[doc(hidden)]
pub use tracing as __tracing;

/// The argument that makes a service binary provision instead of serve:
/// `payment-processor provision` creates or updates its streams, buckets
/// and consumers (connect as `admin`), then exits.
pub const PROVISION_ARG: &str = "provision";

/// Runs a service binary: loads settings, starts telemetry, installs the
/// signal handler, then calls `run`. `<binary> provision` runs it with
/// `jetstream.assets = provision` (see [`settings::AssetMode`]); any other
/// argument is refused.
pub async fn main<F, Fut>(service: &'static str, run: F) -> anyhow::Result<()>
where
    F: FnOnce(Settings, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut settings = Settings::load()?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => {}
        [PROVISION_ARG] => settings.jetstream.assets = settings::AssetMode::Provision,
        other => anyhow::bail!(
            "{service}: unknown arguments {other:?}; usage: {service} [{PROVISION_ARG}] \
             (settings come from SWITCHYARD__... variables and SWITCHYARD_CONFIG; see the README)"
        ),
    }
    telemetry::init_for(&settings.log, &settings.otel, service);
    let shutdown = shutdown::on_signal();
    tracing::info!(service, version = env!("CARGO_PKG_VERSION"), urls = ?settings.nats.urls, "starting");
    let result = run(settings, shutdown).await;
    // The spans of the last requests, before the process ends.
    telemetry::flush_async().await;
    match result {
        Ok(()) => {
            tracing::info!(service, "stopped");
            Ok(())
        }
        Err(err) if is_stopped(&err) => {
            tracing::info!(service, "stopped before it connected");
            Ok(())
        }
        Err(err) => {
            tracing::error!(service, error = %format!("{err:#}"), "failed");
            Err(err)
        }
    }
}
