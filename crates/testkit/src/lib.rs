//! Real nats-server clusters, for tests and for `switchyard up`.
//!
//! - [`Cluster::start`] runs N nodes on free loopback ports with JetStream in
//!   temp dirs and returns once an R3 stream can be placed (a meta leader and
//!   every peer are there).
//! - [`Cluster::kill_node`] / [`Cluster::restart_node`] for failure tests; the
//!   store survives a restart.
//! - With [`ClusterOptions::lazy_storage`] (feature `lazyfs`), each node's
//!   store sits on a lazy filesystem: `Cluster::power_off` /
//!   `Cluster::power_off_all` lose what was not fsynced, as a power cut does.
//! - Every process is stopped by PID on drop (also when a test panics), and
//!   is spawned with `PR_SET_PDEATHSIG` from a thread that lives as long as
//!   the process, so it dies with us even on abort or SIGKILL.
//! - [`shared`] is one cluster per test binary for tests that do not break it.
//! - [`spawn_service`] starts a service in-process, [`spawn_process`] as a
//!   child process (for real crashes); both return once it answers
//!   `$SRV.PING`. [`eventually`] is the one poller tests wait with.
//! - [`refusals::connect_watched`] connects as a user of an accounts
//!   cluster and waits for the server to refuse a publish or subscription.
//! - [`js::r3_kv`] makes an R3 bucket and returns once it is usable from the
//!   caller's connection (no retry needed after).

pub mod attacks;
mod cluster;
pub mod js;
pub mod otlp;
mod process;
pub mod refusals;
mod service;

pub use cluster::{Cluster, ClusterOptions, LazyMode, TESTKIT_USER, nats_server_bin, node_urls};
pub use process::spawn_tied;
pub mod smtp;
pub use service::{
    TAG_KEY, TestProcess, TestService, eventually, instances, provision, spawn_process,
    spawn_service,
};

use tokio::sync::OnceCell;

static SHARED: OnceCell<Cluster> = OnceCell::const_new();

/// One 3-node cluster for the whole test binary, started on first use and
/// killed when the process exits. Tests that kill nodes or flip site-wide
/// flags must start their own [`Cluster`] instead.
#[allow(clippy::panic, reason = "a test cannot go on without its cluster")]
pub async fn shared() -> &'static Cluster {
    SHARED
        .get_or_init(|| async {
            match Cluster::start(3).await {
                Ok(cluster) => cluster,
                Err(err) => panic!("cannot start the shared test cluster: {err:#}"),
            }
        })
        .await
}
