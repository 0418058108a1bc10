//! The `math` micro service: `services.math.calculate` and one endpoint per
//! operation (`services.math.add`, ...), in the micro default queue group so
//! instances share the load.

use protocol::ServiceError;
use protocol::math::{CalculateReply, CalculateRequest, OperandsRequest, Operation};
use protocol::names::services;
use protocol::subjects;
use runtime::{App, CancellationToken, Settings};
use serde::Deserialize;
use std::time::Duration;

mod calc;
pub use calc::calculate;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const DESCRIPTION: &str =
    "Arithmetic over request-reply: add, subtract, multiply, divide, power, sqrt, mod";

/// `[math]` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MathSettings {
    /// Artificial latency added to every answer, for demos of load balancing
    /// and graceful shutdown (`SWITCHYARD__MATH__DELAY_MS`). Default 0.
    pub delay_ms: u64,
}

/// Runs the service until `shutdown` fires, then finishes in-flight
/// requests and drains the connection.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let math: MathSettings = settings.section("math")?;
    let delay = Duration::from_millis(math.delay_ms);
    let app = App::connect(services::MATH, settings, shutdown).await?;
    let mut service = app
        .service(VERSION, DESCRIPTION)
        .with_state(delay)
        .endpoint("calculate", subjects::MATH_CALCULATE, calculate_named);
    for op in Operation::ALL {
        service = service.endpoint(
            op.as_str(),
            &subjects::math_operation(op),
            move |delay, req: OperandsRequest| async move {
                pause(delay).await;
                calculate(op, req.a, req.b)
            },
        );
    }
    service.serve().await
}

/// `services.math.calculate`: the operation is named in the request.
async fn calculate_named(
    delay: Duration,
    req: CalculateRequest,
) -> Result<CalculateReply, ServiceError> {
    pause(delay).await;
    let op = Operation::parse(&req.operation).ok_or_else(|| unknown(&req.operation))?;
    calculate(op, req.a, req.b)
}

async fn pause(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

fn unknown(name: &str) -> ServiceError {
    let known: Vec<&str> = Operation::ALL.iter().map(|op| op.as_str()).collect();
    ServiceError::new(
        protocol::ErrorCode::UnknownOperation,
        format!(
            "unknown operation {name:?}; expected one of {}",
            known.join(", ")
        ),
    )
}
