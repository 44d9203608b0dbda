//! podnet running in a lab: the one harness behind the integration tests, the benchmarks and
//! `podnetctl lab demo`. It starts the lab (with its etcd), writes the network config, starts
//! podnetd on nodes with the lab's paths, waits until a node is ready, and adds pods through
//! the CNI plugin the way a container runtime calls it.
//!
//! Each node keeps its files in the lab's node directory: `subnet.env`, `podnetd.sock`, the
//! plugin's IPAM state (`ipam/`) and flannel's delegate directory (`flannel/`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::process::ProcRecord;
use super::{Lab, LabError, LabSpec};
use crate::lease::etcd::DEFAULT_PREFIX;
use crate::subnet_env::SubnetEnv;

/// The programs under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub podnetd: PathBuf,
    /// The CNI plugin.
    pub plugin: PathBuf,
}

impl Binaries {
    /// The binaries next to the running one (what an installed `podnetctl` finds).
    pub fn beside_this_program() -> Result<Binaries, LabError> {
        let exe = std::env::current_exe().map_err(|e| LabError::io("find this program", e))?;
        let dir = exe.parent().unwrap_or(Path::new("/"));
        let find = |name: &str| {
            let p = dir.join(name);
            if p.exists() {
                Ok(p)
            } else {
                Err(LabError::Invalid(format!(
                    "{} not found next to {}; build every binary first: cargo build --release",
                    p.display(),
                    exe.display()
                )))
            }
        };
        Ok(Binaries {
            podnetd: find("podnetd")?,
            plugin: find("podnet")?,
        })
    }
}

/// A pod wired in by the plugin.
#[derive(Debug, Clone)]
pub struct Pod {
    pub node: String,
    pub name: String,
    /// `/run/netns/...`
    pub netns: String,
    pub container: String,
    /// The pod's IPv4 address (`0.0.0.0` in an IPv6-only network).
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address, in a dual-stack or IPv6-only network.
    pub ip6: Option<Ipv6Addr>,
    /// The plugin's result, as it printed it.
    pub result: serde_json::Value,
}

impl Pod {
    /// The lab's name for the pod (`node1/a`).
    pub fn target(&self) -> String {
        format!("{}/{}", self.node, self.name)
    }
}

/// What the harness reads of a CNI result.
#[derive(Deserialize)]
struct AddResult {
    ips: Vec<ResultIp>,
}

#[derive(Deserialize)]
struct ResultIp {
    address: String,
}

/// A lab with podnet's programs.
pub struct Cluster {
    pub lab: Lab,
    /// The lab's etcd client URLs, comma-separated.
    pub eps: String,
    pub bins: Binaries,
    /// Set (by a signal handler) to make every wait give up.
    interrupt: Option<&'static AtomicBool>,
}

impl Cluster {
    pub fn up(spec: &LabSpec, bins: Binaries) -> Result<Cluster, LabError> {
        let lab = Lab::up(spec)?;
        let eps = lab.etcd_endpoints();
        Ok(Cluster {
            lab,
            eps,
            bins,
            interrupt: None,
        })
    }

    /// Makes waits fail once `flag` is set.
    pub fn interruptible(&mut self, flag: &'static AtomicBool) {
        self.interrupt = Some(flag);
    }

