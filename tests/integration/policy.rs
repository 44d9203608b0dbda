//! Network policy in the lab: the upstream e2e suite's truth tables (`podnet::policy::cases`)
//! played against the kernel. Namespaces x, y, z with pods a, b, c on two nodes, at the
//! fixture's addresses; servers on every TCP and UDP port a case probes in every pod; for each case
//! step the manifests go into the directory podnetd reads (`--policy-dir`), then every pod
//! probes every other pod on the case's protocol/port until the observed matrix equals the
//! expected one (or a deadline passes). The pure evaluator is asked the same question for every
//! cell and must agree with the table.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use podnet::lab::LabSpec;
use podnet::policy::cases::{self, Case, Change, Probe, Truth};
use podnet::policy::eval::{self, Endpoint};
use podnet::policy::model::{Cluster as Model, Key, Labels, Protocol};
use serde_json::json;

use crate::cluster::{Cluster, PODNETCTL};
use crate::support::{ok, poll, unique};

const HOST_GW: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#;
/// How long a probe waits for an answer (a dropped SYN or datagram gets none).
const PROBE_TIMEOUT: Duration = Duration::from_millis(600);
/// How long a step may take to be enforced on both nodes.
const CONVERGE: Duration = Duration::from_secs(10);

fn node_of(ns: &str, pod: &str) -> &'static str {
    // The fixture alternates pods between node-1 and node-2 (10.244.1.0/24, 10.244.2.0/24).
    match cases::pod_ip(ns, pod) {
        IpAddr::V4(v) if v.octets()[2] == 1 => "node1",
        _ => "node2",
    }
}

fn lab_pod(k: &Key) -> String {
    format!(
        "{}/{}-{}",
        node_of(&k.namespace, &k.name),
        k.namespace,
        k.name
    )
}

/// The lab: two host-gw nodes holding the fixture's subnets, podnetd enforcing the manifests
/// in `dir`, the nine pods wired by the plugin at the fixture's addresses, servers running.
struct PolicyLab {
    c: Cluster,
    dir: PathBuf,
    sctp: bool,
}

impl PolicyLab {
    fn new(prefix: &str, extra: &[&str]) -> PolicyLab {
        let mut c = Cluster::new(LabSpec::new(unique(prefix), 2));
        c.put_config(HOST_GW);
        // Reservations: each node keeps the fixture's subnet for it.
        for (node, subnet) in [("node1", "10.244.1.0-24"), ("node2", "10.244.2.0-24")] {
            let ip = c.lab.plan().host(node).unwrap().ip();
            let v =
                json!({"PublicIP": ip.to_string(), "PublicIPv6": null, "BackendType": "host-gw"});
            c.etcdctl(&[
                "put",
                &format!("/coreos.com/network/subnets/{subnet}"),
                &v.to_string(),
            ]);
        }
        let dir = c.lab.workdir().join("policy");
        std::fs::create_dir_all(&dir).unwrap();
        for node in ["node1", "node2"] {
            let pd = format!("--policy-dir={}", dir.display());
            let mut args = vec![pd.as_str(), "--ip-masq"];
            args.extend_from_slice(extra);
            c.start(node, &args);
        }
        for node in ["node1", "node2"] {
            c.wait_ready(node);
        }
        let mut lab = PolicyLab {
            c,
            dir,
            sctp: false,
        };
        for k in cases::pods() {
            lab.add_pod(&k);
        }
        let ns = lab.c.lab.netns(&lab_pod(&cases::pods()[0])).unwrap();
        lab.sctp = ns.run(sctp_works).unwrap().expect("an SCTP socket");
        lab
    }

    /// A fixture pod, wired by the plugin at its fixture address, serving its ports.
    fn add_pod(&mut self, k: &Key) {
        let node = node_of(&k.namespace, &k.name);
        let name = format!("{}-{}", k.namespace, k.name);
        let netns = format!("/run/netns/{}", self.c.lab.pod_add(node, &name).unwrap());
        let ip = cases::pod_ip(&k.namespace, &k.name);
        let mut conf = self.c.cni_conf(node, "1.0.0");
        conf["runtimeConfig"] = json!({"ips": [format!("{ip}/24")]});
        let container = format!("ctr-{name}");
        let cni_args = format!(
            "K8S_POD_NAMESPACE={};K8S_POD_NAME={};IgnoreUnknown=1",
            k.namespace, k.name
        );
        let mut env = Cluster::attach_env("ADD", &container, &netns, "eth0");
        env.push(("CNI_ARGS", &cni_args));
        let (code, out) = self.c.cni(node, &env, &conf.to_string());
        assert_eq!(code, 0, "ADD {k}: {out}");
        assert!(
            out.contains(&format!("\"{ip}/24\"")),
            "{k} got its address: {out}"
        );
        let ns = self.c.lab.netns(&lab_pod(k)).unwrap();
        ns.run(serve).unwrap().unwrap();
    }

