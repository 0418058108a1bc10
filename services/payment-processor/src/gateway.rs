//! Charging money happens behind [`Gateway`], shaped like a real provider's
//! idempotency-key API: a charge names an idempotency key, and the same key
//! always gives the same charge; a key can be voided first, after which it
//! never charges. The built-in [`Simulator`] has configurable latency and
//! failure rate (so retries are real). Its memory of keys is its ledger
//! file, read and appended under an exclusive file lock, so every process
//! that shares the file (two processors on one host, or containers sharing
//! a volume) sees the same charges; the file is also the audit trail of
//! every charge actually made.

use futures::future::BoxFuture;
use rand::Rng as _;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// One charge. `idempotency_key` names it at the gateway: the same key
/// never moves money twice.
#[derive(Debug, Clone)]
pub struct Charge {
    pub idempotency_key: String,
    pub payment_id: String,
    pub user_id: String,
    pub amount: Decimal,
    pub currency: String,
}

/// What voiding a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Void {
    /// No charge was made with the key, and none ever will be.
    Voided,
    /// The key was charged already: this is the charge.
    AlreadyCharged(String),
}

/// A transient failure: the call may succeed if tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError(pub String);

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Something that moves money.
pub trait Gateway: Send + Sync + std::fmt::Debug {
    /// Charges once per idempotency key; returns the charge's reference
    /// (the existing one for a key charged before). A voided key fails.
    fn charge<'a>(&'a self, charge: &'a Charge) -> BoxFuture<'a, Result<String, GatewayError>>;
    /// Makes sure `key` never charges, or says which charge it made.
    fn void<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Void, GatewayError>>;
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
    /// Fail the first N attempts of every key (deterministic retries).
    pub fail_first_attempts: u32,
    /// The simulator's memory and audit trail: one JSON line per charge
    /// made (`"kind":"charge"`) or key voided (`"kind":"void"`), shared by
    /// every process that names the same file. Unset: memory of this
    /// process only (a second process would charge a key again).
    pub ledger_file: Option<PathBuf>,
}

impl Default for SimulatorSettings {
    fn default() -> Self {
        Self {
            latency_ms: 2,
            jitter_ms: 3,
            failure_rate: 0.0,
            fail_first_attempts: 0,
            ledger_file: Some(PathBuf::from(".switchyard/gateway-ledger.jsonl")),
        }
    }
}

/// One line of the ledger.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerLine {
    /// `charge` or `void`.
    pub kind: String,
    pub key: String,
    pub payment_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    pub pid: u32,
    pub at: String,
}

/// What the gateway knows of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyState {
    Charged(String),
    Voided,
}

/// The keys seen so far and how much of the ledger file they cover.
#[derive(Debug, Default)]
struct Book {
    keys: HashMap<String, KeyState>,
    /// Bytes of the ledger already read into `keys`.
    read_to: u64,
}

impl Book {
    fn learn(&mut self, line: &LedgerLine) {
        let state = match (line.kind.as_str(), &line.charge_id) {
            ("charge", Some(id)) => KeyState::Charged(id.clone()),
            ("void", _) => KeyState::Voided,
            _ => return,
        };
        // The first word on a key is the one that counts.
        self.keys.entry(line.key.clone()).or_insert(state);
    }

    /// Reads what other processes appended since the last look. A last
    /// line without its newline was torn by a writer that died holding the
    /// lock (its caller never got an answer): it is cut off.
    fn catch_up(&mut self, file: &mut File) -> std::io::Result<()> {
        let len = file.metadata()?.len();
        if len < self.read_to {
            // Replaced or truncated by hand: read it all again.
            *self = Self::default();
        }
        if len == self.read_to {
            return Ok(());
        }
        file.seek(SeekFrom::Start(self.read_to))?;
        let mut text = Vec::new();
        file.take(len - self.read_to).read_to_end(&mut text)?;
        let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in text[..whole].split(|b| *b == b'\n') {
            if let Ok(line) = serde_json::from_slice::<LedgerLine>(line) {
                self.learn(&line);
            }
        }
        self.read_to += whole as u64;
        if whole < text.len() {
            tracing::warn!(
                bytes = text.len() - whole,
                "gateway ledger ends in a torn line; cutting it off"
            );
            file.set_len(self.read_to)?;
        }
        Ok(())
    }
}

/// A question for the ledger: charge this line's key (with this new
/// charge id) or void it.
#[derive(Debug)]
enum Ask {
    Charge(LedgerLine),
    Void(LedgerLine),
}

