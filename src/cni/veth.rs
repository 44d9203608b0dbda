//! The veth pair between the node bridge and the pod. The host end's name is derived from the
//! container ID and interface, so DEL finds it without any saved state; a hash of 32 bits can
//! collide, so the host end also carries its owner as alias (`<container ID>/<ifname>`), and a
//! link by that name is only ever replaced, retired or deleted when the alias says it is the
//! same attachment's.
//!
//! Deleting a veth makes the kernel wait for an RCU grace period (~25 ms on the machines we
//! measured), and every plugin that deletes synchronously pays it on each DEL. podnet's DEL
//! instead *retires* the pair: both ends go down (no traffic in either direction), get names
//! of their own (a new ADD in the same namespace can use `eth0` at once) and join the
//! `RETIRED_GROUP` link group; a detached reaper then deletes the whole group in one request,
//! so the kernel batches the wait for all pairs retired meanwhile.

use std::net::IpAddr;

use ipnet::IpNet;

use super::spec::{CniError, code};
use crate::kernel::Mac;
use crate::kernel::netlink::{
    Addr, Change, Link, LinkChange, Netlink, NewLink, NewLinkKind, RTPROT_BOOT, Route,
    SCOPE_UNIVERSE,
};
use crate::kernel::netns::NetNs;
use crate::util::files::{Lock, LockError};

const LOOPBACK_INDEX: u32 = 1;
/// How long a reaper waits for more retired pairs before deleting: one batch for a burst of
/// DELs instead of one RTNL-holding grace period each.
pub const REAP_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(50);

/// Queues of each end of a pod's pair. A veth's queues only spread work when XDP or GRO runs
/// on it (neither does here: a veth without them delivers on the sending CPU whatever its queue
/// count), but the kernel's default is one transmit and one receive queue per possible CPU
/// for each end, each a sysfs directory with its attributes made and announced at creation
/// and removed at deletion: 8 a pair on a 2-CPU node, 256 on a 64-CPU one. One each made creating a
/// pair 36% faster on 2 CPUs (360 → 230 µs for `ip link add` in a batch). The cost: `ethtool
/// -L` cannot raise the count later (as with every veth, the count is fixed at creation).
const POD_QUEUES: u32 = 1;

/// Link group of retired pairs ("pnd").
pub const RETIRED_GROUP: u32 = 0x0070_6e64;

fn hash(container_id: &str, ifname: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in container_id
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(ifname.bytes())
    {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// `veth` + 8 hex digits: stable for an attachment, at most 15 bytes.
pub fn host_name(container_id: &str, ifname: &str) -> String {
    format!("veth{:08x}", hash(container_id, ifname))
}

/// Longest alias the kernel takes from us (255 bytes including the NUL netlink carries).
const ALIAS_MAX: usize = 254;

/// The alias a host end carries, naming the attachment it belongs to:
/// `<container ID>/<ifname>`, the ID cut to fit the kernel's limit (IDs are far shorter).
pub fn owner_alias(container_id: &str, ifname: &str) -> String {
    let mut max = ALIAS_MAX
        .saturating_sub(ifname.len() + 1)
        .min(container_id.len());
    while !container_id.is_char_boundary(max) {
        max -= 1;
    }
    format!("{}/{ifname}", &container_id[..max])
}

/// Whose a link with an attachment's host-end name is, by its alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The alias names this attachment.
    This,
    /// No alias: a pair made before host ends carried one, or someone else's link.
    Unknown,
    /// The alias names another attachment (or anything else).
    Other(String),
}

/// Whose `link` is, for the attachment whose alias is `alias` (`owner_alias`).
pub fn owner(link: &Link, alias: &str) -> Owner {
    match &link.alias {
        Some(a) if a == alias => Owner::This,
        Some(a) => Owner::Other(a.clone()),
        None => Owner::Unknown,
    }
}

fn kernel(what: String, e: crate::kernel::KernelError) -> CniError {
    CniError::new(code::KERNEL, what).with_details(e.to_string())
}

/// The two ends as created. The host end's mark (alias, hairpin) is on its way: `finish`
/// says whether it took, so the pod's side can be set up in the meantime.
pub struct Pair {
    pub host: Link,
    pub pod_mac: Mac,
    /// The pod end's index in the pod's namespace, when the kernel said it on creation.
    pub pod_index: Option<u32>,
    mark: u32,
}

impl Pair {
    /// Waits for the host end's mark. On an error the pair is the caller's to delete.
    pub fn finish(&self, host: &mut Netlink, spec: &VethSpec<'_>) -> Result<(), CniError> {
        host.set_link_finish(self.host.index, self.mark)
            .map_err(|e| mark_error(spec, e))
    }
}

/// What the veth needs.
pub struct VethSpec<'a> {
    pub host_name: &'a str,
    /// The host end's alias, `owner_alias` of the attachment.
    pub owner: &'a str,
    pub ifname: &'a str,
    pub mtu: u32,
    pub bridge: u32,
    pub hairpin: bool,
    /// Whether a link of this same attachment holding the host end's name (one an ADD that
    /// died half-way left) is replaced. Without it, such a link is an `INTERFACE_EXISTS` error.
    pub replace_stale: bool,
}

