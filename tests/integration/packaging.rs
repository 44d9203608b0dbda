//! The packaging files parse and agree with the binaries they configure.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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
    NetConf::parse(first.to_string().as_bytes()).unwrap();

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