    /// Polls `f` every 50 ms until it returns `Some`, for at most `timeout`.
    pub fn poll<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> Result<T, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.interrupt.is_some_and(|i| i.load(Ordering::SeqCst)) {
                return Err(LabError::Invalid("interrupted".into()));
            }
            if let Some(v) = f() {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(LabError::Invalid(format!(
                    "timed out after {timeout:?} waiting for {what}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `etcdctl` against the lab's etcd, run from the first member's namespace; its output.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, LabError> {
        let mut argv = vec!["etcdctl", "--endpoints", &self.eps];
        argv.extend_from_slice(args);
        let out = self.lab.exec("etcd1", &argv)?;
        if !out.status.success() {
            return Err(LabError::Etcd(format!(
                "etcdctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes the network config where podnetd reads it (flannel's default prefix).
    pub fn put_config(&self, json: &str) -> Result<(), LabError> {
        self.etcdctl(&["put", &format!("{DEFAULT_PREFIX}/config"), json])
            .map(|_| ())
    }

    /// Lease keys (without the prefix) and their values, as stored.
    pub fn leases(&self) -> Result<Vec<(String, String)>, LabError> {
        let prefix = format!("{DEFAULT_PREFIX}/subnets/");
        let out = self.etcdctl(&["get", "--prefix", &prefix])?;
        let lines: Vec<&str> = out.lines().collect();
        Ok(lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| {
                (
                    c[0].trim_start_matches(&prefix).to_string(),
                    c[1].to_string(),
                )
            })
            .collect())
    }

    /// A node's directory for its files.
    pub fn node_dir(&self, node: &str) -> Result<PathBuf, LabError> {
        self.lab.node_dir(node)
    }

    /// Where the plugin's pod records on a node go (`cni_conf`'s `podRecordsDir`).
    pub fn pod_records_dir(&self, node: &str) -> Result<PathBuf, LabError> {
        Ok(self.node_dir(node)?.join("pods"))
    }

    pub fn env_path(&self, node: &str) -> Result<PathBuf, LabError> {
        Ok(self.node_dir(node)?.join("subnet.env"))
    }

    pub fn socket_path(&self, node: &str) -> Result<PathBuf, LabError> {
        Ok(self.node_dir(node)?.join("podnetd.sock"))
    }

    /// podnetd's command line on a node: the lab's endpoints and paths, then `extra` (a flag
    /// given again replaces the earlier one).
    pub fn podnetd_args(&self, node: &str, extra: &[&str]) -> Result<Vec<String>, LabError> {
        let defaults = [
            format!("--etcd-endpoints={}", self.eps),
            format!("--subnet-file={}", self.env_path(node)?.display()),
            format!("--status-socket={}", self.socket_path(node)?.display()),
            // The node's pod records, where `cni_conf` has its plugin write them.
            format!(
                "--pod-records-dir={}",
                self.pod_records_dir(node)?.display()
            ),
            // Lab nodes share the host's files: each keeps its own WireGuard key.
            format!(
                "--wireguard-key-file={}",
                self.node_dir(node)?.join("wgkey").display()
            ),
        ];
        let mut argv = vec![self.bins.podnetd.display().to_string()];
        argv.extend(merge_flags(&defaults, extra));
        Ok(argv)
    }

    /// Starts podnetd on a node in the background.
    pub fn start(&mut self, node: &str, extra: &[&str]) -> Result<ProcRecord, LabError> {
        self.start_env(node, extra, &[])
    }

    /// Starts podnetd on a node in the background with these environment variables.
    pub fn start_env(
        &mut self,
        node: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<ProcRecord, LabError> {
        let argv = self.podnetd_args(node, extra)?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.lab.spawn(node, &argv, &env)
    }

    /// Waits for the node's `subnet.env` (podnetd writes it once ready).
    pub fn wait_ready(&self, node: &str, timeout: Duration) -> Result<SubnetEnv, LabError> {
        let path = self.env_path(node)?;
        self.poll(&format!("{node}'s subnet.env"), timeout, || {
            SubnetEnv::read(&path)
                .ok()
                .flatten()
                .filter(|e| e.mtu.is_some())
        })
    }

    /// The plugin's config on a node: kube-flannel's conflist entry plus the node's paths.
    pub fn cni_conf(&self, node: &str, version: &str) -> Result<serde_json::Value, LabError> {
        let ipam = self.node_dir(node)?.join("ipam");
        self.cni_conf_in(node, version, &ipam)
    }

    /// `cni_conf` with the IPAM files kept in `ipam_dir`.
    pub fn cni_conf_in(
        &self,
        node: &str,
        version: &str,
        ipam_dir: &Path,
    ) -> Result<serde_json::Value, LabError> {
        let dir = self.node_dir(node)?;
        Ok(serde_json::json!({
            "cniVersion": version,
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": dir.join("subnet.env"),
            "dataDir": dir.join("flannel"),
            "podRecordsDir": self.pod_records_dir(node)?,
            "delegate": {"hairpinMode": true, "isDefaultGateway": true},
            "ipam": {"dataDir": ipam_dir},
        }))
    }

    /// Runs the plugin on a node as a runtime does.
    pub fn cni(&self, node: &str, env: &[(&str, &str)], stdin: &str) -> Result<Output, LabError> {
        let plugin = self.bins.plugin.display().to_string();
        self.lab.cni(node, &plugin, env, stdin)
    }

    /// Creates a pod namespace on a node and ADDs it through the plugin.
    pub fn add_pod(&mut self, node: &str, name: &str, version: &str) -> Result<Pod, LabError> {
        let netns = format!("/run/netns/{}", self.lab.pod_add(node, name)?);
        let container = format!("ctr-{node}-{name}");
        let conf = self.cni_conf(node, version)?.to_string();
        // As kubelet would: the pod's identity, here namespace "default", name NODE-POD.
        let args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={node}-{name};IgnoreUnknown=1");
        let mut env = attach_env("ADD", &container, &netns, "eth0");
        env.push(("CNI_ARGS", &args));
        let out = self.cni(node, &env, &conf)?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(LabError::Process(format!("CNI ADD {node}/{name}: {text}")));
        }
        let parsed: AddResult = serde_json::from_str(&text)
            .map_err(|e| LabError::Process(format!("CNI ADD {node}/{name}: {e}: {text}")))?;
        let ips: Vec<IpAddr> = parsed
            .ips
            .iter()
            .filter_map(|i| i.address.split('/').next()?.parse().ok())
            .collect();
        let ip = ips.iter().find_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        });
        let ip6 = ips.iter().find_map(|a| match a {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        });
        if ip.is_none() && ip6.is_none() {
            return Err(LabError::Process(format!(
                "CNI ADD {node}/{name}: no IP address in {text}"
            )));
        }
        let ip = ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        Ok(Pod {
            node: node.into(),
            name: name.into(),
            netns,
            container,
            ip,
            ip6,
            result: serde_json::from_str(&text).unwrap_or_default(),
        })
    }
}

/// `CNI_*` variables for one attachment, as a runtime sets them.
pub fn attach_env<'a>(
    cmd: &'a str,
    container: &'a str,
    netns: &'a str,
    ifname: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", container),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_PATH", "/usr/lib/cni"),
    ]
}

/// `--flag=value` arguments: `defaults`, each replaced by a flag of the same name in `extra`,
/// then the rest of `extra` in order.
pub fn merge_flags(defaults: &[String], extra: &[&str]) -> Vec<String> {
    let flag = |a: &str| a.split('=').next().unwrap_or(a).to_string();
    let given: Vec<String> = extra.iter().map(|e| flag(e)).collect();
    defaults
        .iter()
        .filter(|d| !given.contains(&flag(d)))
        .cloned()
        .chain(extra.iter().map(|s| s.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_flag_replaces_a_default() {
        let defaults = ["--a=1".to_string(), "--b=2".to_string()];
        assert_eq!(
            merge_flags(&defaults, &["--b=3", "--c", "x"]),
            ["--a=1", "--b=3", "--c", "x"]
        );
    }
}
