//! email-notifier against a real SMTP server: `tests/smtp_sink.py`
//! (aiosmtpd), run as a child process per test, on this test binary's one
//! 3-node cluster. The tests share the durable consumer `email-sender`, so
//! they run one at a time ([`SERIAL`]); each tells its mail apart by its
//! `Message-ID` and decides only from what the sink received, the
//! consumer's state, the `email-sent` bucket and the `EVENTS` stream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use async_nats::jetstream::{self, consumer, stream};
use futures::FutureExt as _;
use mailparse::MailHeaderMap as _;
use protocol::email::{self, EmailAccepted, EmailEvent, EmailJob, EmailKind};
use protocol::names::{buckets, consumers, streams};
use protocol::payment::{PaymentEvent, PaymentStatus};
use protocol::subjects;
use runtime::client::call;
use runtime::settings::Value;
use serde_json::json;
use std::panic::AssertUnwindSafe;
use std::time::Duration;
use testkit::smtp::{Sink, header};
use testkit::{Cluster, TestService};

/// One scenario at a time: they share the `email-sender` consumer.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TIMEOUT: Duration = Duration::from_secs(5);
/// The consumers' ack wait in these tests. Progress acks come every
/// 500 ms, so only a stall of more than a second could redeliver a mail.
const ACK_WAIT_MS: u64 = 1_500;
/// The slow relay's delay before its 250: more than twice the ack wait.
const SLOW_RELAY_MS: u64 = 3_500;
/// How long the tests wait for something that happens within seconds.
const WITHIN: Duration = Duration::from_secs(20);

/// The notifier's settings for these tests, as (key, value).
fn settings(sink: &Sink) -> Vec<(&'static str, String)> {
    vec![
        ("email.smtp_url", sink.url()),
        ("email.ack_wait_ms", ACK_WAIT_MS.to_string()),
        ("email.backoff_ms", "200".into()),
        ("email.max_deliver", "20".into()),
        ("email.publish_budget_ms", "500".into()),
        ("email.smtp_timeout_ms", "10000".into()),
    ]
}

/// An email-notifier in this process, sending through `sink`.
async fn notifier(cluster: &Cluster, sink: &Sink) -> TestService {
    let overrides: Vec<(&str, Value)> = settings(sink)
        .into_iter()
        .map(|(k, v)| {
            let value = if k == "email.backoff_ms" {
                Value::from(
                    v.split(',')
                        .map(|ms| ms.parse::<u64>().unwrap())
                        .collect::<Vec<_>>(),
                )
            } else if k == "email.smtp_url" {
                Value::from(v)
            } else {
                Value::from(v.parse::<u64>().unwrap())
            };
            (k, value)
        })
        .collect();
    testkit::spawn_service(email_notifier::run, cluster, &overrides).await
}

async fn request(client: &async_nats::Client, body: serde_json::Value) -> EmailAccepted {
    call(client, subjects::EMAIL_SEND, &body, TIMEOUT)
        .await
        .unwrap()
}

async fn sender(js: &jetstream::Context) -> consumer::Info {
    let mut consumer = js
        .get_stream(streams::EMAILS)
        .await
        .unwrap()
        .get_consumer::<consumer::pull::Config>(consumers::EMAIL_SENDER)
        .await
        .unwrap();
    consumer.info().await.unwrap().clone()
}

/// Waits until the sender has delivered everything up to stream sequence
/// `seq` and has nothing pending (acked or terminated): no delivery of
/// those mails is running or can come any more. Returns its info then.
async fn settled(js: &jetstream::Context, seq: u64) -> consumer::Info {
    testkit::eventually("email-sender settled", WITHIN, || async {
        let info = sender(js).await;
        if info.delivered.stream_sequence >= seq
            && info.num_pending == 0
            && info.num_ack_pending == 0
        {
            Ok(info)
        } else {
            Err(format!(
                "delivered up to {} of {seq}, {} pending, {} unacked",
                info.delivered.stream_sequence, info.num_pending, info.num_ack_pending
            ))
        }
    })
    .await
}

