//! Shared by the benchmarks: summaries and a lab with etcd and podnetd.
#![allow(dead_code)]

use std::time::Duration;

use podnet::lab::cluster::Binaries;

/// This package's podnetd and CNI plugin.
pub fn binaries() -> Binaries {
    Binaries {
        podnetd: env!("CARGO_BIN_EXE_podnetd").into(),
        plugin: env!("CARGO_BIN_EXE_podnet").into(),
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
