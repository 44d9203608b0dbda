//! The plugin's verbs: pure functions of (args, config) that act on the kernel and the disk and
//! return a result or an error with a CNI code; the framework in `super` does the I/O with the
//! runtime.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde_json::Value;

use super::conf::{Args, NetConf};
use super::ipam::{Range, Store};
use super::spec::{self, CniError, CniResult, Interface, IpConfig, RouteEntry, code};
use super::{bridge, records, veth};
use crate::firewall;
use crate::kernel::netlink::{Link, Netlink};
use crate::kernel::netns::NetNs;
use crate::kernel::{KernelError, nft, process};
use crate::owned::NFT_POD_MASQ_TABLE;
use crate::subnet_env::SubnetEnv;
use crate::util::files::{Lock, LockError};

/// Reads `subnet.env`; a missing file means the node agent is not ready yet (try again later).
pub fn load_subnet_env(path: &Path) -> Result<SubnetEnv, CniError> {
    let env = match SubnetEnv::read(path) {
        Ok(Some(e)) => e,
        Ok(None) => {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!("{} does not exist: the node agent (podnetd or flanneld) writes it once the node is ready", path.display()),
            )
            .with_details("check the node agent's log on this node"));
        }
        Err(e) => {
            return Err(CniError::new(
                code::SUBNET_FILE_INVALID,
                format!("invalid subnet file: {e}"),
            ));
        }
    };
    let mut missing = Vec::new();
    if env.networks.is_empty() && env.ipv6_networks.is_empty() {
        missing.push("FLANNEL_NETWORK");
    }
    if env.subnet.is_none() && env.ipv6_subnet.is_none() {
        missing.push("FLANNEL_SUBNET");
    }
    if env.mtu.is_none() {
        missing.push("FLANNEL_MTU");
    }
    if env.ipmasq.is_none() {
        missing.push("FLANNEL_IPMASQ");
    }
    if !missing.is_empty() {
        return Err(CniError::new(
            code::SUBNET_FILE_INVALID,
            format!(
                "invalid subnet file {}: {} missing",
                path.display(),
                missing.join(", ")
            ),
        ));
    }
    Ok(env)
}

/// Everything ADD derives from `subnet.env` and the config.
struct Layout {
    /// Per family: the range to allocate from and the gateway (with the subnet's prefix).
    families: Vec<(Range, IpNet)>,
    networks: Vec<IpNet>,
    mtu: u32,
    masq: bool,
}

impl Layout {
    fn new(env: &SubnetEnv, conf: &NetConf) -> Result<Layout, CniError> {
        let families = env
            .gateways()
            .into_iter()
            .map(|gw| family_range(gw, conf))
            .collect::<Result<_, _>>()?;
        let networks: Vec<IpNet> = env
            .networks
            .iter()
            .map(|n| IpNet::V4(*n))
            .chain(env.ipv6_networks.iter().map(|n| IpNet::V6(*n)))
            .collect();
        Ok(Layout {
            families,
            networks,
            mtu: conf.mtu.or(env.mtu).expect("checked by load_subnet_env"),
            masq: plugin_masquerades(conf, env),
        })
    }
}

/// One family's range and gateway: the node's subnet from `subnet.env` (`gw`, the gateway with
/// the subnet's prefix), narrowed by the config's first `ipam.ranges` entry of that family.
fn family_range(gw: IpNet, conf: &NetConf) -> Result<(Range, IpNet), CniError> {
    let subnet = gw.trunc();
    let node = Range::for_subnet(subnet, Some(gw.addr())).map_err(|e| {
        let key = if gw.addr().is_ipv4() {
            "FLANNEL_SUBNET"
        } else {
            "FLANNEL_IPV6_SUBNET"
        };
        CniError::new(
            code::SUBNET_FILE_INVALID,
            format!(
                "invalid subnet file {}: {key}={gw}: {e}",
                conf.subnet_file.display()
            ),
        )
    })?;
    let over = conf
        .ipam_ranges
        .iter()
        .find(|r| r.subnet.addr().is_ipv4() == subnet.addr().is_ipv4());
    let range = match over {
        None => node,
        Some(o) if o.subnet != subnet => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "ipam.ranges: subnet {} is not this node's pod subnet {subnet}",
                    o.subnet
                ),
            ));
        }
        Some(o) => Range::for_subnet(subnet, Some(o.gateway.unwrap_or(gw.addr())))
            .and_then(|r| r.with_bounds(o.start, o.end))
            .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("ipam.ranges: {e}")))?,
    };
    let gw_addr = range.gateway().unwrap_or(gw.addr());
    let gw_net = IpNet::new(gw_addr, subnet.prefix_len()).map_err(|_| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("gateway {gw_addr} does not fit the prefix of {subnet}"),
        )
    })?;
    Ok((range, gw_net))
}

