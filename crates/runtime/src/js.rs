//! JetStream helpers every service uses the same way: create-or-update
//! streams and buckets at start-up (returning only once they are usable from
//! this connection), retry infrastructure calls through a leader election,
//! and publish durably with a `Nats-Msg-Id`.

use crate::settings::AssetMode;
use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{
    self, consumer,
    context::{PublishAckFuture, PublishErrorKind},
    kv, stream,
};
use bytes::Bytes;
use protocol::names::headers;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument as _;

/// How long [`ensure_stream`] and [`ensure_kv`] wait, after the stream
/// exists, for it to be usable from this connection (see [`wait_usable`]).
pub const USABLE_BUDGET: Duration = Duration::from_secs(30);

/// How long a service in [`AssetMode::Expect`] waits for a missing
/// stream, bucket or consumer before it fails (and is restarted).
pub const EXPECT_BUDGET: Duration = Duration::from_secs(120);
/// How often that wait says what it waits for.
const EXPECT_NOTICE: Duration = Duration::from_secs(10);

/// The hint a service waiting for a missing asset logs and fails with.
fn provision_hint(what: &str) -> String {
    format!(
        "{what} does not exist and this service only uses what is provisioned \
         (jetstream.assets = expect): run `<service binary> provision` as the admin user \
         (`switchyard provision` does every service; `switchyard up` and `just docker-up` run it)"
    )
}

