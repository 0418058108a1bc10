//! email-notifier on a real 3-node cluster.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use async_nats::jetstream;
use email_notifier::transport::{Outbox, Transport};
use futures::future::{BoxFuture, join_all};
use protocol::email::{EmailAccepted, EmailEvent, EmailJob};
use protocol::payment::{PaymentEvent, PaymentStatus};
use protocol::{ErrorCode, subjects};
use runtime::client::{call, request_raw};
use runtime::settings::Value;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use testkit::{Cluster, TestService};

const TIMEOUT: Duration = Duration::from_secs(5);

/// The `.eml` outbox in `dir`, as the notifier's transport.
fn outbox(dir: &Path) -> Arc<dyn Transport> {
    Arc::new(
        Outbox::new(
            dir.to_owned(),
            "Switchyard <noreply@switchyard.local>".parse().unwrap(),
        )
        .unwrap(),
    )
}

/// An email-notifier in this process that delivers through `transport`,
/// with fast retries (backoff 100 ms, 200 ms; 3 deliveries).
async fn start(cluster: &Cluster, transport: Arc<dyn Transport>) -> TestService {
    testkit::spawn_service(
        |s, t| email_notifier::run_with_transport(s, t, transport),
        cluster,
        &[
            ("email.backoff_ms", Value::from(vec![100, 200])),
            ("email.max_deliver", Value::from(3)),
        ],
    )
    .await
}

async fn send(client: &async_nats::Client, body: serde_json::Value) -> EmailAccepted {
    call(client, subjects::EMAIL_SEND, &body, TIMEOUT)
        .await
        .unwrap()
}

fn eml(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.eml"))
}

async fn wait_file(path: &Path, within: Duration) {
    testkit::eventually(
        &format!("{} appeared", path.display()),
        within,
        || async move {
            if path.is_file() {
                Ok(())
            } else {
                Err(format!("{} never appeared", path.display()))
            }
        },
    )
    .await;
}

