//! Services answer only inboxes: a request whose reply subject is a subject
//! of the contract (`events.payment.completed`) is dropped, not answered
//! there, and counted; fire-and-forget requests still run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use futures::StreamExt as _;
use protocol::micro::{StatsResponse, Verb};
use runtime::micro::{NoInput, ServiceBuilder, refused_replies};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long "nothing arrives" is watched, after a positive control.
const QUIET: Duration = Duration::from_millis(500);

async fn refused(client: &async_nats::Client, name: &str) -> u64 {
    let stats: Vec<StatsResponse> =
        runtime::client::discover(client, Verb::Stats, Some(name), Duration::from_millis(300))
            .await
            .unwrap();
    stats
        .iter()
        .flat_map(|s| &s.endpoints)
        .map(refused_replies)
        .sum()
}

#[tokio::test]
async fn a_request_whose_reply_is_not_an_inbox_is_dropped() {
    let cluster = testkit::shared().await;
    let client = cluster.client().await.unwrap();
    let id = nuid::next().to_string();
    let name = format!("replies-{id}");
    let subject = format!("test.replies.{id}");
    let calls = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new(client.clone(), &name, "1.0.0")
        .endpoint("echo", subject.clone(), {
            let calls = calls.clone();
            move |_: NoInput| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(serde_json::json!({ "ok": true }))
                }
            }
        })
        .start()
        .await
        .unwrap();

    // Anyone could name the completed-payment event as the reply subject.
    let target = protocol::subjects::EVENT_PAYMENT_COMPLETED;
    let mut spy = client.subscribe(target).await.unwrap();
    client.flush().await.unwrap();
    client
        .publish_with_reply(subject.clone(), target, "{}".into())
        .await
        .unwrap();
    // The same through discovery.
    client
        .publish_with_reply(Verb::Ping.subject(Some(&name), None), target, "".into())
        .await
        .unwrap();
    // Positive control: a proper request right after is answered.
    let answer = client.request(subject.clone(), "{}".into()).await.unwrap();
    assert_eq!(&answer.payload[..], br#"{"ok":true}"#);
    let leaked = tokio::time::timeout(QUIET, spy.next()).await;
    assert!(
        leaked.is_err(),
        "the service published on {target}: {leaked:?}"
    );
    testkit::eventually("the refusal is counted", Duration::from_secs(5), || {
        let client = client.clone();
        let name = name.clone();
        async move {
            match refused(&client, &name).await {
                1 => Ok(()),
                n => Err(format!("refused_replies = {n}")),
            }
        }
    })
    .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the dropped request ran the handler"
    );

    // Fire and forget (no reply subject): handled, nothing answered.
    client.publish(subject.clone(), "{}".into()).await.unwrap();
    testkit::eventually(
        "a request without reply runs",
        Duration::from_secs(5),
        || {
            let n = calls.load(Ordering::SeqCst);
            async move { if n == 2 { Ok(()) } else { Err(n) } }
        },
    )
    .await;
    assert_eq!(refused(&client, &name).await, 1);
    assert!(service.shutdown(Duration::from_secs(2)).await);
}
