//! The NATS users of the locked-down deployments and what each may do, in
//! one pure place: derived from the service manifests ([`crate::manifest`]),
//! so a renamed subject or a new stream cannot leave a stale or missing
//! permission behind. `switchyard accounts` writes them out
//! (`deploy/nats/accounts.conf`, `deploy/k8s/nats-values.yaml`); testkit
//! starts clusters with the same [`render_conf`].
//!
//! Every user has its own inbox prefix ([`subjects::inbox_prefix`]) and may
//! subscribe only to its own inboxes, so no user reads another's replies,
//! KV answers or JetStream pull deliveries.

use crate::manifest::{self, Manifest};
use crate::subjects;

/// The host clients' user (CLI, Python client, tests).
pub const CLIENT: &str = "client";
/// The environment variable holding [`CLIENT`]'s password.
pub const CLIENT_PASSWORD_ENV: &str = "CLIENT_PASSWORD";
/// The operators' user: every right in account `APP` (streams, buckets,
/// consumers, the maintenance flag, dead letters, replays) except reading
/// other users' inboxes. Provisioning runs as this user.
pub const ADMIN: &str = "admin";
/// The environment variable holding [`ADMIN`]'s password.
pub const ADMIN_PASSWORD_ENV: &str = "ADMIN_PASSWORD";
/// Seed 004's four client roles (`switchyard role …`): core NATS on
/// `updates` and `ping` only.
pub const DEMO: &str = "demo";
/// The environment variable holding [`DEMO`]'s password.
pub const DEMO_PASSWORD_ENV: &str = "DEMO_PASSWORD";
/// Connections without credentials on a local `switchyard up` (its
/// `no_auth_user`): the seeds' snippets connect to `nats://localhost:4222`
/// with none. Never enabled in compose or k8s.
pub const GUEST: &str = "guest";
/// The environment variable holding [`GUEST`]'s password (unused by the
/// anonymous connections themselves; the user needs one).
pub const GUEST_PASSWORD_ENV: &str = "GUEST_PASSWORD";
/// The user the cluster's nodes authenticate each other's routes with.
pub const ROUTE: &str = "route";
/// The environment variable holding [`ROUTE`]'s password.
pub const ROUTE_PASSWORD_ENV: &str = "ROUTE_PASSWORD";
/// The system account's user.
pub const SYS: &str = "sys";
/// The environment variable holding [`SYS`]'s password.
pub const SYS_PASSWORD_ENV: &str = "SYS_PASSWORD";

/// One user of account `APP`: the env var holding its password and what it
/// may do.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: &'static str,
    pub password_env: &'static str,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// Subscriptions refused even where `subscribe` allows them (only
    /// [`admin`], whose allow list is everything: the other users' inboxes).
    pub subscribe_deny: Vec<String>,
    /// May publish to the reply subject of a message it received (services
    /// answering requests). The runtime answers only inboxes
    /// ([`subjects::is_inbox`]).
    pub allow_responses: bool,
}

/// The JetStream API's account-wide info call.
const JS_API_INFO: &str = "$JS.API.INFO";

/// Every `$JS.API` call a service makes on stream `s.stream` it uses. The
/// assets exist already: `admin` provisions them (`<binary> provision`),
/// and services run with `jetstream.assets = expect`, so a service never
/// creates, updates, deletes, purges, snapshots or restores a stream, and
/// never creates a durable consumer. (A user allowed to create or update a
/// stream could point its `sources`, `mirror` or `republish` at anything,
/// and one allowed to create a consumer could give it any deliver subject:
/// nats-server checks no permission there.) What is left:
/// - stream info, and reading messages (direct or through the leader);
/// - per durable consumer of its own (`durables`): its info, pulling
///   (`MSG.NEXT`) and acking (`$JS.ACK.<stream>.<durable>.>`);
/// - deleting single messages only with `deletes_messages`;
/// - short-lived ordered consumers only with `queries` (see
///   [`ordered_reads`]);
/// - its readiness probe (refused by the stream, never stored).
fn stream_access(s: &manifest::StreamUse, durables: &[&str]) -> Vec<String> {
    let name = s.stream;
    let mut out = reads(name);
    for d in durables {
        out.extend(durable_access(name, d));
    }
    if s.deletes_messages {
        out.push(format!("$JS.API.STREAM.MSG.DELETE.{name}"));
    }
    if s.queries {
        out.extend(ordered_reads(name));
    }
    out.push(subjects::stream_probe(name));
    out
}

