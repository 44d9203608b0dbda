//! The lab: nodes that reach each other, segments joined only by the router, a real etcd, and
//! nothing left behind whether a test passes or panics.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use podnet::kernel::netlink::Netlink;
use podnet::kernel::netns::NetNs;
use podnet::kernel::sysctl;
use podnet::lab::process::ProcId;
use podnet::lab::{self, Lab, LabError, LabSpec, state};

use crate::support::{ScratchNs, ok, require_root, unique};

/// What a lab made, captured while it ran, to check afterwards that all of it is gone.
struct Footprint {
    name: String,
    workdir: PathBuf,
    procs: Vec<ProcId>,
}

impl Footprint {
    fn of(lab: &Lab) -> Footprint {
        Footprint {
            name: lab.name().to_string(),
            workdir: lab.workdir().to_path_buf(),
            procs: lab.state().procs.iter().map(|p| p.id).collect(),
        }
    }

    #[track_caller]
    fn assert_gone(&self) {
        let prefix = format!("pnl-{}-", self.name);
        let left: Vec<String> = NetNs::list_named()
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "namespaces left behind: {left:?}");
        assert!(
            !state::state_path(&self.name).exists(),
            "state file left behind"
        );
        assert!(
            !self.workdir.exists(),
            "work dir {} left behind",
            self.workdir.display()
        );
        for p in &self.procs {
            assert!(!p.alive(), "process {} still running", p.pid);
        }
        assert!(
            !self.procs.is_empty(),
            "the lab should have started etcd at least"
        );
    }
}

fn ping(lab: &Lab, from: &str, to: impl std::fmt::Display) -> bool {
    lab.exec(from, &["ping", "-c1", "-W1", &to.to_string()])
        .unwrap()
        .status
        .success()
}

#[test]
fn three_nodes_on_one_segment_ping_each_other() {
    require_root();
    let lab = Lab::up(&LabSpec::new(unique("l3n"), 3)).unwrap();
    let fp = Footprint::of(&lab);
    let nodes = lab.plan().nodes.clone();
    for a in &nodes {
        for b in &nodes {
            if a.name != b.name {
                assert!(
                    ping(&lab, &a.name, b.ip()),
                    "{} cannot reach {} ({})",
                    a.name,
                    b.name,
                    b.ip()
                );
            }
        }
        // Nodes forward, as Kubernetes nodes must.
        let fwd = lab
            .netns(&a.name)
            .unwrap()
            .run(|| sysctl::get("net.ipv4.ip_forward"))
            .unwrap()
            .unwrap();
        assert_eq!(fwd.as_deref(), Some("1"));
    }
    // The host's own namespace got none of it: no link named like a lab port.
    let host_links = Netlink::open().unwrap().links().unwrap();
    assert!(
        host_links
            .iter()
            .all(|l| !l.name.starts_with("seg") && l.name != "n1")
    );
    drop(lab);
    fp.assert_gone();
}

#[test]
fn two_segments_reach_each_other_only_through_the_router() {
    require_root();
    let lab = Lab::up(&LabSpec::new(unique("l2s"), 4).segments(2)).unwrap();
    let fp = Footprint::of(&lab);
    let n = lab.plan().nodes.clone();
    assert_eq!(
        (n[0].segment, n[1].segment, n[2].segment, n[3].segment),
        (0, 0, 1, 1)
    );
    for a in &n {
        for b in &n {
            if a.name != b.name {
                assert!(
                    ping(&lab, &a.name, b.ip()),
                    "{} cannot reach {}",
                    a.name,
                    b.name
                );
            }
        }
    }
    // The kernel's own view: the other half is behind a gateway, the same half is on-link.
    let mut nl = Netlink::open_in(&lab.netns("node1").unwrap()).unwrap();
    let across = nl.route_get(n[2].ip().into()).unwrap();
    assert_eq!(across.gateway, Some(lab.plan().segments[0].router.into()));
    let same = nl.route_get(n[1].ip().into()).unwrap();
    assert_eq!(same.gateway, None);
    // Without the router forwarding, the halves are cut off from each other but not internally.
    let rt = lab.netns("router").unwrap();
    rt.run(|| sysctl::set("net.ipv4.ip_forward", "0"))
        .unwrap()
        .unwrap();
    assert!(
        !ping(&lab, "node1", n[2].ip()),
        "node1 reached node3 without the router"
    );
    assert!(ping(&lab, "node1", n[1].ip()));
    assert!(ping(&lab, "node3", n[3].ip()));
    rt.run(|| sysctl::set("net.ipv4.ip_forward", "1"))
        .unwrap()
        .unwrap();
    assert!(ping(&lab, "node1", n[2].ip()));
    drop(lab);
    fp.assert_gone();
}

