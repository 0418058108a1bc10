//! `log-worker`: see the crate docs for what it does.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    runtime::main(protocol::names::services::LOG_WORKER, log_worker::run).await
}
