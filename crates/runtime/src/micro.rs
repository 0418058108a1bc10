//! NATS micro services (ADR-32) with the contract's error replies.
//!
//! Why not `async_nats::service`: its error reply has an empty body, while the
//! contract requires the `Nats-Service-Error*` headers AND a JSON body. Sending
//! the body through its success path would leave `num_errors` at zero in
//! `$SRV.STATS`. So this module speaks the same discovery protocol (the wire
//! shapes live in `protocol::micro`, checked against async-nats's replies in
//! tests) and adds what the contract needs: typed handlers, JSON error bodies,
//! a payload limit, maintenance mode, bounded concurrency, panics caught, and a
//! shutdown that drains instead of dropping requests.

use async_nats::{Client, HeaderMap, Message, Subscriber};
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _, future::BoxFuture};
use protocol::micro::{
    EndpointInfo, EndpointStats, INFO_RESPONSE_TYPE, InfoResponse, PING_RESPONSE_TYPE,
    PingResponse, REFUSED_REPLIES, STATS_RESPONSE_TYPE, StatsResponse, Verb,
};
use protocol::names::headers;
use protocol::{ErrorCode, ServiceError};
use serde::{Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

type Handler =
    Arc<dyn Fn(String, Bytes) -> BoxFuture<'static, Result<Bytes, ServiceError>> + Send + Sync>;

/// Decodes a JSON object request body, mapping every failure to
/// `invalid_request` with a message that says what was wrong. (serde would
/// also accept a JSON array for a struct; every request of the contract is an
/// object, so anything else is refused.) An empty body counts as `{}`, so
/// requests without required fields need no body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ServiceError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        // An endpoint whose request has no required field takes no body.
        None => {
            return serde_json::from_slice(b"{}").map_err(|_| {
                ServiceError::invalid_request("empty request body: expected a JSON object")
            });
        }
        Some(b'{') => {}
        Some(_) if serde_json::from_slice::<serde_json::Value>(body).is_ok() => {
            return Err(ServiceError::invalid_request(
                "invalid request: expected a JSON object",
            ));
        }
        Some(_) => {}
    }
    serde_json::from_slice(body).map_err(|err| {
        use serde_json::error::Category;
        let what = match err.classify() {
            Category::Syntax | Category::Eof => "malformed JSON",
            Category::Data | Category::Io => "invalid request",
        };
        ServiceError::invalid_request(format!("{what}: {err}"))
    })
}

struct EndpointDef {
    name: String,
    subject: String,
    queue_group: String,
    handler: Handler,
}

/// Builds a micro service: a name, a version, endpoints, then [`start`](Self::start).
pub struct ServiceBuilder {
    client: Client,
    name: String,
    id: Option<String>,
    version: String,
    description: String,
    queue_group: String,
    metadata: BTreeMap<String, String>,
    max_payload: usize,
    max_in_flight: usize,
    maintenance: Option<watch::Receiver<bool>>,
    endpoints: Vec<EndpointDef>,
    registration: Option<crate::registration::RegistrationSettings>,
    rejections: Option<String>,
}

impl std::fmt::Debug for ServiceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBuilder")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("endpoints", &self.endpoints.len())
            .finish_non_exhaustive()
    }
}

impl ServiceBuilder {
    pub fn new(client: Client, name: impl Into<String>, version: impl Into<String>) -> Self {
        let defaults = crate::settings::ServiceSettings::default();
        Self {
            client,
            name: name.into(),
            id: None,
            version: version.into(),
            description: String::new(),
            queue_group: protocol::names::queue_groups::MICRO_DEFAULT.to_owned(),
            metadata: BTreeMap::new(),
            max_payload: defaults.max_payload,
            max_in_flight: defaults.max_in_flight,
            maintenance: None,
            endpoints: Vec::new(),
            registration: None,
            rejections: None,
        }
    }

    /// Where a refused fire-and-forget request (no reply subject, so no one
    /// to answer) is reported: a [`protocol::micro::Rejected`] event on
    /// `subject` (e.g. `events.email.rejected`), besides the warn log line
    /// every such refusal gets.
    pub fn rejections_to(mut self, subject: impl Into<String>) -> Self {
        self.rejections = Some(subject.into());
        self
    }

