//! The rules podnet wants, rendered as one nftables table, `inet podnet`.
//!
//! Masquerade, with the semantics of flanneld's iptables mode (its nftables mode differs in the
//! fourth rule; we follow iptables, which is what clusters have run for years):
//! 1. packets kube-proxy marked (0x4000) are left to kube-proxy, which masquerades them itself;
//! 2. pod → cluster network: source kept;
//! 3. cluster network → our pods: source kept;
//! 4. outside → our pods: source kept;
//! 5. cluster network → anywhere else but multicast: masquerade;
//! 6. outside → other nodes' pods (routed through us): masquerade.
//!
//! With `EnableIPv6` rules 2–6 are repeated for the IPv6 network and pod subnet (`ip6`, the
//! multicast exception `ff00::/8`), as flanneld adds them with `ip6tables`; an IPv6-only
//! network has only those.
//!
//! Forward: accept to and from the cluster network(s) (flannel's FLANNEL-FWD). In nftables a
//! packet dropped by any other table's chain stays dropped, so this helps only against
//! podnet-unaware defaults that accept; a foreign DROP policy is reported by `podnetctl doctor`.
//!
//! Tunnel guard (podnet's own): the tunnel's UDP port accepts packets only from the public
//! addresses of current peers, a set changed one element at a time as leases come and go
//! (with `EnableIPv6` a second set, `tunnel-peers-v6`, holds their IPv6 addresses; an
//! IPv6-only network has only that one).
//!
//! The whole table is replaced in one transaction, so there is never a moment with half the
//! rules, and rules of an earlier config disappear with it. Nothing outside this table is
//! ever changed.

pub mod foreign;

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::kernel::nft;
use crate::owned::{NFT_FAMILY as FAMILY, NFT_TABLE as TABLE};
pub const GUARD_SET: &str = "tunnel-peers";
/// The tunnel guard's set of IPv6 peers (only with `EnableIPv6`).
pub const GUARD_SET_V6: &str = "tunnel-peers-v6";
/// kube-proxy's masquerade mark.
pub const KUBE_PROXY_MARK: u32 = 0x4000;

/// The tunnel guard's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub port: u16,
}

/// One family's cluster network and this node's pod subnet in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nets<N> {
    pub network: N,
    pub pod_subnet: N,
}

/// What to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    /// The IPv4 rules (absent in an IPv6-only network).
    pub v4: Option<Nets<Ipv4Net>>,
    /// The IPv6 rules, flannel's `ip6tables` ones (`EnableIPv6`).
    pub v6: Option<Nets<Ipv6Net>>,
    pub masquerade: bool,
    pub fully_random: bool,
    pub forward: bool,
    pub guard: Option<Guard>,
}

impl FirewallSpec {
    /// Whether the table has anything in it.
    pub fn is_empty(&self) -> bool {
        !self.masquerade && !self.forward && self.guard.is_none()
    }