fn open_netns(path: &Path) -> Result<NetNs, CniError> {
    NetNs::open_path(path).map_err(|e| {
        if e.is_not_found() {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("network namespace {} does not exist", path.display()),
            )
        } else {
            CniError::new(
                code::IO,
                format!("cannot open network namespace {}", path.display()),
            )
            .with_details(e.to_string())
        }
    })
}

/// Refuses a `CNI_NETNS` that is the host's own network namespace: the one the plugin runs in,
/// or init's (they differ only where the plugin itself runs in a namespace, as in the lab). ADD
/// would move an interface into it and replace its routes; DEL would take the host's own
/// `CNI_IFNAME` out of service. A path that does not open as a namespace is left to the verb.
fn refuse_host_netns(path: &Path, effect: &str) -> Result<(), CniError> {
    match NetNs::open_path(path) {
        Ok(ns) => refuse_host_ns(&ns, effect),
        Err(_) => Ok(()),
    }
}

/// `refuse_host_netns` for a namespace the verb has open already.
fn refuse_host_ns(ns: &NetNs, effect: &str) -> Result<(), CniError> {
    let host = ns
        .id()
        .and_then(|id| {
            let is = |other: Result<NetNs, KernelError>| Ok::<_, KernelError>(other?.id()? == id);
            Ok(is(NetNs::current())? || is(NetNs::host())?)
        })
        .map_err(|e| {
            CniError::new(
                code::IO,
                format!(
                    "CNI_NETNS {:?}: cannot tell whether it is the host's network namespace",
                    ns.path().display().to_string()
                ),
            )
            .with_details(e.to_string())
        })?;
    if !host {
        return Ok(());
    }
    Err(CniError::new(
        code::INVALID_ENV,
        format!(
            "CNI_NETNS {:?}: the host's own network namespace, not a container's; refused: {effect}",
            ns.path().display().to_string()
        ),
    ))
}

fn kernel(what: &str, e: KernelError) -> CniError {
    CniError::new(code::KERNEL, what.to_string()).with_details(e.to_string())
}

/// The address the runtime asked for: `CNI_ARGS` `IP=`, else `runtimeConfig.ips`.
fn requested(args: &Args, conf: &NetConf, v4: bool) -> Result<Option<IpAddr>, CniError> {
    if let Some(ip) = args.arg("IP") {
        let ip: IpAddr = ip.parse().map_err(|_| {
            CniError::new(
                code::INVALID_ENV,
                format!("CNI_ARGS IP={ip}: not an IP address"),
            )
        })?;
        return Ok((ip.is_ipv4() == v4).then_some(ip));
    }
    Ok(conf
        .requested_ips
        .iter()
        .copied()
        .find(|ip| ip.is_ipv4() == v4))
}

/// Steps to take back if ADD fails half-way, newest first. They run when the `Undo` is
/// dropped without `forget`: on an error, and on a panic that unwinds through it (on the
/// store's thread too).
#[derive(Default)]
struct Undo {
    steps: Vec<Box<dyn FnOnce() + Send>>,
}

impl Undo {
    fn push(&mut self, f: impl FnOnce() + Send + 'static) {
        self.steps.push(Box::new(f));
    }

    /// Takes over `earlier`'s steps, done before any of this one's still to come: they run
    /// after every step pushed from now on.
    fn extend(&mut self, mut earlier: Undo) {
        self.steps.append(&mut earlier.steps);
    }

    fn run(self) {
        drop(self);
    }

    fn forget(mut self) {
        self.steps.clear();
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        while let Some(f) = self.steps.pop() {
            f();
        }
    }
}

/// ADD: wire a pod in. Any failure undoes what was done and returns a specific error.
pub fn add(args: &Args, conf: &NetConf) -> Result<CniResult, CniError> {
    let mut undo = Undo::default();
    match add_steps(args, conf, &mut undo) {
        Ok(r) => {
            undo.forget();
            record_pod(args, conf, &r);
            Ok(r)
        }
        Err(e) => {
            undo.run();
            Err(e)
        }
    }
}

