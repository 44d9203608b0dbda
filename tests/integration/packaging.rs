//! The packaging files parse and agree with the binaries they configure.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::Parser;
use podnet::cni::conf::NetConf;
use podnet::config::NetworkConfig;
use podnet::daemon::flags::{Flags, normalize_args};
use serde_json::json;

use crate::cluster::{PODNET_CNI, PODNETCTL};

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// The documents of a multi-document manifest, in order.
fn manifests(path: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [serde_yaml::Value], k: &str, name: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"] == k && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {k} {name}"))
}

#[test]
fn etcd_manifest_parses_and_fits_the_binaries() {
    let docs = manifests("packaging/kubernetes/podnet-etcd.yml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "ConfigMap",
            "Job",
            "DaemonSet"
        ]
    );
    let cfg = kind(&docs, "ConfigMap", "podnet-cfg");
    // The network config is one podnetd accepts.
    NetworkConfig::parse(cfg["data"]["net-conf.json"].as_str().unwrap()).unwrap();
    // The conflist's first plugin is one the podnet plugin accepts (the runtime adds name and version).
    let conflist: serde_json::Value =
        serde_json::from_str(cfg["data"]["cni-conf.json"].as_str().unwrap()).unwrap();
    let mut first = conflist["plugins"][0].clone();
    first["name"] = conflist["name"].clone();
    first["cniVersion"] = conflist["cniVersion"].clone();
    let plugin = NetConf::parse(first.to_string().as_bytes()).unwrap();

    let ds = kind(&docs, "DaemonSet", "podnet");
    let spec = &ds["spec"]["template"]["spec"];
    let volumes: HashSet<&str> = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let containers = spec["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .chain(spec["initContainers"].as_sequence().unwrap());
    for c in containers {
        for m in c["volumeMounts"].as_sequence().unwrap() {
            assert!(
                volumes.contains(m["name"].as_str().unwrap()),
                "mount of an undefined volume: {m:?}"
            );
        }
    }
    // The agent's arguments are podnetd flags, and the probes ask its health port.
    let agent = &spec["containers"][0];
    let mut argv = vec!["podnetd".to_string()];
    argv.extend(agent["args"].as_sequence().unwrap().iter().map(|a| {
        a.as_str()
            .unwrap()
            .replace("$(ETCD_ENDPOINTS)", "https://10.0.0.10:2379")
    }));
    let flags = Flags::try_parse_from(normalize_args(argv, &|_| None)).unwrap();
    assert!(flags.ip_masq);
    // podnetd reads the pod records where the plugin, on the host, writes them.
    assert_eq!(
        source(spec, agent, &flags.pod_records_dir),
        Source::Host(plugin.pod_records_dir)
    );
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        agent["readinessProbe"]["httpGet"]["port"].as_u64(),
        Some(flags.healthz_port as u64)
    );
    for e in agent["env"].as_sequence().unwrap() {
        let name = e["name"].as_str().unwrap();
        if let Some(flag) = name.strip_prefix("PODNETD_") {
            let long = flag.to_lowercase().replace('_', "-");
            assert!(
                <Flags as clap::CommandFactory>::command()
                    .get_arguments()
                    .any(|a| a.get_long() == Some(&long)),
                "{name} is not a podnetd flag"
            );
        }
    }
    // The init container runs podnetctl install-cni with arguments it accepts.
    let init = &spec["initContainers"][0];
    let cmd: Vec<&str> = init["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&cmd[..2], ["/usr/local/bin/podnetctl", "install-cni"]);
    assert!(cmd.contains(&"--name=flannel"));
    let job = kind(&docs, "Job", "podnet-config");
    let jc: Vec<&str> = job["spec"]["template"]["spec"]["containers"][0]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(jc[1..3], ["config", "set"]);
}

/// The objects of flannel's released kube-flannel.yml, in its order, as (kind, name).
const KUBE_FLANNEL_OBJECTS: [(&str, &str); 6] = [
    ("Namespace", "kube-flannel"),
    ("ClusterRole", "flannel"),
    ("ClusterRoleBinding", "flannel"),
    ("ServiceAccount", "flannel"),
    ("ConfigMap", "kube-flannel-cfg"),
    ("DaemonSet", "kube-flannel-ds"),
];

fn seq(v: &serde_yaml::Value) -> &[serde_yaml::Value] {
    v.as_sequence().map(|s| s.as_slice()).unwrap_or(&[])
}

