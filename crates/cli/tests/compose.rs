//! The compose stack (`docker-compose.yml`) as users run it, from the offline
//! images, under real container faults:
//!
//! 1. `up` → every service answers `$SRV.PING`; math and a payment work from
//!    the host; time to healthy is printed.
//! 2. A service user publishing to another service's subject is refused by
//!    the server (and the open `client` user is answered on the same subject).
//!    Then the transport attacks (`ATTACK <row> refused: ...`, see
//!    docs/SECURITY.md): no credentials, a wrong password, plaintext with the
//!    right password, a client trusting another CA, rogue nats-servers routing
//!    in without route credentials or with a foreign certificate, and the
//!    monitoring port probed from the services' network.
//! 3. `docker compose stop nats1`, then the node math-service is connected to,
//!    each while the host sends requests and payments: requests resume within
//!    5 s, the cluster keeps quorum, the node rejoins when started again.
//! 4. `docker network disconnect` of one node: the majority serves, the
//!    minority refuses JetStream writes, and after healing every replica of
//!    `PAYMENTS` holds the same messages.
//! 5. The payment-processor's process is killed (SIGKILL from the host, as a
//!    crash): compose restarts the container and every payment acked before,
//!    during and after completes.
//! 6. Every acked payment of the whole run is `completed`.
//! 7. The rogue rows' control: with the route password and the node
//!    certificate a server does join and hears the attacked subject. Then
//!    `down -v` leaves no container, volume or network behind.
//!
//! The stack has its own passwords and certificates: `switchyard secrets`
//! and `switchyard certs` into a temporary directory, passed by environment.
//!
//! Ignored by plain `cargo test`: it needs a Docker engine and the images.
//! `just docker-test` builds the images and runs it; `.ci/run` does so when
//! a Docker engine answers. Every wait is bounded; the stack is removed on
//! drop, also when an assertion fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use async_nats::{Client, ConnectOptions, Event, ServerError};
use futures::StreamExt as _;
use protocol::payment::{PaymentRequest, PaymentStatus, StatusReply};
use protocol::{names, subjects};
use runtime::client::call;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// NATS users of the stack (their passwords come from the stack's own
/// `switchyard secrets` file).
const CLIENT: &str = "client";
const SYS: &str = "sys";
const MATH: &str = "math";
const ADMIN: &str = "admin";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a command to completion within `limit`, killing it past that.
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{shown} did not finish within {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn docker(args: &[&str], limit: Duration) -> String {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    let out = run_bounded(cmd, limit);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One compose project on free host ports, removed (`down -v`) on drop.
/// Its passwords and certificates are its own: `switchyard secrets` and
/// `switchyard certs` into a temporary directory, passed by environment.
struct Stack {
    project: String,
    compose: Vec<String>,
    env: Vec<(String, String)>,
    nats_ports: [u16; 3],
    monitor_port: u16,
    probe_network: Option<String>,
    /// Containers the test started outside compose (rogue servers, probes).
    extra_containers: Vec<String>,
    /// Passwords by env name (`CLIENT_PASSWORD`, ...).
    secrets: BTreeMap<String, String>,
    /// The CA the nodes' certificate is signed by.
    ca: PathBuf,
    /// `<prefix>` of the `control` network (`<prefix>.0/24`; nats1 is `.11`).
    control_net: String,
    /// `<prefix>` of the partition step's probe network; the cut node is `.10`.
    probe_net: String,
    dir: tempfile::TempDir,
}

/// Runs the `switchyard` binary built with this test.
fn switchyard(args: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.args(args).env_remove("SWITCHYARD_ALLOW_DEV_PASSWORDS");
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "switchyard {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Stack {
    fn new() -> Self {
        // `docker compose` (v2 plugin) or `docker-compose` (v1), as the
        // justfile picks; COMPOSE overrides.
        let compose: Vec<String> = match std::env::var("COMPOSE") {
            Ok(c) if !c.trim().is_empty() => c.split_whitespace().map(str::to_owned).collect(),
            _ => {
                let v2 = Command::new("docker")
                    .args(["compose", "version"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if v2 {
                    vec!["docker".into(), "compose".into()]
                } else {
                    vec!["docker-compose".into()]
                }
            }
        };
        let nats_ports = [free_port(), free_port(), free_port()];
        let monitor_port = free_port();
        // Two /24s of their own, outside Docker's default address pools
        // (172.17-31.0.0/16 and 192.168.0.0/16, which compose's default
        // networks are carved from: a /24 in 172.31.0.0/16 collided once
        // the allocator reached that /16, "Pool overlaps").
        let net = 100 + (std::process::id() % 70) * 2;
        let control_net = format!("10.213.{net}");
        let probe_net = format!("10.213.{}", net + 1);
        let dir = tempfile::tempdir().unwrap();
        let env_file = dir.path().join(".env");
        let certs = dir.path().join("certs");
        println!(
            "{}",
            switchyard(&["secrets", "--file", env_file.to_str().unwrap()])
        );
        println!(
            "{}",
            switchyard(&[
                "certs",
                "--dir",
                certs.to_str().unwrap(),
                "--name",
                &format!("{probe_net}.10"),
            ])
        );
        let secrets: BTreeMap<String, String> = std::fs::read_to_string(&env_file)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert!(secrets.contains_key("ROUTE_PASSWORD"), "{secrets:?}");
        let mut env: Vec<(String, String)> = vec![
            ("PUBLISH_ADDR".into(), "127.0.0.1".into()),
            ("NATS_PORT".into(), nats_ports[0].to_string()),
            ("NATS2_PORT".into(), nats_ports[1].to_string()),
            ("NATS3_PORT".into(), nats_ports[2].to_string()),
            ("NATS_MONITOR_PORT".into(), monitor_port.to_string()),
            ("METRICS_PORT".into(), free_port().to_string()),
            ("SWITCHYARD_CERTS_DIR".into(), certs.display().to_string()),
            ("CONTROL_NET".into(), control_net.clone()),
        ];
        env.extend(secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
        Stack {
            project: format!("sytest{}", std::process::id()),
            compose,
            env,
            nats_ports,
            monitor_port,
            probe_network: None,
            extra_containers: Vec::new(),
            secrets,
            ca: certs.join("ca.pem"),
            control_net,
            probe_net,
            dir,
        }
    }

    /// `user`'s password from the stack's secrets.
    fn password(&self, user: &str) -> String {
        self.secrets[&format!("{}_PASSWORD", user.to_uppercase())].clone()
    }

    /// Connects as `user` over TLS, recording the server's refusals
    /// ([`testkit::refusals::watch`]).
    async fn watched(&self, user: &str) -> testkit::refusals::Watched {
        let options = ConnectOptions::with_user_and_password(user.into(), self.password(user))
            .add_root_certificates(self.ca.clone())
            .require_tls(true)
            .custom_inbox_prefix(subjects::inbox_prefix(user))
            .connection_timeout(Duration::from_secs(2));
        testkit::refusals::watch(user, options, self.urls())
            .await
            .unwrap()
    }

    /// Connects as `user` over TLS (see [`connect`]).
    async fn connect(&self, urls: Vec<String>, user: &str) -> (Client, Arc<Mutex<Vec<String>>>) {
        connect(urls, (user, &self.password(user)), &self.ca).await
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .arg("--project-directory")
            .arg(repo_root())
            .arg("-f")
            .arg(repo_root().join("docker-compose.yml"))
            .arg("-p")
            .arg(&self.project)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn compose(&self, args: &[&str], limit: Duration) -> String {
        let out = run_bounded(self.command(args), limit);
        assert!(
            out.status.success(),
            "compose {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn container(&self, service: &str) -> String {
        let id = self.compose(&["ps", "-q", service], Duration::from_secs(30));
        assert!(!id.is_empty(), "no container for {service}");
        id
    }

    fn inspect(&self, service: &str, format: &str) -> String {
        docker(
            &["inspect", "-f", format, &self.container(service)],
            Duration::from_secs(30),
        )
    }

    fn urls(&self) -> Vec<String> {
        self.nats_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect()
    }

    /// What is left of the project: containers, volumes, networks.
    fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut left = Vec::new();
        for kind in [
            vec!["ps", "-aq", "--filter", &label],
            vec!["volume", "ls", "-q", "--filter", &label],
            vec!["network", "ls", "-q", "--filter", &label],
        ] {
            let out = docker(&kind, Duration::from_secs(30));
            left.extend(out.lines().map(|l| format!("{} {l}", kind[0])));
        }
        left
    }

    fn down(&mut self) -> Output {
        for name in std::mem::take(&mut self.extra_containers) {
            let mut cmd = Command::new("docker");
            cmd.args(["rm", "-f", "-v", &name]);
            let _ = run_bounded(cmd, Duration::from_secs(60));
        }
        if let Some(net) = self.probe_network.take() {
            let mut cmd = Command::new("docker");
            cmd.args(["network", "rm", &net]);
            // It may already be gone; nothing to check.
            let _ = run_bounded(cmd, Duration::from_secs(30));
        }
        run_bounded(
            self.command(&["down", "-v", "--remove-orphans", "--timeout", "10"]),
            Duration::from_secs(180),
        )
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep what explains the failure before removing the stack.
            let out = run_bounded(
                self.command(&["logs", "--no-color", "--tail", "30"]),
                Duration::from_secs(60),
            );
            eprintln!(
                "--- last compose logs ---\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
            let _ = self.down();
        }
    }
}

/// `docker compose run requester` (seed 004) until it prints `pong`
/// (the replier may still be connecting), bounded.
async fn seed_requester(stack: &Stack) -> String {
    let mut last = String::new();
    for _ in 0..10 {
        let out = run_bounded(
            stack.command(&[
                "--profile",
                "seed004",
                "run",
                "--rm",
                "-T",
                "--no-deps",
                "requester",
            ]),
            Duration::from_secs(60),
        );
        last = format!(
            "{} {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "pong" {
            return "pong".to_owned();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("the seed 004 requester never got pong: {last}");
}

/// Connects over TLS (trusting `ca`) with fast reconnects; server errors
/// (permission violations) go to the returned list.
async fn connect(
    urls: Vec<String>,
    (user, password): (&str, &str),
    ca: &Path,
) -> (Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = ConnectOptions::with_user_and_password(user.into(), password.into())
        .add_root_certificates(ca.to_path_buf())
        .require_tls(true)
        // Each user may read only its own inboxes (protocol::accounts).
        .custom_inbox_prefix(subjects::inbox_prefix(user))
        .name("compose-test")
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        // Notice a silently cut node in about 2 s.
        .ping_interval(Duration::from_secs(1))
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(2)))
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let Event::ServerError(ServerError::Other(e)) = event {
                    seen.lock().unwrap().push(e);
                }
            }
        })
        .connect(urls.clone());
    // Bounded: a stack whose nodes never come up fails here, not never.
    let client = tokio::time::timeout(Duration::from_secs(120), client)
        .await
        .unwrap_or_else(|_| panic!("no NATS node of {urls:?} accepted {user} within 120 s"))
        .unwrap();
    (client, errors)
}

/// Every reply to one request within `wait` (`$SYS` pings: each server answers).
async fn gather(client: &Client, subject: &str, body: Value, wait: Duration) -> Vec<Value> {
    runtime::client::gather(client, subject.to_owned(), body.to_string().into(), wait)
        .await
        .unwrap()
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    let mut last = String::from("never checked");
    while started.elapsed() < limit {
        match check().await {
            Ok(()) => return started.elapsed(),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what}: not within {limit:?}; last: {last}");
}

async fn services_answering(client: &Client) -> BTreeSet<String> {
    runtime::client::discover::<protocol::micro::PingResponse>(
        client,
        protocol::micro::Verb::Ping,
        None,
        Duration::from_millis(700),
    )
    .await
    .unwrap()
    .into_iter()
    .map(|p| p.name)
    .collect()
}

async fn add(client: &Client, a: f64, b: f64) -> Result<f64, String> {
    let reply: protocol::math::CalculateReply = call(
        client,
        &subjects::math_operation(protocol::math::Operation::Add),
        &json!({"a": a, "b": b}),
        Duration::from_secs(1),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(reply.result)
}

async fn pay(js: &async_nats::jetstream::Context, id: &str) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&PaymentRequest {
        payment_id: id.into(),
        user_id: "compose".into(),
        subscription_id: None,
        amount: "9.99".into(),
        currency: "USD".into(),
        email: None,
    })?;
    runtime::js::publish_durable(
        js,
        subjects::PAYMENT_PROCESS,
        id,
        None,
        body.into(),
        Duration::from_secs(20),
    )
    .await?;
    Ok(())
}

async fn status(client: &Client, id: &str) -> Result<StatusReply, String> {
    call(
        client,
        subjects::PAYMENT_STATUS,
        &json!({"payment_id": id}),
        Duration::from_secs(2),
    )
    .await
    .map_err(|e| e.to_string())
}

/// Math requests and payments from the host while a fault happens.
struct Load {
    stop: Arc<AtomicBool>,
    math: tokio::task::JoinHandle<(u64, u64, Duration)>,
    payments: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(client: &Client, tag: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let math = {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut last_ok = Instant::now();
                let mut longest_gap = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    match add(&client, 2.0, 3.0).await {
                        Ok(r) => {
                            assert!((r - 5.0).abs() < f64::EPSILON, "2 + 3 = {r}");
                            ok += 1;
                            longest_gap = longest_gap.max(last_ok.elapsed());
                            last_ok = Instant::now();
                        }
                        Err(_) => failed += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                longest_gap = longest_gap.max(last_ok.elapsed());
                (ok, failed, longest_gap)
            })
        };
        let payments = {
            let (js, stop) = (async_nats::jetstream::new(client.clone()), stop.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = format!("{tag}-{n}");
                    // Acked within the budget or the test fails: a payment
                    // must be accepted while the cluster has quorum.
                    pay(&js, &id)
                        .await
                        .unwrap_or_else(|e| panic!("{id} not acked: {e:#}"));
                    acked.push(id);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                acked
            })
        };
        Load {
            stop,
            math,
            payments,
        }
    }

    /// (math ok, math failed, longest gap between answers, acked payment ids)
    async fn stop(self) -> (u64, u64, Duration, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (ok, failed, gap) = self.math.await.unwrap();
        let acked = self.payments.await.unwrap();
        (ok, failed, gap, acked)
    }
}

/// Which server each connection named `name` is on (`$SYS.REQ.SERVER.PING.CONNZ`).
async fn servers_of(sys: &Client, name: &str) -> Vec<String> {
    gather(
        sys,
        "$SYS.REQ.SERVER.PING.CONNZ",
        json!({"account": "APP", "limit": 1024}),
        Duration::from_secs(1),
    )
    .await
    .iter()
    .filter(|r| {
        r["data"]["connections"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"].as_str() == Some(name)))
    })
    .filter_map(|r| r["server"]["name"].as_str().map(str::to_owned))
    .collect()
}

/// One server's view from JSZ: its `PAYMENTS` replica and the meta leader.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Replica {
    server: String,
    messages: u64,
    last_seq: u64,
    meta_leader: String,
}

impl Replica {
    fn same_state(&self, other: &Replica) -> bool {
        (self.messages, self.last_seq) == (other.messages, other.last_seq)
    }
}

/// Every answering server's [`Replica`], sorted by server name.
async fn payments_replicas(sys: &Client) -> Vec<Replica> {
    let mut out: Vec<_> = gather(
        sys,
        "$SYS.REQ.SERVER.PING.JSZ",
        json!({"accounts": true, "streams": true}),
        Duration::from_secs(1),
    )
    .await
    .iter()
    .map(|r| {
        let server = r["server"]["name"].as_str().unwrap_or("?").to_owned();
        let meta_leader = r["data"]["meta_cluster"]["leader"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let stream = r["data"]["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
            .find(|s| s["name"].as_str() == Some(names::streams::PAYMENTS));
        let (messages, last_seq) = stream.map_or((0, 0), |s| {
            (
                s["state"]["messages"].as_u64().unwrap_or(0),
                s["state"]["last_seq"].as_u64().unwrap_or(0),
            )
        });
        Replica {
            server,
            messages,
            last_seq,
            meta_leader,
        }
    })
    .collect();
    out.sort();
    out
}

/// Prints an attack row's outcome; fails the test when it was let through.
fn attack_row(row: &str, outcome: Result<String, String>) {
    match outcome {
        Ok(how) => println!("ATTACK {row} refused: {how}"),
        Err(what) => panic!("ATTACK {row} NOT refused: {what}"),
    }
}

/// A connection attempt that must fail: `Ok(error)` when it did.
async fn connect_refused(opts: ConnectOptions, urls: &[String]) -> Result<String, String> {
    match tokio::time::timeout(
        Duration::from_secs(10),
        opts.connection_timeout(Duration::from_secs(3))
            .connect(urls.to_vec()),
    )
    .await
    {
        Ok(Err(e)) => Ok(format!("{e}")),
        Ok(Ok(c)) => Err(format!("connected to {}", c.server_info().server_name)),
        Err(_) => Ok("no connection within 10 s".into()),
    }
}

/// The right password over plaintext: INFO, then `CONNECT` + `PING` without
/// TLS. Refused when no `PONG` comes back.
async fn plaintext_refused(port: u16, user: &str, password: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("no TCP connection at all ({e}): not a TLS check"))?;
    let mut info = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut info))
        .await
        .map_err(|_| "no INFO".to_owned())?
        .map_err(|e| e.to_string())?;
    let info = String::from_utf8_lossy(&info[..n]).to_string();
    if !info.contains("\"tls_required\":true") {
        return Err(format!("INFO does not require TLS: {info}"));
    }
    let connect = json!({"user": user, "pass": password, "verbose": false, "pedantic": false, "tls_required": false, "protocol": 1});
    tcp.write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer)
        .replace(|c: char| c.is_control(), " ")
        .trim()
        .to_owned();
    if text.contains("PONG") || text.contains("+OK") {
        return Err(format!("the server answered {text:?}"));
    }
    Ok(format!(
        "the server {} after the plaintext CONNECT with the right password (got {} bytes{})",
        if read.is_ok() {
            "closed the connection"
        } else {
            "said nothing for 5 s"
        },
        answer.len(),
        if text.is_empty() {
            String::new()
        } else {
            format!(": {text:?}")
        }
    ))
}

