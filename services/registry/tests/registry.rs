//! registry on a real 3-node cluster.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use protocol::micro::{InfoResponse, Verb};
use protocol::registry::{ListReply, LookupReply};
use protocol::{ErrorCode, ServiceError, subjects};
use runtime::client::{call, discover, request_raw};
use runtime::settings::Value;
use runtime::{App, CancellationToken, Settings};
use serde_json::json;
use std::time::Duration;
use testkit::Cluster;
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(5);

fn settings(cluster: &Cluster, extra: &[(&str, Value)]) -> Settings {
    let mut overrides = vec![
        ("nats.urls".to_owned(), Value::from(cluster.urls())),
        (
            "registry.metrics_addr".to_owned(),
            Value::from("127.0.0.1:0"),
        ),
        ("registry.reap_every_ms".to_owned(), Value::from(200)),
        ("service.registry.ttl_s".to_owned(), Value::from(2)),
    ];
    overrides.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    Settings::load_with(overrides).unwrap()
}

async fn lookup(client: &async_nats::Client, name: &str) -> LookupReply {
    call(
        client,
        &subjects::registry_lookup(name).unwrap(),
        &json!({}),
        TIMEOUT,
    )
    .await
    .unwrap()
}

async fn registry_ready(client: &async_nats::Client, n: usize) {
    until("registry answers", Duration::from_secs(20), async || {
        discover::<protocol::micro::PingResponse>(
            client,
            Verb::Ping,
            Some("registry"),
            Duration::from_millis(200),
        )
        .await
        .unwrap()
        .len()
            >= n
    })
    .await;
}

