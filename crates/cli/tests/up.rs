//! `switchyard up` as a user runs it: the built binary makes the passwords,
//! starts the cluster with the deployments' users, provisions as admin,
//! starts every service binary as its own user, reports ready, serves
//! `switchyard math add 2 3` as `client`, takes `admin` for `maintenance
//! on`, and on SIGTERM stops leaving no process behind.
//!
//! Needs the service binaries built next to `switchyard` (`cargo build
//! --workspace`, which `just test` does first).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use protocol::micro::{InfoResponse, Verb};
use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SWITCHYARD: &str = env!("CARGO_BIN_EXE_switchyard");

/// The `switchyard` command with its passwords in `secrets` (where `up`
/// writes them and every client command reads them).
fn sy(secrets: &Path) -> Command {
    let mut command = Command::new(SWITCHYARD);
    command.env("SWITCHYARD_SECRETS", secrets);
    command
}

/// `name`'s value in the env file `secrets`.
fn password(secrets: &Path, name: &str) -> String {
    std::fs::read_to_string(secrets)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_owned))
        .unwrap_or_else(|| panic!("{name} missing from {}", secrets.display()))
}

/// A base port with `base..base+3` free in each of four ranges.
fn free_bases() -> (u16, u16, u16, u16) {
    let free = |base: u16| (0..3).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
    let seed = u16::try_from(std::process::id() % 1000).unwrap();
    for attempt in 0..200u16 {
        let base = 20_000 + ((seed + attempt * 37) % 1000) * 40;
        if free(base) && free(base + 10) && free(base + 20) && free(base + 30) {
            return (base, base + 10, base + 20, base + 30);
        }
    }
    panic!("no free ports");
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); read its state instead.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

fn pids(dir: &Path) -> Vec<i32> {
    std::fs::read_dir(dir.join("run"))
        .unwrap()
        .map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect()
}

/// `switchyard up`, stopped (SIGTERM, then SIGKILL) if the test fails before
/// it stops it, so a failed assertion leaves no stack running.
struct StopOnDrop(std::process::Child);

impl std::ops::Deref for StopOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for StopOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn up_reports_ready_serves_math_and_stops_cleanly() {
    let math_bin = Path::new(SWITCHYARD).with_file_name("math-service");
    assert!(
        math_bin.is_file(),
        "{} is missing: run `cargo build --workspace` first (just test does)",
        math_bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let state: PathBuf = dir.path().join("state");
    // `up` makes the passwords here; every command finds them here.
    let secrets = dir.path().join(".env");
    let (port, cluster_port, http_port, metrics_port) = free_bases();
    // Every service exports its spans to a real OTLP/HTTP receiver.
    let otlp = testkit::otlp::Receiver::start().unwrap();
    let mut up = sy(&secrets)
        .env("SWITCHYARD__OTEL__ENDPOINT", otlp.endpoint())
        .args(["up", "--dir"])
        .arg(&state)
        .args(["--port", &port.to_string()])
        .args(["--cluster-port", &cluster_port.to_string()])
        .args(["--http-port", &http_port.to_string()])
        .args(["--metrics-port", &metrics_port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(StopOnDrop)
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let generated = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("no first line from switchyard up"));
    assert!(
        generated.starts_with("generated ") && generated.contains(" passwords into "),
        "{generated}"
    );
    let ready = rx
        .recv_timeout(Duration::from_secs(90))
        .unwrap_or_else(|_| panic!("no ready line from switchyard up"));
    assert!(ready.starts_with("switchyard ready"), "{ready}");
    assert!(ready.contains("users: client"), "{ready}");
    assert!(ready.contains("no credentials = guest"), "{ready}");
    assert!(
        ready.contains(&format!("nats://127.0.0.1:{port}")),
        "{ready}"
    );
    assert!(ready.contains("math"), "{ready}");
    assert!(
        ready.contains(&format!("dashboard http://127.0.0.1:{metrics_port}/ ")),
        "{ready}"
    );

    let servers = format!(
        "nats://127.0.0.1:{},nats://127.0.0.1:{}",
        port + 1,
        port + 2
    );
    let out = sy(&secrets)
        .args(["math", "add", "2", "3", "--servers", &servers])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5", "{out:?}");
    let out = sy(&secrets)
        .args(["math", "divide", "1", "0", "--servers", &servers])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("division_by_zero"),
        "{out:?}"
    );
    let out = sy(&secrets)
        .args(["status", "--servers", &servers])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("math") && table.contains("0.1.0"), "{table}");
    assert!(table.contains("registered (healthy)"), "{table}");

