//! CPU model and count from `/proc/cpuinfo`; memory totals from `/proc/meminfo`.
//! Only stable figures are reported (no MHz, no free memory) so the content
//! hash changes only when the hardware does.

use serde::{Deserialize, Serialize};

use crate::error::{DiscoveryError, read_text};

/// Result of the cpu collector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// Model name of the first CPU (`model name`, or `Processor` / `cpu model`
    /// on other architectures).
    pub model: Option<String>,
    /// Number of logical CPUs (`processor` entries).
    pub logical_cpus: usize,
}

/// Result of the memory collector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemInfo {
    /// `MemTotal` in KiB.
    pub mem_total_kib: Option<u64>,
    /// `SwapTotal` in KiB.
    pub swap_total_kib: Option<u64>,
}

/// Parses `/proc/cpuinfo` text.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut fallback = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" if value.parse::<u64>().is_ok() => info.logical_cpus += 1,
            "model name" if info.model.is_none() && !value.is_empty() => {
                info.model = Some(value.to_string());
            }
            "Processor" | "cpu model" | "cpu" if fallback.is_none() && !value.is_empty() => {
                fallback = Some(value.to_string());
            }
            _ => {}
        }
    }
    info.model = info.model.or(fallback);
    info
}

/// Parses `/proc/meminfo` text.
pub fn parse_meminfo(text: &str) -> MemInfo {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.split_whitespace().next()?.parse().ok())?
        })
    };
    MemInfo { mem_total_kib: field("MemTotal"), swap_total_kib: field("SwapTotal") }
}

/// Reads CPU facts.
pub fn collect_cpu() -> Result<CpuInfo, DiscoveryError> {
    Ok(parse_cpuinfo(&read_text("/proc/cpuinfo")?))
}

/// Reads memory totals.
pub fn collect_memory() -> Result<MemInfo, DiscoveryError> {
    Ok(parse_meminfo(&read_text("/proc/meminfo")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_x86() {
        let text = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\ncpu MHz\t\t: 2200.0\n\n\
            processor\t: 1\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        let c = parse_cpuinfo(text);
        assert_eq!(c.logical_cpus, 2);
        assert_eq!(c.model.as_deref(), Some("Intel(R) Xeon(R) CPU @ 2.20GHz"));
    }

    #[test]
    fn meminfo_totals() {
        let m = parse_meminfo(
            "MemTotal:        8048324 kB\nMemFree:  1 kB\nSwapTotal:             0 kB\n",
        );
        assert_eq!(m.mem_total_kib, Some(8_048_324));
        assert_eq!(m.swap_total_kib, Some(0));
    }
}
