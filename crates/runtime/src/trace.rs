//! W3C trace context (`traceparent`, `tracestate`), carried from the
//! message a service handles to every message it publishes because of it,
//! so a payment → its event → the receipt mail → the mail's event → the log
//! records of each share one trace, and every step is a span.
//!
//! `traceparent` is `00-<32 hex trace id>-<16 hex parent span id>-<2 hex
//! flags>`. The spans are `tracing` spans; [`crate::telemetry`] installs an
//! OpenTelemetry layer under them, so each span has an OpenTelemetry span
//! context (exported over OTLP when `otel.endpoint` is set) and the
//! `traceparent` a span's messages carry names that span as their parent.
//! Where no such layer is installed (a test process that set up no
//! telemetry), [`child`] keeps the trace id with a new span id, so the
//! trace still holds together.
//!
//! - [`start`] (or the [`traced!`](crate::traced) macro) opens a span whose
//!   parent is a message's [`Carrier`];
//! - [`Traced::headers`] gives the headers a message published inside it
//!   carries;
//! - [`current_or`] is the context of the span running now, for code that
//!   publishes from inside a handler without a `Traced` at hand.
use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use protocol::names::headers;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// A random trace id (32 hex digits, never all zeros, which W3C forbids).
fn new_trace_id() -> String {
    format!("{:032x}", rand::random::<u128>().max(1))
}

/// A random span id (16 hex digits, never all zeros).
fn new_span_id() -> String {
    format!("{:016x}", rand::random::<u64>().max(1))
}

/// The parts of a valid `traceparent` (version 00): trace id, span id,
/// flags.
pub fn parse(traceparent: &str) -> Option<(&str, &str, &str)> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    (parts.next().is_none()
        && version == "00"
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && span.bytes().any(|b| b != b'0'))
    .then_some((trace, span, flags))
}

/// The trace id of a `traceparent`, if it is valid.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    parse(traceparent).map(|(trace, _, _)| trace)
}

/// A `traceparent` for work done because of `parent`: the same trace and
/// flags with a new span id; a new sampled trace when `parent` is missing
/// or malformed.
pub fn child(parent: Option<&str>) -> String {
    match parent.and_then(parse) {
        Some((trace, _, flags)) => format!("00-{trace}-{}-{flags}", new_span_id()),
        None => format!("00-{}-{}-01", new_trace_id(), new_span_id()),
    }
}

/// The `traceparent` of a message's headers, if any.
pub fn of(headers: Option<&HeaderMap>) -> Option<String> {
    headers
        .and_then(|h| h.get(headers::TRACEPARENT))
        .map(|v| v.as_str().to_owned())
}

/// Headers carrying `traceparent`.
pub fn headers(traceparent: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(headers::TRACEPARENT, traceparent);
    h
}

/// The trace context a message carries (or a record kept): `traceparent`
/// and, when there is one, `tracestate`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carrier {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl Carrier {
    /// The context of a message's headers (none when it has none).
    pub fn from_headers(headers: Option<&HeaderMap>) -> Self {
        let get = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
                .filter(|v| !v.is_empty())
        };
        Self {
            traceparent: get(headers::TRACEPARENT),
            tracestate: get(headers::TRACESTATE),
        }
    }

    /// A kept `traceparent` (a payment record's, a mail job's).
    pub fn from_traceparent(traceparent: Option<&str>) -> Self {
        Self {
            traceparent: traceparent.map(str::to_owned),
            tracestate: None,
        }
    }

    /// The trace id, if `traceparent` is valid.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref().and_then(trace_id)
    }

    /// Headers carrying this context (empty when there is none).
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        self.inject(&mut h);
        h
    }

    /// Adds this context to `headers`, replacing any there.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Some(tp) = &self.traceparent {
            headers.insert(headers::TRACEPARENT, tp.as_str());
            if let Some(ts) = &self.tracestate {
                headers.insert(headers::TRACESTATE, ts.as_str());
            }
        }
    }

    /// The OpenTelemetry context of a valid `traceparent` (remote parent).
    fn otel(&self) -> Option<opentelemetry::Context> {
        self.trace_id()?;
        let cx = TraceContextPropagator::new().extract(self);
        cx.span().span_context().is_valid().then_some(cx)
    }

    /// The context of an OpenTelemetry span context, if valid.
    fn of_otel(cx: &opentelemetry::Context) -> Option<Self> {
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = Self::default();
        TraceContextPropagator::new().inject_context(cx, &mut carrier);
        carrier.traceparent.is_some().then_some(carrier)
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            headers::TRACEPARENT => self.traceparent.as_deref(),
            headers::TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        vec![headers::TRACEPARENT, headers::TRACESTATE]
    }
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            headers::TRACEPARENT => self.traceparent = Some(value),
            headers::TRACESTATE if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

/// A span opened by [`start`], with the context its messages carry.
#[derive(Debug, Clone)]
pub struct Traced {
    span: tracing::Span,
    context: Carrier,
}

impl Traced {
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The context of this span: what a message published inside it carries.
    pub fn context(&self) -> &Carrier {
        &self.context
    }

    /// Its `traceparent`.
    pub fn traceparent(&self) -> &str {
        self.context.traceparent.as_deref().unwrap_or_default()
    }

    /// Its trace id.
    pub fn trace_id(&self) -> &str {
        self.context.trace_id().unwrap_or_default()
    }

    /// Headers for a message published inside this span.
    pub fn headers(&self) -> HeaderMap {
        self.context.headers()
    }
}

