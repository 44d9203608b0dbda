//! Dual-stack and IPv6-only networks (flannel's `EnableIPv6`): leases with both halves, the
//! IPv6 VXLAN device `flannel-v6.<VNI>`, IPv6 host-gw routes, self-healing of the IPv6 objects,
//! and traffic over both families across an IPv6 underlay (2001:2::/48).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use podnet::firewall::{FirewallSpec, Guard, Nets};
use podnet::lab::LabSpec;
use serde_json::Value;

use crate::cluster::{Cluster, PODNETCTL, masq_rule_handles};
use crate::support::{ok, poll, unique};
use podnet::lab::cluster::Pod;
use podnet::lab::cluster::attach_env;

const DUAL_VXLAN: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan"}}"#;
const DUAL_HOST_GW: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"host-gw"}}"#;
const V6_ONLY_VXLAN: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan"}}"#;

/// Per node: its subnets and public addresses of each family.
struct Node {
    name: String,
    v4: Option<(String, Ipv4Addr)>,
    v6: (String, Ipv6Addr),
    public: Ipv4Addr,
    public6: Ipv6Addr,
}

impl Node {
    fn gw4(&self) -> String {
        let base = self.v4.as_ref().unwrap().1;
        Ipv4Addr::from(u32::from(base) + 1).to_string()
    }

    fn gw6(&self) -> String {
        Ipv6Addr::from(u128::from(self.v6.1) + 1).to_string()
    }
}

fn boot(c: &mut Cluster, config: &str, extra: &[&str]) -> Vec<Node> {
    c.put_config(config);
    let names: Vec<String> = c.lab.plan().nodes.iter().map(|n| n.name.clone()).collect();
    for n in &names {
        c.start(n, extra);
    }
    names.iter().map(|n| ready_node(c, n)).collect()
}

/// A node once its `subnet.env` is written.
fn ready_node(c: &Cluster, name: &str) -> Node {
    let env = c.wait_ready(name);
    let v6 = env.ipv6_subnet.expect("FLANNEL_IPV6_SUBNET").trunc();
    let host = c.lab.plan().host(name).unwrap();
    Node {
        name: name.to_string(),
        v4: env
            .subnet
            .map(|s| (s.trunc().to_string(), s.trunc().network())),
        v6: (v6.to_string(), v6.network()),
        public: host.ip(),
        public6: host.ip6().expect("an IPv6 underlay"),
    }
}

/// What the CNI plugin does on a node: a bridge holding each subnet's gateway address.
fn fake_cni0(c: &Cluster, n: &Node) {
    let mut cmds = vec![vec!["ip", "link", "add", "cni0", "type", "bridge"]];
    let gw4 = n.v4.as_ref().map(|_| format!("{}/24", n.gw4()));
    if let Some(g) = &gw4 {
        cmds.push(vec!["ip", "addr", "add", g, "dev", "cni0"]);
    }
    let gw6 = format!("{}/64", n.gw6());
    cmds.push(vec!["ip", "addr", "add", &gw6, "dev", "cni0", "nodad"]);
    cmds.push(vec!["ip", "link", "set", "cni0", "up"]);
    for cmd in cmds {
        ok(c.lab.exec(&n.name, &cmd).unwrap());
    }
}

fn ping(c: &Cluster, from: &Node, src: &str, dst: &str, extra: &[&str]) -> bool {
    let mut argv = vec!["ping", "-c1", "-W2", "-I", src];
    argv.extend_from_slice(extra);
    argv.push(dst);
    c.lab.exec(&from.name, &argv).unwrap().status.success()
}

/// Each node's bridge with its gateways (`fake_cni0`), then every gateway reaching every other.
fn bridges_that_answer(c: &Cluster, nodes: &[Node]) {
    for n in nodes {
        fake_cni0(c, n);
    }
    every_gateway_answers(c, nodes);
}

/// Every node's gateways reach every other node's, over each family the network has (polled:
/// the first packet may wait for the underlay's neighbour discovery).
fn every_gateway_answers(c: &Cluster, nodes: &[Node]) {
    for a in nodes {
        for b in nodes.iter().filter(|b| b.name != a.name) {
            let mut pairs = vec![(a.gw6(), b.gw6(), "IPv6")];
            if a.v4.is_some() {
                pairs.push((a.gw4(), b.gw4(), "IPv4"));
            }
            for (src, dst, family) in pairs {
                poll(
                    &format!("{} -> {} over {family}", a.name, b.name),
                    Duration::from_secs(10),
                    || ping(c, a, &src, &dst, &[]).then_some(()),
                );
            }
        }
    }
}

/// IPv6 packets of exactly `mtu` bytes with DF cross; one byte more do not (ICMPv6 echo: 48
/// bytes of headers).
fn assert_path_mtu6(c: &Cluster, a: &Node, b: &Node, mtu: u32) {
    let p = |size: u32| {
        let s = (size - 48).to_string();
        ping(c, a, &a.gw6(), &b.gw6(), &["-M", "do", "-s", &s])
    };
    assert!(p(mtu), "{mtu} bytes of IPv6 with DF");
    assert!(!p(mtu + 1), "{} bytes of IPv6 with DF", mtu + 1);
}

fn routes6(c: &Cluster, node: &str) -> Vec<Value> {
    c.ip_json(node, &["-6", "route", "show", "proto", "86"])
        .as_array()
        .unwrap()
        .clone()
}