/// The last stream sequence of `EMAILS`.
async fn last_seq(js: &jetstream::Context) -> u64 {
    let mut s = js.get_stream(streams::EMAILS).await.unwrap();
    s.info().await.unwrap().state.last_sequence
}

/// The `events.email.sent` events for mail `id`.
async fn sent_events(js: &jetstream::Context, id: &str) -> Vec<EmailEvent> {
    testkit::js::read_stream(js, streams::EVENTS, subjects::EVENT_EMAIL_SENT)
        .await
        .iter()
        .map(|m| serde_json::from_slice::<EmailEvent>(&m.payload).unwrap())
        .filter(|event| event.id == id)
        .collect()
}

async fn wait_sent_event(js: &jetstream::Context, id: &str) {
    testkit::eventually(&format!("events.email.sent for {id}"), WITHIN, || async {
        if sent_events(js, id).await.is_empty() {
            Err("none yet")
        } else {
            Ok(())
        }
    })
    .await;
}

/// The record of mail `id` in bucket `email-sent`.
async fn record(js: &jetstream::Context, id: &str) -> Option<serde_json::Value> {
    let kv = js.get_key_value(buckets::EMAIL_SENT).await.unwrap();
    kv.get(id)
        .await
        .unwrap()
        .map(|v| serde_json::from_slice(&v).unwrap())
}

