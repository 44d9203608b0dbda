//! The wireguard backend (userspace engine: these kernels have no WireGuard module): pods on
//! three nodes over two segments, only WireGuard data messages on the underlay, per-peer
//! counters, forged leases refused, key rotation, a PSK mismatch reported, the device restored,
//! and a restart that established TCP connections survive.

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use podnet::backend::wireguard::key::{KeyPair, b64};
use podnet::lab::LabSpec;
use serde_json::Value;

use crate::cluster::{Cluster, PODNETCTL, PREFIX, Pod};
use crate::support::{ok, poll, unique};

const WG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#;

fn ping(c: &Cluster, from: &str, to: Ipv4Addr) -> bool {
    c.lab
        .exec(from, &["ping", "-c1", "-W2", &to.to_string()])
        .unwrap()
        .status
        .success()
}

fn socket(c: &Cluster, node: &str) -> String {
    c.lab
        .node_dir(node)
        .unwrap()
        .join("podnetd.sock")
        .display()
        .to_string()
}

fn status(c: &Cluster, node: &str) -> Value {
    let out = ok(c
        .lab
        .exec(
            node,
            &[PODNETCTL, "status", "--json", "--socket", &socket(c, node)],
        )
        .unwrap());
    serde_json::from_str(&out).unwrap()
}

fn status_text(c: &Cluster, node: &str) -> String {
    ok(c.lab
        .exec(node, &[PODNETCTL, "status", "--socket", &socket(c, node)])
        .unwrap())
}

