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
//! - IPv6 (`EnableIPv6`, flannel's dual-stack and IPv6-only): a second device
//!   `flannel-v6.<VNI>` with `local <PublicIPv6>`, address `<IPv6 subnet>::/128`, MTU =
//!   underlay MTU − 70 (flannel subtracts 50 here too, which drops full-size packets over an
//!   IPv6 underlay), its MAC in `BackendV6Data`, `accept_ra` 0 (as flannel); per peer the same
//!   three objects from the lease's IPv6 half (neighbour `<peer IPv6 subnet>::`, FDB dst
//!   `<peer PublicIPv6>`, onlink route, metric 1024 as the kernel reports it). The pods' MTU is the smaller device's. Each
//!   family of a peer is planned on its own: one that cannot be served (no public address of
//!   that family, no VtepMAC) marks the peer skipped without taking the other family down.
//!
//! Invariants: exactly one neighbour, one FDB entry and one route per tunnelled peer and
//! family, nothing else (permanent) on the devices. The VtepMAC is the one in this node's lease if etcd still has it (after a
//! restart, a reboot, or when taking a node over from flanneld), else one derived from the public
//! IP and the VNI — so it stays the same whether or not the kernel kept the device (flannel
//! #1795: a MAC that changes leaves stale entries on every peer); a device whose MAC was changed
//! behind our back gets it set back. A device with other attributes (VNI, port, local address, underlay
//! device) is not ours to bend: it is deleted and recreated, and the next full pass re-adds every
//! peer (flannel recreates the device but forgets its peers).

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::value::RawValue;

use super::host_gw::peer_route;
use super::{
    Backend, BackendError, ExternalInterface, Families, PeerObjects, PeerPath, PeerPlan,
    Registration,
};
use crate::config::VxlanOptions;
use crate::kernel::Mac;
use crate::kernel::netlink::{
    Fdb, LinkChange, Neighbour, Netlink, NewLink, NewLinkKind, Vxlan as VxlanAttrs,
};
use crate::kernel::sysctl;
use crate::lease::Lease;

/// Bytes VXLAN adds over an IPv4 underlay: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const OVERHEAD_V4: u32 = 50;
/// Over an IPv6 underlay the outer header is 40 bytes: 70 in all (flannel subtracts 50 regardless).
pub const OVERHEAD_V6: u32 = 70;

/// One VXLAN device: `flannel.<VNI>` over the IPv4 underlay or `flannel-v6.<VNI>` over the
/// IPv6 one.
struct Vtep {
    name: String,
    /// This node's public address of the device's family.
    local: IpAddr,
    mac: Mac,
    mtu: u32,
    /// Whether the public address is not the interface's own (NAT).
    nat: bool,
    index: Option<u32>,
}

pub struct Vxlan {
    opts: VxlanOptions,
    fam: Families,
    ext: ExternalInterface,
    v4: Option<Vtep>,
    v6: Option<Vtep>,
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

/// The VtepMAC in `BackendData` or `BackendV6Data` (field names matched case-insensitively, as
/// Go does).
fn vtep_mac_in(data: Option<&RawValue>) -> Option<Mac> {
    let data: serde_json::Value = serde_json::from_str(data?.get()).ok()?;
    crate::util::json::get_ci(data.as_object()?, "VtepMAC")?
        .as_str()?
        .parse()
        .ok()
}

/// The VtepMAC a lease publishes for one family's device.
fn vtep_mac(lease: &Lease, v6: bool) -> Option<Mac> {
    if v6 {
        vtep_mac_in(lease.attrs.backend_v6_data.as_deref())
    } else {
        vtep_mac_in(lease.attrs.backend_data.as_deref())
    }
}

impl Vtep {
    fn new(
        opts: &VxlanOptions,
        ext: &ExternalInterface,
        previous: Option<&Lease>,
        v6: bool,
    ) -> Result<Vtep, BackendError> {
        let (family, local, iface, overhead, name) = if v6 {
            (
                "IPv6",
                ext.ext_addr6.map(IpAddr::V6),
                ext.iface_addr6.map(IpAddr::V6),
                OVERHEAD_V6,
                crate::owned::vxlan_v6_device(opts.vni),
            )
        } else {
            (
                "IPv4",
                ext.ext_addr.map(IpAddr::V4),
                ext.iface_addr.map(IpAddr::V4),
                OVERHEAD_V4,
                crate::owned::vxlan_device(opts.vni),
            )
        };
        let local = local.ok_or_else(|| {
            BackendError::Invalid(format!(
                "vxlan needs an {family} public address; {} has none",
                ext.name
            ))
        })?;
        let underlay = opts.mtu.unwrap_or(ext.mtu);
        let mtu = underlay
            .checked_sub(overhead)
            .filter(|m| *m >= if v6 { 1280 } else { 68 })
            .ok_or_else(|| {
                BackendError::Invalid(format!(
                    "underlay MTU {underlay} is too small for VXLAN over {family}"
                ))
            })?;
        Ok(Vtep {
            name,
            // The MAC peers already know, if this node had a lease; else a stable derived one.
            mac: previous
                .and_then(|l| vtep_mac(l, v6))
                .unwrap_or_else(|| derived_mac(local, opts.vni)),
            local,
            mtu,
            nat: Some(local) != iface,
            index: None,
        })
    }