fn etcdctl_put_get(members: usize) {
    require_root();
    let lab = Lab::up(
        &LabSpec::new(unique("le"), 4)
            .segments(2)
            .etcd_members(members),
    )
    .unwrap();
    let fp = Footprint::of(&lab);
    let eps = lab.etcd_endpoints();
    assert_eq!(eps.split(',').count(), members);
    let key = format!("/podnet-test/{}", unique("k"));
    ok(lab
        .exec(
            "node1",
            &["etcdctl", "--endpoints", &eps, "put", &key, "hello"],
        )
        .unwrap());
    // Read back from a node on the other segment, through the router.
    let got = ok(lab
        .exec(
            "node4",
            &[
                "etcdctl",
                "--endpoints",
                &eps,
                "get",
                &key,
                "--print-value-only",
            ],
        )
        .unwrap());
    assert_eq!(got.trim(), "hello");
    let members_out = ok(lab
        .exec("node3", &["etcdctl", "--endpoints", &eps, "member", "list"])
        .unwrap());
    assert_eq!(
        members_out
            .lines()
            .filter(|l| l.contains(", started, "))
            .count(),
        members,
        "{members_out}"
    );
    drop(lab);
    fp.assert_gone();
}

#[test]
fn etcdctl_from_a_node_with_one_member() {
    etcdctl_put_get(1);
}

#[test]
fn etcdctl_from_a_node_with_three_members() {
    etcdctl_put_get(3);
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    require_root();
    let name = unique("lpn");
    let captured = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut lab = Lab::up(&LabSpec::new(name.clone(), 2)).unwrap();
        lab.spawn("node1", &["sleep".to_string(), "600".to_string()], &[])
            .unwrap();
        lab.pod_add("node2", "web").unwrap();
        assert!(NetNs::exists(&format!("pnl-{name}-node2-web")));
        *captured.lock().unwrap() = Some(Footprint::of(&lab));
        panic!("deliberate");
    }));
    assert!(result.is_err());
    let fp = captured.lock().unwrap().take().unwrap();
    assert_eq!(fp.procs.len(), 2, "etcd and sleep");
    fp.assert_gone();
}

#[test]
fn a_lab_whose_owner_died_is_swept() {
    require_root();
    let lab = Lab::up(&LabSpec::new(unique("lsw"), 2)).unwrap();
    let fp = Footprint::of(&lab);
    // Pretend the owner crashed: hand the lab to a process that has exited, and skip the guard.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = ProcId::of(child.id()).unwrap();
    child.wait().unwrap();
    let mut st = state::load(lab.name()).unwrap().unwrap();
    st.owner = Some(dead);
    state::save(&st).unwrap();
    std::mem::forget(lab);
    // A stray namespace with the lab prefix that no lab claims goes too.
    let stray = format!("pnl-{}-stray", unique("x"));
    NetNs::create(&stray).unwrap();
    let removed = lab::sweep().unwrap();
    assert!(removed.iter().any(|r| r.contains(&fp.name)), "{removed:?}");
    assert!(removed.iter().any(|r| r.contains(&stray)), "{removed:?}");
    assert!(!NetNs::exists(&stray));
    fp.assert_gone();
}

#[test]
fn refuses_a_taken_name_and_bad_input() {
    require_root();
    let lab = Lab::up(&LabSpec::new(unique("ltk"), 1)).unwrap();
    let fp = Footprint::of(&lab);
    match Lab::up(&LabSpec::new(lab.name(), 1)) {
        Err(LabError::Taken(n)) => assert_eq!(n, lab.name()),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second lab with the same name was created"),
    }
    // The failed attempt must not have disturbed the first lab.
    assert!(ping(&lab, "node1", "198.18.0.2"));
    let msg = Lab::up(&LabSpec::new("x", 3).etcd_members(2))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("--etcd-members 2"), "{msg}");
    drop(lab);
    fp.assert_gone();
}

