//! `switchyard status`: what `$SRV` discovery sees, one row per service.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use protocol::micro::{InfoResponse, PingResponse, StatsResponse, Verb};
use protocol::registry::ListReply;
use runtime::client::discover;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// How long to gather discovery replies.
    #[arg(long, default_value = "500ms", value_parser = runtime::time::parse_duration)]
    wait: Duration,
    /// Print the raw replies as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Default)]
struct Row {
    instances: BTreeSet<String>,
    versions: BTreeSet<String>,
    endpoints: usize,
    requests: u64,
    errors: u64,
}

pub(crate) async fn run(
    servers: &[String],
    _timeout: Duration,
    args: StatusArgs,
) -> anyhow::Result<()> {
    let (settings, client) = crate::connect(servers).await?;
    let registered: Option<ListReply> = runtime::client::call(
        &client,
        protocol::subjects::REGISTRY_LIST,
        &serde_json::json!({}),
        args.wait.max(Duration::from_secs(1)),
    )
    .await
    .ok();
    let (pings, infos, stats) = tokio::try_join!(
        discover::<PingResponse>(&client, Verb::Ping, None, args.wait),
        discover::<InfoResponse>(&client, Verb::Info, None, args.wait),
        discover::<StatsResponse>(&client, Verb::Stats, None, args.wait),
    )?;
    if args.json {
        let all = serde_json::json!({"ping": pings, "info": infos, "stats": stats, "registry": registered});
        crate::say(format_args!("{}", serde_json::to_string_pretty(&all)?));
        return Ok(());
    }
    if pings.is_empty() {
        crate::say(format_args!(
            "no services answered $SRV.PING on {}",
            settings.nats.urls.join(", ")
        ));
        return Ok(());
    }
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for p in &pings {
        let row = rows.entry(p.name.clone()).or_default();
        row.instances.insert(p.id.clone());
        row.versions.insert(p.version.clone());
    }
    for i in &infos {
        if let Some(row) = rows.get_mut(&i.name) {
            row.endpoints = row.endpoints.max(i.endpoints.len());
        }
    }
    for s in &stats {
        if let Some(row) = rows.get_mut(&s.name) {
            row.requests += s.endpoints.iter().map(|e| e.num_requests).sum::<u64>();
            row.errors += s.endpoints.iter().map(|e| e.num_errors).sum::<u64>();
        }
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "service",
        "instances",
        "registered (healthy)",
        "version",
        "endpoints",
        "requests",
        "errors",
    ]);
    for (name, row) in &rows {
        let healthy = match &registered {
            Some(list) => list
                .services
                .get(name)
                .map_or("0".to_owned(), u64::to_string),
            None => "- (no registry)".to_owned(),
        };
        table.add_row([
            name.clone(),
            row.instances.len().to_string(),
            healthy,
            row.versions.iter().cloned().collect::<Vec<_>>().join(", "),
            row.endpoints.to_string(),
            row.requests.to_string(),
            row.errors.to_string(),
        ]);
    }
    crate::say(format_args!("{table}"));
    Ok(())
}
