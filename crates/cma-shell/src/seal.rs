//! Opening and sealing datagrams: the [`Seal`] trait the shell uses, implemented by
//! [`assim_seal::Sealer`] (the daemon) and by [`PlainSeal`] (the simulator: the same header and
//! key bookkeeping, no cryptography — sealing is not what the simulator measures).
//!
//! The shell's open path ([`Seal::open`]) gets the source address and `now`, because opening a
//! stranger's datagram is what a flood targets: the [`Sealer`] checks the mac1 before any
//! X25519 operation and takes first contacts and key requests out of its budgets
//! ([`assim_seal::admission`]), counting every refusal by reason. [`PlainSeal`] does no DH, so
//! it has no budgets and no mac1 (the simulator's datagrams are not the wire format).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use assim_seal::{OpenError, Opened, SealError, Sealer};
use assim_wire::{DatagramKind, Header, NodeId};

/// What the shell needs from datagram security.
pub trait Seal {
    /// Our reliable session (changes on every start).
    fn session(&self) -> u64;
    /// Parses and authenticates one datagram from `src` at `now`. An unknown sender that carried
    /// its key may be added provisionally ([`Opened::new_peer`]); the shell removes it again
    /// unless it enrols. First contacts and key requests are subject to the sealer's budgets.
    fn open(&mut self, now: Instant, src: SocketAddr, datagram: &[u8])
    -> Result<Opened, OpenError>;
    /// Seals `plaintext` of `kind` for `to` into `out`.
    fn seal(
        &mut self,
        to: NodeId,
        kind: DatagramKind,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError>;
    /// A clear-text reply carrying our public key, for the requester holding `to_key`.
    fn key_reply(&mut self, to_key: &[u8; 32], out: &mut Vec<u8>);
    /// A clear-text `Busy` for the requester holding `to_key`: ask again after `wait`.
    fn busy(&mut self, to_key: &[u8; 32], wait: std::time::Duration, out: &mut Vec<u8>);
    fn add_peer(&mut self, id: NodeId, public_key: [u8; 32]);
    fn remove_peer(&mut self, id: NodeId);
    fn peer_key(&self, id: NodeId) -> Option<[u8; 32]>;
    fn peer_count(&self) -> usize;
    /// Refused datagrams by reason so far.
    fn rejects(&self) -> Vec<(&'static str, u64)>;
    /// X25519 operations done so far.
    fn dh_ops(&self) -> u64 {
        0
    }
}

impl Seal for Sealer {
    fn session(&self) -> u64 {
        Sealer::session(self)
    }
    fn open(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
    ) -> Result<Opened, OpenError> {
        Sealer::open_from(self, now, src, datagram)
    }
    fn seal(
        &mut self,
        to: NodeId,
        kind: DatagramKind,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        Sealer::seal(self, to, kind, false, plaintext, out)
    }
    fn key_reply(&mut self, to_key: &[u8; 32], out: &mut Vec<u8>) {
        Sealer::key_reply(self, to_key, out)
    }
    fn busy(&mut self, to_key: &[u8; 32], wait: std::time::Duration, out: &mut Vec<u8>) {
        Sealer::busy(self, to_key, wait, out)
    }
    fn add_peer(&mut self, id: NodeId, public_key: [u8; 32]) {
        Sealer::add_peer(self, id, public_key)
    }
    fn remove_peer(&mut self, id: NodeId) {
        Sealer::remove_peer(self, id)
    }
    fn peer_key(&self, id: NodeId) -> Option<[u8; 32]> {
        Sealer::peer_key(self, id)
    }
    fn peer_count(&self) -> usize {
        Sealer::peer_count(self)
    }
    fn rejects(&self) -> Vec<(&'static str, u64)> {
        Sealer::rejects(self).iter().collect()
    }
    fn dh_ops(&self) -> u64 {
        Sealer::dh_ops(self)
    }
}

/// A [`Seal`] without cryptography, for simulators: a datagram is the wire header followed by
/// the plaintext. Peers are tracked exactly as [`Sealer`] tracks them (unknown senders are
/// added provisionally when they carry their key, a different key for a known id is a
/// `KeyMismatch`), so the shell's enrolment and forgetting are exercised; authenticity is not.
#[derive(Debug)]
pub struct PlainSeal {
    id: NodeId,
    public_key: [u8; 32],
    session: u64,
    counter: u64,
    peers: HashMap<NodeId, [u8; 32]>,
    rejects: BTreeMap<&'static str, u64>,
}

impl PlainSeal {
    /// A plain sealer for `id` in `session`; unknown senders carrying their key are accepted.
    pub fn new(id: NodeId, public_key: [u8; 32], session: u64) -> PlainSeal {
        PlainSeal {
            id,
            public_key,
            session,
            counter: 1,
            peers: HashMap::new(),
            rejects: BTreeMap::new(),
        }
    }

    /// Builds a plain datagram (what a simulated peer sends).
    pub fn datagram(
        kind: DatagramKind,
        sender: NodeId,
        session: u64,
        counter: u64,
        sender_key: Option<[u8; 32]>,
        plaintext: &[u8],
    ) -> Vec<u8> {
        let header = Header { kind, sender, session, counter, sender_key, mac1: false };
        let mut out = Vec::with_capacity(header.len() + plaintext.len());
        header.encode(&mut out);
        out.extend_from_slice(plaintext);
        out
    }

    /// Splits a plain datagram into its header and plaintext.
    pub fn parse(datagram: &[u8]) -> Option<(Header, &[u8])> {
        Header::decode(datagram).ok()
    }

    fn refuse(&mut self, e: OpenError) -> OpenError {
        *self.rejects.entry(e.reason()).or_insert(0) += 1;
        e
    }
}

impl Seal for PlainSeal {
    fn session(&self) -> u64 {
        self.session
    }

    fn open(&mut self, _: Instant, _: SocketAddr, datagram: &[u8]) -> Result<Opened, OpenError> {
        let (header, body) = match Header::decode(datagram) {
            Ok(x) => x,
            Err(e) => return Err(self.refuse(OpenError::Header(e))),
        };
        let plaintext = body.to_vec();
        if !header.kind.is_sealed() {
            return Ok(Opened { header, plaintext: Vec::new(), new_peer: false });
        }
        let mut new_peer = false;
        match (self.peers.get(&header.sender), header.sender_key) {
            (Some(k), Some(key)) if *k != key => {
                return Err(self.refuse(OpenError::KeyMismatch(header.sender)));
            }
            (Some(_), _) => {}
            (None, Some(key)) => {
                self.peers.insert(header.sender, key);
                new_peer = true;
            }
            (None, None) => return Err(self.refuse(OpenError::UnknownPeer(header.sender))),
        }
        Ok(Opened { header, plaintext, new_peer })
    }

    fn seal(
        &mut self,
        to: NodeId,
        kind: DatagramKind,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        if !self.peers.contains_key(&to) {
            return Err(SealError::UnknownPeer(to));
        }
        *out = PlainSeal::datagram(kind, self.id, self.session, self.counter, None, plaintext);
        self.counter += 1;
        Ok(())
    }

    fn key_reply(&mut self, _: &[u8; 32], out: &mut Vec<u8>) {
        let key = Some(self.public_key);
        *out = PlainSeal::datagram(
            DatagramKind::KeyReply,
            self.id,
            self.session,
            self.counter,
            key,
            &[],
        );
        self.counter += 1;
    }

    fn busy(&mut self, _: &[u8; 32], wait: std::time::Duration, out: &mut Vec<u8>) {
        let ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        *out = PlainSeal::datagram(
            DatagramKind::Busy,
            self.id,
            self.session,
            self.counter,
            None,
            &ms.to_be_bytes(),
        );
        self.counter += 1;
    }

    fn add_peer(&mut self, id: NodeId, public_key: [u8; 32]) {
        self.peers.insert(id, public_key);
    }

    fn remove_peer(&mut self, id: NodeId) {
        self.peers.remove(&id);
    }

    fn peer_key(&self, id: NodeId) -> Option<[u8; 32]> {
        self.peers.get(&id).copied()
    }

    fn peer_count(&self) -> usize {
        self.peers.len()
    }

    fn rejects(&self) -> Vec<(&'static str, u64)> {
        self.rejects.iter().map(|(k, v)| (*k, *v)).collect()
    }
}
