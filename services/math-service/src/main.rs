//! `math-service`: settings from defaults, `switchyard.toml` and
//! `SWITCHYARD__...` variables; see the crate docs for what it serves.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    runtime::main(protocol::names::services::MATH, math_service::run).await
}
