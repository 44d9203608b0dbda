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
//!
//! Two renderings of the same table: `render_table` is nft's text, what `nft -s list` shows
//! (the drift check and the tests compare listings with it); `table_batch` is the nfnetlink
//! transaction podnetd sends, the objects, expressions and order nft makes of that text, so that
//! the kernel holds, and `nft` lists, exactly the same table. A change to one is a change to
//! both: the unit tests pin the messages, the integration tests the listing.

pub mod foreign;

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::kernel::nft::{self, CmpOp, Expr};
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
        if self.masquerade {
            let _ = write!(
                t,
                "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
                 \t\tmeta mark & 0x{KUBE_PROXY_MARK:08x} == 0x{KUBE_PROXY_MARK:08x} return comment \"kube-proxy masquerades what it marked\"\n"
            );
            for (proto, net, pod, mcast) in self.families() {
                let ip = nft_name(proto);
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
            for (proto, net, _, _) in self.families() {
                let ip = nft_name(proto);
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
        let sets = self.guard_sets();
        for (name, _, key_len, _) in &sets {
            let ty = if *key_len == 4 {
                "ipv4_addr"
            } else {
                "ipv6_addr"
            };
            let _ = write!(t, "\tset {name} {{\n\t\ttype {ty}\n");
            let list: Vec<String> = peers
                .iter()
                .filter(|p| p.is_ipv4() == (*key_len == 4))
                .map(|p| p.to_string())
                .collect();
            if !list.is_empty() {
                let _ = writeln!(t, "\t\telements = {{ {} }}", list.join(", "));
            }
            t.push_str("\t}\n\n");
        }
        t.push_str("\tchain tunnel-guard {\n\t\ttype filter hook input priority filter - 10; policy accept;\n");
        for (name, _, _, proto) in &sets {
            let _ = writeln!(
                t,
                "\t\tudp dport {} {} saddr != @{name} counter drop comment \"tunnel packets from a non-peer\"",
                g.port,
                nft_name(*proto)
            );
        }
        t.push_str("\t}\n\n");
    }

    /// Checks what the rules are made of: each family's pod subnet lies in its network, and a
    /// table with masquerade or forward rules has a network to write them for.
    pub fn validate(&self) -> Result<(), String> {
        fn inside<N: std::fmt::Display + Copy + Into<IpNet>>(n: &Nets<N>) -> Result<(), String> {
            let (net, pod): (IpNet, IpNet) = (n.network.into(), n.pod_subnet.into());
            if net.contains(&pod) {
                Ok(())
            } else {
                Err(format!(
                    "firewall: pod subnet {pod} is not inside the network {net}"
                ))
            }
        }
        self.v4.as_ref().map(inside).transpose()?;
        self.v6.as_ref().map(inside).transpose()?;
        if (self.masquerade || self.forward) && self.v4.is_none() && self.v6.is_none() {
            return Err("firewall: masquerade or forward rules without a network".into());
        }
        Ok(())
    }

    /// Each family's nfproto, cluster network, pod subnet and multicast range, IPv4 first.
    fn families(&self) -> Vec<(u8, IpNet, IpNet, IpNet)> {
        let v4 = self.v4.map(|n| {
            let mcast = IpNet::V4(MULTICAST);
            (
                nft::NFPROTO_IPV4,
                n.network.into(),
                n.pod_subnet.into(),
                mcast,
            )
        });
        let v6 = self.v6.map(|n| {
            let mcast = IpNet::V6(MULTICAST_V6);
            (
                nft::NFPROTO_IPV6,
                n.network.into(),
                n.pod_subnet.into(),
                mcast,
            )
        });
        v4.into_iter().chain(v6).collect()
    }

    /// The guard's sets as (name, key type, key length, nfproto), as `render_guard` has them.
    fn guard_sets(&self) -> Vec<(&'static str, u32, u32, u8)> {
        let v4 = self.v4.is_some() || self.v6.is_none();
        let sets = [
            (v4, GUARD_SET, nft::TYPE_IPV4_ADDR, 4, nft::NFPROTO_IPV4),
            (
                self.v6.is_some(),
                GUARD_SET_V6,
                nft::TYPE_IPV6_ADDR,
                16,
                nft::NFPROTO_IPV6,
            ),
        ];
        sets.into_iter()
            .filter(|s| s.0)
            .map(|(_, n, t, l, f)| (n, t, l, f))
            .collect()
    }

    /// The table as one nfnetlink transaction. With `replace` the table is deleted first, in
    /// the same transaction (declared before, so the delete succeeds whether or not it
    /// existed), and not made again when nothing is wanted; without, the objects are added to a
    /// table that must not exist yet (rules are appended). In nft's order: table, chains, sets
    /// and their elements, rules.
    pub fn table_batch(&self, peers: &[IpAddr], replace: bool) -> nft::Transaction {
        let mut b = nft::Batch::new(nft::NFPROTO_INET, TABLE);
        b.add_table();
        if replace {
            b.delete_table();
            if self.is_empty() {
                return b.finish();
            }
            b.add_table();
        }
        let base = |kind, hook, priority| {
            Some(nft::BaseChain {
                kind,
                hook,
                priority,
            })
        };
        if self.guard.is_some() {
            b.add_chain("tunnel-guard", base("filter", nft::Hook::Input, -10));
        }
        if self.masquerade {
            b.add_chain("postrouting", base("nat", nft::Hook::Postrouting, 100));
        }
        if self.forward {
            b.add_chain("forward", base("filter", nft::Hook::Forward, 0));
        }
        if let Some(g) = &self.guard {
            self.guard_batch(&mut b, g, peers);
        }
        if self.masquerade {
            self.masquerade_rules(&mut b);
        }
        if self.forward {
            for (proto, net, _, _) in self.families() {
                for source in [true, false] {
                    let mut r = Expr::nfproto(proto).to_vec();
                    r.extend(Expr::prefix(net, source, CmpOp::Eq));
                    r.push(Expr::Verdict(nft::Verdict::Accept));
                    b.add_rule("forward", &r, None);
                }
            }
        }
        b.finish()
    }

    /// The guard's sets with their elements, and its rules (chain declared by the caller).
    fn guard_batch(&self, b: &mut nft::Batch, g: &Guard, peers: &[IpAddr]) {
        let mut sets = Vec::new();
        for (name, key_type, key_len, proto) in self.guard_sets() {
            let set = b.add_set(&nft::SetSpec {
                name,
                key_type,
                key_len,
            });
            let keys: Vec<Vec<u8>> = peers
                .iter()
                .filter(|p| p.is_ipv4() == (proto == nft::NFPROTO_IPV4))
                .map(|p| key(*p))
                .collect();
            if !keys.is_empty() {
                let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
                b.add_elements(&set, &keys);
            }
            sets.push((set, proto));
        }
        for (set, proto) in sets {
            let mut r = Expr::l4proto(nft::IPPROTO_UDP).to_vec();
            r.extend(Expr::dport(g.port));
            r.extend(Expr::nfproto(proto));
            r.push(match proto {
                nft::NFPROTO_IPV4 => Expr::ipv4_addr(true),
                _ => Expr::ipv6_addr(true),
            });
            r.extend([
                Expr::Lookup { set, invert: true },
                Expr::Counter,
                Expr::Verdict(nft::Verdict::Drop),
            ]);
            b.add_rule("tunnel-guard", &r, Some("tunnel packets from a non-peer"));
        }
    }

    /// The postrouting rules, as `render_table` lists them.
    fn masquerade_rules(&self, b: &mut nft::Batch) {
        let mut r = Expr::mark_has(KUBE_PROXY_MARK).to_vec();
        r.push(Expr::Verdict(nft::Verdict::Return));
        b.add_rule(
            "postrouting",
            &r,
            Some("kube-proxy masquerades what it marked"),
        );
        let ret = Expr::Verdict(nft::Verdict::Return);
        let masq = Expr::Masquerade {
            fully_random: self.fully_random,
        };
        use CmpOp::{Eq, Neq};
        for (proto, net, pod, mcast) in self.families() {
            let rules = [
                (
                    pod,
                    Eq,
                    net,
                    Eq,
                    &ret,
                    "pod to cluster: keep the pod address",
                ),
                (net, Eq, pod, Eq, &ret, "cluster to local pod"),
                (net, Neq, pod, Eq, &ret, "outside to local pod"),
                (net, Eq, mcast, Neq, &masq, "pod to outside"),
                (net, Neq, net, Eq, &masq, "outside to remote pod"),
            ];
            for (src, src_op, dst, dst_op, action, comment) in rules {
                let mut r = Expr::nfproto(proto).to_vec();
                r.extend(Expr::prefix(src, true, src_op));
                r.extend(Expr::prefix(dst, false, dst_op));
                r.push(action.clone());
                b.add_rule("postrouting", &r, Some(comment));
            }
        }
    }
}

/// How nft names a family's header in a match (`ip saddr`, `ip6 saddr`).
fn nft_name(proto: u8) -> &'static str {
    if proto == nft::NFPROTO_IPV4 {
        "ip"
    } else {
        "ip6"
    }
}

