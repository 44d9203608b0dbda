//! Network policy at scale: 1 000 pods in 10 namespaces and 200 NetworkPolicies, fed to podnetd
//! through its manifest directory on a two-node lab (vxlan).
//!
//!   sudo cargo bench --bench policy          (BENCH_RUNS=5 rounds, BENCH_SECONDS=3 per iperf3)
//!
//! - programming: from the manifests written to the policy being in the kernel (podnetd's
//!   status counts the policies and the transaction), and the engine's own transaction time;
//! - a new pod: from its CNI ADD returning to its address being in the kernel's ingress map
//!   (the plugin's pod record is how podnetd learns the address), and a label change: from the
//!   manifest written to the pod's chain changing;
//! - the data path: one TCP stream and the round trip between two real pods, the server isolated
//!   by a policy that lets the client in, with the 200 policies in force and with none, rounds
//!   interleaved in one run.
//!
//! `BENCH_PARTS=apply` (not run by default; `BENCH_PARTS=apply,cluster` for both): the engine's
//! transactions for the same 1 000 pods and 200 policies as node1 compiles them, `nft -f` of
//! their text (the way before) against the nfnetlink transaction on a kept socket (the way
//! now), interleaved, in a lab node's namespace: the first programming (the empty start-up
//! table to all of it, `update`), the whole table replaced (`full`, the fallback) and one pod
//! event (a new pod under a policy: set and map elements; mean of its add and its removal).

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use podnet::lab::LabSpec;
use podnet::lab::cluster::Cluster;
use podnet::status::Status;

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":22,"Backend":{"Type":"vxlan"}}"#;
const NAMESPACES: usize = 10;
const PODS: usize = 1000;
const POLICIES: usize = 200;

fn status(c: &Cluster, node: &str) -> Status {
    let sock = c.socket_path(node).unwrap();
    Status::from_json(&podnet::httpget::unix(&sock, "/status").unwrap().1).unwrap()
}

/// 1 000 pods spread over the two nodes' subnets (only two of them real), labelled
/// `app: a<i % 20>`, `tier: <i % 3>`; 200 policies, 20 per namespace, each isolating one app
/// and allowing some peers on some ports.
fn manifests(subnets: [Ipv4Addr; 2]) -> String {
    let mut s = String::new();
    for n in 0..NAMESPACES {
        s += &format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}, labels: {{team: t{}}}}}\n",
            n % 4
        );
    }
    for i in 0..PODS {
        let base = u32::from(subnets[i % 2]);
        let ip = Ipv4Addr::from(base + 10 + (i / 2) as u32);
        s += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: ns{}, labels: {{app: a{}, tier: t{}}}}}\nspec: {{containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{podIPs: [{{ip: {ip}}}]}}\n",
            i % NAMESPACES,
            i % 20,
            i % 3
        );
    }
    for p in 0..POLICIES {
        let ns = p % NAMESPACES;
        let app = p / NAMESPACES;
        s += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: pol{p}, namespace: ns{ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: a{app}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{tier: t{}}}}}}}, {{namespaceSelector: {{matchLabels: {{team: t{}}}}}}}]\n    ports: [{{port: 80}}, {{port: http}}, {{protocol: UDP, port: 53}}]\n  - from: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.244.{}.0/24]}}}}]\n",
            p % 3,
            p % 4,
            p % 250
        );
    }
    s
}

/// The server pod (node2) isolated, the client (node1) allowed in. The pods are the plugin's
/// (namespace default, named NODE-POD); their addresses are written down as the API would
/// report them, since a node knows only its own pods from the plugin's records.
fn pair_policy(client: Ipv4Addr, server: Ipv4Addr) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: node1-client, namespace: default, labels: {{role: client}}}}\nstatus: {{podIPs: [{{ip: {client}}}]}}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: node2-server, namespace: default, labels: {{role: server}}}}\nstatus: {{podIPs: [{{ip: {server}}}]}}\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: server, namespace: default}}\nspec:\n  podSelector: {{matchLabels: {{role: server}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{role: client}}}}}}]}}]\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    podnet::util::files::write_atomic(&dir.join(name), text.as_bytes(), None).unwrap();
}

