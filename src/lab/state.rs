//! A lab's state file, `/run/podnet-lab/NAME`: what the lab created, so that a later command (or
//! the sweep after a crash) can find and remove all of it.
//!
//! Whatever the lab is about to create is recorded *before* it is created, and the file is
//! replaced atomically, so a crash at any point leaves a file that names everything there is.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::LabError;
use super::plan::Plan;
use super::process::{ProcId, ProcRecord};
use crate::util::files::{Lock, write_atomic};

pub const STATE_DIR: &str = "/run/podnet-lab";
const FORMAT_VERSION: u32 = 1;

/// A pod namespace made by `lab pod add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub node: String,
    pub pod: String,
    pub netns: String,
}

/// Everything a lab has.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub version: u32,
    pub plan: Plan,
    /// The process whose lifetime bounds the lab (tests, benchmarks, a demo without `--keep`);
    /// `None` for a lab that lives until `lab down`.
    pub owner: Option<ProcId>,
    pub created_unix: u64,
    /// Temporary directory: etcd data, logs, per-node files.
    pub workdir: PathBuf,
    /// Namespaces created or about to be created.
    pub namespaces: Vec<String>,
    pub procs: Vec<ProcRecord>,
    pub pods: Vec<PodRecord>,
    /// Processes started so far; numbers their logs so a restart never appends to an old log.
    #[serde(default)]
    pub spawned: u64,
}

impl LabState {
    pub fn new(plan: Plan, owner: Option<ProcId>, workdir: PathBuf) -> LabState {
        let created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        LabState {
            version: FORMAT_VERSION,
            plan,
            owner,
            created_unix,
            workdir,
            namespaces: Vec::new(),
            procs: Vec::new(),
            pods: Vec::new(),
            spawned: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.plan.name
    }

    /// A lab whose owner has died: nobody will tear it down but the sweep.
    pub fn orphaned(&self) -> bool {
        self.owner.is_some_and(|o| !o.alive())
    }
}

pub fn state_path(name: &str) -> PathBuf {
    Path::new(STATE_DIR).join(name)
}

fn lock_path(name: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!(".{name}.lock"))
}

fn ensure_dir() -> Result<(), LabError> {
    std::fs::create_dir_all(STATE_DIR).map_err(|e| LabError::io(format!("create {STATE_DIR}"), e))
}

/// An exclusive lock on one lab's state, held while it is read, changed and written back.
pub struct StateLock {
    lock: Lock,
}

/// How long a lab command waits for another one working on the same lab.
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);

impl StateLock {
    pub fn acquire(name: &str) -> Result<StateLock, LabError> {
        ensure_dir()?;
        let lock = Lock::acquire(&lock_path(name), 0o600, Some(LOCK_TIMEOUT))
            .map_err(|e| LabError::State(e.to_string()))?;
        Ok(StateLock { lock })
    }

    /// Removes the lock file (the lock itself goes with the descriptor).
    pub fn remove(self, _name: &str) {
        self.lock.remove();
    }
}

/// Reads a lab's state; `None` if there is no such lab.
pub fn load(name: &str) -> Result<Option<LabState>, LabError> {
    let path = state_path(name);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LabError::io(format!("read {}", path.display()), e)),
    };
    let st: LabState = serde_json::from_slice(&data)
        .map_err(|e| LabError::State(format!("{}: {e}", path.display())))?;
    if st.version != FORMAT_VERSION {
        return Err(LabError::State(format!(
            "{}: format version {} (this podnetctl reads {FORMAT_VERSION})",
            path.display(),
            st.version
        )));
    }
    Ok(Some(st))
}

/// Writes a lab's state atomically.
pub fn save(st: &LabState) -> Result<(), LabError> {
    ensure_dir()?;
    let path = state_path(st.name());
    let data = serde_json::to_vec_pretty(st).expect("state serializes");
    write_atomic(&path, &data, Some(0o644))
        .map_err(|e| LabError::io(format!("write {}", path.display()), e))
}

/// Creates the state file, failing if the name is taken.
pub fn create(st: &LabState) -> Result<(), LabError> {
    ensure_dir()?;
    let path = state_path(st.name());
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(_) => save(st),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(LabError::Taken(st.name().to_string()))
        }
        Err(e) => Err(LabError::io(format!("create {}", path.display()), e)),
    }
}

pub fn remove(name: &str) -> Result<(), LabError> {
    match std::fs::remove_file(state_path(name)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LabError::io(
            format!("remove {}", state_path(name).display()),
            e,
        )),
    }
}

/// Names of all labs that have a state file.
pub fn list() -> Result<Vec<String>, LabError> {
    let dir = match std::fs::read_dir(STATE_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LabError::io(format!("read {STATE_DIR}"), e)),
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}
