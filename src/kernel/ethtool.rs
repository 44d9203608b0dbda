//! Device offload features through the `ethtool` tool, and the running kernel's version.

use std::process::Command;

use super::KernelError;

/// A feature's state (`ethtool -k DEV`), `None` if the device does not list it.
pub fn feature(dev: &str, name: &str) -> Result<Option<bool>, KernelError> {
    let out = Command::new("ethtool")
        .args(["-k", dev])
        .output()
        .map_err(|e| KernelError::io(format!("ethtool -k {dev} (Debian package ethtool)"), e))?;
    if !out.status.success() {
        return Err(KernelError::Other(format!(
            "ethtool -k {dev}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_feature(&String::from_utf8_lossy(&out.stdout), name))
}

/// Turns a feature on or off (`ethtool -K DEV NAME on|off`).
pub fn set_feature(dev: &str, name: &str, on: bool) -> Result<(), KernelError> {
    let out = Command::new("ethtool")
        .args(["-K", dev, name, if on { "on" } else { "off" }])
        .output()
        .map_err(|e| KernelError::io(format!("ethtool -K {dev} (Debian package ethtool)"), e))?;
    if !out.status.success() {
        return Err(KernelError::Other(format!(
            "ethtool -K {dev} {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn parse_feature(listing: &str, name: &str) -> Option<bool> {
    listing.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(':')?;
        (k == name).then(|| v.trim().starts_with("on"))
    })
}

/// The running kernel's (major, minor) version.
/// Whether VXLAN's transmit checksum offload corrupts packets on this kernel: before 5.7 with
/// kube-proxy's `--random-fully` masquerade (fixed by ea64d8d6c675), and on any kernel when the
/// node's public address is NAT'ed (flannel #1279, #2152).
pub fn vxlan_checksum_offload_unsafe(nat: bool) -> bool {
    nat || kernel_version().is_some_and(|v| v < (5, 7))
}

pub fn kernel_version() -> Option<(u32, u32)> {
    let uts = nix::sys::utsname::uname().ok()?;
    parse_release(uts.release().to_str()?)
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_features_and_releases() {
        let l = "Features for vx:\ntx-checksumming: on\n\ttx-checksum-ip-generic: on [fixed]\n\ttx-checksum-sctp: off\n";
        assert_eq!(parse_feature(l, "tx-checksum-ip-generic"), Some(true));
        assert_eq!(parse_feature(l, "tx-checksum-sctp"), Some(false));
        assert_eq!(parse_feature(l, "nope"), None);
        assert_eq!(parse_release("6.18.44-fc-v595"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
    }
}
