//! `switchyard bench <name>`: every service against a raw NATS baseline
//! doing the same work, in the same run, on the same cluster. Both sides run
//! as separate processes (the baselines through the hidden `bench-helper`
//! subcommand), so neither shares the load generator's process.

pub(crate) mod helper;
mod load;
mod names;
mod runs;

pub(crate) use helper::HelperArgs;

use anyhow::Context as _;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};
use protocol::micro::{PingResponse, Verb};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use testkit::Cluster;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BenchName {
    Rpc,
    Payments,
    Logs,
    Ticker,
    Python,
    Footprint,
    Seed,
    /// rpc, payments, logs, ticker, footprint, seed.
    Quick,
    /// Everything, python included.
    All,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    #[arg(value_enum)]
    name: BenchName,
    /// How long each measurement runs.
    #[arg(long, default_value = "3s", value_parser = runtime::time::parse_duration)]
    duration: Duration,
    /// Print the results as JSON (no table, no progress bars).
    #[arg(long)]
    json: bool,
    /// The bench's own cluster fsyncs every write before acking it (`always`,
    /// as every shipped config) or keeps nats-server's default (`default`:
    /// every 2 min), to measure what durability costs.
    #[arg(long, value_enum, default_value = "always")]
    nats_sync: NatsSync,
}

/// `sync_interval` of the bench's own cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum NatsSync {
    Always,
    Default,
}

/// One compared figure.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Metric {
    pub(crate) bench: &'static str,
    pub(crate) metric: String,
    pub(crate) unit: &'static str,
    pub(crate) switchyard: f64,
    pub(crate) baseline: Option<f64>,
    /// switchyard / baseline.
    pub(crate) ratio: Option<f64>,
    /// e.g. "<= 1.15" on the ratio, or "<= 10" on the value.
    pub(crate) goal: Option<String>,
    pub(crate) met: Option<bool>,
}

impl Metric {
    pub(crate) fn compared(
        bench: &'static str,
        metric: &str,
        unit: &'static str,
        ours: f64,
        base: f64,
        goal: Option<(&str, f64)>,
    ) -> Self {
        let ratio = if base > 0.0 { Some(ours / base) } else { None };
        let met = match (goal, ratio) {
            (Some(("<=", g)), Some(r)) => Some(r <= g),
            (Some((">=", g)), Some(r)) => Some(r >= g),
            _ => None,
        };
        Self {
            bench,
            metric: metric.to_owned(),
            unit,
            switchyard: ours,
            baseline: Some(base),
            ratio,
            goal: goal.map(|(op, g)| format!("ratio {op} {g}")),
            met,
        }
    }

    pub(crate) fn single(
        bench: &'static str,
        metric: &str,
        unit: &'static str,
        value: f64,
        max: Option<f64>,
    ) -> Self {
        Self {
            bench,
            metric: metric.to_owned(),
            unit,
            switchyard: value,
            baseline: None,
            ratio: None,
            goal: max.map(|m| format!("<= {m}")),
            met: max.map(|m| value <= m),
        }
    }
}

/// A cluster (own or given) and the processes a bench started.
pub(crate) struct Env {
    pub(crate) urls: Vec<String>,
    pub(crate) bin_dir: PathBuf,
    pub(crate) duration: Duration,
    pub(crate) quiet: bool,
    pub(crate) dir: tempfile::TempDir,
    children: Vec<Child>,
    _cluster: Option<Cluster>,
}

impl Env {
    async fn new(
        servers: &[String],
        duration: Duration,
        quiet: bool,
        sync: NatsSync,
    ) -> anyhow::Result<Self> {
        let bin_dir = std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("where is the switchyard binary?")?;
        let (mut urls, cluster) = if servers.is_empty() {
            let cluster = Cluster::start_retrying(testkit::ClusterOptions {
                sync_always: sync == NatsSync::Always,
                ..Default::default()
            })
            .await
            .context("starting a 3-node cluster for the bench")?;
            (cluster.urls(), Some(cluster))
        } else {
            (servers.to_vec(), None)
        };
        // Everyone (load generator, services, baselines) on one node:
        // otherwise each process picks a node at random, and whether a
        // pair talks through a route hop decides the comparison.
        urls.truncate(1);
        Ok(Self {
            urls,
            bin_dir,
            duration,
            quiet,
            dir: tempfile::tempdir()?,
            children: Vec::new(),
            _cluster: cluster,
        })
    }

