//! The data paths: host-gw, vxlan, DirectRouting; reconciliation and self-healing.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use podnet::lab::LabSpec;
use serde_json::Value;

use crate::cluster::{Cluster, PREFIX};
use crate::support::{ok, poll, unique};

const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const VXLAN_DR: &str =
    r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
const HOST_GW: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#;

/// Per node: its subnet (10.244.x.0/24) and public IP.
struct Node {
    name: String,
    subnet: String,
    base: Ipv4Addr,
    public: Ipv4Addr,
}

impl Node {
    /// The address the CNI plugin gives the node's bridge: the subnet's first host.
    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }
}

/// Starts podnetd on every node and waits until all are ready.
fn boot(c: &mut Cluster, config: &str, extra: &[&str]) -> Vec<Node> {
    c.put_config(config);
    let names: Vec<String> = c.lab.plan().nodes.iter().map(|n| n.name.clone()).collect();
    for n in &names {
        c.start(n, extra);
    }
    names
        .iter()
        .map(|n| {
            let env = c.wait_ready(n);
            let sn = env.subnet.unwrap().trunc();
            Node {
                name: n.clone(),
                subnet: sn.to_string(),
                base: sn.network(),
                public: c.lab.plan().host(n).unwrap().ip(),
            }
        })
        .collect()
}

/// What the CNI plugin would do on a node: a bridge holding the subnet's gateway address.
fn fake_cni0(c: &Cluster, node: &Node) {
    for cmd in [
        vec!["ip", "link", "add", "cni0", "type", "bridge"],
        vec![
            "ip",
            "addr",
            "add",
            &format!("{}/24", node.gateway()),
            "dev",
            "cni0",
        ],
        vec!["ip", "link", "set", "cni0", "up"],
    ] {
        ok(c.lab.exec(&node.name, &cmd).unwrap());
    }
}

fn ping_from(c: &Cluster, from: &Node, src: Ipv4Addr, dst: Ipv4Addr, extra: &[&str]) -> bool {
    let src = src.to_string();
    let dst = dst.to_string();
    let mut argv = vec!["ping", "-c1", "-W2", "-I", &src];
    argv.extend_from_slice(extra);
    argv.push(&dst);
    c.lab.exec(&from.name, &argv).unwrap().status.success()
}

/// Every node reaches every other node's subnet gateway from its own.
fn every_gateway_answers_every_node(c: &Cluster, nodes: &[Node]) {
    for a in nodes {
        for b in nodes {
            if a.name != b.name {
                assert!(
                    ping_from(c, a, a.gateway(), b.gateway(), &[]),
                    "{} -> {}",
                    a.name,
                    b.name
                );
            }
        }
    }
}

/// An IPv4 packet of exactly `mtu` bytes with DF set crosses from `a`'s subnet to `b`'s; one
/// byte more does not (ICMP echo: 28 bytes of headers).
fn assert_path_mtu(c: &Cluster, a: &Node, b: &Node, mtu: u32) {
    let ping = |size: u32| {
        ping_from(
            c,
            a,
            a.gateway(),
            b.gateway(),
            &["-M", "do", "-s", &(size - 28).to_string()],
        )
    };
    assert!(ping(mtu), "{mtu} bytes with DF");
    assert!(!ping(mtu + 1), "{} bytes with DF", mtu + 1);
}

fn routes(c: &Cluster, node: &str) -> Vec<Value> {
    c.ip_json(node, &["route", "show", "proto", "86"])
        .as_array()
        .unwrap()
        .clone()
}

/// Polls until every node has exactly one podnet route per peer, `via` as `expect` says.
fn wait_converged(c: &Cluster, nodes: &[Node], expect: impl Fn(&Node, &Node, &Value) -> bool) {
    for a in nodes {
        poll(
            &format!("{}'s routes", a.name),
            Duration::from_secs(15),
            || {
                let rs = routes(c, &a.name);
                let ok = rs.len() == nodes.len() - 1
                    && nodes.iter().filter(|b| b.name != a.name).all(|b| {
                        rs.iter().filter(|r| r["dst"] == b.subnet.as_str()).count() == 1
                            && rs
                                .iter()
                                .any(|r| r["dst"] == b.subnet.as_str() && expect(a, b, r))
                    });
                ok.then_some(())
            },
        );
    }
}

