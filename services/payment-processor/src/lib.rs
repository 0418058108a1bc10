//! The payment processor: payments published on a replicated JetStream
//! stream are charged and completed exactly once.
//!
//! ```text
//! publish (Nats-Msg-Id = payment_id) ─▶ PAYMENTS (R3, work queue, dedup 2 min)
//!   ─▶ durable pull consumer `payment-processor` (shared by N instances)
//!       decode ──invalid──▶ PAYMENTS_DLQ (invalid_message), ack
//!       claim in KV `payments` (create / update with expected revision)
//!         ├─ already final ─▶ ack (a duplicate: no second effect)
//!         └─ claimed ─▶ rules ──reject──▶ failed + event, term
//!                       gateway.charge (idempotent by payment_id)
//!                         ├─ ok ─▶ completed in KV ─▶ events.payment.completed ─▶ ack
//!                         └─ error ─▶ pending + nak(backoff) … last delivery:
//!                                     PAYMENTS_DLQ (gateway_failed), failed + event, term
//! MAX_DELIVERIES advisory (server gave up) ─▶ PAYMENTS_DLQ (max_deliveries), failed
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
    let assets = assets::ensure(&app.jetstream, app.replicas(), &payments).await?;
    let state = Arc::new(Processor::new(&app, &assets, gateway, payments)?);
    let concurrency = state.settings.concurrency;
    app.service(VERSION, DESCRIPTION)
        .with_state(state)
        .endpoint("status", subjects::PAYMENT_STATUS, endpoints::status)
        .endpoint("replay", subjects::PAYMENT_REPLAY, endpoints::replay)
        .pull_worker("payments", assets.consumer, concurrency, worker::process)
        .task("max-deliveries advisories", move |state, stop| {
            advisories::follow(state, assets.payments, stop)
        })
        .serve()
        .await
}
