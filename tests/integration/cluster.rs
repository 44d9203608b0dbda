//! A lab with podnetd on its nodes: helpers shared by the lease, backend and later tests.

use std::path::PathBuf;
use std::time::Duration;

use podnet::lab::process::ProcRecord;
use podnet::lab::{Lab, LabSpec};
use podnet::subnet_env::SubnetEnv;

use crate::support::{ok, poll, require_root, unique};

pub const PODNETD: &str = env!("CARGO_BIN_EXE_podnetd");
pub const PODNETCTL: &str = env!("CARGO_BIN_EXE_podnetctl");
pub const PREFIX: &str = "/coreos.com/network";

pub struct Cluster {
    pub lab: Lab,
    pub eps: String,
}

impl Cluster {
    pub fn new(spec: LabSpec) -> Cluster {
        require_root();
        let lab = Lab::up(&spec).unwrap();
        let eps = lab.etcd_endpoints();
        Cluster { lab, eps }
    }

    /// A one-segment lab with `nodes` nodes and a random name starting with `prefix`.
    pub fn small(prefix: &str, nodes: usize) -> Cluster {
        Cluster::new(LabSpec::new(unique(prefix), nodes))
    }

    /// `etcdctl` against the lab's etcd, run from the first etcd member's namespace.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let mut argv = vec!["etcdctl", "--endpoints", &self.eps];
        argv.extend_from_slice(args);
        ok(self.lab.exec("etcd1", &argv).unwrap())
    }

    pub fn put_config(&self, json: &str) {
        self.etcdctl(&["put", &format!("{PREFIX}/config"), json]);
    }

    /// Lease keys (without the prefix) and their values, as stored.
    pub fn leases(&self) -> Vec<(String, String)> {
        let out = self.etcdctl(&["get", "--prefix", &format!("{PREFIX}/subnets/")]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| {
                (
                    c[0].trim_start_matches(&format!("{PREFIX}/subnets/"))
                        .to_string(),
                    c[1].to_string(),
                )
            })
            .collect()
    }

    pub fn env_path(&self, node: &str) -> PathBuf {
        self.lab.node_dir(node).unwrap().join("subnet.env")
    }

    /// podnetd's usual arguments in the lab, plus `extra`.
    pub fn podnetd_args(&self, node: &str, extra: &[&str]) -> Vec<String> {
        let defaults = [
            format!("--etcd-endpoints={}", self.eps),
            format!("--subnet-file={}", self.env_path(node).display()),
            "--resync-period=1s".into(),
            format!(
                "--status-socket={}",
                self.lab
                    .node_dir(node)
                    .unwrap()
                    .join("podnetd.sock")
                    .display()
            ),
        ];
        // A flag in `extra` replaces the default of the same name.
        let flag = |a: &str| a.split('=').next().unwrap_or(a).to_string();
        let mut argv: Vec<String> = vec![PODNETD.into()];
        argv.extend(
            defaults
                .into_iter()
                .filter(|d| !extra.iter().any(|e| flag(e) == flag(d))),
        );
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv
    }

    /// Starts podnetd on a node in the background.
    pub fn start(&mut self, node: &str, extra: &[&str]) -> ProcRecord {
        let argv = self.podnetd_args(node, extra);
        self.lab.spawn(node, &argv, &[]).unwrap()
    }

    /// Waits for the node's subnet.env (podnetd writes it once ready).
    pub fn wait_ready(&self, node: &str) -> SubnetEnv {
        let path = self.env_path(node);
        poll(
            &format!("{node}'s subnet.env"),
            Duration::from_secs(30),
            || {
                SubnetEnv::read(&path)
                    .ok()
                    .flatten()
                    .filter(|e| e.mtu.is_some())
            },
        )
    }

    pub fn log(&self, rec: &ProcRecord) -> String {
        std::fs::read_to_string(&rec.log).unwrap_or_default()
    }

    /// Waits until a process's log contains `needle`.
    pub fn wait_log(&self, rec: &ProcRecord, needle: &str, timeout: Duration) -> String {
        poll(
            &format!("{needle:?} in {}", rec.log.display()),
            timeout,
            || {
                let l = self.log(rec);
                l.contains(needle).then_some(l)
            },
        )
    }

    /// Waits for a process to exit and returns its log.
    pub fn wait_exit(&self, rec: &ProcRecord, timeout: Duration) -> String {
        poll(&format!("process {} to exit", rec.id.pid), timeout, || {
            (!rec.id.alive()).then_some(())
        });
        self.log(rec)
    }

    /// Runs podnetd in the foreground and returns (exit code, stderr), killing it after `timeout`.
    pub fn run_podnetd(
        &self,
        node: &str,
        extra: &[&str],
        timeout: Duration,
    ) -> (Option<i32>, String) {
        let argv = self.podnetd_args(node, extra);
        let mut cmd = self.lab.command(node, &argv).unwrap();
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(timeout);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        });
        let out = child.wait_with_output().unwrap();
        drop(killer);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `ip -j ...` in a namespace, parsed.
    pub fn ip_json(&self, target: &str, args: &[&str]) -> serde_json::Value {
        let mut argv = vec!["ip", "-j"];
        argv.extend_from_slice(args);
        let out = ok(self.lab.exec(target, &argv).unwrap());
        if out.trim().is_empty() {
            return serde_json::Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j {args:?}: {e}: {out}"))
    }
}

