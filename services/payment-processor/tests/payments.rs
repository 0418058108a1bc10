//! payment-processor on real 3-node clusters. Each test has its own cluster:
//! they share the contract's fixed stream and consumer names, and each one
//! drives the gateway or the cluster into a different fault.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use futures::future::join_all;
use payment_processor::gateway::{Gateway as _, Simulator, SimulatorSettings};

use protocol::payment::{
    DlqReason, PaymentEvent, PaymentRequest, PaymentStatus, ReplayReply, StatusReply, dlq_headers,
};
use protocol::{ErrorCode, subjects};
use runtime::client::{CallError, call, request_raw};
use runtime::settings::Value;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use testkit::{Cluster, TestService, eventually};
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(5);

fn quick_gateway() -> Arc<Simulator> {
    Arc::new(
        Simulator::new(&SimulatorSettings {
            latency_ms: 1,
            jitter_ms: 2,
            // Each test gateway remembers its own charges (in memory), so
            // the tests can count what each processor charged.
            ledger_file: None,
            ..Default::default()
        })
        .unwrap(),
    )
}

/// Fast retries for tests: redeliveries after 200 ms and 400 ms; 3
/// attempts, and the server gives up after 4 deliveries.
fn test_overrides() -> Vec<(&'static str, Value)> {
    vec![
        ("payments.backoff_ms", Value::from(vec![200, 400])),
        ("payments.ack_wait_ms", Value::from(2000)),
        ("payments.max_attempts", Value::from(3)),
        ("payments.max_deliver", Value::from(4)),
        ("payments.limit", Value::from("5000")),
    ]
}

/// A processor in this process, charging through `gateway`.
async fn start_processor(cluster: &Cluster, gateway: Arc<Simulator>) -> TestService {
    testkit::spawn_service(
        move |settings, shutdown| payment_processor::run_with_gateway(settings, shutdown, gateway),
        cluster,
        &test_overrides(),
    )
    .await
}

fn payment(id: &str, amount: &str, currency: &str) -> PaymentRequest {
    PaymentRequest {
        payment_id: id.into(),
        user_id: "user-123".into(),
        subscription_id: Some("sub-monthly".into()),
        amount: amount.into(),
        currency: currency.into(),
        email: Some("a@b.example".into()),
    }
}

async fn publish(
    js: &jetstream::Context,
    req: &PaymentRequest,
    msg_id: &str,
) -> jetstream::publish::PublishAck {
    let body = serde_json::to_vec(req).unwrap();
    runtime::js::publish_durable(
        js,
        subjects::PAYMENT_PROCESS,
        msg_id,
        None,
        body.into(),
        Duration::from_secs(60),
    )
    .await
    .unwrap()
}

async fn status(client: &async_nats::Client, id: &str) -> Result<StatusReply, CallError> {
    call(
        client,
        subjects::PAYMENT_STATUS,
        &json!({"payment_id": id}),
        TIMEOUT,
    )
    .await
}

async fn wait_status(
    client: &async_nats::Client,
    id: &str,
    want: PaymentStatus,
    within: Duration,
) -> StatusReply {
    eventually(&format!("{id} is {want}"), within, || async {
        match status(client, id).await {
            Ok(s) if s.status == want => Ok(s),
            last => Err(format!("{last:?}")),
        }
    })
    .await
}

async fn events(js: &jetstream::Context, status: &str) -> Vec<PaymentEvent> {
    testkit::js::read_stream(js, "EVENTS", &format!("events.payment.{status}"))
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect()
}

fn count_by_id(events: &[PaymentEvent]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for e in events {
        *counts.entry(e.payment_id.clone()).or_insert(0) += 1;
    }
    counts
}

fn header(m: &jetstream::Message, name: &str) -> Option<String> {
    m.headers.as_ref()?.get(name).map(|v| v.as_str().to_owned())
}

async fn expect_error(client: &async_nats::Client, subject: &str, body: &str, code: ErrorCode) {
    let reply = request_raw(client, subject, None, body.to_owned().into(), TIMEOUT)
        .await
        .unwrap();
    let err = reply
        .error()
        .unwrap_or_else(|| panic!("{subject} {body}: no error"));
    assert_eq!(err.code, code, "{subject} {body}: {err}");
    let status = reply
        .headers
        .unwrap()
        .get("Nats-Service-Error-Code")
        .unwrap()
        .as_str()
        .to_owned();
    assert_eq!(status, code.status().to_string());
}

