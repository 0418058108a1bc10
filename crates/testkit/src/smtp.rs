//! A real SMTP server for tests: `smtp_sink.py` (aiosmtpd, from the
//! workspace's `.venv`, made by `just setup`), run as a child process on a
//! free 127.0.0.1 port. Every message it receives is written to disk before
//! it answers DATA; it can be told to hold its 250 (a slow relay). Killed by
//! PID when dropped.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test harness fails the test by panicking"
)]

use mailparse::MailHeaderMap as _;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long the sink may take to start.
const WITHIN: Duration = Duration::from_secs(20);

/// The Python with aiosmtpd: `$VIRTUAL_ENV/bin/python`, else the
/// workspace's `.venv/bin/python` (made by `just setup`), else the one next
/// to the pinned nats-server (which that venv installs). Never skips.
pub fn python() -> PathBuf {
    let mut tried = Vec::new();
    let venv = std::env::var_os("VIRTUAL_ENV").map(|v| PathBuf::from(v).join("bin/python"));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    let beside_nats = crate::nats_server_bin()
        .ok()
        .and_then(|bin| Some(bin.parent()?.join("python")));
    for candidate in [venv, Some(workspace), beside_nats].into_iter().flatten() {
        if candidate.is_file() {
            return candidate;
        }
        tried.push(candidate.display().to_string());
    }
    panic!(
        "no Python for the SMTP sink (tried {tried:?}): run `just setup`, or set VIRTUAL_ENV \
         to a venv with requirements-dev.txt installed"
    );
}

/// A running `smtp_sink.py`: a real SMTP server on 127.0.0.1. Killed (by
/// PID) when dropped; it also dies with the test process.
#[derive(Debug)]
pub struct Sink {
    child: Child,
    port: u16,
    /// Holds `mail/` (one `.eml` per message received), `delay_ms` and the
    /// sink's log.
    dir: tempfile::TempDir,
}

impl Sink {
    pub async fn start() -> Sink {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("sink.log")).unwrap();
        let mut command = Command::new(python());
        command
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp_sink.py"))
            .arg("--dir")
            .arg(dir.path().join("mail"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = crate::spawn_tied(command).expect("starting the SMTP sink");
        let stdout = child.stdout.take().unwrap();
        let line = tokio::time::timeout(
            WITHIN,
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                std::io::BufReader::new(stdout)
                    .read_line(&mut line)
                    .map(|_| line)
            }),
        )
        .await;
        let port = line
            .ok()
            .and_then(|joined| joined.ok())
            .and_then(Result::ok)
            .and_then(|line| line.trim().parse::<u16>().ok());
        let sink = Sink {
            child,
            port: port.unwrap_or(0),
            dir,
        };
        assert!(
            port.is_some(),
            "the SMTP sink did not report its port; its log:\n{}",
            sink.log()
        );
        sink
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sink.log")).unwrap_or_default()
    }

    /// From the next message on, the sink waits this long before its 250.
    pub fn delay(&self, ms: u64) {
        let control = self.dir.path().join("mail/delay_ms");
        let temp = self.dir.path().join("mail/.delay_ms.tmp");
        std::fs::write(&temp, ms.to_string()).unwrap();
        std::fs::rename(temp, control).unwrap();
    }

    /// Every message received so far (raw bytes).
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received_at().into_iter().map(|(_, raw)| raw).collect()
    }

    /// Every message received so far, with when it was written (the sink
    /// writes it before its 250).
    pub fn received_at(&self) -> Vec<(std::time::SystemTime, Vec<u8>)> {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("mail")) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .filter_map(|p| {
                let at = std::fs::metadata(&p).ok()?.modified().ok()?;
                Some((at, std::fs::read(p).ok()?))
            })
            .collect()
    }

    /// The messages received with this `Message-ID`.
    pub fn copies(&self, message_id: &str) -> Vec<Vec<u8>> {
        self.received()
            .into_iter()
            .filter(|raw| header(raw, "Message-ID").as_deref() == Some(message_id))
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn header(raw: &[u8], name: &str) -> Option<String> {
    mailparse::parse_mail(raw)
        .ok()?
        .headers
        .get_first_value(name)
}
