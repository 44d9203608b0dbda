//! Shared by the benchmarks: summaries and a lab with etcd and podnetd.
#![allow(dead_code)]

use std::time::Duration;

use podnet::lab::Lab;
use podnet::lab::cluster::Binaries;

/// This package's podnetd and CNI plugin; `PODNET_PLUGIN` names another build of the plugin
/// (the musl one: `cargo build --release --target x86_64-unknown-linux-musl --bin podnet`).
pub fn binaries() -> Binaries {
    let plugin = std::env::var_os("PODNET_PLUGIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_podnet").into());
    Binaries {
        podnetd: env!("CARGO_BIN_EXE_podnetd").into(),
        plugin,
    }
}

/// Median, min and max of a sample.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn summarize(samples: &[f64]) -> Summary {
    let mut v: Vec<f64> = samples.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    let median = if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Summary {
        median,
        min: *v.first().unwrap_or(&f64::NAN),
        max: *v.last().unwrap_or(&f64::NAN),
        n,
    }
}

/// "12.3 (10.1–15.0)" in milliseconds.
pub fn ms(s: Summary) -> String {
    format!(
        "{:.2} ({:.2}–{:.2})",
        s.median * 1e3,
        s.min * 1e3,
        s.max * 1e3
    )
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "benchmarks build clusters in network namespaces: run them as root"
    );
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Number of repeated runs (BENCH_RUNS, default `default`).
pub fn runs(default: usize) -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs a command in a lab target; its output (panics on failure).
pub fn run_in(lab: &Lab, target: &str, argv: &[&str]) -> String {
    let out = lab.exec(target, argv).unwrap();
    assert!(
        out.status.success(),
        "{target}: {argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One iperf3 run (one TCP stream) from `client` to a server at `server`; bits per second
/// received.
pub fn throughput(lab: &Lab, client: &str, server: &str, seconds: u32) -> f64 {
    let secs = seconds.to_string();
    let out = run_in(lab, client, &["iperf3", "-J", "-c", server, "-t", &secs]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
}

/// One iperf3 run like `throughput`, and the CPU both iperf3 ends used meanwhile, in cores
/// (iperf3's own accounting of its processes: user and system time, the kernel's send and
/// receive work done in their system calls included).
pub fn throughput_cpu(lab: &Lab, client: &str, server: &str, seconds: u32) -> (f64, f64) {
    let secs = seconds.to_string();
    let out = run_in(lab, client, &["iperf3", "-J", "-c", server, "-t", &secs]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    let cpu = &v["end"]["cpu_utilization_percent"];
    let cores = (cpu["host_total"].as_f64().unwrap_or(0.0)
        + cpu["remote_total"].as_f64().unwrap_or(0.0))
        / 100.0;
    (bps, cores)
}

/// Mean round trip of 200 pings 2 ms apart from `client` to `server`, in seconds. Between
/// two pings the CPUs go idle, so the figure includes waking them.
pub fn latency(lab: &Lab, client: &str, server: &str) -> f64 {
    let out = run_in(
        lab,
        client,
        &["ping", "-q", "-c", "200", "-i", "0.002", server],
    );
    // rtt min/avg/max/mdev = 0.021/0.034/0.104/0.011 ms
    let line = out.lines().find(|l| l.contains("min/avg/max")).unwrap();
    let avg: f64 = line
        .split('=')
        .nth(1)
        .unwrap()
        .trim()
        .split('/')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    avg / 1e3
}

/// How long one echo may take before the measurement gives up: on a lab path nothing is lost,
/// so a missing answer means the path is broken.
const ECHO_TIMEOUT: Duration = Duration::from_secs(2);

/// Mean round trip of `count` ICMP echoes back to back from `client` to `server` (what `ping -f`
/// does: each leaves when the answer to the one before is back), after 100 not counted, in
/// seconds. The CPUs stay awake, so the figure is the path's own round trip (what a hook or a
/// rule adds) rather than how fast an idle CPU wakes up; and it is timed here to the
/// nanosecond, where ping prints whole microseconds (20% of a 5 µs round trip).
pub fn echo_rtt(lab: &Lab, client: &str, server: std::net::IpAddr, count: u16) -> f64 {
    let sock = echo_socket(lab, client, server);
    let id = (std::process::id() & 0xffff) as u16;
    let warm_up = 100u16;
    let total = warm_up.checked_add(count).expect("at most 65 435 echoes");
    let mut buf = [0u8; 1500];
    for seq in 0..warm_up {
        echo(&sock, client, server, id, seq, &mut buf);
    }
    let t = std::time::Instant::now();
    for seq in warm_up..total {
        echo(&sock, client, server, id, seq, &mut buf);
    }
    t.elapsed().as_secs_f64() / f64::from(count)
}

/// A raw ICMP (ICMPv6) socket made in `client`'s namespace, connected to `server` so that it
/// receives only what the server sends.
fn echo_socket(lab: &Lab, client: &str, server: std::net::IpAddr) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{SockaddrStorage, connect, setsockopt, sockopt};
    use std::os::fd::AsRawFd;
    let (domain, proto) = match server {
        std::net::IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
        std::net::IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
    };
    let ns = lab.netns(client).unwrap();
    let sock = ns
        .socket_in(domain, libc::SOCK_RAW, proto)
        .unwrap_or_else(|e| panic!("raw ICMP socket in {client}: {e}"));
    let to = SockaddrStorage::from(std::net::SocketAddr::new(server, 0));
    connect(sock.as_raw_fd(), &to).unwrap_or_else(|e| panic!("connect to {server}: {e}"));
    // recv wakes up at least this often to check the echo's deadline.
    let tick = nix::sys::time::TimeVal::new(0, 100_000);
    setsockopt(&sock, sockopt::ReceiveTimeout, &tick).unwrap();
    sock
}

/// One echo: sends request `seq` and waits for its answer, skipping anything else the server
/// sends (neighbour discovery, answers to earlier echoes).
fn echo(
    sock: &std::os::fd::OwnedFd,
    client: &str,
    server: std::net::IpAddr,
    id: u16,
    seq: u16,
    buf: &mut [u8],
) {
    use nix::sys::socket::{MsgFlags, recv, send};
    use std::os::fd::AsRawFd;
    let v6 = server.is_ipv6();
    let req = echo_request(v6, id, seq);
    send(sock.as_raw_fd(), &req, MsgFlags::empty())
        .unwrap_or_else(|e| panic!("echo {seq} from {client} to {server}: send: {e}"));
    let deadline = std::time::Instant::now() + ECHO_TIMEOUT;
    let reply = if v6 { 129 } else { 0 };
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no answer to echo {seq} from {client} to {server} within {ECHO_TIMEOUT:?}"
        );
        let n = match recv(sock.as_raw_fd(), buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
            Err(e) => panic!("echo {seq} from {client} to {server}: recv: {e}"),
        };
        // An IPv4 raw socket hands over the IP header too; an IPv6 one does not.
        let start = if v6 {
            0
        } else {
            usize::from(buf[0] & 0x0f) * 4
        };
        let Some(icmp) = buf[..n].get(start..) else {
            continue;
        };
        if icmp.len() >= 8
            && icmp[0] == reply
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
        {
            return;
        }
    }
}

/// An ICMP (or ICMPv6) echo request with 56 bytes of payload, as ping sends. The kernel fills in
/// an ICMPv6 checksum itself; an ICMP one is computed here.
fn echo_request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend((0..56u8).map(|b| b.wrapping_mul(7)));
    if !v6 {
        let sum = podnet::backend::udp::packet::checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}
