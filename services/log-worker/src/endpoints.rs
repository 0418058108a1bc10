//! `services.logs.stats` and `services.logs.query`.

use crate::LogWorker;
use crate::records::{self, Line};
use async_nats::jetstream::{consumer, stream};
use futures::StreamExt as _;
use protocol::logs::{LogEntry, LogQuery, LogQueryReply, LogStats, TRACE_ID_FIELD, valid_service};
use protocol::subjects::{self, LOG_LEVELS};
use protocol::{ErrorCode, ServiceError};
use runtime::micro::NoInput;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub(crate) async fn stats(state: Arc<LogWorker>, _: NoInput) -> Result<LogStats, ServiceError> {
    state.stats.read().await.map_err(|e| {
        ServiceError::new(
            ErrorCode::Unavailable,
            format!("log stats unavailable: {e:#}"),
        )
    })
}

pub(crate) async fn query(
    state: Arc<LogWorker>,
    query: LogQuery,
) -> Result<LogQueryReply, ServiceError> {
    run_query(&state.stream, query).await
}

/// The checked query: stream filter, body filters, start, limit.
#[derive(Debug, PartialEq)]
pub(crate) struct Plan {
    pub(crate) filters: Vec<String>,
    pub(crate) service: Option<String>,
    pub(crate) level: Option<String>,
    pub(crate) since: Option<OffsetDateTime>,
    pub(crate) limit: usize,
    pub(crate) trace_id: Option<String>,
}

pub(crate) fn plan(query: LogQuery) -> Result<Plan, ServiceError> {
    if let Some(service) = &query.service
        && !valid_service(service)
    {
        return Err(ServiceError::invalid_request(format!(
            "service {service:?} must be 1 to 64 characters of A-Z a-z 0-9 _ -"
        )));
    }
    if let Some(level) = &query.level
        && !LOG_LEVELS.contains(&level.as_str())
    {
        return Err(ServiceError::invalid_request(format!(
            "unknown level {level:?}: expected one of {}",
            LOG_LEVELS.join(", ")
        )));
    }
    let since = match &query.since {
        Some(raw) => Some(OffsetDateTime::parse(raw, &Rfc3339).map_err(|e| {
            ServiceError::invalid_request(format!("since {raw:?} is not an RFC 3339 time: {e}"))
        })?),
        None => None,
    };
    if let Some(trace) = &query.trace_id
        && !(trace.len() == 32
            && trace
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    {
        return Err(ServiceError::invalid_request(format!(
            "trace_id {trace:?} must be 32 lower-case hex digits (a W3C trace id)"
        )));
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ServiceError::invalid_request(format!(
            "limit must be 1 to {MAX_LIMIT}, not {limit}"
        )));
    }
    let filters = match (&query.service, &query.level) {
        (None, None) => vec![subjects::LOGS_ALL.to_owned()],
        (service, level) => vec![
            subjects::logs_filter(service.as_deref(), level.as_deref())
                .map_err(|e| ServiceError::invalid_request(e.to_string()))?,
            // logs.process records are filtered by their body below.
            subjects::LOGS_PROCESS.to_owned(),
        ],
    };
    Ok(Plan {
        filters,
        service: query.service,
        level: query.level,
        since,
        limit,
        trace_id: query.trace_id,
    })
}

async fn run_query(
    stream: &stream::Stream,
    query: LogQuery,
) -> Result<LogQueryReply, ServiceError> {
    let plan = plan(query)?;
    let unavailable =
        |e: String| ServiceError::new(ErrorCode::Unavailable, format!("reading LOGS: {e}"));
    let mut config = consumer::pull::OrderedConfig {
        ..Default::default()
    };
    if plan.filters.len() == 1 {
        config.filter_subject = plan.filters[0].clone();
    } else {
        config.filter_subjects = plan.filters.clone();
    }
    if let Some(since) = plan.since {
        config.deliver_policy = consumer::DeliverPolicy::ByStartTime { start_time: since };
    }
    let mut reader = stream
        .create_consumer(config)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let mut entries: VecDeque<LogEntry> = VecDeque::with_capacity(plan.limit);
    if reader
        .info()
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .num_pending
        == 0
    {
        return Ok(LogQueryReply {
            entries: Vec::new(),
        });
    }
    let mut messages = reader
        .messages()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(2), messages.next()).await
    {
        let Ok(info) = message.info() else { break };
        let (seq, pending) = (info.stream_sequence, info.pending);
        let traceparent = runtime::trace::of(message.headers.as_ref());
        if let Line::Record { record, .. } = records::line_for(
            &message.subject,
            seq,
            &message.payload,
            traceparent.as_deref(),
        ) && plan.service.as_ref().is_none_or(|s| *s == record.service)
            && plan.level.as_ref().is_none_or(|l| *l == record.level)
            && plan.trace_id.as_ref().is_none_or(|t| {
                record.fields.get(TRACE_ID_FIELD).and_then(|v| v.as_str()) == Some(t.as_str())
            })
        {
            if entries.len() == plan.limit {
                entries.pop_front();
            }
            entries.push_back(LogEntry { record, seq });
        }
        if pending == 0 {
            break;
        }
    }
    Ok(LogQueryReply {
        entries: entries.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        let p = plan(LogQuery::default()).unwrap();
        assert_eq!((p.filters, p.limit), (vec!["logs.>".to_owned()], 100));
        let p = plan(LogQuery {
            service: Some("math".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.filters, ["logs.math.*", "logs.process"]);
        let p = plan(LogQuery {
            level: Some("warn".into()),
            limit: Some(5),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((p.filters[0].as_str(), p.limit), ("logs.*.warn", 5));
        for bad in [
            LogQuery {
                level: Some("loud".into()),
                ..Default::default()
            },
            LogQuery {
                service: Some("a.b".into()),
                ..Default::default()
            },
            LogQuery {
                since: Some("yesterday".into()),
                ..Default::default()
            },
            LogQuery {
                limit: Some(0),
                ..Default::default()
            },
            LogQuery {
                limit: Some(1001),
                ..Default::default()
            },
        ] {
            assert_eq!(plan(bad).unwrap_err().code, ErrorCode::InvalidRequest);
        }
    }
}
