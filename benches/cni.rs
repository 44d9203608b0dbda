//! Pod setup: CNI ADD and DEL wall time per pod, podnet's plugin against Debian's reference chain
//! (bridge + host-local, configured exactly as flannel's plugin renders its delegate config), on
//! the same lab node, interleaved in one run, sequentially and 8 at once.
//!
//!   sudo cargo bench --bench cni            (BENCH_RUNS=3, BENCH_PODS=200 by default)
//!   sudo BENCH_IPMASQ=plugin cargo bench --bench cni
//!   BENCH_STRACE=/tmp/cni   one more ADD and DEL of podnet's under strace, after the runs
//!   BENCH_KERNEL=1          after the runs, 24 ADDs of each, 8 at once, under `perf trace -s`:
//!                           the time each spends inside netlink requests (the kernel's share)
//!   BENCH_IPAM_DIR=/dev/shm both plugins' IPAM directories in a directory of their own under this
//!                           one (removed at the end) instead of the lab's node directory: what the
//!                           file system under host-local's layout costs (one file made per ADD)
//!   BENCH_RECORDS_DIR=<dir> podnet's pod records in a directory of their own under this one
//!                           instead of /dev/shm (a tmpfs, as `/run` is on a node)
//!   BENCH_BLOCK=<n>         interleave blocks of n pods (n batches with 8 at once) instead of
//!                           single ones, so that a plugin mostly follows itself, as on a node
//!   BENCH_CYCLE=<any>       one at a time, each pod's DEL right after its ADD (an ADD then
//!                           follows a DEL, as in a rollout; per block with BENCH_BLOCK) instead
//!                           of all ADDs, then all DELs; the batches of 8 are as without it
//!   BENCH_BASELINE_PLUGIN=<podnet binary>  another build of podnet's plugin as a third system,
//!                           interleaved pod by pod and batch by batch with the other two (its
//!                           own bridge, subnet and IPAM directory): a change to the plugin
//!                           measured against the build before it in the same run
//!
//! Both plugins get `CNI_ARGS` as kubelet's runtime passes them (`K8S_POD_NAMESPACE`,
//! `K8S_POD_NAME`, ...): the reference ignores them, podnet's plugin records the pod for
//! network policy (one small file per ADD, removed at DEL).
//!
//! As a runtime does before it runs the network's plugins (containerd's CRI calls the
//! `loopback` plugin first), each pod's `lo` is up before its ADD.
//!
//! By default the daemon masquerades (`--ip-masq`, as kube-flannel.yml runs it) and neither
//! plugin adds rules. `BENCH_IPMASQ=plugin` is flannel's default instead: the daemon does not,
//! so podnet's plugin adds each pod to its nftables masquerade set and the reference runs
//! with `ipMasq: true` (its iptables chain per pod).

mod common;

use std::path::Path;
use std::time::Instant;

use common::*;
use podnet::lab::LabSpec;
use podnet::lab::cluster::{Cluster, attach_env};
use serde_json::json;

#[derive(Clone, Copy, PartialEq)]
enum System {
    Podnet,
    Reference,
    Baseline,
}

struct Bench {
    c: Cluster,
    podnet_conf: String,
    ref_conf: String,
    /// `BENCH_BASELINE_PLUGIN`: the other build and its conf.
    baseline: Option<(String, String)>,
}

/// `CNI_ARGS` as containerd's CRI passes them for kubelet's pods (the same keys, in one of the
/// orders it uses): podnet's plugin records the pod for network policy when they are there.
fn kubelet_args(id: &str) -> String {
    format!(
        "K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID=uid-{id};IgnoreUnknown=1;\
         K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{id}"
    )
}

/// A plugin's environment for one pod event, as kubelet's runtime sets it.
fn pod_env<'a>(
    cmd: &'a str,
    id: &'a str,
    netns: &'a str,
    args: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut env = attach_env(cmd, id, netns, "eth0");
    env.push(("CNI_ARGS", args));
    env
}

