//! Connecting to the cluster the same way everywhere: a URL list, a client
//! name, retry forever with a short delay, auth and TLS from settings.

use crate::settings::NatsSettings;
use anyhow::Context as _;
use async_nats::{Client, ConnectOptions, Event, connection::State};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A connected client plus a signal that fires when the connection has
/// closed for good (after [`Client::drain`]).
#[derive(Debug, Clone)]
pub struct Connection {
    pub client: Client,
    closed: watch::Receiver<bool>,
    reconnects: watch::Receiver<u64>,
}

impl Connection {
    /// Counts (re)connections; changes each time the connection comes back,
    /// so watchers can re-establish server-side state at once.
    pub fn reconnects(&self) -> watch::Receiver<u64> {
        self.reconnects.clone()
    }

    /// Drains every subscription, flushes what was published, closes the
    /// connection, and waits (bounded) until it is closed.
    pub async fn drain(&self, timeout: Duration) {
        if let Err(err) = self.client.drain().await {
            tracing::warn!(error = %err, "drain failed");
            return;
        }
        let mut closed = self.closed.clone();
        if tokio::time::timeout(timeout, closed.wait_for(|c| *c))
            .await
            .is_err()
        {
            tracing::warn!(?timeout, "connection did not close in time after drain");
        }
    }
}

/// The `ConnectOptions` the settings describe (auth, TLS, timeouts, reconnect).
pub async fn options(settings: &NatsSettings, name: &str) -> anyhow::Result<ConnectOptions> {
    Ok(base_options(settings, name)
        .await?
        .retry_on_initial_connect()
        .max_reconnects(None))
}

/// Connects once, for a short-lived connection with credentials that may
/// be wrong (the dashboard's `admin` connection): every seed is tried once
/// and a refusal is returned at once instead of being retried forever in
/// the background. Auth and TLS are the settings', as in [`options`]; the
/// connection gives up after a few reconnects. An authorization refusal is
/// an [`async_nats::ConnectError`] of kind `AuthorizationViolation` (see
/// [`is_authorization_error`]).
pub async fn connect_once(settings: &NatsSettings, name: &str) -> anyhow::Result<Client> {
    let client = base_options(settings, name)
        .await?
        .max_reconnects(Some(3))
        .connect(settings.urls.clone())
        .await?;
    Ok(client)
}

/// Whether `err` (from [`connect_once`]) says the server refused the
/// credentials.
pub fn is_authorization_error(err: &anyhow::Error) -> bool {
    err.downcast_ref::<async_nats::ConnectError>()
        .is_some_and(|e| {
            matches!(
                e.kind(),
                async_nats::ConnectErrorKind::AuthorizationViolation
                    | async_nats::ConnectErrorKind::Authentication
            )
        })
}

async fn base_options(settings: &NatsSettings, name: &str) -> anyhow::Result<ConnectOptions> {
    let max_delay = Duration::from_millis(settings.reconnect_delay_max_ms);
    let mut opts = ConnectOptions::new()
        .name(settings.name.as_deref().unwrap_or(name))
        .connection_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .ping_interval(Duration::from_millis(settings.ping_interval_ms))
        .request_timeout(Some(settings.request_timeout()))
        // Grows 0, 50, 100 ... ms up to the configured maximum: a dead node
        // is left in well under a second.
        .reconnect_delay_callback(move |attempts| {
            Duration::from_millis(50 * attempts as u64).min(max_delay)
        });
    if settings.retain_servers_order {
        opts = opts.retain_servers_order();
    }
    if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
        opts = opts
            .user_and_password(user.clone(), password.clone())
            .custom_inbox_prefix(inbox_prefix(settings));
    } else if settings.user.is_some() || settings.password.is_some() {
        anyhow::bail!("nats.user and nats.password must be set together");
    }
    if let Some(token) = &settings.token {
        opts = opts.token(token.clone());
    }
    if let Some(seed) = &settings.nkey {
        opts = opts.nkey(seed.clone());
    }
    if let Some(path) = &settings.creds_file {
        opts = opts
            .credentials_file(path)
            .await
            .with_context(|| format!("reading nats.creds_file {}", path.display()))?;
    }
    if let Some(ca) = &settings.tls_ca_file {
        anyhow::ensure!(
            ca.is_file(),
            "nats.tls_ca_file {} is not a file",
            ca.display()
        );
        opts = opts.add_root_certificates(ca.clone());
    }
    match (&settings.tls_cert_file, &settings.tls_key_file) {
        (Some(cert), Some(key)) => {
            for file in [cert, key] {
                anyhow::ensure!(file.is_file(), "TLS file {} is not a file", file.display());
            }
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        (None, None) => {}
        _ => anyhow::bail!("nats.tls_cert_file and nats.tls_key_file must be set together"),
    }
    if settings.tls_required {
        opts = opts.require_tls(true);
    }
    Ok(opts)
}

