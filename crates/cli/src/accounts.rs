//! `switchyard accounts [--check]`: the NATS users of the locked-down
//! deployments, one per service, each allowed only what it needs. Written
//! from the protocol crate's subject, stream and bucket names, so a renamed
//! subject cannot leave a stale permission behind:
//! - `deploy/nats/accounts.conf` (docker compose, included by nats.conf);
//! - `deploy/k8s/nats-values.yaml` (values for the official NATS Helm chart).

use anyhow::Context as _;
use protocol::names::{buckets, services, streams};
use protocol::subjects;
use std::path::{Path, PathBuf};

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
    .collect()
}

/// A KV bucket: its stream's API plus reads and writes of its keys.
fn bucket_access(bucket: &str) -> Vec<String> {
    let mut out = stream_access(&format!("KV_{bucket}"));
    out.push(format!("$KV.{bucket}.>"));
    out
}

/// What every service does: read the maintenance flag (bucket `config`),
/// register with the registry, ship its logs, answer `$SRV` and requests.
fn common(service: &str) -> (Vec<String>, Vec<String>) {
    let config = format!("KV_{}", buckets::CONFIG);
    let publish = vec![
        "$JS.API.INFO".to_owned(),
        format!("$JS.API.STREAM.INFO.{config}"),
        format!("$JS.API.STREAM.CREATE.{config}"),
        format!("$JS.API.STREAM.MSG.GET.{config}"),
        format!("$JS.API.DIRECT.GET.{config}.>"),
        subjects::REGISTRY_REGISTER.to_owned(),
        subjects::REGISTRY_HEARTBEAT.to_owned(),
        subjects::REGISTRY_DEREGISTER.to_owned(),
        format!("logs.{service}.>"),
    ];
    let subscribe = vec![
        "$SRV.>".to_owned(),
        "_INBOX.>".to_owned(),
        format!(
            "$KV.{}.{}",
            buckets::CONFIG,
            protocol::names::keys::SITE_MAINTENANCE
        ),
    ];
    (publish, subscribe)
}

fn user(
    name: &'static str,
    service: &str,
    password_env: &'static str,
    publish: Vec<String>,
    subscribe: Vec<String>,
) -> User {
    let (mut p, mut s) = common(service);
    p.extend(publish);
    s.extend(subscribe);
    User {
        name,
        password_env,
        publish: p,
        subscribe: s,
    }
}

fn owned(subjects: &[&str]) -> Vec<String> {
    subjects.iter().map(|s| (*s).to_owned()).collect()
}

/// The six service users, in `services::ALL` order.
pub(crate) fn users() -> Vec<User> {
    let registry = {
        let mut p = bucket_access(buckets::REGISTRY);
        p.push("$SRV.>".into()); // it pings services to check them
        user(
            "registry",
            services::REGISTRY,
            "REGISTRY_PASSWORD",
            p,
            owned(&["services.registry.>"]),
        )
    };
    let math = user(
        "math",
        services::MATH,
        "MATH_PASSWORD",
        vec![],
        vec![format!("{}.>", subjects::MATH_PREFIX)],
    );
    let email = {
        let mut p = stream_access(streams::EMAILS);
        p.extend(stream_access(streams::EVENTS));
        p.extend(owned(&protocol::email::subjects::ALL));
        p.push("events.email.>".into());
        user(
            "email",
            services::EMAIL_NOTIFIER,
            "EMAIL_PASSWORD",
            p,
            owned(&[subjects::EMAIL_SEND]),
        )
    };
    let payments = {
        let mut p = stream_access(streams::PAYMENTS);
        p.extend(stream_access(streams::PAYMENTS_DLQ));
        p.extend(stream_access(streams::EVENTS));
        p.extend(bucket_access(buckets::PAYMENTS));
        p.extend(owned(&[
            subjects::PAYMENT_PROCESS,
            subjects::PAYMENT_DLQ,
            "events.payment.>",
        ]));
        user(
            "payments",
            services::PAYMENT_PROCESSOR,
            "PAYMENTS_PASSWORD",
            p,
            vec![
                subjects::PAYMENT_STATUS.into(),
                subjects::PAYMENT_REPLAY.into(),
                format!(
                    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.>",
                    streams::PAYMENTS
                ),
            ],
        )
    };
    let logs = {
        let mut p = stream_access(streams::LOGS);
        p.extend(bucket_access(buckets::LOG_STATS));
        user(
            "logs",
            services::LOG_WORKER,
            "LOGS_PASSWORD",
            p,
            owned(&[subjects::LOGS_STATS, subjects::LOGS_QUERY]),
        )
    };
    let stocks = {
        let mut p = stream_access(streams::STOCKS);
        p.extend(bucket_access(buckets::STOCKS_LEASE));
        p.push(subjects::STOCKS_ALL.into());
        user(
            "stocks",
            services::STOCK_TICKER,
            "STOCKS_PASSWORD",
            p,
            owned(&["services.stocks.>"]),
        )
    };
    vec![registry, math, email, payments, logs, stocks]
}

