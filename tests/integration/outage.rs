//! etcd trouble: a member lost, every member lost, a compaction behind the watch, TLS.

use std::time::Duration;

use podnet::lab::LabSpec;

use crate::cluster::{Cluster, PODNETCTL, PREFIX};
use crate::support::{ok, poll, unique};

const VXLAN_16: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// node's podnet-owned kernel state: routes, neighbours and FDB entries, plus the device index.
fn dataplane(c: &Cluster, node: &str) -> String {
    let routes = c.ip_json(node, &["route", "show", "proto", "86"]);
    let neigh = c.ip_json(node, &["neigh", "show", "dev", "flannel.1"]);
    let fdb = ok(c
        .lab
        .exec(node, &["bridge", "fdb", "show", "dev", "flannel.1"])
        .unwrap());
    let link = c.ip_json(node, &["link", "show", "flannel.1"]);
    format!("{routes}\n{neigh}\n{fdb}\n{}", link[0]["ifindex"])
}

fn has_route(c: &Cluster, node: &str, dst: &str) -> bool {
    c.ip_json(node, &["route", "show", "proto", "86"])
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["dst"] == dst)
}

fn subnet_of(c: &Cluster, node: &str) -> String {
    c.wait_ready(node).subnet.unwrap().trunc().to_string()
}

fn fake_peer(c: &Cluster, key: &str, ip: &str, mac: &str) {
    c.etcdctl(&[
        "put",
        &format!("{PREFIX}/subnets/{key}"),
        &format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#),
    ]);
}

#[test]
fn losing_one_member_or_all_of_them_disturbs_nothing_and_misses_nothing() {
    let mut c = Cluster::new(LabSpec::new(unique("lout"), 3).etcd_members(3));
    c.put_config(VXLAN_16);
    // Renewed 3 s after each grant: 9 s left for a renewal to find another member, which a
    // loaded machine has needed more than the 5 s an 8 s lease left.
    let ttl = ["--subnet-lease-ttl=12s", "--subnet-lease-renew-margin=9s"];
    let n1 = c.start("node1", &ttl);
    c.start("node2", &ttl);
    let s2 = subnet_of(&c, "node2");
    poll(
        "node1 to route node2's subnet",
        Duration::from_secs(10),
        || has_route(&c, "node1", &s2).then_some(()),
    );

    // One member down: renewals and the watch carry on with the other two.
    c.lab.stop_etcd("etcd2").unwrap();
    let n3 = c.start("node3", &ttl);
    let s3 = subnet_of(&c, "node3");
    poll(
        "node1 to route node3's subnet",
        Duration::from_secs(15),
        || has_route(&c, "node1", &s3).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(14));
    assert_eq!(
        c.leases().len(),
        3,
        "leases outlived their 12 s lifetime: renewal worked"
    );

    // node3 leaves quietly (its lease stays); then every member goes down for a while.
    c.lab.stop(n3.id.pid).unwrap();
    let before = dataplane(&c, "node1");
    c.lab.stop_etcd("etcd1").unwrap();
    c.lab.stop_etcd("etcd3").unwrap();
    c.wait_log(&n1, "lease watch lost etcd", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        dataplane(&c, "node1"),
        before,
        "the data path must not change while etcd is away"
    );
    for m in ["etcd1", "etcd2", "etcd3"] {
        c.lab.start_etcd(m).unwrap();
    }
    c.lab.wait_etcd_healthy(Duration::from_secs(30)).unwrap();
    // Changes made the moment etcd is back, before node1's watch has reconnected.
    c.etcdctl(&["del", &format!("{PREFIX}/subnets/{}", s3.replace('/', "-"))]);
    fake_peer(&c, "10.244.250.0-24", "198.18.0.99", "02:00:00:00:02:50");
    poll(
        "node1 to converge after the outage",
        Duration::from_secs(20),
        || {
            (has_route(&c, "node1", "10.244.250.0/24") && !has_route(&c, "node1", &s3))
                .then_some(())
        },
    );
    let log = c.wait_log(&n1, "lease watch reconnected", Duration::from_secs(5));
    // From the outage on: before it, a loaded machine may let node3's 12 s lease lapse and come
    // back, which is renewal's business, not the reconnect's.
    let log = &log[log
        .rfind("lease watch lost")
        .expect("the outage was logged")..];
    assert_eq!(
        log.matches("peer added peer=10.244.250.0-24").count(),
        1,
        "exactly once:\n{log}"
    );
    assert_eq!(
        log.matches(&format!("peer removed peer={}", s3.replace('/', "-")))
            .count(),
        1,
        "exactly once:\n{log}"
    );
    assert_eq!(
        log.matches(&format!("peer added peer={}", s3.replace('/', "-")))
            .count(),
        0,
        "the relist after reconnecting adds nothing again:\n{log}"
    );
    assert!(has_route(&c, "node1", &s2));
    // Both running nodes still hold their leases after all of it.
    poll("node1 and node2 leases", Duration::from_secs(10), || {
        let keys: Vec<String> = c.leases().into_iter().map(|(k, _)| k).collect();
        (keys.len() == 3).then_some(())
    });
}

