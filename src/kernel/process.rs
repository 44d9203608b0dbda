//! Starting a detached helper without waiting for it.
//!
//! `std::process::Command::spawn` waits until the child has called `exec` (to report a failed
//! `exec` as an error). For the CNI plugin's reaper that wait is on the runtime's path: under
//! load the child is scheduled late and its `exec` took 2–6 ms of every DEL. `spawn_detached`
//! forks and returns at once; the child, in a session of its own with `/dev/null` for its
//! standard streams (so the runtime, which reads the plugin's stdout to its end, never waits
//! for it) and no other descriptor, execs the program. A failed `exec` is not reported: the
//! helpers started this way are ones whose work is also done later by someone else.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::KernelError;

fn cstring(what: &str, b: &[u8]) -> Result<CString, KernelError> {
    CString::new(b).map_err(|_| KernelError::Other(format!("{what} contains a NUL byte")))
}

/// Starts `program` with this process's environment plus `env`, detached.
pub fn spawn_detached(program: &Path, env: (&str, &str)) -> Result<(), KernelError> {
    // Everything the child needs is built before the fork: after it the child makes only
    // async-signal-safe system calls.
    let path = cstring("program path", program.as_os_str().as_bytes())?;
    let argv = [path.as_ptr(), std::ptr::null()];
    let mut vars: Vec<CString> = Vec::new();
    for (k, v) in std::env::vars_os() {
        if k.as_bytes() != env.0.as_bytes() {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            vars.push(cstring("environment", &kv)?);
        }
    }
    vars.push(cstring(
        "environment",
        format!("{}={}", env.0, env.1).as_bytes(),
    )?);
    let mut envp: Vec<*const libc::c_char> = vars.iter().map(|v| v.as_ptr()).collect();
    envp.push(std::ptr::null());
    let devnull = c"/dev/null";
    // SAFETY: the child runs only async-signal-safe system calls (setsid, open, dup2,
    // close_range, execve, _exit) on memory prepared above; the parent touches nothing.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(KernelError::io(
            "fork a detached helper",
            std::io::Error::last_os_error(),
        ));
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            libc::setsid();
            let null = libc::open(devnull.as_ptr(), libc::O_RDWR);
            if null >= 0 {
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    Ok(())
}

/// One malloc arena for the whole process: a short-lived program's second thread then
/// allocates from the main arena instead of mapping one of its own (64 MiB reserved, its
/// own system calls) for the few allocations it makes.
pub fn one_malloc_arena() {
    // SAFETY: mallopt changes a tunable of the allocator; it is called before any second
    // thread exists, and a refusal (0) leaves the default.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Ignores SIGPIPE, as the Rust runtime's start-up does (a program without it, `#![no_main]`,
/// would be killed by a write to a pipe its reader closed, instead of getting EPIPE).
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler; it has no
    // preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}