fn eml_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn queue_group_idempotency_parsing_bad_input_and_receipts() {
    let cluster = Cluster::start(3).await.unwrap();
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (out_a, out_b) = (dirs.0.path(), dirs.1.path());
    let a = start(&cluster, outbox(out_a)).await;
    let b = start(&cluster, outbox(out_b)).await;
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());

    // 40 requests and 10 plain publishes across the queue group: each mail once.
    let accepted = join_all((0..40).map(|i| {
        let client = client.clone();
        async move { send(&client, json!({"to": format!("user{i}@b.example"), "subject": format!("Hello {i}"), "body": "Hi"})).await }
    }))
    .await;
    assert!(
        accepted
            .iter()
            .all(|a| a.accepted && a.scheduled_for.is_none())
    );
    for i in 0..10 {
        let body = json!({"to": "fire@b.example", "subject": format!("Fire {i}"), "body": "and forget", "idempotency_key": format!("ff-{i}")});
        client
            .publish(subjects::EMAIL_SEND, body.to_string().into())
            .await
            .unwrap();
    }
    testkit::eventually("50 mails sent", Duration::from_secs(20), || async move {
        let (na, nb) = (eml_count(out_a), eml_count(out_b));
        if na + nb >= 50 {
            Ok(())
        } else {
            Err(format!("sent {na} + {nb}"))
        }
    })
    .await;
    // Deliberately a bare wait: a duplicate sent late must show up here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (na, nb) = (eml_count(out_a), eml_count(out_b));
    assert_eq!(na + nb, 50, "each mail sent once");
    assert!(na > 0 && nb > 0, "both notifiers sent mail: {na} and {nb}");
    for acc in &accepted {
        assert!(
            eml(out_a, &acc.id).is_file() != eml(out_b, &acc.id).is_file(),
            "{} in exactly one outbox",
            acc.id
        );
    }

    // Outbox files are RFC 5322 mail.
    let path = [eml(out_a, &accepted[0].id), eml(out_b, &accepted[0].id)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap();
    let raw = std::fs::read(&path).unwrap();
    let parsed = mailparse::parse_mail(&raw).unwrap();
    use mailparse::MailHeaderMap as _;
    assert_eq!(
        parsed.headers.get_first_value("To").as_deref(),
        Some("user0@b.example")
    );
    assert_eq!(
        parsed.headers.get_first_value("Subject").as_deref(),
        Some("Hello 0")
    );
    assert!(
        parsed
            .headers
            .get_first_value("From")
            .unwrap()
            .contains("noreply@switchyard.local")
    );
    assert!(parsed.headers.get_first_value("Date").is_some());
    assert_eq!(
        parsed.headers.get_first_value("Message-ID"),
        Some(format!("<{}@switchyard>", accepted[0].id))
    );
    assert_eq!(parsed.get_body().unwrap().trim(), "Hi");

    // Seed 001 sends no body: accepted, sent with an empty one.
    let bodiless = send(
        &client,
        json!({"to": "user@example.com", "subject": "Hello"}),
    )
    .await;
    let sent = testkit::eventually(
        "the bodiless mail was sent",
        Duration::from_secs(10),
        || async {
            [eml(out_a, &bodiless.id), eml(out_b, &bodiless.id)]
                .into_iter()
                .find(|p| p.is_file())
                .ok_or("not in either outbox")
        },
    )
    .await;
    let raw = std::fs::read(&sent).unwrap();
    let parsed = mailparse::parse_mail(&raw).unwrap();
    assert_eq!(
        parsed.headers.get_first_value("Subject").as_deref(),
        Some("Hello")
    );
    assert_eq!(parsed.get_body().unwrap().trim(), "");

    // Idempotency: the same key sends once and answers the same id.
    let first = send(
        &client,
        json!({"to": "k@b.example", "subject": "Once", "body": "x", "idempotency_key": "order-42"}),
    )
    .await;
    let again = send(
        &client,
        json!({"to": "k@b.example", "subject": "Once", "body": "x", "idempotency_key": "order-42"}),
    )
    .await;
    assert_eq!(first.id, again.id);
    let (in_a, in_b) = (eml(out_a, &first.id), eml(out_b, &first.id));
    testkit::eventually(
        "the idempotent mail was sent",
        Duration::from_secs(10),
        || async {
            if in_a.is_file() || in_b.is_file() {
                Ok(())
            } else {
                Err(format!("{} never appeared in either outbox", first.id))
            }
        },
    )
    .await;

    // Seed 001 publishes fire-and-forget: a refused one leaves an
    // `events.email.rejected` saying why (nobody hears the error reply).
    client
        .publish(
            subjects::EMAIL_SEND,
            r#"{"to": "not an address", "subject": "Hello"}"#.into(),
        )
        .await
        .unwrap();
    let rejected = testkit::eventually(
        "a rejection event for the published bad address",
        Duration::from_secs(10),
        || async {
            let events =
                testkit::js::read_stream(&js, "EVENTS", subjects::EVENT_EMAIL_REJECTED).await;
            events
                .first()
                .map(|m| serde_json::from_slice::<protocol::micro::Rejected>(&m.payload).unwrap())
                .ok_or("no event yet")
        },
    )
    .await;
    assert_eq!(rejected.code, ErrorCode::InvalidAddress);
    assert_eq!(rejected.subject, subjects::EMAIL_SEND);
    assert!(rejected.body.contains("not an address"), "{rejected:?}");
    assert!(!rejected.truncated);

    // Bad input: typed errors; nothing else lost.
    for (body, code) in [
        (
            r#"{"to":"not an address","subject":"s","body":"b"}"#,
            ErrorCode::InvalidAddress,
        ),
        (
            r#"{"to":"a@","subject":"s","body":"b"}"#,
            ErrorCode::InvalidAddress,
        ),
        (
            r#"{"to":"a@b.example","subject":"s""#,
            ErrorCode::InvalidRequest,
        ),
        (
            r#"{"to":"a@b.example","body":"b"}"#,
            ErrorCode::InvalidRequest,
        ),
        (
            r#"{"to":"a@b.example","subject":"s","body":"b","send_at":"soon"}"#,
            ErrorCode::InvalidRequest,
        ),
        ("", ErrorCode::InvalidRequest),
    ] {
        let reply = request_raw(
            &client,
            subjects::EMAIL_SEND,
            None,
            body.to_owned().into(),
            TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(reply.error().map(|e| e.code), Some(code), "{body}");
    }

    // sent events: one per mail.
    let sent: Vec<EmailEvent> = read(&js, "events.email.sent").await;
    for acc in &accepted {
        assert_eq!(
            sent.iter().filter(|e| e.id == acc.id).count(),
            1,
            "{}",
            acc.id
        );
    }

    // A receipt for a payment completed while no notifier runs.
    a.stop().await;
    b.stop().await;
    let event = PaymentEvent {
        payment_id: "pay-rcpt-1".into(),
        user_id: "user-123".into(),
        amount: "42.00".into(),
        currency: "EUR".into(),
        email: Some("payer@b.example".into()),
        status: PaymentStatus::Completed,
        reason: None,
        at: runtime::time::now_rfc3339(),
    };
    let no_email = PaymentEvent {
        payment_id: "pay-rcpt-2".into(),
        email: None,
        ..event.clone()
    };
    // The payment's trace: the receipt and its sent event continue it.
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = runtime::trace::headers(trace);
    for (e, id) in [
        (&event, "pay-rcpt-1.completed"),
        (&no_email, "pay-rcpt-2.completed"),
        (&event, "pay-rcpt-1.again"),
    ] {
        runtime::js::publish_durable(
            &js,
            subjects::EVENT_PAYMENT_COMPLETED,
            id,
            Some(&traced),
            serde_json::to_vec(e).unwrap().into(),
            TIMEOUT,
        )
        .await
        .unwrap();
    }
    let c = start(&cluster, outbox(out_a)).await;
    wait_file(&eml(out_a, "rcpt-pay-rcpt-1"), Duration::from_secs(15)).await;
    let receipt = std::fs::read_to_string(eml(out_a, "rcpt-pay-rcpt-1")).unwrap();
    assert!(
        receipt.contains("42.00 EUR") && receipt.contains("payer@b.example"),
        "{receipt}"
    );
    // Deliberately a bare wait: the receipt that must not be sent has had
    // time to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !eml(out_a, "rcpt-pay-rcpt-2").exists(),
        "no email, no receipt"
    );
    let receipts = read::<EmailEvent>(&js, "events.email.sent")
        .await
        .into_iter()
        .filter(|e| e.id == "rcpt-pay-rcpt-1")
        .count();
    assert_eq!(receipts, 1, "one receipt per payment");
    let trace_of = |m: &async_nats::jetstream::Message| {
        runtime::trace::of(m.headers.as_ref())
            .and_then(|t| runtime::trace::trace_id(&t).map(str::to_owned))
    };
    let queued = testkit::js::read_stream(&js, "EMAILS", protocol::email::subjects::OUTBOX).await;
    let job = queued
        .iter()
        .find(|m| {
            serde_json::from_slice::<EmailJob>(&m.payload).is_ok_and(|j| j.id == "rcpt-pay-rcpt-1")
        })
        .expect("the receipt job in EMAILS");
    assert_eq!(
        trace_of(job).as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        "the receipt continues the payment's trace"
    );
    let sent = testkit::js::read_stream(&js, "EVENTS", "events.email.sent").await;
    let sent = sent
        .iter()
        .find(|m| {
            serde_json::from_slice::<EmailEvent>(&m.payload)
                .is_ok_and(|e| e.id == "rcpt-pay-rcpt-1")
        })
        .expect("the receipt's sent event");
    assert_eq!(
        trace_of(sent).as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        "the sent event continues it too"
    );
    c.stop().await;
}

