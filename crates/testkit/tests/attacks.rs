//! The attack suite on one local cluster with the deployments' accounts
//! (`protocol::accounts`), documented row by row in `docs/SECURITY.md`.
//!
//! 1. `admin` provisions every service's streams, buckets and consumers
//!    (the registry, started first, waits for it); then every service runs
//!    as its own NATS user with `jetstream.assets = expect`, and one
//!    happy-path call per service works as `client`.
//! 2. Each service user tries what it must not do; every row waits for the
//!    server's permission violation for exactly that subject (a row fails
//!    if the server lets it through), and the same connection then makes a
//!    permitted JetStream call that is answered without a violation.
//! 3. `client` is refused administration (delete, purge, create, KV writes,
//!    dead letters, replays) and forgeries.
//! 4. `client` forges `events.payment.completed` through a reply subject:
//!    math refuses to answer a non-inbox, nothing reaches the subject.
//! 5. No credentials and a wrong password are refused at connect.
//!
//! Rows print `ATTACK <row> <user> refused` for the report.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use async_nats::jetstream;
use futures::StreamExt as _;
use payment_processor::gateway::{Simulator, SimulatorSettings};
use protocol::accounts;
use protocol::email::EmailAccepted;
use protocol::logs::LogQueryReply;
use protocol::manifest;
use protocol::names::{buckets, services, streams};
use protocol::payment::{PaymentRequest, PaymentStatus, StatusReply};
use protocol::subjects;
use runtime::client::call;
use runtime::settings::Value;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::refusals::connect_watched;
use testkit::{Cluster, ClusterOptions, TestService, eventually};

const TIMEOUT: Duration = Duration::from_secs(5);

/// `nats.user` / `nats.password` of `user`, and R3 assets.
fn as_user(cluster: &Cluster, user: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("nats.user", Value::from(user)),
        (
            "nats.password",
            Value::from(cluster.password(user).unwrap()),
        ),
        ("jetstream.replicas", Value::from(3)),
        // As deployed: the assets are provisioned by admin, not by services.
        ("jetstream.assets", Value::from("expect")),
    ]
}

/// Provisions every service's streams, buckets and consumers as `admin`
/// (what `switchyard provision` runs), while nothing serves yet.
async fn provision_all(cluster: &Cluster, dir: &std::path::Path, gateway: Arc<Simulator>) {
    let started = Instant::now();
    let r3 = [("jetstream.replicas", Value::from(3))];
    testkit::provision(registry::run, cluster, &r3).await;
    testkit::provision(math_service::run, cluster, &r3).await;
    testkit::provision(
        |s, t| payment_processor::run_with_gateway(s, t, gateway),
        cluster,
        &r3,
    )
    .await;
    let outbox = dir.join("provision-outbox");
    let mut email = r3.to_vec();
    email.push(("email.outbox_dir", Value::from(outbox.to_str().unwrap())));
    testkit::provision(email_notifier::run, cluster, &email).await;
    let store = dir.join("provision-logs");
    let mut logs = r3.to_vec();
    logs.push(("logs.log_dir", Value::from(store.to_str().unwrap())));
    testkit::provision(log_worker::run, cluster, &logs).await;
    testkit::provision(stock_ticker::run, cluster, &r3).await;
    println!("provisioned as admin in {:?}", started.elapsed());
}

fn gateway() -> Arc<Simulator> {
    Arc::new(
        Simulator::new(&SimulatorSettings {
            ledger_file: None,
            ..Default::default()
        })
        .unwrap(),
    )
}

fn user_of(service: &str) -> &'static str {
    manifest::of(service).unwrap().user
}

