//! math-service against real 3-node nats-server clusters. Scenarios that do
//! not disturb the cluster share one (`testkit::shared`); the ones that kill
//! nodes, flip the site-wide maintenance flag or SIGTERM a process start
//! their own.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::future::join_all;
use protocol::micro::{InfoResponse, PingResponse, StatsResponse, Verb};
use protocol::names::headers;
use protocol::{ErrorCode, subjects};
use rand::{Rng, SeedableRng};
use runtime::client::{CallError, call, discover, request_raw};
use runtime::settings::Value;
use serde_json::{Value as Json, json};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use testkit::{Cluster, TestService, eventually};
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(2);

/// Starts a math-service instance in this process.
async fn start_math(cluster: &Cluster, overrides: &[(&str, Value)]) -> TestService {
    testkit::spawn_service(math_service::run, cluster, overrides).await
}

/// The `$SRV.PING` replies of these instances.
async fn answering(client: &async_nats::Client, ids: &[&str]) -> Vec<PingResponse> {
    testkit::instances(client, "math")
        .await
        .into_iter()
        .filter(|p| ids.contains(&p.id.as_str()))
        .collect()
}

async fn raw(
    client: &async_nats::Client,
    subject: &str,
    body: impl Into<Bytes>,
) -> (Option<HeaderMap>, Json) {
    let reply = request_raw(client, subject, None, body.into(), TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    let json = serde_json::from_slice(&reply.payload).unwrap_or(Json::Null);
    (reply.headers, json)
}

/// Asserts an error reply: headers and JSON body agree with the contract.
async fn expect_error(
    client: &async_nats::Client,
    subject: &str,
    body: impl Into<Bytes>,
    code: ErrorCode,
) {
    let body = body.into();
    let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
    let (h, json) = raw(client, subject, body).await;
    let h = h.unwrap_or_else(|| panic!("{subject} {shown}: no error headers, body {json}"));
    assert_eq!(
        h.get(headers::SERVICE_ERROR_CODE)
            .map(|v| v.as_str().to_owned()),
        Some(code.status().to_string()),
        "{subject} {shown}: {json}"
    );
    assert!(
        h.get(headers::SERVICE_ERROR)
            .is_some_and(|v| !v.as_str().is_empty()),
        "{subject} {shown}: empty Nats-Service-Error"
    );
    assert_eq!(
        json["error"]["code"],
        code.as_str(),
        "{subject} {shown}: {json}"
    );
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

async fn result(client: &async_nats::Client, subject: &str, body: Json) -> f64 {
    let (h, json) = raw(client, subject, body.to_string()).await;
    assert!(
        h.is_none_or(|h| h.get(headers::SERVICE_ERROR_CODE).is_none()),
        "{subject} {body}: {json}"
    );
    json["result"]
        .as_f64()
        .unwrap_or_else(|| panic!("{subject} {body}: {json}"))
}

#[tokio::test]
async fn every_operation_and_every_error() {
    let cluster = testkit::shared().await;
    let math = start_math(cluster, &[]).await;
    let client = cluster.client().await.unwrap();
    let calc = subjects::MATH_CALCULATE;

    // Seed 001's call, byte for byte: a whole result is a JSON integer.
    for (body, want) in [
        (
            r#"{"operation": "add", "a": 10, "b": 5}"#,
            r#"{"result":15}"#,
        ),
        (
            r#"{"operation": "divide", "a": 7, "b": 2}"#,
            r#"{"result":3.5}"#,
        ),
    ] {
        let reply = request_raw(&client, calc, None, body.into(), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&reply.payload), want, "{body}");
    }

    for (op, a, b, want) in [
        ("add", 2.0, Some(3.0), 5.0),
        ("subtract", 2.0, Some(3.0), -1.0),
        ("multiply", 2.5, Some(4.0), 10.0),
        ("divide", 7.0, Some(2.0), 3.5),
        ("power", 2.0, Some(10.0), 1024.0),
        ("sqrt", 16.0, None, 4.0),
        ("mod", -7.0, Some(3.0), -1.0),
    ] {
        let mut body = json!({"operation": op, "a": a});
        let mut operands = json!({"a": a});
        if let Some(b) = b {
            body["b"] = json!(b);
            operands["b"] = json!(b);
        }
        assert_eq!(result(&client, calc, body).await, want, "{op}");
        let subject = format!("services.math.{op}");
        assert_eq!(result(&client, &subject, operands).await, want, "{subject}");
    }

    use ErrorCode::*;
    for (subject, body, code) in [
        (
            calc,
            r#"{"operation":"divide","a":1,"b":0}"#,
            DivisionByZero,
        ),
        ("services.math.mod", r#"{"a":1,"b":0}"#, DivisionByZero),
        (
            calc,
            r#"{"operation":"cube","a":1,"b":0}"#,
            UnknownOperation,
        ),
        (calc, r#"{"operation":"add","a":1"#, InvalidRequest),
        (calc, "", InvalidRequest),
        (calc, "   ", InvalidRequest),
        (calc, "null", InvalidRequest),
        (calc, "[\"add\",1,2]", InvalidRequest),
        (calc, r#"{"operation":"add","a":"1","b":2}"#, InvalidRequest),
        (calc, r#"{"operation":"add","a":1}"#, InvalidRequest),
        (calc, r#"{"a":1,"b":2}"#, InvalidRequest),
        (
            calc,
            r#"{"operation":"add","a":1e999,"b":2}"#,
            InvalidRequest,
        ),
        (calc, r#"{"operation":"add","a":NaN,"b":2}"#, InvalidRequest),
        (
            calc,
            r#"{"operation":"add","a":Infinity,"b":2}"#,
            InvalidRequest,
        ),
        ("services.math.add", r#"{"a":1}"#, InvalidRequest),
        (
            calc,
            r#"{"operation":"multiply","a":1e308,"b":1e10}"#,
            Overflow,
        ),
        ("services.math.power", r#"{"a":10,"b":400}"#, Overflow),
        (calc, r#"{"operation":"sqrt","a":-4}"#, DomainError),
    ] {
        expect_error(&client, subject, body, code).await;
    }

    // Over the endpoint's 64 KiB limit: 413 from the service.
    let big = format!(
        r#"{{"operation":"add","a":1,"b":2,"pad":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    expect_error(&client, calc, big, TooLarge).await;
    // Over the server's max_payload (1 MiB): refused before it is sent.
    let huge = Bytes::from(vec![b'x'; 2 * 1024 * 1024]);
    let err = request_raw(&client, calc, None, huge, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::PayloadTooLarge { .. }), "{err}");

    // A traceparent comes back on the reply.
    let mut h = HeaderMap::new();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    h.insert(headers::TRACEPARENT, tp);
    let reply = request_raw(
        &client,
        "services.math.add",
        Some(h),
        r#"{"a":1,"b":1}"#.into(),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(
        reply
            .headers
            .and_then(|h| h.get(headers::TRACEPARENT).map(|v| v.as_str().to_owned())),
        Some(tp.to_owned())
    );

    // Typed calls see the same errors.
    let err = call::<_, Json>(
        &client,
        "services.math.divide",
        &json!({"a": 1, "b": 0}),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(DivisionByZero));

    // Still answering after all that.
    assert_eq!(
        result(&client, calc, json!({"operation":"add","a":40,"b":2})).await,
        42.0
    );
    math.stop().await;
}

#[tokio::test]
async fn random_bytes_never_break_the_service() {
    let cluster = testkit::shared().await;
    let math = start_math(cluster, &[]).await;
    let client = cluster.client().await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 0..300 {
        let len = rng.random_range(0..200);
        let mut body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if i % 3 == 0 && !body.is_empty() {
            body[0] = b'{';
        }
        let subject = if i % 2 == 0 {
            subjects::MATH_CALCULATE
        } else {
            "services.math.add"
        };
        let reply = request_raw(&client, subject, None, body.into(), TIMEOUT)
            .await
            .unwrap();
        let err = reply
            .error()
            .expect("random bytes are never a valid request");
        assert_eq!(err.code, ErrorCode::InvalidRequest, "{err}");
    }
    assert_eq!(
        result(&client, "services.math.add", json!({"a":1,"b":2})).await,
        3.0
    );
    math.stop().await;
}

/// The one reply of math instance `id` to `$SRV.<verb>.math.<id>`.
async fn one<T: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    verb: Verb,
    id: &str,
) -> T {
    let mut replies: Vec<T> = discover(
        client,
        verb,
        Some(&format!("math.{id}")),
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    assert_eq!(replies.len(), 1, "{verb:?} replies from {id}");
    replies.remove(0)
}

#[tokio::test]
async fn discovery_follows_the_micro_protocol() {
    let cluster = testkit::shared().await;
    let math = start_math(cluster, &[]).await;
    let client = cluster.client().await.unwrap();
    let ping = answering(&client, &[math.id()]).await;
    assert_eq!(ping.len(), 1);
    assert_eq!(ping[0].kind, "io.nats.micro.v1.ping_response");
    assert_eq!(ping[0].version, math_service::VERSION);
    let id = ping[0].id.clone();

    // Requests and errors until this instance's STATS has counted both
    // (other tests' instances share the queue group, so some land there).
    let mut counted = false;
    for _ in 0..100 {
        let _ = raw(&client, "services.math.add", r#"{"a":1,"b":2}"#).await;
        let _ = raw(&client, "services.math.divide", r#"{"a":1,"b":0}"#).await;
        let stats: StatsResponse = one(&client, Verb::Stats, &id).await;
        let add = stats.endpoints.iter().find(|e| e.name == "add").unwrap();
        let divide = stats.endpoints.iter().find(|e| e.name == "divide").unwrap();
        if add.num_requests >= 1 && divide.num_errors >= 1 {
            // Other tests send good and bad requests to these endpoints too,
            // so only the relations between the counters hold exactly.
            assert!(divide.num_errors <= divide.num_requests, "{divide:?}");
            let status = divide.last_error.split(':').next().unwrap_or_default();
            assert!(["400", "413", "422", "503"].contains(&status), "{divide:?}");
            assert!(
                add.average_processing_time > 0
                    && add.processing_time >= add.average_processing_time
            );
            counted = true;
            break;
        }
    }
    assert!(counted, "STATS never counted this instance's requests");

    let info: InfoResponse = one(&client, Verb::Info, &id).await;
    assert_eq!(info.kind, "io.nats.micro.v1.info_response");
    let mut subjects_seen: Vec<&str> = info.endpoints.iter().map(|e| e.subject.as_str()).collect();
    subjects_seen.sort_unstable();
    assert_eq!(subjects_seen.len(), 8);
    assert!(subjects_seen.contains(&"services.math.calculate"));
    assert!(info.endpoints.iter().all(|e| e.queue_group == "q"));

    // STATS as plain JSON, the way other languages read it.
    let stats: Json = one(&client, Verb::Stats, &id).await;
    assert_eq!(stats["type"], "io.nats.micro.v1.stats_response");
    assert!(stats["started"].as_str().is_some_and(|s| s.ends_with('Z')));
    let _: StatsResponse = serde_json::from_value(stats).unwrap();

    // The official Rust micro types read our replies too (what `nats micro`
    // tooling expects): ping, info and stats, with RFC 3339 `started`.
    let _: async_nats::service::PingResponse = one(&client, Verb::Ping, &id).await;
    let official: async_nats::service::Info = one(&client, Verb::Info, &id).await;
    assert_eq!(official.endpoints.len(), 8);
    let official: async_nats::service::Stats = one(&client, Verb::Stats, &id).await;
    assert_eq!(official.endpoints.len(), 8);
    math.stop().await;
}

#[tokio::test]
async fn five_hundred_concurrent_requests_split_across_two_instances() {
    let cluster = testkit::shared().await;
    let a = start_math(cluster, &[]).await;
    let b = start_math(cluster, &[]).await;
    let client = cluster.client().await.unwrap();
    assert_eq!(answering(&client, &[a.id(), b.id()]).await.len(), 2);

    let calls = (0..500).map(|i| {
        let client = client.clone();
        async move {
            let reply: Json = call(
                &client,
                "services.math.add",
                &json!({"a": i, "b": 1}),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            assert_eq!(reply["result"].as_f64(), Some(f64::from(i + 1)));
        }
    });
    join_all(calls).await;

    let stats: Vec<StatsResponse> = discover(
        &client,
        Verb::Stats,
        Some("math"),
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    let ours: Vec<u64> = stats
        .iter()
        .filter(|s| s.id == a.id() || s.id == b.id())
        .map(|s| s.endpoints.iter().map(|e| e.num_requests).sum())
        .collect();
    assert_eq!(ours.len(), 2, "{stats:?}");
    assert!(
        ours.iter().all(|&n| n > 0),
        "both instances answer some requests: {ours:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn maintenance_flag_and_failover() {
    // Own cluster: it kills a node and flips the site-wide flag.
    let mut cluster = Cluster::start(3).await.unwrap();
    // Connected to node 1 first (order kept), so killing node 1 forces a reconnect.
    let urls = vec![cluster.url(1), cluster.url(2), cluster.url(0)];
    let math = start_math(
        &cluster,
        &[
            ("nats.urls", Value::from(urls)),
            ("nats.retain_servers_order", Value::from(true)),
        ],
    )
    .await;
    let client = cluster.client_to(0).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let add = "services.math.add";
    let ok_body = || Bytes::from_static(br#"{"a":2,"b":3}"#);

    async fn code_within(
        client: &async_nats::Client,
        body: Bytes,
        want: Option<ErrorCode>,
        limit: Duration,
    ) -> Duration {
        let start = Instant::now();
        eventually(
            &format!("services.math.add answers {want:?}"),
            limit,
            || async {
                let reply = request_raw(
                    client,
                    "services.math.add",
                    None,
                    body.clone(),
                    Duration::from_millis(500),
                )
                .await;
                match &reply {
                    Ok(r) if r.error().map(|e| e.code) == want => Ok(()),
                    _ => Err(format!("{reply:?}")),
                }
            },
        )
        .await;
        start.elapsed()
    }

    // Maintenance on -> 503 within 2 s; discovery still answers; off -> answers.
    runtime::maintenance::set(&js, 3, true).await.unwrap();
    let took = code_within(
        &client,
        ok_body(),
        Some(ErrorCode::Maintenance),
        Duration::from_secs(2),
    )
    .await;
    println!("maintenance on seen after {took:?}");
    expect_error(&client, add, ok_body(), ErrorCode::Maintenance).await;
    assert_eq!(
        answering(&client, &[math.id()]).await.len(),
        1,
        "$SRV answers during maintenance"
    );
    runtime::maintenance::set(&js, 3, false).await.unwrap();
    code_within(&client, ok_body(), None, Duration::from_secs(2)).await;

    // Kill the node math is connected to; requests fail fast meanwhile, then
    // succeed again within 5 s.
    cluster.kill_node(1);
    let killed = Instant::now();
    let failures = AtomicU32::new(0);
    eventually(
        "an answer within 5 s of the kill",
        Duration::from_secs(5),
        || async {
            let started = Instant::now();
            let reply =
                request_raw(&client, add, None, ok_body(), Duration::from_millis(500)).await;
            assert!(
                started.elapsed() < Duration::from_millis(1500),
                "a request hung past its timeout"
            );
            match reply {
                Ok(r) if r.error().is_none() => Ok(()),
                other => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    Err(format!("{other:?}"))
                }
            }
        },
    )
    .await;
    println!(
        "answered again {:?} after the kill ({} failed meanwhile)",
        killed.elapsed(),
        failures.load(Ordering::Relaxed)
    );

    // The maintenance watch survived the reconnect.
    runtime::maintenance::set(&js, 3, true).await.unwrap();
    code_within(
        &client,
        ok_body(),
        Some(ErrorCode::Maintenance),
        Duration::from_secs(5),
    )
    .await;
    runtime::maintenance::set(&js, 3, false).await.unwrap();
    code_within(&client, ok_body(), None, Duration::from_secs(5)).await;

    // The node comes back and the cluster keeps serving.
    cluster.restart_node(1).await.unwrap();
    assert_eq!(result(&client, add, json!({"a": 2, "b": 3})).await, 5.0);
    math.stop().await;
}

#[tokio::test]
async fn sigterm_answers_in_flight_requests_then_exits_zero() {
    let cluster = Cluster::start(3).await.unwrap();
    let mut child = testkit::spawn_process(
        env!("CARGO_BIN_EXE_math-service"),
        &cluster,
        &[
            ("SWITCHYARD__MATH__DELAY_MS", "1500"),
            ("SWITCHYARD__LOG__FORMAT", "compact"),
        ],
    )
    .await;
    let client = cluster.client().await.unwrap();

    let calls: Vec<_> = (0..20)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                call::<_, Json>(
                    &client,
                    "services.math.multiply",
                    &json!({"a": i, "b": 2}),
                    Duration::from_secs(10),
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    child.signal(nix::sys::signal::Signal::SIGTERM);

    for (i, handle) in calls.into_iter().enumerate() {
        let reply = handle
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("request {i} lost: {e}"));
        assert_eq!(reply["result"].as_f64(), Some(2.0 * i as f64));
    }
    let status = child
        .wait(Duration::from_secs(10))
        .await
        .expect("exited within 10 s");
    assert!(status.success(), "exit status {status}");
    // Gone from the queue group: a new request finds no responder at once.
    let err = call::<_, Json>(
        &client,
        "services.math.add",
        &json!({"a": 1, "b": 1}),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CallError::NoResponders(_)), "{err}");
}