impl Stack {
    /// Starts a nats-server (the offline NATS image) on the stack's network
    /// whose only route is `route_url`, with `certs_from`'s certificate on
    /// its routes, an `APP` account of its own (user `spy`) and its client
    /// port published on the host. Returns (container name, host port).
    fn rogue(&mut self, case: &str, route_url: &str, certs_from: &Path) -> (String, u16) {
        let dir = self.dir.path().join(format!("rogue-{case}"));
        std::fs::create_dir_all(&dir).unwrap();
        for (from, to) in [
            ("nats.pem", "cert.pem"),
            ("nats-key.pem", "key.pem"),
            ("ca.pem", "ca.pem"),
        ] {
            std::fs::copy(certs_from.join(from), dir.join(to)).unwrap();
        }
        std::fs::write(
            dir.join("rogue.conf"),
            format!(
                "server_name: rogue-{case}\nlisten: 0.0.0.0:4222\n\
                 accounts {{ APP {{ users: [ {{ user: spy, password: spy-password-1 }} ] }}, SYS {{ }} }}\n\
                 system_account: SYS\n\
                 cluster {{\n  name: switchyard\n  listen: 0.0.0.0:6222\n\
                 tls {{ cert_file: /etc/nats/cert.pem, key_file: /etc/nats/key.pem, ca_file: /etc/nats/ca.pem, verify: true, timeout: 2 }}\n\
                 routes: [ \"{route_url}\" ]\n}}\n"
            ),
        )
        .unwrap();
        let name = format!("{}_rogue_{case}", self.project);
        let port = free_port();
        let image = std::env::var("NATS_IMAGE").unwrap_or_else(|_| "nats:2.15.1".into());
        self.extra_containers.push(name.clone());
        docker(
            &[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                &format!("{}_default", self.project),
                "-p",
                &format!("127.0.0.1:{port}:4222"),
                "-v",
                &format!("{}:/etc/nats:ro", dir.display()),
                &image,
                "--config",
                "/etc/nats/rogue.conf",
            ],
            Duration::from_secs(60),
        );
        (name, port)
    }

