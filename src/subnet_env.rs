//! `subnet.env`, the contract between the node agent and the CNI plugin (flannel's format).
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.3.1/24
//! FLANNEL_IPV6_NETWORK=fd10:244::/56
//! FLANNEL_IPV6_SUBNET=fd10:244:0:3::1/64
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=false
//! ```
//!
//! The subnet lines carry the node subnet's first address (the bridge gateway) with the subnet's
//! prefix length. Lines appear in exactly this order, each family only when enabled.

use std::path::Path;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Where flannel (and so podnet) keeps it.
pub const DEFAULT_PATH: &str = "/run/flannel/subnet.env";

/// The contents of `subnet.env`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubnetEnv {
    /// Cluster networks (flannel allows a comma-separated list; it writes one).
    pub networks: Vec<Ipv4Net>,
    /// This node's gateway address with the node subnet's prefix (10.244.3.1/24).
    pub subnet: Option<Ipv4Net>,
    pub ipv6_networks: Vec<Ipv6Net>,
    pub ipv6_subnet: Option<Ipv6Net>,
    pub mtu: Option<u32>,
    pub ipmasq: Option<bool>,
}

/// A malformed `subnet.env`, naming the line's key and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SubnetEnvError(pub String);

impl SubnetEnv {
    /// The file for a node subnet: the gateway is the subnet's first address.
    pub fn for_lease(
        network: Option<Ipv4Net>,
        subnet: Option<Ipv4Net>,
        ipv6_network: Option<Ipv6Net>,
        ipv6_subnet: Option<Ipv6Net>,
        mtu: u32,
        ipmasq: bool,
    ) -> SubnetEnv {
        SubnetEnv {
            networks: network.into_iter().collect(),
            subnet: subnet.map(|s| {
                let gw = u32::from(s.network()).wrapping_add(1);
                Ipv4Net::new(gw.into(), s.prefix_len()).expect("valid prefix")
            }),
            ipv6_networks: ipv6_network.into_iter().collect(),
            ipv6_subnet: ipv6_subnet.map(|s| {
                let gw = u128::from(s.network()).wrapping_add(1);
                Ipv6Net::new(gw.into(), s.prefix_len()).expect("valid prefix")
            }),
            mtu: Some(mtu),
            ipmasq: Some(ipmasq),
        }
    }

