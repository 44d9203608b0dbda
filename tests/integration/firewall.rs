//! Masquerade, forwarding and the tunnel guard, observed the way a user would: who a server
//! sees as the client, what `nft` lists, which packets a counter saw.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use podnet::daemon::firewall::normalize;
use podnet::firewall::{FirewallSpec, Guard, Nets};
use podnet::kernel::nft;

use crate::cluster::{Cluster, PREFIX, Pod, masq_rule_handles};
use crate::support::{self, ok, poll};

/// Starts a one-shot TCP server inside `target`'s namespace; returns its port and the client
/// address it will report.
fn server(c: &Cluster, target: &str) -> (u16, std::sync::mpsc::Receiver<SocketAddr>) {
    let ns = c.lab.netns(target).unwrap();
    let listener = ns.run(|| TcpListener::bind("0.0.0.0:0")).unwrap().unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((_, peer)) = listener.accept() {
            let _ = tx.send(peer);
        }
    });
    (port, rx)
}

/// Connects from `target` to `dst:port` and returns the source address the server saw.
fn seen_as(c: &Cluster, target: &str, dst: Ipv4Addr, server_target: &str) -> Ipv4Addr {
    let (port, rx) = server(c, server_target);
    let ns = c.lab.netns(target).unwrap();
    let addr = SocketAddr::from((dst, port));
    let _stream: TcpStream = ns
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .unwrap()
        .unwrap_or_else(|e| panic!("{target} -> {addr}: {e}"));
    match rx.recv_timeout(Duration::from_secs(5)).unwrap().ip() {
        std::net::IpAddr::V4(v4) => v4,
        other => panic!("unexpected {other}"),
    }
}

const OUTSIDE: &str = "198.19.200.2";

/// An "outside" host reachable only through node1 (198.19.200.0/24 on a link of its own).
fn outside(c: &mut Cluster) -> String {
    c.lab.pod_add("node1", "outside").unwrap();
    let ns = c.lab.plan().pod_netns("node1", "outside");
    for (target, cmd) in [
        (
            "node1",
            format!("ip link add out0 type veth peer name eth0 netns {ns}"),
        ),
        ("node1", "ip addr add 198.19.200.1/24 dev out0".into()),
        ("node1", "ip link set out0 up".into()),
        (
            "node1/outside",
            format!("ip addr add {OUTSIDE}/24 dev eth0"),
        ),
        ("node1/outside", "ip link set eth0 up".into()),
        ("node1/outside", "ip link set lo up".into()),
        (
            "node1/outside",
            "ip route add default via 198.19.200.1".into(),
        ),
        (
            "router",
            "ip route add 198.19.200.0/24 via 198.18.0.11".into(),
        ),
    ] {
        let argv: Vec<&str> = cmd.split(' ').collect();
        ok(c.lab.exec(target, &argv).unwrap());
    }
    "node1/outside".to_string()
}

fn docker_rule(c: &Cluster, node: &str, subnet: &str) {
    for rule in [
        "add table ip nat".to_string(),
        "add chain ip nat POSTROUTING { type nat hook postrouting priority srcnat; policy accept; }".to_string(),
        format!("add rule ip nat POSTROUTING ip saddr {subnet} oifname != \"docker0\" masquerade"),
    ] {
        ok(c.lab.exec(node, &["nft", &rule]).unwrap());
    }
}

fn source_addresses(config: &str) {
    let mut c = Cluster::small("fw", 2);
    c.put_config(config);
    for n in ["node1", "node2"] {
        c.start(n, &["--ip-masq", "--iptables-resync=1"]);
    }
    let env2 = c.wait_ready("node2");
    c.wait_ready("node1");
    assert!(
        std::fs::read_to_string(c.env_path("node2"))
            .unwrap()
            .contains("FLANNEL_IPMASQ=true")
    );
    let srv: Pod = c.add_pod("node1", "srv", "1.0.0");
    let cli: Pod = c.add_pod("node2", "cli", "1.0.0");
    let out = outside(&mut c);
    // Pod to pod across nodes: the server sees the client pod.
    poll("pod-to-pod connectivity", Duration::from_secs(10), || {
        c.lab
            .exec(&cli.target(), &["ping", "-c1", "-W1", &srv.ip.to_string()])
            .unwrap()
            .status
            .success()
            .then_some(())
    });
    assert_eq!(seen_as(&c, &cli.target(), srv.ip, &srv.target()), cli.ip);
    // Pod to the outside: the server sees node2.
    assert_eq!(
        seen_as(&c, &cli.target(), OUTSIDE.parse().unwrap(), &out),
        "198.18.0.12".parse::<Ipv4Addr>().unwrap()
    );

    // Someone adds Docker's classic rule on node2: podnetd says so, and sources are rewritten.
    let subnet = env2.subnet.unwrap().trunc().to_string();
    docker_rule(&c, "node2", &subnet);
    let log = c.wait_log(
        &c.podnetd("node2"),
        "a masquerade rule outside podnet rewrites pod-to-pod traffic",
        Duration::from_secs(10),
    );
    assert!(
        log.contains("table ip nat chain POSTROUTING handle")
            && log.contains(&format!("ip saddr == {subnet}")),
        "{log}"
    );
    assert_ne!(
        seen_as(&c, &cli.target(), srv.ip, &srv.target()),
        cli.ip,
        "the foreign rule should rewrite the source"
    );
    // Removed: the pod's address is seen again.
    ok(c.lab
        .exec("node2", &["nft", "delete", "table", "ip", "nat"])
        .unwrap());
    c.wait_log(
        &c.podnetd("node2"),
        "pod addresses are preserved again",
        Duration::from_secs(10),
    );
    assert_eq!(seen_as(&c, &cli.target(), srv.ip, &srv.target()), cli.ip);
}

