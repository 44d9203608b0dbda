//! The veth pair between the node bridge and the pod. The host end's name is derived from the
//! container ID and interface, so DEL finds it without any saved state.

use std::net::IpAddr;

use ipnet::IpNet;

use super::spec::{CniError, code};
use crate::kernel::netlink::{
    Link, LinkChange, Netlink, NewLink, NewLinkKind, Route, SCOPE_UNIVERSE,
};
use crate::kernel::netns::NetNs;

/// `veth` + 8 hex digits: stable for an attachment, at most 15 bytes.
pub fn host_name(container_id: &str, ifname: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in container_id
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(ifname.bytes())
    {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("veth{h:08x}")
}

fn kernel(what: String, e: crate::kernel::KernelError) -> CniError {
    CniError::new(code::KERNEL, what).with_details(e.to_string())
}

/// What the pod end gets.
pub struct PodSide<'a> {
    pub ifname: &'a str,
    pub addrs: &'a [IpNet],
    /// (destination, gateway)
    pub routes: &'a [(IpNet, IpAddr)],
}

/// Creates the pair with the pod end directly in the pod's namespace, puts the host end on the
/// bridge (hairpin if asked) and brings it up. Returns the host end.
pub fn create(
    host: &mut Netlink,
    pod_ns: &NetNs,
    host_name: &str,
    ifname: &str,
    mtu: u32,
    bridge: u32,
    hairpin: bool,
) -> Result<Link, CniError> {
    if let Some(stale) = host
        .link(host_name)
        .map_err(|e| kernel(format!("look up {host_name}"), e))?
    {
        // Left by an ADD that died half-way for this same attachment.
        host.del_link(stale.index)
            .map_err(|e| kernel(format!("remove stale {host_name}"), e))?;
    }
    let made = host.add_link(&NewLink {
        name: host_name,
        kind: NewLinkKind::Veth {
            peer: ifname,
            peer_ns: Some(pod_ns),
        },
        mtu: Some(mtu),
        mac: None,
        master: None,
        up: false,
    });
    if let Err(e) = made {
        if e.errno() == Some(libc::EEXIST) {
            return Err(CniError::new(
                code::INTERFACE_EXISTS,
                format!("the pod's network namespace already has an interface named {ifname}"),
            ));
        }
        return Err(kernel(format!("create veth {host_name}/{ifname}"), e));
    }
    let link = host
        .require_link(host_name)
        .map_err(|e| kernel(format!("look up {host_name}"), e))?;
    let attach = LinkChange {
        master: Some(bridge),
        ..Default::default()
    };
    host.set_link(link.index, &attach)
        .map_err(|e| kernel(format!("attach {host_name} to the bridge"), e))?;
    if hairpin {
        host.set_link(
            link.index,
            &LinkChange {
                hairpin: Some(true),
                ..Default::default()
            },
        )
        .map_err(|e| kernel(format!("set hairpin on {host_name}"), e))?;
    }
    host.set_link(
        link.index,
        &LinkChange {
            up: Some(true),
            ..Default::default()
        },
    )
    .map_err(|e| kernel(format!("bring {host_name} up"), e))?;
    host.link_by_index(link.index)
        .map_err(|e| kernel(format!("look up {host_name}"), e))?
        .ok_or_else(|| {
            CniError::new(
                code::KERNEL,
                format!("{host_name} vanished while being set up"),
            )
        })
}

/// Inside the pod: loopback up, addresses, the interface up, routes. Returns the pod end.
pub fn configure_pod(pod: &mut Netlink, side: &PodSide<'_>) -> Result<Link, CniError> {
    let lo = pod
        .require_link("lo")
        .map_err(|e| kernel("look up lo in the pod".into(), e))?;
    if !lo.up {
        pod.set_link(
            lo.index,
            &LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
        .map_err(|e| kernel("bring lo up in the pod".into(), e))?;
    }
    let link = pod
        .require_link(side.ifname)
        .map_err(|e| kernel(format!("look up {} in the pod", side.ifname), e))?;
    for a in side.addrs {
        pod.add_addr(link.index, *a)
            .map_err(|e| kernel(format!("add {a} to {}", side.ifname), e))?;
    }
    pod.set_link(
        link.index,
        &LinkChange {
            up: Some(true),
            ..Default::default()
        },
    )
    .map_err(|e| kernel(format!("bring {} up", side.ifname), e))?;
    for (dst, gw) in side.routes {
        let mut r = Route::unicast(*dst, crate::kernel::netlink::RTPROT_BOOT);
        r.gateway = Some(*gw);
        r.oif = Some(link.index);
        r.scope = SCOPE_UNIVERSE;
        pod.replace_route(&r)
            .map_err(|e| kernel(format!("add route {dst} via {gw} in the pod"), e))?;
    }
    Ok(link)
}
