//! `email-notifier`: see the crate docs for what it does.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    runtime::main(
        protocol::names::services::EMAIL_NOTIFIER,
        email_notifier::run,
    )
    .await
}