fn add_steps(args: &Args, conf: &NetConf, undo: &mut Undo) -> Result<CniResult, CniError> {
    let env = load_subnet_env(&conf.subnet_file)?;
    let layout = Layout::new(&env, conf)?;
    let netns_path = args.netns.as_ref().expect("ADD requires CNI_NETNS");
    let pod_ns = open_netns(netns_path)?;
    refuse_host_ns(
        &pod_ns,
        "ADD would move an interface into it and replace its routes",
    )?;
    let host_name = veth::host_name(&args.container_id, &args.ifname);
    let owner = veth::owner_alias(&args.container_id, &args.ifname);
    let mut spec = veth::VethSpec {
        host_name: &host_name,
        owner: &owner,
        ifname: &args.ifname,
        mtu: layout.mtu,
        bridge: 0,
        hairpin: conf.hairpin,
        replace_stale: true,
    };
    let ((ips, store_undo), wired) = store_and_pair(args, conf, &layout, &pod_ns, &mut spec)?;
    let Wired {
        mut host,
        pair,
        bridge: br,
        turn,
    } = wired;
    // Newest first: the pair goes before its addresses are given back.
    undo.extend(store_undo);
    undo.push(delete_link(pair.host.index));

    let addrs: Vec<IpNet> = ips
        .iter()
        .map(|(ip, gw)| IpNet::new(*ip, gw.prefix_len()).expect("prefix from a subnet"))
        .collect();
    let (result_routes, kernel_routes) = routes(conf, &layout, &ips);
    let mut pod = Netlink::open_in(&pod_ns).map_err(|e| kernel("open netlink in the pod", e))?;
    let side = veth::PodSide {
        ifname: &args.ifname,
        index: pair.pod_index,
        addrs: &addrs,
        routes: &kernel_routes,
    };
    // The host end's mark was sent without waiting; its answer is collected after the pod's.
    let pod_done = veth::configure_pod(&mut pod, &side);
    pair.finish(&mut host, &spec)?;
    drop(turn);
    pod_done?;
    masquerade(&layout, &ips, undo)?;

    let interfaces = vec![
        Interface {
            name: conf.bridge.clone(),
            mac: br.mac.map(|m| m.to_string()),
            sandbox: None,
            mtu: None,
        },
        Interface {
            name: host_name,
            mac: pair.host.mac.map(|m| m.to_string()),
            sandbox: None,
            mtu: Some(layout.mtu),
        },
        Interface {
            name: args.ifname.clone(),
            mac: Some(pair.pod_mac.to_string()),
            sandbox: Some(netns_path.display().to_string()),
            mtu: Some(layout.mtu),
        },
    ];
    let ip_configs = ips.iter().zip(&addrs).map(|((_, gw), a)| IpConfig {
        interface: Some(2),
        address: *a,
        gateway: Some(gw.addr()),
    });
    let mut result = CniResult {
        interfaces,
        ips: ip_configs.collect(),
        routes: result_routes,
        dns: conf.dns.clone(),
    };
    // Chained after another plugin: keep what it reported.
    if let Some(prev) = &conf.prev_result {
        let mut all = prev.clone();
        all.append(result);
        result = all;
    }
    // flannel's plugin keeps a copy of its delegate config per container; podnet needs none.
    Ok(result)
}

/// Per family the pod's address and its gateway, with the steps that give them back.
type Addresses = (Vec<(IpAddr, IpNet)>, Undo);
/// The host's side of an ADD as `host_side` leaves it.
struct Wired {
    /// The host's netlink socket, the mark's answer still to be read on it.
    host: Netlink,
    pair: veth::Pair,
    bridge: Link,
    /// This pod event's turn at the kernel's RTNL, kept until the pod's side is done.
    turn: Option<Lock>,
}

/// The pod's addresses and its pair, with the undo steps of the addresses; on an error nothing
/// of either is left.
///
/// The two do not depend on each other: the addresses are files under the store's lock, the
/// pair is the kernel's work under RTNL. With a CPU idle, the store works on a thread of its
/// own while this one has the pair made. The store's error comes first, as when it ran alone
/// before the pair. While the store has not decided, a link of this same attachment in the
/// way is not replaced (that would take down a live pod whose repeated ADD the store then
/// refuses): the pair is tried again, replacing it, once the store has succeeded. With no CPU
/// idle (many pods at once) or no thread to be had, the store works first on this thread: a
/// second one would only add its own cost.
fn store_and_pair(
    args: &Args,
    conf: &NetConf,
    layout: &Layout,
    pod_ns: &NetNs,
    spec: &mut veth::VethSpec<'_>,
) -> Result<(Addresses, Wired), CniError> {
    let store = || {
        let mut mine = Undo::default();
        allocate(args, conf, layout, &mut mine).map(|ips| (ips, mine))
    };
    let (ips, wired) = std::thread::scope(|s| {
        let thread = process::cpu_idle_now()
            .then(|| std::thread::Builder::new().spawn_scoped(s, store).ok())
            .flatten();
        let Some(thread) = thread else {
            return (store(), None);
        };
        let mut wired = host_side(conf, layout, pod_ns, spec, false);
        // Not held while waiting for a store that is still at work (it may wait for its lock):
        // taken again, for the pod's side, once the store has its addresses.
        let paused = match &mut wired {
            Ok(w) if !thread.is_finished() => w.turn.take().is_some(),
            _ => false,
        };
        let ips = thread.join().unwrap_or_else(|_| {
            Err(CniError::new(
                code::GENERIC,
                "the address allocation failed unexpectedly (panic); its files were given back",
            ))
        });
        if paused
            && ips.is_ok()
            && let Ok(w) = &mut wired
        {
            w.turn = rtnl_turn();
        }
        (ips, Some(wired))
    });
    // The pair made beside the store, deleted (dropped) if the store failed.
    let made = wired.as_ref().and_then(|w| w.as_ref().ok()).map(|w| {
        let mut u = Undo::default();
        u.push(delete_link(w.pair.host.index));
        u
    });
    let ips = ips?;
    // Made now when it was not beside the store, or when a link of this same attachment was
    // in the way. A failure here drops `ips`, which gives the addresses back.
    let wired = match wired {
        Some(Ok(w)) => w,
        Some(Err(e)) if e.code != code::INTERFACE_EXISTS => return Err(e),
        _ => host_side(conf, layout, pod_ns, spec, true)?,
    };
    if let Some(u) = made {
        u.forget();
    }
    Ok((ips, wired))
}

