//! One place builds the tracing subscriber: pretty on a terminal, one JSON
//! object per line when `log.format = "json"` (containers, log shippers).
//! Logs go to stderr, so a command's stdout stays its output.
//!
//! Under the log output sits an OpenTelemetry layer (always: it gives every
//! span the span context that [`crate::trace`] puts on outgoing messages).
//! Its spans are exported over OTLP/HTTP (protobuf, blocking client, batch
//! processor on its own thread) only when `otel.endpoint` is set; [`flush`]
//! sends what is buffered, and [`crate::main`] calls it on the way out.

use crate::settings::{LogFormat, OtelSettings, TelemetrySettings};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal as _;
use std::sync::OnceLock;
use std::time::Duration;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// The provider of the installed OpenTelemetry layer (for [`flush`]).
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// How long one export may take, and how long [`flush`] waits.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Targets whose spans and events never reach the OpenTelemetry layer: the
/// exporter's own HTTP stack (exporting its spans would export forever) and
/// the NATS client's internals.
const NOT_EXPORTED: &[&str] = &[
    "reqwest",
    "hyper",
    "hyper_util",
    "h2",
    "tower",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
    "opentelemetry_http",
    "async_nats",
];

/// Installs the global subscriber. `RUST_LOG`, when set, beats `log.level`.
/// Calling it again (tests start several services in one process) is a no-op.
pub fn init(settings: &TelemetrySettings) {
    install(settings, &OtelSettings::default(), "switchyard", false);
}

/// Like [`init`] for `service`: with `log.ship` also ships its events to
/// `logs.<service>.<level>` once a connection exists (see
/// [`crate::logship`]), and with `otel.endpoint` exports its spans as
/// OpenTelemetry service `service`.
pub fn init_for(settings: &TelemetrySettings, otel: &OtelSettings, service: &str) {
    install(settings, otel, service, true);
}

fn env_filter(settings: &TelemetrySettings, complain: bool) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|err| {
            // Not fatal: fall back to `info` and say why (once).
            if complain {
                eprintln!(
                    "invalid log.level {:?} ({err}); using \"info\"",
                    settings.level
                );
            }
            EnvFilter::new("info")
        })
}

fn install(settings: &TelemetrySettings, otel: &OtelSettings, service: &str, may_ship: bool) {
    if PROVIDER.get().is_some() {
        return;
    }
    // Colour only on a terminal, and never when NO_COLOR is set.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let layer = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let output = match settings.format {
        LogFormat::Pretty => layer.with_target(false).boxed(),
        LogFormat::Compact => layer.compact().with_target(false).boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
    }
    .with_filter(env_filter(settings, true));
    let ship = (may_ship && settings.ship).then(|| {
        let level = settings
            .ship_level
            .parse::<LevelFilter>()
            .unwrap_or(LevelFilter::INFO);
        let (layer, shipper) = crate::logship::layer(service, crate::logship::CAPACITY);
        crate::logship::park(shipper);
        // `log.level` gates the shipper too; it has its own level on top.
        layer
            .with_filter(env_filter(settings, false))
            .with_filter(level)
    });
    let (provider, export_error) = provider(otel, service);
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("switchyard"))
        .with_filter(
            Targets::new()
                .with_default(LevelFilter::INFO)
                .with_targets(NOT_EXPORTED.iter().map(|t| (*t, LevelFilter::OFF))),
        );
    let installed = tracing_subscriber::registry()
        .with(output)
        .with(ship)
        .with(spans)
        .try_init()
        .is_ok();
    // Err only means a subscriber is already installed: keep that one.
    if installed {
        let _ = PROVIDER.set(provider);
        if let Some(err) = export_error {
            tracing::warn!(error = %err, "OpenTelemetry export is off");
        } else if let Some(url) = otel.traces_url() {
            tracing::info!(%url, service, "exporting spans over OTLP/HTTP");
        }
    }
}

/// The tracer provider: with an OTLP/HTTP exporter when `otel.endpoint` is
/// set (and builds), without one otherwise (spans still get ids).
fn provider(otel: &OtelSettings, service: &str) -> (SdkTracerProvider, Option<String>) {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(url) = otel.traces_url() else {
        return (builder.build(), None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_headers(Default::default())
        .build();
    match exporter {
        Ok(exporter) => (builder.with_batch_exporter(exporter).build(), None),
        Err(err) => (
            builder.build(),
            Some(format!("otel.endpoint {url:?}: {err}")),
        ),
    }
}

/// Exports the spans still buffered and stops the exporter (a graceful
/// stop's last step). Blocks for up to a few seconds; a no-op without
/// export.
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
        let _ = provider.shutdown_with_timeout(EXPORT_TIMEOUT);
    }
}

/// [`flush`] from async code (on a blocking thread).
pub async fn flush_async() {
    let _ = tokio::task::spawn_blocking(flush).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_appends_the_signal_path_once() {
        let url = |e: &str| OtelSettings { endpoint: e.into() }.traces_url();
        assert_eq!(url(""), None);
        assert_eq!(url("  "), None);
        assert_eq!(
            url("http://127.0.0.1:4318").as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            url("http://c:4318/").as_deref(),
            Some("http://c:4318/v1/traces")
        );
        assert_eq!(
            url("http://c:4318/v1/traces").as_deref(),
            Some("http://c:4318/v1/traces")
        );
    }
}
