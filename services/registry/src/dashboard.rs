//! The live dashboard, on the same HTTP server as `/metrics`:
//!
//! ```text
//! GET  /                       the page (HTML; its CSRF token inside)
//! GET  /dashboard/app.js|.css  its script and style (embedded, no build step)
//! GET  /dashboard/state        a JSON snapshot (services, payments, flag, recent ticks/logs/payments)
//! GET  /dashboard/events       Server-Sent Events: `state` ~1/s, `tick`, `log`, `payment` as they arrive
//! POST /dashboard/maintenance  {"on": bool, "password": "<admin's>"}: sets the flag as NATS user `admin`
//! ```
//!
//! The registry reads `stocks.>`, `logs.>` and `events.payment.>` (core
//! subscriptions, read only: see its manifest) and keeps the last few of
//! each in memory for pages opened later. The flag is never written with
//! the registry's own user: the toggle opens a one-off connection as
//! `admin` with the password the person typed, so NATS decides.

use crate::Registry;
use crate::metrics::{JetStreamState, jetstream_state};
use crate::store::{healthy, now_ms};
use async_nats::jetstream;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt as _;
use protocol::micro::{StatsResponse, Verb};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");
/// Where the page carries the per-process CSRF token.
const TOKEN_SLOT: &str = "{{csrf_token}}";
/// The header the token must come back in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// Ticks kept per symbol (the chart's width).
const TICKS_KEPT: usize = 60;
/// Log lines kept for a page opened later.
const LOGS_KEPT: usize = 1000;
/// Payments kept (the most recent, one entry per payment id).
const PAYMENTS_KEPT: usize = 50;
/// How long the toggle waits for NATS (connect, then the write).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// One update pushed to every open page.
#[derive(Debug, Clone)]
struct Update {
    kind: &'static str,
    json: Arc<str>,
}

/// The dashboard's state inside the registry.
pub(crate) struct Dashboard {
    csrf: String,
    /// The registry's own connection settings: the admin connection uses
    /// the same URLs and TLS, with `admin`'s credentials instead.
    nats: runtime::settings::NatsSettings,
    replicas: usize,
    maintenance: watch::Receiver<bool>,
    updates: broadcast::Sender<Update>,
    recent: Mutex<Recent>,
    sampler: tokio::sync::Mutex<Sampler>,
    /// One toggle at a time (and a pause after a refused password).
    toggling: tokio::sync::Mutex<()>,
    /// Ends the event streams when the server stops.
    pub(crate) stop: CancellationToken,
}

/// Without the connection settings (they hold the registry's password)
/// and the token.
impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("urls", &self.nats.urls)
            .field("auth", &self.auth())
            .field("pages", &self.updates.receiver_count())
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    pub(crate) fn new(
        nats: runtime::settings::NatsSettings,
        replicas: usize,
        maintenance: watch::Receiver<bool>,
    ) -> Self {
        let (updates, _) = broadcast::channel(1024);
        Self {
            csrf: new_token(),
            nats,
            replicas,
            maintenance,
            updates,
            recent: Mutex::new(Recent::default()),
            sampler: tokio::sync::Mutex::new(Sampler::default()),
            toggling: tokio::sync::Mutex::new(()),
            stop: CancellationToken::new(),
        }
    }

    /// Whether the registry logs in to NATS with a user (a cluster with
    /// accounts): then the toggle needs the admin password.
    fn auth(&self) -> bool {
        self.nats.user.is_some()
    }

    fn push(&self, kind: &'static str, value: &impl Serialize) {
        if let Ok(json) = serde_json::to_string(value) {
            // No page open: nobody to tell.
            let _ = self.updates.send(Update {
                kind,
                json: json.into(),
            });
        }
    }
}

/// 32 random bytes, hex: unguessable for a page on another origin.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without stopping at the first difference.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The routes, merged into the `/metrics` server.
pub(crate) fn routes() -> Router<Arc<Registry>> {
    Router::new()
        .route("/", get(page))
        .route("/dashboard/app.js", get(script))
        .route("/dashboard/app.css", get(style))
        .route("/dashboard/state", get(state))
        .route("/dashboard/events", get(events))
        .route("/dashboard/maintenance", post(maintenance))
}