/// An undo step: the link (a pair's host end, which takes the pod end with it) deleted.
fn delete_link(index: u32) -> impl FnOnce() + Send + 'static {
    move || {
        if let Ok(mut nl) = Netlink::open() {
            let _ = nl.del_link(index);
        }
    }
}

/// The host's side of an ADD: the bridge checked (made if missing) and the pair created, its
/// pod end directly in the pod's namespace, replacing a stale link of this same attachment
/// only with `replace_stale`. `spec` gets the bridge's index. It waits for its turn at RTNL
/// first (`rtnl_turn`).
fn host_side(
    conf: &NetConf,
    layout: &Layout,
    pod_ns: &NetNs,
    spec: &mut veth::VethSpec<'_>,
    replace_stale: bool,
) -> Result<Wired, CniError> {
    spec.replace_stale = replace_stale;
    let turn = rtnl_turn();
    let mut host = Netlink::open().map_err(|e| kernel("open netlink", e))?;
    let gateways: Vec<IpNet> = if conf.is_gateway {
        layout.families.iter().map(|(_, g)| *g).collect()
    } else {
        Vec::new()
    };
    let br = bridge::ensure(&mut host, &conf.bridge, &gateways, layout.mtu)?;
    spec.bridge = br.index;
    let pair = veth::create(&mut host, pod_ns, spec)?;
    Ok(Wired {
        host,
        pair,
        bridge: br,
        turn,
    })
}

/// The node's queue for the kernel's RTNL among pod events (a lock file; RTNL is one lock
/// for the whole machine, whatever the namespace).
pub const RTNL_QUEUE: &str = "/run/podnet/cni-rtnl.lock";
/// The longest a pod event waits in that queue: far longer than a turn lasts (under a
/// millisecond) times the pod events a node starts at once, short enough that one stuck
/// holder (a process stopped in a debugger) slows the others without stopping them.
pub const RTNL_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// A turn at the kernel's RTNL among this node's pod events; `None` (go ahead anyway) when
/// the queue cannot be had or the wait is over.
///
/// Every change to links, addresses and routes takes RTNL, so the kernel's part of concurrent
/// ADDs runs one at a time whatever they do. But a task that finds RTNL taken spins on the
/// CPU while the holder runs: with 8 ADDs at once on 2 CPUs, a second CPU spent its time
/// spinning (11% of the plugin's CPU in `mutex_spin_on_owner`) instead of starting the next
/// plugin, reading its IPAM files or writing its result. Queued here, a waiter sleeps, and its
/// CPU goes to the pod events doing something else. The turn covers the bridge check, the
/// pair, the host end's mark and the pod's batch; the address store and everything else
/// run outside it (an ADD that waits for its store thread lets its turn go meanwhile). It is
/// only ever an order: the plugin works without it.
fn rtnl_turn() -> Option<Lock> {
    let path = Path::new(RTNL_QUEUE);
    match Lock::acquire(path, 0o600, Some(RTNL_QUEUE_WAIT)) {
        Err(LockError::Open { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path.parent()?).ok()?;
            Lock::acquire(path, 0o600, Some(RTNL_QUEUE_WAIT)).ok()
        }
        r => r.ok(),
    }
}

