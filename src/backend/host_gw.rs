//! host-gw: plain routes, for nodes that share one L2 segment.
//!
//! Kernel objects: per peer exactly one route, `<peer subnet> via <peer public IP> dev <ext
//! iface> proto 86`. No devices, no encapsulation; the pod MTU is the interface's.
//!
//! Invariants: a peer the kernel would reach through a gateway (another segment) is not on our
//! L2 and cannot be served — it is skipped, logged once, and counted, rather than given a route
//! that would silently blackhole. Behind NAT (public IP differs from the interface's address)
//! host-gw cannot work at all, so it refuses to start.

use std::net::IpAddr;

use super::{
    Backend, BackendError, ExternalInterface, PeerObjects, PeerPath, PeerPlan, Registration,
};
use crate::kernel::netlink::{Netlink, Route};
use crate::lease::Lease;
use crate::owned::RTPROT_PODNET;

pub struct HostGw {
    ext: ExternalInterface,
}

impl HostGw {
    pub fn new(ext: ExternalInterface) -> Result<HostGw, BackendError> {
        if ext.ext_addr != ext.iface_addr {
            return Err(BackendError::Invalid(format!(
                "host-gw needs the public IP to be the interface's own address (public {}, {} has {}); \
                 behind NAT use vxlan",
                ext.ext_addr.map(|a| a.to_string()).unwrap_or_default(),
                ext.name,
                ext.iface_addr
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "none".into())
            )));
        }
        Ok(HostGw { ext })
    }
}

impl Backend for HostGw {
    fn type_name(&self) -> &'static str {
        "host-gw"
    }

    fn prepare(&mut self, _nl: &mut Netlink) -> Result<Registration, BackendError> {
        Ok(Registration {
            backend_type: "host-gw",
            backend_data: None,
            mtu: self.ext.mtu,
            overhead: 0,
            tunnel_port: None,
            tunnel_device: None,
        })
    }

    fn ensure_local(&mut self, _nl: &mut Netlink, _own: &Lease) -> Result<(), BackendError> {
        Ok(())
    }

    fn plan_peer(&mut self, nl: &mut Netlink, peer: &Lease) -> PeerPlan {
        let Some(subnet) = peer.key.v4 else {
            return PeerPlan {
                path: PeerPath::Skipped("lease has no IPv4 subnet".into()),
                objects: PeerObjects::default(),
            };
        };
        let gw = IpAddr::V4(peer.attrs.public_ip);
        match super::on_link(nl, &self.ext, gw) {
            Ok(true) => {
                let mut r = Route::unicast(subnet.into(), RTPROT_PODNET);
                r.gateway = Some(gw);
                r.oif = Some(self.ext.index);
                PeerPlan {
                    path: PeerPath::Direct,
                    objects: PeerObjects {
                        routes: vec![r],
                        ..Default::default()
                    },
                }
            }
            Ok(false) => PeerPlan {
                path: PeerPath::Skipped(format!(
                    "host-gw needs every node on one L2 segment, but {gw} is not directly reachable on {}; \
                     use vxlan (with DirectRouting for same-segment peers)",
                    self.ext.name
                )),
                objects: PeerObjects::default(),
            },
            Err(e) => PeerPlan {
                path: PeerPath::Skipped(format!("cannot tell how {gw} is reached: {e}")),
                objects: PeerObjects::default(),
            },
        }
    }

    fn owned_links(&self) -> Vec<u32> {
        Vec::new()
    }

    fn device_names(&self) -> Vec<String> {
        Vec::new()
    }
}
