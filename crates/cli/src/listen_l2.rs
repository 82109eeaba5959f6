//! `assim decode-l2 --listen`: the nanoprobe's LLDP/CDP listener, live, one JSON object per
//! frame. Each line carries the interface, the neighbour exactly as the `l2neighbors` collector
//! would report it, and the full decode.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use assim_capture::{FrameOutcome, L2Neighbours, Listener};
use serde_json::json;

/// Listens on `interface` (every up, non-loopback Ethernet interface when `None`) until
/// `count` LLDP/CDP frames were printed or `timeout` passed. Fails if none arrived in time.
pub fn listen(interface: Option<String>, count: usize, timeout: Duration) -> anyhow::Result<()> {
    assim_util::daemon::block_on(async move {
        let mut listener = Listener::open().context("cannot listen for LLDP/CDP")?;
        listener.rescan();
        let joined: Vec<_> = listener.interfaces().cloned().collect();
        if let Some(want) = &interface
            && !joined.iter().any(|i| &i.name == want)
        {
            anyhow::bail!(
                "interface {want} is not an up, non-loopback Ethernet interface here (have: {})",
                joined.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        eprintln!(
            "listening for LLDP/CDP on {} (up to {count} frames, {} s)",
            interface.clone().unwrap_or_else(|| {
                joined.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
            }),
            timeout.as_secs()
        );
        let deadline = Instant::now() + timeout;
        let mut printed = 0;
        while printed < count {
            let frame = match tokio::time::timeout_at(deadline.into(), listener.next_frame()).await
            {
                Ok(f) => f.context("capture failed")?,
                Err(_) => break,
            };
            if interface.as_ref().is_some_and(|want| *want != frame.interface) {
                continue;
            }
            let mut table = L2Neighbours::new();
            for i in listener.interfaces() {
                table.set_interface_mac(&i.name, &i.mac);
            }
            let outcome = table.handle_captured(
                &frame.interface,
                Instant::now(),
                &frame.bytes,
                frame.orig_len,
            );
            let neighbor = table.report().neighbors.into_iter().next();
            let decoded = assim_l2::decode_captured(&frame.bytes, frame.orig_len);
            let line = json!({
                "interface": frame.interface,
                "protocol": neighbor.as_ref().map(|n| n.protocol.clone()),
                "outcome": format!("{outcome:?}").to_lowercase(),
                "neighbor": neighbor,
                "decoded": decoded.as_ref().ok(),
                "error": decoded.as_ref().err().map(|e| e.to_string()),
                "truncated": frame.orig_len > frame.bytes.len(),
                "orig_len": frame.orig_len,
            });
            println!("{line}");
            if outcome != FrameOutcome::Ignored {
                printed += 1;
            }
        }
        if printed == 0 {
            anyhow::bail!("no LLDP or CDP frame arrived within {} s", timeout.as_secs());
        }
        Ok(())
    })
}
