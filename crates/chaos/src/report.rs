//! What a run found, and the table `just chaos` prints.

use comfy_table::{Cell, Table, presets::UTF8_FULL_CONDENSED};
use std::collections::BTreeMap;
use std::time::Duration;

/// Every kind of violation the checker knows, so the table can say 0.
pub(crate) const VIOLATION_KINDS: [&str; 14] = [
    "stuck",
    "payment lost (no record)",
    "lost after being charged",
    "charged more than once",
    "completed but never charged",
    "completed with another charge than the ledger's",
    "failed but charged",
    "completed event missing",
    "completed events > 1",
    "failed with a completed event",
    "status went backwards",
    "accepted email never sent",
    "receipt never sent",
    "second copy without a notifier killed",
];

/// The kinds that are data the cluster acknowledged and then lost (under
/// power cuts: the streams or buckets lost messages or revisions), as
/// opposed to what Switchyard itself owns (one charge, nothing stuck,
/// statuses that agree with the ledger and the events).
pub(crate) const LOSS_KINDS: [&str; 6] = [
    "payment lost (no record)",
    "lost after being charged",
    "completed event missing",
    "status went backwards",
    "accepted email never sent",
    "receipt never sent",
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

    /// How many violations of `kind`.
    pub fn count(&self, kind: &str) -> usize {
        self.violations.get(kind).map_or(0, Vec::len)
    }

    /// Acknowledged payments left with no record at all.
    pub fn lost(&self) -> usize {
        self.count("payment lost (no record)")
    }

    /// Violations of what Switchyard itself owns, whatever the cluster
    /// lost: every kind but [`LOSS_KINDS`] (stuck, charged twice, a status
    /// that disagrees with the ledger or the events, a second mail copy).
    pub fn switchyard_violations(&self) -> usize {
        self.violations
            .iter()
            .filter(|(kind, _)| !LOSS_KINDS.contains(&kind.as_str()))
            .map(|(_, found)| found.len())
            .sum()
    }

    /// The power-loss summary: one row per run in docs/GUARANTEES.md.
    pub fn power_summary(&self) -> String {
        let cuts = |kind: &str| self.faults.get(kind).copied().unwrap_or(0);
        format!(
            "power-loss summary: {} | cuts all/one {}/{} | acked {} | lost {} (charged {}) | events lost {} | stuck {} | charged twice {} | Switchyard violations {}",
            self.mode.as_deref().unwrap_or("normal"),
            cuts("power off all nodes"),
            cuts("power off one node"),
            self.acked,
            self.lost(),
            self.count("lost after being charged"),
            self.count("completed event missing"),
            self.count("stuck"),
            self.count("charged more than once"),
            self.switchyard_violations(),
        )
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
