//! The Kubernetes API mode (`--kube-subnet-mgr`) in the lab, against the test API server
//! (`podnet-test-apiserver`: the real wire format, real Node fixtures; no kube-apiserver can run
//! here). The server runs in etcd1's namespace on 198.18.0.2:6443 with TLS and bearer tokens;
//! the test plays kube-controller-manager by giving Nodes their podCIDRs.

use std::collections::BTreeMap;
use std::net::{IpAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use podnet::lab::LabSpec;
use podnet_test_apiserver::fixtures;
use podnet_test_apiserver::{
    ApiServer, CaRef, Credentials, ForbiddenRule, Pki, ServerConfig, Store, write_in_cluster_files,
    write_kubeconfig,
};
use serde_json::{Value, json};

use crate::cluster::{Cluster, PODNETCTL, Pod};
use crate::support::{ok, poll, unique};

pub const API_IP: &str = "198.18.0.2";
const USER: &str = "system:serviceaccount:kube-flannel:flannel";
const TOKEN: &str = "flannel-token";
const PREFIX: &str = "flannel.alpha.coreos.com";

/// A lab with the test API server and a Node object per lab node.
pub struct KubeLab {
    pub c: Cluster,
    api: Option<ApiServer>,
    pki: Pki,
    dir: PathBuf,
}

fn server_config(pki: &Pki) -> ServerConfig {
    ServerConfig::default()
        .with_tls(pki.server_tls())
        .with_token(TOKEN, USER)
        .with_bookmark_interval(Some(Duration::from_secs(1)))
}

impl KubeLab {
    pub fn new(prefix: &str, nodes: usize, segments: usize) -> KubeLab {
        KubeLab::with_spec(LabSpec::new(unique(prefix), nodes).segments(segments))
    }

    pub fn with_spec(spec: LabSpec) -> KubeLab {
        let c = Cluster::new(spec);
        let dir = c.lab.workdir().join("kube");
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki::generate(&dir, &[API_IP.parse().unwrap()]).unwrap();
        let mut k = KubeLab {
            c,
            api: None,
            pki,
            dir,
        };
        k.start_api(Store::default());
        k
    }

    fn start_api(&mut self, store: Store) {
        let listener = self
            .c
            .lab
            .netns("etcd1")
            .unwrap()
            .run(|| TcpListener::bind((API_IP, 6443)))
            .unwrap()
            .unwrap();
        let api = ApiServer::start_with_store(listener, server_config(&self.pki), store).unwrap();
        self.api = Some(api);
    }

    pub fn store(&self) -> &Store {
        self.api.as_ref().unwrap().store()
    }

    fn url(&self) -> String {
        format!("https://{API_IP}:6443")
    }

    /// The node's Node object: a kubeadm worker, renamed, with its lab address.
    pub fn add_node(&self, node: &str, pod_cidr: Option<&str>) {
        let cidrs: Vec<&str> = pod_cidr.into_iter().collect();
        self.add_node_cidrs(node, &cidrs);
    }

    /// A Node with these podCIDRs (one per family) and its lab addresses (both families in
    /// a lab with an IPv6 underlay).
    pub fn add_node_cidrs(&self, node: &str, cidrs: &[&str]) {
        let host = self.c.lab.plan().host(node).unwrap();
        let ips: Vec<IpAddr> = std::iter::once(IpAddr::V4(host.ip()))
            .chain(host.ip6().map(IpAddr::V6))
            .collect();
        let tmpl = fixtures::fixture("node-worker").unwrap();
        self.store()
            .create(fixtures::node(&tmpl, node, &ips, cidrs))
            .unwrap();
    }

    pub fn node(&self, name: &str) -> Value {
        self.store().get("nodes", "", name).unwrap()
    }

    /// The kubeconfig a node's podnetd uses (token and CA file).
    fn kubeconfig(&self, node: &str) -> PathBuf {
        let path = self.dir.join(format!("{node}.kubeconfig"));
        let creds = Credentials::Token(TOKEN.into());
        write_kubeconfig(
            &path,
            &self.url(),
            CaRef::File(&self.pki.ca_cert_path),
            &creds,
        )
        .unwrap();
        path
    }

    fn net_conf(&self, backend: &str) -> PathBuf {
        let conf = json!({"Network": "10.244.0.0/16", "Backend": {"Type": backend}});
        self.net_conf_json(backend, &conf)
    }

    fn net_conf_json(&self, name: &str, conf: &Value) -> PathBuf {
        let path = self.dir.join(format!("net-conf-{name}.json"));
        // As kubelet updates a ConfigMap volume: atomically (other nodes may be reading it).
        podnet::util::files::write_atomic(&path, conf.to_string().as_bytes(), None).unwrap();
        path
    }

    /// Starts podnetd in Kubernetes mode on a node (NODE_NAME set, as the DaemonSet does).
    pub fn start(&mut self, node: &str, backend: &str, extra: &[&str]) {
        let conf = self.net_conf(backend);
        self.start_with(node, &conf, extra)
    }

    /// Starts podnetd in Kubernetes mode with this net-conf.json.
    pub fn start_with(&mut self, node: &str, net_conf: &std::path::Path, extra: &[&str]) {
        let kc = format!("--kubeconfig-file={}", self.kubeconfig(node).display());
        let nc = format!("--net-config-path={}", net_conf.display());
        let mut args = vec!["--kube-subnet-mgr", kc.as_str(), nc.as_str(), "--ip-masq"];
        args.extend_from_slice(extra);
        let argv = self.c.podnetd_args(node, &args);
        let env = vec![("NODE_NAME".to_string(), node.to_string())];
        self.c.lab.spawn(node, &argv, &env).unwrap();
    }

    /// Waits for the node's subnet.env; on a timeout the failure shows podnetd's log.
    pub fn ready(&self, node: &str) -> podnet::subnet_env::SubnetEnv {
        match self.c.0.wait_ready(node, Duration::from_secs(30)) {
            Ok(env) => env,
            Err(e) => panic!("{e}; podnetd's log:\n{}", self.c.log(&self.podnetd(node))),
        }
    }

    fn annotations(&self, node: &str) -> BTreeMap<String, String> {
        let n = self.node(node);
        serde_json::from_value(n["metadata"]["annotations"].clone()).unwrap_or_default()
    }

    pub fn podnetd(&self, node: &str) -> podnet::lab::process::ProcRecord {
        self.c.podnetd(node)
    }
}

fn cidr(i: usize) -> String {
    format!("10.244.{}.0/24", 10 + i)
}

/// Every pod pings every other.
fn mesh(c: &Cluster, pods: &[Pod]) {
    for a in pods {
        for b in pods.iter().filter(|b| b.node != a.node) {
            poll(
                &format!("{} to reach {}", a.target(), b.ip),
                Duration::from_secs(10),
                || {
                    c.lab
                        .exec(&a.target(), &["ping", "-c1", "-W1", &b.ip.to_string()])
                        .unwrap()
                        .status
                        .success()
                        .then_some(())
                },
            );
        }
    }
}

fn three_nodes(backend: &str, segments: usize) {
    let mut k = KubeLab::new("kb", 3, segments);
    let nodes = ["node1", "node2", "node3"];
    for (i, n) in nodes.iter().enumerate() {
        k.add_node(n, Some(&cidr(i)));
    }
    for n in nodes {
        k.start(n, backend, &[]);
    }
    let mut pods = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let env = k.ready(n);
        // subnet.env carries the node's podCIDR.
        assert_eq!(env.subnet.unwrap().trunc().to_string(), cidr(i));
        assert_eq!(env.ipmasq, Some(true));
        pods.push(k.c.add_pod(n, "a", "1.0.0"));
    }
    mesh(&k.c, &pods);
    // The annotations are flanneld's, byte for byte.
    for n in nodes {
        let a = k.annotations(n);
        let ip = k.c.lab.plan().host(n).unwrap().ip().to_string();
        assert_eq!(a[&format!("{PREFIX}/kube-subnet-manager")], "true");
        assert_eq!(a[&format!("{PREFIX}/backend-type")], backend);
        assert_eq!(a[&format!("{PREFIX}/public-ip")], ip);
        let data = &a[&format!("{PREFIX}/backend-data")];
        if backend == "vxlan" {
            let mac = k.c.ip_json(n, &["link", "show", "flannel.1"])[0]["address"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(data, &format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}"));
        } else {
            assert_eq!(data, "null");
        }
        assert!(!a.contains_key(&format!("{PREFIX}/backend-v6-data")));
        // NetworkUnavailable is False, with flanneld's reason and message.
        let cond = network_unavailable(&k, n)
            .unwrap_or_else(|| panic!("{n} has no NetworkUnavailable condition"));
        assert_eq!(cond["status"], "False");
        assert_eq!(cond["reason"], "FlannelIsUp");
        assert_eq!(cond["message"], "Flannel is running on this node");
        // The patches went through nodes/status.
        let patches: Vec<_> = k
            .store()
            .requests()
            .into_iter()
            .filter(|r| r.method == "PATCH" && r.path.contains(&format!("/nodes/{n}")))
            .collect();
        assert!(
            patches
                .iter()
                .all(|p| p.path.ends_with("/status") && p.user.as_deref() == Some(USER)),
            "{patches:?}"
        );
    }
}

#[test]
fn kube_vxlan_three_nodes_on_two_segments_reach_each_other_with_flannels_annotations() {
    three_nodes("vxlan", 2);
}

#[test]
fn kube_host_gw_three_nodes_reach_each_other_with_flannels_annotations() {
    three_nodes("host-gw", 1);
}

#[test]
fn a_node_without_a_pod_cidr_waits_says_why_and_goes_on_when_it_gets_one() {
    let mut k = KubeLab::new("kcidr", 1, 1);
    k.add_node("node1", None);
    k.start("node1", "vxlan", &[]);
    let sock = k.c.node_dir("node1").unwrap().join("podnetd.sock");
    let why =
        "podCIDR not assigned: is kube-controller-manager running with --allocate-node-cidrs?";
    let body = poll(
        "/readyz to say why",
        Duration::from_secs(15),
        || match podnet::httpget::unix(&sock, "/readyz") {
            Ok((503, b)) if b.contains(why) => Some(b),
            _ => None,
        },
    );
    assert!(
        body.starts_with("podnetd is not ready yet: acquiring a lease:"),
        "{body}"
    );
    let status = ok(k
        .c
        .lab
        .exec(
            "node1",
            &[PODNETCTL, "status", "--socket", &sock.display().to_string()],
        )
        .unwrap());
    assert!(status.contains(why), "{status}");
    let log = k.c.log(&k.podnetd("node1"));
    assert!(log.contains(why), "{log}");
    assert!(
        !k.c.env_path("node1").exists(),
        "no subnet.env before a lease"
    );
    // While it waits it watches its own Node (no GET a second): the watch is open before the
    // assignment, so the assignment is seen at once.
    poll("a watch of node1 alone", Duration::from_secs(10), || {
        k.store()
            .requests()
            .iter()
            .any(|r| {
                r.method == "GET"
                    && r.path == "/api/v1/nodes"
                    && r.query.contains("watch=true")
                    && r.query.contains("fieldSelector=metadata.name%3Dnode1")
            })
            .then_some(())
    });
    let gets = |k: &KubeLab| {
        k.store()
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == "/api/v1/nodes/node1")
            .count()
    };
    let before = gets(&k);
    // kube-controller-manager assigns one: podnetd goes on within a second, start-up included.
    k.store()
        .patch(
            "nodes",
            "",
            "node1",
            podnet_test_apiserver::PatchType::Merge,
            &json!({"spec": {"podCIDR": "10.244.7.0/24", "podCIDRs": ["10.244.7.0/24"]}}),
        )
        .unwrap();
    let assigned = Instant::now();
    let env = poll(
        "subnet.env after the assignment",
        Duration::from_secs(5),
        || {
            podnet::subnet_env::SubnetEnv::read(&k.c.env_path("node1"))
                .ok()
                .flatten()
        },
    );
    let took = assigned.elapsed();
    assert_eq!(env.subnet.unwrap().trunc().to_string(), "10.244.7.0/24");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // One look at the Node after the assignment (and one for the public address), not one a
    // second while waiting.
    assert!(
        gets(&k) <= before + 2,
        "{} GETs of node1",
        gets(&k) - before
    );
}