#[test]
fn a_watch_behind_a_compaction_relists_and_converges() {
    let mut c = Cluster::small("lcmp", 2);
    c.put_config(VXLAN_16);
    // Renewing every few seconds keeps traffic on the connection, so a block is noticed at once.
    let args = ["--subnet-lease-ttl=30s", "--subnet-lease-renew-margin=27s"];
    let n1 = c.start("node1", &args);
    let n2 = c.start("node2", &args);
    let s2 = subnet_of(&c, "node2");
    poll("node1 to route node2", Duration::from_secs(10), || {
        has_route(&c, "node1", &s2).then_some(())
    });

    // Cut node1 off from etcd (inside node1's own namespace).
    for rule in [
        "add table inet podnet-test",
        "add chain inet podnet-test out { type filter hook output priority 0; }",
        "add rule inet podnet-test out ip daddr 198.18.0.2 tcp dport 2379 reject with tcp reset",
    ] {
        let mut argv = vec!["nft"];
        argv.extend(rule.split(' '));
        ok(c.lab.exec("node1", &argv).unwrap());
    }
    c.wait_log(&n1, "lease watch lost etcd", Duration::from_secs(20));
    c.lab.stop(n2.id.pid).unwrap();
    c.etcdctl(&["del", &format!("{PREFIX}/subnets/{}", s2.replace('/', "-"))]);
    fake_peer(&c, "10.244.251.0-24", "198.18.0.98", "02:00:00:00:02:51");
    fake_peer(&c, "10.244.252.0-24", "198.18.0.97", "02:00:00:00:02:52");
    let status: serde_json::Value =
        serde_json::from_str(&c.etcdctl(&["endpoint", "status", "-w", "json"])).unwrap();
    let rev = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
    c.etcdctl(&["compact", &rev.to_string()]);
    ok(c.lab
        .exec("node1", &["nft", "delete", "table", "inet", "podnet-test"])
        .unwrap());

    poll(
        "node1 to converge after the compaction",
        Duration::from_secs(20),
        || {
            (has_route(&c, "node1", "10.244.251.0/24")
                && has_route(&c, "node1", "10.244.252.0/24")
                && !has_route(&c, "node1", &s2))
            .then_some(())
        },
    );
    let log = c.log(&n1);
    assert!(
        log.contains("lease watch fell behind a compaction; re-listing"),
        "{log}"
    );
}