fn strs(v: &serde_yaml::Value) -> Vec<&str> {
    seq(v).iter().map(|s| s.as_str().unwrap()).collect()
}

fn labels(v: &serde_yaml::Value) -> BTreeMap<String, String> {
    serde_yaml::from_value(v.clone()).unwrap()
}

/// Whether a label selector (`matchLabels` only) selects these labels.
fn selects(selector: &serde_yaml::Value, labels_of: &serde_yaml::Value) -> bool {
    let have = labels(labels_of);
    labels(&selector["matchLabels"])
        .iter()
        .all(|(k, v)| have.get(k) == Some(v))
}

/// Where a path in a container comes from, through its mounts: a host directory (hostPath
/// volume) or a ConfigMap, and the rest of the path below the mount.
#[derive(Debug, PartialEq)]
enum Source {
    Host(PathBuf),
    ConfigMap(String, PathBuf),
}

fn source(pod: &serde_yaml::Value, container: &serde_yaml::Value, path: &Path) -> Source {
    let (vol, rest) = seq(&container["volumeMounts"])
        .iter()
        .find_map(|m| {
            let rest = path.strip_prefix(m["mountPath"].as_str().unwrap()).ok()?;
            Some((m["name"].as_str().unwrap(), rest.to_path_buf()))
        })
        .unwrap_or_else(|| panic!("{} is not on a mount", path.display()));
    let v = seq(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == vol)
        .unwrap_or_else(|| panic!("mount of an undefined volume {vol}"));
    if let Some(host) = v["hostPath"]["path"].as_str() {
        Source::Host(Path::new(host).join(rest))
    } else if let Some(cm) = v["configMap"]["name"].as_str() {
        Source::ConfigMap(cm.to_string(), rest)
    } else {
        panic!("volume {vol}: neither hostPath nor configMap")
    }
}