/// The ledger's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// Charged: by this call (`made`) or earlier.
    Charged {
        charge_id: String,
        made: bool,
    },
    /// The key was voided earlier: it cannot charge.
    KeyVoided,
    Void(Void),
}

/// What the book says to `ask`, and the line to append if it changes it.
fn decide(book: &Book, ask: Ask) -> (Option<LedgerLine>, Answer) {
    match ask {
        Ask::Charge(line) => match book.keys.get(&line.key) {
            Some(KeyState::Charged(id)) => (
                None,
                Answer::Charged {
                    charge_id: id.clone(),
                    made: false,
                },
            ),
            Some(KeyState::Voided) => (None, Answer::KeyVoided),
            None => {
                let charge_id = line.charge_id.clone().unwrap_or_default();
                (
                    Some(line),
                    Answer::Charged {
                        charge_id,
                        made: true,
                    },
                )
            }
        },
        Ask::Void(line) => match book.keys.get(&line.key) {
            Some(KeyState::Charged(id)) => (None, Answer::Void(Void::AlreadyCharged(id.clone()))),
            Some(KeyState::Voided) => (None, Answer::Void(Void::Voided)),
            None => (Some(line), Answer::Void(Void::Voided)),
        },
    }
}

/// One question waiting for the ledger's writer.
#[derive(Debug)]
struct Job {
    ask: Ask,
    reply: tokio::sync::oneshot::Sender<Result<Answer, GatewayError>>,
}

/// Questions answered in one file transaction, at most.
const GROUP_COMMIT: usize = 256;

/// The book and, when there is one, the file it is kept in. Owned by one
/// writer thread that answers every question waiting at once in one
/// transaction (group commit): one lock, one write, one fsync.
#[derive(Debug)]
struct Ledger {
    book: Book,
    file: Option<File>,
}

impl Ledger {
    /// Answers `jobs` in order on the up-to-date book under the file's
    /// exclusive lock, appending (and fsyncing) the lines they add before
    /// the lock goes and before anyone hears an answer.
    fn transact(&mut self, jobs: Vec<Job>) {
        let (asks, replies): (Vec<Ask>, Vec<_>) =
            jobs.into_iter().map(|j| (j.ask, j.reply)).unzip();
        let answers = self.answer(asks);
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
    }

    fn answer(&mut self, asks: Vec<Ask>) -> Vec<Result<Answer, GatewayError>> {
        let n = asks.len();
        let Self { book, file } = self;
        let Some(file) = file else {
            return asks
                .into_iter()
                .map(|ask| {
                    let (line, answer) = decide(book, ask);
                    if let Some(line) = line {
                        book.learn(&line);
                    }
                    Ok(answer)
                })
                .collect();
        };
        let failed = |e: std::io::Error| {
            let error = GatewayError(format!("gateway ledger: {e}"));
            (0..n).map(|_| Err(error.clone())).collect()
        };
        if let Err(e) = file.lock() {
            return failed(e);
        }
        let done = (|| -> std::io::Result<Vec<Answer>> {
            book.catch_up(file)?;
            let mut text = Vec::new();
            let mut answers = Vec::with_capacity(n);
            for ask in asks {
                let (line, answer) = decide(book, ask);
                if let Some(line) = line {
                    text.extend(serde_json::to_vec(&line).map_err(std::io::Error::other)?);
                    text.push(b'\n');
                    book.learn(&line);
                }
                answers.push(answer);
            }
            if !text.is_empty() {
                file.write_all(&text)?;
                file.sync_data()?;
                book.read_to += text.len() as u64;
            }
            Ok(answers)
        })();
        let unlocked = file.unlock();
        match (done, unlocked) {
            (Ok(answers), Ok(())) => answers.into_iter().map(Ok).collect(),
            (Err(e), _) | (Ok(_), Err(e)) => {
                // What the book learned may not be on disk: read it all again
                // next time (a torn tail is cut then).
                *book = Book::default();
                failed(e)
            }
        }
    }