/// Headers of every dashboard response: nothing from elsewhere may run in
/// the page, and no other site may frame it (the toggle).
fn secured(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn page(State(ctx): State<Arc<Registry>>) -> Response {
    let html = PAGE.replace(TOKEN_SLOT, &ctx.dashboard.csrf);
    secured(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
}

async fn script() -> Response {
    secured(
        (
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            SCRIPT,
        )
            .into_response(),
    )
}

async fn style() -> Response {
    secured(([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response())
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    secured(
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            value.to_string(),
        )
            .into_response(),
    )
}

/// `{"error": {"code", "message"}}`, the contract's error shape.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    json_response(
        status,
        &serde_json::json!({"error": {"code": code, "message": message.into()}}),
    )
}

// --- the live feed -----------------------------------------------------------

/// A price as the chart keeps it.
#[derive(Debug, Clone, Serialize)]
struct Price {
    symbol: String,
    price: String,
    change: String,
    ts: String,
    seq: u64,
}

/// A log line as the tail shows it.
#[derive(Debug, Clone, Serialize)]
struct LogLine {
    ts: String,
    service: String,
    level: String,
    message: String,
    /// `fields.trace_id`, else the trace id of the message's `traceparent`.
    trace_id: Option<String>,
    fields: serde_json::Map<String, serde_json::Value>,
}

/// A payment's last event.
#[derive(Debug, Clone, Serialize)]
struct PaymentLine {
    payment_id: String,
    status: String,
    amount: String,
    currency: String,
    reason: Option<String>,
    at: String,
    trace_id: Option<String>,
}

#[derive(Debug, Default)]
struct Recent {
    prices: BTreeMap<String, VecDeque<Price>>,
    logs: VecDeque<LogLine>,
    payments: VecDeque<PaymentLine>,
}

/// What a subscription delivered, turned into what the page shows.
#[derive(Debug)]
enum Fed {
    Tick(Price),
    Log(LogLine),
    Payment(PaymentLine),
}

/// The trace id a message carries: its body's `fields.trace_id` wins
/// (what log-worker stores), else its `traceparent` header.
fn trace_of(
    fields: Option<&serde_json::Map<String, serde_json::Value>>,
    headers: Option<&async_nats::HeaderMap>,
) -> Option<String> {
    fields
        .and_then(|f| f.get(protocol::logs::TRACE_ID_FIELD))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            runtime::trace::of(headers)
                .as_deref()
                .and_then(runtime::trace::trace_id)
                .map(str::to_owned)
        })
}

/// Reads one message of `stocks.>`, `logs.>` or `events.payment.>`;
/// `None` for what is not one of them or cannot be read (never a panic).
fn read(subject: &str, payload: &[u8], headers: Option<&async_nats::HeaderMap>) -> Option<Fed> {
    let mut tokens = subject.split('.');
    match tokens.next()? {
        protocol::subjects::STOCKS_PREFIX => {
            let tick: protocol::stocks::Tick = serde_json::from_slice(payload).ok()?;
            Some(Fed::Tick(Price {
                symbol: tick.symbol,
                price: tick.price,
                change: tick.change,
                ts: tick.ts,
                seq: tick.seq,
            }))
        }
        protocol::subjects::LOGS_PREFIX => {
            // `logs.<service>.<level>`: the subject names service and
            // level; `logs.process`: the body does (or it is plain text).
            let (service, level) = (tokens.next(), tokens.next());
            let body: serde_json::Value = serde_json::from_slice(payload).unwrap_or_else(
                |_| serde_json::json!({"message": String::from_utf8_lossy(payload)}),
            );
            let text = |key: &str| body.get(key).and_then(serde_json::Value::as_str);
            let fields = body
                .get("fields")
                .and_then(serde_json::Value::as_object)
                .cloned()
                .unwrap_or_default();
            let service = match (service, level) {
                (Some(s), Some(_)) => s,
                _ => text("service").unwrap_or(PLAIN_TEXT_SERVICE),
            };
            let level = level.or_else(|| text("level")).unwrap_or("info");
            Some(Fed::Log(LogLine {
                ts: text("ts").unwrap_or_default().to_owned(),
                service: service.to_owned(),
                level: level.to_owned(),
                message: text("message").unwrap_or_default().to_owned(),
                trace_id: trace_of(Some(&fields), headers),
                fields,
            }))
        }
        "events" if tokens.next() == Some("payment") => {
            let event: protocol::payment::PaymentEvent = serde_json::from_slice(payload).ok()?;
            Some(Fed::Payment(PaymentLine {
                payment_id: event.payment_id,
                status: event.status.as_str().to_owned(),
                amount: event.amount,
                currency: event.currency,
                reason: event.reason,
                at: event.at,
                trace_id: trace_of(None, headers),
            }))
        }
        _ => None,
    }
}