    /// The table's contents (what `nft -s list table inet podnet` shows, modulo nft's own layout).
    pub fn render_table(&self, peers: &[IpAddr]) -> String {
        let rnd = if self.fully_random {
            " fully-random"
        } else {
            ""
        };
        let mut t = format!("table {FAMILY} {TABLE} {{\n");
        if let Some(g) = &self.guard {
            self.render_guard(&mut t, g, peers);
        }
        let families = || {
            let v4 = self.v4.map(|n| {
                (
                    "ip",
                    n.network.to_string(),
                    n.pod_subnet.to_string(),
                    "224.0.0.0/4",
                )
            });
            let v6 = self.v6.map(|n| {
                (
                    "ip6",
                    n.network.to_string(),
                    n.pod_subnet.to_string(),
                    "ff00::/8",
                )
            });
            v4.into_iter().chain(v6)
        };
        if self.masquerade {
            let _ = write!(
                t,
                "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
                 \t\tmeta mark & 0x{KUBE_PROXY_MARK:08x} == 0x{KUBE_PROXY_MARK:08x} return comment \"kube-proxy masquerades what it marked\"\n"
            );
            for (ip, net, pod, mcast) in families() {
                let _ = write!(
                    t,
                    "\t\t{ip} saddr {pod} {ip} daddr {net} return comment \"pod to cluster: keep the pod address\"\n\
                     \t\t{ip} saddr {net} {ip} daddr {pod} return comment \"cluster to local pod\"\n\
                     \t\t{ip} saddr != {net} {ip} daddr {pod} return comment \"outside to local pod\"\n\
                     \t\t{ip} saddr {net} {ip} daddr != {mcast} masquerade{rnd} comment \"pod to outside\"\n\
                     \t\t{ip} saddr != {net} {ip} daddr {net} masquerade{rnd} comment \"outside to remote pod\"\n"
                );
            }
            t.push_str("\t}\n\n");
        }
        if self.forward {
            t.push_str(
                "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n",
            );
            for (ip, net, _, _) in families() {
                let _ = write!(
                    t,
                    "\t\t{ip} saddr {net} accept\n\t\t{ip} daddr {net} accept\n"
                );
            }
            t.push_str("\t}\n\n");
        }
        while t.ends_with("\n\n") {
            t.pop();
        }
        t.push_str("}\n");
        t
    }

    /// The guard's sets (IPv4 peers unless the network is IPv6-only; IPv6 peers with
    /// `EnableIPv6`) and its chain, one drop rule per set.
    fn render_guard(&self, t: &mut String, g: &Guard, peers: &[IpAddr]) {
        let v4 = self.v4.is_some() || self.v6.is_none();
        let sets = [
            (v4, GUARD_SET, "ipv4_addr", "ip", true),
            (self.v6.is_some(), GUARD_SET_V6, "ipv6_addr", "ip6", false),
        ];
        let sets: Vec<_> = sets.into_iter().filter(|s| s.0).collect();
        for (_, name, ty, _, is_v4) in &sets {
            let _ = write!(t, "\tset {name} {{\n\t\ttype {ty}\n");
            let list: Vec<String> = peers
                .iter()
                .filter(|p| p.is_ipv4() == *is_v4)
                .map(|p| p.to_string())
                .collect();
            if !list.is_empty() {
                let _ = writeln!(t, "\t\telements = {{ {} }}", list.join(", "));
            }
            t.push_str("\t}\n\n");
        }
        t.push_str("\tchain tunnel-guard {\n\t\ttype filter hook input priority filter - 10; policy accept;\n");
        for (_, name, _, ip, _) in &sets {
            let _ = writeln!(
                t,
                "\t\tudp dport {} {ip} saddr != @{name} counter drop comment \"tunnel packets from a non-peer\"",
                g.port
            );
        }
        t.push_str("\t}\n\n");
    }

    /// One transaction that replaces the table (or removes it when nothing is wanted).
    pub fn render_apply(&self, peers: &[IpAddr]) -> String {
        // Declaring the table first makes the delete succeed whether or not it existed.
        let mut s = format!("table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n");
        if !self.is_empty() {
            s.push_str(&self.render_table(peers));
        }
        s
    }
}

fn guard_set(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        GUARD_SET
    } else {
        GUARD_SET_V6
    }
}

/// Adds one peer to the tunnel guard.
pub fn guard_add(ip: IpAddr) -> String {
    format!(
        "add element {FAMILY} {TABLE} {} {{ {ip} }}\n",
        guard_set(ip)
    )
}

/// Removes one peer from the tunnel guard.
pub fn guard_remove(ip: IpAddr) -> String {
    format!(
        "delete element {FAMILY} {TABLE} {} {{ {ip} }}\n",
        guard_set(ip)
    )
}

