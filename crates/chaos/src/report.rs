//! What a run found, and the table `just chaos` prints.

use comfy_table::{Cell, Table, presets::UTF8_FULL_CONDENSED};
use std::collections::BTreeMap;
use std::time::Duration;

/// Every kind of violation the checker knows, so the table can say 0.
pub(crate) const VIOLATION_KINDS: [&str; 13] = [
    "stuck",
    "payment lost (no record)",
    "lost after being charged",
    "charged more than once",
    "completed but never charged",
    "completed with another charge than the ledger's",
    "failed but charged",
    "completed events != 1",
    "failed with a completed event",
    "status went backwards",
    "accepted email never sent",
    "receipt never sent",
    "second copy without a notifier killed",
];

/// The outcome of one run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub seed: u64,
    /// The nemesis's mode when not the default (e.g. power loss).
    pub mode: Option<String>,
    pub wall: Duration,
    /// Payments the stream acknowledged (what the checker holds the system to).
    pub acked: usize,
    /// Payments never acknowledged despite retries (not held against it).
    pub unacked: usize,
    pub completed: usize,
    pub failed: usize,
    pub emails_accepted: usize,
    pub emails_sent: usize,
    pub receipts_due: usize,
    pub receipts_sent: usize,
    /// Extra copies of a mail after a notifier was SIGKILLed (allowed; same Message-ID).
    pub duplicate_copies: usize,
    pub faults: BTreeMap<&'static str, u64>,
    pub fault_log: Vec<String>,
    /// Violations by kind, with examples.
    pub violations: BTreeMap<String, Vec<String>>,
}

impl Report {
    pub(crate) fn violation(&mut self, kind: &str, what: String) {
        self.violations
            .entry(kind.to_owned())
            .or_default()
            .push(what);
    }

    /// No violation of any kind.
    pub fn ok(&self) -> bool {
        self.violations.values().all(Vec::is_empty)
    }

    pub fn violation_count(&self) -> usize {
        self.violations.values().map(Vec::len).sum()
    }

    /// The run as tables: counts, faults by kind, violations by kind (with
    /// up to three examples each).
    pub fn table(&self) -> String {
        let mut counts = Table::new();
        counts
            .load_preset(UTF8_FULL_CONDENSED)
            .set_header(["run", "count"]);
        for (what, n) in [
            ("payments acked", self.acked),
            ("  completed", self.completed),
            ("  failed", self.failed),
            ("payments never acked (not counted)", self.unacked),
            ("emails accepted", self.emails_accepted),
            ("  reached the SMTP sink", self.emails_sent),
            ("receipts due", self.receipts_due),
            ("  reached the SMTP sink", self.receipts_sent),
            (
                "extra copies after a notifier SIGKILL (same Message-ID)",
                self.duplicate_copies,
            ),
        ] {
            counts.add_row([Cell::new(what), Cell::new(n)]);
        }
        let mut faults = Table::new();
        faults
            .load_preset(UTF8_FULL_CONDENSED)
            .set_header(["fault injected", "count"]);
        for (kind, n) in &self.faults {
            faults.add_row([Cell::new(kind), Cell::new(n)]);
        }
        faults.add_row([
            Cell::new("total"),
            Cell::new(self.faults.values().sum::<u64>()),
        ]);
        let mut violations = Table::new();
        violations
            .load_preset(UTF8_FULL_CONDENSED)
            .set_header(["violation", "count", "examples"]);
        let mut kinds: Vec<&str> = VIOLATION_KINDS.to_vec();
        for kind in self.violations.keys() {
            if !kinds.contains(&kind.as_str()) {
                kinds.push(kind);
            }
        }
        for kind in kinds {
            let found = self.violations.get(kind).map_or(&[][..], Vec::as_slice);
            violations.add_row([
                Cell::new(kind),
                Cell::new(found.len()),
                Cell::new(found.iter().take(3).cloned().collect::<Vec<_>>().join("; ")),
            ]);
        }
        format!(
            "chaos run{}: seed {:#x}, {:.0?} wall\n{counts}\n{faults}\n{violations}\n{}",
            self.mode
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default(),
            self.seed,
            self.wall,
            if self.ok() {
                "zero violations".to_owned()
            } else {
                format!("{} VIOLATIONS", self.violation_count())
            }
        )
    }
}