/// Creates the pair in one request: the host end already on the bridge and up, the pod end
/// directly in the pod's namespace, both with MACs we chose, and the kernel's answer (an echo
/// of the new link) naming both ends' indexes, so nothing has to be read back. The host end
/// then gets its owner as alias, a request sent without waiting (`Pair::finish`). A link
/// already holding the host end's name is replaced only when its alias names this same
/// attachment.
pub fn create(host: &mut Netlink, pod_ns: &NetNs, spec: &VethSpec<'_>) -> Result<Pair, CniError> {
    let host_mac = Mac::random();
    let pod_mac = Mac::random();
    let new = NewLink {
        name: spec.host_name,
        kind: NewLinkKind::Veth {
            peer: spec.ifname,
            peer_ns: Some(pod_ns),
            peer_mac: Some(pod_mac),
            queues: Some(POD_QUEUES),
        },
        mtu: Some(spec.mtu),
        mac: Some(host_mac),
        master: Some(spec.bridge),
        up: true,
    };
    let mut made = host.add_link_echo(&new);
    if matches!(&made, Err(e) if e.is_exists())
        && spec.replace_stale
        && let Some(stale) = stale_host_end(host, spec)?
    {
        host.del_link(stale.index)
            .map_err(|e| kernel(format!("remove stale {}", spec.host_name), e))?;
        made = host.add_link_echo(&new);
    }
    let echoed = match made {
        Ok(echoed) => echoed,
        Err(e) => return Err(create_error(spec, e)),
    };
    let link = match echoed {
        Some(link) => link,
        None => host
            .require_link(spec.host_name)
            .map_err(|e| kernel(format!("look up {}", spec.host_name), e))?,
    };
    let pod_index = link.parent;
    let mark = match host.set_link_start(link.index, &mark_change(spec, link.ipv6)) {
        Ok(seq) => seq,
        Err(e) => {
            let _ = host.del_link(link.index);
            return Err(mark_error(spec, e));
        }
    };
    Ok(Pair {
        host: Link {
            mac: Some(host_mac),
            master: Some(spec.bridge),
            ..link
        },
        pod_mac,
        pod_index,
        mark,
    })
}

fn create_error(spec: &VethSpec<'_>, e: crate::kernel::KernelError) -> CniError {
    if e.is_exists() {
        return CniError::new(
            code::INTERFACE_EXISTS,
            format!(
                "the pod's network namespace already has an interface named {}",
                spec.ifname
            ),
        );
    }
    kernel(format!("create veth {}/{}", spec.host_name, spec.ifname), e)
}

/// After EEXIST: the link holding the host end's name when it is a stale one of this same
/// attachment (left by an ADD that died half-way), to be replaced; an error naming the owner
/// when it is anyone else's. `None`: the name is free, so the pod has the interface already.
fn stale_host_end(host: &mut Netlink, spec: &VethSpec<'_>) -> Result<Option<Link>, CniError> {
    let name = spec.host_name;
    let Some(existing) = host
        .link(name)
        .map_err(|e| kernel(format!("look up {name}"), e))?
    else {
        return Ok(None);
    };
    let whose = match owner(&existing, spec.owner) {
        Owner::This => return Ok(Some(existing)),
        Owner::Other(other) => format!("belongs to {other}"),
        Owner::Unknown => "has no alias, so no known owner".to_string(),
    };
    Err(CniError::new(
        code::INTERFACE_EXISTS,
        format!(
            "host interface {name}, the name for {}, already exists and {whose}; it is left alone",
            spec.owner
        ),
    )
    .with_details(format!(
        "two attachments hash to the same host name; if {name} is stale, delete it: ip link delete {name}"
    )))
}

