//! Mounted filesystems from `/proc/self/mounts`.

use serde::{Deserialize, Serialize};

use crate::error::{DiscoveryError, read_text};

/// One mount.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mount {
    /// Source device (`/dev/sda1`, `tmpfs`, …).
    pub device: String,
    /// Where it is mounted.
    pub mountpoint: String,
    /// Filesystem type.
    pub fstype: String,
    /// Mount options, in kernel order.
    pub options: Vec<String>,
}

/// Result of the mounts collector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mounts {
    /// Mounts in kernel (mount) order.
    pub mounts: Vec<Mount>,
}

/// Undoes the kernel's octal escapes (`\040` for space, `\011`, `\012`, `\134`).
pub fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mounts` (fstab format).
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 4).then(|| Mount {
                device: unescape_octal(f[0]),
                mountpoint: unescape_octal(f[1]),
                fstype: unescape_octal(f[2]),
                options: f[3].split(',').map(unescape_octal).collect(),
            })
        })
        .collect()
}

/// Reads this process's view of the mounts.
pub fn collect_mounts() -> Result<Mounts, DiscoveryError> {
    Ok(Mounts { mounts: parse_mounts(&read_text("/proc/self/mounts")?) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_with_escapes() {
        let text = "/dev/sda1 / ext4 rw,relatime 0 0\n/dev/sdb1 /mnt/my\\040disk vfat ro 0 0\nshort line\n";
        let m = parse_mounts(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].options, vec!["rw", "relatime"]);
        assert_eq!(m[1].mountpoint, "/mnt/my disk");
        assert_eq!(unescape_octal("a\\134b\\"), "a\\b\\");
    }
}
