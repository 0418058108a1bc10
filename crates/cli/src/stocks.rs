//! `switchyard stocks watch [SYMBOL..]` and `switchyard stocks history SYMBOL`.

use async_nats::jetstream::{self, consumer};
use comfy_table::{Cell, Color, Table, presets::UTF8_FULL_CONDENSED};
use crossterm::{cursor, execute, terminal};
use futures::StreamExt as _;
use protocol::stocks::{Snapshot, Tick};
use protocol::{names::streams, subjects};
use runtime::client::call;
use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal as _;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, clap::Args)]
pub(crate) struct StocksArgs {
    #[command(subcommand)]
    command: StocksCommand,
}

#[derive(Debug, clap::Subcommand)]
enum StocksCommand {
    /// A live table of prices (Ctrl-C stops). No symbols: all of them.
    Watch { symbols: Vec<String> },
    /// Stored ticks of one symbol, oldest first.
    History {
        symbol: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

pub(crate) async fn run(
    servers: &[String],
    timeout: Duration,
    args: StocksArgs,
) -> anyhow::Result<()> {
    let (_, client) = crate::connect(servers).await?;
    match args.command {
        StocksCommand::Watch { symbols } => watch(&client, timeout, &symbols).await,
        StocksCommand::History { symbol, limit } => history(&client, &symbol, limit).await,
    }
}

async fn watch(
    client: &async_nats::Client,
    timeout: Duration,
    symbols: &[String],
) -> anyhow::Result<()> {
    let mut subs = Vec::new();
    if symbols.is_empty() {
        subs.push(client.subscribe(subjects::STOCKS_ALL).await?);
    } else {
        for s in symbols {
            subs.push(client.subscribe(subjects::stock(s)?).await?);
        }
    }
    let mut ticks = futures::stream::select_all(subs);
    // Start from the last prices, then follow.
    let mut last: BTreeMap<String, (Tick, u64)> = BTreeMap::new();
    if let Ok(snap) = call::<_, Snapshot>(
        client,
        subjects::STOCKS_SNAPSHOT,
        &serde_json::json!({}),
        timeout,
    )
    .await
    {
        for (symbol, tick) in snap.prices {
            if symbols.is_empty() || symbols.contains(&symbol) {
                last.insert(symbol, (tick, 0));
            }
        }
    }
    let tty = std::io::stdout().is_terminal();
    let mut next_draw = Instant::now();
    loop {
        let message = tokio::select! {
            m = ticks.next() => m,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(message) = message else {
            return Ok(());
        };
        if let Ok(tick) = serde_json::from_slice::<Tick>(&message.payload) {
            let count = last.get(&tick.symbol).map_or(0, |(_, n)| n + 1);
            last.insert(tick.symbol.clone(), (tick, count));
        }
        // Redraw at most 5 times a second.
        if Instant::now() >= next_draw {
            draw(&last, tty)?;
            next_draw = Instant::now() + Duration::from_millis(200);
        }
    }
}

fn draw(last: &BTreeMap<String, (Tick, u64)>, tty: bool) -> anyhow::Result<()> {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "symbol",
        "price",
        "change",
        "seq",
        "ticks seen",
        "at",
    ]);
    for (symbol, (tick, seen)) in last {
        let color = if tick.change.starts_with('-') {
            Color::Red
        } else {
            Color::Green
        };
        table.add_row(vec![
            Cell::new(symbol),
            Cell::new(&tick.price),
            Cell::new(&tick.change).fg(color),
            Cell::new(tick.seq),
            Cell::new(seen),
            Cell::new(&tick.ts),
        ]);
    }
    if tty {
        execute!(
            std::io::stdout(),
            cursor::MoveTo(0, 0),
            terminal::Clear(terminal::ClearType::All)
        )?;
    }
    crate::say(format_args!("{table}\nCtrl-C stops"));
    Ok(())
}

async fn history(client: &async_nats::Client, symbol: &str, limit: usize) -> anyhow::Result<()> {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(streams::STOCKS).await?;
    let reader = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subjects::stock(symbol)?,
            ..Default::default()
        })
        .await?;
    if reader.cached_info().num_pending == 0 {
        crate::say(format_args!("no ticks stored for {symbol}"));
        return Ok(());
    }
    let mut ring: VecDeque<Tick> = VecDeque::with_capacity(limit);
    let mut messages = reader.messages().await?;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(2), messages.next()).await
    {
        let pending = m.info().map(|i| i.pending).unwrap_or(0);
        if let Ok(tick) = serde_json::from_slice::<Tick>(&m.payload) {
            if ring.len() == limit {
                ring.pop_front();
            }
            ring.push_back(tick);
        }
        if pending == 0 {
            break;
        }
    }
    for t in ring {
        crate::say(format_args!(
            "#{:<6} {}  {:>10} {:>8}",
            t.seq, t.ts, t.price, t.change
        ));
    }
    Ok(())
}