    /// The instance id (default: a fresh NUID).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// The queue group of endpoints added after this call.
    pub fn queue_group(mut self, queue_group: impl Into<String>) -> Self {
        self.queue_group = queue_group.into();
        self
    }

    pub fn metadata(mut self, metadata: BTreeMap<String, String>) -> Self {
        self.metadata.extend(metadata);
        self
    }

    /// Largest body an endpoint accepts; larger ones get 413 `too_large`.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Requests handled at once per endpoint.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// While the receiver reads `true`, endpoints answer 503 `maintenance`.
    pub fn maintenance(mut self, flag: watch::Receiver<bool>) -> Self {
        self.maintenance = Some(flag);
        self
    }

    /// Adds an endpoint: JSON in, JSON out, errors as the contract says.
    pub fn endpoint<Req, Resp, F, Fut>(
        self,
        name: impl Into<String>,
        subject: impl Into<String>,
        handler: F,
    ) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ServiceError>> + Send + 'static,
    {
        self.endpoint_with_subject(name, subject, move |_subject: String, req: Req| {
            handler(req)
        })
    }

    /// Like [`endpoint`](Self::endpoint), and the handler also gets the
    /// subject the request came on (for wildcard endpoints).
    pub fn endpoint_with_subject<Req, Resp, F, Fut>(
        mut self,
        name: impl Into<String>,
        subject: impl Into<String>,
        handler: F,
    ) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
        F: Fn(String, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ServiceError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: Handler = Arc::new(move |subject: String, body: Bytes| {
            let handler = handler.clone();
            async move {
                let request: Req = decode(&body)?;
                let response = handler(subject, request).await?;
                serde_json::to_vec(&response)
                    .map(Bytes::from)
                    .map_err(|err| ServiceError::internal(format!("encoding the reply: {err}")))
            }
            .boxed()
        });
        self.endpoints.push(EndpointDef {
            name: name.into(),
            subject: subject.into(),
            queue_group: self.queue_group.clone(),
            handler: erased,
        });
        self
    }

    /// Registers the service with the registry and heartbeats while it runs.
    pub fn register(mut self, settings: crate::registration::RegistrationSettings) -> Self {
        self.registration = Some(settings);
        self
    }

    /// Subscribes every endpoint and the `$SRV` discovery subjects.
    pub async fn start(self) -> anyhow::Result<Service> {
        anyhow::ensure!(
            !self.name.is_empty()
                && self
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "service name {:?} may only use A-Z, a-z, 0-9, '-' and '_'",
            self.name
        );
        let id = self.id.clone().unwrap_or_else(|| nuid::next().to_string());
        let started = crate::time::now_rfc3339();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let stats: Arc<Mutex<Vec<EndpointStats>>> = Arc::new(Mutex::new(
            self.endpoints
                .iter()
                .map(|ep| EndpointStats {
                    name: ep.name.clone(),
                    subject: ep.subject.clone(),
                    queue_group: ep.queue_group.clone(),
                    num_requests: 0,
                    num_errors: 0,
                    processing_time: 0,
                    average_processing_time: 0,
                    last_error: String::new(),
                    data: None,
                })
                .collect(),
        ));
        let info = InfoResponse {
            kind: INFO_RESPONSE_TYPE.to_owned(),
            name: self.name.clone(),
            id: id.clone(),
            version: self.version.clone(),
            description: self.description.clone(),
            metadata: self.metadata.clone(),
            endpoints: self
                .endpoints
                .iter()
                .map(|ep| EndpointInfo {
                    name: ep.name.clone(),
                    subject: ep.subject.clone(),
                    queue_group: ep.queue_group.clone(),
                    metadata: BTreeMap::new(),
                })
                .collect(),
        };

        let mut loops = Vec::with_capacity(self.endpoints.len());
        for (index, ep) in self.endpoints.into_iter().enumerate() {
            let subscriber = self
                .client
                .queue_subscribe(ep.subject.clone(), ep.queue_group.clone())
                .await?;
            let ctx = Arc::new(EndpointCtx {
                client: self.client.clone(),
                index,
                handler: ep.handler,
                max_payload: self.max_payload,
                maintenance: self.maintenance.clone(),
                stats: stats.clone(),
                rejections: self.rejections.clone(),
            });
            loops.push(tokio::spawn(endpoint_loop(
                subscriber,
                ctx,
                stop.clone(),
                tracker.clone(),
                Arc::new(Semaphore::new(self.max_in_flight)),
            )));
        }

        let mut verbs = Vec::new();
        for verb in Verb::ALL {
            for subject in verb.subjects(&self.name, &id) {
                let sub = self.client.subscribe(subject).await?;
                verbs.push(sub.map(move |msg| (verb, msg)).boxed());
            }
        }
        let registration = self.registration.map(|settings| {
            crate::registration::Registration::start(self.client.clone(), &info, settings)
        });
        let discovery = tokio::spawn(discovery_loop(
            futures::stream::select_all(verbs),
            self.client.clone(),
            info,
            started,
            stats,
        ));
        // Make sure the server has our subscriptions before callers go on.
        if tokio::time::timeout(Duration::from_secs(5), self.client.flush())
            .await
            .is_err()
        {
            tracing::warn!(
                "flush after subscribing timed out; the server will get them on reconnect"
            );
        }
        tracing::info!(service = %self.name, %id, version = %self.version, "micro service started");
        Ok(Service {
            name: self.name,
            id,
            stop,
            tracker,
            loops,
            discovery,
            registration,
        })
    }
}

