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
use testkit::{Cluster, eventually, spawn_process, spawn_service};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Settings for the registry and the demo service (on top of the cluster's).
fn overrides() -> Vec<(&'static str, Value)> {
    vec![
        ("registry.metrics_addr", Value::from("127.0.0.1:0")),
        ("registry.reap_every_ms", Value::from(200)),
        ("service.registry.ttl_s", Value::from(2)),
    ]
}

/// A service built on the runtime: one echo endpoint; it registers itself.
async fn demo(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    App::connect("demo", settings, shutdown)
        .await?
        .service("1.2.3", "a demo")
        .endpoint("echo", "demo.echo", |(), v: serde_json::Value| async move {
            Ok::<_, ServiceError>(v)
        })
        .serve()
        .await
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

#[tokio::test]
async fn registration_health_removal_metrics_and_bad_input() {
    let cluster = Cluster::start(3).await.unwrap();
    let registry = spawn_service(registry::run, &cluster, &overrides()).await;
    let client = cluster.client().await.unwrap();
    let client = &client;

    // A service built on the runtime registers itself.
    let demo = spawn_service(demo, &cluster, &overrides()).await;
    let demo_id = demo.id().to_owned();
    let me = eventually("demo registered", Duration::from_secs(15), || async {
        let found = lookup(client, "demo").await;
        match found.instances.iter().find(|i| i.instance_id == demo_id) {
            Some(me) if me.healthy => Ok(me.clone()),
            _ => Err(format!("{:?}", found.instances)),
        }
    })
    .await;
    assert_eq!(me.version, "1.2.3");
    assert_eq!(me.endpoints, ["demo.echo"]);
    assert!(me.last_seen.ends_with('Z'));
    // The registry registers itself too.
    eventually("registry registered", Duration::from_secs(15), || async {
        let list: ListReply = call(client, subjects::REGISTRY_LIST, &json!({}), TIMEOUT)
            .await
            .unwrap();
        if list.services.get("demo") == Some(&1) && list.services.get("registry") == Some(&1) {
            Ok(())
        } else {
            Err(format!("{:?}", list.services))
        }
    })
    .await;
    // A name with no instances: an empty list, not 404.
    assert!(lookup(client, "nobody").await.instances.is_empty());

    // /metrics parses and counts the requests made here.
    for i in 0..7 {
        let _: serde_json::Value = call(client, "demo.echo", &json!({"i": i}), TIMEOUT)
            .await
            .unwrap();
    }
    let _ = request_raw(client, "demo.echo", None, "not json".into(), TIMEOUT)
        .await
        .unwrap();
    let infos: Vec<InfoResponse> = discover(
        client,
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
    // The latency histogram counts the same 8 requests.
    let count_line = format!(
        "switchyard_request_duration_seconds_count{{service=\"demo\",instance=\"{demo_id}\",endpoint=\"echo\"}} 8"
    );
    assert!(text.contains(&count_line), "{count_line} missing:\n{text}");
    assert!(
        text.contains("switchyard_request_duration_seconds_bucket{le=\"+Inf\",service=\"demo\""),
        "{text}"
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "switchyard_registry_instances"
                && s.labels.get("service") == Some("demo")
                && s.labels.get("health") == Some("healthy")),
        "{text}"
    );

    // Stream and consumer gauges: a backlog of 3, then 1 delivered unacked.
    let js = async_nats::jetstream::new(client.clone());
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "METRICS_T".into(),
            subjects: vec!["metrics.t".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..3 {
        js.publish("metrics.t", format!("m{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("c1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let gauge = |text: &str, name: &str, consumer: Option<&str>| -> Option<f64> {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition text");
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.get("stream") == Some("METRICS_T")
                    && s.labels.get("consumer") == consumer
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    let text = http_get(&url).await;
    assert_eq!(
        gauge(&text, "switchyard_stream_messages", None),
        Some(3.0),
        "{text}"
    );
    assert!(gauge(&text, "switchyard_stream_bytes", None).is_some_and(|b| b > 0.0));
    assert_eq!(
        gauge(&text, "switchyard_consumer_num_pending", Some("c1")),
        Some(3.0),
        "{text}"
    );
    let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
    let _held = futures::StreamExt::next(&mut batch).await.unwrap().unwrap();
    let text = http_get(&url).await;
    assert_eq!(
        gauge(&text, "switchyard_consumer_num_pending", Some("c1")),
        Some(2.0)
    );
    assert_eq!(
        gauge(&text, "switchyard_consumer_num_ack_pending", Some("c1")),
        Some(1.0),
        "{text}"
    );
    assert!(text.contains(
        "# HELP switchyard_consumer_num_pending Messages a consumer has not delivered yet"
    ));

    // Payments and mails by status, from EVENTS' per-subject counts.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "EVENTS".into(),
        subjects: vec!["events.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    for subject in [
        "events.payment.completed",
        "events.payment.completed",
        "events.payment.failed",
        "events.email.sent",
    ] {
        js.publish(subject, "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let text = http_get(&url).await;
    for line in [
        "switchyard_payments{status=\"completed\"} 2",
        "switchyard_payments{status=\"failed\"} 1",
        "switchyard_emails{status=\"sent\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }

    // Missed heartbeats: unhealthy after the TTL, then removed.
    let reg: serde_json::Value = call(
        client,
        subjects::REGISTRY_REGISTER,
        &json!({"name": "ghost", "instance_id": "g1", "version": "0.0.1", "ttl_s": 1}),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(reg, json!({"ok": true, "ttl_s": 1}));
    assert!(lookup(client, "ghost").await.instances[0].healthy);
    eventually("ghost unhealthy", Duration::from_secs(5), || async {
        let ghost = lookup(client, "ghost").await.instances;
        match ghost.first() {
            Some(i) if !i.healthy => Ok(()),
            _ => Err(format!("{ghost:?}")),
        }
    })
    .await;
    eventually("ghost removed", Duration::from_secs(10), || async {
        let ghost = lookup(client, "ghost").await.instances;
        if ghost.is_empty() {
            Ok(())
        } else {
            Err(format!("{ghost:?}"))
        }
    })
    .await;
    let err = call::<_, serde_json::Value>(
        client,
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
        let reply = request_raw(client, subject, None, body.to_owned().into(), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(
            reply.error().map(|e| e.code),
            Some(code),
            "{subject} {body}"
        );
    }

    // Graceful shutdown deregisters (long before the TTL would remove it).
    demo.stop().await;
    assert!(
        lookup(client, "demo").await.instances.is_empty(),
        "deregistered at shutdown"
    );
    registry.stop().await;
}

#[tokio::test]
async fn a_sigtermed_process_deregisters() {
    let cluster = Cluster::start(3).await.unwrap();
    let registry = spawn_service(registry::run, &cluster, &overrides()).await;
    let client = cluster.client().await.unwrap();
    let client = &client;
    // A second registry, as a process: it registers itself like any service.
    let mut child = spawn_process(
        env!("CARGO_BIN_EXE_registry"),
        &cluster,
        &[
            ("SWITCHYARD__REGISTRY__METRICS_ADDR", ""),
            ("SWITCHYARD__SERVICE__REGISTRY__TTL_S", "30"),
            ("SWITCHYARD__LOG__LEVEL", "warn"),
        ],
    )
    .await;
    eventually(
        "two registries registered",
        Duration::from_secs(20),
        || async {
            let registries = lookup(client, "registry").await.instances;
            if registries.len() == 2 {
                Ok(())
            } else {
                Err(format!("{registries:?}"))
            }
        },
    )
    .await;
    let status = child
        .terminate(Duration::from_secs(15))
        .await
        .expect("the SIGTERMed registry exits within 15 s");
    assert!(status.success(), "{status}");
    // Gone at once: its TTL (30 s) did not have to run out.
    assert_eq!(lookup(client, "registry").await.instances.len(), 1);
    registry.stop().await;
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
