//! Starting services in tests, one way: in this process
//! ([`spawn_service`]) or as a child process that can really crash
//! ([`spawn_process`]), both returning once the new instance answers
//! `$SRV.PING`; and one poller, [`eventually`].

use crate::Cluster;
use futures::FutureExt as _;
use protocol::micro::{PingResponse, Verb};
use runtime::settings::Value;
use runtime::{CancellationToken, Settings};
use std::fmt::Display;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The `$SRV` metadata key that tells test instances apart.
pub const TAG_KEY: &str = "testkit";
/// How long a service may take to answer `$SRV.PING` after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `$SRV.PING` round waits for replies.
const PING_WAIT: Duration = Duration::from_millis(200);

/// A tag no other instance of this test binary has.
fn next_tag() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Calls `check` every 50 ms until it returns `Ok`, and returns that value.
/// Panics after `within` with `what` and the last `Err` it returned.
#[allow(clippy::panic, reason = "a test harness fails the test by panicking")]
pub async fn eventually<T, E, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not true after {within:?}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Every instance of service `name` that answers `$SRV.PING` now. Panics
/// if the ping cannot be sent (so "none answer" never hides an error).
#[allow(clippy::panic, reason = "a test harness fails the test by panicking")]
pub async fn instances(client: &async_nats::Client, name: &str) -> Vec<PingResponse> {
    runtime::client::discover::<PingResponse>(client, Verb::Ping, Some(name), PING_WAIT)
        .await
        .unwrap_or_else(|e| panic!("$SRV.PING.{name} could not be sent: {e:#}"))
}

/// The instance of any service whose `$SRV` metadata carries `tag`.
async fn tagged(client: &async_nats::Client, tag: &str) -> Option<PingResponse> {
    runtime::client::discover::<PingResponse>(client, Verb::Ping, None, PING_WAIT)
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.metadata.get(TAG_KEY).map(String::as_str) == Some(tag))
}

/// Waits until the instance tagged `tag` answers `$SRV.PING`; panics after
/// [`START_TIMEOUT`] or as soon as `gone` says why it never will.
#[allow(clippy::panic, reason = "a test harness fails the test by panicking")]
async fn wait_tagged(
    cluster: &Cluster,
    tag: &str,
    what: &str,
    mut gone: impl FnMut() -> Option<String>,
) -> PingResponse {
    let client = cluster
        .client()
        .await
        .unwrap_or_else(|e| panic!("connecting to the test cluster: {e:#}"));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(ping) = tagged(&client, tag).await {
            return ping;
        }
        if let Some(why) = gone() {
            panic!("{what} did not start: {why}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not answer $SRV.PING within {START_TIMEOUT:?}"
        );
    }
}

