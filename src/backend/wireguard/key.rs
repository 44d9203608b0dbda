//! This node's WireGuard private key, kept in a file across restarts as flannel keeps it:
//! `WIREGUARD_KEY_FILE` (podnetd `--wireguard-key-file`), default `/run/flannel/wgkey`, one
//! line of base64 as `wg genkey` prints, written mode 0400. A file that exists is used as it
//! is (so a node taken over from flanneld keeps its identity, and an operator rotates the key
//! by replacing the file and restarting podnetd); a file that does not parse is an error, never
//! overwritten.

use std::path::Path;

use boringtun::x25519::{PublicKey, StaticSecret};

use crate::backend::BackendError;

/// flannel's default path.
pub const DEFAULT_PATH: &str = "/run/flannel/wgkey";

/// A private key and the public key peers know this node by.
#[derive(Clone)]
pub struct KeyPair {
    pub private: [u8; 32],
    pub public: [u8; 32],
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        write!(f, "KeyPair {{ public: {} }}", b64(&self.public))
    }
}

pub fn b64(key: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Clamps a Curve25519 private key as `wg genkey` does.
fn clamp(mut k: [u8; 32]) -> [u8; 32] {
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    k
}

impl KeyPair {
    pub fn from_private(private: [u8; 32]) -> KeyPair {
        let public = PublicKey::from(&StaticSecret::from(private)).to_bytes();
        KeyPair { private, public }
    }

    /// A fresh key from the operating system's random source.
    pub fn generate() -> KeyPair {
        let mut k = [0u8; 32];
        rand::fill(&mut k);
        KeyPair::from_private(clamp(k))
    }

    pub fn secret(&self) -> StaticSecret {
        StaticSecret::from(self.private)
    }
}

/// Reads the key file, or creates it (and its directory) with a new key.
pub fn load_or_create(path: &Path) -> Result<(KeyPair, bool), BackendError> {
    let shown = path.display();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let private = crate::config::parse_key32(&text).ok_or_else(|| {
                BackendError::Invalid(format!(
                    "WireGuard key file {shown}: not a private key (one line of base64 as `wg genkey` \
                     prints); fix or remove it"
                ))
            })?;
            Ok((KeyPair::from_private(private), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pair = KeyPair::generate();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    BackendError::Invalid(format!("WireGuard key file {shown}: {e}"))
                })?;
            }
            let text = format!("{}\n", b64(&pair.private));
            crate::util::files::write_atomic(path, text.as_bytes(), Some(0o400)).map_err(|e| {
                BackendError::Invalid(format!("write WireGuard key file {shown}: {e}"))
            })?;
            Ok((pair, true))
        }
        Err(e) => Err(BackendError::Invalid(format!(
            "read WireGuard key file {shown}: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn public_key_of_a_known_private_key() {
        // RFC 7748 section 6.1: Alice's key pair.
        let private: [u8; 32] = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let pair = KeyPair::from_private(private);
        assert_eq!(
            pair.public[..4],
            [0x85, 0x20, 0xf0, 0x09],
            "{}",
            b64(&pair.public)
        );
        assert!(!format!("{pair:?}").contains(&b64(&private)));
    }

    #[test]
    fn created_once_mode_0400_then_kept() {
        let dir = std::env::temp_dir().join(format!("podnet-wgkey-{}", std::process::id()));
        let path = dir.join("sub").join("wgkey");
        let (a, created) = load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        let (b, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a.public, b.public);
        assert_eq!(a.private[0] & 7, 0, "clamped");
        // A key written by `wg genkey` (flanneld's file) is read as it is.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "YBTuZWfF8Mx8VxX7e8zETqJbZbH6b0xJh4tLmQ3Kb3A=\n").unwrap();
        let (c, _) = load_or_create(&path).unwrap();
        assert_eq!(
            b64(&c.private),
            "YBTuZWfF8Mx8VxX7e8zETqJbZbH6b0xJh4tLmQ3Kb3A="
        );
        std::fs::write(&path, "not a key\n").unwrap();
        let e = load_or_create(&path).unwrap_err().to_string();
        assert!(
            e.contains("not a private key") && e.contains("wgkey"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "not a key\n",
            "never overwritten"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
