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
    ping_mean(lab, client, &["-c", "200", "-i", "0.002"], server)
}

/// Mean round trip of `count` ICMP echoes back to back from `client` to `server` (what `ping -f`
/// does: each leaves when the answer to the one before is back), after 100 not counted, in
/// seconds. The CPUs stay awake, so the figure is the path's own round trip — what a hook or a
/// rule adds — rather than how fast an idle CPU wakes up; and it is timed here to the
/// nanosecond, where ping prints whole microseconds (20% of a 5 µs round trip).
pub fn echo_rtt(lab: &Lab, client: &str, server: std::net::IpAddr, count: u32) -> f64 {
    use std::os::fd::AsRawFd;
    let (domain, proto) = match server {
        std::net::IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
        std::net::IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
    };
    let ns = lab.netns(client).unwrap();
    let sock = ns
        .socket_in(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto)
        .unwrap();
    let fd = sock.as_raw_fd();
    let addr = sockaddr_bytes(server);
    // Connected: the socket receives only what the server sends.
    let r = unsafe { libc::connect(fd, addr.as_ptr().cast(), addr.len() as libc::socklen_t) };
    assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    let id = (std::process::id() & 0xffff) as u16;
    let mut buf = [0u8; 1500];
    let mut echo = |seq: u16| {
        let req = echo_request(server.is_ipv6(), id, seq);
        let n = unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) };
        assert_eq!(
            n,
            req.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
        loop {
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(
                n > 0,
                "echo {seq} to {server}: {}",
                std::io::Error::last_os_error()
            );
            // An IPv4 raw socket hands over the IP header too; an IPv6 one does not.
            let icmp = if server.is_ipv6() {
                &buf[..n as usize]
            } else {
                &buf[usize::from(buf[0] & 0x0f) * 4..n as usize]
            };
            let reply = if server.is_ipv6() { 129 } else { 0 };
            if icmp.len() >= 8
                && icmp[0] == reply
                && icmp[4..6] == id.to_be_bytes()
                && icmp[6..8] == seq.to_be_bytes()
            {
                return;
            }
        }
    };
    for seq in 0..100 {
        echo(seq);
    }
    let t = std::time::Instant::now();
    for i in 0..count {
        echo((100 + i) as u16);
    }
    t.elapsed().as_secs_f64() / f64::from(count)
}

/// An ICMP (or ICMPv6) echo request with 56 bytes of payload, as ping sends. The kernel fills in
/// an ICMPv6 checksum itself; an ICMP one is computed here.
fn echo_request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend((0..56u8).map(|b| b.wrapping_mul(7)));
    if !v6 {
        let sum = p
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum::<u32>();
        let folded = (sum & 0xffff) + (sum >> 16);
        let folded = (folded & 0xffff) + (folded >> 16);
        p[2..4].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    }
    p
}

/// `server` as the bytes of a `sockaddr_in` or `sockaddr_in6`.
fn sockaddr_bytes(server: std::net::IpAddr) -> Vec<u8> {
    match server {
        std::net::IpAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            as_bytes(&sa)
        }
        std::net::IpAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            };
            as_bytes(&sa)
        }
    }
}

fn as_bytes<T>(v: &T) -> Vec<u8> {
    let p = (v as *const T).cast::<u8>();
    unsafe { std::slice::from_raw_parts(p, std::mem::size_of::<T>()) }.to_vec()
}

fn ping_mean(lab: &Lab, client: &str, how: &[&str], server: &str) -> f64 {
    let mut argv = vec!["ping", "-q"];
    argv.extend_from_slice(how);
    argv.push(server);
    let out = run_in(lab, client, &argv);
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
