//! The udp backend: pods on three nodes over two segments, flannel's wire format on the
//! underlay, ICMP for unknown destinations, and recovery of a deleted device.

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use podnet::lab::LabSpec;

use crate::cluster::{Cluster, Pod};
use crate::support::{ok, poll, unique};

const UDP: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#;

fn ping(c: &Cluster, from: &str, to: Ipv4Addr) -> bool {
    c.lab
        .exec(from, &["ping", "-c1", "-W2", &to.to_string()])
        .unwrap()
        .status
        .success()
}

/// One packet as tcpdump writes it to a pcap stream: the Ethernet frame.
fn first_frame(pcap: &[u8]) -> &[u8] {
    assert!(pcap.len() > 40, "no packet captured");
    assert_eq!(&pcap[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "little-endian pcap");
    let incl = u32::from_le_bytes(pcap[32..36].try_into().unwrap()) as usize;
    &pcap[40..40 + incl]
}

fn boot(c: &mut Cluster) -> Vec<Pod> {
    c.put_config(UDP);
    let names: Vec<String> = c.lab.plan().nodes.iter().map(|n| n.name.clone()).collect();
    for n in &names {
        c.start(n, &[]);
    }
    for n in &names {
        c.wait_ready(n);
    }
    names.iter().map(|n| c.add_pod(n, "p", "1.0.0")).collect()
}

#[test]
fn udp_three_nodes_on_two_segments_wire_format_and_unreachable() {
    let mut c = Cluster::new(LabSpec::new(unique("bud"), 3).segments(2));
    let pods = boot(&mut c);

    // flannel's objects: TUN flannel0, MTU − 28, <lease IP>/32, the whole network routed to it.
    for p in &pods {
        let env = c.wait_ready(&p.node);
        assert_eq!(env.mtu, Some(1472));
        let base = env.subnet.unwrap().trunc().network();
        let link = &c.ip_json(&p.node, &["-d", "link", "show", "flannel0"])[0];
        assert_eq!(link["linkinfo"]["info_kind"], "tun", "{link}");
        assert_eq!(link["linkinfo"]["info_data"]["type"], "tun", "{link}");
        assert_eq!(link["linkinfo"]["info_data"]["pi"], false, "{link}");
        assert_eq!(link["linkinfo"]["info_data"]["multi_queue"], true, "{link}");
        assert_eq!(link["mtu"], 1472);
        let addrs = &c.ip_json(&p.node, &["-4", "addr", "show", "flannel0"])[0]["addr_info"];
        assert_eq!(addrs.as_array().unwrap().len(), 1, "{addrs}");
        assert_eq!(addrs[0]["local"], base.to_string().as_str());
        assert_eq!(addrs[0]["prefixlen"], 32);
        let routes = c.ip_json(&p.node, &["route", "show", "dev", "flannel0"]);
        assert!(
            routes
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["dst"] == "10.244.0.0/16"),
            "{routes}"
        );
        // flannel's udp leases carry no BackendType and no BackendData.
        let public = c.lab.plan().host(&p.node).unwrap().ip();
        let leases = c.leases();
        let (_, value) = leases
            .iter()
            .find(|(k, _)| *k == env.subnet.unwrap().trunc().to_string().replace('/', "-"))
            .unwrap();
        assert_eq!(
            value,
            &format!(r#"{{"PublicIP":"{public}","PublicIPv6":null}}"#)
        );
    }

    // Every pod reaches every other pod, across the router too.
    for a in &pods {
        for b in &pods {
            if a.node != b.node {
                poll(
                    &format!("{} -> {}", a.target(), b.ip),
                    Duration::from_secs(15),
                    || ping(&c, &a.target(), b.ip).then_some(()),
                );
            }
        }
    }
    // A full-MTU packet with DF set crosses: 1472 inner bytes make a 1500-byte UDP packet.
    let df = |size: &str| {
        c.lab
            .exec(
                &pods[0].target(),
                &[
                    "ping",
                    "-c1",
                    "-W2",
                    "-M",
                    "do",
                    "-s",
                    size,
                    &pods[2].ip.to_string(),
                ],
            )
            .unwrap()
    };
    ok(df("1444"));
    assert!(!df("1445").status.success(), "larger than the pod MTU");
    // TCP with full-sized segments, both ways: the offload paths.
    let srv = &pods[2];
    let server = c
        .lab
        .spawn(
            &srv.target(),
            &["iperf3".into(), "-s".into(), "-1".into()],
            &[],
        )
        .unwrap();
    poll("iperf3 over udp", Duration::from_secs(15), || {
        let out = c
            .lab
            .exec(
                &pods[0].target(),
                &["iperf3", "-c", &srv.ip.to_string(), "-t", "1", "-J"],
            )
            .unwrap();
        out.status.success().then_some(())
    });
    let _ = c.lab.stop(server.id.pid);

    // The wire: UDP from port 8285 to port 8285 whose payload is the pod's IP packet.
    let (a, b) = (&pods[0], &pods[1]);
    let mut dump = c
        .lab
        .command(
            &a.node,
            &[
                "tcpdump", "-i", "eth0", "-n", "-U", "-c", "1", "-w", "-", "udp", "and", "dst",
                "port", "8285",
            ],
        )
        .unwrap();
    dump.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = dump.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "tcpdump did not start"
        );
    }
    assert!(ping(&c, &a.target(), b.ip));
    let mut pcap = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut pcap).unwrap();
    child.wait().unwrap();
    let frame = first_frame(&pcap);
    assert_eq!(&frame[12..14], &[0x08, 0x00], "IPv4");
    let outer = &frame[14..];
    let ihl = usize::from(outer[0] & 0x0f) * 4;
    assert_eq!(outer[9], 17, "UDP");
    let a_public = c.lab.plan().host(&a.node).unwrap().ip();
    let b_public = c.lab.plan().host(&b.node).unwrap().ip();
    assert_eq!(&outer[12..16], &a_public.octets());
    assert_eq!(&outer[16..20], &b_public.octets());
    let udp = &outer[ihl..];
    assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 8285, "source port");
    assert_eq!(
        u16::from_be_bytes([udp[2], udp[3]]),
        8285,
        "destination port"
    );
    let inner = &udp[8..];
    assert_eq!(
        u16::from_be_bytes([udp[4], udp[5]]) as usize,
        8 + inner.len()
    );
    assert_eq!(inner[0], 0x45, "the payload is an IPv4 packet");
    assert_eq!(
        u16::from_be_bytes([inner[2], inner[3]]) as usize,
        inner.len()
    );
    assert_eq!(inner[9], 1, "ICMP inside");
    assert_eq!(&inner[12..16], &a.ip.octets());
    assert_eq!(&inner[16..20], &b.ip.octets());
    assert_eq!(inner[20], 8, "echo request");

    // The data path's counters: packets both ways, none dropped yet.
    let metric = |node: &str, name: &str| -> f64 {
        let sock = c.lab.node_dir(node).unwrap().join("podnetd.sock");
        let (code, text) = podnet::httpget::unix(&sock, "/metrics").unwrap();
        assert_eq!(code, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert!(metric(&a.node, "podnet_udp_packets_total{direction=\"out\"}") > 1000.0);
    assert!(metric(&a.node, "podnet_udp_packets_total{direction=\"in\"}") > 10.0);
    assert_eq!(
        metric(&a.node, "podnet_udp_dropped_total{reason=\"no_route\"}"),
        0.0
    );

    // A subnet nobody leases: net unreachable, from this node's flannel0 address.
    let taken: Vec<String> = c.leases().into_iter().map(|(k, _)| k).collect();
    let free = (1..=255u8)
        .map(|i| format!("10.244.{i}.0-24"))
        .find(|k| !taken.contains(k))
        .unwrap();
    let unknown: Ipv4Addr = free.replace(".0-24", ".9").parse().unwrap();
    let out = c
        .lab
        .exec(&a.target(), &["ping", "-c1", "-W2", &unknown.to_string()])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let a_base = c.wait_ready(&a.node).subnet.unwrap().trunc().network();
    assert!(!out.status.success());
    assert!(
        text.contains("Destination Net Unreachable") && text.contains(&format!("From {a_base}")),
        "{text}"
    );
    assert_eq!(
        metric(&a.node, "podnet_udp_dropped_total{reason=\"no_route\"}"),
        1.0
    );

    // Anti-spoofing: b sends a packet claiming to come from the third node's pod. It is
    // dropped and counted; the same packet with b's own pod as source goes through.
    let spoofed = "podnet_udp_dropped_total{reason=\"spoofed\"}";
    let inbound = "podnet_udp_packets_total{direction=\"in\"}";
    assert_eq!(metric(&a.node, spoofed), 0.0);
    let send_from_b = |src: Ipv4Addr| {
        let pkt = echo_request(src, a.ip);
        c.lab
            .netns(&b.node)
            .unwrap()
            .run(|| {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                s.send_to(&pkt, (a_public, 8285)).unwrap();
            })
            .unwrap();
    };
    let before = metric(&a.node, inbound);
    send_from_b(pods[2].ip);
    poll(
        "the spoofed packet to be counted",
        Duration::from_secs(5),
        || (metric(&a.node, spoofed) == 1.0).then_some(()),
    );
    assert_eq!(
        metric(&a.node, inbound),
        before,
        "nothing spoofed reached the pod"
    );
    send_from_b(b.ip);
    poll(
        "the honest packet to be delivered",
        Duration::from_secs(5),
        || (metric(&a.node, inbound) > before).then_some(()),
    );
    assert_eq!(metric(&a.node, spoofed), 1.0);
}

/// An ICMP echo request from `src` to `dst`, checksums right.
fn echo_request(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    fn sum(data: &[u8]) -> u16 {
        let mut s: u32 = data
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }
    let mut p = vec![0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let h = sum(&p);
    p[10..12].copy_from_slice(&h.to_be_bytes());
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    let c = sum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&icmp);
    p
}

#[test]
fn udp_device_deleted_by_hand_comes_back_and_carries_traffic() {
    let mut c = Cluster::small("bue", 2);
    let pods = boot(&mut c);
    poll("pods connected", Duration::from_secs(15), || {
        ping(&c, &pods[0].target(), pods[1].ip).then_some(())
    });
    ok(c.lab
        .exec("node1", &["ip", "link", "del", "flannel0"])
        .unwrap());
    poll(
        "flannel0 back with its route",
        Duration::from_secs(15),
        || {
            let routes = c.ip_json("node1", &["route", "show", "10.244.0.0/16"]);
            routes
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["dev"] == "flannel0")
                .then_some(())
        },
    );
    poll("pods connected again", Duration::from_secs(15), || {
        ping(&c, &pods[0].target(), pods[1].ip).then_some(())
    });
}
