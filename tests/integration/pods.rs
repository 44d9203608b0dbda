//! The CNI plugin, called the way runtimes call it, on lab nodes running podnetd.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::{Cluster, PODNET_CNI};
use crate::support::{ok, poll};

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn cluster(prefix: &str, nodes: usize) -> Cluster {
    let mut c = Cluster::small(prefix, nodes);
    c.put_config(VXLAN);
    for i in 1..=nodes {
        c.start(&format!("node{i}"), &[]);
    }
    for i in 1..=nodes {
        c.wait_ready(&format!("node{i}"));
    }
    c
}

fn mac(c: &Cluster, target: &str, dev: &str) -> String {
    c.ip_json(target, &["link", "show", dev])[0]["address"]
        .as_str()
        .unwrap()
        .to_string()
}

fn ping(c: &Cluster, from: &str, to: impl std::fmt::Display) -> bool {
    c.lab
        .exec(from, &["ping", "-c1", "-W2", &to.to_string()])
        .unwrap()
        .status
        .success()
}

#[test]
fn pods_on_two_nodes_reach_everything_and_results_are_golden() {
    let mut c = cluster("cp", 2);
    let pods = vec![
        c.add_pod("node1", "a", "0.4.0"),
        c.add_pod("node1", "b", "1.0.0"),
        c.add_pod("node2", "a", "1.0.0"),
        c.add_pod("node2", "b", "0.4.0"),
    ];
    // Golden results, with the addresses and MACs the kernel actually has.
    for p in &pods {
        let v = p.result["cniVersion"].as_str().unwrap();
        let host = crate::cluster::Cluster::veths(&c, &p.node)
            .into_iter()
            .find(|n| *n == podnet::cni::veth::host_name(&p.container, "eth0"))
            .unwrap();
        let env = c.wait_ready(&p.node);
        let gw = env.subnet.unwrap().addr();
        let version_field = if v == "0.4.0" {
            r#","version":"4""#
        } else {
            ""
        };
        let expected = format!(
            r#"{{"cniVersion":"{v}","dns":{{}},"interfaces":[{{"mac":"{}","name":"cni0"}},{{"mac":"{}","name":"{host}"}},{{"mac":"{}","name":"eth0","sandbox":"{}"}}],"ips":[{{"address":"{}/24","gateway":"{gw}","interface":2{version_field}}}],"routes":[{{"dst":"10.244.0.0/16"}},{{"dst":"0.0.0.0/0","gw":"{gw}"}}]}}"#,
            mac(&c, &p.node, "cni0"),
            mac(&c, &p.node, &host),
            mac(&c, &p.target(), "eth0"),
            p.netns,
            p.ip,
        );
        assert_eq!(p.result.to_string(), expected);
        // The pod's MTU is the one in subnet.env.
        let eth0 = &c.ip_json(&p.target(), &["-d", "link", "show", "eth0"])[0];
        assert_eq!(eth0["mtu"], 1450);
        // One transmit and one receive queue at each end (not one per CPU).
        let host_end = &c.ip_json(&p.node, &["-d", "link", "show", &host])[0];
        for end in [eth0, host_end] {
            assert_eq!(
                (&end["num_tx_queues"], &end["num_rx_queues"]),
                (&1.into(), &1.into()),
                "{end}"
            );
        }
    }
    let node_ip = |n: &str| c.lab.plan().host(n).unwrap().ip();
    for a in &pods {
        for b in &pods {
            if a.target() != b.target() {
                assert!(
                    ping(&c, &a.target(), b.ip),
                    "{} -> {}",
                    a.target(),
                    b.target()
                );
            }
        }
        assert!(
            ping(&c, &a.target(), node_ip(&a.node)),
            "{} -> its node",
            a.target()
        );
        let other = if a.node == "node1" { "node2" } else { "node1" };
        assert!(
            ping(&c, &a.target(), node_ip(other)),
            "{} -> the other node",
            a.target()
        );
    }
    // The host ends, bridge ports, make no IPv6 link-local address (the pod ends do): by now,
    // after the pings, each pair has long had its carrier, when the kernel would have made one.
    for p in &pods {
        let host = podnet::cni::veth::host_name(&p.container, "eth0");
        let host_end = &c.ip_json(&p.node, &["-d", "link", "show", &host])[0];
        assert_eq!(host_end["inet6_addr_gen_mode"], "none", "{host_end}");
        assert_eq!(
            c.ip_json(&p.node, &["-6", "addr", "show", "dev", &host]),
            serde_json::json!([])
        );
        let eth0 = &c.ip_json(&p.target(), &["-d", "link", "show", "eth0"])[0];
        assert_eq!(eth0["inet6_addr_gen_mode"], "eui64", "{eth0}");
    }
    // A node reaches its pods and the other node's.
    assert!(ping(&c, "node1", pods[3].ip));
}

