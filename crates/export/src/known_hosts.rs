//! `ssh_known_hosts` and DNS SSHFP records from the inventory.
//!
//! - [`known_hosts`]: per host, one line per key naming every name and address of the host
//!   (`web1,web1.example.com,192.0.2.7 ssh-ed25519 AAAA…`); hashed, one line per name and key
//!   (`|1|base64(salt)|base64(HMAC-SHA1(salt, name)) ssh-ed25519 AAAA…`), as `ssh-keygen -H`
//!   writes them, with the salts from the caller (20 random bytes each).
//! - [`sshfp`]: per host name and key, `NAME IN SSHFP ALG 1 SHA1HEX` and `… ALG 2 SHA256HEX`,
//!   as `ssh-keygen -r NAME` prints them; the FQDN (absolute, with a trailing dot) when
//!   discovery found one, else the host name (relative to the zone's origin).
//!
//! Keys of types SSHFP has no number for (security-key types) are left out of the SSHFP records
//! only. Hosts without keys give no line.

use assim_api::InventoryHost;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use crate::sha1::{hmac_sha1, sha1};

/// Every name a host is known by in `known_hosts`: its host name, its FQDN, its addresses.
pub fn names_of(h: &InventoryHost) -> Vec<String> {
    let mut names = vec![h.host.clone()];
    names.extend(h.fqdn.iter().cloned());
    names.extend(h.addresses.iter().cloned());
    names
}

/// The `known_hosts` file of `hosts`. With `salt`, names are hashed, each with a fresh salt
/// from it.
pub fn known_hosts(
    hosts: &[InventoryHost],
    mut salt: Option<&mut dyn FnMut() -> [u8; 20]>,
) -> String {
    let keys: usize = hosts.iter().map(|h| h.ssh_host_keys.len()).sum();
    let with_keys = hosts.iter().filter(|h| !h.ssh_host_keys.is_empty()).count();
    let mut out = format!(
        "# ssh_known_hosts written by `assim export known-hosts` from the CMA's discovery: \
         {with_keys} hosts, {keys} keys\n"
    );
    for h in hosts {
        let names = names_of(h);
        for k in &h.ssh_host_keys {
            match salt.as_mut() {
                None => out.push_str(&format!("{} {} {}\n", names.join(","), k.key_type, k.key)),
                Some(salt) => {
                    for n in &names {
                        let s = salt();
                        out.push_str(&format!("{} {} {}\n", hashed_name(&s, n), k.key_type, k.key));
                    }
                }
            }
        }
    }
    out
}

/// `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`, OpenSSH's hashed host name.
pub fn hashed_name(salt: &[u8; 20], name: &str) -> String {
    format!("|1|{}|{}", STANDARD.encode(salt), STANDARD.encode(hmac_sha1(salt, name.as_bytes())))
}

/// The SSHFP algorithm number of an SSH key type (RFC 4255, 6594, 7479, 8709).
pub fn sshfp_algorithm(key_type: &str) -> Option<u8> {
    Some(match key_type {
        "ssh-rsa" => 1,
        "ssh-dss" => 2,
        "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521" => 3,
        "ssh-ed25519" => 4,
        "ssh-ed448" => 6,
        _ => return None,
    })
}

/// The SSHFP records of `hosts`.
pub fn sshfp(hosts: &[InventoryHost]) -> String {
    let mut out =
        String::from("; SSHFP records written by `assim export sshfp` from the CMA's discovery\n");
    for h in hosts {
        let name = h.fqdn.as_ref().map_or_else(|| h.host.clone(), |f| format!("{f}."));
        for k in &h.ssh_host_keys {
            let (Some(alg), Ok(blob)) = (sshfp_algorithm(&k.key_type), STANDARD.decode(&k.key))
            else {
                continue;
            };
            out.push_str(&format!("{name} IN SSHFP {alg} 1 {}\n", hex::encode(sha1(&blob))));
            out.push_str(&format!(
                "{name} IN SSHFP {alg} 2 {}\n",
                hex::encode(Sha256::digest(&blob))
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use assim_api::HostKey;

    // `ssh-keygen -t ed25519`, and what `ssh-keygen -r web1 -f key.pub` printed for it.
    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIPne/qmVfwexSw5BmoTlFvXNB9O8bNCrhDQy1X6Z1xCV";

    fn host() -> InventoryHost {
        InventoryHost {
            host: "web1".into(),
            node: "n1".into(),
            state: "up".into(),
            fqdn: Some("web1.example.com".into()),
            addresses: vec!["192.0.2.7".into(), "2001:db8::7".into()],
            ssh_host_keys: vec![HostKey {
                key_type: "ssh-ed25519".into(),
                key: KEY.into(),
                fingerprint: String::new(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn plain_lines_name_every_name_and_address() {
        let text = known_hosts(
            &[host(), InventoryHost { host: "nokeys".into(), ..host() }.without_keys()],
            None,
        );
        let lines: Vec<_> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [format!("web1,web1.example.com,192.0.2.7,2001:db8::7 ssh-ed25519 {KEY}")]
        );
    }

    #[test]
    fn hashed_lines_are_one_per_name_with_the_given_salt() {
        let mut n = 0u8;
        let mut salt = || {
            n += 1;
            [n; 20]
        };
        let text = known_hosts(&[host()], Some(&mut salt));
        let lines: Vec<_> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], format!("{} ssh-ed25519 {KEY}", hashed_name(&[1; 20], "web1")));
        assert!(!text.contains("web1,"), "no clear names: {text}");
    }

    #[test]
    fn sshfp_uses_the_fqdn_absolute_and_both_digests() {
        let text = sshfp(&[host()]);
        let lines: Vec<_> = text.lines().filter(|l| !l.starts_with(';')).collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("web1.example.com. IN SSHFP 4 1 "), "{text}");
        assert!(lines[1].starts_with("web1.example.com. IN SSHFP 4 2 "), "{text}");
        let no_fqdn = sshfp(&[InventoryHost { fqdn: None, ..host() }]);
        assert!(no_fqdn.contains("\nweb1 IN SSHFP 4 2 "), "{no_fqdn}");
    }

    trait WithoutKeys {
        fn without_keys(self) -> Self;
    }
    impl WithoutKeys for InventoryHost {
        fn without_keys(mut self) -> Self {
            self.ssh_host_keys.clear();
            self
        }
    }
}
