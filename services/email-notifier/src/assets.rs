//! The stream and consumers the notifier needs, created or updated
//! idempotently at start-up.

use crate::EmailSettings;
use async_nats::jetstream::{self, consumer, kv, stream};
use protocol::email;
use protocol::names::{buckets, consumers, streams};
use runtime::js::{ensure_consumer, ensure_kv, ensure_stream};
use runtime::settings::AssetMode;
use std::time::Duration;

/// The consumers of `email.outbox` (the sender) and of completed payments
/// (the receipts), and the record of sent mail.
pub(crate) struct Assets {
    pub(crate) outbox: consumer::PullConsumer,
    pub(crate) receipts: consumer::PullConsumer,
    pub(crate) sent: kv::Store,
}

pub(crate) async fn ensure(
    js: &jetstream::Context,
    replicas: usize,
    mode: AssetMode,
    settings: &EmailSettings,
) -> anyhow::Result<Assets> {
    let window = Duration::from_secs(settings.idempotency_window_s.max(120));
    let emails = ensure_stream(
        js,
        stream::Config {
            name: streams::EMAILS.into(),
            description: Some("Accepted mail: ready (email.outbox) or scheduled".into()),
            subjects: email::subjects::ALL
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: window,
            allow_message_schedules: true,
            max_age: Duration::from_secs((settings.max_schedule_days + 7) * 24 * 3600),
            ..Default::default()
        },
        true,
        mode,
    )
    .await?;
    let events = ensure_stream(
        js,
        runtime::js::events_stream_config(replicas, Duration::from_secs(120)),
        false,
        mode,
    )
    .await?;
    // One entry per mail, written once right after the relay accepted it.
    // (An existing bucket is used as it is: its max_age is set at creation.)
    let sent = ensure_kv(
        js,
        kv::Config {
            bucket: buckets::EMAIL_SENT.into(),
            description: "Mail the SMTP relay accepted, by email id".into(),
            history: 1,
            max_age: settings.sent_ttl(),
            num_replicas: replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        },
        mode,
    )
    .await?;
    // Both consumers: a fixed ack wait, no server-side backoff list (a
    // backoff list would make the server redeliver on its own schedule);
    // retries are spaced by naks with a delay from email.backoff_ms, and a
    // running handler gets progress acks every third of the ack wait.
    let sender = consumer::pull::Config {
        durable_name: Some(consumers::EMAIL_SENDER.into()),
        description: Some("Sends mail from email.outbox".into()),
        filter_subject: email::subjects::OUTBOX.into(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait(),
        max_deliver: i64::from(settings.max_deliver),
        backoff: Vec::new(),
        ..Default::default()
    };
    let outbox = ensure_consumer(&emails, sender.clone(), mode).await?;
    let receipts = consumer::pull::Config {
        durable_name: Some(consumers::EMAIL_RECEIPTS.into()),
        description: Some("Receipts for completed payments".into()),
        filter_subject: protocol::subjects::EVENT_PAYMENT_COMPLETED.into(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait(),
        max_deliver: 10,
        backoff: Vec::new(),
        ..Default::default()
    };
    let receipts = ensure_consumer(&events, receipts.clone(), mode).await?;
    for consumer in [&outbox, &receipts] {
        check_fixed_ack_wait(&consumer.cached_info().config, settings.ack_wait())?;
    }
    Ok(Assets {
        outbox,
        receipts,
        sent,
    })
}

/// The consumer as the server has it: the ack wait asked for and no backoff
/// list (with one, the server would redeliver on its own schedule while a
/// send is in progress: progress acks are timed from the ack wait).
fn check_fixed_ack_wait(config: &consumer::Config, ack_wait: Duration) -> anyhow::Result<()> {
    let name = config.durable_name.as_deref().unwrap_or("?");
    anyhow::ensure!(
        config.backoff.is_empty(),
        "consumer {name} has a backoff list {:?}; it must have none (delete it to have it recreated)",
        config.backoff
    );
    anyhow::ensure!(
        config.ack_wait == ack_wait,
        "consumer {name} has ack wait {:?}, not {ack_wait:?}",
        config.ack_wait
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_fixed_ack_wait_passes() {
        let ok = consumer::Config {
            durable_name: Some("email-sender".into()),
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        };
        assert!(check_fixed_ack_wait(&ok, Duration::from_secs(30)).is_ok());
        assert!(check_fixed_ack_wait(&ok, Duration::from_secs(10)).is_err());
        let with_backoff = consumer::Config {
            backoff: vec![Duration::from_secs(1)],
            ..ok
        };
        assert!(check_fixed_ack_wait(&with_backoff, Duration::from_secs(30)).is_err());
    }
}
