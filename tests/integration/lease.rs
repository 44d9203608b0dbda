//! Leases in a real etcd, through real podnetd processes in the lab.

use std::collections::HashSet;
use std::time::Duration;

use podnet::config::NetworkConfig;
use podnet::lab::LabSpec;
use podnet::lease::etcd::{EtcdOptions, EtcdStore};
use podnet::lease::manager::SubnetManager;
use podnet::lease::{AcquireRequest, DEFAULT_TTL, LeaseAttrs};
use podnet::subnet_env::SubnetEnv;

use crate::cluster::{Cluster, PODNETCTL, PREFIX};
use crate::support::{ok, poll, unique};

const VXLAN_16: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn vtep_mac(c: &Cluster, node: &str) -> String {
    c.ip_json(node, &["link", "show", "flannel.1"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn golden_key_and_value_written_by_podnetd() {
    let mut c = Cluster::small("lg", 1);
    c.put_config(VXLAN_16);
    c.start("node1", &[]);
    let env = c.wait_ready("node1");
    let subnet = env.subnet.unwrap().trunc();
    let leases = c.leases();
    assert_eq!(leases.len(), 1);
    let (key, value) = &leases[0];
    assert_eq!(key, &format!("{}-24", subnet.network()));
    assert_eq!(
        value,
        &format!(
            r#"{{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            vtep_mac(&c, "node1")
        )
    );
    // subnet.env: flannel's lines, flannel's order, the gateway address, MTU 1500 - 50.
    let text = std::fs::read_to_string(c.env_path("node1")).unwrap();
    assert_eq!(
        text,
        format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={}/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            std::net::Ipv4Addr::from(u32::from(subnet.network()) + 1)
        )
    );
}

/// How a podnetd in this lab reaches its etcd.
fn etcd_options(c: &Cluster) -> EtcdOptions {
    EtcdOptions {
        endpoints: vec![c.eps.clone()],
        prefix: PREFIX.into(),
        ..Default::default()
    }
}

/// Acquires through the library from inside a node (the lease format, byte for
/// byte).
#[test]
fn golden_dual_stack_key_and_value_in_etcd() {
    let c = Cluster::small("ld", 1);
    let cfg = NetworkConfig::parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let opts = etcd_options(&c);
    let attrs = LeaseAttrs {
        public_ip: "198.18.0.11".parse().unwrap(),
        public_ipv6: Some("fd00::11".parse().unwrap()),
        backend_type: "vxlan".into(),
        backend_data: Some(
            serde_json::value::RawValue::from_string(
                r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:11"}"#.into(),
            )
            .unwrap(),
        ),
        backend_v6_data: Some(
            serde_json::value::RawValue::from_string(
                r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:12"}"#.into(),
            )
            .unwrap(),
        ),
    };
    let lease = c
        .lab
        .netns("node1")
        .unwrap()
        .run(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let store = EtcdStore::connect(&opts).await.unwrap();
                store
                    .acquire(
                        &cfg,
                        &AcquireRequest {
                            attrs,
                            previous: None,
                            ttl: DEFAULT_TTL,
                        },
                    )
                    .await
                    .unwrap()
            })
        })
        .unwrap();
    let v4 = lease.key.v4.unwrap();
    let v6 = lease.key.v6.unwrap();
    let leases = c.leases();
    assert_eq!(leases.len(), 1);
    assert_eq!(
        leases[0].0,
        format!("{}-24&{}-64", v4.network(), v6.network())
    );
    assert!(v6.network().to_string().starts_with("fd10:244:0:"), "{v6}");
    assert_eq!(
        leases[0].1,
        r#"{"PublicIP":"198.18.0.11","PublicIPv6":"fd00::11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:11"},"BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:00:12"}}"#
    );
}

