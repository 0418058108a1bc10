//! JSON Schemas of the message types, written to `docs/schemas/` by
//! `switchyard schemas` (or `just schemas`). A test fails when the committed
//! files differ from what the code says, so the Python client, which checks
//! its messages against these files, cannot drift from the Rust types.

use schemars::{JsonSchema, schema_for};

/// `(file stem, schema)` for every message type of the contract.
pub fn all() -> Vec<(&'static str, serde_json::Value)> {
    fn entry<T: JsonSchema>(name: &'static str) -> (&'static str, serde_json::Value) {
        (name, schema_for!(T).to_value())
    }
    vec![
        entry::<crate::ErrorBody>("error"),
        entry::<crate::math::CalculateRequest>("math.calculate.request"),
        entry::<crate::math::OperandsRequest>("math.operands.request"),
        entry::<crate::math::CalculateReply>("math.reply"),
        entry::<crate::payment::PaymentRequest>("payment.request"),
        entry::<crate::payment::PaymentRecord>("payment.record"),
        entry::<crate::payment::PaymentIdRequest>("payment.id.request"),
        entry::<crate::payment::StatusReply>("payment.status.reply"),
        entry::<crate::payment::ReplayReply>("payment.replay.reply"),
        entry::<crate::payment::PaymentEvent>("payment.event"),
        entry::<crate::email::EmailRequest>("email.request"),
        entry::<crate::email::EmailAccepted>("email.accepted"),
        entry::<crate::email::EmailJob>("email.job"),
        entry::<crate::email::EmailEvent>("email.event"),
        entry::<crate::logs::LogRecord>("logs.record"),
        entry::<crate::logs::LogEntry>("logs.entry"),
        entry::<crate::logs::LogStats>("logs.stats.reply"),
        entry::<crate::logs::LogQuery>("logs.query.request"),
        entry::<crate::logs::LogQueryReply>("logs.query.reply"),
        entry::<crate::stocks::Tick>("stocks.tick"),
        entry::<crate::stocks::Snapshot>("stocks.snapshot.reply"),
        entry::<crate::stocks::Symbols>("stocks.symbols.reply"),
        entry::<crate::registry::RegisterRequest>("registry.register.request"),
        entry::<crate::registry::RegisterReply>("registry.register.reply"),
        entry::<crate::registry::InstanceRef>("registry.instance.request"),
        entry::<crate::registry::OkReply>("registry.ok.reply"),
        entry::<crate::registry::Registration>("registry.record"),
        entry::<crate::registry::LookupReply>("registry.lookup.reply"),
        entry::<crate::registry::ListReply>("registry.list.reply"),
        entry::<crate::micro::PingResponse>("micro.ping"),
        entry::<crate::micro::InfoResponse>("micro.info"),
        entry::<crate::micro::StatsResponse>("micro.stats"),
        entry::<crate::micro::Rejected>("event.rejected"),
    ]
}

/// The file contents for one schema: pretty JSON with a trailing newline.
pub fn render(schema: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn committed_schemas_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/schemas");
        let mut stale = Vec::new();
        for (name, schema) in all() {
            let path = dir.join(format!("{name}.json"));
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if committed != render(&schema) {
                stale.push(name);
            }
        }
        assert!(
            stale.is_empty(),
            "docs/schemas is stale for {stale:?}: run `just schemas` and commit the result"
        );
    }

    #[test]
    fn math_request_schema_lists_the_operations() {
        let (_, schema) = all()
            .into_iter()
            .find(|(n, _)| *n == "math.calculate.request")
            .unwrap();
        let ops = &schema["properties"]["operation"]["enum"];
        assert_eq!(ops.as_array().map(Vec::len), Some(7), "{schema:#}");
    }
}