/// Opens `span` as a child of `parent` (a message's context), or as a new
/// trace's root when `parent` has none. The span must declare the empty
/// fields `trace_id` and `traceparent` ([`traced!`](crate::traced) does);
/// they are filled in here, so log records written inside it carry the
/// trace (`logship`).
///
/// With the OpenTelemetry layer installed ([`crate::telemetry`]) the span
/// gets its own OpenTelemetry span id and the returned context names it;
/// without it the context is [`child`] of `parent`.
pub fn start(span: tracing::Span, parent: &Carrier) -> Traced {
    if let Some(cx) = parent.otel() {
        // Err only when no OpenTelemetry layer is installed or the span
        // is disabled; the fallback below covers both.
        let _ = span.set_parent(cx);
    }
    let context = Carrier::of_otel(&span.context()).unwrap_or_else(|| Carrier {
        traceparent: Some(child(parent.traceparent.as_deref())),
        tracestate: parent.tracestate.clone(),
    });
    if let Some(tp) = &context.traceparent {
        span.record("traceparent", tp.as_str());
    }
    if let Some(id) = context.trace_id() {
        span.record("trace_id", id);
    }
    Traced { span, context }
}

tokio::task_local! {
    /// The context of the handler running in this task (without an
    /// OpenTelemetry layer, the only way to know it).
    static CURRENT: Carrier;
}

/// Runs `fut` (a request's or a message's handler, inside `traced`'s span)
/// with `traced` as the context [`current`] falls back to.
pub async fn scope<F: Future>(traced: Traced, fut: F) -> F::Output {
    CURRENT.scope(traced.context, fut).await
}

/// Runs `fut` (housekeeping: heartbeats, probes) in a new trace that is not
/// sampled (flags `00`): the requests it makes carry trace context, and
/// the spans they cause are not exported.
pub async fn unsampled<F: Future>(fut: F) -> F::Output {
    let (trace, span) = (new_trace_id(), new_span_id());
    let context = Carrier::from_traceparent(Some(&format!("00-{trace}-{span}-00")));
    CURRENT.scope(context, fut).await
}

/// The context of the span running now: its OpenTelemetry span context,
/// else that of the handler running in this task ([`scope`]).
pub fn current() -> Option<Carrier> {
    Carrier::of_otel(&tracing::Span::current().context())
        .or_else(|| CURRENT.try_with(Carrier::clone).ok())
}

/// [`current`], or `fallback` where there is none: for a publish made
/// because of something (a payment record's kept context).
pub fn current_or(fallback: &Carrier) -> Carrier {
    current().unwrap_or_else(|| fallback.clone())
}

/// Opens an info span continuing `parent` ([`start`]), with the fields
/// [`start`] fills in, an OpenTelemetry span kind, and any other fields:
///
/// ```ignore
/// let t = runtime::traced!("payment.process", &carrier, "consumer", payment_id = %id);
/// ```
#[macro_export]
macro_rules! traced {
    ($name:literal, $parent:expr, $kind:literal $(, $($fields:tt)*)?) => {
        $crate::trace::start(
            $crate::__tracing::info_span!(
                $name,
                trace_id = $crate::__tracing::field::Empty,
                traceparent = $crate::__tracing::field::Empty,
                otel.kind = $kind
                $(, $($fields)*)?
            ),
            $parent,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_keeps_the_trace_and_makes_a_new_span() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = child(Some(parent));
        let (trace, span, flags) = parse(&c).unwrap();
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(span, "00f067aa0ba902b7");
        assert_eq!(flags, "01");
        assert_ne!(child(Some(parent)), c, "span ids differ");
    }

    #[test]
    fn no_or_bad_parent_starts_a_new_trace() {
        for bad in [
            None,
            Some(""),
            Some("garbage"),
            Some("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"),
        ] {
            let c = child(bad);
            assert!(parse(&c).is_some(), "{bad:?} → {c}");
            assert!(c.ends_with("-01"));
            if let Some(b) = bad {
                assert_ne!(trace_id(&c), trace_id(b));
            }
        }
        assert_ne!(trace_id(&child(None)), trace_id(&child(None)));
    }

    #[test]
    fn without_an_otel_layer_a_span_continues_its_parent() {
        let parent = Carrier {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: Some("vendor=1".into()),
        };
        let t = crate::traced!("test", &parent, "internal");
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(t.traceparent(), parent.traceparent.as_deref().unwrap());
        let h = t.headers();
        assert_eq!(h.get(headers::TRACESTATE).unwrap().as_str(), "vendor=1");
        let root = crate::traced!("root", &Carrier::default(), "internal");
        assert!(parse(root.traceparent()).is_some());
        assert_ne!(root.trace_id(), t.trace_id());
    }

    #[tokio::test]
    async fn housekeeping_is_unsampled() {
        let tp = unsampled(async { current().and_then(|c| c.traceparent) })
            .await
            .unwrap();
        assert!(tp.ends_with("-00"), "{tp}");
        let child = crate::traced!("beat", &Carrier::from_traceparent(Some(&tp)), "client");
        assert!(child.traceparent().ends_with("-00"), "flags are kept");
        assert_eq!(current(), None, "outside it, nothing");
    }

    #[test]
    fn with_an_otel_layer_spans_nest_and_messages_name_their_span() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::prelude::*;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _guard = tracing::subscriber::set_default(subscriber);
        let parent = Carrier::from_traceparent(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        let outer = crate::traced!("outer", &parent, "consumer");
        assert_eq!(outer.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let (_, outer_span, _) = parse(outer.traceparent()).unwrap();
        let outer_span = outer_span.to_owned();
        let _entered = outer.span().clone().entered();
        // current_or inside the span: the span's own context.
        assert_eq!(current_or(&Carrier::default()), *outer.context());
        // A child of the running span, given as its parent.
        let inner = crate::traced!("inner", &current_or(&parent), "producer");
        assert_eq!(inner.trace_id(), outer.trace_id());
        assert_ne!(parse(inner.traceparent()).unwrap().1, outer_span);
    }
}