/// A transport that fails a given number of times, then delivers.
#[derive(Debug)]
struct Flaky {
    failures_left: AtomicU32,
    inner: Outbox,
}

impl Transport for Flaky {
    fn send<'a>(&'a self, mail: &'a EmailJob) -> BoxFuture<'a, Result<(), String>> {
        if self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Box::pin(async { Err("relay refused (simulated)".to_owned()) });
        }
        self.inner.send(mail)
    }
}

#[tokio::test]
async fn scheduled_mail_survives_restarts_and_transport_errors_retry_then_fail() {
    let cluster = Cluster::start(3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = cluster.client().await.unwrap();
    let js = jetstream::new(client.clone());
    let notifier = start(&cluster, outbox(dir.path())).await;

    // Scheduled 4 s ahead: not before, and sent although every notifier
    // was down when its time came.
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(4);
    let accepted = send(&client, json!({"to": "later@b.example", "subject": "Later", "body": "b", "send_at": runtime::time::format_rfc3339(at)})).await;
    let scheduled = accepted.scheduled_for.clone().expect("scheduled_for");
    assert!(scheduled.ends_with('Z'));
    // Deliberately bare waits: the mail must not be sent before its time,
    // and its time passes while no notifier runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !eml(dir.path(), &accepted.id).exists(),
        "sent before its time"
    );
    notifier.stop().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!eml(dir.path(), &accepted.id).exists());
    let notifier = start(&cluster, outbox(dir.path())).await;
    wait_file(&eml(dir.path(), &accepted.id), Duration::from_secs(15)).await;
    let sent_at = std::fs::metadata(eml(dir.path(), &accepted.id))
        .unwrap()
        .modified()
        .unwrap();
    let due = std::time::SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(at.unix_timestamp()).unwrap());
    assert!(sent_at >= due, "written before send_at");
    notifier.stop().await;

    // Transport errors: retried with backoff, then delivered.
    let flaky = Arc::new(Flaky {
        failures_left: AtomicU32::new(2),
        inner: Outbox::new(dir.path().to_owned(), "x@y.example".parse().unwrap()).unwrap(),
    });
    let notifier = start(&cluster, flaky.clone()).await;
    let ok = send(
        &client,
        json!({"to": "retry@b.example", "subject": "Retry", "body": "b"}),
    )
    .await;
    wait_file(&eml(dir.path(), &ok.id), Duration::from_secs(10)).await;
    // ... and a mail whose every delivery fails ends as events.email.failed.
    flaky.failures_left.store(100, Ordering::SeqCst);
    let doomed = send(
        &client,
        json!({"to": "never@b.example", "subject": "Never", "body": "b"}),
    )
    .await;
    let failed = testkit::eventually(
        "the undeliverable mail failed",
        Duration::from_secs(15),
        || async {
            read::<EmailEvent>(&js, "events.email.failed")
                .await
                .into_iter()
                .find(|e| e.id == doomed.id)
                .ok_or("no events.email.failed")
        },
    )
    .await;
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("relay refused")),
        "{failed:?}"
    );
    assert!(!eml(dir.path(), &doomed.id).exists());
    notifier.stop().await;
}

async fn read<T: serde::de::DeserializeOwned>(js: &jetstream::Context, subject: &str) -> Vec<T> {
    testkit::js::read_stream(js, "EVENTS", subject)
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect()
}
