//! Helpers shared by the integration tests.

use std::process::Output;
use std::sync::Once;
use std::time::{Duration, Instant};

use podnet::kernel::netns::NetNs;

/// Fails loudly (instead of silently passing) when not root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the integration tests create network namespaces and need root: run them with sudo"
    );
    static SWEEP: Once = Once::new();
    SWEEP.call_once(sweep_scratch);
}

/// A unique lab name for this run: a prefix and a random part.
pub fn unique(prefix: &str) -> String {
    let r: u32 = rand::random();
    format!("{prefix}{:06x}", r & 0xff_ffff)
}

/// Polls `f` until it returns `Some`, or panics naming `what` after `timeout`.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts a command succeeded and returns its stdout.
#[track_caller]
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A throwaway namespace for tests that need one outside any lab; deleted on drop.
pub struct ScratchNs {
    pub name: String,
    pub ns: NetNs,
}

const SCRATCH_PREFIX: &str = "pnt-";

impl ScratchNs {
    pub fn new() -> ScratchNs {
        let name = format!(
            "{SCRATCH_PREFIX}{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let ns = NetNs::create(&name).expect("create scratch namespace");
        ScratchNs { name, ns }
    }
}

impl Drop for ScratchNs {
    fn drop(&mut self) {
        let _ = NetNs::delete(&self.name);
    }
}

/// Removes scratch namespaces left by test processes that no longer run.
fn sweep_scratch() {
    for name in NetNs::list_named().unwrap_or_default() {
        let Some(rest) = name.strip_prefix(SCRATCH_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = NetNs::delete(&name);
        }
    }
}

/// `nft -f -` of `script` in `ns`.
pub fn nft_f(ns: &podnet::kernel::netns::NetNs, script: &str) {
    use std::io::Write;
    let mut child = ns
        .command("nft")
        .unwrap()
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft -f: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}