/// Ten dual-stack nodes acquiring at once from a range of ten IPv6 subnets: a key is the pair of
/// subnets, so two nodes could each create a key holding the same IPv6 subnet; each must end
/// with its own subnet of each family, and only the winners' leases stay in etcd.
#[test]
fn dual_stack_nodes_acquiring_at_once_never_share_a_subnet_of_either_family() {
    const N: u8 = 10;
    let c = Cluster::small("lds", 1);
    let cfg = NetworkConfig::parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","IPv6SubnetMin":"fd10:244:0:10::","IPv6SubnetMax":"fd10:244:0:19::","Backend":{"Type":"host-gw"}}"#,
    )
    .unwrap();
    let opts = etcd_options(&c);
    let acquire = |i: u8| {
        let (cfg, opts) = (cfg.clone(), opts.clone());
        async move {
            let store = EtcdStore::connect(&opts).await.unwrap();
            let attrs = LeaseAttrs {
                public_ip: std::net::Ipv4Addr::new(198, 18, 0, 20 + i),
                public_ipv6: Some(format!("2001:2::{}", 20 + i).parse().unwrap()),
                backend_type: "host-gw".into(),
                backend_data: None,
                backend_v6_data: None,
            };
            let req = AcquireRequest {
                attrs,
                previous: None,
                ttl: DEFAULT_TTL,
            };
            store.acquire(&cfg, &req).await.unwrap().key
        }
    };
    let keys = c
        .lab
        .netns("node1")
        .unwrap()
        .run(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let tasks: Vec<_> = (0..N).map(|i| tokio::spawn(acquire(i))).collect();
                let mut keys = Vec::new();
                for t in tasks {
                    keys.push(t.await.unwrap());
                }
                keys
            })
        })
        .unwrap();
    let v4: HashSet<_> = keys.iter().map(|k| k.v4.unwrap()).collect();
    let v6: HashSet<_> = keys.iter().map(|k| k.v6.unwrap()).collect();
    assert_eq!(v4.len(), N as usize, "{keys:?}");
    assert_eq!(v6.len(), N as usize, "{keys:?}");
    // Whoever yielded gave its key back: etcd holds exactly the ten leases handed out.
    let mut held: Vec<String> = c.leases().into_iter().map(|(k, _)| k).collect();
    let mut want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    held.sort();
    want.sort();
    assert_eq!(held, want);
}

#[test]
fn thirty_nodes_at_once_get_thirty_distinct_subnets() {
    let mut c = Cluster::new(LabSpec::new(unique("l30"), 30));
    c.put_config(VXLAN_16);
    let nodes: Vec<String> = (1..=30).map(|i| format!("node{i}")).collect();
    for n in &nodes {
        c.start(n, &[]);
    }
    let subnets: HashSet<String> = nodes
        .iter()
        .map(|n| c.wait_ready(n).subnet.unwrap().to_string())
        .collect();
    assert_eq!(subnets.len(), 30, "{subnets:?}");
    assert_eq!(c.leases().len(), 30);
    // One etcd lease per node: losers of a race gave theirs back.
    let leases = c.etcdctl(&["lease", "list"]);
    assert!(leases.starts_with("found 30 leases"), "{leases}");
}

#[test]
fn a_network_of_four_subnets_turns_the_fifth_node_away() {
    let mut c = Cluster::small("l4", 5);
    c.put_config(
        r#"{"Network":"10.244.0.0/22","SubnetMin":"10.244.0.0","SubnetMax":"10.244.3.0"}"#,
    );
    let recs: Vec<_> = (1..=5).map(|i| c.start(&format!("node{i}"), &[])).collect();
    let failed = poll("one podnetd to give up", Duration::from_secs(30), || {
        let dead: Vec<_> = recs.iter().filter(|r| !r.id.alive()).collect();
        (dead.len() == 1).then(|| dead[0].clone())
    });
    let log = c.log(&failed);
    assert!(
        log.contains(
            "out of subnets: every subnet between 10.244.0.0 and 10.244.3.0 is leased (4 leases)"
        ),
        "{log}"
    );
    // It exited non-zero: the lab reaped it; check through its own words and the others' success.
    let others: HashSet<String> = recs
        .iter()
        .filter(|r| r.id != failed.id)
        .map(|r| c.wait_ready(&r.host).subnet.unwrap().to_string())
        .collect();
    assert_eq!(others.len(), 4);
    assert_eq!(c.leases().len(), 4);
    // Run the fifth in the foreground to see its exit status.
    let (code, err) = c.run_podnetd(&failed.host, &[], Duration::from_secs(20));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("out of subnets"), "{err}");
}

#[test]
fn a_restarted_node_keeps_its_subnet_by_public_ip_and_by_subnet_env() {
    let mut c = Cluster::small("lr", 2);
    c.put_config(VXLAN_16);
    let rec = c.start("node1", &[]);
    let first = c.wait_ready("node1").subnet.unwrap();
    // Restart: same public IP, lease still in etcd.
    c.lab.stop(rec.id.pid).unwrap();
    std::fs::remove_file(c.env_path("node1")).unwrap();
    let rec = c.start("node1", &[]);
    assert_eq!(c.wait_ready("node1").subnet.unwrap(), first);
    c.wait_log(&rec, "reusing our existing lease", Duration::from_secs(5));
    assert_eq!(c.leases().len(), 1);
    // etcd lost the key (say, restored from an old backup): subnet.env brings the subnet back.
    c.lab.stop(rec.id.pid).unwrap();
    c.etcdctl(&["del", "--prefix", &format!("{PREFIX}/subnets/")]);
    let rec = c.start("node1", &[]);
    c.wait_log(&rec, "acquired a new lease", Duration::from_secs(10));
    c.wait_log(&rec, "ready: subnet file written", Duration::from_secs(10));
    assert_eq!(c.wait_ready("node1").subnet.unwrap(), first);
    // But a previous subnet someone else holds is never taken (flannel #1289).
    c.lab.stop(rec.id.pid).unwrap();
    let node1_env = std::fs::read_to_string(c.env_path("node1")).unwrap();
    std::fs::write(c.env_path("node2"), node1_env).unwrap();
    let rec2 = c.start("node2", &[]);
    c.wait_log(&rec2, "ready: subnet file written", Duration::from_secs(10));
    poll(
        "node2 to rewrite its subnet.env",
        Duration::from_secs(10),
        || {
            let e = SubnetEnv::read(&c.env_path("node2")).ok().flatten()?;
            (e.subnet != Some(first)).then_some(())
        },
    );
    assert_eq!(c.leases().len(), 2);
}

