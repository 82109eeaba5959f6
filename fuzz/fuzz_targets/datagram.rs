//! Feeds arbitrary bytes to everything that parses a received datagram: the header decoder, the
//! sealer (with unknown senders accepted, as at the CMA), and the message decoders on whatever
//! opens. None of them may panic, and nothing but a genuine seal may authenticate.
//!
//! The first input byte picks a mode, so the fuzzer reaches the deep paths without having to
//! guess a valid AEAD tag:
//! - 0: the rest is a datagram, opened as received;
//! - 1: the rest is a plaintext, sealed by the known node (kind and key flag from the next byte),
//!      which must open to the same plaintext, then decoded as a message;
//! - 2: a fixed heartbeat is sealed, the rest is XORed over it; it must authenticate only if
//!      unchanged (a changed kind byte may turn it into a clear-text key request or reply);
//! - 3: the rest is a datagram whose last 16 bytes are replaced by a valid mac1 for the
//!      receiver, so the fuzzer gets past the mac1 to the budgets and the paths behind them;
//!      it is opened with `open_from` (the next byte picks a loopback or other source and the
//!      time).
//!
//! Everywhere: a datagram refused at the header, the mac1 or a budget cost no X25519 operation
//! (`Sealer::dh_ops` did not move), and an X25519 operation costs at most one per datagram.
//!
//! The two identities are fixed bytes; the sealers live across inputs (building them costs three
//! X25519 operations), and any peer a raw input manages to add is removed again.
#![no_main]

use std::sync::{Mutex, OnceLock};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use assim_seal::{Identity, Mac1Key, OpenError, Sealer};
use assim_wire::msg::{Direct, DirectBody, Heartbeat, Message};
use assim_wire::{DatagramKind, Header, NodeId};
use libfuzzer_sys::fuzz_target;

struct State {
    /// The sender, known to the receiver.
    node: Sealer,
    /// The receiver ("the CMA"), accepting unknown senders that carry their key.
    cma: Sealer,
    out: Vec<u8>,
    mac1: Mac1Key,
    t0: Instant,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        let node_id = Identity::from_parts(NodeId([0x01; 16]), [0x11; 32]);
        let cma_id = Identity::from_parts(NodeId([0x02; 16]), [0x22; 32]);
        let mut node = Sealer::new(node_id.clone(), 1 << 16);
        node.add_peer(cma_id.node_id(), cma_id.public_key());
        let mut cma = Sealer::new(cma_id, 2 << 16);
        cma.add_peer(node_id.node_id(), node_id.public_key());
        cma.set_accept_unknown(true);
        let mac1 = Mac1Key::for_receiver(&cma.public_key());
        Mutex::new(State { node, cma, out: Vec::new(), mac1, t0: Instant::now() })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut guard = state().lock().unwrap_or_else(|e| e.into_inner());
    let State { node, cma, out, mac1, t0 } = &mut *guard;
    let cma_id = cma.node_id();
    match mode % 4 {
        0 => open_and_decode(cma, rest, None, None),
        3 => {
            let Some((&how, rest)) = rest.split_first() else {
                return;
            };
            out.clear();
            out.extend_from_slice(rest);
            if out.len() >= 16 {
                let n = out.len() - 16;
                let m = mac1.compute(&out[..n]);
                out[n..].copy_from_slice(&m);
            }
            let src: SocketAddr = if how & 1 == 0 {
                ([127, 0, 0, how], 9).into()
            } else {
                ([10, how, 0, 1], 9).into()
            };
            let now = *t0 + Duration::from_millis(u64::from(how >> 1) * 37);
            open_and_decode(cma, out, None, Some((now, src)));
        }
        1 => {
            let Some((&flags, plaintext)) = rest.split_first() else {
                return;
            };
            let kind = if flags & 1 == 0 { DatagramKind::Reliable } else { DatagramKind::Direct };
            let include_key = flags & 2 != 0;
            let plaintext = &plaintext[..plaintext.len().min(Sealer::max_plaintext(include_key))];
            node.seal(cma_id, kind, include_key, plaintext, out).expect("fits and peer known");
            open_and_decode(cma, out, Some(plaintext), None);
        }
        _ => {
            let hb = Direct {
                body: Some(DirectBody::Heartbeat(Heartbeat { epoch: 1, interval_ms: 1000 })),
            };
            node.seal(
                cma_id,
                DatagramKind::Direct,
                rest.first().is_some_and(|b| b & 1 != 0),
                &hb.to_bytes(),
                out,
            )
            .expect("fits and peer known");
            let mut changed = false;
            for (i, x) in rest.iter().skip(1).enumerate() {
                if i < out.len() && *x != 0 {
                    out[i] ^= x;
                    changed = true;
                }
            }
            let before = cma.rejects().total();
            let opened = cma.open(out);
            // Key requests and replies are clear text by design; everything else must be exact.
            let authenticated = opened.as_ref().is_ok_and(|o| o.header.kind.is_sealed());
            assert_eq!(authenticated, !changed, "tampering must be detected: {opened:?}");
            assert_eq!(cma.rejects().total(), before + u64::from(opened.is_err()));
        }
    }
});

/// Opens `datagram` at the receiver (with `from`: under the budgets) and decodes whatever
/// opens. With `expect`, it must open to exactly that plaintext.
fn open_and_decode(
    cma: &mut Sealer,
    datagram: &[u8],
    expect: Option<&[u8]>,
    from: Option<(Instant, SocketAddr)>,
) {
    let header = Header::decode(datagram);
    let before = cma.rejects().total();
    let dh = cma.dh_ops();
    let result = match from {
        Some((now, src)) => cma.open_from(now, src, datagram),
        None => cma.open(datagram),
    };
    assert!(cma.dh_ops() <= dh + 1, "more than one X25519 operation for one datagram");
    if let Err(
        OpenError::Header(_)
        | OpenError::BadMac1
        | OpenError::MissingMac1
        | OpenError::BadKeyRequest
        | OpenError::Throttled(_),
    ) = &result
    {
        assert_eq!(cma.dh_ops(), dh, "a cheap refusal cost an X25519 operation: {result:?}");
    }
    match result {
        Ok(opened) => {
            assert!(header.is_ok(), "opened a datagram whose header does not decode");
            if let Some(expect) = expect {
                assert_eq!(opened.plaintext, expect);
            } else if opened.header.kind.is_sealed() {
                // A raw input authenticated: only possible for a sender it added itself.
                assert!(opened.new_peer, "random bytes authenticated as a known peer");
            }
            if opened.new_peer {
                cma.remove_peer(opened.header.sender);
            }
            match opened.header.kind {
                DatagramKind::Reliable => {
                    let _ = Message::from_bytes(&opened.plaintext);
                }
                DatagramKind::Direct => {
                    let _ = Direct::from_bytes(&opened.plaintext);
                }
                DatagramKind::KeyRequest | DatagramKind::KeyReply => {
                    assert!(opened.plaintext.is_empty());
                }
                DatagramKind::Busy => {
                    assert_eq!(opened.plaintext.len(), assim_wire::header::BUSY_BODY_LEN);
                }
            }
        }
        Err(e) => {
            assert!(expect.is_none(), "a genuine seal was refused: {e:?}");
            assert_eq!(cma.rejects().total(), before + 1);
            let _ = e.reason();
        }
    }
    // The decoders on the raw body too, so they are exercised without a valid seal.
    if let Ok((_, body)) = header {
        let _ = Message::from_bytes(body);
        let _ = Direct::from_bytes(body);
    }
}
