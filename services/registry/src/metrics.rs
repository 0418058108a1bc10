//! `/metrics`: every instance's `$SRV.STATS` (requests, errors, processing
//! time per endpoint) plus registry health gauges, gathered at scrape time
//! and encoded by `prometheus-client` (OpenMetrics text).

use crate::Registry;
use crate::store::{healthy, now_ms};
use anyhow::Context as _;
use async_nats::jetstream;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::StreamExt as _;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as Metrics;
use protocol::micro::{StatsResponse, Verb};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

type Labels = Vec<(String, String)>;

/// One endpoint's latency histogram as its instance counted it (per-bucket
/// counts from `$SRV.STATS` `data.latency_buckets`), encoded as an
/// OpenMetrics histogram.
#[derive(Debug, Default, Clone)]
struct Latency(Arc<std::sync::Mutex<LatencyData>>);

#[derive(Debug, Default)]
struct LatencyData {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl prometheus_client::metrics::TypedMetric for Latency {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for Latency {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let data = self.0.lock().map_err(|_| std::fmt::Error)?;
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            data.sum,
            data.count,
            &data.buckets,
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// The per-bucket counts of an endpoint's `data.latency_buckets`, paired
/// with their upper bounds (the last one +Inf); `None` when absent or not
/// the expected shape.
fn latency_buckets(data: Option<&serde_json::Value>) -> Option<Vec<(f64, u64)>> {
    let counts = data?
        .get(protocol::micro::LATENCY_BUCKETS)?
        .as_array()?
        .iter()
        .map(serde_json::Value::as_u64)
        .collect::<Option<Vec<u64>>>()?;
    let bounds = protocol::micro::LATENCY_BUCKETS_SECONDS
        .iter()
        .copied()
        .chain([f64::INFINITY]);
    (counts.len() == protocol::micro::LATENCY_BUCKETS_SECONDS.len() + 1)
        .then(|| bounds.zip(counts).collect())
}

/// Serves `GET /metrics` and the dashboard (`GET /`, `/dashboard/...`)
/// until `stop`.
pub(crate) async fn serve(
    state: Arc<Registry>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let streams = state.dashboard.stop.clone();
    let app = Router::new()
        .route("/metrics", get(scrape))
        .merge(crate::dashboard::routes())
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stop.cancelled().await;
            // The dashboard's event streams never end by themselves.
            streams.cancel();
        })
        .await
        .context("the metrics server failed")
}

async fn scrape(State(ctx): State<Arc<Registry>>) -> impl IntoResponse {
    match render(&ctx).await {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot gather metrics: {err:#}\n"),
        ),
    }
}

/// One stream's state, and its consumers'.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StreamState {
    pub(crate) name: String,
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
    pub(crate) consumers: Vec<ConsumerState>,
}

/// What `/metrics` shows of JetStream: every stream with its consumers,
/// and the events in `EVENTS` by subject (`events.payment.completed` → n).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct JetStreamState {
    pub(crate) streams: Vec<StreamState>,
    pub(crate) events: BTreeMap<String, u64>,
}

/// One consumer's lag.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConsumerState {
    pub(crate) name: String,
    /// Messages not yet delivered.
    pub(crate) pending: u64,
    /// Delivered, not yet acknowledged.
    pub(crate) ack_pending: u64,
    /// Delivered more than once and not yet acknowledged.
    pub(crate) redelivered: u64,
    /// Pull requests waiting.
    pub(crate) waiting: u64,
}

/// Every stream and consumer of the account, from list calls (state only,
/// no message is read).
pub(crate) async fn jetstream_state(js: &jetstream::Context) -> anyhow::Result<JetStreamState> {
    let mut out = JetStreamState::default();
    let mut streams = js.streams();
    while let Some(info) = streams.next().await {
        let info = info?;
        let name = info.config.name.clone();
        let stream = js.get_stream(&name).await?;
        if name == protocol::names::streams::EVENTS {
            // Per-subject counts: payments by final status, mails sent,
            // failed and rejected, within EVENTS' retention.
            let mut subjects = stream
                .info_with_subjects(protocol::subjects::EVENTS_ALL)
                .await?;
            while let Some(pair) = subjects.next().await {
                let (subject, n) = pair?;
                out.events.insert(subject, n as u64);
            }
        }
        let mut consumers = Vec::new();
        let mut listed = stream.consumers();
        while let Some(c) = listed.next().await {
            let c = c?;
            // Durable consumers only: the ephemeral ones (KV watchers and
            // key listings, `stocks history`) come and go with random
            // names, and their "pending" is no backlog.
            if !is_durable(&c.config) {
                continue;
            }
            consumers.push(ConsumerState {
                name: c.name,
                pending: c.num_pending,
                ack_pending: c.num_ack_pending as u64,
                redelivered: c.num_redelivered as u64,
                waiting: c.num_waiting as u64,
            });
        }
        out.streams.push(StreamState {
            name,
            messages: info.state.messages,
            bytes: info.state.bytes,
            consumers,
        });
    }
    Ok(out)
}

