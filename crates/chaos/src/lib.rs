//! The nemesis, Jepsen-style: a real 3-node cluster, two payment
//! processors and two email notifiers (real processes, so they can be
//! SIGKILLed and SIGSTOPped), an SMTP sink (aiosmtpd), a load generator
//! that publishes payments and sends emails, and a nemesis that keeps
//! injecting one fault at a time — SIGKILL or SIGSTOP of a NATS node, a
//! processor or a notifier — for the run's duration. Then it heals
//! everything, waits for the system to settle, and checks from the
//! outside what Switchyard promises (see [`check`]).
//!
//! ```text
//!  load ──payments (Msg-Id = id, retried until acked)──▶ PAYMENTS ─▶ processor ×2 ─▶ ledger
//!       └─emails (idempotency key, retried until accepted)─▶ notifier ×2 ─▶ SMTP sink
//!  nemesis: kill/pause node | kill/pause processor | kill/pause notifier, one at a time
//!  checker: KV payments, the ledger, EVENTS, the KV history, the sink
//! ```
//!
//! `cargo test -p switchyard-chaos` runs a short run; `just chaos 10m` a
//! long one (the `switchyard-chaos` binary), printing [`Report::table`].
//!
//! Power-loss mode ([`Options::power_loss`], `switchyard-chaos --power-loss`,
//! `just chaos-power-loss`): the nodes' stores sit on lazy filesystems and
//! the nemesis cuts the power of one node or of all three at once, under
//! the same load and the same checker; acknowledged payments with no record
//! afterwards count as "payment lost (no record)".

mod check;
mod load;
mod nemesis;
mod report;

pub use report::Report;

use anyhow::Context as _;
use std::path::PathBuf;
use std::time::Duration;
use testkit::{Cluster, TestProcess};

/// Set in a child's environment: the chaos binary then runs that service
/// (`payment-processor` or `email-notifier`) instead of a nemesis.
pub const ROLE_ENV: &str = "SWITCHYARD_CHAOS_ROLE";

/// What a run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long the load and the nemesis run.
    pub duration: Duration,
    /// Seeds the nemesis's choices and the load's amounts.
    pub seed: u64,
    /// The `switchyard-chaos` binary (started again as each service).
    pub exe: PathBuf,
    /// Payments published per second.
    pub payments_per_sec: u32,
    /// Emails sent per second.
    pub emails_per_sec: u32,
    /// How long the healed system may take to settle before what is left
    /// undone counts as stuck.
    pub settle: Duration,
    /// Power-loss mode (issue 18): the nodes' stores sit on lazy
    /// filesystems and the nemesis cuts power instead of killing processes.
    pub power_loss: Option<PowerLoss>,
}

/// The power-loss nemesis: every NATS node's store on its own lazy
/// filesystem (`crates/lazyfs`); faults are power cuts of one node or of all
/// three at once (SIGKILL, every unsynced byte dropped, restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerLoss {
    /// `sync_interval: always` (what Switchyard ships) or the server's
    /// default (fsync every 2 minutes).
    pub sync_always: bool,
    /// Also undo creates/renames/unlinks whose directory was not fsynced:
    /// stricter than ext4, so its findings are labelled as such.
    pub strict: bool,
    /// When the first cut (of every node) comes, after the load starts.
    /// Past 2 minutes, even the server's default interval has synced the
    /// streams' creation: what is lost then is acknowledged messages.
    pub first_cut_after: Duration,
}

impl PowerLoss {
    /// How the report names the mode.
    pub fn label(&self) -> String {
        format!(
            "power loss: lazy stores ({}), sync_interval: {}",
            if self.strict {
                "strict mode: also undoes unsynced creates/renames/unlinks, stricter than ext4"
            } else {
                "unsynced data lost"
            },
            if self.sync_always {
                "always"
            } else {
                "server default (2m)"
            }
        )
    }
}

impl Options {
    pub fn new(exe: PathBuf, duration: Duration) -> Self {
        Self {
            duration,
            seed: rand::random(),
            exe,
            payments_per_sec: 20,
            emails_per_sec: 4,
            settle: Duration::from_secs(120),
            power_loss: None,
        }
    }
}

/// The services under test, as processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Processor,
    Notifier,
}

impl Role {
    pub(crate) const fn service(self) -> &'static str {
        match self {
            Self::Processor => protocol::names::services::PAYMENT_PROCESSOR,
            Self::Notifier => protocol::names::services::EMAIL_NOTIFIER,
        }
    }
}

/// Everything a run starts, and how to start a service again.
#[derive(Debug)]
pub(crate) struct System {
    pub(crate) cluster: Cluster,
    pub(crate) sink: testkit::smtp::Sink,
    pub(crate) ledger: PathBuf,
    pub(crate) exe: PathBuf,
    pub(crate) processes: Vec<(Role, TestProcess)>,
    /// Holds the ledger (and is removed when the run ends).
    _dir: tempfile::TempDir,
}

