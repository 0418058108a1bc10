//! `switchyard certs`: a local certificate authority and one certificate for
//! the NATS nodes, so clients, services and routes speak TLS.
//!
//! The directory (`.switchyard/certs` by default, ignored by git) gets:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem` | the CA certificate: what clients and nodes trust (`nats.tls_ca_file`) |
//! | `ca-key.pem` | the CA's key (0600): only needed to sign a new node certificate |
//! | `nats.pem` / `nats-key.pem` | the nodes' certificate (server **and** client auth: a route is both) and key (0600) |
//!
//! The node certificate names every address the nodes are reached at: the
//! compose hosts `nats1..3`, loopback, and the Helm chart's service and
//! headless names in namespace `switchyard`. Existing files are kept unless
//! `--force`, so running it twice changes nothing.

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Where the certificates go unless told otherwise.
pub(crate) const DEFAULT_DIR: &str = ".switchyard/certs";
pub(crate) const CA_CERT: &str = "ca.pem";
pub(crate) const CA_KEY: &str = "ca-key.pem";
pub(crate) const NODE_CERT: &str = "nats.pem";
pub(crate) const NODE_KEY: &str = "nats-key.pem";

/// Every name the NATS nodes answer to: compose, loopback, the Helm chart
/// (release `nats`, namespace `switchyard`, headless service `nats-headless`).
pub(crate) const NODE_NAMES: &[&str] = &[
    "nats1",
    "nats2",
    "nats3",
    "localhost",
    "127.0.0.1",
    "::1",
    "nats",
    "nats.switchyard.svc",
    "nats.switchyard.svc.cluster.local",
    "*.nats-headless",
    "*.nats-headless.switchyard.svc",
    "*.nats-headless.switchyard.svc.cluster.local",
];

/// The CA lives ten years, a node certificate two (renew with `--force`).
const CA_DAYS: i64 = 3650;
const NODE_DAYS: i64 = 730;

#[derive(Debug, clap::Args)]
pub(crate) struct CertsArgs {
    /// The directory to write the CA and the node certificate to.
    #[arg(long, default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// Replace existing files (a new CA: every client needs the new `ca.pem`).
    #[arg(long)]
    force: bool,
    /// Another name or IP address of the nodes (repeatable), e.g. the host's
    /// public name when `PUBLISH_ADDR` exposes the ports.
    #[arg(long = "name")]
    names: Vec<String>,
}

/// What [`ensure`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Everything was there already.
    Kept,
    /// A new CA and node certificate.
    Created,
    /// A new node certificate signed by the existing CA.
    NodeRenewed,
}

