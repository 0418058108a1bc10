//! Ships this process's own tracing events to `logs.<service>.<level>`
//! (optional: `log.ship = true`).
//!
//! - Never blocks the service: events go into a bounded channel with
//!   `try_send`; when it is full they are dropped and counted, and the
//!   count is reported (locally) every few seconds.
//! - Never ships recursively: events from `async_nats`, from this module,
//!   and from code running inside [`unshipped`] (the shipper itself, and a
//!   log worker's write path) stay local.
//! - Records queue up before the connection exists and go out once
//!   [`attach`] gets a client.

use async_nats::Client;
use protocol::logs::LogRecord;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Records waiting to be published.
pub const CAPACITY: usize = 4096;

tokio::task_local! {
    static UNSHIPPED: ();
}

/// Runs `fut` with its events kept local (not shipped).
pub async fn unshipped<F: Future>(fut: F) -> F::Output {
    UNSHIPPED.scope((), fut).await
}

#[derive(Debug)]
struct Shipped {
    level: &'static str,
    body: Vec<u8>,
    /// The `traceparent` of the span the event happened in: the record
    /// carries it as a header, so the log-worker's write joins that trace.
    traceparent: Option<String>,
}

/// The tracing layer.
#[derive(Debug)]
pub struct ShipLayer {
    service: String,
    tx: mpsc::Sender<Shipped>,
    dropped: Arc<AtomicU64>,
}

/// The other end: publishes what the layer queued.
#[derive(Debug)]
pub struct Shipper {
    service: String,
    rx: mpsc::Receiver<Shipped>,
    dropped: Arc<AtomicU64>,
}

/// A layer for `service` and its shipper, with room for `capacity` records.
pub fn layer(service: &str, capacity: usize) -> (ShipLayer, Shipper) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    (
        ShipLayer {
            service: service.to_owned(),
            tx,
            dropped: dropped.clone(),
        },
        Shipper {
            service: service.to_owned(),
            rx,
            dropped,
        },
    )
}

static PENDING: OnceLock<Mutex<Option<Shipper>>> = OnceLock::new();

/// Keeps the shipper made at telemetry init until a client exists.
pub(crate) fn park(shipper: Shipper) {
    let slot = PENDING.get_or_init(|| Mutex::new(None));
    if let Ok(mut slot) = slot.lock() {
        *slot = Some(shipper);
    }
}

/// Starts shipping over `client`, if shipping was set up.
pub fn attach(client: &Client) {
    let shipper = PENDING.get().and_then(|slot| slot.lock().ok()?.take());
    if let Some(shipper) = shipper {
        tokio::spawn(unshipped(shipper.run(client.clone())));
    }
}

impl ShipLayer {
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The trace a span belongs to (its `trace_id` field) and, for spans opened
/// by [`crate::trace::start`], its own `traceparent`: the records of
/// events inside it carry both (`fields.trace_id`, a `traceparent` header).
#[derive(Default)]
struct SpanTrace {
    trace_id: Option<String>,
    traceparent: Option<String>,
}

impl SpanTrace {
    fn is_empty(&self) -> bool {
        self.trace_id.is_none() && self.traceparent.is_none()
    }
    /// Takes what `other` has.
    fn update(&mut self, other: SpanTrace) {
        if other.trace_id.is_some() {
            self.trace_id = other.trace_id;
        }
        if other.traceparent.is_some() {
            self.traceparent = other.traceparent;
        }
    }
}

impl SpanTrace {
    fn take(&mut self, field: &Field, text: &str) {
        let text = text.trim_matches('"');
        if text.is_empty() {
            return;
        }
        match field.name() {
            protocol::logs::TRACE_ID_FIELD => self.trace_id = Some(text.to_owned()),
            protocol::names::headers::TRACEPARENT => self.traceparent = Some(text.to_owned()),
            _ => {}
        }
    }
}

impl Visit for SpanTrace {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.take(field, value);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(
            field.name(),
            protocol::logs::TRACE_ID_FIELD | protocol::names::headers::TRACEPARENT
        ) {
            self.take(field, &format!("{value:?}"));
        }
    }
}