#[test]
fn the_pod_record_is_written_at_add_and_removed_at_del_in_both_places() {
    let mut c = cluster("crec", 1);
    let ns = format!("/run/netns/{}", c.lab.pod_add("node1", "rec").unwrap());
    let conf = c.cni_conf("node1", "1.0.0").to_string();
    let records = c.pod_records_dir("node1").unwrap();
    // containerd's CRI for kubelet's pods; the order of the keys changes from call to call.
    let args = "K8S_POD_INFRA_CONTAINER_ID=rec-1;K8S_POD_UID=u1;IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0";
    let mut env = Cluster::attach_env("ADD", "rec-1", &ns, "eth0");
    env.push(("CNI_ARGS", args));
    let (code, out) = c.cni("node1", &env, &conf);
    assert_eq!(code, 0, "{out}");
    let ip = serde_json::from_str::<Value>(&out).unwrap()["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let record = records.join("rec-1.json");
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        format!(r#"{{"namespace":"shop","name":"web-0","ips":["{ip}"]}}"#)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&records), mode(&record)), (0o700, 0o600));
    let names: Vec<_> = std::fs::read_dir(&records).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    // Where a plugin before podRecordsDir kept it (pods/ under dataDir): DEL removes it there too.
    let old = c.node_dir("node1").unwrap().join("flannel/pods/rec-1.json");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(&old, r#"{"namespace":"shop","name":"web-0","ips":[]}"#).unwrap();
    let mut env = Cluster::attach_env("DEL", "rec-1", &ns, "eth0");
    env.push(("CNI_ARGS", args));
    let (code, out) = c.cni("node1", &env, &conf);
    assert_eq!(code, 0, "{out}");
    assert!(!record.exists() && !old.exists());
}

#[test]
fn two_hundred_add_del_cycles_leave_nothing_behind() {
    let mut c = cluster("cc", 1);
    let ns = format!("/run/netns/{}", c.lab.pod_add("node1", "cycle").unwrap());
    let conf = c.cni_conf("node1", "1.0.0").to_string();
    let mut seen = HashSet::new();
    for i in 0..200 {
        let id = format!("cycle-{i}");
        let (code, out) = c.cni(
            "node1",
            &Cluster::attach_env("ADD", &id, &ns, "eth0"),
            &conf,
        );
        assert_eq!(code, 0, "ADD {i}: {out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        seen.insert(v["ips"][0]["address"].as_str().unwrap().to_string());
        let (code, out) = c.cni(
            "node1",
            &Cluster::attach_env("DEL", &id, &ns, "eth0"),
            &conf,
        );
        assert_eq!(code, 0, "DEL {i}: {out}");
    }
    // Allocation moves on after each release, as host-local does.
    assert!(seen.len() > 100, "{}", seen.len());
    assert!(
        c.allocations("node1").is_empty(),
        "{:?}",
        c.allocations("node1")
    );
    assert!(c.veths("node1").is_empty(), "{:?}", c.veths("node1"));
    let pod_links = c.ip_json("node1/cycle", &["link"]);
    assert_eq!(
        pod_links.as_array().unwrap().len(),
        1,
        "only lo left in the pod: {pod_links}"
    );
}

/// The node's queue for RTNL among pod events is only an order: with its lock held by someone
/// who never lets go (a plugin stopped in a debugger), an ADD waits its turn's deadline and
/// then wires the pod anyway; with the lock let go before that, the ADD goes on then.
#[test]
fn an_add_waits_for_its_turn_at_rtnl_but_not_forever() {
    use podnet::cni::plugin::{RTNL_QUEUE, RTNL_QUEUE_WAIT};
    use podnet::util::files::Lock;
    use std::time::Instant;
    let mut c = cluster("crq", 1);
    // The node's first ADD makes the bridge: not timed.
    c.add_pod("node1", "first", "1.0.0");
    std::fs::create_dir_all("/run/podnet").unwrap();
    let held = Lock::acquire(RTNL_QUEUE.as_ref(), 0o600, None).unwrap();
    let start = Instant::now();
    let p = c.add_pod("node1", "waits", "1.0.0");
    let waited = start.elapsed();
    drop(held);
    assert!(
        waited >= RTNL_QUEUE_WAIT,
        "{waited:?}: the ADD did not wait"
    );
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    let gw = c.wait_ready("node1").subnet.unwrap().addr();
    assert!(ping(&c, &p.target(), gw), "the pod reaches its gateway");
    // Held for a while and let go: the ADD waits for that, and gets its turn.
    let held = Lock::acquire(RTNL_QUEUE.as_ref(), 0o600, None).unwrap();
    let hold = RTNL_QUEUE_WAIT / 2;
    let start = Instant::now();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(hold);
        drop(held);
    });
    let q = c.add_pod("node1", "after", "1.0.0");
    let waited = start.elapsed();
    holder.join().unwrap();
    assert!(waited >= hold, "{waited:?}: the ADD did not wait");
    assert_ne!(p.ip, q.ip);
}

#[test]
fn sixteen_concurrent_adds_get_sixteen_addresses() {
    let mut c = cluster("c16", 1);
    let conf = c.cni_conf("node1", "1.0.0").to_string();
    let namespaces: Vec<String> = (0..16)
        .map(|i| {
            format!(
                "/run/netns/{}",
                c.lab.pod_add("node1", &format!("p{i}")).unwrap()
            )
        })
        .collect();
    let children: Vec<_> = namespaces
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let id = format!("conc-{i}");
            let mut cmd = c.lab.command("node1", &[PODNET_CNI]).unwrap();
            cmd.envs(Cluster::attach_env("ADD", &id, ns, "eth0"))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), conf.as_bytes()).unwrap();
            child
        })
        .collect();
    let mut ips = HashSet::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        ips.insert(v["ips"][0]["address"].as_str().unwrap().to_string());
    }
    assert_eq!(ips.len(), 16, "{ips:?}");
    assert_eq!(c.allocations("node1").len(), 16);
    assert_eq!(c.veths("node1").len(), 16);
    let gw = c.wait_ready("node1").subnet.unwrap().addr();
    for i in 0..16 {
        assert!(ping(&c, &format!("node1/p{i}"), gw));
    }
}

