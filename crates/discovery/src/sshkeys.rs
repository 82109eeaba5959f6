//! SSH host public keys from `/etc/ssh/ssh_host_*_key.pub`, with OpenSSH's
//! `SHA256:` fingerprint (unpadded standard base64 of SHA-256 of the key blob).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{DiscoveryError, read_optional};

/// One host key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SshHostKey {
    /// The file it came from.
    pub file: String,
    /// Key type, e.g. `ssh-ed25519`.
    pub key_type: String,
    /// Base64 key blob as in the file.
    pub key: String,
    /// `SHA256:…` as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
}

/// Result of the ssh host keys collector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshHostKeys {
    /// Keys sorted by file.
    pub keys: Vec<SshHostKey>,
}

/// OpenSSH SHA-256 fingerprint of a base64 key blob; `None` if not base64.
pub fn fingerprint_sha256(key_b64: &str) -> Option<String> {
    let blob = STANDARD.decode(key_b64).ok()?;
    Some(format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(blob))))
}

/// Parses the first key line (`type base64 [comment]`) of a `.pub` file.
pub fn parse_public_key(file: &str, text: &str) -> Option<SshHostKey> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).find_map(|line| {
        let mut f = line.split_whitespace();
        let (key_type, key) = (f.next()?, f.next()?);
        Some(SshHostKey {
            file: file.to_string(),
            key_type: key_type.to_string(),
            key: key.to_string(),
            fingerprint: fingerprint_sha256(key)?,
        })
    })
}

/// Reads host keys from `dir` (normally `/etc/ssh`).
pub fn collect_ssh_host_keys_in(dir: &Path) -> Result<SshHostKeys, DiscoveryError> {
    let mut keys = Vec::new();
    // No /etc/ssh means no sshd: an empty list, not an error.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("ssh_host_") && name.ends_with("_key.pub")) {
                continue;
            }
            let path = entry.path();
            if let Some(key) =
                read_optional(&path).and_then(|t| parse_public_key(&path.to_string_lossy(), &t))
            {
                keys.push(key);
            }
        }
    }
    keys.sort();
    Ok(SshHostKeys { keys })
}

/// Reads host keys from `/etc/ssh`.
pub fn collect_ssh_host_keys() -> Result<SshHostKeys, DiscoveryError> {
    collect_ssh_host_keys_in(Path::new("/etc/ssh"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated with `ssh-keygen -t ed25519`; fingerprint from `ssh-keygen -lf`.
    const PUB: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPne/qmVfwexSw5BmoTlFvXNB9O8bNCrhDQy1X6Z1xCV test@host\n";

    #[test]
    fn fingerprint_matches_ssh_keygen() {
        let k = parse_public_key("/etc/ssh/ssh_host_ed25519_key.pub", PUB).unwrap();
        assert_eq!(k.key_type, "ssh-ed25519");
        assert_eq!(k.fingerprint, "SHA256:77nwi4IbU0nPNPYJQCqSUw7h/29ZIH2RBfyrHK/vvmk");
        assert_eq!(parse_public_key("f", "ssh-rsa not*base64"), None);
    }

    #[test]
    fn reads_directory() {
        let dir = std::env::temp_dir().join(format!("assim-sshkeys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ssh_host_ed25519_key.pub"), PUB).unwrap();
        std::fs::write(dir.join("ssh_host_ed25519_key"), "private").unwrap();
        let keys = collect_ssh_host_keys_in(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(keys.keys.len(), 1);
    }
}
