//! `switchyard email send --to .. --subject .. --body .. [--at ..] [--key ..]`

use protocol::email::{EmailAccepted, EmailRequest};
use protocol::subjects;
use runtime::client::call;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub(crate) struct EmailArgs {
    #[command(subcommand)]
    command: EmailCommand,
}

#[derive(Debug, clap::Subcommand)]
enum EmailCommand {
    /// Queue a mail (durably) and print its id.
    Send {
        #[arg(long)]
        to: String,
        #[arg(long)]
        subject: String,
        #[arg(long)]
        body: String,
        /// When to send it (RFC 3339, e.g. 2026-11-23T18:00:00Z).
        #[arg(long)]
        at: Option<String>,
        /// Sending the same key again within the window sends once.
        #[arg(long)]
        key: Option<String>,
    },
}

pub(crate) async fn run(
    servers: &[String],
    timeout: Duration,
    args: EmailArgs,
) -> anyhow::Result<()> {
    let (_, client) = crate::connect(servers).await?;
    let EmailCommand::Send {
        to,
        subject,
        body,
        at,
        key,
    } = args.command;
    let request = EmailRequest {
        to,
        subject,
        body,
        send_at: at,
        idempotency_key: key,
    };
    let accepted: EmailAccepted = call(&client, subjects::EMAIL_SEND, &request, timeout).await?;
    match accepted.scheduled_for {
        Some(at) => crate::say(format_args!(
            "{}: accepted, scheduled for {at}",
            accepted.id
        )),
        None => crate::say(format_args!("{}: accepted, sending now", accepted.id)),
    }
    Ok(())
}
