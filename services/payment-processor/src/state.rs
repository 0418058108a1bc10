//! The processor's state, shared by the worker, the endpoints and the
//! advisory handler.

use crate::PaymentSettings;
use crate::assets::Assets;
use crate::dlq::Dlq;
use crate::gateway::Gateway;
use crate::rules::Rules;
use crate::store::{Lease, Store};
use async_nats::jetstream::{self, consumer, stream};
use protocol::payment::{PaymentEvent, PaymentRecord, PaymentStatus};
use protocol::subjects;
use runtime::App;
use std::sync::Arc;
use std::time::Duration;

/// Everything a payment needs, shared by the worker, the endpoints and the
/// advisory handler.
#[derive(Debug)]
pub(crate) struct Processor {
    pub(crate) js: jetstream::Context,
    /// The work queue, for reading back messages the server gave up on.
    pub(crate) payments: stream::Stream,
    /// The processors' shared consumer, for the sweep's look at it.
    pub(crate) consumer: consumer::PullConsumer,
    pub(crate) store: Store,
    pub(crate) dlq: Dlq,
    pub(crate) rules: Rules,
    pub(crate) gateway: Arc<dyn Gateway>,
    pub(crate) settings: PaymentSettings,
}

impl Processor {
    pub(crate) fn new(
        app: &App,
        assets: &Assets,
        gateway: Arc<dyn Gateway>,
        settings: PaymentSettings,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            js: app.jetstream.clone(),
            payments: assets.payments.clone(),
            consumer: assets.consumer.clone(),
            store: Store::new(
                assets.kv.clone(),
                Duration::from_millis(settings.infra_retry_ms),
            ),
            dlq: Dlq::new(app.jetstream.clone()),
            rules: settings.rules()?,
            gateway,
            settings,
        })
    }

    /// How long infrastructure calls are retried.
    pub(crate) fn budget(&self) -> Duration {
        Duration::from_millis(self.settings.infra_retry_ms)
    }

    pub(crate) fn gateway_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.gateway_timeout_ms)
    }

    /// How long a claim holds against every other delivery (the charge's
    /// own bound plus a second for its writes), and the clock margin added
    /// when another instance's claim is judged.
    pub(crate) fn lease(&self) -> Lease {
        Lease {
            hold: self.gateway_timeout() + Duration::from_secs(1),
            clock_margin: Duration::from_millis(self.settings.clock_margin_ms),
        }
    }

    /// `events.payment.<status>` with `Nats-Msg-Id: <id>.<status>` (plus
    /// `.r<n>` for replay n), so publishing it again is a no-op.
    pub(crate) async fn publish_event(&self, record: &PaymentRecord) -> anyhow::Result<()> {
        let subject = match record.status {
            PaymentStatus::Completed => subjects::EVENT_PAYMENT_COMPLETED,
            PaymentStatus::Failed => subjects::EVENT_PAYMENT_FAILED,
            PaymentStatus::Pending | PaymentStatus::Processing => return Ok(()),
        };
        let mut msg_id = format!("{}.{}", record.payment_id, record.status);
        if record.replays > 0 {
            msg_id.push_str(&format!(".r{}", record.replays));
        }
        let event = PaymentEvent {
            payment_id: record.payment_id.clone(),
            user_id: record.user_id.clone(),
            amount: record.amount.clone(),
            currency: record.currency.clone(),
            email: record.email.clone(),
            status: record.status,
            reason: record.reason.clone(),
            at: record.updated_at.clone(),
        };
        let body = serde_json::to_vec(&event)?;
        // The event continues the payment's trace: the span handling it now,
        // else (a sweep, an advisory) the context its record kept. So does
        // the log line, through its `trace_id` field.
        let kept = runtime::trace::Carrier::from_traceparent(record.traceparent.as_deref());
        let headers = kept.headers();
        tracing::info!(
            payment_id = %record.payment_id,
            status = %record.status,
            trace_id = kept.trace_id().unwrap_or_default(),
            "payment event published"
        );
        runtime::js::publish_durable(
            &self.js,
            subject,
            &msg_id,
            Some(&headers),
            body.into(),
            self.budget(),
        )
        .await?;
        Ok(())
    }
}
