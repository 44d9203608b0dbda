//! A panic anywhere ends podnetd.
//!
//! podnetd's work is spread over threads (data plane, link watch, firewall, policy engine and
//! its sources, udp workers) and tasks on the runtime. A panic would otherwise end just one of
//! them and leave a node that answers `/readyz` while no longer programming peers or keeping its
//! rules. Exiting instead hands the node to its supervisor (systemd, the kubelet), and the next
//! start reconciles the kernel with the store from scratch: nothing is lost that a restart does
//! not rebuild. The exit code is 70 (EX_SOFTWARE), after the panic is logged with its thread.

/// The exit code after a panic.
pub const EXIT_CODE: i32 = 70;

/// Makes every panic log and end the process.
pub fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            thread = name,
            at,
            "podnetd panicked: {msg}; exiting so that a restart rebuilds the node"
        );
        default(info);
        std::process::exit(EXIT_CODE);
    }));
}

/// In debug builds, panics when `PODNET_TEST_PANIC` names `point`: how the tests check that a
/// panic in any thread ends the process. Release builds ignore the variable.
pub fn test_point(point: &str) {
    if cfg!(debug_assertions) && std::env::var("PODNET_TEST_PANIC").is_ok_and(|p| p == point) {
        panic!("PODNET_TEST_PANIC={point}");
    }
}
