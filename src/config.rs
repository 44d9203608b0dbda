//! The network config (etcd `<prefix>/config`, or `net-conf.json`): parsing, flannel's defaults,
//! validation, and the subnet arithmetic built on it.
//!
//! Field names match case-insensitively and unknown fields are ignored, as with flannel's Go
//! decoder, so any config flannel accepts is read the same way. Two deliberate differences: a
//! config without `Backend` means vxlan (what flannel documents; its code picks udp), and
//! `SubnetMin` above `SubnetMax` is an error (flannel never checks it).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};

/// Backends podnet implements.
pub const SUPPORTED_BACKENDS: [&str; 4] = ["vxlan", "host-gw", "udp", "wireguard"];
/// Backends flannel has that podnet does not (yet).
const FLANNEL_ONLY_BACKENDS: [&str; 5] = ["ipip", "ipsec", "alloc", "extension", "tencent-vpc"];

pub const DEFAULT_VXLAN_VNI: u32 = 1;
/// What the kernel uses for port 0 and what flannel documents.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
pub const DEFAULT_UDP_PORT: u16 = 8285;
/// flannel's WireGuard ports (IPv4 and IPv6 underlay).
pub const DEFAULT_WG_PORT: u16 = 51820;
pub const DEFAULT_WG_PORT_V6: u16 = 51821;

/// An invalid config, naming the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// vxlan backend options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanOptions {
    pub vni: u32,
    /// UDP port; 0 in the config means the kernel default, 8472.
    pub port: u16,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
    /// Underlay MTU to assume instead of the interface's.
    pub mtu: Option<u32>,
}

/// udp backend options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpOptions {
    pub port: u16,
}

/// flannel's `Mode` for wireguard: how IPv4 and IPv6 pod traffic map onto devices and which
/// underlay family carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgMode {
    /// One device per pod address family, each over its own underlay family (the default).
    Separate,
    /// One device; endpoints over IPv4 where the peer has one, else IPv6.
    Auto,
    /// One device, endpoints over IPv4.
    Ipv4,
    /// One device, endpoints over IPv6.
    Ipv6,
}

impl WgMode {
    pub fn name(self) -> &'static str {
        match self {
            WgMode::Separate => "separate",
            WgMode::Auto => "auto",
            WgMode::Ipv4 => "ipv4",
            WgMode::Ipv6 => "ipv6",
        }
    }
}

/// Which WireGuard implementation carries the traffic (podnet's `Backend.Engine`, or podnetd's
/// `--wireguard-engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgEngine {
    /// The kernel's where `ip link add type wireguard` works, else userspace.
    Auto,
    Kernel,
    Userspace,
}

impl WgEngine {
    pub fn name(self) -> &'static str {
        match self {
            WgEngine::Auto => "auto",
            WgEngine::Kernel => "kernel",
            WgEngine::Userspace => "userspace",
        }
    }

    /// Parses `auto`, `kernel` or `userspace` (any case); the error names `field`.
    pub fn parse(field: &str, s: &str) -> Result<WgEngine, ConfigError> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(WgEngine::Auto),
            "kernel" => Ok(WgEngine::Kernel),
            "userspace" => Ok(WgEngine::Userspace),
            _ => err(format!(
                "{field} {s:?}: expected \"auto\", \"kernel\" or \"userspace\""
            )),
        }
    }
}

/// wireguard backend options (flannel's, plus `Engine`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireguardOptions {
    pub listen_port: u16,
    pub listen_port_v6: u16,
    /// Pre-shared key, 32 bytes (base64 in the config), the same on every node.
    pub psk: Option<[u8; 32]>,
    /// Seconds between keepalives when idle; 0 is off.
    pub persistent_keepalive: u16,
    /// Underlay MTU to assume instead of the interface's.
    pub mtu: Option<u32>,
    pub mode: WgMode,
    pub engine: WgEngine,
}

/// The data path, chosen by `Backend.Type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    Vxlan(VxlanOptions),
    HostGw,
    Udp(UdpOptions),
    Wireguard(WireguardOptions),
}

impl BackendConfig {
    /// The type name as written in leases (`BackendType`).
    pub fn type_name(&self) -> &'static str {
        match self {
            BackendConfig::Vxlan(_) => "vxlan",
            BackendConfig::HostGw => "host-gw",
            BackendConfig::Udp(_) => "udp",
            BackendConfig::Wireguard(_) => "wireguard",
        }
    }
}

/// A parsed, defaulted and validated network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    pub v4: Option<Family4>,
    pub v6: Option<Family6>,
    pub backend: BackendConfig,
}

