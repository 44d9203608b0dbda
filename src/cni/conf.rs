//! What the runtime hands the plugin: the `CNI_*` environment and the network config on stdin.
//!
//! The config is flannel's plugin config, so an unchanged kube-flannel conflist works with the
//! plugin installed as `flannel`: `subnetFile`, `dataDir`, `delegate` (bridge options) and
//! `ipam` (overrides). Bridge options are also accepted at the top level, where a conflist
//! written for podnet would put them; `delegate` wins. `runtimeConfig` keys are matched
//! case-insensitively because containerd sends `PortMappings`/`Dns` and podman `portMappings`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::util::json::get_ci;

use super::ipam::Range;
use super::spec::{self, CniError, CniResult, code};

/// The verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

/// `CNI_*` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub command: Command,
    pub container_id: String,
    /// Empty on the second DEL containerd sends.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: Vec<(String, String)>,
}

/// The spec's container ID rule, `[a-zA-Z0-9][a-zA-Z0-9_.\-]*`: IDs name files and links, so
/// nothing else (no `/`, no `..`) may reach them.
fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The kernel's rule for interface names (`dev_valid_name`), which libcni's
/// `ValidateInterfaceName` follows: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name.contains(['/', ':'])
        && !name.contains(char::is_whitespace)
}

/// CNI_ARGS keys podnet understands; anything else needs `IgnoreUnknown=1`.
const KNOWN_ARGS: [&str; 6] = [
    "IgnoreUnknown",
    "IP",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

impl Args {
    /// Reads the environment through `get` (so tests need not touch the process environment).
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Args, CniError> {
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("unknown CNI_COMMAND {other:?}"),
                ));
            }
            None => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    "required env variable CNI_COMMAND missing",
                ));
            }
        };
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let mut missing = Vec::new();
        if needs_attachment {
            if nonempty("CNI_CONTAINERID").is_none() {
                missing.push("CNI_CONTAINERID");
            }
            // DEL may come without a namespace (containerd's second DEL, a vanished pod).
            if command != Command::Del && nonempty("CNI_NETNS").is_none() {
                missing.push("CNI_NETNS");
            }
            if nonempty("CNI_IFNAME").is_none() {
                missing.push("CNI_IFNAME");
            }
        }
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("required env variables [{}] missing", missing.join(",")),
            ));
        }
        let container_id = nonempty("CNI_CONTAINERID").unwrap_or_default();
        if needs_attachment && !valid_container_id(&container_id) {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_CONTAINERID {container_id:?}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]* (the spec's rule)"
                ),
            ));
        }
        let ifname = nonempty("CNI_IFNAME").unwrap_or_default();
        if needs_attachment && !valid_ifname(&ifname) {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_IFNAME {ifname:?}: not a valid interface name (1-15 bytes, not \".\" or \"..\", no '/', ':' or whitespace)"
                ),
            ));
        }
        let mut args = Vec::new();
        if let Some(raw) = nonempty("CNI_ARGS") {
            for pair in raw.split(';').filter(|p| !p.is_empty()) {
                let Some((k, v)) = pair.split_once('=') else {
                    return Err(CniError::new(
                        code::INVALID_ENV,
                        format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
                    ));
                };
                args.push((k.to_string(), v.to_string()));
            }
        }
        let ignore_unknown = args
            .iter()
            .any(|(k, v)| k == "IgnoreUnknown" && (v == "1" || v.eq_ignore_ascii_case("true")));
        if !ignore_unknown
            && let Some((k, _)) = args.iter().find(|(k, _)| !KNOWN_ARGS.contains(&k.as_str()))
        {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_ARGS: unknown argument {k:?} (set IgnoreUnknown=1 to ignore it)"),
            ));
        }
        Ok(Args {
            command,
            container_id,
            netns: nonempty("CNI_NETNS").map(PathBuf::from),
            ifname,
            args,
        })
    }

    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One IPAM range override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeOverride {
    pub subnet: IpNet,
    pub start: Option<IpAddr>,
    pub end: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
}

