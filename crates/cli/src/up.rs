//! `switchyard up` and `switchyard nats`: the whole system on one machine,
//! without Docker. Three nats-server nodes (client ports 4222-4224, routes,
//! JetStream under `.switchyard/nats/`), then every service binary found next
//! to this one, each supervised: restarted with backoff when it crashes,
//! logs in `.switchyard/logs/`, stopped with SIGTERM on Ctrl-C.

use anyhow::Context as _;
use protocol::micro::{PingResponse, Verb};
use protocol::names::services;
use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use testkit::{Cluster, ClusterOptions};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const NODES: u16 = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct NatsArgs {
    /// First client port; the nodes use it and the next two.
    #[arg(long, default_value_t = 4222)]
    port: u16,
    /// First cluster (route) port.
    #[arg(long, default_value_t = 6222)]
    cluster_port: u16,
    /// First monitoring (HTTP) port.
    #[arg(long, default_value_t = 8222)]
    http_port: u16,
    /// Where JetStream data, logs, PID files, the mail outbox and the log
    /// store go.
    #[arg(long, default_value = ".switchyard")]
    dir: PathBuf,
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Port of the registry's Prometheus /metrics and live dashboard (/).
    #[arg(long, default_value_t = 9464)]
    metrics_port: u16,
    /// Start only these services (default: every service binary found).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Run without accounts (anyone may do anything): for a quick demo
    /// only. By default the cluster has the deployments' users, with the
    /// passwords of --secrets, and services run as their own users.
    #[arg(long)]
    no_auth: bool,
    /// Refuse connections without credentials. By default (with accounts)
    /// they are the `guest` user, which may do what `client` does: the
    /// seeds' snippets connect to nats://localhost:4222 with none. Local
    /// only; the compose and k8s deployments have no guests.
    #[arg(long)]
    no_guests: bool,
    /// The env file with the passwords (made on first use, like
    /// `switchyard secrets`).
    #[arg(long, default_value = crate::secrets::DEFAULT_FILE, env = crate::SECRETS_ENV)]
    secrets: PathBuf,
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ProvisionArgs {
    /// Provision only these services (default: every service binary found).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// How long one service's provisioning may take.
const PROVISION_TIMEOUT: Duration = Duration::from_secs(120);

/// The service binaries next to this one, `only` filtering by name.
fn service_binaries(only: &[String]) -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .context("cannot tell where the switchyard binary is")?;
    if let Some(unknown) = only.iter().find(|o| !services::ALL.contains(&o.as_str())) {
        anyhow::bail!(
            "unknown service {unknown:?}; services are {}",
            services::ALL.join(", ")
        );
    }
    let found: Vec<(&'static str, PathBuf)> = services::ALL
        .iter()
        .filter(|name| only.is_empty() || only.iter().any(|o| o == *name))
        .filter_map(|name| {
            let path = bin_dir.join(services::binary(name)?);
            path.is_file().then_some((*name, path))
        })
        .collect();
    anyhow::ensure!(
        !found.is_empty(),
        "no service binaries next to {}: run `cargo build --workspace` (or `just up`)",
        bin_dir.display()
    );
    Ok(found)
}

/// Runs `<binary> provision` for each service, one after the other, with
/// `env` (the cluster's URLs and the admin user), each bounded by
/// [`PROVISION_TIMEOUT`]; its output goes to `log` (or is inherited).
async fn provision_services(
    binaries: &[(&'static str, PathBuf)],
    env: &[(String, String)],
    log: Option<&Path>,
) -> anyhow::Result<()> {
    for (name, path) in binaries {
        let started = Instant::now();
        let mut command = tokio::process::Command::new(path);
        command
            .arg(runtime::PROVISION_ARG)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(log) = log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?;
            command.stdout(file.try_clone()?).stderr(file);
        }
        let status = tokio::time::timeout(PROVISION_TIMEOUT, command.status())
            .await
            .with_context(|| format!("provisioning {name} took longer than {PROVISION_TIMEOUT:?}"))?
            .with_context(|| format!("starting {}", path.display()))?;
        anyhow::ensure!(
            status.success(),
            "provisioning {name} failed ({status}){}",
            log.map(|l| format!("; see {}", l.display()))
                .unwrap_or_default()
        );
        tracing::info!(service = name, took = ?started.elapsed(), "provisioned");
    }
    Ok(())
}

/// `switchyard provision`: every service's streams, buckets and consumers,
/// created or updated as `admin` (the client commands' credentials as
/// [`crate::Role::Admin`]) by running each service binary with `provision`.
pub(crate) async fn provision(servers: &[String], args: ProvisionArgs) -> anyhow::Result<()> {
    let settings = crate::client_settings_as(servers, crate::Role::Admin)?;
    let binaries = service_binaries(&args.only)?;
    let mut env = vec![
        (
            "SWITCHYARD__NATS__URLS".to_owned(),
            settings.nats.urls.join(","),
        ),
        ("SWITCHYARD__LOG__FORMAT".to_owned(), "compact".to_owned()),
    ];
    if let Some(user) = &settings.nats.user {
        env.push(("SWITCHYARD__NATS__USER".to_owned(), user.clone()));
    }
    if let Some(password) = &settings.nats.password {
        env.push(("SWITCHYARD__NATS__PASSWORD".to_owned(), password.clone()));
    }
    provision_services(&binaries, &env, None).await?;
    crate::say(format_args!(
        "provisioned {} as {}",
        binaries
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", "),
        settings.nats.user.as_deref().unwrap_or("no user")
    ));
    Ok(())
}

pub(crate) async fn nats_only(args: NatsArgs) -> anyhow::Result<()> {
    let shutdown = runtime::shutdown::on_signal();
    let mut cluster = start_cluster(&args, None, false).await?;
    crate::say(format_args!(
        "switchyard nats ready: {} (monitoring http://127.0.0.1:{}) · Ctrl-C stops it",
        cluster.urls().join(","),
        args.http_port
    ));
    shutdown.cancelled().await;
    cluster.stop(Duration::from_secs(10)).await;
    Ok(())
}

pub(crate) async fn up(args: UpArgs) -> anyhow::Result<()> {
    runtime::telemetry::init(&runtime::settings::TelemetrySettings {
        format: runtime::settings::LogFormat::Compact,
        ..Default::default()
    });
    let shutdown = runtime::shutdown::on_signal();
    let wanted = service_binaries(&args.only)?;
    // The deployments' users, passwords from --secrets (made if missing).
    let secrets = if args.no_auth {
        None
    } else {
        let (secrets, added) = crate::secrets::ensure(&args.secrets)?;
        if !added.is_empty() {
            crate::say(format_args!(
                "generated {} passwords into {} (0600, git-ignored)",
                added.len(),
                args.secrets.display()
            ));
        }
        Some(secrets)
    };

    if wanted.iter().any(|(name, _)| *name == services::REGISTRY) {
        ensure_free(args.metrics_port)?;
    }
    let mut cluster = start_cluster(&args.nats, secrets.as_ref(), !args.no_guests).await?;
    let urls = cluster.urls();
    let logs = args.nats.dir.join("logs");
    let run_dir = args.nats.dir.join("run");
    std::fs::create_dir_all(&logs)?;
    std::fs::create_dir_all(&run_dir)?;
    for (i, pid) in cluster.pids().into_iter().enumerate() {
        std::fs::write(run_dir.join(format!("nats-n{i}.pid")), format!("{pid}\n"))?;
    }

    // As deployed: admin provisions, services use what exists.
    let password = |env: &str| -> anyhow::Result<String> {
        secrets
            .as_ref()
            .and_then(|s| s.get(env).cloned())
            .with_context(|| format!("{env} missing from {}", args.secrets.display()))
    };
    if secrets.is_some() {
        let env = vec![
            ("SWITCHYARD__NATS__URLS".to_owned(), urls.join(",")),
            ("SWITCHYARD__LOG__FORMAT".to_owned(), "compact".to_owned()),
            (
                "SWITCHYARD__NATS__USER".to_owned(),
                protocol::accounts::ADMIN.to_owned(),
            ),
            (
                "SWITCHYARD__NATS__PASSWORD".to_owned(),
                password(protocol::accounts::ADMIN_PASSWORD_ENV)?,
            ),
            ("NO_COLOR".to_owned(), "1".to_owned()),
        ];
        let log = logs.join("provision.log");
        let provisioning = provision_services(&wanted, &env, Some(&log));
        tokio::select! {
            _ = shutdown.cancelled() => {
                cluster.stop(Duration::from_secs(10)).await;
                return Ok(());
            }
            done = provisioning => done?,
        }
    }

    let stop = CancellationToken::new();
    let supervisors: Vec<_> = wanted
        .iter()
        .map(|(name, path)| {
            let mut command = Command::new(path);
            command
                .env("SWITCHYARD__NATS__URLS", urls.join(","))
                .env("SWITCHYARD__LOG__FORMAT", "compact")
                // Every service's own logs also go to LOGS (log-worker files them).
                .env("SWITCHYARD__LOG__SHIP", "true")
                .env(
                    "SWITCHYARD__REGISTRY__METRICS_ADDR",
                    format!("127.0.0.1:{}", args.metrics_port),
                )
                .env("NO_COLOR", "1");
            if secrets.is_some()
                && let Some(m) = protocol::manifest::of(name)
            {
                command
                    .env("SWITCHYARD__NATS__USER", m.user)
                    .env("SWITCHYARD__NATS__PASSWORD", password(m.password_env)?)
                    .env("SWITCHYARD__JETSTREAM__ASSETS", "expect");
            }
            // The services' own files live under --dir too (the defaults are
            // `.switchyard/outbox` and `.switchyard/logstore`), unless the
            // environment already says where.
            for (key, sub) in [
                ("SWITCHYARD__EMAIL__OUTBOX_DIR", "outbox"),
                ("SWITCHYARD__LOGS__LOG_DIR", "logstore"),
            ] {
                if std::env::var_os(key).is_none() {
                    command.env(key, args.nats.dir.join(sub));
                }
            }
            Ok(tokio::spawn(supervise(
                (*name).to_owned(),
                command,
                logs.join(format!("{name}.log")),
                run_dir.join(format!("{name}.pid")),
                stop.clone(),
            )))
        })
        .collect::<anyhow::Result<_>>()?;

    let names: BTreeSet<String> = wanted.iter().map(|(n, _)| (*n).to_owned()).collect();
    let client_credentials = match &secrets {
        Some(_) => Some((
            protocol::accounts::CLIENT.to_owned(),
            password(protocol::accounts::CLIENT_PASSWORD_ENV)?,
        )),
        None => None,
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        ready = wait_ready(&urls, &names, client_credentials.clone()) => match ready {
            Ok(()) => crate::say(format_args!(
                "switchyard ready: NATS {} (monitoring http://127.0.0.1:{}, metrics http://127.0.0.1:{}/metrics) · dashboard http://127.0.0.1:{}/ · {} · services: {} · logs: {} · try `switchyard math add 2 3` · Ctrl-C stops everything",
                urls.join(","),
                args.nats.http_port,
                args.metrics_port,
                args.metrics_port,
                if secrets.is_some() {
                    format!(
                        "users: client (apps, CLI) and admin (operations), passwords in {}{}",
                        args.secrets.display(),
                        if args.no_guests { "" } else { "; no credentials = guest (client's rights)" }
                    )
                } else {
                    "NO AUTH (--no-auth)".to_owned()
                },
                names.iter().cloned().collect::<Vec<_>>().join(", "),
                logs.display()
            )),
            Err(err) => tracing::error!(error = %format!("{err:#}"), "not every service came up; they keep being retried"),
        },
    }
    shutdown.cancelled().await;
    tracing::info!("stopping services");
    stop.cancel();
    for supervisor in supervisors {
        let _ = supervisor.await;
    }
    tracing::info!("stopping NATS");
    cluster.stop(Duration::from_secs(10)).await;
    let _ = std::fs::remove_dir_all(&run_dir);
    tracing::info!("all stopped");
    Ok(())
}

async fn start_cluster(
    args: &NatsArgs,
    secrets: Option<&crate::secrets::Secrets>,
    guests: bool,
) -> anyhow::Result<Cluster> {
    let ports = |base: u16| -> anyhow::Result<Vec<u16>> {
        (0..NODES)
            .map(|i| base.checked_add(i).context("port out of range"))
            .collect()
    };
    let (client, routes, http) = (
        ports(args.port)?,
        ports(args.cluster_port)?,
        ports(args.http_port)?,
    );
    for port in client.iter().chain(&routes).chain(&http) {
        ensure_free(*port)?;
    }
    let dir = args.dir.join("nats");
    tracing::info!(dir = %dir.display(), "starting 3 NATS nodes");
    Cluster::start_with(ClusterOptions {
        nodes: usize::from(NODES),
        name: "switchyard".into(),
        client_ports: Some(client),
        cluster_ports: Some(routes),
        http_ports: Some(http),
        dir: Some(std::path::absolute(&dir)?),
        ready_timeout: Duration::from_secs(30),
        sync_always: true,
        accounts: secrets.is_some(),
        passwords: secrets.cloned().unwrap_or_default(),
        guests: secrets.is_some() && guests,
        lazy_storage: None,
    })
    .await
}

fn ensure_free(port: u16) -> anyhow::Result<()> {
    if TcpListener::bind(("127.0.0.1", port)).is_err() {
        anyhow::bail!(
            "port {port} is already in use: stop what holds it (another `switchyard up`, a nats-server?) \
             or pick other ports with --port/--cluster-port/--http-port/--metrics-port"
        );
    }
    Ok(())
}

/// Waits until every named service answers `$SRV.PING`.
async fn wait_ready(
    urls: &[String],
    names: &BTreeSet<String>,
    credentials: Option<(String, String)>,
) -> anyhow::Result<()> {
    let options = match credentials {
        Some((user, password)) => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password)
                .custom_inbox_prefix(protocol::subjects::inbox_prefix(&user))
        }
        None => async_nats::ConnectOptions::new(),
    };
    let client = options.connect(urls.to_vec()).await?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let pings: Vec<PingResponse> =
            runtime::client::discover(&client, Verb::Ping, None, Duration::from_millis(300))
                .await?;
        let up: BTreeSet<String> = pings.into_iter().map(|p| p.name).collect();
        let missing: Vec<&String> = names.difference(&up).collect();
        if missing.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no $SRV.PING reply from {missing:?} after {READY_TIMEOUT:?}; see .switchyard/logs/"
        );
    }
}

