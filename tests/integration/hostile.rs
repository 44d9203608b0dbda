//! Hostile input from other nodes: forged, stolen and malformed leases in a real etcd, read
//! by real podnetd processes. Pods must keep reaching each other, and nothing forged may
//! reach the kernel.

use std::time::Duration;

use serde_json::Value;

use crate::cluster::{Cluster, PODNETCTL, PREFIX};
use crate::ops::{get, parse_metrics, socket};
use crate::support::{ok, poll};

/// Nodes take subnets up to 10.244.199.0/24, so the forgeries above it never meet a real one.
const VXLAN: &str =
    r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.199.0","Backend":{"Type":"vxlan"}}"#;

fn status(c: &Cluster, node: &str) -> Value {
    let sock = socket(c, node);
    let out = ok(c
        .lab
        .exec(node, &[PODNETCTL, "status", "--json", "--socket", &sock])
        .unwrap());
    serde_json::from_str(&out).unwrap()
}

pub(crate) fn refused(c: &Cluster, node: &str) -> Vec<String> {
    // Absent when there are none.
    let v = status(c, node)["rejectedLeases"].clone();
    serde_json::from_value::<Option<Vec<String>>>(v)
        .unwrap()
        .unwrap_or_default()
}

fn ping(c: &Cluster, from: &str, to: impl std::fmt::Display) -> bool {
    c.lab
        .exec(from, &["ping", "-c1", "-W2", &to.to_string()])
        .unwrap()
        .status
        .success()
}

pub(crate) fn put(c: &Cluster, key: &str, value: &str) {
    c.etcdctl(&["put", &format!("{PREFIX}/subnets/{key}"), value]);
}

