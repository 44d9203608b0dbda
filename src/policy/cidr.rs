//! CIDR arithmetic for `ipBlock`: a block minus its `except` entries as the exact list of
//! CIDRs that covers what is left, so the IR carries no "minus" for a renderer to handle.
//!
//! The split is the usual binary one: a prefix that no except touches is kept whole, one that
//! an except covers is dropped, and one that an except cuts into is halved and each half looked
//! at again. Each except costs at most one split per prefix bit, so the result has at most
//! `excepts × (except length − cidr length)` entries (a /8 minus one /32: 24 CIDRs).

use ipnet::IpNet;

/// `cidr` minus every net in `except`, as disjoint CIDRs in address order. Excepts of the other
/// family, or outside `cidr`, remove nothing.
pub fn subtract(cidr: IpNet, except: &[IpNet]) -> Vec<IpNet> {
    let cidr = cidr.trunc();
    let except: Vec<IpNet> = except.iter().map(IpNet::trunc).collect();
    let mut out = Vec::new();
    split(cidr, &except, &mut out);
    out
}

fn split(net: IpNet, except: &[IpNet], out: &mut Vec<IpNet>) {
    let touching: Vec<IpNet> = except
        .iter()
        .copied()
        .filter(|e| overlaps(net, *e))
        .collect();
    if touching.is_empty() {
        out.push(net);
        return;
    }
    if touching.iter().any(|e| e.contains(&net)) {
        return;
    }
    // Some except lies strictly inside `net`, so `net` is not a host route and can be halved.
    let half = net.prefix_len() + 1;
    for sub in net
        .subnets(half)
        .expect("prefix below the family's maximum")
    {
        split(sub, &touching, out);
    }
}

/// Whether two prefixes share an address (for prefixes: one contains the other).
fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b) || b.contains(&a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn nothing_excepted_keeps_the_block() {
        assert_eq!(
            subtract("10.0.0.0/8".parse().unwrap(), &[]),
            nets(&["10.0.0.0/8"])
        );
    }

    #[test]
    fn one_host_out_of_a_24() {
        let got = subtract("10.0.0.0/24".parse().unwrap(), &nets(&["10.0.0.5/32"]));
        assert_eq!(
            got,
            nets(&[
                "10.0.0.0/30",
                "10.0.0.4/32",
                "10.0.0.6/31",
                "10.0.0.8/29",
                "10.0.0.16/28",
                "10.0.0.32/27",
                "10.0.0.64/26",
                "10.0.0.128/25",
            ])
        );
    }

    #[test]
    fn overlapping_and_nested_excepts() {
        let got = subtract(
            "172.17.0.0/16".parse().unwrap(),
            &nets(&["172.17.1.0/24", "172.17.1.128/25", "172.17.0.0/17"]),
        );
        assert_eq!(got, nets(&["172.17.128.0/17"]));
    }

    #[test]
    fn whole_block_excepted_leaves_nothing() {
        let got = subtract("10.1.0.0/16".parse().unwrap(), &nets(&["10.0.0.0/8"]));
        assert!(got.is_empty());
    }

    #[test]
    fn host_bits_and_other_family_are_harmless() {
        let got = subtract(
            "10.0.0.7/30".parse().unwrap(),
            &nets(&["10.0.0.6/31", "fd00::/8"]),
        );
        assert_eq!(got, nets(&["10.0.0.4/31"]));
    }

    #[test]
    fn ipv6() {
        let got = subtract("fd00::/126".parse().unwrap(), &nets(&["fd00::1/128"]));
        assert_eq!(got, nets(&["fd00::/128", "fd00::2/127"]));
    }

    #[test]
    fn covers_exactly_what_is_left() {
        let block: IpNet = "10.0.0.0/26".parse().unwrap();
        let except = nets(&["10.0.0.8/29", "10.0.0.33/32", "10.0.0.40/30"]);
        let got = subtract(block, &except);
        for host in block.hosts().chain([block.network(), block.broadcast()]) {
            let excepted = except.iter().any(|e| e.contains(&host));
            let covered = got.iter().filter(|n| n.contains(&host)).count();
            assert_eq!(covered, usize::from(!excepted), "{host}");
        }
    }
}