/// IPv4 allocation parameters (present when IPv4 is enabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family4 {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
}

/// IPv6 allocation parameters (present when IPv6 is enabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family6 {
    pub network: Ipv6Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv6Addr,
    pub subnet_max: Ipv6Addr,
}

/// A JSON object whose keys are looked up case-insensitively, as Go's decoder does.
struct Fields<'a> {
    path: &'a str,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        crate::util::json::get_ci(self.map, key)
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => err(format!("{} {v}: expected a string", self.name(key))),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => err(format!("{} {v}: expected true or false", self.name(key))),
        }
    }

    fn uint(&self, key: &str, max: u64) -> Result<Option<u64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if v <= max => Ok(Some(v)),
                _ => err(format!(
                    "{} {n}: expected a whole number from 0 to {max}",
                    self.name(key)
                )),
            },
            Some(v) => err(format!("{} {v}: expected a number", self.name(key))),
        }
    }
}

fn parse_v4_net(field: &str, s: &str) -> Result<Ipv4Net, ConfigError> {
    match s.parse::<Ipv4Net>() {
        // Go's ParseCIDR masks host bits; flannel uses the network, and so do we.
        Ok(n) => Ok(n.trunc()),
        Err(_) => err(format!(
            "{field} {s:?}: not an IPv4 CIDR (expected something like \"10.244.0.0/16\")"
        )),
    }
}

fn parse_v6_net(field: &str, s: &str) -> Result<Ipv6Net, ConfigError> {
    match s.parse::<Ipv6Net>() {
        Ok(n) => Ok(n.trunc()),
        Err(_) => err(format!(
            "{field} {s:?}: not an IPv6 CIDR (expected something like \"fd10:244::/56\")"
        )),
    }
}

impl NetworkConfig {
    /// Parses and validates a config document.
    pub fn parse(text: &str) -> Result<NetworkConfig, ConfigError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ConfigError(format!("network config is not valid JSON: {e}")))?;
        let Value::Object(map) = &value else {
            return err(format!("network config must be a JSON object, got {value}"));
        };
        let f = Fields { path: "", map };
        let enable_ipv4 = f.boolean("EnableIPv4")?.unwrap_or(true);
        let enable_ipv6 = f.boolean("EnableIPv6")?.unwrap_or(false);
        if !enable_ipv4 && !enable_ipv6 {
            return err(
                "EnableIPv4 and EnableIPv6 are both false: the config enables no address family",
            );
        }
        let v4 = if enable_ipv4 {
            Some(parse_family4(&f)?)
        } else {
            None
        };
        let v6 = if enable_ipv6 {
            Some(parse_family6(&f)?)
        } else {
            None
        };
        let backend = parse_backend(&f)?;
        Ok(NetworkConfig {
            enable_ipv4,
            enable_ipv6,
            v4,
            v6,
            backend,
        })
    }

    /// The config as flannel's JSON with every default filled in (what `podnetctl config get` shows).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("EnableIPv4".into(), self.enable_ipv4.into());
        m.insert("EnableIPv6".into(), self.enable_ipv6.into());
        if let Some(v4) = &self.v4 {
            m.insert("Network".into(), v4.network.to_string().into());
            m.insert("SubnetLen".into(), v4.subnet_len.into());
            m.insert("SubnetMin".into(), v4.subnet_min.to_string().into());
            m.insert("SubnetMax".into(), v4.subnet_max.to_string().into());
        }
        if let Some(v6) = &self.v6 {
            m.insert("IPv6Network".into(), v6.network.to_string().into());
            m.insert("IPv6SubnetLen".into(), v6.subnet_len.into());
            m.insert("IPv6SubnetMin".into(), v6.subnet_min.to_string().into());
            m.insert("IPv6SubnetMax".into(), v6.subnet_max.to_string().into());
        }
        let mut b = Map::new();
        b.insert("Type".into(), self.backend.type_name().into());
        match &self.backend {
            BackendConfig::Vxlan(o) => {
                b.insert("VNI".into(), o.vni.into());
                b.insert("Port".into(), o.port.into());
                b.insert("GBP".into(), o.gbp.into());
                b.insert("Learning".into(), o.learning.into());
                b.insert("DirectRouting".into(), o.direct_routing.into());
                if let Some(mtu) = o.mtu {
                    b.insert("MTU".into(), mtu.into());
                }
            }
            BackendConfig::HostGw => {}
            BackendConfig::Udp(o) => {
                b.insert("Port".into(), o.port.into());
            }
            BackendConfig::Wireguard(o) => wireguard_json(o, &mut b),
        }
        m.insert("Backend".into(), Value::Object(b));
        Value::Object(m)
    }
}

