//! One place builds the tracing subscriber: pretty on a terminal, one JSON
//! object per line when `log.format = "json"` (containers, log shippers).
//! Logs go to stderr, so a command's stdout stays its output.

use crate::settings::{LogFormat, TelemetrySettings};
use std::io::IsTerminal as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. `RUST_LOG`, when set, beats `log.level`.
/// Calling it again (tests start several services in one process) is a no-op.
pub fn init(settings: &TelemetrySettings) {
    init_for(settings, None);
}

/// Like [`init`], and with `log.ship` also ships `service`'s events to
/// `logs.<service>.<level>` once a connection exists (see [`crate::logship`]).
pub fn init_for(settings: &TelemetrySettings, service: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|err| {
            // Not fatal: fall back to `info` and say why.
            eprintln!(
                "invalid log.level {:?} ({err}); using \"info\"",
                settings.level
            );
            EnvFilter::new("info")
        });
    // Colour only on a terminal, and never when NO_COLOR is set.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let layer = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let ship = match service {
        Some(service) if settings.ship => {
            let level = settings
                .ship_level
                .parse::<LevelFilter>()
                .unwrap_or(LevelFilter::INFO);
            let (layer, shipper) = crate::logship::layer(service, crate::logship::CAPACITY);
            crate::logship::park(shipper);
            Some(layer.with_filter(level))
        }
        _ => None,
    };
    // The env filter is global (it gates the shipper too); the shipper has
    // its own level on top.
    let registry = tracing_subscriber::registry().with(filter).with(ship);
    let result = match settings.format {
        LogFormat::Pretty => registry.with(layer.with_target(false)).try_init(),
        LogFormat::Compact => registry.with(layer.compact().with_target(false)).try_init(),
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_current_span(false))
            .try_init(),
    };
    // Err only means a subscriber is already installed.
    let _ = result;
}