fn openssl(dir: &std::path::Path, script: &str) {
    let out = std::process::Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mutual_tls_works_and_a_wrong_ca_or_missing_client_cert_is_explained() {
    let mut c = Cluster::small("ltls", 1);
    let dir = c.lab.workdir().join("pki");
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        r#"
        key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
        key ca-key.pem
        openssl req -x509 -new -key ca-key.pem -out ca.pem -days 2 -subj /CN=podnet-test-ca
        key other-ca-key.pem
        openssl req -x509 -new -key other-ca-key.pem -out other-ca.pem -days 2 -subj /CN=someone-else
        for who in server client; do
          key $who-key.pem
          openssl req -new -key $who-key.pem -out $who.csr -subj /CN=$who
        done
        printf 'subjectAltName=IP:198.18.0.2\nextendedKeyUsage=serverAuth\n' > server.ext
        printf 'extendedKeyUsage=clientAuth\n' > client.ext
        for who in server client; do
          openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out $who.pem -days 2 -extfile $who.ext 2>/dev/null
        done
        "#,
    );
    let p = |f: &str| dir.join(f).display().to_string();
    let data = c.lab.workdir().join("etcd-tls");
    let argv: Vec<String> = [
        "etcd",
        "--name",
        "tls",
        "--data-dir",
        &data.display().to_string(),
        "--listen-client-urls",
        "https://198.18.0.2:12379",
        "--advertise-client-urls",
        "https://198.18.0.2:12379",
        "--listen-peer-urls",
        "http://127.0.0.1:12380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:12380",
        "--initial-cluster",
        "tls=http://127.0.0.1:12380",
        "--cert-file",
        &p("server.pem"),
        "--key-file",
        &p("server-key.pem"),
        "--trusted-ca-file",
        &p("ca.pem"),
        "--client-cert-auth",
        "--log-level",
        "warn",
        "--logger",
        "zap",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    c.lab.spawn("etcd1", &argv, &[]).unwrap();
    let ep = "https://198.18.0.2:12379";
    let tls = [
        format!("--etcd-endpoints={ep}"),
        format!("--etcd-cafile={}", p("ca.pem")),
        format!("--etcd-certfile={}", p("client.pem")),
        format!("--etcd-keyfile={}", p("client-key.pem")),
    ];
    let ctl = |c: &Cluster, extra: &[String], args: &[&str]| {
        let mut argv: Vec<String> = vec![PODNETCTL.into()];
        argv.extend(args.iter().map(|s| s.to_string()));
        argv.extend(extra.iter().cloned());
        c.lab.exec("node1", &argv).unwrap()
    };
    poll("the TLS etcd to answer", Duration::from_secs(20), || {
        ctl(&c, &tls, &["leases"]).status.success().then_some(())
    });
    let mut cmd = c
        .lab
        .command("node1", &[PODNETCTL, "config", "set", "-"])
        .unwrap();
    cmd.args(&tls)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), VXLAN_16.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());

    // podnetd over mutual TLS, end to end.
    let mut args: Vec<String> = c.podnetd_args("node1", &[]);
    args.retain(|a| !a.starts_with("--etcd-endpoints"));
    args.extend(tls.iter().cloned());
    c.lab.spawn("node1", &args, &[]).unwrap();
    c.wait_ready("node1");

    // A CA that did not sign the server's certificate.
    let wrong_ca = [
        tls[0].clone(),
        format!("--etcd-cafile={}", p("other-ca.pem")),
        tls[2].clone(),
        tls[3].clone(),
    ];
    let out = ctl(&c, &wrong_ca, &["leases"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(ep), "names the endpoint: {err}");
    assert!(
        err.contains("UnknownIssuer") || err.contains("unknown issuer"),
        "says why: {err}"
    );

    // No client certificate: the server refuses the handshake.
    let no_cert = [tls[0].clone(), tls[1].clone()];
    let out = ctl(&c, &no_cert, &["leases"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(ep), "{err}");
    assert!(
        err.contains("requires a client certificate"),
        "says it is about the certificate: {err}"
    );

    // Half a client identity is a usage error before any connection.
    let half = [tls[0].clone(), tls[1].clone(), tls[2].clone()];
    let out = ctl(&c, &half, &["leases"]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--etcd-certfile and --etcd-keyfile must be given together")
    );
}