/// Runs `lookup` until it succeeds, logging [`provision_hint`] every
/// [`EXPECT_NOTICE`], failing after [`EXPECT_BUDGET`].
async fn expect<T, E, F, Fut>(what: &str, mut lookup: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let mut noticed: Option<Instant> = None;
    loop {
        match lookup().await {
            Ok(found) => {
                if noticed.is_some() {
                    tracing::info!(what, waited = ?started.elapsed(), "provisioned: found it");
                }
                return Ok(found);
            }
            Err(err) if started.elapsed() >= EXPECT_BUDGET => {
                anyhow::bail!(
                    "{} (waited {EXPECT_BUDGET:?}; last lookup: {err})",
                    provision_hint(what)
                )
            }
            Err(err) => {
                if noticed.is_none_or(|at| at.elapsed() >= EXPECT_NOTICE) {
                    tracing::warn!(what, error = %err, "{}", provision_hint(what));
                    noticed = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Makes stream `config.name` ready for use, as `mode` says:
/// [`AssetMode::Create`]/[`AssetMode::Provision`] create it, or update it to
/// `config` when `update` is set and it exists (an update the server refuses
/// is logged and the existing stream kept); [`AssetMode::Expect`] only looks
/// it up, waiting while it is missing. Safe to call from many instances at
/// once. Returns once the stream is usable from this connection
/// ([`wait_usable`]), so the first publish after it is answered by the
/// stream.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
    update: bool,
    mode: AssetMode,
) -> anyhow::Result<stream::Stream> {
    let name = config.name.clone();
    let config = with_probe(config);
    let (stream, effective) = if mode.creates() {
        create_or_update_stream(js, &name, config, update).await?
    } else {
        let stream = expect(&format!("stream {name}"), || js.get_stream(&name)).await?;
        let effective = stream.cached_info().config.clone();
        (stream, effective)
    };
    wait_usable(
        js,
        &name,
        probe_subject(&effective).as_deref(),
        USABLE_BUDGET,
    )
    .await?;
    Ok(stream)
}

/// [`ensure_stream`]'s creating half: the stream and its effective config.
async fn create_or_update_stream(
    js: &jetstream::Context,
    name: &str,
    config: stream::Config,
    update: bool,
) -> anyhow::Result<(stream::Stream, stream::Config)> {
    retry(&format!("ensuring stream {name}"), Duration::from_secs(30), || {
        let config = config.clone();
        async move {
            match js.get_stream(name).await {
                Ok(existing) => {
                    let mut effective = existing.cached_info().config.clone();
                    if update {
                        match js.update_stream(config).await {
                            Ok(updated) => effective = updated.config,
                            Err(err) => {
                                tracing::warn!(stream = %name, error = %err, "keeping the existing stream config");
                            }
                        }
                    }
                    Ok((existing, effective))
                }
                Err(lookup_err) => match js.create_stream(config).await {
                    Ok(created) => {
                        tracing::info!(stream = %name, "stream created");
                        let effective = created.cached_info().config.clone();
                        Ok((created, effective))
                    }
                    // Created by another instance in between, or really unreachable.
                    Err(create_err) => match js.get_stream(name).await {
                        Ok(existing) => {
                            let effective = existing.cached_info().config.clone();
                            Ok((existing, effective))
                        }
                        Err(_) => Err(anyhow::anyhow!(
                            "stream {name}: lookup failed ({lookup_err}), create failed ({create_err})"
                        )),
                    },
                },
            }
        }
    })
    .await
}

/// `EVENTS`: everything on `events.>`, kept a week. Every publisher of
/// events ensures it exists (without changing an existing one).
pub fn events_stream_config(replicas: usize, duplicate_window: Duration) -> stream::Config {
    stream::Config {
        name: protocol::names::streams::EVENTS.into(),
        description: Some("Every event published on events.>".into()),
        subjects: vec![protocol::subjects::EVENTS_ALL.into()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window,
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    }
}

/// Opens a KV bucket, creating it with `config` when missing and `mode`
/// creates ([`AssetMode::Expect`] waits for it instead). Returns once the
/// bucket is usable from this connection ([`wait_usable`]), so the first
/// put after it is answered by the bucket's stream.
pub async fn ensure_kv(
    js: &jetstream::Context,
    config: kv::Config,
    mode: AssetMode,
) -> anyhow::Result<kv::Store> {
    let bucket = config.bucket.clone();
    let store = if mode.creates() {
        create_kv(js, &bucket, config).await?
    } else {
        expect(&format!("KV bucket {bucket}"), || js.get_key_value(&bucket)).await?
    };
    wait_usable(
        js,
        &store.stream_name,
        kv_probe_subject(&store).as_deref(),
        USABLE_BUDGET,
    )
    .await?;
    Ok(store)
}

/// [`ensure_kv`]'s creating half.
async fn create_kv(
    js: &jetstream::Context,
    bucket: &str,
    config: kv::Config,
) -> anyhow::Result<kv::Store> {
    retry(
        &format!("ensuring KV bucket {bucket}"),
        Duration::from_secs(30),
        || {
            let config = config.clone();
            async move {
                if let Ok(store) = js.get_key_value(bucket).await {
                    return Ok(store);
                }
                match js.create_key_value(config).await {
                    Ok(store) => {
                        tracing::debug!(%bucket, "KV bucket ready (created or already there)");
                        Ok(store)
                    }
                    Err(err) => js
                        .get_key_value(bucket)
                        .await
                        .with_context(|| format!("creating KV bucket {bucket}: {err}")),
                }
            }
        },
    )
    .await
}

/// The durable pull consumer `config.durable_name` of `stream`, created or
/// updated to `config` when `mode` creates; [`AssetMode::Expect`] only
/// looks it up (`CONSUMER.INFO`), waiting while it is missing, and warns
/// when its ack wait or max deliveries differ from `config` (provisioning
/// applies the settings, not the service).
pub async fn ensure_consumer(
    stream: &stream::Stream,
    config: consumer::pull::Config,
    mode: AssetMode,
) -> anyhow::Result<consumer::PullConsumer> {
    let durable = config.durable_name.clone().unwrap_or_default();
    let stream_name = stream.cached_info().config.name.clone();
    let what = format!("consumer {durable} of stream {stream_name}");
    if mode.creates() {
        return retry(&format!("creating {what}"), Duration::from_secs(30), || {
            stream.create_consumer(config.clone())
        })
        .await;
    }
    // `get_consumer` fetched the info (CONSUMER.INFO): no second call.
    let found: consumer::PullConsumer = expect(&what, || stream.get_consumer(&durable)).await?;
    let info = found.cached_info();
    if info.config.ack_wait != config.ack_wait || info.config.max_deliver != config.max_deliver {
        tracing::warn!(
            consumer = %what,
            provisioned_ack_wait = ?info.config.ack_wait,
            configured_ack_wait = ?config.ack_wait,
            provisioned_max_deliver = info.config.max_deliver,
            configured_max_deliver = config.max_deliver,
            "the provisioned consumer differs from this service's settings; run provisioning again to apply them"
        );
    }
    Ok(found)
}

/// The `Nats-Expected-Last-Sequence` a probe sends. No stream reaches it, so
/// the stream refuses the probe (10071) instead of storing it. Not 0: that
/// is what an empty stream's last sequence is, and the probe would be stored.
/// `i64::MAX` because the server parses the header as an `int64`.
const IMPOSSIBLE_LAST_SEQUENCE: u64 = i64::MAX as u64;

/// The stream's readiness probe subject
/// ([`protocol::subjects::stream_probe`]), if it captures it and answers
/// publishes (not `no_ack`). [`ensure_stream`] adds it to every stream it
/// creates or updates; a stream made elsewhere is waited on for its leader only.
pub fn probe_subject(config: &stream::Config) -> Option<String> {
    let probe = protocol::subjects::stream_probe(&config.name);
    (!config.no_ack && config.subjects.contains(&probe)).then_some(probe)
}

/// `config` with the readiness probe subject added (unless it has no
/// subjects: a mirror, or sources only).
fn with_probe(mut config: stream::Config) -> stream::Config {
    let probe = protocol::subjects::stream_probe(&config.name);
    if !config.subjects.is_empty() && !config.subjects.contains(&probe) {
        config.subjects.push(probe);
    }
    config
}

/// `$KV.<bucket>.<probe key>` for [`wait_usable`]; `None` for a bucket whose
/// puts go elsewhere (a mirror, or through another JetStream domain).
pub fn kv_probe_subject(store: &kv::Store) -> Option<String> {
    if store.put_prefix.is_some() || store.use_jetstream_prefix {
        return None;
    }
    Some(format!(
        "{}{}",
        store.prefix,
        protocol::names::keys::USABLE_PROBE
    ))
}

/// Waits until stream `stream` is usable from `js`'s connection, or fails
/// with what it last saw once `budget` is spent:
///
/// 1. its info names a leader (on a cluster; a lone server has no cluster
///    info), and
/// 2. a publish to `probe_subject` is answered by the stream itself. A
///    publish that nobody answers ("no responders", which async-nats reports
///    as `StreamNotFound`) means no leader yet or the leader's interest has
///    not reached this connection's server over the routes.
///
/// The probe carries `Nats-Expected-Last-Sequence` = [`i64::MAX`] and
/// `Nats-Expected-Stream` = `stream`, so the stream refuses it with "wrong
/// last sequence" (10071) and stores nothing: no consumer, not even a work
/// queue's, ever sees it. `probe_subject` `None` waits for the leader only.
///
/// A probe the server drops without any answer (a publish this user is not
/// permitted to make looks like that) is logged and taken as usable once the
/// leader is known, so services with narrow publish permissions still start.
pub async fn wait_usable(
    js: &jetstream::Context,
    stream: &str,
    probe_subject: Option<&str>,
    budget: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + budget;
    let what = format!("stream {stream} not usable from this connection");
    let answer = retry(&what, budget, || async {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(
            left.min(PROBE_ANSWER_WAIT + Duration::from_secs(2)),
            usable_once(js, stream, probe_subject),
        )
        .await
        .unwrap_or_else(|_| Err("no stream info or probe answer in time".to_owned()))
    })
    .await?;
    match answer {
        Probe::Usable => Ok(()),
        Probe::Silent => {
            tracing::warn!(
                stream,
                subject = probe_subject,
                "the stream has a leader but its probe got no answer (not permitted to \
                 publish there?); going on without proof the stream answers this connection"
            );
            Ok(())
        }
        Probe::Fatal(why) => anyhow::bail!("stream {stream} is not usable: {why}"),
    }
}

/// The JetStream error code in a publish error the server answered with.
fn server_error_code(err: &jetstream::context::PublishError) -> Option<jetstream::ErrorCode> {
    std::error::Error::source(err)?
        .downcast_ref::<jetstream::Error>()
        .map(jetstream::Error::error_code)
}

/// How long a probe waits for an answer once published.
const PROBE_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// A probe's final answer; "not yet, because ..." is the `Err` of [`usable_once`].
enum Probe {
    Usable,
    /// The leader is known but the probe got no answer at all (not even "no
    /// responders"): the server dropped it, which is what a publish this
    /// user is not permitted to make looks like.
    Silent,
    /// Waiting will not help (the subject belongs to another stream, ...).
    Fatal(String),
}

async fn usable_once(
    js: &jetstream::Context,
    stream: &str,
    probe_subject: Option<&str>,
) -> Result<Probe, String> {
    let handle = js
        .get_stream(stream)
        .await
        .map_err(|err| format!("stream info: {err}"))?;
    if let Some(cluster) = &handle.cached_info().cluster
        && cluster.leader.is_none()
    {
        return Err("stream info names no leader".to_owned());
    }
    let Some(subject) = probe_subject else {
        return Ok(Probe::Usable);
    };
    let mut probe = HeaderMap::new();
    probe.insert(
        async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
        IMPOSSIBLE_LAST_SEQUENCE.to_string().as_str(),
    );
    probe.insert(async_nats::header::NATS_EXPECTED_STREAM, stream);
    let answer = match js
        .publish_with_headers(subject.to_owned(), probe, Bytes::new())
        .await
    {
        Ok(ack) => match tokio::time::timeout(PROBE_ANSWER_WAIT, ack).await {
            Ok(answer) => answer,
            Err(_) => return Ok(Probe::Silent),
        },
        Err(err) => Err(err),
    };
    match answer {
        Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => Ok(Probe::Usable),
        // Would mean the server ignored the header; take the message back
        // before any consumer gets it, and say so.
        Ok(ack) => {
            let removed = handle.delete_message(ack.sequence).await;
            Ok(Probe::Fatal(format!(
                "the probe on {subject} was stored as {} seq {} (removed: {removed:?})",
                ack.stream, ack.sequence
            )))
        }
        Err(err) if server_error_code(&err) == Some(jetstream::ErrorCode::STREAM_NOT_MATCH) => Ok(
            Probe::Fatal(format!("{subject} belongs to another stream: {err}")),
        ),
        Err(err) if err.kind() == PublishErrorKind::TimedOut => Ok(Probe::Silent),
        Err(err) => Err(format!("probe publish on {subject}: {err}")),
    }
}

/// Runs `op` until it succeeds or `budget` is spent, backing off from 50 ms
/// to 1 s. For calls that fail while a stream leader is being elected.
pub async fn retry<T, E, F, Fut>(what: &str, budget: Duration, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = Instant::now() + budget;
    let mut delay = Duration::from_millis(50);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match op().await {
            Ok(value) => {
                if attempts > 1 {
                    tracing::info!(what, attempts, "succeeded after retrying");
                }
                return Ok(value);
            }
            Err(err) if Instant::now() + delay >= deadline => {
                anyhow::bail!("{what}: still failing after {attempts} attempts: {err}")
            }
            Err(err) => {
                tracing::debug!(what, attempts, error = %err, "retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Publishes to a stream with `Nats-Msg-Id: msg_id` and waits for the
/// stream's ack, retrying with the same id (so a retry after a lost ack is
/// dropped as a duplicate by the server) until acked or `budget` is spent.
///
/// The publish is a span (`publish <subject>`, kind producer) and the
/// message carries its trace context: a child of the span running now (the
/// handler's), else of the context in `extra_headers` (one kept in a
/// record, for work done outside a handler), else a new trace.
pub async fn publish_durable(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    extra_headers: Option<&HeaderMap>,
    body: Bytes,
    budget: Duration,
) -> anyhow::Result<jetstream::publish::PublishAck> {
    let parent = crate::trace::current_or(&crate::trace::Carrier::from_headers(extra_headers));
    let traced = crate::traced!(
        "publish",
        &parent,
        "producer",
        otel.name = %format!("publish {subject}"),
        subject,
        msg_id,
    );
    let mut base = extra_headers.cloned().unwrap_or_default();
    traced.context().inject(&mut base);
    base.insert(headers::MSG_ID, msg_id);
    retry(&format!("publishing {msg_id} to {subject}"), budget, || {
        let h = base.clone();
        let body = body.clone();
        async move {
            let ack: PublishAckFuture = js
                .publish_with_headers(subject.to_owned(), h, body)
                .await
                .map_err(|e| e.to_string())?;
            ack.await.map_err(|e| e.to_string())
        }
    })
    .instrument(traced.span().clone())
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_get_their_own_probe_subject() {
        let config = |subjects: &[&str]| stream::Config {
            name: "S".into(),
            subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        let probed = with_probe(config(&["stocks.>"]));
        assert_eq!(probed.subjects, ["stocks.>", "_switchyard.probe.S"]);
        assert_eq!(with_probe(probed.clone()).subjects, probed.subjects);
        assert_eq!(
            probe_subject(&probed).as_deref(),
            Some("_switchyard.probe.S")
        );
        // A stream made without it is waited on for its leader only.
        assert_eq!(probe_subject(&config(&["stocks.>"])), None);
        // A mirror has no subjects; a no_ack stream never answers.
        assert!(with_probe(config(&[])).subjects.is_empty());
        let mut silent = probed;
        silent.no_ack = true;
        assert_eq!(probe_subject(&silent), None);
    }
}