    /// Writes what the case holds now: namespaces and pods with their labels, then each
    /// applied manifest in order (a later object replaces an earlier one of the same name).
    fn write(
        &self,
        ns_labels: &BTreeMap<String, Labels>,
        pod_labels: &BTreeMap<Key, Labels>,
        applied: &[String],
    ) {
        for e in std::fs::read_dir(&self.dir).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        let mut base = String::new();
        for (ns, labels) in ns_labels {
            base += &format!(
                "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {}\n",
                json!(labels)
            );
        }
        for (k, labels) in pod_labels {
            base += &pod_manifest(k, labels);
        }
        let atomic = |name: &str, text: &str| {
            podnet::util::files::write_atomic(&self.dir.join(name), text.as_bytes(), None).unwrap()
        };
        atomic("00-base.yaml", &base);
        for (i, text) in applied.iter().enumerate() {
            atomic(&format!("10-{i:03}.yaml"), text);
        }
    }

    /// Every pod to every other pod on one protocol/port, in parallel.
    fn observe(&self, protocol: Protocol, port: u16) -> Truth {
        let pods = cases::pods();
        let mut t = Truth::all(false);
        let rows: Vec<Vec<bool>> = std::thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter()
                .map(|src| {
                    let ns = self.c.lab.netns(&lab_pod(src)).unwrap();
                    let pods = &pods;
                    s.spawn(move || ns.run(|| probe_all(pods, protocol, port)).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, row) in rows.into_iter().enumerate() {
            for (j, v) in row.into_iter().enumerate() {
                t.cells[i][j] = v;
            }
        }
        t
    }

    /// Plays a case: each step's changes written, each probe's table observed.
    fn play(&self, case: &Case) {
        let mut model = cases::fixture();
        let mut ns_labels: BTreeMap<String, Labels> = cases::NAMESPACES
            .iter()
            .map(|n| (n.to_string(), cases::labels(&[("ns", n)])))
            .collect();
        let mut pod_labels: BTreeMap<Key, Labels> = cases::pods()
            .into_iter()
            .map(|k| {
                let l = cases::labels(&[("pod", k.name.as_str())]);
                (k, l)
            })
            .collect();
        let mut applied: Vec<String> = Vec::new();
        for step in &case.steps {
            for change in &step.changes {
                change.apply(&mut model).unwrap();
                match change {
                    Change::Apply(text) => applied.push(text.clone()),
                    Change::DeleteAllPolicies => applied.clear(),
                    Change::PodLabels(k, l) => {
                        pod_labels.insert(k.clone(), l.clone());
                    }
                    Change::NamespaceLabels(n, l) => {
                        ns_labels.insert(n.clone(), l.clone());
                    }
                }
            }
            self.write(&ns_labels, &pod_labels, &applied);
            for probe in &step.probes {
                if probe.protocol == Protocol::Sctp && !self.sctp {
                    continue;
                }
                check_evaluator(case, &model, probe);
                self.converge(case, probe);
            }
        }
    }

    fn converge(&self, case: &Case, probe: &Probe) {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let seen = self.observe(probe.protocol, probe.port);
            let diff = probe.expect.differences(&seen);
            if diff.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let node1 = self
                    .c
                    .lab
                    .exec("node1", &["nft", "list", "table", "inet", "podnet-policy"])
                    .unwrap();
                panic!(
                    "{} / {} on {}/{}: the kernel disagrees after {CONVERGE:?}\nexpected:\n{}\nobserved:\n{seen}\ncells (from, to, expected): {diff:?}\nnode1's table:\n{}",
                    case.context,
                    case.name,
                    probe.protocol,
                    probe.port,
                    probe.expect,
                    String::from_utf8_lossy(&node1.stdout)
                );
            }
        }
    }
}

