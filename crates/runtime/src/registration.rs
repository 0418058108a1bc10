//! Every service registers itself with the registry, heartbeats, and
//! deregisters on graceful shutdown. A missing registry never holds a
//! service up: registering is retried quietly in the background.

use async_nats::Client;
use protocol::micro::InfoResponse;
use protocol::registry::{InstanceRef, OkReply, RegisterReply, RegisterRequest};
use protocol::{ErrorCode, subjects};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// `[service]` registration settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistrationSettings {
    /// Register with the registry at all.
    pub enabled: bool,
    /// Heartbeats are due within this many seconds; sent three times as often.
    pub ttl_s: u64,
}

impl Default for RegistrationSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_s: 10,
        }
    }
}

/// The background registration of one micro service instance.
#[derive(Debug)]
pub struct Registration {
    client: Client,
    me: InstanceRef,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Registration {
    pub(crate) fn start(
        client: Client,
        info: &InfoResponse,
        settings: RegistrationSettings,
    ) -> Self {
        let request = RegisterRequest {
            name: info.name.clone(),
            instance_id: info.id.clone(),
            version: info.version.clone(),
            endpoints: info.endpoints.iter().map(|e| e.subject.clone()).collect(),
            metadata: info.metadata.clone(),
            ttl_s: Some(settings.ttl_s.max(1)),
        };
        let me = InstanceRef {
            name: info.name.clone(),
            instance_id: info.id.clone(),
        };
        let stop = CancellationToken::new();
        // Heartbeats are housekeeping: their trace context is unsampled, so
        // a tracing backend is not filled with one trace per beat.
        let task = tokio::spawn(crate::trace::unsampled(heartbeat(
            client.clone(),
            request,
            me.clone(),
            stop.clone(),
        )));
        Self {
            client,
            me,
            stop,
            task,
        }
    }

    /// Stops heartbeating and removes this instance from the registry.
    pub async fn deregister(self) {
        self.stop.cancel();
        let _ = self.task.await;
        let left: Result<OkReply, _> = crate::client::call(
            &self.client,
            subjects::REGISTRY_DEREGISTER,
            &self.me,
            CALL_TIMEOUT,
        )
        .await;
        if let Err(err) = left {
            tracing::debug!(error = %err, "could not deregister");
        }
    }
}

async fn heartbeat(
    client: Client,
    request: RegisterRequest,
    me: InstanceRef,
    stop: CancellationToken,
) {
    let every = Duration::from_millis(request.ttl_s.unwrap_or(10) * 1000 / 3)
        .max(Duration::from_millis(200));
    let mut registered = false;
    loop {
        if registered {
            let beat: Result<OkReply, _> =
                crate::client::call(&client, subjects::REGISTRY_HEARTBEAT, &me, CALL_TIMEOUT).await;
            match beat {
                Ok(_) => {}
                Err(err) if err.code() == Some(ErrorCode::NotFound) => {
                    tracing::info!("the registry forgot this instance; registering again");
                    registered = false;
                    continue;
                }
                Err(err) => tracing::debug!(error = %err, "heartbeat failed"),
            }
        } else {
            let reply: Result<RegisterReply, _> =
                crate::client::call(&client, subjects::REGISTRY_REGISTER, &request, CALL_TIMEOUT)
                    .await;
            match reply {
                Ok(reply) => {
                    tracing::debug!(ttl_s = reply.ttl_s, "registered with the registry");
                    registered = true;
                }
                Err(err) => tracing::debug!(error = %err, "registry not reachable yet"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