/// A new host end's mark: its owner as alias (and hairpin mode), one request. With IPv6 on
/// the link, the same request tells it to make no link-local address: it is a bridge port, and
/// the node reaches pods over IPv6 through the bridge's own addresses, never a port's. Left to
/// the kernel's default, each host end would get one when the pod end comes up (this request
/// comes before that), with a link and a local route in the node's IPv6 tables (which the
/// kernel walks whole on link events: every ADD and DEL paid for every pod already there) and
/// duplicate-address and multicast-listener messages the bridge floods to every pod.
fn mark_change<'a>(spec: &VethSpec<'a>, ipv6: bool) -> LinkChange<'a> {
    LinkChange {
        alias: Some(spec.owner),
        hairpin: spec.hairpin.then_some(true),
        link_local6: ipv6.then_some(false),
        ..Default::default()
    }
}

fn mark_error(spec: &VethSpec<'_>, e: crate::kernel::KernelError) -> CniError {
    kernel(
        format!(
            "set alias {}, hairpin and IPv6 addressing on {}",
            spec.owner, spec.host_name
        ),
        e,
    )
}

/// What the pod end gets.
pub struct PodSide<'a> {
    pub ifname: &'a str,
    /// Its index, when known (`Pair::pod_index`); else it is looked up by name.
    pub index: Option<u32>,
    pub addrs: &'a [IpNet],
    /// (destination, gateway)
    pub routes: &'a [(IpNet, IpAddr)],
}

/// Inside the pod: loopback up, addresses, the interface up, routes — in one pipelined batch.
pub fn configure_pod(pod: &mut Netlink, side: &PodSide<'_>) -> Result<(), CniError> {
    let index = match side.index {
        Some(i) => i,
        None => {
            pod.require_link(side.ifname)
                .map_err(|e| kernel(format!("look up {} in the pod", side.ifname), e))?
                .index
        }
    };
    // Loopback is ifindex 1 in every namespace.
    let mut changes = vec![Change::LinkUp(LOOPBACK_INDEX)];
    changes.extend(
        side.addrs
            .iter()
            .map(|a| Change::AddAddr(Addr { index, net: *a })),
    );
    changes.push(Change::LinkUp(index));
    for (dst, gw) in side.routes {
        let mut r = Route::unicast(*dst, RTPROT_BOOT);
        r.gateway = Some(*gw);
        r.oif = Some(index);
        r.scope = SCOPE_UNIVERSE;
        changes.push(Change::ReplaceRoute(r));
    }
    for (c, result) in changes.iter().zip(pod.apply(&changes)) {
        result.map_err(|e| kernel(format!("in the pod: {c:?}"), e))?;
    }
    Ok(())
}

/// Takes a link out of service without waiting for the kernel to delete it: down, renamed,
/// and (for the host end) in `RETIRED_GROUP` for the reaper.
pub fn retire(nl: &mut Netlink, link: &Link, mark: bool) -> Result<(), crate::kernel::KernelError> {
    // A name of its own frees the old one for a new pod at once; a link must be down to be
    // renamed. The group comes with the new name, so a reaper never deletes a link before it
    // has been renamed (and a link a reaper already took is as retired as it gets).
    let retired = format!(
        "pnd{:08x}",
        u32::from_ne_bytes(crate::kernel::random_bytes())
    );
    let steps = [
        LinkChange {
            up: Some(false),
            ..Default::default()
        },
        LinkChange {
            name: Some(&retired),
            group: mark.then_some(RETIRED_GROUP),
            ..Default::default()
        },
    ];
    for step in &steps {
        match nl.set_link(link.index, step) {
            Err(e) if e.is_not_found() => return Ok(()),
            r => r?,
        }
    }
    Ok(())
}