/// The evaluator's answer for every cell equals the case's table.
fn check_evaluator(case: &Case, model: &Model, probe: &Probe) {
    let pods = cases::pods();
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            let v = eval::allowed(
                model,
                &Endpoint::Pod(a.clone()),
                &Endpoint::Pod(b.clone()),
                probe.protocol,
                probe.port,
            )
            .unwrap();
            assert_eq!(
                v.allowed, probe.expect.cells[i][j],
                "{}: evaluator on {a} -> {b} {}/{}: {v}",
                case.name, probe.protocol, probe.port
            );
        }
    }
}

fn pod_manifest(k: &Key, labels: &Labels) -> String {
    let ip = cases::pod_ip(&k.namespace, &k.name);
    let ports: Vec<serde_json::Value> = cases::serving_ports()
        .into_iter()
        .map(|p| json!({"name": p.name, "containerPort": p.port, "protocol": p.protocol.as_str()}))
        .collect();
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  labels: {}\nspec:\n  containers:\n  - name: server\n    image: agnhost\n    ports: {}\nstatus:\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n",
        k.name,
        k.namespace,
        json!(labels),
        json!(ports)
    )
}

/// Every TCP and UDP port some case probes.
fn probed(protocol: Protocol) -> std::collections::BTreeSet<u16> {
    let all = cases::all();
    let probes = all.iter().flat_map(|c| &c.steps).flat_map(|s| &s.probes);
    probes
        .filter(|p| p.protocol == protocol)
        .map(|p| p.port)
        .collect()
}

/// Servers on every port the cases probe, in the calling thread's namespace; they run
/// (detached) until the test process ends. SCTP ones only where the kernel has SCTP.
fn serve() -> std::io::Result<()> {
    for port in probed(Protocol::Tcp) {
        let l = TcpListener::bind(("0.0.0.0", port))?;
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                drop(conn);
            }
        });
    }
    for port in probed(Protocol::Udp) {
        let s = UdpSocket::bind(("0.0.0.0", port))?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        });
    }
    if sctp_works()? {
        for port in probed(Protocol::Sctp) {
            let l = sctp::listen(port)?;
            std::thread::spawn(move || sctp::accept_forever(l));
        }
    }
    Ok(())
}

/// Whether this kernel has SCTP: a socket of it opens, or fails with `EPROTONOSUPPORT` (no
/// SCTP, as on a kernel without the module); any other failure is an error.
fn sctp_works() -> std::io::Result<bool> {
    match sctp::socket() {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// SCTP over libc (one-to-one style: `SOCK_STREAM`, `IPPROTO_SCTP`), which std lacks: an
/// association is a connection, so a probe is a connect within the timeout.
mod sctp {
    use std::io;
    use std::net::{IpAddr, SocketAddr};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Duration;

    pub fn socket() -> io::Result<OwnedFd> {
        // SAFETY: socket(2) with constant arguments; the descriptor is owned from here.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just opened and owned by no one else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn sockaddr(addr: SocketAddr) -> libc::sockaddr_in {
        let IpAddr::V4(ip) = addr.ip() else {
            panic!("the fixture is IPv4: {addr}")
        };
        // SAFETY: sockaddr_in is plain data; all zeroes is valid.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = addr.port().to_be();
        sa.sin_addr.s_addr = u32::from(ip).to_be();
        sa
    }

    fn check(rc: libc::c_int) -> io::Result<()> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// A listening socket on `0.0.0.0:port`.
    pub fn listen(port: u16) -> io::Result<OwnedFd> {
        let fd = socket()?;
        let sa = sockaddr(SocketAddr::from(([0, 0, 0, 0], port)));
        let len = std::mem::size_of_val(&sa) as libc::socklen_t;
        // SAFETY: a valid sockaddr_in of `len` bytes and an open descriptor.
        check(unsafe { libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), len) })?;
        // SAFETY: an open, bound descriptor.
        check(unsafe { libc::listen(fd.as_raw_fd(), 64) })?;
        Ok(fd)
    }

    /// Accepts associations and closes them, until the socket fails.
    pub fn accept_forever(l: OwnedFd) {
        loop {
            // SAFETY: a listening descriptor; the peer address is not asked for.
            let fd =
                unsafe { libc::accept(l.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut()) };
            if fd < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            // SAFETY: an accepted descriptor, owned by no one else; dropping closes it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }

    /// Whether an association to `addr` comes up within `timeout`.
    pub fn connects(addr: SocketAddr, timeout: Duration) -> io::Result<bool> {
        let fd = socket()?;
        let raw = fd.as_raw_fd();
        // SAFETY: fcntl on an open descriptor.
        check(unsafe { libc::fcntl(raw, libc::F_SETFL, libc::O_NONBLOCK) })?;
        let sa = sockaddr(addr);
        let len = std::mem::size_of_val(&sa) as libc::socklen_t;
        // SAFETY: a valid sockaddr_in of `len` bytes and an open descriptor.
        if unsafe { libc::connect(raw, (&raw const sa).cast(), len) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Ok(false);
        }
        let mut p = libc::pollfd {
            fd: raw,
            events: libc::POLLOUT,
            revents: 0,
        };
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut p, 1, left.as_millis() as libc::c_int) };
            if n > 0 {
                break;
            }
            if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return Ok(false);
            }
        }
        let mut err: libc::c_int = 0;
        let mut n = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: SO_ERROR into an int of `n` bytes.
        check(unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut err).cast(),
                &mut n,
            )
        })?;
        Ok(err == 0)
    }
}

