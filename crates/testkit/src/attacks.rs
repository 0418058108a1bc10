//! The least-privilege attack rows, one place for every stack they run
//! against: a testkit cluster with the deployments' accounts
//! (`crates/testkit/tests/attacks.rs`) and the compose stack
//! (`crates/cli/tests/compose.rs`). Each row publishes or subscribes,
//! flushes, and waits for the server's permission violation for exactly
//! that subject ([`Watched`]); a row let through fails the test. Rows print
//! `ATTACK <row> <user> refused`. `docs/SECURITY.md` has the table.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test harness fails the test by panicking"
)]

use crate::refusals::{Refused, Watched};
use async_nats::jetstream;
use protocol::accounts::User;
use protocol::manifest::{self, matches};
use protocol::names::{buckets, consumers, services, streams};
use protocol::subjects;
use std::time::Duration;

fn allowed(list: &[String], subject: &str) -> bool {
    list.iter().any(|p| matches(p, subject))
}

/// Everything one service user must be refused, each row waiting for the
/// server's violation for that subject.
pub async fn service_user(w: &Watched, user: &User, all: &[User]) {
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

    // The site-wide maintenance flag is written as `admin` only (the
    // dashboard's toggle logs in as admin; the registry's own user may not).
    w.publish_refused(&subjects::kv_key(
        buckets::CONFIG,
        protocol::names::keys::SITE_MAINTENANCE,
    ))
    .await;
    rows += 1;
    row("write the maintenance flag");

    // The registry reads ticks, logs and payment events for the dashboard:
    // it may publish none of them.
    if own.service == services::REGISTRY {
        for subject in [
            "stocks.MSFT".to_owned(),
            subjects::logs(services::PAYMENT_PROCESSOR, "info").unwrap(),
            subjects::EVENT_PAYMENT_FAILED.to_owned(),
        ] {
            assert!(
                allowed(&user.subscribe, &subject),
                "{subject}: {:?}",
                user.subscribe
            );
            w.publish_refused(&subject).await;
            rows += 1;
        }
        row("publish what the dashboard reads");
    }

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

/// What `client` (every app, the Python client, the CLI's everyday
/// commands) must be refused: administration, others' data, forgeries.
pub async fn client(w: &Watched) {
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
