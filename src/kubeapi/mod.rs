//! Kubernetes access in one room: the client built the way flanneld builds it, the node's own
//! name, errors that say which verb on which resource failed, and a list-watch that never
//! misses a change (`watch`). The subnet manager (`lease::kube`) and the policy source use it.
//!
//! Client configuration follows flanneld (`clientcmd.BuildConfigFromFlags`): a kubeconfig file
//! (`--kubeconfig-file`), its server replaced by `--kube-api-url` when both are given; only
//! `--kube-api-url`: that server with no credentials; neither: in-cluster configuration, the
//! service account's token and CA under `/var/run/secrets/kubernetes.io/serviceaccount` and the
//! API server at `KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT`.

pub mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// Where the service account's files are mounted in a pod.
pub const SERVICEACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How to reach the API server (flanneld's flags).
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// `--kube-api-url`
    pub api_url: Option<String>,
    /// `--kubeconfig-file`
    pub kubeconfig: Option<PathBuf>,
    /// In-cluster files (`token`, `ca.crt`); the standard mount unless told otherwise.
    pub serviceaccount_dir: PathBuf,
}

/// A failed Kubernetes request, with what it was.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KubeError {
    /// The flags or files describe no usable client; retrying cannot help.
    #[error("{0}")]
    Config(String),
    /// RBAC says no: `nodes/status patch forbidden: ...`.
    #[error("{resource} {verb} forbidden: {message}")]
    Forbidden {
        verb: String,
        resource: String,
        message: String,
    },
    /// The credentials were refused (a revoked or expired token, a wrong certificate).
    #[error("{resource} {verb}: unauthorized ({message}); check the token or client certificate")]
    Unauthorized {
        verb: String,
        resource: String,
        message: String,
    },
    #[error("{resource} {verb}: not found")]
    NotFound { verb: String, resource: String },
    /// The resource version asked for is gone (`410 Gone`): list again.
    #[error("{resource} {verb}: resource version too old ({message})")]
    Gone {
        verb: String,
        resource: String,
        message: String,
    },
    /// Anything else: the server unreachable, a 5xx, a broken stream.
    #[error("{resource} {verb}: {message}")]
    Other {
        verb: String,
        resource: String,
        message: String,
    },
}

impl KubeError {
    /// Classifies a client error for `verb` on `resource` (`nodes/status`, `patch`).
    pub fn of(verb: &str, resource: &str, e: kube::Error) -> KubeError {
        let (verb, resource) = (verb.to_string(), resource.to_string());
        match e {
            kube::Error::Api(s) => {
                let message = s.message.clone();
                match s.code {
                    401 => KubeError::Unauthorized {
                        verb,
                        resource,
                        message,
                    },
                    403 => KubeError::Forbidden {
                        verb,
                        resource,
                        message,
                    },
                    404 => KubeError::NotFound { verb, resource },
                    410 => KubeError::Gone {
                        verb,
                        resource,
                        message,
                    },
                    code => KubeError::Other {
                        verb,
                        resource,
                        message: format!("{code} {}: {message}", s.reason),
                    },
                }
            }
            other => KubeError::Other {
                verb,
                resource,
                message: chain(&other),
            },
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, KubeError::NotFound { .. })
    }
}

/// An error with its causes, so a TLS or connection failure says what happened.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

fn config_error(what: impl std::fmt::Display) -> KubeError {
    KubeError::Config(what.to_string())
}

/// The client configuration the options describe (no request is made).
pub async fn config(opts: &KubeOptions) -> Result<Config, KubeError> {
    let mut cfg = match (&opts.kubeconfig, &opts.api_url) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| config_error(format!("--kubeconfig-file {}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| config_error(format!("--kubeconfig-file {}: {e}", path.display())))?
        }
        (None, Some(url)) => Config::new(parse_url(url)?),
        (None, None) => in_cluster(&opts.serviceaccount_dir)?,
    };
    if let (Some(url), Some(_)) = (&opts.api_url, &opts.kubeconfig) {
        cfg.cluster_url = parse_url(url)?;
    }
    // A dead API server must not hang a request for minutes; watches time out by themselves.
    cfg.read_timeout = Some(Duration::from_secs(60));
    cfg.reset_reader_on_write = true;
    Ok(cfg)
}

fn parse_url(url: &str) -> Result<http::Uri, KubeError> {
    url.parse::<http::Uri>()
        .ok()
        .filter(|u| u.scheme().is_some() && u.host().is_some())
        .ok_or_else(|| {
            config_error(format!(
                "--kube-api-url {url:?}: expected https://HOST:PORT or http://HOST:PORT"
            ))
        })
}