    /// The writer thread: waits for a question, takes every other one
    /// waiting too, answers them together. Ends when the simulator goes.
    fn serve(mut self, jobs: std::sync::mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut batch = vec![first];
            while batch.len() < GROUP_COMMIT {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.transact(batch);
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
    effects: AtomicU64,
    /// To the ledger's writer thread.
    ledger: std::sync::mpsc::Sender<Job>,
}

impl Simulator {
    pub fn new(settings: &SimulatorSettings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&settings.failure_rate),
            "payments.gateway.failure_rate must be between 0 and 1, not {}",
            settings.failure_rate
        );
        let file = match &settings.ledger_file {
            Some(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        anyhow::anyhow!(
                            "creating the gateway ledger's folder {}: {e}",
                            dir.display()
                        )
                    })?;
                }
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create(true)
                    .open(path)
                    .map_err(|e| {
                        anyhow::anyhow!("opening the gateway ledger {}: {e}", path.display())
                    })?;
                Some(file)
            }
            None => {
                tracing::warn!(
                    "payments.gateway.ledger_file is not set: the simulator remembers charges in this process only"
                );
                None
            }
        };
        let ledger = Ledger {
            book: Book::default(),
            file,
        };
        let (jobs, inbox) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("gateway-ledger".into())
            .spawn(move || ledger.serve(inbox))
            .map_err(|e| anyhow::anyhow!("starting the gateway ledger's writer: {e}"))?;
        let sim = Self {
            latency: Duration::from_millis(settings.latency_ms),
            jitter_ms: settings.jitter_ms,
            failure_ppm: AtomicU32::new(0),
            fail_first: AtomicU32::new(settings.fail_first_attempts),
            attempts: Mutex::default(),
            effects: AtomicU64::new(0),
            ledger: jobs,
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

    /// Charges this process made that moved money (a repeated key is not one).
    pub fn effects(&self) -> u64 {
        self.effects.load(Ordering::Relaxed)
    }

    /// How many times this process was asked to charge `key`.
    pub fn attempts(&self, key: &str) -> u32 {
        self.attempts
            .lock()
            .map(|a| a.get(key).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    async fn wait(&self) {
        let jitter = if self.jitter_ms > 0 {
            rand::rng().random_range(0..=self.jitter_ms)
        } else {
            0
        };
        let wait = self.latency + Duration::from_millis(jitter);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Asks the ledger's writer. Once asked, the question is answered (and
    /// its line written) even if this future is dropped — as a real
    /// gateway's charge goes on when its caller times out.
    async fn ask(&self, ask: Ask) -> Result<Answer, GatewayError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.ledger
            .send(Job { ask, reply })
            .map_err(|_| GatewayError("the gateway ledger's writer stopped".into()))?;
        answer
            .await
            .map_err(|_| GatewayError("the gateway ledger's writer stopped".into()))?
    }

    fn simulated_failure(&self, key: &str) -> Result<(), GatewayError> {
        let attempt = {
            let mut attempts = self.attempts.lock().map_err(|_| poisoned())?;
            let n = attempts.entry(key.to_owned()).or_insert(0);
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
        Ok(())
    }
}

fn poisoned() -> GatewayError {
    GatewayError("simulator state poisoned".into())
}

impl Gateway for Simulator {
    fn charge<'a>(&'a self, charge: &'a Charge) -> BoxFuture<'a, Result<String, GatewayError>> {
        Box::pin(async move {
            self.wait().await;
            self.simulated_failure(&charge.idempotency_key)?;
            let line = LedgerLine {
                kind: "charge".into(),
                key: charge.idempotency_key.clone(),
                payment_id: charge.payment_id.clone(),
                charge_id: Some(format!("ch_{:016x}", rand::rng().random::<u64>())),
                amount: Some(charge.amount.to_string()),
                currency: Some(charge.currency.clone()),
                pid: std::process::id(),
                at: runtime::time::now_rfc3339(),
            };
            match self.ask(Ask::Charge(line)).await? {
                Answer::Charged { charge_id, made } => {
                    if made {
                        self.effects.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(charge_id)
                }
                Answer::KeyVoided => Err(GatewayError(format!(
                    "idempotency key {} was voided; it cannot charge",
                    charge.idempotency_key
                ))),
                Answer::Void(_) => Err(GatewayError(
                    "the ledger answered a charge with a void".into(),
                )),
            }
        })
    }

    fn void<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Void, GatewayError>> {
        Box::pin(async move {
            self.wait().await;
            let payment_id = key.rsplit_once(".r").map_or(key, |(p, _)| p).to_owned();
            let line = LedgerLine {
                kind: "void".into(),
                key: key.to_owned(),
                payment_id,
                charge_id: None,
                amount: None,
                currency: None,
                pid: std::process::id(),
                at: runtime::time::now_rfc3339(),
            };
            match self.ask(Ask::Void(line)).await? {
                Answer::Void(void) => Ok(void),
                other => Err(GatewayError(format!(
                    "the ledger answered a void with {other:?}"
                ))),
            }
        })
    }
}

/// Reads a ledger file: the charges made, in order.
pub fn read_charges(path: &std::path::Path) -> std::io::Result<Vec<LedgerLine>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<LedgerLine>(l).ok())
        .filter(|l| l.kind == "charge")
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(key: &str) -> Charge {
        Charge {
            idempotency_key: key.into(),
            payment_id: key.split('.').next().unwrap_or(key).into(),
            user_id: "u".into(),
            amount: Decimal::ONE,
            currency: "USD".into(),
        }
    }

    fn quiet(ledger: Option<PathBuf>) -> SimulatorSettings {
        SimulatorSettings {
            latency_ms: 0,
            jitter_ms: 0,
            ledger_file: ledger,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn idempotent_by_key() {
        let sim = Simulator::new(&quiet(None)).unwrap();
        let a = sim.charge(&charge("p1.r0")).await.unwrap();
        let b = sim.charge(&charge("p1.r0")).await.unwrap();
        assert_eq!(a, b);
        let c = sim.charge(&charge("p1.r1")).await.unwrap();
        assert_ne!(a, c, "a replay is a new key");
        sim.charge(&charge("p2.r0")).await.unwrap();
        assert_eq!(sim.effects(), 3);
        assert_eq!(sim.attempts("p1.r0"), 2);
    }

    #[tokio::test]
    async fn fails_first_attempts_then_succeeds() {
        let sim = Simulator::new(&SimulatorSettings {
            fail_first_attempts: 2,
            ..quiet(None)
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
                ..quiet(None)
            })
            .is_err()
        );
    }

    #[tokio::test]
    async fn a_voided_key_never_charges_and_a_charged_one_cannot_be_voided() {
        let sim = Simulator::new(&quiet(None)).unwrap();
        assert_eq!(sim.void("p1.r0").await.unwrap(), Void::Voided);
        assert!(sim.charge(&charge("p1.r0")).await.is_err());
        let id = sim.charge(&charge("p2.r0")).await.unwrap();
        assert_eq!(sim.void("p2.r0").await.unwrap(), Void::AlreadyCharged(id));
        assert_eq!(sim.effects(), 1);
    }

    #[tokio::test]
    async fn two_simulators_sharing_a_ledger_charge_a_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ledger.jsonl");
        let a = Simulator::new(&quiet(Some(path.clone()))).unwrap();
        let b = Simulator::new(&quiet(Some(path.clone()))).unwrap();
        let ids = futures::future::join_all(
            (0..20)
                .flat_map(|i| {
                    let key = format!("p{}.r0", i % 5);
                    [(0, key.clone()), (1, key)]
                })
                .map(|(who, key)| {
                    let sim = if who == 0 { &a } else { &b };
                    async move { (key.clone(), sim.charge(&charge(&key)).await.unwrap()) }
                }),
        )
        .await;
        let mut by_key: HashMap<String, String> = HashMap::new();
        for (key, id) in ids {
            assert_eq!(by_key.entry(key).or_insert_with(|| id.clone()), &id);
        }
        assert_eq!(read_charges(&path).unwrap().len(), 5);
        assert_eq!(a.effects() + b.effects(), 5);
        // A third process (a restart) knows them too, and voids nothing charged.
        let c = Simulator::new(&quiet(Some(path.clone()))).unwrap();
        assert_eq!(
            c.void("p0.r0").await.unwrap(),
            Void::AlreadyCharged(by_key["p0.r0"].clone())
        );
        assert_eq!(c.void("p9.r0").await.unwrap(), Void::Voided);
        assert!(
            a.charge(&charge("p9.r0")).await.is_err(),
            "voided by another process"
        );
        assert_eq!(read_charges(&path).unwrap().len(), 5);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let a = Simulator::new(&quiet(Some(path.clone()))).unwrap();
        let id = a.charge(&charge("p1.r0")).await.unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(br#"{"kind":"charge","key":"p2.r0","payment_id":"p2","cha"#)
            .unwrap();
        let b = Simulator::new(&quiet(Some(path.clone()))).unwrap();
        assert_eq!(b.charge(&charge("p1.r0")).await.unwrap(), id);
        b.charge(&charge("p2.r0")).await.unwrap();
        let charges = read_charges(&path).unwrap();
        assert_eq!(charges.len(), 2, "{charges:?}");
        assert!(std::fs::read_to_string(&path).unwrap().ends_with('\n'));
    }
}
