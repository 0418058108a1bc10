//! A cluster with the deployments' accounts (`protocol::accounts`): every
//! service user is refused the shared inbox `_INBOX.>` and other users'
//! inboxes, and still gets its replies, JetStream API answers and pull
//! deliveries under its own prefix `_INBOX_<user>`; a real service runs as
//! its user and answers `client`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use async_nats::jetstream::{self, consumer::pull};
use async_nats::{Event, ServerError};
use futures::StreamExt as _;
use protocol::accounts;
use protocol::names::{consumers, services, streams};
use protocol::subjects;
use runtime::settings::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::{Cluster, ClusterOptions};

/// Connects as `user` (its inbox prefix); the server's errors (permission
/// violations) are collected in the returned list.
async fn connect_as(
    cluster: &Cluster,
    user: &str,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = cluster
        .options_as(user)
        .unwrap()
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let Event::ServerError(ServerError::Other(e)) = event {
                    seen.lock().unwrap().push(e);
                }
            }
        })
        .connect(cluster.urls())
        .await
        .unwrap();
    (client, errors)
}

/// Waits until the server reported refusing `user` a subscription to `subject`.
async fn refused_subscription(errors: &Arc<Mutex<Vec<String>>>, user: &str, subject: &str) {
    testkit::eventually(
        &format!("{user} is refused a subscription to {subject}"),
        Duration::from_secs(5),
        || {
            let errors = errors.lock().unwrap().clone();
            async move {
                let refused = errors.iter().any(|e| {
                    e.to_lowercase()
                        .contains("permissions violation for subscription to")
                        && e.contains(&format!("\"{subject}\""))
                });
                if refused {
                    Ok(())
                } else {
                    Err(format!("server errors: {errors:?}"))
                }
            }
        },
    )
    .await;
}

#[tokio::test]
async fn each_user_reads_only_its_own_inboxes_and_still_gets_its_replies() {
    let cluster = Cluster::start_retrying(ClusterOptions {
        accounts: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let all = accounts::users();

    // 1. Refused: the shared inbox and the next user's inboxes.
    for (i, user) in all.iter().enumerate() {
        let other = &all[(i + 1) % all.len()];
        let (client, errors) = connect_as(&cluster, user.name).await;
        let theirs = subjects::user_inbox_all(other.name);
        let _shared = client.subscribe(subjects::INBOX_ALL).await.unwrap();
        let _other = client.subscribe(theirs.clone()).await.unwrap();
        client.flush().await.unwrap();
        refused_subscription(&errors, user.name, subjects::INBOX_ALL).await;
        refused_subscription(&errors, user.name, &theirs).await;
        // Positive control, on the same connection: a JetStream API request
        // (`$JS.API.INFO`, which every service user may make) is answered
        // in its own inbox.
        let js = jetstream::new(client.clone());
        js.query_account()
            .await
            .unwrap_or_else(|e| panic!("{}: $JS.API.INFO: {e}", user.name));
        let own = errors
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.contains(&subjects::inbox_prefix(user.name)))
            .cloned()
            .collect::<Vec<_>>();
        assert!(own.is_empty(), "{}: own inbox refused: {own:?}", user.name);
    }

    // 2. A JetStream pull by a service user: deliveries to its own prefix.
    let (payments, errors) = connect_as(&cluster, "payments").await;
    let js = jetstream::new(payments.clone());
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: streams::PAYMENTS.into(),
            subjects: vec![subjects::PAYMENT_PROCESS.into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    js.publish(subjects::PAYMENT_PROCESS, r#"{"test":1}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(consumers::PAYMENT_PROCESSOR.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(5), batch.next())
        .await
        .expect("no pull delivery within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(&message.payload[..], br#"{"test":1}"#);
    message.double_ack().await.unwrap();
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );

    // 3. A real service as its user, called as `client`.
    let math = testkit::spawn_service(
        math_service::run,
        &cluster,
        &[
            ("nats.user", Value::from("math")),
            (
                "nats.password",
                Value::from(cluster.password("math").unwrap()),
            ),
            ("jetstream.replicas", Value::from(3)),
        ],
    )
    .await;
    let (client, errors) = connect_as(&cluster, accounts::CLIENT).await;
    let reply = client
        .request(
            subjects::math_operation(protocol::math::Operation::Add),
            r#"{"a":2,"b":3}"#.into(),
        )
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["result"], 5.0, "{reply}");
    assert_eq!(math.name(), services::MATH);
    // And `client` may not read the services' inboxes either.
    let _math_inboxes = client
        .subscribe(subjects::user_inbox_all("math"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    refused_subscription(&errors, accounts::CLIENT, &subjects::user_inbox_all("math")).await;
    math.stop().await;
}
