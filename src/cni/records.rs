//! Pod records: which Kubernetes pod an attachment belongs to, written by the plugin at ADD
//! (from `K8S_POD_NAMESPACE` and `K8S_POD_NAME`, which kubelet and containerd pass in
//! `CNI_ARGS`) and removed at DEL and GC. podnetd's network policy reads them to know the
//! addresses of this node's pods before (or without) the Kubernetes API saying so.
//!
//! One JSON file per attachment, `<podRecordsDir>/<container ID>.json`, replaced atomically; the
//! directory is root's alone. By default under `/run` (a tmpfs): a record describes a pod's
//! network namespace, which does not outlive the machine's uptime, so a reboot takes both, and
//! podnetd's container mounts `/run/podnet` already (its socket).

use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the plugin writes them and podnetd reads them, unless configured otherwise (the plugin's
/// `podRecordsDir`, podnetd's `--pod-records-dir`).
pub const DEFAULT_DIR: &str = "/run/podnet/pods";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
}

fn path(dir: &Path, container_id: &str) -> PathBuf {
    dir.join(format!("{container_id}.json"))
}

/// Records the pod of an attachment (the container ID is validated before it gets here).
pub fn write(dir: &Path, container_id: &str, rec: &PodRecord) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let text = serde_json::to_vec(rec).expect("a record serializes");
    // Not synced: a crash of the machine that could lose the record takes the pod's namespace
    // too. Syncing the file and the directory would cost every ADD where the directory is on a
    // disk (0.23 ms together on this project's virtual disk, milliseconds on a spinning one).
    crate::util::files::write_unsynced(&path(dir, container_id), &text, Some(0o600))
}

/// Forgets an attachment's record (absent is fine).
pub fn remove(dir: &Path, container_id: &str) {
    let _ = std::fs::remove_file(path(dir, container_id));
}

/// Where plugins before `podRecordsDir` kept the records: `pods` under their `dataDir`. The
/// plugin's DEL and GC remove records there too, so a node upgraded with pods running keeps no
/// stale one.
pub fn legacy_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pods")
}

/// Every record, by container ID; unreadable ones are skipped.
pub fn read_all(dir: &Path) -> Vec<(String, PodRecord)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PodRecord)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_suffix(".json")?.to_string();
            let text = std::fs::read(e.path()).ok()?;
            Some((id, serde_json::from_slice(&text).ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let dir = std::env::temp_dir().join(format!("podnet-rec-{:08x}", rand::random::<u32>()));
        let rec = PodRecord {
            namespace: "x".into(),
            name: "a".into(),
            ips: vec!["10.244.1.2".parse().unwrap()],
        };
        write(&dir, "c1", &rec).unwrap();
        assert_eq!(read_all(&dir), vec![("c1".to_string(), rec)]);
        remove(&dir, "c1");
        assert!(read_all(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
