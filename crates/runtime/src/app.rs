//! One lifecycle for every service: connect, build, serve, stop.
//!
//! ```text
//! App::connect ──▶ app.service(version, description)
//!                    .with_state(S)                       shared by every handler (S: Clone)
//!                    .endpoint(name, subject, handler)    handler(S, Req) -> Result<Resp, ServiceError>
//!                    .pull_worker(name, consumer, n, h)   h(S, jetstream::Message), n at once
//!                    .batch_worker(name, consumer, n, h)  h(S, Vec<jetstream::Message>) -> Vec<AckKind>
//!                    .task(name, f)                       f(S, stop) -> anyhow::Result<()>
//!                    .serve()
//!
//! serve: start workers and tasks, then the endpoints; wait for shutdown (or a
//!        worker or task failing) then, in this order:
//!   1. stop pulling; unstarted messages are nak'd (redelivered at once)
//!   2. in-flight messages finish within the grace period; after it they are
//!      cancelled and nak'd; tasks end (aborted after the grace period)
//!   3. endpoints stop taking requests and answer the ones in flight
//!   4. the connection is drained (publishes flushed) and closed
//! ```
//!
//! Every worker and task end is reported the same way (`task`, error or
//! panic). One that fails or panics before shutdown stops the service and
//! makes [`serve`](Builder::serve) return an error, so the process exits
//! non-zero and its supervisor restarts it.

use crate::micro;
use crate::settings::{AssetMode, Settings};
use crate::worker::{self, WorkerContext};
use crate::{logship, maintenance, nats};
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use protocol::ServiceError;
use serde::{Serialize, de::DeserializeOwned};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long closing the connection may take after the services stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Tasks get this long past the grace period to notice `stop` before they
/// are aborted.
const TASK_MARGIN: Duration = Duration::from_secs(1);

/// Shutdown was asked for before the cluster answered: not a failure.
/// [`main`](crate::main) and test harnesses treat it as a clean stop.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("stopped before the NATS cluster answered")]
pub struct Stopped;

/// True when `err` is [`Stopped`]: the service was stopped before it started.
pub fn is_stopped(err: &anyhow::Error) -> bool {
    err.downcast_ref::<Stopped>().is_some()
}

/// A connected service: the client, JetStream, the maintenance flag and the
/// shutdown token. Build on it with [`App::service`].
#[derive(Debug)]
pub struct App {
    name: String,
    id: String,
    pub settings: Settings,
    connection: nats::Connection,
    pub jetstream: jetstream::Context,
    shutdown: CancellationToken,
    background: CancellationToken,
    maintenance: watch::Receiver<bool>,
    replicas: usize,
}

impl App {
    /// Connects (waiting for the cluster as long as it takes) and starts
    /// watching the maintenance flag. Returns [`Stopped`] if `shutdown`
    /// fires first.
    pub async fn connect(
        name: &str,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<App> {
        let Some(connection) = nats::connect(&settings.nats, name, &shutdown).await? else {
            return Err(Stopped.into());
        };
        let jetstream = jetstream::new(connection.client.clone());
        logship::attach(&connection.client);
        let replicas = nats::effective_replicas(&connection.client, settings.jetstream.replicas);
        let background = CancellationToken::new();
        let mode = settings.jetstream.assets;
        let maintenance = if mode == AssetMode::Provision {
            // Provisioning creates the shared bucket and serves nothing.
            maintenance::config_bucket(&jetstream, replicas, mode).await?;
            watch::channel(false).1
        } else {
            maintenance::watch(
                connection.client.clone(),
                jetstream.clone(),
                replicas,
                mode,
                connection.reconnects(),
                background.clone(),
            )
            .0
        };
        Ok(App {
            name: name.to_owned(),
            id: nuid::next().to_string(),
            settings,
            connection,
            jetstream,
            shutdown,
            background,
            maintenance,
            replicas,
        })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.connection.client
    }

    /// The service name (`$SRV.PING` reports it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This instance's id, as `$SRV` replies and the registry carry it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Replicas for streams and buckets (1 against a lone server).
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// What this service does with its streams, buckets and consumers
    /// (`jetstream.assets`): pass it to [`crate::js::ensure_stream`],
    /// [`crate::js::ensure_kv`] and [`crate::js::ensure_consumer`].
    pub fn assets(&self) -> AssetMode {
        self.settings.jetstream.assets
    }

    /// The maintenance flag, as it is now and as it changes.
    pub fn maintenance(&self) -> watch::Receiver<bool> {
        self.maintenance.clone()
    }

    /// Starts building the service: endpoints, workers and tasks, then
    /// [`Builder::serve`].
    pub fn service(self, version: &str, description: &str) -> Builder<()> {
        let mut micro = micro::ServiceBuilder::new(self.client().clone(), &self.name, version)
            .id(self.id.clone())
            .description(description)
            .metadata(self.settings.service.metadata.clone())
            .max_payload(self.settings.service.max_payload)
            .max_in_flight(self.settings.service.max_in_flight)
            .maintenance(self.maintenance());
        let registry = self.settings.service.registry.clone();
        if registry.enabled {
            micro = micro.register(registry);
        }
        Builder {
            app: self,
            micro,
            state: (),
            jobs: Vec::new(),
        }
    }
}

type Job = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, anyhow::Result<()>> + Send>;

/// A service being built: its state, endpoints, workers and tasks.
pub struct Builder<S> {
    app: App,
    micro: micro::ServiceBuilder,
    state: S,
    jobs: Vec<(String, Job)>,
}

impl<S> std::fmt::Debug for Builder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("app", &self.app.name)
            .field("micro", &self.micro)
            .field(
                "jobs",
                &self.jobs.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<S: Clone + Send + Sync + 'static> Builder<S> {
    /// The state handed to every handler, worker and task added after this
    /// call (typically an `Arc` of the service's state struct).
    pub fn with_state<T: Clone + Send + Sync + 'static>(self, state: T) -> Builder<T> {
        Builder {
            app: self.app,
            micro: self.micro,
            state,
            jobs: self.jobs,
        }
    }