/// A running micro service. Stop it with [`Service::shutdown`].
#[derive(Debug)]
pub struct Service {
    name: String,
    id: String,
    stop: CancellationToken,
    tracker: TaskTracker,
    loops: Vec<JoinHandle<()>>,
    discovery: JoinHandle<()>,
    registration: Option<crate::registration::Registration>,
}

impl Service {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instance id `$SRV` replies carry.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stops taking new requests (the endpoint subscriptions are drained, so
    /// requests already delivered to us are still handled), waits up to
    /// `grace` for in-flight requests to be answered, then stops answering
    /// discovery. Returns false if the grace period ran out.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        // Leave the registry first, so nobody is sent here any more.
        if let Some(registration) = self.registration {
            registration.deregister().await;
        }
        self.stop.cancel();
        for handle in self.loops {
            let abort = handle.abort_handle();
            if tokio::time::timeout_at(deadline, handle).await.is_err() {
                abort.abort();
            }
        }
        self.tracker.close();
        let finished = tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_ok();
        if !finished {
            tracing::warn!(service = %self.name, ?grace, "in-flight requests still running after the grace period");
        }
        self.discovery.abort();
        finished
    }
}

struct EndpointCtx {
    client: Client,
    index: usize,
    handler: Handler,
    max_payload: usize,
    maintenance: Option<watch::Receiver<bool>>,
    stats: Arc<Mutex<Vec<EndpointStats>>>,
    rejections: Option<String>,
}

/// How much of a refused fire-and-forget body its event keeps.
const REJECTED_BODY_MAX: usize = 1024;

/// A fire-and-forget request was refused: nobody hears the error reply, so
/// say it in the log (warn) and, when configured, as an event.
async fn report_unanswered(ctx: &EndpointCtx, message: &Message, err: &ServiceError) {
    tracing::warn!(
        subject = %message.subject,
        code = %err.code,
        error = %err.message,
        "fire-and-forget request refused (no reply subject: the sender gets no error)"
    );
    let Some(events) = &ctx.rejections else {
        return;
    };
    let end = message.payload.len().min(REJECTED_BODY_MAX);
    let event = protocol::micro::Rejected {
        subject: message.subject.to_string(),
        code: err.code,
        message: err.message.clone(),
        body: String::from_utf8_lossy(&message.payload[..end]).into_owned(),
        truncated: message.payload.len() > end,
        at: crate::time::now_rfc3339(),
    };
    // The rejection continues the refused request's trace.
    let traceparent = crate::trace::child(
        crate::trace::Carrier::from_headers(message.headers.as_ref())
            .traceparent
            .as_deref(),
    );
    let sent = match serde_json::to_vec(&event) {
        Ok(body) => {
            ctx.client
                .publish_with_headers(
                    events.clone(),
                    crate::trace::headers(&traceparent),
                    body.into(),
                )
                .await
        }
        Err(e) => {
            tracing::warn!(error = %e, "encoding a rejection event");
            return;
        }
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, subject = %events, "could not publish a rejection event");
    }
}