/// A runtime that repeats the ADD of a live pod, asking for the address the pod has: the
/// address store refuses it, and the live pod keeps its pair (the same host end, still on the
/// bridge) and its network. ADD makes the pair while the store works; a link of this same
/// attachment is replaced only once the store has said yes.
#[test]
fn a_repeated_add_the_store_refuses_leaves_the_live_pod_alone() {
    let mut c = cluster("crep", 1);
    let pod = c.add_pod("node1", "a", "1.0.0");
    let host_end = |c: &Cluster| -> Vec<(String, u64)> {
        c.ip_json("node1", &["link", "show", "type", "veth"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let name = l["ifname"].as_str().unwrap().to_string();
                (name, l["ifindex"].as_u64().unwrap())
            })
            // The lab node's own underlay link is a veth named eth0.
            .filter(|(name, _)| name != "eth0")
            .collect()
    };
    let before = host_end(&c);
    assert_eq!(before.len(), 1, "{before:?}");
    let conf = c.cni_conf("node1", "1.0.0").to_string();
    let args = format!("IP={}", pod.ip);
    let mut env = Cluster::attach_env("ADD", &pod.container, &pod.netns, "eth0");
    env.push(("CNI_ARGS", &args));
    for _ in 0..5 {
        let (exit, out) = c.cni("node1", &env, &conf);
        assert_eq!(exit, 1, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["code"], 7, "{out}");
        let want = format!(
            "requested IP {} is already allocated to {}",
            pod.ip, pod.container
        );
        assert!(v["msg"].as_str().unwrap().contains(&want), "{out}");
        assert_eq!(host_end(&c), before, "the live pod's pair was replaced");
    }
    assert_eq!(c.allocations("node1"), vec![pod.ip.to_string()]);
    let gw = c.wait_ready("node1").subnet.unwrap().addr();
    assert!(ping(&c, "node1/a", gw));
}

/// Runs a bad invocation and checks its code, message, and that nothing is left.
fn rejected(c: &Cluster, env: &[(&str, &str)], stdin: &str, code: u64, msg: &str) {
    let before_veths = c.veths("node1");
    let before_alloc = c.allocations("node1");
    let (exit, out) = c.cni("node1", env, stdin);
    assert_eq!(exit, 1, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["code"], code, "{out}");
    let text = format!(
        "{} {}",
        v["msg"].as_str().unwrap_or(""),
        v["details"].as_str().unwrap_or("")
    );
    assert!(text.contains(msg), "{msg:?} not in {out}");
    assert_eq!(c.veths("node1"), before_veths, "links left behind by {out}");
    assert_eq!(
        c.allocations("node1"),
        before_alloc,
        "addresses left behind by {out}"
    );
}

#[test]
fn malformed_inputs_get_their_codes_and_leave_nothing() {
    let mut c = cluster("cbad", 1);
    let ns = format!("/run/netns/{}", c.lab.pod_add("node1", "x").unwrap());
    let conf = c.cni_conf("node1", "1.0.0");
    let add = Cluster::attach_env("ADD", "bad-1", &ns, "eth0");
    // Missing environment variable.
    rejected(
        &c,
        &[("CNI_COMMAND", "ADD"), ("CNI_NETNS", &ns)],
        &conf.to_string(),
        4,
        "required env variables [CNI_CONTAINERID,CNI_IFNAME] missing",
    );
    // Bad JSON.
    rejected(
        &c,
        &add,
        "{\"cniVersion\":",
        6,
        "failed to decode the network config",
    );
    // Unknown version.
    let mut v = conf.clone();
    v["cniVersion"] = json!("7.0.0");
    rejected(&c, &add, &v.to_string(), 1, "incompatible CNI versions");
    // Missing subnet.env.
    let mut v = conf.clone();
    v["subnetFile"] = json!("/nonexistent/subnet.env");
    rejected(
        &c,
        &add,
        &v.to_string(),
        11,
        "/nonexistent/subnet.env does not exist",
    );
    // Broken subnet.env.
    let broken = c.lab.node_dir("node1").unwrap().join("broken.env");
    std::fs::write(
        &broken,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=lots\n",
    )
    .unwrap();
    let mut v = conf.clone();
    v["subnetFile"] = json!(broken);
    rejected(
        &c,
        &add,
        &v.to_string(),
        100,
        "FLANNEL_MTU=lots: not a number",
    );
    let incomplete = c.lab.node_dir("node1").unwrap().join("incomplete.env");
    std::fs::write(&incomplete, "FLANNEL_NETWORK=10.244.0.0/16\n").unwrap();
    v["subnetFile"] = json!(incomplete);
    rejected(
        &c,
        &add,
        &v.to_string(),
        100,
        "FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ missing",
    );
    // A namespace that does not exist.
    rejected(
        &c,
        &Cluster::attach_env("ADD", "bad-2", "/run/netns/pnl-does-not-exist", "eth0"),
        &conf.to_string(),
        3,
        "network namespace /run/netns/pnl-does-not-exist does not exist",
    );
    // An exhausted subnet: a range of two addresses, both taken.
    let subnet = c.wait_ready("node1").subnet.unwrap().trunc();
    let base = u32::from(subnet.network());
    let mut small = conf.clone();
    small["ipam"]["ranges"] = json!([[{
        "subnet": subnet.to_string(),
        "rangeStart": std::net::Ipv4Addr::from(base + 10).to_string(),
        "rangeEnd": std::net::Ipv4Addr::from(base + 11).to_string(),
    }]]);
    let small = small.to_string();
    for i in 0..2 {
        let n = format!(
            "/run/netns/{}",
            c.lab.pod_add("node1", &format!("full{i}")).unwrap()
        );
        let (code, out) = c.cni(
            "node1",
            &Cluster::attach_env("ADD", &format!("full-{i}"), &n, "eth0"),
            &small,
        );
        assert_eq!(code, 0, "{out}");
    }
    rejected(&c, &add, &small, 101, "no free address in");
    // A range outside the node's subnet is a config error.
    let mut v = conf.clone();
    v["ipam"]["ranges"] = json!([[{"subnet": "10.244.254.0/24"}]]);
    rejected(&c, &add, &v.to_string(), 7, "is not this node's pod subnet");
    // The pod already has eth0: refused, and the address taken for it given back.
    let (code, out) = c.cni(
        "node1",
        &Cluster::attach_env("ADD", "first", &ns, "eth0"),
        &conf.to_string(),
    );
    assert_eq!(code, 0, "{out}");
    rejected(
        &c,
        &Cluster::attach_env("ADD", "second", &ns, "eth0"),
        &conf.to_string(),
        104,
        "already has an interface named eth0",
    );
}

