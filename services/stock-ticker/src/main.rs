//! `stock-ticker`: see the crate docs for what it does.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    runtime::main(protocol::names::services::STOCK_TICKER, stock_ticker::run).await
}