async fn endpoint_loop(
    mut subscriber: Subscriber,
    ctx: Arc<EndpointCtx>,
    stop: CancellationToken,
    tracker: TaskTracker,
    permits: Arc<Semaphore>,
) {
    let mut draining = false;
    loop {
        let next = if draining {
            subscriber.next().await
        } else {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    // Unsubscribe, but still take what the server already sent us.
                    if let Err(err) = subscriber.drain().await {
                        tracing::warn!(error = %err, "draining an endpoint subscription failed");
                        return;
                    }
                    draining = true;
                    continue;
                }
                next = subscriber.next() => next,
            }
        };
        let Some(message) = next else { return };
        // Backpressure: with max_in_flight handlers running, wait here.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let ctx = ctx.clone();
        tracker.spawn(async move {
            handle(&ctx, message).await;
            drop(permit);
        });
    }
}

/// Refuses a request whose reply subject is not an inbox
/// ([`protocol::subjects::is_inbox`]): answering it would make this service
/// publish wherever the requester pointed (`events.payment.completed`, say).
/// Returns true when refused; it is logged (once per reply subject, see
/// [`warn_refused`]) and counted in the endpoint's `$SRV.STATS` data.
fn refuse_reply(ctx: &EndpointCtx, message: &Message) -> bool {
    let Some(reply) = &message.reply else {
        return false;
    };
    if protocol::subjects::is_inbox(reply) {
        return false;
    }
    warn_refused(reply, &message.subject);
    if let Ok(mut stats) = ctx.stats.lock()
        && let Some(s) = stats.get_mut(ctx.index)
    {
        let refused = refused_replies(s).saturating_add(1);
        data_of(s).insert(REFUSED_REPLIES.to_owned(), refused.into());
    }
    true
}

/// The endpoint's `data` object, made one if it is not.
fn data_of(stats: &mut EndpointStats) -> &mut serde_json::Map<String, serde_json::Value> {
    if !matches!(stats.data, Some(serde_json::Value::Object(_))) {
        stats.data = Some(serde_json::Value::Object(serde_json::Map::new()));
    }
    match stats.data.as_mut() {
        Some(serde_json::Value::Object(map)) => map,
        // Made an object just above.
        _ => unreachable!("data is an object"),
    }
}

/// Counts one request of `seconds` in the endpoint's latency histogram
/// ([`protocol::micro::LATENCY_BUCKETS`]).
fn observe_latency(stats: &mut EndpointStats, seconds: f64) {
    let n = protocol::micro::LATENCY_BUCKETS_SECONDS.len() + 1;
    let data = data_of(stats);
    let buckets = data
        .entry(protocol::micro::LATENCY_BUCKETS)
        .or_insert_with(|| serde_json::Value::Array(vec![0.into(); n]));
    if let serde_json::Value::Array(counts) = buckets
        && let Some(slot) = counts.get_mut(protocol::micro::latency_bucket(seconds))
    {
        *slot = (slot.as_u64().unwrap_or(0) + 1).into();
    }
}

