//! Which interface carries traffic between nodes, and which address this node publishes —
//! flannel's rules: `--iface` (name or address, first match), else `--iface-regex` (addresses
//! first, then names), else `--iface-can-reach`, else the interface that holds the public
//! address (`--public-ip`, or in Kubernetes mode the Node's `node-public-ip` annotation, which
//! replaces the flag; IPv6 likewise), else the interface of the default route.
//!
//! Where flanneld exits because no interface holds the public address (a NAT'ed address), the
//! default route's interface is used with that public address, as podnet did before.

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
    // The interface holding the public address decides only when nothing else was asked for
    // (its place in the chain below).
    let mut held = None;
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
    } else if let Some(h) = held_public(&addrs, sel)? {
        held = Some(h);
        by_index(h.0).ok_or("the public address's interface disappeared")?
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
    // An interface chosen by its public address uses that address (flanneld's IfaceAddr).
    let iface_addr = held.and_then(|h| h.1).or_else(|| v4_of(&addrs, link.index));
    let iface_addr6 = held.and_then(|h| h.2).or_else(|| v6_of(&addrs, link.index));
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

/// An interface's index with the public addresses it holds.
type Held = (u32, Option<Ipv4Addr>, Option<Ipv6Addr>);

/// The interface holding the public address(es), with the ones it holds: the IPv4 one decides
/// (the IPv6 one where there is no IPv4), and when both are held they must be on one interface.
/// `None` when the operator named no public address or no interface holds it.
fn held_public(addrs: &[Addr], sel: &Selection) -> Result<Option<Held>, String> {
    let holder = |ip: IpAddr| addrs.iter().find(|a| a.net.addr() == ip).map(|a| a.index);
    let v4 = sel
        .public_ip
        .filter(|_| sel.need_v4)
        .and_then(|ip| holder(IpAddr::V4(ip)).map(|i| (i, ip)));
    let v6 = sel
        .public_ipv6
        .filter(|_| sel.need_v6)
        .and_then(|ip| holder(IpAddr::V6(ip)).map(|i| (i, ip)));
    match (v4, v6) {
        (Some((i4, ip4)), Some((i6, ip6))) if i4 == i6 => Ok(Some((i4, Some(ip4), Some(ip6)))),
        (Some((_, ip4)), Some((_, ip6))) => Err(format!(
            "public addresses {ip4} and {ip6} are on different interfaces; they must share one"
        )),
        (Some((i, ip4)), None) => Ok(Some((i, Some(ip4), None))),
        (None, Some((i, ip6))) if !sel.need_v4 => Ok(Some((i, None, Some(ip6)))),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(index: u32, net: &str) -> Addr {
        Addr {
            index,
            net: net.parse().unwrap(),
        }
    }

    fn sel(v4: Option<&str>, v6: Option<&str>, need_v6: bool) -> Selection {
        Selection {
            public_ip: v4.map(|s| s.parse().unwrap()),
            public_ipv6: v6.map(|s| s.parse().unwrap()),
            need_v4: true,
            need_v6,
            ..Selection::default()
        }
    }

    #[test]
    fn the_interface_holding_the_public_address_is_chosen_with_that_address() {
        let addrs = [
            addr(1, "127.0.0.1/8"),
            addr(2, "198.18.0.11/24"),
            addr(2, "198.18.0.111/24"),
            addr(2, "2001:2::11/64"),
            addr(3, "198.19.0.11/24"),
            addr(3, "2001:2:0:1::11/64"),
        ];
        // A secondary address of eth0: eth0, with that address rather than its first.
        let h = held_public(&addrs, &sel(Some("198.18.0.111"), None, false)).unwrap();
        assert_eq!(h, Some((2, Some("198.18.0.111".parse().unwrap()), None)));
        let h = held_public(&addrs, &sel(Some("198.19.0.11"), None, false)).unwrap();
        assert_eq!(h.map(|h| h.0), Some(3));
        // Dual stack: both on one interface, or an error naming both.
        let h = held_public(
            &addrs,
            &sel(Some("198.19.0.11"), Some("2001:2:0:1::11"), true),
        );
        assert_eq!(h.unwrap().map(|h| h.0), Some(3));
        let err =
            held_public(&addrs, &sel(Some("198.19.0.11"), Some("2001:2::11"), true)).unwrap_err();
        assert!(err.contains("198.19.0.11 and 2001:2::11"), "{err}");
        // Held by no interface (NAT): not chosen this way. No public address: neither.
        assert_eq!(
            held_public(&addrs, &sel(Some("203.0.113.7"), None, false)).unwrap(),
            None
        );
        assert_eq!(held_public(&addrs, &sel(None, None, false)).unwrap(), None);
        // The IPv6 address alone decides only when there is no IPv4.
        let mut only6 = sel(None, Some("2001:2::11"), true);
        assert_eq!(held_public(&addrs, &only6).unwrap(), None);
        only6.need_v4 = false;
        assert_eq!(held_public(&addrs, &only6).unwrap().map(|h| h.0), Some(2));
    }
}
