//! A real nats-server with its JetStream store on the lazy filesystem:
//! publishes with acks, SIGKILL, power off, restart. The server must come
//! back; the test prints what survived (`LAZYFS-SMOKE` lines) and, with
//! `sync_interval: always`, requires every acknowledged message to survive.
//!
//! Needs /dev/fuse and fusermount3 (`just setup`) and nats-server
//! (`NATS_SERVER_BIN`, or `just setup`'s .venv); fails loudly without them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use async_nats::jetstream::{self, stream};
use lazyfs::{LazyFs, Mode, Mounted};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn nats_server() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/nats-server");
    if venv.is_file() {
        return venv;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("nats-server not found: run `just setup` or set NATS_SERVER_BIN"))
}

/// A nats-server child, SIGKILLed on drop.
struct Server {
    child: Child,
}

impl Server {
    fn start(conf: &Path, log: &Path) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Server { child }
    }

    /// The power cut: SIGKILL, reaped.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn connect(url: &str, log: &Path) -> async_nats::Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match async_nats::connect(url).await {
            Ok(c) => return c,
            Err(e) if tokio::time::Instant::now() > deadline => panic!(
                "nats-server never answered: {e}\n--- log ---\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Publishes `n` acked messages, kills the server, powers off, restarts;
/// returns (acked, surviving messages, last surviving sequence).
async fn run(sync_always: bool, mode: Mode, n: u64) -> (u64, u64, u64) {
    lazyfs::preflight().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let fs: Mounted = LazyFs::mount(dir.path().join("disk"), dir.path().join("mnt"), mode)
        .unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let conf = dir.path().join("n.conf");
    let log = dir.path().join("n.log");
    std::fs::write(
        &conf,
        format!(
            "listen: \"127.0.0.1:{port}\"\nserver_name: lazy\njetstream {{\n  store_dir: \"{}\"\n{}}}\n",
            fs.mountpoint().join("js").display(),
            if sync_always { "  sync_interval: always\n" } else { "" }
        ),
    )
    .unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let label = match (sync_always, mode) {
        (true, Mode::Lazy) => "always",
        (false, Mode::Lazy) => "default",
        (true, Mode::Strict) => "always (strict mode, stricter than ext4)",
        (false, Mode::Strict) => "default (strict mode, stricter than ext4)",
    };

    let server = Server::start(&conf, &log);
    let client = connect(&url, &log).await;
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "SMOKE".into(),
        subjects: vec!["smoke.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut acked = 0;
    for i in 0..n {
        let ack = js
            .publish(format!("smoke.{i}"), format!("payment {i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(ack.sequence, i + 1);
        acked += 1;
    }
    let unsynced = fs.unsynced_bytes();
    drop(client);
    server.kill();
    let report = fs.power_off();
    println!(
        "LAZYFS-SMOKE sync_interval={label}: {acked} acked; unsynced before the power off: {unsynced} bytes; {report}"
    );
    for (file, bytes) in &report.files {
        println!(
            "LAZYFS-SMOKE   dropped {bytes:>8} bytes of {}",
            file.display()
        );
    }
    for undone in &report.undone {
        println!("LAZYFS-SMOKE   {undone}");
    }
    assert!(report.errors.is_empty(), "{report}");

    let server = Server::start(&conf, &log);
    let client = connect(&url, &log).await;
    let js = jetstream::new(client.clone());
    // JetStream recovers (or does not find) the stream once it answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = js.query_account().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "JetStream never came back: {e}\n--- log ---\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (messages, last) = match js.get_stream("SMOKE").await {
        Ok(mut s) => {
            let info = s.info().await.unwrap();
            (info.state.messages, info.state.last_sequence)
        }
        Err(e) => {
            println!("LAZYFS-SMOKE sync_interval={label}: the stream did not come back: {e}");
            (0, 0)
        }
    };
    // It still takes writes.
    js.create_stream(stream::Config {
        name: "AFTER".into(),
        subjects: vec!["after.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("after.1", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    println!(
        "LAZYFS-SMOKE sync_interval={label}: after restart the stream has {messages} of {acked} acked messages (last sequence {last}); lost {}",
        acked - messages.min(acked)
    );
    println!("LAZYFS-SMOKE FUSE operations: {:?}", fs.op_counts());
    drop(client);
    drop(server);
    drop(fs);
    (acked, messages, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_survives_power_off_with_sync_always() {
    let (acked, messages, last) = run(true, Mode::Lazy, 200).await;
    assert_eq!(
        (messages, last),
        (acked, acked),
        "sync_interval: always fsyncs before every ack"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarts_after_power_off_with_the_default_sync_interval() {
    let (acked, messages, _) = run(false, Mode::Lazy, 200).await;
    assert!(messages <= acked);
}

/// Strict mode also undoes creates and renames whose directory nats-server
/// did not fsync: what survives is printed, only the restart is required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarts_after_power_off_in_strict_mode() {
    let (acked, messages, _) = run(true, Mode::Strict, 200).await;
    assert!(messages <= acked);
}