/// How many requests of this endpoint were refused for a reply subject
/// that is not an inbox.
pub fn refused_replies(stats: &EndpointStats) -> u64 {
    stats
        .data
        .as_ref()
        .and_then(|d| d.get(REFUSED_REPLIES))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// Reply subjects a refusal was logged for; past this many, only every
/// [`REFUSAL_LOG_EVERY`]th refusal is logged.
const REFUSAL_LOG_SUBJECTS: usize = 1024;
const REFUSAL_LOG_EVERY: u64 = 1000;

/// Logs a refused reply subject once per subject (bounded, then sampled),
/// so a requester cannot flood the logs.
fn warn_refused(reply: &str, subject: &str) {
    static SEEN: std::sync::LazyLock<Mutex<(std::collections::HashSet<String>, u64)>> =
        std::sync::LazyLock::new(|| Mutex::new((std::collections::HashSet::new(), 0)));
    let log = match SEEN.lock() {
        Ok(mut seen) => {
            let (subjects, past_cap) = &mut *seen;
            if subjects.contains(reply) {
                false
            } else if subjects.len() < REFUSAL_LOG_SUBJECTS {
                subjects.insert(reply.to_owned());
                true
            } else {
                *past_cap += 1;
                *past_cap % REFUSAL_LOG_EVERY == 1
            }
        }
        Err(_) => true,
    };
    if log {
        tracing::warn!(
            %subject,
            %reply,
            "request dropped: its reply subject is not an inbox (_INBOX. or _INBOX_<user>.)"
        );
    }
}

async fn handle(ctx: &EndpointCtx, message: Message) {
    if refuse_reply(ctx, &message) {
        return;
    }
    let started = Instant::now();
    let result = if message.payload.len() > ctx.max_payload {
        Err(ServiceError::new(
            ErrorCode::TooLarge,
            format!(
                "request body is {} bytes; this endpoint accepts at most {}",
                message.payload.len(),
                ctx.max_payload
            ),
        ))
    } else if ctx.maintenance.as_ref().is_some_and(|flag| *flag.borrow()) {
        Err(ServiceError::new(
            ErrorCode::Maintenance,
            "the site is in maintenance mode; try again later",
        ))
    } else {
        let payload = message.payload.clone();
        let subject = message.subject.to_string();
        // One span per request, child of the caller's trace context: the
        // logs of its handling carry its trace (`logship`), and what the
        // handler publishes continues it (`trace::current`).
        let traced = crate::traced!(
            "request",
            &crate::trace::Carrier::from_headers(message.headers.as_ref()),
            "server",
            otel.name = %format!("handle {}", message.subject),
            subject = %message.subject,
        );
        let span = traced.span().clone();
        AssertUnwindSafe(
            crate::trace::scope(traced, async { (ctx.handler)(subject, payload).await })
                .instrument(span),
        )
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            tracing::error!(subject = %message.subject, "handler panicked");
            Err(ServiceError::internal("the handler failed unexpectedly"))
        })
    };
    if let Some(reply) = &message.reply {
        let mut reply_headers = HeaderMap::new();
        if let Some(tp) = message
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::TRACEPARENT))
        {
            reply_headers.insert(headers::TRACEPARENT, tp.clone());
        }
        let sent = match &result {
            Ok(body) if reply_headers.is_empty() => {
                ctx.client.publish(reply.clone(), body.clone()).await
            }
            Ok(body) => {
                ctx.client
                    .publish_with_headers(reply.clone(), reply_headers, body.clone())
                    .await
            }
            Err(err) => {
                let (headers, body) = error_reply(err, reply_headers);
                ctx.client
                    .publish_with_headers(reply.clone(), headers, body)
                    .await
            }
        };
        if let Err(err) = sent {
            tracing::warn!(error = %err, "could not send a reply");
        }
    }
    if let (None, Err(err)) = (&message.reply, &result)
        && err.code != ErrorCode::Internal
    {
        report_unanswered(ctx, &message, err).await;
    }
    if let Err(err) = &result {
        let level_is_error = err.code == ErrorCode::Internal;
        if level_is_error {
            tracing::error!(subject = %message.subject, error = %err, "request failed");
        } else {
            tracing::debug!(subject = %message.subject, error = %err, "request refused");
        }
    }
    let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    if let Ok(mut stats) = ctx.stats.lock()
        && let Some(s) = stats.get_mut(ctx.index)
    {
        s.num_requests += 1;
        observe_latency(s, started.elapsed().as_secs_f64());
        s.processing_time = s.processing_time.saturating_add(elapsed);
        s.average_processing_time = s.processing_time / s.num_requests;
        if let Err(err) = &result {
            s.num_errors += 1;
            s.last_error = format!("{}:{}", err.status(), err.message);
        }
    }
}

/// The request of an endpoint that takes no fields (an empty body or `{}`).
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
pub struct NoInput {}