/// Polls until every node has exactly one podnet IPv6 route per peer, as `expect` says; on a
/// timeout the routes last seen are shown.
fn wait_converged6(c: &Cluster, nodes: &[Node], expect: impl Fn(&Node, &Value) -> bool) {
    for a in nodes {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let rs = routes6(c, &a.name);
            let ok = rs.len() == nodes.len() - 1
                && nodes.iter().filter(|b| b.name != a.name).all(|b| {
                    rs.iter()
                        .any(|r| r["dst"] == b.v6.0.as_str() && expect(b, r))
                });
            if ok {
                break;
            }
            if std::time::Instant::now() >= deadline {
                let log = c.log(&c.podnetd(&a.name));
                panic!(
                    "{}'s IPv6 routes did not converge in 30 s: {rs:?}\nits podnetd's log:\n{log}",
                    a.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A route straight to the peer's public IPv6 address over the underlay (host-gw,
/// DirectRouting).
fn direct6(b: &Node, r: &Value) -> bool {
    r["gateway"] == b.public6.to_string().as_str() && r["dev"] == "eth0"
}

fn tunnelled6(b: &Node, r: &Value) -> bool {
    r["gateway"] == b.v6.1.to_string().as_str()
        && r["dev"] == "flannel-v6.1"
        && r["flags"].to_string().contains("onlink")
}

fn fdb(c: &Cluster, node: &str, dev: &str) -> Vec<Value> {
    let out = ok(c
        .lab
        .exec(node, &["bridge", "-j", "fdb", "show", "dev", dev])
        .unwrap());
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The lease values by key, parsed.
fn lease_values(c: &Cluster) -> HashMap<String, Value> {
    c.leases()
        .into_iter()
        .map(|(k, v)| (k, serde_json::from_str(&v).unwrap()))
        .collect()
}

#[test]
fn dual_stack_vxlan_three_nodes_on_two_segments() {
    let mut c = Cluster::new(LabSpec::new(unique("dsvx"), 3).segments(2).ipv6(true));
    let nodes = boot(&mut c, DUAL_VXLAN, &[]);
    wait_converged6(&c, &nodes, tunnelled6);
    let leases = lease_values(&c);
    // Byte for byte as flanneld writes a dual-stack vxlan lease.
    let raw: HashMap<String, String> = c.leases().into_iter().collect();
    for (k, v) in &raw {
        let p = &leases[k];
        let golden = format!(
            r#"{{"PublicIP":"{}","PublicIPv6":"{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            p["PublicIP"].as_str().unwrap(),
            p["PublicIPv6"].as_str().unwrap(),
            p["BackendData"]["VtepMAC"].as_str().unwrap(),
            p["BackendV6Data"]["VtepMAC"].as_str().unwrap()
        );
        assert_eq!(v, &golden);
    }
    for a in &nodes {
        // The lease: both halves, flannel's key and value.
        let key = format!(
            "{}&{}",
            a.v4.as_ref().unwrap().0.replace('/', "-"),
            a.v6.0.replace('/', "-")
        );
        let v = &leases[&key];
        assert_eq!(v["PublicIP"], a.public.to_string().as_str(), "{v}");
        assert_eq!(v["PublicIPv6"], a.public6.to_string().as_str(), "{v}");
        assert_eq!(v["BackendType"], "vxlan");
        assert_eq!(v["BackendV6Data"]["VNI"], 1);
        let mac6 = v["BackendV6Data"]["VtepMAC"].as_str().unwrap();
        // The IPv6 device: flannel's attributes, the MTU an IPv6 underlay leaves.
        let link = &c.ip_json(&a.name, &["-d", "link", "show", "flannel-v6.1"])[0];
        let info = &link["linkinfo"]["info_data"];
        assert_eq!(link["mtu"], 1430);
        assert_eq!(link["address"], mac6);
        assert_eq!(info["id"], 1);
        assert_eq!(info["port"], 8472);
        assert_eq!(info["learning"], false);
        // iproute2 names the IPv6 source "local6" in JSON.
        let local = if info["local6"].is_null() {
            &info["local"]
        } else {
            &info["local6"]
        };
        assert_eq!(local, a.public6.to_string().as_str(), "{info}");
        assert_eq!(info["link"], "eth0");
        let accept_ra = c.lab.exec(
            &a.name,
            &["cat", "/proc/sys/net/ipv6/conf/flannel-v6.1/accept_ra"],
        );
        assert_eq!(
            ok(accept_ra.unwrap()).trim(),
            "0",
            "accept_ra, as flannel sets it"
        );
        let addrs = c.ip_json(
            &a.name,
            &["-6", "addr", "show", "flannel-v6.1", "scope", "global"],
        );
        // (iproute2's JSON leaves an empty object where it filtered an address out.)
        let addrs: Vec<&Value> = addrs[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| !x["local"].is_null())
            .collect();
        assert_eq!(addrs.len(), 1, "{addrs:?}");
        assert_eq!(addrs[0]["local"], a.v6.1.to_string().as_str());
        assert_eq!(addrs[0]["prefixlen"], 128);
        // One neighbour and one FDB entry per peer on the IPv6 device, nothing else.
        let neigh = c.ip_json(
            &a.name,
            &[
                "-6",
                "neigh",
                "show",
                "dev",
                "flannel-v6.1",
                "nud",
                "permanent",
            ],
        );
        let neigh = neigh.as_array().unwrap();
        let fdb6 = fdb(&c, &a.name, "flannel-v6.1");
        assert_eq!(neigh.len(), 2, "{neigh:?}");
        assert_eq!(fdb6.len(), 2, "{fdb6:?}");
        for b in nodes.iter().filter(|b| b.name != a.name) {
            let bkey = format!(
                "{}&{}",
                b.v4.as_ref().unwrap().0.replace('/', "-"),
                b.v6.0.replace('/', "-")
            );
            let bmac = leases[&bkey]["BackendV6Data"]["VtepMAC"].as_str().unwrap();
            assert!(
                neigh
                    .iter()
                    .any(|n| n["dst"] == b.v6.1.to_string().as_str() && n["lladdr"] == bmac)
            );
            assert!(
                fdb6.iter()
                    .any(|f| f["mac"] == bmac && f["dst"] == b.public6.to_string().as_str())
            );
        }
        // The IPv4 half is as in an IPv4-only network.
        assert_eq!(
            c.ip_json(&a.name, &["route", "show", "proto", "86"])
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
    let env = c.wait_ready("node1");
    assert_eq!(env.mtu, Some(1430));
    bridges_that_answer(&c, &nodes);
    // Across the router, through flannel-v6.1: the full 1430 bytes with DF, not one more.
    assert_path_mtu6(&c, &nodes[0], &nodes[2], 1430);

    // Self-healing of the IPv6 objects: route, neighbour, FDB entry.
    let (a, b) = (&nodes[0], &nodes[1]);
    let healthy = |c: &Cluster| {
        let link = c.lab.exec("node1", &["ip", "link", "show", "flannel-v6.1"]);
        if !link.unwrap().status.success() {
            return false;
        }
        let neigh = c.ip_json(
            "node1",
            &[
                "-6",
                "neigh",
                "show",
                "dev",
                "flannel-v6.1",
                "nud",
                "permanent",
            ],
        );
        routes6(c, "node1").len() == 2
            && neigh.as_array().map(|n| n.len()) == Some(2)
            && fdb(c, "node1", "flannel-v6.1").len() == 2
    };
    ok(c.lab
        .exec(&a.name, &["ip", "-6", "route", "del", &b.v6.0])
        .unwrap());
    poll("IPv6 route restored", Duration::from_secs(10), || {
        healthy(&c).then_some(())
    });
    let gw = b.v6.1.to_string();
    ok(c.lab
        .exec(
            &a.name,
            &["ip", "-6", "neigh", "del", &gw, "dev", "flannel-v6.1"],
        )
        .unwrap());
    poll("IPv6 neighbour restored", Duration::from_secs(10), || {
        healthy(&c).then_some(())
    });
    let mac = c.ip_json(&b.name, &["link", "show", "flannel-v6.1"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let dst = b.public6.to_string();
    ok(c.lab
        .exec(
            &a.name,
            &[
                "bridge",
                "fdb",
                "del",
                &mac,
                "dev",
                "flannel-v6.1",
                "dst",
                &dst,
            ],
        )
        .unwrap());
    poll("IPv6 FDB entry restored", Duration::from_secs(10), || {
        healthy(&c).then_some(())
    });
    // The IPv6 device itself: recreated with its MAC, and every peer back on it.
    ok(c.lab
        .exec(&a.name, &["ip", "link", "del", "flannel-v6.1"])
        .unwrap());
    poll(
        "IPv6 device and peers restored",
        Duration::from_secs(10),
        || healthy(&c).then_some(()),
    );
    assert!(ping(&c, a, &a.gw6(), &b.gw6(), &[]));
    // `podnetctl status` reports the IPv6 peers and no drift on a healed node.
    let sock = c.socket_path("node1").unwrap().display().to_string();
    poll("no drift in status", Duration::from_secs(10), || {
        let out = c
            .lab
            .exec("node1", &[PODNETCTL, "status", "--json", "--socket", &sock])
            .unwrap();
        let st: Value = serde_json::from_slice(&out.stdout).ok()?;
        let d = &st["drift"];
        let clean = d["missing"].as_array()?.is_empty() && d["unexpected"].as_array()?.is_empty();
        let v6 = st["lease"]["ipv6Subnet"] == a.v6.0.as_str();
        let peer = st["peers"].as_array()?.iter().any(|p| {
            p["ipv6Subnet"] == b.v6.0.as_str() && p["publicIPv6"] == b.public6.to_string().as_str()
        });
        (clean && v6 && peer).then_some(())
    });
    let text = ok(c
        .lab
        .exec("node1", &[PODNETCTL, "status", "--socket", &sock])
        .unwrap());
    assert!(
        text.contains(&format!("{}, {}", a.v4.as_ref().unwrap().0, a.v6.0)),
        "{text}"
    );
    assert!(
        text.contains(&format!("  {:<20} {}", b.v6.0, b.public6)),
        "{text}"
    );
}

#[test]
fn dual_stack_host_gw_routes_both_families() {
    let mut c = Cluster::new(LabSpec::new(unique("dshg"), 3).ipv6(true));
    // An IPv6 route of podnet's from an earlier run that no lease wants any more.
    let stale = [
        "ip",
        "-6",
        "route",
        "add",
        "fd10:244:0:ee::/64",
        "via",
        "2001:2::99",
    ];
    ok(c.lab
        .exec(
            "node1",
            &[&stale[..], &["dev", "eth0", "proto", "86"]].concat(),
        )
        .unwrap());
    let nodes = boot(&mut c, DUAL_HOST_GW, &[]);
    // (Converged means exactly one route per peer: the stale one is gone.)
    wait_converged6(&c, &nodes, direct6);
    for n in &nodes {
        assert_eq!(
            c.ip_json(&n.name, &["route", "show", "proto", "86"])
                .as_array()
                .unwrap()
                .len(),
            2
        );
        fake_cni0(&c, n);
    }
    every_gateway_answers(&c, &nodes);
    // A deleted IPv6 route comes back.
    let (a, b) = (&nodes[0], &nodes[1]);
    ok(c.lab
        .exec(&a.name, &["ip", "-6", "route", "del", &b.v6.0])
        .unwrap());
    poll("IPv6 route restored", Duration::from_secs(10), || {
        (routes6(&c, &a.name).len() == 2).then_some(())
    });
    assert_path_mtu6(&c, a, b, 1500);
}

#[test]
fn ipv6_only_vxlan_reaches_every_node() {
    let mut c = Cluster::new(LabSpec::new(unique("v6vx"), 3).segments(2).ipv6(true));
    // The interface found as flannel finds it with an IPv6 target.
    let nodes = boot(&mut c, V6_ONLY_VXLAN, &["--iface-can-reach=2001:2::1"]);
    wait_converged6(&c, &nodes, tunnelled6);
    let text = std::fs::read_to_string(c.env_path("node1")).unwrap();
    assert!(
        !text.contains("FLANNEL_NETWORK=") && !text.contains("FLANNEL_SUBNET="),
        "{text}"
    );
    assert!(
        text.starts_with("FLANNEL_IPV6_NETWORK=fd10:244::/56\nFLANNEL_IPV6_SUBNET="),
        "{text}"
    );
    for n in &nodes {
        // No IPv4 device, no IPv4 routes.
        assert!(
            !c.lab
                .exec(&n.name, &["ip", "link", "show", "flannel.1"])
                .unwrap()
                .status
                .success()
        );
        assert!(
            c.ip_json(&n.name, &["route", "show", "proto", "86"])
                .as_array()
                .unwrap()
                .is_empty()
        );
    }
    // flannel's IPv6-only lease: key `0.0.0.0-0&<IPv6 subnet>`, no IPv4 backend data, the IPv6
    // half in full.
    for (k, v) in lease_values(&c) {
        assert!(k.starts_with("0.0.0.0-0&fd10:244:"), "{k}");
        assert!(v.get("BackendData").is_none(), "{v}");
        assert!(v["BackendV6Data"]["VtepMAC"].is_string(), "{v}");
        assert!(v["PublicIPv6"].is_string(), "{v}");
    }
    // Pods through the CNI plugin: one IPv6 address each, reaching each other by ping and TCP.
    let pods: Vec<_> = nodes
        .iter()
        .map(|n| c.add_pod(&n.name, "a", "1.0.0"))
        .collect();
    for p in &pods {
        assert_eq!(p.result["ips"].as_array().unwrap().len(), 1, "{}", p.result);
        assert!(p.ip.is_unspecified() && p.ip6.is_some(), "{}", p.result);
    }
    for a in &pods {
        for b in pods.iter().filter(|b| b.node != a.node) {
            let dst = b.ip6.unwrap();
            poll(
                &format!("{} -> {dst}", a.target()),
                Duration::from_secs(10),
                || {
                    let out = c
                        .lab
                        .exec(&a.target(), &["ping", "-c1", "-W2", &dst.to_string()])
                        .unwrap();
                    out.status.success().then_some(())
                },
            );
            assert_eq!(
                seen_as(&c, &a.target(), IpAddr::V6(dst), &b.target()),
                IpAddr::V6(a.ip6.unwrap())
            );
        }
    }
    for n in &nodes {
        assert_cni0_has_gw6(&c, n);
    }
    every_gateway_answers(&c, &nodes);
    assert_path_mtu6(&c, &nodes[0], &nodes[2], 1430);
}

/// The plugin already made cni0 with the subnet's gateway address: nothing to add.
fn assert_cni0_has_gw6(c: &Cluster, n: &Node) {
    let addrs = c.ip_json(
        &n.name,
        &["-6", "addr", "show", "dev", "cni0", "scope", "global"],
    );
    assert!(addrs.to_string().contains(&n.gw6()), "{addrs}");
}

#[test]
fn udp_refuses_ipv6_clearly() {
    let c = Cluster::new(LabSpec::new(unique("dsudp"), 1).ipv6(true));
    c.put_config(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"udp"}}"#,
    );
    let (code, log) = c.run_podnetd("node1", &[], Duration::from_secs(30));
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("the udp backend carries IPv4 pod traffic only"),
        "{log}"
    );
}

/// Pods through the CNI plugin in a dual-stack network: two addresses, both gateways, routes
/// for both cluster networks and an IPv6 default route; the IPv6 address usable as soon as
/// ADD returns; every pod reaches every other over both families; DEL releases both.
#[test]
fn dual_stack_pods_reach_each_other_over_both_families() {
    let mut c = Cluster::new(LabSpec::new(unique("dspod"), 3).segments(2).ipv6(true));
    let nodes = boot(&mut c, DUAL_VXLAN, &[]);
    wait_converged6(&c, &nodes, tunnelled6);
    let mut pods = Vec::new();
    for n in &nodes {
        let pod = c.add_pod(&n.name, "a", "1.0.0");
        // At once, no tentative wait: the IPv6 address is not tentative when ADD returns.
        let addrs = c.ip_json(
            &pod.target(),
            &["-6", "addr", "show", "dev", "eth0", "scope", "global"],
        );
        let text = addrs.to_string();
        assert!(!text.contains("tentative"), "{text}");
        let ip6 = pod.ip6.expect("an IPv6 address in the result");
        assert!(text.contains(&ip6.to_string()), "{text}");
        let ips = pod.result["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "{}", pod.result);
        let gws: Vec<&str> = ips.iter().filter_map(|i| i["gateway"].as_str()).collect();
        assert_eq!(gws, [n.gw4(), n.gw6()], "{}", pod.result);
        // The IPv6 default route via the bridge's IPv6 gateway (isDefaultGateway).
        let routes = c.ip_json(&pod.target(), &["-6", "route", "show", "default"]);
        assert_eq!(routes[0]["gateway"], n.gw6().as_str(), "{routes}");
        pods.push(pod);
    }
    for a in &pods {
        for b in pods.iter().filter(|b| b.node != a.node) {
            for dst in [b.ip.to_string(), b.ip6.unwrap().to_string()] {
                poll(
                    &format!("{} -> {dst}", a.target()),
                    Duration::from_secs(10),
                    || {
                        let out = c
                            .lab
                            .exec(&a.target(), &["ping", "-c1", "-W2", &dst])
                            .unwrap();
                        out.status.success().then_some(())
                    },
                );
            }
        }
    }
    // Full-MTU DF pings between pods across the router, both families.
    let (a, b) = (&pods[0], &pods[2]);
    let mtu = c.wait_ready(&a.node).mtu.unwrap();
    for (dst, hdr) in [(b.ip.to_string(), 28), (b.ip6.unwrap().to_string(), 48)] {
        let size = (mtu - hdr).to_string();
        let out = c
            .lab
            .exec(
                &a.target(),
                &["ping", "-c1", "-W2", "-M", "do", "-s", &size, &dst],
            )
            .unwrap();
        assert!(out.status.success(), "{mtu} bytes to {dst}");
    }
    // CHECK verifies both addresses: taking the IPv6 one away is reported.
    let mut conf = c.cni_conf(&a.node, "1.1.0");
    conf["prevResult"] = a.result.clone();
    let check = attach_env("CHECK", &a.container, &a.netns, "eth0");
    assert_eq!(
        c.cni(&a.node, &check, &conf.to_string()),
        (0, String::new())
    );
    let a6 = format!("{}/64", a.ip6.unwrap());
    ok(c.lab
        .exec(
            &a.target(),
            &["ip", "-6", "addr", "del", &a6, "dev", "eth0"],
        )
        .unwrap());
    let (code, out) = c.cni(&a.node, &check, &conf.to_string());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&a6), "{out}");
    // DEL releases both addresses.
    let mut want: Vec<String> = vec![a.ip.to_string(), a.ip6.unwrap().to_string()];
    want.sort();
    assert_eq!(c.allocations(&a.node), want);
    let (code, out) = c.del_pod(a, &a.netns);
    assert_eq!(code, 0, "{out}");
    assert!(
        c.allocations(&a.node).is_empty(),
        "{:?}",
        c.allocations(&a.node)
    );
    // GC keeps the valid attachment's two addresses and releases a stale one's two.
    let b = &pods[1];
    let stale = c.add_pod(&b.node, "stale", "1.1.0");
    assert_eq!(c.allocations(&b.node).len(), 4);
    let mut gc = c.cni_conf(&b.node, "1.1.0");
    gc["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": b.container, "ifname": "eth0"}]);
    let env = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")];
    assert_eq!(c.cni(&b.node, &env, &gc.to_string()), (0, String::new()));
    let mut want: Vec<String> = vec![b.ip.to_string(), b.ip6.unwrap().to_string()];
    want.sort();
    assert_eq!(c.allocations(&b.node), want, "{} released", stale.container);
}

#[test]
fn direct_routing_over_ipv6_uses_the_tunnel_only_across_the_router() {
    let mut c = Cluster::new(LabSpec::new(unique("dsdr"), 3).segments(2).ipv6(true));
    let conf = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
    let nodes = boot(&mut c, conf, &[]);
    wait_converged6(&c, &nodes, |b, r| direct6(b, r) || tunnelled6(b, r));
    // node1 and node2 share segment 0; node3 is behind the router.
    let seg = |n: &Node| c.lab.plan().host(&n.name).unwrap().segment;
    for a in &nodes {
        let rs = routes6(&c, &a.name);
        for b in nodes.iter().filter(|b| b.name != a.name) {
            let r = rs.iter().find(|r| r["dst"] == b.v6.0.as_str()).unwrap();
            if seg(a) == seg(b) {
                assert_eq!(r["dev"], "eth0", "{} -> {}: {r}", a.name, b.name);
                assert_eq!(r["gateway"], b.public6.to_string().as_str());
            } else {
                assert!(tunnelled6(b, r), "{} -> {}: {r}", a.name, b.name);
            }
        }
    }
    bridges_that_answer(&c, &nodes);
}

/// Connects from `target` to `dst:port` (a one-shot server in `server_target`) and returns the
/// source address the server saw.
fn seen_as(c: &Cluster, target: &str, dst: IpAddr, server_target: &str) -> IpAddr {
    let bind: SocketAddr = match dst {
        IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
        IpAddr::V6(_) => "[::]:0".parse().unwrap(),
    };
    let listener = c
        .lab
        .netns(server_target)
        .unwrap()
        .run(|| TcpListener::bind(bind))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((_, peer)) = listener.accept() {
            let _ = tx.send(peer);
        }
    });
    let addr = SocketAddr::new(dst, port);
    let _stream: TcpStream = c
        .lab
        .netns(target)
        .unwrap()
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .unwrap()
        .unwrap_or_else(|e| panic!("{target} -> {addr}: {e}"));
    rx.recv_timeout(Duration::from_secs(5)).unwrap().ip()
}

/// `cli` pings `srv` over IPv6 (polled), and a TCP connection arrives from `cli`'s own address.
fn reaches_over_ipv6_as_itself(c: &Cluster, cli: &Pod, srv: &Pod) {
    let srv6 = IpAddr::V6(srv.ip6.unwrap());
    poll("pod-to-pod over IPv6", Duration::from_secs(10), || {
        let dst = srv6.to_string();
        let out = c
            .lab
            .exec(&cli.target(), &["ping", "-c1", "-W1", &dst])
            .unwrap();
        out.status.success().then_some(())
    });
    assert_eq!(
        seen_as(c, &cli.target(), srv6, &srv.target()),
        IpAddr::V6(cli.ip6.unwrap())
    );
}

/// `--ip-masq` in a dual-stack network: flannel's rules for both families, as nft lists them;
/// pod to pod keeps the pod's address over TCP in both families; a pod reaching a host
/// outside the cluster over IPv6 (the router, which has no route to any pod) is seen as its
/// node.
#[test]
fn dual_stack_masquerade_keeps_pod_addresses_inside_and_hides_them_outside() {
    let mut c = Cluster::new(LabSpec::new(unique("dsfw"), 2).ipv6(true));
    let nodes = boot(&mut c, DUAL_VXLAN, &["--ip-masq", "--iptables-resync=1"]);
    wait_converged6(&c, &nodes, tunnelled6);
    let (v4, v6) = (nodes[0].v4.as_ref().unwrap(), &nodes[0].v6);
    let golden = FirewallSpec {
        v4: Some(Nets {
            network: "10.244.0.0/16".parse().unwrap(),
            pod_subnet: v4.0.parse().unwrap(),
        }),
        v6: Some(Nets {
            network: "fd10:244::/56".parse().unwrap(),
            pod_subnet: v6.0.parse().unwrap(),
        }),
        masquerade: true,
        fully_random: true,
        forward: true,
        guard: Some(Guard { port: 8472 }),
    }
    .render_table(&[IpAddr::V4(nodes[1].public), IpAddr::V6(nodes[1].public6)]);
    poll("node1's table as rendered", Duration::from_secs(10), || {
        let out = c
            .lab
            .exec("node1", &["nft", "-s", "list", "table", "inet", "podnet"])
            .unwrap();
        (String::from_utf8_lossy(&out.stdout) == golden).then_some(())
    });
    let srv = c.add_pod("node1", "srv", "1.0.0");
    let cli = c.add_pod("node2", "cli", "1.0.0");
    reaches_over_ipv6_as_itself(&c, &cli, &srv);
    assert_eq!(
        seen_as(&c, &cli.target(), IpAddr::V4(srv.ip), &srv.target()),
        IpAddr::V4(cli.ip)
    );
    let router6 = IpAddr::V6(c.lab.plan().segments[0].router6.unwrap());
    assert_eq!(
        seen_as(&c, &cli.target(), router6, "router"),
        IpAddr::V6(nodes[1].public6)
    );
}

/// node1's podnetd restarts twice under a 10 ms IPv6 ping between the nodes' subnets: not one
/// packet is lost, and the IPv6 VTEP keeps its MAC.
#[test]
fn a_restart_under_ping6_loses_nothing() {
    let mut c = Cluster::new(LabSpec::new(unique("dsrst"), 2).ipv6(true));
    let nodes = boot(&mut c, DUAL_VXLAN, &[]);
    wait_converged6(&c, &nodes, tunnelled6);
    bridges_that_answer(&c, &nodes);
    let mac = c.ip_json("node1", &["link", "show", "flannel-v6.1"])[0]["address"].clone();
    let (src, dst) = (nodes[1].gw6(), nodes[0].gw6());
    c.restart_twice_under_ping("node1", ("node2", &src, &dst), |c| {
        assert_eq!(
            routes6(c, "node1").len(),
            1,
            "the IPv6 route stays while stopped"
        );
    });
    c.wait_ready("node1");
    assert_eq!(
        c.ip_json("node1", &["link", "show", "flannel-v6.1"])[0]["address"],
        mac
    );
}

/// IPv6-only: the tunnel guard admits VXLAN packets from IPv6 peers and drops forged ones from
/// an IPv6 host that holds no lease.
#[test]
fn the_tunnel_guard_covers_ipv6_peers() {
    let mut c = Cluster::new(LabSpec::new(unique("v6tg"), 2).ipv6(true));
    let nodes = boot(&mut c, V6_ONLY_VXLAN, &[]);
    wait_converged6(&c, &nodes, tunnelled6);
    bridges_that_answer(&c, &nodes);
    let set = ok(c
        .lab
        .exec(
            "node1",
            &["nft", "list", "set", "inet", "podnet", "tunnel-peers-v6"],
        )
        .unwrap());
    assert!(set.contains(&nodes[1].public6.to_string()), "{set}");
    let before = c.guard_drops("node1");
    let target = SocketAddr::new(IpAddr::V6(nodes[0].public6), 8472);
    c.lab
        .netns("router")
        .unwrap()
        .run(|| {
            let s = std::net::UdpSocket::bind("[2001:2::1]:0").unwrap();
            let mut frame = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
            frame.extend_from_slice(&[0xff; 64]);
            for _ in 0..3 {
                s.send_to(&frame, target).unwrap();
            }
        })
        .unwrap();
    poll(
        "the forged IPv6 packets to be counted",
        Duration::from_secs(5),
        || (c.guard_drops("node1") >= before + 3).then_some(()),
    );
    let after = c.guard_drops("node1");
    assert!(ping(&c, &nodes[1], &nodes[1].gw6(), &nodes[0].gw6(), &[]));
    assert_eq!(
        c.guard_drops("node1"),
        after,
        "a peer's packets are not dropped"
    );
}

/// `--public-ipv6` is published as given; host-gw, which cannot work behind NAT, refuses one
/// that is not the interface's own, naming the family.
#[test]
fn public_ipv6_is_published_and_host_gw_refuses_a_foreign_one() {
    let mut c = Cluster::new(LabSpec::new(unique("dspub"), 1).ipv6(true));
    c.put_config(DUAL_HOST_GW);
    let (code, log) = c.run_podnetd(
        "node1",
        &["--public-ipv6=2001:2::99"],
        Duration::from_secs(30),
    );
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("host-gw needs the public IPv6 address to be the interface's own (public 2001:2::99, eth0 has 2001:2::b)"),
        "{log}"
    );
    c.put_config(DUAL_VXLAN);
    // vxlan behind a (pretended) NAT: the given address is the one peers are told.
    c.start("node1", &["--public-ipv6=2001:2::99"]);
    c.wait_ready("node1");
    let (_, v) = c.leases().into_iter().next().unwrap();
    assert!(v.contains(r#""PublicIPv6":"2001:2::99""#), "{v}");
}

/// The IPv6 address of `flannel-v6.1`, deleted by hand, is back at once on the kernel's
/// notification (the safety net is set to ten minutes here, so it cannot be what repairs it).
#[test]
fn the_ipv6_device_address_comes_back_on_the_notification() {
    let mut c = Cluster::new(LabSpec::new(unique("dsaddr"), 2).ipv6(true));
    let nodes = boot(&mut c, V6_ONLY_VXLAN, &["--resync-period=10m"]);
    wait_converged6(&c, &nodes, tunnelled6);
    let own = format!("{}/128", nodes[0].v6.1);
    let has = |c: &Cluster| {
        let a = c.ip_json(
            "node1",
            &[
                "-6",
                "addr",
                "show",
                "dev",
                "flannel-v6.1",
                "scope",
                "global",
            ],
        );
        a.to_string().contains(&nodes[0].v6.1.to_string())
    };
    assert!(has(&c));
    ok(c.lab
        .exec(
            "node1",
            &["ip", "-6", "addr", "del", &own, "dev", "flannel-v6.1"],
        )
        .unwrap());
    poll("the IPv6 address back", Duration::from_secs(10), || {
        has(&c).then_some(())
    });
}

/// `podnetctl doctor` on a dual-stack node: healthy, every check passes (the IPv4 device being
/// 20 bytes larger than `FLANNEL_MTU` included); IPv6 forwarding, IPv6 bridge filtering and an
/// IPv6 address outside the subnet on the bridge each fail their check.
#[test]
fn doctor_checks_both_families_on_a_dual_stack_node() {
    use crate::ops::{doctor, fails_until_fixed, start_with_socket, verdict};
    let mut c = Cluster::new(LabSpec::new(unique("dsdoc"), 2).ipv6(true));
    c.put_config(DUAL_VXLAN);
    let quiet = ["--resync-period=1h", "--kernel-events=false"];
    start_with_socket(&mut c, "node1", &quiet);
    start_with_socket(&mut c, "node2", &[]);
    let nodes = [ready_node(&c, "node1"), ready_node(&c, "node2")];
    fake_cni0(&c, &nodes[0]);
    wait_converged6(&c, &nodes, tunnelled6);
    let healthy = doctor(&c, "node1");
    for (name, (v, d)) in &healthy {
        assert_eq!(v, "pass", "{name}: {d}");
    }
    assert!(
        healthy["ip-forward"]
            .1
            .contains("net.ipv6.conf.all.forwarding = 1"),
        "{healthy:?}"
    );
    assert!(
        healthy["br-netfilter"]
            .1
            .contains("bridge-nf-call-ip6tables = 1")
    );

    fails_until_fixed(
        &c,
        "sysctl -qw net.ipv6.conf.all.forwarding=0",
        "ip-forward",
        "net.ipv6.conf.all.forwarding = 0",
        "sysctl -qw net.ipv6.conf.all.forwarding=1",
    );
    fails_until_fixed(
        &c,
        "sysctl -qw net.bridge.bridge-nf-call-ip6tables=0",
        "br-netfilter",
        "bridge-nf-call-ip6tables = 0",
        "sysctl -qw net.bridge.bridge-nf-call-ip6tables=1",
    );
    fails_until_fixed(
        &c,
        "ip addr add fd10:244:0:ff::1/64 dev cni0 nodad",
        "bridge-address",
        "cni0 has fd10:244:0:ff::1/64 outside this node's subnet",
        "ip addr del fd10:244:0:ff::1/64 dev cni0",
    );
    fails_until_fixed(
        &c,
        "ip link set flannel.1 mtu 1420",
        "mtu",
        "flannel.1 has MTU 1420 but subnet.env says 1430",
        "ip link set flannel.1 mtu 1450",
    );
    fails_until_fixed(
        &c,
        "ip link set flannel-v6.1 mtu 1400",
        "mtu",
        "flannel-v6.1 has MTU 1400 but subnet.env says 1430",
        "ip link set flannel-v6.1 mtu 1430",
    );
    verdict(&c, "node1", "mtu", "pass", "agree on 1430");
}

/// A dual-stack lease's value as vxlan writes it, with the IPv6 half's fields given.
fn dual_value(public6: Option<&str>, mac6: &str) -> String {
    let p6 = public6.map_or("null".to_string(), |p| format!("\"{p}\""));
    format!(
        r#"{{"PublicIP":"198.18.0.66","PublicIPv6":{p6},"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:66:00:00:00:99"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
    )
}

/// What node has for podnet's peers, both families: routes, and the IPv6 device's neighbours
/// and FDB entries.
fn podnet_state(c: &Cluster, node: &str) -> String {
    let routes4 = c.ip_json(node, &["-4", "route", "show", "proto", "86"]);
    let neigh = c.ip_json(node, &["-6", "neigh", "show", "dev", "flannel-v6.1"]);
    format!(
        "{routes4}\n{:?}\n{neigh}\n{:?}",
        routes6(c, node),
        fdb(c, node, "flannel-v6.1")
    )
}

/// Forged leases whose IPv6 half is hostile: each is refused with a reason naming the field
/// and value, none reaches the kernel, and both families keep carrying traffic.
#[test]
fn forged_ipv6_halves_are_refused_and_nothing_reaches_the_kernel() {
    use crate::hostile::{put, refused};
    use crate::ops::start_with_socket;
    let mut c = Cluster::new(LabSpec::new(unique("dsfg"), 3).ipv6(true));
    c.put_config(DUAL_VXLAN);
    for n in ["node1", "node2"] {
        start_with_socket(&mut c, n, &[]);
    }
    let nodes = [ready_node(&c, "node1"), ready_node(&c, "node2")];
    for n in &nodes {
        fake_cni0(&c, n);
    }
    wait_converged6(&c, &nodes, tunnelled6);
    every_gateway_answers(&c, &nodes);
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let key2 = format!(
        "{}&{}",
        n2.v4.as_ref().unwrap().0.replace('/', "-"),
        n2.v6.0.replace('/', "-")
    );
    let mac6_2 = lease_values(&c)[&key2]["BackendV6Data"]["VtepMAC"]
        .as_str()
        .unwrap()
        .to_string();
    let before = podnet_state(&c, "node1");
    let own6 = n1.public6.to_string();
    let fresh = |i: u8| format!("02:66:00:00:01:{i:02x}");
    let n2_v6 = n2.v6.0.replace('/', "-");
    let forged: Vec<(String, String, String)> = vec![
        (
            "10.244.210.0-24&fd10:244::-56".into(),
            dual_value(Some("2001:2::66"), &fresh(1)),
            "overlaps this node's".into(),
        ),
        (
            "10.244.211.0-24&fd10:244:0:ee::-64".into(),
            dual_value(Some(&own6), &fresh(2)),
            format!("public address {own6} is this node's own"),
        ),
        (
            "10.244.212.0-24&fd10:244:0:ef::-64".into(),
            dual_value(Some("2001:2::66"), &mac6_2),
            format!("VtepMAC {mac6_2} is already the older lease {key2}'s"),
        ),
        (
            "10.244.213.0-24&fd10:244:0:f0::1-64".into(),
            dual_value(Some("2001:2::66"), &fresh(4)),
            "subnet fd10:244:0:f0::1/64 has host bits set".into(),
        ),
        (
            "10.244.214.0-24&fd10:245::-64".into(),
            dual_value(Some("2001:2::66"), &fresh(5)),
            "subnet fd10:245::/64 is outside IPv6Network fd10:244::/56".into(),
        ),
        (
            "10.244.215.0-24&fd10:244:0:f1::-64".into(),
            dual_value(Some("::1"), &fresh(6)),
            "public address ::1 cannot be a node's".into(),
        ),
        (
            "10.244.216.0-24&fd10:244:0:f2::-64".into(),
            dual_value(None, &fresh(7)),
            "IPv6 subnet fd10:244:0:f2::/64 without a PublicIPv6".into(),
        ),
        (
            "10.244.217.0-24&fd10:244:0:f3::-64".into(),
            dual_value(Some("2001:2::66"), "ff:ff:ff:ff:ff:ff"),
            "VtepMAC ff:ff:ff:ff:ff:ff is not a unicast address".into(),
        ),
        (
            format!("10.244.218.0-24&{n2_v6}"),
            dual_value(Some("2001:2::66"), &fresh(9)),
            format!("overlaps the older lease {key2}"),
        ),
    ];
    for (k, v, _) in &forged {
        put(&c, k, v);
    }
    let seen = poll(
        "node1 to refuse the forgeries",
        Duration::from_secs(10),
        || {
            let r = refused(&c, "node1");
            (r.len() == forged.len()).then_some(r)
        },
    );
    let text = seen.join("\n");
    for (k, _, why) in &forged {
        assert!(
            seen.iter()
                .any(|l| l.contains(k.as_str()) && l.contains(why.as_str())),
            "{k}: {why:?} not in\n{text}"
        );
    }
    assert_eq!(
        podnet_state(&c, "node1"),
        before,
        "nothing forged in the kernel"
    );
    every_gateway_answers(&c, &nodes);
    // A node joining now still gets a subnet of each family: what the forgeries hold (the
    // whole IPv6 network among them) keeps nothing from it.
    c.start("node3", &[]);
    let n3 = ready_node(&c, "node3");
    assert!(n3.v4.is_some(), "node3 got an IPv4 subnet");
}

/// Without `--ip-masq` the plugin masquerades (flannel's default), for both families: its
/// table holds a set and a rule per family, a pod reaching an outside IPv6 host is seen with
/// its node's address while pod to pod keeps the pod's, and DEL empties both sets.
#[test]
fn the_plugin_masquerades_both_families() {
    let mut c = Cluster::new(LabSpec::new(unique("dspm"), 2).ipv6(true));
    let nodes = boot(&mut c, DUAL_VXLAN, &[]);
    wait_converged6(&c, &nodes, tunnelled6);
    let srv = c.add_pod("node1", "srv", "1.0.0");
    let cli = c.add_pod("node2", "cli", "1.0.0");
    let cli6 = cli.ip6.unwrap();
    let listing = |c: &Cluster| {
        ok(c.lab
            .exec("node2", &["nft", "list", "table", "inet", "podnet-cni"])
            .unwrap())
    };
    let table = |elements: Option<(String, String)>| {
        let (e4, e6) = match elements {
            Some((a, b)) => (
                format!("\t\telements = {{ {a} }}\n"),
                format!("\t\telements = {{ {b} }}\n"),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            "table inet podnet-cni {{
\tset masq-pods {{
\t\ttype ipv4_addr
{e4}\t}}

\tset masq-pods-v6 {{
\t\ttype ipv6_addr
{e6}\t}}

\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat + 1; policy accept;
\t\tip saddr @masq-pods ip daddr != {{ 10.244.0.0/16, 224.0.0.0/4 }} masquerade comment \"pod ipMasq\"
\t\tip6 saddr @masq-pods-v6 ip6 daddr != {{ fd10:244::/56, ff00::/8 }} masquerade comment \"pod ipMasq\"
\t}}
}}
"
        )
    };
    assert_eq!(
        listing(&c),
        table(Some((cli.ip.to_string(), cli6.to_string())))
    );
    // A second pod's ADD finds both rules in place and adds its two elements alone.
    let rules = masq_rule_handles(&c, "node2");
    assert_eq!(rules.len(), 2, "{rules:?}");
    let cli2 = c.add_pod("node2", "cli2", "1.0.0");
    assert_eq!(masq_rule_handles(&c, "node2"), rules);
    let (code, msg) = c.del_pod(&cli2, &cli2.netns);
    assert_eq!(code, 0, "{msg}");
    assert_eq!(
        listing(&c),
        table(Some((cli.ip.to_string(), cli6.to_string())))
    );
    reaches_over_ipv6_as_itself(&c, &cli, &srv);
    let router6 = IpAddr::V6(c.lab.plan().segments[0].router6.unwrap());
    assert_eq!(
        seen_as(&c, &cli.target(), router6, "router"),
        IpAddr::V6(nodes[1].public6)
    );
    let (code, msg) = c.del_pod(&cli, &cli.netns);
    assert_eq!(code, 0, "{msg}");
    assert_eq!(listing(&c), table(None));
}