/// Starts the six services, each as its own user. The registry starts
/// before anything is provisioned: it waits for its bucket (answering
/// nothing), and serves once `admin` provisioned every service.
async fn start_services(cluster: &Cluster, dir: &std::path::Path) -> Vec<TestService> {
    let mut out = Vec::new();
    let started = Instant::now();
    let registry_settings = as_user(cluster, user_of(services::REGISTRY));
    let (registry, ()) = tokio::join!(
        testkit::spawn_service(registry::run, cluster, &registry_settings),
        async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let observer = cluster.client().await.unwrap();
            assert!(
                testkit::instances(&observer, services::REGISTRY)
                    .await
                    .is_empty(),
                "the registry served before its bucket was provisioned"
            );
            let admin = jetstream::new(observer);
            assert!(admin.get_key_value(buckets::REGISTRY).await.is_err());
            provision_all(cluster, dir, gateway()).await;
        }
    );
    println!(
        "the registry waited for provisioning, then served ({:?})",
        started.elapsed()
    );
    out.push(registry);
    out.push(
        testkit::spawn_service(
            math_service::run,
            cluster,
            &as_user(cluster, user_of(services::MATH)),
        )
        .await,
    );
    let gateway = gateway();
    out.push(
        testkit::spawn_service(
            |s, t| payment_processor::run_with_gateway(s, t, gateway),
            cluster,
            &as_user(cluster, user_of(services::PAYMENT_PROCESSOR)),
        )
        .await,
    );
    let mut email = as_user(cluster, user_of(services::EMAIL_NOTIFIER));
    email.push((
        "email.outbox_dir",
        Value::from(dir.join("outbox").to_str().unwrap()),
    ));
    out.push(testkit::spawn_service(email_notifier::run, cluster, &email).await);
    let mut logs = as_user(cluster, user_of(services::LOG_WORKER));
    logs.push((
        "logs.log_dir",
        Value::from(dir.join("logs").to_str().unwrap()),
    ));
    out.push(testkit::spawn_service(log_worker::run, cluster, &logs).await);
    out.push(
        testkit::spawn_service(
            stock_ticker::run,
            cluster,
            &as_user(cluster, user_of(services::STOCK_TICKER)),
        )
        .await,
    );
    println!(
        "six services started under their own users in {:?}",
        started.elapsed()
    );
    out
}

