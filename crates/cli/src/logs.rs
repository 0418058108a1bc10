//! `switchyard logs tail|stats|query`

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use futures::StreamExt as _;
use protocol::logs::{LogQuery, LogQueryReply, LogRecord, LogStats};
use protocol::subjects::{self, LOG_LEVELS};
use runtime::client::call;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub(crate) struct LogsArgs {
    #[command(subcommand)]
    command: LogsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum LogsCommand {
    /// Follow log records as they are published (Ctrl-C stops).
    Tail {
        #[arg(long)]
        service: Option<String>,
        /// Only this level and more severe ones.
        #[arg(long)]
        level: Option<String>,
    },
    /// Cluster-wide counts of written records.
    Stats,
    /// Stored records from the LOGS stream, oldest first.
    Query {
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        level: Option<String>,
        /// RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only records of this trace (the id `switchyard pay` prints).
        #[arg(long)]
        trace: Option<String>,
    },
}

pub(crate) async fn run(
    servers: &[String],
    timeout: Duration,
    args: LogsArgs,
) -> anyhow::Result<()> {
    let (_, client) = crate::connect(servers).await?;
    match args.command {
        LogsCommand::Stats => {
            let stats: LogStats = call(
                &client,
                subjects::LOGS_STATS,
                &serde_json::json!({}),
                timeout,
            )
            .await?;
            crate::say(format_args!(
                "processed {} records ({} rejected)",
                stats.processed, stats.rejected
            ));
            let mut table = Table::new();
            table
                .load_preset(UTF8_FULL_CONDENSED)
                .set_header(["by", "key", "records"]);
            for (k, v) in &stats.by_service {
                table.add_row(["service", k.as_str(), &v.to_string()]);
            }
            for (k, v) in &stats.by_level {
                table.add_row(["level", k.as_str(), &v.to_string()]);
            }
            crate::say(format_args!("{table}"));
        }
        LogsCommand::Query {
            service,
            level,
            since,
            limit,
            trace,
        } => {
            let query = LogQuery {
                service,
                level,
                since,
                limit: Some(limit),
                trace_id: trace,
            };
            let reply: LogQueryReply = call(&client, subjects::LOGS_QUERY, &query, timeout).await?;
            for entry in reply.entries {
                print_record(&entry.record, Some(entry.seq));
            }
        }
        LogsCommand::Tail { service, level } => {
            let min = match &level {
                Some(l) => LOG_LEVELS.iter().position(|x| x == l).ok_or_else(|| {
                    anyhow::anyhow!(
                        "unknown level {l:?}: expected one of {}",
                        LOG_LEVELS.join(", ")
                    )
                })?,
                None => 0,
            };
            let subject = match &service {
                Some(s) => subjects::logs_of(s)?,
                None => subjects::LOGS_ALL.to_owned(),
            };
            let mut records = client.subscribe(subject).await?;
            let mut process = client.subscribe(subjects::LOGS_PROCESS).await?;
            loop {
                let message = tokio::select! {
                    m = records.next() => m,
                    m = process.next() => m,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                let Some(message) = message else {
                    return Ok(());
                };
                let Ok(record) = serde_json::from_slice::<LogRecord>(&message.payload) else {
                    continue;
                };
                let rank = LOG_LEVELS
                    .iter()
                    .position(|x| *x == record.level)
                    .unwrap_or(0);
                if rank >= min && service.as_ref().is_none_or(|s| *s == record.service) {
                    print_record(&record, None);
                }
            }
        }
    }
    Ok(())
}

fn print_record(r: &LogRecord, seq: Option<u64>) {
    let seq = seq.map(|s| format!("#{s} ")).unwrap_or_default();
    let fields = if r.fields.is_empty() {
        String::new()
    } else {
        format!(" {}", serde_json::Value::Object(r.fields.clone()))
    };
    crate::say(format_args!(
        "{seq}{} {:>5} {}: {}{fields}",
        r.ts,
        r.level.to_uppercase(),
        r.service,
        r.message
    ));
}