/// host-gw, dual-stack, pods from the CNI plugin on three nodes of one segment: full-size
/// (1500-byte) DF pings cross between every two pods in both families, and so does TCP, the
/// server seeing the client pod's own address.
#[test]
fn dual_stack_host_gw_pods_reach_each_other_over_tcp() {
    let mut c = Cluster::new(LabSpec::new(unique("dshgp"), 3).ipv6(true));
    let nodes = boot(&mut c, DUAL_HOST_GW, &[]);
    wait_converged6(&c, &nodes, direct6);
    let pods: Vec<_> = nodes
        .iter()
        .map(|n| c.add_pod(&n.name, "a", "1.0.0"))
        .collect();
    for a in &pods {
        for b in pods.iter().filter(|b| b.node != a.node) {
            let (own, dsts) = (
                [IpAddr::V4(a.ip), IpAddr::V6(a.ip6.unwrap())],
                [IpAddr::V4(b.ip), IpAddr::V6(b.ip6.unwrap())],
            );
            for (own, dst) in own.into_iter().zip(dsts) {
                let d = dst.to_string();
                let size = (1500 - if dst.is_ipv4() { 28 } else { 48 }).to_string();
                // Polled: the first packet may wait for the underlay's neighbour discovery.
                let what = format!("{} -> {d}: 1500 bytes with DF", a.target());
                poll(&what, Duration::from_secs(10), || {
                    let argv = ["ping", "-c1", "-W2", "-M", "do", "-s", &size, &d];
                    let out = c.lab.exec(&a.target(), &argv).unwrap();
                    out.status.success().then_some(())
                });
                assert_eq!(seen_as(&c, &a.target(), dst, &b.target()), own, "{what}");
            }
        }
    }
}
