//! host-gw: plain routes, for nodes that share one L2 segment.
//!
//! Kernel objects: per peer and address family exactly one route, `<peer subnet> via <peer
//! public IP> dev <ext iface> proto 86` (IPv6: `<peer IPv6 subnet> via <peer PublicIPv6> ...
//! metric 1024`, the kernel's default made explicit). No devices, no encapsulation; the pod MTU
//! is the interface's. A dual-stack node serves both halves of each lease, an IPv6-only node
//! the IPv6 half.
//!
//! Invariants: a peer the kernel would reach through a gateway (another segment) is not on our
//! L2 and cannot be served — it is skipped, logged once, and counted, rather than given a route
//! that would silently blackhole (per family: the other family's route stays). Behind NAT
//! (public IP of either family differs from the interface's address) host-gw cannot work at
//! all, so it refuses to start.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{
    Backend, BackendError, ExternalInterface, Families, PeerObjects, PeerPath, PeerPlan,
    Registration,
};
use crate::kernel::netlink::{Netlink, Route};
use crate::lease::Lease;
use crate::owned::RTPROT_PODNET;

/// The metric the kernel gives an IPv6 route added without one (it reports it back in every
/// dump, so podnet asks for it explicitly and compares like with like).
pub const IPV6_DEFAULT_METRIC: u32 = 1024;

pub struct HostGw {
    fam: Families,
    ext: ExternalInterface,
}

fn behind_nat<T: std::fmt::Display + PartialEq>(
    family: &str,
    public: Option<T>,
    iface: Option<T>,
    name: &str,
) -> Result<(), BackendError> {
    if public == iface {
        return Ok(());
    }
    let show = |a: Option<T>| a.map(|a| a.to_string()).unwrap_or_else(|| "none".into());
    Err(BackendError::Invalid(format!(
        "host-gw needs the public {family} address to be the interface's own (public {}, {name} has {}); \
         behind NAT use vxlan",
        show(public),
        show(iface)
    )))
}

impl HostGw {
    pub fn new(fam: Families, ext: ExternalInterface) -> Result<HostGw, BackendError> {
        if fam.v4 {
            behind_nat("IPv4", ext.ext_addr, ext.iface_addr, &ext.name)?;
        }
        if fam.v6 {
            behind_nat("IPv6", ext.ext_addr6, ext.iface_addr6, &ext.name)?;
        }
        Ok(HostGw { fam, ext })
    }

    /// The route to one family's subnet of a peer, via its public address of that family.
    fn family_route(
        &self,
        nl: &mut Netlink,
        subnet: IpNet,
        gw: Option<IpAddr>,
    ) -> Result<Route, String> {
        let family = if subnet.addr().is_ipv4() {
            "IPv4"
        } else {
            "IPv6"
        };
        let gw = gw.ok_or_else(|| {
            format!("lease has an {family} subnet but no public {family} address")
        })?;
        match super::on_link(nl, &self.ext, gw) {
            Ok(true) => Ok(peer_route(subnet, gw, self.ext.index, false)),
            Ok(false) => Err(format!(
                "host-gw needs every node on one L2 segment, but {gw} is not directly reachable on {}; \
                 use vxlan (with DirectRouting for same-segment peers)",
                self.ext.name
            )),
            Err(e) => Err(format!("cannot tell how {gw} is reached: {e}")),
        }
    }
}

/// `<subnet> via <gw> dev <index>` with podnet's protocol (and the kernel's default metric for
/// IPv6, which it would add anyway).
pub fn peer_route(subnet: IpNet, gw: IpAddr, index: u32, onlink: bool) -> Route {
    let mut r = Route::unicast(subnet, RTPROT_PODNET);
    r.gateway = Some(gw);
    r.oif = Some(index);
    r.onlink = onlink;
    if subnet.addr().is_ipv6() {
        r.metric = Some(IPV6_DEFAULT_METRIC);
    }
    r
}

impl Backend for HostGw {
    fn type_name(&self) -> &'static str {
        "host-gw"
    }

    fn prepare(&mut self, _nl: &mut Netlink) -> Result<Registration, BackendError> {
        Ok(Registration {
            backend_type: "host-gw",
            backend_data: None,
            backend_v6_data: None,
            mtu: self.ext.mtu,
            overhead: 0,
            tunnel_port: None,
            tunnel_device: None,
        })
    }

    fn ensure_local(&mut self, _nl: &mut Netlink, _own: &Lease) -> Result<(), BackendError> {
        Ok(())
    }

    /// One route per family the lease and this node share (see `Families::plan_peer`).
    fn plan_peer(&mut self, nl: &mut Netlink, peer: &Lease) -> PeerPlan {
        self.fam.plan_peer(peer, |subnet, gw| {
            let route = self.family_route(nl, subnet, gw)?;
            Ok((
                PeerPath::Direct,
                PeerObjects {
                    routes: vec![route],
                    ..Default::default()
                },
            ))
        })
    }

    fn owned_links(&self) -> Vec<u32> {
        Vec::new()
    }

    fn device_names(&self) -> Vec<String> {
        Vec::new()
    }
}
