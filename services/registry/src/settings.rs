//! `[registry]` settings.

use serde::{Deserialize, Serialize};

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