/// Runs `command` until `stop`, restarting it with backoff when it exits.
async fn supervise(
    name: String,
    mut command: Command,
    log: PathBuf,
    pid_file: PathBuf,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = Instant::now();
        let child = spawn_logged(&mut command, &log);
        let mut child = match child {
            Ok(child) => child,
            Err(err) => {
                tracing::error!(service = %name, error = %format!("{err:#}"), "cannot start");
                if sleep_or_stop(backoff, &stop).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let _ = std::fs::write(&pid_file, format!("{}\n", child.id()));
        tracing::info!(service = %name, pid = child.id(), "started");
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if sleep_or_stop(Duration::from_millis(100), &stop).await {
                break None;
            }
        };
        let Some(status) = status else {
            terminate(&name, &mut child).await;
            return;
        };
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        tracing::warn!(service = %name, %status, restart_in = ?backoff, "exited; restarting");
        if sleep_or_stop(backoff, &stop).await {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

fn spawn_logged(command: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    // Take the command out so it can move to the spawner thread.
    let command = std::mem::replace(command, clone_command(command));
    Ok(testkit::spawn_tied(command)?)
}

fn clone_command(command: &Command) -> Command {
    let mut copy = Command::new(command.get_program());
    copy.args(command.get_args());
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            copy.env(key, value);
        }
    }
    copy
}

/// SIGTERM, then SIGKILL after the grace period.
async fn terminate(name: &str, child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            tracing::info!(service = %name, %status, "stopped");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!(service = %name, "did not stop within {STOP_GRACE:?}; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

/// Sleeps; true if `stop` fired first.
async fn sleep_or_stop(duration: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}
