//! W3C trace context (`traceparent`), carried from the message a service
//! handles to every message it publishes because of it, so a payment → its
//! event → the receipt mail → the mail's event share one trace id.
//!
//! `traceparent` is `00-<32 hex trace id>-<16 hex parent span id>-<2 hex
//! flags>`. [`child`] keeps the trace id and makes a new span id; a missing
//! or malformed parent starts a new trace (sampled).

use async_nats::HeaderMap;
use protocol::names::headers;

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
}