/// podnet's plugin config.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub subnet_file: PathBuf,
    /// flannel's delegate-config directory; podnet needs no state there but removes flannel's
    /// leftovers on DEL so a migrated node does not accumulate them.
    pub data_dir: PathBuf,
    /// Where ADD records which pod an attachment is for (`records`); podnet's own key.
    pub pod_records_dir: PathBuf,
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub hairpin: bool,
    /// `None`: the opposite of `FLANNEL_IPMASQ` (flannel's rule).
    pub ip_masq: Option<bool>,
    pub mtu: Option<u32>,
    pub ipam_ranges: Vec<RangeOverride>,
    pub ipam_routes: Vec<spec::RouteEntry>,
    pub ipam_data_dir: PathBuf,
    /// DNS for the result: `runtimeConfig.dns`, else the config's `dns`.
    pub dns: Value,
    /// `runtimeConfig.ips` (static addresses).
    pub requested_ips: Vec<IpAddr>,
    pub prev_result: Option<CniResult>,
    /// GC: attachments to keep, as (container ID, interface).
    pub valid_attachments: Option<Vec<(String, String)>>,
}

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";
pub const DEFAULT_IPAM_DIR: &str = "/var/lib/cni/networks";
pub const DEFAULT_BRIDGE: &str = "cni0";

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

fn get_bool(m: &Map<String, Value>, key: &str, field: &str) -> Result<Option<bool>, CniError> {
    match get_ci(m, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(invalid(format!("{field}: expected true or false, got {v}"))),
    }
}

fn get_str<'a>(
    m: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a str>, CniError> {
    match get_ci(m, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(invalid(format!("{field}: expected a string, got {v}"))),
    }
}

fn parse_ip(field: &str, v: &Value) -> Result<IpAddr, CniError> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("{field}: {v} is not an IP address")))
}

/// `field` as an object (absent: empty).
fn object<'a>(
    m: &'a Map<String, Value>,
    key: &str,
    field: &str,
    empty: &'a Map<String, Value>,
) -> Result<&'a Map<String, Value>, CniError> {
    match get_ci(m, key) {
        None => Ok(empty),
        Some(Value::Object(o)) => Ok(o),
        Some(v) => Err(invalid(format!("{field}: expected an object, got {v}"))),
    }
}

fn parse_name(m: &Map<String, Value>) -> Result<String, CniError> {
    let name = get_str(m, "name", "name")?.unwrap_or("").to_string();
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !valid {
        return Err(invalid(format!(
            "name {name:?}: a network needs a name of letters, digits, '_', '.', '-'"
        )));
    }
    Ok(name)
}

/// The bridge's settings: a `delegate` value (flannel's way) wins over a top-level one.
struct BridgeOpts {
    bridge: String,
    mtu: Option<u32>,
    is_gateway: bool,
    is_default_gateway: bool,
    hairpin: bool,
    ip_masq: Option<bool>,
}

impl BridgeOpts {
    fn parse(
        m: &Map<String, Value>,
        delegate: &Map<String, Value>,
    ) -> Result<BridgeOpts, CniError> {
        let pick_bool = |key: &str| -> Result<Option<bool>, CniError> {
            Ok(get_bool(delegate, key, &format!("delegate.{key}"))?.or(get_bool(m, key, key)?))
        };
        if let Some(t) = get_str(delegate, "type", "delegate.type")?
            && t != "bridge"
        {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!(
                    "delegate.type {t:?}: podnet wires pods into a bridge itself; only \"bridge\" is supported"
                ),
            ));
        }
        let bridge = get_str(delegate, "bridge", "delegate.bridge")?
            .or(get_str(m, "bridge", "bridge")?)
            .unwrap_or(DEFAULT_BRIDGE)
            .to_string();
        if !valid_ifname(&bridge) {
            return Err(invalid(format!(
                "bridge {bridge:?}: not a valid interface name"
            )));
        }
        let mtu = match get_ci(delegate, "mtu").or_else(|| get_ci(m, "mtu")) {
            None => None,
            Some(v) => match v.as_u64() {
                Some(n) if (68..=65535).contains(&n) => Some(n as u32),
                _ => {
                    return Err(invalid(format!(
                        "mtu: {v} is not an MTU between 68 and 65535"
                    )));
                }
            },
        };
        let is_default_gateway = pick_bool("isDefaultGateway")?.unwrap_or(false);
        Ok(BridgeOpts {
            bridge,
            mtu,
            is_gateway: pick_bool("isGateway")?.unwrap_or(true) || is_default_gateway,
            is_default_gateway,
            hairpin: pick_bool("hairpinMode")?.unwrap_or(false),
            ip_masq: pick_bool("ipMasq")?,
        })
    }
}