impl System {
    async fn start(opts: &Options) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ledger = dir.path().join("gateway-ledger.jsonl");
        let cluster = match opts.power_loss {
            None => Cluster::start(3).await,
            Some(p) => {
                Cluster::start_retrying(testkit::ClusterOptions {
                    nodes: 3,
                    sync_always: p.sync_always,
                    lazy_storage: Some(if p.strict {
                        testkit::LazyMode::Strict
                    } else {
                        testkit::LazyMode::Lazy
                    }),
                    ready_timeout: Duration::from_secs(90),
                    ..Default::default()
                })
                .await
            }
        }
        .context("starting the cluster")?;
        let sink = testkit::smtp::Sink::start().await;
        let mut system = Self {
            cluster,
            sink,
            ledger,
            exe: opts.exe.clone(),
            processes: Vec::new(),
            _dir: dir,
        };
        for role in [
            Role::Processor,
            Role::Processor,
            Role::Notifier,
            Role::Notifier,
        ] {
            let process = system.spawn(role).await;
            system.processes.push((role, process));
        }
        Ok(system)
    }

    /// The settings of each service: short ack waits and leases, so the
    /// faults' consequences play out within seconds.
    fn env(&self, role: Role) -> Vec<(String, String)> {
        let mut env = vec![
            (ROLE_ENV.to_owned(), role.service().to_owned()),
            ("SWITCHYARD__LOG__LEVEL".to_owned(), "error".to_owned()),
            (
                "SWITCHYARD__SERVICE__SHUTDOWN_GRACE_MS".to_owned(),
                "2000".to_owned(),
            ),
        ];
        let ours: &[(&str, String)] = match role {
            Role::Processor => &[
                (
                    "PAYMENTS__GATEWAY__LEDGER_FILE",
                    self.ledger.display().to_string(),
                ),
                ("PAYMENTS__GATEWAY__LATENCY_MS", "20".into()),
                ("PAYMENTS__GATEWAY__JITTER_MS", "80".into()),
                ("PAYMENTS__GATEWAY__FAILURE_RATE", "0.2".into()),
                ("PAYMENTS__CONCURRENCY", "8".into()),
                // Pauses of up to 5 s outlast it: redeliveries and takeovers.
                ("PAYMENTS__ACK_WAIT_MS", "3000".into()),
                ("PAYMENTS__GATEWAY_TIMEOUT_MS", "2000".into()),
                ("PAYMENTS__CLOCK_MARGIN_MS", "500".into()),
                ("PAYMENTS__BACKOFF_MS", "200,500".into()),
                ("PAYMENTS__MAX_ATTEMPTS", "3".into()),
                ("PAYMENTS__MAX_DELIVER", "8".into()),
                ("PAYMENTS__INFRA_RETRY_MS", "10000".into()),
                ("PAYMENTS__SWEEP_INTERVAL_MS", "5000".into()),
                ("PAYMENTS__STUCK_AFTER_MS", "20000".into()),
            ],
            Role::Notifier => &[
                ("EMAIL__SMTP_URL", self.sink.url()),
                // Longer than any pause plus a progress interval: only a
                // SIGKILL inside a send may give a second copy.
                ("EMAIL__ACK_WAIT_MS", "15000".into()),
                ("EMAIL__SMTP_TIMEOUT_MS", "5000".into()),
                ("EMAIL__BACKOFF_MS", "200,500".into()),
                ("EMAIL__MAX_DELIVER", "50".into()),
                ("EMAIL__PUBLISH_BUDGET_MS", "10000".into()),
            ],
        };
        env.extend(
            ours.iter()
                .map(|(k, v)| (format!("SWITCHYARD__{k}"), v.clone())),
        );
        env
    }

    pub(crate) async fn spawn(&self, role: Role) -> TestProcess {
        let env = self.env(role);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        testkit::spawn_process(&self.exe, &self.cluster, &env).await
    }

    async fn stop(mut self) {
        for (_, process) in &mut self.processes {
            process.kill().await;
        }
        self.cluster.stop(Duration::from_secs(5)).await;
    }
}

/// One run: start, load under faults, heal, settle, check.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    let mut system = System::start(opts).await?;
    let client = system.cluster.client().await?;
    let history = check::History::watch(&client).await?;
    let load = load::Load::start(&client, opts);
    let faults = nemesis::run(&mut system, opts).await;
    let outcome = load.finish().await;
    let faults = faults?;
    let report = check::check(&system, &client, &outcome, &history, &faults, opts).await;
    history.stop();
    system.stop().await;
    let mut report = report?;
    report.seed = opts.seed;
    report.wall = started.elapsed();
    report.mode = opts.power_loss.map(|p| p.label());
    Ok(report)
}
