//! CNI protocol types (spec 1.1.0 and the versions before it that runtimes still send): versions,
//! errors with the spec's codes, and results rendered in the version the runtime asked for.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value, json};

/// Versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

/// Well-known error codes (CNI spec "Well-known Error Codes").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const NOT_AVAILABLE_DAMAGED: u32 = 51;
    // podnet's own (100+).
    pub const SUBNET_FILE_INVALID: u32 = 100;
    pub const ADDRESSES_EXHAUSTED: u32 = 101;
    pub const BRIDGE_CONFLICT: u32 = 102;
    pub const KERNEL: u32 = 103;
    pub const INTERFACE_EXISTS: u32 = 104;
    pub const CHECK_FAILED: u32 = 105;
    /// Anything else.
    pub const GENERIC: u32 = 999;
}

/// An error reported to the runtime as `{"cniVersion","code","msg","details"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if .details.is_empty() { String::new() } else { format!(": {}", .details) })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    pub fn to_json(&self, version: &str) -> String {
        let mut v = json!({"cniVersion": version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v.to_string()
    }
}

/// Numeric form of a version for comparisons (`0.4.0` → (0,4,0)).
fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().unwrap_or(Some(0))?))
}

/// Checks that a config's version is one we speak.
pub fn check_version(v: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&v) {
        return Ok(());
    }
    Err(
        CniError::new(code::INCOMPATIBLE_VERSION, "incompatible CNI versions").with_details(
            format!(
                "config is {v:?}, plugin supports [{}]",
                SUPPORTED_VERSIONS.map(|s| format!("{s:?}")).join(" ")
            ),
        ),
    )
}

/// Whether `v` is at least `min`.
pub fn at_least(v: &str, min: &str) -> bool {
    match (parse_version(v), parse_version(min)) {
        (Some(a), Some(b)) => a >= b,
        _ => false,
    }
}

