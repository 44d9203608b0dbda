//! The lab: a cluster of "nodes" on one machine, built from network namespaces.
//!
//! A switch namespace holds one bridge per L2 segment; every node, etcd member and the router
//! has a veth leg on a bridge. The router namespace joins the segments, so nodes on different
//! segments reach each other only through it (the case VXLAN and DirectRouting exist for). A real
//! etcd runs in its own namespace(s) on segment 0. Nothing is created in the host's namespace:
//! veth pairs are made in the switch namespace with their other end placed straight into the
//! node's.
//!
//! `Lab::up` returns a guard: a lab owned by a process (tests, benchmarks, a demo) is torn down
//! when the guard drops, also on panic; `persist` hands it over to `podnetctl lab down` instead.
//! Every start sweeps labs whose owner died and namespaces that no lab claims.

pub mod cluster;
pub mod plan;
pub mod process;
pub mod state;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::kernel::netlink::{LinkChange, Netlink, NewLink, NewLinkKind, RTPROT_STATIC, Route};
use crate::kernel::netns::NetNs;
use crate::kernel::{KernelError, sysctl};
pub use plan::{LabSpec, Plan};
use process::{ProcId, ProcRecord, SpawnSpec};
use state::{LabState, PodRecord, StateLock};

/// How long etcd gets to become healthy.
const ETCD_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab needs root (it creates network namespaces); run it with sudo")]
    NotRoot,
    #[error("{0}")]
    Invalid(String),
    #[error("lab {0:?} already exists; remove it first with `podnetctl lab down {0}`")]
    Taken(String),
    #[error("no lab named {0:?} (see `podnetctl lab list`)")]
    NotFound(String),
    #[error("refusing to start: {0}")]
    Overlap(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("{op}: {source}")]
    Io { op: String, source: std::io::Error },
    #[error("lab state {0}")]
    State(String),
    #[error("{0}")]
    Process(String),
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("teardown left things behind:\n  {}", .0.join("\n  "))]
    Teardown(Vec<String>),
}

impl LabError {
    pub fn io(op: impl Into<String>, source: std::io::Error) -> LabError {
        LabError::Io {
            op: op.into(),
            source,
        }
    }
}

/// A running lab. Dropping a lab this process owns tears it down.
pub struct Lab {
    state: LabState,
    owned: bool,
}

/// Where a command runs: a node, an etcd member, the router, the switch, or a pod (`node1/web`).
fn resolve_netns(st: &LabState, target: &str) -> Result<String, LabError> {
    let plan = &st.plan;
    if let Some((node, pod)) = target.split_once('/') {
        return st
            .pods
            .iter()
            .find(|p| p.node == node && p.pod == pod)
            .map(|p| p.netns.clone())
            .ok_or_else(|| {
                LabError::Invalid(format!("no pod {pod:?} on {node:?} in lab {:?}", plan.name))
            });
    }
    match target {
        "router" => Ok(plan.router_ns.clone()),
        "switch" => Ok(plan.switch_ns.clone()),
        _ => plan.host(target).map(|h| h.netns.clone()).ok_or_else(|| {
            LabError::Invalid(format!(
                "no host {target:?} in lab {:?} (nodes are node1..node{}, etcd members etcd1..etcd{}, or router)",
                plan.name,
                plan.nodes.len(),
                plan.etcd.len()
            ))
        }),
    }
}

fn require_root() -> Result<(), LabError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// Refuses when the host already uses any address range the lab would use.
pub fn check_host_overlap() -> Result<(), LabError> {
    check_overlap(&NetNs::host()?)
}

/// Refuses when `ns` has an address in, or a network around, any range the lab uses.
pub fn check_overlap(ns: &NetNs) -> Result<(), LabError> {
    let addrs = Netlink::open_in(ns)?.addrs()?;
    let nets: Vec<IpNet> = addrs.into_iter().map(|a| a.net).collect();
    let clashes = plan::overlaps(&nets, &plan::lab_ranges());
    if clashes.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = clashes
        .iter()
        .map(|(h, o)| format!("the host has {h}, which overlaps the lab's {o}"))
        .collect();
    Err(LabError::Overlap(list.join("; ")))
}