/// An address as a set key (network byte order).
fn key(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn guard_set(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        GUARD_SET
    } else {
        GUARD_SET_V6
    }
}

/// Adds one peer to the tunnel guard (to the set of its family).
pub fn guard_add(ip: IpAddr) -> nft::Transaction {
    let mut b = nft::Batch::new(nft::NFPROTO_INET, TABLE);
    b.add_elements(&nft::SetRef::named(guard_set(ip)), &[&key(ip)]);
    b.finish()
}

/// Removes one peer from the tunnel guard (ENOENT when it is not there).
pub fn guard_remove(ip: IpAddr) -> nft::Transaction {
    let mut b = nft::Batch::new(nft::NFPROTO_INET, TABLE);
    b.delete_elements(&nft::SetRef::named(guard_set(ip)), &[&key(ip)]);
    b.finish()
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

/// The plugin's masquerade set for pods of `ip`'s family.
pub fn pod_masq_set(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => POD_MASQ_SET,
        IpAddr::V6(_) => POD_MASQ_SET_V6,
    }
}

pub const POD_MASQ_SET_V6: &str = "masq-pods-v6";

/// The plugin's table as an nfnetlink transaction, adding `pods`: for an IPv4 network the
/// objects, messages and order nft makes of `pod_masq_add`'s script (so `nft list` shows the
/// same table); for an IPv6 network (dual-stack, IPv6-only) the same again with `ip6`, a set
/// `masq-pods-v6` and `ff00::/8` in place of `224.0.0.0/4`. `networks` are the cluster's, of
/// either family; every ADD writes the rules of all of them, so concurrent ADDs agree.
pub fn pod_masq_add_batch(networks: &[IpNet], pods: &[IpAddr]) -> nft::Transaction {
    let mut b = nft::Batch::new(nft::NFPROTO_INET, POD_MASQ_TABLE);
    b.add_table();
    let families: Vec<(Vec<IpNet>, IpNet, nft::SetRef)> =
        [IpNet::V4(MULTICAST), IpNet::V6(MULTICAST_V6)]
            .into_iter()
            .filter_map(|mcast| {
                let v6 = mcast.addr().is_ipv6();
                let nets: Vec<IpNet> = networks
                    .iter()
                    .filter(|n| n.addr().is_ipv6() == v6)
                    .copied()
                    .collect();
                (!nets.is_empty()).then_some((nets, mcast))
            })
            .map(|(nets, mcast)| {
                let (key_type, key_len) = if mcast.addr().is_ipv6() {
                    (nft::TYPE_IPV6_ADDR, 16)
                } else {
                    (nft::TYPE_IPV4_ADDR, 4)
                };
                let set = b.add_set(&nft::SetSpec {
                    name: pod_masq_set(mcast.addr()),
                    key_type,
                    key_len,
                });
                (nets, mcast, set)
            })
            .collect();
    let base = nft::BaseChain {
        kind: "nat",
        hook: nft::Hook::Postrouting,
        // srcnat + 1
        priority: 101,
    };
    b.add_chain("postrouting", Some(base));
    b.flush_chain("postrouting");
    for (nets, mcast, set) in &families {
        let mut excluded = nets.clone();
        excluded.push(*mcast);
        let excluded = b.anonymous_prefixes(&excluded);
        let ip = mcast.addr();
        let family = if ip.is_ipv6() {
            nft::NFPROTO_IPV6
        } else {
            nft::NFPROTO_IPV4
        };
        let mut rule = nft::Expr::nfproto(family).to_vec();
        rule.extend([
            nft::Expr::addr(ip, true),
            nft::Expr::Lookup {
                set: set.clone(),
                invert: false,
            },
            nft::Expr::addr(ip, false),
            nft::Expr::Lookup {
                set: excluded,
                invert: true,
            },
            nft::Expr::Masquerade {
                fully_random: false,
            },
        ]);
        b.add_rule("postrouting", &rule, Some("pod ipMasq"));
    }
    for (_, mcast, set) in &families {
        let keys: Vec<Vec<u8>> = pods
            .iter()
            .filter(|ip| ip.is_ipv6() == mcast.addr().is_ipv6())
            .map(|ip| key(*ip))
            .collect();
        if !keys.is_empty() {
            let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            b.add_elements(set, &keys);
        }
    }
    b.finish()
}

