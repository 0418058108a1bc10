//! Typed settings, layered by the `config` crate: built-in defaults, then an
//! optional file, then `SWITCHYARD__SECTION__KEY` environment variables, then
//! overrides given in code (command-line flags, tests).
//!
//! The file is `$SWITCHYARD_CONFIG` when set (it must then exist), else
//! `switchyard.toml` in the working directory if there is one. Lists in the
//! environment are comma-separated: `SWITCHYARD__NATS__URLS=nats://a:4222,nats://b:4222`.
//!
//! Service-specific sections (`[math]`, `[payments]`, ...) are read with
//! [`Settings::section`], so the runtime does not need to know every service.

use anyhow::Context as _;
pub use config::Value;
use config::{Config, ConfigError, Environment, File, FileFormat};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::path::PathBuf;
use std::time::Duration;

pub const ENV_PREFIX: &str = "SWITCHYARD";
pub const CONFIG_FILE_ENV: &str = "SWITCHYARD_CONFIG";
pub const DEFAULT_CONFIG_FILE: &str = "switchyard.toml";
/// Settings that are lists; in the environment they are comma-separated.
/// (The `config` crate must be told which keys are lists.)
pub const LIST_KEYS: [&str; 5] = [
    "nats.urls",
    "payments.currencies",
    "payments.backoff_ms",
    "email.backoff_ms",
    "stocks.symbols",
];

/// The environment variable of setting `key`: `payments.backoff_ms` →
/// `SWITCHYARD__PAYMENTS__BACKOFF_MS`.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}__{}", key.replace('.', "__").to_uppercase())
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub nats: NatsSettings,
    pub log: TelemetrySettings,
    pub otel: OtelSettings,
    pub service: ServiceSettings,
    pub jetstream: JetStreamSettings,
    /// Every layer, kept so service sections can be read later.
    #[serde(skip)]
    layers: Option<Config>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsSettings {
    /// Seed servers. Pass all cluster nodes; others are learned from the cluster.
    pub urls: Vec<String>,
    /// Client connection name shown by the server; defaults to the service name.
    pub name: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// A `.creds` file (JWT + nkey seed) for decentralized auth.
    pub creds_file: Option<PathBuf>,
    /// An nkey seed (`SU...`).
    pub nkey: Option<String>,
    /// CA bundle (PEM) to trust for the server's certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_required: bool,
    pub connect_timeout_ms: u64,
    /// Upper bound of the delay between reconnect attempts (it grows from 0).
    pub reconnect_delay_max_ms: u64,
    /// How often the client pings the server; two missed pongs mark the
    /// connection dead, so this bounds how fast a silent partition is noticed.
    pub ping_interval_ms: u64,
    /// Default timeout of requests made by this process.
    pub request_timeout_ms: u64,
    /// Try servers in the given order instead of shuffling them.
    pub retain_servers_order: bool,
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            urls: vec!["nats://127.0.0.1:4222".to_owned()],
            name: None,
            user: None,
            password: None,
            token: None,
            creds_file: None,
            nkey: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            connect_timeout_ms: 2_000,
            reconnect_delay_max_ms: 250,
            ping_interval_ms: 5_000,
            request_timeout_ms: 5_000,
            retain_servers_order: false,
        }
    }
}

impl NatsSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Multi-line, coloured: for a terminal.
    #[default]
    Pretty,
    /// One line per event.
    Compact,
    /// One JSON object per line: for containers and log shippers.
    Json,
}

/// `[log]`: how this process writes (and optionally ships) its own logs.
/// Not to be confused with the log-worker's store (`[logs]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TelemetrySettings {
    /// An `EnvFilter` directive such as `info` or `info,async_nats=warn`.
    /// `RUST_LOG`, when set, wins.
    pub level: String,
    pub format: LogFormat,
    /// Also publish this service's own logs to `logs.<service>.<level>`.
    pub ship: bool,
    /// Least severe level shipped (trace, debug, info, warn, error).
    pub ship_level: String,
}

/// `[otel]`: OpenTelemetry export of this process's spans.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OtelSettings {
    /// An OTLP/HTTP collector, such as `http://127.0.0.1:4318`: spans are
    /// exported (protobuf) to `<endpoint>/v1/traces`. Empty (the default):
    /// no export; trace context is still carried on every message.
    pub endpoint: String,
}