#[test]
fn check_status_and_gc() {
    let mut c = cluster("cchk", 1);
    let a = c.add_pod("node1", "a", "1.1.0");
    let b = c.add_pod("node1", "b", "1.1.0");
    let mut conf = c.cni_conf("node1", "1.1.0");
    conf["prevResult"] = a.result.clone();
    let check = Cluster::attach_env("CHECK", &a.container, &a.netns, "eth0");
    let (code, out) = c.cni("node1", &check, &conf.to_string());
    assert_eq!((code, out.as_str()), (0, ""));
    // Take the address away: CHECK says which.
    ok(c.lab
        .exec(&a.target(), &["ip", "addr", "flush", "dev", "eth0"])
        .unwrap());
    let (code, out) = c.cni("node1", &check, &conf.to_string());
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!(
            "Failed to match addr {}/24 on interface eth0",
            a.ip
        )),
        "{out}"
    );
    // CHECK is not a 0.3.1 verb.
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.3.1");
    let (_, out) = c.cni("node1", &check, &old.to_string());
    assert!(
        out.contains(r#""code":1"#) && out.contains("does not allow CHECK"),
        "{out}"
    );
    // STATUS: ready while subnet.env is there.
    let status = [("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/usr/lib/cni")];
    assert_eq!(
        c.cni("node1", &status, &c.cni_conf("node1", "1.1.0").to_string()),
        (0, String::new())
    );
    let mut gone = c.cni_conf("node1", "1.1.0");
    gone["subnetFile"] = json!("/nonexistent");
    let (code, out) = c.cni("node1", &status, &gone.to_string());
    assert_eq!(code, 1);
    assert!(out.contains(r#""code":50"#), "{out}");
    // GC without the list of attachments to keep (or with a broken one) is a config error, and
    // releases nothing: it used to release every address on the node.
    let gc_env = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")];
    let bare = c.cni_conf("node1", "1.1.0").to_string();
    rejected(&c, &gc_env, &bare, 7, "cni.dev/valid-attachments: missing");
    let mut broken = c.cni_conf("node1", "1.1.0");
    broken["cni.dev/valid-attachments"] = json!([{"containerID": b.container}]);
    rejected(
        &c,
        &gc_env,
        &broken.to_string(),
        7,
        "cni.dev/valid-attachments[0].ifname: expected a string",
    );
    // GC: only b is still a valid attachment; a's address and link go.
    let mut gc = c.cni_conf("node1", "1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": b.container, "ifname": "eth0"}]);
    let (code, out) = c.cni(
        "node1",
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        &gc.to_string(),
    );
    assert_eq!((code, out.as_str()), (0, ""));
    assert_eq!(c.allocations("node1"), vec![b.ip.to_string()]);
    assert_eq!(
        c.veths("node1"),
        vec![podnet::cni::veth::host_name(&b.container, "eth0")]
    );
}

