//! The compose stack (`docker-compose.yml`) as users run it, from the offline
//! images, under real container faults:
//!
//! 1. `up` → every service answers `$SRV.PING`; math and a payment work from
//!    the host; time to healthy is printed.
//! 2. A service user publishing to another service's subject is refused by
//!    the server (and the open `client` user is answered on the same subject).
//! 3. `docker compose stop nats1`, then the node math-service is connected to,
//!    each while the host sends requests and payments: requests resume within
//!    5 s, the cluster keeps quorum, the node rejoins when started again.
//! 4. `docker network disconnect` of one node: the majority serves, the
//!    minority refuses JetStream writes, and after healing every replica of
//!    `PAYMENTS` holds the same messages.
//! 5. The payment-processor's process is killed (SIGKILL from the host, as a
//!    crash): compose restarts the container and every payment acked before,
//!    during and after completes.
//! 6. Every acked payment of the whole run is `completed`; `down -v` leaves
//!    no container, volume or network behind.
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
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Passwords of docker-compose.yml's defaults (.env.example).
const CLIENT: (&str, &str) = ("client", "client-dev");
const SYS: (&str, &str) = ("sys", "sys-dev");
const MATH: (&str, &str) = ("math", "math-dev");
const ADMIN: (&str, &str) = ("admin", "admin-dev");

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
struct Stack {
    project: String,
    compose: Vec<String>,
    env: Vec<(String, String)>,
    nats_ports: [u16; 3],
    probe_network: Option<String>,
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
        let env = vec![
            ("PUBLISH_ADDR".into(), "127.0.0.1".into()),
            ("NATS_PORT".into(), nats_ports[0].to_string()),
            ("NATS2_PORT".into(), nats_ports[1].to_string()),
            ("NATS3_PORT".into(), nats_ports[2].to_string()),
            ("NATS_MONITOR_PORT".into(), free_port().to_string()),
            ("METRICS_PORT".into(), free_port().to_string()),
        ];
        Stack {
            project: format!("sytest{}", std::process::id()),
            compose,
            env,
            nats_ports,
            probe_network: None,
        }
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

/// Connects with fast reconnects; server errors (permission violations) go
/// to the returned list.
async fn connect(
    urls: Vec<String>,
    (user, password): (&str, &str),
) -> (Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = ConnectOptions::with_user_and_password(user.into(), password.into())
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
        .connect(urls)
        .await
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
    let (client, _) = connect(stack.urls(), CLIENT).await;
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
    let (math_user, violations) = connect(stack.urls(), MATH).await;
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

    // 3. Stop nats1, then the node math-service is on, each under load.
    let (sys, _) = connect(stack.urls(), SYS).await;
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

    // 4. Partition a node off (one math-service is not on, so the majority's
    //    math keeps answering while services on the cut node move over).
    let math_now = servers_of(&sys, names::services::MATH).await;
    println!("math-service now on {math_now:?}");
    let target = ["nats3", "nats2", "nats1"]
        .into_iter()
        .find(|n| !math_now.iter().any(|m| m == n))
        .unwrap();
    let default_net = format!("{}_default", stack.project);
    let probe = format!("{}_probe", stack.project);
    docker(&["network", "create", &probe], Duration::from_secs(30));
    stack.probe_network = Some(probe.clone());
    let cut_off = stack.container(target);
    docker(
        &["network", "connect", &probe, &cut_off],
        Duration::from_secs(30),
    );
    let probe_ip = stack.inspect(
        target,
        &format!("{{{{(index .NetworkSettings.Networks \"{probe}\").IPAddress}}}}"),
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
    let (minority, _) = connect(vec![format!("nats://{probe_ip}:4222")], CLIENT).await;
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
    let (admin, _) = connect(stack.urls(), ADMIN).await;
    let events = completed_events(&async_nats::jetstream::new(admin)).await;
    for id in &acked {
        assert_eq!(events.get(id), Some(&1), "completed events of {id}");
    }
    println!(
        "all {} acked payments completed, one completed event each",
        acked.len()
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