/// A consumer that outlives its client: it has a durable name.
fn is_durable(config: &jetstream::consumer::Config) -> bool {
    config
        .durable_name
        .as_deref()
        .is_some_and(|d| !d.is_empty())
}

async fn render(ctx: &Registry) -> anyhow::Result<String> {
    let stats: Vec<StatsResponse> =
        runtime::client::discover(&ctx.client, Verb::Stats, None, Duration::from_millis(250))
            .await?;
    let registrations = ctx.store.all(None).await.unwrap_or_default();
    // Best effort: a JetStream hiccup (a leader election) costs the
    // gauges of this scrape, not the whole scrape.
    let jetstream =
        match tokio::time::timeout(Duration::from_secs(3), jetstream_state(&ctx.js)).await {
            Ok(Ok(state)) => state,
            Ok(Err(err)) => {
                tracing::warn!(error = %format!("{err:#}"), "no JetStream gauges in this scrape");
                JetStreamState::default()
            }
            Err(_) => {
                tracing::warn!("no JetStream gauges in this scrape: listing took over 3 s");
                JetStreamState::default()
            }
        };
    encode_metrics(
        &stats,
        registrations
            .iter()
            .map(|(r, _)| (r.name.as_str(), healthy(r, now_ms()))),
        &jetstream,
    )
}

