//! The runtime against real servers: auth wiring (and the user's inbox
//! prefix), the single-server replica fallback, maintenance on a lone
//! server, and shutdown before connecting.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use runtime::settings::{NatsSettings, Value};
use runtime::{App, CancellationToken, Settings};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A lone nats-server started with extra command-line flags.
struct Server {
    child: std::process::Child,
    url: String,
}

impl Server {
    fn start(flags: &[&str]) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(testkit::nats_server_bin().unwrap());
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let server = Server {
            child: testkit::spawn_tied(command).unwrap(),
            url: format!("nats://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nats-server did not listen on {port}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects with `settings`, giving up after 2 s; true if connected.
async fn connects(settings: NatsSettings) -> bool {
    let stop = CancellationToken::new();
    let attempt = runtime::nats::connect(&settings, "auth-test", &stop);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(Some(_)))
    )
}

#[tokio::test]
async fn user_password_and_token_come_from_settings() {
    let server = Server::start(&["--user", "svc", "--pass", "s3cret"]);
    let base = NatsSettings {
        urls: vec![server.url.clone()],
        ..Default::default()
    };
    assert!(
        connects(NatsSettings {
            user: Some("svc".into()),
            password: Some("s3cret".into()),
            ..base.clone()
        })
        .await
    );
    assert!(
        !connects(NatsSettings {
            user: Some("svc".into()),
            password: Some("wrong".into()),
            ..base.clone()
        })
        .await
    );
    assert!(!connects(base).await, "anonymous is refused");

    let server = Server::start(&["--auth", "t0ken"]);
    let base = NatsSettings {
        urls: vec![server.url.clone()],
        ..Default::default()
    };
    assert!(
        connects(NatsSettings {
            token: Some("t0ken".into()),
            ..base.clone()
        })
        .await
    );
    assert!(!connects(base).await);
}

#[tokio::test]
async fn half_configured_auth_is_a_clear_error() {
    let settings = NatsSettings {
        user: Some("svc".into()),
        ..Default::default()
    };
    let err = runtime::nats::options(&settings, "x").await.unwrap_err();
    assert!(
        err.to_string().contains("nats.user and nats.password"),
        "{err}"
    );
    let settings = NatsSettings {
        creds_file: Some("/nonexistent.creds".into()),
        ..Default::default()
    };
    let err = runtime::nats::options(&settings, "x").await.unwrap_err();
    assert!(format!("{err:#}").contains("/nonexistent.creds"), "{err:#}");
}

#[tokio::test]
async fn a_lone_server_gets_one_replica_and_maintenance_still_works() {
    let lone = testkit::Cluster::start(1).await.unwrap();
    let settings = Settings::load_with([("nats.urls", Value::from(lone.urls()))]).unwrap();
    assert_eq!(settings.jetstream.replicas, 3);
    let app = App::connect("lone", settings, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(app.replicas(), 1);

    let mut flag = app.maintenance();
    runtime::maintenance::set(&app.jetstream, app.replicas(), true)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), flag.wait_for(|on| *on))
        .await
        .expect("flag seen")
        .unwrap();
    let bucket = app.jetstream.get_key_value("config").await.unwrap();
    let info = bucket.status().await.unwrap();
    assert_eq!(info.info.config.num_replicas, 1);

    let clustered = testkit::shared().await;
    let settings = Settings::load_with([("nats.urls", Value::from(clustered.urls()))]).unwrap();
    let app = App::connect("clustered", settings, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(app.replicas(), 3);
}

#[tokio::test]
async fn shutdown_while_waiting_for_nats_is_a_clean_exit() {
    // Nothing listens on this port.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = Settings::load_with([(
        "nats.urls",
        Value::from(vec![format!("nats://127.0.0.1:{port}")]),
    )])
    .unwrap();
    let shutdown = CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    });
    let err = App::connect("nobody", settings, shutdown)
        .await
        .unwrap_err();
    assert!(runtime::is_stopped(&err), "{err:#}");
}

#[tokio::test]
async fn a_user_connection_uses_its_own_inbox_prefix_for_every_reply() {
    let store = tempfile::tempdir().unwrap();
    let store = store.path().to_str().unwrap().to_owned();
    let server = Server::start(&["--user", "svc", "--pass", "s3cret", "-js", "-sd", &store]);
    let stop = CancellationToken::new();
    let with_user = NatsSettings {
        urls: vec![server.url.clone()],
        user: Some("svc".into()),
        password: Some("s3cret".into()),
        ..Default::default()
    };
    assert_eq!(runtime::nats::inbox_prefix(&with_user), "_INBOX_svc");
    assert_eq!(
        runtime::nats::inbox_prefix(&NatsSettings::default()),
        "_INBOX"
    );
    let conn = runtime::nats::connect(&with_user, "inbox-test", &stop)
        .await
        .unwrap()
        .unwrap();
    let client = conn.client.clone();
    assert!(client.new_inbox().starts_with("_INBOX_svc."));

    // A request: the reply subject the responder sees is under the prefix.
    let mut responder = client.subscribe("inbox.test").await.unwrap();
    let answering = tokio::spawn({
        let client = client.clone();
        async move {
            let msg = futures::StreamExt::next(&mut responder).await.unwrap();
            let reply = msg.reply.unwrap();
            client.publish(reply.clone(), "pong".into()).await.unwrap();
            reply.to_string()
        }
    });
    let answer = client.request("inbox.test", "ping".into()).await.unwrap();
    assert_eq!(&answer.payload[..], b"pong");
    assert!(answering.await.unwrap().starts_with("_INBOX_svc."));

    // JetStream API replies and a pull consumer's deliveries arrive too.
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "INBOXTEST".into(),
        subjects: vec!["inboxtest.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("inboxtest.a", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .create_consumer_on_stream(
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("inboxtest".into()),
                ..Default::default()
            },
            "INBOXTEST",
        )
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
    let message = futures::StreamExt::next(&mut batch).await.unwrap().unwrap();
    assert_eq!(&message.payload[..], b"x");
    message.double_ack().await.unwrap();
    conn.drain(Duration::from_secs(2)).await;
}