/// Probes every pod from the calling thread's namespace, one thread a probe.
fn probe_all(pods: &[Key], protocol: Protocol, port: u16) -> Vec<bool> {
    std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|dst| {
                let addr = SocketAddr::new(cases::pod_ip(&dst.namespace, &dst.name), port);
                s.spawn(move || probe(addr, protocol))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn probe(addr: SocketAddr, protocol: Protocol) -> bool {
    match protocol {
        Protocol::Tcp => TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok(),
        Protocol::Udp => {
            let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
                return false;
            };
            let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
            if s.send_to(b"probe", addr).is_err() {
                return false;
            }
            let mut buf = [0u8; 16];
            matches!(s.recv_from(&mut buf), Ok((5, from)) if from == addr)
        }
        Protocol::Sctp => sctp::connects(addr, PROBE_TIMEOUT).unwrap_or(false),
    }
}

#[test]
fn upstream_truth_tables_hold_in_the_kernel() {
    let lab = PolicyLab::new("np", &[]);
    let started = Instant::now();
    let (mut played, mut skipped) = (0, Vec::new());
    for case in cases::all() {
        if case.needs_sctp() && !lab.sctp {
            skipped.push(format!("{}: {}", case.context, case.name));
            continue;
        }
        lab.play(&case);
        played += 1;
    }
    eprintln!("{played} cases in {:?}", started.elapsed());
    if !lab.sctp {
        eprintln!(
            "SKIPPED: this kernel has no SCTP (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): EPROTONOSUPPORT); {} cases with SCTP probes not played: {skipped:?}",
            skipped.len()
        );
    }
    assert!(played >= 40, "{played}");
}

/// A pod of the small labs below: wired by the plugin with its Kubernetes identity, serving
/// TCP 80; returns its address.
fn small_pod(c: &mut Cluster, node: &str, ns: &str, name: &str) -> IpAddr {
    let netns = format!(
        "/run/netns/{}",
        c.lab.pod_add(node, &format!("{ns}-{name}")).unwrap()
    );
    let conf = c.cni_conf(node, "1.0.0");
    let container = format!("ctr-{ns}-{name}");
    let cni_args = format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};IgnoreUnknown=1");
    let mut env = Cluster::attach_env("ADD", &container, &netns, "eth0");
    env.push(("CNI_ARGS", &cni_args));
    let (code, out) = c.cni(node, &env, &conf.to_string());
    assert_eq!(code, 0, "{out}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ip: IpAddr = r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let target = format!("{node}/{ns}-{name}");
    c.lab
        .netns(&target)
        .unwrap()
        .run(|| {
            let l = TcpListener::bind(("0.0.0.0", 80))?;
            std::thread::spawn(move || l.incoming().for_each(drop));
            Ok::<_, std::io::Error>(())
        })
        .unwrap()
        .unwrap();
    ip
}

/// Whether `from` (a lab target) reaches `to` on TCP 80 within a deadline, as `want`.
fn reaches(c: &Cluster, from: &str, to: IpAddr, want: bool) {
    let ns = c.lab.netns(from).unwrap();
    poll(&format!("{from} -> {to}:80 to be {want}"), CONVERGE, || {
        let got = ns
            .run(|| probe(SocketAddr::new(to, 80), Protocol::Tcp))
            .unwrap();
        (got == want).then_some(())
    });
}

/// `from` reaches `to` on TCP 80 (`want`) on every probe for `how_long`.
fn stays(c: &Cluster, from: &str, to: IpAddr, want: bool, how_long: Duration) {
    let ns = c.lab.netns(from).unwrap();
    let end = Instant::now() + how_long;
    while Instant::now() < end {
        let got = ns
            .run(|| probe(SocketAddr::new(to, 80), Protocol::Tcp))
            .unwrap();
        assert_eq!(got, want, "{from} -> {to}:80");
    }
}

fn manifest(kind: &str, ns: &str, name: &str, body: &str) -> serde_json::Value {
    let text = format!(
        "apiVersion: {}\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: {ns}\n{body}",
        if kind == "NetworkPolicy" {
            "networking.k8s.io/v1"
        } else {
            "v1"
        }
    );
    serde_norway_value(&text)
}

fn serde_norway_value(yaml: &str) -> serde_json::Value {
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    serde_json::to_value(v).unwrap()
}

#[test]
fn policy_from_the_kubernetes_api_follows_every_change_and_drops_nothing_allowed() {
    use crate::kube::KubeLab;
    let mut k = KubeLab::new("npk", 2, 1);
    k.add_node("node1", Some("10.244.1.0/24"));
    k.add_node("node2", Some("10.244.2.0/24"));
    for n in ["node1", "node2"] {
        k.start(n, "host-gw", &["--network-policy"]);
    }
    k.ready("node1");
    k.ready("node2");
    let store = k.store().clone();
    for ns in ["x", "y"] {
        let mut o = serde_norway_value(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {{ns: {ns}}}\n"
        ));
        o["metadata"].as_object_mut().unwrap().remove("namespace");
        store.create(o).unwrap();
    }
    let xa = small_pod(&mut k.c, "node1", "x", "a");
    let ya = small_pod(&mut k.c, "node2", "y", "a");
    let xb = small_pod(&mut k.c, "node2", "x", "b");
    // x/a's object carries no address yet (kubelet has not reported it): the plugin's record
    // tells node1 where it is.
    store
        .create(manifest(
            "Pod",
            "x",
            "a",
            "  labels: {pod: a}\nspec: {nodeName: node1, containers: [{name: c}]}\n",
        ))
        .unwrap();
    for (ns, name, ip, node) in [("y", "a", ya, "node2"), ("x", "b", xb, "node2")] {
        store.create(manifest("Pod", ns, name, &format!("  labels: {{pod: {name}}}\nspec: {{nodeName: {node}, containers: [{{name: c}}]}}\nstatus: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"))).unwrap();
    }
    reaches(&k.c, "node2/y-a", xa, true);
    // Deny everything into x, then let namespace y in to x/a.
    store
        .create(manifest(
            "NetworkPolicy",
            "x",
            "deny-all",
            "spec: {podSelector: {}, ingress: []}\n",
        ))
        .unwrap();
    reaches(&k.c, "node2/y-a", xa, false);
    reaches(&k.c, "node2/x-b", xa, false);
    store.create(manifest("NetworkPolicy", "x", "allow-y", "spec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n")).unwrap();
    reaches(&k.c, "node2/y-a", xa, true);
    reaches(&k.c, "node2/x-b", xa, false);
    // A 10 ms ping from y/a to x/a while policies come and go around it: nothing is lost.
    let pinger =
        k.c.lab
            .command(
                "node2/y-a",
                &[
                    "ping",
                    "-i",
                    "0.01",
                    "-c",
                    "300",
                    "-W",
                    "1",
                    &xa.to_string(),
                ],
            )
            .unwrap()
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    for i in 0..5 {
        let name = format!("extra-{i}");
        store.create(manifest("NetworkPolicy", "x", &name, "spec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 81}]}]\n")).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        store.delete("networkpolicies", "x", &name).unwrap();
    }
    let out = pinger.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("300 packets transmitted, 300 received, 0% packet loss"),
        "{text}"
    );
    // Relabelling the namespace takes y/a out of the peer; relabelling x/b's pod lets it in.
    store
        .patch(
            "namespaces",
            "",
            "y",
            podnet_test_apiserver::PatchType::Merge,
            &json!({"metadata": {"labels": {"ns": "elsewhere"}}}),
        )
        .unwrap();
    reaches(&k.c, "node2/y-a", xa, false);
    store.patch("networkpolicies", "x", "allow-y", podnet_test_apiserver::PatchType::Merge,
        &json!({"spec": {"ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}})).unwrap();
    store
        .patch(
            "pods",
            "x",
            "b",
            podnet_test_apiserver::PatchType::Merge,
            &json!({"metadata": {"labels": {"role": "client"}}}),
        )
        .unwrap();
    reaches(&k.c, "node2/x-b", xa, true);
    // Counters live with the chain of the pod's current rules: y/a knocks once more.
    reaches(&k.c, "node2/y-a", xa, false);
    // What the operator sees.
    let sock =
        k.c.lab
            .node_dir("node1")
            .unwrap()
            .join("podnetd.sock")
            .display()
            .to_string();
    let explain = ok(k
        .c
        .lab
        .exec("node1", &[PODNETCTL, "policy", "x/a", "--socket", &sock])
        .unwrap());
    assert!(
        explain.contains("ingress  isolated by x/allow-y, x/deny-all"),
        "{explain}"
    );
    assert!(
        explain.contains("allows x/allow-y ingress[0]: from pods role=client on any port"),
        "{explain}"
    );
    assert!(explain.contains("egress   not isolated"), "{explain}");
    let metrics = podnet::httpget::unix(std::path::Path::new(&sock), "/metrics")
        .unwrap()
        .1;
    let dropped = metrics
        .lines()
        .find(|l| l.starts_with("podnet_policy_packets_total{policy=\"x/allow-y,x/deny-all\",direction=\"ingress\",verdict=\"dropped\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(!dropped.ends_with(" 0"), "{dropped}");
    // Deleting the policies stops enforcement.
    store.delete("networkpolicies", "x", "allow-y").unwrap();
    store.delete("networkpolicies", "x", "deny-all").unwrap();
    reaches(&k.c, "node2/y-a", xa, true);
}

#[test]
fn invalid_objects_are_refused_one_by_one_and_the_rest_applies() {
    let mut c = Cluster::new(LabSpec::new(unique("npbad"), 2));
    c.put_config(HOST_GW);
    let dir = c.lab.workdir().join("policy");
    std::fs::create_dir_all(&dir).unwrap();
    for node in ["node1", "node2"] {
        let pd = format!("--policy-dir={}", dir.display());
        c.start(node, &[&pd]);
    }
    c.wait_ready("node1");
    c.wait_ready("node2");
    let xa = small_pod(&mut c, "node1", "x", "a");
    let _xb = small_pod(&mut c, "node2", "x", "b");
    reaches(&c, "node2/x-b", xa, true);
    let bad = |name: &str, spec: &str| {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec:\n{spec}"
        )
    };
    let text = [
        bad("bad-cidr", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n"),
        bad("bad-endport", "  podSelector: {}\n  ingress: [{ports: [{port: 81, endPort: 80}]}]\n"),
        bad("named-endport", "  podSelector: {}\n  ingress: [{ports: [{port: http, endPort: 90}]}]\n"),
        bad("bad-protocol", "  podSelector: {}\n  ingress: [{ports: [{protocol: ICMP, port: 1}]}]\n"),
        bad("bad-operator", "  podSelector: {matchExpressions: [{key: a, operator: Near, values: [b]}]}\n  ingress: []\n"),
        bad("deny-all", "  podSelector: {}\n  ingress: []\n"),
    ]
    .concat();
    podnet::util::files::write_atomic(&dir.join("policies.yaml"), text.as_bytes(), None).unwrap();
    // The valid one applies: x/a is isolated.
    reaches(&c, "node2/x-b", xa, false);
    let sock = c.lab.node_dir("node1").unwrap().join("podnetd.sock");
    let st = podnet::status::Status::from_json(&podnet::httpget::unix(&sock, "/status").unwrap().1)
        .unwrap();
    let p = st.policy.unwrap();
    assert_eq!(p.policies, 1, "{p:?}");
    let errors = p.errors.join("\n");
    for want in [
        "networkpolicy x/bad-cidr: spec.ingress[0].from[0].ipBlock.cidr = 10.0.0.0/33",
        "networkpolicy x/bad-endport: spec.ingress[0].ports[0].endPort = 80: must be greater than or equal to port (81)",
        "networkpolicy x/named-endport: spec.ingress[0].ports[0].endPort = 90",
        "networkpolicy x/bad-protocol: spec.ingress[0].ports[0].protocol = ICMP",
        "networkpolicy x/bad-operator: spec.podSelector.matchExpressions[0].operator = Near",
    ] {
        assert!(errors.contains(want), "{want:?} in:\n{errors}");
    }
    assert_eq!(p.errors.len(), 5, "{errors}");
    // Edits gone wrong: the API server would refuse them and keep the object as it was, and so
    // does podnetd, reporting the error; x/a stays isolated.
    let policy_errors = || {
        let st = podnet::httpget::unix(&sock, "/status").unwrap().1;
        podnet::status::Status::from_json(&st)
            .unwrap()
            .policy
            .unwrap()
            .errors
            .join("\n")
    };
    let write = |text: &str| {
        podnet::util::files::write_atomic(&dir.join("policies.yaml"), text.as_bytes(), None)
            .unwrap()
    };
    // Each edit: its error (which names the object either way), then the error line that says
    // the last valid version is kept.
    let edits = [
        (
            "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n",
            "networkpolicy x/deny-all: spec.ingress[0].from[0].ipBlock.cidr = 10.0.0.0/33",
            "networkpolicy x/deny-all: spec.ingress[0].from[0].ipBlock.cidr = 10.0.0.0/33",
        ),
        (
            "  podSelector: {}\n  ingress: [{ports: 80}]\n",
            "networkpolicy x/deny-all: invalid type",
            "networkpolicy x/deny-all: unreadable;",
        ),
    ];
    for (spec, error, kept) in edits {
        write(&bad("deny-all", spec));
        poll(&format!("the error {error:?}"), CONVERGE, || {
            policy_errors().contains(error).then_some(())
        });
        stays(&c, "node2/x-b", xa, false, Duration::from_secs(3));
        let errors = policy_errors();
        let said = errors
            .lines()
            .any(|l| l.contains(kept) && l.contains("its last valid version stays in force"));
        assert!(said, "{kept:?}, kept, in:\n{errors}");
    }
    // Deleted, the object goes, its last valid version with it.
    write("");
    reaches(&c, "node2/x-b", xa, true);
    podnet::util::files::write_atomic(&dir.join("policies.yaml"), text.as_bytes(), None).unwrap();
    reaches(&c, "node2/x-b", xa, false);
    // doctor: nothing undoes policy, until someone turns connection tracking off for pods.
    let doctor = |c: &Cluster| -> serde_json::Value {
        let sock = sock.display().to_string();
        let out = c
            .lab
            .exec("node1", &[PODNETCTL, "doctor", "--json", "--socket", &sock])
            .unwrap();
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "policy-shadow")
            .unwrap()
            .clone()
    };
    assert_eq!(doctor(&c)["verdict"], "pass", "{}", doctor(&c));
    for rule in [
        "add table ip raw",
        "add chain ip raw prerouting { type filter hook prerouting priority raw; }",
        "add rule ip raw prerouting ip saddr 10.244.0.0/16 notrack",
    ] {
        ok(c.lab.exec("node1", &["nft", rule]).unwrap());
    }
    let d = doctor(&c);
    assert_eq!(d["verdict"], "warn", "{d}");
    assert!(
        d["detail"]
            .as_str()
            .unwrap()
            .contains("table ip raw chain prerouting handle"),
        "{d}"
    );
}

const DUAL_HOST_GW: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"host-gw"}}"#;

/// A pod of the lab's `add_pod` (namespace `default`, name `NODE-NAME`) as a Pod manifest, with
/// its labels and both addresses.
fn labelled_pod(pod: &podnet::lab::cluster::Pod, labels: &str) -> String {
    let (ip, ip6) = (pod.ip, pod.ip6.unwrap());
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {}-{}, namespace: default, labels: {labels}}}\nspec: {{nodeName: {}, containers: [{{name: c}}]}}\nstatus: {{podIP: {ip}, podIPs: [{{ip: {ip}}}, {{ip: {ip6}}}]}}\n",
        pod.node, pod.name, pod.node
    )
}