impl Bench {
    /// One plugin invocation; returns its wall time (spawn to exit), panics on failure.
    fn call(&self, sys: System, cmd: &str, id: &str, netns: &str) -> f64 {
        let args = kubelet_args(id);
        let env = pod_env(cmd, id, netns, &args);
        let t = Instant::now();
        let out = match sys {
            System::Podnet => self.c.cni("node1", &env, &self.podnet_conf),
            System::Reference => {
                let bridge = "/usr/lib/cni/bridge";
                self.c.lab.cni("node1", bridge, &env, &self.ref_conf)
            }
            System::Baseline => {
                let (plugin, conf) = self.baseline.as_ref().expect("a baseline plugin");
                self.c.lab.cni("node1", plugin, &env, conf)
            }
        }
        .unwrap();
        let dt = t.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{cmd} {id}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        dt
    }
}

/// The masquerade step alone, the way the plugin took it before (`nft -f` of its script) and
/// over nfnetlink (the same transaction, the socket's release left to a grandchild: what the
/// plugin still does when its table is not in place), interleaved, in node1's namespace:
/// adding a pod (with the table, set, chain and rule declared again) and removing it. Seconds
/// per call as [way][add, remove].
fn masq_step(b: &Bench, n: usize) -> [[Vec<f64>; 2]; 2] {
    use podnet::firewall;
    use podnet::kernel::nft;
    let nets = ["10.244.0.0/16".parse().unwrap()];
    let timed = |f: &dyn Fn()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let ns = b.c.lab.netns("node1").unwrap();
    ns.run(|| {
        let mut t: [[Vec<f64>; 2]; 2] = Default::default();
        for i in 0..n {
            let ip = std::net::Ipv4Addr::new(10, 244, 250, (i % 250) as u8 + 1);
            let add = firewall::pod_masq_add(&nets, ip);
            let del = firewall::pod_masq_remove(ip);
            t[0][0].push(timed(&|| nft::apply(&add).unwrap()));
            t[0][1].push(timed(&|| nft::apply(&del).unwrap()));
            let add = firewall::pod_masq_add_batch(&[nets[0].into()], &[ip.into()]);
            let del = firewall::pod_masq_remove_batch(ip.into());
            t[1][0].push(timed(&|| nft::commit_detached(&add).unwrap()));
            t[1][1].push(timed(&|| nft::commit_detached(&del).unwrap()));
        }
        t
    })
    .unwrap()
}

/// A directory the bench keeps files in: the lab's node directory, or one of this run's own
/// under another file system (`podnet-bench-<pid>-<lab>-<what>`), removed again on drop.
struct BenchDir {
    root: std::path::PathBuf,
    own: bool,
}

impl BenchDir {
    /// `what`'s directory under `base` (`var` names where `base` came from, for errors).
    fn own(base: &Path, lab: &str, what: &str, var: &str) -> BenchDir {
        sweep_bench_dirs(base);
        let pid = std::process::id();
        let root = base.join(format!("podnet-bench-{pid}-{lab}-{what}"));
        std::fs::create_dir(&root).unwrap_or_else(|e| {
            panic!(
                "create {} for the {what} ({var} names another base): {e}",
                root.display()
            )
        });
        BenchDir { root, own: true }
    }

    fn borrowed(dir: &Path) -> BenchDir {
        BenchDir {
            root: dir.to_path_buf(),
            own: false,
        }
    }

    /// Where the two plugins keep their IPAM files: the lab's node directory, or
    /// (`BENCH_IPAM_DIR`) a directory under another file system.
    fn ipam(node_dir: &Path, lab: &str) -> BenchDir {
        match std::env::var_os("BENCH_IPAM_DIR") {
            Some(base) => BenchDir::own(Path::new(&base), lab, "ipam", "BENCH_IPAM_DIR"),
            None => BenchDir::borrowed(node_dir),
        }
    }

    /// Where podnet's plugin records pods: on a tmpfs, as on a node (`/run/podnet/pods`;
    /// systemd mounts a tmpfs on `/run`, which this VM does not), unless `BENCH_RECORDS_DIR`
    /// names another place.
    fn records(lab: &str) -> BenchDir {
        let base = std::env::var_os("BENCH_RECORDS_DIR").unwrap_or_else(|| "/dev/shm".into());
        BenchDir::own(Path::new(&base), lab, "records", "BENCH_RECORDS_DIR")
    }

    fn podnet(&self) -> std::path::PathBuf {
        self.root.join("ipam")
    }
    fn reference(&self) -> std::path::PathBuf {
        self.root.join("ipam-ref")
    }
    fn baseline(&self) -> std::path::PathBuf {
        self.root.join("ipam-baseline")
    }
}

