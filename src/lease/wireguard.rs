//! The wireguard backend's lease `BackendData`. podnet writes `{"PublicKey":"<32 bytes,
//! base64>","Port":51820}`; flanneld writes only `{"PublicKey":"…"}` (its `wireguardLeaseAttrs`
//! is marshalled with the key alone), and newer flanneld reads `Port` and, when it is missing or
//! 0, dials the peer on its own `ListenPort`. podnet reads both forms the same way: `port` is
//! `None` for a lease without a usable port, and `endpoint` resolves it to this node's
//! `ListenPort` (the IPv4 device's; flannel's `ListenPortV6` is only for the IPv6 device's
//! peers, which podnet does not run). Read from other nodes' leases (untrusted: every field is
//! checked, names matched case-insensitively as Go's decoder does) and written into this
//! node's, always with `Port`.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use super::Lease;
use crate::util::json::get_ci;

/// A node's WireGuard identity and where its tunnel listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireguardData {
    pub public_key: [u8; 32],
    /// `None`: the lease names no port (flanneld's form, or `Port` 0, Go's zero value): the
    /// peer listens on the reader's own `ListenPort`.
    pub port: Option<u16>,
}

/// The stored form (flannel's field names and order).
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    #[serde(rename = "PublicKey")]
    public_key: String,
    #[serde(rename = "Port", skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

fn b64(key: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

impl WireguardData {
    /// Compact JSON for this node's lease.
    pub fn to_json(&self) -> String {
        let s = Stored {
            public_key: b64(&self.public_key),
            port: self.port,
        };
        serde_json::to_string(&s).expect("serializes")
    }

    /// The public key as `wg` prints it.
    pub fn key_text(&self) -> String {
        b64(&self.public_key)
    }

    /// Where the peer's tunnel listens, given its lease's public address and this node's
    /// `ListenPort` (what a lease without a port means, as flannel reads it).
    pub fn endpoint(&self, public_ip: Ipv4Addr, listen_port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(public_ip, self.port.unwrap_or(listen_port))
    }

    /// Parses `BackendData` text; the error names the field and the value.
    pub fn parse(raw: &str) -> Result<WireguardData, String> {
        let v: serde_json::Value =
            serde_json::from_str(raw).map_err(|_| format!("BackendData {raw} is not JSON"))?;
        let obj = v
            .as_object()
            .ok_or_else(|| format!("BackendData {raw} is not an object"))?;
        let key = get_ci(obj, "PublicKey")
            .ok_or_else(|| format!("BackendData {raw} has no PublicKey"))?;
        let key_text = key
            .as_str()
            .ok_or_else(|| format!("PublicKey {key}: expected a string"))?;
        let public_key = crate::config::parse_key32(key_text).ok_or_else(|| {
            format!("PublicKey {key_text:?}: not a WireGuard key (32 bytes in base64)")
        })?;
        if public_key == [0; 32] {
            return Err(format!(
                "PublicKey {key_text:?}: all zeros, not a usable key"
            ));
        }
        // Missing, null (Go leaves the field alone) or 0 (Go's zero value): no port given.
        let port = match get_ci(obj, "Port") {
            None | Some(serde_json::Value::Null) => None,
            Some(p) => {
                let n = p
                    .as_u64()
                    .filter(|n| *n <= 65_535)
                    .ok_or_else(|| format!("Port {p}: expected a whole number from 0 to 65535"))?;
                u16::try_from(n).ok().filter(|n| *n != 0)
            }
        };
        Ok(WireguardData { public_key, port })
    }

    /// The data of a wireguard lease; `Ok(None)` for a lease of another backend.
    pub fn of(l: &Lease) -> Result<Option<WireguardData>, String> {
        if l.attrs.backend_type != "wireguard" {
            return Ok(None);
        }
        let raw = l
            .attrs
            .backend_data
            .as_ref()
            .ok_or("wireguard lease without BackendData")?;
        WireguardData::parse(raw.get()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    #[test]
    fn reads_and_writes_podnets_form() {
        let text = format!(r#"{{"PublicKey":"{KEY}","Port":51820}}"#);
        let d = WireguardData::parse(&text).unwrap();
        assert_eq!(d.port, Some(51820));
        assert_eq!(d.key_text(), KEY);
        assert_eq!(d.to_json(), text);
        // Go's decoder matches names in any case.
        let lower = format!(r#"{{"publickey":"{KEY}","port":1}}"#);
        assert_eq!(WireguardData::parse(&lower).unwrap().port, Some(1));
        // The lease's port wins over ours.
        assert_eq!(
            d.endpoint("198.18.0.12".parse().unwrap(), 51900)
                .to_string(),
            "198.18.0.12:51820"
        );
    }

    #[test]
    fn flanneld_form_without_a_port_means_our_listen_port() {
        // Exactly what flanneld writes (its wireguardLeaseAttrs marshalled with the key only).
        let text = format!(r#"{{"PublicKey":"{KEY}"}}"#);
        let d = WireguardData::parse(&text).unwrap();
        assert_eq!(d.port, None);
        assert_eq!(d.key_text(), KEY);
        assert_eq!(
            d.endpoint("198.18.0.12".parse().unwrap(), 51900)
                .to_string(),
            "198.18.0.12:51900",
            "the peer listens on this node's ListenPort"
        );
        // Port 0 (Go's zero value) and null are flanneld's "no port" too.
        for port in ["0", "null"] {
            let t = format!(r#"{{"PublicKey":"{KEY}","Port":{port}}}"#);
            assert_eq!(WireguardData::parse(&t).unwrap().port, None, "{t}");
        }
        // Written back, a port-less value stays port-less; podnet's own always has one.
        assert_eq!(d.to_json(), text);
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases = [
            ("[1]", "is not an object"),
            ("{", "is not JSON"),
            (r#"{"Port":1}"#, "has no PublicKey"),
            (
                r#"{"PublicKey":7,"Port":1}"#,
                "PublicKey 7: expected a string",
            ),
            (
                r#"{"PublicKey":"c2hvcnQ=","Port":1}"#,
                "PublicKey \"c2hvcnQ=\": not a WireGuard key",
            ),
            (
                r#"{"PublicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","Port":1}"#,
                "all zeros",
            ),
            (
                r#"{"PublicKey":"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=","Port":65536}"#,
                "Port 65536: expected a whole number from 0 to 65535",
            ),
            (
                r#"{"PublicKey":"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=","Port":-1}"#,
                "Port -1: expected a whole number",
            ),
            (
                r#"{"PublicKey":"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=","Port":"51820"}"#,
                "Port \"51820\": expected a whole number",
            ),
        ];
        for (text, why) in cases {
            let e = WireguardData::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e:?} lacks {why:?}");
        }
    }
}
