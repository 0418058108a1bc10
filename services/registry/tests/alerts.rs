//! The alert rules in `deploy/prometheus/` checked and unit-tested by the
//! real `promtool` (Debian's `prometheus` package; `just setup` installs it):
//! `promtool check rules`, `promtool test rules` (each alert fires on the
//! series that should fire it, not on quiet ones) and `promtool check
//! config`. A missing promtool fails this test.

#![allow(clippy::panic, reason = "a test fails by panicking")]

use std::path::PathBuf;
use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool not found ({e}): run `just setup` (it installs Debian's prometheus package)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid_and_fire_when_they_should() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS: 5 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    promtool(&["check", "config", "prometheus.yml"]);
}
