//! The `switchyard` command. Each subcommand lives in its own module.

mod accounts;
mod bench;
mod certs;
mod codegen;
mod email;
mod generated;
mod logs;
mod math;
mod pay;
mod role;
mod schemas;
mod secrets;
mod status;
mod stocks;
mod up;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use runtime::Settings;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Switchyard: NATS microservices in Rust"
)]
pub struct Cli {
    /// NATS servers for client commands (comma-separated). Default:
    /// `nats.urls` from settings (`SWITCHYARD__NATS__URLS`), else nats://127.0.0.1:4222.
    #[arg(long, global = true, value_delimiter = ',', env = "SWITCHYARD_SERVERS")]
    servers: Vec<String>,

    /// How long to wait for a reply.
    #[arg(long, global = true, default_value = "5s", value_parser = runtime::time::parse_duration)]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system locally: 3 NATS nodes and every service binary.
    Up(up::UpArgs),
    /// Run only the local 3-node NATS cluster (for `cargo run -p <service>`).
    Nats(up::NatsArgs),
    /// Call the math service: `switchyard math add 2 3`.
    Math(math::MathArgs),
    /// Mail: `switchyard email send --to .. --subject .. --body .. [--at ..]`.
    Email(email::EmailArgs),
    /// Logs: `switchyard logs tail [--service] [--level]`, `logs stats`, `logs query`.
    Logs(logs::LogsArgs),
    /// Payments: `switchyard pay <user> <amount>`, `pay status|dlq|replay`.
    Pay(pay::PayArgs),
    /// Seed 004's client roles on core NATS: `switchyard role publisher|subscriber|requester|replier`.
    Role(role::RoleArgs),
    /// Market data: `switchyard stocks watch [SYMBOL..]`, `stocks history SYMBOL`.
    Stocks(stocks::StocksArgs),
    /// List the running services from `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS`.
    Status(status::StatusArgs),
    /// Create or update every service's streams, buckets and consumers, as
    /// admin (each service binary with `provision`).
    Provision(up::ProvisionArgs),
    /// Turn site-wide maintenance mode on or off, or show it.
    Maintenance {
        #[arg(value_enum)]
        state: Option<MaintenanceState>,
    },
    /// Benchmarks: each service against a raw NATS baseline, in one run.
    Bench(bench::BenchArgs),
    /// (internal) the baselines of `switchyard bench`.
    #[command(hide = true)]
    BenchHelper(bench::HelperArgs),
    /// Write the JSON Schemas of the message types (or check them).
    Schemas(schemas::SchemasArgs),
    /// Write the NATS users of the compose and Helm deployments (or check them).
    Accounts(accounts::AccountsArgs),
    /// Generate the deployment's passwords into an ignored env file (`.env`), once.
    Secrets(secrets::SecretsArgs),
    /// (internal) try a TCP connection to each address and print what happened:
    /// the compose test's reachability probe inside the stack's networks.
    #[command(hide = true)]
    ProbeTcp {
        /// host:port addresses.
        addrs: Vec<String>,
        /// How long each attempt may take.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Make a local CA and the NATS nodes' TLS certificate (`.switchyard/certs`), once.
    Certs(certs::CertsArgs),
    /// Write the Python client's constants and the docs' subject table (or check them).
    Codegen(codegen::CodegenArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum MaintenanceState {
    On,
    Off,
}

/// Runs a parsed command line; errors are printed, not returned.
pub async fn run(cli: Cli) -> ExitCode {
    let (servers, timeout) = (&cli.servers, cli.timeout);
    let result = match cli.command {
        Command::Up(args) => up::up(args).await,
        Command::Nats(args) => up::nats_only(args).await,
        Command::Math(args) => traced("math", math::run(servers, timeout, args)).await,
        Command::Email(args) => traced("email", email::run(servers, timeout, args)).await,
        Command::Logs(args) => traced("logs", logs::run(servers, timeout, args)).await,
        Command::Pay(args) => traced("pay", pay::run(servers, timeout, args)).await,
        Command::Stocks(args) => traced("stocks", stocks::run(servers, timeout, args)).await,
        Command::Role(args) => role::run(servers, timeout, args).await,
        Command::Status(args) => traced("status", status::run(servers, timeout, args)).await,
        Command::Provision(args) => up::provision(servers, args).await,
        Command::Maintenance { state } => {
            traced("maintenance", maintenance(servers, timeout, state)).await
        }
        Command::Schemas(args) => schemas::run(args),
        Command::Accounts(args) => accounts::run(args),
        Command::Codegen(args) => codegen::run(args),
        Command::Secrets(args) => secrets::run(args),
        Command::Certs(args) => certs::run(args),
        Command::ProbeTcp { addrs, timeout_ms } => {
            probe_tcp(&addrs, Duration::from_millis(timeout_ms)).await;
            Ok(())
        }
        Command::Bench(args) => bench::run(&cli.servers, args).await,
        Command::BenchHelper(args) => bench::helper::run(&cli.servers, args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a client command as a new trace: one root span (`switchyard
/// <verb>`, exported when `otel.endpoint` is set) that every request and
/// publish it makes continues; its trace id is printed on stderr
/// (`trace <id>`), so its messages, events and log records can be found
/// (`switchyard logs query --trace <id>`).
async fn traced<F>(verb: &'static str, command: F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    use tracing::Instrument as _;
    let settings = Settings::load().unwrap_or_default();
    // The CLI's own logs stay quiet (warnings and errors) unless RUST_LOG says otherwise.
    let log = runtime::settings::TelemetrySettings {
        level: "warn".to_owned(),
        ship: false,
        ..settings.log.clone()
    };
    runtime::telemetry::init_for(&log, &settings.otel, "switchyard-cli");
    let root = runtime::traced!(
        "command",
        &runtime::trace::Carrier::default(),
        "client",
        otel.name = %format!("switchyard {verb}"),
    );
    let trace_id = root.trace_id().to_owned();
    let span = root.span().clone();
    let result = runtime::trace::scope(root, command).instrument(span).await;
    eprintln!("trace {trace_id}");
    runtime::telemetry::flush_async().await;
    result
}

/// The NATS user a command needs in a locked-down deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Calls, payments, logs, reading state: `client`.
    Client,
    /// Operations (maintenance on/off, dead letters, replays,
    /// provisioning): `admin`.
    Admin,
    /// Seed 004's roles (`switchyard role`): `demo`.
    Demo,
}

impl Role {
    fn user(self) -> &'static str {
        match self {
            Role::Client => protocol::accounts::CLIENT,
            Role::Admin => protocol::accounts::ADMIN,
            Role::Demo => protocol::accounts::DEMO,
        }
    }

    fn password_env(self) -> &'static str {
        match self {
            Role::Client => protocol::accounts::CLIENT_PASSWORD_ENV,
            Role::Admin => protocol::accounts::ADMIN_PASSWORD_ENV,
            Role::Demo => protocol::accounts::DEMO_PASSWORD_ENV,
        }
    }
}

/// Where the client commands look for passwords: `SWITCHYARD_SECRETS`,
/// else `.env` in the current directory (what `switchyard secrets`,
/// `switchyard up` and `just docker-up` write).
pub(crate) const SECRETS_ENV: &str = "SWITCHYARD_SECRETS";

fn secrets_file() -> std::path::PathBuf {
    std::env::var_os(SECRETS_ENV)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| secrets::DEFAULT_FILE.into())
}

/// Settings for a client command, `--servers` winning over the layers.
fn client_settings(servers: &[String]) -> anyhow::Result<Settings> {
    client_settings_as(servers, Role::Client)
}

/// Settings for a command that needs `role`. Credentials: an explicit
/// `nats.user` (`SWITCHYARD__NATS__USER`, a config file) is used as it is,
/// unless it is `client` and the command needs `admin` (a clear error);
/// otherwise the role's password from the secrets file, if it has one;
/// otherwise none (a cluster without accounts, `switchyard up --no-auth`).
fn client_settings_as(servers: &[String], role: Role) -> anyhow::Result<Settings> {
    use runtime::settings::Value;
    let mut overrides = Vec::new();
    if !servers.is_empty() {
        overrides.push(("nats.urls", Value::from(servers.to_vec())));
    }
    let layered = Settings::load()?;
    let explicit = layered.nats.user.as_deref().filter(|u| !u.is_empty());
    if explicit.is_none() {
        let file = secrets_file();
        if let Some(secrets) = secrets::load(&file)?
            && let Some(password) = secrets.get(role.password_env())
        {
            overrides.push(("nats.user", Value::from(role.user())));
            overrides.push(("nats.password", Value::from(password.clone())));
        }
    } else if role == Role::Admin && explicit == Some(protocol::accounts::CLIENT) {
        anyhow::bail!(
            "this command needs the admin role, and SWITCHYARD__NATS__USER is `client`: \
             unset it to use ADMIN_PASSWORD from {} ({SECRETS_ENV}), or set the admin user and password",
            secrets_file().display()
        );
    }
    Settings::load_with(overrides)
}

/// Connects for a one-shot command as `client`, failing fast with a hint.
async fn connect(servers: &[String]) -> anyhow::Result<(Settings, async_nats::Client)> {
    connect_as(servers, Role::Client).await
}

/// Connects for a one-shot command that needs `role`.
async fn connect_as(
    servers: &[String],
    role: Role,
) -> anyhow::Result<(Settings, async_nats::Client)> {
    let settings = client_settings_as(servers, role)?;
    let token = runtime::CancellationToken::new();
    let connecting = runtime::nats::connect(&settings.nats, "switchyard-cli", &token);
    match tokio::time::timeout(Duration::from_secs(3), connecting).await {
        Ok(Ok(Some(conn))) => Ok((settings, conn.client)),
        Ok(Err(err)) if format!("{err:#}").to_lowercase().contains("authorization") => Err(err
            .context(format!(
                "NATS refused the credentials (user {:?}): this command needs the {} role; \
                 its password is {} in {} (`switchyard secrets` makes it)",
                settings.nats.user,
                role.user(),
                role.password_env(),
                secrets_file().display()
            ))),
        Ok(Err(err)) => Err(err),
        Ok(Ok(None)) | Err(_) => anyhow::bail!(
            "cannot reach NATS at {}: is `just up` running? (or pass --servers)",
            settings.nats.urls.join(", ")
        ),
    }
}

async fn maintenance(
    servers: &[String],
    timeout: Duration,
    state: Option<MaintenanceState>,
) -> anyhow::Result<()> {
    let role = if state.is_some() {
        Role::Admin
    } else {
        Role::Client
    };
    let (settings, client) = connect_as(servers, role).await?;
    let js = async_nats::jetstream::new(client.clone());
    let replicas = runtime::nats::effective_replicas(&client, settings.jetstream.replicas);
    if let Some(state) = state {
        let on = matches!(state, MaintenanceState::On);
        tokio::time::timeout(timeout, runtime::maintenance::set(&js, replicas, on))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the maintenance flag was not written within {timeout:?}: on a cluster with \
                     accounts this needs the admin role (ADMIN_PASSWORD in {}), and a user \
                     without it is refused",
                    secrets_file().display()
                )
            })??;
    }
    let store =
        runtime::maintenance::config_bucket(&js, replicas, runtime::settings::AssetMode::Expect)
            .await?;
    let on = store
        .get(protocol::names::keys::SITE_MAINTENANCE)
        .await
        .context("reading the maintenance flag")?
        .is_some_and(|v| protocol::names::maintenance_flag(&v));
    say(format_args!(
        "maintenance: {}",
        if on { "on" } else { "off" }
    ));
    Ok(())
}

