//! One fault at a time, for the run's duration, then everything healed.
//! Faults never overlap, so two NATS nodes are always up (a quorum) and
//! at least one instance of each service runs.

use crate::{Options, Role, System};
use nix::sys::signal::Signal;
use rand::{Rng as _, SeedableRng as _};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// What the nemesis did.
#[derive(Debug, Default, Clone)]
pub(crate) struct Faults {
    /// Faults injected, by kind.
    pub(crate) by_kind: BTreeMap<&'static str, u64>,
    /// When a notifier was SIGKILLed: a second copy of a mail (with the
    /// same Message-ID) is allowed if one of these falls between its copies.
    pub(crate) notifier_kills: Vec<std::time::SystemTime>,
    /// One line per fault: when (since the start) and what.
    pub(crate) log: Vec<String>,
}

impl Faults {
    fn record(&mut self, at: Duration, kind: &'static str, what: String) {
        *self.by_kind.entry(kind).or_insert(0) += 1;
        self.log
            .push(format!("{:>6.1}s {kind}: {what}", at.as_secs_f64()));
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillNode,
    PauseNode,
    KillService(Role),
    PauseService(Role),
}

impl Fault {
    const fn kind(self) -> &'static str {
        match self {
            Self::KillNode => "SIGKILL nats node",
            Self::PauseNode => "SIGSTOP nats node",
            Self::KillService(Role::Processor) => "SIGKILL processor",
            Self::KillService(Role::Notifier) => "SIGKILL notifier",
            Self::PauseService(Role::Processor) => "SIGSTOP processor",
            Self::PauseService(Role::Notifier) => "SIGSTOP notifier",
        }
    }
}

const FAULTS: [Fault; 6] = [
    Fault::KillNode,
    Fault::PauseNode,
    Fault::KillService(Role::Processor),
    Fault::PauseService(Role::Processor),
    Fault::KillService(Role::Notifier),
    Fault::PauseService(Role::Notifier),
];

fn signal(pid: Option<u32>, signal: Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// Injects faults until `opts.duration` has passed, then heals. The first
/// fault is fixed: the measured case of a payment processor SIGSTOPped for
/// 5 s, 1.5 s into the load.
pub(crate) async fn run(system: &mut System, opts: &Options) -> anyhow::Result<Faults> {
    if opts.power_loss.is_some() {
        return power_loss(system, opts).await;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0x6e656d65);
    let start = Instant::now();
    let end = start + opts.duration;
    let mut faults = Faults::default();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut next = Some((
        Fault::PauseService(Role::Processor),
        0,
        Duration::from_secs(5),
    ));
    while Instant::now() < end {
        let (fault, target, hold) = next.take().unwrap_or_else(|| {
            let fault = FAULTS[rng.random_range(0..FAULTS.len())];
            let hold = Duration::from_millis(rng.random_range(500..=5_000));
            (fault, rng.random_range(0..2usize), hold)
        });
        let at = start.elapsed();
        match fault {
            Fault::KillNode | Fault::PauseNode => {
                let node = rng.random_range(0..system.cluster.len());
                faults.record(at, fault.kind(), format!("node {node} for {hold:?}"));
                if matches!(fault, Fault::KillNode) {
                    system.cluster.kill_node(node);
                    tokio::time::sleep(hold).await;
                    system.cluster.restart_node(node).await?;
                } else {
                    let pid = system.cluster.pid(node);
                    signal(pid, Signal::SIGSTOP);
                    tokio::time::sleep(hold).await;
                    signal(pid, Signal::SIGCONT);
                }
            }
            Fault::KillService(role) | Fault::PauseService(role) => {
                let index = system
                    .processes
                    .iter()
                    .enumerate()
                    .filter(|(_, (r, _))| *r == role)
                    .map(|(i, _)| i)
                    .nth(target)
                    .unwrap_or(0);
                faults.record(
                    at,
                    fault.kind(),
                    format!("{} #{target} for {hold:?}", role.service()),
                );
                if matches!(fault, Fault::KillService(_)) {
                    system.processes[index].1.kill().await;
                    if role == Role::Notifier {
                        faults.notifier_kills.push(std::time::SystemTime::now());
                    }
                    tokio::time::sleep(hold).await;
                    let process = system.spawn(role).await;
                    system.processes[index].1 = process;
                } else {
                    let pid = system.processes[index].1.pid();
                    signal(pid, Signal::SIGSTOP);
                    tokio::time::sleep(hold).await;
                    signal(pid, Signal::SIGCONT);
                }
            }
        }
        // A breath between faults.
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..=2_000))).await;
    }
    // Healed: every node and every process runs (faults end where they
    // start, so there is nothing left to undo); wait until the cluster
    // serves again from every node.
    system.cluster.wait_ready().await?;
    Ok(faults)
}

/// Power-loss mode: power cuts only, alternating between one node and all
/// three at once (the first, `first_cut_after` into the load, is a
/// whole-cluster cut),
/// with 3-8 s of load between cuts. Each cut SIGKILLs, drops every unsynced
/// byte of the nodes' stores, restarts them and waits until JetStream
/// serves again.
async fn power_loss(system: &mut System, opts: &Options) -> anyhow::Result<Faults> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0x706f7765);
    let start = Instant::now();
    let end = start + opts.duration;
    let mut faults = Faults::default();
    let first_cut_after = opts
        .power_loss
        .map_or(Duration::from_secs(5), |p| p.first_cut_after);
    tokio::time::sleep(first_cut_after).await;
    let mut all = true;
    while Instant::now() < end {
        let at = start.elapsed();
        if all {
            let reports = system.cluster.power_off_all().await?;
            let dropped: Vec<String> = reports
                .iter()
                .enumerate()
                .map(|(i, r)| format!("node {i}: {r}"))
                .collect();
            faults.record(at, "power off all nodes", dropped.join("; "));
        } else {
            let node = rng.random_range(0..system.cluster.len());
            let report = system.cluster.power_off(node).await?;
            faults.record(at, "power off one node", format!("node {node}: {report}"));
        }
        all = rng.random_bool(0.5);
        tokio::time::sleep(Duration::from_millis(rng.random_range(3_000..=8_000))).await;
    }
    system.cluster.wait_ready().await?;
    Ok(faults)
}