async fn wait_copies(sink: &Sink, message_id: &str, n: usize) {
    testkit::eventually(
        &format!("{n} copies of {message_id} at the relay"),
        WITHIN,
        || async {
            let got = sink.copies(message_id).len();
            if got >= n {
                Ok(())
            } else {
                Err(format!("{got} copies"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_mail_reaches_the_relay_once_with_its_message_id_and_a_replayed_job_is_not_sent_again() {
    let _serial = SERIAL.lock().await;
    let cluster = testkit::shared().await;
    let sink = Sink::start().await;
    let n = notifier(cluster, &sink).await;
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());
    settled(&js, last_seq(&js).await).await;

    let key = format!("smtp-a-{}", nuid::next());
    let accepted = request(
        &client,
        json!({"to": "Ann <ann@b.example>", "subject": "Once over SMTP", "body": "Hello over SMTP", "idempotency_key": key}),
    )
    .await;
    let message_id = email::message_id(&accepted.id);
    wait_sent_event(&js, &accepted.id).await;
    settled(&js, last_seq(&js).await).await;

    let copies = sink.copies(&message_id);
    assert_eq!(copies.len(), 1, "one copy of {message_id}");
    let parsed = mailparse::parse_mail(&copies[0]).unwrap();
    assert_eq!(
        parsed.headers.get_first_value("Subject").as_deref(),
        Some("Once over SMTP")
    );
    assert!(
        parsed
            .headers
            .get_first_value("To")
            .unwrap()
            .contains("ann@b.example")
    );
    assert_eq!(parsed.get_body().unwrap().trim(), "Hello over SMTP");
    // The id comes from the idempotency key: the same key, the same Message-ID.
    let again = request(
        &client,
        json!({"to": "ann@b.example", "subject": "Once over SMTP", "body": "Hello over SMTP", "idempotency_key": key}),
    )
    .await;
    assert_eq!(again.id, accepted.id);
    let record = record(&js, &accepted.id)
        .await
        .expect("the send is recorded");
    assert_eq!(record["message_id"], json!(message_id));
    assert_eq!(record["instance"], json!(n.id()));

    // The same job again on email.outbox (as after the duplicate window, or
    // a replay): the record says sent, so it is not sent again.
    let job = EmailJob {
        id: accepted.id.clone(),
        kind: EmailKind::Request,
        to: "ann@b.example".into(),
        subject: "Once over SMTP".into(),
        body: "Hello over SMTP".into(),
        accepted_at: runtime::time::now_rfc3339(),
        scheduled_for: None,
        idempotency_key: Some(key),
        payment_id: None,
        traceparent: None,
    };
    let replayed = runtime::js::publish_durable(
        &js,
        email::subjects::OUTBOX,
        &format!("replay.{}", nuid::next()),
        None,
        serde_json::to_vec(&job).unwrap().into(),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert!(!replayed.duplicate);
    settled(&js, replayed.sequence).await;
    assert_eq!(sink.copies(&message_id).len(), 1, "the replay sent nothing");
    assert_eq!(
        sent_events(&js, &accepted.id).await.len(),
        1,
        "the replay's event was dropped as a duplicate"
    );

    // A receipt: id rcpt-<payment_id>, so its Message-ID is stable too.
    let payment_id = format!("pay-smtp-{}", nuid::next());
    let event = PaymentEvent {
        payment_id: payment_id.clone(),
        user_id: "user-1".into(),
        amount: "12.50".into(),
        currency: "EUR".into(),
        email: Some("payer@b.example".into()),
        status: PaymentStatus::Completed,
        reason: None,
        at: runtime::time::now_rfc3339(),
    };
    runtime::js::publish_durable(
        &js,
        subjects::EVENT_PAYMENT_COMPLETED,
        &format!("{payment_id}.completed"),
        None,
        serde_json::to_vec(&event).unwrap().into(),
        TIMEOUT,
    )
    .await
    .unwrap();
    let receipt = format!("rcpt-{payment_id}");
    wait_sent_event(&js, &receipt).await;
    settled(&js, last_seq(&js).await).await;
    let copies = sink.copies(&format!("<{receipt}@switchyard>"));
    assert_eq!(copies.len(), 1);
    assert!(String::from_utf8_lossy(&copies[0]).contains("12.50 EUR"));
    n.stop().await;
}

/// Makes stream `EVENTS` refuse every publish (a real limit: max_msgs at
/// its current count, discard new) while `during` runs, then lifts it,
/// also when `during` panics.
async fn with_events_refused<F: Future<Output = ()>>(js: &jetstream::Context, during: F) {
    let mut events = js.get_stream(streams::EVENTS).await.unwrap();
    if events.info().await.unwrap().state.messages == 0 {
        runtime::js::publish_durable(
            js,
            "events.test.filler",
            "filler",
            None,
            "{}".into(),
            TIMEOUT,
        )
        .await
        .unwrap();
    }
    let info = events.info().await.unwrap().clone();
    let original = info.config.clone();
    let refusing = stream::Config {
        max_messages: i64::try_from(info.state.messages).unwrap(),
        discard: stream::DiscardPolicy::New,
        ..original.clone()
    };
    js.update_stream(refusing).await.unwrap();
    let refused = js
        .publish("events.test.refused", "{}".into())
        .await
        .unwrap()
        .await;
    assert!(
        refused.is_err(),
        "EVENTS still takes publishes: {refused:?}"
    );
    let outcome = AssertUnwindSafe(during).catch_unwind().await;
    js.update_stream(original).await.unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn an_event_that_cannot_be_published_after_the_250_does_not_send_the_mail_again() {
    let _serial = SERIAL.lock().await;
    let cluster = testkit::shared().await;
    let sink = Sink::start().await;
    let n = notifier(cluster, &sink).await;
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());
    let before = settled(&js, last_seq(&js).await).await;

    let mut id = String::new();
    with_events_refused(&js, async {
        let accepted = request(
            &client,
            json!({"to": "b@b.example", "subject": "Event refused", "body": "b"}),
        )
        .await;
        id.clone_from(&accepted.id);
        wait_copies(&sink, &email::message_id(&id), 1).await;
        // Delivered again (the event could not go out) ...
        testkit::eventually("the mail was redelivered", WITHIN, || async {
            let info = sender(&js).await;
            let deliveries = info.delivered.consumer_sequence - before.delivered.consumer_sequence;
            if deliveries >= 3 {
                Ok(())
            } else {
                Err(format!("{deliveries} deliveries"))
            }
        })
        .await;
        // ... and not sent again, nor announced while EVENTS refuses.
        assert_eq!(sink.copies(&email::message_id(&id)).len(), 1);
        assert!(record(&js, &id).await.is_some(), "the send is recorded");
    })
    .await;

    // The fault is gone: the next redelivery only publishes the event.
    wait_sent_event(&js, &id).await;
    settled(&js, last_seq(&js).await).await;
    assert_eq!(
        sink.copies(&email::message_id(&id)).len(),
        1,
        "sent once over all deliveries"
    );
    assert_eq!(sent_events(&js, &id).await.len(), 1);
    n.stop().await;
}

#[tokio::test]
async fn a_slow_relay_keeps_the_mail_with_the_instance_that_sends_it() {
    let _serial = SERIAL.lock().await;
    let cluster = testkit::shared().await;
    let sink = Sink::start().await;
    let a = notifier(cluster, &sink).await;
    let b = notifier(cluster, &sink).await;
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());
    let before = settled(&js, last_seq(&js).await).await;
    assert_eq!(before.config.ack_wait, Duration::from_millis(ACK_WAIT_MS));
    assert!(before.config.backoff.is_empty());

    sink.delay(SLOW_RELAY_MS);
    let accepted = request(
        &client,
        json!({"to": "slow@b.example", "subject": "Slow relay", "body": "b"}),
    )
    .await;
    let message_id = email::message_id(&accepted.id);
    wait_sent_event(&js, &accepted.id).await;
    let after = settled(&js, last_seq(&js).await).await;
    assert_eq!(
        sink.copies(&message_id).len(),
        1,
        "one copy although the relay took {SLOW_RELAY_MS} ms and the ack wait is {ACK_WAIT_MS} ms"
    );
    assert_eq!(
        after.delivered.consumer_sequence - before.delivered.consumer_sequence,
        1,
        "delivered once: progress acks kept it with the sending instance"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_notifier_killed_after_the_relay_took_the_mail_means_a_second_copy_with_the_same_message_id()
 {
    let _serial = SERIAL.lock().await;
    let cluster = testkit::shared().await;
    let sink = Sink::start().await;
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());
    let env: Vec<(String, String)> = settings(&sink)
        .into_iter()
        .map(|(k, v)| (runtime::settings::env_name(k), v))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut doomed =
        testkit::spawn_process(env!("CARGO_BIN_EXE_email-notifier"), cluster, &env).await;
    settled(&js, last_seq(&js).await).await;

    // The relay takes the mail and holds its 250; the notifier dies then.
    sink.delay(600_000);
    let accepted = request(
        &client,
        json!({"to": "crash@b.example", "subject": "Crash after DATA", "body": "b"}),
    )
    .await;
    let message_id = email::message_id(&accepted.id);
    wait_copies(&sink, &message_id, 1).await;
    doomed.kill().await;
    assert!(
        record(&js, &accepted.id).await.is_none(),
        "not recorded: it died before the 250"
    );

    // Another instance gets it after the ack wait and sends it again.
    sink.delay(0);
    let n = notifier(cluster, &sink).await;
    wait_sent_event(&js, &accepted.id).await;
    settled(&js, last_seq(&js).await).await;
    let all_of_it: Vec<Vec<u8>> = sink
        .received()
        .into_iter()
        .filter(|raw| header(raw, "Subject").as_deref() == Some("Crash after DATA"))
        .collect();
    assert_eq!(all_of_it.len(), 2, "the copy the crash leaves");
    for raw in &all_of_it {
        assert_eq!(
            header(raw, "Message-ID").as_deref(),
            Some(message_id.as_str())
        );
    }
    let record = record(&js, &accepted.id).await.expect("recorded now");
    assert_eq!(record["instance"], json!(n.id()));
    n.stop().await;
}
