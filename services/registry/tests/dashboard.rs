//! The dashboard's HTTP side on a real cluster without accounts: the page,
//! the snapshot, the event stream (ticks, logs with their trace id), the
//! toggle's refusals and its no-auth path, and a shutdown with a page open.
//! (With accounts, and in a browser: clients/python/tests/test_dashboard.py.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use protocol::micro::{InfoResponse, Verb};
use runtime::client::discover;
use runtime::settings::Value;
use std::time::Duration;
use testkit::{Cluster, eventually, spawn_service};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// One request on a fresh connection: (status, head, body).
async fn http(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(host).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {host}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    (status, head.to_lowercase(), body.to_owned())
}

/// Reads the event stream until `needle` shows up.
async fn read_until(stream: &mut TcpStream, seen: &mut String, needle: &str) {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 16 * 1024];
        while !seen.contains(needle) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the event stream ended before {needle:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    assert!(found.is_ok(), "no {needle:?} in the event stream: {seen}");
}

/// `host:port` of the dashboard the registry announces in `$SRV.INFO`.
async fn dashboard_host(client: &async_nats::Client) -> String {
    let infos: Vec<InfoResponse> = discover(
        client,
        Verb::Info,
        Some("registry"),
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    let url = infos[0].metadata["dashboard"].clone();
    url.strip_prefix("http://")
        .and_then(|r| r.strip_suffix('/'))
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_dashboard_serves_a_snapshot_live_events_and_a_guarded_toggle() {
    let cluster = Cluster::start(3).await.unwrap();
    let registry = spawn_service(
        registry::run,
        &cluster,
        &[
            ("registry.metrics_addr", Value::from("127.0.0.1:0")),
            ("service.registry.ttl_s", Value::from(2)),
        ],
    )
    .await;
    let client = cluster.client().await.unwrap();
    let host = dashboard_host(&client).await;
    let host = host.as_str();

    // The page, with its token and a policy that lets nothing else in.
    let (status, head, page) = http(host, "GET", "/", &[], "").await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("frame-ancestors 'none'"), "{head}");
    let token = page
        .split("<meta name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    assert_eq!(token.len(), 64, "{token}");
    for path in ["/dashboard/app.js", "/dashboard/app.css"] {
        let (status, _, body) = http(host, "GET", path, &[], "").await;
        assert_eq!(status, 200);
        assert!(!body.is_empty());
    }

    // The snapshot: the registry itself healthy, the six services listed.
    let state = eventually("the registry healthy", Duration::from_secs(15), || async {
        let (_, _, body) = http(host, "GET", "/dashboard/state", &[], "").await;
        let state: serde_json::Value = serde_json::from_str(&body).unwrap();
        let health = state["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "registry")
            .map(|s| s["health"].clone());
        if health == Some("healthy".into()) {
            Ok(state)
        } else {
            Err(body)
        }
    })
    .await;
    assert_eq!(state["services"].as_array().unwrap().len(), 6, "{state}");
    assert_eq!(state["auth"], false);
    assert_eq!(state["maintenance"], false);
    assert!(state["payments"]["completed"].is_u64(), "{state}");

    // The event stream: a state push every second, ticks and log lines as
    // they are published (a log line's trace id from its traceparent).
    let mut events = TcpStream::connect(host).await.unwrap();
    events
        .write_all(
            format!("GET /dashboard/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut events, &mut seen, "event: state").await;
    client
        .publish(
            "stocks.AAPL",
            r#"{"symbol":"AAPL","price":"123.45","change":"0.10","ts":"t","seq":1}"#.into(),
        )
        .await
        .unwrap();
    read_until(&mut events, &mut seen, "\"price\":\"123.45\"").await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    client
        .publish_with_headers(
            "logs.demo.warn",
            runtime::trace::headers(&format!("00-{trace}-00f067aa0ba902b7-01")),
            r#"{"ts":"t","message":"from the test"}"#.into(),
        )
        .await
        .unwrap();
    read_until(&mut events, &mut seen, trace).await;
    assert!(seen.contains("event: log"), "{seen}");
    let (_, _, body) = http(host, "GET", "/dashboard/state", &[], "").await;
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["prices"]["AAPL"][0]["price"], "123.45", "{state}");
    assert!(
        state["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["trace_id"] == trace && l["level"] == "warn" && l["service"] == "demo"),
        "{state}"
    );

    // The toggle: forgeries and bad bodies are refused before anything.
    let origin = format!("http://{host}");
    let json = ("Content-Type", "application/json");
    let with_token = ("X-CSRF-Token", token.as_str());
    let from_page = ("Origin", origin.as_str());
    for (headers, body, want) in [
        (vec![json, from_page], r#"{"on":true}"#, 403),
        (
            vec![json, with_token, ("Origin", "http://evil.example")],
            r#"{"on":true}"#,
            403,
        ),
        (
            vec![("Content-Type", "text/plain"), with_token, from_page],
            r#"{"on":true}"#,
            415,
        ),
        (vec![json, with_token, from_page], "{not json", 400),
        (vec![json, with_token, from_page], r#"{"on":"yes"}"#, 400),
        (vec![json, with_token, from_page], "", 400),
    ] {
        let (status, _, reply) = http(host, "POST", "/dashboard/maintenance", &headers, body).await;
        assert_eq!(status, want, "{headers:?} {body}: {reply}");
        let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert!(reply["error"]["message"].is_string(), "{reply}");
    }
    let (status, _, _) = http(host, "GET", "/dashboard/maintenance", &[], "").await;
    assert_eq!(status, 405);
    // Without accounts no password guards it: a page reached by a DNS name
    // (which could be re-pointed here: rebinding) is refused.
    let (status, _, reply) = http(
        host,
        "POST",
        "/dashboard/maintenance",
        &[
            json,
            with_token,
            ("Host", "rebound.example:9464"),
            ("Origin", "http://rebound.example:9464"),
        ],
        r#"{"on":true}"#,
    )
    .await;
    assert_eq!(status, 403, "{reply}");
    assert!(reply.contains("not by a DNS name"), "{reply}");
    // Without accounts, the registry's own connection sets it, and says so.
    let (status, _, reply) = http(
        host,
        "POST",
        "/dashboard/maintenance",
        &[json, with_token, from_page],
        r#"{"on":true}"#,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(
        (&reply["maintenance"], &reply["as"]),
        (&true.into(), &"registry".into())
    );
    assert!(
        reply["note"].as_str().unwrap().contains("no accounts"),
        "{reply}"
    );
    eventually(
        "the flag on in the snapshot",
        Duration::from_secs(10),
        || async {
            let (_, _, body) = http(host, "GET", "/dashboard/state", &[], "").await;
            if body.contains("\"maintenance\":true") {
                Ok(())
            } else {
                Err(body)
            }
        },
    )
    .await;
    let (status, _, reply) = http(
        host,
        "POST",
        "/dashboard/maintenance",
        &[json, with_token],
        r#"{"on":false}"#,
    )
    .await;
    assert_eq!(status, 200, "{reply}");

    // A graceful stop with a page still open: the stream ends, the
    // registry stops.
    tokio::time::timeout(Duration::from_secs(20), registry.stop())
        .await
        .expect("the registry stops with an event stream open");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = vec![0u8; 4096];
        loop {
            match events.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the event stream did not end");
}

/// With accounts (as deployed): the registry runs as its own user, and
/// the toggle works only with `admin`'s password, which NATS checks.
#[tokio::test]
async fn with_accounts_the_toggle_logs_in_as_admin_and_nats_checks_the_password() {
    let cluster = testkit::Cluster::start_retrying(testkit::ClusterOptions {
        accounts: true,
        ..Default::default()
    })
    .await
    .unwrap();
    testkit::provision(registry::run, &cluster, &[]).await;
    let user = protocol::manifest::of("registry").unwrap().user;
    let registry = spawn_service(
        registry::run,
        &cluster,
        &[
            ("registry.metrics_addr", Value::from("127.0.0.1:0")),
            ("nats.user", Value::from(user)),
            (
                "nats.password",
                Value::from(cluster.password(user).unwrap()),
            ),
            ("jetstream.assets", Value::from("expect")),
        ],
    )
    .await;
    let client = cluster.client().await.unwrap();
    let host = dashboard_host(&client).await;
    let host = host.as_str();
    let (_, _, page) = http(host, "GET", "/", &[], "").await;
    let token = page
        .split("<meta name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let (_, _, body) = http(host, "GET", "/dashboard/state", &[], "").await;
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["auth"], true, "{state}");

    let headers = [
        ("Content-Type", "application/json"),
        ("X-CSRF-Token", token.as_str()),
    ];
    let toggle = |body: String| async move {
        let (status, _, reply) =
            http(host, "POST", "/dashboard/maintenance", &headers, &body).await;
        (
            status,
            serde_json::from_str::<serde_json::Value>(&reply).unwrap(),
        )
    };
    let (status, reply) = toggle(r#"{"on":true}"#.to_owned()).await;
    assert_eq!(status, 401, "{reply}");
    let (status, reply) = toggle(r#"{"on":true,"password":"wrong"}"#.to_owned()).await;
    assert_eq!(status, 403, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refused the admin password"),
        "{reply}"
    );
    // The registry's own password is not admin's either.
    let own = cluster.password(user).unwrap();
    let (status, _) = toggle(serde_json::json!({"on": true, "password": own}).to_string()).await;
    assert_eq!(status, 403);
    let flag = || async {
        let kv = async_nats::jetstream::new(client.clone())
            .get_key_value(protocol::names::buckets::CONFIG)
            .await
            .unwrap();
        kv.get(protocol::names::keys::SITE_MAINTENANCE)
            .await
            .unwrap()
            .is_some_and(|v| protocol::names::maintenance_flag(&v))
    };
    assert!(!flag().await, "a refused toggle changed the flag");
    let admin = cluster.password(protocol::accounts::ADMIN).unwrap();
    let (status, reply) =
        toggle(serde_json::json!({"on": true, "password": admin}).to_string()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply,
        serde_json::json!({"maintenance": true, "as": "admin"})
    );
    // (A KV read may be served by a replica a moment behind.)
    eventually("the flag on", Duration::from_secs(5), || async {
        if flag().await { Ok(()) } else { Err("off") }
    })
    .await;
    let (status, _) = toggle(serde_json::json!({"on": false, "password": admin}).to_string()).await;
    assert_eq!(status, 200);
    eventually("the flag off", Duration::from_secs(5), || async {
        if flag().await { Err("on") } else { Ok(()) }
    })
    .await;
    registry.stop().await;
}
