//! podnetd's flags: flanneld's names and defaults, so an existing unit file or DaemonSet works.
//!
//! Go's flag package also accepts `-flag` with one dash and `--flag=value` for booleans; both are
//! normalised before parsing. A flag not given on the command line is taken from
//! `PODNETD_<FLAG>`, else from flannel's `FLANNELD_<FLAG>` (upper case, `-` as `_`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, CommandFactory, Parser};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "podnetd",
    version,
    about = "podnet node agent: leases this node's pod subnet and makes every other node's reachable"
)]
pub struct Flags {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:4001,http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix of the network.
    #[arg(long, default_value = crate::lease::etcd::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// Client key for etcd mutual TLS.
    #[arg(long)]
    pub etcd_keyfile: Option<PathBuf>,
    /// Client certificate for etcd mutual TLS.
    #[arg(long)]
    pub etcd_certfile: Option<PathBuf>,
    /// CA that signed etcd's server certificate.
    #[arg(long)]
    pub etcd_cafile: Option<PathBuf>,
    #[arg(long)]
    pub etcd_username: Option<String>,
    #[arg(long)]
    pub etcd_password: Option<String>,

    /// Interface (name or IP) for traffic between nodes; repeatable, first match wins.
    #[arg(long)]
    pub iface: Vec<String>,
    /// Regex matched against interface addresses, then names; repeatable.
    #[arg(long)]
    pub iface_regex: Vec<String>,
    /// Use the interface the kernel would use to reach this address.
    #[arg(long)]
    pub iface_can_reach: Option<IpAddr>,
    /// Address other nodes use to reach this one (default: the interface's).
    #[arg(long)]
    pub public_ip: Option<Ipv4Addr>,
    #[arg(long)]
    pub public_ipv6: Option<Ipv6Addr>,

    /// Where to write subnet.env for the CNI plugin.
    #[arg(long, default_value = crate::subnet_env::DEFAULT_PATH)]
    pub subnet_file: PathBuf,
    /// Renew the lease this long before it expires: minutes (flannel's unit), or with a unit (90s, 2h).
    #[arg(long, default_value = "60", value_parser = parse_minutes)]
    pub subnet_lease_renew_margin: Duration,
    /// Lease lifetime in etcd (flannel: 24h).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub subnet_lease_ttl: Duration,

    /// Masquerade traffic leaving the cluster network.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub ip_masq: bool,
    /// Do not use fully-random port allocation for masquerade.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub ip_masq_fully_random_disable: bool,
    /// Accept forwarded traffic to and from the cluster network (for hosts whose FORWARD policy is drop).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true")]
    pub iptables_forward_rules: bool,
    /// Accept tunnel packets (VXLAN, udp) only from current peers' public addresses.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true")]
    pub tunnel_guard: bool,
    /// Seconds between checks that podnet's firewall rules are intact (flannel's flag; a rule
    /// changed by hand is restored as soon as nftables reports it, and each check costs one
    /// netlink request unless the ruleset changed).
    #[arg(long, default_value_t = 5)]
    pub iptables_resync: u64,
    /// Between safety-net checks of routes, neighbours, FDB entries and devices (drift is
    /// repaired as the kernel reports it; a check that finds nothing wrong writes nothing).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub resync_period: Duration,
    /// Repair drift as the kernel reports it (routes, neighbours, FDB entries, devices, the
    /// nftables table); with false only the periodic checks repair.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true")]
    pub kernel_events: bool,

    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0")]
    pub healthz_ip: IpAddr,
    /// Port for /healthz, /readyz and /metrics (0: off).
    #[arg(long, default_value_t = 0)]
    pub healthz_port: u16,

    /// Local socket serving /status (for `podnetctl status`), /readyz and /metrics.
    #[arg(long, default_value = crate::status::DEFAULT_SOCKET)]
    pub status_socket: PathBuf,