/// The service log-worker files plain-text `logs.process` lines under.
const PLAIN_TEXT_SERVICE: &str = "process";

impl Recent {
    fn keep(&mut self, fed: &Fed) {
        match fed {
            Fed::Tick(p) => {
                let ticks = self.prices.entry(p.symbol.clone()).or_default();
                ticks.push_back(p.clone());
                while ticks.len() > TICKS_KEPT {
                    ticks.pop_front();
                }
            }
            Fed::Log(l) => {
                self.logs.push_back(l.clone());
                while self.logs.len() > LOGS_KEPT {
                    self.logs.pop_front();
                }
            }
            Fed::Payment(p) => {
                self.payments.retain(|q| q.payment_id != p.payment_id);
                self.payments.push_back(p.clone());
                while self.payments.len() > PAYMENTS_KEPT {
                    self.payments.pop_front();
                }
            }
        }
    }
}

/// Follows ticks, logs and payment events until `stop` (a registry task).
pub(crate) async fn feed(state: Arc<Registry>, stop: CancellationToken) -> anyhow::Result<()> {
    let dashboard = &state.dashboard;
    let mut subscriptions = Vec::new();
    for subject in [
        protocol::subjects::STOCKS_ALL,
        protocol::subjects::LOGS_ALL,
        protocol::subjects::EVENT_PAYMENT_ALL,
    ] {
        subscriptions.push(state.client.subscribe(subject).await?);
    }
    let mut messages = futures::stream::select_all(subscriptions);
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            message = messages.next() => message,
        };
        let Some(message) = message else {
            return Ok(());
        };
        let Some(fed) = read(
            message.subject.as_str(),
            &message.payload,
            message.headers.as_ref(),
        ) else {
            continue;
        };
        // A payment event shown on the page is a step of the payment's
        // trace (ticks and log lines are not: they would only repeat the
        // publisher's and the log-worker's spans).
        let _shown = matches!(fed, Fed::Payment(_)).then(|| {
            runtime::traced!(
                "dashboard.payment",
                &runtime::trace::Carrier::from_headers(message.headers.as_ref()),
                "consumer",
                otel.name = %format!("show {}", message.subject),
            )
        });
        if let Ok(mut recent) = dashboard.recent.lock() {
            recent.keep(&fed);
        }
        match &fed {
            Fed::Tick(p) => dashboard.push("tick", p),
            Fed::Log(l) => dashboard.push("log", l),
            Fed::Payment(p) => dashboard.push("payment", p),
        }
    }
}

/// Pushes a snapshot every second while a page is open (a registry task).
pub(crate) async fn sample(state: Arc<Registry>, stop: CancellationToken) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if state.dashboard.updates.receiver_count() > 0 {
            let snapshot = snapshot(&state).await;
            state.dashboard.push("state", &snapshot);
        }
    }
}

// --- snapshots ---------------------------------------------------------------

