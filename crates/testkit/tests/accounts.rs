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
use futures::StreamExt as _;
use protocol::accounts;
use protocol::names::{consumers, services, streams};
use protocol::subjects;
use runtime::settings::Value;
use std::time::Duration;
use testkit::refusals::{Refused, connect_watched};
use testkit::{Cluster, ClusterOptions};

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
        let watched = connect_watched(&cluster, user.name).await.unwrap();
        let client = watched.client.clone();
        let theirs = subjects::user_inbox_all(other.name);
        watched.subscribe_refused(subjects::INBOX_ALL).await;
        watched.subscribe_refused(&theirs).await;
        // Positive control, on the same connection: a JetStream API request
        // (`$JS.API.INFO`, which every service user may make) is answered
        // in its own inbox.
        let js = jetstream::new(client.clone());
        js.query_account()
            .await
            .unwrap_or_else(|e| panic!("{}: $JS.API.INFO: {e}", user.name));
        let own = watched.errors_mentioning(&subjects::inbox_prefix(user.name));
        assert!(own.is_empty(), "{}: own inbox refused: {own:?}", user.name);
    }

    // 2. A JetStream pull by a service user from what admin provisioned:
    // deliveries to its own prefix.
    let admin = jetstream::new(cluster.client_as(accounts::ADMIN).await.unwrap());
    let provisioned = admin
        .create_stream(jetstream::stream::Config {
            name: streams::PAYMENTS.into(),
            subjects: vec![subjects::PAYMENT_PROCESS.into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    provisioned
        .create_consumer(pull::Config {
            durable_name: Some(consumers::PAYMENT_PROCESSOR.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let watched = connect_watched(&cluster, "payments").await.unwrap();
    let payments = watched.client.clone();
    let js = jetstream::new(payments.clone());
    js.publish(subjects::PAYMENT_PROCESS, r#"{"test":1}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let stream = js.get_stream(streams::PAYMENTS).await.unwrap();
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_consumer(consumers::PAYMENT_PROCESSOR)
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
    assert!(watched.errors().is_empty(), "{:?}", watched.errors());

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
            ("jetstream.assets", Value::from("expect")),
        ],
    )
    .await;
    let watched = connect_watched(&cluster, accounts::CLIENT).await.unwrap();
    let client = watched.client.clone();
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
    watched
        .subscribe_refused(&subjects::user_inbox_all("math"))
        .await;
    assert!(watched.was_refused(Refused::Subscription, &subjects::user_inbox_all("math")));
    math.stop().await;
}