#[tokio::test]
async fn happy_path_duplicates_rules_invalid_messages_and_bad_input() {
    let cluster = Cluster::start(3).await.unwrap();
    let gateway = quick_gateway();
    let processor = start_processor(&cluster, gateway.clone()).await;
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());

    // Happy path: one effect, one completed event, the status fields right.
    let req = payment("pay-001", "99.99", "USD");
    let ack = publish(&js, &req, "pay-001").await;
    assert!(!ack.duplicate);
    let done = wait_status(
        &client,
        "pay-001",
        PaymentStatus::Completed,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        (done.amount.as_str(), done.currency.as_str(), done.attempts),
        ("99.99", "USD", 1)
    );
    assert_eq!(done.reason, None);
    assert!(done.updated_at.ends_with('Z'));
    let raw = request_raw(
        &client,
        subjects::PAYMENT_STATUS,
        None,
        r#"{"payment_id":"pay-001"}"#.into(),
        TIMEOUT,
    )
    .await
    .unwrap();
    let raw: serde_json::Value = serde_json::from_slice(&raw.payload).unwrap();
    assert!(
        raw.get("reason").is_some_and(serde_json::Value::is_null),
        "reason is present as null: {raw}"
    );

    // The same Msg-Id again: the stream says duplicate.
    assert!(publish(&js, &req, "pay-001").await.duplicate);
    // The same payment under another Msg-Id: accepted, then ignored.
    assert!(!publish(&js, &req, "pay-001-resent").await.duplicate);
    // A marker after it: once the marker completes, the resend was handled.
    publish(&js, &payment("pay-002", "5", "EUR"), "pay-002").await;
    wait_status(
        &client,
        "pay-002",
        PaymentStatus::Completed,
        Duration::from_secs(15),
    )
    .await;
    // Nothing should change now; give a wrong second effect time to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = status(&client, "pay-001").await.unwrap();
    assert_eq!(again, done, "status unchanged by the duplicate");
    assert_eq!(gateway.attempts("pay-001.r0"), 1, "charged once");
    let completed = count_by_id(&events(&js, "completed").await);
    assert_eq!(completed.get("pay-001"), Some(&1));

    // Rule rejections: failed with a reason, never sent to the gateway, delivered once.
    for (id, amount, currency, why) in [
        ("rule-zero", "0", "USD", "greater than zero"),
        ("rule-negative", "-10.00", "USD", "greater than zero"),
        ("rule-limit", "5000.01", "USD", "over the limit"),
        ("rule-currency", "10", "XXX", "not accepted"),
    ] {
        publish(&js, &payment(id, amount, currency), id).await;
        let failed = wait_status(&client, id, PaymentStatus::Failed, Duration::from_secs(15)).await;
        assert!(
            failed.reason.as_deref().is_some_and(|r| r.contains(why)),
            "{id}: {failed:?}"
        );
        assert_eq!(failed.attempts, 1, "{id}: delivered once");
        assert_eq!(gateway.attempts(id), 0, "{id}: no charge");
    }
    let failed_events = count_by_id(&events(&js, "failed").await);
    assert_eq!(failed_events.get("rule-limit"), Some(&1));

    // Seed 001's payment as written (a JSON number amount, no user, no
    // currency) completes: the exact amount, the default currency.
    let seed_id = "seed-pay-001";
    runtime::js::publish_durable(
        &js,
        subjects::PAYMENT_PROCESS,
        seed_id,
        None,
        format!(r#"{{"payment_id": "{seed_id}", "amount": 99.99}}"#)
            .into_bytes()
            .into(),
        TIMEOUT,
    )
    .await
    .unwrap();
    let seed = wait_status(
        &client,
        seed_id,
        PaymentStatus::Completed,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        (seed.amount.as_str(), seed.currency.as_str()),
        ("99.99", "USD")
    );
    // A payment published with a trace: its event continues it (same
    // trace id, a new span).
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    runtime::js::publish_durable(
        &js,
        subjects::PAYMENT_PROCESS,
        "traced-pay-1",
        Some(&runtime::trace::headers(trace)),
        serde_json::to_vec(&payment("traced-pay-1", "5.00", "USD"))
            .unwrap()
            .into(),
        TIMEOUT,
    )
    .await
    .unwrap();
    wait_status(
        &client,
        "traced-pay-1",
        PaymentStatus::Completed,
        Duration::from_secs(15),
    )
    .await;
    let event = eventually(
        "the traced payment's event",
        Duration::from_secs(10),
        || async {
            testkit::js::read_stream(&js, "EVENTS", subjects::EVENT_PAYMENT_COMPLETED)
                .await
                .into_iter()
                .find(|m| {
                    serde_json::from_slice::<PaymentEvent>(&m.payload)
                        .is_ok_and(|e| e.payment_id == "traced-pay-1")
                })
                .ok_or("not yet")
        },
    )
    .await;
    let event_trace = runtime::trace::of(event.headers.as_ref()).unwrap_or_default();
    assert_eq!(
        runtime::trace::trace_id(&event_trace),
        Some("0af7651916cd43dd8448eb211c80319c"),
        "{event_trace}"
    );
    assert_ne!(event_trace, trace, "a new span");

    // More decimals than the currency has: failed with the reason.
    runtime::js::publish_durable(
        &js,
        subjects::PAYMENT_PROCESS,
        "seed-pay-precise",
        None,
        br#"{"payment_id": "seed-pay-precise", "amount": 0.125}"#
            .to_vec()
            .into(),
        TIMEOUT,
    )
    .await
    .unwrap();
    let precise = wait_status(
        &client,
        "seed-pay-precise",
        PaymentStatus::Failed,
        Duration::from_secs(15),
    )
    .await;
    assert!(
        precise
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("more decimals than USD allows (2)")),
        "{precise:?}"
    );

    // Malformed messages: to the DLQ, body untouched, reason invalid_message.
    let garbage: [&[u8]; 3] = [
        b"not json at all",
        br#"{"payment_id":"bad.id","user_id":"u","amount":"1","currency":"USD"}"#,
        br#"{"payment_id":"p-ok","user_id":"u","amount":"ten","currency":"USD"}"#,
    ];
    for (i, body) in garbage.iter().enumerate() {
        runtime::js::publish_durable(
            &js,
            subjects::PAYMENT_PROCESS,
            &format!("garbage-{i}"),
            None,
            body.to_vec().into(),
            TIMEOUT,
        )
        .await
        .unwrap();
    }
    let dlq = eventually(
        "every invalid message in the DLQ",
        Duration::from_secs(15),
        || async {
            let dlq = testkit::js::read_stream(&js, "PAYMENTS_DLQ", ">").await;
            if dlq.len() >= garbage.len() {
                Ok(dlq)
            } else {
                Err(format!("{} of {}", dlq.len(), garbage.len()))
            }
        },
    )
    .await;
    assert_eq!(dlq.len(), garbage.len());
    for (m, body) in dlq.iter().zip(garbage) {
        assert_eq!(
            header(m, dlq_headers::REASON).as_deref(),
            Some(DlqReason::InvalidMessage.as_str())
        );
        assert!(header(m, dlq_headers::ERROR).is_some_and(|e| !e.is_empty()));
        assert_eq!(&m.payload[..], body);
    }
    // The one whose id is readable has a status saying why.
    let invalid = wait_status(
        &client,
        "p-ok",
        PaymentStatus::Failed,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        invalid
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("invalid_message: ") && r.contains("ten")),
        "{invalid:?}"
    );
    assert_eq!(
        count_by_id(&events(&js, "failed").await).get("p-ok"),
        Some(&1)
    );

    // Bad input on every endpoint: typed errors; unknown ids; replay rules.
    for subject in [subjects::PAYMENT_STATUS, subjects::PAYMENT_REPLAY] {
        expect_error(&client, subject, "", ErrorCode::InvalidRequest).await;
        expect_error(&client, subject, "{", ErrorCode::InvalidRequest).await;
        expect_error(&client, subject, "{}", ErrorCode::InvalidRequest).await;
        expect_error(
            &client,
            subject,
            r#"{"payment_id":7}"#,
            ErrorCode::InvalidRequest,
        )
        .await;
        expect_error(
            &client,
            subject,
            r#"{"payment_id":"a.b"}"#,
            ErrorCode::InvalidRequest,
        )
        .await;
        expect_error(
            &client,
            subject,
            r#"{"payment_id":"nope"}"#,
            ErrorCode::NotFound,
        )
        .await;
        let big = format!(r#"{{"payment_id":"{}"}}"#, "x".repeat(70_000));
        expect_error(&client, subject, &big, ErrorCode::TooLarge).await;
    }
    expect_error(
        &client,
        subjects::PAYMENT_REPLAY,
        r#"{"payment_id":"pay-001"}"#,
        ErrorCode::Conflict,
    )
    .await;
    // Still answering.
    assert_eq!(
        status(&client, "pay-001").await.unwrap().status,
        PaymentStatus::Completed
    );

    // Two processors, 1,000 payments: each completed exactly once.
    let second_gateway = quick_gateway();
    let second = start_processor(&cluster, second_gateway.clone()).await;
    let first_effects = gateway.effects();
    let ids: Vec<String> = (0..1000).map(|i| format!("bulk-{i:04}")).collect();
    let started = Instant::now();
    for chunk in ids.chunks(100) {
        join_all(chunk.iter().map(|id| {
            let js = js.clone();
            async move { publish(&js, &payment(id, "12.34", "GBP"), id).await }
        }))
        .await;
    }
    eventually(
        "1000 payments completed",
        Duration::from_secs(90),
        || async {
            let done = count_by_id(&events(&js, "completed").await);
            assert!(
                ids.iter().all(|id| done.get(id).copied().unwrap_or(0) <= 1),
                "a second completed event"
            );
            if ids.iter().all(|id| done.get(id) == Some(&1)) {
                Ok(())
            } else {
                Err(format!(
                    "{} of 1000 completed",
                    ids.iter().filter(|id| done.contains_key(*id)).count()
                ))
            }
        },
    )
    .await;
    println!(
        "1000 payments on 2 processors completed in {:?}",
        started.elapsed()
    );
    let (a, b) = (gateway.effects() - first_effects, second_gateway.effects());
    assert_eq!(a + b, 1000, "each payment charged exactly once: {a} + {b}");
    assert!(a > 0 && b > 0, "both processors took payments: {a} and {b}");
    for id in &ids {
        assert_eq!(
            gateway.attempts(&format!("{id}.r0")) + second_gateway.attempts(&format!("{id}.r0")),
            1,
            "{id}"
        );
    }
    second.stop().await;
    processor.stop().await;
}