/// Request counts at one moment, for rates.
#[derive(Debug, Default)]
struct Sampler {
    last: Option<(Instant, BTreeMap<String, u64>, u64)>,
    rates: BTreeMap<String, f64>,
    payments_rate: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct InstanceView {
    pub(crate) id: String,
    pub(crate) version: String,
    pub(crate) healthy: bool,
    /// Milliseconds since its last heartbeat.
    pub(crate) last_seen_ms_ago: u64,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    /// Requests per second over the last sample.
    pub(crate) rate: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct ServiceView {
    pub(crate) name: String,
    /// `healthy` (an instance heartbeats within its TTL), `unhealthy`
    /// (instances, none within its TTL) or `missing` (none registered).
    pub(crate) health: &'static str,
    pub(crate) instances: Vec<InstanceView>,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) rate: f64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct PaymentsView {
    /// In `PAYMENTS`, not yet delivered to a processor.
    pub(crate) pending: u64,
    /// Delivered, not yet acknowledged (being charged).
    pub(crate) processing: u64,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    /// Messages in `PAYMENTS_DLQ`.
    pub(crate) dlq: u64,
    /// Completed + failed per second over the last sample.
    pub(crate) rate: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Snapshot {
    at: String,
    services: Vec<ServiceView>,
    payments: PaymentsView,
    /// Whether JetStream answered (else the payment counters are stale zeros).
    jetstream: bool,
    maintenance: bool,
    /// Whether the toggle needs the admin password.
    auth: bool,
}

/// The services the registry knows of: the six, then any other registered.
pub(crate) fn services_view(
    registrations: &[protocol::registry::Registration],
    stats: &[StatsResponse],
    rates: &BTreeMap<String, f64>,
    now_ms: u64,
) -> Vec<ServiceView> {
    let mut names: Vec<String> = protocol::names::services::ALL
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    for r in registrations {
        if !names.contains(&r.name) {
            names.push(r.name.clone());
        }
    }
    names
        .into_iter()
        .map(|name| {
            let instances: Vec<InstanceView> = registrations
                .iter()
                .filter(|r| r.name == name)
                .map(|r| {
                    let (requests, errors) = stats
                        .iter()
                        .filter(|s| s.id == r.instance_id)
                        .flat_map(|s| &s.endpoints)
                        .fold((0, 0), |(n, e), ep| {
                            (n + ep.num_requests, e + ep.num_errors)
                        });
                    InstanceView {
                        id: r.instance_id.clone(),
                        version: r.version.clone(),
                        healthy: healthy(r, now_ms),
                        last_seen_ms_ago: now_ms.saturating_sub(r.last_seen_ms),
                        requests,
                        errors,
                        rate: rates.get(&r.instance_id).copied().unwrap_or(0.0),
                    }
                })
                .collect();
            let health = if instances.iter().any(|i| i.healthy) {
                "healthy"
            } else if instances.is_empty() {
                "missing"
            } else {
                "unhealthy"
            };
            ServiceView {
                health,
                requests: instances.iter().map(|i| i.requests).sum(),
                errors: instances.iter().map(|i| i.errors).sum(),
                rate: instances.iter().map(|i| i.rate).sum(),
                instances,
                name,
            }
        })
        .collect()
}

/// Payments by stage, from what `/metrics` gathers.
pub(crate) fn payments_view(js: &JetStreamState) -> PaymentsView {
    use protocol::names::{consumers, streams};
    let event = |subject: &str| js.events.get(subject).copied().unwrap_or(0);
    let stream = |name: &str| js.streams.iter().find(|s| s.name == name);
    let processor = stream(streams::PAYMENTS).and_then(|s| {
        s.consumers
            .iter()
            .find(|c| c.name == consumers::PAYMENT_PROCESSOR)
    });
    PaymentsView {
        pending: processor.map_or(0, |c| c.pending),
        processing: processor.map_or(0, |c| c.ack_pending),
        completed: event(protocol::subjects::EVENT_PAYMENT_COMPLETED),
        failed: event(protocol::subjects::EVENT_PAYMENT_FAILED),
        dlq: stream(streams::PAYMENTS_DLQ).map_or(0, |s| s.messages),
        rate: 0.0,
    }
}

async fn snapshot(ctx: &Registry) -> Snapshot {
    let stats: Vec<StatsResponse> =
        runtime::client::discover(&ctx.client, Verb::Stats, None, Duration::from_millis(250))
            .await
            .unwrap_or_default();
    let registrations: Vec<_> = ctx
        .store
        .all(None)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    let js = tokio::time::timeout(Duration::from_secs(3), jetstream_state(&ctx.js)).await;
    let (js, js_ok) = match js {
        Ok(Ok(state)) => (state, true),
        _ => (JetStreamState::default(), false),
    };
    let mut payments = payments_view(&js);
    let requests: BTreeMap<String, u64> = stats
        .iter()
        .map(|s| {
            (
                s.id.clone(),
                s.endpoints.iter().map(|e| e.num_requests).sum::<u64>(),
            )
        })
        .collect();
    let rates = {
        let mut guard = ctx.dashboard.sampler.lock().await;
        let sampler = &mut *guard;
        let now = Instant::now();
        let due = sampler
            .last
            .as_ref()
            .is_none_or(|(at, _, _)| now.duration_since(*at) >= Duration::from_millis(500));
        if due {
            // Through a JetStream hiccup the payment baseline stays.
            let done = if js_ok {
                payments.completed + payments.failed
            } else {
                sampler.last.as_ref().map_or(0, |(_, _, d)| *d)
            };
            if let Some((at, before, done_before)) = &sampler.last {
                let dt = now.duration_since(*at).as_secs_f64().max(0.001);
                sampler.rates = requests
                    .iter()
                    .map(|(id, n)| {
                        let old = before.get(id).copied().unwrap_or(*n);
                        (id.clone(), n.saturating_sub(old) as f64 / dt)
                    })
                    .collect();
                sampler.payments_rate = done.saturating_sub(*done_before) as f64 / dt;
            }
            sampler.last = Some((now, requests, done));
        }
        payments.rate = sampler.payments_rate;
        sampler.rates.clone()
    };
    Snapshot {
        at: runtime::time::format_rfc3339(time::OffsetDateTime::now_utc()),
        services: services_view(&registrations, &stats, &rates, now_ms()),
        payments,
        jetstream: js_ok,
        maintenance: *ctx.dashboard.maintenance.borrow(),
        auth: ctx.dashboard.auth(),
    }
}

async fn state(State(ctx): State<Arc<Registry>>) -> Response {
    let snapshot = snapshot(&ctx).await;
    let mut value = serde_json::to_value(&snapshot).unwrap_or_default();
    if let (Ok(recent), Some(object)) = (ctx.dashboard.recent.lock(), value.as_object_mut()) {
        object.insert(
            "prices".into(),
            serde_json::to_value(&recent.prices).unwrap_or_default(),
        );
        object.insert(
            "logs".into(),
            serde_json::to_value(&recent.logs).unwrap_or_default(),
        );
        object.insert(
            "recent_payments".into(),
            serde_json::to_value(&recent.payments).unwrap_or_default(),
        );
    }
    json_response(StatusCode::OK, &value)
}

async fn events(
    State(ctx): State<Arc<Registry>>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let updates = ctx.dashboard.updates.subscribe();
    let stream = futures::stream::unfold(updates, |mut updates| async move {
        loop {
            match updates.recv().await {
                Ok(u) => {
                    let event = Event::default().event(u.kind).data(&*u.json);
                    return Some((Ok(event), updates));
                }
                // A slow page misses some updates; the next state catches up.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .take_until(ctx.dashboard.stop.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

// --- the maintenance toggle ---------------------------------------------------

/// The toggle's body. The password is never logged (no `Debug` of it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Toggle {
    on: bool,
    #[serde(default)]
    password: Option<String>,
}

impl std::fmt::Debug for Toggle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Toggle")
            .field("on", &self.on)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why a request to change state is refused before its body is read:
/// not JSON (a form post from another site), another origin, or without
/// the page's token. `None`: it may proceed.
pub(crate) fn refuse_forgery(
    headers: &HeaderMap,
    csrf: &str,
) -> Option<(StatusCode, &'static str, String)> {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let json = text(header::CONTENT_TYPE)
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Some((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json".into(),
        ));
    }
    let Some(host) = text(header::HOST) else {
        return Some((
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request has no Host header".into(),
        ));
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = origin.to_str().is_ok_and(|origin| {
            origin == format!("http://{host}") || origin == format!("https://{host}")
        });
        if !same {
            return Some((
                StatusCode::FORBIDDEN,
                "cross_origin",
                format!(
                    "refused: the request comes from another origin ({}), not from this page (http://{host})",
                    String::from_utf8_lossy(origin.as_bytes())
                ),
            ));
        }
    }
    if let Some(site) = headers.get("sec-fetch-site")
        && matches!(site.as_bytes(), b"cross-site" | b"same-site")
    {
        return Some((
            StatusCode::FORBIDDEN,
            "cross_origin",
            "refused: the browser says this request comes from another site".into(),
        ));
    }
    let token = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if !token.is_some_and(|t| same_secret(t, csrf)) {
        return Some((
            StatusCode::FORBIDDEN,
            "csrf",
            "refused: the X-CSRF-Token header is missing or is not this page's token (reload the page)"
                .into(),
        ));
    }
    None
}

/// Whether `host` (a `Host` header) names an IP address or `localhost`,
/// never a DNS name that could be re-pointed at this server (rebinding).
pub(crate) fn literal_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    name.parse::<std::net::IpAddr>().is_ok() || name.eq_ignore_ascii_case("localhost")
}

async fn maintenance(
    State(ctx): State<Arc<Registry>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some((status, code, message)) = refuse_forgery(&headers, &ctx.dashboard.csrf) {
        tracing::warn!(code, "dashboard: maintenance toggle refused");
        return error(status, code, message);
    }
    let toggle: Toggle = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "the body must be JSON like {{\"on\": true, \"password\": \"…\"}}: {}",
                    // serde's position and kind, not the input itself.
                    match err.classify() {
                        serde_json::error::Category::Data =>
                            "a field is missing or has the wrong type, or an unknown field was sent"
                                .to_owned(),
                        _ => err.to_string(),
                    }
                ),
            );
        }
    };
    let _one_at_a_time = ctx.dashboard.toggling.lock().await;
    let password = toggle.password.as_deref().filter(|p| !p.is_empty());
    let outcome = match (ctx.dashboard.auth(), password) {
        (true, None) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the admin password is needed to change the maintenance flag",
            );
        }
        (_, Some(password)) => as_admin(&ctx, password, toggle.on).await,
        (false, None)
            if !headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .is_some_and(literal_host) =>
        {
            // Without a password nothing but the origin checks guard it,
            // and a rebound DNS name passes those.
            return error(
                StatusCode::FORBIDDEN,
                "cross_origin",
                "without accounts the toggle answers only a page opened by IP address or localhost \
                 (e.g. http://127.0.0.1:9464/), not by a DNS name",
            );
        }
        (false, None) => {
            // No accounts on this cluster: the registry's own connection
            // may write the flag, and nothing else would check a password.
            let written = tokio::time::timeout(
                ADMIN_TIMEOUT,
                runtime::maintenance::set(&ctx.js, ctx.dashboard.replicas, toggle.on),
            )
            .await;
            match written {
                Ok(Ok(())) => Ok(serde_json::json!({
                    "maintenance": toggle.on,
                    "as": "registry",
                    "note": "this NATS has no accounts: the flag was set with the registry's own connection, no password was checked",
                })),
                Ok(Err(err)) => Err(error(
                    StatusCode::BAD_GATEWAY,
                    "unavailable",
                    format!("the flag was not written: {err:#}"),
                )),
                Err(_) => Err(error(
                    StatusCode::BAD_GATEWAY,
                    "unavailable",
                    "the flag was not written in time: if this NATS has accounts, give the admin password",
                )),
            }
        }
    };
    match outcome {
        Ok(body) => {
            tracing::warn!(
                maintenance = toggle.on,
                by = %body["as"],
                "dashboard: maintenance flag set"
            );
            json_response(StatusCode::OK, &body)
        }
        Err(response) => response,
    }
}

