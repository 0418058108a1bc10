//! The payment processor: payments published on a replicated JetStream
//! stream are charged and completed exactly once.
//!
//! ```text
//! publish (Nats-Msg-Id = payment_id) ─▶ PAYMENTS (R3, work queue, dedup 2 min)
//!   ─▶ durable pull consumer `payment-processor` (shared by N instances;
//!      fixed ack wait, progress acks while a payment runs)
//!       claim in KV `payments` (create / update at the read revision: the fencing token)
//!         ├─ final ─▶ ack (a duplicate: no second effect)
//!         ├─ claimed by a live delivery ─▶ nak until its lease runs out
//!         └─ claimed ─▶ rules ──reject──▶ failed + event, term
//!                       gateway.charge(idempotency key = <payment_id>.r<replay>)
//!                         ├─ ok ─▶ completed (CAS) ─▶ events.payment.completed ─▶ ack
//!                         └─ error ─▶ pending (CAS) + nak(backoff) … attempt max_attempts:
//!                                     void the key, failed + PAYMENTS_DLQ + event, term
//! MAX_DELIVERIES advisory ─▶ PAYMENTS_ADVISORIES ─▶ consumer `payment-advisories`
//!   ─▶ void the key, failed (max_deliveries) + DLQ + event, message removed
//! sweep (start-up and every minute): messages the server stopped delivering, the same way
//! ```
//! `services.payment.status` and `services.payment.replay` are micro endpoints.

mod advisories;
mod assets;
mod dlq;
mod endpoints;
pub mod gateway;
pub mod rules;
mod settings;
mod state;
mod store;
mod worker;

use gateway::{Gateway, Simulator};
use protocol::names::services;
use protocol::subjects;
use runtime::{App, CancellationToken, Settings};
pub use settings::PaymentSettings;
use state::Processor;
use std::sync::Arc;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const DESCRIPTION: &str = "Durable payments on JetStream, applied exactly once";

/// Advisories handled at once by this instance.
const ADVISORY_CONCURRENCY: usize = 4;

/// Runs the processor with the built-in gateway simulator.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let payments: PaymentSettings = settings.section("payments")?;
    let gateway = Arc::new(Simulator::new(&payments.gateway)?);
    run_with_gateway(settings, shutdown, gateway).await
}

/// Runs the processor with any gateway (tests pass a shared simulator).
pub async fn run_with_gateway(
    settings: Settings,
    shutdown: CancellationToken,
    gateway: Arc<dyn Gateway>,
) -> anyhow::Result<()> {
    let payments: PaymentSettings = settings.section("payments")?;
    payments.validate()?;
    let app = App::connect(services::PAYMENT_PROCESSOR, settings, shutdown).await?;
    let assets = assets::ensure(&app.jetstream, app.replicas(), app.assets(), &payments).await?;
    let state = Arc::new(Processor::new(&app, &assets, gateway, payments)?);
    let concurrency = state.settings.concurrency;
    app.service(VERSION, DESCRIPTION)
        .with_state(state)
        .endpoint("status", subjects::PAYMENT_STATUS, endpoints::status)
        .endpoint("replay", subjects::PAYMENT_REPLAY, endpoints::replay)
        .pull_worker("payments", assets.consumer, concurrency, worker::process)
        .pull_worker(
            "max-deliveries advisories",
            assets.advisories,
            ADVISORY_CONCURRENCY,
            advisories::handle,
        )
        .task("sweep", advisories::sweep)
        .serve()
        .await
}
