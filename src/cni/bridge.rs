//! The node bridge (`cni0`): created on first use with the node subnet's gateway address, and
//! never changed behind running pods' backs.

use ipnet::IpNet;

use super::spec::{CniError, code};
use crate::kernel::netlink::{Link, LinkChange, Netlink, NewLink, NewLinkKind};

fn kernel(what: String, e: crate::kernel::KernelError) -> CniError {
    CniError::new(code::KERNEL, what).with_details(e.to_string())
}

/// Makes sure the bridge exists, is up and carries `gateways` (gateway address with the node
/// subnet's prefix). An address of the same family in another subnet means the node's subnet
/// changed while pods still use the old one: that is refused with what to do about it, rather
/// than silently cutting those pods off (flannel's "cni0 already has an IP address different
/// from ..." failure).
pub fn ensure(
    nl: &mut Netlink,
    name: &str,
    gateways: &[IpNet],
    mtu: u32,
) -> Result<Link, CniError> {
    let mut link = nl
        .link(name)
        .map_err(|e| kernel(format!("look up bridge {name}"), e))?;
    if link.is_none() {
        // An explicit MAC: otherwise the bridge takes its lowest port's, which changes as pods
        // come and go and leaves every pod's ARP entry for the gateway stale.
        let made = nl.add_link(&NewLink {
            name,
            kind: NewLinkKind::Bridge,
            mtu: Some(mtu),
            mac: Some(crate::kernel::Mac::random()),
            master: None,
            up: true,
        });
        match made {
            Ok(()) => {}
            // Another ADD created it at the same moment.
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(kernel(format!("create bridge {name}"), e)),
        }
        link = nl
            .link(name)
            .map_err(|e| kernel(format!("look up bridge {name}"), e))?;
    }
    let link = link.ok_or_else(|| {
        CniError::new(
            code::KERNEL,
            format!("bridge {name} vanished while being set up"),
        )
    })?;
    if link.kind.as_deref() != Some("bridge") {
        return Err(CniError::new(
            code::BRIDGE_CONFLICT,
            format!(
                "{name} exists but is a {} device, not a bridge",
                link.kind.as_deref().unwrap_or("plain")
            ),
        ));
    }
    for gw in gateways {
        ensure_gateway(nl, &link, gw)?;
    }
    if !link.up {
        nl.set_link(
            link.index,
            &LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
        .map_err(|e| kernel(format!("bring {name} up"), e))?;
    }
    Ok(link)
}

/// Puts the gateway on the bridge. The common case, a bridge that has it already, costs one
/// request: adding it exclusively is answered `EEXIST`, and nothing is read. Only when the
/// address was missing (the node's first pod, or someone removed it) are the bridge's other
/// addresses read: one of the same family in another subnet means the node's subnet changed
/// while pods still use the old one, and the address just added is taken back. (An ADD racing
/// that one may see the address for the moment it is there and wire its pod; the node is
/// refused pods from then on, with the reason, until it is drained.)
fn ensure_gateway(nl: &mut Netlink, link: &Link, gw: &IpNet) -> Result<(), CniError> {
    let name = &link.name;
    let added = nl
        .add_addr_new(link.index, *gw)
        .map_err(|e| kernel(format!("add {gw} to {name}"), e))?;
    if !added {
        return Ok(());
    }
    let conflict = match conflicting_addr(nl, link, gw) {
        Ok(c) => c,
        Err(e) => {
            let _ = nl.del_addr(link.index, *gw);
            return Err(e);
        }
    };
    let Some(other) = conflict else {
        return Ok(());
    };
    let _ = nl.del_addr(link.index, *gw);
    Err(CniError::new(
        code::BRIDGE_CONFLICT,
        format!(
            "{name} already has the address {other}, outside this node's pod subnet {}",
            gw.trunc()
        ),
    )
    .with_details(
        "the node's subnet changed (a new lease) while pods still use the old one; drain the node, \
         delete the bridge (ip link delete cni0), and pods will be wired into the new subnet",
    ))
}

/// An address of the bridge in `gw`'s family outside `gw`'s subnet (the kernel's IPv6
/// link-local ones aside). Read per family: the host namespace holds an IPv6 link-local
/// address per pod, so a dump of every family grows with the pods on the node.
fn conflicting_addr(nl: &mut Netlink, link: &Link, gw: &IpNet) -> Result<Option<IpNet>, CniError> {
    let addrs = nl
        .addrs_v(gw.addr().is_ipv4())
        .map_err(|e| kernel(format!("read addresses of {}", link.name), e))?;
    Ok(addrs
        .into_iter()
        .filter(|a| a.index == link.index)
        .map(|a| a.net)
        .filter(|a| a.addr().is_ipv4() == gw.addr().is_ipv4())
        .filter(|a| !matches!(a.addr(), std::net::IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80))
        .find(|a| !gw.contains(&a.addr())))
}