    fn remove_container(&mut self, name: &str) {
        docker(&["rm", "-f", "-v", name], Duration::from_secs(60));
        self.extra_containers.retain(|n| n != name);
    }
}

/// The cluster's servers as `sys` sees them (`$SYS.REQ.SERVER.PING`).
async fn cluster_servers(sys: &Client) -> Vec<String> {
    let mut names: Vec<String> = gather(
        sys,
        "$SYS.REQ.SERVER.PING",
        json!({}),
        Duration::from_secs(1),
    )
    .await
    .iter()
    .filter_map(|r| r["server"]["name"].as_str().map(str::to_owned))
    .collect();
    names.sort();
    names
}

/// What a rogue server achieved (see [`rogue_attempt`]).
#[derive(Debug)]
struct RogueOutcome {
    /// The cluster's servers as `sys` sees them meanwhile.
    servers: Vec<String>,
    /// The first message the rogue's `>` subscriber received, if any.
    spied: Option<String>,
    /// What nats1 logged about the rogue's address, else the rogue's log.
    reason: String,
}

impl RogueOutcome {
    /// Refused: still exactly nats1..3, and the rogue heard nothing.
    fn refused(&self) -> Result<String, String> {
        if self.servers != ["nats1", "nats2", "nats3"] || self.spied.is_some() {
            return Err(format!("{self:?}"));
        }
        Ok(format!(
            "cluster still {:?}, the rogue's `>` got nothing of 5 messages the cluster delivered; {}",
            self.servers, self.reason
        ))
    }
}

