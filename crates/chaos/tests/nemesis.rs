//! The nemesis, short: part of `just test`. `CHAOS_DURATION` (e.g. `10m`)
//! and `CHAOS_SEED` change it; `just chaos` runs the binary instead.

#![allow(
    clippy::panic,
    clippy::unwrap_used,
    reason = "a test fails by panicking"
)]

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_and_mail_hold_their_promises_under_faults() {
    let duration = std::env::var("CHAOS_DURATION")
        .ok()
        .map(|d| runtime::time::parse_duration(&d).unwrap())
        .unwrap_or(Duration::from_secs(60));
    let mut opts = chaos::Options::new(env!("CARGO_BIN_EXE_switchyard-chaos").into(), duration);
    if let Some(seed) = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        opts.seed = seed;
    }
    let report = chaos::run(&opts).await.unwrap();
    for line in &report.fault_log {
        println!("{line}");
    }
    println!("{}", report.table());
    assert!(report.acked > 0, "no payment was acknowledged");
    assert!(report.faults.values().sum::<u64>() > 0, "no fault injected");
    assert!(
        report.ok(),
        "{} violations (seed {:#x})",
        report.violation_count(),
        report.seed
    );
}
