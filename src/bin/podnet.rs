//! The CNI plugin. It starts for every pod event, so it skips the Rust runtime's start-up
//! (`#![no_main]`: no stack-guard probe, which reads `/proc/self/maps`, no signal-stack set-up);
//! `std::process::exit` still flushes stdout. What that start-up did and the plugin needs is
//! done here: SIGPIPE ignored (a runtime that closed our stdout gets EPIPE, not a killed
//! plugin), and a panic ends the process with 101 as before instead of unwinding into C. malloc
//! is tuned for a process that lives milliseconds (`short_lived_malloc`).
// The test harness brings its own `main`: the plugin's is for the program only.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    podnet::kernel::process::ignore_sigpipe();
    podnet::kernel::process::short_lived_malloc();
    let code = std::panic::catch_unwind(podnet::cni::main).unwrap_or(101);
    std::process::exit(code);
}
