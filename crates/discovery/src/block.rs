//! Block devices and their partitions from `/sys/block` (the `block_devices` collector).
//!
//! Per device: size, read-only, removable, rotational, model/vendor/serial where the driver
//! says, its kind (`disk`, `md`, `dm`, `loop`, `zram`, …), the devices it sits on (`slaves`)
//! and what sits on it (`holders`, e.g. the md array a disk is a member of), and partitions
//! (start and size). Devices of size 0 (unused loop devices, empty card readers) are left
//! out. Nothing volatile (I/O counters) is kept, so the result hashes the same on a quiet host.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DiscoveryError, read_bounded};

/// The most devices one result holds; more are ignored.
pub const MAX_DEVICES: usize = 4096;
/// The most partitions, holders or slaves kept per device.
pub const MAX_PER_DEVICE: usize = 256;

/// One partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Partition {
    /// `sda1`, `nvme0n1p2`.
    pub name: String,
    /// Partition number.
    pub number: Option<u32>,
    /// First sector (512-byte units).
    pub start: Option<u64>,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// One block device.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockDevice {
    /// Kernel name (`sda`, `md0`, `loop0`).
    pub name: String,
    /// `disk`, `md`, `dm`, `loop`, `zram`, `nvme`, `virtio`, … (from the name).
    pub kind: String,
    /// Size in bytes.
    pub size_bytes: u64,
    pub read_only: bool,
    pub removable: bool,
    /// `queue/rotational` (spinning disk), if the kernel says.
    pub rotational: Option<bool>,
    /// `device/model`, `device/vendor`, `device/serial` (trimmed), where present.
    pub model: Option<String>,
    pub vendor: Option<String>,
    pub serial: Option<String>,
    /// Device-mapper name (`dm/name`), e.g. an LVM volume.
    pub dm_name: Option<String>,
    /// Devices this one is built on (`slaves/`), sorted.
    pub slaves: Vec<String>,
    /// Devices built on this one (`holders/`), sorted.
    pub holders: Vec<String>,
    /// Partitions, sorted by name.
    pub partitions: Vec<Partition>,
}

/// Result of the `block_devices` collector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevices {
    /// Devices sorted by name.
    pub devices: Vec<BlockDevice>,
}

/// The kind of a device from its kernel name.
pub fn kind_of(name: &str) -> &'static str {
    let starts = |p: &str| name.starts_with(p);
    if starts("md") {
        "md"
    } else if starts("dm-") {
        "dm"
    } else if starts("loop") {
        "loop"
    } else if starts("zram") {
        "zram"
    } else if starts("ram") {
        "ram"
    } else if starts("nvme") {
        "nvme"
    } else if starts("vd") {
        "virtio"
    } else if starts("sr") {
        "optical"
    } else if starts("mmcblk") {
        "mmc"
    } else if starts("nbd") {
        "nbd"
    } else if starts("sd") || starts("hd") || starts("xvd") {
        "disk"
    } else {
        "other"
    }
}

/// A sysfs text value: first line, trimmed, printable, at most 256 bytes; `None` if empty.
pub fn parse_sys_text(text: &str) -> Option<String> {
    let line = text.lines().next()?.trim();
    if line.is_empty() || line.len() > 256 || line.chars().any(char::is_control) {
        return None;
    }
    Some(line.to_string())
}

/// A sysfs number (first word).
pub fn parse_sys_u64(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

fn text(path: &Path) -> Option<String> {
    read_bounded(path).and_then(|t| parse_sys_text(&t))
}

fn number(path: &Path) -> Option<u64> {
    read_bounded(path).and_then(|t| parse_sys_u64(&t))
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .take(MAX_PER_DEVICE)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn read_device(dir: &Path, name: &str) -> BlockDevice {
    let size_bytes = number(&dir.join("size")).unwrap_or(0).saturating_mul(512);
    let mut partitions = Vec::new();
    for sub in names_in(dir) {
        let p = dir.join(&sub);
        if !p.join("partition").exists() {
            continue;
        }
        partitions.push(Partition {
            number: number(&p.join("partition")).and_then(|n| u32::try_from(n).ok()),
            start: number(&p.join("start")),
            size_bytes: number(&p.join("size")).unwrap_or(0).saturating_mul(512),
            name: sub,
        });
    }
    partitions.sort();
    BlockDevice {
        name: name.to_string(),
        kind: kind_of(name).to_string(),
        size_bytes,
        read_only: number(&dir.join("ro")) == Some(1),
        removable: number(&dir.join("removable")) == Some(1),
        rotational: number(&dir.join("queue/rotational")).map(|n| n == 1),
        model: text(&dir.join("device/model")),
        vendor: text(&dir.join("device/vendor")),
        serial: text(&dir.join("device/serial")),
        dm_name: text(&dir.join("dm/name")),
        slaves: names_in(&dir.join("slaves")),
        holders: names_in(&dir.join("holders")),
        partitions,
    }
}

/// Reads the block devices under `root` (`/` on a host; a fake root in tests).
pub fn collect_block_devices_in(root: &Path) -> Result<BlockDevices, DiscoveryError> {
    let dir = root.join("sys/block");
    let entries = std::fs::read_dir(&dir)
        .map_err(|source| DiscoveryError::Read { path: dir.clone(), source })?;
    let mut devices = Vec::new();
    for e in entries.flatten().take(MAX_DEVICES) {
        let name = e.file_name().to_string_lossy().into_owned();
        let d = read_device(&e.path(), &name);
        if d.size_bytes > 0 {
            devices.push(d);
        }
    }
    devices.sort();
    Ok(BlockDevices { devices })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_sysfs_tree() {
        let root = tempfile::tempdir().unwrap();
        let w = |p: &str, v: &str| {
            let p = root.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        w("sys/block/sda/size", "2097152\n");
        w("sys/block/sda/ro", "0\n");
        w("sys/block/sda/removable", "0\n");
        w("sys/block/sda/queue/rotational", "1\n");
        w("sys/block/sda/device/model", "QEMU HARDDISK   \n");
        w("sys/block/sda/sda1/partition", "1\n");
        w("sys/block/sda/sda1/start", "2048\n");
        w("sys/block/sda/sda1/size", "1000000\n");
        std::fs::create_dir_all(root.path().join("sys/block/sda/holders/md0")).unwrap();
        w("sys/block/loop3/size", "0\n");
        w("sys/block/md0/size", "2000\n");
        w("sys/block/md0/device/model", "bad\u{7}model\n");
        let b = collect_block_devices_in(root.path()).unwrap();
        assert_eq!(b.devices.len(), 2, "size-0 loop device left out");
        let sda = &b.devices[1];
        assert_eq!(sda.name, "sda");
        assert_eq!(sda.size_bytes, 1 << 30);
        assert_eq!(sda.rotational, Some(true));
        assert_eq!(sda.model.as_deref(), Some("QEMU HARDDISK"));
        assert_eq!(sda.holders, ["md0"]);
        assert_eq!(sda.partitions[0].start, Some(2048));
        assert_eq!(sda.partitions[0].number, Some(1));
        assert_eq!(b.devices[0].kind, "md");
        assert_eq!(b.devices[0].model, None, "control characters refused");
    }
}