    pub(crate) async fn client(&self) -> anyhow::Result<async_nats::Client> {
        Ok(async_nats::ConnectOptions::new()
            .request_timeout(Some(Duration::from_secs(10)))
            .connect(self.urls.clone())
            .await?)
    }

    /// Starts a service binary (or this binary with `args`) and returns its PID.
    pub(crate) fn spawn(
        &mut self,
        binary: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<u32> {
        let path = self.bin_dir.join(binary);
        anyhow::ensure!(
            path.is_file(),
            "{} not found: build the workspace first",
            path.display()
        );
        let mut command = Command::new(path);
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("SWITCHYARD__NATS__URLS", self.urls.join(","))
            .env("SWITCHYARD__LOG__LEVEL", "warn")
            .env("SWITCHYARD__SERVICE__REGISTRY__ENABLED", "false")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let child = testkit::spawn_tied(command)?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Waits until `n` instances of micro service `name` answer.
    pub(crate) async fn wait_instances(&self, name: &str, n: usize) -> anyhow::Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found: Vec<PingResponse> = runtime::client::discover(
                &client,
                Verb::Ping,
                Some(name),
                Duration::from_millis(200),
            )
            .await?;
            if found.len() >= n {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name}: {} of {n} instances answered",
                found.len()
            );
        }
    }

    pub(crate) fn stop_children(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A progress bar for one timed phase (hidden with --json).
    pub(crate) fn phase(&self, label: &str, length: Duration) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(u64::try_from(length.as_millis()).unwrap_or(u64::MAX));
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg:<42} [{bar:30}] {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(label.to_owned());
        bar.enable_steady_tick(Duration::from_millis(100));
        let ticking = bar.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            while !ticking.is_finished() {
                ticking.set_position(u64::try_from(start.elapsed().as_millis()).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        bar
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop_children();
    }
}

pub(crate) async fn run(servers: &[String], args: BenchArgs) -> anyhow::Result<()> {
    use BenchName::*;
    let names: Vec<BenchName> = match args.name {
        Quick => vec![Rpc, Payments, Logs, Ticker, Footprint, Seed],
        All => vec![Rpc, Payments, Logs, Ticker, Python, Footprint, Seed],
        one => vec![one],
    };
    let mut results = Vec::new();
    for name in names {
        let mut env = Env::new(servers, args.duration, args.json, args.nats_sync).await?;
        let metrics = match name {
            Rpc => runs::rpc(&mut env).await,
            Payments => runs::payments(&mut env).await,
            Logs => runs::logs(&mut env).await,
            Ticker => runs::ticker(&mut env).await,
            Python => runs::python(&mut env).await,
            Footprint => runs::footprint(&mut env).await,
            Seed => runs::seed(&mut env).await,
            Quick | All => unreachable_bench(),
        }
        .with_context(|| format!("bench {name:?}"))?;
        results.extend(metrics);
    }
    if args.json {
        crate::say(format_args!("{}", serde_json::to_string_pretty(&results)?));
    } else {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED).set_header([
            "bench",
            "metric",
            "switchyard",
            "baseline",
            "ratio",
            "goal",
            "met",
        ]);
        for m in &results {
            table.add_row([
                m.bench.to_owned(),
                format!("{} ({})", m.metric, m.unit),
                fmt(m.switchyard),
                m.baseline.map(fmt).unwrap_or_default(),
                m.ratio.map(|r| format!("{r:.2}×")).unwrap_or_default(),
                m.goal.clone().unwrap_or_default(),
                m.met
                    .map(|ok| if ok { "yes" } else { "NO" }.to_owned())
                    .unwrap_or_default(),
            ]);
        }
        crate::say(format_args!("{table}"));
    }
    Ok(())
}

fn unreachable_bench() -> anyhow::Result<Vec<Metric>> {
    anyhow::bail!("bench groups are expanded before running")
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
