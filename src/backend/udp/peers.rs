//! Where to send a packet: the peer that leases the subnet holding its destination.
//!
//! Leases of one network normally share one prefix length, so a lookup is one mask and one hash
//! probe (flannel scans a list). Mixed lengths (reservations written by hand) are tried longest
//! first.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;

/// Subnets and what their packets go to: the udp backend's peer addresses, the wireguard
/// backend's tunnels.
#[derive(Debug, Clone)]
pub struct PeerTable<T = SocketAddrV4> {
    /// By prefix length, longest first: network address → where its packets go.
    by_len: Vec<(u8, HashMap<u32, T>)>,
}

impl<T> Default for PeerTable<T> {
    fn default() -> Self {
        PeerTable { by_len: Vec::new() }
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl<T: Copy> PeerTable<T> {
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<T> {
        self.get(dst).copied()
    }
}

impl<T> PeerTable<T> {
    pub fn insert(&mut self, subnet: Ipv4Net, to: T) {
        let len = subnet.prefix_len();
        let at = match self.by_len.iter().position(|(l, _)| *l <= len) {
            Some(i) if self.by_len[i].0 == len => i,
            Some(i) => {
                self.by_len.insert(i, (len, HashMap::new()));
                i
            }
            None => {
                self.by_len.push((len, HashMap::new()));
                self.by_len.len() - 1
            }
        };
        self.by_len[at].1.insert(u32::from(subnet.network()), to);
    }

    pub fn remove(&mut self, subnet: Ipv4Net) {
        let len = subnet.prefix_len();
        if let Some(i) = self.by_len.iter().position(|(l, _)| *l == len) {
            self.by_len[i].1.remove(&u32::from(subnet.network()));
            if self.by_len[i].1.is_empty() {
                self.by_len.remove(i);
            }
        }
    }

    /// What the subnet holding `dst` maps to.
    pub fn get(&self, dst: Ipv4Addr) -> Option<&T> {
        let d = u32::from(dst);
        self.by_len
            .iter()
            .find_map(|(len, m)| m.get(&(d & mask(*len))))
    }

    pub fn len(&self) -> usize {
        self.by_len.iter().map(|(_, m)| m.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_len.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, last), 8285)
    }

    #[test]
    fn finds_the_subnet_holding_the_destination() {
        let mut t: PeerTable = PeerTable::default();
        t.insert("10.244.5.0/24".parse().unwrap(), to(12));
        t.insert("10.244.6.0/24".parse().unwrap(), to(13));
        assert_eq!(t.lookup("10.244.5.77".parse().unwrap()), Some(to(12)));
        assert_eq!(t.lookup("10.244.6.0".parse().unwrap()), Some(to(13)));
        assert_eq!(t.lookup("10.244.7.1".parse().unwrap()), None);
        assert_eq!(t.len(), 2);
        // A changed lease replaces the old address.
        t.insert("10.244.5.0/24".parse().unwrap(), to(14));
        assert_eq!(t.lookup("10.244.5.1".parse().unwrap()), Some(to(14)));
        assert_eq!(t.len(), 2);
        t.remove("10.244.5.0/24".parse().unwrap());
        assert_eq!(t.lookup("10.244.5.1".parse().unwrap()), None);
        t.remove("10.244.6.0/24".parse().unwrap());
        assert!(t.is_empty());
        // Removing what is not there is harmless.
        t.remove("10.244.6.0/24".parse().unwrap());
    }

    #[test]
    fn mixed_prefix_lengths_match_longest_first() {
        let mut t: PeerTable = PeerTable::default();
        t.insert("10.244.0.0/16".parse().unwrap(), to(1));
        t.insert("10.244.8.0/21".parse().unwrap(), to(2));
        t.insert("10.244.9.0/24".parse().unwrap(), to(3));
        t.insert("0.0.0.0/0".parse().unwrap(), to(4));
        assert_eq!(t.lookup("10.244.9.9".parse().unwrap()), Some(to(3)));
        assert_eq!(t.lookup("10.244.10.9".parse().unwrap()), Some(to(2)));
        assert_eq!(t.lookup("10.244.100.9".parse().unwrap()), Some(to(1)));
        assert_eq!(t.lookup("192.0.2.1".parse().unwrap()), Some(to(4)));
        let lens: Vec<u8> = t.by_len.iter().map(|(l, _)| *l).collect();
        assert_eq!(lens, [24, 21, 16, 0]);
    }
}