fn tunnelled(b: &Node, r: &Value) -> bool {
    r["gateway"] == b.base.to_string().as_str()
        && r["dev"] == "flannel.1"
        && r["flags"].to_string().contains("onlink")
}

fn direct(b: &Node, r: &Value) -> bool {
    r["gateway"] == b.public.to_string().as_str() && r["dev"] == "eth0"
}

#[test]
fn host_gw_three_nodes_route_to_each_other() {
    let mut c = Cluster::small("bhg", 3);
    let nodes = boot(&mut c, HOST_GW, &[]);
    wait_converged(&c, &nodes, |_, b, r| direct(b, r));
    for n in &nodes {
        fake_cni0(&c, n);
        let env = std::fs::read_to_string(c.env_path(&n.name)).unwrap();
        assert!(
            env.contains("FLANNEL_MTU=1500\n"),
            "host-gw keeps the interface MTU: {env}"
        );
    }
    every_gateway_answers_every_node(&c, &nodes);
    // MTU: 1500-byte packets with DF pass between subnets; 1501 do not.
    assert_path_mtu(&c, &nodes[0], &nodes[1], 1500);
}

#[test]
fn host_gw_skips_peers_beyond_the_router() {
    let mut c = Cluster::new(LabSpec::new(unique("bhx"), 4).segments(2));
    let nodes = boot(&mut c, HOST_GW, &[]);
    // node1 routes node2 (same segment) and nothing else.
    poll("node1's one route", Duration::from_secs(10), || {
        let rs = routes(&c, "node1");
        (rs.len() == 1 && rs[0]["dst"] == nodes[1].subnet.as_str()).then_some(())
    });
    let log = c.log(&c.podnetd("node1"));
    assert!(
        log.contains(&format!(
            "host-gw needs every node on one L2 segment, but {} is not directly reachable on eth0",
            nodes[2].public
        )),
        "{log}"
    );
}

#[test]
fn vxlan_four_nodes_on_two_segments() {
    let mut c = Cluster::new(LabSpec::new(unique("bvx"), 4).segments(2));
    let nodes = boot(&mut c, VXLAN, &[]);
    wait_converged(&c, &nodes, |_, b, r| tunnelled(b, r));
    let leases: HashMap<String, String> = c.leases().into_iter().collect();
    let mac_of = |n: &Node| -> String {
        let v: Value = serde_json::from_str(&leases[&n.subnet.replace('/', "-")]).unwrap();
        v["BackendData"]["VtepMAC"].as_str().unwrap().to_string()
    };
    for a in &nodes {
        let link = &c.ip_json(&a.name, &["-d", "link", "show", "flannel.1"])[0];
        let info = &link["linkinfo"]["info_data"];
        assert_eq!(link["mtu"], 1450);
        assert_eq!(link["address"], mac_of(a).as_str());
        assert_eq!(info["id"], 1);
        assert_eq!(info["port"], 8472);
        assert_eq!(info["learning"], false);
        assert_eq!(info["local"], a.public.to_string().as_str());
        assert_eq!(info["link"], "eth0");
        let addrs = &c.ip_json(&a.name, &["addr", "show", "flannel.1"])[0]["addr_info"];
        let v4: Vec<&Value> = addrs
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["family"] == "inet")
            .collect();
        assert_eq!(v4.len(), 1);
        assert_eq!(v4[0]["local"], a.base.to_string().as_str());
        assert_eq!(v4[0]["prefixlen"], 32);
        // Exactly one neighbour and one FDB entry per peer, nothing else.
        let neigh = c.ip_json(&a.name, &["neigh", "show", "dev", "flannel.1"]);
        let fdb: Value = serde_json::from_str(&ok(c
            .lab
            .exec(
                &a.name,
                &["bridge", "-j", "fdb", "show", "dev", "flannel.1"],
            )
            .unwrap()))
        .unwrap();
        assert_eq!(neigh.as_array().unwrap().len(), 3, "{neigh}");
        assert_eq!(fdb.as_array().unwrap().len(), 3, "{fdb}");
        for b in nodes.iter().filter(|b| b.name != a.name) {
            assert!(
                neigh
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n["dst"] == b.base.to_string().as_str()
                        && n["lladdr"] == mac_of(b).as_str()
                        && n["state"].to_string().contains("PERMANENT"))
            );
            assert!(
                fdb.as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f["mac"] == mac_of(b).as_str()
                        && f["dst"] == b.public.to_string().as_str()
                        && f["state"] == "permanent")
            );
        }
    }
    for n in &nodes {
        fake_cni0(&c, n);
    }
    every_gateway_answers_every_node(&c, &nodes);
    // MTU: a DF packet of the full 1450 bytes crosses the router through the tunnel; 1451 does not.
    assert_path_mtu(&c, &nodes[0], &nodes[3], 1450);
}