/// The VERSION answer.
pub fn version_info(requested: Option<&str>) -> String {
    let v = requested
        .filter(|r| SUPPORTED_VERSIONS.contains(r))
        .unwrap_or(LATEST);
    json!({"cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS}).to_string()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub sandbox: Option<String>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Index into `interfaces`.
    pub interface: Option<usize>,
    /// Address with prefix length.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// A plugin's result, independent of version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteEntry>,
    pub dns: Value,
}

impl CniResult {
    /// The JSON for a given version: 0.3.x/0.4.0 carry `"version"` on each IP; 1.1.0 may carry
    /// the interface MTU.
    pub fn render(&self, version: &str) -> Value {
        let old = !at_least(version, "1.0.0");
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), i.name.clone().into());
                if let Some(m) = &i.mac {
                    o.insert("mac".into(), m.clone().into());
                }
                if let (Some(mtu), true) = (i.mtu, at_least(version, "1.1.0")) {
                    o.insert("mtu".into(), mtu.into());
                }
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), s.clone().into());
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if old {
                    o.insert(
                        "version".into(),
                        (if ip.address.addr().is_ipv4() {
                            "4"
                        } else {
                            "6"
                        })
                        .into(),
                    );
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), i.into());
                }
                o.insert("address".into(), ip.address.to_string().into());
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), gw.to_string().into());
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), r.dst.to_string().into());
                if let Some(gw) = r.gw {
                    o.insert("gw".into(), gw.to_string().into());
                }
                Value::Object(o)
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), version.into());
        out.insert("interfaces".into(), interfaces.into());
        out.insert("ips".into(), ips.into());
        if !routes.is_empty() {
            out.insert("routes".into(), routes.into());
        }
        out.insert(
            "dns".into(),
            if self.dns.is_null() {
                json!({})
            } else {
                self.dns.clone()
            },
        );
        Value::Object(out)
    }

    /// Reads a result (`prevResult`) in any supported version.
    pub fn parse(v: &Value) -> Result<CniResult, CniError> {
        let bad = |what: &str| CniError::new(code::DECODE, format!("prevResult: {what}"));
        let mut r = CniResult {
            dns: v.get("dns").cloned().unwrap_or(Value::Null),
            ..Default::default()
        };
        for i in v
            .get("interfaces")
            .and_then(|x| x.as_array())
            .into_iter()
            .flatten()
        {
            r.interfaces.push(Interface {
                name: i["name"]
                    .as_str()
                    .ok_or_else(|| bad("interface without a name"))?
                    .to_string(),
                mac: i["mac"].as_str().map(String::from),
                sandbox: i["sandbox"].as_str().map(String::from),
                mtu: i["mtu"].as_u64().and_then(|m| u32::try_from(m).ok()),
            });
        }
        for ip in v
            .get("ips")
            .and_then(|x| x.as_array())
            .into_iter()
            .flatten()
        {
            let address = ip["address"]
                .as_str()
                .and_then(|a| a.parse::<IpNet>().ok())
                .ok_or_else(|| bad("ip without a valid address"))?;
            r.ips.push(IpConfig {
                interface: ip["interface"]
                    .as_u64()
                    .and_then(|i| usize::try_from(i).ok()),
                address,
                gateway: ip["gateway"].as_str().and_then(|g| g.parse().ok()),
            });
        }
        for rt in v
            .get("routes")
            .and_then(|x| x.as_array())
            .into_iter()
            .flatten()
        {
            let dst = rt["dst"]
                .as_str()
                .and_then(|d| d.parse::<IpNet>().ok())
                .ok_or_else(|| bad("route without a valid dst"))?;
            r.routes.push(RouteEntry {
                dst,
                gw: rt["gw"].as_str().and_then(|g| g.parse().ok()),
            });
        }
        Ok(r)
    }

    /// Appends another result after this one, fixing up interface indexes (an index too big
    /// to move points nowhere, as it did before).
    pub fn append(&mut self, mut other: CniResult) {
        let base = self.interfaces.len();
        for ip in &mut other.ips {
            ip.interface = ip.interface.and_then(|i| i.checked_add(base));
        }
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips);
        self.routes.extend(other.routes);
        if self.dns.is_null() || self.dns == json!({}) {
            self.dns = other.dns;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: Some("46:62:e1:d2:a8:55".into()),
                    sandbox: None,
                    mtu: None,
                },
                Interface {
                    name: "veth0a1b2c3d".into(),
                    mac: Some("2a:79:bb:60:f3:ea".into()),
                    sandbox: None,
                    mtu: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("ce:25:99:83:8d:c4".into()),
                    sandbox: Some("/run/netns/p".into()),
                    mtu: Some(1450),
                },
            ],
            ips: vec![IpConfig {
                interface: Some(2),
                address: "10.244.3.2/24".parse().unwrap(),
                gateway: Some("10.244.3.1".parse().unwrap()),
            }],
            routes: vec![RouteEntry {
                dst: "10.244.0.0/16".parse().unwrap(),
                gw: None,
            }],
            dns: Value::Null,
        }
    }

    #[test]
    fn golden_results_per_version() {
        assert_eq!(
            sample().render("0.4.0").to_string(),
            r#"{"cniVersion":"0.4.0","dns":{},"interfaces":[{"mac":"46:62:e1:d2:a8:55","name":"cni0"},{"mac":"2a:79:bb:60:f3:ea","name":"veth0a1b2c3d"},{"mac":"ce:25:99:83:8d:c4","name":"eth0","sandbox":"/run/netns/p"}],"ips":[{"address":"10.244.3.2/24","gateway":"10.244.3.1","interface":2,"version":"4"}],"routes":[{"dst":"10.244.0.0/16"}]}"#
        );
        assert_eq!(
            sample().render("1.0.0").to_string(),
            r#"{"cniVersion":"1.0.0","dns":{},"interfaces":[{"mac":"46:62:e1:d2:a8:55","name":"cni0"},{"mac":"2a:79:bb:60:f3:ea","name":"veth0a1b2c3d"},{"mac":"ce:25:99:83:8d:c4","name":"eth0","sandbox":"/run/netns/p"}],"ips":[{"address":"10.244.3.2/24","gateway":"10.244.3.1","interface":2}],"routes":[{"dst":"10.244.0.0/16"}]}"#
        );
        assert!(
            sample()
                .render("1.1.0")
                .to_string()
                .contains(r#""mtu":1450"#)
        );
        assert!(!sample().render("1.0.0").to_string().contains("mtu"));
    }

    #[test]
    fn results_round_trip_and_append() {
        let r = CniResult::parse(&sample().render("0.3.1")).unwrap();
        assert_eq!(r.ips, sample().ips);
        let mut a = sample();
        a.append(sample());
        assert_eq!(a.ips[1].interface, Some(5));
        // Numbers from a previous plugin cannot overflow (they used to panic in debug builds).
        let mut big = sample().render("1.0.0");
        big["ips"][0]["interface"] = json!(u64::MAX);
        big["interfaces"][2]["mtu"] = json!(u64::MAX);
        let parsed = CniResult::parse(&big).unwrap();
        assert_eq!(parsed.interfaces[2].mtu, None);
        let mut a = sample();
        a.append(parsed);
        assert_eq!(a.ips[1].interface, None);
    }

    #[test]
    fn versions_and_errors() {
        assert!(check_version("0.3.1").is_ok());
        let e = check_version("9.9.9").unwrap_err();
        assert_eq!(e.code, 1);
        assert_eq!(
            e.to_json("1.0.0"),
            r#"{"cniVersion":"1.0.0","code":1,"details":"config is \"9.9.9\", plugin supports [\"0.3.0\" \"0.3.1\" \"0.4.0\" \"1.0.0\" \"1.1.0\"]","msg":"incompatible CNI versions"}"#
        );
        assert!(at_least("1.1.0", "0.4.0") && !at_least("0.3.1", "0.4.0"));
        assert_eq!(
            version_info(Some("1.0.0")),
            r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
        );
        assert!(version_info(Some("7.0.0")).starts_with(r#"{"cniVersion":"1.1.0""#));
    }
}
