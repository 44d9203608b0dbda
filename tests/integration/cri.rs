//! A real runtime: containerd's CRI plugin (what kubelet talks to) runs two pods on a lab node
//! with podnet as their network, and they reach each other and a pod on another node.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::{Cluster, PODNET_CNI};
use crate::support::{poll, unique};

const IMAGE: &str = "localhost/podnet-busybox:1";

fn sh(cwd: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A docker-archive image of busybox, built offline: sleep, ping, ip and sh.
fn build_image(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    for d in ["proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "ping", "ip", "cat", "wget"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    sh(dir, "tar -C rootfs -cf layer.tar .");
    let layer_sha = String::from_utf8(
        Command::new("sha256sum")
            .arg(dir.join("layer.tar"))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let layer_sha = layer_sha.split_whitespace().next().unwrap().to_string();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sleep", "2147483647"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_sha}")]},
    })
    .to_string();
    std::fs::write(dir.join("config.json"), &config).unwrap();
    let manifest = json!([{"Config": "config.json", "RepoTags": [IMAGE], "Layers": ["layer.tar"]}]);
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    sh(dir, "tar -cf image.tar manifest.json config.json layer.tar");
    dir.join("image.tar")
}

/// What containerd leaves outside its directories if a test goes wrong: shim processes, overlay
/// mounts, cgroups, pod namespaces. Removed on drop, whatever happened.
struct CriLeftovers {
    sock: PathBuf,
    root: PathBuf,
    cgroup_parent: String,
    netns_before: Vec<String>,
    /// libcni's result cache, removed if this test made it (and left it empty).
    cni_cache_existed: bool,
}

impl Drop for CriLeftovers {
    fn drop(&mut self) {
        // Shims this containerd started name its socket on their command line.
        let sock = self.sock.display().to_string();
        for e in std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
        {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("containerd-shim") && cmdline.contains(&sock) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let root = self.root.display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
        {
            let base = hierarchy
                .path()
                .join(self.cgroup_parent.trim_start_matches('/'));
            let mut dirs: Vec<PathBuf> = walk(&base);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                let _ = std::fs::remove_dir(d);
            }
        }
        if !self.cni_cache_existed {
            let _ = std::fs::remove_dir("/var/lib/cni/results");
            let _ = std::fs::remove_dir("/var/lib/cni");
        }
        for ns in podnet::kernel::netns::NetNs::list_named().unwrap_or_default() {
            if ns.starts_with("cni-") && !self.netns_before.contains(&ns) {
                let _ = podnet::kernel::netns::NetNs::delete(&ns);
            }
        }
    }
}

/// The python3 that has the CRI API client: scripts/setup.sh installs it in a venv of its own
/// (Debian's python3 refuses packages from pip), `PODNET_CRI_PYTHON` names another.
fn cri_python() -> PathBuf {
    if let Some(p) = std::env::var_os("PODNET_CRI_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from("/opt/podnet-test/cri-venv/bin/python3");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/setup.sh (or set PODNET_CRI_PYTHON)",
        venv.display()
    );
    venv
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if dir.is_dir() {
        out.push(dir.to_path_buf());
        for e in std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
        {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}

#[test]
fn containerd_cri_runs_two_pods_on_podnet() {
    let mut c = Cluster::small("ccri", 2);
    c.put_config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    c.start("node1", &[]);
    c.start("node2", &[]);
    let subnet = c.wait_ready("node1").subnet.unwrap().trunc();
    c.wait_ready("node2");
    let remote = c.add_pod("node2", "remote", "1.0.0");

    let dir = c.lab.workdir().join("containerd");
    let bin = dir.join("cni-bin");
    let conf_dir = dir.join("cni-conf");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf_dir).unwrap();
    // Installed the way kube-flannel's init container installs flannel's plugin.
    std::os::unix::fs::symlink(PODNET_CNI, bin.join("flannel")).unwrap();
    for p in ["loopback", "portmap"] {
        std::os::unix::fs::symlink(format!("/usr/lib/cni/{p}"), bin.join(p)).unwrap();
    }
    let mut first = c.cni_conf("node1", "1.0.0");
    first.as_object_mut().unwrap().remove("cniVersion");
    first.as_object_mut().unwrap().remove("name");
    let conflist = json!({"cniVersion": "1.0.0", "name": "cbr0", "plugins": [first, {"type": "portmap", "capabilities": {"portMappings": true}}]});
    std::fs::write(conf_dir.join("10-flannel.conflist"), conflist.to_string()).unwrap();
    let sock = dir.join("containerd.sock");
    let root = dir.join("root");
    let config = format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
"#,
        root = root.display(),
        state = dir.join("state").display(),
        sock = sock.display(),
        bin = bin.display(),
        conf = conf_dir.display(),
    );
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let cgroup_parent = format!("/{}", unique("podnet-cri-"));
    let _leftovers = CriLeftovers {
        sock: sock.clone(),
        root: root.clone(),
        cgroup_parent: cgroup_parent.clone(),
        netns_before: podnet::kernel::netns::NetNs::list_named().unwrap(),
        cni_cache_existed: Path::new("/var/lib/cni").exists(),
    };
    let argv: Vec<String> = vec![
        "containerd".into(),
        "--config".into(),
        dir.join("config.toml").display().to_string(),
    ];
    let daemon = c.lab.spawn("node1", &argv, &[]).unwrap();
    let ctr = |args: &[&str]| {
        Command::new("ctr")
            .arg("--address")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap()
    };
    poll("containerd to answer", Duration::from_secs(30), || {
        ctr(&["version"]).status.success().then_some(())
    });
    let image = build_image(&dir);
    let out = ctr(&[
        "-n",
        "k8s.io",
        "images",
        "import",
        &image.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/cri_pods.py");
    let logs = dir.join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let out = Command::new(cri_python())
        .arg(&script)
        .arg(&sock)
        .arg(IMAGE)
        .arg(&cgroup_parent)
        .arg(&logs)
        .arg(remote.ip.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cri_pods.py: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
    assert_eq!(r["errors"], json!([]), "{r}\ncontainerd log:\n{log}");
    let pods = r["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 2);
    for p in pods {
        let ip: std::net::Ipv4Addr = p["ip"].as_str().unwrap().parse().unwrap();
        assert!(subnet.contains(&ip), "{ip} outside node1's subnet {subnet}");
    }
    for check in ["a_to_b", "b_to_a", "a_to_remote"] {
        assert_eq!(r[check]["exit"], 0, "{check}: {}", r[check]);
    }
    assert!(
        r["a_addr"]["stdout"]
            .as_str()
            .unwrap()
            .contains(pods[0]["ip"].as_str().unwrap())
    );
    // Stop and remove made containerd call DEL (twice per pod): nothing is left allocated.
    assert!(
        c.allocations("node1").is_empty(),
        "{:?}",
        c.allocations("node1")
    );
    assert!(c.veths("node1").is_empty(), "{:?}", c.veths("node1"));
    c.lab.stop(daemon.id.pid).unwrap();
}