fn vxlan_value(ip: &str, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

fn vtep_mac(c: &Cluster, node: &str) -> String {
    c.ip_json(node, &["link", "show", "flannel.1"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Every route and neighbour/fdb entry node1 has for podnet, as text.
fn kernel_state(c: &Cluster, node: &str) -> String {
    // IPv4 only: IPv6 link-local addresses finish duplicate detection (and get their local
    // routes) on their own schedule.
    let routes = c.ip_json(node, &["-4", "route", "show", "table", "all"]);
    let neigh = c.ip_json(node, &["neigh", "show", "dev", "flannel.1"]);
    let fdb = c
        .lab
        .exec(node, &["bridge", "-j", "fdb", "show", "dev", "flannel.1"])
        .unwrap();
    format!(
        "{routes}\n{neigh}\n{}",
        String::from_utf8_lossy(&fdb.stdout)
    )
}

/// Whether `node` has a route to `subnet` and an FDB entry for `mac` on flannel.1.
fn programmed(c: &Cluster, node: &str, subnet: &str, mac: &str) -> (bool, bool) {
    let route = c.ip_json(node, &["-4", "route", "show", subnet]);
    let fdb = c
        .lab
        .exec(node, &["bridge", "-j", "fdb", "show", "dev", "flannel.1"])
        .unwrap();
    let has_route = route.as_array().is_some_and(|r| !r.is_empty());
    (
        has_route,
        String::from_utf8_lossy(&fdb.stdout).contains(mac),
    )
}

/// node1's `podnet_leases_rejected`.
fn rejected_gauge(c: &Cluster) -> f64 {
    let text = get(c, "node1", "/metrics").expect("/metrics answers").1;
    parse_metrics(&text)["podnet_leases_rejected"]
}

/// A peer lease that node1 programmed is overwritten with `bad`: node1 withdraws its route
/// and FDB entry at once, and counts and shows the refusal (`why`).
fn a_valid_lease_turned_bad_is_withdrawn(c: &Cluster, key: &str, bad: &str, why: &str) {
    let net = key.replace('-', "/");
    let mac = "02:66:00:00:00:10";
    let before = refused(c, "node1").len();
    put(c, key, &vxlan_value("198.18.0.77", mac));
    poll("node1 to program the peer", Duration::from_secs(20), || {
        (programmed(c, "node1", &net, mac) == (true, true)).then_some(())
    });
    put(c, key, bad);
    poll(
        "node1 to withdraw the peer turned bad",
        Duration::from_secs(20),
        || (programmed(c, "node1", &net, mac) == (false, false)).then_some(()),
    );
    let seen = poll("the refusal in status", Duration::from_secs(10), || {
        let r = refused(c, "node1");
        (r.len() == before + 1).then_some(r)
    });
    let why = format!("lease {key}: {why}");
    assert!(
        seen.iter().any(|r| r.starts_with(&why)),
        "{why:?} not in {seen:?}"
    );
    assert_eq!(rejected_gauge(c), (before + 1) as f64);
    c.etcdctl(&["del", &format!("{PREFIX}/subnets/{key}")]);
    poll("the refusal to clear", Duration::from_secs(10), || {
        (refused(c, "node1").len() == before).then_some(())
    });
}

#[test]
fn forged_leases_are_refused_and_pods_keep_talking() {
    let mut c = Cluster::small("hl", 3);
    c.put_config(VXLAN);
    // A network node1 is attached to inside the Network (as an underlay could be).
    ok(c.lab
        .exec(
            "node1",
            &["ip", "addr", "add", "10.244.250.1/24", "dev", "lo"],
        )
        .unwrap());
    let mut recs = Vec::new();
    for n in ["node1", "node2"] {
        let sock = format!("--status-socket={}", socket(&c, n));
        recs.push(c.start(n, &[&sock, "--healthz-port=9099"]));
    }
    let s1 = c.wait_ready("node1").subnet.unwrap().trunc();
    let s2 = c.wait_ready("node2").subnet.unwrap().trunc();
    let a = c.add_pod("node1", "a", "1.0.0");
    let b = c.add_pod("node2", "b", "1.0.0");
    poll("pods to reach each other", Duration::from_secs(10), || {
        ping(&c, &a.target(), b.ip).then_some(())
    });
    let mac1 = vtep_mac(&c, "node1");
    let mac2 = vtep_mac(&c, "node2");
    let before = kernel_state(&c, "node1");

    // A default-route grab, a lease claiming node1's own address, a stolen VTEP, a subnet
    // with host bits, a lease inside node1's own subnet, a lease of another length, and
    // bytes that are no lease at all.
    let forged = [
        ("0.0.0.0-1", vxlan_value("198.18.0.66", "02:66:00:00:00:01")),
        (
            "10.244.201.0-24",
            vxlan_value("198.18.0.11", "02:66:00:00:00:02"),
        ),
        ("10.244.202.0-24", vxlan_value("198.18.0.66", &mac2)),
        (
            "10.244.203.7-24",
            vxlan_value("198.18.0.66", "02:66:00:00:00:04"),
        ),
        (
            &format!("{}-25", s1.network()) as &str,
            vxlan_value("198.18.0.66", "02:66:00:00:00:05"),
        ),
        (
            "10.244.128.0-17",
            vxlan_value("198.18.0.66", "02:66:00:00:00:06"),
        ),
        (
            "10.244.204.0-24",
            vxlan_value("127.0.0.1", "02:66:00:00:00:07"),
        ),
        (
            "10.244.205.0-24",
            vxlan_value("198.18.0.66", "ff:ff:ff:ff:ff:ff"),
        ),
        // Two supernets inside the Network that together cover it (counted as taken, they
        // would leave no subnet for a new node).
        (
            "10.244.0.0-17",
            vxlan_value("198.18.0.66", "02:66:00:00:00:08"),
        ),
        // node1's own VTEP: its FDB would send node1's own traffic to the forger.
        ("10.244.208.0-24", vxlan_value("198.18.0.66", &mac1)),
        (
            "192.168.7.0-24",
            vxlan_value("198.18.0.66", "02:66:00:00:00:11"),
        ),
        (
            "10.244.250.0-24",
            vxlan_value("198.18.0.66", "02:66:00:00:00:12"),
        ),
        (
            "10.244.212.0-24",
            vxlan_value("0.0.0.0", "02:66:00:00:00:13"),
        ),
        (
            "10.244.213.0-24",
            vxlan_value("224.0.0.5", "02:66:00:00:00:14"),
        ),
        (
            "10.244.214.0-24",
            vxlan_value("169.254.1.1", "02:66:00:00:00:15"),
        ),
        (
            "10.244.215.0-24",
            vxlan_value("198.18.0.66", "00:00:00:00:00:00"),
        ),
    ];
    for (k, v) in &forged {
        put(&c, k, v);
    }
    put(&c, "10.244.206.0-24", "{not json");
    put(
        &c,
        "10.244.207.0-24",
        r#"{"PublicIP":"198.18.0.66","BackendType":"vxlan"}"#,
    );
    // Both bytes that are no lease and a lease without BackendData are refused and shown.
    let want = forged.len() + 2;
    let seen = poll(
        "node1 to refuse the forgeries",
        Duration::from_secs(10),
        || {
            let r = refused(&c, "node1");
            (r.len() == want).then_some(r)
        },
    );
    let text = seen.join("\n");
    for why in [
        "lease 0.0.0.0-1: subnet 0.0.0.0-1 overlaps this node's",
        "lease 10.244.201.0-24: public address 198.18.0.11 is this node's own",
        &format!(
            "lease 10.244.202.0-24: VtepMAC {mac2} is already the older lease {}-24's",
            s2.network()
        ),
        "lease 10.244.203.7-24: subnet 10.244.203.7/24 has host bits set",
        "prefix length is not SubnetLen 24",
        "public address 127.0.0.1 cannot be a node's",
        "VtepMAC ff:ff:ff:ff:ff:ff is not a unicast address",
        "lease 10.244.207.0-24: vxlan lease without BackendData",
        &format!("lease 10.244.208.0-24: VtepMAC {mac1} is this node's own"),
        "lease 192.168.7.0-24: subnet 192.168.7.0/24 is outside Network 10.244.0.0/16",
        "lease 10.244.250.0-24: subnet 10.244.250.0/24 overlaps this node's network 10.244.250.0/24",
        "lease 10.244.212.0-24: public address 0.0.0.0 cannot be a node's",
        "lease 10.244.213.0-24: public address 224.0.0.5 cannot be a node's",
        "lease 10.244.214.0-24: public address 169.254.1.1 cannot be a node's",
        "lease 10.244.215.0-24: VtepMAC 00:00:00:00:00:00 is not a unicast address",
        "lease 10.244.206.0-24: value \"{not json\" is not flannel's lease JSON",
    ] {
        assert!(text.contains(why), "{why:?} not in\n{text}");
    }
    // Nothing forged reached the kernel: routes, neighbours and fdb are as they were.
    assert_eq!(kernel_state(&c, "node1"), before);
    assert!(ping(&c, &a.target(), b.ip), "pods still reach each other");
    // A new node joins while the supernets are there, and its pod talks to node1's.
    let sock3 = format!("--status-socket={}", socket(&c, "node3"));
    recs.push(c.start("node3", &[&sock3]));
    c.wait_ready("node3");
    let p3 = c.add_pod("node3", "c", "1.0.0");
    poll(
        "node3's pod to reach node1's",
        Duration::from_secs(20),
        || ping(&c, &p3.target(), a.ip).then_some(()),
    );
    // The gauge and doctor say so too.
    let sock = socket(&c, "node1");
    let env = c.env_path("node1").display().to_string();
    let out = c
        .lab
        .exec(
            "node1",
            &[
                PODNETCTL,
                "doctor",
                "--subnet-file",
                &env,
                "--socket",
                &sock,
            ],
        )
        .unwrap();
    let doc = String::from_utf8_lossy(&out.stdout);
    assert!(
        doc.contains(&format!("{want} peer lease(s) not programmed")),
        "{doc}"
    );

    // Someone rewrites node2's own lease with its address but another VTEP: node2 writes it
    // back, and traffic keeps flowing.
    let key2 = format!("{}-24", s2.network());
    let original = c.leases().into_iter().find(|(k, _)| *k == key2).unwrap().1;
    put(&c, &key2, &vxlan_value("198.18.0.12", "02:66:00:00:00:09"));
    poll(
        "node2 to restore its lease",
        Duration::from_secs(10),
        || {
            let now = c.leases().into_iter().find(|(k, _)| *k == key2)?.1;
            (now == original).then_some(())
        },
    );
    // node1 cannot tell the forgery from a real change and follows it until the repair
    // reaches it too; then traffic flows again.
    poll(
        "pods to reach each other after the repair",
        Duration::from_secs(10),
        || ping(&c, &a.target(), b.ip).then_some(()),
    );

    a_valid_lease_turned_bad_is_withdrawn(
        &c,
        "10.244.210.0-24",
        "{not json",
        "value \"{not json\" is not flannel's lease JSON",
    );
    a_valid_lease_turned_bad_is_withdrawn(
        &c,
        "10.244.211.0-24",
        &vxlan_value("127.0.0.1", "02:66:00:00:00:10"),
        "public address 127.0.0.1 cannot be a node's",
    );
    // Someone overwrites node2's own key with bytes that are no lease: node2 writes it back.
    put(&c, &key2, "{not json");
    poll(
        "node2 to restore its garbled lease",
        Duration::from_secs(20),
        || {
            let now = c.leases().into_iter().find(|(k, _)| *k == key2)?.1;
            (now == original).then_some(())
        },
    );
    poll(
        "pods to reach each other after the second repair",
        Duration::from_secs(10),
        || ping(&c, &a.target(), b.ip).then_some(()),
    );

    // Once the forgeries are deleted nothing is refused any more.
    for (k, _) in &forged {
        c.etcdctl(&["del", &format!("{PREFIX}/subnets/{k}")]);
    }
    for k in ["10.244.206.0-24", "10.244.207.0-24"] {
        c.etcdctl(&["del", &format!("{PREFIX}/subnets/{k}")]);
    }
    poll("the refusals to clear", Duration::from_secs(10), || {
        refused(&c, "node1").is_empty().then_some(())
    });
}