/// Deletes every retired pair in this namespace. One reaper at a time per namespace (a lock
/// file named after it) waits `debounce` (the detached reaper `REAP_DEBOUNCE`, GC nothing) and
/// deletes the group, until a deletion finds it empty; after releasing the lock it tries once more, so a pair retired while it was
/// finishing is never left behind (a deletion that races another reaper's finds nothing).
/// Whether anything is retired is learnt from the deletion itself (the kernel's `ENODEV` for
/// an empty group), not from a dump of every link: on a node with hundreds of pods, each dump
/// held RTNL while the kernel filled a message per link, in the way of the pod events the
/// reaper runs beside.
pub fn reap(debounce: std::time::Duration) -> Result<(), crate::kernel::KernelError> {
    let lock_path = reaper_lock()?;
    std::fs::create_dir_all(REAPER_DIR)
        .map_err(|e| crate::kernel::KernelError::io("create /run/podnet", e))?;
    let mut nl = Netlink::open()?;
    let kernel = |e: LockError| crate::kernel::KernelError::Other(e.to_string());
    loop {
        let lock = match Lock::acquire(&lock_path, 0o600, Some(REAPER_LOCK_WAIT)) {
            Ok(lock) => lock,
            // Another reaper works; it looks again after it unlocks.
            Err(LockError::Timeout { .. }) => return Ok(()),
            Err(e) => return Err(kernel(e)),
        };
        let mut worked = Ok(());
        loop {
            std::thread::sleep(debounce);
            match nl.del_link_group(RETIRED_GROUP) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    worked = Err(e);
                    break;
                }
            }
        }
        drop(lock);
        // Once more after unlocking, failed or not: a DEL that retired a pair while this one
        // held the lock started no reaper of its own (`reaper_running`).
        let more = nl.del_link_group(RETIRED_GROUP);
        worked?;
        if !more? {
            return Ok(());
        }
    }
}

const REAPER_DIR: &str = "/run/podnet";

/// How long a starting reaper tries for the lock: longer than a DEL's probe holds it
/// (`reaper_running`, microseconds), so a probe never turns it away; far shorter than a
/// working reaper holds it (at least a debounce), so it does not wait for that one.
const REAPER_LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// The reapers' lock for the current network namespace.
fn reaper_lock() -> Result<std::path::PathBuf, crate::kernel::KernelError> {
    reaper_lock_of(&NetNs::current()?)
}

/// The reapers' lock for `ns` (one file per namespace the plugin ran in, kept for the next
/// DEL; the lab removes its nodes' when it tears them down).
pub fn reaper_lock_of(ns: &NetNs) -> Result<std::path::PathBuf, crate::kernel::KernelError> {
    let (dev, ino) = ns.id()?;
    Ok(std::path::Path::new(REAPER_DIR).join(format!("cni-reaper-{dev:x}-{ino:x}.lock")))
}

/// Whether a reaper of this namespace is at work. A pair retired before this says so is
/// that reaper's to delete: it looks for retired pairs once more after it unlocks. So a DEL
/// that finds one running starts none (a burst of DELs starts one process, not one each).
pub fn reaper_running() -> bool {
    reaper_lock().is_ok_and(|p| Lock::is_held(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(alias: Option<&str>) -> Link {
        Link {
            name: host_name("ctr-a", "eth0"),
            kind: Some("veth".into()),
            mtu: 1450,
            alias: alias.map(String::from),
            ..Link::blank(7, true, true)
        }
    }

    #[test]
    fn the_mark_turns_ipv6_link_local_off_only_where_there_is_ipv6() {
        let spec = VethSpec {
            host_name: "veth1",
            owner: "ctr-a/eth0",
            ifname: "eth0",
            mtu: 1450,
            bridge: 3,
            hairpin: false,
            replace_stale: true,
        };
        assert_eq!(mark_change(&spec, true).link_local6, Some(false));
        // A kernel without IPv6 (or a link under 1280 bytes) refuses the setting, and the ADD
        // with it: not sent.
        assert_eq!(mark_change(&spec, false).link_local6, None);
        assert_eq!(mark_change(&spec, false).alias, Some("ctr-a/eth0"));
    }

    #[test]
    fn a_host_end_is_known_by_its_alias() {
        let mine = owner_alias("ctr-a", "eth0");
        assert_eq!(mine, "ctr-a/eth0");
        assert_eq!(owner(&link(Some("ctr-a/eth0")), &mine), Owner::This);
        assert_eq!(
            owner(&link(Some("ctr-b/eth0")), &mine),
            Owner::Other("ctr-b/eth0".into())
        );
        assert_eq!(
            owner(&link(Some("ctr-a/eth1")), &mine),
            Owner::Other("ctr-a/eth1".into())
        );
        assert_eq!(owner(&link(None), &mine), Owner::Unknown);
    }

    #[test]
    fn aliases_fit_the_kernels_limit() {
        let long = "a".repeat(300);
        let alias = owner_alias(&long, "eth0");
        assert_eq!(alias.len(), ALIAS_MAX);
        assert!(alias.ends_with("a/eth0"));
        // IDs from allocation files are not validated: never cut inside a character.
        let wide = "é".repeat(200);
        let alias = owner_alias(&wide, "eth0");
        assert!(
            alias.len() <= ALIAS_MAX && alias.ends_with("é/eth0"),
            "{alias}"
        );
    }
}