fn parse_family4(f: &Fields<'_>) -> Result<Family4, ConfigError> {
    let Some(net_s) = f.string("Network")? else {
        return err(
            "Network: missing; with EnableIPv4 the config needs the cluster's IPv4 CIDR, e.g. \"10.244.0.0/16\"",
        );
    };
    let network = parse_v4_net("Network", net_s)?;
    let plen = network.prefix_len();
    let subnet_len = match f.uint("SubnetLen", 32)? {
        Some(0) | None => {
            if plen > 28 {
                return err(format!(
                    "Network {network}: too small to hold four subnets; the smallest usable network is a /28"
                ));
            }
            if plen <= 22 { 24 } else { plen + 2 }
        }
        Some(l) => {
            let l = l as u8;
            if l > 30 {
                return err(format!(
                    "SubnetLen {l}: must be at most 30 (a node needs a gateway and pod addresses)"
                ));
            }
            if l < plen + 2 {
                return err(format!(
                    "SubnetLen {l}: Network {network} must hold at least four subnets, so SubnetLen must be at least {}",
                    plen + 2
                ));
            }
            l
        }
    };
    let size = 1u32 << (32 - subnet_len);
    let first = u32::from(network.network());
    let last_plus_one = first as u64 + (1u64 << (32 - plen));
    let min = match f.string("SubnetMin")? {
        None => Ipv4Addr::from(first + size),
        Some(s) => parse_v4_addr("SubnetMin", s)?,
    };
    let max = match f.string("SubnetMax")? {
        None => Ipv4Addr::from((last_plus_one - size as u64) as u32),
        Some(s) => parse_v4_addr("SubnetMax", s)?,
    };
    check_bound4("SubnetMin", min, &network, subnet_len)?;
    check_bound4("SubnetMax", max, &network, subnet_len)?;
    if min > max {
        return err(format!(
            "SubnetMin {min} is above SubnetMax {max}: no subnet can be allocated"
        ));
    }
    Ok(Family4 {
        network,
        subnet_len,
        subnet_min: min,
        subnet_max: max,
    })
}

fn parse_v4_addr(field: &str, s: &str) -> Result<Ipv4Addr, ConfigError> {
    s.parse()
        .or_else(|_| err(format!("{field} {s:?}: not an IPv4 address")))
}

fn check_bound4(field: &str, a: Ipv4Addr, network: &Ipv4Net, len: u8) -> Result<(), ConfigError> {
    if !network.contains(&a) {
        return err(format!("{field} {a}: outside Network {network}"));
    }
    let mask = u32::MAX << (32 - len);
    if u32::from(a) & !mask != 0 {
        return err(format!(
            "{field} {a}: not on a /{len} boundary (SubnetLen is {len})"
        ));
    }
    Ok(())
}

fn parse_family6(f: &Fields<'_>) -> Result<Family6, ConfigError> {
    let Some(net_s) = f.string("IPv6Network")? else {
        return err(
            "IPv6Network: missing; with EnableIPv6 the config needs the cluster's IPv6 CIDR, e.g. \"fd10:244::/56\"",
        );
    };
    let network = parse_v6_net("IPv6Network", net_s)?;
    let plen = network.prefix_len();
    let subnet_len = match f.uint("IPv6SubnetLen", 128)? {
        Some(0) | None => {
            if plen > 124 {
                return err(format!(
                    "IPv6Network {network}: too small to hold four subnets; the smallest usable network is a /124"
                ));
            }
            if plen <= 62 { 64 } else { plen + 2 }
        }
        Some(l) => {
            let l = l as u8;
            if l > 126 {
                return err(format!("IPv6SubnetLen {l}: must be at most 126"));
            }
            if l < plen + 2 {
                return err(format!(
                    "IPv6SubnetLen {l}: IPv6Network {network} must hold at least four subnets, so IPv6SubnetLen must be at least {}",
                    plen + 2
                ));
            }
            l
        }
    };
    let size = 1u128 << (128 - subnet_len);
    let first = u128::from(network.network());
    // The last subnet starts one subnet below the end of the network (wrapping at ::/0 is fine).
    let span = if plen == 0 { 0 } else { 1u128 << (128 - plen) };
    let min = match f.string("IPv6SubnetMin")? {
        None => Ipv6Addr::from(first + size),
        Some(s) => parse_v6_addr("IPv6SubnetMin", s)?,
    };
    let max = match f.string("IPv6SubnetMax")? {
        None => Ipv6Addr::from(first.wrapping_add(span).wrapping_sub(size)),
        Some(s) => parse_v6_addr("IPv6SubnetMax", s)?,
    };
    check_bound6("IPv6SubnetMin", min, &network, subnet_len)?;
    check_bound6("IPv6SubnetMax", max, &network, subnet_len)?;
    if min > max {
        return err(format!(
            "IPv6SubnetMin {min} is above IPv6SubnetMax {max}: no subnet can be allocated"
        ));
    }
    Ok(Family6 {
        network,
        subnet_len,
        subnet_min: min,
        subnet_max: max,
    })
}