/// Makes the CA and the node certificate in `dir` unless they exist (or
/// `force`).
pub(crate) fn ensure(dir: &Path, force: bool, extra: &[String]) -> anyhow::Result<Outcome> {
    let has = |name: &str| dir.join(name).is_file();
    if !force && [CA_CERT, NODE_CERT, NODE_KEY].iter().all(|n| has(n)) {
        return Ok(Outcome::Kept);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let now = time::OffsetDateTime::now_utc();
    let (issuer, outcome) = if !force && has(CA_CERT) && has(CA_KEY) {
        let key = KeyPair::from_pem(&read(&dir.join(CA_KEY))?).context("parsing the CA key")?;
        let issuer = Issuer::from_ca_cert_pem(&read(&dir.join(CA_CERT))?, key)
            .context("parsing the CA certificate")?;
        (issuer, Outcome::NodeRenewed)
    } else {
        anyhow::ensure!(
            force || !has(CA_CERT),
            "{} exists without its key {CA_KEY}: pass --force to make a new CA",
            dir.join(CA_CERT).display()
        );
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "switchyard local CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "switchyard");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(CA_DAYS);
        let key = KeyPair::generate().context("generating the CA key")?;
        let cert = params.self_signed(&key).context("signing the CA")?;
        write_file(&dir.join(CA_KEY), &key.serialize_pem(), true)?;
        write_file(&dir.join(CA_CERT), &cert.pem(), false)?;
        (Issuer::new(params, key), Outcome::Created)
    };
    let names: Vec<String> = NODE_NAMES
        .iter()
        .map(|n| (*n).to_owned())
        .chain(extra.iter().cloned())
        .collect();
    let mut params = CertificateParams::new(names).context("the node names")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "switchyard nats node");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // A route is dialled by one node and accepted by another: the same
    // certificate is presented as a server and as a client.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(NODE_DAYS);
    let key = KeyPair::generate().context("generating the node key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the node certificate")?;
    write_file(&dir.join(NODE_KEY), &key.serialize_pem(), true)?;
    write_file(&dir.join(NODE_CERT), &cert.pem(), false)?;
    Ok(outcome)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes `text` through a temporary file and a rename; keys get 0600,
/// certificates 0644.
pub(crate) fn write_file(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", nuid::next()));
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    out.write_all(text.as_bytes())?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub(crate) fn run(args: CertsArgs) -> anyhow::Result<()> {
    let outcome = ensure(&args.dir, args.force, &args.names)?;
    let dir = args.dir.display();
    match outcome {
        Outcome::Kept => crate::say(format_args!(
            "{dir}: kept the existing {CA_CERT}, {NODE_CERT}, {NODE_KEY} (--force replaces them)"
        )),
        Outcome::Created => crate::say(format_args!(
            "{dir}: made a CA ({CA_CERT}, key {CA_KEY}) and the NATS node certificate \
             ({NODE_CERT}, key {NODE_KEY}) for {}{}",
            NODE_NAMES.join(", "),
            args.names
                .iter()
                .map(|n| format!(", {n}"))
                .collect::<String>()
        )),
        Outcome::NodeRenewed => crate::say(format_args!(
            "{dir}: signed a new NATS node certificate ({NODE_CERT}, key {NODE_KEY}) with the existing CA"
        )),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::*;

    fn der(path: &Path) -> Vec<u8> {
        let text = std::fs::read(path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&text).unwrap();
        pem.contents
    }

    #[test]
    fn makes_a_ca_and_a_node_certificate_for_servers_and_routes() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        assert_eq!(
            ensure(&certs, false, &["10.9.8.7".to_owned()]).unwrap(),
            Outcome::Created
        );

        let ca_der = der(&certs.join(CA_CERT));
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        assert!(ca.is_ca());
        let node_der = der(&certs.join(NODE_CERT));
        let (_, node) = X509Certificate::from_der(&node_der).unwrap();
        assert!(!node.is_ca());
        assert_eq!(node.issuer(), ca.subject());
        node.verify_signature(Some(ca.public_key())).unwrap();
        assert!(node.validity().is_valid());

        let eku = node.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth, "{eku:?}");

        let sans = node.subject_alternative_name().unwrap().unwrap();
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for name in &sans.value.general_names {
            match name {
                GeneralName::DNSName(n) => dns.push((*n).to_owned()),
                GeneralName::IPAddress(b) => ips.push(b.to_vec()),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        for name in [
            "nats1",
            "nats2",
            "nats3",
            "localhost",
            "nats",
            "nats.switchyard.svc",
            "nats.switchyard.svc.cluster.local",
            "*.nats-headless",
            "*.nats-headless.switchyard.svc",
            "*.nats-headless.switchyard.svc.cluster.local",
        ] {
            assert!(dns.iter().any(|d| d == name), "{name} missing from {dns:?}");
        }
        assert!(ips.contains(&vec![127, 0, 0, 1]), "{ips:?}");
        assert!(ips.contains(&vec![10, 9, 8, 7]), "--name {ips:?}");
        let mut v6 = vec![0u8; 16];
        v6[15] = 1;
        assert!(ips.contains(&v6), "{ips:?}");

        for (file, mode) in [
            (CA_KEY, 0o600),
            (NODE_KEY, 0o600),
            (CA_CERT, 0o644),
            (NODE_CERT, 0o644),
        ] {
            let m = std::fs::metadata(certs.join(file)).unwrap().permissions();
            assert_eq!(m.mode() & 0o777, mode, "{file}");
        }
        // The keys are parseable PEM of the certificates' keys.
        let key =
            KeyPair::from_pem(&std::fs::read_to_string(certs.join(NODE_KEY)).unwrap()).unwrap();
        assert_eq!(
            key.public_key_raw(),
            node.public_key().subject_public_key.data.as_ref()
        );
    }

    #[test]
    fn keeps_existing_files_renews_a_missing_node_cert_and_replaces_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path();
        ensure(certs, false, &[]).unwrap();
        let ca = std::fs::read(certs.join(CA_CERT)).unwrap();
        let node = std::fs::read(certs.join(NODE_CERT)).unwrap();
        assert_eq!(ensure(certs, false, &[]).unwrap(), Outcome::Kept);
        assert_eq!(std::fs::read(certs.join(NODE_CERT)).unwrap(), node);

        std::fs::remove_file(certs.join(NODE_CERT)).unwrap();
        assert_eq!(ensure(certs, false, &[]).unwrap(), Outcome::NodeRenewed);
        assert_eq!(std::fs::read(certs.join(CA_CERT)).unwrap(), ca);
        let renewed_der = der(&certs.join(NODE_CERT));
        let (_, renewed) = X509Certificate::from_der(&renewed_der).unwrap();
        let ca_der = der(&certs.join(CA_CERT));
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        renewed
            .verify_signature(Some(ca_cert.public_key()))
            .unwrap();

        assert_eq!(ensure(certs, true, &[]).unwrap(), Outcome::Created);
        assert_ne!(std::fs::read(certs.join(CA_CERT)).unwrap(), ca);
    }
}