/// One address per family, each released again if a later step fails.
fn allocate(
    args: &Args,
    conf: &NetConf,
    layout: &Layout,
    undo: &mut Undo,
) -> Result<Vec<(IpAddr, IpNet)>, CniError> {
    let mut ips = Vec::new();
    let store = Store::open(&conf.ipam_data_dir, &conf.name)?;
    for (i, (range, gw)) in layout.families.iter().enumerate() {
        let want = requested(args, conf, gw.addr().is_ipv4())?;
        let ip = store.allocate(&args.container_id, &args.ifname, range, i, want)?;
        let (dir, id) = (conf.ipam_data_dir.clone(), conf.name.clone());
        let (container, ifname) = (args.container_id.clone(), args.ifname.clone());
        undo.push(move || {
            if let Ok(s) = Store::open(&dir, &id) {
                s.release_ip(ip, &container, &ifname);
            }
        });
        ips.push((ip, *gw));
    }
    Ok(ips)
}

/// The routes for the result and for the pod's kernel: the cluster networks and the configured
/// routes via the gateway of their family, and a default route with `isDefaultGateway`.
fn routes(
    conf: &NetConf,
    layout: &Layout,
    ips: &[(IpAddr, IpNet)],
) -> (Vec<RouteEntry>, Vec<(IpNet, IpAddr)>) {
    let gw_for = |dst: &IpNet| {
        ips.iter()
            .find(|(_, g)| g.addr().is_ipv4() == dst.addr().is_ipv4())
            .map(|(_, g)| g.addr())
    };
    let mut result_routes: Vec<RouteEntry> = Vec::new();
    let mut kernel_routes: Vec<(IpNet, IpAddr)> = Vec::new();
    for dst in layout.networks.iter().copied() {
        if let Some(gw) = gw_for(&dst) {
            result_routes.push(RouteEntry { dst, gw: None });
            kernel_routes.push((dst, gw));
        }
    }
    for r in &conf.ipam_routes {
        if let Some(gw) = r.gw.or_else(|| gw_for(&r.dst)) {
            result_routes.push(r.clone());
            kernel_routes.push((r.dst, gw));
        }
    }
    if conf.is_default_gateway {
        for (_, gw) in ips {
            let any: IpNet = if gw.addr().is_ipv4() {
                "0.0.0.0/0".parse().expect("constant")
            } else {
                "::/0".parse().expect("constant")
            };
            result_routes.push(RouteEntry {
                dst: any,
                gw: Some(gw.addr()),
            });
            kernel_routes.push((any, gw.addr()));
        }
    }
    (result_routes, kernel_routes)
}

/// `ipMasq` in effect: the pod's addresses join the plugin's masquerade sets, one per family.
fn masquerade(layout: &Layout, ips: &[(IpAddr, IpNet)], undo: &mut Undo) -> Result<(), CniError> {
    let pods: Vec<IpAddr> = ips.iter().map(|(ip, _)| *ip).collect();
    if !layout.masq || pods.is_empty() {
        return Ok(());
    }
    masq_commit(&layout.networks, &pods).map_err(|e| kernel("set up ipMasq", e))?;
    undo.push(move || {
        let _ = unmasquerade(&pods);
    });
    Ok(())
}

/// Adds the pods to the plugin's masquerade sets: their elements alone when a dump shows the
/// table already as this ADD would write it, else the whole table in one transaction (which
/// also mends a table changed by hand). A dump takes no lock, and an element added leaves the
/// kernel nothing to free; the whole table replaces the rules, and the kernel frees the old
/// ones under nftables' commit lock when this socket closes, where the next pod's commit would
/// wait for it (a grace period of RCU, 4–16 ms here).
fn masq_commit(networks: &[IpNet], pods: &[IpAddr]) -> Result<(), KernelError> {
    let socket = nft::NftSocket::open()?;
    let whole = || socket.commit(&firewall::pod_masq_add_batch(networks, pods));
    let outcome = match socket.table(nft::NFPROTO_INET, NFT_POD_MASQ_TABLE) {
        Ok(Some(rs)) if firewall::pod_masq_in_place(networks, &rs) => socket
            .commit(&firewall::pod_masq_elements_batch(pods))
            // Any error (the table changed in the meantime, say): written whole after all.
            .or_else(|_| whole()),
        // No table, another one, or no answer: write it whole.
        _ => whole(),
    };
    socket.close_detached();
    outcome
}