    /// flannel's lines in flannel's order.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let join = |v: &[String]| v.join(",");
        if !self.networks.is_empty() {
            out += &format!(
                "FLANNEL_NETWORK={}\n",
                join(
                    &self
                        .networks
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                )
            );
        }
        if let Some(s) = self.subnet {
            out += &format!("FLANNEL_SUBNET={s}\n");
        }
        if !self.ipv6_networks.is_empty() {
            out += &format!(
                "FLANNEL_IPV6_NETWORK={}\n",
                join(
                    &self
                        .ipv6_networks
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                )
            );
        }
        if let Some(s) = self.ipv6_subnet {
            out += &format!("FLANNEL_IPV6_SUBNET={s}\n");
        }
        if let Some(m) = self.mtu {
            out += &format!("FLANNEL_MTU={m}\n");
        }
        if let Some(m) = self.ipmasq {
            out += &format!("FLANNEL_IPMASQ={m}\n");
        }
        out
    }

    /// Parses the file. Unknown keys and comments are ignored; a known key with a bad value is
    /// an error naming both.
    pub fn parse(text: &str) -> Result<SubnetEnv, SubnetEnvError> {
        let mut env = SubnetEnv::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(SubnetEnvError(format!("line {line:?}: expected KEY=VALUE")));
            };
            let (key, value) = (key.trim(), value.trim().trim_matches('"'));
            let bad = |what: &str| SubnetEnvError(format!("{key}={value}: {what}"));
            match key {
                "FLANNEL_NETWORK" => {
                    env.networks = value
                        .split(',')
                        .map(|v| v.trim().parse::<Ipv4Net>().map(|n| n.trunc()))
                        .collect::<Result<_, _>>()
                        .map_err(|_| bad("not an IPv4 CIDR"))?;
                }
                "FLANNEL_SUBNET" => {
                    env.subnet = Some(
                        value
                            .parse()
                            .map_err(|_| bad("not an IPv4 address/prefix"))?,
                    )
                }
                "FLANNEL_IPV6_NETWORK" => {
                    env.ipv6_networks = value
                        .split(',')
                        .map(|v| v.trim().parse::<Ipv6Net>().map(|n| n.trunc()))
                        .collect::<Result<_, _>>()
                        .map_err(|_| bad("not an IPv6 CIDR"))?;
                }
                "FLANNEL_IPV6_SUBNET" => {
                    env.ipv6_subnet = Some(
                        value
                            .parse()
                            .map_err(|_| bad("not an IPv6 address/prefix"))?,
                    )
                }
                "FLANNEL_MTU" => {
                    let mtu: u32 = value.parse().map_err(|_| bad("not a number"))?;
                    if !(68..=65535).contains(&mtu) {
                        return Err(bad("MTU must be between 68 and 65535"));
                    }
                    env.mtu = Some(mtu);
                }
                "FLANNEL_IPMASQ" => {
                    env.ipmasq = Some(value.parse().map_err(|_| bad("expected true or false"))?)
                }
                _ => {}
            }
        }
        Ok(env)
    }

    /// The node subnets as networks (10.244.3.0/24), for lease reuse.
    pub fn subnets(&self) -> (Option<Ipv4Net>, Option<Ipv6Net>) {
        (
            self.subnet.map(|s| s.trunc()),
            self.ipv6_subnet.map(|s| s.trunc()),
        )
    }

    /// Every node-subnet gateway, both families.
    pub fn gateways(&self) -> Vec<IpNet> {
        self.subnet
            .map(IpNet::V4)
            .into_iter()
            .chain(self.ipv6_subnet.map(IpNet::V6))
            .collect()
    }

    /// Reads and parses a file; `Ok(None)` if it does not exist.
    pub fn read(path: &Path) -> Result<Option<SubnetEnv>, SubnetEnvError> {
        match std::fs::read_to_string(path) {
            Ok(text) => SubnetEnv::parse(&text)
                .map(Some)
                .map_err(|e| SubnetEnvError(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SubnetEnvError(format!("read {}: {e}", path.display()))),
        }
    }
}

/// Writes `subnet.env` atomically: the plugin reads the old file or the new one, never a mix.
/// The mode of an existing file is kept, else 0644 (flannel's).
pub fn write(path: &Path, env: &SubnetEnv) -> std::io::Result<()> {
    crate::util::files::write_atomic(path, env.render().as_bytes(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flannels_lines_in_order() {
        let env = SubnetEnv::for_lease(
            Some("10.244.0.0/16".parse().unwrap()),
            Some("10.244.3.0/24".parse().unwrap()),
            None,
            None,
            1450,
            true,
        );
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        let dual = SubnetEnv::for_lease(
            Some("10.5.0.0/16".parse().unwrap()),
            Some("10.5.52.0/24".parse().unwrap()),
            Some("fc00::/48".parse().unwrap()),
            Some("fc00:0:0:1::/64".parse().unwrap()),
            1500,
            false,
        );
        assert_eq!(
            dual.render(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\n\
             FLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(SubnetEnv::parse(&dual.render()).unwrap(), dual);
        assert_eq!(
            dual.subnets(),
            (
                Some("10.5.52.0/24".parse().unwrap()),
                Some("fc00:0:0:1::/64".parse().unwrap())
            )
        );
    }

    #[test]
    fn parse_names_the_bad_line() {
        assert_eq!(
            SubnetEnv::parse("FLANNEL_MTU=big\n").unwrap_err().0,
            "FLANNEL_MTU=big: not a number"
        );
        assert_eq!(
            SubnetEnv::parse("FLANNEL_SUBNET=10.1.2\n").unwrap_err().0,
            "FLANNEL_SUBNET=10.1.2: not an IPv4 address/prefix"
        );
        assert_eq!(
            SubnetEnv::parse("garbage\n").unwrap_err().0,
            "line \"garbage\": expected KEY=VALUE"
        );
        // Comma lists, as flannel's CNI plugin accepts.
        let e =
            SubnetEnv::parse("FLANNEL_NETWORK=10.1.0.0/16,10.2.0.0/16\n# note\nOTHER=x\n").unwrap();
        assert_eq!(e.networks.len(), 2);
    }
}
