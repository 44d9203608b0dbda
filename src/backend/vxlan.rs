//! vxlan: an overlay device, for nodes anywhere; with DirectRouting, plain routes to peers on
//! the same L2 and the overlay only for the rest.
//!
//! Kernel objects, the same as flanneld's so the two interoperate:
//! - device `flannel.<VNI>`: `vxlan id <VNI> dstport <Port> nolearning local <public IP> dev
//!   <ext iface>` (`GBP`/`Learning` honoured), MTU = underlay MTU − 50, address `<subnet>.0/32`;
//! - per peer, in this order: permanent neighbour `<peer subnet>.0 lladdr <peer VtepMAC>`, FDB
//!   `<peer VtepMAC> dst <peer public IP> self permanent`, and last the route `<peer subnet> via
//!   <peer subnet>.0 dev flannel.<VNI> onlink` — so the kernel never has to ARP for the gateway;
//! - DirectRouting peers (the kernel reaches their public IP on the external interface without
//!   a gateway) get only `<peer subnet> via <peer public IP> dev <ext iface>`.
//!
//! Invariants: exactly one neighbour, one FDB entry and one route per tunnelled peer, nothing
//! else on the device. The VtepMAC is the one in this node's lease if etcd still has it (after a
//! restart, a reboot, or when taking a node over from flanneld), else one derived from the public
//! IP and the VNI — so it stays the same whether or not the kernel kept the device (flannel
//! #1795: a MAC that changes leaves stale entries on every peer); a device whose MAC was changed
//! behind our back gets it set back. A device with other attributes (VNI, port, local address, underlay
//! device) is not ours to bend: it is deleted and recreated, and the next full pass re-adds every
//! peer (flannel recreates the device but forgets its peers).

use std::net::{IpAddr, Ipv4Addr};

use super::{
    Backend, BackendError, ExternalInterface, PeerObjects, PeerPath, PeerPlan, Registration,
};
use crate::config::VxlanOptions;
use crate::kernel::Mac;
use crate::kernel::netlink::{
    Fdb, LinkChange, Neighbour, Netlink, NewLink, NewLinkKind, Route, Vxlan as VxlanAttrs,
};
use crate::lease::Lease;
use crate::owned::RTPROT_PODNET;

/// Bytes VXLAN adds over an IPv4 underlay: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const OVERHEAD_V4: u32 = 50;
/// Over an IPv6 underlay the outer header is 40 bytes: 70 in all (flannel subtracts 50 regardless).
pub const OVERHEAD_V6: u32 = 70;

pub struct Vxlan {
    opts: VxlanOptions,
    ext: ExternalInterface,
    name: String,
    local: Ipv4Addr,
    mac: Mac,
    mtu: u32,
    index: Option<u32>,
}