/// `text` made fit for a header value: control characters (line breaks
/// above all) become spaces.
pub fn header_value(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Headers (`Nats-Service-Error`, `Nats-Service-Error-Code`) and JSON body
/// of an error reply.
pub fn error_reply(err: &ServiceError, mut headers: HeaderMap) -> (HeaderMap, Bytes) {
    headers.insert(headers::SERVICE_ERROR, header_value(&err.message).as_str());
    headers.insert(
        headers::SERVICE_ERROR_CODE,
        err.status().to_string().as_str(),
    );
    let body = serde_json::to_vec(&err.body()).unwrap_or_default();
    (headers, Bytes::from(body))
}

async fn discovery_loop(
    mut requests: futures::stream::SelectAll<futures::stream::BoxStream<'static, (Verb, Message)>>,
    client: Client,
    info: InfoResponse,
    started: String,
    stats: Arc<Mutex<Vec<EndpointStats>>>,
) {
    let ping = PingResponse {
        kind: PING_RESPONSE_TYPE.to_owned(),
        name: info.name.clone(),
        id: info.id.clone(),
        version: info.version.clone(),
        metadata: info.metadata.clone(),
    };
    while let Some((verb, message)) = requests.next().await {
        let Some(reply) = message.reply else { continue };
        if !protocol::subjects::is_inbox(&reply) {
            warn_refused(&reply, &message.subject);
            continue;
        }
        let body = match verb {
            Verb::Ping => serde_json::to_vec(&ping),
            Verb::Info => serde_json::to_vec(&info),
            Verb::Stats => {
                let endpoints = stats.lock().map(|s| s.clone()).unwrap_or_default();
                serde_json::to_vec(&StatsResponse {
                    kind: STATS_RESPONSE_TYPE.to_owned(),
                    name: info.name.clone(),
                    id: info.id.clone(),
                    version: info.version.clone(),
                    metadata: info.metadata.clone(),
                    started: started.clone(),
                    endpoints,
                })
            }
        };
        match body {
            Ok(body) => {
                if let Err(err) = client.publish(reply, body.into()).await {
                    tracing::warn!(error = %err, "could not answer a discovery request");
                }
            }
            Err(err) => tracing::error!(error = %err, "could not encode a discovery reply"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::math::OperandsRequest;

    #[test]
    fn an_empty_body_is_an_empty_object_where_that_is_valid() {
        #[derive(serde::Deserialize)]
        struct NoFields {
            #[serde(default)]
            _x: Option<u8>,
        }
        assert!(decode::<NoFields>(b"").is_ok());
        assert!(decode::<NoFields>(b"  ").is_ok());
    }

    #[test]
    fn decode_classifies_failures() {
        let msg = |body: &[u8]| decode::<OperandsRequest>(body).unwrap_err().message;
        assert!(msg(b"").starts_with("empty request body"));
        assert!(msg(b"  \n").starts_with("empty request body"));
        assert!(msg(b"{\"a\":").starts_with("malformed JSON"));
        assert!(msg(b"not json").starts_with("malformed JSON"));
        assert!(msg(b"{\"b\":1}").contains("missing field `a`"));
        assert!(msg(b"{\"a\":\"x\"}").contains("invalid type"));
        assert!(msg(b"[1,2]").starts_with("invalid request"));
        assert!(msg(&[0xff, 0x00]).starts_with("malformed JSON"));
        for body in [&b""[..], b"{", b"{\"a\":1e999}"] {
            assert_eq!(
                decode::<OperandsRequest>(body).unwrap_err().code,
                ErrorCode::InvalidRequest
            );
        }
    }

    #[test]
    fn error_reply_has_headers_and_json_body() {
        let err = ServiceError::new(ErrorCode::DivisionByZero, "cannot divide\r\nby zero");
        let (h, body) = error_reply(&err, HeaderMap::new());
        assert_eq!(
            h.get(headers::SERVICE_ERROR).map(|v| v.as_str()),
            Some("cannot divide  by zero")
        );
        assert_eq!(
            h.get(headers::SERVICE_ERROR_CODE).map(|v| v.as_str()),
            Some("422")
        );
        assert_eq!(
            ServiceError::from_body(&body).map(|e| e.code),
            Some(ErrorCode::DivisionByZero)
        );
    }
}