fn parse_ranges(ipam: &Map<String, Value>) -> Result<Vec<RangeOverride>, CniError> {
    let Some(rs) = get_ci(ipam, "ranges") else {
        return Ok(Vec::new());
    };
    let sets = rs
        .as_array()
        .ok_or_else(|| invalid("ipam.ranges: expected a list of range sets"))?;
    let mut out = Vec::new();
    for set in sets {
        let set = set
            .as_array()
            .ok_or_else(|| invalid("ipam.ranges: each range set must be a list"))?;
        for r in set {
            let o = r
                .as_object()
                .ok_or_else(|| invalid("ipam.ranges: each range must be an object"))?;
            let subnet = get_str(o, "subnet", "ipam.ranges[].subnet")?
                .and_then(|s| s.parse::<IpNet>().ok())
                .ok_or_else(|| invalid("ipam.ranges[].subnet: missing or not a CIDR"))?;
            let f = |k: &str| {
                get_ci(o, k)
                    .map(|v| parse_ip(&format!("ipam.ranges[].{k}"), v))
                    .transpose()
            };
            let r = RangeOverride {
                subnet: subnet.trunc(),
                start: f("rangeStart")?,
                end: f("rangeEnd")?,
                gateway: f("gateway")?,
            };
            check_range(&r)?;
            out.push(r);
        }
    }
    Ok(out)
}

/// A range override holds a gateway and a pod, and its addresses are host addresses of its
/// subnet in the subnet's family; each error names the field.
fn check_range(r: &RangeOverride) -> Result<(), CniError> {
    let range = Range::for_subnet(r.subnet, None)
        .map_err(|e| invalid(format!("ipam.ranges[].subnet: {e}")))?;
    let fields = [
        ("gateway", r.gateway),
        ("rangeStart", r.start),
        ("rangeEnd", r.end),
    ];
    for (k, ip) in fields {
        if let Some(ip) = ip {
            range
                .check_host(ip)
                .map_err(|e| invalid(format!("ipam.ranges[].{k}: {e}")))?;
        }
    }
    range
        .with_bounds(r.start, r.end)
        .map_err(|e| invalid(format!("ipam.ranges[].rangeStart/rangeEnd: {e}")))?;
    Ok(())
}

fn parse_routes(ipam: &Map<String, Value>) -> Result<Vec<spec::RouteEntry>, CniError> {
    let Some(rs) = get_ci(ipam, "routes") else {
        return Ok(Vec::new());
    };
    let list = rs
        .as_array()
        .ok_or_else(|| invalid("ipam.routes: expected a list"))?;
    let mut out = Vec::new();
    for r in list {
        let o = r
            .as_object()
            .ok_or_else(|| invalid("ipam.routes: each route must be an object"))?;
        let dst = get_str(o, "dst", "ipam.routes[].dst")?
            .and_then(|s| s.parse::<IpNet>().ok())
            .ok_or_else(|| invalid(format!("ipam.routes[].dst: missing or not a CIDR in {r}")))?;
        let gw = get_ci(o, "gw")
            .map(|v| parse_ip("ipam.routes[].gw", v))
            .transpose()?;
        out.push(spec::RouteEntry {
            dst: dst.trunc(),
            gw,
        });
    }
    Ok(out)
}

/// `runtimeConfig`: DNS for the result and requested static addresses.
fn parse_runtime(m: &Map<String, Value>) -> Result<(Value, Vec<IpAddr>), CniError> {
    let empty = Map::new();
    let runtime = object(m, "runtimeConfig", "runtimeConfig", &empty).unwrap_or(&empty);
    let dns = get_ci(runtime, "dns")
        .map(lower_dns)
        .or_else(|| get_ci(m, "dns").cloned())
        .unwrap_or(Value::Null);
    let mut ips = Vec::new();
    for ip in get_ci(runtime, "ips")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        // Runtimes send "10.244.3.7/24" or a bare address.
        let s = ip.as_str().unwrap_or_default();
        let addr = s.split('/').next().unwrap_or_default();
        let addr = addr
            .parse()
            .map_err(|_| invalid(format!("runtimeConfig.ips: {ip} is not an IP")))?;
        ips.push(addr);
    }
    Ok((dns, ips))
}