/// The counter `name` in node's /metrics.
fn metric(k: &KubeLab, node: &str, name: &str) -> f64 {
    let sock = k.c.node_dir(node).unwrap().join("podnetd.sock");
    let (_, body) = podnet::httpget::unix(&sock, "/metrics").unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn an_api_server_restart_and_410_gone_miss_nothing_and_rewrite_nothing() {
    let mut k = KubeLab::new("krst", 2, 2);
    for (i, n) in ["node1", "node2"].iter().enumerate() {
        k.add_node(n, Some(&cidr(i)));
        k.start(n, "vxlan", &[]);
    }
    let a = {
        k.ready("node1");
        k.c.add_pod("node1", "a", "1.0.0")
    };
    let b = {
        k.ready("node2");
        k.c.add_pod("node2", "b", "1.0.0")
    };
    mesh(&k.c, &[a.clone(), b.clone()]);
    // The API server is away a moment (its history kept): the watch resumes where it was, and
    // the node says it is back at once, not only when the next Node changes.
    let store = k.api.take().unwrap().stop();
    k.c.wait_log(
        &k.podnetd("node1"),
        "lease watch lost",
        Duration::from_secs(15),
    );
    k.start_api(store);
    let back = |log: &str| {
        let lost = log.find("lease watch lost")?;
        log[lost..]
            .contains("lease watch reconnected")
            .then_some(())
    };
    poll("node1's lease watch back", Duration::from_secs(15), || {
        back(&k.c.log(&k.podnetd("node1")))
    });
    let changes = "podnet_kernel_changes_total";
    let before = metric(&k, "node1", changes);
    k.store().clear_requests();
    // A 10 ms ping between the pods the whole time.
    let pinger =
        k.c.lab
            .command(
                &a.target(),
                &[
                    "ping",
                    "-i",
                    "0.01",
                    "-c",
                    "300",
                    "-W",
                    "1",
                    &b.ip.to_string(),
                ],
            )
            .unwrap()
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    // The API server goes away; while it is gone a third node registers and gets its lease
    // (flanneld elsewhere), and the history is compacted so the watches come back to 410 Gone.
    let store = k.api.take().unwrap().stop();
    let tmpl = fixtures::fixture("node-worker-flannel").unwrap();
    let mut peer = fixtures::node(
        &tmpl,
        "node9",
        &["198.18.0.99".parse().unwrap()],
        &["10.244.99.0/24"],
    );
    peer["metadata"]["annotations"][format!("{PREFIX}/backend-data")] =
        json!("{\"VNI\":1,\"VtepMAC\":\"02:00:c6:12:00:63\"}");
    store.create(peer).unwrap();
    store.compact();
    std::thread::sleep(Duration::from_millis(1500));
    k.start_api(store);
    // node1 learns of node9 by listing again; nothing else is reprogrammed.
    poll("node9's route on node1", Duration::from_secs(15), || {
        k.c.ip_json("node1", &["route", "show", "10.244.99.0/24"])
            .as_array()
            .filter(|r| !r.is_empty())
            .map(|_| ())
    });
    let out = pinger.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("300 packets transmitted, 300 received, 0% packet loss"),
        "{text}"
    );
    assert_eq!(
        metric(&k, "node1", changes) - before,
        3.0,
        "node9's neighbour, FDB entry and route, nothing more"
    );
    let patches: Vec<_> = k
        .store()
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert!(patches.is_empty(), "no needless rewrite: {patches:?}");
    let log = k.c.log(&k.podnetd("node1"));
    assert!(
        log.contains("410 Gone"),
        "the watch fell behind and listed again"
    );
}

