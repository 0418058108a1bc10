//! `switchyard secrets`: the passwords of a deployment, generated once into
//! an ignored env file (`.env` by default: docker compose reads it, and
//! `switchyard up` and the client commands read it too), so no deployment
//! runs on a password that is written down anywhere else.
//!
//! Every name of [`protocol::accounts::password_envs`] gets a random
//! 32-character alphanumeric value (~190 bits) unless the file already has
//! one; other lines are kept as they are. The file is written with mode
//! 0600 through a temporary file and a rename, so it is never half written.
//!
//! Values that look like the old committed defaults (`<user>-dev`) are
//! refused unless `SWITCHYARD_ALLOW_DEV_PASSWORDS=1` says this is a demo.

use anyhow::Context as _;
use protocol::accounts;
use rand::Rng as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the secrets live unless told otherwise.
pub(crate) const DEFAULT_FILE: &str = ".env";
/// Set to `1` to accept `<user>-dev` passwords (demos only).
pub(crate) const ALLOW_DEV_ENV: &str = "SWITCHYARD_ALLOW_DEV_PASSWORDS";
const LENGTH: usize = 32;

#[derive(Debug, clap::Args)]
pub(crate) struct SecretsArgs {
    /// The env file to create or complete.
    #[arg(long, default_value = DEFAULT_FILE)]
    file: PathBuf,
    /// Print a Kubernetes Secret (`switchyard-nats-users`) with the
    /// passwords instead of only writing the file (`| kubectl apply -f -`).
    #[arg(long)]
    k8s: bool,
}

/// The passwords, by env name.
pub(crate) type Secrets = BTreeMap<String, String>;

/// A random password.
fn generate() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(LENGTH)
        .map(char::from)
        .collect()
}

/// `KEY=VALUE` lines (comments, blanks and other lines skipped; optional
/// quotes removed).
pub(crate) fn parse(text: &str) -> Secrets {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_owned(), v.to_owned())
        })
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// The names whose value is a committed-looking default (`<user>-dev`,
/// `change-me`, empty).
pub(crate) fn weak(secrets: &Secrets) -> Vec<String> {
    accounts::password_envs()
        .into_iter()
        .filter(|name| {
            secrets.get(*name).is_some_and(|v| {
                v.is_empty() || v.ends_with("-dev") || v == "change-me" || v.len() < 12
            })
        })
        .map(str::to_owned)
        .collect()
}

/// Reads `file` (if present), adds a random value for every missing name,
/// writes it back (0600) when something was added, and returns the whole
/// set and the names it added. Refuses weak values unless
/// [`ALLOW_DEV_ENV`] is `1`.
pub(crate) fn ensure(file: &Path) -> anyhow::Result<(Secrets, Vec<String>)> {
    let existing = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let mut secrets = parse(&existing);
    let weak = weak(&secrets);
    if !weak.is_empty() && std::env::var(ALLOW_DEV_ENV).as_deref() != Ok("1") {
        anyhow::bail!(
            "{} holds weak or default passwords for {}: delete those lines and run `switchyard secrets` \
             to generate real ones (or set {ALLOW_DEV_ENV}=1 for a throwaway demo)",
            file.display(),
            weak.join(", ")
        );
    }
    let mut added = Vec::new();
    let mut text = existing.clone();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for name in accounts::password_envs() {
        if !secrets.contains_key(name) {
            let value = generate();
            text.push_str(&format!("{name}={value}\n"));
            secrets.insert(name.to_owned(), value);
            added.push(name.to_owned());
        }
    }
    if !added.is_empty() {
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        crate::certs::write_file(file, &text, true)?;
    }
    Ok((secrets, added))
}

/// Reads the secrets without creating anything: `None` when `file` does
/// not exist.
pub(crate) fn load(file: &Path) -> anyhow::Result<Option<Secrets>> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(Some(parse(&text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// The Kubernetes Secret `switchyard-nats-users` that
/// `deploy/k8s/nats-values.yaml` and `deploy/k8s/switchyard.yaml` read:
/// one key per user (`math`, `client`, ...: the env name without
/// `_PASSWORD`, lower case).
pub(crate) fn k8s_secret(secrets: &Secrets) -> String {
    let mut out = String::from(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: switchyard-nats-users\n  namespace: switchyard\ntype: Opaque\nstringData:\n",
    );
    for name in accounts::password_envs() {
        if let Some(v) = secrets.get(name) {
            let key = name.trim_end_matches("_PASSWORD").to_lowercase();
            out.push_str(&format!("  {key}: \"{v}\"\n"));
        }
    }
    out
}

pub(crate) fn run(args: SecretsArgs) -> anyhow::Result<()> {
    let (secrets, added) = ensure(&args.file)?;
    if args.k8s {
        crate::say(format_args!("{}", k8s_secret(&secrets).trim_end()));
    } else if added.is_empty() {
        crate::say(format_args!(
            "{}: every password is set ({} names)",
            args.file.display(),
            secrets.len()
        ));
    } else {
        crate::say(format_args!(
            "{}: generated {} ({} of {})",
            args.file.display(),
            added.join(", "),
            added.len(),
            accounts::password_envs().len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_every_missing_password_once_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".env");
        std::fs::write(
            &file,
            "# mine\nPUBLISH_ADDR=127.0.0.1\nMATH_PASSWORD=\"a-long-enough-secret\"",
        )
        .unwrap();
        let (first, added) = ensure(&file).unwrap();
        assert_eq!(first["MATH_PASSWORD"], "a-long-enough-secret");
        assert!(!added.contains(&"MATH_PASSWORD".to_owned()));
        assert_eq!(added.len(), accounts::password_envs().len() - 1);
        for name in accounts::password_envs() {
            assert!(first[name].len() >= 12, "{name}");
        }
        assert_ne!(first["CLIENT_PASSWORD"], first["ADMIN_PASSWORD"]);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("# mine\nPUBLISH_ADDR=127.0.0.1\n"),
            "{text}"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (second, added) = ensure(&file).unwrap();
        assert!(added.is_empty());
        assert_eq!(first, second);
    }

    #[test]
    fn refuses_the_old_dev_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".env");
        std::fs::write(&file, "CLIENT_PASSWORD=client-dev\n").unwrap();
        let err = ensure(&file).unwrap_err().to_string();
        assert!(err.contains("CLIENT_PASSWORD"), "{err}");
        assert!(err.contains(ALLOW_DEV_ENV), "{err}");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "CLIENT_PASSWORD=client-dev\n"
        );
    }

    #[test]
    fn the_k8s_secret_has_one_key_per_user() {
        let secrets: Secrets = accounts::password_envs()
            .into_iter()
            .map(|n| (n.to_owned(), format!("v-{n}")))
            .collect();
        let yaml = k8s_secret(&secrets);
        assert!(yaml.contains("  client: \"v-CLIENT_PASSWORD\"\n"), "{yaml}");
        assert!(yaml.contains("  admin: \"v-ADMIN_PASSWORD\"\n"), "{yaml}");
        assert!(yaml.contains("  route: \"v-ROUTE_PASSWORD\"\n"), "{yaml}");
    }
}
