//! The CNI plugin. It starts for every pod event, so it skips the Rust runtime's start-up
//! (`#![no_main]`: no stack-guard probe, which reads `/proc/self/maps`, no signal-stack set-up);
//! `std::process::exit` still flushes stdout.
#![no_main]

#[unsafe(no_mangle)]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    std::process::exit(podnet::cni::main());
}