#[test]
fn kube_manifest_is_a_drop_in_for_kube_flannel() {
    let docs = manifests("packaging/kubernetes/kube-podnet.yml");
    let objects: Vec<(&str, &str)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(objects, KUBE_FLANNEL_OBJECTS);
    for d in &docs {
        let kind = d["kind"].as_str().unwrap();
        let namespaced = !matches!(kind, "Namespace" | "ClusterRole" | "ClusterRoleBinding");
        assert_eq!(
            d["metadata"]["namespace"].as_str(),
            namespaced.then_some("kube-flannel"),
            "{kind}"
        );
        // The released kube-flannel.yml is built with kustomize's commonLabels k8s-app: flannel.
        assert_eq!(d["metadata"]["labels"]["k8s-app"], "flannel", "{kind}");
    }
    let ns = kind(&docs, "Namespace", "kube-flannel");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );

    // RBAC: exactly flannel's rules, bound to flannel's service account.
    let role = kind(&docs, "ClusterRole", "flannel");
    let mut rules: Vec<(String, String, Vec<String>)> = Vec::new();
    for r in seq(&role["rules"]) {
        assert!(r["resourceNames"].is_null() && r["nonResourceURLs"].is_null());
        let mut verbs: Vec<String> = strs(&r["verbs"]).iter().map(|v| v.to_string()).collect();
        verbs.sort();
        for g in strs(&r["apiGroups"]) {
            for res in strs(&r["resources"]) {
                rules.push((g.into(), res.into(), verbs.clone()));
            }
        }
    }
    rules.sort();
    let rule = |res: &str, verbs: &[&str]| {
        (
            String::new(),
            res.to_string(),
            verbs.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        rules,
        [
            rule("nodes", &["get", "list", "watch"]),
            rule("nodes/status", &["patch"]),
            rule("pods", &["get"]),
        ]
    );
    let binding = kind(&docs, "ClusterRoleBinding", "flannel");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], "flannel");
    assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
    assert_eq!(binding["subjects"][0]["name"], "flannel");
    assert_eq!(binding["subjects"][0]["namespace"], "kube-flannel");
    assert_eq!(seq(&binding["subjects"]).len(), 1);

    // The config map: the network config podnetd accepts, the conflist kube-flannel's.
    let cfg = kind(&docs, "ConfigMap", "kube-flannel-cfg");
    let net = NetworkConfig::parse(cfg["data"]["net-conf.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        net.v4.unwrap().network,
        "10.244.0.0/16".parse::<ipnet::Ipv4Net>().unwrap()
    );
    assert_eq!(net.backend.type_name(), "vxlan");
    let conflist: serde_json::Value =
        serde_json::from_str(cfg["data"]["cni-conf.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        conflist,
        json!({"name": "cbr0", "cniVersion": "0.3.1", "plugins": [
            {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]})
    );
    let mut first = conflist["plugins"][0].clone();
    first["name"] = conflist["name"].clone();
    first["cniVersion"] = conflist["cniVersion"].clone();
    let plugin = NetConf::parse(first.to_string().as_bytes()).unwrap();

    // The DaemonSet: flannel's selector (immutable, so it must be the same) and pod shape.
    let ds = kind(&docs, "DaemonSet", "kube-flannel-ds");
    assert_eq!(
        labels(&ds["spec"]["selector"]["matchLabels"]),
        labels(&serde_yaml::from_str("{app: flannel, k8s-app: flannel}").unwrap())
    );
    let template = &ds["spec"]["template"];
    assert!(selects(
        &ds["spec"]["selector"],
        &template["metadata"]["labels"]
    ));
    let pod = &template["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["serviceAccountName"], "flannel");
    assert!(
        seq(&pod["tolerations"])
            .iter()
            .any(|t| t["operator"] == "Exists" && t["effect"] == "NoSchedule")
    );
    // Volumes: every mount has its volume, every volume is mounted, no xtables lock.
    let volumes: HashSet<&str> = seq(&pod["volumes"])
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let containers: Vec<&serde_yaml::Value> = seq(&pod["initContainers"])
        .iter()
        .chain(seq(&pod["containers"]))
        .collect();
    let mut mounted = HashSet::new();
    for c in &containers {
        for m in seq(&c["volumeMounts"]) {
            let name = m["name"].as_str().unwrap();
            assert!(
                volumes.contains(name),
                "mount of an undefined volume: {m:?}"
            );
            mounted.insert(name);
        }
    }
    assert_eq!(mounted, volumes, "volumes nobody mounts");
    assert!(
        seq(&pod["volumes"])
            .iter()
            .all(|v| v["hostPath"]["path"] != "/run/xtables.lock")
    );

    // The agent: podnetd's flags (command line and environment) in Kubernetes mode.
    let agent = &seq(&pod["containers"])[0];
    assert_eq!(agent["name"], "kube-flannel");
    assert_eq!(strs(&agent["command"]), ["/usr/local/bin/podnetd"]);
    let env: Vec<&serde_yaml::Value> = seq(&agent["env"]).iter().collect();
    let field = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str())
    };
    assert_eq!(field("NODE_NAME"), Some("spec.nodeName"));
    assert_eq!(field("POD_NAME"), Some("metadata.name"));
    assert_eq!(field("POD_NAMESPACE"), Some("metadata.namespace"));
    let literal = |k: &str| {
        env.iter()
            .find(|e| e["name"] == k)
            .and_then(|e| e["value"].as_str())
            .map(String::from)
    };
    let mut argv = vec!["podnetd".to_string()];
    argv.extend(strs(&agent["args"]).iter().map(|a| a.to_string()));
    let flags = Flags::try_parse_from(normalize_args(argv, &literal)).unwrap();
    flags.validate().unwrap();
    assert!(flags.kube_subnet_mgr && flags.ip_masq);
    assert_eq!(flags.healthz_port, 8081);
    for e in &env {
        let name = e["name"].as_str().unwrap();
        if let Some(flag) = name
            .strip_prefix("PODNETD_")
            .or_else(|| name.strip_prefix("FLANNELD_"))
        {
            let long = flag.to_lowercase().replace('_', "-");
            assert!(
                <Flags as clap::CommandFactory>::command()
                    .get_arguments()
                    .any(|a| a.get_long() == Some(&long)),
                "{name} is not a podnetd flag"
            );
        }
    }
    // What podnetd reads and writes is where the node's other parts look for it.
    assert_eq!(
        source(pod, agent, &flags.net_config_path),
        Source::ConfigMap("kube-flannel-cfg".into(), "net-conf.json".into())
    );
    assert_eq!(
        source(pod, agent, &flags.subnet_file),
        Source::Host("/run/flannel/subnet.env".into())
    );
    assert_eq!(
        source(pod, agent, &flags.status_socket),
        Source::Host("/run/podnet/podnetd.sock".into())
    );
    // The plugin, on the host with the conflist's settings, writes its pod records where
    // podnetd reads them.
    assert_eq!(
        source(pod, agent, &flags.pod_records_dir),
        Source::Host(plugin.pod_records_dir.clone())
    );
    let sc = &agent["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(strs(&sc["capabilities"]["add"]), ["NET_ADMIN", "NET_RAW"]);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(agent[probe]["httpGet"]["path"], path);
        assert_eq!(
            agent[probe]["httpGet"]["port"].as_u64(),
            Some(u64::from(flags.healthz_port)),
            "{probe}"
        );
    }

    // The init container installs the plugin as flannel and the conflist as kube-flannel does.
    let init = &seq(&pod["initContainers"])[0];
    assert_eq!(seq(&pod["initContainers"]).len(), 1);
    assert_eq!(init["name"], "install-cni");
    let cmd = strs(&init["command"]);
    assert_eq!(&cmd[..2], ["/usr/local/bin/podnetctl", "install-cni"]);
    podnet::ctl::Cli::try_parse_from(std::iter::once("podnetctl").chain(cmd[1..].iter().copied()))
        .unwrap();
    let arg = |k: &str| {
        cmd.iter()
            .find_map(|a| a.strip_prefix(&format!("--{k}=")))
            .unwrap_or_else(|| panic!("no --{k}"))
    };
    assert_eq!(arg("name"), "flannel");
    assert_eq!(arg("conf-name"), "10-flannel.conflist");
    assert_eq!(
        source(pod, init, Path::new(arg("conf"))),
        Source::ConfigMap("kube-flannel-cfg".into(), "cni-conf.json".into())
    );
    assert_eq!(
        source(pod, init, Path::new(arg("bin-dir"))),
        Source::Host("/opt/cni/bin".into())
    );
    assert_eq!(
        source(pod, init, Path::new(arg("conf-dir"))),
        Source::Host("/etc/cni/net.d".into())
    );
    for (cm, key) in [
        ("kube-flannel-cfg", "net-conf.json"),
        ("kube-flannel-cfg", "cni-conf.json"),
    ] {
        assert!(kind(&docs, "ConfigMap", cm)["data"][key].is_string());
    }
}

#[test]
fn by_node_daemonset_is_kube_podnets_pod_on_labelled_nodes() {
    let main = manifests("packaging/kubernetes/kube-podnet.yml");
    let flannel_ds = kind(&main, "DaemonSet", "kube-flannel-ds");
    let docs = manifests("packaging/kubernetes/kube-podnet-by-node.yml");
    assert_eq!(docs.len(), 1);
    let ds = kind(&docs, "DaemonSet", "kube-podnet-ds");
    assert_eq!(ds["metadata"]["namespace"], "kube-flannel");
    // Neither DaemonSet's selector takes the other's pods.
    let labels_of = |d: &serde_yaml::Value| d["spec"]["template"]["metadata"]["labels"].clone();
    assert!(selects(&ds["spec"]["selector"], &labels_of(ds)));
    assert!(!selects(&ds["spec"]["selector"], &labels_of(flannel_ds)));
    assert!(!selects(&flannel_ds["spec"]["selector"], &labels_of(ds)));
    // The same pod, on the labelled nodes only.
    let terms = |d: &serde_yaml::Value| {
        d["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            .clone()
    };
    let mut want = terms(flannel_ds);
    want[0]["matchExpressions"].as_sequence_mut().unwrap().push(
        serde_yaml::from_str("{key: podnet/agent, operator: In, values: [podnetd]}").unwrap(),
    );
    assert_eq!(terms(ds), want);
    let without_affinity = |d: &serde_yaml::Value| {
        let mut pod = d["spec"]["template"]["spec"].clone();
        pod.as_mapping_mut().unwrap().remove("affinity");
        pod
    };
    assert_eq!(without_affinity(ds), without_affinity(flannel_ds));
}

#[test]
fn install_cni_puts_both_files_in_place_atomically() {
    let dir = std::env::temp_dir().join(format!("podnet-install-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("cni-conf.json");
    std::fs::write(
        &conf,
        json!({"name": "cbr0", "cniVersion": "0.3.1", "plugins": [{"type": "flannel"}]})
            .to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(PODNETCTL)
        .args(["install-cni", "--plugin", PODNET_CNI])
        .arg(format!("--bin-dir={}", dir.join("bin").display()))
        .arg(format!("--conf={}", conf.display()))
        .arg(format!("--conf-dir={}", dir.join("net.d").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plugin = dir.join("bin/flannel");
    assert_eq!(
        std::fs::metadata(&plugin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::read(&plugin).unwrap(),
        std::fs::read(PODNET_CNI).unwrap()
    );
    assert_eq!(
        std::fs::read(dir.join("net.d/10-flannel.conflist")).unwrap(),
        std::fs::read(&conf).unwrap()
    );
    // The installed plugin answers VERSION under its new name.
    let v = std::process::Command::new(&plugin)
        .env("CNI_COMMAND", "VERSION")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains("supportedVersions"));
    // A broken conflist is refused before anything is replaced.
    std::fs::write(&conf, "{\"name\":\"x\"}").unwrap();
    let out = std::process::Command::new(PODNETCTL)
        .args(["install-cni", "--plugin", PODNET_CNI])
        .arg(format!("--bin-dir={}", dir.join("bin2").display()))
        .arg(format!("--conf={}", conf.display()))
        .arg(format!("--conf-dir={}", dir.join("net.d").display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!dir.join("bin2").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn systemd_unit_and_environment_file() {
    let unit = std::fs::read_to_string(repo("packaging/systemd/podnetd.service")).unwrap();
    let mut section = String::new();
    let mut seen = HashSet::new();
    for line in unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if line.starts_with('[') {
            section = line.to_string();
            seen.insert(section.clone());
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not KEY=VALUE: {line}"));
        match (section.as_str(), k) {
            ("[Service]", "Type") => assert_eq!(v, "notify"),
            ("[Service]", "ExecStart") => assert_eq!(v, "/usr/local/bin/podnetd"),
            ("[Service]", "KillMode") => assert_eq!(v, "process"),
            _ => {}
        }
    }
    assert_eq!(
        seen,
        HashSet::from([
            "[Unit]".to_string(),
            "[Service]".to_string(),
            "[Install]".to_string()
        ])
    );
    // Every variable in the example environment file sets a real flag and parses.
    let env_text = std::fs::read_to_string(repo("packaging/systemd/podnetd.env")).unwrap();
    let vars: Vec<(String, String)> = env_text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let lookup = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let flags = Flags::try_parse_from(normalize_args(vec!["podnetd".into()], &lookup)).unwrap();
    assert_eq!(flags.healthz_port, 8081);
    assert_eq!(flags.etcd_endpoints.len(), 3);
    for (k, _) in &vars {
        let long = k
            .trim_start_matches("PODNETD_")
            .to_lowercase()
            .replace('_', "-");
        assert!(
            <Flags as clap::CommandFactory>::command()
                .get_arguments()
                .any(|a| a.get_long() == Some(&long)),
            "{k}"
        );
    }
}

/// The ELF program header types of a binary (`PT_INTERP` = 3 names a dynamic loader).
fn program_header_types(path: &str) -> Vec<u32> {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{path} is not an ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count)
        .map(|i| {
            let o = phoff + i * size;
            u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
        })
        .collect()
}

/// The plugin starts for every pod event: where the toolchain has glibc's static archives
/// (build.rs says so), it is a static executable at a fixed address that needs no dynamic
/// loader and relocates nothing at start (a static PIE with `PODNET_CNI_PIE=1`), and it still
/// works. podnetd stays dynamic (it resolves names).
#[test]
fn the_cni_plugin_needs_no_dynamic_loader_where_it_could_be_linked_statically() {
    const PT_INTERP: u32 = 3;
    const PT_DYNAMIC: u32 = 2;
    const ET_EXEC: u16 = 2;
    const ET_DYN: u16 = 3;
    let plugin = program_header_types(PODNET_CNI);
    let bytes = std::fs::read(PODNET_CNI).unwrap();
    let e_type = u16::from_le_bytes([bytes[16], bytes[17]]);
    match env!("PODNET_CNI_LINK") {
        "static" => {
            assert!(
                !plugin.contains(&PT_INTERP),
                "{PODNET_CNI} asks for a loader"
            );
            assert!(
                !plugin.contains(&PT_DYNAMIC),
                "{PODNET_CNI} relocates itself"
            );
            assert_eq!(e_type, ET_EXEC, "{PODNET_CNI} is position-independent");
        }
        "static-pie" => {
            assert!(
                !plugin.contains(&PT_INTERP),
                "{PODNET_CNI} asks for a loader"
            );
            assert_eq!(e_type, ET_DYN, "{PODNET_CNI} is not position-independent");
        }
        link => {
            assert_eq!(link, "dynamic");
            assert!(plugin.contains(&PT_INTERP), "build.rs said dynamic");
        }
    }
    assert!(program_header_types(env!("CARGO_BIN_EXE_podnetd")).contains(&PT_INTERP));
    let out = std::process::Command::new(PODNET_CNI)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["supportedVersions"][4], "1.1.0", "{v}");
}
