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

/// Mean round trip of 200 pings 2 ms apart from `client` to `server`, in seconds.
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
