//! Processes the lab starts: remembered by PID and start time, so a PID the kernel has since
//! given to someone else is never signalled.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::LabError;
use crate::kernel::netns::NetNs;

/// A process identity that survives PID reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
    pub start_time: u64,
}

/// A process the lab started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    pub id: ProcId,
    /// Where it runs (`node1`, `etcd2`, ...).
    pub host: String,
    pub argv: Vec<String>,
    pub log: PathBuf,
}

/// Start time and state of a PID, or `None` if there is no such process.
fn stat(pid: u32) -> Option<(u64, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

impl ProcId {
    /// Identity of a running PID.
    pub fn of(pid: u32) -> Option<ProcId> {
        stat(pid).map(|(start_time, _)| ProcId { pid, start_time })
    }

    /// The calling process.
    pub fn current() -> ProcId {
        ProcId::of(std::process::id()).expect("/proc/self/stat is readable")
    }

    /// Whether this very process still runs (a zombie counts as gone; it is reaped if ours).
    pub fn alive(&self) -> bool {
        // Reap it if it is our child so it does not linger as a zombie.
        let _ = waitpid(Pid::from_raw(self.pid as i32), Some(WaitPidFlag::WNOHANG));
        match stat(self.pid) {
            Some((start, state)) => start == self.start_time && state != 'Z' && state != 'X',
            None => false,
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once the process is gone. A process the lab
    /// started leads its own process group (`setsid`): the group is signalled while the leader
    /// lives (its pid cannot be reused then), so what it started itself (a profiler wrapper's
    /// child, say) goes with it.
    pub fn stop(&self, grace: Duration) -> Result<(), LabError> {
        if !self.alive() {
            return Ok(());
        }
        let pid = Pid::from_raw(self.pid as i32);
        let target = match nix::unistd::getpgid(Some(pid)) {
            Ok(g) if g == pid => Pid::from_raw(-pid.as_raw()),
            _ => pid,
        };
        let _ = kill(target, Signal::SIGTERM);
        if wait_gone(self, grace) {
            return Ok(());
        }
        let _ = kill(target, Signal::SIGKILL);
        if wait_gone(self, Duration::from_secs(5)) {
            return Ok(());
        }
        Err(LabError::Process(format!(
            "process {} did not exit after SIGKILL",
            self.pid
        )))
    }

    /// Sends a signal if the process is still this one.
    pub fn signal(&self, sig: Signal) -> Result<(), LabError> {
        if !self.alive() {
            return Err(LabError::Process(format!(
                "process {} is not running",
                self.pid
            )));
        }
        kill(Pid::from_raw(self.pid as i32), sig)
            .map_err(|e| LabError::Process(format!("signal {sig} to process {}: {e}", self.pid)))
    }
}

fn wait_gone(p: &ProcId, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !p.alive() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    !p.alive()
}

/// What to start and where its output goes.
pub struct SpawnSpec<'a> {
    pub ns: &'a NetNs,
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub log: &'a Path,
}

/// Starts a process inside a namespace, in its own session (a Ctrl-C aimed at the caller does
/// not reach it), with stdout and stderr appended to its log.
pub fn spawn(spec: &SpawnSpec<'_>) -> Result<ProcId, LabError> {
    let Some(program) = spec.argv.first() else {
        return Err(LabError::Invalid("empty command".into()));
    };
    if let Some(dir) = spec.log.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| LabError::io(format!("create {}", dir.display()), e))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.log)
        .map_err(|e| LabError::io(format!("open log {}", spec.log.display()), e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| LabError::io(format!("open log {}", spec.log.display()), e))?;
    let mut cmd = spec.ns.command(program)?;
    cmd.args(&spec.argv[1..])
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| LabError::io(format!("start {program}"), e))?;
    let pid = child.id();
    // The child may already have exited (bad flags): it is then a zombie of ours, still in /proc.
    Ok(ProcId::of(pid).unwrap_or(ProcId { pid, start_time: 0 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive_and_a_forged_start_time_is_not() {
        let me = ProcId::current();
        assert!(me.alive());
        let forged = ProcId {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(
            !forged.alive(),
            "a reused PID must not look like the original process"
        );
        assert!(
            !ProcId {
                pid: u32::MAX - 1,
                start_time: 0
            }
            .alive()
        );
    }
}
