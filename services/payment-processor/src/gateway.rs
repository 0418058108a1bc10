//! Charging money happens behind [`Gateway`]. The built-in [`Simulator`]
//! has configurable latency and failure rate (so retries are real) and is
//! idempotent by payment id, as real gateways are with an idempotency key.

use futures::future::BoxFuture;
use rand::Rng as _;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// One charge: `payment_id` is the idempotency key.
#[derive(Debug, Clone)]
pub struct Charge {
    pub payment_id: String,
    pub user_id: String,
    pub amount: Decimal,
    pub currency: String,
}

/// A transient failure: the charge may succeed if tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError(pub String);

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Something that moves money. Returns the charge's reference.
pub trait Gateway: Send + Sync + std::fmt::Debug {
    fn charge<'a>(&'a self, charge: &'a Charge) -> BoxFuture<'a, Result<String, GatewayError>>;
}

/// `[payments.gateway]` settings of the simulator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SimulatorSettings {
    /// Time a charge takes.
    pub latency_ms: u64,
    /// Up to this much extra, uniformly random.
    pub jitter_ms: u64,
    /// Chance (0.0 to 1.0) that a charge fails transiently.
    pub failure_rate: f64,
    /// Fail the first N attempts of every payment (deterministic retries).
    pub fail_first_attempts: u32,
    /// Append every new charge as a JSON line here (an audit trail that
    /// shows double charges across processes).
    pub ledger_file: Option<PathBuf>,
}

impl Default for SimulatorSettings {
    fn default() -> Self {
        Self {
            latency_ms: 2,
            jitter_ms: 3,
            failure_rate: 0.0,
            fail_first_attempts: 0,
            ledger_file: None,
        }
    }
}

/// The built-in gateway. Its knobs can be turned while it runs.
#[derive(Debug)]
pub struct Simulator {
    latency: Duration,
    jitter_ms: u64,
    /// Failure rate in parts per million.
    failure_ppm: AtomicU32,
    fail_first: AtomicU32,
    attempts: Mutex<HashMap<String, u32>>,
    charges: Mutex<HashMap<String, String>>,
    effects: AtomicU64,
    ledger: Option<Mutex<std::fs::File>>,
}

impl Simulator {
    pub fn new(settings: &SimulatorSettings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&settings.failure_rate),
            "payments.gateway.failure_rate must be between 0 and 1, not {}",
            settings.failure_rate
        );
        // The ledger is also the simulator's memory of what it charged, as a
        // real gateway's idempotency store would be: a restarted process
        // does not charge a payment again.
        let mut known = HashMap::new();
        let ledger = match &settings.ledger_file {
            Some(path) => {
                if let Ok(text) = std::fs::read_to_string(path) {
                    for line in text.lines() {
                        if let Ok(entry) = serde_json::from_str::<serde_json::Value>(line)
                            && let (Some(p), Some(c)) =
                                (entry["payment_id"].as_str(), entry["charge_id"].as_str())
                        {
                            known.insert(p.to_owned(), c.to_owned());
                        }
                    }
                }
                Some(Mutex::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)?,
                ))
            }
            None => None,
        };
        let sim = Self {
            latency: Duration::from_millis(settings.latency_ms),
            jitter_ms: settings.jitter_ms,
            failure_ppm: AtomicU32::new(0),
            fail_first: AtomicU32::new(settings.fail_first_attempts),
            attempts: Mutex::default(),
            charges: Mutex::new(known),
            effects: AtomicU64::new(0),
            ledger,
        };
        sim.set_failure_rate(settings.failure_rate);
        Ok(sim)
    }

    pub fn set_failure_rate(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * 1_000_000.0).round() as u32;
        self.failure_ppm.store(ppm, Ordering::Relaxed);
    }

    pub fn set_fail_first_attempts(&self, n: u32) {
        self.fail_first.store(n, Ordering::Relaxed);
    }

    /// Charges that moved money (a repeated charge of a payment is not one).
    pub fn effects(&self) -> u64 {
        self.effects.load(Ordering::Relaxed)
    }

    /// How many times `payment_id` was tried.
    pub fn attempts(&self, payment_id: &str) -> u32 {
        self.attempts
            .lock()
            .map(|a| a.get(payment_id).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn outcome(&self, charge: &Charge) -> Result<String, GatewayError> {
        let attempt = {
            let mut attempts = self.attempts.lock().map_err(|_| poisoned())?;
            let n = attempts.entry(charge.payment_id.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if attempt <= self.fail_first.load(Ordering::Relaxed) {
            return Err(GatewayError(format!(
                "simulated gateway timeout (attempt {attempt})"
            )));
        }
        let ppm = self.failure_ppm.load(Ordering::Relaxed);
        if ppm > 0 && rand::rng().random_range(0..1_000_000) < ppm {
            return Err(GatewayError("simulated gateway error".into()));
        }
        let mut charges = self.charges.lock().map_err(|_| poisoned())?;
        if let Some(existing) = charges.get(&charge.payment_id) {
            return Ok(existing.clone());
        }
        let id = format!("ch_{}", rand::rng().random::<u64>());
        charges.insert(charge.payment_id.clone(), id.clone());
        self.effects.fetch_add(1, Ordering::Relaxed);
        if let Some(ledger) = &self.ledger {
            let line = serde_json::json!({
                "payment_id": charge.payment_id,
                "charge_id": id,
                "amount": charge.amount.to_string(),
                "currency": charge.currency,
                "pid": std::process::id(),
            });
            if let Ok(mut file) = ledger.lock() {
                let _ = writeln!(file, "{line}");
            }
        }
        Ok(id)
    }
}

fn poisoned() -> GatewayError {
    GatewayError("simulator state poisoned".into())
}

impl Gateway for Simulator {
    fn charge<'a>(&'a self, charge: &'a Charge) -> BoxFuture<'a, Result<String, GatewayError>> {
        Box::pin(async move {
            let jitter = if self.jitter_ms > 0 {
                rand::rng().random_range(0..=self.jitter_ms)
            } else {
                0
            };
            let wait = self.latency + Duration::from_millis(jitter);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            self.outcome(charge)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(id: &str) -> Charge {
        Charge {
            payment_id: id.into(),
            user_id: "u".into(),
            amount: Decimal::ONE,
            currency: "USD".into(),
        }
    }

    fn quiet() -> SimulatorSettings {
        SimulatorSettings {
            latency_ms: 0,
            jitter_ms: 0,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn idempotent_by_payment_id() {
        let sim = Simulator::new(&quiet()).unwrap();
        let a = sim.charge(&charge("p1")).await.unwrap();
        let b = sim.charge(&charge("p1")).await.unwrap();
        assert_eq!(a, b);
        sim.charge(&charge("p2")).await.unwrap();
        assert_eq!(sim.effects(), 2);
        assert_eq!(sim.attempts("p1"), 2);
    }

    #[tokio::test]
    async fn fails_first_attempts_then_succeeds() {
        let sim = Simulator::new(&SimulatorSettings {
            fail_first_attempts: 2,
            ..quiet()
        })
        .unwrap();
        assert!(sim.charge(&charge("p")).await.is_err());
        assert!(sim.charge(&charge("p")).await.is_err());
        assert!(sim.charge(&charge("p")).await.is_ok());
        sim.set_failure_rate(1.0);
        assert!(sim.charge(&charge("q")).await.is_err());
        assert!(
            Simulator::new(&SimulatorSettings {
                failure_rate: 2.0,
                ..quiet()
            })
            .is_err()
        );
    }
}