fn list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_default()
}

/// `deploy/nats/accounts.conf`.
pub(crate) fn render_conf(users: &[User]) -> String {
    let mut out = String::from(
        "# Generated by `just accounts` (switchyard accounts) from the protocol crate;\n\
         # edit crates/cli/src/accounts.rs, not this file. Passwords come from the\n\
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
         # from the protocol crate (crates/cli/src/accounts.rs); do not edit by hand.\n\
         #   helm install nats nats/nats -n switchyard -f deploy/k8s/nats-values.yaml\n\
         config:\n  cluster:\n    enabled: true\n    replicas: 3\n  jetstream:\n    enabled: true\n    fileStore:\n      pvc:\n        size: 10Gi\n  merge:\n    system_account: SYS\n    accounts:\n      SYS:\n        users:\n          - user: sys\n            password: << $SYS_PASSWORD >>\n      APP:\n        jetstream: enabled\n        users:\n",
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
    let mut stale = Vec::new();
    for (path, text) in [
        (CONF_PATH, render_conf(&users)),
        (HELM_PATH, render_helm(&users)),
    ] {
        let path = args.root.join(path);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
            continue;
        }
        if args.check {
            stale.push(path.display().to_string());
        } else {
            write(&path, &text)?;
            crate::say(format_args!("wrote {}", path.display()));
        }
    }
    anyhow::ensure!(
        stale.is_empty(),
        "stale: {}; run `just accounts`",
        stale.join(", ")
    );
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(path: &str) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        std::fs::read_to_string(root.join(path)).unwrap_or_default()
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
        for service in services::ALL {
            let binary = services::binary(service).unwrap_or_default();
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
        let users = users();
        let subscribes = |name: &str| -> Vec<String> {
            users
                .iter()
                .find(|u| u.name == name)
                .map(|u| u.subscribe.clone())
                .unwrap_or_default()
        };
        assert!(subscribes("math").contains(&"services.math.>".to_owned()));
        assert!(!subscribes("math").iter().any(|s| s.contains("payment")));
        assert!(subscribes("payments").contains(&subjects::PAYMENT_STATUS.to_owned()));
        for u in &users {
            assert!(
                !u.publish.iter().any(|s| s == ">" || s == "$JS.API.>"),
                "{u:?}"
            );
            assert!(u.publish.contains(&format!(
                "logs.{}.>",
                match u.name {
                    "math" => services::MATH,
                    "email" => services::EMAIL_NOTIFIER,
                    "payments" => services::PAYMENT_PROCESSOR,
                    "logs" => services::LOG_WORKER,
                    "stocks" => services::STOCK_TICKER,
                    _ => services::REGISTRY,
                }
            )));
        }
    }
}
