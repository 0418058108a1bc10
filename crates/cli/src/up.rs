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
    /// Port of the registry's Prometheus /metrics.
    #[arg(long, default_value_t = 9464)]
    metrics_port: u16,
    /// Start only these services (default: every service binary found).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

pub(crate) async fn nats_only(args: NatsArgs) -> anyhow::Result<()> {
    let shutdown = runtime::shutdown::on_signal();
    let mut cluster = start_cluster(&args).await?;
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
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .context("cannot tell where the switchyard binary is")?;
    let wanted: Vec<(&str, PathBuf)> = services::ALL
        .iter()
        .filter(|name| args.only.is_empty() || args.only.iter().any(|o| o == *name))
        .filter_map(|name| {
            let path = bin_dir.join(services::binary(name)?);
            path.is_file().then_some((*name, path))
        })
        .collect();
    if let Some(unknown) = args
        .only
        .iter()
        .find(|o| !services::ALL.contains(&o.as_str()))
    {
        anyhow::bail!(
            "unknown service {unknown:?}; services are {}",
            services::ALL.join(", ")
        );
    }
    anyhow::ensure!(
        !wanted.is_empty(),
        "no service binaries next to {}: run `cargo build --workspace` (or `just up`)",
        bin_dir.display()
    );

    if wanted.iter().any(|(name, _)| *name == services::REGISTRY) {
        ensure_free(args.metrics_port)?;
    }
    let mut cluster = start_cluster(&args.nats).await?;
    let urls = cluster.urls();
    let logs = args.nats.dir.join("logs");
    let run_dir = args.nats.dir.join("run");
    std::fs::create_dir_all(&logs)?;
    std::fs::create_dir_all(&run_dir)?;
    for (i, pid) in cluster.pids().into_iter().enumerate() {
        std::fs::write(run_dir.join(format!("nats-n{i}.pid")), format!("{pid}\n"))?;
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
            tokio::spawn(supervise(
                (*name).to_owned(),
                command,
                logs.join(format!("{name}.log")),
                run_dir.join(format!("{name}.pid")),
                stop.clone(),
            ))
        })
        .collect();

    let names: BTreeSet<String> = wanted.iter().map(|(n, _)| (*n).to_owned()).collect();
    tokio::select! {
        _ = shutdown.cancelled() => {}
        ready = wait_ready(&urls, &names) => match ready {
            Ok(()) => crate::say(format_args!(
                "switchyard ready: NATS {} (monitoring http://127.0.0.1:{}, metrics http://127.0.0.1:{}/metrics) · services: {} · logs: {} · try `switchyard math add 2 3` · Ctrl-C stops everything",
                urls.join(","),
                args.nats.http_port,
                args.metrics_port,
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

async fn start_cluster(args: &NatsArgs) -> anyhow::Result<Cluster> {
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
        accounts: false,
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
async fn wait_ready(urls: &[String], names: &BTreeSet<String>) -> anyhow::Result<()> {
    let client = async_nats::connect(urls.to_vec()).await?;
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