/// DEL: idempotent. A missing pod, namespace or link is fine; what is left is released. The
/// pair is retired at once and deleted in the background (see `veth`).
pub fn del(args: &Args, conf: &NetConf) -> Result<(), CniError> {
    if let Some(path) = &args.netns {
        refuse_host_netns(
            path,
            &format!(
                "DEL would take the host's own {} out of service",
                args.ifname
            ),
        )?;
    }
    let mut errors: Vec<String> = Vec::new();
    let mut pod_end = find_pod_end(args);
    if let Some(p) = &mut pod_end
        && let Err(e) = veth::retire(&mut p.nl, &p.link, false)
    {
        errors.push(format!(
            "take {} in the pod out of service: {e}",
            args.ifname
        ));
    }
    del_host_end(args, pod_end.as_mut(), &mut errors);
    release(args, conf, &mut errors);
    let flannel_state = conf.data_dir.join(&args.container_id);
    if flannel_state.exists() {
        let _ = std::fs::remove_file(flannel_state);
    }
    records::remove(&conf.pod_records_dir, &args.container_id);
    records::remove(&records::legacy_dir(&conf.data_dir), &args.container_id);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(
            CniError::new(code::KERNEL, "DEL could not remove everything")
                .with_details(errors.join("; ")),
        )
    }
}

/// The pod end as DEL finds it in `CNI_NETNS`.
struct PodEnd {
    nl: Netlink,
    link: Link,
}

fn find_pod_end(args: &Args) -> Option<PodEnd> {
    let ns = NetNs::open_path(args.netns.as_ref()?).ok()?;
    let mut nl = Netlink::open_in(&ns).ok()?;
    let link = nl.link(&args.ifname).ok()??;
    Some(PodEnd { nl, link })
}

/// Retires the host end when it is this attachment's: its alias says so, or, for a pair made
/// before host ends carried aliases, it is the pod end's peer. A link by that name that is
/// anyone else's is left alone. Without a host end of ours, deleting the pod end takes the
/// pair with it, the slow way (pods wired by flannel's bridge plugin: random host names).
fn del_host_end(args: &Args, pod_end: Option<&mut PodEnd>, errors: &mut Vec<String>) {
    let mut host = match Netlink::open() {
        Ok(h) => h,
        Err(e) => return errors.push(format!("open netlink: {e}")),
    };
    let name = veth::host_name(&args.container_id, &args.ifname);
    let found = match host.link(&name) {
        Ok(l) => l,
        Err(e) => return errors.push(format!("look up the host end {name}: {e}")),
    };
    let alias = veth::owner_alias(&args.container_id, &args.ifname);
    let ours = found.filter(|l| match veth::owner(l, &alias) {
        veth::Owner::This => true,
        veth::Owner::Unknown => pod_end.as_ref().is_some_and(|p| is_pair(l, &p.link)),
        veth::Owner::Other(_) => false,
    });
    match (ours, pod_end) {
        (Some(l), _) => match veth::retire(&mut host, &l, true) {
            Ok(()) => spawn_reaper(),
            Err(e) => errors.push(format!("take the host end out of service: {e}")),
        },
        (None, Some(p)) => {
            if let Err(e) = p.nl.del_link(p.link.index) {
                errors.push(format!("delete {} in the pod: {e}", args.ifname));
            }
        }
        (None, None) => {}
    }
}

/// Whether two veth ends are each other's peer.
fn is_pair(host: &Link, pod: &Link) -> bool {
    host.parent == Some(pod.index) && pod.parent == Some(host.index)
}

/// Releases the addresses the attachment holds in the address store (whether the pod still
/// has them or not), first taking them out of the masquerade sets when `ipMasq` is in effect:
/// while they are still the attachment's, for once released another pod's ADD may be given one
/// and add it to the set, which a removal after that would undo. The store is not locked
/// meanwhile (a commit may wait for nftables' lock): a runtime runs no other ADD or DEL of this
/// attachment at the same time. (A GC run that releases them meanwhile, as the runtime would not
/// while it deletes the pod, could see an address given to a new pod and then taken out of the
/// set by this DEL.) Each is released only if it is still the attachment's, and not when its
/// removal from the set failed: DEL then fails, and the runtime's retry finds it again.
fn release(args: &Args, conf: &NetConf, errors: &mut Vec<String>) {
    let masq = masq_in_effect(conf);
    let open = || Store::open(&conf.ipam_data_dir, &conf.name);
    let store = match open() {
        Ok(s) => s,
        Err(e) => return errors.push(e.to_string()),
    };
    let mut held = store.find(&args.container_id, &args.ifname);
    let store = if masq && !held.is_empty() {
        drop(store);
        for (ip, e) in unmasquerade(&held) {
            held.retain(|h| *h != ip);
            errors.push(e);
        }
        match open() {
            Ok(s) => s,
            Err(e) => return errors.push(e.to_string()),
        }
    } else {
        store
    };
    for ip in held {
        store.release_ip(ip, &args.container_id, &args.ifname);
    }
}

/// Whether `ipMasq` is in effect for DEL, which works without `subnet.env` too (no masquerade
/// then, unless the config asks for it).
fn masq_in_effect(conf: &NetConf) -> bool {
    match load_subnet_env(&conf.subnet_file) {
        Ok(env) => plugin_masquerades(conf, &env),
        Err(_) => conf.ip_masq.unwrap_or(false),
    }
}

