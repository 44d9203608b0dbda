//! A lab with podnetd on its nodes: helpers shared by the lease, backend and later tests.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::Duration;

use podnet::lab::LabSpec;
pub use podnet::lab::cluster::Pod;
use podnet::lab::cluster::{Binaries, Cluster as Harness, attach_env, merge_flags};
use podnet::lab::process::ProcRecord;
use podnet::subnet_env::SubnetEnv;

use crate::support::{ok, poll, require_root, unique};

pub const PODNETD: &str = env!("CARGO_BIN_EXE_podnetd");
pub const PODNETCTL: &str = env!("CARGO_BIN_EXE_podnetctl");
pub const PREFIX: &str = "/coreos.com/network";

/// The lab harness (`podnet::lab::cluster`) with this package's binaries, and methods that
/// fail the test instead of returning errors.
pub struct Cluster(pub Harness);

impl Deref for Cluster {
    type Target = Harness;
    fn deref(&self) -> &Harness {
        &self.0
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Harness {
        &mut self.0
    }
}

pub fn binaries() -> Binaries {
    Binaries {
        podnetd: PODNETD.into(),
        plugin: PODNET_CNI.into(),
    }
}

impl Cluster {
    pub fn new(spec: LabSpec) -> Cluster {
        require_root();
        Cluster(Harness::up(&spec, binaries()).unwrap())
    }

    /// A one-segment lab with `nodes` nodes and a random name starting with `prefix`.
    pub fn small(prefix: &str, nodes: usize) -> Cluster {
        Cluster::new(LabSpec::new(unique(prefix), nodes))
    }

    /// `etcdctl` against the lab's etcd, run from the first etcd member's namespace.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        self.0.etcdctl(args).unwrap()
    }

    pub fn put_config(&self, json: &str) {
        self.0.put_config(json).unwrap()
    }

    /// Lease keys (without the prefix) and their values, as stored.
    pub fn leases(&self) -> Vec<(String, String)> {
        self.0.leases().unwrap()
    }

    pub fn env_path(&self, node: &str) -> PathBuf {
        self.0.env_path(node).unwrap()
    }

    /// podnetd's usual arguments in the lab (full passes every second), plus `extra`.
    pub fn podnetd_args(&self, node: &str, extra: &[&str]) -> Vec<String> {
        let extra = merge_flags(&["--resync-period=1s".to_string()], extra);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        self.0.podnetd_args(node, &extra).unwrap()
    }

    /// Starts podnetd on a node in the background.
    pub fn start(&mut self, node: &str, extra: &[&str]) -> ProcRecord {
        let argv = self.podnetd_args(node, extra);
        self.0.lab.spawn(node, &argv, &[]).unwrap()
    }

    /// Waits for the node's subnet.env (podnetd writes it once ready).
    pub fn wait_ready(&self, node: &str) -> SubnetEnv {
        self.0.wait_ready(node, Duration::from_secs(30)).unwrap()
    }

    /// The podnetd the lab started last on `node` (panics if there is none).
    pub fn podnetd(&self, node: &str) -> ProcRecord {
        self.lab
            .state()
            .procs
            .iter()
            .rev()
            .find(|p| p.host == node && p.argv[0].ends_with("podnetd"))
            .unwrap_or_else(|| panic!("no podnetd on {node}"))
            .clone()
    }

    /// Restarts `node`'s podnetd twice, 800 ms apart, under a 10 ms ping of 400 packets from
    /// `from` (`src` to `dst`); `while_stopped` runs each time it is down. Every packet must
    /// come back.
    pub fn restart_twice_under_ping(
        &mut self,
        node: &str,
        (from, src, dst): (&str, &str, &str),
        while_stopped: impl Fn(&Cluster),
    ) {
        let argv = ["ping", "-i", "0.01", "-c", "400", "-W", "1", "-I", src, dst];
        let pinger = self
            .lab
            .command(from, &argv)
            .unwrap()
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(800));
            let rec = self.podnetd(node);
            self.lab.stop(rec.id.pid).unwrap();
            while_stopped(self);
            self.start(node, &[]);
        }
        let out = pinger.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("400 packets transmitted, 400 received, 0% packet loss"),
            "{text}"
        );
    }

    /// Packets the tunnel guard on `node` dropped (the counter of its chain's first rule).
    pub fn guard_drops(&self, node: &str) -> u64 {
        let out = ok(self
            .lab
            .exec(
                node,
                &[
                    "nft",
                    "-j",
                    "list",
                    "chain",
                    "inet",
                    "podnet",
                    "tunnel-guard",
                ],
            )
            .unwrap());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i.get("rule"))
            .flat_map(|r| r["expr"].as_array().cloned().unwrap_or_default())
            .find_map(|e| e.get("counter").map(|c| c["packets"].as_u64().unwrap()))
            .unwrap()
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

impl Cluster {
    /// The plugin's config on a node, as flannel's kube manifest writes it plus per-node paths.
    pub fn cni_conf(&self, node: &str, version: &str) -> serde_json::Value {
        self.0.cni_conf(node, version).unwrap()
    }

    /// Runs the plugin on a node like a runtime would; returns (exit code, stdout).
    pub fn cni(&self, node: &str, env: &[(&str, &str)], stdin: &str) -> (i32, String) {
        let out = self.0.cni(node, env, stdin).unwrap();
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
        attach_env(cmd, container, netns, ifname)
    }

    /// Creates a pod namespace and ADDs it through the plugin.
    pub fn add_pod(&mut self, node: &str, name: &str, version: &str) -> Pod {
        self.0.add_pod(node, name, version).unwrap()
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

/// The handles of the CNI plugin's masquerade rules on a node (`nft -a`), in order: a rule
/// written again gets a new one.
pub fn masq_rule_handles(c: &Cluster, node: &str) -> Vec<String> {
    let argv = [
        "nft",
        "-a",
        "list",
        "chain",
        "inet",
        "podnet-cni",
        "postrouting",
    ];
    let text = crate::support::ok(c.lab.exec(node, &argv).unwrap());
    text.lines()
        .filter(|l| l.contains("pod ipMasq"))
        .map(|l| match l.split_once("# handle ") {
            Some((_, h)) => h.trim().to_string(),
            None => panic!("no handle on a masquerade rule: {l}"),
        })
        .collect()
}