/// Writes the flag on a one-off connection as `admin` with `password`: the
/// registry's URLs and TLS, `admin`'s credentials (and nothing else of the
/// registry's: no token, nkey or creds file).
async fn as_admin(ctx: &Registry, password: &str, on: bool) -> Result<serde_json::Value, Response> {
    let mut nats = ctx.dashboard.nats.clone();
    nats.user = Some(protocol::accounts::ADMIN.to_owned());
    nats.password = Some(password.to_owned());
    nats.token = None;
    nats.nkey = None;
    nats.creds_file = None;
    nats.name = Some("registry-dashboard-admin".to_owned());
    let connected = tokio::time::timeout(
        ADMIN_TIMEOUT,
        runtime::nats::connect_once(&nats, "registry"),
    )
    .await;
    let client = match connected {
        Ok(Ok(client)) => client,
        Ok(Err(err)) if runtime::nats::is_authorization_error(&err) => {
            tracing::warn!("dashboard: NATS refused the admin password");
            // Slows guessing down: one toggle at a time, and this pause.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Err(error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "NATS refused the admin password (user admin): the flag was not changed",
            ));
        }
        Ok(Err(err)) => {
            return Err(error(
                StatusCode::BAD_GATEWAY,
                "unavailable",
                format!("cannot connect to NATS as admin: {err:#}"),
            ));
        }
        Err(_) => {
            return Err(error(
                StatusCode::BAD_GATEWAY,
                "unavailable",
                format!("cannot connect to NATS as admin within {ADMIN_TIMEOUT:?}"),
            ));
        }
    };
    let replicas = runtime::nats::effective_replicas(&client, ctx.dashboard.replicas);
    let js = jetstream::new(client.clone());
    let written =
        tokio::time::timeout(ADMIN_TIMEOUT, runtime::maintenance::set(&js, replicas, on)).await;
    if let Err(err) = client.drain().await {
        tracing::debug!(error = %err, "dashboard: draining the admin connection");
    }
    match written {
        Ok(Ok(())) => Ok(serde_json::json!({"maintenance": on, "as": "admin"})),
        Ok(Err(err)) => Err(error(
            StatusCode::BAD_GATEWAY,
            "unavailable",
            format!("the flag was not written: {err:#}"),
        )),
        Err(_) => Err(error(
            StatusCode::BAD_GATEWAY,
            "unavailable",
            format!("the flag was not written within {ADMIN_TIMEOUT:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_toggle_needs_json_the_same_origin_and_the_token() {
        let token = new_token();
        assert_eq!(token.len(), 64);
        assert_ne!(token, new_token());
        let good = [
            ("content-type", "application/json"),
            ("host", "127.0.0.1:9464"),
            ("origin", "http://127.0.0.1:9464"),
            ("x-csrf-token", token.as_str()),
        ];
        assert!(refuse_forgery(&headers(&good), &token).is_none());
        // No Origin (curl): the token still decides.
        assert!(refuse_forgery(&headers(&[good[0], good[1], good[3]]), &token).is_none());
        let code = |pairs: &[(&str, &str)]| refuse_forgery(&headers(pairs), &token).map(|r| r.1);
        assert_eq!(
            code(&[("content-type", "text/plain"), good[1], good[2], good[3]]),
            Some("unsupported_media_type")
        );
        assert_eq!(
            code(&[good[0], good[1], ("origin", "http://evil.example"), good[3]]),
            Some("cross_origin")
        );
        assert_eq!(
            code(&[good[0], good[1], ("origin", "null"), good[3]]),
            Some("cross_origin")
        );
        assert_eq!(
            code(&[good[0], good[1], good[3], ("sec-fetch-site", "cross-site")]),
            Some("cross_origin")
        );
        assert_eq!(code(&[good[0], good[1], good[2]]), Some("csrf"));
        assert_eq!(
            code(&[good[0], good[1], good[2], ("x-csrf-token", "0")]),
            Some("csrf")
        );
        assert_eq!(code(&[good[0], good[2], good[3]]), Some("invalid_request"));
    }

    #[test]
    fn only_ip_addresses_and_localhost_are_literal_hosts() {
        for host in [
            "127.0.0.1:9464",
            "127.0.0.1",
            "[::1]:9464",
            "[::1]",
            "localhost:9464",
            "LOCALHOST",
            "10.1.2.3:80",
        ] {
            assert!(literal_host(host), "{host}");
        }
        for host in [
            "evil.example:9464",
            "evil.example",
            "",
            ":9464",
            "[evil]:1",
            "localhost.evil:1",
        ] {
            assert!(!literal_host(host), "{host}");
        }
    }

    #[test]
    fn the_password_is_not_in_debug_output() {
        let t: Toggle = serde_json::from_str(r#"{"on": true, "password": "hunter2"}"#).unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
    }

    #[test]
    fn messages_become_ticks_log_lines_and_payments() {
        let tick = br#"{"symbol":"AAPL","price":"189.23","change":"-0.12","ts":"t","seq":7}"#;
        assert!(
            matches!(read("stocks.AAPL", tick, None), Some(Fed::Tick(p)) if p.price == "189.23")
        );
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let log = format!(
            r#"{{"ts":"t","message":"charged","fields":{{"trace_id":"{trace}","payment_id":"p"}}}}"#
        );
        match read("logs.payment-processor.info", log.as_bytes(), None) {
            Some(Fed::Log(l)) => {
                assert_eq!(
                    (l.service.as_str(), l.level.as_str()),
                    ("payment-processor", "info")
                );
                assert_eq!(l.trace_id.as_deref(), Some(trace));
            }
            other => panic!("{other:?}"),
        }
        // The trace id from the message's traceparent when the body has none.
        let h = runtime::trace::headers(&format!("00-{trace}-00f067aa0ba902b7-01"));
        match read("logs.process", b"plain words", Some(&h)) {
            Some(Fed::Log(l)) => {
                assert_eq!(l.message, "plain words");
                assert_eq!(l.trace_id.as_deref(), Some(trace));
            }
            other => panic!("{other:?}"),
        }
        let event = br#"{"payment_id":"p1","user_id":"u","amount":"1.00","currency":"USD","email":null,"status":"completed","reason":null,"at":"t"}"#;
        match read("events.payment.completed", event, Some(&h)) {
            Some(Fed::Payment(p)) => {
                assert_eq!(
                    (p.payment_id.as_str(), p.status.as_str()),
                    ("p1", "completed")
                );
                assert_eq!(p.trace_id.as_deref(), Some(trace));
            }
            other => panic!("{other:?}"),
        }
        for (subject, body) in [
            ("stocks.AAPL", &b"not json"[..]),
            ("events.payment.completed", b"{}"),
            ("events.email.sent", b"{}"),
            ("other", b""),
            ("", b""),
        ] {
            assert!(read(subject, body, None).is_none(), "{subject}");
        }
        let mut recent = Recent::default();
        for seq in 0..(TICKS_KEPT as u64 + 5) {
            let body =
                format!(r#"{{"symbol":"A","price":"1.00","change":"0.00","ts":"t","seq":{seq}}}"#);
            recent.keep(&read("stocks.A", body.as_bytes(), None).unwrap());
        }
        assert_eq!(recent.prices["A"].len(), TICKS_KEPT);
        assert_eq!(
            recent.prices["A"].back().map(|p| p.seq),
            Some(TICKS_KEPT as u64 + 4)
        );
    }

    #[test]
    fn services_are_healthy_when_an_instance_heartbeats_within_its_ttl() {
        let reg = |name: &str, id: &str, last_seen_ms: u64| protocol::registry::Registration {
            name: name.into(),
            instance_id: id.into(),
            version: "1".into(),
            endpoints: vec![],
            metadata: BTreeMap::new(),
            ttl_s: 10,
            registered_at: String::new(),
            last_seen_ms,
        };
        let now = 100_000;
        let regs = [
            reg("math", "a", now - 1_000),
            reg("math", "b", now - 60_000),
            reg("email-notifier", "c", now - 60_000),
            reg("extra", "d", now),
        ];
        let rates = BTreeMap::from([("a".to_owned(), 2.5)]);
        let view = services_view(&regs, &[], &rates, now);
        let health = |name: &str| view.iter().find(|s| s.name == name).map(|s| s.health);
        assert_eq!(health("math"), Some("healthy"));
        assert_eq!(health("email-notifier"), Some("unhealthy"));
        assert_eq!(health("payment-processor"), Some("missing"));
        assert_eq!(health("extra"), Some("healthy"));
        assert_eq!(view.len(), 7);
        assert_eq!(view.last().map(|s| s.name.as_str()), Some("extra"));
        let math = view.iter().find(|s| s.name == "math").unwrap();
        assert_eq!(math.instances.len(), 2);
        assert!((math.rate - 2.5).abs() < f64::EPSILON);
    }

    #[test]
    fn payments_by_stage_come_from_events_streams_and_the_consumer() {
        use crate::metrics::{ConsumerState, StreamState};
        let mut js = JetStreamState::default();
        js.events.insert("events.payment.completed".into(), 4);
        js.events.insert("events.payment.failed".into(), 1);
        js.streams = vec![
            StreamState {
                name: "PAYMENTS".into(),
                messages: 3,
                bytes: 0,
                consumers: vec![ConsumerState {
                    name: "payment-processor".into(),
                    pending: 2,
                    ack_pending: 1,
                    redelivered: 0,
                    waiting: 0,
                }],
            },
            StreamState {
                name: "PAYMENTS_DLQ".into(),
                messages: 7,
                bytes: 0,
                consumers: vec![],
            },
        ];
        let v = payments_view(&js);
        assert_eq!(
            (v.pending, v.processing, v.completed, v.failed, v.dlq),
            (2, 1, 4, 1, 7)
        );
    }
}