fn tx_packets(c: &Cluster, node: &str, dev: &str) -> u64 {
    c.ip_json(node, &["-s", "link", "show", dev])[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .unwrap()
}

#[test]
fn direct_routing_uses_the_tunnel_only_across_the_router() {
    let mut c = Cluster::new(LabSpec::new(unique("bdr"), 4).segments(2));
    let nodes = boot(&mut c, VXLAN_DR, &[]);
    // Same segment: direct; other segment: tunnel.
    wait_converged(&c, &nodes, |a, b, r| {
        let same = c.lab.plan().host(&a.name).unwrap().segment
            == c.lab.plan().host(&b.name).unwrap().segment;
        if same { direct(b, r) } else { tunnelled(b, r) }
    });
    for n in &nodes {
        fake_cni0(&c, n);
    }
    // On the wire: traffic to the same-segment peer leaves without touching flannel.1...
    let before = tx_packets(&c, "node1", "flannel.1");
    for _ in 0..5 {
        assert!(ping_from(
            &c,
            &nodes[0],
            nodes[0].gateway(),
            nodes[1].gateway(),
            &[]
        ));
    }
    assert_eq!(
        tx_packets(&c, "node1", "flannel.1"),
        before,
        "same-segment traffic went through the tunnel"
    );
    // ...and traffic to the other segment goes through it.
    for _ in 0..5 {
        assert!(ping_from(
            &c,
            &nodes[0],
            nodes[0].gateway(),
            nodes[2].gateway(),
            &[]
        ));
    }
    assert!(
        tx_packets(&c, "node1", "flannel.1") >= before + 5,
        "cross-segment traffic bypassed the tunnel"
    );
    // Direct peers need no neighbour or FDB entry: one each for the two tunnelled peers.
    assert_eq!(
        c.ip_json("node1", &["neigh", "show", "dev", "flannel.1"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn leases_coming_and_going_reach_every_kernel() {
    let mut c = Cluster::small("bchurn", 3);
    // Events alone must do it: no full pass comes to the rescue during this test.
    let nodes = boot(&mut c, VXLAN, &["--resync-period=1h"]);
    wait_converged(&c, &nodes, |_, b, r| tunnelled(b, r));
    // A new peer appears in etcd.
    c.etcdctl(&[
        "put",
        &format!("{PREFIX}/subnets/10.244.250.0-24"),
        r#"{"PublicIP":"198.18.0.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:02:50"}}"#,
    ]);
    for n in &nodes {
        poll("the new peer's route", Duration::from_secs(10), || {
            routes(&c, &n.name)
                .iter()
                .any(|r| r["dst"] == "10.244.250.0/24")
                .then_some(())
        });
    }
    // A peer of another backend is skipped with a warning.
    c.etcdctl(&[
        "put",
        &format!("{PREFIX}/subnets/10.244.251.0-24"),
        r#"{"PublicIP":"198.18.0.98","PublicIPv6":null,"BackendType":"host-gw"}"#,
    ]);
    // A programmed peer whose lease turns into another backend's loses what was programmed.
    c.etcdctl(&[
        "put",
        &format!("{PREFIX}/subnets/10.244.250.0-24"),
        r#"{"PublicIP":"198.18.0.99","PublicIPv6":null,"BackendType":"host-gw"}"#,
    ]);
    for n in &nodes {
        poll(
            "the switched peer's route to go",
            Duration::from_secs(10),
            || {
                (!routes(&c, &n.name)
                    .iter()
                    .any(|r| r["dst"] == "10.244.250.0/24"))
                .then_some(())
            },
        );
        let neigh = c.ip_json(&n.name, &["neigh", "show", "dev", "flannel.1"]);
        assert!(!neigh.to_string().contains("10.244.250.0"), "{neigh}");
    }
    // node3 is decommissioned (its agent stopped, then its lease deleted): its subnet
    // disappears from the others. (A running agent would take a deleted lease back.)
    let n3 = c.podnetd("node3");
    c.lab.stop(n3.id.pid).unwrap();
    c.etcdctl(&["del", &format!("{PREFIX}/subnets/10.244.250.0-24")]);
    c.etcdctl(&[
        "del",
        &format!("{PREFIX}/subnets/{}", nodes[2].subnet.replace('/', "-")),
    ]);
    for n in &nodes[..2] {
        poll("the deleted peers to go", Duration::from_secs(10), || {
            let rs = routes(&c, &n.name);
            (!rs.iter()
                .any(|r| r["dst"] == "10.244.250.0/24" || r["dst"] == nodes[2].subnet.as_str()))
            .then_some(())
        });
        let neigh = c.ip_json(&n.name, &["neigh", "show", "dev", "flannel.1"]);
        assert!(!neigh.to_string().contains("10.244.250.0"), "{neigh}");
        assert!(
            !routes(&c, &n.name)
                .iter()
                .any(|r| r["dst"] == "10.244.251.0/24")
        );
    }
    let rec = c.podnetd("node1");
    let log = c.log(&rec);
    assert!(
        log.contains("skipping a peer whose lease is for another backend"),
        "{log}"
    );
}

#[test]
fn deleted_routes_neighbours_fdb_entries_and_the_device_come_back() {
    let mut c = Cluster::small("bheal", 3);
    let nodes = boot(&mut c, VXLAN, &[]);
    wait_converged(&c, &nodes, |_, b, r| tunnelled(b, r));
    let peer = &nodes[1];
    let healthy = |c: &Cluster| {
        // While the device is being rebuilt there is nothing to ask it about yet.
        let link = c.lab.exec("node1", &["ip", "link", "show", "flannel.1"]);
        if !link.unwrap().status.success() {
            return false;
        }
        let rs = routes(c, "node1");
        let neigh = c.ip_json("node1", &["neigh", "show", "dev", "flannel.1"]);
        let fdb = ok(c
            .lab
            .exec("node1", &["bridge", "fdb", "show", "dev", "flannel.1"])
            .unwrap());
        rs.len() == 2 && neigh.as_array().map(|a| a.len()) == Some(2) && fdb.lines().count() == 2
    };
    // Route.
    ok(c.lab
        .exec("node1", &["ip", "route", "del", &peer.subnet])
        .unwrap());
    poll("route restored", Duration::from_secs(5), || {
        healthy(&c).then_some(())
    });
    // Neighbour.
    ok(c.lab
        .exec(
            "node1",
            &[
                "ip",
                "neigh",
                "del",
                &peer.base.to_string(),
                "dev",
                "flannel.1",
            ],
        )
        .unwrap());
    poll("neighbour restored", Duration::from_secs(5), || {
        healthy(&c).then_some(())
    });
    // FDB entry.
    let mac = c.ip_json("node2", &["link", "show", "flannel.1"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    ok(c.lab
        .exec(
            "node1",
            &[
                "bridge",
                "fdb",
                "del",
                &mac,
                "dev",
                "flannel.1",
                "dst",
                &peer.public.to_string(),
            ],
        )
        .unwrap());
    poll("fdb entry restored", Duration::from_secs(5), || {
        healthy(&c).then_some(())
    });
    // The whole device: back with the same MAC, its address, and every peer.
    let old = c.ip_json("node1", &["link", "show", "flannel.1"])[0].clone();
    ok(c.lab
        .exec("node1", &["ip", "link", "del", "flannel.1"])
        .unwrap());
    poll("device and peers restored", Duration::from_secs(5), || {
        healthy(&c).then_some(())
    });
    let new = c.ip_json("node1", &["link", "show", "flannel.1"])[0].clone();
    assert_ne!(new["ifindex"], old["ifindex"], "it really was recreated");
    assert_eq!(new["address"], old["address"]);
    fake_cni0(&c, &nodes[0]);
    fake_cni0(&c, peer);
    assert!(ping_from(
        &c,
        &nodes[0],
        nodes[0].gateway(),
        peer.gateway(),
        &[]
    ));
    // A route podnet does not own is left alone even when it points into the cluster network.
    ok(c.lab
        .exec(
            "node1",
            &["ip", "route", "add", "10.244.254.0/24", "dev", "eth0"],
        )
        .unwrap());
    std::thread::sleep(Duration::from_secs(2));
    let all = c.ip_json("node1", &["route", "show", "10.244.254.0/24"]);
    assert_eq!(all.as_array().unwrap().len(), 1, "foreign route kept");
}

#[test]
fn a_restart_loses_no_packet_and_keeps_the_vtep_mac() {
    let mut c = Cluster::small("brst", 2);
    let nodes = boot(&mut c, VXLAN, &[]);
    wait_converged(&c, &nodes, |_, b, r| tunnelled(b, r));
    for n in &nodes {
        fake_cni0(&c, n);
    }
    let mac = c.ip_json("node1", &["link", "show", "flannel.1"])[0]["address"].clone();
    let lease_before = c.leases();
    // 10 ms ping from node2's subnet to node1's while node1's podnetd restarts twice.
    let src = nodes[1].gateway().to_string();
    let dst = nodes[0].gateway().to_string();
    c.restart_twice_under_ping("node1", ("node2", &src, &dst), |c| {
        // Stopped: routes and the lease stay.
        assert_eq!(routes(c, "node1").len(), 1);
        assert_eq!(c.leases(), lease_before);
    });
    // A "reboot": the device is gone when podnetd comes back; the MAC is still the same.
    let rec = c.podnetd("node1");
    c.lab.stop(rec.id.pid).unwrap();
    ok(c.lab
        .exec("node1", &["ip", "link", "del", "flannel.1"])
        .unwrap());
    c.start("node1", &[]);
    poll("device back", Duration::from_secs(10), || {
        c.lab
            .exec("node1", &["ip", "link", "show", "flannel.1"])
            .unwrap()
            .status
            .success()
            .then_some(())
    });
    assert_eq!(
        c.ip_json("node1", &["link", "show", "flannel.1"])[0]["address"],
        mac
    );
    assert_eq!(
        c.leases(),
        lease_before,
        "same subnet, same VtepMAC in etcd"
    );
}

#[test]
fn a_device_with_other_attributes_is_recreated() {
    let mut c = Cluster::small("bincompat", 2);
    // Someone left a flannel.1 with VNI 7 and another port behind.
    ok(c.lab
        .exec(
            "node1",
            &[
                "ip",
                "link",
                "add",
                "flannel.1",
                "type",
                "vxlan",
                "id",
                "7",
                "dstport",
                "4789",
                "dev",
                "eth0",
            ],
        )
        .unwrap());
    let nodes = boot(&mut c, VXLAN, &[]);
    wait_converged(&c, &nodes, |_, b, r| tunnelled(b, r));
    let info =
        &c.ip_json("node1", &["-d", "link", "show", "flannel.1"])[0]["linkinfo"]["info_data"];
    assert_eq!(info["id"], 1);
    assert_eq!(info["port"], 8472);
}

#[test]
fn stale_objects_from_an_earlier_run_are_removed_at_start() {
    let mut c = Cluster::small("bstale", 2);
    let nodes = boot(&mut c, VXLAN, &[]);
    wait_converged(&c, &nodes, |_, b, r| tunnelled(b, r));
    // Both agents stop; node2 is decommissioned while node1 is down; and some other earlier
    // run left a podnet route behind.
    for p in c
        .lab
        .state()
        .procs
        .clone()
        .iter()
        .filter(|p| p.argv[0].ends_with("podnetd"))
    {
        c.lab.stop(p.id.pid).unwrap();
    }
    c.etcdctl(&[
        "del",
        &format!("{PREFIX}/subnets/{}", nodes[1].subnet.replace('/', "-")),
    ]);
    ok(c.lab
        .exec(
            "node1",
            &[
                "ip",
                "route",
                "add",
                "10.244.253.0/24",
                "via",
                "198.18.0.77",
                "proto",
                "86",
            ],
        )
        .unwrap());
    ok(c.lab
        .exec(
            "node1",
            &[
                "ip",
                "route",
                "add",
                "10.244.252.0/24",
                "via",
                "198.18.0.77",
                "proto",
                "static",
            ],
        )
        .unwrap());
    assert_eq!(routes(&c, "node1").len(), 2);
    c.start("node1", &[]);
    poll("stale podnet objects gone", Duration::from_secs(10), || {
        let neigh = c.ip_json("node1", &["neigh", "show", "dev", "flannel.1"]);
        (routes(&c, "node1").is_empty() && neigh.as_array().unwrap().is_empty()).then_some(())
    });
    let fdb = ok(c
        .lab
        .exec("node1", &["bridge", "fdb", "show", "dev", "flannel.1"])
        .unwrap());
    assert!(fdb.trim().is_empty(), "{fdb}");
    // Not ours (proto static): untouched.
    assert_eq!(
        c.ip_json("node1", &["route", "show", "10.244.252.0/24"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn taking_a_node_over_from_flanneld_keeps_its_lease_and_vtep_mac() {
    let mut c = Cluster::small("bmig", 2);
    c.put_config(VXLAN);
    // What flanneld left on node1: its lease with a random VtepMAC, and the device with that MAC.
    let mac = "0a:bb:cc:00:11:22";
    c.etcdctl(&[
        "put",
        &format!("{PREFIX}/subnets/10.244.42.0-24"),
        &format!(r#"{{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#),
    ]);
    for cmd in [
        format!(
            "ip link add flannel.1 address {mac} type vxlan id 1 local 198.18.0.11 dev eth0 dstport 8472 nolearning"
        ),
        "ip link set flannel.1 mtu 1450".to_string(),
        "ip addr add 10.244.42.0/32 dev flannel.1".to_string(),
        "ip link set flannel.1 up".to_string(),
    ] {
        let argv: Vec<&str> = cmd.split(' ').collect();
        ok(c.lab.exec("node1", &argv).unwrap());
    }
    let index_before = c.ip_json("node1", &["link", "show", "flannel.1"])[0]["ifindex"].clone();
    let nodes = boot(&mut c, VXLAN, &[]);
    assert_eq!(nodes[0].subnet, "10.244.42.0/24", "the lease flanneld held");
    let link = &c.ip_json("node1", &["link", "show", "flannel.1"])[0];
    assert_eq!(link["address"], mac, "peers keep the VtepMAC they know");
    assert_eq!(
        link["ifindex"], index_before,
        "the device was adopted, not recreated"
    );
    let leases: HashMap<String, String> = c.leases().into_iter().collect();
    assert!(leases["10.244.42.0-24"].contains(mac), "{leases:?}");
    wait_converged(&c, &nodes, |_, b, r| tunnelled(b, r));
    for n in &nodes {
        fake_cni0(&c, n);
    }
    assert!(ping_from(
        &c,
        &nodes[1],
        nodes[1].gateway(),
        nodes[0].gateway(),
        &[]
    ));
}