/// One line per address: `<addr> open`, `<addr> refused: <error>` or
/// `<addr> timeout after <ms> ms`.
async fn probe_tcp(addrs: &[String], limit: Duration) {
    for addr in addrs {
        match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr.as_str())).await {
            Ok(Ok(_)) => say(format_args!("{addr} open")),
            Ok(Err(e)) => say(format_args!("{addr} refused: {e}")),
            Err(_) => say(format_args!(
                "{addr} timeout after {} ms",
                limit.as_millis()
            )),
        }
    }
}

/// Prints one line to stdout (the CLI's output, as opposed to its logs).
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            runtime::time::parse_duration("5s"),
            Ok(Duration::from_secs(5))
        );
        assert_eq!(
            runtime::time::parse_duration("250ms"),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(
            runtime::time::parse_duration("2"),
            Ok(Duration::from_secs(2))
        );
        assert_eq!(
            runtime::time::parse_duration("1m"),
            Ok(Duration::from_secs(60))
        );
        assert!(runtime::time::parse_duration("soon").is_err());
        assert!(runtime::time::parse_duration("5h").is_err());
    }

    #[test]
    fn cli_parses() {
        Cli::command_for_test();
        let cli = Cli::try_parse_from([
            "switchyard",
            "math",
            "add",
            "-2",
            "3",
            "--servers",
            "nats://a:1,nats://b:2",
        ])
        .unwrap();
        assert_eq!(cli.servers, ["nats://a:1", "nats://b:2"]);
    }

    impl Cli {
        fn command_for_test() {
            <Cli as clap::CommandFactory>::command().debug_assert();
        }
    }
}