/// Adds pods to the plugin's masquerade sets of their families and changes nothing else: the
/// ADD of a pod when the table is already in place (`pod_masq_in_place`). Fails with ENOENT
/// when a set is not there. Unlike `pod_masq_add_batch` it replaces no rule, so its commit
/// leaves the kernel nothing to free after it.
pub fn pod_masq_elements_batch(pods: &[IpAddr]) -> nft::Transaction {
    let mut b = nft::Batch::new(nft::NFPROTO_INET, POD_MASQ_TABLE);
    for (v6, set) in [(false, POD_MASQ_SET), (true, POD_MASQ_SET_V6)] {
        let keys: Vec<Vec<u8>> = pods
            .iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .map(|ip| key(*ip))
            .collect();
        if !keys.is_empty() {
            let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            b.add_elements(&nft::SetRef::named(set), &keys);
        }
    }
    b.finish()
}

/// Whether the plugin's table in `have` (a dump) masquerades as `pod_masq_add_batch(networks,
/// ..)` writes it: the same chain, rules and excluded networks, and the sets it declares, of
/// the same type, whatever pods they hold. Then adding a pod's element is all its ADD has to
/// do. Named sets it does not declare (`masq-pods-v6` left from dual-stack) and the sets' user
/// data (what nft wrote) do not count: the whole transaction would not change them either. Nor
/// do a set's expressions and size, which the dump's parser does not read (a `masq-pods` made
/// again by hand with a `limit` would pass; the whole transaction would not mend it either).
pub fn pod_masq_in_place(networks: &[IpNet], have: &nft::dump::Ruleset) -> bool {
    let Ok(want) = nft::dump::Ruleset::from_datagram(&pod_masq_add_batch(networks, &[]).bytes)
    else {
        return false;
    };
    let shape = |rs: &nft::dump::Ruleset| rs.shape(nft::NFPROTO_INET, POD_MASQ_TABLE);
    let (Some(mut want), Some(mut have)) = (shape(&want), shape(have)) else {
        return false;
    };
    have.sets.retain(|name, _| want.sets.contains_key(name));
    for set in want.sets.values_mut().chain(have.sets.values_mut()) {
        set.elements.clear();
        set.userdata = None;
    }
    want == have
}