type Attachments = Option<Vec<(String, String)>>;

const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";

/// GC's `cni.dev/valid-attachments`: a list of `{"containerID", "ifname"}`, both strings.
fn parse_valid_attachments(m: &Map<String, Value>) -> Result<Attachments, CniError> {
    let list = match m.get(VALID_ATTACHMENTS) {
        None => return Ok(None),
        Some(Value::Array(list)) => list,
        Some(v) => {
            return Err(invalid(format!(
                "{VALID_ATTACHMENTS}: expected a list, got {v}"
            )));
        }
    };
    let mut out = Vec::new();
    for (i, a) in list.iter().enumerate() {
        let field = |k: &str| match a.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            v => Err(invalid(format!(
                "{VALID_ATTACHMENTS}[{i}].{k}: expected a string, got {}",
                v.map_or("nothing".to_string(), Value::to_string)
            ))),
        };
        out.push((field("containerID")?, field("ifname")?));
    }
    Ok(Some(out))
}

impl NetConf {
    /// Parses stdin. Only the protocol fields are needed for VERSION/STATUS/GC; the rest is
    /// validated for every command so a bad config fails loudly even on DEL.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let v: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE, "failed to decode the network config")
                .with_details(e.to_string())
        })?;
        let Value::Object(m) = v else {
            return Err(CniError::new(
                code::DECODE,
                "the network config must be a JSON object",
            ));
        };
        let cni_version = get_str(&m, "cniVersion", "cniVersion")?
            .unwrap_or("0.1.0")
            .to_string();
        spec::check_version(&cni_version)?;
        let name = parse_name(&m)?;
        let empty = Map::new();
        let delegate = object(&m, "delegate", "delegate", &empty)?;
        let b = BridgeOpts::parse(&m, delegate)?;
        let ipam = object(&m, "ipam", "ipam", &empty)?;
        if let Some(t) = get_str(ipam, "type", "ipam.type")?
            && t != "host-local"
        {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!(
                    "ipam.type {t:?}: podnet allocates addresses itself, host-local style; only \"host-local\" is supported"
                ),
            ));
        }
        let (dns, requested_ips) = parse_runtime(&m)?;
        let prev_result = match get_ci(&m, "prevResult") {
            Some(p) => Some(CniResult::parse(p)?),
            None => None,
        };
        let path = |map: &Map<String, Value>, key: &str, field: &str, default: &str| {
            Ok::<_, CniError>(PathBuf::from(get_str(map, key, field)?.unwrap_or(default)))
        };
        Ok(NetConf {
            cni_version,
            name,
            subnet_file: path(
                &m,
                "subnetFile",
                "subnetFile",
                crate::subnet_env::DEFAULT_PATH,
            )?,
            data_dir: path(&m, "dataDir", "dataDir", DEFAULT_DATA_DIR)?,
            pod_records_dir: path(
                &m,
                "podRecordsDir",
                "podRecordsDir",
                super::records::DEFAULT_DIR,
            )?,
            bridge: b.bridge,
            is_gateway: b.is_gateway,
            is_default_gateway: b.is_default_gateway,
            hairpin: b.hairpin,
            ip_masq: b.ip_masq,
            mtu: b.mtu,
            ipam_ranges: parse_ranges(ipam)?,
            ipam_routes: parse_routes(ipam)?,
            ipam_data_dir: path(ipam, "dataDir", "ipam.dataDir", DEFAULT_IPAM_DIR)?,
            dns,
            requested_ips,
            prev_result,
            valid_attachments: parse_valid_attachments(&m)?,
        })
    }
}

impl NetConf {
    /// GC's attachments to keep. Required: without the list GC cannot tell what is in use, and
    /// releasing everything is what an empty list asks for, not a missing one.
    pub fn gc_keep(&self) -> Result<&[(String, String)], CniError> {
        self.valid_attachments.as_deref().ok_or_else(|| {
            invalid(format!(
                "{VALID_ATTACHMENTS}: missing; GC needs the attachments to keep (an empty list releases everything)"
            ))
        })
    }
}