/// Whether `from` connects to `to` over TCP (one attempt).
fn connects(c: &Cluster, from: &str, to: SocketAddr) -> bool {
    let ns = c.lab.netns(from).unwrap();
    ns.run(|| probe(to, Protocol::Tcp)).unwrap()
}

/// IPv6 between two pods of one node, one of them isolated: with br_netfilter their packets
/// cross the policy table's forward hook, neighbour discovery included, which conntrack never
/// calls established. Each time with the neighbour caches flushed (so the first packet needs a
/// solicitation and its advertisement), the allowed port connects and the other does not:
/// first with the client isolated for egress (its solicitation would meet its chain), then
/// with the server isolated both ways, admitting nothing out (its advertisement would).
#[test]
fn isolated_pods_on_one_node_resolve_each_other_over_ipv6() {
    let mut c = Cluster::new(LabSpec::new(unique("npnd"), 1).ipv6(true));
    c.put_config(DUAL_HOST_GW);
    let dir = c.lab.workdir().join("policy");
    std::fs::create_dir_all(&dir).unwrap();
    let pd = format!("--policy-dir={}", dir.display());
    c.start("node1", &[&pd]);
    c.wait_ready("node1");
    let brnf = ok(c
        .lab
        .exec("node1", &["sysctl", "net.bridge.bridge-nf-call-ip6tables"])
        .unwrap());
    assert!(brnf.contains("= 1"), "{brnf}");
    let client = c.add_pod("node1", "a", "1.0.0");
    let server = c.add_pod("node1", "b", "1.0.0");
    c.lab
        .netns(&server.target())
        .unwrap()
        .run(|| {
            for port in [80, 81] {
                let l = TcpListener::bind(("::", port))?;
                std::thread::spawn(move || l.incoming().for_each(drop));
            }
            Ok::<_, std::io::Error>(())
        })
        .unwrap()
        .unwrap();
    let to = |port| SocketAddr::new(IpAddr::V6(server.ip6.unwrap()), port);
    let (cli, srv) = (client.target(), server.target());
    let pods = [
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n".to_string(),
        labelled_pod(&client, "{app: client}"),
        labelled_pod(&server, "{app: server}"),
    ]
    .concat();
    let policy = |name: &str, spec: &str| {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}"
        )
    };
    let client_egress = policy(
        "client-egress",
        "  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {app: server}}}], ports: [{port: 80}]}]\n",
    );
    let server_both = policy(
        "server-in-only",
        "  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress, Egress]\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]\n  egress: []\n",
    );
    let write = |text: &str| {
        podnet::util::files::write_atomic(&dir.join("policies.yaml"), text.as_bytes(), None)
            .unwrap()
    };
    for (name, p) in [
        ("client-egress", client_egress),
        ("server-in-only", server_both),
    ] {
        write(&pods);
        poll(&format!("before {name}: port 81 open"), CONVERGE, || {
            connects(&c, &cli, to(81)).then_some(())
        });
        write(&format!("{pods}{p}"));
        poll(&format!("{name}: port 81 refused"), CONVERGE, || {
            (!connects(&c, &cli, to(81))).then_some(())
        });
        for pod in [&cli, &srv] {
            ok(c.lab
                .exec(pod, &["ip", "-6", "neigh", "flush", "dev", "eth0"])
                .unwrap());
        }
        let what = format!("{name}: {cli} -> {} after a neighbour flush", to(80));
        let deadline = Instant::now() + CONVERGE;
        while !connects(&c, &cli, to(80)) {
            if Instant::now() > deadline {
                let neigh = c.lab.exec(&cli, &["ip", "-6", "neigh"]).unwrap();
                let table = c
                    .lab
                    .exec("node1", &["nft", "list", "table", "inet", "podnet-policy"])
                    .unwrap();
                panic!(
                    "{what}: no connection\n{cli}'s neighbours:\n{}\nnode1's table:\n{}",
                    String::from_utf8_lossy(&neigh.stdout),
                    String::from_utf8_lossy(&table.stdout)
                );
            }
        }
        assert!(!connects(&c, &cli, to(81)), "{name}: port 81 stays refused");
    }
}

