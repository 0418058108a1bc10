//! One place builds the tracing subscriber: pretty on a terminal, one JSON
//! object per line when `log.format = "json"` (containers, log shippers).

use crate::settings::{LogFormat, LogSettings};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. `RUST_LOG`, when set, beats `log.level`.
/// Calling it again (tests start several services in one process) is a no-op.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|err| {
            // Not fatal: fall back to `info` and say why, once the subscriber exists.
            eprintln!(
                "invalid log.level {:?} ({err}); using \"info\"",
                settings.level
            );
            EnvFilter::new("info")
        });
    let registry = tracing_subscriber::registry().with(filter);
    let result = match settings.format {
        LogFormat::Pretty => registry.with(fmt::layer().with_target(false)).try_init(),
        LogFormat::Compact => registry
            .with(fmt::layer().compact().with_target(false))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            )
            .try_init(),
    };
    // Err only means a subscriber is already installed.
    let _ = result;
}