/// The inbox prefix of connections with these settings: `_INBOX_<user>`
/// when `nats.user` is set (that user may read only those inboxes, see
/// `protocol::accounts`), else the default `_INBOX`.
pub fn inbox_prefix(settings: &NatsSettings) -> String {
    match &settings.user {
        Some(user) => protocol::subjects::inbox_prefix(user),
        None => protocol::subjects::INBOX_PREFIX.to_owned(),
    }
}

/// Connects and waits until the first connection is up, logging while it
/// waits. Returns `Ok(None)` if `shutdown` fires first.
pub async fn connect(
    settings: &NatsSettings,
    name: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Connection>> {
    let (closed_tx, closed) = watch::channel(false);
    let (reconnects_tx, reconnects) = watch::channel(0u64);
    let slow_reported = Arc::new(Mutex::new(HashSet::new()));
    let opts = options(settings, name).await?.event_callback(move |event| {
        let closed_tx = closed_tx.clone();
        let reconnects_tx = reconnects_tx.clone();
        let slow_reported = slow_reported.clone();
        async move {
            if matches!(event, Event::Connected) {
                reconnects_tx.send_modify(|n| *n += 1);
            }
            on_event(event, &closed_tx, &slow_reported)
        }
    });
    let client = opts
        .connect(settings.urls.clone())
        .await
        .with_context(|| format!("invalid NATS server list {:?}", settings.urls))?;
    let started = tokio::time::Instant::now();
    let mut next_warning = Duration::from_secs(3);
    loop {
        if client.connection_state() == State::Connected {
            let info = client.server_info();
            tracing::info!(
                server = %info.server_name,
                cluster = info.cluster.as_deref().unwrap_or("-"),
                "connected to NATS"
            );
            return Ok(Some(Connection {
                client,
                closed,
                reconnects,
            }));
        }
        if started.elapsed() >= next_warning {
            tracing::warn!(
                urls = ?settings.urls,
                waited_s = started.elapsed().as_secs(),
                "still waiting for a NATS server"
            );
            next_warning *= 2;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

fn on_event(event: Event, closed: &watch::Sender<bool>, slow: &Mutex<HashSet<u64>>) {
    match event {
        Event::Connected => tracing::info!("NATS connection (re)established"),
        Event::Disconnected => tracing::warn!("NATS connection lost; reconnecting"),
        Event::LameDuckMode => tracing::warn!("NATS server entering lame duck mode"),
        Event::Draining => tracing::debug!("NATS connection draining"),
        Event::Closed => {
            tracing::debug!("NATS connection closed");
            let _ = closed.send(true);
        }
        Event::SlowConsumer(sid) => {
            // Log each slow subscription once: the event repeats per dropped batch.
            let first = slow.lock().map(|mut s| s.insert(sid)).unwrap_or(true);
            if first {
                tracing::error!(
                    sid,
                    "slow consumer: messages were dropped for a subscription"
                );
            }
        }
        Event::ServerError(err) => tracing::error!(error = %err, "NATS server error"),
        Event::ClientError(err) => tracing::warn!(error = %err, "NATS client error"),
    }
}

/// The replica count to use for streams and buckets: the configured one,
/// or 1 (with a log line) when connected to a server outside a cluster.
pub fn effective_replicas(client: &Client, configured: usize) -> usize {
    if client.server_info().cluster.is_none() && configured > 1 {
        tracing::warn!(
            configured,
            "connected to a single NATS server (no cluster): using 1 replica"
        );
        1
    } else {
        configured
    }
}