    fn wanted(&self, opts: &VxlanOptions, ext: &ExternalInterface) -> VxlanAttrs {
        VxlanAttrs {
            vni: opts.vni,
            port: opts.port,
            local: Some(self.local),
            dev: Some(ext.index),
            learning: opts.learning,
            gbp: opts.gbp,
        }
    }

    /// Creates the device if missing, recreates it if its attributes differ, fixes MAC and MTU.
    fn ensure(
        &mut self,
        nl: &mut Netlink,
        opts: &VxlanOptions,
        ext: &ExternalInterface,
    ) -> Result<u32, BackendError> {
        let wanted = self.wanted(opts, ext);
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
        checksum_workaround(&self.name, self.nat);
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

    /// flannel's `BackendData`/`BackendV6Data` for this device.
    fn data(&self, vni: u32) -> String {
        serde_json::json!({"VNI": vni, "VtepMAC": self.mac.to_string()}).to_string()
    }

    fn ok(
        &self,
        nl: &mut Netlink,
        opts: &VxlanOptions,
        ext: &ExternalInterface,
    ) -> Result<bool, BackendError> {
        let Some(l) = nl.link(&self.name)? else {
            return Ok(false);
        };
        Ok(Some(l.index) == self.index
            && l.up
            && l.mtu == self.mtu
            && l.mac == Some(self.mac)
            && l.kind.as_deref() == Some("vxlan")
            && l.vxlan.as_ref() == Some(&self.wanted(opts, ext)))
    }

    /// The tunnelled objects for one peer subnet: neighbour, FDB entry, onlink route.
    fn tunnel(&self, subnet: IpNet, public: IpAddr, mac: Mac) -> Result<PeerObjects, String> {
        let index = self
            .index
            .ok_or_else(|| format!("device {} does not exist yet", self.name))?;
        let gw = subnet.network();
        Ok(PeerObjects {
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
            routes: vec![peer_route(subnet, gw, index, true)],
        })
    }
}

fn checksum_workaround(name: &str, nat: bool) {
    if !crate::kernel::ethtool::vxlan_checksum_offload_unsafe(nat) {
        return;
    }
    match crate::kernel::ethtool::feature(name, "tx-checksum-ip-generic") {
        Ok(Some(true)) => {
            match crate::kernel::ethtool::set_feature(name, "tx-checksum-ip-generic", false) {
                Ok(()) => tracing::info!(
                    device = %name,
                    nat,
                    "turned off tx-checksum-ip-generic: this kernel or a NAT'ed public address corrupts VXLAN checksums with it on"
                ),
                Err(e) => {
                    tracing::warn!(device = %name, "could not turn off tx-checksum-ip-generic: {e}")
                }
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(device = %name, "could not read offload features: {e}"),
    }
}

impl Vxlan {
    pub fn new(
        opts: VxlanOptions,
        fam: Families,
        ext: ExternalInterface,
        previous: Option<&Lease>,
    ) -> Result<Vxlan, BackendError> {
        let v4 = if fam.v4 {
            Some(Vtep::new(&opts, &ext, previous, false)?)
        } else {
            None
        };
        let v6 = if fam.v6 {
            Some(Vtep::new(&opts, &ext, previous, true)?)
        } else {
            None
        };
        Ok(Vxlan {
            opts,
            fam,
            ext,
            v4,
            v6,
        })
    }

    fn vteps(&self) -> impl Iterator<Item = &Vtep> {
        self.v4.iter().chain(self.v6.iter())
    }

    fn ensure_devices(&mut self, nl: &mut Netlink) -> Result<(), BackendError> {
        for v in self.v4.iter_mut().chain(self.v6.iter_mut()) {
            v.ensure(nl, &self.opts, &self.ext)?;
        }
        Ok(())
    }

    /// One family of a peer: a direct route (DirectRouting, same L2) or the tunnel's objects.
    fn plan_family(
        &self,
        nl: &mut Netlink,
        peer: &Lease,
        subnet: IpNet,
        public: Option<IpAddr>,
    ) -> Result<(PeerPath, PeerObjects), String> {
        let v6 = subnet.addr().is_ipv6();
        let family = if v6 { "IPv6" } else { "IPv4" };
        let public = public.ok_or_else(|| {
            format!("lease has an {family} subnet but no public {family} address")
        })?;
        if self.opts.direct_routing {
            match super::on_link(nl, &self.ext, public) {
                Ok(true) => {
                    let objects = PeerObjects {
                        routes: vec![peer_route(subnet, public, self.ext.index, false)],
                        ..Default::default()
                    };
                    return Ok((PeerPath::Direct, objects));
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(peer = %public, "route lookup failed, using the tunnel: {e}")
                }
            }
        }
        let vtep = if v6 { &self.v6 } else { &self.v4 };
        let vtep = vtep
            .as_ref()
            .ok_or_else(|| format!("{family} is not enabled"))?;
        let mac = vtep_mac(peer, v6).ok_or_else(|| {
            let field = if v6 { "BackendV6Data" } else { "BackendData" };
            format!("lease has no valid VtepMAC in {field}")
        })?;
        Ok((PeerPath::Tunnel, vtep.tunnel(subnet, public, mac)?))
    }
}

impl Backend for Vxlan {
    fn type_name(&self) -> &'static str {
        "vxlan"
    }

    fn prepare(&mut self, nl: &mut Netlink) -> Result<Registration, BackendError> {
        self.ensure_devices(nl)?;
        let vni = self.opts.vni;
        let overhead = if self.v6.is_some() {
            OVERHEAD_V6
        } else {
            OVERHEAD_V4
        };
        Ok(Registration {
            backend_type: "vxlan",
            backend_data: self.v4.as_ref().map(|v| v.data(vni)),
            backend_v6_data: self.v6.as_ref().map(|v| v.data(vni)),
            // One MTU for the pods: the smaller device's (the IPv6 underlay costs 20 bytes more).
            mtu: self
                .vteps()
                .map(|v| v.mtu)
                .min()
                .expect("a family is enabled"),
            overhead,
            tunnel_port: Some(self.opts.port),
            tunnel_device: self.vteps().next().map(|v| v.name.clone()),
        })
    }

    fn ensure_local(&mut self, nl: &mut Netlink, own: &Lease) -> Result<(), BackendError> {
        self.ensure_devices(nl)?;
        let halves = [
            (self.v4.as_ref(), own.key.v4.map(IpNet::V4), "IPv4"),
            (self.v6.as_ref(), own.key.v6.map(IpNet::V6), "IPv6"),
        ];
        for (vtep, subnet, family) in halves {
            let Some(vtep) = vtep else { continue };
            let subnet = subnet.ok_or_else(|| {
                BackendError::Invalid(format!("vxlan over {family} needs an {family} lease"))
            })?;
            let index = vtep.index.expect("ensured above");
            if subnet.addr().is_ipv6() {
                // As flannel: router advertisements arriving through the tunnel configure nothing.
                sysctl::set_conf6(&vtep.name, "accept_ra", "0")?;
            }
            super::own_address_up(nl, &vtep.name, index, subnet, None)?;
        }
        Ok(())
    }

    /// Each family the lease and this node share, planned on its own (see
    /// `Families::plan_peer`).
    fn plan_peer(&mut self, nl: &mut Netlink, peer: &Lease) -> PeerPlan {
        self.fam.plan_peer(peer, |subnet, public| {
            self.plan_family(nl, peer, subnet, public)
        })
    }

    fn owned_links(&self) -> Vec<u32> {
        self.vteps().filter_map(|v| v.index).collect()
    }

    fn device_names(&self) -> Vec<String> {
        self.vteps().map(|v| v.name.clone()).collect()
    }

    fn device_ok(&mut self, nl: &mut Netlink) -> Result<bool, BackendError> {
        for v in self.vteps() {
            if !v.ok(nl, &self.opts, &self.ext)? {
                return Ok(false);
            }
        }
        Ok(true)
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