/// Removes what runs killed before their guard ran left under `base`: `podnet-bench-<pid>-…`
/// directories whose process is gone.
fn sweep_bench_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("podnet-bench-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        if self.own {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Profiling aid: one more podnet ADD and DEL under `strace -f -ttt -T`, written to
/// `<out>.ADD` and `<out>.DEL`.
fn strace_one(b: &Bench, dir: &Path, netns: &str, out: &str) {
    use std::os::unix::fs::PermissionsExt;
    let wrapper = dir.join("strace-plugin.sh");
    let script = format!(
        "#!/bin/sh\nexec strace -f -ttt -T -o {out}.$CNI_COMMAND {} \"$@\"\n",
        binaries().plugin.display()
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    for cmd in ["ADD", "DEL"] {
        let args = kubelet_args("strace");
        let env = pod_env(cmd, "strace", netns, &args);
        let wrapped = wrapper.display().to_string();
        let o =
            b.c.lab
                .cni("node1", &wrapped, &env, &b.podnet_conf)
                .unwrap();
        assert!(o.status.success(), "{cmd} under strace: {o:?}");
    }
    eprintln!("strace of one ADD and one DEL: {out}.ADD, {out}.DEL");
}

/// The order of `n` systems for the `k`th block: turned by `k`, and backwards every other
/// round of turns, so that each system follows each other one equally often over every whole
/// cycle of `2n` blocks (a run with fewer blocks than that is not balanced).
fn turn(k: usize, n: usize) -> Vec<usize> {
    let order = (0..n).map(|i| (k + i) % n);
    if (k / n) % 2 == 1 {
        order.rev().collect()
    } else {
        order.collect()
    }
}

/// CPU seconds (user and system) of this process's children that have been waited for.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// What a runtime does to a new pod namespace before its network's plugins run (containerd's
/// CRI calls the `loopback` plugin; CRI-O and podman set it up themselves): `lo` up.
fn loopback_up(netns: &str) {
    let out = std::process::Command::new("ip")
        .args(["-n", netns, "link", "set", "lo", "up"])
        .output()
        .expect("run ip (iproute2)");
    assert!(out.status.success(), "lo up in {netns}: {out:?}");
}

/// Writes an executable `sh` script.
fn script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Milliseconds a `perf trace -s` summary spent in the system calls `keep` picks, over every
/// thread and process in it (the reference's bridge and the host-local it starts).
fn traced_ms(summary: &str, keep: &dyn Fn(&str) -> bool) -> f64 {
    summary
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // syscall  calls  errors  total  min  avg  max  stddev
            (f.len() == 8 && f[1].parse::<u64>().is_ok() && keep(f[0]))
                .then(|| f[3].parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The kernel's share with 8 at once: batches of 8 ADDs of each system, every call under
/// `perf trace -s`, and per call the time inside netlink requests (`sendto`/`recvfrom`, and
/// `sendmsg`/`recvmsg` for the reference): the kernel's work under RTNL and the wait for RTNL
/// while another holds it. Returns [system] -> (netlink ms, all system calls ms) per call.
fn kernel_share(b: &Bench, dir: &Path, pods: &[Vec<String>]) -> Vec<Vec<(f64, f64)>> {
    let out = dir.join("trace");
    std::fs::create_dir_all(&out).unwrap();
    let wrap = |name: &str, prog: &str| {
        let path = dir.join(name);
        let text = format!(
            "#!/bin/sh\nexec perf trace -s -o {}/$CNI_CONTAINERID.txt {prog} \"$@\"\n",
            out.display()
        );
        script(&path, &text);
        path.display().to_string()
    };
    let wrapped = [
        wrap("trace-podnet.sh", &binaries().plugin.display().to_string()),
        wrap("trace-bridge.sh", "/usr/lib/cni/bridge"),
    ];
    let confs = [&b.podnet_conf, &b.ref_conf];
    let netlink = ["sendto", "recvfrom", "sendmsg", "recvmsg"];
    let mut share = vec![Vec::new(), Vec::new()];
    for (ci, batch) in pods.chunks(8).enumerate() {
        for s in 0..2 {
            let ids: Vec<String> = (0..batch.len()).map(|j| format!("k{s}-{ci}-{j}")).collect();
            std::thread::scope(|sc| {
                for (j, pod_ns) in batch.iter().enumerate() {
                    let netns = &pod_ns[s];
                    let (id, prog, conf) = (&ids[j], &wrapped[s], confs[s]);
                    sc.spawn(move || {
                        let args = kubelet_args(id);
                        let env = pod_env("ADD", id, netns, &args);
                        let o = b.c.lab.cni("node1", prog, &env, conf).unwrap();
                        assert!(o.status.success(), "traced ADD {id}: {o:?}");
                    });
                }
            });
            let sys = [System::Podnet, System::Reference][s];
            for (j, pod_ns) in batch.iter().enumerate() {
                b.call(sys, "DEL", &ids[j], &pod_ns[s]);
                let text = std::fs::read_to_string(out.join(format!("{}.txt", ids[j]))).unwrap();
                let waits = |c: &str| WAITING.contains(&c);
                share[s].push((
                    traced_ms(&text, &|c| netlink.contains(&c)),
                    traced_ms(&text, &|c| !waits(c)),
                ));
            }
        }
    }
    share
}

/// System calls that wait (for a lock, a child, a timer, another thread) rather than work:
/// not counted as the kernel's work. A Go program's threads spend most of their time in these.
const WAITING: [&str; 12] = [
    "futex",
    "epoll_pwait",
    "epoll_wait",
    "nanosleep",
    "clock_nanosleep",
    "wait4",
    "waitid",
    "poll",
    "ppoll",
    "pselect6",
    "rt_sigsuspend",
    "sched_yield",
];

fn main() {
    require_root();
    let pods: usize = std::env::var("BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let runs = runs(3);
    let block_len: usize = std::env::var("BENCH_BLOCK")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1);
    let cycle = std::env::var_os("BENCH_CYCLE").is_some();
    let plugin_masq = match std::env::var("BENCH_IPMASQ").as_deref() {
        Ok("plugin") => true,
        Ok("daemon") | Err(_) => false,
        Ok(other) => panic!("BENCH_IPMASQ={other:?}: expected daemon or plugin"),
    };
    let c = Cluster::up(&LabSpec::new(unique("bcni"), 1), binaries()).unwrap();
    let dir = c.node_dir("node1").unwrap();
    // What podnetd writes with --ip-masq (neither plugin adds masquerade rules), or without it
    // (both do).
    std::fs::write(
        dir.join("subnet.env"),
        format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ={}\n",
            !plugin_masq
        ),
    )
    .unwrap();
    let ipam = BenchDir::ipam(&dir, c.lab.name());
    let records = BenchDir::records(c.lab.name());
    let mut podnet_conf = c.cni_conf_in("node1", "1.0.0", &ipam.podnet()).unwrap();
    podnet_conf["podRecordsDir"] = json!(records.root);
    let podnet_conf = podnet_conf.to_string();
    // flannel's plugin hands this to bridge (C:flannel_linux.go), which calls host-local.
    let ref_conf = json!({
        "cniVersion": "1.0.0", "name": "cbr0", "type": "bridge", "bridge": "cniref",
        "hairpinMode": true, "isDefaultGateway": true, "isGateway": true, "ipMasq": plugin_masq, "mtu": 1450,
        "ipam": {"type": "host-local", "dataDir": ipam.reference(),
                 "ranges": [[{"subnet": "10.244.2.0/24"}]], "routes": [{"dst": "10.244.0.0/16"}]},
    })
    .to_string();
    let baseline = std::env::var("BENCH_BASELINE_PLUGIN").ok().map(|plugin| {
        // Its own subnet and bridge beside the other two, as a second network on the node.
        let env = dir.join("subnet-baseline.env");
        std::fs::write(
            &env,
            format!(
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ={}\n",
                !plugin_masq
            ),
        )
        .unwrap();
        let mut conf = c.cni_conf_in("node1", "1.0.0", &ipam.baseline()).unwrap();
        conf["subnetFile"] = json!(env);
        conf["podRecordsDir"] = json!(records.root);
        conf["delegate"]["bridge"] = json!("cnibase");
        (plugin, conf.to_string())
    });
    let mut systems = vec![System::Podnet, System::Reference];
    if baseline.is_some() {
        systems.push(System::Baseline);
    }
    let mut b = Bench {
        c,
        podnet_conf,
        ref_conf,
        baseline,
    };
    let mut pod = |name: String| {
        let ns = b.c.lab.pod_add("node1", &name).unwrap();
        loopback_up(&ns);
        format!("/run/netns/{ns}")
    };
    // ns[pod][system]: each system's pods in namespaces of their own.
    let ns: Vec<Vec<String>> = (0..pods)
        .map(|i| {
            let tags = ["p", "r", "b"];
            (0..systems.len())
                .map(|s| pod(format!("{}{i}", tags[s])))
                .collect()
        })
        .collect();
    // Warm-up: the first call of each creates its bridge and directories.
    for (s, &sys) in systems.iter().enumerate() {
        b.call(sys, "ADD", "warm", &ns[0][s]);
        b.call(sys, "DEL", "warm", &ns[0][s]);
    }

    // results[system][op] = per-run medians; all[system][op] = every sample
    let ops = [
        "ADD sequential",
        "DEL sequential",
        "ADD 8 at once",
        "DEL 8 at once",
    ];
    let mut medians = vec![vec![Vec::new(); ops.len()]; systems.len()];
    let mut all = vec![vec![Vec::new(); ops.len()]; systems.len()];
    // cpu[system][op]: CPU seconds (user and system) of the plugins' processes, summed.
    let mut cpu = vec![vec![0.0; ops.len()]; systems.len()];
    for run in 0..runs {
        let mut samples = vec![vec![Vec::new(); ops.len()]; systems.len()];
        // Sequential, interleaved pod by pod (or block by block, `BENCH_BLOCK`). Who goes
        // first turns with every block, and the order runs backwards every other round, so
        // that what one call leaves behind (a reaper, nftables' deferred release, dirty
        // caches) falls on every system after every other alike.
        // `BENCH_CYCLE`: each pod's DEL right after its ADD, as pods come and go in a rollout.
        let n = systems.len();
        let phases: &[&[(usize, &str)]] = if cycle {
            &[&[(0, "ADD"), (1, "DEL")]]
        } else {
            &[&[(0, "ADD")], &[(1, "DEL")]]
        };
        for calls in phases {
            for (k, block) in ns.chunks(block_len).enumerate() {
                for s in turn(k, n) {
                    for (j, pod_ns) in block.iter().enumerate() {
                        let id = format!("s{s}{run}-{}", k * block_len + j);
                        for &(op, cmd) in calls.iter() {
                            let before = children_cpu();
                            samples[s][op].push(b.call(systems[s], cmd, &id, &pod_ns[s]));
                            cpu[s][op] += children_cpu() - before;
                        }
                    }
                }
            }
        }
        // Eight at once, interleaved batch by batch (or block of batches by block).
        let batches: Vec<&[Vec<String>]> = ns.chunks(8).collect();
        for (op, cmd) in [(2, "ADD"), (3, "DEL")] {
            for (k, block) in batches.chunks(block_len).enumerate() {
                for s in turn(k, n) {
                    for (j, batch) in block.iter().enumerate() {
                        let ci = k * block_len + j;
                        let sys = systems[s];
                        let before = children_cpu();
                        let times: Vec<f64> = std::thread::scope(|sc| {
                            let hs: Vec<_> = batch
                                .iter()
                                .enumerate()
                                .map(|(j, pod_ns)| {
                                    let b = &b;
                                    let id = format!("c{s}{run}-{ci}-{j}");
                                    sc.spawn(move || b.call(sys, cmd, &id, &pod_ns[s]))
                                })
                                .collect();
                            hs.into_iter().map(|h| h.join().unwrap()).collect()
                        });
                        cpu[s][op] += children_cpu() - before;
                        samples[s][op].extend(times);
                    }
                }
            }
        }
        for s in 0..systems.len() {
            for op in 0..ops.len() {
                medians[s][op].push(summarize(&samples[s][op]).median);
                all[s][op].extend(samples[s][op].iter().copied());
            }
        }
        eprintln!("run {}/{runs} done", run + 1);
    }
    let step = masq_step(&b, pods);
    let share = std::env::var_os("BENCH_KERNEL").map(|_| kernel_share(&b, &dir, &ns[..24]));
    if let Ok(out) = std::env::var("BENCH_STRACE") {
        strace_one(&b, &dir, &ns[0][0], &out);
    }
    let names = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let ipam_dir = ipam.podnet().join("cbr0");
    // Allocations are the files named by an address; `.spare` holds released ones for reuse.
    let leftovers = names(&ipam_dir)
        .iter()
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .count();
    let spares = names(&ipam_dir.join(".spare")).len();
    assert_eq!(leftovers, 0, "podnet allocations left after all DELs");
    let records_left = names(&records.root).len();
    assert_eq!(records_left, 0, "pod records left after all DELs");
    let masq = if plugin_masq {
        "the plugins masquerade (ipMasq)"
    } else {
        "the daemon masquerades"
    };
    println!(
        "\nCNI pod setup, {masq}, {pods} pods, {runs} runs{}{}; per-run medians in ms as median (min–max); ratio = reference / podnet\n",
        if block_len > 1 {
            format!(", blocks of {block_len}")
        } else {
            String::new()
        },
        if cycle {
            ", each DEL right after its ADD"
        } else {
            ""
        },
    );
    println!("| operation | podnet | reference (bridge + host-local) | ratio |");
    println!("|---|---|---|---|");
    for (op, name) in ops.iter().enumerate() {
        let p = summarize(&medians[0][op]);
        let r = summarize(&medians[1][op]);
        println!(
            "| {name} | {} | {} | {:.1}× |",
            ms(p),
            ms(r),
            r.median / p.median
        );
    }
    if systems.len() > 2 {
        println!(
            "\nThe baseline plugin (BENCH_BASELINE_PLUGIN), interleaved with the two above; speed-up = baseline / podnet\n"
        );
        println!("| operation | baseline | ratio to the reference | speed-up of podnet |");
        println!("|---|---|---|---|");
        for (op, name) in ops.iter().enumerate() {
            let p = summarize(&medians[0][op]);
            let r = summarize(&medians[1][op]);
            let base = summarize(&medians[2][op]);
            println!(
                "| {name} | {} | {:.1}× | {:.2}× |",
                ms(base),
                r.median / base.median,
                base.median / p.median
            );
        }
    }
    println!(
        "\nCPU per call (user and system, ms: the plugin and what it starts and waits for; not \
         podnet's detached reaper or the grandchild that closes its nftables socket), mean over all calls:\n"
    );
    let names = ["podnet", "reference", "baseline"];
    println!("| operation | {} |", names[..systems.len()].join(" | "));
    println!("|---{}|", "|---".repeat(systems.len()));
    for (op, name) in ops.iter().enumerate() {
        let per_call: Vec<String> = (0..systems.len())
            .map(|s| format!("{:.2}", cpu[s][op] * 1e3 / all[s][op].len() as f64))
            .collect();
        println!("| {name} | {} |", per_call.join(" | "));
    }
    println!("\nAll samples (ms, median (min–max)):");
    for (op, name) in ops.iter().enumerate() {
        println!(
            "  {name}: podnet {} reference {}",
            ms(summarize(&all[0][op])),
            ms(summarize(&all[1][op]))
        );
    }
    println!("\nThe ipMasq step alone, {pods} times each, interleaved (ms, median (min–max)):\n");
    println!("| step | nft -f (before) | nfnetlink, whole table | ratio |");
    println!("|---|---|---|---|");
    for (op, name) in ["add a pod", "remove a pod"].iter().enumerate() {
        let (old, new) = (summarize(&step[0][op]), summarize(&step[1][op]));
        println!(
            "| {name} | {} | {} | {:.1}× |",
            ms(old),
            ms(new),
            old.median / new.median
        );
    }
    if let Some(share) = share {
        println!(
            "\nThe kernel's share, 8 ADDs at once, each under `perf trace -s` (which slows every \
             system call; ms per call, median (min–max)):\n"
        );
        println!("| system | inside netlink requests | in all system calls but waits |");
        println!("|---|---|---|");
        for (s, name) in ["podnet", "reference"].iter().enumerate() {
            // summarize/ms work in seconds.
            let nl: Vec<f64> = share[s].iter().map(|x| x.0 / 1e3).collect();
            let all: Vec<f64> = share[s].iter().map(|x| x.1 / 1e3).collect();
            println!(
                "| {name} | {} | {} |",
                ms(summarize(&nl)),
                ms(summarize(&all))
            );
        }
    }
    println!(
        "podnet allocations left after all DELs: {leftovers}; released files kept for reuse: {spares}; pod records: {records_left}"
    );
    let _ = &mut b;
}