    /// Use the Kubernetes API instead of etcd: subnets from the Nodes' podCIDRs, this node's
    /// lease published as Node annotations (flanneld's --kube-subnet-mgr).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub kube_subnet_mgr: bool,
    /// Kubernetes API server (overrides the kubeconfig's; alone: that server, no credentials).
    #[arg(long)]
    pub kube_api_url: Option<String>,
    /// kubeconfig file (default: in-cluster configuration).
    #[arg(long)]
    pub kubeconfig_file: Option<PathBuf>,
    /// Prefix of the Node annotations that carry the lease.
    #[arg(long, default_value = crate::lease::kube::DEFAULT_PREFIX)]
    pub kube_annotation_prefix: String,
    /// Set the Node's NetworkUnavailable condition to False once the data path is up.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true")]
    pub set_node_network_unavailable: bool,
    /// Where the in-cluster service account's token and CA are mounted.
    #[arg(long, default_value = crate::kubeapi::SERVICEACCOUNT_DIR, hide = true)]
    pub kube_serviceaccount_dir: PathBuf,
    /// Network config file (Kubernetes mode).
    #[arg(long, default_value = "/etc/kube-flannel/net-conf.json")]
    pub net_config_path: PathBuf,

    /// Enforce the NetworkPolicies (and know the Namespaces and Pods) in these manifests
    /// (YAML or JSON, as `kubectl get -o yaml` prints them), re-read when they change.
    #[arg(long)]
    pub policy_dir: Option<PathBuf>,
    /// Enforce the NetworkPolicies in the Kubernetes API (needs list/watch on pods,
    /// namespaces and networking.k8s.io networkpolicies).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false")]
    pub network_policy: bool,
    /// The CNI plugin's pod records (its `podRecordsDir`), which tell network policy this
    /// node's pods the moment they are wired.
    #[arg(long, default_value = crate::cni::records::DEFAULT_DIR)]
    pub pod_records_dir: PathBuf,
    /// Deprecated and ignored (where older releases read the pod records: `pods` under it);
    /// accepted so that a command line that has it still starts.
    #[arg(long, hide = true)]
    pub cni_data_dir: Option<PathBuf>,
    /// The bridge this node's pods are attached to.
    #[arg(long, default_value = crate::cni::conf::DEFAULT_BRIDGE)]
    pub policy_bridge: String,
    /// Log packets network policy drops to this NFLOG group.
    #[arg(long)]
    pub policy_log_group: Option<u16>,

    /// The wireguard backend's private key file (flannel's WIREGUARD_KEY_FILE; created mode 0400
    /// with a new key when missing, kept across restarts).
    #[arg(long, env = "WIREGUARD_KEY_FILE", default_value = crate::backend::wireguard::key::DEFAULT_PATH)]
    pub wireguard_key_file: PathBuf,
    /// The wireguard backend's engine: auto (the kernel's where it has WireGuard), kernel or
    /// userspace; overrides the network config's Backend.Engine.
    #[arg(long, value_parser = parse_engine)]
    pub wireguard_engine: Option<crate::config::WgEngine>,

    /// Log verbosity: 0 info, 1 debug, 2 trace (`-v=2` as with flanneld).
    #[arg(short = 'v', long = "v", default_value_t = 0, num_args = 0..=1, default_missing_value = "1")]
    pub verbosity: u8,
}

fn parse_engine(s: &str) -> Result<crate::config::WgEngine, String> {
    crate::config::WgEngine::parse("--wireguard-engine", s).map_err(|e| e.to_string())
}

/// `60` means minutes; `90s`, `5m`, `2h` carry their unit.
pub fn parse_minutes(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<u64>() {
        Ok(m) => Ok(Duration::from_secs(m * 60)),
        Err(_) => parse_duration(s),
    }
}

/// `500ms`, `30s`, `5m`, `24h`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 30s, 5m or 24h"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    }
}