/// A rogue server (see [`Stack::rogue`]) tries to route into nats1. `client`
/// publishes 5 messages on a subject the rogue's own subscriber listens to
/// (`>`) and a subscriber on the real cluster (`math`, which may subscribe
/// `$SRV.>`) too; the subject is one no service and no stream listens to.
/// When `joins`, waits (bounded) for the rogue to appear first: the control
/// run that shows these checks see a server that does get in.
async fn rogue_attempt(
    stack: &mut Stack,
    client: &Client,
    sys: &Client,
    case: &str,
    route_url: &str,
    certs_from: &Path,
    joins: bool,
) -> RogueOutcome {
    let (name, port) = stack.rogue(case, route_url, certs_from);
    let spy = wait_for_rogue(port).await.unwrap();
    let mut spied = spy.subscribe(">").await.unwrap();
    spy.flush().await.unwrap();
    let subject = format!("$SRV.compose-attack.{case}");
    let (math, _) = stack.connect(stack.urls(), MATH).await;
    let mut control = math.subscribe(subject.clone()).await.unwrap();
    math.flush().await.unwrap();
    if joins {
        let rogue = format!("rogue-{case}");
        wait_until("the rogue joins", Duration::from_secs(30), || {
            let sys = sys.clone();
            let rogue = rogue.clone();
            async move {
                let servers = cluster_servers(&sys).await;
                if servers.contains(&rogue) {
                    Ok(())
                } else {
                    Err(format!("{servers:?}"))
                }
            }
        })
        .await;
        // Interest crosses the new route.
        tokio::time::sleep(Duration::from_secs(2)).await;
    } else {
        // The rogue dials nats1 about once a second: several tries.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    for i in 0..5 {
        client
            .publish(subject.clone(), format!("secret {i}").into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), control.next()).await;
    assert!(
        matches!(seen, Ok(Some(_))),
        "the control subscriber on the cluster got nothing: the check would prove nothing"
    );
    // Everything the rogue's `>` got within 3 s; ours first when it is there.
    let mut heard = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(m) = spied.next().await {
            heard.push(m);
        }
    })
    .await;
    let spied = heard
        .iter()
        .find(|m| m.subject.as_str() == subject)
        .or(heard.first())
        .map(|m| {
            format!(
                "{:?} on {} ({} messages in all)",
                m.payload,
                m.subject,
                heard.len()
            )
        });
    let servers = cluster_servers(sys).await;
    let ip = docker(
        &[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &name,
        ],
        Duration::from_secs(30),
    );
    let text = |out: Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let nats1 = text(run_bounded(
        stack.command(&["logs", "--no-color", "--tail", "300", "nats1"]),
        Duration::from_secs(30),
    ));
    let rogue_log = {
        let mut cmd = Command::new("docker");
        cmd.args(["logs", "--tail", "200", &name]);
        text(run_bounded(cmd, Duration::from_secs(30)))
    };
    let last = |log: &str, want: &dyn Fn(&str) -> bool| {
        log.lines()
            .rev()
            .find(|l| want(l))
            .map(|l| l.split_once("] ").map_or(l, |(_, r)| r).trim().to_owned())
    };
    let from_rogue = format!("{ip}:");
    let reason = match last(&nats1, &|l: &str| {
        l.contains(&from_rogue) && (l.contains("[ERR]") || l.contains("closed"))
    }) {
        Some(l) => format!("nats1 logged: {l}"),
        None => format!(
            "rogue logged: {}",
            last(&rogue_log, &|l: &str| l.contains("[ERR]")
                || l.contains("closed"))
            .unwrap_or_else(|| "no route error".into())
        ),
    };
    drop((spy, control, math));
    stack.remove_container(&name);
    RogueOutcome {
        servers,
        spied,
        reason,
    }
}