#[test]
fn a_deleted_node_loses_its_routes_neighbours_and_fdb_entries_everywhere() {
    let mut k = KubeLab::new("kdel", 3, 2);
    for (i, n) in ["node1", "node2", "node3"].iter().enumerate() {
        k.add_node(n, Some(&cidr(i)));
        k.start(n, "vxlan", &[]);
    }
    for n in ["node1", "node2", "node3"] {
        k.ready(n);
    }
    let gone = cidr(2);
    let gw = gone.trim_end_matches("/24").to_string();
    let data: Value =
        serde_json::from_str(&k.annotations("node3")[&format!("{PREFIX}/backend-data")]).unwrap();
    let mac = data["VtepMAC"].as_str().unwrap().to_string();
    // node3's route, neighbour and FDB entry on a node.
    let objects = |k: &KubeLab, n: &str| {
        let route =
            !k.c.ip_json(n, &["route", "show", &gone])
                .as_array()
                .unwrap()
                .is_empty();
        let neigh = k.c.ip_json(n, &["neigh", "show", &gw, "dev", "flannel.1"]);
        let fdb =
            k.c.lab
                .exec(n, &["bridge", "fdb", "show", "dev", "flannel.1"])
                .unwrap();
        let fdb = String::from_utf8_lossy(&fdb.stdout).contains(&mac);
        (route, !neigh.as_array().unwrap().is_empty(), fdb)
    };
    for n in ["node1", "node2"] {
        poll(
            &format!("{n} to program node3"),
            Duration::from_secs(10),
            || (objects(&k, n) == (true, true, true)).then_some(()),
        );
    }
    let rec = k.podnetd("node3");
    k.c.lab.stop(rec.id.pid).unwrap();
    k.store().delete("nodes", "", "node3").unwrap();
    for n in ["node1", "node2"] {
        poll(
            &format!("{n} to forget node3"),
            Duration::from_secs(10),
            || (objects(&k, n) == (false, false, false)).then_some(()),
        );
    }
}

