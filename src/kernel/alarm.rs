//! A deadline for one thread's blocking system call.
//!
//! Some waits have no timeout of their own: `flock(2)` blocks until the lock is free, or, with
//! `LOCK_NB`, not at all. A waiter that polls instead (try, sleep, try again) either wakes
//! often, burning CPU, or oversleeps the release: eight pod ADDs queued on one address store
//! each overslept the one before by up to the polling pause. Blocking wakes a waiter when the
//! lock is released; `Alarm` bounds the wait. It arms a timer that, from the deadline on,
//! sends a signal to this thread and no other (`SIGEV_THREAD_ID`), again every `REPEAT` until
//! the `Alarm` is dropped: a thread that was not yet in its blocking call when the first one
//! came (preempted in between) is interrupted by the next. The signal's handler does nothing
//! and is installed without `SA_RESTART`, so the blocking call returns `EINTR` and the caller
//! sees that its time is up. The signal is unblocked for the thread while the `Alarm` lives (a
//! mask inherited across `exec` could block it). Dropping the `Alarm` deletes the timer.
//!
//! The signal is the first real-time signal glibc leaves to programs (`SIGRTMIN`). Its handler
//! is installed once per process and never removed: a signal of a timer that fired just before
//! it was deleted reaches a handler that ignores it, never the default action (which would end
//! the process). Only system calls made while an `Alarm` is armed can be interrupted by it.

use std::sync::OnceLock;
use std::time::Duration;

use super::KernelError;

/// How often the signal comes again after the deadline, until the `Alarm` is dropped.
const REPEAT: Duration = Duration::from_millis(2);

/// A timer that interrupts this thread's blocking system call from its deadline on.
pub struct Alarm {
    timer: libc::timer_t,
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

extern "C" fn ignore(_: libc::c_int) {}

fn signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// Installs the handler once; the error, if it could not be, every time.
fn install_handler() -> Result<(), KernelError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let r = INSTALLED.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid value to fill in; the handler is a plain
        // function that touches nothing.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = ignore as extern "C" fn(libc::c_int) as libc::sighandler_t;
            act.sa_flags = 0;
            libc::sigemptyset(&mut act.sa_mask);
            if libc::sigaction(signal(), &act, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
        }
        Ok(())
    });
    r.map_err(|errno| {
        KernelError::io(
            "install the alarm signal's handler",
            std::io::Error::from_raw_os_error(errno),
        )
    })
}

impl Alarm {
    /// Arms the timer: after `timeout` (at least a nanosecond) this thread's blocking system
    /// call, if it is in one, returns `EINTR`.
    pub fn after(timeout: Duration) -> Result<Alarm, KernelError> {
        install_handler()?;
        let err = |what: &str| KernelError::io(what, std::io::Error::last_os_error());
        // SAFETY: a set built from the empty one; changes only this thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal());
            if libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(KernelError::Other(
                    "unblock the alarm signal for this thread".into(),
                ));
            }
        }
        // SAFETY: a zeroed sigevent is valid to fill in; the timer is written by the kernel
        // and owned by the `Alarm` from here on.
        let timer = unsafe {
            let mut ev: libc::sigevent = std::mem::zeroed();
            ev.sigev_notify = libc::SIGEV_THREAD_ID;
            ev.sigev_signo = signal();
            ev.sigev_notify_thread_id = libc::gettid();
            let mut timer: libc::timer_t = std::ptr::null_mut();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut timer) != 0 {
                return Err(err("create a timer"));
            }
            timer
        };
        let alarm = Alarm { timer };
        let spec = libc::itimerspec {
            it_interval: timespec(REPEAT),
            it_value: timespec(timeout.max(Duration::from_nanos(1))),
        };
        // SAFETY: a timer this `Alarm` owns and a valid spec.
        if unsafe { libc::timer_settime(alarm.timer, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(err("arm a timer"));
        }
        Ok(alarm)
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        // SAFETY: the timer was created by `after` and is deleted once.
        unsafe {
            libc::timer_delete(self.timer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Blocks reading a pipe nobody writes to, under an alarm of `ms`: the time waited and
    /// the errno the read returned.
    fn blocked_read(fd: libc::c_int, ms: u64) -> (Duration, Option<i32>) {
        let start = Instant::now();
        let alarm = Alarm::after(Duration::from_millis(ms)).unwrap();
        let mut b = [0u8; 1];
        // SAFETY: reading into a buffer of ours.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        let errno = (n < 0).then(|| std::io::Error::last_os_error().raw_os_error());
        drop(alarm);
        (start.elapsed(), errno.flatten())
    }

    #[test]
    fn an_alarm_interrupts_a_blocking_call_at_its_deadline_and_not_after_its_drop() {
        let mut fds = [0; 2];
        // SAFETY: a pipe of our own, closed at the end.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // A broken alarm fails the test instead of hanging it: the pipe gets a byte after 10 s,
        // through a descriptor of the watchdog's own (a broken pipe by then if the test passed).
        // SAFETY: duplicating our pipe's write end; the watchdog closes its copy.
        let w = unsafe { libc::dup(fds[1]) };
        assert!(w >= 0);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(10));
            // SAFETY: one byte into the watchdog's own descriptor, then closed.
            unsafe {
                libc::write(w, b"x".as_ptr().cast(), 1);
                libc::close(w);
            }
        });
        let (waited, errno) = blocked_read(fds[0], 30);
        assert_eq!(errno, Some(libc::EINTR));
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        // A dropped alarm never fires: the next wait lasts its own deadline, not the first's.
        drop(Alarm::after(Duration::from_millis(10)).unwrap());
        let (waited, errno) = blocked_read(fds[0], 120);
        assert_eq!(errno, Some(libc::EINTR));
        assert!(waited >= Duration::from_millis(120), "{waited:?}");
        // SAFETY: closing our pipe.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