/// The CNI plugin's own table for `ipMasq`: pods whose traffic leaving the cluster network is
/// masqueraded by the node (flannel's default when its daemon runs without `--ip-masq`).
/// Unlike the reference bridge plugin, which excludes only the node's own subnet, traffic to
/// the rest of the cluster network keeps the pod's address.
use crate::owned::NFT_POD_MASQ_TABLE as POD_MASQ_TABLE;
pub const POD_MASQ_SET: &str = "masq-pods";

/// Declares the table (idempotently: the chain is flushed and refilled in the same
/// transaction, so concurrent ADDs never leave two copies of the rule) and adds one pod.
pub fn pod_masq_add(networks: &[Ipv4Net], pod: Ipv4Addr) -> String {
    let mut excluded: Vec<String> = networks.iter().map(|n| n.to_string()).collect();
    excluded.push("224.0.0.0/4".into());
    format!(
        "add table {FAMILY} {POD_MASQ_TABLE}
         add set {FAMILY} {POD_MASQ_TABLE} {POD_MASQ_SET} {{ type ipv4_addr; }}
         add chain {FAMILY} {POD_MASQ_TABLE} postrouting {{ type nat hook postrouting priority srcnat + 1; policy accept; }}
         flush chain {FAMILY} {POD_MASQ_TABLE} postrouting
         add rule {FAMILY} {POD_MASQ_TABLE} postrouting ip saddr @{POD_MASQ_SET} ip daddr != {{ {} }} masquerade comment \"pod ipMasq\"
         add element {FAMILY} {POD_MASQ_TABLE} {POD_MASQ_SET} {{ {pod} }}
",
        excluded.join(", ")
    )
}

/// Removes one pod from the masquerade set.
pub fn pod_masq_remove(pod: Ipv4Addr) -> String {
    format!(
        "delete element {FAMILY} {POD_MASQ_TABLE} {POD_MASQ_SET} {{ {pod} }}
"
    )
}

/// `pod_masq_add` as the nfnetlink transaction the plugin sends (the same objects, messages
/// and order as nft makes of that script, so `nft list` shows the same table).
pub fn pod_masq_add_batch(networks: &[Ipv4Net], pod: Ipv4Addr) -> nft::Transaction {
    let mut b = nft::Batch::new(nft::NFPROTO_INET, POD_MASQ_TABLE);
    b.add_table();
    let pods = b.add_set(&nft::SetSpec {
        name: POD_MASQ_SET,
        key_type: nft::TYPE_IPV4_ADDR,
        key_len: 4,
    });
    let base = nft::BaseChain {
        kind: "nat",
        hook: nft::Hook::Postrouting,
        // srcnat + 1
        priority: 101,
    };
    b.add_chain("postrouting", Some(base));
    b.flush_chain("postrouting");
    let mut excluded = networks.to_vec();
    excluded.push(MULTICAST);
    let excluded = b.anonymous_prefixes(&excluded);
    let mut rule = nft::Expr::nfproto_ipv4().to_vec();
    rule.extend([
        nft::Expr::ipv4_addr(true),
        nft::Expr::Lookup {
            set: pods.clone(),
            invert: false,
        },
        nft::Expr::ipv4_addr(false),
        nft::Expr::Lookup {
            set: excluded,
            invert: true,
        },
        nft::Expr::Masquerade {
            fully_random: false,
        },
    ]);
    b.add_rule("postrouting", &rule, Some("pod ipMasq"));
    b.add_elements(&pods, &[&pod.octets()]);
    b.finish()
}

/// `pod_masq_remove` as an nfnetlink transaction; fails with ENOENT when the pod (or the
/// table) is not there.
pub fn pod_masq_remove_batch(pod: Ipv4Addr) -> nft::Transaction {
    let mut b = nft::Batch::new(nft::NFPROTO_INET, POD_MASQ_TABLE);
    b.delete_elements(&nft::SetRef::named(POD_MASQ_SET), &[&pod.octets()]);
    b.finish()
}

