//! The load: payments published with `Nats-Msg-Id` = payment id and
//! retried (same id) until the stream acknowledges them; emails sent
//! with an idempotency key and retried (same key) until accepted. Only
//! what was acknowledged counts: it is what the checker holds the system to.

use crate::Options;
use async_nats::jetstream;
use protocol::email::EmailAccepted;
use protocol::payment::PaymentRequest;
use protocol::subjects;
use rand::{Rng as _, SeedableRng as _};
use runtime::CancellationToken;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long one publish or request waits for its answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long after the load ends an unanswered one keeps being retried.
const RETRY_AFTER_END: Duration = Duration::from_secs(60);
/// Publishes and requests in flight at once.
const IN_FLIGHT: usize = 64;

/// What the system acknowledged.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Payments the stream acknowledged, by id.
    pub(crate) payments: BTreeMap<String, PaymentRequest>,
    /// Payments published but never acknowledged (not held against anyone).
    pub(crate) unacked_payments: usize,
    /// Emails accepted: id → recipient.
    pub(crate) emails: BTreeMap<String, String>,
    pub(crate) unaccepted_emails: usize,
}

#[derive(Debug)]
pub(crate) struct Load {
    tasks: JoinSet<()>,
    outcome: Arc<Mutex<Outcome>>,
    stop: CancellationToken,
}

impl Load {
    pub(crate) fn start(client: &async_nats::Client, opts: &Options) -> Self {
        let outcome = Arc::new(Mutex::new(Outcome::default()));
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(payments(
            client.clone(),
            opts.clone(),
            outcome.clone(),
            stop.clone(),
        ));
        tasks.spawn(emails(
            client.clone(),
            opts.clone(),
            outcome.clone(),
            stop.clone(),
        ));
        Self {
            tasks,
            outcome,
            stop,
        }
    }

    /// Stops generating, waits for what is in flight, returns what was
    /// acknowledged.
    pub(crate) async fn finish(mut self) -> Outcome {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        std::mem::take(&mut *self.outcome.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn payment(seed: u64, n: u64, rng: &mut rand::rngs::StdRng) -> PaymentRequest {
    // One in twenty over the limit (a rule rejection: failed, never charged).
    let amount = if n % 20 == 7 {
        "20000.00".to_owned()
    } else {
        format!(
            "{}.{:02}",
            rng.random_range(1..500),
            rng.random_range(0..100)
        )
    };
    PaymentRequest {
        payment_id: format!("chaos-{seed:x}-{n:05}"),
        user_id: format!("user-{}", n % 17),
        subscription_id: None,
        amount,
        currency: "USD".into(),
        // Every other one gets a receipt.
        email: n
            .is_multiple_of(2)
            .then(|| format!("buyer{n}@shop.example")),
    }
}

async fn payments(
    client: async_nats::Client,
    opts: Options,
    outcome: Arc<Mutex<Outcome>>,
    stop: CancellationToken,
) {
    let js = jetstream::new(client);
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let every = Duration::from_secs(1) / opts.payments_per_sec.max(1);
    let end = Instant::now() + opts.duration;
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut inflight = JoinSet::new();
    let mut n = 0;
    while Instant::now() < end && !stop.is_cancelled() {
        let req = payment(opts.seed, n, &mut rng);
        n += 1;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (js, outcome) = (js.clone(), outcome.clone());
        inflight.spawn(async move {
            let acked = publish_until_acked(&js, &req, end + RETRY_AFTER_END).await;
            let mut outcome = outcome.lock().unwrap_or_else(|p| p.into_inner());
            if acked {
                outcome.payments.insert(req.payment_id.clone(), req);
            } else {
                outcome.unacked_payments += 1;
            }
            drop(permit);
        });
        tokio::time::sleep(every).await;
    }
    while inflight.join_next().await.is_some() {}
}

async fn publish_until_acked(
    js: &jetstream::Context,
    req: &PaymentRequest,
    until: Instant,
) -> bool {
    let Ok(body) = serde_json::to_vec(req) else {
        return false;
    };
    while Instant::now() < until {
        let publish = jetstream::message::PublishMessage::build()
            .payload(body.clone().into())
            .message_id(&req.payment_id);
        if let Ok(ack) = js.send_publish(subjects::PAYMENT_PROCESS, publish).await
            && let Ok(Ok(_)) = tokio::time::timeout(CALL_TIMEOUT, ack).await
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

async fn emails(
    client: async_nats::Client,
    opts: Options,
    outcome: Arc<Mutex<Outcome>>,
    stop: CancellationToken,
) {
    let every = Duration::from_secs(1) / opts.emails_per_sec.max(1);
    let end = Instant::now() + opts.duration;
    let mut inflight = JoinSet::new();
    let mut n = 0u64;
    while Instant::now() < end && !stop.is_cancelled() {
        let to = format!("reader{n}@mail.example");
        let request = serde_json::json!({
            "to": to,
            "subject": format!("chaos {n}"),
            "body": format!("message {n} of a chaos run"),
            "idempotency_key": format!("chaos-{:x}-{n}", opts.seed),
        });
        n += 1;
        let (client, outcome) = (client.clone(), outcome.clone());
        inflight.spawn(async move {
            let until = end + RETRY_AFTER_END;
            while Instant::now() < until {
                let accepted: Result<EmailAccepted, _> =
                    runtime::client::call(&client, subjects::EMAIL_SEND, &request, CALL_TIMEOUT)
                        .await;
                if let Ok(accepted) = accepted {
                    let mut outcome = outcome.lock().unwrap_or_else(|p| p.into_inner());
                    outcome.emails.insert(accepted.id, to);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            outcome
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unaccepted_emails += 1;
        });
        tokio::time::sleep(every).await;
    }
    while inflight.join_next().await.is_some() {}
}