/// Waits until node's engine holds `policies` policies and has applied more than `applies`.
fn wait_applied(c: &Cluster, node: &str, policies: usize, applies: u64) -> Status {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = status(c, node);
        let p = st.policy.clone().unwrap();
        if p.policies == policies && p.applies > applies {
            return st;
        }
        assert!(Instant::now() < deadline, "{node}: {p:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether node1's kernel has `ip` in the ingress map.
fn in_map(c: &Cluster, ip: Ipv4Addr) -> bool {
    let out = run_in(
        &c.lab,
        "node1",
        &["nft", "list", "map", "inet", "podnet-policy", "ingress-4"],
    );
    out.contains(&format!("{ip} :"))
}

/// node1's rulesets for the scale manifests: none yet (start-up), all of it, and all of it
/// with one more local pod under pol0 (`app: a0` in ns0).
fn apply_rulesets() -> [podnet::policy::render::Ruleset; 3] {
    use podnet::policy::{compile::compile, manifest, model::Cluster as Model, render};
    let subnets = [Ipv4Addr::new(10, 244, 0, 0), Ipv4Addr::new(10, 244, 4, 0)];
    let local: ipnet::IpNet = "10.244.0.0/22".parse().unwrap();
    let opts = render::Options {
        bridge: "cni0".into(),
        ipv4: true,
        ipv6: false,
        log_group: None,
    };
    // As the daemon decides locality: by address.
    let compiled = |text: &str| {
        let mut m = Model::new();
        let (_, errors) = manifest::load_into(&mut m, text);
        assert!(errors.is_empty(), "{errors:?}");
        let pods: Vec<_> = m.pods().cloned().collect();
        for mut p in pods {
            if p.ips.iter().any(|ip| local.contains(ip)) {
                p.node = Some("node1".into());
                m.upsert_pod(p);
            }
        }
        render::ruleset(&compile(&m, "node1"), &opts)
    };
    let all = manifests(subnets);
    let one_more = format!(
        "{all}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: new, namespace: ns0, labels: {{app: a0, tier: t1}}}}\nspec: {{containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{podIPs: [{{ip: 10.244.3.250}}]}}\n"
    );
    [compiled(""), compiled(&all), compiled(&one_more)]
}

/// Seconds per call as [way][first programming, full replace, pod event], `nft -f` then
/// netlink, interleaved round by round.
fn apply_bench(rounds: usize) -> [[Vec<f64>; 3]; 2] {
    use podnet::kernel::nft;
    use podnet::policy::render::{self, Options};
    let [empty, all, more] = apply_rulesets();
    let c = Cluster::up(&LabSpec::new(unique("bpolap"), 1), binaries()).unwrap();
    let opts = Options {
        bridge: "cni0".into(),
        ipv4: true,
        ipv6: false,
        log_group: None,
    };
    let text = [
        render::full(&empty, &opts),
        render::update(&empty, &all),
        render::full(&all, &opts),
        render::update(&all, &more),
        render::update(&more, &all),
    ];
    let batch = [
        render::full_batch(&empty, &opts),
        render::update_batch(&empty, &all),
        render::full_batch(&all, &opts),
        render::update_batch(&all, &more),
        render::update_batch(&more, &all),
    ];
    eprintln!(
        "apply: {} sets, {} chains, {} map elements; the update to one more pod: {} messages",
        all.sets.len(),
        all.chains.len(),
        all.maps.values().map(|m| m.len()).sum::<usize>(),
        batch[3].ops.len()
    );
    let timed = |f: &dyn Fn()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let ns = c.lab.netns("node1").unwrap();
    ns.run(|| {
        let socket = nft::NftSocket::open().unwrap();
        let mut t: [[Vec<f64>; 3]; 2] = Default::default();
        for _ in 0..rounds {
            nft::apply(&text[0]).unwrap();
            t[0][0].push(timed(&|| nft::apply(&text[1]).unwrap()));
            t[0][1].push(timed(&|| nft::apply(&text[2]).unwrap()));
            t[0][2].push(
                timed(&|| {
                    nft::apply(&text[3]).unwrap();
                    nft::apply(&text[4]).unwrap();
                }) / 2.0,
            );
            socket.commit(&batch[0]).unwrap();
            t[1][0].push(timed(&|| socket.commit(&batch[1]).unwrap()));
            t[1][1].push(timed(&|| socket.commit(&batch[2]).unwrap()));
            t[1][2].push(
                timed(&|| {
                    socket.commit(&batch[3]).unwrap();
                    socket.commit(&batch[4]).unwrap();
                }) / 2.0,
            );
        }
        t
    })
    .unwrap()
}

fn print_apply(t: [[Vec<f64>; 3]; 2]) {
    println!(
        "\nThe policy engine's transactions ({PODS} pods, {POLICIES} policies, node1's table), `nft -f` against nfnetlink, interleaved, ms median (min–max):"
    );
    let steps = ["first programming", "full replace", "one pod event"];
    for (i, step) in steps.iter().enumerate() {
        let (a, b) = (summarize(&t[0][i]), summarize(&t[1][i]));
        println!(
            "  {step:<18} nft {}   netlink {}   {:.1}x",
            ms(a),
            ms(b),
            a.median / b.median
        );
    }
}

fn main() {
    require_root();
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "cluster".into());
    if parts.contains("apply") {
        print_apply(apply_bench(runs(20)));
    }
    if parts.contains("cluster") {
        cluster_bench();
    }
}

fn cluster_bench() {
    let runs = runs(5);
    let seconds: u32 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut c = Cluster::up(&LabSpec::new(unique("bpol"), 2), binaries()).unwrap();
    c.put_config(CONFIG).unwrap();
    let dir = c.lab.policy_dir().unwrap();
    for node in ["node1", "node2"] {
        let pd = format!("--policy-dir={}", dir.display());
        c.start(node, &[&pd]).unwrap();
    }
    let env: Vec<_> = ["node1", "node2"]
        .iter()
        .map(|n| c.wait_ready(n, Duration::from_secs(30)).unwrap())
        .collect();
    let subnets = [0, 1].map(|i| env[i].subnet.unwrap().trunc().network());
    let client = c.add_pod("node1", "client", "1.0.0").unwrap();
    let server = c.add_pod("node2", "server", "1.0.0").unwrap();
    c.lab
        .spawn("node2/server", &["iperf3".to_string(), "-s".into()], &[])
        .unwrap();

    // Programming 1 000 pods and 200 policies.
    let before = status(&c, "node1").policy.unwrap().applies;
    let t = Instant::now();
    write(&dir, "scale.yaml", &manifests(subnets));
    let st = wait_applied(&c, "node1", POLICIES, before);
    let programmed = t.elapsed();
    let p = st.policy.unwrap();
    eprintln!(
        "programmed: {programmed:?}, engine transaction {:?} ms, {p:?}",
        p.last_apply_ms
    );

    // A new pod of ns0/app a0 (isolated by pol0): CNI ADD to its address in the map.
    let mut add = Vec::new();
    for i in 0..10 {
        let name = format!("new{i}");
        let pod_manifest = format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: node1-{name}, namespace: default, labels: {{app: a0}}}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny-new, namespace: default}}\nspec: {{podSelector: {{matchLabels: {{app: a0}}}}, ingress: []}}\n"
        );
        if i == 0 {
            write(&dir, "new.yaml", &pod_manifest);
            wait_applied(&c, "node1", POLICIES + 1, 0);
        } else {
            write(
                &dir,
                "new.yaml",
                &pod_manifest.replace("node1-new0", &format!("node1-{name}")),
            );
        }
        std::thread::sleep(Duration::from_millis(300));
        let pod = c.add_pod("node1", &name, "1.0.0").unwrap();
        let t = Instant::now();
        while !in_map(&c, pod.ip) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{} never enforced",
                pod.ip
            );
        }
        add.push(t.elapsed().as_secs_f64());
    }
    // A label change: p0 loses the label pol0 selects it by, and gets it back.
    let mut relabel = Vec::new();
    let text = manifests(subnets);
    let p0_ip = Ipv4Addr::from(u32::from(subnets[0]) + 10);
    for i in 0..10 {
        let changed = if i % 2 == 0 {
            text.replacen(
                "labels: {app: a0, tier: t0}",
                "labels: {app: none, tier: t0}",
                1,
            )
        } else {
            text.clone()
        };
        let t = Instant::now();
        write(&dir, "scale.yaml", &changed);
        let want = i % 2 != 0;
        while in_map(&c, p0_ip) != want {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "relabel never enforced"
            );
        }
        relabel.push(t.elapsed().as_secs_f64());
    }

    // The data path with the 200 policies (plus the pair's) and with none.
    let server_ip = server.ip.to_string();
    let (mut with_bps, mut with_rtt, mut none_bps, mut none_rtt) = (vec![], vec![], vec![], vec![]);
    let pair = pair_policy(client.ip, server.ip);
    for r in 0..runs {
        for loaded in [true, false] {
            let _ = std::fs::remove_file(dir.join("new.yaml"));
            if loaded {
                write(&dir, "scale.yaml", &text);
                write(&dir, "pair.yaml", &pair);
                wait_applied(&c, "node1", POLICIES + 1, 0);
                wait_applied(&c, "node2", POLICIES + 1, 0);
            } else {
                let _ = std::fs::remove_file(dir.join("scale.yaml"));
                let _ = std::fs::remove_file(dir.join("pair.yaml"));
                let deadline = Instant::now() + Duration::from_secs(30);
                while status(&c, "node2").policy.unwrap().policies != 0 {
                    assert!(Instant::now() < deadline);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let bps = throughput(&c.lab, "node1/client", &server_ip, seconds) / 1e9;
            let rtt = latency(&c.lab, "node1/client", &server_ip);
            if loaded {
                with_bps.push(bps);
                with_rtt.push(rtt);
            } else {
                none_bps.push(bps);
                none_rtt.push(rtt);
            }
        }
        eprintln!("round {}/{runs}", r + 1);
    }
    let (wb, nb, wr, nr) = (
        summarize(&with_bps),
        summarize(&none_bps),
        summarize(&with_rtt),
        summarize(&none_rtt),
    );
    println!(
        "\nNetwork policy, {PODS} pods in {NAMESPACES} namespaces, {POLICIES} policies, 2 nodes (vxlan)\n"
    );
    println!("| measure | result |");
    println!("|---|---|");
    println!(
        "| manifests written → all in node1's kernel | {:.0} ms |",
        programmed.as_secs_f64() * 1e3
    );
    println!(
        "| the engine's transaction for it | {:.0} ms |",
        p.last_apply_ms.unwrap_or(f64::NAN)
    );
    println!(
        "| pod CNI ADD → enforced (median (min–max) of 10) | {} ms |",
        ms(summarize(&add))
    );
    println!(
        "| label change written → enforced (median (min–max) of 10) | {} ms |",
        ms(summarize(&relabel))
    );
    println!("\n| pod → pod, {runs} rounds interleaved | 200 policies | none | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| TCP Gbit/s, median (min–max) | {:.2} ({:.2}–{:.2}) | {:.2} ({:.2}–{:.2}) | {:.3} |",
        wb.median,
        wb.min,
        wb.max,
        nb.median,
        nb.min,
        nb.max,
        wb.median / nb.median
    );
    println!(
        "| RTT µs, median (min–max) | {:.1} ({:.1}–{:.1}) | {:.1} ({:.1}–{:.1}) | {:.3} |",
        wr.median * 1e6,
        wr.min * 1e6,
        wr.max * 1e6,
        nr.median * 1e6,
        nr.min * 1e6,
        nr.max * 1e6,
        wr.median / nr.median
    );
}