#[test]
fn renewal_keeps_one_etcd_lease_per_node() {
    let mut c = Cluster::small("lrn", 2);
    c.put_config(VXLAN_16);
    let ttl_args = ["--subnet-lease-ttl=6s", "--subnet-lease-renew-margin=4s"];
    c.start("node1", &ttl_args);
    c.start("node2", &ttl_args);
    c.wait_ready("node1");
    c.wait_ready("node2");
    // Three lifetimes later both keys are still there, still on exactly two etcd leases.
    std::thread::sleep(Duration::from_secs(15));
    assert_eq!(c.leases().len(), 2);
    let leases = c.etcdctl(&["lease", "list"]);
    assert!(leases.starts_with("found 2 leases"), "{leases}");
    let table = ok(c
        .lab
        .exec("node1", &[PODNETCTL, "leases", "--etcd-endpoints", &c.eps])
        .unwrap());
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.lines().nth(1).unwrap().contains("vxlan"), "{table}");
    assert!(table.lines().all(|l| !l.contains("expired")), "{table}");
}

#[test]
fn a_deleted_own_lease_is_taken_back_and_a_stolen_one_is_fatal() {
    let mut c = Cluster::small("lo", 1);
    c.put_config(VXLAN_16);
    let rec = c.start("node1", &[]);
    let subnet = c.wait_ready("node1").subnet.unwrap().trunc();
    let key = format!("{PREFIX}/subnets/{}-24", subnet.network());
    c.etcdctl(&["del", &key]);
    c.wait_log(&rec, "lease taken back", Duration::from_secs(10));
    poll("the key to be back", Duration::from_secs(5), || {
        (c.leases().len() == 1).then_some(())
    });
    // Another node's address on our key: refuse to go on with an address range we do not own.
    c.etcdctl(&[
        "put",
        &key,
        r#"{"PublicIP":"198.18.0.99","PublicIPv6":null,"BackendType":"vxlan"}"#,
    ]);
    let log = c.wait_exit(&rec, Duration::from_secs(10));
    assert!(log.contains("is now held by 198.18.0.99"), "{log}");
}

#[test]
fn a_reservation_is_used_and_never_expires() {
    let mut c = Cluster::small("lres", 1);
    c.put_config(VXLAN_16);
    // flannel's documented way to reserve: a key with no TTL for the node's public IP.
    c.etcdctl(&[
        "put",
        &format!("{PREFIX}/subnets/10.244.77.0-24"),
        r#"{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"vxlan"}"#,
    ]);
    c.start(
        "node1",
        &["--subnet-lease-ttl=3s", "--subnet-lease-renew-margin=2s"],
    );
    assert_eq!(
        c.wait_ready("node1").subnet.unwrap().to_string(),
        "10.244.77.1/24"
    );
    std::thread::sleep(Duration::from_secs(5));
    let leases = c.leases();
    assert_eq!(leases.len(), 1);
    // podnetd filled in its backend data but kept the key lease-free.
    assert!(leases[0].1.contains("\"VtepMAC\""), "{leases:?}");
    assert!(c.etcdctl(&["lease", "list"]).starts_with("found 0 leases"));
    let table = ok(c
        .lab
        .exec("node1", &[PODNETCTL, "leases", "--etcd-endpoints", &c.eps])
        .unwrap());
    assert!(
        table.contains("10.244.77.0/24") && table.contains("never") && table.contains("yes"),
        "{table}"
    );
}

