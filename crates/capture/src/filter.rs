//! The classic BPF program the kernel runs on every frame before it reaches the socket, so the
//! listener wakes only for LLDP and CDP:
//!
//! ```text
//!  0  ldh [12]                 type/length field
//!  1  jeq #0x88cc   → 11, 2    LLDP ethertype: accept
//!  2  jgt #1500     → 12, 3    any other ethertype: reject; an 802.3 length goes on
//!  3  ld  [0]
//!  4  jeq #0x01000ccc → 5, 12  destination 01:00:0c:cc:cc:cc (CDP/VTP/DTP multicast) ...
//!  5  ldh [4]
//!  6  jeq #0xcccc   → 7, 12
//!  7  ld  [14]
//!  8  jeq #0xaaaa0300 → 9, 12  LLC DSAP AA, SSAP AA, control 03 (SNAP), first OUI byte 00
//!  9  ld  [18]
//! 10  jeq #0x000c2000 → 11, 12 OUI 00 00 0C, PID 0x2000: CDP
//! 11  ret #262144              accept the whole frame
//! 12  ret #0                   reject
//! ```
//!
//! VLAN-tagged LLDP is not expected (LLDP is link-local, untagged); the kernel strips
//! accelerated VLAN tags before the filter anyway. [`run`] is a small interpreter for exactly
//! these instructions, used by the tests to check the program against real frames.

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true (relative to the next instruction).
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant.
    pub k: u32,
}

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const LD_H_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGT_K: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// Bytes of a frame the socket receives at most (larger than any jumbo frame).
pub const SNAPLEN: u32 = 262_144;

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// The LLDP + CDP filter (see the module doc for the listing).
pub const LLDP_CDP: [Insn; 13] = [
    insn(LD_H_ABS, 0, 0, 12),
    insn(JEQ_K, 9, 0, 0x88cc),
    insn(JGT_K, 9, 0, 1500),
    insn(LD_W_ABS, 0, 0, 0),
    insn(JEQ_K, 0, 7, 0x0100_0ccc),
    insn(LD_H_ABS, 0, 0, 4),
    insn(JEQ_K, 0, 5, 0xcccc),
    insn(LD_W_ABS, 0, 0, 14),
    insn(JEQ_K, 0, 3, 0xaaaa_0300),
    insn(LD_W_ABS, 0, 0, 18),
    insn(JEQ_K, 0, 1, 0x000c_2000),
    insn(RET_K, 0, 0, SNAPLEN),
    insn(RET_K, 0, 0, 0),
];

/// Runs `prog` on `frame` the way the kernel does for the instructions used here: returns the
/// number of bytes accepted (0 = dropped). A load past the end of the frame drops it, as in
/// the kernel. Unknown opcodes drop too.
pub fn run(prog: &[Insn], frame: &[u8]) -> u32 {
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    while let Some(i) = prog.get(pc) {
        pc += 1;
        let k = i.k as usize;
        match i.code {
            LD_W_ABS => match frame.get(k..k + 4) {
                Some(b) => acc = u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                None => return 0,
            },
            LD_H_ABS => match frame.get(k..k + 2) {
                Some(b) => acc = u32::from(u16::from_be_bytes([b[0], b[1]])),
                None => return 0,
            },
            JEQ_K | JGT_K => {
                let hit = if i.code == JEQ_K { acc == i.k } else { acc > i.k };
                pc += usize::from(if hit { i.jt } else { i.jf });
            }
            RET_K => return i.k.min(frame.len() as u32),
            _ => return 0,
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lldp_frame() -> Vec<u8> {
        let mut f = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e, 2, 0, 0, 0, 0, 1, 0x88, 0xcc];
        f.extend_from_slice(&[0x02, 0x07, 0x04, 2, 0, 0, 0, 0, 1]);
        f
    }

    fn cdp_frame() -> Vec<u8> {
        let mut f = vec![0x01, 0x00, 0x0c, 0xcc, 0xcc, 0xcc, 2, 0, 0, 0, 0, 1, 0, 20];
        f.extend_from_slice(&[0xaa, 0xaa, 0x03, 0x00, 0x00, 0x0c, 0x20, 0x00]);
        f.extend_from_slice(&[2, 180, 0, 0, 0, 1, 0, 6, b's', b'w']);
        f
    }

    #[test]
    fn jumps_stay_inside_the_program() {
        for (n, i) in LLDP_CDP.iter().enumerate() {
            if matches!(i.code, JEQ_K | JGT_K) {
                assert!(n + 1 + usize::from(i.jt) < LLDP_CDP.len(), "insn {n}");
                assert!(n + 1 + usize::from(i.jf) < LLDP_CDP.len(), "insn {n}");
            }
        }
        assert_eq!(LLDP_CDP[11].k, SNAPLEN);
        assert_eq!(LLDP_CDP[12].k, 0);
    }

    #[test]
    fn accepts_lldp_and_cdp_only() {
        let lldp = lldp_frame();
        let cdp = cdp_frame();
        assert_eq!(run(&LLDP_CDP, &lldp), lldp.len() as u32);
        assert_eq!(run(&LLDP_CDP, &cdp), cdp.len() as u32);

        let mut ipv4 = lldp.clone();
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(run(&LLDP_CDP, &ipv4), 0);
        let mut vtp = cdp.clone();
        vtp[20..22].copy_from_slice(&[0x20, 0x03]); // VTP: same multicast, other PID
        assert_eq!(run(&LLDP_CDP, &vtp), 0);
        let mut unicast = cdp.clone();
        unicast[0] = 0x02;
        assert_eq!(run(&LLDP_CDP, &unicast), 0);
        let mut stp = cdp.clone();
        stp[14..17].copy_from_slice(&[0x42, 0x42, 0x03]);
        assert_eq!(run(&LLDP_CDP, &stp), 0);
        assert_eq!(run(&LLDP_CDP, &cdp[..19]), 0, "short frames are dropped");
        assert_eq!(run(&LLDP_CDP, &[]), 0);
    }

    /// The program agrees with the LLDP/CDP parser's own framing on every captured fixture.
    #[test]
    fn agrees_with_the_parser_on_fixtures() {
        use assim_util::testing::{l2_fixtures, skip};
        let dir = l2_fixtures(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
        let Some((dir, entries)) = dir.and_then(|d| std::fs::read_dir(&d).ok().map(|e| (d, e)))
        else {
            skip("shared/fixtures/l2 not found beside the checkout (or set ASSIM_L2_FIXTURES)");
            return;
        };
        let mut checked = 0;
        for e in entries.flatten() {
            let Ok(bytes) = std::fs::read(e.path()) else { continue };
            let Ok(reader) = assim_l2::pcap::Reader::new(&bytes) else { continue };
            for p in reader.flatten() {
                let Ok(f) = assim_l2::ether::parse(p.data) else { continue };
                let wanted = match f.payload {
                    assim_l2::ether::Payload::Lldp => true,
                    assim_l2::ether::Payload::Cdp => f.dst.0 == [1, 0, 0x0c, 0xcc, 0xcc, 0xcc],
                    _ => false,
                };
                if !f.vlan_tags.is_empty() {
                    continue; // the kernel strips these before the filter
                }
                assert_eq!(
                    run(&LLDP_CDP, p.data) > 0,
                    wanted,
                    "{} frame {}",
                    e.path().display(),
                    p.number
                );
                checked += 1;
            }
        }
        assert!(checked > 0, "no frames in {}", dir.display());
    }
}
