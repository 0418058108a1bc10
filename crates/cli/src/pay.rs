//! `switchyard pay <user> <amount>`, `pay status <id>`, `pay dlq`, `pay replay <id>`.

use anyhow::Context as _;
use async_nats::jetstream;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use protocol::payment::{PaymentRequest, PaymentStatus, ReplayReply, StatusReply, dlq_headers};
use protocol::{names::streams, subjects};
use runtime::client::{CallError, call};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    allow_negative_numbers = true
)]
pub(crate) struct PayArgs {
    #[command(subcommand)]
    command: Option<PayCommand>,
    /// Who pays.
    #[arg(required = true)]
    user: Option<String>,
    /// A decimal amount such as 99.99.
    #[arg(required = true)]
    amount: Option<String>,
    #[arg(long, default_value = "USD")]
    currency: String,
    /// The payment id (default: a new random one). Publishing the same id
    /// twice has one effect.
    #[arg(long)]
    id: Option<String>,
    /// Where the receipt goes.
    #[arg(long)]
    email: Option<String>,
    #[arg(long)]
    subscription: Option<String>,
    /// Only publish; do not wait for the outcome.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Debug, clap::Subcommand)]
enum PayCommand {
    /// Show a payment's status.
    Status { id: String },
    /// List the dead-letter queue (newest last).
    Dlq {
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Queue a failed (or dead-lettered) payment again.
    Replay { id: String },
}

pub(crate) async fn run(
    servers: &[String],
    timeout: Duration,
    args: PayArgs,
) -> anyhow::Result<()> {
    // Dead letters and replays are operations: `admin`.
    let role = match args.command {
        Some(PayCommand::Dlq { .. } | PayCommand::Replay { .. }) => crate::Role::Admin,
        _ => crate::Role::Client,
    };
    let (_, client) = crate::connect_as(servers, role).await?;
    match args.command {
        Some(PayCommand::Status { id }) => {
            let status: StatusReply = call(
                &client,
                subjects::PAYMENT_STATUS,
                &serde_json::json!({"payment_id": id}),
                timeout,
            )
            .await?;
            print_status(&status);
        }
        Some(PayCommand::Replay { id }) => {
            let reply: ReplayReply = call(
                &client,
                subjects::PAYMENT_REPLAY,
                &serde_json::json!({"payment_id": id}),
                timeout,
            )
            .await?;
            crate::say(format_args!(
                "{}: replay {} queued ({})",
                reply.payment_id, reply.replay, reply.status
            ));
        }
        Some(PayCommand::Dlq { limit }) => list_dlq(&client, limit).await?,
        None => {
            let (Some(user), Some(amount)) = (args.user, args.amount) else {
                anyhow::bail!("usage: switchyard pay <user> <amount>");
            };
            let request = PaymentRequest {
                payment_id: args.id.unwrap_or_else(|| format!("pay-{}", nuid_like())),
                user_id: user,
                subscription_id: args.subscription,
                amount,
                currency: args.currency,
                email: args.email,
            };
            let js = jetstream::new(client.clone());
            let body = serde_json::to_vec(&request)?;
            // The command's trace: the payment, its event and receipt continue it.
            let trace_id = runtime::trace::current()
                .and_then(|c| c.trace_id().map(str::to_owned))
                .unwrap_or_default();
            let ack = runtime::js::publish_durable(&js, subjects::PAYMENT_PROCESS, &request.payment_id, None, body.into(), timeout)
                .await
                .context("the PAYMENTS stream did not acknowledge the payment (is payment-processor running?)")?;
            crate::say(format_args!(
                "{}: published to {} seq {} (trace {trace_id}){}",
                request.payment_id,
                ack.stream,
                ack.sequence,
                if ack.duplicate {
                    " (duplicate: already published)"
                } else {
                    ""
                }
            ));
            if !args.no_wait {
                let status = wait_final(
                    &client,
                    &request.payment_id,
                    timeout.max(Duration::from_secs(10)),
                )
                .await?;
                print_status(&status);
            }
        }
    }
    Ok(())
}

/// A random id (NUIDs are A-Z a-z 0-9, which payment ids allow).
fn nuid_like() -> String {
    nuid::next().to_string()
}

async fn wait_final(
    client: &async_nats::Client,
    id: &str,
    within: Duration,
) -> anyhow::Result<StatusReply> {
    let deadline = Instant::now() + within;
    loop {
        match call::<_, StatusReply>(
            client,
            subjects::PAYMENT_STATUS,
            &serde_json::json!({"payment_id": id}),
            Duration::from_secs(2),
        )
        .await
        {
            Ok(s) if s.status.is_final() => return Ok(s),
            Ok(_) | Err(CallError::Service(_)) if Instant::now() < deadline => {}
            Ok(s) => return Ok(s),
            Err(err) => return Err(err.into()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_status(s: &StatusReply) {
    let mark = match s.status {
        PaymentStatus::Completed => "✔",
        PaymentStatus::Failed => "✘",
        PaymentStatus::Pending | PaymentStatus::Processing => "…",
    };
    crate::say(format_args!(
        "{mark} {} {}: {} {} for {} (attempts {}, replays {}, updated {}){}",
        s.payment_id,
        s.status,
        s.amount,
        s.currency,
        s.user_id,
        s.attempts,
        s.replays,
        s.updated_at,
        s.reason
            .as_deref()
            .map(|r| format!(" — {r}"))
            .unwrap_or_default()
    ));
}

async fn list_dlq(client: &async_nats::Client, limit: u64) -> anyhow::Result<()> {
    let js = jetstream::new(client.clone());
    let mut stream = js
        .get_stream(streams::PAYMENTS_DLQ)
        .await
        .context("no PAYMENTS_DLQ stream yet")?;
    let state = stream.info().await?.state.clone();
    if state.messages == 0 {
        crate::say(format_args!("the payments DLQ is empty"));
        return Ok(());
    }
    let first = state
        .first_sequence
        .max(state.last_sequence.saturating_sub(limit.saturating_sub(1)));
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "seq",
        "payment",
        "reason",
        "deliveries",
        "error",
        "body",
    ]);
    for seq in first..=state.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let h = |name: &str| {
            m.headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        let body = String::from_utf8_lossy(&m.payload);
        let body: String = body.chars().take(60).collect();
        table.add_row([
            seq.to_string(),
            h(dlq_headers::PAYMENT_ID),
            h(dlq_headers::REASON),
            h(dlq_headers::DELIVERIES),
            h(dlq_headers::ERROR),
            body,
        ]);
    }
    crate::say(format_args!("{table}"));
    Ok(())
}
