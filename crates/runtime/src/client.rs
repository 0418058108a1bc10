//! The calling side of the contract, for the CLI, tests and Rust clients:
//! typed requests whose error replies come back as [`ServiceError`], and
//! `$SRV` discovery that gathers every instance's answer.

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt as _;
use protocol::micro::Verb;
use protocol::names::headers;
use protocol::{ErrorCode, ServiceError};
use serde::{Serialize, de::DeserializeOwned};
use std::time::Duration;
use tokio::time::Instant;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The service answered with an error reply.
    #[error("{0}")]
    Service(ServiceError),
    #[error("no service is listening on {0}")]
    NoResponders(String),
    /// The server refuses messages this big (its `max_payload`).
    #[error("request on {subject} is larger than the server accepts ({max} bytes)")]
    PayloadTooLarge { subject: String, max: usize },
    #[error("no reply on {subject} within {timeout:?}")]
    Timeout { subject: String, timeout: Duration },
    #[error("request on {subject} failed: {message}")]
    Transport { subject: String, message: String },
    #[error("reply on {subject} is not what the contract says: {message}")]
    BadReply { subject: String, message: String },
}

impl CallError {
    /// The service's error code, if the service answered.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Service(err) => Some(err.code),
            _ => None,
        }
    }
}

/// A reply as it came: headers and body.
#[derive(Debug, Clone)]
pub struct RawReply {
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

impl RawReply {
    /// The error this reply carries (headers first, JSON body for the code).
    pub fn error(&self) -> Option<ServiceError> {
        let headers = self.headers.as_ref()?;
        let status = headers.get(headers::SERVICE_ERROR_CODE)?;
        if let Some(err) = ServiceError::from_body(&self.payload) {
            return Some(err);
        }
        let message = headers
            .get(headers::SERVICE_ERROR)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let code = status
            .as_str()
            .parse()
            .map_or(ErrorCode::Internal, ErrorCode::for_status);
        Some(ServiceError::new(code, message))
    }
}

/// Sends `body` as a request and returns the reply, error or not.
pub async fn request_raw(
    client: &Client,
    subject: &str,
    request_headers: Option<HeaderMap>,
    body: Bytes,
    timeout: Duration,
) -> Result<RawReply, CallError> {
    // Every request carries a trace context: the caller's own, else the
    // span running now, else a new trace.
    let mut h = request_headers.unwrap_or_default();
    if h.get(protocol::names::headers::TRACEPARENT).is_none() {
        crate::trace::current()
            .unwrap_or_else(|| {
                crate::trace::Carrier::from_traceparent(Some(&crate::trace::child(None)))
            })
            .inject(&mut h);
    }
    let request = async_nats::Request::new()
        .payload(body)
        .timeout(Some(timeout))
        .headers(h);
    let sent = tokio::time::timeout(
        timeout + Duration::from_millis(250),
        client.send_request(subject.to_owned(), request),
    )
    .await;
    let timed_out = || CallError::Timeout {
        subject: subject.to_owned(),
        timeout,
    };
    match sent {
        Err(_) => Err(timed_out()),
        Ok(Ok(message)) => Ok(RawReply {
            headers: message.headers,
            payload: message.payload,
        }),
        Ok(Err(err)) => Err(match err.kind() {
            async_nats::RequestErrorKind::NoResponders => {
                CallError::NoResponders(subject.to_owned())
            }
            async_nats::RequestErrorKind::TimedOut => timed_out(),
            async_nats::RequestErrorKind::MaxPayloadExceeded => CallError::PayloadTooLarge {
                subject: subject.to_owned(),
                max: client.server_info().max_payload,
            },
            _ => CallError::Transport {
                subject: subject.to_owned(),
                message: err.to_string(),
            },
        }),
    }
}

/// A typed request: JSON in, JSON out, error replies as [`CallError::Service`].
pub async fn call<Req, Resp>(
    client: &Client,
    subject: &str,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, CallError>
where
    Req: Serialize + ?Sized,
    Resp: DeserializeOwned,
{
    let body = serde_json::to_vec(request).map_err(|err| CallError::Transport {
        subject: subject.to_owned(),
        message: format!("encoding the request: {err}"),
    })?;
    let reply = request_raw(client, subject, None, body.into(), timeout).await?;
    if let Some(err) = reply.error() {
        return Err(CallError::Service(err));
    }
    serde_json::from_slice(&reply.payload).map_err(|err| CallError::BadReply {
        subject: subject.to_owned(),
        message: err.to_string(),
    })
}

/// Asks `$SRV.<verb>[.<name>]` and gathers every reply that arrives within
/// `wait`. Replies that do not decode as `T` are skipped.
pub async fn discover<T: DeserializeOwned>(
    client: &Client,
    verb: Verb,
    name: Option<&str>,
    wait: Duration,
) -> anyhow::Result<Vec<T>> {
    gather(client, verb.subject(name, None), Bytes::new(), wait).await
}

/// Publishes `body` to `subject` with one inbox as reply-to and gathers every
/// reply that arrives within `wait`: for subjects that many answer (`$SRV`
/// pings, `$SYS.REQ.SERVER.PING.*`). Replies that do not decode as `T` are
/// skipped.
pub async fn gather<T: DeserializeOwned>(
    client: &Client,
    subject: String,
    body: Bytes,
    wait: Duration,
) -> anyhow::Result<Vec<T>> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client.publish_with_reply(subject, inbox, body).await?;
    client.flush().await?;
    let deadline = Instant::now() + wait;
    let mut found = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await {
        if let Ok(value) = serde_json::from_slice(&message.payload) {
            found.push(value);
        }
    }
    Ok(found)
}