/// The in-cluster configuration: `KUBERNETES_SERVICE_HOST/PORT`, the service account's token
/// (re-read as it rotates) and CA.
fn in_cluster(dir: &Path) -> Result<Config, KubeError> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
        config_error(
            "no --kubeconfig-file or --kube-api-url, and not in a pod (KUBERNETES_SERVICE_HOST is not set)",
        )
    })?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let url = parse_url(&format!("https://{host}:{port}"))?;
    let ca_path = dir.join("ca.crt");
    let ca = std::fs::read(&ca_path)
        .map_err(|e| config_error(format!("in-cluster CA {}: {e}", ca_path.display())))?;
    let token_path = dir.join("token");
    if !token_path.exists() {
        return Err(config_error(format!(
            "in-cluster token {} does not exist",
            token_path.display()
        )));
    }
    let mut cfg = Config::new(url);
    cfg.root_cert = Some(
        pem_certificates(&ca)
            .map_err(|e| config_error(format!("in-cluster CA {}: {e}", ca_path.display())))?,
    );
    cfg.root_cert_file = Some(ca_path);
    cfg.auth_info = AuthInfo {
        token_file: Some(token_path.display().to_string()),
        ..Default::default()
    };
    if let Ok(ns) = std::fs::read_to_string(dir.join("namespace")) {
        cfg.default_namespace = ns.trim().to_string();
    }
    Ok(cfg)
}

/// The DER certificates in a PEM bundle.
fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let blocks = pem::parse_many(pem).map_err(|e| e.to_string())?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .collect();
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(certs)
}

/// A client for the options.
pub async fn client(opts: &KubeOptions) -> Result<Client, KubeError> {
    let cfg = config(opts).await?;
    Client::try_from(cfg).map_err(|e| config_error(format!("Kubernetes client: {}", chain(&e))))
}

/// This node's name: `NODE_NAME`, else the node of the pod `POD_NAMESPACE/POD_NAME` (how
/// flanneld finds it when the DaemonSet passes only the pod's identity).
pub async fn node_name(
    client: &Client,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, KubeError> {
    if let Some(n) = env("NODE_NAME").filter(|n| !n.is_empty()) {
        return Ok(n);
    }
    let (Some(pod), Some(ns)) = (env("POD_NAME"), env("POD_NAMESPACE")) else {
        return Err(config_error(
            "set NODE_NAME, or POD_NAME and POD_NAMESPACE, so podnetd knows which node it runs on",
        ));
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let p = pods
        .get(&pod)
        .await
        .map_err(|e| KubeError::of("get", &format!("pods {ns}/{pod}"), e))?;
    p.spec
        .and_then(|s| s.node_name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| config_error(format!("pod {ns}/{pod} has no spec.nodeName yet")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_bundles_and_errors() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAECAw==\n-----END CERTIFICATE-----\n\
                   -----BEGIN CERTIFICATE-----\nBA==\n-----END CERTIFICATE-----\n";
        assert_eq!(
            pem_certificates(pem.as_bytes()).unwrap(),
            vec![vec![0, 1, 2, 3], vec![4]]
        );
        assert!(
            pem_certificates(b"hello")
                .unwrap_err()
                .contains("no certificate")
        );
    }

    #[tokio::test]
    async fn options_become_a_config_or_name_the_flag() {
        let opts = KubeOptions {
            api_url: Some("https://198.18.0.2:6443".into()),
            ..Default::default()
        };
        let cfg = config(&opts).await.unwrap();
        assert_eq!(cfg.cluster_url.to_string(), "https://198.18.0.2:6443/");
        let bad = KubeOptions {
            api_url: Some("198.18.0.2".into()),
            ..Default::default()
        };
        let err = config(&bad).await.unwrap_err().to_string();
        assert!(err.starts_with("--kube-api-url \"198.18.0.2\""), "{err}");
        let missing = KubeOptions {
            kubeconfig: Some("/nonexistent/kubeconfig".into()),
            ..Default::default()
        };
        let err = config(&missing).await.unwrap_err().to_string();
        assert!(
            err.starts_with("--kubeconfig-file /nonexistent/kubeconfig"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_node_name_comes_from_the_environment_first() {
        let client = Client::try_from(Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap();
        let env = |k: &str| (k == "NODE_NAME").then(|| "node7".to_string());
        assert_eq!(node_name(&client, &env).await.unwrap(), "node7");
        let err = node_name(&client, &|_| None).await.unwrap_err().to_string();
        assert!(err.contains("POD_NAME and POD_NAMESPACE"), "{err}");
    }
}