/// A service running in this test process (see [`spawn_service`]).
#[derive(Debug)]
pub struct TestService {
    ping: PingResponse,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Starts a service in this process with `run` (a service's
/// `run(settings, shutdown)`, or a closure around `run_with_...`), connected
/// to `cluster`, with `overrides` on top of the defaults. Returns once the
/// new instance answers `$SRV.PING`; panics if it fails to start.
#[allow(clippy::panic, reason = "a test harness fails the test by panicking")]
pub async fn spawn_service<F, Fut>(
    run: F,
    cluster: &Cluster,
    overrides: &[(&str, Value)],
) -> TestService
where
    F: FnOnce(Settings, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let tag = next_tag();
    let mut all = vec![
        ("nats.urls".to_owned(), Value::from(cluster.urls())),
        (
            format!("service.metadata.{TAG_KEY}"),
            Value::from(tag.clone()),
        ),
    ];
    all.extend(overrides.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    let settings = Settings::load_with(all).unwrap_or_else(|e| panic!("test settings: {e:#}"));
    let shutdown = CancellationToken::new();
    // How it ended, if it ended before answering: for the failure message.
    let ended = Arc::new(Mutex::new(None::<String>));
    let service = run(settings, shutdown.clone());
    let task = tokio::spawn({
        let ended = ended.clone();
        async move {
            let result = AssertUnwindSafe(service).catch_unwind().await;
            let why = match &result {
                Ok(Ok(())) => "it stopped".to_owned(),
                Ok(Err(err)) => format!("it failed: {err:#}"),
                Err(panic) => format!(
                    "it panicked: {}",
                    runtime::worker::panic_message(panic.as_ref())
                ),
            };
            if let Ok(mut ended) = ended.lock() {
                *ended = Some(why);
            }
            result.unwrap_or_else(|_| Err(anyhow::anyhow!("the service panicked")))
        }
    });
    let ping = wait_tagged(cluster, &tag, "the service", || {
        ended.lock().ok().and_then(|e| e.clone())
    })
    .await;
    TestService {
        ping,
        shutdown,
        task,
    }
}

/// How long provisioning one service may take.
const PROVISION_TIMEOUT: Duration = Duration::from_secs(60);

/// Provisions one service's streams, buckets and consumers the way
/// `<binary> provision` does: runs `run` with `jetstream.assets =
/// provision` as [`protocol::accounts::ADMIN`] (on a cluster with
/// accounts; without, as no one) and waits for it to return. Panics if it
/// fails or takes longer than a minute.
#[allow(clippy::panic, reason = "a test harness fails the test by panicking")]
pub async fn provision<F, Fut>(run: F, cluster: &Cluster, overrides: &[(&str, Value)])
where
    F: FnOnce(Settings, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut all = vec![
        ("nats.urls".to_owned(), Value::from(cluster.urls())),
        ("jetstream.assets".to_owned(), Value::from("provision")),
    ];
    if let Ok(password) = cluster.password(protocol::accounts::ADMIN) {
        all.push((
            "nats.user".to_owned(),
            Value::from(protocol::accounts::ADMIN),
        ));
        all.push(("nats.password".to_owned(), Value::from(password)));
    }
    all.extend(overrides.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    let settings = Settings::load_with(all).unwrap_or_else(|e| panic!("test settings: {e:#}"));
    match tokio::time::timeout(PROVISION_TIMEOUT, run(settings, CancellationToken::new())).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => panic!("provisioning failed: {err:#}"),
        Err(_) => panic!("provisioning took longer than {PROVISION_TIMEOUT:?}"),
    }
}

impl TestService {
    /// The service name it answers `$SRV.PING` with.
    pub fn name(&self) -> &str {
        &self.ping.name
    }

    /// Its instance id.
    pub fn id(&self) -> &str {
        &self.ping.id
    }

    /// Graceful stop (as on SIGTERM); returns what its `run` returned.
    pub async fn stop_result(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the service task panicked: {e}")))
    }

    /// Graceful stop; panics unless the service stopped cleanly.
    #[allow(clippy::panic, reason = "a test harness fails the test by panicking")]
    pub async fn stop(self) {
        let name = self.ping.name.clone();
        if let Err(err) = self.stop_result().await {
            panic!("{name} did not stop cleanly: {err:#}");
        }
    }

    /// True while its `run` has not returned.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

/// A service running as a child process (see [`spawn_process`]).
#[derive(Debug)]
pub struct TestProcess {
    ping: PingResponse,
    child: Option<Child>,
}

/// Starts `binary` (e.g. `env!("CARGO_BIN_EXE_payment-processor")`) as a
/// child process connected to `cluster`, with `env` on top (use
/// `SWITCHYARD__...` names). Returns once it answers `$SRV.PING`. The child
/// is killed when the `TestProcess` drops and dies with the test process.
#[allow(clippy::panic, reason = "a test harness fails the test by panicking")]
pub async fn spawn_process(
    binary: impl AsRef<Path>,
    cluster: &Cluster,
    env: &[(&str, &str)],
) -> TestProcess {
    let binary = binary.as_ref();
    let tag = next_tag();
    let mut command = Command::new(binary);
    command
        .env("SWITCHYARD__NATS__URLS", cluster.urls().join(","))
        .env(
            format!("SWITCHYARD__SERVICE__METADATA__{}", TAG_KEY.to_uppercase()),
            &tag,
        )
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let child =
        crate::spawn_tied(command).unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    // Killed on drop, also when a check below panics.
    let mut starting = KillOnDrop(Some(child));
    let ping = wait_tagged(cluster, &tag, &binary.display().to_string(), || {
        let status = starting.0.as_mut()?.try_wait().ok()??;
        Some(format!("it exited at start: {status}"))
    })
    .await;
    TestProcess {
        ping,
        child: starting.0.take(),
    }
}

struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl TestProcess {
    pub fn name(&self) -> &str {
        &self.ping.name
    }

    pub fn id(&self) -> &str {
        &self.ping.id
    }

    /// Its PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: a real crash. Waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            wait_exit(&mut child, Duration::from_secs(10)).await;
        }
    }

    /// SIGTERM (graceful), then waits up to `within` for it to exit; returns
    /// its exit status (`None` if it had to be killed).
    pub async fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait(within).await
    }

    /// Waits up to `within` for it to exit (after a signal sent with
    /// [`signal`](Self::signal)); returns its exit status, or `None` if it
    /// had to be killed.
    pub async fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        wait_exit(&mut child, within).await
    }

    /// Sends `signal` (e.g. SIGSTOP, SIGCONT) to it.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }
}

/// Polls `child` until it exits or `within` passes (then kills it).
async fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        drop(KillOnDrop(self.child.take()));
    }
}
