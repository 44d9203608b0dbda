//! Which interface carries traffic between nodes, and which address this node publishes —
//! flannel's rules: `--iface` (name or address, first match), else `--iface-regex` (addresses
//! first, then names), else `--iface-can-reach`, else the interface of the default route.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::backend::ExternalInterface;
use crate::kernel::netlink::{Addr, Link, Netlink};

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub ifaces: Vec<String>,
    pub regexes: Vec<String>,
    pub can_reach: Option<IpAddr>,
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    pub need_v4: bool,
    pub need_v6: bool,
}

fn v4_of(addrs: &[Addr], index: u32) -> Option<Ipv4Addr> {
    addrs
        .iter()
        .filter(|a| a.index == index)
        .find_map(|a| match a.net.addr() {
            IpAddr::V4(ip) if !ip.is_loopback() => Some(ip),
            _ => None,
        })
}

fn v6_of(addrs: &[Addr], index: u32) -> Option<Ipv6Addr> {
    // Link-local addresses cannot carry traffic between nodes.
    addrs
        .iter()
        .filter(|a| a.index == index)
        .find_map(|a| match a.net.addr() {
            IpAddr::V6(ip) if !ip.is_loopback() && (ip.segments()[0] & 0xffc0) != 0xfe80 => {
                Some(ip)
            }
            _ => None,
        })
}

/// Picks the external interface. Errors say what was tried.
pub fn select(nl: &mut Netlink, sel: &Selection) -> Result<ExternalInterface, String> {
    let links = nl.links().map_err(|e| e.to_string())?;
    let addrs = nl.addrs().map_err(|e| e.to_string())?;
    let by_index = |i: u32| links.iter().find(|l| l.index == i);
    let link: &Link = if !sel.ifaces.is_empty() {
        let mut found = None;
        for spec in &sel.ifaces {
            found = match spec.parse::<IpAddr>() {
                Ok(ip) => addrs
                    .iter()
                    .find(|a| a.net.addr() == ip)
                    .and_then(|a| by_index(a.index)),
                Err(_) => links.iter().find(|l| &l.name == spec),
            };
            if found.is_some() {
                break;
            }
        }
        found.ok_or_else(|| {
            format!(
                "--iface {}: no interface has that name or address",
                sel.ifaces.join(", ")
            )
        })?
    } else if !sel.regexes.is_empty() {
        let mut found = None;
        'outer: for r in &sel.regexes {
            let re = regex::Regex::new(r).map_err(|e| format!("--iface-regex {r:?}: {e}"))?;
            for a in &addrs {
                if re.is_match(&a.net.addr().to_string()) {
                    found = by_index(a.index);
                    break 'outer;
                }
            }
            if let Some(l) = links.iter().find(|l| re.is_match(&l.name)) {
                found = Some(l);
                break;
            }
        }
        found.ok_or_else(|| {
            format!(
                "--iface-regex {}: no interface address or name matches",
                sel.regexes.join(", ")
            )
        })?
    } else if let Some(ip) = sel.can_reach {
        let r = nl
            .route_get(ip)
            .map_err(|e| format!("--iface-can-reach {ip}: {e}"))?;
        r.oif
            .and_then(by_index)
            .ok_or_else(|| format!("--iface-can-reach {ip}: the route has no interface"))?
    } else {
        let routes = nl.routes().map_err(|e| e.to_string())?;
        let default = |v4: bool| {
            routes
                .iter()
                .filter(|r| {
                    r.dst.prefix_len() == 0
                        && r.dst.addr().is_ipv4() == v4
                        && r.table == 254
                        && r.oif.is_some()
                })
                .min_by_key(|r| r.metric.unwrap_or(0))
                .and_then(|r| r.oif)
        };
        let oif = if sel.need_v4 {
            let o4 =
                default(true).ok_or("no default IPv4 route; choose the interface with --iface")?;
            if sel.need_v6 && default(false).is_some_and(|o6| o6 != o4) {
                return Err("the IPv4 and IPv6 default routes use different interfaces; choose one with --iface".into());
            }
            o4
        } else {
            default(false).ok_or("no default IPv6 route; choose the interface with --iface")?
        };
        by_index(oif).ok_or("the default route's interface disappeared")?
    };
    if link.mtu == 0 {
        return Err(format!("interface {} reports MTU 0", link.name));
    }
    let iface_addr = v4_of(&addrs, link.index);
    let iface_addr6 = v6_of(&addrs, link.index);
    if sel.need_v4 && iface_addr.is_none() && sel.public_ip.is_none() {
        return Err(format!("interface {} has no IPv4 address", link.name));
    }
    if sel.need_v6 && iface_addr6.is_none() && sel.public_ipv6.is_none() {
        return Err(format!(
            "interface {} has no global IPv6 address",
            link.name
        ));
    }
    Ok(ExternalInterface {
        index: link.index,
        name: link.name.clone(),
        mtu: link.mtu,
        iface_addr,
        ext_addr: sel.public_ip.or(iface_addr),
        iface_addr6,
        ext_addr6: sel.public_ipv6.or(iface_addr6),
    })
}
