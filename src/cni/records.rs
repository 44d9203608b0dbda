//! Pod records: which Kubernetes pod an attachment belongs to, written by the plugin at ADD
//! (from `K8S_POD_NAMESPACE` and `K8S_POD_NAME`, which kubelet and containerd pass in
//! `CNI_ARGS`) and removed at DEL and GC. podnetd's network policy reads them to know the
//! addresses of this node's pods before (or without) the Kubernetes API saying so.
//!
//! One JSON file per attachment, `<dataDir>/pods/<container ID>.json`, replaced atomically; the
//! directory is root's alone.

use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The directory under the plugin's `dataDir`.
pub const DIR: &str = "pods";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
}

fn path(data_dir: &Path, container_id: &str) -> PathBuf {
    data_dir.join(DIR).join(format!("{container_id}.json"))
}

/// Records the pod of an attachment (the container ID is validated before it gets here).
pub fn write(data_dir: &Path, container_id: &str, rec: &PodRecord) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir.join(DIR))?;
    let text = serde_json::to_vec(rec).expect("a record serializes");
    crate::util::files::write_atomic(&path(data_dir, container_id), &text, Some(0o600))
}

/// Forgets an attachment's record (absent is fine).
pub fn remove(data_dir: &Path, container_id: &str) {
    let _ = std::fs::remove_file(path(data_dir, container_id));
}

/// Every record, by container ID; unreadable ones are skipped.
pub fn read_all(data_dir: &Path) -> Vec<(String, PodRecord)> {
    let Ok(entries) = std::fs::read_dir(data_dir.join(DIR)) else {
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