/// Rewrites Go-style `-flag` into `--flag`, and adds flags from the environment that the command
/// line does not set.
pub fn normalize_args(args: Vec<String>, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    for (i, a) in args.into_iter().enumerate() {
        let long = i > 0
            && a.starts_with('-')
            && !a.starts_with("--")
            && a.len() > 2
            && a.as_bytes()[1].is_ascii_alphabetic()
            && (a.as_bytes()[2].is_ascii_alphanumeric() || a.as_bytes()[2] == b'-')
            && !a.starts_with("-v=");
        out.push(if long { format!("-{a}") } else { a });
    }
    let cmd = Flags::command();
    let given: Vec<String> = out
        .iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "v" || long == "help" || long == "version" || given.iter().any(|g| g == long) {
            continue;
        }
        let suffix = long.to_ascii_uppercase().replace('-', "_");
        let value =
            env(&format!("PODNETD_{suffix}")).or_else(|| env(&format!("FLANNELD_{suffix}")));
        if let Some(v) = value {
            // Repeatable flags (--iface) take a comma-separated list from the environment.
            if matches!(arg.get_action(), ArgAction::Append) {
                for part in v.split(',').filter(|p| !p.is_empty()) {
                    out.push(format!("--{long}={part}"));
                }
            } else {
                out.push(format!("--{long}={v}"));
            }
        }
    }
    out
}

impl Flags {
    /// Parses the process's arguments and environment; exits with usage on error.
    pub fn from_env() -> Flags {
        let args = normalize_args(std::env::args().collect(), &|k| std::env::var(k).ok());
        Flags::parse_from(args)
    }

