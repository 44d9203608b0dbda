//! Network namespaces: named ones compatible with `ip netns`, handles checked to really be
//! namespaces, and work inside a namespace done on a throwaway OS thread.
//!
//! The rule that keeps this safe: the calling thread never changes namespace. `run` starts a
//! fresh thread, moves only that thread, and lets it die; sockets opened there stay bound to the
//! namespace they were created in and can be used from anywhere afterwards. The one exception,
//! `socket_in`, moves the calling thread for a single `socket(2)` call and back (aborting the
//! process if it cannot come back).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use super::KernelError;

/// Where named namespaces are bind-mounted, as `ip netns` does.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// `NSFS_MAGIC` from linux/magic.h: the filesystem type of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// An open network namespace. Holding it keeps the namespace alive.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens a namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`, ...) and checks that it is one.
    pub fn open_path(path: impl AsRef<Path>) -> Result<NetNs, KernelError> {
        let path = path.as_ref();
        let file = File::open(path)
            .map_err(|e| KernelError::io(format!("open netns {}", path.display()), e))?;
        let fs = nix::sys::statfs::fstatfs(&file)
            .map_err(|e| KernelError::io(format!("statfs netns {}", path.display()), e.into()))?;
        // /proc/PID/ns/net lives on procfs but resolves to nsfs when opened.
        if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(KernelError::NotANamespace(path.to_path_buf()));
        }
        Ok(NetNs {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Opens the named namespace `/run/netns/NAME`.
    pub fn open(name: &str) -> Result<NetNs, KernelError> {
        NetNs::open_path(named_path(name))
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<NetNs, KernelError> {
        NetNs::open_path("/proc/thread-self/ns/net")
    }

    /// The host's own network, which podnet's lab and tests never modify: that of PID 1, or,
    /// where PID 1 is more privileged than us and cannot be inspected (some sandboxes), the
    /// namespace this process started in.
    pub fn host() -> Result<NetNs, KernelError> {
        NetNs::open_path("/proc/1/ns/net").or_else(|_| NetNs::open_path("/proc/self/ns/net"))
    }

    /// Creates a named namespace the way `ip netns add` does, so `ip netns` sees it.
    pub fn create(name: &str) -> Result<NetNs, KernelError> {
        validate_name(name)?;
        ensure_run_dir()?;
        let path = named_path(name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| KernelError::io(format!("create netns file {}", path.display()), e))?;
        let target = path.clone();
        let made = std::thread::spawn(move || -> Result<(), KernelError> {
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| KernelError::io("unshare(CLONE_NEWNET)", e.into()))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| {
                KernelError::io(
                    format!("bind-mount netns on {}", target.display()),
                    e.into(),
                )
            })
        })
        .join()
        .unwrap_or(Err(KernelError::Thread("netns create")));
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        NetNs::open_path(&path)
    }

    /// Removes a named namespace. A name that does not exist is not an error.
    pub fn delete(name: &str) -> Result<(), KernelError> {
        validate_name(name)?;
        let path = named_path(name);
        if !path.exists() {
            return Ok(());
        }
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(KernelError::io(
                    format!("umount {}", path.display()),
                    e.into(),
                ));
            }
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(KernelError::io(format!("remove {}", path.display()), e)),
        }
    }

    /// Names of all namespaces under `/run/netns`.
    pub fn list_named() -> Result<Vec<String>, KernelError> {
        let dir = match std::fs::read_dir(NETNS_RUN_DIR) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(KernelError::io(format!("read {NETNS_RUN_DIR}"), e)),
        };
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Whether a named namespace exists.
    pub fn exists(name: &str) -> bool {
        named_path(name).exists()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Identity of the namespace (device and inode of its nsfs file).
    pub fn id(&self) -> Result<(u64, u64), KernelError> {
        let m = self
            .file
            .metadata()
            .map_err(|e| KernelError::io(format!("stat netns {}", self.path.display()), e))?;
        Ok((m.dev(), m.ino()))
    }

    /// Whether two handles name the same namespace (whatever paths they were opened by).
    pub fn same_as(&self, other: &NetNs) -> Result<bool, KernelError> {
        Ok(self.id()? == other.id()?)
    }

    /// Runs `f` on a new OS thread that has entered this namespace; the thread ends afterwards.
    pub fn run<T, F>(&self, f: F) -> Result<T, KernelError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T, KernelError> {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                    KernelError::io(format!("setns {}", self.path.display()), e.into())
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(KernelError::Thread("work in netns panicked")))
        })
    }

    /// A socket created inside this namespace by the calling thread itself: it enters the
    /// namespace for the one `socket(2)` call and returns at once. Cheaper than `run` (no
    /// thread to start, schedule and join: what a short-lived process like the CNI plugin
    /// pays on every call), and the one exception to the rule above, kept to two `setns`
    /// around one system call with nothing of ours in between. A socket stays in the
    /// namespace it was created in, wherever it is used afterwards.
    ///
    /// Invariant: the thread is back in its own namespace when this returns. If it cannot go
    /// back (which the kernel refuses only for lack of memory), the process aborts: going on in
    /// the wrong namespace could change the pod's network where the host's was meant.
    pub fn socket_in(
        &self,
        domain: libc::c_int,
        ty: libc::c_int,
        protocol: libc::c_int,
    ) -> Result<std::os::fd::OwnedFd, KernelError> {
        use std::os::fd::FromRawFd;
        let home = NetNs::current()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| KernelError::io(format!("setns {}", self.path.display()), e.into()))?;
        // SAFETY: a plain system call; the descriptor is checked before it is owned.
        let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) };
        let made = io::Error::last_os_error();
        if let Err(e) = setns(home.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            eprintln!(
                "podnet: cannot return from network namespace {} to {}: {e}; aborting",
                self.path.display(),
                home.path.display()
            );
            std::process::abort();
        }
        if fd < 0 {
            return Err(KernelError::io(
                format!("open a socket in netns {}", self.path.display()),
                made,
            ));
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    }

    /// A command that will start inside this namespace (the parent process does not move).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command, KernelError> {
        let fd = self
            .file
            .try_clone()
            .map_err(|e| KernelError::io(format!("dup netns fd {}", self.path.display()), e))?;
        let mut cmd = Command::new(program);
        // SAFETY: only setns(2) runs between fork and exec; it is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let rc = libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET);
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for NetNs {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

fn validate_name(name: &str) -> Result<(), KernelError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(KernelError::InvalidName(name.to_string()))
    }
}

/// `/run/netns` as a shared mount point, exactly as iproute2 prepares it, so namespaces made here
/// are visible to other mount namespaces (container runtimes) too.
fn ensure_run_dir() -> Result<(), KernelError> {
    std::fs::create_dir_all(NETNS_RUN_DIR)
        .map_err(|e| KernelError::io(format!("mkdir {NETNS_RUN_DIR}"), e))?;
    let shared = || {
        mount(
            None::<&str>,
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| KernelError::io(format!("bind-mount {NETNS_RUN_DIR}"), e.into()))?;
            shared().map_err(|e| KernelError::io(format!("make {NETNS_RUN_DIR} shared"), e.into()))
        }
        Err(e) => Err(KernelError::io(
            format!("make {NETNS_RUN_DIR} shared"),
            e.into(),
        )),
    }
}
