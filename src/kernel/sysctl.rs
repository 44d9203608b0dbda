//! sysctls under `/proc/sys`. Network sysctls belong to the namespace of the thread that opens
//! the file, so call these inside `NetNs::run` to reach another namespace.

use std::path::PathBuf;

use super::KernelError;

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Reads a sysctl (`net.ipv4.ip_forward`); `None` if it does not exist here.
pub fn get(key: &str) -> Result<Option<String>, KernelError> {
    match std::fs::read_to_string(path(key)) {
        Ok(v) => Ok(Some(v.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KernelError::io(format!("read sysctl {key}"), e)),
    }
}

/// Writes a sysctl.
pub fn set(key: &str, value: &str) -> Result<(), KernelError> {
    std::fs::write(path(key), value)
        .map_err(|e| KernelError::io(format!("set sysctl {key}={value}"), e))
}

/// An interface's IPv4 setting (`net/ipv4/conf/<iface>/<leaf>`); interface names may contain
/// dots (`flannel.1`), which the dotted key form cannot express.
pub fn get_conf(iface: &str, leaf: &str) -> Result<Option<String>, KernelError> {
    let path = PathBuf::from("/proc/sys/net/ipv4/conf")
        .join(iface)
        .join(leaf);
    match std::fs::read_to_string(&path) {
        Ok(v) => Ok(Some(v.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KernelError::io(format!("read {}", path.display()), e)),
    }
}

/// Sets an interface's IPv4 setting (see `get_conf`).
pub fn set_conf(iface: &str, leaf: &str, value: &str) -> Result<(), KernelError> {
    let path = PathBuf::from("/proc/sys/net/ipv4/conf")
        .join(iface)
        .join(leaf);
    std::fs::write(&path, value)
        .map_err(|e| KernelError::io(format!("write {} = {value}", path.display()), e))
}

/// Sets an interface's IPv6 setting (`net/ipv6/conf/<iface>/<leaf>`).
pub fn set_conf6(iface: &str, leaf: &str, value: &str) -> Result<(), KernelError> {
    let path = PathBuf::from("/proc/sys/net/ipv6/conf")
        .join(iface)
        .join(leaf);
    std::fs::write(&path, value)
        .map_err(|e| KernelError::io(format!("write {} = {value}", path.display()), e))
}
