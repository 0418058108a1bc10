//! The NATS micro discovery protocol (ADR-32): the replies to `$SRV.PING`,
//! `$SRV.INFO` and `$SRV.STATS`, exactly as `nats micro ls|info|stats` reads
//! them. Decoding is lenient (missing fields default) so replies from other
//! implementations, such as async-nats's own, which omits `metadata` in
//! STATS, still decode.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const PING_RESPONSE_TYPE: &str = "io.nats.micro.v1.ping_response";
pub const INFO_RESPONSE_TYPE: &str = "io.nats.micro.v1.info_response";
pub const STATS_RESPONSE_TYPE: &str = "io.nats.micro.v1.stats_response";

/// The first token of every discovery subject.
pub const SRV_PREFIX: &str = "$SRV";
/// Every discovery subject (`$SRV.>`): what a service answers on, and what
/// the registry asks on.
pub const SRV_ALL: &str = "$SRV.>";

/// Key of an endpoint's `$SRV.STATS` `data`: how many requests it dropped
/// because their reply subject was not an inbox (`subjects::is_inbox`).
pub const REFUSED_REPLIES: &str = "refused_replies";

/// The `$SRV.STATS` endpoint `data` key holding its latency histogram:
/// one count per bucket of [`LATENCY_BUCKETS_SECONDS`] (a request taking
/// at most that long, and more than the bucket before), then one for
/// slower requests.
pub const LATENCY_BUCKETS: &str = "latency_buckets";
/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The bucket of [`LATENCY_BUCKETS_SECONDS`] a request of `seconds` falls
/// in (the last index, `LATENCY_BUCKETS_SECONDS.len()`, for slower ones).
pub fn latency_bucket(seconds: f64) -> usize {
    LATENCY_BUCKETS_SECONDS
        .iter()
        .position(|bound| seconds <= *bound)
        .unwrap_or(LATENCY_BUCKETS_SECONDS.len())
}

/// The three discovery verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Ping,
    Info,
    Stats,
}

impl Verb {
    pub const ALL: [Verb; 3] = [Verb::Ping, Verb::Info, Verb::Stats];

    pub const fn as_str(self) -> &'static str {
        match self {
            Verb::Ping => "PING",
            Verb::Info => "INFO",
            Verb::Stats => "STATS",
        }
    }

    /// The one builder of discovery subjects: `$SRV.<VERB>`,
    /// `$SRV.<VERB>.<name>` or `$SRV.<VERB>.<name>.<id>` (an `id` without a
    /// `name` is ignored: the protocol has no such subject).
    pub fn subject(self, name: Option<&str>, id: Option<&str>) -> String {
        let verb = self.as_str();
        match (name, id) {
            (None, _) => format!("{SRV_PREFIX}.{verb}"),
            (Some(name), None) => format!("{SRV_PREFIX}.{verb}.{name}"),
            (Some(name), Some(id)) => format!("{SRV_PREFIX}.{verb}.{name}.{id}"),
        }
    }

    /// The three subjects an instance answers: `$SRV.<VERB>`,
    /// `$SRV.<VERB>.<name>` and `$SRV.<VERB>.<name>.<id>`.
    pub fn subjects(self, name: &str, id: &str) -> [String; 3] {
        [
            self.subject(None, None),
            self.subject(Some(name), None),
            self.subject(Some(name), Some(id)),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PingResponse {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub id: String,
    pub version: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InfoResponse {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub id: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub endpoints: Vec<EndpointInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EndpointInfo {
    pub name: String,
    pub subject: String,
    #[serde(default)]
    pub queue_group: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatsResponse {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub id: String,
    pub version: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
    /// RFC 3339 time the instance started.
    #[serde(default)]
    pub started: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub endpoints: Vec<EndpointStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EndpointStats {
    pub name: String,
    pub subject: String,
    #[serde(default)]
    pub queue_group: String,
    #[serde(default)]
    pub num_requests: u64,
    #[serde(default)]
    pub num_errors: u64,
    /// Total processing time, nanoseconds.
    #[serde(default)]
    pub processing_time: u64,
    /// Average processing time, nanoseconds.
    #[serde(default)]
    pub average_processing_time: u64,
    /// `"<code>:<message>"` of the last error, or empty.
    #[serde(default)]
    pub last_error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A fire-and-forget request (published, no reply subject) that its service
/// refused: the error nobody could be told, as an event (e.g.
/// `events.email.rejected`).
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Rejected {
    /// The subject the request came on.
    pub subject: String,
    pub code: crate::ErrorCode,
    /// Why, as the error reply would have said.
    pub message: String,
    /// The request body (UTF-8, lossy), at most 1 KiB.
    pub body: String,
    /// The body was longer than what `body` keeps.
    pub truncated: bool,
    /// RFC 3339.
    pub at: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn verb_subjects() {
        assert_eq!(
            Verb::Ping.subjects("math", "ID1"),
            [
                "$SRV.PING".to_owned(),
                "$SRV.PING.math".to_owned(),
                "$SRV.PING.math.ID1".to_owned()
            ]
        );
        assert_eq!(Verb::Stats.subject(None, Some("x")), "$SRV.STATS");
        assert_eq!(Verb::Info.subject(Some("math"), None), "$SRV.INFO.math");
    }

    #[test]
    fn decodes_an_async_nats_stats_reply_without_metadata() {
        // Shape of async-nats 0.51's reply: no metadata, nanosecond durations.
        let raw = json!({
            "type": STATS_RESPONSE_TYPE, "name": "math", "id": "X", "version": "0.1.0",
            "started": "2026-11-23T10:00:00Z",
            "endpoints": [{"name": "add", "subject": "services.math.add", "queue_group": "q",
                "num_requests": 3, "num_errors": 1, "processing_time": 1200,
                "average_processing_time": 400, "last_error": "422:overflow"}]
        });
        let stats: StatsResponse = serde_json::from_value(raw).unwrap();
        assert!(stats.metadata.is_empty());
        assert_eq!(stats.endpoints[0].num_errors, 1);
    }

    #[test]
    fn ping_round_trip_and_null_metadata() {
        let ping: PingResponse = serde_json::from_value(json!({
            "type": PING_RESPONSE_TYPE, "name": "math", "id": "X", "version": "1.0.0", "metadata": null
        }))
        .unwrap();
        let back: PingResponse =
            serde_json::from_slice(&serde_json::to_vec(&ping).unwrap()).unwrap();
        assert_eq!(back, ping);
    }
}