impl<S> Layer<S> for ShipLayer
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut trace = SpanTrace::default();
        attrs.record(&mut trace);
        if let (false, Some(span)) = (trace.is_empty(), ctx.span(id)) {
            span.extensions_mut().insert(trace);
        }
    }

    /// `trace::start` records the trace after the span is made.
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let mut trace = SpanTrace::default();
        values.record(&mut trace);
        if let (false, Some(span)) = (trace.is_empty(), ctx.span(id)) {
            let mut extensions = span.extensions_mut();
            match extensions.get_mut::<SpanTrace>() {
                Some(kept) => kept.update(trace),
                None => extensions.insert(trace),
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let target = meta.target();
        if target.starts_with("async_nats")
            || target == module_path!()
            || UNSHIPPED.try_with(|_| ()).is_ok()
        {
            return;
        }
        let level = protocol::subjects::LOG_LEVELS[match *meta.level() {
            Level::TRACE => 0,
            Level::DEBUG => 1,
            Level::INFO => 2,
            Level::WARN => 3,
            Level::ERROR => 4,
        }];
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        visitor.fields.insert("target".into(), target.into());
        // Inside a request's or a message's span: its trace, and the
        // innermost traced span as the record's parent.
        let mut traceparent = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(trace) = span.extensions().get::<SpanTrace>() {
                    if let Some(id) = &trace.trace_id {
                        visitor
                            .fields
                            .entry(protocol::logs::TRACE_ID_FIELD)
                            .or_insert_with(|| id.clone().into());
                    }
                    if traceparent.is_none() {
                        traceparent.clone_from(&trace.traceparent);
                    }
                    if traceparent.is_some() {
                        break;
                    }
                }
            }
        }
        // The trace_id field and the parent must agree: a record whose
        // own trace_id names another trace carries no parent.
        if let Some(tp) = &traceparent
            && visitor
                .fields
                .get(protocol::logs::TRACE_ID_FIELD)
                .and_then(|v| v.as_str())
                != crate::trace::trace_id(tp)
        {
            traceparent = None;
        }
        let record = LogRecord {
            ts: crate::time::now_rfc3339(),
            service: self.service.clone(),
            level: level.to_owned(),
            message: visitor.message,
            fields: visitor.fields,
        };
        let Ok(body) = serde_json::to_vec(&record) else {
            return;
        };
        if self
            .tx
            .try_send(Shipped {
                level,
                body,
                traceparent,
            })
            .is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields.insert(field.name().into(), value.into());
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.insert(field.name().into(), text.into());
        }
    }
}

impl Shipper {
    async fn run(mut self, client: Client) {
        let mut reported = 0;
        let mut report = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                shipped = self.rx.recv() => {
                    let Some(Shipped { level, body, traceparent }) = shipped else { return };
                    // A service name that cannot be a subject token is dropped, not published elsewhere.
                    let Ok(subject) = protocol::subjects::logs(&self.service, level) else {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let sent = match traceparent {
                        Some(tp) => {
                            client
                                .publish_with_headers(subject, crate::trace::headers(&tp), body.into())
                                .await
                        }
                        None => client.publish(subject, body.into()).await,
                    };
                    if sent.is_err() {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ = report.tick() => {
                    let dropped = self.dropped.load(Ordering::Relaxed);
                    if dropped > reported {
                        tracing::warn!(dropped, new = dropped - reported, "log shipping dropped records (buffer full or NATS unreachable)");
                        reported = dropped;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[tokio::test]
    async fn never_blocks_counts_drops_and_skips_its_own() {
        let (layer, mut shipper) = layer("svc", 3);
        let dropped = layer.dropped.clone();
        let subscriber = tracing_subscriber::registry().with(layer);
        let _guard = tracing::subscriber::set_default(subscriber);
        for i in 0..10 {
            tracing::info!(i, "hello");
        }
        tracing::warn!(target: "async_nats::connector", "not shipped");
        unshipped(async { tracing::error!("not shipped either") }).await;
        assert_eq!(dropped.load(Ordering::Relaxed), 7);
        let first = shipper.rx.try_recv().unwrap();
        assert_eq!(first.level, "info");
        let record: LogRecord = serde_json::from_slice(&first.body).unwrap();
        assert_eq!(
            (record.service.as_str(), record.message.as_str()),
            ("svc", "hello")
        );
        assert_eq!(record.fields["i"], 0);
        shipper.rx.try_recv().unwrap();
        shipper.rx.try_recv().unwrap();
        assert!(shipper.rx.try_recv().is_err(), "nothing else queued");
    }

    #[tokio::test]
    async fn records_inside_a_traced_span_name_it_as_their_parent() {
        let (layer, mut shipper) = layer("svc", 8);
        let subscriber = tracing_subscriber::registry().with(layer);
        let _guard = tracing::subscriber::set_default(subscriber);
        let parent = crate::trace::Carrier::from_traceparent(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        let traced = crate::traced!("work", &parent, "internal");
        traced.span().in_scope(|| tracing::info!("inside"));
        tracing::info!("outside");
        let inside = shipper.rx.try_recv().unwrap();
        assert_eq!(inside.traceparent.as_deref(), Some(traced.traceparent()));
        let record: LogRecord = serde_json::from_slice(&inside.body).unwrap();
        assert_eq!(
            record.fields[protocol::logs::TRACE_ID_FIELD],
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let outside = shipper.rx.try_recv().unwrap();
        assert_eq!(outside.traceparent, None);
    }
}
