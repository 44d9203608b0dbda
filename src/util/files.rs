//! Files that other programs read while we write them: atomic replacement, and an exclusive
//! advisory lock with a deadline that says who holds it when it cannot be taken.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Replaces `path` atomically: readers see the old file or the new one, never a mix. The new
/// file gets `mode`, or, when `None`, the mode of the file it replaces (else 0644). The
/// directory is created (0755) if needed, and synced after the rename so the change survives a
/// crash.
pub fn write_atomic(path: &Path, contents: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    replace(path, contents, mode, true)
}

/// `write_atomic` without the two syncs: as atomic for readers, but a crash of the machine can
/// lose the change. Only for files that describe what does not outlive the machine's own
/// state (a pod record is worthless once a reboot has taken the pod's namespace), where a
/// sync on every write would be paid by every pod event: a restart of any program keeps the
/// file, the page cache holds it.
pub fn write_unsynced(path: &Path, contents: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    replace(path, contents, mode, false)
}

fn replace(path: &Path, contents: &[u8], mode: Option<u32>, sync: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mode = mode.unwrap_or_else(|| {
        std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644)
    });
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        // The directory is made when missing, not checked on every write.
        let mut f = match File::create(&tmp) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                File::create(&tmp)?
            }
            r => r?,
        };
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        if sync {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if sync {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Renames `from` to `to` unless `to` exists (`AlreadyExists` then, and nothing changes):
/// `renameat2` with `RENAME_NOREPLACE`, as atomic against another creator of `to` as
/// `O_CREAT | O_EXCL`.
pub fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Copies `src` to `path` atomically with `mode` (a runtime never execs a half-written plugin).
pub fn copy_atomic(src: &Path, path: &Path, mode: u32) -> std::io::Result<()> {
    let data = std::fs::read(src)?;
    write_atomic(path, &data, Some(mode))
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("open lock file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lock {path} is still held after {waited:?}{}", holder_text(.holder))]
    Timeout {
        path: PathBuf,
        waited: Duration,
        holder: Option<u32>,
    },
}

fn holder_text(holder: &Option<u32>) -> String {
    match holder {
        Some(pid) => format!(" by process {pid}"),
        None => String::new(),
    }
}

/// How long a waiter sleeps before trying again when no timer can be had for a blocking
/// wait (`wait_blocked`).
const LOCK_POLL_FALLBACK: Duration = Duration::from_millis(1);

/// An exclusive `flock` on a file, released when dropped. The holder writes its PID into the
/// file, so a waiter that gives up can say who holds it.
#[derive(Debug)]
pub struct Lock {
    file: File,
    path: PathBuf,
}

impl Lock {
    /// Takes the lock, waiting at most `timeout` (`None`: wait as long as it takes). The lock
    /// file is created with `mode` when it does not exist.
    ///
    /// A waiter blocks in `flock`, so the kernel wakes it when the holder lets go, and a timer
    /// interrupts the wait at the deadline (`kernel::alarm`). Polling instead either wakes
    /// often or oversleeps the release: eight pod ADDs queued on one address store each lost
    /// up to the polling pause.
    pub fn acquire(path: &Path, mode: u32, timeout: Option<Duration>) -> Result<Lock, LockError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(mode)
            .open(path)
            .map_err(|source| LockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let start = Instant::now();
        let failed = |source| LockError::Lock {
            path: path.to_path_buf(),
            source,
        };
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => {}
                _ => return Err(failed(err)),
            }
            let left = match timeout {
                Some(t) if start.elapsed() >= t => {
                    return Err(LockError::Timeout {
                        path: path.to_path_buf(),
                        waited: t,
                        holder: read_pid(path),
                    });
                }
                Some(t) => Some(t.saturating_sub(start.elapsed())),
                None => None,
            };
            if wait_blocked(&file, left).map_err(failed)? {
                break;
            }
        }
        let mut lock = Lock {
            file,
            path: path.to_path_buf(),
        };
        lock.record_holder();
        Ok(lock)
    }

    /// Whether someone holds the lock at `path` now; a file that cannot be opened (none yet)
    /// is held by no one. It probes with a shared lock, which no other probe excludes: a
    /// holder taking the lock during the probe finds it busy, as with any other holder.
    pub fn is_held(path: &Path) -> bool {
        let Ok(file) = File::open(path) else {
            return false;
        };
        // SAFETY: flock on a descriptor we own; closing it releases the probe.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
    }

    /// Tries once; `Ok(None)` when someone else holds it.
    pub fn try_acquire(path: &Path, mode: u32) -> Result<Option<Lock>, LockError> {
        match Lock::acquire(path, mode, Some(Duration::ZERO)) {
            Ok(l) => Ok(Some(l)),
            Err(LockError::Timeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the PID in place, padded to a fixed width, so the file never shrinks: no
    /// truncation, which on ext4 costs a journal transaction and, for a file truncated to zero
    /// and written again, a flush when it is closed (`auto_da_alloc`).
    fn record_holder(&mut self) {
        use std::os::unix::fs::FileExt;
        let pid = format!("{:>10}\n", std::process::id());
        let _ = self.file.write_all_at(pid.as_bytes(), 0);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Releases the lock and removes its file (for locks whose subject is gone).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Blocks until `file`'s exclusive lock is taken (`true`) or `left` has passed (`false`; the
/// caller tries once more and gives up). Another signal ends the wait early (`false`), and the
/// caller waits again for what is left. Without a timer (none to be had), it sleeps briefly
/// instead and lets the caller try again.
fn wait_blocked(file: &File, left: Option<Duration>) -> std::io::Result<bool> {
    let _alarm = match left.map(crate::kernel::alarm::Alarm::after) {
        Some(Ok(alarm)) => Some(alarm),
        Some(Err(_)) => {
            std::thread::sleep(left.unwrap_or_default().min(LOCK_POLL_FALLBACK));
            return Ok(false);
        }
        None => None,
    };
    // SAFETY: flock on a descriptor the caller owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.kind() == std::io::ErrorKind::Interrupted {
        return Ok(false);
    }
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own for one test, removed when the test ends (passed or failed).
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            let d = std::env::temp_dir().join(format!(
                "podnet-files-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }

        fn file(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn atomic_write_replaces_and_keeps_mode() {
        let dir = std::env::temp_dir().join(format!("podnet-senv-{}", rand::random::<u32>()));
        let path = dir.join("sub/subnet.env");
        write_atomic(&path, b"A=1\n", None).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "A=1\n");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&path, b"A=2\n", None).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "A=2\n");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unsynced_write_replaces_the_same_way() {
        let dir = Scratch::new();
        let p = dir.file("pods/c1.json");
        write_unsynced(&p, b"{}", Some(0o600)).unwrap();
        write_unsynced(&p, b"{\"a\":1}", Some(0o600)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp files left");
    }

    #[test]
    fn atomic_write_sets_a_given_mode() {
        let dir = Scratch::new();
        let p = dir.file("a.env");
        write_atomic(&p, b"A=3\n", Some(0o640)).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }

    /// A waiter blocks until the holder lets go and then holds the lock, with or without a
    /// deadline.
    #[test]
    fn a_waiter_takes_the_lock_when_the_holder_lets_go() {
        let dir = Scratch::new();
        let p = dir.file("w.lock");
        for timeout in [Some(Duration::from_secs(30)), None] {
            let held = Lock::acquire(&p, 0o600, None).unwrap();
            let start = Instant::now();
            let holder = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                drop(held);
            });
            let lock = Lock::acquire(&p, 0o600, timeout).unwrap();
            assert!(start.elapsed() >= Duration::from_millis(50));
            assert!(
                Lock::try_acquire(&p, 0o600).unwrap().is_none(),
                "held by the waiter"
            );
            holder.join().unwrap();
            drop(lock);
        }
    }

    #[test]
    fn a_held_lock_times_out_naming_the_holder() {
        let dir = Scratch::new();
        let p = dir.file("x.lock");
        let held = Lock::acquire(&p, 0o600, None).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // flock locks belong to the open file description: a second open contends.
        let err = Lock::acquire(&p, 0o600, Some(Duration::from_millis(30))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("is still held after 30ms"), "{msg}");
        assert!(
            msg.contains(&format!("by process {}", std::process::id())),
            "{msg}"
        );
        assert!(Lock::try_acquire(&p, 0o600).unwrap().is_none());
        assert!(Lock::is_held(&p));
        drop(held);
        assert!(!Lock::is_held(&p));
        assert!(Lock::try_acquire(&p, 0o600).unwrap().is_some());
        assert!(!Lock::is_held(&dir.file("none.lock")), "no file, no holder");
    }
}