#[test]
fn refuses_when_the_host_already_uses_a_lab_range() {
    require_root();
    let host = ScratchNs::new();
    assert!(
        lab::check_overlap(&host.ns).is_ok(),
        "an empty namespace overlaps nothing"
    );
    let mut nl = Netlink::open_in(&host.ns).unwrap();
    let lo = nl.require_link("lo").unwrap().index;
    nl.add_addr(lo, "198.19.7.7/24".parse().unwrap()).unwrap();
    let msg = lab::check_overlap(&host.ns).unwrap_err().to_string();
    assert_eq!(
        msg,
        "refusing to start: the host has 198.19.7.7/24, which overlaps the lab's 198.18.0.0/15"
    );
}

#[test]
fn cli_refuses_without_root() {
    require_root();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_podnetctl"),
        ])
        .args(["lab", "up", "nobody"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the lab needs root"), "{err}");
    assert!(!state::state_path("nobody").exists());
}

#[test]
fn cli_round_trip_up_exec_spawn_pod_down() {
    require_root();
    let name = unique("lcli");
    let ctl = env!("CARGO_BIN_EXE_podnetctl");
    let run = |args: &[&str]| Command::new(ctl).args(args).output().unwrap();
    ok(run(&["lab", "up", &name, "--nodes", "2"]));
    let st = state::load(&name).unwrap().unwrap();
    assert!(
        st.owner.is_none(),
        "a CLI lab outlives the command that made it"
    );
    let out = run(&[
        "lab",
        "exec",
        &name,
        "node1",
        "--",
        "ping",
        "-c1",
        "-W1",
        "198.18.0.12",
    ]);
    ok(out);
    let out = run(&["lab", "exec", &name, "node1", "--", "sh", "-c", "exit 7"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "exec passes the exit code through"
    );
    let pid: u32 = ok(run(&["lab", "spawn", &name, "node2", "--", "sleep", "600"]))
        .trim()
        .parse()
        .unwrap();
    let ns_path = ok(run(&["lab", "pod", "add", &name, "node1", "web"]));
    assert_eq!(ns_path.trim(), format!("/run/netns/pnl-{name}-node1-web"));
    let status = ok(run(&["lab", "status", &name]));
    assert!(status.contains("node2    198.18.0.12"), "{status}");
    assert!(status.contains("sleep 600"), "{status}");
    let st = state::load(&name).unwrap().unwrap();
    let fp = Footprint {
        name: name.clone(),
        workdir: st.workdir.clone(),
        procs: st.procs.iter().map(|p| p.id).collect(),
    };
    assert!(fp.procs.iter().any(|p| p.pid == pid));
    ok(run(&["lab", "down", &name]));
    // `down` stops a process it did not start itself; give the reaper a moment.
    crate::support::poll("spawned process to exit", Duration::from_secs(5), || {
        (!ProcId::of(pid).is_some_and(|p| p.alive())).then_some(())
    });
    fp.assert_gone();
    let out = run(&["lab", "down", &name]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("no lab named \"{name}\"")));
}

/// Stopping a process the lab started stops what it started too (a wrapper's child, as a
/// profiler runs podnetd), and nothing else.
#[test]
fn stopping_a_process_stops_its_children() {
    require_root();
    let mut lab = Lab::up(&LabSpec::new(unique("lkg"), 1)).unwrap();
    let file = std::env::temp_dir().join(format!("{}.pid", unique("lkg")));
    let script = format!("sleep 600 & echo $! > {}; wait", file.display());
    let sh = lab
        .spawn("node1", &["sh".into(), "-c".into(), script], &[])
        .unwrap();
    let child: u32 = crate::support::poll("the child's pid", Duration::from_secs(10), || {
        std::fs::read_to_string(&file).ok()?.trim().parse().ok()
    });
    let _ = std::fs::remove_file(&file);
    let child_id = ProcId::of(child).unwrap();
    assert!(child_id.alive());
    lab.stop(sh.id.pid).unwrap();
    crate::support::poll("the child to be gone", Duration::from_secs(10), || {
        (!child_id.alive()).then_some(())
    });
}
