//! Memory figures from `/proc/self/status` (Linux; `None` elsewhere), and the CMA-per-node
//! estimate.

use assim_cma::{Cma, CmaConfig, Snapshot};
use assim_wire::Timestamp;

/// A field of `/proc/self/status` in bytes ("VmRSS", "VmHWM").
fn status_bytes(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kb: u64 = line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Resident set size now.
pub fn rss() -> Option<u64> {
    status_bytes("VmRSS")
}

/// Peak resident set size.
pub fn peak_rss() -> Option<u64> {
    status_bytes("VmHWM")
}

/// Estimates the CMA core's memory per registered node: the process RSS before and after
/// building a `Cma` and registering `ids.len()` nodes into it (hellos fed directly, actions
/// drained and dropped), divided by the count. Run before the simulation allocates anything
/// big, so freed memory is not reused. An estimate: RSS moves in pages and the allocator keeps
/// some slack.
pub fn cma_bytes_per_node(
    config: &CmaConfig,
    hellos: impl ExactSizeIterator<Item = (assim_wire::NodeId, [u8; 32], assim_wire::msg::Hello)>,
    now: Timestamp,
) -> Option<f64> {
    let n = hellos.len();
    let before = rss()?;
    let mut cma = Cma::new(config.clone(), Snapshot::default(), now);
    for (id, key, hello) in hellos {
        let _ = cma.handle_hello(now, id, key, &hello);
        while cma.poll_action().is_some() {}
    }
    let after = rss()?;
    drop(cma);
    (n > 0).then(|| after.saturating_sub(before) as f64 / n as f64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_rss_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(super::rss().unwrap() > 0);
            assert!(super::peak_rss().unwrap() >= super::rss().unwrap() / 2);
        }
    }
}