#[tokio::test]
async fn gateway_failures_retry_then_dead_letter_then_replay() {
    let cluster = Cluster::start(3).await.unwrap();
    let gateway = quick_gateway();
    let processor = start_processor(&cluster, gateway.clone()).await;
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());

    // Transient: the first two attempts fail, the third completes.
    gateway.set_fail_first_attempts(2);
    publish(&js, &payment("flaky-1", "10", "USD"), "flaky-1").await;
    let done = wait_status(
        &client,
        "flaky-1",
        PaymentStatus::Completed,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(done.attempts, 3, "{done:?}");
    assert_eq!(gateway.attempts("flaky-1.r0"), 3);

    // Always failing: DLQ after 3 attempts, with the reason.
    gateway.set_fail_first_attempts(0);
    gateway.set_failure_rate(1.0);
    let req = payment("doomed-1", "20", "EUR");
    publish(&js, &req, "doomed-1").await;
    let failed = wait_status(
        &client,
        "doomed-1",
        PaymentStatus::Failed,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(failed.attempts, 3);
    assert!(
        failed
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("gateway failed on all 3 attempts")),
        "{failed:?}"
    );
    let dlq = testkit::js::read_stream(&js, "PAYMENTS_DLQ", ">").await;
    let entry = dlq
        .iter()
        .find(|m| header(m, dlq_headers::PAYMENT_ID).as_deref() == Some("doomed-1"))
        .expect("in the DLQ");
    assert_eq!(
        header(entry, dlq_headers::REASON).as_deref(),
        Some("gateway_failed")
    );
    assert_eq!(header(entry, dlq_headers::DELIVERIES).as_deref(), Some("3"));
    assert_eq!(
        serde_json::from_slice::<PaymentRequest>(&entry.payload).unwrap(),
        req
    );
    let failed_events = count_by_id(&events(&js, "failed").await);
    assert_eq!(failed_events.get("doomed-1"), Some(&1));

    // Replay after the gateway recovers: completed.
    gateway.set_failure_rate(0.0);
    let replay: ReplayReply = call(
        &client,
        subjects::PAYMENT_REPLAY,
        &json!({"payment_id": "doomed-1"}),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!((replay.status, replay.replay), (PaymentStatus::Pending, 1));
    let done = wait_status(
        &client,
        "doomed-1",
        PaymentStatus::Completed,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(done.replays, 1);
    assert_eq!(
        count_by_id(&events(&js, "completed").await).get("doomed-1"),
        Some(&1)
    );
    assert_eq!(gateway.effects(), 2, "flaky-1 and doomed-1, once each");

    // Every processor down while the server gives up on a message (a
    // consumer that takes it and dies, 4 times): the MAX_DELIVERIES
    // advisory waits in PAYMENTS_ADVISORIES, and the next processor to
    // start fails the payment (voiding its key) and dead-letters it.
    processor.stop().await;
    publish(&js, &payment("stuck-1", "1", "USD"), "stuck-1").await;
    let consumer: consumer::PullConsumer = js
        .get_stream("PAYMENTS")
        .await
        .unwrap()
        .get_consumer("payment-processor")
        .await
        .unwrap();
    let taken = AtomicI64::new(0);
    eventually("four deliveries", Duration::from_secs(30), || async {
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .unwrap();
        if let Some(Ok(m)) = batch.next().await {
            let n = taken.fetch_add(1, Ordering::Relaxed) + 1;
            assert_eq!(m.info().unwrap().delivered, n);
            // and never ack it
        }
        match taken.load(Ordering::Relaxed) {
            4.. => Ok(()),
            n => Err(format!("delivered only {n} times")),
        }
    })
    .await;
    // The server notices the exhausted message when it next serves a pull.
    eventually(
        "a MAX_DELIVERIES advisory kept in PAYMENTS_ADVISORIES",
        Duration::from_secs(20),
        || async {
            let mut pull = consumer
                .fetch()
                .max_messages(1)
                .expires(Duration::from_millis(500))
                .messages()
                .await
                .unwrap();
            if let Some(Ok(m)) = pull.next().await {
                panic!("delivered a 5th time: {:?}", m.info().unwrap().delivered);
            }
            match testkit::js::message_count(&js, "PAYMENTS_ADVISORIES").await {
                1 => Ok(()),
                n => Err(format!("{n} advisories kept")),
            }
        },
    )
    .await;
    assert!(
        status(&client, "stuck-1").await.is_err(),
        "no processor runs"
    );
    let processor = start_processor(&cluster, gateway.clone()).await;
    let failed = wait_status(
        &client,
        "stuck-1",
        PaymentStatus::Failed,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        failed
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("delivered 4 times")),
        "{failed:?}"
    );
    let dlq = testkit::js::read_stream(&js, "PAYMENTS_DLQ", ">").await;
    let entry = dlq
        .iter()
        .find(|m| header(m, dlq_headers::PAYMENT_ID).as_deref() == Some("stuck-1"))
        .expect("stuck-1 in the DLQ");
    assert_eq!(
        header(entry, dlq_headers::REASON).as_deref(),
        Some("max_deliveries")
    );
    eventually(
        "the advisory and the message gone",
        Duration::from_secs(10),
        || async {
            let kept = testkit::js::message_count(&js, "PAYMENTS_ADVISORIES").await;
            let queued = testkit::js::message_count(&js, "PAYMENTS").await;
            if kept == 0 && queued == 0 {
                Ok(())
            } else {
                Err(format!("{kept} advisories, {queued} payments left"))
            }
        },
    )
    .await;
    // Replayed, it completes, charged once.
    let replay: ReplayReply = call(
        &client,
        subjects::PAYMENT_REPLAY,
        &json!({"payment_id": "stuck-1"}),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(replay.replay, 1);
    wait_status(
        &client,
        "stuck-1",
        PaymentStatus::Completed,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(gateway.effects(), 3);
    processor.stop().await;

    // Orphans: records the cluster kept while it lost their messages (a
    // power cut under a lazy sync interval). Neither final nor claimed, and
    // no message in PAYMENTS: the sweep finishes them from the record, as
    // completed when the key was charged, else voided and failed.
    gateway.set_failure_rate(0.0);
    let kv = js.get_key_value("payments").await.unwrap();
    let long_ago = "2026-01-01T00:00:00Z";
    for (id, status) in [("orphan-1", "processing"), ("orphan-2", "pending")] {
        let record = json!({
            "payment_id": id, "user_id": "u", "amount": "7.00", "currency": "USD",
            "status": status, "attempts": 1, "updated_at": long_ago,
            "owner_seq": 999_999, "lease_until_ms": 1, "replays": 0,
        });
        kv.put(id, serde_json::to_vec(&record).unwrap().into())
            .await
            .unwrap();
    }
    // orphan-2's charge went through before its message was lost.
    let charged = gateway
        .charge(&payment_processor::gateway::Charge {
            idempotency_key: "orphan-2.r0".into(),
            payment_id: "orphan-2".into(),
            user_id: "u".into(),
            amount: "7.00".parse().unwrap(),
            currency: "USD".into(),
        })
        .await
        .unwrap();
    let mut overrides = test_overrides();
    overrides.push(("payments.stuck_after_ms", Value::from(15_000)));
    overrides.push(("payments.sweep_interval_ms", Value::from(500)));
    let sweeper = testkit::spawn_service(
        {
            let gateway = gateway.clone();
            move |settings, shutdown| {
                payment_processor::run_with_gateway(settings, shutdown, gateway)
            }
        },
        &cluster,
        &overrides,
    )
    .await;
    let failed = wait_status(
        &client,
        "orphan-1",
        PaymentStatus::Failed,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        failed
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("no longer in PAYMENTS"),
        "{failed:?}"
    );
    wait_status(
        &client,
        "orphan-2",
        PaymentStatus::Completed,
        Duration::from_secs(20),
    )
    .await;
    let record: protocol::payment::PaymentRecord =
        serde_json::from_slice(&kv.get("orphan-2").await.unwrap().unwrap()).unwrap();
    assert_eq!(
        record.charge_id.as_deref(),
        Some(charged.as_str()),
        "{record:?}"
    );
    assert_eq!(
        gateway.attempts("orphan-1.r0"),
        0,
        "an orphan is never charged anew"
    );
    eventually("one event per orphan", Duration::from_secs(10), || async {
        let completed = count_by_id(&events(&js, "completed").await);
        let failed = count_by_id(&events(&js, "failed").await);
        match (completed.get("orphan-2"), failed.get("orphan-1")) {
            (Some(1), Some(1)) => Ok(()),
            other => Err(format!("events: {other:?}")),
        }
    })
    .await;
    sweeper.stop().await;
}

#[tokio::test]
async fn stream_leader_killed_with_a_thousand_payments_in_flight() {
    let mut cluster = Cluster::start(3).await.unwrap();
    let gateway = quick_gateway();
    let processor = start_processor(&cluster, gateway.clone()).await;
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream("PAYMENTS").await.unwrap();
    let leader = stream
        .info()
        .await
        .unwrap()
        .cluster
        .as_ref()
        .unwrap()
        .leader
        .clone()
        .unwrap();
    let leader: usize = leader.trim_start_matches('n').parse().unwrap();

    // Publishers retry with the same Msg-Id until acked; the leader dies
    // after the first 300 acks.
    let ids: Vec<String> = (0..1000).map(|i| format!("lk-{i:04}")).collect();
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publishers = ids.chunks(50).map(|chunk| {
        let js = js.clone();
        let acked = acked.clone();
        let chunk = chunk.to_vec();
        tokio::spawn(async move {
            for id in chunk {
                publish(&js, &payment(&id, "3.00", "USD"), &id).await;
                acked.fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    let publishers: Vec<_> = publishers.collect();
    eventually(
        "300 acks before the kill",
        Duration::from_secs(60),
        || async {
            match acked.load(Ordering::Relaxed) {
                300.. => Ok(()),
                n => Err(format!("{n} acked")),
            }
        },
    )
    .await;
    cluster.kill_node(leader);
    let killed = Instant::now();
    println!(
        "killed stream leader n{leader} after {} acks",
        acked.load(Ordering::Relaxed)
    );
    for p in publishers {
        p.await.unwrap();
    }
    println!(
        "all 1000 publishes acked {:?} after the kill",
        killed.elapsed()
    );

    let first_after_kill = std::sync::OnceLock::new();
    eventually(
        "1000 payments completed",
        Duration::from_secs(120),
        || async {
            let done = count_by_id(&events(&js, "completed").await);
            assert!(done.values().all(|&n| n == 1), "a second completed event");
            if done.len() > 300 {
                first_after_kill.get_or_init(|| killed.elapsed());
            }
            if ids.iter().all(|id| done.contains_key(id)) {
                Ok(())
            } else {
                Err(format!("{} of 1000 completed", done.len()))
            }
        },
    )
    .await;
    println!(
        "recovery: completions past the first 300 seen {:?} after the kill; all 1000 completed {:?} after it",
        first_after_kill.get().copied().unwrap_or_default(),
        killed.elapsed()
    );
    assert_eq!(gateway.effects(), 1000, "each payment charged exactly once");
    let retried = ids.iter().filter(|id| gateway.attempts(id) > 1).count();
    println!(
        "{retried} payments needed more than one gateway call (the gateway's idempotency key kept them to one charge)"
    );

    cluster.restart_node(leader).await.unwrap();
    processor.stop().await;
}

#[tokio::test]
async fn processor_sigkilled_mid_batch_loses_and_doubles_nothing() {
    let cluster = Cluster::start(3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let ledger_file = ledger.to_str().unwrap();
    let env = [
        ("SWITCHYARD__PAYMENTS__GATEWAY__LATENCY_MS", "150"),
        ("SWITCHYARD__PAYMENTS__GATEWAY__LEDGER_FILE", ledger_file),
        ("SWITCHYARD__PAYMENTS__CONCURRENCY", "16"),
        ("SWITCHYARD__PAYMENTS__BACKOFF_MS", "500,1000"),
        ("SWITCHYARD__PAYMENTS__ACK_WAIT_MS", "3000"),
        ("SWITCHYARD__PAYMENTS__GATEWAY_TIMEOUT_MS", "2000"),
        ("SWITCHYARD__LOG__LEVEL", "warn"),
    ];
    let binary = env!("CARGO_BIN_EXE_payment-processor");
    let mut first = testkit::spawn_process(binary, &cluster, &env).await;
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());
    let ids: Vec<String> = (0..200).map(|i| format!("k-{i:03}")).collect();
    join_all(ids.iter().map(|id| {
        let js = js.clone();
        async move { publish(&js, &payment(id, "1.50", "CHF"), id).await }
    }))
    .await;
    // Kill it while it is charging: some payments done, 16 in flight.
    eventually(
        "progress before the kill",
        Duration::from_secs(30),
        || async {
            match count_by_id(&events(&js, "completed").await).len() {
                40.. => Ok(()),
                n => Err(format!("{n} completed")),
            }
        },
    )
    .await;
    first.kill().await;
    let done_at_kill = count_by_id(&events(&js, "completed").await).len();
    println!("SIGKILLed the processor with {done_at_kill} of 200 completed");
    assert!(done_at_kill < 200);

    let mut second = testkit::spawn_process(binary, &cluster, &env).await;
    eventually(
        "200 payments completed",
        Duration::from_secs(90),
        || async {
            let done = count_by_id(&events(&js, "completed").await);
            assert!(done.values().all(|&n| n == 1), "a second completed event");
            match done.len() {
                200 => Ok(()),
                n => Err(format!("{n} of 200 completed")),
            }
        },
    )
    .await;
    let charged = charges_by_payment(&ledger);
    assert_eq!(charged.len(), 200, "every payment charged");
    assert!(charged.values().all(|&n| n == 1), "a payment charged twice");
    for id in &ids {
        let s = status(&client, id).await.unwrap();
        assert_eq!(s.status, PaymentStatus::Completed, "{id}");
    }
    second.kill().await;
}

/// Charges in a simulator ledger, by payment id.
fn charges_by_payment(ledger: &std::path::Path) -> HashMap<String, usize> {
    let mut charged: HashMap<String, usize> = HashMap::new();
    for line in payment_processor::gateway::read_charges(ledger).unwrap() {
        *charged.entry(line.payment_id).or_insert(0) += 1;
    }
    charged
}

/// The measured case: two processors share a ledger, charges take 3 s, 16
/// payments, one processor SIGSTOPped for 5 s 1.5 s in. Once with the
/// default ack wait (30 s: the stall is shorter, nothing is redelivered),
/// once with a 2 s ack wait (the stalled processor's payments are
/// redelivered to the other while it still holds them: the claims fence it
/// and the gateway's idempotency key dedupes). Both times: 16 completed,
/// 16 charges, 16 completed events.
#[tokio::test]
async fn a_stalled_processor_charges_nothing_twice() {
    let cluster = Cluster::start(3).await.unwrap();
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());
    let binary = env!("CARGO_BIN_EXE_payment-processor");
    // Round 0's charges may take the whole stall and still count (a 10 s
    // gateway timeout); round 1's lease is short (3.5 s) so the other
    // processor takes over while the stalled one still holds its claims.
    for (round, ack_wait_ms, gateway_timeout_ms) in [(0, "30000", "10000"), (1, "2000", "3500")] {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger.jsonl");
        let env = [
            ("SWITCHYARD__PAYMENTS__CONCURRENCY", "4"),
            ("SWITCHYARD__PAYMENTS__GATEWAY__LATENCY_MS", "3000"),
            ("SWITCHYARD__PAYMENTS__GATEWAY__JITTER_MS", "0"),
            (
                "SWITCHYARD__PAYMENTS__GATEWAY__LEDGER_FILE",
                ledger.to_str().unwrap(),
            ),
            (
                "SWITCHYARD__PAYMENTS__GATEWAY_TIMEOUT_MS",
                gateway_timeout_ms,
            ),
            ("SWITCHYARD__PAYMENTS__CLOCK_MARGIN_MS", "500"),
            ("SWITCHYARD__PAYMENTS__ACK_WAIT_MS", ack_wait_ms),
            ("SWITCHYARD__LOG__LEVEL", "warn"),
        ];
        let mut a = testkit::spawn_process(binary, &cluster, &env).await;
        let mut b = testkit::spawn_process(binary, &cluster, &env).await;
        let ids: Vec<String> = (0..16).map(|i| format!("stall{round}-{i:02}")).collect();
        join_all(ids.iter().map(|id| {
            let js = js.clone();
            async move { publish(&js, &payment(id, "9.99", "USD"), id).await }
        }))
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        a.signal(nix::sys::signal::Signal::SIGSTOP);
        tokio::time::sleep(Duration::from_secs(5)).await;
        a.signal(nix::sys::signal::Signal::SIGCONT);
        let completed = eventually("16 payments completed", Duration::from_secs(60), || async {
            let done = count_by_id(&events(&js, "completed").await);
            let ours: Vec<_> = ids.iter().filter(|id| done.contains_key(*id)).collect();
            match ours.len() {
                16 => Ok(done),
                n => Err(format!("{n} of 16 completed")),
            }
        })
        .await;
        let mut attempts = Vec::new();
        for id in &ids {
            assert_eq!(completed[id], 1, "{id}: completed events");
            let s = status(&client, id).await.unwrap();
            assert_eq!(s.status, PaymentStatus::Completed, "{id}");
            attempts.push(s.attempts);
        }
        if round == 0 {
            // A stall shorter than the ack wait redelivers nothing.
            assert!(attempts.iter().all(|&n| n == 1), "{attempts:?}");
        } else {
            // The stalled processor's payments were taken over (a second
            // claim), and still charged once.
            assert!(attempts.iter().any(|&n| n >= 2), "{attempts:?}");
        }
        // Let the stalled one finish whatever it resumed, then count.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let charged = charges_by_payment(&ledger);
        println!("round {round} (ack wait {ack_wait_ms} ms): {charged:?}");
        for id in &ids {
            assert_eq!(
                charged.get(id),
                Some(&1),
                "{id} charged {:?} times",
                charged.get(id)
            );
        }
        assert_eq!(charged.len(), 16);
        a.kill().await;
        b.kill().await;
    }
}
