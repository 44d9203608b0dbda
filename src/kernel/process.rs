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

/// Tunes malloc for a program that lives a few milliseconds:
/// - one arena for the whole process: a second thread allocates from the main arena instead of
///   mapping one of its own (64 MiB reserved, its own system calls) for its few allocations;
/// - no `mmap` for blocks under 1 MiB: each netlink socket's 256 KiB receive buffer was a
///   mapping of its own, unmapped when the socket closed (with a TLB flush on every CPU the
///   process ran on);
/// - nothing given back to the kernel before exit, which takes it all at once anyway.
pub fn short_lived_malloc() {
    // SAFETY: mallopt changes tunables of the allocator; it is called before any second
    // thread exists, and a refusal (0) leaves the default.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TOP_PAD, 1 << 20);
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

/// Whether a CPU this process may run on is idle right now: fewer tasks running on the
/// machine (`/proc/loadavg`'s fourth field, the caller included) than CPUs allowed to it. A
/// second thread only shortens a short task when one is; on a busy machine it only adds its
/// own cost. `false` when either cannot be read.
pub fn cpu_idle_now() -> bool {
    match (std::fs::read_to_string("/proc/loadavg"), allowed_cpus()) {
        (Ok(text), Some(cpus)) => fewer_running_than(&text, cpus),
        _ => false,
    }
}

/// Whether `/proc/loadavg`'s text ("0.52 0.41 0.30 1/74 6220") counts fewer running tasks than
/// `cpus`; `false` for text it cannot read.
fn fewer_running_than(loadavg: &str, cpus: usize) -> bool {
    loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split('/').next())
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|running| running < cpus)
}

/// How many CPUs this thread may run on. (Not std's `available_parallelism`, which also reads
/// the cgroup's files to apply a CPU quota: more system calls on every ADD, for a quota that
/// does not say whether a CPU is idle now.)
fn allowed_cpus() -> Option<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        usize::try_from(libc::CPU_COUNT(&set)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::fewer_running_than;

    #[test]
    fn an_idle_cpu_is_one_more_than_the_tasks_running() {
        assert!(fewer_running_than("0.52 0.41 0.30 1/74 6220\n", 2));
        assert!(!fewer_running_than("0.52 0.41 0.30 2/74 6220\n", 2));
        assert!(!fewer_running_than("7.90 5.00 3.10 9/310 6220\n", 8));
        assert!(fewer_running_than("7.90 5.00 3.10 7/310 6220\n", 8));
        for bad in [
            "",
            "0.52 0.41 0.30",
            "0.52 0.41 0.30 x/74 1",
            "a b c -1/2 3",
        ] {
            assert!(!fewer_running_than(bad, 64), "{bad:?}");
        }
    }
}