#[test]
fn flags_come_from_flanneld_environment_variables() {
    let c = Cluster::small("lenv", 1);
    c.put_config(VXLAN_16);
    let env_file = c.env_path("node1");
    let out = c
        .lab
        .command("node1", &[crate::cluster::PODNETD])
        .unwrap()
        .env("FLANNELD_ETCD_ENDPOINTS", &c.eps)
        .env("FLANNELD_SUBNET_FILE", &env_file)
        .env("PODNETD_IFACE", "eth0")
        .env("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "2000")
        .output()
        .unwrap();
    // The margin from the environment was applied and rejected: longer than the 24h lease.
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--subnet-lease-renew-margin 120000s: must be shorter"),
        "{err}"
    );
    // Its socket in the lab's node directory, not the host's /run/podnet.
    let sock = format!("--status-socket={}", crate::ops::socket(&c, "node1"));
    let mut cmd = c
        .lab
        .command("node1", &[crate::cluster::PODNETD, &sock])
        .unwrap();
    let _guard = KillOnDrop(
        cmd.env("FLANNELD_ETCD_ENDPOINTS", &c.eps)
            .env("FLANNELD_SUBNET_FILE", &env_file)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    poll(
        "subnet.env from env-configured podnetd",
        Duration::from_secs(20),
        || SubnetEnv::read(&env_file).ok().flatten(),
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn config_set_validates_before_writing() {
    let c = Cluster::small("lcfg", 1);
    let run = |args: &[&str], stdin: &str| {
        let mut argv = vec![PODNETCTL];
        argv.extend_from_slice(args);
        let mut cmd = c.lab.command("node1", &argv).unwrap();
        cmd.env("PODNET_ETCD_ENDPOINTS", &c.eps)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let bad = run(
        &["config", "set", "-"],
        r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#,
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("SubnetLen 31: must be at most 30"));
    assert!(
        c.etcdctl(&["get", &format!("{PREFIX}/config")]).is_empty(),
        "nothing written"
    );
    ok(run(&["config", "set", "-"], VXLAN_16));
    assert_eq!(
        c.etcdctl(&["get", &format!("{PREFIX}/config"), "--print-value-only"])
            .trim(),
        VXLAN_16
    );
    let got = ok(run(&["config", "get", "--effective"], ""));
    assert!(got.contains("\"SubnetMin\": \"10.244.1.0\""), "{got}");
}

/// Each invalid config stored in etcd makes podnetd exit 1 with its own message.
macro_rules! invalid_config_test {
    ($name:ident, $config:expr, $message:expr) => {
        #[test]
        fn $name() {
            let c = Cluster::small("lbad", 1);
            c.put_config($config);
            let (code, err) = c.run_podnetd("node1", &[], Duration::from_secs(20));
            assert_eq!(code, Some(1), "{err}");
            assert!(
                err.contains(&format!("network config at {PREFIX}/config: {}", $message)),
                "{err}"
            );
            assert!(c.leases().is_empty(), "no lease taken with a bad config");
        }
    };
}

invalid_config_test!(
    invalid_config_malformed_cidr,
    r#"{"Network":"10.244.0.0/33"}"#,
    "Network \"10.244.0.0/33\": not an IPv4 CIDR"
);
invalid_config_test!(
    invalid_config_too_small_for_four_subnets,
    r#"{"Network":"10.244.0.0/16","SubnetLen":17}"#,
    "SubnetLen 17: Network 10.244.0.0/16 must hold at least four subnets"
);
invalid_config_test!(
    invalid_config_subnet_len_out_of_range,
    r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#,
    "SubnetLen 31: must be at most 30"
);
invalid_config_test!(
    invalid_config_subnet_min_outside,
    r#"{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0"}"#,
    "SubnetMin 10.245.0.0: outside Network 10.244.0.0/16"
);
invalid_config_test!(
    invalid_config_subnet_max_misaligned,
    r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.9.7"}"#,
    "SubnetMax 10.244.9.7: not on a /24 boundary"
);
invalid_config_test!(
    invalid_config_subnet_min_above_max,
    r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.3.0"}"#,
    "SubnetMin 10.244.9.0 is above SubnetMax 10.244.3.0"
);
invalid_config_test!(
    invalid_config_unknown_backend,
    r#"{"Network":"10.244.0.0/16","Backend":{"Type":"carrier-pigeon"}}"#,
    "Backend.Type \"carrier-pigeon\": unknown backend type"
);
invalid_config_test!(
    invalid_config_missing_network,
    r#"{"Backend":{"Type":"vxlan"}}"#,
    "Network: missing"
);

/// A TLS flag with plain-HTTP endpoints cannot work: podnetd says which flag at once and exits,
/// instead of retrying the connection forever.
#[test]
fn a_bad_etcd_flag_combination_fails_at_once() {
    let c = Cluster::small("lflag", 1);
    let started = std::time::Instant::now();
    let (code, err) = c.run_podnetd(
        "node1",
        &["--etcd-cafile=/nonexistent/ca.pem"],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--etcd-cafile/--etcd-certfile/--etcd-keyfile are set but --etcd-endpoints"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it did not retry"
    );
}
