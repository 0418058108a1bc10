//! `switchyard accounts [--check]`: the NATS users of the locked-down
//! deployments, one per service, each allowed only what it needs. Derived
//! from the service manifests of the protocol crate (`protocol::manifest`),
//! so a renamed subject or a new stream cannot leave a stale or missing
//! permission behind:
//! - `deploy/nats/accounts.conf` (docker compose, included by nats.conf);
//! - `deploy/k8s/nats-values.yaml` (values for the official NATS Helm chart).

use protocol::manifest::{self, Manifest};
use protocol::subjects;
use std::path::PathBuf;

pub(crate) const CONF_PATH: &str = "deploy/nats/accounts.conf";
pub(crate) const HELM_PATH: &str = "deploy/k8s/nats-values.yaml";

#[derive(Debug, clap::Args)]
pub(crate) struct AccountsArgs {
    /// The repository root the two files live under.
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Only report files that differ; exit 1 if any does.
    #[arg(long)]
    check: bool,
}

/// One service's user: the env var holding its password and what it may do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct User {
    pub name: &'static str,
    pub password_env: &'static str,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// The JetStream API's account-wide info call.
const JS_API_INFO: &str = "$JS.API.INFO";

/// Every `$JS.API` call (and ack / flow control) a client of `stream` makes:
/// info/create/update, get and delete messages, and its consumers.
fn stream_access(stream: &str) -> Vec<String> {
    [
        "$JS.API.STREAM.*.{s}",
        "$JS.API.STREAM.MSG.GET.{s}",
        "$JS.API.STREAM.MSG.DELETE.{s}",
        "$JS.API.DIRECT.GET.{s}",
        "$JS.API.DIRECT.GET.{s}.>",
        "$JS.API.CONSUMER.CREATE.{s}",
        "$JS.API.CONSUMER.CREATE.{s}.>",
        "$JS.API.CONSUMER.DURABLE.CREATE.{s}.>",
        "$JS.API.CONSUMER.INFO.{s}.>",
        "$JS.API.CONSUMER.DELETE.{s}.>",
        "$JS.API.CONSUMER.MSG.NEXT.{s}.>",
        "$JS.ACK.{s}.>",
        "$JS.FC.{s}.>",
    ]
    .iter()
    .map(|p| p.replace("{s}", stream))
    .chain([protocol::subjects::stream_probe(stream)])
    .collect()
}

/// The stream behind KV bucket `bucket`.
fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// A KV bucket: its stream's API plus reads and writes of its keys.
fn bucket_access(bucket: &str) -> Vec<String> {
    // A bucket's stream has no probe subject: its probe is a key (`$KV.<bucket>.>`).
    let probe = protocol::subjects::stream_probe(&kv_stream(bucket));
    let mut out = stream_access(&kv_stream(bucket));
    out.retain(|s| *s != probe);
    out.push(subjects::kv_key(bucket, ">"));
    out
}

/// A bucket the service only reads one key of (and watches it over core
/// NATS): open or create the bucket, get the key, and the readiness probe
/// (refused by the stream, never stored). No other writes, no consumers.
fn key_read_access(bucket: &str) -> Vec<String> {
    let s = kv_stream(bucket);
    vec![
        format!("$JS.API.STREAM.INFO.{s}"),
        format!("$JS.API.STREAM.CREATE.{s}"),
        format!("$JS.API.STREAM.MSG.GET.{s}"),
        format!("$JS.API.DIRECT.GET.{s}.>"),
        subjects::kv_key(bucket, protocol::names::keys::USABLE_PROBE),
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
pub(crate) fn user(m: &Manifest) -> User {
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
        push_unique(&mut publish, stream_access(s.stream));
    }
    for b in m.buckets.iter().filter(|b| b.only_key.is_none()) {
        push_unique(&mut publish, bucket_access(b.bucket));
    }
    push_unique(&mut publish, m.js_publishes.iter().cloned());

    let mut subs = m.subscribes.clone();
    subs.push(subjects::INBOX_ALL.to_owned());
    subs.append(&mut subscribe);
    push_unique(&mut subs, m.endpoints.iter().map(|e| e.subject.clone()));
    push_unique(&mut subs, m.advisories.iter().map(|a| a.subject.clone()));
    User {
        name: m.user,
        password_env: m.password_env,
        publish,
        subscribe: subs,
    }
}

/// The six service users, in `services::ALL` order.
pub(crate) fn users() -> Vec<User> {
    manifest::ALL.iter().map(user).collect()
}

fn list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_default()
}

/// `deploy/nats/accounts.conf`.
pub(crate) fn render_conf(users: &[User]) -> String {
    let mut out = String::from(
        "# Generated by `just accounts` (switchyard accounts) from the service manifests\n\
         # (crates/protocol/src/manifest.rs); edit those, not this file. Passwords come from the\n\
         # environment. Account APP has JetStream; SYS is the system account.\n\
         accounts {\n  APP {\n    jetstream: enabled\n    users: [\n",
    );
    for u in users {
        out.push_str(&format!(
            "      {{ user: {}, password: ${}, permissions: {{\n          publish: {{ allow: {} }}\n          subscribe: {{ allow: {} }}\n          allow_responses: true\n      }}}}\n",
            u.name,
            u.password_env,
            list(&u.publish),
            list(&u.subscribe)
        ));
    }
    out.push_str(
        "      # Host clients (CLI, Python, tests): call services, publish payments and logs, discover, admin KV.\n\
         \x20     { user: client, password: $CLIENT_PASSWORD }\n    ]\n  }\n  SYS {\n    users: [ { user: sys, password: $SYS_PASSWORD } ]\n  }\n}\nsystem_account: SYS\n",
    );
    out
}