/// Stream info and message reads of `stream`.
fn reads(stream: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
    ]
}

/// Info, pull and ack of durable consumer `durable` of `stream`, and
/// nothing of any other consumer.
fn durable_access(stream: &str, durable: &str) -> Vec<String> {
    vec![
        format!("$JS.API.CONSUMER.INFO.{stream}.{durable}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"),
        format!("$JS.ACK.{stream}.{durable}.>"),
    ]
}

/// Creating and reading short-lived ordered consumers on `stream` (a
/// query, a KV key listing). The one right here that names no consumer: an
/// ordered consumer gets a random name. What it can reach is `stream`'s
/// own messages, which the user reads anyway; `docs/SECURITY.md` lists the
/// deliver-subject caveat.
fn ordered_reads(stream: &str) -> Vec<String> {
    vec![
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
}

/// The stream behind KV bucket `bucket`.
fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// A KV bucket the service owns: reads, writes of its keys, and listing
/// its keys (an ordered consumer).
fn bucket_access(bucket: &str) -> Vec<String> {
    let stream = kv_stream(bucket);
    let mut out = reads(&stream);
    out.extend(ordered_reads(&stream));
    out.push(subjects::kv_key(bucket, ">"));
    out
}

/// A bucket the service only reads one key of (and watches it over core
/// NATS): get the key, and the readiness probe (a put the stream refuses,
/// never stored). No other writes, no consumers.
fn key_read_access(bucket: &str) -> Vec<String> {
    let s = kv_stream(bucket);
    vec![
        format!("$JS.API.STREAM.INFO.{s}"),
        format!("$JS.API.STREAM.MSG.GET.{s}"),
        format!("$JS.API.DIRECT.GET.{s}.>"),
        subjects::kv_key(bucket, crate::names::keys::USABLE_PROBE),
    ]
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// The user of one service, from its manifest.
pub fn user(m: &Manifest) -> User {
    let mut publish = Vec::new();
    let mut subscribe = Vec::new();
    if !m.streams.is_empty() || !m.buckets.is_empty() {
        publish.push(JS_API_INFO.to_owned());
    }
    for b in &m.buckets {
        if let Some(key) = b.only_key {
            push_unique(&mut publish, key_read_access(b.bucket));
            push_unique(&mut subscribe, [subjects::kv_key(b.bucket, key)]);
        }
    }
    push_unique(&mut publish, m.requests.iter().cloned());
    push_unique(&mut publish, m.publishes.iter().cloned());
    for s in &m.streams {
        let durables: Vec<&str> = m
            .consumers
            .iter()
            .filter(|c| c.stream == s.stream)
            .map(|c| c.durable)
            .collect();
        push_unique(&mut publish, stream_access(s, &durables));
    }
    for b in m.buckets.iter().filter(|b| b.only_key.is_none()) {
        push_unique(&mut publish, bucket_access(b.bucket));
    }
    push_unique(&mut publish, m.js_publishes.iter().cloned());
    if m.observes_jetstream {
        push_unique(&mut publish, jetstream_state());
    }

    let mut subs = m.subscribes.clone();
    subs.push(subjects::user_inbox_all(m.user));
    subs.append(&mut subscribe);
    push_unique(&mut subs, m.endpoints.iter().map(|e| e.subject.clone()));
    push_unique(&mut subs, m.advisories.iter().map(|a| a.subject.clone()));
    User {
        name: m.user,
        password_env: m.password_env,
        publish,
        subscribe: subs,
        subscribe_deny: vec![],
        allow_responses: true,
    }
}

/// The six service users, in `services::ALL` order.
pub fn users() -> Vec<User> {
    manifest::ALL.iter().map(user).collect()
}

/// Reading the state of every stream and consumer (counts, sizes, lag),
/// never a message: list, names and info calls.
fn jetstream_state() -> Vec<String> {
    [
        JS_API_INFO,
        "$JS.API.STREAM.NAMES",
        "$JS.API.STREAM.LIST",
        "$JS.API.STREAM.INFO.*",
        "$JS.API.CONSUMER.NAMES.*",
        "$JS.API.CONSUMER.LIST.*",
        "$JS.API.CONSUMER.INFO.*.*",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Endpoints only [`admin`] calls: re-queueing a failed payment is an
/// operation (it may charge again under a new idempotency key).
pub const ADMIN_ONLY_ENDPOINTS: [&str; 1] = [subjects::PAYMENT_REPLAY];

/// The applications' user (the CLI's everyday commands, the Python client,
/// apps): calls every service endpoint but the [`ADMIN_ONLY_ENDPOINTS`],
/// discovers (`$SRV`), publishes payments and logs, follows ticks, logs and
/// events, reads stream and consumer state, the maintenance flag and the
/// ticks' history. No JetStream administration (no stream, bucket or
/// consumer creation, update, deletion or purge; no KV writes; no dead
/// letters): that is [`admin`]. It subscribes only to its own inboxes.
pub fn client() -> User {
    let mut publish = vec![
        crate::micro::SRV_ALL.to_owned(),
        subjects::PAYMENT_PROCESS.to_owned(),
        subjects::LOGS_ALL.to_owned(),
        subjects::DEMO_ALL.to_owned(),
    ];
    // State, not content: stream and consumer info.
    push_unique(&mut publish, jetstream_state());
    // The maintenance flag, read only.
    push_unique(
        &mut publish,
        key_read_access(crate::names::buckets::CONFIG)
            .into_iter()
            .filter(|s| s.starts_with("$JS.API.")),
    );
    // `switchyard stocks history`: an ordered consumer on STOCKS.
    push_unique(
        &mut publish,
        reads(crate::names::streams::STOCKS)
            .into_iter()
            .chain(ordered_reads(crate::names::streams::STOCKS)),
    );
    for m in manifest::ALL.iter() {
        push_unique(
            &mut publish,
            m.endpoints
                .iter()
                .map(|e| e.subject.clone())
                .filter(|s| !ADMIN_ONLY_ENDPOINTS.contains(&s.as_str())),
        );
    }
    User {
        name: CLIENT,
        password_env: CLIENT_PASSWORD_ENV,
        publish,
        subscribe: vec![
            subjects::user_inbox_all(CLIENT),
            subjects::STOCKS_ALL.to_owned(),
            subjects::LOGS_ALL.to_owned(),
            subjects::EVENTS_ALL.to_owned(),
            subjects::DEMO_ALL.to_owned(),
        ],
        subscribe_deny: vec![],
        allow_responses: false,
    }
}

/// The operators' user ([`ADMIN`]): publishes and subscribes to anything
/// in account `APP` except the other users' inboxes (and the shared
/// `_INBOX.>` of connections without a user).
pub fn admin() -> User {
    let mut deny = vec![subjects::INBOX_ALL.to_owned()];
    deny.extend(
        users()
            .iter()
            .chain([&client(), &demo()])
            .map(|u| subjects::user_inbox_all(u.name))
            // Guests use `_INBOX.>` (denied above); a guest that sets the
            // prefix of its user name is denied too.
            .chain([subjects::user_inbox_all(GUEST)]),
    );
    User {
        name: ADMIN,
        password_env: ADMIN_PASSWORD_ENV,
        publish: vec![">".to_owned()],
        subscribe: vec![">".to_owned()],
        subscribe_deny: deny,
        allow_responses: false,
    }
}

/// Seed 004's roles ([`DEMO`]): publish and subscribe `updates`, request
/// and answer `ping` (the replier answers inboxes only), nothing else: no
/// service, no JetStream.
pub fn demo() -> User {
    User {
        name: DEMO,
        password_env: DEMO_PASSWORD_ENV,
        publish: vec![
            subjects::SEED_UPDATES.to_owned(),
            subjects::SEED_PING.to_owned(),
        ],
        subscribe: vec![
            subjects::user_inbox_all(DEMO),
            subjects::SEED_UPDATES.to_owned(),
            subjects::SEED_PING.to_owned(),
        ],
        subscribe_deny: vec![],
        allow_responses: true,
    }
}

/// Anonymous local connections ([`GUEST`]): what [`client`] may do, with
/// the shared default inbox `_INBOX.>` instead of a prefix of its own (a
/// program that sets no credentials sets no inbox prefix either). Guests
/// can read each other's replies, never another user's; only a local
/// `switchyard up` maps anonymous connections to it.
pub fn guest() -> User {
    let mut guest = client();
    guest.name = GUEST;
    guest.password_env = GUEST_PASSWORD_ENV;
    // Client's own inboxes become the shared default inbox.
    let own = subjects::user_inbox_all(CLIENT);
    for entry in &mut guest.subscribe {
        if *entry == own {
            *entry = subjects::INBOX_ALL.to_owned();
        }
    }
    guest
}

/// Every user of account `APP`: the six services, [`client`], [`admin`],
/// [`demo`], then [`guest`].
pub fn all() -> Vec<User> {
    let mut all = users();
    all.push(client());
    all.push(admin());
    all.push(demo());
    all.push(guest());
    all
}

/// The server option that maps connections without credentials to
/// [`GUEST`] (a local `switchyard up` only).
pub fn guest_conf() -> String {
    format!("no_auth_user: {GUEST}\n")
}

/// Every password a deployment needs, as environment variable names: the
/// users of [`all`], then [`SYS_PASSWORD_ENV`] and [`ROUTE_PASSWORD_ENV`].
/// `switchyard secrets` generates one random value for each.
pub fn password_envs() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = all().iter().map(|u| u.password_env).collect();
    out.push(SYS_PASSWORD_ENV);
    out.push(ROUTE_PASSWORD_ENV);
    out
}

/// A JSON list of subjects (the NATS config format accepts JSON arrays).
pub fn list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_default()
}

/// `, deny: [...]` after an allow list, when there is anything to deny.
pub fn deny_part(deny: &[String]) -> String {
    if deny.is_empty() {
        String::new()
    } else {
        format!(", deny: {}", list(deny))
    }
}

/// The server config for `users` (usually [`all`]): account `APP` with
/// JetStream and these users, and the system account `SYS`. Passwords are
/// `$<password_env>` variables, which nats-server resolves from its
/// environment. This is `deploy/nats/accounts.conf`.
pub fn render_conf(users: &[User]) -> String {
    let mut out = String::from(
        "# Generated by `just accounts` (switchyard accounts) from the service manifests\n\
         # (crates/protocol/src/manifest.rs, crates/protocol/src/accounts.rs); edit those, not\n\
         # this file. Passwords come from the environment. Account APP has JetStream; SYS is the\n\
         # system account. Each user has its own inbox prefix (_INBOX_<user>) and reads only it.\n\
         accounts {\n  APP {\n    jetstream: enabled\n    users: [\n",
    );
    for u in users {
        out.push_str(&format!(
            "      {{ user: {}, password: ${}, permissions: {{\n          publish: {{ allow: {} }}\n          subscribe: {{ allow: {}{} }}\n{}      }}}}\n",
            u.name,
            u.password_env,
            list(&u.publish),
            list(&u.subscribe),
            deny_part(&u.subscribe_deny),
            if u.allow_responses {
                "          allow_responses: true\n"
            } else {
                ""
            }
        ));
    }
    out.push_str(&format!(
        "    ]\n  }}\n  SYS {{\n    users: [ {{ user: {SYS}, password: ${SYS_PASSWORD_ENV} }} ]\n  }}\n}}\nsystem_account: SYS\n"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::services;

    fn allowed(list: &[String], s: &str) -> bool {
        list.iter().any(|p| manifest::matches(p, s))
    }

    #[test]
    fn each_user_answers_only_its_own_service() {
        let users = users();
        let user_of = |service: &str| -> &User {
            let name = manifest::of(service).map(|m| m.user).unwrap_or_default();
            users.iter().find(|u| u.name == name).unwrap()
        };
        let math = &user_of(services::MATH).subscribe;
        assert!(math.contains(&subjects::MATH_CALCULATE.to_owned()));
        assert!(!math.iter().any(|s| s.contains("payment")));
        assert!(
            user_of(services::PAYMENT_PROCESSOR)
                .subscribe
                .contains(&subjects::PAYMENT_STATUS.to_owned())
        );
        for m in manifest::ALL.iter() {
            let u = user_of(m.service);
            assert!(
                !u.publish.iter().any(|s| s == ">" || s == "$JS.API.>"),
                "{u:?}"
            );
            assert!(u.publish.contains(&subjects::logs_of(m.service).unwrap()));
        }
    }

    #[test]
    fn the_registry_reads_what_the_dashboard_shows_and_publishes_none_of_it() {
        let registry = manifest::of(services::REGISTRY).map(user).unwrap();
        for s in [
            "stocks.AAPL",
            "logs.payment-processor.info",
            "events.payment.completed",
            "events.payment.failed",
        ] {
            assert!(allowed(&registry.subscribe, s), "subscribe {s}");
            assert!(!allowed(&registry.publish, s), "publish {s}");
        }
        // No admin rights: the maintenance flag is written as `admin`.
        for s in [
            "$KV.config.site_maintenance",
            "$JS.API.STREAM.UPDATE.KV_config",
            "events.email.sent",
            "services.payment.payment-process",
        ] {
            assert!(!allowed(&registry.publish, s), "publish {s}");
        }
        for s in ["events.email.sent", "services.payment.payment-process"] {
            assert!(!allowed(&registry.subscribe, s), "subscribe {s}");
        }
    }

    #[test]
    fn every_manifest_subject_is_permitted() {
        for m in manifest::ALL.iter() {
            let u = user(m);
            for s in m.all_subscribed() {
                assert!(allowed(&u.subscribe, s), "{}: subscribe {s}", m.service);
            }
            for s in m.all_published() {
                assert!(allowed(&u.publish, s), "{}: publish {s}", m.service);
            }
            for c in &m.consumers {
                let next = format!("$JS.API.CONSUMER.MSG.NEXT.{}.{}", c.stream, c.durable);
                assert!(allowed(&u.publish, &next), "{}: {next}", m.service);
            }
        }
    }

    /// Every stream of the deployments, and the streams behind every bucket.
    fn every_stream() -> Vec<String> {
        use crate::names::{buckets, streams};
        let mut all: Vec<String> = streams::ALL.iter().map(|s| (*s).to_owned()).collect();
        all.extend(buckets::ALL.iter().map(|b| kv_stream(b)));
        all.push("ANY_OTHER".to_owned());
        all
    }

    #[test]
    fn no_service_user_deletes_purges_snapshots_or_restores_anything() {
        for u in users() {
            for stream in every_stream() {
                for verb in [
                    "STREAM.DELETE",
                    "STREAM.PURGE",
                    "STREAM.SNAPSHOT",
                    "STREAM.RESTORE",
                ] {
                    let subject = format!("$JS.API.{verb}.{stream}");
                    assert!(!allowed(&u.publish, &subject), "{}: {subject}", u.name);
                }
                let subject = format!("$JS.API.CONSUMER.DELETE.{stream}.any");
                assert!(!allowed(&u.publish, &subject), "{}: {subject}", u.name);
            }
            assert!(
                !u.publish
                    .iter()
                    .any(|p| p.starts_with("$JS.API.STREAM.*") || p.contains(".>.")),
                "{u:?}"
            );
        }
    }

    #[test]
    fn no_service_user_updates_a_shared_stream_or_any_bucket() {
        for u in users() {
            for stream in every_stream() {
                let subject = format!("$JS.API.STREAM.UPDATE.{stream}");
                if stream == crate::names::streams::EVENTS || stream.starts_with("KV_") {
                    assert!(!allowed(&u.publish, &subject), "{}: {subject}", u.name);
                }
            }
        }
    }

    #[test]
    fn only_payments_deletes_messages_and_only_from_payments() {
        for u in users() {
            for stream in every_stream() {
                let subject = format!("$JS.API.STREAM.MSG.DELETE.{stream}");
                let expected = u.name == "payments" && stream == crate::names::streams::PAYMENTS;
                assert_eq!(
                    allowed(&u.publish, &subject),
                    expected,
                    "{}: {subject}",
                    u.name
                );
            }
        }
    }

    #[test]
    fn services_read_what_they_use_and_touch_only_their_own_durables() {
        for m in manifest::ALL.iter() {
            let u = user(m);
            let streams = m
                .streams
                .iter()
                .map(|s| s.stream.to_owned())
                .chain(m.buckets.iter().map(|b| kv_stream(b.bucket)));
            for s in streams {
                for verb in ["STREAM.INFO", "STREAM.MSG.GET"] {
                    let subject = format!("$JS.API.{verb}.{s}");
                    assert!(allowed(&u.publish, &subject), "{}: {subject}", m.service);
                }
            }
            for c in &m.consumers {
                for subject in [
                    format!("$JS.API.CONSUMER.INFO.{}.{}", c.stream, c.durable),
                    format!("$JS.API.CONSUMER.MSG.NEXT.{}.{}", c.stream, c.durable),
                    format!("$JS.ACK.{}.{}.1.2.3.4.5", c.stream, c.durable),
                ] {
                    assert!(allowed(&u.publish, &subject), "{}: {subject}", m.service);
                }
                // Another durable on the same stream: nothing.
                for subject in [
                    format!("$JS.API.CONSUMER.INFO.{}.other", c.stream),
                    format!("$JS.API.CONSUMER.MSG.NEXT.{}.other", c.stream),
                    format!("$JS.ACK.{}.other.1.2.3.4.5", c.stream),
                ] {
                    let queried = m.streams.iter().any(|s| s.stream == c.stream && s.queries);
                    if !queried || subject.starts_with("$JS.ACK") {
                        assert!(!allowed(&u.publish, &subject), "{}: {subject}", m.service);
                    }
                }
            }
        }
    }

    #[test]
    fn no_service_user_creates_or_updates_a_stream_or_a_durable_consumer() {
        for u in users() {
            for stream in every_stream() {
                for verb in ["STREAM.CREATE", "STREAM.UPDATE"] {
                    let subject = format!("$JS.API.{verb}.{stream}");
                    assert!(!allowed(&u.publish, &subject), "{}: {subject}", u.name);
                }
                for subject in [
                    format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.d"),
                    format!("$JS.API.CONSUMER.CREATE.{stream}"),
                    format!("$JS.API.CONSUMER.CREATE.{stream}.d"),
                ] {
                    // Only the ordered consumers of a query (log-worker on
                    // LOGS) and of a key listing (a bucket it owns).
                    let expected = allowed(&u.publish, &subject)
                        && (stream == crate::names::streams::LOGS && u.name == "logs"
                            || stream.starts_with("KV_")
                                && manifest::ALL.iter().any(|m| {
                                    m.user == u.name
                                        && m.buckets.iter().any(|b| {
                                            b.only_key.is_none() && kv_stream(b.bucket) == stream
                                        })
                                }));
                    assert_eq!(
                        allowed(&u.publish, &subject),
                        expected,
                        "{}: {subject}",
                        u.name
                    );
                }
            }
        }
    }

    #[test]
    fn the_client_administers_nothing() {
        let c = client();
        for stream in every_stream() {
            for verb in [
                "STREAM.CREATE",
                "STREAM.UPDATE",
                "STREAM.DELETE",
                "STREAM.PURGE",
                "STREAM.MSG.DELETE",
                "STREAM.SNAPSHOT",
                "STREAM.RESTORE",
                "STREAM.MSG.GET",
            ] {
                let subject = format!("$JS.API.{verb}.{stream}");
                let expected = verb == "STREAM.MSG.GET"
                    && (stream == crate::names::streams::STOCKS || stream == "KV_config");
                assert_eq!(allowed(&c.publish, &subject), expected, "client: {subject}");
            }
            let subject = format!("$JS.API.CONSUMER.DELETE.{stream}.any");
            assert!(!allowed(&c.publish, &subject), "client: {subject}");
        }
        for subject in [
            "$KV.config.site_maintenance",
            "$KV.payments.pay-1",
            "$JS.API.DIRECT.GET.KV_payments.$KV.payments.pay-1",
            "$JS.API.CONSUMER.CREATE.PAYMENTS_DLQ",
            "$JS.ACK.PAYMENTS.payment-processor.1.1.1.1.1",
            subjects::PAYMENT_REPLAY,
            subjects::PAYMENT_DLQ,
            subjects::EVENT_PAYMENT_COMPLETED,
        ] {
            assert!(!allowed(&c.publish, subject), "client: {subject}");
        }
    }

    #[test]
    fn a_guest_is_a_client_with_the_shared_inbox_and_reads_no_user_inbox() {
        let (g, c) = (guest(), client());
        assert_eq!(g.publish, c.publish);
        assert!(!g.allow_responses);
        assert!(allowed(&g.subscribe, "_INBOX.abc"));
        for u in all().iter().filter(|u| u.name != GUEST) {
            let theirs = format!("{}.abc", subjects::inbox_prefix(u.name));
            assert!(!allowed(&g.subscribe, &theirs), "{theirs}");
        }
        assert_eq!(guest_conf(), "no_auth_user: guest\n");
    }

    #[test]
    fn admin_may_do_everything() {
        let a = admin();
        for s in [
            "$JS.API.STREAM.DELETE.PAYMENTS",
            "$JS.API.STREAM.CREATE.X",
            subjects::PAYMENT_REPLAY,
            "$KV.config.site_maintenance",
        ] {
            assert!(allowed(&a.publish, s), "admin: {s}");
        }
    }

    #[test]
    fn every_user_reads_only_its_own_inboxes() {
        let all = all();
        assert_eq!(all.len(), manifest::ALL.len() + 4);
        // What the server lets `u` subscribe to: allowed and not denied.
        let may_read =
            |u: &User, s: &str| allowed(&u.subscribe, s) && !allowed(&u.subscribe_deny, s);
        for u in all.iter().filter(|u| u.name != GUEST) {
            let own = format!("{}.abc", subjects::inbox_prefix(u.name));
            assert!(may_read(u, &own), "{}: {own}", u.name);
            assert!(!may_read(u, "_INBOX.abc"), "{}", u.name);
            if u.name != ADMIN {
                assert!(
                    !u.subscribe
                        .iter()
                        .any(|s| s == ">" || s.starts_with("_INBOX.")),
                    "{u:?}"
                );
            }
            for other in all.iter().filter(|o| o.name != u.name) {
                let theirs = format!("{}.abc", subjects::inbox_prefix(other.name));
                assert!(!may_read(u, &theirs), "{} may read {theirs}", u.name);
            }
        }
    }

    #[test]
    fn the_client_calls_every_endpoint_and_publishes_what_hosts_publish() {
        let c = client();
        assert!(!c.allow_responses);
        for m in manifest::ALL.iter() {
            for e in &m.endpoints {
                let subject = e.subject.replace('*', "x");
                let expected = !ADMIN_ONLY_ENDPOINTS.contains(&e.subject.as_str());
                assert_eq!(allowed(&c.publish, &subject), expected, "client: {subject}");
            }
        }
        for s in [
            subjects::PAYMENT_PROCESS,
            subjects::EMAIL_SEND,
            "logs.math.info",
            subjects::LOGS_PROCESS,
            "$JS.API.STREAM.INFO.PAYMENTS",
            "$JS.API.DIRECT.GET.KV_config.$KV.config.site_maintenance",
            "$JS.API.CONSUMER.CREATE.STOCKS",
            "$SRV.PING",
        ] {
            assert!(allowed(&c.publish, s), "client: publish {s}");
        }
        for s in ["stocks.AAPL", "logs.math.info", "events.payment.completed"] {
            assert!(allowed(&c.subscribe, s), "client: subscribe {s}");
        }
        // Not a service: it cannot publish events or answer requests.
        assert!(!allowed(&c.publish, subjects::EVENT_PAYMENT_COMPLETED));
    }

    #[test]
    fn the_conf_has_every_user_with_its_permissions() {
        let all = all();
        let conf = render_conf(&all);
        for u in &all {
            assert!(
                conf.contains(&format!(
                    "{{ user: {}, password: ${}, permissions: {{",
                    u.name, u.password_env
                )),
                "{}",
                u.name
            );
            assert!(conf.contains(&list(&u.subscribe)), "{}", u.name);
        }
        // `_INBOX.>` appears only in admin's deny list and as the guests'
        // shared inbox.
        assert_eq!(conf.matches("\"_INBOX.>\"").count(), 2, "{conf}");
        assert!(conf.contains(&format!("deny: {}", list(&admin().subscribe_deny))));
        // The services, and seed 004's replier.
        assert_eq!(
            conf.matches("allow_responses: true").count(),
            manifest::ALL.len() + 1
        );
        assert!(conf.ends_with("system_account: SYS\n"));
    }
}
