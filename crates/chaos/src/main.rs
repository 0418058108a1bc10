//! `switchyard-chaos`: a nemesis run (see the crate docs), or, with
//! `SWITCHYARD_CHAOS_ROLE` set, one of the services it starts.

use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;

/// Runs the nemesis against a fresh local cluster and prints what it found.
#[derive(Debug, Parser)]
#[command(name = "switchyard-chaos")]
struct Args {
    /// How long the load and the faults run (e.g. 90s, 10m).
    #[arg(long, default_value = "90s", value_parser = runtime::time::parse_duration)]
    duration: Duration,
    /// Seeds the faults and the load (random if not given; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Payments published per second.
    #[arg(long, default_value_t = 20)]
    payments_per_sec: u32,
    /// Emails sent per second.
    #[arg(long, default_value_t = 4)]
    emails_per_sec: u32,
    /// Print each fault as it was injected.
    #[arg(long)]
    verbose: bool,
    /// Power-loss mode (issue 18): the nodes' stores on lazy filesystems,
    /// power cuts of one node or all three instead of SIGKILL/SIGSTOP.
    /// Needs /dev/fuse and fusermount3 (`just setup`).
    #[arg(long)]
    power_loss: bool,
    /// With --power-loss: `always` (fsync before every ack, as shipped) or
    /// `default` (the server's 2-minute interval).
    #[arg(long, default_value = "always", value_parser = ["always", "default"])]
    sync_interval: String,
    /// With --power-loss: also undo creates/renames/unlinks whose directory
    /// was not fsynced (stricter than ext4; findings are labelled).
    #[arg(long)]
    strict: bool,
    /// With --power-loss: when the first whole-cluster cut comes (past 2m,
    /// the default interval has synced the streams' creation).
    #[arg(long, default_value = "5s", value_parser = runtime::time::parse_duration)]
    first_cut_after: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match std::env::var(chaos::ROLE_ENV).as_deref() {
        Ok("payment-processor") => {
            runtime::main(
                protocol::names::services::PAYMENT_PROCESSOR,
                payment_processor::run,
            )
            .await?;
            return Ok(ExitCode::SUCCESS);
        }
        Ok("email-notifier") => {
            runtime::main(
                protocol::names::services::EMAIL_NOTIFIER,
                email_notifier::run,
            )
            .await?;
            return Ok(ExitCode::SUCCESS);
        }
        Ok(other) => anyhow::bail!(
            "{}={other:?}: not a service the nemesis runs",
            chaos::ROLE_ENV
        ),
        Err(_) => {}
    }
    let args = Args::parse();
    let mut opts = chaos::Options::new(std::env::current_exe()?, args.duration);
    if let Some(seed) = args.seed {
        opts.seed = seed;
    }
    opts.payments_per_sec = args.payments_per_sec;
    opts.emails_per_sec = args.emails_per_sec;
    if args.power_loss {
        opts.power_loss = Some(chaos::PowerLoss {
            sync_always: args.sync_interval == "always",
            strict: args.strict,
            first_cut_after: args.first_cut_after,
        });
    } else {
        anyhow::ensure!(
            !args.strict && args.sync_interval == "always",
            "--strict and --sync-interval go with --power-loss"
        );
    }
    eprintln!(
        "chaos: {:?} of load and faults (seed {:#x}), then up to {:?} to settle{}",
        opts.duration,
        opts.seed,
        opts.settle,
        opts.power_loss
            .map(|p| format!(" [{}]", p.label()))
            .unwrap_or_default()
    );
    let report = chaos::run(&opts).await?;
    if args.verbose {
        for line in &report.fault_log {
            println!("{line}");
        }
    }
    println!("{}", report.table());
    // Under power cuts, what the cluster lost of acknowledged data is
    // reported (a nats-server finding); what Switchyard owns decides.
    let passed = if opts.power_loss.is_some() {
        println!("{}", report.power_summary());
        report.switchyard_violations() == 0
    } else {
        report.ok()
    };
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