#[test]
fn sources_preserved_in_the_cluster_and_masqueraded_outside_with_vxlan() {
    source_addresses(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
}

#[test]
fn sources_preserved_in_the_cluster_and_masqueraded_outside_with_host_gw() {
    source_addresses(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#);
}

#[test]
fn the_ruleset_is_golden_restored_and_replaced_on_config_change() {
    let mut c = Cluster::small("fwg", 2);
    c.put_config(r#"{"Network":"10.244.0.0/17","Backend":{"Type":"vxlan"}}"#);
    let args = ["--ip-masq", "--iptables-resync=1"];
    c.start("node1", &args);
    c.start("node2", &args);
    let subnet1 = c.wait_ready("node1").subnet.unwrap().trunc();
    c.wait_ready("node2");
    let golden =
        vxlan_node_spec("10.244.0.0/17", subnet1).render_table(&["198.18.0.12".parse().unwrap()]);
    // Empty while the table is missing.
    let listing = |c: &Cluster| {
        let out = c
            .lab
            .exec("node1", &["nft", "-s", "list", "table", "inet", "podnet"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    poll("node2 in the tunnel guard", Duration::from_secs(10), || {
        (listing(&c) == golden).then_some(())
    });
    // Deleted by hand: back within the resync period.
    ok(c.lab
        .exec("node1", &["nft", "delete", "table", "inet", "podnet"])
        .unwrap());
    poll("the table restored", Duration::from_secs(5), || {
        (listing(&c) == golden).then_some(())
    });
    // The log line may follow the repair by a moment.
    c.wait_log(
        &c.podnetd("node1"),
        "podnet's nftables rules were changed or removed; restored them",
        Duration::from_secs(5),
    );
    // A rule changed by hand is put back too.
    ok(c.lab
        .exec(
            "node1",
            &["nft", "flush", "chain", "inet", "podnet", "postrouting"],
        )
        .unwrap());
    poll("the chain restored", Duration::from_secs(5), || {
        (listing(&c) == golden).then_some(())
    });
    // Nothing outside podnet's table was touched.
    let tables = ok(c.lab.exec("node1", &["nft", "list", "tables"]).unwrap());
    assert_eq!(tables.trim(), "table inet podnet");

    // A new network: the old rules go with the old config.
    let rec = c.podnetd("node1");
    c.lab.stop(rec.id.pid).unwrap();
    c.put_config(r#"{"Network":"10.244.128.0/17","Backend":{"Type":"vxlan"}}"#);
    std::fs::remove_file(c.env_path("node1")).unwrap();
    c.start("node1", &args);
    c.wait_ready("node1");
    let l = listing(&c);
    assert!(
        l.contains("10.244.128.0/17") && !l.contains("10.244.0.0/17"),
        "{l}"
    );
}

/// A host-gw node has no tunnel guard, so its peers are no elements of any set: the table as
/// listed is the table as wanted, and the checks leave it alone.
#[test]
fn a_host_gw_table_with_peers_is_left_alone() {
    let mut c = Cluster::small("fwh", 2);
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#);
    let args = ["--iptables-resync=1"];
    c.start("node1", &args);
    c.start("node2", &args);
    c.wait_ready("node1");
    let peer = c.wait_ready("node2").subnet.unwrap().trunc().to_string();
    // The peer is known (by an event or by the first listing, whichever came first).
    poll("node1's route to node2", Duration::from_secs(20), || {
        let routes = ok(c.lab.exec("node1", &["ip", "route"]).unwrap());
        routes.contains(&peer).then_some(())
    });
    // Three checks' worth of time with a peer known.
    std::thread::sleep(Duration::from_secs(3));
    let log = c.log(&c.podnetd("node1"));
    assert!(
        !log.contains("restored them"),
        "nobody touched the table, yet it was 'restored':\n{log}"
    );
}

#[test]
fn the_tunnel_guard_admits_peers_only() {
    let mut c = Cluster::small("fwt", 3);
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    c.start("node1", &[]);
    c.start("node2", &[]);
    c.wait_ready("node1");
    c.wait_ready("node2");
    let a = c.add_pod("node1", "a", "1.0.0");
    let b = c.add_pod("node2", "b", "1.0.0");
    let ping = |c: &Cluster, from: &Pod, to: Ipv4Addr| {
        c.lab
            .exec(&from.target(), &["ping", "-c1", "-W1", &to.to_string()])
            .unwrap()
            .status
            .success()
    };
    poll("peers' tunnel traffic", Duration::from_secs(10), || {
        ping(&c, &a, b.ip).then_some(())
    });
    let before = c.guard_drops("node1");
    // A forged VXLAN packet from the router, which holds no lease.
    let rt = c.lab.netns("router").unwrap();
    rt.run(|| {
        let s = UdpSocket::bind("198.18.0.1:0").unwrap();
        let mut frame = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        frame.extend_from_slice(&[0xff; 64]);
        for _ in 0..3 {
            s.send_to(&frame, "198.18.0.11:8472").unwrap();
        }
    })
    .unwrap();
    poll(
        "the forged packets to be counted",
        Duration::from_secs(5),
        || (c.guard_drops("node1") >= before + 3).then_some(()),
    );
    // Peers still pass, and are not counted as drops.
    let after_forgery = c.guard_drops("node1");
    assert!(ping(&c, &a, b.ip));
    assert_eq!(c.guard_drops("node1"), after_forgery);
    // A new node: its traffic passes as soon as node1 has seen its lease.
    c.start("node3", &[]);
    c.wait_ready("node3");
    let n3 = c.add_pod("node3", "n", "1.0.0");
    poll("the new peer's traffic", Duration::from_secs(10), || {
        ping(&c, &a, n3.ip).then_some(())
    });
    assert_eq!(c.guard_drops("node1"), after_forgery);
    let set = ok(c
        .lab
        .exec(
            "node1",
            &["nft", "list", "set", "inet", "podnet", "tunnel-peers"],
        )
        .unwrap());
    assert!(
        set.contains("198.18.0.13") && set.contains("198.18.0.12"),
        "{set}"
    );
    // A peer that leaves is taken out of the set again.
    let rec = c.podnetd("node3");
    c.lab.stop(rec.id.pid).unwrap();
    let key = format!(
        "{PREFIX}/subnets/{}-24",
        c.wait_ready("node3").subnet.unwrap().trunc().network()
    );
    c.etcdctl(&["del", &key]);
    poll("node3 out of the guard", Duration::from_secs(10), || {
        let set = ok(c
            .lab
            .exec(
                "node1",
                &["nft", "list", "set", "inet", "podnet", "tunnel-peers"],
            )
            .unwrap());
        (!set.contains("198.18.0.13")).then_some(())
    });
}

/// The plugin's own masquerade (`ipMasq` in effect because podnetd runs without `--ip-masq`),
/// written over nfnetlink: listed by nft as the golden table, one element per pod, and pods
/// seen as their node outside the cluster network and as themselves inside it.
#[test]
fn the_plugins_masquerade_is_golden_and_follows_its_pods() {
    let mut c = Cluster::small("fwp", 2);
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    c.start("node1", &[]);
    c.start("node2", &[]);
    c.wait_ready("node1");
    c.wait_ready("node2");
    let srv: Pod = c.add_pod("node1", "srv", "1.0.0");
    let cli: Pod = c.add_pod("node2", "cli", "1.0.0");
    let rule = masq_rule_handle(&c);
    let cli2: Pod = c.add_pod("node2", "cli2", "1.0.0");
    // The second ADD found the table in place and added its pod alone: the rule is the same.
    assert_eq!(masq_rule_handle(&c), rule);
    let out = outside(&mut c);
    // The listing without its elements line, and the elements (in whatever order nft lists).
    let listing = |c: &Cluster| {
        let text = ok(c
            .lab
            .exec(
                "node2",
                &["nft", "-s", "list", "table", "inet", "podnet-cni"],
            )
            .unwrap());
        let mut elements: Vec<String> = Vec::new();
        let mut rest = String::new();
        for line in text.lines() {
            match line.trim().strip_prefix("elements = {") {
                Some(list) => elements.extend(
                    list.trim_end_matches('}')
                        .split(',')
                        .map(|e| e.trim().to_string()),
                ),
                None => rest.push_str(&format!("{line}\n")),
            }
        }
        elements.sort();
        (rest, elements)
    };
    let golden = "table inet podnet-cni {
\tset masq-pods {
\t\ttype ipv4_addr
\t}

\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat + 1; policy accept;
\t\tip saddr @masq-pods ip daddr != { 10.244.0.0/16, 224.0.0.0/4 } masquerade comment \"pod ipMasq\"
\t}
}
";
    let table = |ips: &[Ipv4Addr]| {
        let mut v: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
        v.sort();
        (golden.to_string(), v)
    };
    assert_eq!(listing(&c), table(&[cli.ip, cli2.ip]));
    poll("pod-to-pod connectivity", Duration::from_secs(10), || {
        c.lab
            .exec(&cli.target(), &["ping", "-c1", "-W1", &srv.ip.to_string()])
            .unwrap()
            .status
            .success()
            .then_some(())
    });
    assert_eq!(seen_as(&c, &cli.target(), srv.ip, &srv.target()), cli.ip);
    assert_eq!(
        seen_as(&c, &cli.target(), OUTSIDE.parse().unwrap(), &out),
        "198.18.0.12".parse::<Ipv4Addr>().unwrap()
    );
    // DEL takes the pod out of the set, and twice is fine; the rule stays for the others.
    for _ in 0..2 {
        let (code, msg) = c.del_pod(&cli, &cli.netns);
        assert_eq!(code, 0, "{msg}");
    }
    assert_eq!(listing(&c), table(&[cli2.ip]));
    let (code, msg) = c.del_pod(&cli2, &cli2.netns);
    assert_eq!(code, 0, "{msg}");
    assert_eq!(listing(&c), table(&[]));

    // A transaction is all or nothing, and its error names the operation that failed: adding
    // one pod and removing another that is not there adds nothing.
    let mut b = nft::Batch::new(nft::NFPROTO_INET, "podnet-cni");
    let set = nft::SetRef::named("masq-pods");
    b.add_elements(&set, &[&[10, 244, 9, 9]]);
    b.delete_elements(&set, &[&[10, 244, 9, 10]]);
    let ns = c.lab.netns("node2").unwrap();
    let err = ns.run(|| nft::commit(&b.finish())).unwrap().unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    assert!(
        err.to_string()
            .contains("delete elements of set masq-pods (table inet podnet-cni)"),
        "{err}"
    );
    assert_eq!(listing(&c), table(&[]));

    // A table changed by hand is written whole again by the next ADD.
    ok(c.lab
        .exec(
            "node2",
            &["nft", "flush", "chain", "inet", "podnet-cni", "postrouting"],
        )
        .unwrap());
    let cli3: Pod = c.add_pod("node2", "cli3", "1.0.0");
    assert_eq!(listing(&c), table(&[cli3.ip]));
    // Only the plugin's table and podnetd's are there.
    let tables = ok(c.lab.exec("node2", &["nft", "list", "tables"]).unwrap());
    assert_eq!(tables.trim(), "table inet podnet\ntable inet podnet-cni");

    // A removal the kernel refuses (the set made again by hand, of IPv6 addresses): DEL fails
    // and keeps the address, so that its retry takes the step again; once the table is gone,
    // the retry succeeds and releases it.
    support::nft_f(
        &ns,
        "delete table inet podnet-cni
         add table inet podnet-cni
         add set inet podnet-cni masq-pods { type ipv6_addr; }
",
    );
    let (code, msg) = c.del_pod(&cli3, &cli3.netns);
    assert_ne!(code, 0, "{msg}");
    let want = format!("take {} out of the masquerade set", cli3.ip);
    assert!(msg.contains(&want), "{msg}");
    assert!(c.allocations("node2").contains(&cli3.ip.to_string()));
    support::nft_f(&ns, "delete table inet podnet-cni\n");
    let (code, msg) = c.del_pod(&cli3, &cli3.netns);
    assert_eq!(code, 0, "{msg}");
    assert!(!c.allocations("node2").contains(&cli3.ip.to_string()));
}

/// The handle of the plugin's masquerade rule on node2.
fn masq_rule_handle(c: &Cluster) -> String {
    let handles = masq_rule_handles(c, "node2");
    assert_eq!(handles.len(), 1, "one masquerade rule: {handles:?}");
    handles[0].clone()
}

/// `nft -s list table inet podnet` in a namespace, its set elements apart and sorted (nft lists
/// them in the kernel's order, and wraps long lists).
fn podnet_listing(ns: &podnet::kernel::netns::NetNs) -> (String, Vec<String>) {
    let out = ns
        .command("nft")
        .unwrap()
        .args(["-s", "list", "table", "inet", "podnet"])
        .output()
        .unwrap();
    normalize(&String::from_utf8_lossy(&out.stdout))
}

/// podnetd's table as it sends it over nfnetlink, read back with `nft`: the same listing as
/// the text it stands for, for every shape the table takes (IPv4, dual-stack, IPv6-only, with
/// and without guard, fully-random or not); replaced whole, and its guard changed one element
/// at a time. Every transaction is announced with the port id of the socket that sent it.
#[test]
fn the_daemons_table_over_netlink_lists_as_its_golden_text() {
    use std::net::IpAddr;
    let scratch = crate::support::ScratchNs::new();
    let ns = &scratch.ns;
    let v4 = Nets {
        network: "10.244.0.0/16".parse().unwrap(),
        pod_subnet: "10.244.3.0/24".parse().unwrap(),
    };
    let v6 = Nets {
        network: "fd10:244::/56".parse().unwrap(),
        pod_subnet: "fd10:244:0:3::/64".parse().unwrap(),
    };
    let full = FirewallSpec {
        v4: Some(v4),
        v6: None,
        masquerade: true,
        fully_random: true,
        forward: true,
        guard: Some(Guard { port: 8472 }),
    };
    let dual = FirewallSpec {
        v6: Some(v6),
        fully_random: false,
        ..full.clone()
    };
    let v6_only = FirewallSpec {
        v4: None,
        ..dual.clone()
    };
    let plain = FirewallSpec {
        guard: None,
        forward: false,
        ..full.clone()
    };
    let peers: [IpAddr; 3] = [
        "198.18.0.12".parse().unwrap(),
        "198.18.0.13".parse().unwrap(),
        "2001:2::12".parse().unwrap(),
    ];
    let (socket, mut events) = ns
        .run(|| {
            (
                nft::NftSocket::open().unwrap(),
                nft::NftEvents::subscribe().unwrap(),
            )
        })
        .unwrap();
    let first = ns.run(|| full.table_batch(&peers, false)).unwrap();
    assert!(!socket.table_exists(nft::NFPROTO_INET, "podnet").unwrap());
    socket.commit(&first).unwrap();
    assert!(socket.table_exists(nft::NFPROTO_INET, "podnet").unwrap());
    assert!(!socket.table_exists(nft::NFPROTO_IPV4, "podnet").unwrap());
    assert_eq!(podnet_listing(ns), normalize(&full.render_table(&peers)));
    for spec in [&dual, &v6_only, &plain, &full] {
        socket.commit(&spec.table_batch(&peers, true)).unwrap();
        let want = normalize(&spec.render_table(&peers));
        assert_eq!(podnet_listing(ns), want, "{spec:?}");
        // Read back over netlink: the objects of the transaction (what the daemon's check
        // compares), for every shape of the table.
        let family = nft::NFPROTO_INET;
        let sent = nft::dump::Ruleset::from_datagram(&spec.table_batch(&peers, false).bytes)
            .unwrap()
            .shape(family, "podnet");
        let dumped = socket.table(family, "podnet").unwrap().unwrap();
        assert_eq!(dumped.shape(family, "podnet"), sent, "{spec:?}");
    }
    // The guard, one element at a time; deleting one that is not there fails and says what.
    let newcomer: IpAddr = "198.18.0.14".parse().unwrap();
    socket
        .commit(&podnet::firewall::guard_add(newcomer))
        .unwrap();
    socket
        .commit(&podnet::firewall::guard_remove(peers[0]))
        .unwrap();
    assert_eq!(
        podnet_listing(ns),
        normalize(&full.render_table(&[peers[1], newcomer, peers[2]]))
    );
    let err = socket
        .commit(&podnet::firewall::guard_remove(peers[0]))
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    assert!(
        err.to_string()
            .contains("delete elements of set tunnel-peers (table inet podnet)"),
        "{err}"
    );
    // Nothing wanted: the replace removes the table.
    let empty = FirewallSpec {
        masquerade: false,
        ..plain.clone()
    };
    socket.commit(&empty.table_batch(&[], true)).unwrap();
    assert_eq!(podnet_listing(ns), normalize(""));
    // Eight transactions committed, each announced with the socket's port id; one by `nft`,
    // with another.
    ok(ns
        .command("nft")
        .unwrap()
        .args(["add", "table", "inet", "other"])
        .output()
        .unwrap());
    let mut seen = Vec::new();
    poll(
        "nine announced transactions",
        Duration::from_secs(10),
        || {
            seen.extend(events.recv().unwrap().commits);
            (seen.len() >= 9).then_some(())
        },
    );
    let ports: Vec<bool> = seen.iter().map(|c| c.port == socket.port()).collect();
    assert_eq!(
        ports,
        [true, true, true, true, true, true, true, true, false]
    );
    let generation = socket.generation().unwrap();
    assert_eq!(generation, seen[8].generation);
    // `podnetctl teardown`'s delete: true once, then false.
    let deleted = ns
        .run(|| {
            [
                nft::delete_table("inet", "other").unwrap(),
                nft::delete_table("inet", "other").unwrap(),
            ]
        })
        .unwrap();
    assert_eq!(deleted, [true, false]);
    assert_eq!(
        ok(ns
            .command("nft")
            .unwrap()
            .args(["list", "tables"])
            .output()
            .unwrap()),
        ""
    );
}

/// Other software's tables, as the dump reader and the foreign-rule walk meet them: Docker's
/// masquerade, kube-proxy's marked-only masquerade behind a jump, a goto into a chain that
/// SNATs what a named interval set holds, a rule reading what the walk does not model, an
/// anonymous set, and a counted, commented rule that saw packets.
pub const FOREIGN_SCRIPT: &str = r#"
table ip nat {
    chain POSTROUTING {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 10.244.3.0/24 oifname != "docker0" counter masquerade
    }
}
table ip kube {
    chain KUBE-POSTROUTING {
        meta mark & 0x00004000 != 0x00004000 return
        masquerade fully-random
    }
    chain POSTROUTING {
        type nat hook postrouting priority srcnat + 1; policy accept;
        ip saddr 10.244.3.0/24 ip daddr != 10.244.0.0/16 oifname != "docker0" masquerade
        jump KUBE-POSTROUTING
    }
}
table inet custom {
    set pods {
        type ipv4_addr
        flags interval
        elements = { 10.244.0.0/16 }
    }
    chain CUSTOM {
        ip saddr @pods snat ip to 198.18.0.11
    }
    chain POSTROUTING {
        type nat hook postrouting priority 110; policy accept;
        meta l4proto tcp masquerade
        ip daddr { 10.96.0.0/12, 192.0.2.0/24 } masquerade
        oifname "flann*" goto CUSTOM
    }
    chain out {
        type filter hook output priority 0; policy accept;
        meta l4proto icmp counter comment "x/allow-b egress rule 0"
        meta l4proto icmp counter comment "x/allow-b egress rule 0"
    }
}
"#;

/// The whole ruleset read over nfnetlink is what `nft -j` lists: every table, chain (hook,
/// priority, policy), named set, rule (handle, comment, counter), in one generation; podnetd's
/// table has the shape of the transaction that wrote it, and keeps it only while unchanged.
/// With `PODNET_WRITE_FIXTURES=1` the dump's messages are written as the unit tests' fixture.
#[test]
fn the_ruleset_read_over_netlink_is_what_nft_lists() {
    use podnet::kernel::nft::dump::{Ruleset, Scope};
    let scratch = crate::support::ScratchNs::new();
    let ns = &scratch.ns;
    let spec = vxlan_node_spec("10.244.0.0/16", "10.244.3.0/24".parse().unwrap());
    let peers: Vec<std::net::IpAddr> = vec![
        "198.18.0.12".parse().unwrap(),
        "198.18.0.13".parse().unwrap(),
    ];
    let socket = ns.run(nft::NftSocket::open).unwrap().unwrap();
    socket.commit(&spec.table_batch(&peers, false)).unwrap();
    crate::support::nft_f(ns, FOREIGN_SCRIPT);
    let ping = ns
        .command("sh")
        .unwrap()
        .args(["-c", "ip link set lo up && ping -c 3 -i 0.2 -W 1 127.0.0.1"])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{ping:?}");

    let msgs = socket.dump_messages(Scope::All).unwrap();
    let dumped = nft::dump::parse_messages(&msgs).unwrap();
    let listed: serde_json::Value = serde_json::from_str(&ok(ns
        .command("nft")
        .unwrap()
        .args(["-j", "list", "ruleset"])
        .output()
        .unwrap()))
    .unwrap();
    if std::env::var_os("PODNET_WRITE_FIXTURES").is_some() {
        let hex: String = msgs
            .iter()
            .map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
            .collect();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/kernel/nft/dump/testdata/ruleset.hex"
        );
        std::fs::write(path, hex).unwrap();
    }
    assert_same_as_listed(&dumped, &listed);

    // podnetd's table: the shape of its transaction; not once a rule is gone.
    let family = nft::NFPROTO_INET;
    let wanted = Ruleset::from_datagram(&spec.table_batch(&peers, false).bytes)
        .unwrap()
        .shape(family, "podnet");
    let have = socket.table(family, "podnet").unwrap().unwrap();
    assert_eq!(have.shape(family, "podnet"), wanted);
    assert!(socket.table(nft::NFPROTO_IPV4, "podnet").unwrap().is_none());
    let handle = have
        .rules_of(family, "podnet", "forward")
        .next()
        .unwrap()
        .handle;
    crate::support::nft_f(
        ns,
        &format!("delete rule inet podnet forward handle {handle}\n"),
    );
    let have = socket.table(family, "podnet").unwrap().unwrap();
    assert_ne!(have.shape(family, "podnet"), wanted);

    // The policy engine's counters: summed by comment, as `nft -j` counts them.
    let rules = socket.rules(family, "custom").unwrap();
    let sums = nft::dump::counters_by_comment(&rules);
    let (packets, bytes) = sums["x/allow-b egress rule 0"];
    assert!(packets >= 12 && bytes > 0, "{sums:?}");
    assert!(socket.rules(family, "missing").unwrap().is_empty());
}

/// Asserts that every chain, named set and rule `nft -j` lists is in the dump with the same
/// facts, and nothing more.
fn assert_same_as_listed(dumped: &nft::dump::Ruleset, listed: &serde_json::Value) {
    let family = |name: &str| nft::family_code(name).unwrap();
    let items = listed["nftables"].as_array().unwrap();
    let (mut chains, mut sets, mut rules, mut tables) = (0, 0, 0, 0);
    for item in items {
        if let Some(t) = item.get("table") {
            tables += 1;
            let f = family(t["family"].as_str().unwrap());
            assert!(
                dumped
                    .tables
                    .iter()
                    .any(|d| d.family == f && d.name == t["name"]),
                "{t}"
            );
        }
        if let Some(c) = item.get("chain") {
            chains += 1;
            let f = family(c["family"].as_str().unwrap());
            let d = dumped
                .chain(f, c["table"].as_str().unwrap(), c["name"].as_str().unwrap())
                .unwrap_or_else(|| panic!("{c} not dumped"));
            assert_eq!(d.handle, c["handle"].as_u64().unwrap(), "{c}");
            match &d.base {
                Some(b) => {
                    assert_eq!(b.kind, c["type"].as_str().unwrap(), "{c}");
                    assert_eq!(i64::from(b.priority), c["prio"].as_i64().unwrap(), "{c}");
                    let hooks = ["prerouting", "input", "forward", "output", "postrouting"];
                    assert_eq!(hooks[b.hook as usize], c["hook"].as_str().unwrap(), "{c}");
                    let policy = if b.policy == 1 { "accept" } else { "drop" };
                    assert_eq!(policy, c["policy"].as_str().unwrap(), "{c}");
                }
                None => assert!(c.get("hook").is_none(), "{c}"),
            }
        }
        if let Some(s) = item.get("set") {
            sets += 1;
            let f = family(s["family"].as_str().unwrap());
            let d = dumped
                .set(
                    f,
                    s["table"].as_str().unwrap(),
                    s["name"].as_str().unwrap(),
                    None,
                )
                .unwrap_or_else(|| panic!("{s} not dumped"));
            let n = s
                .get("elem")
                .and_then(|e| e.as_array())
                .map_or(0, |e| e.len());
            let interval = d.flags & nft::dump::SET_INTERVAL != 0;
            assert!(
                if interval {
                    d.elements.len() >= n
                } else {
                    d.elements.len() == n
                },
                "{s}: {d:?}"
            );
        }
        if let Some(r) = item.get("rule") {
            rules += 1;
            let f = family(r["family"].as_str().unwrap());
            let d = dumped
                .rules
                .iter()
                .find(|d| {
                    d.family == f
                        && d.handle == r["handle"].as_u64().unwrap()
                        && d.table == r["table"]
                        && d.chain == r["chain"]
                })
                .unwrap_or_else(|| panic!("{r} not dumped"));
            assert_eq!(d.comment().as_deref(), r["comment"].as_str(), "{r}");
            let counter = r["expr"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|e| e.get("counter"))
                .map(|c| (c["packets"].as_u64().unwrap(), c["bytes"].as_u64().unwrap()));
            assert_eq!(d.counter(), counter, "{r}");
        }
    }
    assert_eq!(dumped.tables.len(), tables);
    assert_eq!(dumped.chains.len(), chains);
    assert_eq!(dumped.rules.len(), rules);
    let named = dumped
        .sets
        .iter()
        .filter(|s| s.flags & nft::dump::SET_ANONYMOUS == 0)
        .count();
    assert_eq!(named, sets);
}

/// A directory removed when dropped.
struct TrapDir(std::path::PathBuf);

impl TrapDir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TrapDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A directory for podnetd's `PATH` whose `nft` only records that it ran (and fails), beside
/// the one other program podnetd may start (`ethtool`).
fn nft_trap() -> (TrapDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = TrapDir(std::env::temp_dir().join(format!(
        "podnet-nft-trap-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )));
    std::fs::create_dir(dir.path()).unwrap();
    let ran = dir.path().join("nft-ran");
    let trap = dir.path().join("nft");
    std::fs::write(
        &trap,
        format!("#!/bin/sh\necho \"$@\" >> {}\nexit 1\n", ran.display()),
    )
    .unwrap();
    std::fs::set_permissions(&trap, std::fs::Permissions::from_mode(0o755)).unwrap();
    for dir_ in ["/usr/sbin", "/sbin", "/usr/bin"] {
        let ethtool = std::path::Path::new(dir_).join("ethtool");
        if ethtool.exists() {
            std::os::unix::fs::symlink(&ethtool, dir.path().join("ethtool")).unwrap();
            break;
        }
    }
    (dir, ran)
}

/// podnetd reads nftables over netlink only: with an `nft` in its `PATH` that records every
/// run, it creates its table, finds it as wanted after a restart (and leaves it: the same rule
/// handles), restores it when a chain is flushed or the table deleted by hand, and reports
/// Docker's masquerade rule — and `nft` never ran.
#[test]
fn podnetd_runs_no_nft_to_read_its_table_or_find_foreign_rules() {
    let (trap, ran) = nft_trap();
    let path = trap.path().display().to_string();
    let mut c = Cluster::small("fwx", 2);
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    let args = ["--ip-masq", "--iptables-resync=1"];
    let start = |c: &mut Cluster, node: &str| {
        let argv = c.podnetd_args(node, &args);
        c.lab
            .spawn(node, &argv, &[("PATH".into(), path.clone())])
            .unwrap();
    };
    start(&mut c, "node1");
    start(&mut c, "node2");
    let subnet1 = c.wait_ready("node1").subnet.unwrap().trunc();
    c.wait_ready("node2");
    let golden =
        vxlan_node_spec("10.244.0.0/16", subnet1).render_table(&["198.18.0.12".parse().unwrap()]);
    let listing = |c: &Cluster, flags: &str| {
        let out = c
            .lab
            .exec("node1", &["nft", flags, "list", "table", "inet", "podnet"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    poll("node2 in the tunnel guard", Duration::from_secs(10), || {
        (listing(&c, "-s") == golden).then_some(())
    });

    // A restart finds the table as wanted and leaves it: the rules keep their handles.
    let handles = listing(&c, "-a");
    let rec = c.podnetd("node1");
    c.lab.stop(rec.id.pid).unwrap();
    start(&mut c, "node1");
    c.wait_ready("node1");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        listing(&c, "-a"),
        handles,
        "the table was replaced at restart"
    );

    // Changed by hand: restored.
    for cmd in [
        "nft flush chain inet podnet postrouting",
        "nft delete table inet podnet",
    ] {
        let argv: Vec<&str> = cmd.split(' ').collect();
        ok(c.lab.exec("node1", &argv).unwrap());
        poll(cmd, Duration::from_secs(5), || {
            (listing(&c, "-s") == golden).then_some(())
        });
    }
    // Docker's rule: reported.
    docker_rule(&c, "node1", &subnet1.to_string());
    let log = c.wait_log(
        &c.podnetd("node1"),
        "a masquerade rule outside podnet rewrites pod-to-pod traffic",
        Duration::from_secs(10),
    );
    assert!(
        log.contains("table ip nat chain POSTROUTING handle")
            && log.contains(&format!("ip saddr == {subnet1}")),
        "{log}"
    );
    assert!(
        log.contains("podnet's nftables rules were changed or removed; restored them"),
        "{log}"
    );
    let runs = std::fs::read_to_string(&ran).unwrap_or_default();
    assert_eq!(runs, "", "podnetd ran nft");
    // The trap works: it records what runs it.
    let out = std::process::Command::new(trap.path().join("nft"))
        .arg("probe")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "probe\n");
}

/// A tunnel guard of more peers than one element list can carry (its attribute length is 16
/// bits: 4 096 IPv4 keys overflow it): created and replaced whole, every address is in the
/// kernel's sets. Before the keys were split across messages, the kernel read a truncated
/// list and garbage and refused the transaction (ENOENT: podnetd with 5 001 vxlan peers did
/// not start).
#[test]
fn a_tunnel_guard_of_5001_peers_is_in_the_kernel_whole() {
    use std::net::{IpAddr, Ipv6Addr};
    let scratch = crate::support::ScratchNs::new();
    let ns = &scratch.ns;
    let spec = FirewallSpec {
        v4: Some(Nets {
            network: "10.244.0.0/16".parse().unwrap(),
            pod_subnet: "10.244.3.0/24".parse().unwrap(),
        }),
        v6: Some(Nets {
            network: "fd10:244::/56".parse().unwrap(),
            pod_subnet: "fd10:244:0:3::/64".parse().unwrap(),
        }),
        masquerade: true,
        fully_random: false,
        forward: true,
        guard: Some(Guard { port: 8472 }),
    };
    let v4 = (0..5001u32).map(|i| IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i)));
    let v6 = (0..2100u128).map(|i| IpAddr::V6(Ipv6Addr::from(0x2001_0002_u128 << 96 | i)));
    let peers: Vec<IpAddr> = v4.chain(v6).collect();
    let socket = ns.run(|| nft::NftSocket::open().unwrap()).unwrap();
    let count = |set: &str| {
        let out = ns
            .command("nft")
            .unwrap()
            .args(["-j", "list", "set", "inet", "podnet", set])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|o| o["set"]["elem"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    for replace in [false, true] {
        socket.commit(&spec.table_batch(&peers, replace)).unwrap();
        assert_eq!(count("tunnel-peers"), 5001, "replace={replace}");
        assert_eq!(count("tunnel-peers-v6"), 2100, "replace={replace}");
    }
}

/// A vxlan node's table with `--ip-masq` and the tunnel guard (IPv4): what most tests here
/// compare with.
fn vxlan_node_spec(network: &str, pod_subnet: ipnet::Ipv4Net) -> FirewallSpec {
    FirewallSpec {
        v4: Some(Nets {
            network: network.parse().unwrap(),
            pod_subnet,
        }),
        v6: None,
        masquerade: true,
        fully_random: true,
        forward: true,
        guard: Some(Guard { port: 8472 }),
    }
}
