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
use protocol::manifest::{self, matches};
use protocol::names::{buckets, consumers, services, streams};
use protocol::payment::{PaymentRequest, PaymentStatus, StatusReply};
use protocol::subjects;
use runtime::client::call;
use runtime::settings::Value;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::refusals::{Refused, connect_watched};
use testkit::{Cluster, ClusterOptions, TestService, eventually};

const TIMEOUT: Duration = Duration::from_secs(5);

fn allowed(list: &[String], subject: &str) -> bool {
    list.iter().any(|p| matches(p, subject))
}

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

/// Everything one service user must be refused, each row waiting for the
/// server's violation for that subject.
async fn attacks_as(cluster: &Cluster, user: &accounts::User, all: &[accounts::User]) {
    let w = connect_watched(cluster, user.name).await.unwrap();
    let mut rows = 0;
    let row = |name: &str| println!("ATTACK {name:<28} {:<9} refused", user.name);

    // Inboxes: the shared one and the next user's.
    w.subscribe_refused(subjects::INBOX_ALL).await;
    row("sub _INBOX.>");
    let i = all.iter().position(|u| u.name == user.name).unwrap();
    let other = &all[(i + 1) % all.len()];
    w.subscribe_refused(&subjects::user_inbox_all(other.name))
        .await;
    row("sub other user's inbox");
    rows += 2;

    // Another service's endpoint subjects.
    let own = manifest::ALL.iter().find(|m| m.user == user.name).unwrap();
    let foreign: Vec<&str> = manifest::ALL
        .iter()
        .filter(|m| m.user != user.name)
        .filter_map(|m| m.endpoints.first().map(|e| e.subject.as_str()))
        .collect();
    assert!(!foreign.is_empty());
    for subject in foreign {
        assert!(
            !allowed(&user.subscribe, subject),
            "{}: {subject}",
            user.name
        );
        w.subscribe_refused(subject).await;
        rows += 1;
    }
    row("sub others' endpoints");

    // Publishing what other services publish (events, requests, ticks,
    // their logs, the email outbox, the logs DLQ).
    let candidates = [
        subjects::EVENT_PAYMENT_COMPLETED.to_owned(),
        subjects::PAYMENT_PROCESS.to_owned(),
        "stocks.AAPL".to_owned(),
        protocol::email::subjects::OUTBOX.to_owned(),
        subjects::LOGS_DLQ.to_owned(),
        subjects::logs(services::PAYMENT_PROCESSOR, "error").unwrap(),
        subjects::logs(services::MATH, "error").unwrap(),
    ];
    let mut published = 0;
    for subject in candidates.iter().filter(|s| !allowed(&user.publish, s)) {
        w.publish_refused(subject).await;
        published += 1;
    }
    assert!(
        published >= 4,
        "{}: only {published} foreign publishes",
        user.name
    );
    rows += published;
    row("pub others' subjects");

    // Another service's bucket and stream, unless it is this user's.
    if own.service != services::PAYMENT_PROCESSOR {
        w.publish_refused(&subjects::kv_key(buckets::PAYMENTS, "x"))
            .await;
        w.publish_refused(&format!("$JS.API.DIRECT.GET.{}", streams::PAYMENTS))
            .await;
        w.publish_refused(&format!(
            "$JS.API.DIRECT.GET.KV_{}.$KV.{}.x",
            buckets::PAYMENTS,
            buckets::PAYMENTS
        ))
        .await;
        w.publish_refused(&format!("$JS.API.STREAM.MSG.GET.{}", streams::PAYMENTS))
            .await;
        // A forged ack for a payments delivery.
        w.publish_refused(&format!(
            "$JS.ACK.{}.{}.1.1.1.0.0",
            streams::PAYMENTS,
            consumers::PAYMENT_PROCESSOR
        ))
        .await;
        rows += 5;
        row("KV/direct get/ack payments");
    }

    // Deleting or purging any stream or bucket, deleting a consumer or a
    // message outside what the manifest allows.
    for subject in [
        format!("$JS.API.STREAM.PURGE.{}", streams::EVENTS),
        format!("$JS.API.STREAM.DELETE.{}", streams::PAYMENTS),
        format!("$JS.API.STREAM.DELETE.KV_{}", buckets::PAYMENTS),
        format!("$JS.API.STREAM.PURGE.KV_{}", buckets::CONFIG),
        format!("$JS.API.STREAM.SNAPSHOT.{}", streams::PAYMENTS),
        format!("$JS.API.STREAM.RESTORE.{}", streams::PAYMENTS),
        format!("$JS.API.STREAM.MSG.DELETE.{}", streams::EVENTS),
        // An update of a shared stream or a bucket (shrinking its limits
        // would purge it by another name).
        format!("$JS.API.STREAM.UPDATE.{}", streams::EVENTS),
        format!("$JS.API.STREAM.UPDATE.KV_{}", buckets::PAYMENTS),
        format!("$JS.API.STREAM.UPDATE.KV_{}", buckets::CONFIG),
        format!(
            "$JS.API.CONSUMER.DELETE.{}.{}",
            streams::PAYMENTS,
            consumers::PAYMENT_PROCESSOR
        ),
    ] {
        w.publish_refused(&subject).await;
        rows += 1;
    }
    row("purge/delete/update shared");

    // Creating assets: a stream that sources PAYMENTS or republishes onto
    // another service's subjects, a consumer on PAYMENTS with a deliver
    // subject of its choosing, or changing a stream it uses (adding a
    // republish). nats-server checks no permission on sources, mirror,
    // republish or deliver subjects, so the verbs themselves are refused.
    let mut creates = vec![
        "$JS.API.STREAM.CREATE.STEAL".to_owned(),
        format!("$JS.API.CONSUMER.CREATE.{}", streams::PAYMENTS),
        format!("$JS.API.CONSUMER.CREATE.{}.steal.>", streams::PAYMENTS),
        format!(
            "$JS.API.CONSUMER.DURABLE.CREATE.{}.steal",
            streams::PAYMENTS
        ),
    ];
    if let Some(used) = own.streams.first() {
        creates.push(format!("$JS.API.STREAM.UPDATE.{}", used.stream));
        creates.push(format!("$JS.API.STREAM.CREATE.{}", used.stream));
    }
    for subject in &creates {
        w.publish_refused(subject).await;
        rows += 1;
    }
    row("create/update streams, consumers");

    // Positive control on the same connection: a permitted JetStream call
    // is answered and produces no violation.
    let before = w.errors().len();
    jetstream::new(w.client.clone())
        .query_account()
        .await
        .unwrap_or_else(|e| panic!("{}: $JS.API.INFO: {e}", user.name));
    w.client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.errors().len(), before, "{}: {:?}", user.name, w.errors());
    assert!(
        !w.was_refused(Refused::Publish, "$JS.API.INFO"),
        "{}",
        user.name
    );
    // Exactly one violation per row: nothing permitted was refused.
    assert_eq!(before, rows, "{}: {:#?}", user.name, w.errors());
    println!("{}: {rows} attempts refused", user.name);
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