/// `podnetctl lab demo --policy`: the matrix before, then with node1/a isolated (only node1/b
/// let in: the two node2 pods denied, everything else reaching), exit 0, nothing left behind.
#[test]
fn the_policy_demo_shows_isolation_and_cleans_up() {
    let name = unique("npdemo");
    let out = std::process::Command::new(PODNETCTL)
        .args(["lab", "demo", "--nodes", "2", "--policy", "--name", &name])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("network policy: only node1/b may reach node1/a"),
        "{stderr}"
    );
    assert!(
        stdout.contains("12 of 12 pod pairs reach each other"),
        "{stdout}"
    );
    // The last matrix (the demo prints it again until policy is enforced on both nodes).
    let last = &stdout[stdout.rfind("from \\ to").unwrap()..];
    assert!(
        last.contains("10 of 12 pod pairs reach each other"),
        "{stdout}"
    );
    let denied: Vec<&str> = last.lines().filter(|l| l.contains("denied")).collect();
    assert_eq!(denied.len(), 2, "{stdout}");
    assert!(
        denied
            .iter()
            .all(|l| l.starts_with("node2/") && l.split_whitespace().nth(1) == Some("denied")),
        "node2's pods denied into node1/a (the first column): {stdout}"
    );
    crate::ops::assert_lab_gone(&name);
}