impl OtelSettings {
    /// The traces URL of [`OtelSettings::endpoint`], `None` when off.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.endpoint.trim().trim_end_matches('/');
        if base.is_empty() {
            None
        } else if base.ends_with("/v1/traces") {
            Some(base.to_owned())
        } else {
            Some(format!("{base}/v1/traces"))
        }
    }
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            level: "info,async_nats=warn".to_owned(),
            format: LogFormat::default(),
            ship: false,
            ship_level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceSettings {
    /// Largest request body an endpoint accepts; larger ones get 413 `too_large`.
    pub max_payload: usize,
    /// Requests handled at once per endpoint; more wait in the subscription.
    pub max_in_flight: usize,
    /// How long shutdown waits for in-flight requests before giving up.
    pub shutdown_grace_ms: u64,
    /// Extra metadata published in `$SRV.INFO` (e.g. `zone = "a"`).
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Registering with the registry (`service.registry.enabled`, `.ttl_s`).
    pub registry: crate::registration::RegistrationSettings,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            max_payload: 64 * 1024,
            max_in_flight: 1024,
            shutdown_grace_ms: 10_000,
            metadata: Default::default(),
            registry: Default::default(),
        }
    }
}

impl ServiceSettings {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct JetStreamSettings {
    /// Replicas of every stream and bucket; 1 is used against a lone server.
    pub replicas: usize,
    /// What a service does with its streams, buckets and consumers at start.
    pub assets: AssetMode,
}

impl Default for JetStreamSettings {
    fn default() -> Self {
        Self {
            replicas: 3,
            assets: AssetMode::default(),
        }
    }
}

/// What a service does with its streams, buckets and durable consumers at
/// start (`jetstream.assets`). A user allowed to create or update streams
/// can aim a stream's `sources`, `mirror` or `republish` (or a push
/// consumer's deliver subject) at anything in the account: nats-server
/// checks no permission there. So in the locked-down deployments only
/// `admin` creates assets (`<binary> provision`), and services `expect`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssetMode {
    /// Create what is missing and update what the service owns (any NATS
    /// without accounts: local development, tests).
    #[default]
    Create,
    /// Use them as provisioned: never create or change one; wait (and say
    /// what to run) while one is missing. The locked-down deployments.
    Expect,
    /// Create and update them, then exit without serving: what
    /// `<binary> provision` runs, as `admin`.
    Provision,
}

impl AssetMode {
    /// Whether this mode creates and updates assets.
    pub fn creates(self) -> bool {
        matches!(self, AssetMode::Create | AssetMode::Provision)
    }
}

impl Settings {
    /// Defaults, then the config file, then `SWITCHYARD__...` variables.
    pub fn load() -> anyhow::Result<Self> {
        Self::load_with(Vec::<(String, config::Value)>::new())
    }