impl Lab {
    /// Builds a lab owned by this process: it is torn down when the returned guard drops.
    pub fn up(spec: &LabSpec) -> Result<Lab, LabError> {
        require_root()?;
        let plan = plan::plan(spec)?;
        check_host_overlap()?;
        if let Err(e) = sweep() {
            tracing::warn!("sweeping stale labs: {e}");
        }
        let suffix: u32 = rand::random();
        let workdir = std::env::temp_dir().join(format!("podnet-lab-{}-{suffix:08x}", plan.name));
        let mut st = LabState::new(plan, Some(ProcId::current()), workdir);
        st.namespaces = st.plan.namespaces();
        let lock = StateLock::acquire(st.name())?;
        state::create(&st)?;
        let mut lab = Lab {
            state: st,
            owned: true,
        };
        drop(lock);
        std::fs::create_dir_all(&lab.state.workdir)
            .map_err(|e| LabError::io(format!("create {}", lab.state.workdir.display()), e))?;
        lab.build_network()?;
        for i in 0..lab.state.plan.etcd.len() {
            let name = lab.state.plan.etcd[i].name.clone();
            lab.start_etcd(&name)?;
        }
        lab.wait_etcd_healthy(ETCD_START_TIMEOUT)?;
        Ok(lab)
    }

    /// Attaches to an existing lab by name; dropping the handle leaves the lab running.
    pub fn open(name: &str) -> Result<Lab, LabError> {
        require_root()?;
        plan::validate_name(name)?;
        match state::load(name)? {
            Some(st) => Ok(Lab {
                state: st,
                owned: false,
            }),
            None => Err(LabError::NotFound(name.to_string())),
        }
    }

    /// Detaches the lab from this process: it stays until `podnetctl lab down`.
    pub fn persist(mut self) -> Result<(), LabError> {
        self.update(|st| {
            st.owner = None;
            Ok(())
        })?;
        self.owned = false;
        Ok(())
    }

    /// Removes everything the lab made.
    pub fn down(mut self) -> Result<(), LabError> {
        self.owned = false;
        let name = self.state.name().to_string();
        let lock = StateLock::acquire(&name)?;
        let st = state::load(&name)?.unwrap_or_else(|| self.state.clone());
        let result = teardown(&st);
        if result.is_ok() {
            lock.remove(&name);
        }
        result
    }

    pub fn name(&self) -> &str {
        self.state.name()
    }

    pub fn state(&self) -> &LabState {
        &self.state
    }

    pub fn plan(&self) -> &Plan {
        &self.state.plan
    }

    pub fn workdir(&self) -> &Path {
        &self.state.workdir
    }

