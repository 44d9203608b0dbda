//! Waiting for a directory to change (files written, renamed into it, or removed), with a
//! timeout, so a reader of manifests or records reacts in milliseconds and still looks again
//! every so often should an event be missed (a directory created later, a full queue).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::KernelError;

pub struct DirWatch {
    dir: PathBuf,
    inotify: Inotify,
    watching: bool,
}

impl DirWatch {
    /// Watches `dir`; it need not exist yet.
    pub fn new(dir: &Path) -> Result<DirWatch, KernelError> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|e| KernelError::io("inotify", e.into()))?;
        let mut w = DirWatch {
            dir: dir.to_path_buf(),
            inotify,
            watching: false,
        };
        w.arm();
        Ok(w)
    }

    fn arm(&mut self) {
        if self.watching {
            return;
        }
        let mask = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_DELETE_SELF;
        self.watching = self.inotify.add_watch(&self.dir, mask).is_ok();
    }

    /// Waits until something in the directory changed or `timeout` passed; `true` on a change.
    /// While the directory does not exist, it looks for it every 200 ms.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        self.arm();
        let timeout = if self.watching {
            timeout
        } else {
            timeout.min(Duration::from_millis(200))
        };
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        let ready = matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0);
        if !ready {
            return false;
        }
        let mut changed = false;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for e in events {
                if e.mask.contains(AddWatchFlags::IN_DELETE_SELF)
                    || e.mask.contains(AddWatchFlags::IN_IGNORED)
                {
                    self.watching = false;
                }
                changed = true;
            }
        }
        changed
    }
}
