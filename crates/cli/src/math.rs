//! `switchyard math <op> <a> [b]`

use protocol::math::{CalculateReply, CalculateRequest};
use runtime::client::call;
use std::time::Duration;

#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true)]
pub(crate) struct MathArgs {
    /// add, subtract, multiply, divide, power, sqrt or mod.
    operation: String,
    a: f64,
    /// Second operand (all but sqrt).
    b: Option<f64>,
}

pub(crate) async fn run(
    servers: &[String],
    timeout: Duration,
    args: MathArgs,
) -> anyhow::Result<()> {
    let (_, client) = crate::connect(servers).await?;
    let request = CalculateRequest {
        operation: args.operation,
        a: args.a,
        b: args.b,
    };
    let reply: CalculateReply = call(
        &client,
        protocol::subjects::MATH_CALCULATE,
        &request,
        timeout,
    )
    .await?;
    crate::say(format_args!("{}", reply.result));
    Ok(())
}