/// What `client` (every app, the Python client, the CLI's everyday
/// commands) must be refused: administration, others' data, forgeries.
async fn client_attacks(cluster: &Cluster) {
    let w = connect_watched(cluster, accounts::CLIENT).await.unwrap();
    let rows = [
        format!("$JS.API.STREAM.DELETE.{}", streams::PAYMENTS),
        format!("$JS.API.STREAM.PURGE.{}", streams::EVENTS),
        format!("$JS.API.STREAM.CREATE.{}", streams::PAYMENTS),
        format!("$JS.API.STREAM.UPDATE.{}", streams::PAYMENTS),
        format!("$JS.API.STREAM.MSG.DELETE.{}", streams::PAYMENTS),
        format!("$JS.API.STREAM.MSG.GET.{}", streams::PAYMENTS_DLQ),
        format!("$JS.API.DIRECT.GET.{}", streams::PAYMENTS),
        format!("$JS.API.CONSUMER.CREATE.{}", streams::PAYMENTS),
        format!(
            "$JS.API.CONSUMER.DELETE.{}.{}",
            streams::PAYMENTS,
            consumers::PAYMENT_PROCESSOR
        ),
        format!(
            "$JS.ACK.{}.{}.1.1.1.0.0",
            streams::PAYMENTS,
            consumers::PAYMENT_PROCESSOR
        ),
        subjects::kv_key(buckets::PAYMENTS, "atk-pay-1"),
        subjects::kv_key(buckets::CONFIG, protocol::names::keys::SITE_MAINTENANCE),
        subjects::PAYMENT_REPLAY.to_owned(),
        subjects::EVENT_PAYMENT_COMPLETED.to_owned(),
        protocol::email::subjects::OUTBOX.to_owned(),
    ];
    for subject in &rows {
        w.publish_refused(subject).await;
        println!("ATTACK client pub {subject:<44} refused");
    }
    w.subscribe_refused(subjects::INBOX_ALL).await;
    println!("ATTACK client sub _INBOX.>                       refused");
    // Positive control: state is readable, and nothing else was refused.
    let before = w.errors().len();
    let js = jetstream::new(w.client.clone());
    let info = js.get_stream(streams::PAYMENTS).await.unwrap();
    assert_eq!(info.cached_info().config.name, streams::PAYMENTS);
    w.client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.errors().len(), before, "{:?}", w.errors());
    assert_eq!(before, rows.len() + 1, "{:#?}", w.errors());
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
