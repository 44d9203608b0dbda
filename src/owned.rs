//! What podnet owns in the kernel, defined once: the reconciler finds its objects by these
//! marks, `podnetctl teardown` removes exactly them, and `doctor` looks at them.
//!
//! - Routes carry protocol `RTPROT_PODNET` (86): every route with it is podnet's, in any table;
//!   no other route is ever changed or deleted.
//! - Devices: the VXLAN device `flannel.<VNI>` (and `flannel-v6.<VNI>` for IPv6 underlays) and
//!   the udp backend's TUN device `flannel0`, the wireguard backend's `flannel-wg` — flannel's names, so a node moves between flanneld
//!   and podnetd without renaming. Every permanent neighbour and FDB entry on these devices is
//!   podnet's.
//! - nftables: the table `inet podnet` (masquerade, forward, tunnel guard) written by podnetd,
//!   `inet podnet-cni` (the pods' masquerade when the plugin does it) written by the plugin, and
//!   `inet podnet-policy` (NetworkPolicy) written by podnetd when policy is enabled.

/// Route protocol number marking podnet's routes (`ip route show proto 86`).
pub const RTPROT_PODNET: u8 = 86;

/// The udp backend's TUN device (flannel's name).
pub const UDP_DEVICE: &str = "flannel0";

/// The wireguard backend's device (flannel's name): kind `wireguard` with the kernel engine, a
/// TUN device with the userspace one.
pub const WG_DEVICE: &str = "flannel-wg";

/// nftables family of podnet's tables.
pub const NFT_FAMILY: &str = "inet";
/// podnetd's table.
pub const NFT_TABLE: &str = "podnet";
/// The CNI plugin's masquerade table.
pub const NFT_POD_MASQ_TABLE: &str = "podnet-cni";
/// podnetd's network policy table (only when policy is enabled).
pub const NFT_POLICY_TABLE: &str = "podnet-policy";

/// The VXLAN device for a VNI over an IPv4 underlay (flannel's name).
pub fn vxlan_device(vni: u32) -> String {
    format!("flannel.{vni}")
}

/// The VXLAN device for a VNI over an IPv6 underlay (flannel's name).
pub fn vxlan_v6_device(vni: u32) -> String {
    format!("flannel-v6.{vni}")
}

/// Whether a link of this name and kind (`ip -d link` "vxlan", "tun") is one of podnet's devices.
pub fn is_podnet_device(name: &str, kind: Option<&str>) -> bool {
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    match kind {
        Some("vxlan") => numbered("flannel.") || numbered("flannel-v6."),
        Some("tun") => name == UDP_DEVICE || name == WG_DEVICE,
        Some("wireguard") => name == WG_DEVICE,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_flannels() {
        assert_eq!(vxlan_device(1), "flannel.1");
        assert_eq!(vxlan_v6_device(4096), "flannel-v6.4096");
        assert!(is_podnet_device("flannel.1", Some("vxlan")));
        assert!(is_podnet_device("flannel-v6.7", Some("vxlan")));
        assert!(is_podnet_device("flannel0", Some("tun")));
        assert!(!is_podnet_device("flannel.1", Some("bridge")));
        assert!(!is_podnet_device("flannel.x", Some("vxlan")));
        assert!(!is_podnet_device("vxlan0", Some("vxlan")));
        assert!(!is_podnet_device("flannel0", None));
        assert!(is_podnet_device("flannel-wg", Some("wireguard")));
        assert!(is_podnet_device("flannel-wg", Some("tun")));
        assert!(!is_podnet_device("wg0", Some("wireguard")));
    }
}