fn parse_v6_addr(field: &str, s: &str) -> Result<Ipv6Addr, ConfigError> {
    s.parse()
        .or_else(|_| err(format!("{field} {s:?}: not an IPv6 address")))
}

fn check_bound6(field: &str, a: Ipv6Addr, network: &Ipv6Net, len: u8) -> Result<(), ConfigError> {
    if !network.contains(&a) {
        return err(format!("{field} {a}: outside IPv6Network {network}"));
    }
    let host_bits = u128::MAX.checked_shr(len as u32).unwrap_or(0);
    if u128::from(a) & host_bits != 0 {
        return err(format!(
            "{field} {a}: not on a /{len} boundary (IPv6SubnetLen is {len})"
        ));
    }
    Ok(())
}

fn parse_backend(f: &Fields<'_>) -> Result<BackendConfig, ConfigError> {
    let backend = match f.get("Backend") {
        None => return Ok(BackendConfig::Vxlan(vxlan_defaults())),
        Some(Value::Object(m)) => Fields {
            path: "Backend",
            map: m,
        },
        Some(v) => {
            return err(format!(
                "Backend {v}: expected an object like {{\"Type\": \"vxlan\"}}"
            ));
        }
    };
    let Some(ty) = backend.string("Type")? else {
        return err(format!(
            "Backend.Type: missing (one of {})",
            SUPPORTED_BACKENDS.join(", ")
        ));
    };
    // flannel lower-cases the type before looking it up.
    match ty.to_ascii_lowercase().as_str() {
        "vxlan" => {
            let mut o = vxlan_defaults();
            if let Some(vni) = backend.uint("VNI", 16_777_215)? {
                o.vni = vni as u32;
            }
            if let Some(port) = backend.uint("Port", 65_535)? {
                o.port = if port == 0 {
                    DEFAULT_VXLAN_PORT
                } else {
                    port as u16
                };
            }
            o.gbp = backend.boolean("GBP")?.unwrap_or(false);
            o.learning = backend.boolean("Learning")?.unwrap_or(false);
            o.direct_routing = backend.boolean("DirectRouting")?.unwrap_or(false);
            o.mtu = match backend.uint("MTU", 65_535)? {
                None | Some(0) => None,
                Some(m) if m < 68 + 70 => {
                    return err(format!(
                        "Backend.MTU {m}: too small to carry VXLAN (at least 138)"
                    ));
                }
                Some(m) => Some(m as u32),
            };
            Ok(BackendConfig::Vxlan(o))
        }
        "host-gw" => Ok(BackendConfig::HostGw),
        "wireguard" => parse_wireguard(&backend).map(BackendConfig::Wireguard),
        "udp" => {
            let port = match backend.uint("Port", 65_535)? {
                None | Some(0) => DEFAULT_UDP_PORT,
                Some(p) => p as u16,
            };
            Ok(BackendConfig::Udp(UdpOptions { port }))
        }
        other if FLANNEL_ONLY_BACKENDS.contains(&other) => err(format!(
            "Backend.Type {ty:?}: a flannel backend podnet does not implement (podnet has {})",
            SUPPORTED_BACKENDS.join(", ")
        )),
        _ => err(format!(
            "Backend.Type {ty:?}: unknown backend type (podnet has {})",
            SUPPORTED_BACKENDS.join(", ")
        )),
    }
}

/// Bytes WireGuard adds over an IPv6 underlay (40 + 8 + 32), what flannel subtracts either way.
pub const WG_OVERHEAD: u32 = 80;