#[test]
fn del_is_idempotent_in_every_way_runtimes_call_it() {
    let mut c = cluster("cdel", 1);
    let p = c.add_pod("node1", "a", "1.0.0");
    // Unknown container.
    let conf = c.cni_conf("node1", "1.0.0").to_string();
    assert_eq!(
        c.cni(
            "node1",
            &Cluster::attach_env("DEL", "never-added", &p.netns, "eth0"),
            &conf
        )
        .0,
        0
    );
    // containerd: first with the namespace, then again without one.
    assert_eq!(c.del_pod(&p, &p.netns).0, 0);
    assert_eq!(c.del_pod(&p, "").0, 0);
    // The namespace already gone.
    c.lab.pod_del("node1", "a").unwrap();
    assert_eq!(c.del_pod(&p, &p.netns).0, 0);
    assert!(c.allocations("node1").is_empty());
    assert!(c.veths("node1").is_empty());
    // A pod whose namespace vanished before any DEL: the address is still released.
    let q = c.add_pod("node1", "q", "1.0.0");
    c.lab.pod_del("node1", "q").unwrap();
    assert_eq!(c.del_pod(&q, &q.netns).0, 0);
    assert!(c.allocations("node1").is_empty());
    poll(
        "the kernel to drop the veth with the namespace",
        Duration::from_secs(5),
        || c.veths("node1").is_empty().then_some(()),
    );
}