/// One happy-path call per service, as `client`.
async fn happy_paths(cluster: &Cluster) {
    let client = cluster.client_as(accounts::CLIENT).await.unwrap();
    let js = jetstream::new(client.clone());

    // math
    let reply: serde_json::Value = call(
        &client,
        &subjects::math_operation(protocol::math::Operation::Add),
        &json!({"a": 2, "b": 3}),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(reply["result"], 5.0, "{reply}");

    // payment-processor: a payment completes.
    let req = PaymentRequest {
        payment_id: "atk-pay-1".into(),
        user_id: "user-1".into(),
        subscription_id: None,
        amount: "10.00".into(),
        currency: "USD".into(),
        email: Some("a@b.example".into()),
    };
    runtime::js::publish_durable(
        &js,
        subjects::PAYMENT_PROCESS,
        "atk-pay-1",
        None,
        serde_json::to_vec(&req).unwrap().into(),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    eventually("atk-pay-1 completed", Duration::from_secs(20), || async {
        let s: Result<StatusReply, _> = call(
            &client,
            subjects::PAYMENT_STATUS,
            &json!({"payment_id": "atk-pay-1"}),
            TIMEOUT,
        )
        .await;
        match s {
            Ok(s) if s.status == PaymentStatus::Completed => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // email-notifier: a mail is accepted.
    let accepted: EmailAccepted = call(
        &client,
        subjects::EMAIL_SEND,
        &json!({"to": "x@b.example", "subject": "hi", "body": "attack suite", "idempotency_key": "atk-1"}),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert!(accepted.accepted, "{accepted:?}");

    // log-worker: a record is stored and found by a query.
    js.publish(
        subjects::LOGS_PROCESS,
        json!({"ts": runtime::time::now_rfc3339(), "service": "attack-suite", "level": "info", "message": "stored", "fields": {}})
            .to_string()
            .into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    eventually(
        "the log record is queryable",
        Duration::from_secs(20),
        || async {
            let r: Result<LogQueryReply, _> = call(
                &client,
                subjects::LOGS_QUERY,
                &json!({"service": "attack-suite"}),
                TIMEOUT,
            )
            .await;
            match r {
                Ok(r) if !r.entries.is_empty() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    // registry and stock-ticker answer.
    let list: serde_json::Value = call(&client, subjects::REGISTRY_LIST, &json!({}), TIMEOUT)
        .await
        .unwrap();
    assert!(list.to_string().contains(services::MATH), "{list}");
    let symbols: serde_json::Value = call(&client, subjects::STOCKS_SYMBOLS, &json!({}), TIMEOUT)
        .await
        .unwrap();
    assert!(symbols.to_string().contains("AAPL"), "{symbols}");
}

/// Everything one service user must be refused ([`testkit::attacks`]).
async fn attacks_as(cluster: &Cluster, user: &accounts::User, all: &[accounts::User]) {
    let w = connect_watched(cluster, user.name).await.unwrap();
    testkit::attacks::service_user(&w, user, all).await;
}

/// `client` asks math to answer on `events.payment.completed`: math
/// refuses (the reply is not an inbox), nothing arrives there, and the
/// refusal is counted in math's `$SRV.STATS`.
async fn forged_reply(cluster: &Cluster) {
    let admin = cluster.client().await.unwrap();
    let mut watch = admin
        .subscribe(subjects::EVENT_PAYMENT_COMPLETED)
        .await
        .unwrap();
    admin.flush().await.unwrap();
    let client = connect_watched(cluster, accounts::CLIENT).await.unwrap();
    client
        .client
        .publish_with_reply(
            subjects::MATH_CALCULATE,
            subjects::EVENT_PAYMENT_COMPLETED,
            json!({"operation": "add", "a": 1, "b": 1})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    client.client.flush().await.unwrap();
    // Positive control: the same request with an inbox is answered.
    let reply: serde_json::Value = call(
        &client.client,
        subjects::MATH_CALCULATE,
        &json!({"operation": "add", "a": 1, "b": 1}),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(reply["result"], 2.0, "{reply}");
    // Math counted the forged request as refused (so it did reach math).
    let refused = eventually("math counted a refused reply", TIMEOUT, || async {
        let stats = admin
            .request(format!("$SRV.STATS.{}", services::MATH), "".into())
            .await
            .map_err(|e| e.to_string())?;
        let stats: serde_json::Value =
            serde_json::from_slice(&stats.payload).map_err(|e| e.to_string())?;
        let refused: u64 = stats["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["data"]["refused_replies"].as_u64())
            .sum();
        if refused >= 1 {
            Ok(refused)
        } else {
            Err(format!("{stats}"))
        }
    })
    .await;
    let arrived = tokio::time::timeout(Duration::from_millis(500), watch.next()).await;
    assert!(
        arrived.is_err(),
        "a forged message reached {}: {arrived:?}",
        subjects::EVENT_PAYMENT_COMPLETED
    );
    println!(
        "ATTACK forged reply to events.payment.completed  client    refused ({refused} counted by math)"
    );
}

/// What `client` must be refused ([`testkit::attacks`]).
async fn client_attacks(cluster: &Cluster) {
    let w = connect_watched(cluster, accounts::CLIENT).await.unwrap();
    testkit::attacks::client(&w).await;
}

/// No credentials, or a wrong password: the connection is refused.
async fn bad_credentials(cluster: &Cluster) {
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(cluster.urls())
        .await;
    assert!(anonymous.is_err(), "anonymous connect was accepted");
    let wrong = async_nats::ConnectOptions::with_user_and_password("math".into(), "wrong".into())
        .connection_timeout(Duration::from_secs(2))
        .connect(cluster.urls())
        .await;
    assert!(wrong.is_err(), "a wrong password was accepted");
    // Positive control: the right password connects.
    cluster.client_as("math").await.unwrap();
    println!("ATTACK anonymous connect / wrong password       -         refused");
}

#[tokio::test]
async fn service_users_are_refused_everything_outside_their_manifest() {
    let started = Instant::now();
    let cluster = Cluster::start_retrying(ClusterOptions {
        accounts: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let running = start_services(&cluster, dir.path()).await;
    happy_paths(&cluster).await;
    println!("happy paths done after {:?}", started.elapsed());

    let admin = jetstream::new(cluster.client().await.unwrap());
    let events_before = testkit::js::message_count(&admin, streams::EVENTS).await;
    assert!(events_before >= 1, "the payment's event is in EVENTS");

    let all = accounts::users();
    for user in &all {
        attacks_as(&cluster, user, &all).await;
    }
    client_attacks(&cluster).await;
    forged_reply(&cluster).await;
    bad_credentials(&cluster).await;

    // The purge and delete attempts changed nothing.
    assert!(testkit::js::message_count(&admin, streams::EVENTS).await >= events_before);
    admin.get_stream(streams::PAYMENTS).await.unwrap();
    admin.get_key_value(buckets::PAYMENTS).await.unwrap();
    for service in running {
        assert!(service.is_running(), "{} stopped", service.name());
        service.stop().await;
    }
    println!("attack suite done in {:?}", started.elapsed());
}