/// The node's NetworkUnavailable condition, if it has one.
fn network_unavailable(k: &KubeLab, node: &str) -> Option<Value> {
    k.node(node)["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "NetworkUnavailable")
        .cloned()
}

#[test]
fn forbidden_status_patches_and_a_revoked_token_leave_the_data_path_alone() {
    let mut k = KubeLab::new("kforb", 2, 1);
    for (i, n) in ["node1", "node2"].iter().enumerate() {
        k.add_node(n, Some(&cidr(i)));
        k.start(n, "host-gw", &[]);
    }
    k.ready("node1");
    k.ready("node2");
    let a = k.c.add_pod("node1", "a", "1.0.0");
    let b = k.c.add_pod("node2", "b", "1.0.0");
    mesh(&k.c, &[a.clone(), b.clone()]);
    // RBAC loses nodes/status patch; node1's agent restarts (its annotations are already right,
    // so only the NetworkUnavailable condition needs the verb; the test takes the condition
    // away, as on a node podnet has never run on).
    let rule = ForbiddenRule::new("patch", "nodes/status");
    k.store().forbid(rule.clone());
    let rec = k.podnetd("node1");
    k.c.lab.stop(rec.id.pid).unwrap();
    let mut n = k.node("node1");
    n["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["type"] != "NetworkUnavailable");
    k.store().replace(n).unwrap();
    assert!(network_unavailable(&k, "node1").is_none());
    std::fs::remove_file(k.c.env_path("node1")).unwrap();
    k.start("node1", "host-gw", &[]);
    k.ready("node1");
    let rec1 = k.podnetd("node1");
    let log = poll("the refusal in the log", Duration::from_secs(10), || {
        let l = k.c.log(&k.podnetd("node1"));
        l.contains("nodes/status patch forbidden").then_some(l)
    });
    assert!(
        log.contains("cannot patch resource \"nodes/status\""),
        "the server's reason is passed on: {log}"
    );
    let sock = k.c.node_dir("node1").unwrap().join("podnetd.sock");
    let status =
        podnet::status::Status::from_json(&podnet::httpget::unix(&sock, "/status").unwrap().1)
            .unwrap();
    assert!(status.ready);
    assert!(
        status
            .last_store_error
            .unwrap()
            .contains("nodes/status patch forbidden")
    );
    let failed = r#"podnet_lease_store_errors_total{store="kubernetes",op="complete"}"#;
    assert!(metric(&k, "node1", failed) >= 1.0);
    mesh(&k.c, &[a.clone(), b.clone()]);
    // The ClusterRole is fixed: the condition appears without a restart.
    k.store().allow(&rule);
    let cond = poll(
        "NetworkUnavailable after RBAC allows it again",
        Duration::from_secs(60),
        || network_unavailable(&k, "node1"),
    );
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "FlannelIsUp");
    assert_eq!(
        k.podnetd("node1").id.pid,
        rec1.id.pid,
        "the same podnetd, not restarted"
    );
    // The token is revoked: the watch is refused, the data path stays.
    k.store().revoke_token(TOKEN);
    k.store().break_watches();
    poll("the refusal on node2", Duration::from_secs(15), || {
        k.c.log(&k.podnetd("node2"))
            .contains("unauthorized")
            .then_some(())
    });
    mesh(&k.c, &[a, b]);
}

#[test]
fn in_cluster_configuration_and_the_pod_name_fallback() {
    let mut k = KubeLab::new("kinc", 1, 1);
    k.add_node("node1", Some("10.244.5.0/24"));
    // The DaemonSet's pod, scheduled on node1: podnetd finds its node through it.
    let pod = fixtures::pod(
        &fixtures::fixture("pod").unwrap(),
        "kube-flannel",
        "kube-flannel-ds-x7k2p",
        "node1",
        &[],
    );
    k.store().create(pod).unwrap();
    let sa = k.dir.join("serviceaccount");
    write_in_cluster_files(&sa, TOKEN, &k.pki.ca_pem, "kube-flannel").unwrap();
    let nc = format!("--net-config-path={}", k.net_conf("vxlan").display());
    let sa_flag = format!("--kube-serviceaccount-dir={}", sa.display());
    let argv =
        k.c.podnetd_args("node1", &["--kube-subnet-mgr", &nc, &sa_flag]);
    let env: Vec<(String, String)> = [
        ("KUBERNETES_SERVICE_HOST", API_IP),
        ("KUBERNETES_SERVICE_PORT", "6443"),
        ("POD_NAME", "kube-flannel-ds-x7k2p"),
        ("POD_NAMESPACE", "kube-flannel"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    k.c.lab.spawn("node1", &argv, &env).unwrap();
    let env = k.ready("node1");
    assert_eq!(env.subnet.unwrap().trunc().to_string(), "10.244.5.0/24");
    assert_eq!(
        k.annotations("node1")[&format!("{PREFIX}/kube-subnet-manager")],
        "true"
    );
    // Client certificates work too (CN is the user).
    let cert = k
        .pki
        .client_cert(USER, Some("system:serviceaccounts"))
        .unwrap();
    let path = k.dir.join("cert.kubeconfig");
    let creds = Credentials::ClientCert {
        cert: cert.cert_path.clone(),
        key: cert.key_path.clone(),
    };
    write_kubeconfig(&path, &k.url(), CaRef::Data(&k.pki.ca_pem), &creds).unwrap();
    let out = ok(k
        .c
        .lab
        .exec(
            "node1",
            &[
                PODNETCTL,
                "leases",
                "--kube-subnet-mgr",
                &format!("--kubeconfig-file={}", path.display()),
            ],
        )
        .unwrap());
    assert!(out.contains("10.244.5.0/24"), "{out}");
    let users: Vec<Option<String>> = k.store().requests().into_iter().map(|r| r.user).collect();
    assert!(
        users.iter().all(|u| u.as_deref() == Some(USER)),
        "{users:?}"
    );
}

#[test]
fn forged_nodes_are_refused_and_pods_keep_talking() {
    let mut k = KubeLab::new("khz", 2, 1);
    for (i, n) in ["node1", "node2"].iter().enumerate() {
        k.add_node(n, Some(&cidr(i)));
        k.start(n, "vxlan", &[]);
    }
    for n in ["node1", "node2"] {
        k.ready(n);
    }
    let pods = vec![
        k.c.add_pod("node1", "a", "1.0.0"),
        k.c.add_pod("node2", "b", "1.0.0"),
    ];
    mesh(&k.c, &pods);
    let data: Value =
        serde_json::from_str(&k.annotations("node2")[&format!("{PREFIX}/backend-data")]).unwrap();
    let mac2 = data["VtepMAC"].as_str().unwrap().to_string();
    // Nodes anyone with nodes/status rights could write: a default-route grab, a stolen VTEP,
    // and node1's own address.
    let tmpl = fixtures::fixture("node-worker").unwrap();
    let forge = |name: &str, cidr: &str, ip: &str, mac: &str| {
        let mut n = fixtures::node(&tmpl, name, &[ip.parse().unwrap()], &[cidr]);
        n["metadata"]["annotations"] = json!({
            format!("{PREFIX}/kube-subnet-manager"): "true",
            format!("{PREFIX}/backend-type"): "vxlan",
            format!("{PREFIX}/backend-data"): format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
            format!("{PREFIX}/public-ip"): ip,
        });
        k.store().create(n).unwrap();
    };
    forge(
        "evil-route",
        "0.0.0.0/1",
        "198.18.0.66",
        "02:66:00:00:00:01",
    );
    forge("evil-mac", "10.244.50.0/24", "198.18.0.66", &mac2);
    forge(
        "evil-self",
        "10.244.51.0/24",
        "198.18.0.11",
        "02:66:00:00:00:03",
    );
    let sock = k.c.node_dir("node1").unwrap().join("podnetd.sock");
    let refused = || {
        let (_, body) = podnet::httpget::unix(&sock, "/status").unwrap();
        podnet::status::Status::from_json(&body)
            .unwrap()
            .rejected_leases
    };
    let seen = poll(
        "node1 to refuse the forged nodes",
        Duration::from_secs(10),
        || Some(refused()).filter(|r| r.len() == 3),
    );
    let text = seen.join("\n");
    for why in [
        "lease 0.0.0.0-1: subnet 0.0.0.0-1 overlaps this node's",
        &format!("lease 10.244.50.0-24: VtepMAC {mac2} is already the older lease"),
        "lease 10.244.51.0-24: public address 198.18.0.11 is this node's own",
    ] {
        assert!(text.contains(why), "{why:?} not in\n{text}");
    }
    // Nothing of theirs is in node1's kernel; node2's VTEP still leads to node2.
    assert!(
        k.c.ip_json("node1", &["route", "show", "0.0.0.0/1"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    for sn in ["10.244.50.0/24", "10.244.51.0/24"] {
        assert!(
            k.c.ip_json("node1", &["route", "show", sn])
                .as_array()
                .unwrap()
                .is_empty()
        );
    }
    let fdb = ok(k
        .c
        .lab
        .exec("node1", &["bridge", "fdb", "show", "dev", "flannel.1"])
        .unwrap());
    let entry = fdb
        .lines()
        .find(|l| l.starts_with(&mac2))
        .unwrap_or_default();
    assert!(entry.contains("dst 198.18.0.12"), "{fdb}");
    mesh(&k.c, &pods);
    assert_eq!(metric(&k, "node1", "podnet_leases_rejected"), 3.0);
}

/// Dual-stack in Kubernetes mode: each Node's `spec.podCIDRs` (one per family) are its
/// subnets, the IPv6 half is published as flanneld does (`public-ipv6`, `backend-v6-data`),
/// and pods reach each other over both families.
#[test]
fn kube_dual_stack_pod_cidrs_and_flannels_v6_annotations() {
    let mut k = KubeLab::with_spec(LabSpec::new(unique("kds"), 3).segments(2).ipv6(true));
    let nodes = ["node1", "node2", "node3"];
    let cidr6 = |i: usize| format!("fd10:244:0:{}::/64", 10 + i);
    for (i, n) in nodes.iter().enumerate() {
        k.add_node_cidrs(n, &[&cidr(i), &cidr6(i)]);
    }
    let conf = json!({"Network": "10.244.0.0/16", "EnableIPv6": true,
        "IPv6Network": "fd10:244::/56", "Backend": {"Type": "vxlan"}});
    let conf = k.net_conf_json("dual", &conf);
    for n in nodes {
        k.start_with(n, &conf, &[]);
    }
    let mut pods = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let env = k.ready(n);
        assert_eq!(env.subnet.unwrap().trunc().to_string(), cidr(i));
        assert_eq!(env.ipv6_subnet.unwrap().trunc().to_string(), cidr6(i));
        pods.push(k.c.add_pod(n, "a", "1.0.0"));
    }
    for a in &pods {
        for b in pods.iter().filter(|b| b.node != a.node) {
            let dst = b.ip6.expect("an IPv6 pod address").to_string();
            poll(
                &format!("{} to reach {dst}", a.target()),
                Duration::from_secs(10),
                || {
                    let out =
                        k.c.lab
                            .exec(&a.target(), &["ping", "-c1", "-W1", &dst])
                            .unwrap();
                    out.status.success().then_some(())
                },
            );
        }
    }
    mesh(&k.c, &pods);
    for n in nodes {
        let a = k.annotations(n);
        let ip6 = k.c.lab.plan().host(n).unwrap().ip6().unwrap().to_string();
        assert_eq!(a[&format!("{PREFIX}/public-ipv6")], ip6);
        let mac = k.c.ip_json(n, &["link", "show", "flannel-v6.1"])[0]["address"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            a[&format!("{PREFIX}/backend-v6-data")],
            format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}")
        );
    }
}

/// Someone edits this node's annotations (another VtepMAC, another public-ip, or removes them
/// all): podnetd writes its own back, counts the repair and keeps running; the peer follows
/// and the pods keep talking.
#[test]
fn annotations_changed_by_someone_else_are_written_back() {
    let mut k = KubeLab::new("kann", 2, 1);
    for (i, n) in ["node1", "node2"].iter().enumerate() {
        k.add_node(n, Some(&cidr(i)));
        k.start(n, "vxlan", &[]);
    }
    k.ready("node1");
    k.ready("node2");
    let pods = [
        k.c.add_pod("node1", "a", "1.0.0"),
        k.c.add_pod("node2", "b", "1.0.0"),
    ];
    mesh(&k.c, &pods);
    let ours = k.annotations("node1");
    let key = |name: &str| format!("{PREFIX}/{name}");
    let mac1 = k.c.ip_json("node1", &["link", "show", "flannel.1"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    // node2's neighbour entries and FDB entries on flannel.1, as (MACs, FDB destinations).
    let node2_sees = || -> (Vec<String>, Vec<String>) {
        let neigh = k.c.ip_json("node2", &["neigh", "show", "dev", "flannel.1"]);
        let out = ok(k
            .c
            .lab
            .exec(
                "node2",
                &["bridge", "-j", "fdb", "show", "dev", "flannel.1"],
            )
            .unwrap());
        let fdb: Value = serde_json::from_str(&out).unwrap();
        let field = |v: &Value, f: &str| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .filter_map(|x| x[f].as_str().map(String::from))
                .collect()
        };
        (field(&neigh, "lladdr"), field(&fdb, "dst"))
    };
    let ip1 = k.c.lab.plan().host("node1").unwrap().ip().to_string();
    let edits: [(&str, Option<&str>); 3] = [
        (
            "backend-data",
            Some(r#"{"VNI":1,"VtepMAC":"02:66:00:00:00:01"}"#),
        ),
        ("public-ip", Some("198.18.0.66")),
        ("backend-data", None),
    ];
    for (i, (name, value)) in edits.iter().enumerate() {
        let mut n = k.node("node1");
        let a = &mut n["metadata"]["annotations"];
        match value {
            Some(v) => a[key(name)] = json!(v),
            None => {
                // Every flannel annotation gone.
                let kept: serde_json::Map<String, Value> = a
                    .as_object()
                    .unwrap()
                    .iter()
                    .filter(|(k, _)| !k.starts_with(PREFIX))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                *a = Value::Object(kept);
            }
        }
        k.store().replace(n).unwrap();
        poll(
            &format!("node1 to write back its annotations (edit {i})"),
            Duration::from_secs(10),
            || (k.annotations("node1") == ours).then_some(()),
        );
        // Eventually node2 has node1's own MAC and address, and nothing forged.
        poll(
            "node2 to use node1's own lease",
            Duration::from_secs(10),
            || {
                let (macs, dsts) = node2_sees();
                (macs == [mac1.clone()] && dsts == [ip1.clone()]).then_some(())
            },
        );
        mesh(&k.c, &pods);
    }
    // Two rewrites were repairs of the lease; the removal was a lease taken back.
    assert!(metric(&k, "node1", "podnet_lease_repairs_total") >= 2.0);
    let log = k.c.log(&k.podnetd("node1"));
    assert!(!log.contains("was lost"), "{log}");
}

/// A node flanneld ran on: its Node carries flanneld's annotations with its VtepMAC. podnetd,
/// started there, makes flannel.1 with that MAC and sends no PATCH (nothing differs).
#[test]
fn a_vtep_mac_flanneld_wrote_is_kept_and_nothing_is_rewritten() {
    let mut k = KubeLab::new("kmac", 1, 1);
    let mac = "0a:58:c6:12:3c:77";
    let ip = k.c.lab.plan().host("node1").unwrap().ip();
    let tmpl = fixtures::fixture("node-worker-flannel").unwrap();
    let mut n = fixtures::node(&tmpl, "node1", &[ip.into()], &["10.244.60.0/24"]);
    let data = format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#);
    n["metadata"]["annotations"][format!("{PREFIX}/backend-data")] = json!(data);
    k.store().create(n).unwrap();
    let before = k.annotations("node1");
    assert_eq!(before[&format!("{PREFIX}/public-ip")], ip.to_string());
    k.store().clear_requests();
    k.start("node1", "vxlan", &["--set-node-network-unavailable=false"]);
    k.ready("node1");
    let dev = k.c.ip_json("node1", &["link", "show", "flannel.1"]);
    assert_eq!(dev[0]["address"], mac, "{dev}");
    assert_eq!(k.annotations("node1"), before);
    let patches: Vec<_> = k
        .store()
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert!(patches.is_empty(), "nothing to write: {patches:?}");
}

/// The operator's `<prefix>/node-public-ip` annotation picks the node's public address (and
/// with it the interface and the VXLAN source address), as flanneld reads it at start: here a
/// second address of the node's underlay interface, which is not the one podnetd would pick.
#[test]
fn the_node_public_ip_annotation_chooses_the_public_address() {
    let mut k = KubeLab::new("knpip", 2, 1);
    for (i, n) in ["node1", "node2"].iter().enumerate() {
        k.add_node(n, Some(&cidr(i)));
    }
    let chosen = "198.18.0.201";
    // The lab's nodes have their underlay on eth0.
    let dev = "eth0";
    ok(k.c
        .lab
        .exec(
            "node1",
            &["ip", "addr", "add", &format!("{chosen}/24"), "dev", dev],
        )
        .unwrap());
    let mut n = k.node("node1");
    n["metadata"]["annotations"][format!("{PREFIX}/node-public-ip")] = json!(chosen);
    k.store().replace(n).unwrap();
    for n in ["node1", "node2"] {
        k.start(n, "vxlan", &[]);
    }
    k.ready("node1");
    k.ready("node2");
    // The lease, as published and as podnetd reports it.
    assert_eq!(
        k.annotations("node1")[&format!("{PREFIX}/public-ip")],
        chosen
    );
    let sock = k.c.node_dir("node1").unwrap().join("podnetd.sock");
    let status =
        podnet::status::Status::from_json(&podnet::httpget::unix(&sock, "/status").unwrap().1)
            .unwrap();
    assert_eq!(status.node.public_ip.as_deref(), Some(chosen));
    // VXLAN sends from it, and node2 sends to it.
    let link = k.c.ip_json("node1", &["-d", "link", "show", "flannel.1"]);
    assert_eq!(link[0]["linkinfo"]["info_data"]["local"], chosen, "{link}");
    poll(
        "node2's FDB entry for node1",
        Duration::from_secs(10),
        || {
            let fdb = ok(k
                .c
                .lab
                .exec("node2", &["bridge", "fdb", "show", "dev", "flannel.1"])
                .unwrap());
            fdb.contains(&format!("dst {chosen}")).then_some(())
        },
    );
    let pods = [
        k.c.add_pod("node1", "a", "1.0.0"),
        k.c.add_pod("node2", "b", "1.0.0"),
    ];
    mesh(&k.c, &pods);
    // A malformed annotation is a clear error naming it.
    let mut n = k.node("node2");
    n["metadata"]["annotations"][format!("{PREFIX}/node-public-ip")] = json!("not-an-ip");
    k.store().replace(n).unwrap();
    let rec = k.podnetd("node2");
    k.c.lab.stop(rec.id.pid).unwrap();
    k.start("node2", "vxlan", &[]);
    let log = k.c.wait_log(
        &k.podnetd("node2"),
        "is not an IPv4 address",
        Duration::from_secs(15),
    );
    assert!(
        log.contains("node-public-ip") && log.contains("not-an-ip"),
        "{log}"
    );
}