    /// The queue group of endpoints added after this call.
    pub fn queue_group(mut self, queue_group: &str) -> Self {
        self.micro = self.micro.queue_group(queue_group);
        self
    }

    /// Where this service's refused fire-and-forget requests are reported
    /// as events ([`micro::ServiceBuilder::rejections_to`]).
    pub fn rejections_to(mut self, subject: &str) -> Self {
        self.micro = self.micro.rejections_to(subject);
        self
    }

    /// Extra `$SRV.INFO` metadata.
    pub fn metadata(mut self, metadata: BTreeMap<String, String>) -> Self {
        self.micro = self.micro.metadata(metadata);
        self
    }

    /// A request-reply endpoint: JSON `Req` in, JSON `Resp` or a contract
    /// error out, in the service's queue group.
    pub fn endpoint<Req, Resp, H, Fut>(mut self, name: &str, subject: &str, handler: H) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
        H: Fn(S, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ServiceError>> + Send + 'static,
    {
        let state = self.state.clone();
        self.micro = self
            .micro
            .endpoint(name, subject, move |req: Req| handler(state.clone(), req));
        self
    }

    /// Like [`endpoint`](Self::endpoint); the handler also gets the subject
    /// the request came on (for wildcard subjects).
    pub fn endpoint_with_subject<Req, Resp, H, Fut>(
        mut self,
        name: &str,
        subject: &str,
        handler: H,
    ) -> Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
        H: Fn(S, String, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ServiceError>> + Send + 'static,
    {
        let state = self.state.clone();
        self.micro =
            self.micro
                .endpoint_with_subject(name, subject, move |subject: String, req: Req| {
                    handler(state.clone(), subject, req)
                });
        self
    }

    /// A worker's context; its `stop` token is replaced when it starts.
    fn worker_context(&self, name: &str, consumer: PullConsumer, n: usize) -> WorkerContext {
        WorkerContext {
            name: name.to_owned(),
            consumer,
            concurrency: n,
            maintenance: self.app.maintenance(),
            stop: CancellationToken::new(),
            grace: self.app.settings.service.shutdown_grace(),
        }
    }

    /// Works a durable pull consumer: `handler` runs for each message, at
    /// most `concurrency` at once, and acks, naks or terms it. Pauses in
    /// maintenance mode; see the module docs for what happens on stop.
    pub fn pull_worker<H, Fut>(
        mut self,
        name: &str,
        consumer: PullConsumer,
        concurrency: usize,
        handler: H,
    ) -> Self
    where
        H: Fn(S, jetstream::Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let state = self.state.clone();
        let mut context = self.worker_context(name, consumer, concurrency);
        let job: Job = Box::new(move |stop| {
            context.stop = stop;
            worker::run_pull(context, move |message| handler(state.clone(), message))
                .map(Ok)
                .boxed()
        });
        self.jobs.push((name.to_owned(), job));
        self
    }

    /// Works a durable pull consumer in batches of up to `batch` messages;
    /// `handler` returns the answer (ack, nak, term) for each message of its
    /// batch, in order, and the worker sends them (see
    /// [`worker::run_batch`]).
    pub fn batch_worker<H, Fut>(
        mut self,
        name: &str,
        consumer: PullConsumer,
        batch: usize,
        handler: H,
    ) -> Self
    where
        H: Fn(S, Vec<jetstream::Message>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<jetstream::AckKind>> + Send + 'static,
    {
        let state = self.state.clone();
        let mut context = self.worker_context(name, consumer, batch);
        let job: Job = Box::new(move |stop| {
            context.stop = stop;
            worker::run_batch(context, move |messages| handler(state.clone(), messages))
                .map(Ok)
                .boxed()
        });
        self.jobs.push((name.to_owned(), job));
        self
    }

    /// A background task: runs until `stop` fires (then it should return
    /// soon). An error or panic before shutdown stops the service.
    pub fn task<F, Fut>(mut self, name: &str, task: F) -> Self
    where
        F: FnOnce(S, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let state = self.state.clone();
        let job: Job = Box::new(move |stop| task(state, stop).boxed());
        self.jobs.push((name.to_owned(), job));
        self
    }

    /// Runs until shutdown (or until a worker or task fails), then stops in
    /// the order the module docs give.
    pub async fn serve(self) -> anyhow::Result<()> {
        let Builder {
            app, micro, jobs, ..
        } = self;
        if app.assets() == AssetMode::Provision {
            // `<binary> provision`: everything before `serve` made the
            // assets; nothing is served.
            tracing::info!(service = %app.name, "provisioned: streams, buckets and consumers are in place");
            app.background.cancel();
            app.connection.drain(DRAIN_TIMEOUT).await;
            return Ok(());
        }
        let stop_work = CancellationToken::new();
        let mut running = JoinSet::new();
        let mut names = HashMap::new();
        for (name, job) in jobs {
            let handle = running.spawn(job(stop_work.clone()));
            names.insert(handle.id(), name);
        }
        let service = match micro.start().await {
            Ok(service) => service,
            Err(err) => {
                stop_work.cancel();
                running.abort_all();
                while running.join_next().await.is_some() {}
                app.connection.drain(DRAIN_TIMEOUT).await;
                return Err(err.context("starting the service's endpoints"));
            }
        };

        let mut failure = None;
        loop {
            tokio::select! {
                _ = app.shutdown.cancelled() => break,
                Some(joined) = running.join_next_with_id() => {
                    let (name, result) = named(&mut names, joined);
                    if let Some(err) = report(&name, result, false) {
                        tracing::error!(task = %name, "stopping the service: a part of it failed");
                        failure = Some(err);
                        break;
                    }
                }
            }
        }

        // 1 and 2: stop pulling, let in-flight work finish, end the tasks.
        let grace = app.settings.service.shutdown_grace();
        let deadline = Instant::now() + grace;
        stop_work.cancel();
        loop {
            match tokio::time::timeout_at(deadline + TASK_MARGIN, running.join_next_with_id()).await
            {
                Ok(Some(joined)) => {
                    let (name, result) = named(&mut names, joined);
                    if let Some(err) = report(&name, result, true) {
                        failure.get_or_insert(err);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    let left: Vec<&String> = names.values().collect();
                    tracing::warn!(
                        ?left,
                        ?grace,
                        "still running after the shutdown grace period: aborted"
                    );
                    running.abort_all();
                    while running.join_next().await.is_some() {}
                    break;
                }
            }
        }
        // 3: endpoints stop taking requests and answer those in flight.
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let answered = service.shutdown(remaining).await;
        // 4: flush and close.
        app.background.cancel();
        app.connection.drain(DRAIN_TIMEOUT).await;
        if let Some(err) = failure {
            return Err(err);
        }
        anyhow::ensure!(
            answered,
            "some requests were still running after the {grace:?} shutdown grace period"
        );
        Ok(())
    }
}

fn named(
    names: &mut HashMap<tokio::task::Id, String>,
    joined: Result<(tokio::task::Id, anyhow::Result<()>), JoinError>,
) -> (String, Result<anyhow::Result<()>, JoinError>) {
    match joined {
        Ok((id, result)) => (names.remove(&id).unwrap_or_default(), Ok(result)),
        Err(err) => (names.remove(&err.id()).unwrap_or_default(), Err(err)),
    }
}

/// Logs how a worker or task ended; returns the error that should stop
/// the service, if any.
fn report(
    name: &str,
    result: Result<anyhow::Result<()>, JoinError>,
    stopping: bool,
) -> Option<anyhow::Error> {
    match result {
        Ok(Ok(())) if stopping => {
            tracing::debug!(task = name, "stopped");
            None
        }
        Ok(Ok(())) => {
            tracing::info!(task = name, "finished");
            None
        }
        Ok(Err(err)) => {
            tracing::error!(task = name, error = %format!("{err:#}"), "failed");
            Some(err.context(format!("{name} failed")))
        }
        Err(err) if err.is_panic() => {
            let panic = worker::panic_message(err.into_panic().as_ref());
            tracing::error!(task = name, %panic, "panicked");
            Some(anyhow::anyhow!("{name} panicked: {panic}"))
        }
        Err(_) => {
            tracing::warn!(task = name, "aborted");
            None
        }
    }
}