pub const PODNET_CNI: &str = env!("CARGO_BIN_EXE_podnet");

/// A pod wired in by the plugin.
#[derive(Debug, Clone)]
pub struct Pod {
    pub node: String,
    pub name: String,
    pub netns: String,
    pub container: String,
    pub ip: std::net::Ipv4Addr,
    pub result: serde_json::Value,
}

impl Pod {
    pub fn target(&self) -> String {
        format!("{}/{}", self.node, self.name)
    }
}

impl Cluster {
    /// The plugin's config on a node, as flannel's kube manifest writes it plus per-node paths.
    pub fn cni_conf(&self, node: &str, version: &str) -> serde_json::Value {
        let dir = self.lab.node_dir(node).unwrap();
        serde_json::json!({
            "cniVersion": version,
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": self.env_path(node),
            "dataDir": dir.join("flannel"),
            "delegate": {"hairpinMode": true, "isDefaultGateway": true},
            "ipam": {"dataDir": dir.join("ipam")},
        })
    }

    /// Runs the plugin on a node like a runtime would; returns (exit code, stdout).
    pub fn cni(&self, node: &str, env: &[(&str, &str)], stdin: &str) -> (i32, String) {
        let out = self.lab.cni(node, PODNET_CNI, env, stdin).unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// `CNI_COMMAND` etc. for an attachment.
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

    /// Creates a pod namespace and ADDs it through the plugin.
    pub fn add_pod(&mut self, node: &str, name: &str, version: &str) -> Pod {
        let netns = format!("/run/netns/{}", self.lab.pod_add(node, name).unwrap());
        let container = format!("ctr-{node}-{name}");
        let conf = self.cni_conf(node, version).to_string();
        let (code, out) = self.cni(
            node,
            &Self::attach_env("ADD", &container, &netns, "eth0"),
            &conf,
        );
        assert_eq!(code, 0, "ADD {node}/{name}: {out}");
        let result: serde_json::Value = serde_json::from_str(&out).unwrap();
        let ip = result["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        Pod {
            node: node.into(),
            name: name.into(),
            netns,
            container,
            ip,
            result,
        }
    }

    pub fn del_pod(&self, pod: &Pod, netns: &str) -> (i32, String) {
        let conf = self.cni_conf(&pod.node, "1.0.0").to_string();
        self.cni(
            &pod.node,
            &Self::attach_env("DEL", &pod.container, netns, "eth0"),
            &conf,
        )
    }

    /// Allocation files in a node's IPAM directory (without the lock and last-reserved files).
    pub fn allocations(&self, node: &str) -> Vec<String> {
        let dir = self.lab.node_dir(node).unwrap().join("ipam").join("cbr0");
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.retain(|f| f.parse::<std::net::IpAddr>().is_ok());
        v.sort();
        v
    }

    /// veth links on a node, once the plugin's reaper has deleted the pairs DEL retired.
    pub fn veths(&self, node: &str) -> Vec<String> {
        let list = || -> Vec<String> {
            self.ip_json(node, &["link", "show", "type", "veth"])
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|l| l["ifname"].as_str().map(String::from))
                .filter(|n| n != "eth0")
                .collect()
        };
        poll(
            "retired pairs to be deleted",
            Duration::from_secs(10),
            || {
                let l = list();
                (!l.iter().any(|n| n.starts_with("pnd"))).then_some(l)
            },
        )
    }
}
