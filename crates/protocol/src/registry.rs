//! `registry` messages.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `services.registry.register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RegisterRequest {
    pub name: String,
    pub instance_id: String,
    pub version: String,
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Heartbeats are due within this many seconds (default 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RegisterReply {
    pub ok: bool,
    pub ttl_s: u64,
}

/// `services.registry.heartbeat` and `services.registry.deregister`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InstanceRef {
    pub name: String,
    pub instance_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OkReply {
    pub ok: bool,
}

/// What KV bucket `registry` stores under `<name>.<instance_id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Registration {
    pub name: String,
    pub instance_id: String,
    pub version: String,
    pub endpoints: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub ttl_s: u64,
    pub registered_at: String,
    /// Unix milliseconds of the last register or heartbeat.
    pub last_seen_ms: u64,
}

/// One instance in a lookup reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InstanceInfo {
    pub instance_id: String,
    pub version: String,
    pub healthy: bool,
    /// RFC 3339.
    pub last_seen: String,
    pub endpoints: Vec<String>,
    pub metadata: BTreeMap<String, String>,
}

/// `services.registry.lookup.<name>` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LookupReply {
    pub name: String,
    pub instances: Vec<InstanceInfo>,
}

/// `services.registry.list` reply: healthy instances per service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ListReply {
    pub services: BTreeMap<String, u64>,
}

/// The longest service name or instance id, in bytes.
pub const TOKEN_MAX_LEN: usize = 128;

/// Whether `value` can be a service name or an instance id (each is a KV key
/// token): 1 to 128 characters of `A-Z a-z 0-9 _ -`.
pub fn valid_token(value: &str) -> bool {
    crate::token::check(value, TOKEN_MAX_LEN, crate::token::Charset::Safe).is_ok()
}

/// The KV key of an instance.
pub fn key(name: &str, instance_id: &str) -> String {
    format!("{name}.{instance_id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn register_defaults() {
        let r: RegisterRequest = serde_json::from_value(
            json!({"name": "math", "instance_id": "i1", "version": "0.1.0"}),
        )
        .unwrap();
        assert!(r.endpoints.is_empty() && r.metadata.is_empty() && r.ttl_s.is_none());
        assert_eq!(key("math", "i1"), "math.i1");
    }

    #[test]
    fn lookup_shape() {
        let l = LookupReply {
            name: "math".into(),
            instances: vec![],
        };
        assert_eq!(
            serde_json::to_value(&l).unwrap(),
            json!({"name": "math", "instances": []})
        );
    }
}