async fn wait_for_rogue(port: u16) -> Result<Client, String> {
    let started = Instant::now();
    loop {
        match ConnectOptions::with_user_and_password("spy".into(), "spy-password-1".into())
            .connection_timeout(Duration::from_secs(2))
            .connect(format!("nats://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return Ok(c),
            Err(e) if started.elapsed() > Duration::from_secs(30) => {
                return Err(format!("the rogue server did not start: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Monitoring from the services' network: a probe container (`switchyard
/// probe-tcp` in the offline CLI image) on `<project>_default` reaches
/// nats1's client port (the probe works) but not its monitoring port, by
/// name or at its `control` address; the host reaches `/varz`.
async fn monitoring_refused(stack: &Stack) -> Result<String, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut http = tokio::net::TcpStream::connect(("127.0.0.1", stack.monitor_port))
        .await
        .map_err(|e| {
            format!("the host cannot reach monitoring either ({e}): the check proves nothing")
        })?;
    http.write_all(b"GET /varz HTTP/1.0\r\n\r\n").await.unwrap();
    let mut body = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), http.read_to_string(&mut body)).await;
    if !body.contains("server_id") {
        return Err(format!("the host got no /varz: {body:.200}"));
    }
    let tag = std::env::var("SWITCHYARD_TAG").unwrap_or_else(|_| "dev".into());
    let control = format!("{}.11:8222", stack.control_net);
    let mut cmd = Command::new("docker");
    cmd.args([
        "run",
        "--rm",
        "--network",
        &format!("{}_default", stack.project),
        &format!("switchyard/cli:{tag}"),
        "probe-tcp",
        "--timeout-ms",
        "3000",
        "nats1:4222",
        "nats1:8222",
        "nats2:8222",
        &control,
    ]);
    let out = run_bounded(cmd, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!(
            "probe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let lines: Vec<&str> = text.lines().collect();
    if !lines.contains(&"nats1:4222 open") {
        return Err(format!(
            "the probe cannot reach nats1:4222, so it proves nothing: {text}"
        ));
    }
    if let Some(open) = lines
        .iter()
        .find(|l| l.contains("8222") && l.ends_with(" open"))
    {
        return Err(format!("reachable from the services' network: {open}"));
    }
    Ok(format!(
        "host /varz answered; from {}_default: {}",
        stack.project,
        lines.join("; ")
    ))
}

/// The transport attacks against the running stack (docs/SECURITY.md).
async fn transport_attacks(stack: &mut Stack, client: &Client, sys: &Client) -> usize {
    let urls = stack.urls();
    let ca = stack.ca.clone();
    let tls = || {
        ConnectOptions::new()
            .add_root_certificates(ca.clone())
            .require_tls(true)
    };
    let mut rows = 0;

    attack_row(
        "unauthenticated connect",
        connect_refused(tls(), &urls).await,
    );
    rows += 1;
    attack_row(
        "wrong password (client)",
        connect_refused(
            ConnectOptions::with_user_and_password(CLIENT.into(), "not-the-password-1".into())
                .add_root_certificates(ca.clone())
                .require_tls(true),
            &urls,
        )
        .await,
    );
    rows += 1;
    attack_row(
        "plaintext connect with the right password",
        plaintext_refused(stack.nats_ports[0], CLIENT, &stack.password(CLIENT)).await,
    );
    rows += 1;
    attack_row(
        "TLS with an untrusted CA (the client does not trust a foreign server)",
        {
            let other = stack.dir.path().join("other-ca");
            switchyard(&["certs", "--dir", other.to_str().unwrap()]);
            connect_refused(
                ConnectOptions::with_user_and_password(CLIENT.into(), stack.password(CLIENT))
                    .add_root_certificates(other.join("ca.pem"))
                    .require_tls(true),
                &urls,
            )
            .await
        },
    );
    rows += 1;

    let certs = stack.ca.parent().unwrap().to_path_buf();
    let other = stack.dir.path().join("other-ca");
    attack_row(
        "rogue server routes in without route credentials (valid certificate)",
        rogue_attempt(
            stack,
            client,
            sys,
            "nocreds",
            "nats-route://nats1:6222",
            &certs,
            false,
        )
        .await
        .refused(),
    );
    rows += 1;
    let with_password = format!("nats-route://route:{}@nats1:6222", stack.password("route"));
    attack_row(
        "rogue server routes in with the route password but a certificate of another CA",
        rogue_attempt(stack, client, sys, "badcert", &with_password, &other, false)
            .await
            .refused(),
    );
    rows += 1;
    attack_row(
        "monitoring port from the services' network",
        monitoring_refused(stack).await,
    );
    rows += 1;
    rows
}

/// Waits until every service answers `$SRV.PING`.
async fn wait_all_services(client: &Client, what: &str, limit: Duration) -> Duration {
    let all: BTreeSet<String> = names::services::ALL
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    wait_until(what, limit, || {
        let client = client.clone();
        let all = all.clone();
        async move {
            let seen = services_answering(&client).await;
            if seen == all {
                Ok(())
            } else {
                Err(format!("answering: {seen:?}"))
            }
        }
    })
    .await
}

/// Waits until all three nodes report the same `PAYMENTS` state and a meta leader.
async fn wait_replicas_agree(sys: &Client, what: &str, limit: Duration) -> Duration {
    wait_until(what, limit, || {
        let sys = sys.clone();
        async move {
            let r = payments_replicas(&sys).await;
            let same = r.windows(2).all(|w| w[0].same_state(&w[1]));
            if r.len() == 3 && same && r.iter().all(|x| !x.meta_leader.is_empty()) {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        }
    })
    .await
}

/// Polls `services.payment.status` until every id is `completed`.
async fn wait_all_completed(client: &Client, ids: &[String], limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut pending = ids.to_vec();
    loop {
        let mut still = Vec::new();
        for id in pending {
            match status(client, &id).await {
                Ok(s) if s.status == PaymentStatus::Completed => {}
                Ok(s) if s.status == PaymentStatus::Failed => panic!("{id} failed: {s:?}"),
                _ => still.push(id),
            }
        }
        if still.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} acked payments not completed within {limit:?}, e.g. {:?}",
            still.len(),
            &still[..still.len().min(5)]
        );
        pending = still;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How many `events.payment.completed` each payment has in `EVENTS`.
async fn completed_events(js: &async_nats::jetstream::Context) -> BTreeMap<String, u32> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    let stream = js.get_stream(names::streams::EVENTS).await.unwrap();
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subjects::EVENT_PAYMENT_COMPLETED.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let total = consumer.info().await.unwrap().num_pending;
    let mut messages = consumer.messages().await.unwrap();
    let mut counts = BTreeMap::new();
    for _ in 0..total {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("EVENTS stalled")
            .expect("EVENTS ended")
            .unwrap();
        let event: protocol::payment::PaymentEvent = serde_json::from_slice(&m.payload).unwrap();
        *counts.entry(event.payment_id).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the offline images: run `just docker-test`"]
async fn compose_stack_survives_node_loss_partitions_and_crashes() {
    let mut stack = Stack::new();
    println!(
        "project {} on NATS ports {:?}",
        stack.project, stack.nats_ports
    );

    // 1. Up, healthy, math and a payment from the host.
    let started = Instant::now();
    stack.compose(&["up", "-d", "--no-build"], Duration::from_secs(180));
    let (client, _) = stack.connect(stack.urls(), CLIENT).await;
    wait_all_services(
        &client,
        "all six services answer $SRV.PING",
        Duration::from_secs(90),
    )
    .await;
    let healthy = started.elapsed();
    assert_eq!(add(&client, 2.0, 3.0).await.unwrap(), 5.0);
    let js = async_nats::jetstream::new(client.clone());
    pay(&js, "compose-first").await.unwrap();
    let mut acked = vec!["compose-first".to_owned()];
    wait_all_completed(&client, &acked, Duration::from_secs(30)).await;
    println!("healthy (all $SRV.PING, math, a payment) {healthy:?} after `up`");

    // 2. Least privilege: math's user may not call the payment service.
    let (math_user, violations) = stack.connect(stack.urls(), MATH).await;
    let refused = math_user
        .request(
            subjects::PAYMENT_STATUS,
            json!({"payment_id": "compose-first"}).to_string().into(),
        )
        .await;
    assert!(refused.is_err(), "the math user got a payment status reply");
    wait_until(
        "the server reports the violation",
        Duration::from_secs(5),
        || {
            let v = violations.lock().unwrap().clone();
            async move {
                if v.iter().any(|e| {
                    e.to_lowercase().contains("permissions violation")
                        && e.contains(subjects::PAYMENT_STATUS)
                }) {
                    Ok(())
                } else {
                    Err(format!("server errors so far: {v:?}"))
                }
            }
        },
    )
    .await;
    assert!(
        status(&client, "compose-first").await.is_ok(),
        "the client user is answered"
    );
    drop(math_user);
    println!("math user refused on {}", subjects::PAYMENT_STATUS);

    // 2a. The least-privilege rows on the real stack, the same rows as the
    // testkit suite (`testkit::attacks`): every service user, then client.
    let rows_started = Instant::now();
    let users = protocol::accounts::users();
    for user in &users {
        let w = stack.watched(user.name).await;
        testkit::attacks::service_user(&w, user, &users).await;
    }
    testkit::attacks::client(&stack.watched(CLIENT).await).await;
    println!(
        "least-privilege rows: {} service users and client refused in {:?}",
        users.len(),
        rows_started.elapsed()
    );

    // 2c. Seed 004's roles (profile seed004, the CLI image, user demo): a
    // replier stays up through the node stops below; a requester gets pong.
    stack.compose(
        &["--profile", "seed004", "up", "-d", "--no-build", "replier"],
        Duration::from_secs(120),
    );
    let pong = seed_requester(&stack).await;
    println!("seed 004: requester got {pong:?} from the replier container");

    // 3. Stop nats1, then the node math-service is on, each under load.
    let (sys, _) = stack.connect(stack.urls(), SYS).await;

    // 2b. Transport: TLS, passwords, route authorization, monitoring exposure.
    let attacks = Instant::now();
    let rows = transport_attacks(&mut stack, &client, &sys).await;
    println!(
        "{rows} transport attack rows refused in {:?}",
        attacks.elapsed()
    );
    let math_on = servers_of(&sys, names::services::MATH).await;
    println!("math-service connected to {math_on:?}");
    for round in 0..2 {
        let node = if round == 0 {
            "nats1".to_owned()
        } else {
            let on = servers_of(&sys, names::services::MATH).await;
            assert_eq!(on.len(), 1, "math-service on {on:?}");
            on[0].clone()
        };
        let load = Load::start(&client, if round == 0 { "stop-a" } else { "stop-b" });
        tokio::time::sleep(Duration::from_secs(2)).await;
        let stopped = Instant::now();
        stack.compose(&["stop", "--timeout", "10", &node], Duration::from_secs(60));
        println!("stopped {node} in {:?}", stopped.elapsed());
        let leader = wait_until(
            "quorum without the stopped node",
            Duration::from_secs(30),
            || {
                let sys = sys.clone();
                let node = node.clone();
                async move {
                    let r = payments_replicas(&sys).await;
                    // Only the two running nodes answer, and they agree on a leader.
                    if r.len() == 2
                        && r.iter()
                            .all(|x| !x.meta_leader.is_empty() && x.meta_leader != node)
                    {
                        Ok(())
                    } else {
                        Err(format!("{r:?}"))
                    }
                }
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        let (ok, failed, gap, ids) = load.stop().await;
        println!(
            "{node} stopped: {ok} math answers, {failed} failed, longest gap {gap:?}; {} payments acked; meta leader seen after {leader:?}",
            ids.len()
        );
        assert!(
            gap < Duration::from_secs(5),
            "math answers paused {gap:?} after stopping {node}"
        );
        assert!(ok > 0 && !ids.is_empty());
        acked.extend(ids);

        let restarted = Instant::now();
        stack.compose(&["start", &node], Duration::from_secs(60));
        let rejoin = wait_replicas_agree(
            &sys,
            &format!("{node} rejoins with PAYMENTS caught up"),
            Duration::from_secs(60),
        )
        .await;
        println!(
            "{node} rejoined and caught up {rejoin:?} after start (restart took {:?})",
            restarted.elapsed()
        );
    }

    // Seed 004: `stop nats1` / `start nats1` keeps the roles working.
    let pong = seed_requester(&stack).await;
    println!("seed 004: after the node stops, requester got {pong:?}");

    // 4. Partition a node off (one math-service is not on, so the majority's
    //    math keeps answering while services on the cut node move over).
    let math_now = servers_of(&sys, names::services::MATH).await;
    println!("math-service now on {math_now:?}");
    // Not nats1: its published ports go through the `control` network
    // (docker-compose.yml), so the host would still reach it when cut off.
    let target = ["nats3", "nats2"]
        .into_iter()
        .find(|n| !math_now.iter().any(|m| m == n))
        .unwrap();
    let default_net = format!("{}_default", stack.project);
    let probe = format!("{}_probe", stack.project);
    docker(
        &[
            "network",
            "create",
            "--subnet",
            &format!("{}.0/24", stack.probe_net),
            &probe,
        ],
        Duration::from_secs(30),
    );
    stack.probe_network = Some(probe.clone());
    let cut_off = stack.container(target);
    // A fixed address the node certificate names (`switchyard certs --name`).
    let probe_ip = format!("{}.10", stack.probe_net);
    docker(
        &["network", "connect", "--ip", &probe_ip, &probe, &cut_off],
        Duration::from_secs(30),
    );
    let load = Load::start(&client, "partition");
    tokio::time::sleep(Duration::from_secs(1)).await;
    docker(
        &["network", "disconnect", &default_net, &cut_off],
        Duration::from_secs(30),
    );
    let cut = Instant::now();
    println!("{target} cut off (reachable only at {probe_ip} on {probe})");
    // A client that can reach only the cut-off node: its writes are never acked.
    let (minority, _) = stack
        .connect(vec![format!("nats://{probe_ip}:4222")], CLIENT)
        .await;
    let minority_js = async_nats::jetstream::new(minority.clone());
    for _ in 0..3 {
        let ack = tokio::time::timeout(Duration::from_secs(3), async {
            minority_js
                .publish(subjects::PAYMENT_PROCESS, "{}".into())
                .await?
                .await
        })
        .await;
        assert!(
            !matches!(ack, Ok(Ok(_))),
            "the minority acked a write: {ack:?}"
        );
    }
    // Services that were on the cut node notice (pings) and move to the majority.
    let moved = wait_all_services(
        &client,
        "all six services answer from the majority",
        Duration::from_secs(60),
    )
    .await;
    let (ok, failed, gap, ids) = load.stop().await;
    println!(
        "partition ({:?}): majority served {ok} math answers ({failed} failed, longest gap {gap:?}), {} payments acked; minority refused 3 writes; all services answering {moved:?} after the cut",
        cut.elapsed(),
        ids.len()
    );
    assert!(
        gap < Duration::from_secs(5),
        "math paused {gap:?} during the partition"
    );
    assert!(ok > 0 && !ids.is_empty());
    acked.extend(ids);
    drop(minority);
    docker(
        &[
            "network",
            "connect",
            "--alias",
            target,
            &default_net,
            &cut_off,
        ],
        Duration::from_secs(30),
    );
    docker(
        &["network", "disconnect", &probe, &cut_off],
        Duration::from_secs(30),
    );
    let healed = wait_replicas_agree(
        &sys,
        "replicas agree after healing",
        Duration::from_secs(60),
    )
    .await;
    println!("healed: all three PAYMENTS replicas equal {healed:?} after reconnecting {target}");

    // 5. Crash the payment-processor mid-stream; compose restarts it.
    let restarts_before: u32 = stack
        .inspect("payment-processor", "{{.RestartCount}}")
        .parse()
        .unwrap();
    let load = Load::start(&client, "crash");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = stack.inspect("payment-processor", "{{.State.Pid}}");
    let mut kill = Command::new("kill");
    kill.args(["-KILL", &pid]);
    assert!(run_bounded(kill, Duration::from_secs(10)).status.success());
    let killed = Instant::now();
    let back = wait_until(
        "payment-processor restarted and serving",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            async move {
                if !services_answering(&client)
                    .await
                    .contains(names::services::PAYMENT_PROCESSOR)
                {
                    return Err("not answering $SRV.PING".into());
                }
                status(&client, "compose-first").await.map(|_| ())
            }
        },
    )
    .await;
    let restarts_after: u32 = stack
        .inspect("payment-processor", "{{.RestartCount}}")
        .parse()
        .unwrap();
    assert!(
        restarts_after > restarts_before,
        "compose did not restart the killed container"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, _, _, ids) = load.stop().await;
    println!(
        "payment-processor killed (pid {pid}): restarted by compose and serving {back:?} later ({:?} since the kill); {} payments acked meanwhile",
        killed.elapsed(),
        ids.len()
    );
    acked.extend(ids);

    // 6. Nothing acked was lost; each was charged once.
    wait_all_completed(&client, &acked, Duration::from_secs(120)).await;
    // Reading EVENTS through a consumer is an admin's right.
    let (admin, _) = stack.connect(stack.urls(), ADMIN).await;
    let admin_js = async_nats::jetstream::new(admin);
    // A processor killed between recording `completed` and publishing the
    // event publishes it when the payment is redelivered, after the
    // consumer's ack wait (30 s): wait for that (bounded), never for a second.
    let events_started = Instant::now();
    let mut first_missing = None;
    loop {
        let events = completed_events(&admin_js).await;
        for id in &acked {
            assert!(
                events.get(id).is_none_or(|n| *n == 1),
                "completed events of {id}: {:?}",
                events.get(id)
            );
        }
        let missing: Vec<&String> = acked
            .iter()
            .filter(|id| !events.contains_key(*id))
            .collect();
        if missing.is_empty() {
            break;
        }
        first_missing.get_or_insert(missing.len());
        assert!(
            events_started.elapsed() < Duration::from_secs(90),
            "no completed event for {} completed payments within 90 s, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "all {} acked payments completed, one completed event each{}",
        acked.len(),
        first_missing.map_or(String::new(), |n| format!(
            " ({n} event(s) came on redelivery, {:?} after the payments were completed)",
            events_started.elapsed()
        ))
    );

    // 7. The control of the rogue rows: with the route password and the
    //    node certificate a server does get in, and the same checks see it.
    let certs = stack.ca.parent().unwrap().to_path_buf();
    let with_password = format!("nats-route://route:{}@nats1:6222", stack.password("route"));
    let joined = rogue_attempt(
        &mut stack,
        &client,
        &sys,
        "control",
        &with_password,
        &certs,
        true,
    )
    .await;
    assert!(
        joined.refused().is_err() && joined.spied.is_some(),
        "a server with the route password and certificate did not get in: {joined:?}"
    );
    println!(
        "CONTROL a server with the route password and the node certificate joins: servers {:?}, its `>` received {}",
        joined.servers,
        joined.spied.as_deref().unwrap_or("-")
    );

    drop((client, sys));
    let out = stack.down();
    assert!(
        out.status.success(),
        "down -v failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = stack.leftovers();
    assert!(left.is_empty(), "`down -v` left {left:?}");
    println!("down -v left nothing behind");
}