    /// A directory for one node's files (its `subnet.env`, CNI state, ...), created on demand.
    pub fn node_dir(&self, node: &str) -> Result<PathBuf, LabError> {
        self.state.plan.host(node).ok_or_else(|| {
            LabError::Invalid(format!("no host {node:?} in lab {:?}", self.name()))
        })?;
        let dir = self.state.workdir.join("nodes").join(node);
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("create {}", dir.display()), e))?;
        Ok(dir)
    }

    /// The directory of Kubernetes manifests the lab's podnetd may enforce network policy
    /// from (`--policy-dir`), created on demand.
    pub fn policy_dir(&self) -> Result<PathBuf, LabError> {
        let dir = self.state.workdir.join("policy");
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("create {}", dir.display()), e))?;
        Ok(dir)
    }

    pub fn etcd_endpoints(&self) -> String {
        self.state.plan.etcd_endpoints()
    }

    /// The namespace of a node, etcd member, router, switch or pod (`node1/web`).
    pub fn netns(&self, target: &str) -> Result<NetNs, LabError> {
        Ok(NetNs::open(&resolve_netns(&self.state, target)?)?)
    }

    /// A command that will run in `target`'s namespace.
    pub fn command(&self, target: &str, argv: &[impl AsRef<str>]) -> Result<Command, LabError> {
        let Some(program) = argv.first() else {
            return Err(LabError::Invalid("empty command".into()));
        };
        let ns = self.netns(target)?;
        let mut cmd = ns.command(program.as_ref())?;
        cmd.args(argv[1..].iter().map(|a| a.as_ref()));
        Ok(cmd)
    }

    /// Runs a command in `target` and captures its output.
    pub fn exec(&self, target: &str, argv: &[impl AsRef<str>]) -> Result<Output, LabError> {
        let mut cmd = self.command(target, argv)?;
        cmd.output()
            .map_err(|e| LabError::io(format!("run {} on {target}", argv[0].as_ref()), e))
    }

    /// Runs a CNI plugin in `target` the way a runtime does: nothing in its environment but
    /// `PATH` and `env` (the `CNI_*` variables), the network config on standard input.
    pub fn cni(
        &self,
        target: &str,
        plugin: &str,
        env: &[(&str, &str)],
        conf: &str,
    ) -> Result<Output, LabError> {
        let op = || format!("run {plugin} on {target}");
        let ns = self.netns(target)?;
        let mut cmd = Command::new(plugin);
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        cmd.env_clear()
            .env("PATH", path)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        // Started as a runtime starts its plugins: by a thread that is in the node's namespace,
        // sharing its memory until `exec` (`posix_spawn`, as Go's `os/exec` does), not by a
        // fork of this process that enters the namespace before `exec` (`Command::pre_exec`
        // forces a fork, whose cost grows with the caller's memory and was counted in every
        // plugin's time).
        ns.run(move || {
            let mut child = cmd.spawn().map_err(|e| LabError::io(op(), e))?;
            if let Some(mut stdin) = child.stdin.take() {
                // A plugin that exits without reading its config closes the pipe: not our error.
                let _ = std::io::Write::write_all(&mut stdin, conf.as_bytes());
            }
            child.wait_with_output().map_err(|e| LabError::io(op(), e))
        })?
    }

    /// Starts a background process in `target`, remembered by PID and stopped by `down`.
    pub fn spawn(
        &mut self,
        target: &str,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<ProcRecord, LabError> {
        let netns = resolve_netns(&self.state, target)?;
        let ns = NetNs::open(&netns)?;
        let program = argv
            .first()
            .and_then(|p| Path::new(p).file_name())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let label = target.replace('/', "-");
        self.update(|st| {
            st.spawned += 1;
            let log = st
                .workdir
                .join("logs")
                .join(format!("{label}-{program}-{}.log", st.spawned));
            let id = process::spawn(&SpawnSpec {
                ns: &ns,
                argv,
                env,
                log: &log,
            })?;
            let rec = ProcRecord {
                id,
                host: target.to_string(),
                argv: argv.to_vec(),
                log,
            };
            st.procs.push(rec.clone());
            Ok(rec)
        })
    }

    /// Stops a process this lab started.
    pub fn stop(&mut self, pid: u32) -> Result<(), LabError> {
        self.update(|st| {
            let Some(i) = st.procs.iter().position(|p| p.id.pid == pid) else {
                return Err(LabError::Invalid(format!(
                    "process {pid} was not started by lab {:?}",
                    st.name()
                )));
            };
            st.procs[i].id.stop(STOP_GRACE)?;
            st.procs.remove(i);
            Ok(())
        })
    }

    /// Processes the lab started that still run.
    pub fn processes(&self) -> Vec<ProcRecord> {
        self.state
            .procs
            .iter()
            .filter(|p| p.id.alive())
            .cloned()
            .collect()
    }

    /// Creates an empty pod namespace on a node (the CNI plugin wires it later).
    pub fn pod_add(&mut self, node: &str, pod: &str) -> Result<String, LabError> {
        plan::validate_pod_name(pod)?;
        if !self.state.plan.nodes.iter().any(|n| n.name == node) {
            return Err(LabError::Invalid(format!(
                "no node {node:?} in lab {:?}",
                self.name()
            )));
        }
        let netns = self.state.plan.pod_netns(node, pod);
        self.update(|st| {
            if st.pods.iter().any(|p| p.node == node && p.pod == pod) {
                return Err(LabError::Invalid(format!(
                    "pod {pod:?} already exists on {node}"
                )));
            }
            st.pods.push(PodRecord {
                node: node.to_string(),
                pod: pod.to_string(),
                netns: netns.clone(),
            });
            Ok(())
        })?;
        NetNs::create(&netns)?;
        Ok(netns)
    }

    /// Removes a pod namespace.
    pub fn pod_del(&mut self, node: &str, pod: &str) -> Result<(), LabError> {
        self.update(|st| {
            let Some(i) = st.pods.iter().position(|p| p.node == node && p.pod == pod) else {
                return Err(LabError::Invalid(format!(
                    "no pod {pod:?} on {node:?} in lab {:?}",
                    st.name()
                )));
            };
            NetNs::delete(&st.pods[i].netns)?;
            st.pods.remove(i);
            Ok(())
        })
    }

    /// Starts (or restarts, keeping its data) one etcd member.
    pub fn start_etcd(&mut self, member: &str) -> Result<(), LabError> {
        let host = self
            .state
            .plan
            .etcd
            .iter()
            .find(|h| h.name == member)
            .cloned()
            .ok_or_else(|| LabError::Invalid(format!("no etcd member {member:?}")))?;
        if self.etcd_process(member).is_some() {
            return Err(LabError::Invalid(format!(
                "etcd member {member} is already running"
            )));
        }
        let ip = host.ip();
        let data = self.state.workdir.join("etcd").join(member);
        let argv: Vec<String> = [
            "etcd",
            "--name",
            member,
            "--data-dir",
            &data.to_string_lossy(),
            "--listen-client-urls",
            &format!(
                "http://{ip}:{0},http://127.0.0.1:{0}",
                plan::ETCD_CLIENT_PORT
            ),
            "--advertise-client-urls",
            &format!("http://{ip}:{}", plan::ETCD_CLIENT_PORT),
            "--listen-peer-urls",
            &format!("http://{ip}:{}", plan::ETCD_PEER_PORT),
            "--initial-advertise-peer-urls",
            &format!("http://{ip}:{}", plan::ETCD_PEER_PORT),
            "--initial-cluster",
            &self.state.plan.etcd_initial_cluster(),
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            &format!("podnet-lab-{}", self.name()),
            "--log-level",
            "warn",
            "--logger",
            "zap",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.spawn(member, &argv, &[])?;
        Ok(())
    }

    /// Stops one etcd member (its data stays for a restart).
    pub fn stop_etcd(&mut self, member: &str) -> Result<(), LabError> {
        let rec = self
            .etcd_process(member)
            .ok_or_else(|| LabError::Invalid(format!("etcd member {member} is not running")))?;
        self.stop(rec.id.pid)
    }

    fn etcd_process(&self, member: &str) -> Option<ProcRecord> {
        self.state
            .procs
            .iter()
            .find(|p| {
                p.host == member && p.argv.first().is_some_and(|a| a == "etcd") && p.id.alive()
            })
            .cloned()
    }

    /// Waits until every running etcd member answers `/health` with `true`.
    pub fn wait_etcd_healthy(&self, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        for host in &self.state.plan.etcd {
            let Some(rec) = self.etcd_process(&host.name) else {
                continue;
            };
            let ns = NetNs::open(&host.netns)?;
            loop {
                let healthy = ns
                    .run(|| {
                        http_get(
                            SocketAddr::new(IpAddr::from([127, 0, 0, 1]), plan::ETCD_CLIENT_PORT),
                            "/health",
                        )
                    })?
                    .map(|(status, body)| status == 200 && body.contains("\"health\":\"true\""))
                    .unwrap_or(false);
                if healthy {
                    break;
                }
                if !rec.id.alive() {
                    return Err(LabError::Etcd(format!(
                        "{} exited during start-up; last lines of {}:\n{}",
                        host.name,
                        rec.log.display(),
                        tail(&rec.log, 10)
                    )));
                }
                if Instant::now() > deadline {
                    return Err(LabError::Etcd(format!(
                        "{} not healthy after {}s; last lines of {}:\n{}",
                        host.name,
                        timeout.as_secs(),
                        rec.log.display(),
                        tail(&rec.log, 10)
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Reloads the state under its lock, changes it, and writes it back.
    fn update<R>(
        &mut self,
        f: impl FnOnce(&mut LabState) -> Result<R, LabError>,
    ) -> Result<R, LabError> {
        let name = self.state.name().to_string();
        let _lock = StateLock::acquire(&name)?;
        let mut st = state::load(&name)?.ok_or_else(|| LabError::NotFound(name.clone()))?;
        let r = f(&mut st);
        state::save(&st)?;
        self.state = st;
        r
    }

    fn build_network(&mut self) -> Result<(), LabError> {
        let plan = self.state.plan.clone();
        for ns in plan.namespaces() {
            NetNs::create(&ns)?;
        }
        let sw_ns = NetNs::open(&plan.switch_ns)?;
        let mut sw = Netlink::open_in(&sw_ns)?;
        let mut bridges = Vec::new();
        for seg in &plan.segments {
            sw.add_link(&NewLink {
                name: &seg.bridge,
                kind: NewLinkKind::Bridge,
                mtu: None,
                mac: None,
                master: None,
                up: true,
            })?;
            bridges.push(sw.require_link(&seg.bridge)?.index);
        }
        set_up_lo(&sw_ns)?;

        // Router: one leg per segment, forwarding between them.
        let rt_ns = NetNs::open(&plan.router_ns)?;
        for seg in &plan.segments {
            let leg = format!("eth{}", seg.index);
            plug(
                &mut sw,
                bridges[seg.index],
                &format!("r{}", seg.index),
                &leg,
                &rt_ns,
            )?;
            let mut rt = Netlink::open_in(&rt_ns)?;
            let addr =
                IpNet::new(IpAddr::V4(seg.router), seg.net.prefix_len()).expect("valid prefix");
            if seg.net6.is_some() {
                no_dad(&rt_ns, &leg)?;
            }
            configure_leg(&mut rt, &leg, addr, None)?;
            if let (Some(net6), Some(r6)) = (seg.net6, seg.router6) {
                let addr6 = IpNet::new(IpAddr::V6(r6), net6.prefix_len()).expect("valid prefix");
                configure_leg(&mut rt, &leg, addr6, None)?;
            }
        }
        set_up_lo(&rt_ns)?;
        rt_ns.run(|| sysctl::set("net.ipv4.ip_forward", "1"))??;
        if plan.segments.iter().any(|s| s.net6.is_some()) {
            rt_ns.run(|| sysctl::set("net.ipv6.conf.all.forwarding", "1"))??;
        }

        for host in plan.etcd.iter().chain(plan.nodes.iter()) {
            let ns = NetNs::open(&host.netns)?;
            plug(&mut sw, bridges[host.segment], &host.port, "eth0", &ns)?;
            let mut nl = Netlink::open_in(&ns)?;
            let router = plan.segments[host.segment].router;
            if host.addr6.is_some() {
                no_dad(&ns, "eth0")?;
            }
            configure_leg(
                &mut nl,
                "eth0",
                IpNet::V4(host.addr),
                Some(IpAddr::V4(router)),
            )?;
            // IPv6 addresses are added without duplicate detection (`nodad`): usable at once.
            if let (Some(a6), Some(r6)) = (host.addr6, plan.segments[host.segment].router6) {
                configure_leg(&mut nl, "eth0", IpNet::V6(a6), Some(IpAddr::V6(r6)))?;
            }
            set_up_lo(&ns)?;
        }
        for host in &plan.nodes {
            let ns = NetNs::open(&host.netns)?;
            // A Kubernetes node forwards: pods' traffic passes through it.
            ns.run(|| sysctl::set("net.ipv4.ip_forward", "1"))??;
            if host.addr6.is_some() {
                ns.run(|| sysctl::set("net.ipv6.conf.all.forwarding", "1"))??;
            }
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let name = self.state.name().to_string();
        let lock = StateLock::acquire(&name).ok();
        let st = state::load(&name)
            .ok()
            .flatten()
            .unwrap_or_else(|| self.state.clone());
        match teardown(&st) {
            Ok(()) => {
                if let Some(lock) = lock {
                    lock.remove(&name);
                }
            }
            Err(e) => eprintln!("podnet lab {name}: {e}"),
        }
    }
}

/// Creates a veth pair in the switch namespace, puts `inner` into `ns` and the switch end on the bridge.
fn plug(
    sw: &mut Netlink,
    bridge: u32,
    outer: &str,
    inner: &str,
    ns: &NetNs,
) -> Result<(), LabError> {
    sw.add_link(&NewLink {
        name: outer,
        kind: NewLinkKind::Veth {
            peer: inner,
            peer_ns: Some(ns),
            peer_mac: None,
            queues: None,
        },
        mtu: None,
        mac: None,
        master: None,
        up: false,
    })?;
    let idx = sw.require_link(outer)?.index;
    sw.set_link(
        idx,
        &LinkChange {
            master: Some(bridge),
            up: Some(true),
            ..Default::default()
        },
    )?;
    Ok(())
}

fn configure_leg(
    nl: &mut Netlink,
    name: &str,
    addr: IpNet,
    gateway: Option<IpAddr>,
) -> Result<(), LabError> {
    let idx = nl.require_link(name)?.index;
    nl.add_addr(idx, addr)?;
    nl.set_link(
        idx,
        &LinkChange {
            up: Some(true),
            ..Default::default()
        },
    )?;
    if let Some(gw) = gateway {
        let default = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
        let mut r = Route::unicast(default.parse().expect("constant"), RTPROT_STATIC);
        r.gateway = Some(gw);
        r.oif = Some(idx);
        nl.replace_route(&r)?;
    }
    Ok(())
}

/// No duplicate address detection on a leg, set before it comes up: its IPv6 link-local
/// address is usable at once, so the first packets across the IPv6 underlay are not held up
/// by a router or node whose link-local address is still tentative.
fn no_dad(ns: &NetNs, leg: &str) -> Result<(), LabError> {
    let key = format!("net.ipv6.conf.{leg}.accept_dad");
    ns.run(|| sysctl::set(&key, "0"))??;
    Ok(())
}

fn set_up_lo(ns: &NetNs) -> Result<(), LabError> {
    let mut nl = Netlink::open_in(ns)?;
    let lo = nl.require_link("lo")?.index;
    nl.set_link(
        lo,
        &LinkChange {
            up: Some(true),
            ..Default::default()
        },
    )?;
    Ok(())
}

/// Removes everything a state file names. Keeps going past failures and reports all of them.
fn teardown(st: &LabState) -> Result<(), LabError> {
    let mut errors = Vec::new();
    let own_prefix = format!("{}{}-", plan::NS_PREFIX, st.name());
    for p in st.procs.iter().rev() {
        if let Err(e) = p.id.stop(STOP_GRACE) {
            errors.push(e.to_string());
        }
    }
    let namespaces = st
        .pods
        .iter()
        .map(|p| &p.netns)
        .chain(st.namespaces.iter().rev());
    for ns in namespaces {
        // A tampered state file must not make us delete someone else's namespace.
        if !ns.starts_with(&own_prefix) {
            errors.push(format!(
                "refusing to delete namespace {ns:?}: not named {own_prefix}*"
            ));
            continue;
        }
        // The CNI plugin's reaper lock for the namespace, if it ran there (/run/podnet).
        if let Ok(lock) = NetNs::open(ns).and_then(|n| crate::cni::veth::reaper_lock_of(&n)) {
            let _ = std::fs::remove_file(lock);
        }
        if let Err(e) = NetNs::delete(ns) {
            errors.push(e.to_string());
        }
    }
    let workdir_ok = st
        .workdir
        .file_name()
        .and_then(|f| f.to_str())
        .is_some_and(|f| f.starts_with(&format!("podnet-lab-{}-", st.name())));
    if workdir_ok {
        match std::fs::remove_dir_all(&st.workdir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("remove {}: {e}", st.workdir.display())),
        }
    } else {
        errors.push(format!(
            "refusing to remove {}: not a lab work directory",
            st.workdir.display()
        ));
    }
    if errors.is_empty() {
        state::remove(st.name())?;
        Ok(())
    } else {
        Err(LabError::Teardown(errors))
    }
}

/// Tears down labs whose owning process died and deletes lab namespaces that no lab claims.
/// Returns what it removed.
pub fn sweep() -> Result<Vec<String>, LabError> {
    // List namespaces before reading states: a lab records a namespace before creating it, so
    // anything listed here that belongs to a live lab is claimed by a state read afterwards.
    let existing: Vec<String> = NetNs::list_named()?
        .into_iter()
        .filter(|n| n.starts_with(plan::NS_PREFIX))
        .collect();
    let mut removed = Vec::new();
    let mut claimed = std::collections::HashSet::new();
    for name in state::list()? {
        let Ok(Some(st)) = state::load(&name) else {
            continue;
        };
        if st.orphaned() {
            let lock = StateLock::acquire(&name)?;
            match state::load(&name)? {
                Some(st) if st.orphaned() => match teardown(&st) {
                    Ok(()) => {
                        lock.remove(&name);
                        removed.push(format!(
                            "lab {name} (its process {} is gone)",
                            st.owner.map(|o| o.pid).unwrap_or(0)
                        ));
                        continue;
                    }
                    Err(e) => tracing::warn!("sweeping lab {name}: {e}"),
                },
                _ => {}
            }
        }
        if let Ok(Some(st)) = state::load(&name) {
            claimed.extend(st.namespaces.iter().cloned());
            claimed.extend(st.pods.iter().map(|p| p.netns.clone()));
        }
    }
    for ns in existing {
        if !claimed.contains(&ns) && NetNs::exists(&ns) {
            NetNs::delete(&ns)?;
            removed.push(format!("namespace {ns} (no lab claims it)"));
        }
    }
    Ok(removed)
}

/// A GET for health endpoints; `None` when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    crate::httpget::tcp(addr, path).ok()
}

/// The last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