const MULTICAST: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4);

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FirewallSpec {
        FirewallSpec {
            v4: Some(Nets {
                network: "10.244.0.0/16".parse().unwrap(),
                pod_subnet: "10.244.3.0/24".parse().unwrap(),
            }),
            v6: None,
            masquerade: true,
            fully_random: true,
            forward: true,
            guard: Some(Guard { port: 8472 }),
        }
    }

    #[test]
    fn golden_full_table() {
        let peers = [
            "198.18.0.12".parse().unwrap(),
            "198.18.0.13".parse().unwrap(),
        ];
        assert_eq!(
            spec().render_table(&peers),
            "table inet podnet {
\tset tunnel-peers {
\t\ttype ipv4_addr
\t\telements = { 198.18.0.12, 198.18.0.13 }
\t}

\tchain tunnel-guard {
\t\ttype filter hook input priority filter - 10; policy accept;
\t\tudp dport 8472 ip saddr != @tunnel-peers counter drop comment \"tunnel packets from a non-peer\"
\t}

\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x00004000 == 0x00004000 return comment \"kube-proxy masquerades what it marked\"
\t\tip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return comment \"pod to cluster: keep the pod address\"
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return comment \"cluster to local pod\"
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return comment \"outside to local pod\"
\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment \"pod to outside\"
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random comment \"outside to remote pod\"
\t}

\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.244.0.0/16 accept
\t\tip daddr 10.244.0.0/16 accept
\t}
}
"
        );
    }

    #[test]
    fn golden_dual_stack_and_ipv6_only() {
        let mut s = spec();
        s.guard = None;
        s.v6 = Some(Nets {
            network: "fd10:244::/56".parse().unwrap(),
            pod_subnet: "fd10:244:0:3::/64".parse().unwrap(),
        });
        let v6_rules = "\t\tip6 saddr fd10:244:0:3::/64 ip6 daddr fd10:244::/56 return comment \"pod to cluster: keep the pod address\"
\t\tip6 saddr fd10:244::/56 ip6 daddr fd10:244:0:3::/64 return comment \"cluster to local pod\"
\t\tip6 saddr != fd10:244::/56 ip6 daddr fd10:244:0:3::/64 return comment \"outside to local pod\"
\t\tip6 saddr fd10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random comment \"pod to outside\"
\t\tip6 saddr != fd10:244::/56 ip6 daddr fd10:244::/56 masquerade fully-random comment \"outside to remote pod\"
";
        let dual = s.render_table(&[]);
        assert_eq!(
            dual,
            format!(
                "table inet podnet {{
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x00004000 == 0x00004000 return comment \"kube-proxy masquerades what it marked\"
\t\tip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return comment \"pod to cluster: keep the pod address\"
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return comment \"cluster to local pod\"
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return comment \"outside to local pod\"
\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment \"pod to outside\"
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random comment \"outside to remote pod\"
{v6_rules}\t}}

\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.244.0.0/16 accept
\t\tip daddr 10.244.0.0/16 accept
\t\tip6 saddr fd10:244::/56 accept
\t\tip6 daddr fd10:244::/56 accept
\t}}
}}
"
            )
        );
        s.v4 = None;
        let only = s.render_table(&[]);
        assert!(
            !only.contains("ip saddr") && !only.contains("ip daddr"),
            "{only}"
        );
        assert!(only.contains(v6_rules), "{only}");
    }

    #[test]
    fn options_shape_the_table() {
        let mut s = spec();
        s.fully_random = false;
        s.guard = None;
        s.forward = false;
        let t = s.render_table(&[]);
        assert!(!t.contains("fully-random") && !t.contains("tunnel") && !t.contains("forward"));
        assert!(t.contains("masquerade comment"));
        s.masquerade = false;
        assert!(s.is_empty());
        assert_eq!(
            s.render_apply(&[]),
            "table inet podnet\ndelete table inet podnet\n"
        );
        assert_eq!(
            guard_add("198.18.0.9".parse().unwrap()),
            "add element inet podnet tunnel-peers { 198.18.0.9 }\n"
        );
    }
}