#[test]
fn a_node_that_used_host_local_keeps_its_allocations() {
    let mut c = cluster("cmig", 1);
    let dir = c.lab.node_dir("node1").unwrap();
    let env = c.wait_ready("node1");
    let subnet = env.subnet.unwrap().trunc();
    // A pod wired by Debian's reference bridge + host-local, as flannel's plugin would delegate.
    let legacy_ns = format!("/run/netns/{}", c.lab.pod_add("node1", "legacy").unwrap());
    let legacy = json!({
        "cniVersion": "1.0.0", "name": "cbr0", "type": "bridge", "bridge": "cni0", "isGateway": true, "mtu": 1450,
        "ipam": {"type": "host-local", "dataDir": dir.join("ipam"), "ranges": [[{"subnet": subnet.to_string()}]], "routes": [{"dst": "10.244.0.0/16"}]}
    });
    let out = reference(&c, "ADD", "legacy-ctr", &legacy_ns, &legacy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let legacy_ip = c.allocations("node1")[0].clone();
    // host-local's own file format, which podnet writes too.
    let content = std::fs::read_to_string(dir.join("ipam/cbr0").join(&legacy_ip)).unwrap();
    assert_eq!(content, "legacy-ctr\r\neth0");
    // podnet continues after host-local's last reservation and does not reuse its address.
    let p = c.add_pod("node1", "new", "1.0.0");
    assert_ne!(p.ip.to_string(), legacy_ip);
    assert!(
        ping(&c, "node1/new", &legacy_ip),
        "old and new pods share the bridge"
    );
    // podnet's DEL releases the legacy pod (random host veth name and all).
    let conf = c.cni_conf("node1", "1.0.0").to_string();
    let (code, out) = c.cni(
        "node1",
        &Cluster::attach_env("DEL", "legacy-ctr", &legacy_ns, "eth0"),
        &conf,
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(c.allocations("node1"), vec![p.ip.to_string()]);
    assert_eq!(c.veths("node1").len(), 1);
    // And back: with podnet's released file kept for reuse (`.spare`), host-local allocates
    // and releases as before, and leaves the spare alone.
    let spares = || {
        std::fs::read_dir(dir.join("ipam/cbr0/.spare"))
            .unwrap()
            .count()
    };
    assert_eq!(spares(), 1, "the legacy pod's file, released by podnet");
    let back_ns = format!("/run/netns/{}", c.lab.pod_add("node1", "back").unwrap());
    let out = reference(&c, "ADD", "back-ctr", &back_ns, &legacy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let back_ip: Vec<String> = c
        .allocations("node1")
        .into_iter()
        .filter(|a| *a != p.ip.to_string())
        .collect();
    assert_eq!(back_ip.len(), 1, "{back_ip:?}");
    let content = std::fs::read_to_string(dir.join("ipam/cbr0").join(&back_ip[0])).unwrap();
    assert_eq!(content, "back-ctr\r\neth0");
    let out = reference(&c, "DEL", "back-ctr", &back_ns, &legacy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(c.allocations("node1"), vec![p.ip.to_string()]);
    assert_eq!(spares(), 1);
}

/// Runs Debian's reference bridge plugin (with host-local) on a node as a runtime would.
fn reference(c: &Cluster, cmd: &str, id: &str, netns: &str, conf: &Value) -> std::process::Output {
    let mut child = c
        .lab
        .command("node1", &["/usr/lib/cni/bridge"])
        .unwrap()
        .envs(Cluster::attach_env(cmd, id, netns, "eth0"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        conf.to_string().as_bytes(),
    )
    .unwrap();
    child.wait_with_output().unwrap()
}

/// A conflist executed the way libcni does: ADD in order with prevResult, DEL in reverse.
fn run_chain(
    c: &Cluster,
    node: &str,
    plugins: &[Value],
    cmd: &str,
    container: &str,
    netns: &str,
    runtime: &Value,
) -> Value {
    let mut prev: Option<Value> = None;
    let order: Vec<&Value> = if cmd == "DEL" {
        plugins.iter().rev().collect()
    } else {
        plugins.iter().collect()
    };
    for p in order {
        let mut conf = p.clone();
        conf["name"] = json!("cbr0");
        conf["cniVersion"] = json!("1.0.0");
        if let Some(caps) = p.get("capabilities").and_then(|c| c.as_object()) {
            let mut rc = serde_json::Map::new();
            for (k, v) in caps {
                if v == &json!(true) && runtime.get(k).is_some() {
                    rc.insert(k.clone(), runtime[k].clone());
                }
            }
            conf["runtimeConfig"] = Value::Object(rc);
        }
        if let Some(pr) = &prev {
            conf["prevResult"] = pr.clone();
        }
        let binary = if p["type"] == "flannel" {
            PODNET_CNI.to_string()
        } else {
            format!("/usr/lib/cni/{}", p["type"].as_str().unwrap())
        };
        let mut command = c.lab.command(node, &[binary.as_str()]).unwrap();
        command
            .envs(Cluster::attach_env(cmd, container, netns, "eth0"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap();
        std::io::Write::write_all(
            &mut child.stdin.take().unwrap(),
            conf.to_string().as_bytes(),
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{cmd} {}: {text}", p["type"]);
        if cmd == "ADD" {
            prev = Some(serde_json::from_str(&text).unwrap());
        }
    }
    prev.unwrap_or(Value::Null)
}

#[test]
fn debians_portmap_and_bandwidth_chain_after_podnet() {
    let mut c = cluster("cchain", 1);
    let dir = c.lab.node_dir("node1").unwrap();
    let mut first = c.cni_conf("node1", "1.0.0");
    first.as_object_mut().unwrap().remove("cniVersion");
    first["dataDir"] = json!(dir.join("flannel"));
    let plugins = vec![
        first,
        json!({"type": "portmap", "capabilities": {"portMappings": true}}),
        json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
    ];
    // podman's lowercase keys for portmap; containerd-style for bandwidth.
    let runtime = json!({
        "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 1_000_000, "ingressBurst": 100_000, "egressRate": 1_000_000, "egressBurst": 100_000},
    });
    let netns = format!("/run/netns/{}", c.lab.pod_add("node1", "web").unwrap());
    let result = run_chain(&c, "node1", &plugins, "ADD", "chain-ctr", &netns, &runtime);
    assert_eq!(result["ips"].as_array().unwrap().len(), 1, "{result}");
    let host = podnet::cni::veth::host_name("chain-ctr", "eth0");
    // portmap's DNAT and bandwidth's shaping exist, on podnet's interfaces.
    let rules = ok(c.lab.exec("node1", &["nft", "list", "ruleset"]).unwrap());
    assert!(rules.contains("dport 18080"), "{rules}");
    let qdisc = ok(c
        .lab
        .exec("node1", &["tc", "qdisc", "show", "dev", &host])
        .unwrap());
    assert!(
        qdisc.contains("ingress") || qdisc.contains("tbf"),
        "{qdisc}"
    );
    run_chain(&c, "node1", &plugins, "DEL", "chain-ctr", &netns, &runtime);
    assert!(c.allocations("node1").is_empty());
    assert!(c.veths("node1").is_empty());
}

#[test]
fn hostile_container_ids_are_refused_and_touch_nothing() {
    let mut c = cluster("chost", 1);
    let ns = format!("/run/netns/{}", c.lab.pod_add("node1", "h").unwrap());
    let node_dir = c.lab.node_dir("node1").unwrap();
    // dataDir and podRecordsDir two levels down, so "../../etc/x" from either lands in the
    // node's directory (from the older records' place under dataDir, in t/).
    let mut conf = c.cni_conf("node1", "1.0.0");
    conf["dataDir"] = json!(node_dir.join("t/flannel"));
    conf["podRecordsDir"] = json!(node_dir.join("t/pods"));
    let conf = conf.to_string();
    // Where a traversal would point: flannel's per-container file and the pod record.
    let decoys = [
        node_dir.join("etc/x"),
        node_dir.join("etc/x.json"),
        node_dir.join("t/etc/x.json"),
        node_dir.join("decoy-abs"),
        node_dir.join("decoy-abs.json"),
    ];
    for d in &decoys {
        std::fs::create_dir_all(d.parent().unwrap()).unwrap();
        std::fs::write(d, "decoy").unwrap();
    }
    let absolute = decoys[2].display().to_string();
    for id in ["../../etc/x", absolute.as_str(), "-x", "a b"] {
        for verb in ["DEL", "ADD"] {
            let env = Cluster::attach_env(verb, id, &ns, "eth0");
            rejected(&c, &env, &conf, 4, &format!("CNI_CONTAINERID {id:?}"));
        }
    }
    for d in &decoys {
        assert_eq!(
            std::fs::read_to_string(d).unwrap(),
            "decoy",
            "{}",
            d.display()
        );
    }
    let pod_links = c.ip_json("node1/h", &["link"]);
    assert_eq!(pod_links.as_array().unwrap().len(), 1, "{pod_links}");
}

#[test]
fn interface_names_the_kernel_refuses_are_refused_up_front() {
    let mut c = cluster("cifn", 1);
    let ns = format!("/run/netns/{}", c.lab.pod_add("node1", "i").unwrap());
    let conf = c.cni_conf("node1", "1.0.0").to_string();
    // Before: ':' and '.' got as far as the kernel (code 103, after an address was taken).
    let long = "a".repeat(16);
    for ifname in ["eth0:1", ".", "..", "a/b", "a b", long.as_str()] {
        for verb in ["ADD", "DEL"] {
            let env = Cluster::attach_env(verb, "ifname-ctr", &ns, ifname);
            rejected(&c, &env, &conf, 4, &format!("CNI_IFNAME {ifname:?}"));
        }
    }
    let pod_links = c.ip_json("node1/i", &["link"]);
    assert_eq!(pod_links.as_array().unwrap().len(), 1, "{pod_links}");
}

#[test]
fn the_nodes_own_namespace_is_refused_as_a_pod_namespace() {
    let mut c = cluster("cown", 1);
    let a = c.add_pod("node1", "a", "1.0.0");
    let node_ns = format!("/run/netns/{}", c.lab.plan().host("node1").unwrap().netns);
    // A process in the node: /proc/PID/ns/net is the node's namespace by another path.
    let mut sleeper = c
        .lab
        .command("node1", &["sleep", "60"])
        .unwrap()
        .spawn()
        .unwrap();
    let proc_ns = format!("/proc/{}/ns/net", sleeper.id());
    // IPv4 only: the links' IPv6 link-local addresses finish duplicate address detection on
    // their own schedule (their "tentative" flag and local route come and go meanwhile).
    let node_state = |c: &Cluster| {
        [
            c.ip_json("node1", &["-4", "addr", "show", "dev", "eth0"]),
            c.ip_json("node1", &["-4", "addr", "show", "dev", "cni0"]),
            c.ip_json("node1", &["-4", "route", "show", "table", "all"]),
        ]
    };
    let before = node_state(&c);
    let conf = c.cni_conf("node1", "1.0.0");
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = a.result.clone();
    for path in [&node_ns, &proc_ns] {
        // ADD would put a pod end (eth9) and a default route into the node; DEL would take the
        // node's eth0 out of service (and release pod a's address).
        let calls = [
            ("ADD", "own-ctr", "eth9", &conf),
            ("DEL", a.container.as_str(), "eth0", &conf),
            ("CHECK", a.container.as_str(), "eth0", &check_conf),
        ];
        for (verb, id, ifname, conf) in calls {
            let env = Cluster::attach_env(verb, id, path, ifname);
            let msg = format!("CNI_NETNS {path:?}: the host's own network namespace");
            rejected(&c, &env, &conf.to_string(), 4, &msg);
        }
    }
    assert_eq!(node_state(&c), before, "the node's network changed");
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    // Pod a is untouched: reachable, and deleted normally with its own namespace.
    let gw = c.wait_ready("node1").subnet.unwrap().addr();
    assert!(ping(&c, &a.target(), gw));
    assert_eq!(c.del_pod(&a, &a.netns).0, 0);
    assert!(c.allocations("node1").is_empty());
}

#[test]
fn subnets_without_room_and_foreign_gateways_are_refused_with_their_field() {
    let mut c = cluster("crng", 1);
    let ns = format!("/run/netns/{}", c.lab.pod_add("node1", "r").unwrap());
    let conf = c.cni_conf("node1", "1.0.0");
    let add = Cluster::attach_env("ADD", "range-ctr", &ns, "eth0");
    let dir = c.lab.node_dir("node1").unwrap();
    // subnet.env with a node subnet too small for a gateway and a pod: code 100.
    for (i, subnet) in ["10.244.9.1/31", "10.244.9.1/32"].iter().enumerate() {
        let env = dir.join(format!("tiny{i}.env"));
        std::fs::write(
            &env,
            format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"),
        )
        .unwrap();
        let mut v = conf.clone();
        v["subnetFile"] = json!(env);
        let msg = format!("FLANNEL_SUBNET={subnet}: ");
        rejected(&c, &add, &v.to_string(), 100, &msg);
        rejected(
            &c,
            &add,
            &v.to_string(),
            100,
            "too small for a gateway and a pod",
        );
    }
    // ipam.ranges: a subnet without room, a gateway of the other family: code 7.
    let subnet = c.wait_ready("node1").subnet.unwrap().trunc();
    let mut v = conf.clone();
    v["ipam"]["ranges"] = json!([[{"subnet": "10.244.9.0/31"}]]);
    rejected(
        &c,
        &add,
        &v.to_string(),
        7,
        "ipam.ranges[].subnet: 10.244.9.0/31 is too small",
    );
    v["ipam"]["ranges"] = json!([[{"subnet": subnet.to_string(), "gateway": "fd00::1"}]]);
    rejected(
        &c,
        &add,
        &v.to_string(),
        7,
        &format!("ipam.ranges[].gateway: fd00::1 is not an IPv4 address, as {subnet} is"),
    );
    let pod_links = c.ip_json("node1/r", &["link"]);
    assert_eq!(pod_links.as_array().unwrap().len(), 1, "{pod_links}");
}

/// `ip link add NAME type veth peer name PEER` on node1, with an alias when given.
fn foreign_veth(c: &Cluster, name: &str, peer: &str, alias: Option<&str>) -> Value {
    let add = [
        "ip", "link", "add", name, "type", "veth", "peer", "name", peer,
    ];
    ok(c.lab.exec("node1", &add).unwrap());
    if let Some(a) = alias {
        ok(c.lab
            .exec("node1", &["ip", "link", "set", name, "alias", a])
            .unwrap());
    }
    c.ip_json("node1", &["link", "show", name])[0].clone()
}

#[test]
fn a_host_name_collision_never_touches_the_other_owners_link() {
    use podnet::cni::veth::host_name;
    let mut c = cluster("ccol", 1);
    let conf = c.cni_conf("node1", "1.0.0").to_string();
    let ns = format!("/run/netns/{}", c.lab.pod_add("node1", "v").unwrap());
    let link = |c: &Cluster, name: &str| c.ip_json("node1", &["link", "show", name])[0].clone();
    // The name attachment coll-ctr/eth0 would get, taken by another attachment's link.
    let taken = host_name("coll-ctr", "eth0");
    let foreign = foreign_veth(&c, &taken, "coll-peer", Some("other-ctr/eth0"));
    let env = Cluster::attach_env("ADD", "coll-ctr", &ns, "eth0");
    rejected(&c, &env, &conf, 104, "belongs to other-ctr/eth0");
    // The DEL a runtime sends after a failed ADD leaves it alone too.
    let del = Cluster::attach_env("DEL", "coll-ctr", &ns, "eth0");
    assert_eq!(c.cni("node1", &del, &conf).0, 0);
    assert_eq!(link(&c, &taken), foreign);
    // So does GC of a stale allocation of coll-ctr/eth0.
    let subnet = c.wait_ready("node1").subnet.unwrap().trunc();
    let stale_ip = std::net::Ipv4Addr::from(u32::from(subnet.network()) + 200);
    let ipam = c.lab.node_dir("node1").unwrap().join("ipam/cbr0");
    std::fs::create_dir_all(&ipam).unwrap();
    std::fs::write(ipam.join(stale_ip.to_string()), "coll-ctr\r\neth0").unwrap();
    let mut gc = c.cni_conf("node1", "1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    let gc_env = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")];
    assert_eq!(c.cni("node1", &gc_env, &gc.to_string()), (0, String::new()));
    assert!(c.allocations("node1").is_empty());
    assert_eq!(link(&c, &taken), foreign);
    // A link without an alias has no known owner: refused and kept as well.
    let unmarked = host_name("coll-2", "eth0");
    let before = foreign_veth(&c, &unmarked, "coll-peer2", None);
    let env = Cluster::attach_env("ADD", "coll-2", &ns, "eth0");
    rejected(&c, &env, &conf, 104, "no alias, so no known owner");
    assert_eq!(link(&c, &unmarked), before);
    // A stale link of the same attachment (left by an ADD that died) is replaced.
    let stale_name = host_name("coll-3", "eth0");
    let stale = foreign_veth(&c, &stale_name, "coll-peer3", Some("coll-3/eth0"));
    let env = Cluster::attach_env("ADD", "coll-3", &ns, "eth0");
    let (code, out) = c.cni("node1", &env, &conf);
    assert_eq!(code, 0, "{out}");
    let fresh = link(&c, &stale_name);
    assert_ne!(fresh["ifindex"], stale["ifindex"]);
    assert_eq!(fresh["ifalias"], "coll-3/eth0", "{fresh}");
    assert!(!c.veths("node1").contains(&"coll-peer3".to_string()));
    // A pod wired before host ends carried aliases: DEL still finds its pair (by the peer).
    ok(c.lab
        .exec("node1", &["ip", "link", "set", &stale_name, "alias", ""])
        .unwrap());
    assert_eq!(link(&c, &stale_name).get("ifalias"), None);
    let del = Cluster::attach_env("DEL", "coll-3", &ns, "eth0");
    assert_eq!(c.cni("node1", &del, &conf).0, 0);
    let mut left = c.veths("node1");
    left.sort();
    let mut expected = vec![taken, unmarked, "coll-peer".into(), "coll-peer2".into()];
    expected.sort();
    assert_eq!(left, expected);
}

/// The node's subnet changed (a new lease) while cni0 still carries the old gateway: ADD is
/// refused with code 102 naming the old address, takes back the new gateway it had to add to
/// find out, and leaves no link or allocation; cni0 keeps exactly its old address.
#[test]
fn a_bridge_with_another_subnets_gateway_is_refused_and_left_as_it_was() {
    let mut c = cluster("cbrc", 1);
    let pod = c.add_pod("node1", "a", "1.0.0");
    let old_gw = c.wait_ready("node1").subnet.unwrap();
    let cni0_v4 = |c: &Cluster| -> Vec<String> {
        c.ip_json("node1", &["-4", "addr", "show", "dev", "cni0"])[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    };
    assert_eq!(cni0_v4(&c), [old_gw.to_string()]);
    let moved = if old_gw.addr().to_string() == "10.244.250.1" {
        "10.244.251.1/24"
    } else {
        "10.244.250.1/24"
    };
    let env = c.lab.node_dir("node1").unwrap().join("moved.env");
    std::fs::write(
        &env,
        format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={moved}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"),
    )
    .unwrap();
    let mut conf = c.cni_conf("node1", "1.0.0");
    conf["subnetFile"] = json!(env);
    let ns = format!("/run/netns/{}", c.lab.pod_add("node1", "b").unwrap());
    let add = Cluster::attach_env("ADD", "moved-ctr", &ns, "eth0");
    let msg = format!("cni0 already has the address {old_gw}, outside this node's pod subnet");
    // Twice: the first refusal must have taken its gateway back for the second to see the same.
    for _ in 0..2 {
        rejected(&c, &add, &conf.to_string(), 102, &msg);
        assert_eq!(cni0_v4(&c), [old_gw.to_string()]);
    }
    assert!(ping(&c, "node1/a", old_gw.addr()), "{pod:?}");
}
