//! `/metrics`: every instance's `$SRV.STATS` (requests, errors, processing
//! time per endpoint) plus registry health gauges, gathered at scrape time
//! and encoded by `prometheus-client` (OpenMetrics text).

use crate::Registry;
use crate::store::{healthy, now_ms};
use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
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

/// Serves `GET /metrics` until `stop`.
pub(crate) async fn serve(
    state: Arc<Registry>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
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

async fn render(ctx: &Registry) -> anyhow::Result<String> {
    let stats: Vec<StatsResponse> =
        runtime::client::discover(&ctx.client, Verb::Stats, None, Duration::from_millis(250))
            .await?;
    let registrations = ctx.store.all(None).await.unwrap_or_default();
    encode_metrics(
        &stats,
        registrations
            .iter()
            .map(|(r, _)| (r.name.as_str(), healthy(r, now_ms()))),
    )
}

/// The exposition text for these stats and `(service, healthy)` registrations.
pub(crate) fn encode_metrics<'a>(
    stats: &[StatsResponse],
    registrations: impl Iterator<Item = (&'a str, bool)>,
) -> anyhow::Result<String> {
    let mut registry = Metrics::with_prefix("switchyard");
    let requests = Family::<Labels, Counter>::default();
    let errors = Family::<Labels, Counter>::default();
    let seconds = Family::<Labels, Counter<f64, AtomicU64>>::default();
    let instances = Family::<Labels, Gauge>::default();
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
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}