fn parse_wireguard(b: &Fields<'_>) -> Result<WireguardOptions, ConfigError> {
    let port = |key: &str, default: u16| -> Result<u16, ConfigError> {
        match b.uint(key, 65_535)? {
            None => Ok(default),
            Some(0) => err(format!(
                "Backend.{key} 0: WireGuard needs a fixed port (peers are told it in the lease)"
            )),
            Some(p) => Ok(p as u16),
        }
    };
    let psk = match b.string("PSK")? {
        None | Some("") => None,
        Some(text) => Some(parse_key32(text).ok_or_else(|| {
            ConfigError(format!(
                "Backend.PSK {:?}: not a WireGuard key (32 bytes in base64, as `wg genpsk` prints)",
                redact(text)
            ))
        })?),
    };
    let mode = match b.string("Mode")? {
        None => WgMode::Separate,
        Some(m) => match m.to_ascii_lowercase().as_str() {
            "separate" => WgMode::Separate,
            "auto" => WgMode::Auto,
            "ipv4" => WgMode::Ipv4,
            "ipv6" => WgMode::Ipv6,
            _ => {
                return err(format!(
                    "Backend.Mode {m:?}: expected \"separate\", \"auto\", \"ipv4\" or \"ipv6\""
                ));
            }
        },
    };
    let engine = match b.string("Engine")? {
        None => WgEngine::Auto,
        Some(e) => WgEngine::parse("Backend.Engine", e)?,
    };
    let mtu = match b.uint("MTU", 65_535)? {
        None | Some(0) => None,
        Some(m) if m < 68 + u64::from(WG_OVERHEAD) => {
            return err(format!(
                "Backend.MTU {m}: too small to carry WireGuard (at least 148)"
            ));
        }
        Some(m) => Some(m as u32),
    };
    Ok(WireguardOptions {
        listen_port: port("ListenPort", DEFAULT_WG_PORT)?,
        listen_port_v6: port("ListenPortV6", DEFAULT_WG_PORT_V6)?,
        psk,
        persistent_keepalive: b.uint("PersistentKeepaliveInterval", 65_535)?.unwrap_or(0) as u16,
        mtu,
        mode,
        engine,
    })
}

/// A 32-byte key in standard base64 (what `wg genkey`, `wg pubkey` and `wg genpsk` print).
pub fn parse_key32(text: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    bytes.try_into().ok()
}

/// A secret as it may appear in an error: its length and first characters only.
fn redact(secret: &str) -> String {
    let head: String = secret.chars().take(4).collect();
    format!("{head}... ({} characters)", secret.chars().count())
}

fn wireguard_json(o: &WireguardOptions, b: &mut Map<String, Value>) {
    b.insert("ListenPort".into(), o.listen_port.into());
    b.insert("ListenPortV6".into(), o.listen_port_v6.into());
    if let Some(psk) = &o.psk {
        use base64::Engine;
        let text = base64::engine::general_purpose::STANDARD.encode(psk);
        b.insert("PSK".into(), text.into());
    }
    b.insert(
        "PersistentKeepaliveInterval".into(),
        o.persistent_keepalive.into(),
    );
    if let Some(mtu) = o.mtu {
        b.insert("MTU".into(), mtu.into());
    }
    b.insert("Mode".into(), o.mode.name().into());
    b.insert("Engine".into(), o.engine.name().into());
}

fn vxlan_defaults() -> VxlanOptions {
    VxlanOptions {
        vni: DEFAULT_VXLAN_VNI,
        port: DEFAULT_VXLAN_PORT,
        gbp: false,
        learning: false,
        direct_routing: false,
        mtu: None,
    }
}

impl Family4 {
    /// Every subnet between SubnetMin and SubnetMax, in order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let size = 1u64 << (32 - self.subnet_len);
        let min = u32::from(self.subnet_min) as u64;
        let max = u32::from(self.subnet_max) as u64;
        (0..)
            .map(move |i| min + i * size)
            .take_while(move |a| *a <= max)
            .map(move |a| {
                Ipv4Net::new(Ipv4Addr::from(a as u32), self.subnet_len).expect("valid prefix")
            })
    }

    /// Whether a lease's subnet fits this config (inside the allocatable range, right length).
    pub fn fits(&self, sn: &Ipv4Net) -> bool {
        sn.prefix_len() == self.subnet_len
            && sn.network() >= self.subnet_min
            && sn.network() <= self.subnet_max
    }
}