/// flannel's rule: `ipMasq` as configured, else the plugin masquerades when the daemon does not.
fn plugin_masquerades(conf: &NetConf, env: &SubnetEnv) -> bool {
    conf.ip_masq.unwrap_or(!env.ipmasq.unwrap_or(false))
}

/// Takes addresses out of the plugin's masquerade sets, on one socket, each on its own (one
/// that is not there fails only its own removal); returns those that failed otherwise, with
/// the error. Absent from the set, or no plugin table at all, is the state wanted.
fn unmasquerade(ips: &[IpAddr]) -> Vec<(IpAddr, String)> {
    let what = |ip: &IpAddr, e: &KernelError| format!("take {ip} out of the masquerade set: {e}");
    let socket = match nft::NftSocket::open() {
        Ok(s) => s,
        Err(e) => return ips.iter().map(|ip| (*ip, what(ip, &e))).collect(),
    };
    let failed = ips
        .iter()
        .filter_map(
            |ip| match socket.commit(&firewall::pod_masq_remove_batch(*ip)) {
                Err(e) if e.errno() != Some(libc::ENOENT) => Some((*ip, what(ip, &e))),
                _ => None,
            },
        )
        .collect();
    socket.close_detached();
    failed
}

fn check_failed(msg: String) -> CniError {
    CniError::new(code::CHECK_FAILED, msg)
}

/// CHECK: the interface, addresses and routes of the previous result are all there.
pub fn check(args: &Args, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult (the result of ADD)",
        )
    })?;
    let netns_path = args.netns.as_ref().expect("CHECK requires CNI_NETNS");
    let pod_ns = open_netns(netns_path)?;
    refuse_host_ns(&pod_ns, "CHECK would judge the host's interfaces")?;
    let mut pod = Netlink::open_in(&pod_ns).map_err(|e| kernel("open netlink in the pod", e))?;
    let link = pod
        .link(&args.ifname)
        .map_err(|e| kernel("look up the pod interface", e))?
        .ok_or_else(|| {
            check_failed(format!(
                "interface {} not found in {}",
                args.ifname,
                netns_path.display()
            ))
        })?;
    if !link.up {
        return Err(check_failed(format!("interface {} is down", args.ifname)));
    }
    let addrs: Vec<IpNet> = pod
        .addrs()
        .map_err(|e| kernel("read pod addresses", e))?
        .into_iter()
        .filter(|a| a.index == link.index)
        .map(|a| a.net)
        .collect();
    let sandbox_index = prev
        .interfaces
        .iter()
        .position(|i| i.name == args.ifname && i.sandbox.is_some());
    for ip in prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == sandbox_index)
    {
        if !addrs.contains(&ip.address) {
            return Err(check_failed(format!(
                "Failed to match addr {} on interface {}",
                ip.address, args.ifname
            )));
        }
    }
    let routes = pod.routes().map_err(|e| kernel("read pod routes", e))?;
    for r in &prev.routes {
        let gw = r.gw.or_else(|| {
            prev.ips
                .iter()
                .find(|ip| ip.address.addr().is_ipv4() == r.dst.addr().is_ipv4())
                .and_then(|ip| ip.gateway)
        });
        let found = routes
            .iter()
            .any(|k| k.dst == r.dst && k.table == 254 && (gw.is_none() || k.gateway == gw));
        if !found {
            return Err(check_failed(format!(
                "Failed to match route {} via {:?} in the pod",
                r.dst, gw
            )));
        }
    }
    let mut host = Netlink::open().map_err(|e| kernel("open netlink", e))?;
    let br = host
        .link(&conf.bridge)
        .map_err(|e| kernel("look up the bridge", e))?
        .ok_or_else(|| check_failed(format!("bridge {} not found", conf.bridge)))?;
    let host_name = veth::host_name(&args.container_id, &args.ifname);
    let h = host
        .link(&host_name)
        .map_err(|e| kernel("look up the host end", e))?
        .ok_or_else(|| check_failed(format!("host end {host_name} not found")))?;
    let alias = veth::owner_alias(&args.container_id, &args.ifname);
    if let veth::Owner::Other(other) = veth::owner(&h, &alias) {
        return Err(check_failed(format!(
            "host end {host_name} belongs to {other}, not {alias}"
        )));
    }
    if h.master != Some(br.index) {
        return Err(check_failed(format!(
            "{host_name} is not attached to {}",
            conf.bridge
        )));
    }
    let store = Store::open(&conf.ipam_data_dir, &conf.name)?;
    let held = store.find(&args.container_id, &args.ifname);
    for ip in &prev.ips {
        if !held.contains(&ip.address.addr()) {
            return Err(check_failed(format!(
                "{} is not allocated to this container in {}",
                ip.address.addr(),
                store.dir().display()
            )));
        }
    }
    Ok(())
}

