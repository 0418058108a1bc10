//! `registry`: see the crate docs for what it does.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    runtime::main(protocol::names::services::REGISTRY, registry::run).await
}
