//! Test PKI and client configuration files: a CA, a server certificate, client certificates,
//! kubeconfig files and the in-cluster service-account files.
//!
//! Like kube-apiserver, the server maps a client certificate's CN to the user name and its O
//! to a group (rcgen writes at most one O per certificate, so one group at most here).

use crate::server::TlsConfig;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::fmt::Write as _;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// DNS names the real API server certificate carries (kubeadm's apiserver cert SANs).
pub const SERVER_DNS_NAMES: [&str; 5] = [
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "localhost",
];

/// A CA and a server certificate, as PEM text and as files in a directory.
pub struct Pki {
    /// Directory the files are in.
    pub dir: PathBuf,
    /// `ca.crt`.
    pub ca_cert_path: PathBuf,
    /// `server.crt`.
    pub server_cert_path: PathBuf,
    /// `server.key`.
    pub server_key_path: PathBuf,
    /// CA certificate PEM.
    pub ca_pem: String,
    /// Server certificate PEM.
    pub server_cert_pem: String,
    /// Server key PEM.
    pub server_key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A client certificate signed by the test CA.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// Certificate file.
    pub cert_path: PathBuf,
    /// Key file.
    pub key_path: PathBuf,
    /// Certificate PEM.
    pub cert_pem: String,
    /// Key PEM.
    pub key_pem: String,
}

fn rc(e: rcgen::Error) -> io::Error {
    io::Error::other(format!("certificate generation: {e}"))
}

fn write(path: &Path, text: &str) -> io::Result<()> {
    std::fs::write(path, text)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

impl Pki {
    /// Makes a CA and a server certificate for `ips` (plus [`SERVER_DNS_NAMES`]) in `dir`
    /// (created if needed): `ca.crt`, `ca.key`, `server.crt`, `server.key`.
    pub fn generate(dir: &Path, ips: &[IpAddr]) -> io::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate().map_err(rc)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        ca.distinguished_name
            .push(DnType::CommonName, "podnet-test-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = ca.self_signed(&ca_key).map_err(rc)?.pem();
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().map_err(rc)?;
        let mut sp =
            CertificateParams::new(SERVER_DNS_NAMES.map(String::from).to_vec()).map_err(rc)?;
        sp.subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        sp.distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert_pem = sp.signed_by(&server_key, &issuer).map_err(rc)?.pem();
        let server_key_pem = server_key.serialize_pem();

        let pki = Pki {
            dir: dir.to_path_buf(),
            ca_cert_path: dir.join("ca.crt"),
            server_cert_path: dir.join("server.crt"),
            server_key_path: dir.join("server.key"),
            ca_pem,
            server_cert_pem,
            server_key_pem,
            issuer,
        };
        write(&pki.ca_cert_path, &pki.ca_pem)?;
        write(&dir.join("ca.key"), &ca_key_pem)?;
        write(&pki.server_cert_path, &pki.server_cert_pem)?;
        write(&pki.server_key_path, &pki.server_key_pem)?;
        Ok(pki)
    }

    /// The server's TLS configuration, accepting client certificates signed by this CA.
    pub fn server_tls(&self) -> TlsConfig {
        TlsConfig {
            cert_pem: self.server_cert_pem.clone(),
            key_pem: self.server_key_pem.clone(),
            client_ca_pem: Some(self.ca_pem.clone()),
        }
    }

    /// A client certificate with CN `user` (and O `group`), written as
    /// `client-<user>.crt` / `.key` (characters other than `[A-Za-z0-9.-]` become `_`).
    pub fn client_cert(&self, user: &str, group: Option<&str>) -> io::Result<ClientCert> {
        let key = KeyPair::generate().map_err(rc)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        p.distinguished_name.push(DnType::CommonName, user);
        if let Some(g) = group {
            p.distinguished_name.push(DnType::OrganizationName, g);
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert_pem = p.signed_by(&key, &self.issuer).map_err(rc)?.pem();
        let file: String = user
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let cert = ClientCert {
            cert_path: self.dir.join(format!("client-{file}.crt")),
            key_path: self.dir.join(format!("client-{file}.key")),
            cert_pem,
            key_pem: key.serialize_pem(),
        };
        write(&cert.cert_path, &cert.cert_pem)?;
        write(&cert.key_path, &cert.key_pem)?;
        Ok(cert)
    }
}

/// How a kubeconfig user authenticates.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// No credentials (anonymous).
    None,
    /// A bearer token.
    Token(String),
    /// A client certificate and key, referenced by path.
    ClientCert {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
    },
}

/// How a kubeconfig names the CA.
#[derive(Debug, Clone, Copy)]
pub enum CaRef<'a> {
    /// No CA (plain HTTP servers).
    None,
    /// Embedded as `certificate-authority-data` (the PEM text).
    Data(&'a str),
    /// Referenced as `certificate-authority` (a file path).
    File(&'a Path),
}

/// YAML double-quoted scalar (JSON string syntax is valid YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Writes a kubeconfig with one cluster, user and context (namespace `default`), current.
pub fn write_kubeconfig(
    path: &Path,
    server_url: &str,
    ca: CaRef,
    creds: &Credentials,
) -> io::Result<()> {
    let mut y = String::from("apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n");
    let _ = writeln!(y, "    server: {}", q(server_url));
    match ca {
        CaRef::None => {}
        CaRef::Data(pem) => {
            let _ = writeln!(y, "    certificate-authority-data: {}", B64.encode(pem));
        }
        CaRef::File(p) => {
            let _ = writeln!(y, "    certificate-authority: {}", q(&p.to_string_lossy()));
        }
    }
    y.push_str("contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\n");
    y.push_str("current-context: test\nusers:\n- name: test\n  user:");
    match creds {
        Credentials::None => y.push_str(" {}\n"),
        Credentials::Token(t) => {
            let _ = write!(y, "\n    token: {}\n", q(t));
        }
        Credentials::ClientCert { cert, key } => {
            let _ = write!(
                y,
                "\n    client-certificate: {}\n    client-key: {}\n",
                q(&cert.to_string_lossy()),
                q(&key.to_string_lossy())
            );
        }
    }
    write(path, &y)
}

/// Writes `token`, `ca.crt` and `namespace` into `dir`, as kubelet mounts them at
/// /var/run/secrets/kubernetes.io/serviceaccount.
pub fn write_in_cluster_files(
    dir: &Path,
    token: &str,
    ca_pem: &str,
    namespace: &str,
) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write(&dir.join("token"), token)?;
    write(&dir.join("ca.crt"), ca_pem)?;
    write(&dir.join("namespace"), namespace)
}