    /// Checks combinations clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.subnet_lease_renew_margin.is_zero() {
            return Err("--subnet-lease-renew-margin: must be more than 0".into());
        }
        if self.subnet_lease_renew_margin >= self.subnet_lease_ttl {
            return Err(format!(
                "--subnet-lease-renew-margin {:?}: must be shorter than the lease lifetime {:?}",
                self.subnet_lease_renew_margin, self.subnet_lease_ttl
            ));
        }
        if self.iptables_resync == 0 {
            return Err("--iptables-resync: must be at least 1 second".into());
        }
        if self.resync_period.is_zero() {
            return Err("--resync-period: must be more than 0".into());
        }
        for r in &self.iface_regex {
            regex::Regex::new(r).map_err(|e| format!("--iface-regex {r:?}: {e}"))?;
        }
        if self.kube_subnet_mgr {
            crate::lease::kube::Annotations::new(&self.kube_annotation_prefix)?;
            Ok(())
        } else {
            super::etcd_options(self).validate()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Flags {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut argv = vec!["podnetd".to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        Flags::try_parse_from(normalize_args(argv, &|k| env.get(k).cloned())).unwrap()
    }

    #[test]
    fn flannel_defaults() {
        let f = parse(&[], &[]);
        assert_eq!(
            f.etcd_endpoints,
            ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
        assert_eq!(f.etcd_prefix, "/coreos.com/network");
        assert_eq!(f.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(f.subnet_lease_renew_margin, Duration::from_secs(3600));
        assert_eq!(f.subnet_lease_ttl, Duration::from_secs(86400));
        assert!(!f.ip_masq && f.iptables_forward_rules);
        assert_eq!(f.iptables_resync, 5);
        assert_eq!(f.resync_period, Duration::from_secs(300));
        assert!(f.kernel_events);
        assert_eq!(f.healthz_port, 0);
        assert_eq!(f.pod_records_dir, PathBuf::from("/run/podnet/pods"));
        assert_eq!(f.cni_data_dir, None);
    }

    #[test]
    fn the_old_records_flag_still_parses_and_is_not_in_the_help() {
        let f = parse(&["--cni-data-dir=/var/lib/cni/flannel"], &[]);
        assert_eq!(f.cni_data_dir, Some(PathBuf::from("/var/lib/cni/flannel")));
        assert_eq!(f.pod_records_dir, PathBuf::from("/run/podnet/pods"));
        let f = parse(&[], &[("PODNETD_CNI_DATA_DIR", "/x")]);
        assert_eq!(f.cni_data_dir, Some(PathBuf::from("/x")));
        let help = <Flags as clap::CommandFactory>::command()
            .render_help()
            .to_string();
        assert!(help.contains("--pod-records-dir") && !help.contains("--cni-data-dir"));
    }

    #[test]
    fn go_style_flags() {
        let f = parse(
            &[
                "-etcd-endpoints=http://a:2379,http://b:2379",
                "-ip-masq",
                "--iptables-forward-rules=false",
                "-iface",
                "eth0",
                "-v=2",
            ],
            &[],
        );
        assert_eq!(f.etcd_endpoints, ["http://a:2379", "http://b:2379"]);
        assert!(f.ip_masq);
        assert!(!f.iptables_forward_rules);
        assert_eq!(f.iface, ["eth0"]);
        assert_eq!(f.verbosity, 2);
    }

    #[test]
    fn environment_fills_what_the_command_line_does_not() {
        let f = parse(
            &["--etcd-prefix=/cli"],
            &[
                ("FLANNELD_ETCD_PREFIX", "/flannel-env"),
                ("FLANNELD_IP_MASQ", "true"),
                ("PODNETD_SUBNET_FILE", "/tmp/podnet.env"),
                ("FLANNELD_SUBNET_FILE", "/tmp/flannel.env"),
                ("FLANNELD_IFACE", "eth1,198.18.0.11"),
                ("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "5"),
            ],
        );
        assert_eq!(f.etcd_prefix, "/cli", "the command line wins");
        assert!(f.ip_masq);
        assert_eq!(
            f.subnet_file,
            PathBuf::from("/tmp/podnet.env"),
            "PODNETD_ wins over FLANNELD_"
        );
        assert_eq!(f.iface, ["eth1", "198.18.0.11"]);
        assert_eq!(f.subnet_lease_renew_margin, Duration::from_secs(300));
    }

    #[test]
    fn durations_and_validation() {
        assert_eq!(parse_minutes("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5 parsecs").is_err());
        let f = parse(
            &["--subnet-lease-ttl=60s", "--subnet-lease-renew-margin=2"],
            &[],
        );
        assert!(
            f.validate()
                .unwrap_err()
                .contains("must be shorter than the lease lifetime")
        );
        let f = parse(
            &["--kube-subnet-mgr", "--kube-annotation-prefix=a/b/c"],
            &[],
        );
        assert!(
            f.validate()
                .unwrap_err()
                .contains("--kube-annotation-prefix")
        );
        // In Kubernetes mode the etcd flags are not used, so not checked.
        let f = parse(&["--kube-subnet-mgr", "--etcd-cafile=/x"], &[]);
        assert!(f.validate().is_ok());
        let f = parse(&["--iface-regex=eth[0-"], &[]);
        assert!(
            f.validate()
                .unwrap_err()
                .starts_with("--iface-regex \"eth[0-\"")
        );
    }

    #[test]
    fn bad_etcd_flag_combinations_fail_at_once_naming_the_flag() {
        let err = |args: &[&str]| parse(args, &[]).validate().unwrap_err();
        assert!(err(&["--etcd-cafile=/ca.pem"]).starts_with(
            "--etcd-cafile/--etcd-certfile/--etcd-keyfile are set but --etcd-endpoints"
        ));
        assert_eq!(
            err(&["--etcd-endpoints=https://a:2379", "--etcd-certfile=/c.pem"]),
            "--etcd-certfile and --etcd-keyfile must be given together"
        );
        assert_eq!(
            err(&["--etcd-username=u"]),
            "--etcd-username and --etcd-password must be given together"
        );
        assert!(err(&["--etcd-endpoints=a:2379"]).starts_with("--etcd-endpoints \"a:2379\""));
        assert!(
            parse(
                &["--etcd-endpoints=https://a:2379", "--etcd-cafile=/ca.pem"],
                &[]
            )
            .validate()
            .is_ok()
        );
    }
}