/// Takes one pod out of the plugin's masquerade set of its family; fails with ENOENT when
/// the pod (or the table) is not there.
pub fn pod_masq_remove_batch(pod: IpAddr) -> nft::Transaction {
    let mut b = nft::Batch::new(nft::NFPROTO_INET, POD_MASQ_TABLE);
    b.delete_elements(&nft::SetRef::named(pod_masq_set(pod)), &[&key(pod)]);
    b.finish()
}

const MULTICAST: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4);
const MULTICAST_V6: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A vxlan node's spec with masquerade and the guard: the unit tests' usual table.
    pub(crate) fn spec() -> FirewallSpec {
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
        // Nothing wanted: the replace only deletes the table (declared first).
        assert_eq!(
            s.table_batch(&[], true).ops,
            [
                "add table (table inet podnet)",
                "delete table (table inet podnet)"
            ]
        );
        let t = guard_add("2001:2::9".parse().unwrap());
        assert_eq!(
            t.ops,
            ["add elements of set tunnel-peers-v6 (table inet podnet)"]
        );
    }

    /// The messages of a datagram, split at their lengths.
    fn split(b: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < b.len() {
            let len = u32::from_ne_bytes(b[at..at + 4].try_into().unwrap()) as usize;
            out.push(b[at..at + len].to_vec());
            at += len.next_multiple_of(4);
        }
        out
    }

    /// Compares a transaction with what nft 1.0.6 sent for the same table, captured with
    /// `strace -e trace=sendmsg -e write=3 nft -f testdata/NAME.nft` and kept one message a
    /// line: equal, but for the acknowledgement podnet asks for on the last message.
    fn assert_as_nft_sends(t: &nft::Transaction, captured: &str) {
        let want = crate::kernel::nft::dump::hex_lines(captured);
        let mut have = split(&t.bytes);
        let last = have.len() - 2;
        have[last][6] &= !4; // NLM_F_ACK
        assert_eq!(have.len(), want.len());
        for (i, (h, w)) in have.iter().zip(&want).enumerate() {
            let what = t.ops.get(i.wrapping_sub(1)).map_or("", |s| s);
            assert_eq!(h, w, "message {i}: {what}");
        }
    }

    /// The golden table above with one peer.
    #[test]
    fn the_table_transaction_is_what_nft_sends() {
        let peers = ["198.18.0.12".parse().unwrap()];
        let t = spec().table_batch(&peers, false);
        assert_as_nft_sends(&t, include_str!("testdata/podnet-v4.nft-1.0.6.hex"));
        assert_eq!(
            include_str!("testdata/podnet-v4.nft"),
            spec().render_table(&peers)
        );
        assert_eq!(t.ops.len(), 15);
        assert_eq!(
            t.ops[5],
            "add elements of set tunnel-peers (table inet podnet)"
        );
        assert_eq!(
            t.ops[6],
            "add rule to chain tunnel-guard (table inet podnet)"
        );
    }

    /// Dual-stack, with both guard sets, without fully-random.
    #[test]
    fn the_dual_stack_transaction_is_what_nft_sends() {
        let mut s = spec();
        s.fully_random = false;
        s.v6 = Some(Nets {
            network: "fd10:244::/56".parse().unwrap(),
            pod_subnet: "fd10:244:0:3::/64".parse().unwrap(),
        });
        let peers = [
            "198.18.0.12".parse().unwrap(),
            "2001:2::12".parse().unwrap(),
        ];
        let t = s.table_batch(&peers, false);
        assert_as_nft_sends(&t, include_str!("testdata/podnet-dual.nft-1.0.6.hex"));
        // The script is the rendered table.
        assert_eq!(
            include_str!("testdata/podnet-dual.nft"),
            s.render_table(&peers)
        );
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let mut s = spec();
        assert_eq!(s.validate(), Ok(()));
        s.v4.as_mut().unwrap().pod_subnet = "10.245.3.0/24".parse().unwrap();
        assert_eq!(
            s.validate(),
            Err(
                "firewall: pod subnet 10.245.3.0/24 is not inside the network 10.244.0.0/16".into()
            )
        );
        s.v4 = None;
        assert_eq!(
            s.validate(),
            Err("firewall: masquerade or forward rules without a network".into())
        );
        s.masquerade = false;
        s.forward = false;
        assert_eq!(s.validate(), Ok(()));
    }

    /// The ADD's shortcut is taken only for the table as the whole transaction writes it, for
    /// these networks, whatever pods it holds; the elements alone go to the sets of their family.
    #[test]
    fn the_masquerade_table_is_in_place_only_as_written() {
        use nft::dump::Ruleset;
        let v4: IpNet = "10.244.0.0/16".parse().unwrap();
        let v6: IpNet = "fd10:244::/56".parse().unwrap();
        let pods: Vec<IpAddr> = vec![
            "10.244.3.7".parse().unwrap(),
            "fd10:244::7".parse().unwrap(),
        ];
        let written = |nets: &[IpNet], pods: &[IpAddr]| {
            Ruleset::from_datagram(&pod_masq_add_batch(nets, pods).bytes).unwrap()
        };
        assert!(pod_masq_in_place(&[v4, v6], &written(&[v4, v6], &pods)));
        assert!(pod_masq_in_place(&[v4], &written(&[v4], &[])));
        // Another network, a family more or less, no table at all.
        let other: IpNet = "10.245.0.0/16".parse().unwrap();
        assert!(!pod_masq_in_place(&[other], &written(&[v4], &pods)));
        assert!(!pod_masq_in_place(&[v4, v6], &written(&[v4], &pods)));
        assert!(!pod_masq_in_place(&[v4], &written(&[v4, v6], &pods)));
        assert!(!pod_masq_in_place(&[v4], &Ruleset::default()));
        // The rule gone.
        let mut no_rules = written(&[v4], &pods);
        no_rules.rules.clear();
        assert!(!pod_masq_in_place(&[v4], &no_rules));
        // A set left from dual-stack, and a set's user data, do not count.
        let mut rs = written(&[v4], &pods);
        let left = written(&[v4, v6], &pods).sets;
        rs.sets.extend(
            left.into_iter()
                .filter(|s| s.name == POD_MASQ_SET_V6)
                .map(|s| nft::dump::Set { id: None, ..s }),
        );
        assert_eq!(rs.sets[0].name, POD_MASQ_SET);
        rs.sets[0].userdata = Some(b"nft".to_vec());
        assert!(pod_masq_in_place(&[v4], &rs));
        // But a declared set of another type or with other flags does.
        let mut other = rs.clone();
        other.sets[0].key_len = 16;
        assert!(!pod_masq_in_place(&[v4], &other));
        rs.sets[0].flags |= 0x4;
        assert!(!pod_masq_in_place(&[v4], &rs));
        // The elements alone, each in its family's set.
        let t = pod_masq_elements_batch(&pods);
        assert_eq!(
            t.ops,
            [
                "add elements of set masq-pods (table inet podnet-cni)",
                "add elements of set masq-pods-v6 (table inet podnet-cni)"
            ]
        );
    }
}