    // Every service serves exactly the endpoints its manifest in protocol
    // declares (the manifest is what permissions and clients are made from).
    // And no stream the services made acknowledges before it stored
    // (persist_mode: async would undo sync_interval: always).
    let (infos, streams): (
        Vec<InfoResponse>,
        Vec<async_nats::jetstream::stream::Config>,
    ) = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async {
            let client = async_nats::ConnectOptions::with_user_and_password(
                "client".into(),
                password(&secrets, "CLIENT_PASSWORD"),
            )
            .custom_inbox_prefix("_INBOX_client")
            .connect(
                servers
                    .split(',')
                    .map(|url| url.parse::<async_nats::ServerAddr>())
                    .collect::<Result<Vec<_>, _>>()?,
            )
            .await?;
            let infos =
                runtime::client::discover(&client, Verb::Info, None, Duration::from_secs(1))
                    .await?;
            let js = async_nats::jetstream::new(client);
            let mut listed = js.streams();
            let mut streams = Vec::new();
            while let Some(info) = futures::StreamExt::next(&mut listed).await {
                streams.push(info?.config);
            }
            anyhow::Ok((infos, streams))
        })
        .unwrap();
    assert!(streams.len() >= 6, "{streams:?}");
    for config in &streams {
        assert_ne!(
            config.persist_mode,
            Some(async_nats::jetstream::stream::PersistenceMode::Async),
            "stream {} acknowledges before it stores",
            config.name
        );
    }
    for manifest in protocol::manifest::ALL.iter() {
        let info = infos
            .iter()
            .find(|i| i.name == manifest.service)
            .unwrap_or_else(|| panic!("{} did not answer $SRV.INFO", manifest.service));
        let mut served: Vec<(&str, &str, &str)> = info
            .endpoints
            .iter()
            .map(|e| (e.name.as_str(), e.subject.as_str(), e.queue_group.as_str()))
            .collect();
        let mut declared: Vec<(&str, &str, &str)> = manifest
            .endpoints
            .iter()
            .map(|e| (e.name, e.subject.as_str(), e.queue_group))
            .collect();
        served.sort_unstable();
        declared.sort_unstable();
        assert_eq!(
            served, declared,
            "{}: $SRV.INFO vs manifest",
            manifest.service
        );
    }

    // The same ports again: a clear error naming the port.
    let out = sy(&secrets)
        .args(["up", "--dir"])
        .arg(dir.path().join("other"))
        .args(["--port", &port.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("port {port} is already in use")),
        "{out:?}"
    );

    // Supervision: a crashed service is started again and answers again.
    // Roles: `maintenance on` needs admin, which the command takes from
    // the secrets file; forced to `client`, it says so.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&secrets).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the secrets file is private");
    let out = sy(&secrets)
        .args(["maintenance", "on", "--servers", &servers])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "maintenance: on",
        "{out:?}"
    );
    let out = sy(&secrets)
        .args(["maintenance", "off", "--servers", &servers])
        .env("SWITCHYARD__NATS__USER", "client")
        .env(
            "SWITCHYARD__NATS__PASSWORD",
            password(&secrets, "CLIENT_PASSWORD"),
        )
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs the admin role"),
        "{out:?}"
    );
    let out = sy(&secrets)
        .args(["maintenance", "off", "--servers", &servers])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "maintenance: off",
        "{out:?}"
    );
    // Provisioning again (as admin, from the secrets file) is idempotent.
    let out = sy(&secrets)
        .args([
            "provision",
            "--only",
            "math,payment-processor",
            "--servers",
            &servers,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "provisioned math, payment-processor as admin",
        "{out:?}"
    );
    // Without credentials a local connection is `guest`: it may call
    // services (seed snippets connect with none), not administer.
    let out = Command::new(SWITCHYARD)
        .args(["math", "add", "1", "1", "--servers", &servers])
        .env("SWITCHYARD_SECRETS", dir.path().join("missing.env"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2", "{out:?}");
    let out = Command::new(SWITCHYARD)
        .args([
            "maintenance",
            "on",
            "--timeout",
            "2s",
            "--servers",
            &servers,
        ])
        .env("SWITCHYARD_SECRETS", dir.path().join("missing.env"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a guest turned maintenance on: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs the admin role"),
        "{out:?}"
    );

    let math_pid_file = state.join("run/math.pid");
    let first: i32 = std::fs::read_to_string(&math_pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now: i32 = std::fs::read_to_string(&math_pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let out = sy(&secrets)
            .args([
                "math",
                "multiply",
                "6",
                "7",
                "--timeout",
                "1s",
                "--servers",
                &servers,
            ])
            .output()
            .unwrap();
        if now != first && String::from_utf8_lossy(&out.stdout).trim() == "42" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "math-service was not restarted: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Every service registered itself with the registry, healthy.
    let started: Vec<&str> = [
        "registry",
        "math",
        "email-notifier",
        "payment-processor",
        "log-worker",
        "stock-ticker",
    ]
    .into_iter()
    .filter(|s| ready.contains(s))
    .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = sy(&secrets)
            .args(["status", "--json", "--servers", &servers])
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let registered = &status["registry"]["services"];
        if started
            .iter()
            .all(|s| registered[*s].as_u64().unwrap_or(0) >= 1)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all of {started:?} registered: {registered}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    if started.contains(&"registry") {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
        use std::io::{Read as _, Write as _};
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut metrics = String::new();
        conn.read_to_string(&mut metrics).unwrap();
        assert!(metrics.contains("switchyard_requests_total"), "{metrics}");
    }

    // A payment through the whole stack, with a receipt mail.
    let out = sy(&secrets)
        .env("SWITCHYARD__OTEL__ENDPOINT", otlp.endpoint())
        .args([
            "pay",
            "user-1",
            "9.99",
            "--id",
            "up-pay-1",
            "--email",
            "up-pay-1@example.com",
            "--servers",
            &servers,
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("up-pay-1 completed"), "{out:?}");
    let trace_id = said
        .split(" (trace ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("the CLI prints the payment's trace id: {said}"))
        .to_owned();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("trace {trace_id}")),
        "the command's trace is the payment's: {out:?}"
    );
    // One trace, exported over OTLP by five processes, holds the client's
    // publish → the processor's processing → the event publish → the
    // notifier's receipt send → the log-worker's write, each below the one
    // before, and the registry showing the event on its dashboard.
    one_trace_across_the_services(&otlp, &trace_id);

    let children = pids(&state);
    let services = [
        "math-service",
        "payment-processor",
        "email-notifier",
        "log-worker",
        "stock-ticker",
        "registry",
    ]
    .iter()
    .filter(|b| Path::new(SWITCHYARD).with_file_name(b).is_file())
    .count();
    assert!(
        services >= 2,
        "math-service and payment-processor are built"
    );
    assert_eq!(
        children.len(),
        3 + services,
        "3 NATS nodes + every service: {children:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(up.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = up.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "switchyard up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let left: Vec<i32> = children.into_iter().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

/// Waits (bounded) for the payment's trace to hold the whole chain, then
/// prints it.
fn one_trace_across_the_services(otlp: &testkit::otlp::Receiver, trace_id: &str) {
    use testkit::otlp::{Span, ancestors, render};
    // (service, span name) in causal order; each must descend from the one before.
    let chain: [(&str, &str); 6] = [
        ("switchyard-cli", "publish services.payment.payment-process"),
        (
            "payment-processor",
            "process services.payment.payment-process",
        ),
        ("payment-processor", "publish events.payment.completed"),
        ("email-notifier", "process events.payment.completed"),
        ("email-notifier", "send mail"),
        ("log-worker", "write log record"),
    ];
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let trace = otlp.trace(trace_id);
        let find = |service: &str, name: &str, below: Option<&Span>| -> Option<Span> {
            trace
                .iter()
                .filter(|s| s.service == service && s.name == name)
                .find(|s| {
                    below
                        .is_none_or(|b| ancestors(&trace, s).iter().any(|a| a.span_id == b.span_id))
                })
                .cloned()
        };
        let mut found: Vec<Span> = Vec::new();
        for (service, name) in chain {
            match find(service, name, found.last()) {
                Some(span) => found.push(span),
                None => break,
            }
        }
        // The registry's dashboard shows the payment event: a fifth service.
        let shown = found
            .get(2)
            .and_then(|event| find("registry", "show events.payment.completed", Some(event)));
        if found.len() == chain.len() && shown.is_some() {
            let root = ancestors(&trace, &found[0]).last().map(|s| s.name.clone());
            assert_eq!(
                root.as_deref(),
                Some("switchyard pay"),
                "{}",
                render(&trace)
            );
            let services: std::collections::BTreeSet<&str> =
                trace.iter().map(|s| s.service.as_str()).collect();
            println!(
                "trace {trace_id}: {} spans from {services:?}\n{}",
                trace.len(),
                render(&trace)
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} never held {:?} and the registry's `show events.payment.completed` (found {:?}); it has:\n{}",
            chain,
            found
                .iter()
                .map(|s| (&s.service, &s.name))
                .collect::<Vec<_>>(),
            render(&trace)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every bench runs (tiny duration) and reports finite figures; no timing
/// is asserted here: speed belongs to `switchyard bench` itself.
#[test]
fn every_bench_runs_and_reports() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    let set = if python.is_file() { "all" } else { "quick" };
    let out = Command::new(SWITCHYARD)
        .args(["bench", set, "--duration", "200ms", "--json"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "bench failed: {out:?}");
    let metrics: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut benches: Vec<&str> = metrics
        .iter()
        .map(|m| m["bench"].as_str().unwrap())
        .collect();
    benches.dedup();
    let mut want = vec!["rpc", "payments", "logs", "ticker", "footprint", "seed"];
    if set == "all" {
        want.insert(4, "python");
    }
    assert_eq!(benches, want);
    for m in &metrics {
        let v = m["switchyard"].as_f64().unwrap();
        assert!(v.is_finite() && v > 0.0, "{m}");
        if let Some(ratio) = m["ratio"].as_f64() {
            assert!(ratio.is_finite() && ratio > 0.0, "{m}");
        }
    }
}