    /// Like [`Settings::load`], then `overrides` (`("nats.urls", vec![..].into())`).
    pub fn load_with<K, I>(overrides: I) -> anyhow::Result<Self>
    where
        K: AsRef<str>,
        I: IntoIterator<Item = (K, config::Value)>,
    {
        let mut builder = Config::builder()
            .add_source(Config::try_from(&Settings::default()).context("encoding defaults")?);
        match std::env::var_os(CONFIG_FILE_ENV) {
            Some(path) => {
                let path = PathBuf::from(path);
                anyhow::ensure!(
                    path.is_file(),
                    "{CONFIG_FILE_ENV} names {}, which is not a file",
                    path.display()
                );
                builder = builder.add_source(File::from(path));
            }
            None => {
                builder = builder
                    .add_source(File::new(DEFAULT_CONFIG_FILE, FileFormat::Toml).required(false));
            }
        }
        let mut env = Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .try_parsing(true);
        for key in LIST_KEYS {
            env = env.with_list_parse_key(key);
        }
        builder = builder.add_source(env);
        // The environment source parses `200` or `true` as a scalar before it
        // looks at list keys: a list of one would not be a list. Lists from
        // the environment are therefore set here, always as lists.
        for key in LIST_KEYS {
            if let Ok(value) = std::env::var(env_name(key)) {
                let items: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect();
                builder = builder.set_override(key, items)?;
            }
        }
        for (key, value) in overrides {
            builder = builder.set_override(key.as_ref(), value)?;
        }
        let layers = builder.build().context("reading settings")?;
        let mut settings: Settings = layers
            .clone()
            .try_deserialize()
            .context("invalid settings")?;
        settings.layers = Some(layers);
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.nats.urls.is_empty(),
            "nats.urls must list at least one server"
        );
        anyhow::ensure!(
            self.service.max_in_flight > 0,
            "service.max_in_flight must be at least 1"
        );
        anyhow::ensure!(
            (1..=5).contains(&self.jetstream.replicas),
            "jetstream.replicas must be between 1 and 5, not {}",
            self.jetstream.replicas
        );
        Ok(())
    }

    /// A service's own section (`[math]`), or its `Default` when absent.
    pub fn section<T: DeserializeOwned + Default>(&self, key: &str) -> anyhow::Result<T> {
        let Some(layers) = &self.layers else {
            return Ok(T::default());
        };
        match layers.get::<T>(key) {
            Ok(value) => Ok(value),
            Err(ConfigError::NotFound(_)) => Ok(T::default()),
            Err(err) => Err(err).with_context(|| format!("invalid settings in section [{key}]")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(default)]
    struct Extra {
        delay_ms: u64,
        label: String,
    }

    #[test]
    fn defaults_then_overrides() {
        let s = Settings::load_with([
            (
                "nats.urls",
                config::Value::from(vec!["nats://a:1", "nats://b:2"]),
            ),
            ("jetstream.replicas", config::Value::from(1)),
            ("math.delay_ms", config::Value::from(25)),
        ])
        .unwrap();
        assert_eq!(s.nats.urls, ["nats://a:1", "nats://b:2"]);
        assert_eq!(s.jetstream.replicas, 1);
        assert_eq!(s.service.max_payload, 65536);
        let extra: Extra = s.section("math").unwrap();
        assert_eq!(extra.delay_ms, 25);
        let missing: Extra = s.section("nothing").unwrap();
        assert_eq!(missing, Extra::default());
    }

    #[test]
    fn a_bad_section_is_a_clear_error() {
        let s = Settings::load_with([("math.delay_ms", config::Value::from("soon"))]).unwrap();
        let err = s.section::<Extra>("math").unwrap_err();
        assert!(format!("{err:#}").contains("[math]"), "{err:#}");
    }

    #[test]
    fn invalid_values_are_refused() {
        let err =
            Settings::load_with([("jetstream.replicas", config::Value::from(9))]).unwrap_err();
        assert!(err.to_string().contains("replicas"), "{err:#}");
        let err = Settings::load_with([("log.format", config::Value::from("xml"))]).unwrap_err();
        assert!(format!("{err:#}").contains("xml"), "{err:#}");
    }

    /// Environment parsing is checked in a child process so this test's
    /// variables cannot leak into the others running in parallel.
    #[test]
    fn environment_variables_and_file() {
        if std::env::var_os("SWITCHYARD_SETTINGS_CHILD").is_some() {
            let s = Settings::load().unwrap();
            assert_eq!(s.nats.urls, ["nats://x:4222", "nats://y:4223"]);
            assert_eq!(s.nats.password.as_deref(), Some("1234"));
            assert_eq!(s.log.format, LogFormat::Json);
            assert_eq!(s.service.max_payload, 1000, "file value");
            assert_eq!(s.jetstream.replicas, 1, "env beats file");
            let extra: Extra = s.section("math").unwrap();
            assert_eq!(extra.label, "from-file");
            #[derive(Debug, Default, Deserialize)]
            #[serde(default)]
            struct Email {
                backoff_ms: Vec<u64>,
            }
            assert_eq!(s.section::<Email>("email").unwrap().backoff_ms, [100, 200]);
            #[derive(Debug, Default, Deserialize)]
            #[serde(default)]
            struct Payments {
                backoff_ms: Vec<u64>,
            }
            assert_eq!(
                s.section::<Payments>("payments").unwrap().backoff_ms,
                [250],
                "a list of one from the environment"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sy.toml");
        std::fs::write(
            &file,
            "[service]\nmax_payload = 1000\n[jetstream]\nreplicas = 3\n[math]\nlabel = \"from-file\"\n",
        )
        .unwrap();
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "settings::tests::environment_variables_and_file",
                "--nocapture",
            ])
            .env("SWITCHYARD_SETTINGS_CHILD", "1")
            .env(CONFIG_FILE_ENV, &file)
            .env("SWITCHYARD__NATS__URLS", "nats://x:4222,nats://y:4223")
            .env("SWITCHYARD__NATS__PASSWORD", "1234")
            .env("SWITCHYARD__LOG__FORMAT", "json")
            .env("SWITCHYARD__JETSTREAM__REPLICAS", "1")
            .env("SWITCHYARD__EMAIL__BACKOFF_MS", "100,200")
            .env("SWITCHYARD__PAYMENTS__BACKOFF_MS", "250")
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "child failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
