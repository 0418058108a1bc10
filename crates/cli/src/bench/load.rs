//! Load generators and measurements.

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Sequential requests for `duration`: one round-trip time each.
pub(crate) async fn latency(
    client: &async_nats::Client,
    subject: &str,
    body: &Bytes,
    duration: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::new();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let start = Instant::now();
        client.request(subject.to_owned(), body.clone()).await?;
        samples.push(start.elapsed());
    }
    samples.sort_unstable();
    Ok(samples)
}

/// `inflight` requests at a time over the given connections for `duration`;
/// returns completed requests per second.
pub(crate) async fn throughput(
    clients: &[async_nats::Client],
    subject: &str,
    body: &Bytes,
    inflight: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + duration;
    let workers: Vec<_> = (0..inflight)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            let (subject, body, done) = (subject.to_owned(), body.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    if client.request(subject.clone(), body.clone()).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// The `p`-th percentile (0..=100) of sorted samples, in microseconds.
pub(crate) fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

/// Resident set size of a process, in megabytes.
pub(crate) fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Connections for a load generator.
pub(crate) async fn clients(urls: &[String], n: usize) -> anyhow::Result<Vec<async_nats::Client>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            async_nats::ConnectOptions::new()
                .request_timeout(Some(Duration::from_secs(10)))
                .connect(urls.to_vec())
                .await?,
        );
    }
    Ok(out)
}

/// Waits until `check` holds, polling; the time it took.
pub(crate) async fn until<F, Fut>(
    what: &str,
    within: Duration,
    mut check: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < within,
            "{what} not reached within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