/// The exposition text for these stats and `(service, healthy)` registrations.
pub(crate) fn encode_metrics<'a>(
    stats: &[StatsResponse],
    registrations: impl Iterator<Item = (&'a str, bool)>,
    jetstream: &JetStreamState,
) -> anyhow::Result<String> {
    let mut registry = Metrics::with_prefix("switchyard");
    let requests = Family::<Labels, Counter>::default();
    let errors = Family::<Labels, Counter>::default();
    let seconds = Family::<Labels, Counter<f64, AtomicU64>>::default();
    let instances = Family::<Labels, Gauge>::default();
    let latency = Family::<Labels, Latency>::default();
    registry.register(
        "request_duration_seconds",
        "Time to handle a request, per service instance and endpoint",
        latency.clone(),
    );
    registry.register(
        "requests",
        "Requests handled, per service instance and endpoint",
        requests.clone(),
    );
    registry.register(
        "errors",
        "Error replies, per service instance and endpoint",
        errors.clone(),
    );
    registry.register(
        "processing_seconds",
        "Time spent handling requests",
        seconds.clone(),
    );
    registry.register(
        "registry_instances",
        "Registered instances by health",
        instances.clone(),
    );
    for s in stats {
        for e in &s.endpoints {
            let labels = vec![
                ("service".to_owned(), s.name.clone()),
                ("instance".to_owned(), s.id.clone()),
                ("endpoint".to_owned(), e.name.clone()),
            ];
            requests.get_or_create(&labels).inc_by(e.num_requests);
            errors.get_or_create(&labels).inc_by(e.num_errors);
            seconds
                .get_or_create(&labels)
                .inc_by(e.processing_time as f64 / 1e9);
            if let Some(buckets) = latency_buckets(e.data.as_ref())
                && let Ok(mut data) = latency.get_or_create(&labels).0.lock()
            {
                data.count = buckets.iter().map(|(_, n)| n).sum();
                data.sum = e.processing_time as f64 / 1e9;
                data.buckets = buckets;
            }
        }
    }
    let mut by_health: BTreeMap<(String, bool), i64> = BTreeMap::new();
    for (service, is_healthy) in registrations {
        *by_health
            .entry((service.to_owned(), is_healthy))
            .or_insert(0) += 1;
        by_health
            .entry((service.to_owned(), !is_healthy))
            .or_insert(0);
    }
    for ((service, is_healthy), n) in by_health {
        let health = if is_healthy { "healthy" } else { "unhealthy" };
        instances
            .get_or_create(&vec![
                ("service".to_owned(), service),
                ("health".to_owned(), health.to_owned()),
            ])
            .set(n);
    }
    encode_jetstream(&mut registry, jetstream);
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

/// Stream sizes and consumer lag: what "payments are backing up" and "the
/// DLQ is not empty" alert on (`deploy/prometheus/alerts.yml`).
fn encode_jetstream(registry: &mut Metrics, jetstream: &JetStreamState) {
    let gauge = |registry: &mut Metrics, name: &str, help: &str| {
        let family = Family::<Labels, Gauge>::default();
        registry.register(name, help, family.clone());
        family
    };
    let messages = gauge(
        registry,
        "stream_messages",
        "Messages in a stream (a DLQ's depth)",
    );
    let bytes = gauge(registry, "stream_bytes", "Bytes in a stream");
    let pending = gauge(
        registry,
        "consumer_num_pending",
        "Messages a consumer has not delivered yet (its backlog)",
    );
    let ack_pending = gauge(
        registry,
        "consumer_num_ack_pending",
        "Messages delivered and not yet acknowledged",
    );
    let redelivered = gauge(
        registry,
        "consumer_num_redelivered",
        "Messages delivered more than once and not yet acknowledged",
    );
    let waiting = gauge(registry, "consumer_num_waiting", "Pull requests waiting");
    let set = |family: &Family<Labels, Gauge>, labels: Labels, value: u64| {
        family
            .get_or_create(&labels)
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    };
    let payments = gauge(
        registry,
        "payments",
        "Payments by final status (their events in EVENTS, kept 7 days)",
    );
    let emails = gauge(
        registry,
        "emails",
        "Mails sent, failed, rejected (their events in EVENTS, kept 7 days)",
    );
    for (prefix, family) in [("events.payment.", &payments), ("events.email.", &emails)] {
        for (subject, n) in &jetstream.events {
            if let Some(status) = subject.strip_prefix(prefix) {
                set(family, vec![("status".to_owned(), status.to_owned())], *n);
            }
        }
    }
    for s in &jetstream.streams {
        let stream = vec![("stream".to_owned(), s.name.clone())];
        set(&messages, stream.clone(), s.messages);
        set(&bytes, stream.clone(), s.bytes);
        for c in &s.consumers {
            let mut labels = stream.clone();
            labels.push(("consumer".to_owned(), c.name.clone()));
            set(&pending, labels.clone(), c.pending);
            set(&ack_pending, labels.clone(), c.ack_pending);
            set(&redelivered, labels.clone(), c.redelivered);
            set(&waiting, labels, c.waiting);
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn only_durable_consumers_are_measured() {
        let mut config = jetstream::consumer::Config::default();
        assert!(
            !is_durable(&config),
            "an ordered consumer (KV watch, key listing)"
        );
        config.durable_name = Some(String::new());
        assert!(!is_durable(&config));
        config.durable_name = Some("payment-processor".into());
        assert!(is_durable(&config));
    }

    use super::*;

    fn deploy(path: &str) -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        std::fs::read_to_string(root.join(path)).unwrap_or_default()
    }

    /// `switchyard_…` names used by `text`.
    fn names(text: &str) -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("switchyard_"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_alerts_and_the_dashboard_use_only_exported_metrics() {
        let stats: Vec<StatsResponse> = serde_json::from_value(serde_json::json!([{
            "type": "io.nats.micro.v1.stats_response", "name": "math", "id": "a", "version": "1",
            "started": "2026-11-25T00:00:00Z",
            "endpoints": [{"name": "calculate", "subject": "services.math.calculate", "queue_group": "q",
                "num_requests": 3, "num_errors": 1, "last_error": "", "processing_time": 1000,
                "average_processing_time": 333,
                "data": {"latency_buckets": [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]}}]
        }]))
        .unwrap_or_default();
        assert_eq!(stats.len(), 1, "the sample stats decode");
        let mut jetstream = JetStreamState::default();
        jetstream
            .events
            .insert("events.payment.completed".into(), 4);
        jetstream.events.insert("events.email.sent".into(), 2);
        jetstream.streams = vec![StreamState {
            name: "PAYMENTS_DLQ".into(),
            messages: 1,
            bytes: 10,
            consumers: vec![ConsumerState {
                name: "c".into(),
                pending: 1,
                ack_pending: 1,
                redelivered: 1,
                waiting: 1,
            }],
        }];
        let exported = encode_metrics(&stats, [("math", false)].into_iter(), &jetstream).unwrap();
        assert!(
            exported.contains("switchyard_payments{status=\"completed\"} 4"),
            "{exported}"
        );
        assert!(
            exported.contains("switchyard_emails{status=\"sent\"} 2"),
            "{exported}"
        );
        for line in [
            "# TYPE switchyard_request_duration_seconds histogram",
            "switchyard_request_duration_seconds_bucket{le=\"0.0005\",service=\"math\",instance=\"a\",endpoint=\"calculate\"} 2",
            "switchyard_request_duration_seconds_bucket{le=\"5.0\",service=\"math\",instance=\"a\",endpoint=\"calculate\"} 2",
            "switchyard_request_duration_seconds_bucket{le=\"+Inf\",service=\"math\",instance=\"a\",endpoint=\"calculate\"} 3",
            "switchyard_request_duration_seconds_count{service=\"math\",instance=\"a\",endpoint=\"calculate\"} 3",
        ] {
            assert!(exported.contains(line), "{line} missing:\n{exported}");
        }
        let exported = names(&exported);
        let alerts = deploy("prometheus/alerts.yml");
        let dashboard = deploy("grafana/switchyard.json");
        assert!(!alerts.is_empty() && !dashboard.is_empty());
        let used: std::collections::BTreeSet<String> = names(&alerts)
            .into_iter()
            .chain(names(&dashboard))
            .collect();
        assert!(used.len() >= 8, "{used:?}");
        for name in &used {
            assert!(
                exported.contains(name),
                "{name} is not exported: {exported:?}"
            );
        }
    }
}