/// containerd sends `{"Servers":..,"Searches":..,"Options":..}`; results use lower case names.
fn lower_dns(v: &Value) -> Value {
    let Some(o) = v.as_object() else {
        return v.clone();
    };
    let map: HashMap<&str, &str> = [
        ("servers", "nameservers"),
        ("nameservers", "nameservers"),
        ("searches", "search"),
        ("search", "search"),
        ("options", "options"),
        ("domain", "domain"),
    ]
    .into_iter()
    .collect();
    let mut out = Map::new();
    for (k, val) in o {
        if let Some(name) = map.get(k.to_ascii_lowercase().as_str()) {
            out.insert(name.to_string(), val.clone());
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn env_parsing_and_errors() {
        let a = Args::from_env(&env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_UID=u;IgnoreUnknown=1;FOO=bar"),
        ]))
        .unwrap();
        assert_eq!(a.command, Command::Add);
        assert_eq!(a.arg("FOO"), Some("bar"));
        let e = Args::from_env(&env(&[("CNI_COMMAND", "ADD")])).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (
                4,
                "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing"
            )
        );
        // DEL without a namespace is fine (containerd's second DEL).
        let d = Args::from_env(&env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(d.netns, None);
        let e = Args::from_env(&env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "FOO=bar"),
        ]))
        .unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("unknown argument \"FOO\""));
        assert_eq!(
            Args::from_env(&env(&[("CNI_COMMAND", "FROB")]))
                .unwrap_err()
                .code,
            4
        );
        assert_eq!(
            Args::from_env(&env(&[])).unwrap_err().msg,
            "required env variable CNI_COMMAND missing"
        );
    }

    #[test]
    fn container_ids_follow_the_specs_rule() {
        let sha = "4f6e2c0a9d1b8e7f3a5c6d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";
        for ok in [
            "a",
            "0",
            "abc",
            "A_b.c-d",
            "k8s.io-ctr_1",
            "cnitool-0123456789abcdef0123",
            sha,
        ] {
            assert!(valid_container_id(ok), "{ok:?} should be valid");
        }
        let bad = [
            "",
            "-a",
            ".a",
            "_a",
            ".",
            "..",
            "../../etc/x",
            "a/b",
            "/etc/x",
            "a b",
            "a\n",
            "a:b",
            "a\\b",
            "ä",
            "a;b",
            "a*",
        ];
        for id in bad {
            assert!(!valid_container_id(id), "{id:?} should be invalid");
        }
    }

    #[test]
    fn a_bad_container_id_is_refused_for_every_attachment_verb() {
        for verb in ["ADD", "DEL", "CHECK"] {
            let e = Args::from_env(&env(&[
                ("CNI_COMMAND", verb),
                ("CNI_CONTAINERID", "../../etc/x"),
                ("CNI_NETNS", "/run/netns/x"),
                ("CNI_IFNAME", "eth0"),
            ]))
            .unwrap_err();
            assert_eq!(e.code, 4, "{verb}");
            assert!(
                e.msg
                    .starts_with(r#"CNI_CONTAINERID "../../etc/x": must match"#),
                "{verb}: {}",
                e.msg
            );
        }
        // Verbs without an attachment ignore it (podman's VERSION sends an empty one).
        let v = Args::from_env(&env(&[("CNI_COMMAND", "GC"), ("CNI_CONTAINERID", "../x")]));
        assert!(v.is_ok());
    }

    #[test]
    fn interface_names_follow_the_kernels_rule() {
        let max = "a".repeat(15);
        for ok in [
            "eth0",
            "eth1",
            "lo",
            "net1",
            "e",
            max.as_str(),
            "eth0.100",
            "eth-0_x",
        ] {
            assert!(valid_ifname(ok), "{ok:?} should be valid");
        }
        let long = "a".repeat(16);
        for bad in [
            "",
            ".",
            "..",
            "eth0:1",
            "a/b",
            "a b",
            "a\tb",
            "eth0\n",
            long.as_str(),
        ] {
            assert!(!valid_ifname(bad), "{bad:?} should be invalid");
        }
        for verb in ["ADD", "DEL", "CHECK"] {
            let e = Args::from_env(&env(&[
                ("CNI_COMMAND", verb),
                ("CNI_CONTAINERID", "c"),
                ("CNI_NETNS", "/run/netns/x"),
                ("CNI_IFNAME", "eth0:1"),
            ]))
            .unwrap_err();
            assert_eq!(e.code, 4, "{verb}");
            assert!(
                e.msg
                    .starts_with(r#"CNI_IFNAME "eth0:1": not a valid interface name"#),
                "{}",
                e.msg
            );
        }
    }

    #[test]
    fn interface_names_linux_refuses_are_invalid_env() {
        // Found by the fuzz property cni_args_from_env_never_panics: CNI_IFNAME ":" was
        // accepted, and the kernel refused it only once the pod was half wired.
        for bad in [
            ":",
            ".",
            "..",
            "eth:0",
            "eth/0",
            "eth 0",
            "0123456789abcdef",
        ] {
            let e = Args::from_env(&env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_NETNS", "/run/netns/x"),
                ("CNI_IFNAME", bad),
            ]))
            .unwrap_err();
            assert_eq!(e.code, code::INVALID_ENV, "{bad:?}");
        }
    }

    #[test]
    fn gc_needs_the_attachments_to_keep() {
        let parse = |extra: &str| {
            NetConf::parse(format!(r#"{{"cniVersion":"1.1.0","name":"n"{extra}}}"#).as_bytes())
        };
        let e = parse("").unwrap().gc_keep().unwrap_err();
        assert_eq!(e.code, 7);
        assert!(
            e.msg.starts_with("cni.dev/valid-attachments: missing"),
            "{}",
            e.msg
        );
        let empty = parse(r#","cni.dev/valid-attachments":[]"#).unwrap();
        assert_eq!(empty.gc_keep().unwrap(), &[]);
        let two = parse(
            r#","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"},{"containerID":"b","ifname":"eth1"}]"#,
        )
        .unwrap();
        assert_eq!(
            two.gc_keep().unwrap(),
            &[("a".into(), "eth0".into()), ("b".into(), "eth1".into())]
        );
        let e = parse(r#","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"},{"containerID":7,"ifname":"eth0"}]"#)
            .unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (
                7,
                "cni.dev/valid-attachments[1].containerID: expected a string, got 7"
            )
        );
        let e = parse(r#","cni.dev/valid-attachments":{}"#).unwrap_err();
        assert_eq!(e.code, 7);
    }

    #[test]
    fn ranges_too_small_or_with_foreign_addresses_name_the_field() {
        let err = |range: &str| {
            let conf =
                format!(r#"{{"cniVersion":"1.0.0","name":"n","ipam":{{"ranges":[[{range}]]}}}}"#);
            let e = NetConf::parse(conf.as_bytes()).unwrap_err();
            assert_eq!(e.code, 7, "{range}: {}", e.msg);
            e.msg
        };
        assert_eq!(
            err(r#"{"subnet":"10.244.3.0/31"}"#),
            "ipam.ranges[].subnet: 10.244.3.0/31 is too small for a gateway and a pod (an IPv4 subnet needs a /30 or larger)"
        );
        for tiny in ["10.244.3.7/32", "fd00::/127", "fd00::1/128"] {
            let msg = err(&format!(r#"{{"subnet":"{tiny}"}}"#));
            assert!(msg.starts_with("ipam.ranges[].subnet: "), "{msg}");
            assert!(msg.contains("too small for a gateway and a pod"), "{msg}");
        }
        assert_eq!(
            err(r#"{"subnet":"10.244.3.0/24","gateway":"fd00::1"}"#),
            "ipam.ranges[].gateway: fd00::1 is not an IPv4 address, as 10.244.3.0/24 is"
        );
        assert_eq!(
            err(r#"{"subnet":"fd00:3::/64","gateway":"10.244.3.1"}"#),
            "ipam.ranges[].gateway: 10.244.3.1 is not an IPv6 address, as fd00:3::/64 is"
        );
        assert!(
            err(r#"{"subnet":"10.244.3.0/24","gateway":"10.244.4.1"}"#).starts_with(
                "ipam.ranges[].gateway: 10.244.4.1 is not a host address of 10.244.3.0/24"
            )
        );
        assert!(
            err(r#"{"subnet":"10.244.3.0/24","rangeEnd":"fd00::9"}"#)
                .starts_with("ipam.ranges[].rangeEnd: fd00::9 is not an IPv4 address")
        );
        assert_eq!(
            err(r#"{"subnet":"10.244.3.0/24","rangeStart":"10.244.3.9","rangeEnd":"10.244.3.2"}"#),
            "ipam.ranges[].rangeStart/rangeEnd: the range 10.244.3.9-10.244.3.2 ends before it starts"
        );
        let ok = r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.244.3.0/30","gateway":"10.244.3.2"}]]}}"#;
        assert!(NetConf::parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn bridge_names_linux_refuses_are_invalid_config() {
        // Found by the fuzz property cni_netconf_parse_never_panics: "delegate":{"bridge":"br/0"}
        // (in an otherwise valid config) was accepted; only its length was checked.
        for bad in ["br/0", "..", "br 0", "br:0", "", "0123456789abcdef"] {
            let conf =
                format!(r#"{{"cniVersion":"1.0.0","name":"n","delegate":{{"bridge":"{bad}"}}}}"#);
            let e = NetConf::parse(conf.as_bytes()).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad:?}");
        }
    }

    #[test]
    fn the_kube_flannel_conflist_entry_parses() {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#,
        )
        .unwrap();
        assert_eq!(c.bridge, "cni0");
        assert!(c.hairpin && c.is_default_gateway && c.is_gateway);
        assert_eq!(c.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(c.ipam_data_dir, PathBuf::from("/var/lib/cni/networks"));
        assert_eq!(c.pod_records_dir, PathBuf::from("/run/podnet/pods"));
        assert_eq!(c.ip_masq, None);
    }

    #[test]
    fn overrides_and_runtime_config_in_both_spellings() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"podnet","bridge":"br-top","mtu":1400,"podRecordsDir":"/tmp/pods","delegate":{"bridge":"br-del","ipMasq":true},
                "ipam":{"dataDir":"/tmp/x","ranges":[[{"subnet":"10.244.3.0/24","rangeStart":"10.244.3.10","rangeEnd":"10.244.3.20"}]],"routes":[{"dst":"192.0.2.0/24"}]},
                "runtimeConfig":{"PortMappings":[{"HostPort":8080}],"Dns":{"Servers":["10.96.0.10"],"Searches":["svc"]}}}"#,
        )
        .unwrap();
        assert_eq!(c.bridge, "br-del");
        assert_eq!(c.pod_records_dir, PathBuf::from("/tmp/pods"));
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.ip_masq, Some(true));
        assert_eq!(c.ipam_ranges[0].start, Some("10.244.3.10".parse().unwrap()));
        assert_eq!(c.ipam_routes[0].dst.to_string(), "192.0.2.0/24");
        assert_eq!(
            c.dns,
            serde_json::json!({"nameservers":["10.96.0.10"],"search":["svc"]})
        );
        let p = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":1}],"dns":{"nameservers":["1.1.1.1"]}}}"#).unwrap();
        assert_eq!(p.dns, serde_json::json!({"nameservers":["1.1.1.1"]}));
    }

    #[test]
    fn bad_configs_name_the_field() {
        let err = |s: &str| NetConf::parse(s.as_bytes()).unwrap_err();
        assert_eq!(err("{").code, 6);
        assert_eq!(err(r#"{"cniVersion":"9.9.9","name":"n"}"#).code, 1);
        assert_eq!(err(r#"{"cniVersion":"1.0.0","name":""}"#).code, 7);
        let e = err(r#"{"cniVersion":"1.0.0","name":"n","mtu":9}"#);
        assert_eq!(
            (e.code, e.msg.as_str()),
            (7, "mtu: 9 is not an MTU between 68 and 65535")
        );
        let e = err(r#"{"cniVersion":"1.0.0","name":"n","delegate":{"type":"macvlan"}}"#);
        assert_eq!(e.code, 2);
        let e = err(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"routes":[{"gw":"10.0.0.1"}]}}"#);
        assert!(e.msg.starts_with("ipam.routes[].dst: missing"), "{}", e.msg);
        let e = err(r#"{"cniVersion":"1.0.0","name":"n","delegate":{"hairpinMode":"yes"}}"#);
        assert_eq!(
            e.msg,
            "delegate.hairpinMode: expected true or false, got \"yes\""
        );
    }
}