async fn until<F: AsyncFn() -> bool>(what: &str, within: Duration, check: F) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn registration_health_removal_metrics_and_bad_input() {
    let cluster = Cluster::start(3).await.unwrap();
    let s = settings(&cluster, &[]);
    let shutdown = CancellationToken::new();
    let registry = tokio::spawn(registry::run(s, shutdown.clone()));
    let client = cluster.client().await.unwrap();
    registry_ready(&client, 1).await;

    // A service built on the runtime registers itself.
    let demo_stop = CancellationToken::new();
    let app = App::start("demo", settings(&cluster, &[]), demo_stop.clone())
        .await
        .unwrap()
        .unwrap();
    let demo = app
        .service("1.2.3", "a demo")
        .endpoint("echo", "demo.echo", |v: serde_json::Value| async move {
            Ok::<_, ServiceError>(v)
        })
        .start()
        .await
        .unwrap();
    let demo_id = demo.id().to_owned();
    let demo_task = tokio::spawn(app.serve(vec![demo]));
    until("demo registered", Duration::from_secs(15), async || {
        lookup(&client, "demo")
            .await
            .instances
            .iter()
            .any(|i| i.instance_id == demo_id && i.healthy)
    })
    .await;
    let found = lookup(&client, "demo").await;
    let me = found
        .instances
        .iter()
        .find(|i| i.instance_id == demo_id)
        .unwrap();
    assert_eq!(me.version, "1.2.3");
    assert_eq!(me.endpoints, ["demo.echo"]);
    assert!(me.last_seen.ends_with('Z'));
    // The registry registers itself too.
    until("registry registered", Duration::from_secs(15), async || {
        let list: ListReply = call(&client, subjects::REGISTRY_LIST, &json!({}), TIMEOUT)
            .await
            .unwrap();
        list.services.get("demo") == Some(&1) && list.services.get("registry") == Some(&1)
    })
    .await;
    // A name with no instances: an empty list, not 404.
    assert!(lookup(&client, "nobody").await.instances.is_empty());

    // /metrics parses and counts the requests made here.
    for i in 0..7 {
        let _: serde_json::Value = call(&client, "demo.echo", &json!({"i": i}), TIMEOUT)
            .await
            .unwrap();
    }
    let _ = request_raw(&client, "demo.echo", None, "not json".into(), TIMEOUT)
        .await
        .unwrap();
    let infos: Vec<InfoResponse> = discover(
        &client,
        Verb::Info,
        Some("registry"),
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    let url = infos[0].metadata["metrics"].clone();
    let text = http_get(&url).await;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition text");
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.get("service") == Some("demo")
                    && s.labels.get("instance") == Some(demo_id.as_str())
                    && s.labels.get("endpoint") == Some("echo")
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v)
                | prometheus_parse::Value::Gauge(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(value("switchyard_requests_total"), Some(8.0), "{text}");
    assert_eq!(value("switchyard_errors_total"), Some(1.0), "{text}");
    assert!(value("switchyard_processing_seconds_total").is_some_and(|s| s > 0.0));
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "switchyard_registry_instances"
                && s.labels.get("service") == Some("demo")
                && s.labels.get("health") == Some("healthy")),
        "{text}"
    );

    // Missed heartbeats: unhealthy after the TTL, then removed.
    let reg: serde_json::Value = call(
        &client,
        subjects::REGISTRY_REGISTER,
        &json!({"name": "ghost", "instance_id": "g1", "version": "0.0.1", "ttl_s": 1}),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(reg, json!({"ok": true, "ttl_s": 1}));
    assert!(lookup(&client, "ghost").await.instances[0].healthy);
    until("ghost unhealthy", Duration::from_secs(5), async || {
        lookup(&client, "ghost")
            .await
            .instances
            .first()
            .is_some_and(|i| !i.healthy)
    })
    .await;
    until("ghost removed", Duration::from_secs(10), async || {
        lookup(&client, "ghost").await.instances.is_empty()
    })
    .await;
    let err = call::<_, serde_json::Value>(
        &client,
        subjects::REGISTRY_HEARTBEAT,
        &json!({"name": "ghost", "instance_id": "g1"}),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));

    // Bad input: typed errors.
    for (subject, body, code) in [
        (
            subjects::REGISTRY_REGISTER,
            r#"{"name":"a.b","instance_id":"i","version":"1"}"#,
            ErrorCode::InvalidRequest,
        ),
        (
            subjects::REGISTRY_REGISTER,
            r#"{"name":"a","instance_id":"i","version":"1","ttl_s":0}"#,
            ErrorCode::InvalidRequest,
        ),
        (
            subjects::REGISTRY_REGISTER,
            r#"{"name":"a"}"#,
            ErrorCode::InvalidRequest,
        ),
        (subjects::REGISTRY_HEARTBEAT, "{", ErrorCode::InvalidRequest),
        (
            subjects::REGISTRY_DEREGISTER,
            "[]",
            ErrorCode::InvalidRequest,
        ),
        (subjects::REGISTRY_LIST, "nope", ErrorCode::InvalidRequest),
    ] {
        let reply = request_raw(&client, subject, None, body.to_owned().into(), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(
            reply.error().map(|e| e.code),
            Some(code),
            "{subject} {body}"
        );
    }

    // Graceful shutdown deregisters (long before the TTL would remove it).
    demo_stop.cancel();
    demo_task.await.unwrap().unwrap();
    assert!(
        lookup(&client, "demo").await.instances.is_empty(),
        "deregistered at shutdown"
    );
    shutdown.cancel();
    registry.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_sigtermed_process_deregisters() {
    let cluster = Cluster::start(3).await.unwrap();
    let shutdown = CancellationToken::new();
    let registry = tokio::spawn(registry::run(settings(&cluster, &[]), shutdown.clone()));
    let client = cluster.client().await.unwrap();
    registry_ready(&client, 1).await;
    // A second registry, as a process: it registers itself like any service.
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_registry"))
        .env("SWITCHYARD__NATS__URLS", cluster.urls().join(","))
        .env("SWITCHYARD__REGISTRY__METRICS_ADDR", "")
        .env("SWITCHYARD__SERVICE__REGISTRY__TTL_S", "30")
        .env("SWITCHYARD__LOG__LEVEL", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut child = child;
    until(
        "two registries registered",
        Duration::from_secs(20),
        async || lookup(&client, "registry").await.instances.len() == 2,
    )
    .await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    // Gone at once: its TTL (30 s) did not have to run out.
    assert_eq!(lookup(&client, "registry").await.instances.len(), 1);
    shutdown.cancel();
    registry.await.unwrap().unwrap();
}

/// A GET with no HTTP client crate: one request on a raw connection.
async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream
        .write_all(
            format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    body.to_owned()
}
