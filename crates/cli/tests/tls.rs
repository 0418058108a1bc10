//! TLS as the compose stack sets it up, on real nats-server processes (no
//! Docker): `switchyard certs` makes the CA and node certificate; two nodes
//! require TLS from clients, route with mutual TLS and a route password
//! whose whole route URLs come from the environment (as
//! `deploy/nats/nats.conf` does); the runtime's `nats.tls_ca_file` +
//! `nats.tls_required` connect, and a message crosses the route. Refused: a
//! client that does not trust the CA, a plaintext client, and a third node
//! routing in without the route password.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use futures::StreamExt as _;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SWITCHYARD: &str = env!("CARGO_BIN_EXE_switchyard");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A nats-server killed on drop.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Ports {
    client: u16,
    route: u16,
    http: u16,
}

impl Ports {
    fn free() -> Self {
        Ports {
            client: free_port(),
            route: free_port(),
            http: free_port(),
        }
    }
}

/// Starts a node whose routes are `routes` (whole URLs, through env vars).
fn node(dir: &Path, name: &str, ports: &Ports, certs: &Path, routes: &[String]) -> Node {
    let cert = |f: &str| certs.join(f).display().to_string();
    let vars: Vec<String> = (0..routes.len()).map(|i| format!("$ROUTE_{i}")).collect();
    let conf = format!(
        "server_name: {name}\nhost: 127.0.0.1\nport: {client}\nhttp: 127.0.0.1:{http}\n\
         tls {{ cert_file: \"{c}\", key_file: \"{k}\", ca_file: \"{ca}\", timeout: 2 }}\n\
         authorization {{ user: client, password: $CLIENT_PASSWORD }}\n\
         cluster {{\n  name: tls-test\n  host: 127.0.0.1\n  port: {route}\n\
         tls {{ cert_file: \"{c}\", key_file: \"{k}\", ca_file: \"{ca}\", verify: true, timeout: 2 }}\n\
         authorization {{ user: route, password: $ROUTE_PASSWORD, timeout: 2 }}\n\
         routes: [ {vars} ]\n}}\n",
        client = ports.client,
        http = ports.http,
        route = ports.route,
        c = cert("nats.pem"),
        k = cert("nats-key.pem"),
        ca = cert("ca.pem"),
        vars = vars.join(", "),
    );
    let file = dir.join(format!("{name}.conf"));
    std::fs::write(&file, conf).unwrap();
    let mut cmd = Command::new(testkit::nats_server_bin().unwrap());
    cmd.arg("-c")
        .arg(&file)
        .env("CLIENT_PASSWORD", "client-password-for-tls-test")
        .env("ROUTE_PASSWORD", "route-password-for-tls-test")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (i, url) in routes.iter().enumerate() {
        cmd.env(format!("ROUTE_{i}"), url);
    }
    Node(testkit::spawn_tied(cmd).unwrap())
}

/// `GET path` on the node's monitoring port, the body as JSON.
fn monitor(port: u16, path: &str) -> Option<serde_json::Value> {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(tcp, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
}

/// The servers a node has routes to (each once: routes are pooled).
fn routes_of(port: u16) -> Vec<String> {
    let mut names: Vec<String> = monitor(port, "/routez")
        .and_then(|r| {
            r["routes"].as_array().map(|rs| {
                rs.iter()
                    .filter_map(|r| r["remote_name"].as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

fn settings(urls: Vec<String>, ca: Option<PathBuf>) -> runtime::settings::NatsSettings {
    runtime::settings::NatsSettings {
        urls,
        user: Some("client".into()),
        password: Some("client-password-for-tls-test".into()),
        tls_ca_file: ca,
        tls_required: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn clients_and_routes_use_the_certificates_of_switchyard_certs() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = Command::new(SWITCHYARD)
        .args(["certs", "--dir"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let other = dir.path().join("other");
    let out = Command::new(SWITCHYARD)
        .args(["certs", "--dir"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let (a, b) = (Ports::free(), Ports::free());
    let route = |p: &Ports| {
        format!(
            "nats-route://route:route-password-for-tls-test@localhost:{}",
            p.route
        )
    };
    let routes = vec![route(&a), route(&b)];
    let _na = node(dir.path(), "a", &a, &certs, &routes);
    let _nb = node(dir.path(), "b", &b, &certs, &routes);

    // The runtime's TLS settings connect, to each node.
    let token = runtime::CancellationToken::new();
    let ca = Some(certs.join("ca.pem"));
    let url = |p: &Ports| format!("nats://127.0.0.1:{}", p.client);
    let on_a = tokio::time::timeout(
        Duration::from_secs(10),
        runtime::nats::connect(&settings(vec![url(&a)], ca.clone()), "tls-test", &token),
    )
    .await
    .expect("no TLS connection to a within 10 s")
    .unwrap()
    .unwrap();
    assert!(on_a.client.server_info().tls_required);
    let on_b = tokio::time::timeout(
        Duration::from_secs(10),
        runtime::nats::connect(
            &settings(vec![format!("nats://localhost:{}", b.client)], ca.clone()),
            "tls-test",
            &token,
        ),
    )
    .await
    .expect("no TLS connection to b within 10 s")
    .unwrap()
    .unwrap();

    // The route (mutual TLS + password) carries a message from b to a.
    let started = Instant::now();
    while routes_of(a.http) != ["b"] || routes_of(b.http) != ["a"] {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no route: a sees {:?}, b sees {:?}",
            routes_of(a.http),
            routes_of(b.http)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sub = on_a.client.subscribe("tls.check").await.unwrap();
    on_a.client.flush().await.unwrap();
    let started = Instant::now();
    let got = loop {
        on_b.client
            .publish("tls.check", "over the route".into())
            .await
            .unwrap();
        on_b.client.flush().await.unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
            break m;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nothing crossed the route"
        );
    };
    assert_eq!(&got.payload[..], b"over the route");

    // Refused: a client trusting another CA; a plaintext client with the
    // right password.
    let foreign = async_nats::ConnectOptions::with_user_and_password(
        "client".into(),
        "client-password-for-tls-test".into(),
    )
    .add_root_certificates(other.join("ca.pem"))
    .require_tls(true)
    .connect(url(&a))
    .await;
    let err = foreign.expect_err("a client trusting another CA connected");
    println!("another CA: {err}");
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", a.client)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut info = [0u8; 2048];
    let n = plain.read(&mut info).unwrap();
    assert!(String::from_utf8_lossy(&info[..n]).contains("\"tls_required\":true"));
    plain
        .write_all(
            b"CONNECT {\"user\":\"client\",\"pass\":\"client-password-for-tls-test\",\"verbose\":false,\"pedantic\":false,\"tls_required\":false}\r\nPING\r\n",
        )
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("PONG"),
        "plaintext got {:?}",
        String::from_utf8_lossy(&answer)
    );

    // Refused: a third node routing in without the route password (with the
    // right certificate); a and b keep only each other.
    let c = Ports::free();
    let _nc = node(
        dir.path(),
        "c",
        &c,
        &certs,
        &[format!("nats-route://localhost:{}", a.route)],
    );
    let started = Instant::now();
    while monitor(c.http, "/varz").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "c did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // c dials a about once a second; give it several tries.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(routes_of(a.http), ["b"]);
    assert!(routes_of(c.http).is_empty(), "{:?}", routes_of(c.http));
    token.cancel();
}