/// STATUS: ready when `subnet.env` is readable and valid.
pub fn status(conf: &NetConf) -> Result<(), CniError> {
    load_subnet_env(&conf.subnet_file).map(|_| ()).map_err(|e| {
        CniError::new(
            code::NOT_AVAILABLE,
            format!("plugin not available: {}", e.msg),
        )
        .with_details(e.details)
    })
}

/// Writes down which pod the attachment is for, when the runtime says (network policy reads it).
/// A failure costs only the early knowledge of the address, so it is logged, not an error.
fn record_pod(args: &Args, conf: &NetConf, result: &CniResult) {
    let (Some(ns), Some(name)) = (args.arg("K8S_POD_NAMESPACE"), args.arg("K8S_POD_NAME")) else {
        return;
    };
    let rec = records::PodRecord {
        namespace: ns.to_string(),
        name: name.to_string(),
        ips: result.ips.iter().map(|i| i.address.addr()).collect(),
    };
    if let Err(e) = records::write(&conf.pod_records_dir, &args.container_id, &rec) {
        eprintln!("podnet: recording pod {ns}/{name}: {e}");
    }
}

/// GC: releases every allocation (and its host link) whose attachment the runtime no longer has.
pub fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf.gc_keep()?;
    for dir in [
        conf.pod_records_dir.clone(),
        records::legacy_dir(&conf.data_dir),
    ] {
        for (id, _) in records::read_all(&dir) {
            if !valid.iter().any(|(v_id, _)| *v_id == id) {
                records::remove(&dir, &id);
            }
        }
    }
    let store = Store::open(&conf.ipam_data_dir, &conf.name)?;
    let mut host = Netlink::open().map_err(|e| kernel("open netlink", e))?;
    let mut errors = Vec::new();
    let mut released: Vec<IpAddr> = Vec::new();
    for (ip, id, ifname) in store.allocations() {
        let keep = valid
            .iter()
            .any(|(v_id, v_if)| *v_id == id && (ifname.is_empty() || *v_if == ifname));
        if keep {
            continue;
        }
        if !ifname.is_empty()
            && let Err(e) = del_stale_host_end(&mut host, &id, &ifname, valid)
        {
            errors.push(format!("delete the link of {id}/{ifname}: {e}"));
        }
        if std::fs::remove_file(store.dir().join(ip.to_string())).is_ok() {
            released.push(ip);
        }
    }
    if let Err(e) = veth::reap(std::time::Duration::ZERO) {
        errors.push(format!("delete retired links: {e}"));
    }
    if !released.is_empty() {
        errors.extend(unmasquerade(&released).into_iter().map(|(_, e)| e));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(
            CniError::new(code::KERNEL, "GC could not remove everything")
                .with_details(errors.join("; ")),
        )
    }
}

/// GC: deletes a released attachment's host end, unless it is someone else's: its alias names
/// another attachment, or it has none and an attachment being kept would use the same name.
fn del_stale_host_end(
    host: &mut Netlink,
    id: &str,
    ifname: &str,
    keep: &[(String, String)],
) -> Result<(), KernelError> {
    let name = veth::host_name(id, ifname);
    let Some(link) = host.link(&name)? else {
        return Ok(());
    };
    let delete = match veth::owner(&link, &veth::owner_alias(id, ifname)) {
        veth::Owner::This => true,
        veth::Owner::Unknown => !keep.iter().any(|(k, i)| veth::host_name(k, i) == name),
        veth::Owner::Other(_) => false,
    };
    if delete {
        host.del_link(link.index)
    } else {
        Ok(())
    }
}

/// The VERSION answer for a stdin that may or may not parse.
pub fn version(stdin: &[u8]) -> String {
    let requested = serde_json::from_slice::<Value>(stdin).ok().and_then(|v| {
        v.get("cniVersion")
            .and_then(|c| c.as_str())
            .map(String::from)
    });
    spec::version_info(requested.as_deref())
}

/// Starts a detached reaper for retired pairs (this same binary, in this namespace). It
/// outlives the plugin, which returns to the runtime without waiting for the kernel, nor for
/// the reaper's start (`process::spawn_detached`). None when one is at work already: the pair
/// just retired is that one's (`veth::reaper_running`).
fn spawn_reaper() {
    if veth::reaper_running() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // If it cannot start, GC or the next DEL's reaper deletes the retired pair.
    let _ = process::spawn_detached(&exe, (REAP_ENV, "1"));
}

/// Set in the reaper's environment.
pub const REAP_ENV: &str = "PODNET_CNI_REAP";