fn metrics(c: &Cluster, node: &str) -> String {
    let sock = c.lab.node_dir(node).unwrap().join("podnetd.sock");
    let (code, text) = podnet::httpget::unix(&sock, "/metrics").unwrap();
    assert_eq!(code, 200);
    text
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

fn key_file(c: &Cluster, node: &str) -> std::path::PathBuf {
    c.lab.node_dir(node).unwrap().join("wgkey")
}

/// The public key of the private key in a node's key file.
fn public_key(c: &Cluster, node: &str) -> String {
    let text = std::fs::read_to_string(key_file(c, node)).unwrap();
    let private = podnet::config::parse_key32(&text).unwrap();
    b64(&KeyPair::from_private(private).public)
}

fn lease_value(c: &Cluster, node: &str) -> Value {
    let env = c.wait_ready(node);
    let key = env.subnet.unwrap().trunc().to_string().replace('/', "-");
    let (_, v) = c.leases().into_iter().find(|(k, _)| *k == key).unwrap();
    serde_json::from_str(&v).unwrap()
}

fn boot(c: &mut Cluster, config: &str) -> Vec<Pod> {
    c.put_config(config);
    let names: Vec<String> = c.lab.plan().nodes.iter().map(|n| n.name.clone()).collect();
    for n in &names {
        let sock = format!("--status-socket={}", socket(c, n));
        c.start(n, &[&sock]);
    }
    for n in &names {
        c.wait_ready(n);
    }
    names.iter().map(|n| c.add_pod(n, "p", "1.0.0")).collect()
}

fn connected(c: &Cluster, pods: &[Pod]) {
    for a in pods {
        for b in pods {
            if a.node != b.node {
                poll(
                    &format!("{} -> {}", a.target(), b.ip),
                    Duration::from_secs(20),
                    || ping(c, &a.target(), b.ip).then_some(()),
                );
            }
        }
    }
}

/// Captures `count` frames on a node's underlay matching `filter` while `traffic` runs.
fn capture(
    c: &Cluster,
    node: &str,
    filter: &str,
    count: usize,
    traffic: impl FnOnce(),
) -> Vec<Vec<u8>> {
    let count = count.to_string();
    let mut argv = vec!["tcpdump", "-i", "eth0", "-n", "-U", "-c", &count, "-w", "-"];
    argv.extend(filter.split(' '));
    let mut dump = c.lab.command(node, &argv).unwrap();
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
    traffic();
    let mut pcap = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut pcap).unwrap();
    child.wait().unwrap();
    // A little-endian pcap stream: a 24-byte header, then 16-byte record headers.
    assert_eq!(&pcap[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
    let mut frames = Vec::new();
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let incl = u32::from_le_bytes(pcap[off + 8..off + 12].try_into().unwrap()) as usize;
        frames.push(pcap[off + 16..off + 16 + incl].to_vec());
        off += 16 + incl;
    }
    frames
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn wireguard_three_nodes_two_segments_encrypted_and_forgeries_refused() {
    let mut c = Cluster::new(LabSpec::new(unique("bwg"), 3).segments(2));
    let pods = boot(&mut c, WG);

    // flannel's objects: flannel-wg (a TUN device here), MTU − 80, <lease IP>/32, the network
    // routed to it; the lease carries the key file's public key and the port.
    for p in &pods {
        let env = c.wait_ready(&p.node);
        assert_eq!(env.mtu, Some(1420));
        let base = env.subnet.unwrap().trunc().network();
        let link = &c.ip_json(&p.node, &["-d", "link", "show", "flannel-wg"])[0];
        assert_eq!(link["linkinfo"]["info_kind"], "tun", "{link}");
        assert_eq!(link["mtu"], 1420);
        let addrs = &c.ip_json(&p.node, &["-4", "addr", "show", "flannel-wg"])[0]["addr_info"];
        assert_eq!(addrs[0]["local"], base.to_string().as_str());
        assert_eq!(addrs[0]["prefixlen"], 32);
        let routes = c.ip_json(&p.node, &["route", "show", "10.244.0.0/16"]);
        assert_eq!(routes[0]["dev"], "flannel-wg", "{routes}");
        assert_eq!(routes[0]["scope"], "link", "flannel's scope: {routes}");
        let lease = lease_value(&c, &p.node);
        assert_eq!(lease["BackendType"], "wireguard");
        assert_eq!(lease["BackendData"]["Port"], 51820);
        assert_eq!(
            lease["BackendData"]["PublicKey"],
            public_key(&c, &p.node).as_str()
        );
        let mode = std::fs::metadata(key_file(&c, &p.node)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o400
        );
        // The engine is named in status and metrics.
        assert_eq!(status(&c, &p.node)["node"]["engine"], "userspace");
        assert_eq!(
            metric(
                &metrics(&c, &p.node),
                "podnet_wireguard_engine_info{engine=\"userspace\"}"
            ),
            Some(1.0)
        );
    }
    connected(&c, &pods);

    // TCP with full-sized segments, both ways: the offload and GSO paths.
    let (a, b) = (&pods[0], &pods[2]);
    let server = c
        .lab
        .spawn(
            &b.target(),
            &["iperf3".into(), "-s".into(), "-1".into()],
            &[],
        )
        .unwrap();
    poll("iperf3 over wireguard", Duration::from_secs(15), || {
        let out = c
            .lab
            .exec(
                &a.target(),
                &["iperf3", "-c", &b.ip.to_string(), "-t", "1", "-J"],
            )
            .unwrap();
        out.status.success().then_some(())
    });
    let _ = c.lab.stop(server.id.pid);

    // The wire: everything node1 sends and receives but its etcd traffic is UDP between
    // WireGuard ports carrying data messages (type 4) — no pod address, no payload in clear.
    let pattern = "c0ffee15c0ffee15";
    let frames = capture(&c, &a.node, "ip and not tcp port 2379", 20, || {
        for _ in 0..3 {
            c.lab
                .exec(
                    &a.target(),
                    &[
                        "ping",
                        "-c4",
                        "-i0.2",
                        "-p",
                        pattern,
                        &pods[1].ip.to_string(),
                    ],
                )
                .unwrap();
        }
    });
    assert_eq!(frames.len(), 20);
    let secret: Vec<u8> = (0..8)
        .map(|i| u8::from_str_radix(&pattern[i * 2..i * 2 + 2], 16).unwrap())
        .collect();
    for f in &frames {
        assert_eq!(&f[12..14], &[0x08, 0x00], "IPv4");
        let ip = &f[14..];
        assert_eq!(ip[9], 17, "UDP only: {:02x?}", &ip[..20]);
        let udp = &ip[usize::from(ip[0] & 0x0f) * 4..];
        let (sport, dport) = (
            u16::from_be_bytes([udp[0], udp[1]]),
            u16::from_be_bytes([udp[2], udp[3]]),
        );
        assert_eq!((sport, dport), (51820, 51820));
        let payload = &udp[8..];
        assert_eq!(&payload[..4], &[4, 0, 0, 0], "a WireGuard data message");
        for p in &pods {
            assert!(
                !contains(payload, &p.ip.octets()),
                "pod address {} in clear",
                p.ip
            );
        }
        assert!(!contains(payload, &secret), "ping payload in clear");
    }

    // Per-peer counters: handshakes, bytes, last handshake age, in metrics and status.
    let m = metrics(&c, &a.node);
    let b_key = c
        .wait_ready(&pods[1].node)
        .subnet
        .unwrap()
        .trunc()
        .to_string()
        .replace('/', "-");
    let hs = metric(
        &m,
        &format!("podnet_wireguard_peer_handshakes_total{{peer=\"{b_key}\"}}"),
    );
    assert!(hs.is_some_and(|h| h >= 1.0), "{m}");
    let out = metric(
        &m,
        &format!("podnet_wireguard_peer_bytes_total{{peer=\"{b_key}\",direction=\"out\"}}"),
    );
    assert!(out.is_some_and(|x| x > 500.0), "{m}");
    assert!(
        m.contains("podnet_wireguard_peer_last_handshake_seconds{peer="),
        "{m}"
    );
    let st = status(&c, &a.node);
    let peers = st["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    for p in peers {
        let wg = &p["wireguard"];
        assert!(wg["handshakes"].as_u64().unwrap() >= 1, "{p}");
        assert!(wg["lastHandshakeSeconds"].is_u64(), "{p}");
        assert!(wg["txBytes"].as_u64().unwrap() > 0, "{p}");
        assert!(wg["problem"].is_null(), "{p}");
    }
    let text = status_text(&c, &a.node);
    assert!(
        text.contains("backend   wireguard (userspace engine), pod MTU 1420"),
        "{text}"
    );
    assert!(
        text.contains("handshake ") && text.contains(" ago"),
        "{text}"
    );

    // Tunnel guard: the listen port admits the peers' addresses only. A handshake initiation
    // from the router, which holds no lease, is dropped before podnetd sees it.
    let drops = |c: &Cluster| c.guard_drops(&a.node);
    let before = drops(&c);
    let a_ip = c.lab.plan().host(&a.node).unwrap().ip();
    c.lab
        .netns("router")
        .unwrap()
        .run(|| {
            let s = std::net::UdpSocket::bind("198.18.0.1:0").unwrap();
            let mut init = vec![1u8, 0, 0, 0];
            init.resize(148, 0x5a);
            for _ in 0..3 {
                s.send_to(&init, (a_ip, 51820)).unwrap();
            }
        })
        .unwrap();
    poll("the guard to drop them", Duration::from_secs(5), || {
        (drops(&c) >= before + 3).then_some(())
    });
    // The guard counts exactly what the router sent, nothing from the peers. (podnetd's own
    // `malformed` counter is no witness: a legitimate peer's late or duplicate packet under load
    // counts there too.)
    assert_eq!(drops(&c), before + 3, "the router's three initiations");

    // Forged leases: one with node2's public key, one with node2's endpoint and a fresh key.
    let n2 = &pods[1].node;
    let n2_ip = c.lab.plan().host(n2).unwrap().ip();
    let n2_key = public_key(&c, n2);
    let fresh = b64(&KeyPair::generate().public);
    let forged = [
        (
            "10.244.201.0-24",
            "198.18.0.66".to_string(),
            n2_key.clone(),
            51820,
        ),
        ("10.244.202.0-24", n2_ip.to_string(), fresh, 51820),
    ];
    for (k, ip, key, port) in &forged {
        let v = format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{key}","Port":{port}}}}}"#
        );
        c.etcdctl(&["put", &format!("{PREFIX}/subnets/{k}"), &v]);
    }
    let refused = poll(
        "node1 to refuse both forgeries",
        Duration::from_secs(10),
        || {
            let r: Vec<String> =
                serde_json::from_value(status(&c, &a.node)["rejectedLeases"].clone()).ok()?;
            (r.len() == 2).then_some(r)
        },
    );
    let text = refused.join("\n");
    assert!(text.contains(&format!("lease 10.244.201.0-24: WireGuard public key {n2_key} is already the older lease {b_key}'s")), "{text}");
    assert!(text.contains(&format!("lease 10.244.202.0-24: WireGuard endpoint {n2_ip}:51820 is already the older lease {b_key}'s")), "{text}");
    assert_eq!(status(&c, &a.node)["peers"].as_array().unwrap().len(), 2);
    connected(&c, &pods);
}

/// Restarts podnetd on a node (stopped by PID), with `extra` flags.
fn restart(c: &mut Cluster, node: &str, extra: &[&str]) {
    let pid = c.podnetd(node).id.pid;
    c.lab.stop(pid).unwrap();
    let sock = format!("--status-socket={}", socket(c, node));
    let mut args = vec![sock.as_str()];
    args.extend_from_slice(extra);
    c.start(node, &args);
    poll(
        &format!("{node} ready again"),
        Duration::from_secs(30),
        || try_status(c, node)?["ready"].as_bool().filter(|r| *r),
    );
}

/// The status document, or `None` while podnetd is not answering yet.
fn try_status(c: &Cluster, node: &str) -> Option<Value> {
    let sock = socket(c, node);
    let out = c
        .lab
        .exec(node, &[PODNETCTL, "status", "--json", "--socket", &sock])
        .ok()
        .filter(|o| o.status.success())?;
    serde_json::from_slice(&out.stdout).ok()
}

#[test]
fn wireguard_restart_rotation_psk_mismatch_and_device_recovery() {
    let psk = b64(&KeyPair::generate().private);
    let config =
        format!(r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"wireguard","PSK":"{psk}"}}}}"#);
    let mut c = Cluster::small("bwr", 2);
    // The kernel engine forced where the kernel has no WireGuard: podnetd says so and stops.
    c.put_config(&config);
    let probe = c
        .lab
        .exec(
            "node1",
            &["ip", "link", "add", "wgprobe", "type", "wireguard"],
        )
        .unwrap();
    if probe.status.success() {
        ok(c.lab
            .exec("node1", &["ip", "link", "del", "wgprobe"])
            .unwrap());
    } else {
        let (code, err) = c.run_podnetd(
            "node1",
            &["--wireguard-engine=kernel"],
            Duration::from_secs(30),
        );
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("wireguard engine \"kernel\" was asked for, but this kernel makes no WireGuard devices"),
            "{err}"
        );
    }
    let pods = boot(&mut c, &config);
    connected(&c, &pods);
    let (a, b) = (&pods[0], &pods[1]);

    // An established TCP connection survives a restart of the receiving node's podnetd: the
    // sessions are re-established in a round trip and TCP retransmits what was lost.
    let server = c
        .lab
        .spawn(
            &b.target(),
            &["iperf3".into(), "-s".into(), "-1".into()],
            &[],
        )
        .unwrap();
    poll("iperf3 server", Duration::from_secs(10), || {
        let out = ok(c
            .lab
            .exec(&b.target(), &["ss", "-Hltn", "sport = :5201"])
            .unwrap());
        (!out.trim().is_empty()).then_some(())
    });
    let client = c
        .lab
        .spawn(
            &a.target(),
            &[
                "iperf3".into(),
                "-c".into(),
                b.ip.to_string(),
                "-t".into(),
                "6".into(),
                "-b".into(),
                "20M".into(),
            ],
            &[],
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    restart(&mut c, &b.node, &[]);
    let log = c.wait_exit(&client, Duration::from_secs(30));
    assert!(log.contains("iperf Done"), "the connection broke:\n{log}");
    let _ = c.lab.stop(server.id.pid);
    assert!(ping(&c, &a.target(), b.ip));

    // Key rotation: node2's key file replaced and podnetd restarted; node1 follows the lease.
    let old = public_key(&c, &b.node);
    let path = key_file(&c, &b.node);
    std::fs::remove_file(&path).unwrap();
    let fresh = KeyPair::generate();
    std::fs::write(&path, format!("{}\n", b64(&fresh.private))).unwrap();
    restart(&mut c, &b.node, &[]);
    let new = b64(&fresh.public);
    assert_ne!(new, old);
    assert_eq!(
        lease_value(&c, &b.node)["BackendData"]["PublicKey"],
        new.as_str()
    );
    poll(
        "node1 to know node2's new key",
        Duration::from_secs(15),
        || {
            let st = status(&c, &a.node);
            (st["peers"][0]["wireguard"]["publicKey"] == new.as_str()).then_some(())
        },
    );
    poll(
        "pods connected after the rotation",
        Duration::from_secs(15),
        || (ping(&c, &a.target(), b.ip) && ping(&c, &b.target(), a.ip)).then_some(()),
    );

    // A PSK mismatch: node2 restarts with another PSK in the config; node1 still has the old
    // one. Traffic stops, and both say why instead of dropping silently.
    let other = b64(&KeyPair::generate().private);
    c.put_config(&config.replace(&psk, &other));
    restart(&mut c, &b.node, &[]);
    assert!(!ping(&c, &b.target(), a.ip));
    let problem = poll(
        "node2 to report the mismatch",
        Duration::from_secs(20),
        || {
            let _ = ping(&c, &b.target(), a.ip);
            let st = status(&c, &b.node);
            st["peers"][0]["wireguard"]["problem"]
                .as_str()
                .map(String::from)
        },
    );
    assert!(problem.contains("PSK"), "{problem}");
    let text = status_text(&c, &b.node);
    assert!(text.contains("PROBLEM"), "{text}");
    let env = c.env_path(&b.node).display().to_string();
    let sock = socket(&c, &b.node);
    let out = c
        .lab
        .exec(
            &b.node,
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
    let line = doc
        .lines()
        .find(|l| l.starts_with("wireguard"))
        .unwrap_or_default();
    assert!(line.contains("warn") && line.contains("PSK"), "{doc}");
    let m = metrics(&c, &b.node);
    let fails = m
        .lines()
        .find(|l| l.starts_with("podnet_wireguard_peer_handshake_failures_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(fails.is_some_and(|f| f >= 1.0), "{m}");
    poll(
        "node1 to report the mismatch too",
        Duration::from_secs(30),
        || {
            let _ = ping(&c, &b.target(), a.ip);
            status(&c, &a.node)["peers"][0]["wireguard"]["problem"]
                .as_str()
                .filter(|p| p.contains("PSK"))
                .map(|_| ())
        },
    );
    // Both on the new PSK: traffic flows and the problem is gone.
    restart(&mut c, &a.node, &[]);
    poll(
        "pods connected with one PSK again",
        Duration::from_secs(20),
        || (ping(&c, &a.target(), b.ip) && ping(&c, &b.target(), a.ip)).then_some(()),
    );
    assert!(status(&c, &b.node)["peers"][0]["wireguard"]["problem"].is_null());

    // The device deleted by hand comes back with its peers.
    ok(c.lab
        .exec(&a.node, &["ip", "link", "del", "flannel-wg"])
        .unwrap());
    poll(
        "flannel-wg back with its route",
        Duration::from_secs(15),
        || {
            let routes = c.ip_json(&a.node, &["route", "show", "10.244.0.0/16"]);
            (routes[0]["dev"] == "flannel-wg").then_some(())
        },
    );
    poll("pods connected again", Duration::from_secs(15), || {
        ping(&c, &a.target(), b.ip).then_some(())
    });
}

/// What a test-owned WireGuard peer in the router's namespace saw: the first handshake
/// message's type and source, and the first pod packet it decrypted.
struct PeerSaw {
    first: (u8, std::net::SocketAddr),
    packet: Vec<u8>,
}

/// A WireGuard peer (boringtun, the test's key) listening on `at` until it decrypts a packet
/// from `node_key`'s side, answering handshakes; `None` if none came within `within`.
fn wireguard_peer(
    ours: &KeyPair,
    node_key: [u8; 32],
    at: std::net::SocketAddrV4,
    within: Duration,
) -> Option<PeerSaw> {
    use boringtun::noise::{Tunn, TunnResult};
    let sock = std::net::UdpSocket::bind(at).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut tunn = Tunn::new(
        ours.secret(),
        boringtun::x25519::PublicKey::from(node_key),
        None,
        None,
        7,
        None,
    );
    let (mut buf, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
    let mut first = None;
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        first.get_or_insert((buf[0], from));
        let mut r = tunn.decapsulate(Some(from.ip()), &buf[..n], &mut out);
        loop {
            match r {
                TunnResult::WriteToNetwork(m) => {
                    sock.send_to(m, from).unwrap();
                    r = tunn.decapsulate(None, &[], &mut out);
                }
                TunnResult::WriteToTunnelV4(p, _) => {
                    return Some(PeerSaw {
                        first: first.expect("set above"),
                        packet: p.to_vec(),
                    });
                }
                _ => break,
            }
        }
    }
    None
}

#[test]
fn wireguard_flanneld_lease_without_a_port_becomes_a_peer_on_our_listen_port() {
    // A non-default ListenPort: a peer whose lease names no port is dialled on it (flannel's
    // reading), not on 51820.
    let config = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","ListenPort":51900}}"#;
    let mut c = Cluster::small("bwf", 1);
    let pods = boot(&mut c, config);
    let pod = &pods[0];
    assert_eq!(lease_value(&c, &pod.node)["BackendData"]["Port"], 51900);

    // A flanneld node as flanneld writes its lease: BackendData with the public key only. Its
    // tunnel is the test's, in the router's namespace.
    let own = c.wait_ready(&pod.node).subnet.unwrap().trunc();
    let third = if own.network().octets()[2] == 203 {
        204
    } else {
        203
    };
    let subnet = format!("10.244.{third}.0-24");
    let router = c.lab.plan().segments[0].router;
    let flanneld = KeyPair::generate();
    let key = b64(&flanneld.public);
    let v = format!(
        r#"{{"PublicIP":"{router}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{key}"}}}}"#
    );
    c.etcdctl(&["put", &format!("{PREFIX}/subnets/{subnet}"), &v]);
    let endpoint = format!("{router}:51900");
    poll(
        "the flanneld lease to become a peer",
        Duration::from_secs(20),
        || {
            let st = status(&c, &pod.node);
            let p = st["peers"].as_array()?.first()?.clone();
            (p["wireguard"]["publicKey"] == key.as_str()).then_some(p)
        },
    );
    let st = status(&c, &pod.node);
    assert!(
        st["rejectedLeases"].as_array().is_none_or(|r| r.is_empty()),
        "{st}"
    );
    assert_eq!(
        st["peers"][0]["wireguard"]["endpoint"],
        endpoint.as_str(),
        "{st}"
    );

    // What podnet programs works: a pod's ping towards the flanneld node's subnet reaches the
    // test's WireGuard peer on <PublicIP>:<our ListenPort>, through a real handshake.
    let dst = format!("10.244.{third}.5");
    let ping = c
        .lab
        .spawn(
            &pod.target(),
            &["ping".into(), "-i0.5".into(), "-w40".into(), dst.clone()],
            &[],
        )
        .unwrap();
    let node_key = podnet::config::parse_key32(&public_key(&c, &pod.node)).unwrap();
    let at = std::net::SocketAddrV4::new(router, 51900);
    let saw = c
        .lab
        .netns("router")
        .unwrap()
        .run(|| wireguard_peer(&flanneld, node_key, at, Duration::from_secs(30)))
        .unwrap();
    let _ = c.lab.stop(ping.id.pid);
    let saw = saw.expect("no packet from podnet reached the flanneld peer's endpoint");
    let node_ip = c.lab.plan().host(&pod.node).unwrap().ip();
    assert_eq!(saw.first.0, 1, "a handshake initiation first");
    assert_eq!(saw.first.1.to_string(), format!("{node_ip}:51900"));
    let p = &saw.packet;
    assert_eq!((p[0] >> 4, p[9]), (4, 1), "an ICMP packet: {p:02x?}");
    assert_eq!(p[12..16], pod.ip.octets(), "from the pod");
    assert_eq!(
        Ipv4Addr::new(p[16], p[17], p[18], p[19]).to_string(),
        dst,
        "to the flanneld node's subnet"
    );
    poll(
        "podnet to count the handshake",
        Duration::from_secs(10),
        || {
            let st = status(&c, &pod.node);
            (st["peers"][0]["wireguard"]["handshakes"].as_u64()? >= 1).then_some(())
        },
    );
}
