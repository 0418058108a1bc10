//! Observing the server refuse something on a cluster started with
//! [`ClusterOptions::accounts`](crate::ClusterOptions::accounts): a
//! connection as one user whose server errors (`Permissions Violation for
//! Publish to "…"` / `… Subscription to "…"`) are collected, and waits for
//! a given refusal. A refused publish or subscription is dropped by the
//! server without closing the connection; the error it sends back is the
//! only evidence, so a test flushes and then waits for it.

use crate::{Cluster, eventually};
use async_nats::{Event, ServerError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a refusal may take to be reported after a flush.
pub const REFUSAL_WAIT: Duration = Duration::from_secs(5);

/// What was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Publish,
    Subscription,
}

impl Refused {
    fn text(self) -> &'static str {
        match self {
            Refused::Publish => "permissions violation for publish to",
            Refused::Subscription => "permissions violation for subscription to",
        }
    }
}

/// A connection as one user that records the server's errors.
#[derive(Debug, Clone)]
pub struct Watched {
    pub user: String,
    pub client: async_nats::Client,
    errors: Arc<Mutex<Vec<String>>>,
}

/// Connects to `cluster` as `user` ([`Cluster::options_as`]: its password
/// and inbox prefix), recording the server's errors.
pub async fn connect_watched(cluster: &Cluster, user: &str) -> anyhow::Result<Watched> {
    watch(user, cluster.options_as(user)?, cluster.urls()).await
}

/// Connects to `urls` with `options` (already holding `user`'s credentials,
/// inbox prefix and any TLS), recording the server's errors: for clusters
/// testkit did not start (the compose stack).
pub async fn watch(
    user: &str,
    options: async_nats::ConnectOptions,
    urls: Vec<String>,
) -> anyhow::Result<Watched> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = options
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let Event::ServerError(ServerError::Other(e)) = event
                    && let Ok(mut seen) = seen.lock()
                {
                    seen.push(e);
                }
            }
        })
        .connect(urls)
        .await?;
    Ok(Watched {
        user: user.to_owned(),
        client,
        errors,
    })
}

impl Watched {
    /// Every server error so far.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Whether the server has reported refusing `what` on `subject`.
    pub fn was_refused(&self, what: Refused, subject: &str) -> bool {
        let quoted = format!("\"{subject}\"");
        self.errors()
            .iter()
            .any(|e| e.to_lowercase().contains(what.text()) && e.contains(&quoted))
    }

    /// Waits (up to [`REFUSAL_WAIT`]) until the server reported refusing
    /// `what` on `subject`; panics otherwise.
    pub async fn refused(&self, what: Refused, subject: &str) {
        eventually(
            &format!("{} is refused {what:?} {subject}", self.user),
            REFUSAL_WAIT,
            || async {
                if self.was_refused(what, subject) {
                    Ok(())
                } else {
                    Err(format!("server errors: {:?}", self.errors()))
                }
            },
        )
        .await;
    }

    /// Publishes on `subject` (no reply), flushes, and waits for the
    /// server's refusal.
    #[allow(clippy::panic, reason = "a test harness fails the test by panicking")]
    pub async fn publish_refused(&self, subject: &str) {
        if let Err(e) = self.client.publish(subject.to_owned(), "x".into()).await {
            panic!("{}: publish {subject}: {e}", self.user);
        }
        if let Err(e) = self.client.flush().await {
            panic!("{}: flush: {e}", self.user);
        }
        self.refused(Refused::Publish, subject).await;
    }

    /// Subscribes to `subject`, flushes, and waits for the server's refusal.
    /// The subscription is dropped after.
    #[allow(clippy::panic, reason = "a test harness fails the test by panicking")]
    pub async fn subscribe_refused(&self, subject: &str) {
        let sub = match self.client.subscribe(subject.to_owned()).await {
            Ok(sub) => sub,
            Err(e) => panic!("{}: subscribe {subject}: {e}", self.user),
        };
        if let Err(e) = self.client.flush().await {
            panic!("{}: flush: {e}", self.user);
        }
        self.refused(Refused::Subscription, subject).await;
        drop(sub);
    }

    /// Server errors that mention `needle` (for a positive control: what
    /// the user may do must produce none).
    pub fn errors_mentioning(&self, needle: &str) -> Vec<String> {
        self.errors()
            .into_iter()
            .filter(|e| e.contains(needle))
            .collect()
    }
}