/// `deploy/k8s/nats-values.yaml`: the official chart's values with the same
/// users; passwords from the `switchyard-nats-users` Secret via env.
pub(crate) fn render_helm(users: &[User]) -> String {
    let mut env_names: Vec<&str> = users.iter().map(|u| u.password_env).collect();
    env_names.extend(["CLIENT_PASSWORD", "SYS_PASSWORD"]);
    let mut out = String::from(
        "# Values for the official NATS Helm chart (https://nats-io.github.io/k8s/helm/charts/, chart `nats` 1.x):\n\
         # a 3-node JetStream cluster with Switchyard's accounts. Generated by `just accounts`\n\
         # from the service manifests (crates/protocol/src/manifest.rs); do not edit by hand.\n\
         #   helm install nats nats/nats -n switchyard -f deploy/k8s/nats-values.yaml\n\
         config:\n  cluster:\n    enabled: true\n    replicas: 3\n  jetstream:\n    enabled: true\n    fileStore:\n      pvc:\n        size: 10Gi\n    # fsync every write before acknowledging it (the default flushes every 2 min)\n    merge:\n      sync_interval: always\n  merge:\n    system_account: SYS\n    accounts:\n      SYS:\n        users:\n          - user: sys\n            password: << $SYS_PASSWORD >>\n      APP:\n        jetstream: enabled\n        users:\n",
    );
    for u in users {
        out.push_str(&format!(
            "          - user: {}\n            password: << ${} >>\n            permissions:\n              publish: {{ allow: {} }}\n              subscribe: {{ allow: {} }}\n              allow_responses: true\n",
            u.name,
            u.password_env,
            list(&u.publish),
            list(&u.subscribe)
        ));
    }
    out.push_str(
        "          - user: client\n            password: << $CLIENT_PASSWORD >>\ncontainer:\n  env:\n",
    );
    for name in env_names {
        let key = name.trim_end_matches("_PASSWORD").to_lowercase();
        out.push_str(&format!(
            "    {name}:\n      valueFrom:\n        secretKeyRef: {{ name: switchyard-nats-users, key: {key} }}\n"
        ));
    }
    out
}

pub(crate) fn run(args: AccountsArgs) -> anyhow::Result<()> {
    let users = users();
    let files = vec![
        (args.root.join(CONF_PATH), render_conf(&users)),
        (args.root.join(HELM_PATH), render_helm(&users)),
    ];
    crate::generated::write_or_check(files, args.check, "just accounts")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(path: &str) -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        std::fs::read_to_string(root.join(path)).unwrap_or_default()
    }

    #[test]
    fn every_shipped_nats_config_fsyncs_each_write() {
        // Compose (deploy/nats/nats.conf) and the Helm values; testkit (and so
        // `switchyard up`) is checked on live nodes by testkit's own tests.
        let conf = committed("deploy/nats/nats.conf");
        let jetstream = &conf[conf.find("jetstream {").unwrap_or(0)..];
        let block = &jetstream[..jetstream.find('}').unwrap_or(0)];
        assert!(
            block.contains("sync_interval: always"),
            "nats.conf: {block}"
        );
        let helm = render_helm(&users());
        assert!(
            helm.contains("  jetstream:\n    enabled: true\n    fileStore:\n      pvc:\n        size: 10Gi\n    # fsync every write before acknowledging it (the default flushes every 2 min)\n    merge:\n      sync_interval: always\n"),
            "{helm}"
        );
    }

    #[test]
    fn committed_files_are_current() {
        let users = users();
        assert!(
            committed(CONF_PATH) == render_conf(&users),
            "{CONF_PATH} is stale: run `just accounts`"
        );
        assert!(
            committed(HELM_PATH) == render_helm(&users),
            "{HELM_PATH} is stale: run `just accounts`"
        );
    }

    #[test]
    fn k8s_manifests_run_every_service_as_its_own_user() {
        let manifests = committed("deploy/k8s/switchyard.yaml");
        for service in protocol::names::services::ALL {
            let binary = protocol::names::services::binary(service).unwrap_or_default();
            assert!(
                manifests.contains(&format!("image: switchyard/{binary}:")),
                "no {binary} in deploy/k8s/switchyard.yaml"
            );
        }
        for u in users() {
            assert!(
                manifests.contains(&format!(
                    "{{ name: SWITCHYARD__NATS__USER, value: {} }}",
                    u.name
                )) && manifests.contains(&format!("key: {} }}", u.name)),
                "user {} missing from deploy/k8s/switchyard.yaml",
                u.name
            );
        }
    }

    #[test]
    fn each_user_answers_only_its_own_service() {
        use protocol::names::services;
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
    fn every_manifest_subject_is_permitted() {
        for m in manifest::ALL.iter() {
            let u = user(m);
            let allowed = |list: &[String], s: &str| list.iter().any(|p| manifest::matches(p, s));
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
}
