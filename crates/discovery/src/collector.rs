//! The collector registry: name → collect function, results as JSON with a
//! content hash, and [`ChangeFilter`] so the nanoprobe sends only changes.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DiscoveryError;
use crate::hash::try_content_hash;

/// Every host collector this crate offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Collector {
    /// [`crate::interfaces::collect_interfaces`].
    Interfaces,
    /// [`crate::neighbours::collect_neighbours`].
    Neighbours,
    /// [`crate::sockets::collect_sockets`].
    Sockets,
    /// [`crate::os::collect_os`].
    Os,
    /// [`crate::hw::collect_cpu`].
    Cpu,
    /// [`crate::hw::collect_memory`].
    Memory,
    /// [`crate::packages::collect_packages`].
    Packages,
    /// [`crate::mounts::collect_mounts`].
    Mounts,
    /// [`crate::sshkeys::collect_ssh_host_keys`].
    SshHostKeys,
    /// [`crate::raid::collect_raid_in`].
    Raid,
    /// [`crate::block::collect_block_devices_in`].
    BlockDevices,
    /// [`crate::integrity::collect_file_integrity_in`].
    FileIntegrity,
    /// sshd, PAM, sudoers, login.defs, sysctl, auditd and file modes ([`crate::security`]).
    Security,
}

/// One collector run: what the nanoprobe sends as a discovery result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Discovery {
    /// Collector name.
    pub name: String,
    /// SHA-256 of the canonical JSON of `payload`.
    #[serde(with = "hex_hash")]
    pub hash: [u8; 32],
    /// The collector's result.
    pub payload: serde_json::Value,
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(D::Error::custom)?;
        Ok(out)
    }
}

impl Discovery {
    /// A result from an already built JSON value (external agents, the L2 listener).
    pub fn from_value(name: &str, payload: serde_json::Value) -> Discovery {
        Discovery { name: name.to_string(), hash: crate::hash::content_hash(&payload), payload }
    }
}

fn to_discovery(name: &str, value: &impl Serialize) -> Result<Discovery, DiscoveryError> {
    Ok(Discovery {
        name: name.to_string(),
        hash: try_content_hash(value)?,
        payload: serde_json::to_value(value)?,
    })
}

impl Collector {
    /// All collectors, in a fixed order.
    pub const ALL: [Collector; 13] = [
        Collector::Interfaces,
        Collector::Neighbours,
        Collector::Sockets,
        Collector::Os,
        Collector::Cpu,
        Collector::Memory,
        Collector::Packages,
        Collector::Mounts,
        Collector::SshHostKeys,
        Collector::Raid,
        Collector::BlockDevices,
        Collector::FileIntegrity,
        Collector::Security,
    ];

    /// The name used in schedules and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Collector::Interfaces => "interfaces",
            Collector::Neighbours => "neighbours",
            Collector::Sockets => "sockets",
            Collector::Os => "os",
            Collector::Cpu => "cpu",
            Collector::Memory => "memory",
            Collector::Packages => "packages",
            Collector::Mounts => "mounts",
            Collector::SshHostKeys => "ssh_host_keys",
            Collector::Raid => "raid",
            Collector::BlockDevices => "block_devices",
            Collector::FileIntegrity => "file_integrity",
            Collector::Security => crate::security::NAME,
        }
    }

    /// Looks a collector up by [`Collector::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Runs the collector once on this host.
    pub fn collect(self) -> Result<Discovery, DiscoveryError> {
        self.collect_in(Path::new("/"))
    }

    /// Runs the collector once, reading the files of the collectors that take a root (`raid`,
    /// `block_devices`, `file_integrity`, `security`) under `root` instead of `/` (the nanoprobe's
    /// `--discovery-root`, for tests against a fake tree). The others always read this host.
    pub fn collect_in(self, root: &Path) -> Result<Discovery, DiscoveryError> {
        self.collect_with(root, &BTreeMap::new())
    }

    /// [`Collector::collect_in`] with the schedule's parameters for this collector
    /// (`file_integrity`: `paths`, `add`).
    pub fn collect_with(
        self,
        root: &Path,
        params: &BTreeMap<String, String>,
    ) -> Result<Discovery, DiscoveryError> {
        let name = self.name();
        match self {
            Collector::Interfaces => to_discovery(name, &crate::interfaces::collect_interfaces()?),
            Collector::Neighbours => to_discovery(name, &crate::neighbours::collect_neighbours()?),
            Collector::Sockets => crate::sockets::collect_sockets()?.to_discovery(),
            Collector::Os => to_discovery(name, &crate::os::collect_os()?),
            Collector::Cpu => to_discovery(name, &crate::hw::collect_cpu()?),
            Collector::Memory => to_discovery(name, &crate::hw::collect_memory()?),
            Collector::Packages => to_discovery(name, &crate::packages::collect_packages()?),
            Collector::Mounts => to_discovery(name, &crate::mounts::collect_mounts()?),
            Collector::SshHostKeys => to_discovery(name, &crate::sshkeys::collect_ssh_host_keys()?),
            Collector::Raid => to_discovery(name, &crate::raid::collect_raid_in(root)?),
            Collector::BlockDevices => {
                to_discovery(name, &crate::block::collect_block_devices_in(root)?)
            }
            Collector::FileIntegrity => {
                to_discovery(name, &crate::integrity::collect_file_integrity_in(root, params)?)
            }
            Collector::Security => to_discovery(name, &crate::security::collect_security_in(root)?),
        }
    }
}

/// Remembers the last hash sent per collector name.
#[derive(Clone, Debug, Default)]
pub struct ChangeFilter {
    last: BTreeMap<String, [u8; 32]>,
}

impl ChangeFilter {
    /// An empty filter: the first result of every collector is a change.
    pub fn new() -> Self {
        Self::default()
    }

    /// True (and remembered) if `d` differs from the last result under its name.
    pub fn changed(&mut self, d: &Discovery) -> bool {
        self.last.insert(d.name.clone(), d.hash) != Some(d.hash)
    }

    /// Forgets a name, e.g. after the CMA asks for a full resend.
    pub fn forget(&mut self, name: &str) {
        self.last.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Collector::ALL {
            assert_eq!(Collector::from_name(c.name()), Some(c));
        }
        assert_eq!(Collector::from_name("nope"), None);
    }

    #[test]
    fn change_filter() {
        let mut f = ChangeFilter::new();
        let a = to_discovery("x", &serde_json::json!({"a": 1})).unwrap();
        let b = to_discovery("x", &serde_json::json!({"a": 2})).unwrap();
        assert!(f.changed(&a));
        assert!(!f.changed(&a));
        assert!(f.changed(&b));
        f.forget("x");
        assert!(f.changed(&b));
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<Discovery>(&json).unwrap(), b);
    }
}
