//! A real OTLP/HTTP receiver for tests: `POST /v1/traces` with a protobuf
//! `ExportTraceServiceRequest` (decoded with the official proto types of
//! `opentelemetry-proto`), kept in memory so a test can look at whole
//! traces: which services' spans they hold and how they nest.
//!
//! It runs on its own thread with its own runtime, so synchronous tests
//! (which drive `switchyard up` as processes) can use it too; it stops when
//! dropped.

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

/// One received span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// The resource's `service.name`.
    pub service: String,
    /// OTLP `SpanKind` (1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    /// String forms of the span's attributes.
    pub attributes: BTreeMap<String, String>,
}

/// The receiver; stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    addr: std::net::SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// The spans of one export request.
pub fn decode(body: &[u8]) -> Result<Vec<Span>, prost::DecodeError> {
    let request = ExportTraceServiceRequest::decode(body)?;
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(Span {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    service: service.clone(),
                    kind: span.kind,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.clone(),
                                text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect(),
                });
            }
        }
    }
    Ok(spans)
}

impl Receiver {
    /// Listens on a free port of 127.0.0.1.
    pub fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let kept = spans.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let app = axum::Router::new().route(
                        "/v1/traces",
                        axum::routing::post(move |body: axum::body::Bytes| async move {
                            match decode(&body) {
                                Ok(mut new) => {
                                    kept.lock()
                                        .unwrap_or_else(PoisonError::into_inner)
                                        .append(&mut new);
                                    (
                                        axum::http::StatusCode::OK,
                                        [(
                                            axum::http::header::CONTENT_TYPE,
                                            "application/x-protobuf",
                                        )],
                                        ExportTraceServiceResponse::default().encode_to_vec(),
                                    )
                                }
                                Err(err) => (
                                    axum::http::StatusCode::BAD_REQUEST,
                                    [(axum::http::header::CONTENT_TYPE, "text/plain")],
                                    format!("not an ExportTraceServiceRequest: {err}").into_bytes(),
                                ),
                            }
                        }),
                    );
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })?;
        Ok(Self {
            addr,
            spans,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// What `otel.endpoint` should be (`SWITCHYARD__OTEL__ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The ancestors of `span` within `trace` (its parent first), as far as
/// they were received.
pub fn ancestors<'a>(trace: &'a [Span], span: &Span) -> Vec<&'a Span> {
    let mut found = Vec::new();
    let mut parent = span.parent_span_id.clone();
    while !parent.is_empty() {
        let Some(next) = trace.iter().find(|s| s.span_id == parent) else {
            break;
        };
        if found.iter().any(|s: &&Span| s.span_id == next.span_id) {
            break;
        }
        found.push(next);
        parent = next.parent_span_id.clone();
    }
    found
}

/// A trace as an indented tree: `service: name [span id]`, children under
/// their parents (spans whose parent was not received at the top).
pub fn render(trace: &[Span]) -> String {
    fn walk(trace: &[Span], span: &Span, depth: usize, out: &mut String) {
        let _ = writeln!(
            out,
            "{}{}: {} [{}]",
            "  ".repeat(depth),
            span.service,
            span.name,
            span.span_id
        );
        for child in trace.iter().filter(|s| s.parent_span_id == span.span_id) {
            walk(trace, child, depth + 1, out);
        }
    }
    let mut out = String::new();
    for top in trace
        .iter()
        .filter(|s| !trace.iter().any(|p| p.span_id == s.parent_span_id))
    {
        walk(trace, top, 0, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str) -> Span {
        Span {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            name: format!("s{id}"),
            service: "svc".into(),
            kind: 1,
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn ancestors_and_tree() {
        let trace = vec![
            span("1", ""),
            span("2", "1"),
            span("3", "2"),
            span("4", "9"),
        ];
        let names: Vec<&str> = ancestors(&trace, &trace[2])
            .iter()
            .map(|s| s.span_id.as_str())
            .collect();
        assert_eq!(names, ["2", "1"]);
        assert_eq!(
            render(&trace),
            "svc: s1 [1]\n  svc: s2 [2]\n    svc: s3 [3]\nsvc: s4 [4]\n"
        );
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(decode(b"\xff\xff\xff").is_err());
        assert_eq!(decode(b"").unwrap(), Vec::new());
    }
}
