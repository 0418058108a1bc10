//! Seed 004's four roles of one binary (`switchyard role …`) as processes
//! against a real 3-node cluster with the deployments' accounts: they log in
//! as `demo` from the secrets file; the requester gets `pong` from the
//! replier; the subscriber counts what the publisher sent.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use testkit::{Cluster, ClusterOptions};

const SWITCHYARD: &str = env!("CARGO_BIN_EXE_switchyard");

/// A role process, killed on drop.
struct Role(Child);

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn role(secrets: &Path, servers: &str, args: &[&str]) -> Command {
    let mut command = Command::new(SWITCHYARD);
    command
        .env("SWITCHYARD_SECRETS", secrets)
        .args(["role"])
        .args(args)
        .args(["--servers", servers]);
    command
}

/// Starts `command`, returning its stdout lines as they come.
fn spawn_lines(mut command: Command) -> (Role, mpsc::Receiver<String>) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Role(child), rx)
}

fn next_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no line from the {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_four_roles_talk_through_the_cluster_as_the_demo_user() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join(".env");
    let passwords: std::collections::BTreeMap<String, String> = protocol::accounts::password_envs()
        .into_iter()
        .map(|name| {
            (
                name.to_owned(),
                format!("{}-{}", name.to_lowercase(), nuid::next()),
            )
        })
        .collect();
    let text: String = passwords
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    std::fs::write(&secrets, text).unwrap();
    let cluster = Cluster::start_retrying(ClusterOptions {
        accounts: true,
        passwords,
        ..Default::default()
    })
    .await
    .unwrap();
    let servers = cluster.urls().join(",");

    // Request-reply: replier, then one requester.
    let (_replier, replier_out) = spawn_lines(role(&secrets, &servers, &["replier"]));
    assert_eq!(
        next_line(&replier_out, "replier"),
        "answering ping with pong"
    );
    let out = role(&secrets, &servers, &["requester"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "pong");

    // Pub/sub: 2,000 messages on loopback, far below any buffer, all arrive.
    let (mut subscriber, sub_out) = spawn_lines(role(
        &secrets,
        &servers,
        &["subscriber", "--expect", "2000", "--idle", "10s"],
    ));
    assert_eq!(next_line(&sub_out, "subscriber"), "listening on updates");
    let out = role(&secrets, &servers, &["publisher", "--count", "2000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("published 2000 messages to updates"),
        "{out:?}"
    );
    let lines: Vec<String> = (0..6).map(|_| next_line(&sub_out, "subscriber")).collect();
    assert_eq!(lines[0], "update 0", "{lines:?}");
    assert_eq!(lines[4], "update 4", "{lines:?}");
    assert_eq!(
        lines.last().unwrap(),
        "received 2000 messages on updates; the client dropped 0 as a slow consumer",
        "{lines:?}"
    );
    let status = subscriber.0.wait().unwrap();
    assert!(status.success(), "{status}");

    // Without the secrets file (no credentials) the cluster refuses it.
    let out = Command::new(SWITCHYARD)
        .env("SWITCHYARD_SECRETS", dir.path().join("missing"))
        .args(["role", "requester", "--servers", &servers])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
}