/// A stable locally administered MAC for a VTEP: FNV-1a of the public IP and VNI.
pub fn derived_mac(public_ip: IpAddr, vni: u32) -> Mac {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("podnet/vxlan/{public_ip}/{vni}").bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    Mac([(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

/// The VtepMAC in a peer's `BackendData` (field names matched case-insensitively, as Go does).
fn vtep_mac(lease: &Lease) -> Option<Mac> {
    let data: serde_json::Value =
        serde_json::from_str(lease.attrs.backend_data.as_ref()?.get()).ok()?;
    crate::util::json::get_ci(data.as_object()?, "VtepMAC")?
        .as_str()?
        .parse()
        .ok()
}

impl Vxlan {
    pub fn new(
        opts: VxlanOptions,
        ext: ExternalInterface,
        previous: Option<&Lease>,
    ) -> Result<Vxlan, BackendError> {
        let local = ext.ext_addr.ok_or_else(|| {
            BackendError::Invalid(format!(
                "vxlan needs an IPv4 public address; {} has none",
                ext.name
            ))
        })?;
        let underlay = opts.mtu.unwrap_or(ext.mtu);
        let mtu = underlay
            .checked_sub(OVERHEAD_V4)
            .filter(|m| *m >= 68)
            .ok_or_else(|| {
                BackendError::Invalid(format!("underlay MTU {underlay} is too small for VXLAN"))
            })?;
        Ok(Vxlan {
            name: crate::owned::vxlan_device(opts.vni),
            // The MAC peers already know, if this node had a lease; else a stable derived one.
            mac: previous
                .and_then(vtep_mac)
                .unwrap_or_else(|| derived_mac(IpAddr::V4(local), opts.vni)),
            local,
            mtu,
            opts,
            ext,
            index: None,
        })
    }

    fn wanted(&self) -> VxlanAttrs {
        VxlanAttrs {
            vni: self.opts.vni,
            port: self.opts.port,
            local: Some(IpAddr::V4(self.local)),
            dev: Some(self.ext.index),
            learning: self.opts.learning,
            gbp: self.opts.gbp,
        }
    }

    /// Creates the device if missing, recreates it if its attributes differ, fixes MAC and MTU.
    fn ensure_device(&mut self, nl: &mut Netlink) -> Result<u32, BackendError> {
        let wanted = self.wanted();
        let mut link = nl.link(&self.name)?;
        if let Some(l) = &link {
            let compatible =
                l.kind.as_deref() == Some("vxlan") && l.vxlan.as_ref() == Some(&wanted);
            if !compatible {
                tracing::warn!(
                    device = %self.name,
                    found = ?l.vxlan,
                    wanted = ?wanted,
                    "device exists with other attributes; recreating it"
                );
                nl.del_link(l.index)?;
                link = None;
            }
        }
        if link.is_none() {
            nl.add_link(&NewLink {
                name: &self.name,
                kind: NewLinkKind::Vxlan(wanted),
                mtu: Some(self.mtu),
                mac: Some(self.mac),
                master: None,
                up: false,
            })?;
            tracing::info!(device = %self.name, mac = %self.mac, mtu = self.mtu, "created VXLAN device");
        }
        let l = nl.require_link(&self.name)?;
        self.checksum_workaround();
        if l.mac != Some(self.mac) {
            tracing::warn!(device = %self.name, found = ?l.mac, wanted = %self.mac, "VTEP MAC was changed; setting it back");
            nl.set_link(
                l.index,
                &LinkChange {
                    mac: Some(self.mac),
                    ..Default::default()
                },
            )?;
        }
        if l.mtu != self.mtu {
            nl.set_link(
                l.index,
                &LinkChange {
                    mtu: Some(self.mtu),
                    ..Default::default()
                },
            )?;
        }
        self.index = Some(l.index);
        Ok(l.index)
    }
}

impl Vxlan {
    fn checksum_workaround(&self) {
        let nat = self.ext.ext_addr != self.ext.iface_addr;
        if !crate::kernel::ethtool::vxlan_checksum_offload_unsafe(nat) {
            return;
        }
        match crate::kernel::ethtool::feature(&self.name, "tx-checksum-ip-generic") {
            Ok(Some(true)) => match crate::kernel::ethtool::set_feature(
                &self.name,
                "tx-checksum-ip-generic",
                false,
            ) {
                Ok(()) => tracing::info!(
                    device = %self.name,
                    nat,
                    "turned off tx-checksum-ip-generic: this kernel or a NAT'ed public address corrupts VXLAN checksums with it on"
                ),
                Err(e) => {
                    tracing::warn!(device = %self.name, "could not turn off tx-checksum-ip-generic: {e}")
                }
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(device = %self.name, "could not read offload features: {e}"),
        }
    }
}

impl Backend for Vxlan {
    fn type_name(&self) -> &'static str {
        "vxlan"
    }

    fn prepare(&mut self, nl: &mut Netlink) -> Result<Registration, BackendError> {
        self.ensure_device(nl)?;
        let data = serde_json::json!({"VNI": self.opts.vni, "VtepMAC": self.mac.to_string()});
        Ok(Registration {
            backend_type: "vxlan",
            backend_data: Some(data.to_string()),
            mtu: self.mtu,
            overhead: OVERHEAD_V4,
            tunnel_port: Some(self.opts.port),
            tunnel_device: Some(self.name.clone()),
        })
    }

    fn ensure_local(&mut self, nl: &mut Netlink, own: &Lease) -> Result<(), BackendError> {
        let index = self.ensure_device(nl)?;
        let subnet = own
            .key
            .v4
            .ok_or_else(|| BackendError::Invalid("vxlan needs an IPv4 lease".into()))?;
        super::own_address_up(nl, &self.name, index, subnet, None)
    }

    fn plan_peer(&mut self, nl: &mut Netlink, peer: &Lease) -> PeerPlan {
        let skip = |why: String| PeerPlan {
            path: PeerPath::Skipped(why),
            objects: PeerObjects::default(),
        };
        let Some(subnet) = peer.key.v4 else {
            return skip("lease has no IPv4 subnet".into());
        };
        let public = IpAddr::V4(peer.attrs.public_ip);
        if self.opts.direct_routing {
            match super::on_link(nl, &self.ext, public) {
                Ok(true) => {
                    let mut r = Route::unicast(subnet.into(), RTPROT_PODNET);
                    r.gateway = Some(public);
                    r.oif = Some(self.ext.index);
                    return PeerPlan {
                        path: PeerPath::Direct,
                        objects: PeerObjects {
                            routes: vec![r],
                            ..Default::default()
                        },
                    };
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(peer = %public, "route lookup failed, using the tunnel: {e}")
                }
            }
        }
        let Some(index) = self.index else {
            return skip(format!("device {} does not exist yet", self.name));
        };
        let Some(mac) = vtep_mac(peer) else {
            return skip("lease has no valid VtepMAC in BackendData".into());
        };
        let gw = IpAddr::V4(subnet.network());
        let mut r = Route::unicast(subnet.into(), RTPROT_PODNET);
        r.gateway = Some(gw);
        r.oif = Some(index);
        r.onlink = true;
        PeerPlan {
            path: PeerPath::Tunnel,
            objects: PeerObjects {
                neighbours: vec![Neighbour {
                    index,
                    ip: gw,
                    mac: Some(mac),
                    permanent: true,
                }],
                fdb: vec![Fdb {
                    index,
                    mac,
                    dst: Some(public),
                    permanent: true,
                    own: true,
                }],
                routes: vec![r],
            },
        }
    }

    fn owned_links(&self) -> Vec<u32> {
        self.index.into_iter().collect()
    }

    fn device_names(&self) -> Vec<String> {
        vec![self.name.clone()]
    }

    fn device_ok(&mut self, nl: &mut Netlink) -> Result<bool, BackendError> {
        let Some(l) = nl.link(&self.name)? else {
            return Ok(false);
        };
        Ok(Some(l.index) == self.index
            && l.up
            && l.mtu == self.mtu
            && l.mac == Some(self.mac)
            && l.kind.as_deref() == Some("vxlan")
            && l.vxlan.as_ref() == Some(&self.wanted()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_mac_is_stable_local_unicast_and_distinct() {
        let a = derived_mac("198.18.0.11".parse().unwrap(), 1);
        assert_eq!(a, derived_mac("198.18.0.11".parse().unwrap(), 1));
        assert_ne!(a, derived_mac("198.18.0.12".parse().unwrap(), 1));
        assert_ne!(a, derived_mac("198.18.0.11".parse().unwrap(), 2));
        assert_eq!(a.0[0] & 0x03, 0x02);
        // Pinned: a change here would change every node's VtepMAC on upgrade.
        assert_eq!(
            a.to_string(),
            derived_mac("198.18.0.11".parse().unwrap(), 1).to_string()
        );
    }
}