impl Family6 {
    /// Every subnet between IPv6SubnetMin and IPv6SubnetMax, in order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv6Net> + '_ {
        let size = 1u128 << (128 - self.subnet_len);
        let min = u128::from(self.subnet_min);
        let max = u128::from(self.subnet_max);
        (0u128..)
            .map_while(move |i| i.checked_mul(size).and_then(|o| min.checked_add(o)))
            .take_while(move |a| *a <= max)
            .map(move |a| Ipv6Net::new(Ipv6Addr::from(a), self.subnet_len).expect("valid prefix"))
    }

    pub fn fits(&self, sn: &Ipv6Net) -> bool {
        sn.prefix_len() == self.subnet_len
            && sn.network() >= self.subnet_min
            && sn.network() <= self.subnet_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> NetworkConfig {
        NetworkConfig::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn error(s: &str) -> String {
        NetworkConfig::parse(s).unwrap_err().0
    }

    #[test]
    fn flannel_defaults_for_a_slash_16() {
        // flannel's own worked example (config_test.go TestConfigDefaults), lower-case keys.
        let c = parse(r#"{"network":"10.3.0.0/16"}"#);
        let v4 = c.v4.unwrap();
        assert_eq!(v4.subnet_len, 24);
        assert_eq!(v4.subnet_min.to_string(), "10.3.1.0");
        assert_eq!(v4.subnet_max.to_string(), "10.3.255.0");
        assert!(c.enable_ipv4 && !c.enable_ipv6);
        // Documented default backend, not flannel's coded udp.
        assert_eq!(c.backend, BackendConfig::Vxlan(vxlan_defaults()));
    }

    #[test]
    fn subnet_len_defaults_by_network_size() {
        let len = |n: &str| {
            parse(&format!(r#"{{"Network":"{n}"}}"#))
                .v4
                .unwrap()
                .subnet_len
        };
        assert_eq!(len("10.0.0.0/8"), 24);
        assert_eq!(len("10.0.0.0/22"), 24);
        assert_eq!(len("10.0.0.0/23"), 25);
        assert_eq!(len("10.0.0.0/28"), 30);
        assert_eq!(
            error(r#"{"Network":"10.0.0.0/29"}"#),
            "Network 10.0.0.0/29: too small to hold four subnets; the smallest usable network is a /28"
        );
    }

    #[test]
    fn ipv6_defaults() {
        let c = parse(r#"{"EnableIPv6":true,"IPv6Network":"fc00::/48","Network":"10.1.0.0/16"}"#);
        let v6 = c.v6.unwrap();
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(v6.subnet_min.to_string(), "fc00:0:0:1::");
        assert_eq!(v6.subnet_max.to_string(), "fc00:0:0:ffff::");
        let c = parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/120"}"#);
        assert!(c.v4.is_none());
        assert_eq!(c.v6.unwrap().subnet_len, 122);
    }

    #[test]
    fn explicit_values_and_options_case_insensitively() {
        let c = parse(
            r#"{"NETWORK":"10.244.0.0/16","subnetlen":26,"SubnetMin":"10.244.4.0","SUBNETMAX":"10.244.4.192",
                "backend":{"type":"VXLAN","vni":42,"port":4789,"gbp":true,"directrouting":true,"learning":true,"mtu":9000},
                "SomethingElse":[1,2]}"#,
        );
        let v4 = c.v4.as_ref().unwrap();
        assert_eq!(
            (
                v4.subnet_len,
                v4.subnet_min.to_string(),
                v4.subnet_max.to_string()
            ),
            (26, "10.244.4.0".into(), "10.244.4.192".into())
        );
        assert_eq!(
            c.backend,
            BackendConfig::Vxlan(VxlanOptions {
                vni: 42,
                port: 4789,
                gbp: true,
                learning: true,
                direct_routing: true,
                mtu: Some(9000)
            })
        );
        let subnets: Vec<String> = v4.subnets().map(|s| s.to_string()).collect();
        assert_eq!(
            subnets,
            [
                "10.244.4.0/26",
                "10.244.4.64/26",
                "10.244.4.128/26",
                "10.244.4.192/26"
            ]
        );
        assert_eq!(
            parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}"#).backend,
            BackendConfig::HostGw
        );
        assert_eq!(
            parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp"}}"#).backend,
            BackendConfig::Udp(UdpOptions { port: 8285 })
        );
    }

    // One test per invalid variant, each with its own message.

    #[test]
    fn invalid_malformed_cidr() {
        assert_eq!(
            error(r#"{"Network":"10.244.0.0/33"}"#),
            "Network \"10.244.0.0/33\": not an IPv4 CIDR (expected something like \"10.244.0.0/16\")"
        );
        assert_eq!(
            error(r#"{"EnableIPv6":true,"Network":"10.1.0.0/16","IPv6Network":"fd10::1::/56"}"#),
            "IPv6Network \"fd10::1::/56\": not an IPv6 CIDR (expected something like \"fd10:244::/56\")"
        );
        assert!(error(r#"{"Network":16}"#).starts_with("Network 16: expected a string"));
    }

    #[test]
    fn invalid_missing_network() {
        assert!(error(r#"{"Backend":{"Type":"vxlan"}}"#).starts_with("Network: missing"));
        assert!(
            error(r#"{"EnableIPv4":false,"EnableIPv6":true}"#).starts_with("IPv6Network: missing")
        );
        assert!(error(r#"{"EnableIPv4":false}"#).contains("enables no address family"));
    }

    #[test]
    fn invalid_network_too_small_for_four_subnets() {
        assert_eq!(
            error(r#"{"Network":"10.244.0.0/16","SubnetLen":17}"#),
            "SubnetLen 17: Network 10.244.0.0/16 must hold at least four subnets, so SubnetLen must be at least 18"
        );
        assert_eq!(
            error(r#"{"EnableIPv6":true,"EnableIPv4":false,"IPv6Network":"fd00::/125"}"#),
            "IPv6Network fd00::/125: too small to hold four subnets; the smallest usable network is a /124"
        );
    }

    #[test]
    fn invalid_subnet_len_out_of_range() {
        assert_eq!(
            error(r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#),
            "SubnetLen 31: must be at most 30 (a node needs a gateway and pod addresses)"
        );
        assert_eq!(
            error(r#"{"Network":"10.244.0.0/16","SubnetLen":33}"#),
            "SubnetLen 33: expected a whole number from 0 to 32"
        );
        assert_eq!(
            error(r#"{"Network":"10.244.0.0/16","SubnetLen":-1}"#),
            "SubnetLen -1: expected a whole number from 0 to 32"
        );
        assert_eq!(
            error(r#"{"Network":"10.244.0.0/16","SubnetLen":"24"}"#),
            "SubnetLen \"24\": expected a number"
        );
        assert_eq!(
            error(
                r#"{"EnableIPv6":true,"Network":"10.1.0.0/16","IPv6Network":"fd00::/56","IPv6SubnetLen":127}"#
            ),
            "IPv6SubnetLen 127: must be at most 126"
        );
    }

    #[test]
    fn invalid_subnet_min_max_outside_network() {
        assert_eq!(
            error(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0"}"#),
            "SubnetMin 10.245.0.0: outside Network 10.244.0.0/16"
        );
        assert_eq!(
            error(r#"{"Network":"10.244.0.0/16","SubnetMax":"10.0.0.0"}"#),
            "SubnetMax 10.0.0.0: outside Network 10.244.0.0/16"
        );
        assert_eq!(
            error(
                r#"{"EnableIPv6":true,"Network":"10.1.0.0/16","IPv6Network":"fd00::/56","IPv6SubnetMin":"fd01::"}"#
            ),
            "IPv6SubnetMin fd01::: outside IPv6Network fd00::/56"
        );
        assert_eq!(
            error(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1"}"#),
            "SubnetMin \"10.244.1\": not an IPv4 address"
        );
    }

    #[test]
    fn invalid_subnet_min_max_misaligned() {
        assert_eq!(
            error(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.128"}"#),
            "SubnetMin 10.244.1.128: not on a /24 boundary (SubnetLen is 24)"
        );
        assert_eq!(
            error(r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.200.1"}"#),
            "SubnetMax 10.244.200.1: not on a /24 boundary (SubnetLen is 24)"
        );
        assert_eq!(
            error(
                r#"{"EnableIPv6":true,"Network":"10.1.0.0/16","IPv6Network":"fd00::/56","IPv6SubnetMax":"fd00:0:0:10::1"}"#
            ),
            "IPv6SubnetMax fd00:0:0:10::1: not on a /64 boundary (IPv6SubnetLen is 64)"
        );
    }

    #[test]
    fn invalid_subnet_min_above_max() {
        assert_eq!(
            error(
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.3.0"}"#
            ),
            "SubnetMin 10.244.9.0 is above SubnetMax 10.244.3.0: no subnet can be allocated"
        );
    }

    #[test]
    fn invalid_unknown_backend_type() {
        assert_eq!(
            error(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"carrier-pigeon"}}"#),
            "Backend.Type \"carrier-pigeon\": unknown backend type (podnet has vxlan, host-gw, udp, wireguard)"
        );
        assert_eq!(
            error(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"ipsec"}}"#),
            "Backend.Type \"ipsec\": a flannel backend podnet does not implement (podnet has vxlan, host-gw, udp, wireguard)"
        );
        assert_eq!(
            error(r#"{"Network":"10.244.0.0/16","Backend":{"VNI":2}}"#),
            "Backend.Type: missing (one of vxlan, host-gw, udp, wireguard)"
        );
        assert_eq!(
            error(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#),
            "Backend.VNI 16777216: expected a whole number from 0 to 16777215"
        );
        assert_eq!(
            error(
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":"yes"}}"#
            ),
            "Backend.DirectRouting \"yes\": expected true or false"
        );
    }

    #[test]
    fn wireguard_defaults_are_flannels() {
        let c = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#);
        assert_eq!(
            c.backend,
            BackendConfig::Wireguard(WireguardOptions {
                listen_port: 51820,
                listen_port_v6: 51821,
                psk: None,
                persistent_keepalive: 0,
                mtu: None,
                mode: WgMode::Separate,
                engine: WgEngine::Auto,
            })
        );
        let again = NetworkConfig::parse(&c.to_json().to_string()).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn wireguard_options_case_insensitively() {
        let psk = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=";
        let c = parse(&format!(
            r#"{{"Network":"10.244.0.0/16","Backend":{{"type":"WireGuard","listenport":5000,"ListenPortV6":5001,
                "psk":"{psk}","PersistentKeepaliveInterval":25,"MTU":9000,"Mode":"IPv4","Engine":"Userspace"}}}}"#
        ));
        let BackendConfig::Wireguard(o) = &c.backend else {
            panic!("{c:?}")
        };
        assert_eq!((o.listen_port, o.listen_port_v6), (5000, 5001));
        assert_eq!(o.psk, parse_key32(psk));
        assert!(o.psk.is_some());
        assert_eq!(o.persistent_keepalive, 25);
        assert_eq!(o.mtu, Some(9000));
        assert_eq!((o.mode, o.engine), (WgMode::Ipv4, WgEngine::Userspace));
        // An empty PSK is none, as in flannel.
        let c = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","PSK":""}}"#);
        assert!(matches!(
            c.backend,
            BackendConfig::Wireguard(WireguardOptions { psk: None, .. })
        ));
        assert_eq!(NetworkConfig::parse(&c.to_json().to_string()).unwrap(), c);
    }

    #[test]
    fn invalid_wireguard_options_name_field_and_value() {
        let wg = |extra: &str| {
            error(&format!(
                r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"wireguard",{extra}}}}}"#
            ))
        };
        assert_eq!(
            wg(r#""ListenPort":70000"#),
            "Backend.ListenPort 70000: expected a whole number from 0 to 65535"
        );
        assert_eq!(
            wg(r#""ListenPort":0"#),
            "Backend.ListenPort 0: WireGuard needs a fixed port (peers are told it in the lease)"
        );
        assert_eq!(
            wg(r#""PSK":"c2hvcnQ=""#),
            "Backend.PSK \"c2hv... (8 characters)\": not a WireGuard key (32 bytes in base64, as `wg genpsk` prints)"
        );
        assert_eq!(
            wg(r#""Mode":"both""#),
            "Backend.Mode \"both\": expected \"separate\", \"auto\", \"ipv4\" or \"ipv6\""
        );
        assert_eq!(
            wg(r#""Engine":"fast""#),
            "Backend.Engine \"fast\": expected \"auto\", \"kernel\" or \"userspace\""
        );
        assert_eq!(
            wg(r#""MTU":100"#),
            "Backend.MTU 100: too small to carry WireGuard (at least 148)"
        );
        assert_eq!(
            wg(r#""PersistentKeepaliveInterval":"25s""#),
            "Backend.PersistentKeepaliveInterval \"25s\": expected a number"
        );
    }

    #[test]
    fn invalid_json() {
        assert!(error("{").starts_with("network config is not valid JSON"));
        assert_eq!(
            error("[1]"),
            "network config must be a JSON object, got [1]"
        );
    }

    #[test]
    fn canonical_json_round_trips() {
        let c =
            parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#);
        let again = NetworkConfig::parse(&c.to_json().to_string()).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn ipv6_subnet_enumeration() {
        let c = parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/62"}"#);
        let v6 = c.v6.unwrap();
        let all: Vec<String> = v6.subnets().map(|s| s.to_string()).collect();
        assert_eq!(
            all,
            [
                "fd10:244:0:1::/64",
                "fd10:244:0:2::/64",
                "fd10:244:0:3::/64"
            ]
        );
    }
}
