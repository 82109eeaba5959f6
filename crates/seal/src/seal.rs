//! Sealing and opening datagrams.
//!
//! Every sealed datagram is encrypted and authenticated with a key that only its sender and its
//! receiver can compute, so a heartbeat cannot be forged by a third node, commands cannot be
//! forged by anyone but the CMA, and nothing can be replayed.
//!
//! # Key schedule
//!
//! ```text
//! shared  = X25519(our secret, their public)         all-zero (low-order key) => BadKey
//! key(s→r) = HKDF-SHA256(salt = "assim-v1", ikm = shared,
//!                        info = "assim v1 datagram" || sender id (16) || receiver id (16))  32 bytes
//! tx key  = key(us → them)      rx key = key(them → us)      both cached per peer
//! ```
//!
//! # Datagram layout
//!
//! ```text
//! offset        size  field
//!  0             40   header (assim_wire::header): magic, version, kind, flags, reserved,
//!                     sender id, sender session (BE), counter (BE)
//! 40            [32]  sender public key, only when header flag bit 0 is set
//! H              n    ciphertext of the plaintext (XChaCha20), n = plaintext length
//! H + n          16   Poly1305 tag
//! H + n + 16    [16]  mac1 (crate::mac1, keyed by the receiver's public key), present exactly
//!                     when the key is (flag bit 1 set with flag bit 0)
//!                     H = 40 or 72; H + n + 16 (+ 16) <= MAX_DATAGRAM_SIZE (1232)
//!
//! AEAD  = XChaCha20-Poly1305 with the tx key
//! nonce = session (8, BE) || counter (8, BE) || 8 zero bytes                     24 bytes
//! AAD   = the H header bytes, public key included
//! ```
//!
//! The counter is per [`Sealer`] (shared by all peers), starts at 1 and grows with every sealed
//! datagram; the session grows across restarts ([`crate::new_session`]). A `(key, nonce)` pair is
//! therefore never reused. The two key-discovery kinds are clear text and consume a counter value
//! too: a `KeyRequest` is the header, the requester's public key and 16 zero bytes of padding; a
//! `KeyReply` is the header, the answerer's public key and a mac1 keyed by the requester's key.
//! Both are [`KEY_REQUEST_LEN`] (88) bytes: an answer is never larger than its request. A `Busy`
//! (the CMA's "ask again in N ms" to a key request beyond its budget, [`Sealer::busy`]) is the
//! header without key, the 4-byte wait and a mac1 keyed by the requester's key: 60 bytes.
//!
//! # Which datagrams carry mac1, and why only those
//!
//! mac1 is on every datagram whose opening may cost the receiver an X25519 operation: the sealed
//! kinds when they carry the sender's key (a CMA derives keys for a sender it does not know from
//! it), `KeyReply` (an unknown answerer's key is checked for low order) and `Busy` (so that only
//! a sender that saw the requester's key can make it wait). Datagrams between
//! peers that hold each other's keys (heartbeats, the CMA's frames and probes) carry neither key
//! nor mac1: opening them costs a table lookup, the replay check and one AEAD, never a DH, so a
//! mac1 would buy nothing for its 16 bytes. A nanoprobe always sends its key (and so a mac1) to
//! the CMA, so that a CMA that lost its state can still take it as a first contact.
//!
//! # Opening
//!
//! [`Sealer::open`] parses the header (size limits first, nothing allocated before) and checks
//! the mac1 in constant time if the datagram has one, and requires one where the rules above
//! do, before any X25519. Then it finds the peer's cached rx key (for an unknown sender that is
//! accepted, [`Sealer::open_from`] first takes a token from the first-contact [`Budget`], then
//! derives its keys: the only DH on this path), runs the cheap replay check, authenticates and
//! decrypts, and only then records the counter in the peer's [`ReplayWindow`] (for a peer set up
//! with [`Sealer::set_peer_sources`], the CMA as its packet readers reach a nanoprobe: in the
//! window of the datagram's session, [`SourceWindows`], the source address deciding where a new
//! session goes; [`Sealer::open_at`] and [`Sealer::open_from`] know the source). A `KeyRequest`
//! at [`Sealer::open_from`] takes a token from the key-request budget. Every refusal increments
//! the [`RejectCounters`] entry for its [`OpenError::reason`] and changes nothing else.
//! [`Sealer::dh_ops`] counts the X25519 operations done so far.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use assim_wire::header::{HEADER_LEN, KEY_REQUEST_LEN, MAC1_LEN, PUBKEY_LEN, split_mac1};
use assim_wire::limits::{AEAD_TAG_LEN, MAX_DATAGRAM_SIZE};
use assim_wire::{DatagramKind, Header, HeaderError, NodeId};
use chacha20poly1305::aead::{AeadInPlace as _, KeyInit as _};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::PublicKey;

use crate::admission::{Budget, Limits, Refusal};
use crate::identity::Identity;
use crate::mac1::Mac1Key;
use crate::replay::{ReplayError, ReplayWindow, SourceWindows};

const HKDF_SALT: &[u8] = b"assim-v1";
const HKDF_INFO: &[u8] = b"assim v1 datagram";

/// Why [`Sealer::seal`] refused. Nothing changed (the counter did not advance, `out` may have
/// been cleared).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// We hold no usable key for this peer (never added, removed, or a low-order key).
    #[error("no usable key for peer {0}")]
    UnknownPeer(NodeId),
    /// The plaintext does not fit one datagram.
    #[error("plaintext of {len} bytes exceeds the {max}-byte limit of one datagram")]
    TooLarge { len: usize, max: usize },
}

/// Why [`Sealer::open`] refused a datagram. In every case the only state change is the reject
/// counter for [`reason`](OpenError::reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Truncated, oversized, bad magic, unsupported version or unknown kind.
    #[error(transparent)]
    Header(HeaderError),
    /// A sealed datagram from a sender we hold no key for (and we do not accept unknown senders,
    /// or it did not carry its key).
    #[error("sealed datagram from unknown peer {0}")]
    UnknownPeer(NodeId),
    /// The header carries a public key different from the one we hold for that node id.
    #[error("peer {0} presented a public key different from the one we hold")]
    KeyMismatch(NodeId),
    /// The AEAD failed: tampered, wrong key, or a body shorter than the tag.
    #[error("datagram failed authentication")]
    Unauthenticated,
    /// The counter was already seen, or is too old for the replay window.
    #[error("replayed datagram")]
    Replayed,
    /// A session older than the newest one we have seen from that peer.
    #[error("datagram from a stale session")]
    StaleSession,
    /// The peer's key yields an all-zero shared secret (a low-order point), or a `KeyReply`
    /// carried no key.
    #[error("unusable public key")]
    BadKey,
    /// A datagram that must carry a mac1 (it carries a key, or is a `KeyReply`) has none.
    #[error("datagram without the mac1 its kind requires")]
    MissingMac1,
    /// The mac1 does not verify: garbage, or meant for another receiver. No DH was done.
    #[error("datagram failed the mac1 check")]
    BadMac1,
    /// A `KeyRequest` without the requester's key or shorter than its reply would be.
    #[error("malformed key request")]
    BadKeyRequest,
    /// A `Busy` whose body is not the 4-byte wait.
    #[error("malformed busy answer")]
    BadBusy,
    /// Refused by a budget ([`Sealer::open_from`]); no DH was done and no answer is sent.
    #[error("over the {} budget", .0.reason())]
    Throttled(Throttle),
}

/// Which budget refused a datagram, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// First contacts: this source is over its allowance while the budget is contended.
    FirstContactSource,
    /// First contacts: the global budget is used up.
    FirstContactBudget,
    /// Key requests: this source is over its allowance while the budget is contended.
    KeyRequestSource,
    /// Key requests: the global budget is used up.
    KeyRequestBudget,
}

impl Throttle {
    /// The reject counter's label.
    pub fn reason(self) -> &'static str {
        match self {
            Throttle::FirstContactSource => "first_contact_source",
            Throttle::FirstContactBudget => "first_contact_budget",
            Throttle::KeyRequestSource => "key_request_source",
            Throttle::KeyRequestBudget => "key_request_budget",
        }
    }
}

impl OpenError {
    /// A short stable snake_case name, used as the reject counter's label.
    pub fn reason(&self) -> &'static str {
        match self {
            OpenError::Header(e) => e.reason(),
            OpenError::UnknownPeer(_) => "unknown_peer",
            OpenError::KeyMismatch(_) => "key_mismatch",
            OpenError::Unauthenticated => "unauthenticated",
            OpenError::Replayed => "replayed",
            OpenError::StaleSession => "stale_session",
            OpenError::BadKey => "bad_key",
            OpenError::MissingMac1 => "no_mac1",
            OpenError::BadMac1 => "bad_mac1",
            OpenError::BadKeyRequest => "bad_key_request",
            OpenError::BadBusy => "bad_busy",
            OpenError::Throttled(t) => t.reason(),
        }
    }
}

impl From<HeaderError> for OpenError {
    fn from(e: HeaderError) -> Self {
        OpenError::Header(e)
    }
}

/// Every reject reason, in a fixed order (a bounded label set for metrics).
const REASONS: [&str; 19] = [
    "truncated",
    "oversized",
    "bad_magic",
    "bad_version",
    "unknown_kind",
    "unknown_peer",
    "key_mismatch",
    "unauthenticated",
    "replayed",
    "stale_session",
    "bad_key",
    "no_mac1",
    "bad_mac1",
    "bad_key_request",
    "bad_busy",
    "first_contact_source",
    "first_contact_budget",
    "key_request_source",
    "key_request_budget",
];

/// How many datagrams [`Sealer::open`] refused, per reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RejectCounters {
    counts: [u64; REASONS.len()],
}

impl RejectCounters {
    /// The count for `reason` (0 for a name that is not a reason).
    pub fn get(&self, reason: &str) -> u64 {
        REASONS.iter().position(|r| *r == reason).map_or(0, |i| self.counts[i])
    }

    /// Every reason with its count, zeros included, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        REASONS.iter().copied().zip(self.counts.iter().copied())
    }

    /// All refusals.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn bump(&mut self, reason: &str) {
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            self.counts[i] += 1;
        }
    }
}

/// A datagram [`Sealer::open`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The authenticated header (clear text for the key-discovery kinds).
    pub header: Header,
    /// The decrypted payload; empty for `KeyRequest` and `KeyReply`.
    pub plaintext: Vec<u8>,
    /// The sender was unknown and has just been added (only with `set_accept_unknown(true)`).
    pub new_peer: bool,
}

/// What we hold for one peer.
#[derive(Clone)]
struct Peer {
    public: [u8; 32],
    /// The mac1 key of datagrams to this peer.
    mac1: Mac1Key,
    /// `None` when the peer's key is low order: we neither seal to it nor accept from it.
    keys: Option<PeerKeys>,
    replay: Replay,
}

/// A peer's replay state: one window, or one per sender session for an identity that sends
/// from several addresses ([`Sealer::set_peer_sources`]).
#[derive(Clone)]
enum Replay {
    One(ReplayWindow),
    Sources(SourceWindows),
}

impl Replay {
    /// Whether the datagram would be accepted, and the slot to commit it to.
    fn check(
        &self,
        src: Option<SocketAddr>,
        session: u64,
        counter: u64,
    ) -> Result<usize, OpenError> {
        let r = match self {
            Replay::One(w) => w.check(session, counter).map(|()| 0),
            Replay::Sources(w) => w.check(src, session, counter),
        };
        r.map_err(|e| match e {
            ReplayError::Replayed => OpenError::Replayed,
            ReplayError::StaleSession => OpenError::StaleSession,
        })
    }

    fn commit(&mut self, slot: usize, session: u64, counter: u64) {
        match self {
            Replay::One(w) => w.commit(session, counter),
            Replay::Sources(w) => w.commit(slot, session, counter),
        }
    }
}

/// Why [`Sealer::set_peer_sources`] refused an address list (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} source addresses for one peer, at most {max} are allowed", max = crate::replay::MAX_SOURCES)]
pub struct TooManySources(pub usize);

#[derive(Clone)]
struct PeerKeys {
    tx: XChaCha20Poly1305,
    rx: XChaCha20Poly1305,
}

/// Seals and opens one node's datagrams. One per node, owned by its IO loop (no locking inside).
pub struct Sealer {
    identity: Identity,
    session: u64,
    /// The counter of the next datagram; starts at 1.
    next_counter: u64,
    accept_unknown: bool,
    peers: HashMap<NodeId, Peer>,
    rejects: RejectCounters,
    /// The mac1 key of datagrams to us.
    own_mac1: Mac1Key,
    /// X25519 operations done so far.
    dh_ops: Cell<u64>,
    first_contacts: Budget,
    key_requests: Budget,
    /// Peers whose replay state is kept per sender session ([`Sealer::set_peer_sources`]).
    sources: HashMap<NodeId, Vec<SocketAddr>>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("identity", &self.identity)
            .field("session", &self.session)
            .field("next_counter", &self.next_counter)
            .field("accept_unknown", &self.accept_unknown)
            .field("peers", &self.peers.len())
            .field("rejects", &self.rejects.total())
            .field("dh_ops", &self.dh_ops.get())
            .finish()
    }
}

impl Sealer {
    /// A sealer for `identity` in `session` (see [`crate::new_session`]).
    pub fn new(identity: Identity, session: u64) -> Sealer {
        Sealer {
            own_mac1: Mac1Key::for_receiver(&identity.public_key()),
            dh_ops: Cell::new(0),
            first_contacts: Budget::new(Limits::FIRST_CONTACT),
            key_requests: Budget::new(Limits::KEY_REQUEST),
            identity,
            session,
            next_counter: 1,
            accept_unknown: false,
            peers: HashMap::new(),
            rejects: RejectCounters::default(),
            sources: HashMap::new(),
        }
    }

    /// Our node id.
    pub fn node_id(&self) -> NodeId {
        self.identity.node_id()
    }

    /// Our public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.identity.public_key()
    }

    /// Our session.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// When true (the CMA), a sealed datagram from an unknown sender that carries its public key
    /// in the header is accepted: keys are derived, the AEAD is checked, and on success the peer
    /// is added and [`Opened::new_peer`] is true. Whether to keep it is the caller's decision
    /// (e.g. after checking a join-token proof); [`remove_peer`](Self::remove_peer) forgets it.
    pub fn set_accept_unknown(&mut self, accept: bool) {
        self.accept_unknown = accept;
    }

    /// Adds a peer. Idempotent; a different key replaces the old one and resets its replay state.
    pub fn add_peer(&mut self, id: NodeId, public_key: [u8; 32]) {
        if self.peers.get(&id).is_some_and(|p| p.public == public_key) {
            return;
        }
        let peer = self.derive_peer(id, public_key);
        self.peers.insert(id, peer);
    }

    /// Forgets a peer, its keys and its replay state.
    pub fn remove_peer(&mut self, id: NodeId) {
        self.peers.remove(&id);
    }

    /// Datagrams from `id` come from several senders that share its identity, each with its
    /// own session, at the addresses `listed` (the CMA's packet readers, issue 14): its replay
    /// state is kept per sender session ([`SourceWindows`]: a window per session, a slot per
    /// listed address and one for all others), so that no sender's datagrams are refused as
    /// stale because another sender's session is newer, and no datagram is accepted twice from
    /// any address. Open its datagrams with [`open_at`](Self::open_at) or
    /// [`open_from`](Self::open_from), which know the source. Called again, the slots of
    /// addresses still listed are kept and what the others accepted stays refused; the setting
    /// survives [`add_peer`](Self::add_peer) with a new key (which starts the state afresh).
    /// Refused: more than [`crate::replay::MAX_SOURCES`] addresses.
    pub fn set_peer_sources(
        &mut self,
        id: NodeId,
        listed: &[SocketAddr],
    ) -> Result<(), TooManySources> {
        if SourceWindows::new(listed).is_none() {
            return Err(TooManySources(listed.len()));
        }
        if let Some(peer) = self.peers.get_mut(&id) {
            let replay = std::mem::replace(&mut peer.replay, Replay::One(ReplayWindow::new()));
            peer.replay = Replay::Sources(match replay {
                Replay::Sources(mut w) => {
                    w.relist(listed).expect("the list was checked above");
                    w
                }
                Replay::One(one) => {
                    SourceWindows::from_window(listed, one).expect("the list was checked above")
                }
            });
        }
        self.sources.insert(id, listed.to_vec());
        Ok(())
    }

    /// The sessions of `id` whose datagrams are accepted now, per listed address and then for
    /// all others (a peer set up with [`set_peer_sources`](Self::set_peer_sources)).
    pub fn peer_sessions(&self, id: NodeId) -> Option<Vec<Option<u64>>> {
        match &self.peers.get(&id)?.replay {
            Replay::Sources(w) => Some(w.sessions()),
            Replay::One(w) => Some(vec![w.session()]),
        }
    }

    /// The public key we hold for `id`.
    pub fn peer_key(&self, id: NodeId) -> Option<[u8; 32]> {
        self.peers.get(&id).map(|p| p.public)
    }

    /// How many peers we hold keys for.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The refusals so far, per reason.
    pub fn rejects(&self) -> &RejectCounters {
        &self.rejects
    }

    /// X25519 operations done so far (key derivations for peers, low-order checks).
    pub fn dh_ops(&self) -> u64 {
        self.dh_ops.get()
    }

    /// Replaces the limits of the first-contact and key-request budgets of
    /// [`open_from`](Self::open_from) (defaults: [`Limits::FIRST_CONTACT`],
    /// [`Limits::KEY_REQUEST`]); their buckets start full again.
    pub fn set_limits(&mut self, first_contacts: Limits, key_requests: Limits) {
        self.first_contacts = Budget::new(first_contacts);
        self.key_requests = Budget::new(key_requests);
    }

    /// Source entries held by the two budgets (bounded by their `sources` limits).
    pub fn tracked_sources(&self) -> usize {
        self.first_contacts.tracked_sources() + self.key_requests.tracked_sources()
    }

    /// Largest plaintext that fits one datagram (a datagram with our key carries a mac1 too).
    pub fn max_plaintext(include_key: bool) -> usize {
        let key = if include_key { PUBKEY_LEN + MAC1_LEN } else { 0 };
        MAX_DATAGRAM_SIZE - HEADER_LEN - key - AEAD_TAG_LEN
    }

    /// Seals `plaintext` for `to` into `out` (cleared first): the header (kind, our id, our
    /// session, the next counter, our public key if `include_key`), then ciphertext and tag,
    /// then, with our key, the mac1 for `to`.
    ///
    /// `kind` should be a sealed kind (`Reliable` or `Direct`); the key-discovery kinds are built
    /// by [`key_request`](Self::key_request) and [`key_reply`](Self::key_reply).
    pub fn seal(
        &mut self,
        to: NodeId,
        kind: DatagramKind,
        include_key: bool,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        out.clear();
        let max = Self::max_plaintext(include_key);
        if plaintext.len() > max {
            return Err(SealError::TooLarge { len: plaintext.len(), max });
        }
        let Some((keys, mac1)) =
            self.peers.get(&to).and_then(|p| p.keys.as_ref().map(|k| (k, &p.mac1)))
        else {
            return Err(SealError::UnknownPeer(to));
        };
        let counter = self.next_counter;
        let header = Header {
            kind,
            sender: self.identity.node_id(),
            session: self.session,
            counter,
            sender_key: include_key.then(|| self.identity.public_key()),
            mac1: include_key,
        };
        out.reserve(header.len() + plaintext.len() + AEAD_TAG_LEN + MAC1_LEN);
        header.encode(out);
        let header_len = out.len();
        out.extend_from_slice(plaintext);
        let (aad, body) = out.split_at_mut(header_len);
        let tag = keys
            .tx
            .encrypt_in_place_detached(&nonce(self.session, counter), aad, body)
            .expect("XChaCha20Poly1305 encrypts any plaintext that fits a datagram");
        out.extend_from_slice(&tag);
        if include_key {
            let m = mac1.compute(out);
            out.extend_from_slice(&m);
        }
        self.next_counter += 1;
        Ok(())
    }

    /// A clear-text `KeyRequest` from us ("tell me your public key"), trust-on-first-use only:
    /// our key (so that the reply can carry a mac1 for us) and zero padding up to the reply's
    /// length.
    pub fn key_request(&mut self, out: &mut Vec<u8>) {
        self.clear_text(DatagramKind::KeyRequest, false, out);
        out.resize(KEY_REQUEST_LEN, 0);
    }

    /// A clear-text `KeyReply` carrying our public key, with a mac1 for `to_key` (the key the
    /// request carried).
    pub fn key_reply(&mut self, to_key: &[u8; 32], out: &mut Vec<u8>) {
        self.clear_text(DatagramKind::KeyReply, true, out);
        let m = Mac1Key::for_receiver(to_key).compute(out);
        out.extend_from_slice(&m);
    }

    /// A clear-text `Busy` for the requester holding `to_key`: "ask again after `wait`"
    /// (milliseconds, saturating at `u32::MAX`), with a mac1 for `to_key`. No larger than the
    /// key request it answers ([`assim_wire::header::BUSY_LEN`]).
    pub fn busy(&mut self, to_key: &[u8; 32], wait: std::time::Duration, out: &mut Vec<u8>) {
        out.clear();
        let header = Header {
            kind: DatagramKind::Busy,
            sender: self.identity.node_id(),
            session: self.session,
            counter: self.next_counter,
            sender_key: None,
            mac1: true,
        };
        header.encode(out);
        self.next_counter += 1;
        let ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        out.extend_from_slice(&ms.to_be_bytes());
        let m = Mac1Key::for_receiver(to_key).compute(out);
        out.extend_from_slice(&m);
    }

    /// The wait a `Busy` that [`open`](Self::open) accepted asks for.
    pub fn busy_wait(opened: &Opened) -> Option<std::time::Duration> {
        if opened.header.kind != DatagramKind::Busy {
            return None;
        }
        let ms: [u8; 4] = opened.plaintext.as_slice().try_into().ok()?;
        Some(std::time::Duration::from_millis(u32::from_be_bytes(ms).into()))
    }

    fn clear_text(&mut self, kind: DatagramKind, mac1: bool, out: &mut Vec<u8>) {
        out.clear();
        let header = Header {
            kind,
            sender: self.identity.node_id(),
            session: self.session,
            counter: self.next_counter,
            sender_key: Some(self.identity.public_key()),
            mac1,
        };
        header.encode(out);
        self.next_counter += 1;
    }

    /// Parses one datagram and, for the sealed kinds, authenticates, decrypts and replay-checks
    /// it. Every refusal increments the reject counter for its reason.
    ///
    /// `KeyRequest` and `KeyReply` are returned with an empty plaintext and are not
    /// authenticated (the caller decides whether it wants them); a `KeyReply` must carry a usable
    /// key, and one that contradicts the key we hold for its sender is a `KeyMismatch`.
    ///
    /// No budget applies here: this is for receivers that take no first contacts and answer no
    /// key requests (nanoprobes, tests). A CMA uses [`open_from`](Self::open_from).
    pub fn open(&mut self, datagram: &[u8]) -> Result<Opened, OpenError> {
        let result = self.open_inner(datagram, None, None);
        if let Err(e) = &result {
            self.rejects.bump(e.reason());
        }
        result
    }

    /// [`open`](Self::open) for a datagram that came from `src`: the same, except that a peer
    /// set up with [`set_peer_sources`](Self::set_peer_sources) is replay-checked in the window
    /// of the datagram's session, with `src` deciding the slot of a new one. No budget applies.
    pub fn open_at(&mut self, datagram: &[u8], src: SocketAddr) -> Result<Opened, OpenError> {
        let result = self.open_inner(datagram, Some(src), None);
        if let Err(e) = &result {
            self.rejects.bump(e.reason());
        }
        result
    }

    /// [`open_at`](Self::open_at) for a datagram from `src` at `now`, under the budgets: a first
    /// contact (a sealed datagram from a sender we hold no key for) takes a token from the
    /// first-contact budget before its DH, a `KeyRequest` one from the key-request budget
    /// (the caller answers only what this returns). Refused: [`OpenError::Throttled`].
    pub fn open_from(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
    ) -> Result<Opened, OpenError> {
        let result = self.open_inner(datagram, Some(src), Some(now));
        if let Err(e) = &result {
            self.rejects.bump(e.reason());
        }
        result
    }

    fn open_inner(
        &mut self,
        datagram: &[u8],
        src: Option<SocketAddr>,
        budget_at: Option<Instant>,
    ) -> Result<Opened, OpenError> {
        let from = budget_at.zip(src);
        let (header, body) = Header::decode(datagram)?;
        let header_len = header.len();
        // mac1 first: a hash, never a DH. Required where opening may cost one.
        if header.mac1 {
            let (covered, mac) = split_mac1(datagram).ok_or(OpenError::MissingMac1)?;
            if !self.own_mac1.verify(covered, mac) {
                return Err(OpenError::BadMac1);
            }
        } else if matches!(header.kind, DatagramKind::KeyReply | DatagramKind::Busy)
            || (header.kind.is_sealed() && header.sender_key.is_some())
        {
            return Err(OpenError::MissingMac1);
        }
        match header.kind {
            DatagramKind::KeyRequest => {
                if header.sender_key.is_none() || datagram.len() < KEY_REQUEST_LEN {
                    return Err(OpenError::BadKeyRequest);
                }
                if let Some((now, src)) = from {
                    self.key_requests.admit(now, src.ip()).map_err(|r| {
                        OpenError::Throttled(match r {
                            Refusal::Source => Throttle::KeyRequestSource,
                            Refusal::Budget => Throttle::KeyRequestBudget,
                        })
                    })?;
                }
                return Ok(Opened { header, plaintext: Vec::new(), new_peer: false });
            }
            DatagramKind::KeyReply => {
                let key = header.sender_key.ok_or(OpenError::BadKey)?;
                match self.peers.get(&header.sender) {
                    Some(peer) if peer.public != key => {
                        return Err(OpenError::KeyMismatch(header.sender));
                    }
                    Some(_) => {}
                    None => {
                        if !self.shared_is_contributory(&key) {
                            return Err(OpenError::BadKey);
                        }
                    }
                }
                return Ok(Opened { header, plaintext: Vec::new(), new_peer: false });
            }
            DatagramKind::Busy => {
                // Clear text, checked by its mac1 above (it was made for our key); the caller
                // decides whether it asked the sender for anything.
                if body.len() != assim_wire::header::BUSY_BODY_LEN {
                    return Err(OpenError::BadBusy);
                }
                return Ok(Opened { header, plaintext: body.to_vec(), new_peer: false });
            }
            DatagramKind::Reliable | DatagramKind::Direct => {}
        }

        // Find (or, for a CMA, provisionally derive) the peer's keys, then the cheap replay check.
        let mut new_peer = None;
        let peer = match self.peers.get(&header.sender) {
            Some(peer) => {
                if header.sender_key.is_some_and(|k| k != peer.public) {
                    return Err(OpenError::KeyMismatch(header.sender));
                }
                peer
            }
            None => match header.sender_key {
                Some(key) if self.accept_unknown => {
                    if let Some((now, src)) = from {
                        self.first_contacts.admit(now, src.ip()).map_err(|r| {
                            OpenError::Throttled(match r {
                                Refusal::Source => Throttle::FirstContactSource,
                                Refusal::Budget => Throttle::FirstContactBudget,
                            })
                        })?;
                    }
                    &*new_peer.insert(self.derive_peer(header.sender, key))
                }
                _ => return Err(OpenError::UnknownPeer(header.sender)),
            },
        };
        let slot = peer.replay.check(src, header.session, header.counter)?;
        let keys = peer.keys.as_ref().ok_or(OpenError::BadKey)?;
        if body.len() < AEAD_TAG_LEN {
            return Err(OpenError::Unauthenticated);
        }
        let (ciphertext, tag) = body.split_at(body.len() - AEAD_TAG_LEN);
        let mut plaintext = ciphertext.to_vec();
        keys.rx
            .decrypt_in_place_detached(
                &nonce(header.session, header.counter),
                &datagram[..header_len],
                &mut plaintext,
                Tag::from_slice(tag),
            )
            .map_err(|_| OpenError::Unauthenticated)?;

        // Authenticated: only now may the replay state (and the peer table) change.
        let is_new = new_peer.is_some();
        if let Some(peer) = new_peer {
            self.peers.insert(header.sender, peer);
        }
        let peer = self.peers.get_mut(&header.sender).expect("peer present");
        peer.replay.commit(slot, header.session, header.counter);
        Ok(Opened { header, plaintext, new_peer: is_new })
    }

    fn shared_is_contributory(&self, their_public: &[u8; 32]) -> bool {
        self.dh_ops.set(self.dh_ops.get() + 1);
        self.identity.secret().diffie_hellman(&PublicKey::from(*their_public)).was_contributory()
    }

    /// Derives both directional keys for a peer (`keys: None` for a low-order key).
    fn derive_peer(&self, id: NodeId, public: [u8; 32]) -> Peer {
        self.dh_ops.set(self.dh_ops.get() + 1);
        let shared = self.identity.secret().diffie_hellman(&PublicKey::from(public));
        let keys = shared.was_contributory().then(|| {
            let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), shared.as_bytes());
            let me = self.identity.node_id();
            PeerKeys { tx: directional(&hk, me, id), rx: directional(&hk, id, me) }
        });
        let replay = match self.sources.get(&id).and_then(|l| SourceWindows::new(l)) {
            Some(w) => Replay::Sources(w),
            None => Replay::One(ReplayWindow::new()),
        };
        Peer { public, mac1: Mac1Key::for_receiver(&public), keys, replay }
    }
}

/// The AEAD for datagrams from `sender` to `receiver`.
fn directional(hk: &Hkdf<Sha256>, sender: NodeId, receiver: NodeId) -> XChaCha20Poly1305 {
    let mut key = [0u8; 32];
    hk.expand_multi_info(&[HKDF_INFO, sender.as_bytes(), receiver.as_bytes()], &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    let cipher = XChaCha20Poly1305::new(&key.into());
    key.fill(0);
    cipher
}

fn nonce(session: u64, counter: u64) -> XNonce {
    let mut n = [0u8; 24];
    n[..8].copy_from_slice(&session.to_be_bytes());
    n[8..16].copy_from_slice(&counter.to_be_bytes());
    n.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use assim_wire::msg;
    use proptest::prelude::*;
    use std::time::Duration;

    fn ident(n: u8) -> Identity {
        Identity::from_parts(NodeId([n; 16]), [n.wrapping_mul(37).wrapping_add(1); 32])
    }

    /// Two sealers that know each other's keys.
    fn pair() -> (Sealer, Sealer) {
        let (a, b) = (ident(1), ident(2));
        let mut sa = Sealer::new(a.clone(), 100);
        let mut sb = Sealer::new(b.clone(), 200);
        sa.add_peer(b.node_id(), b.public_key());
        sb.add_peer(a.node_id(), a.public_key());
        (sa, sb)
    }

    fn heartbeat() -> Vec<u8> {
        msg::Direct {
            body: Some(msg::DirectBody::Heartbeat(msg::Heartbeat { epoch: 3, interval_ms: 1000 })),
        }
        .to_bytes()
    }

    fn sealed(from: &mut Sealer, to: NodeId, include_key: bool, pt: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        from.seal(to, DatagramKind::Direct, include_key, pt, &mut out).unwrap();
        out
    }

    #[test]
    fn round_trip_both_directions_with_and_without_key() {
        let (mut a, mut b) = pair();
        for include_key in [false, true] {
            let dg = sealed(&mut a, b.node_id(), include_key, b"hello b");
            let expected_len =
                HEADER_LEN + if include_key { 32 + MAC1_LEN } else { 0 } + 7 + AEAD_TAG_LEN;
            assert_eq!(dg.len(), expected_len);
            let opened = b.open(&dg).unwrap();
            assert_eq!(opened.plaintext, b"hello b");
            assert_eq!(opened.header.sender, a.node_id());
            assert_eq!(opened.header.session, 100);
            assert_eq!(opened.header.sender_key.is_some(), include_key);
            assert!(!opened.new_peer);

            let dg = sealed(&mut b, a.node_id(), include_key, b"hello a");
            assert_eq!(a.open(&dg).unwrap().plaintext, b"hello a");
        }
        // Counters start at 1 and grow per datagram.
        let dg1 = sealed(&mut a, b.node_id(), false, b"");
        let dg2 = sealed(&mut a, b.node_id(), false, b"");
        let c1 = Header::decode(&dg1).unwrap().0.counter;
        assert_eq!(Header::decode(&dg2).unwrap().0.counter, c1 + 1);
        assert_eq!(b.open(&dg1).unwrap().plaintext, b"");
        assert_eq!(b.rejects().total(), 0);
    }

    #[test]
    fn ciphertext_hides_the_plaintext() {
        let (mut a, b) = pair();
        let pt = b"a very recognisable plaintext string";
        let dg = sealed(&mut a, b.node_id(), false, pt);
        assert!(!dg.windows(pt.len()).any(|w| w == pt));
    }

    #[test]
    fn seal_refuses_unknown_peer_and_oversized_plaintext() {
        let (mut a, b) = pair();
        let mut out = vec![1, 2, 3];
        let err = a.seal(NodeId([9; 16]), DatagramKind::Direct, false, b"x", &mut out);
        assert_eq!(err, Err(SealError::UnknownPeer(NodeId([9; 16]))));
        assert!(out.is_empty());
        for include_key in [false, true] {
            let max = Sealer::max_plaintext(include_key);
            let big = vec![0u8; max + 1];
            let err = a.seal(b.node_id(), DatagramKind::Reliable, include_key, &big, &mut out);
            assert_eq!(err, Err(SealError::TooLarge { len: max + 1, max }));
            let ok = vec![0u8; max];
            a.seal(b.node_id(), DatagramKind::Reliable, include_key, &ok, &mut out).unwrap();
            assert_eq!(out.len(), MAX_DATAGRAM_SIZE);
        }
        assert_eq!(Sealer::max_plaintext(false), 1232 - 40 - 16);
        assert_eq!(Sealer::max_plaintext(true), 1232 - 72 - 16 - 16);
    }

    /// Recomputes the mac1 of a datagram for `receiver` (what anyone knowing its public key
    /// can do), so that a tampered datagram reaches the checks behind the mac1.
    fn remac(dg: &mut [u8], receiver: &[u8; 32]) {
        let n = dg.len() - MAC1_LEN;
        let m = Mac1Key::for_receiver(receiver).compute(&dg[..n]);
        dg[n..].copy_from_slice(&m);
    }

    #[test]
    fn every_single_byte_flip_is_rejected_and_counted() {
        for include_key in [false, true] {
            let (mut a, mut b) = pair();
            let dg = sealed(&mut a, b.node_id(), include_key, &heartbeat());
            let mut rejected = 0;
            for i in 0..dg.len() {
                for bit in 0..8 {
                    let mut bad = dg.clone();
                    bad[i] ^= 1 << bit;
                    let err = b.open(&bad).unwrap_err();
                    rejected += 1;
                    if include_key && i >= HEADER_LEN {
                        // mac1 covers everything: refused before any key lookup or AEAD.
                        assert_eq!(err, OpenError::BadMac1, "byte {i} bit {bit}");
                    } else if i >= HEADER_LEN {
                        assert_eq!(err, OpenError::Unauthenticated, "byte {i} bit {bit}");
                    }
                    if include_key {
                        // Past the mac1, as an attacker who knows B's key: still refused.
                        if i < dg.len() - MAC1_LEN && bad[4] & 0x02 != 0 {
                            remac(&mut bad, &b.public_key());
                            b.open(&bad).unwrap_err();
                            rejected += 1;
                        }
                    }
                }
            }
            assert_eq!(b.rejects().total(), rejected);
            assert!(b.rejects().get("unauthenticated") > 0);
            assert!(b.rejects().get("bad_magic") > 0);
            assert!(b.rejects().get("unknown_kind") > 0);
            assert!(b.rejects().get("unknown_peer") > 0);
            if include_key {
                assert!(b.rejects().get("key_mismatch") > 0);
                assert!(b.rejects().get("bad_mac1") > 0);
                assert!(b.rejects().get("no_mac1") > 0);
            }
            // The forged attempts did not move the window: the original still opens.
            assert_eq!(b.open(&dg).unwrap().plaintext, heartbeat());
        }
    }

    #[test]
    fn truncated_and_oversized_are_rejected() {
        let (mut a, mut b) = pair();
        let dg = sealed(&mut a, b.node_id(), false, b"0123456789");
        for len in 0..dg.len() {
            let err = b.open(&dg[..len]).unwrap_err();
            let want = if len < HEADER_LEN { "truncated" } else { "unauthenticated" };
            assert_eq!(err.reason(), want, "len {len}");
        }
        let mut big = dg.clone();
        big.resize(MAX_DATAGRAM_SIZE + 1, 0);
        assert_eq!(b.open(&big).unwrap_err().reason(), "oversized");
        assert_eq!(b.rejects().get("truncated"), HEADER_LEN as u64);
        assert_eq!(b.rejects().get("unauthenticated"), (dg.len() - HEADER_LEN) as u64);
        assert_eq!(b.rejects().get("oversized"), 1);
        assert_eq!(b.open(&dg).unwrap().plaintext, b"0123456789");
    }

    #[test]
    fn replays_are_rejected_and_reordering_within_the_window_is_not() {
        let (mut a, mut b) = pair();
        let d1 = sealed(&mut a, b.node_id(), false, b"1");
        let d2 = sealed(&mut a, b.node_id(), false, b"2");
        let d3 = sealed(&mut a, b.node_id(), false, b"3");
        b.open(&d1).unwrap();
        b.open(&d3).unwrap();
        assert_eq!(b.open(&d1), Err(OpenError::Replayed));
        assert_eq!(b.open(&d3), Err(OpenError::Replayed));
        b.open(&d2).unwrap();
        assert_eq!(b.open(&d2), Err(OpenError::Replayed));
        // Far behind the window: refused as replayed even though never seen.
        let old = sealed(&mut a, b.node_id(), false, b"old");
        for _ in 0..ReplayWindow::WINDOW {
            let d = sealed(&mut a, b.node_id(), false, b"n");
            b.open(&d).unwrap();
        }
        assert_eq!(b.open(&old), Err(OpenError::Replayed));
        assert_eq!(b.rejects().get("replayed"), 4);
    }

    #[test]
    fn restarted_peer_is_accepted_and_its_old_session_is_stale() {
        let (mut a, mut b) = pair();
        let before = sealed(&mut a, b.node_id(), false, b"before");
        let before2 = sealed(&mut a, b.node_id(), false, b"before2");
        b.open(&before).unwrap();

        // Same identity, restarted: a larger session and the counter back at 1.
        let mut a2 = Sealer::new(ident(1), a.session() + 1);
        a2.add_peer(b.node_id(), b.public_key());
        let after = sealed(&mut a2, b.node_id(), false, b"after");
        assert_eq!(Header::decode(&after).unwrap().0.counter, 1);
        assert_eq!(b.open(&after).unwrap().plaintext, b"after");
        assert_eq!(b.open(&before2), Err(OpenError::StaleSession));
        assert_eq!(b.rejects().get("stale_session"), 1);
        let after2 = sealed(&mut a2, b.node_id(), false, b"after2");
        assert_eq!(b.open(&after2).unwrap().plaintext, b"after2");
    }

    /// One identity, two senders (packet readers) with sessions of their own: with
    /// `set_peer_sources` both are accepted; a datagram of either replayed from any address is
    /// refused; the setting survives a new key; more addresses than allowed are refused.
    #[test]
    fn peer_sources_accept_every_reader_and_no_replay() {
        let (node_id, cma_id) = (ident(1), ident(2));
        let mut node = Sealer::new(node_id.clone(), 1);
        node.add_peer(cma_id.node_id(), cma_id.public_key());
        let (x_addr, y_addr) = (src(1), src(2));
        node.set_peer_sources(cma_id.node_id(), &[x_addr, y_addr]).unwrap();
        let mut x = Sealer::new(cma_id.clone(), 200);
        let mut y = Sealer::new(cma_id.clone(), 100);
        x.add_peer(node_id.node_id(), node_id.public_key());
        y.add_peer(node_id.node_id(), node_id.public_key());
        let dx = sealed(&mut x, node_id.node_id(), false, b"x");
        let dy = sealed(&mut y, node_id.node_id(), false, b"y");
        assert_eq!(node.open_at(&dx, x_addr).unwrap().plaintext, b"x");
        assert_eq!(node.open_at(&dy, y_addr).unwrap().plaintext, b"y", "older, own window");
        for from in [x_addr, y_addr, src(9)] {
            assert_eq!(node.open_at(&dx, from), Err(OpenError::Replayed));
            assert_eq!(node.open_at(&dy, from), Err(OpenError::Replayed));
        }
        assert_eq!(node.open(&dx), Err(OpenError::Replayed), "no address known");
        assert_eq!(node.peer_sessions(cma_id.node_id()), Some(vec![Some(200), Some(100), None]));
        // Without the setting, the older reader is refused (one window per peer).
        let mut plain = Sealer::new(node_id.clone(), 1);
        plain.add_peer(cma_id.node_id(), cma_id.public_key());
        let dx2 = sealed(&mut x, node_id.node_id(), false, b"x2");
        let dy2 = sealed(&mut y, node_id.node_id(), false, b"y2");
        plain.open_at(&dx2, x_addr).unwrap();
        assert_eq!(plain.open_at(&dy2, y_addr), Err(OpenError::StaleSession));
        // A new key starts afresh but keeps the setting.
        let rekeyed = Identity::from_parts(cma_id.node_id(), [77; 32]);
        node.add_peer(cma_id.node_id(), rekeyed.public_key());
        assert_eq!(node.peer_sessions(cma_id.node_id()), Some(vec![None, None, None]));
        let many: Vec<SocketAddr> = (0..=crate::replay::MAX_SOURCES as u32).map(src).collect();
        assert_eq!(node.set_peer_sources(cma_id.node_id(), &many), Err(TooManySources(many.len())));
    }

    #[test]
    fn a_third_node_cannot_forge_a_heartbeat() {
        let (a, mut b) = pair();
        let mallory = ident(3);
        // Mallory knows everyone's public keys and claims to be A in the header.
        let mut m = Sealer::new(Identity::from_parts(a.node_id(), [3 * 37 + 1; 32]), 999);
        m.add_peer(b.node_id(), b.public_key());
        let forged = sealed(&mut m, b.node_id(), false, &heartbeat());
        assert_eq!(b.open(&forged), Err(OpenError::Unauthenticated));
        // Mallory under its own id, which B does not know.
        let mut m = Sealer::new(mallory.clone(), 5);
        m.add_peer(b.node_id(), b.public_key());
        let dg = sealed(&mut m, b.node_id(), false, &heartbeat());
        assert_eq!(b.open(&dg), Err(OpenError::UnknownPeer(mallory.node_id())));
        // Claiming A's id but presenting its own key in the header.
        let mut m = Sealer::new(Identity::from_parts(a.node_id(), [3 * 37 + 1; 32]), 5);
        m.add_peer(b.node_id(), b.public_key());
        let dg = sealed(&mut m, b.node_id(), true, &heartbeat());
        assert_eq!(b.open(&dg), Err(OpenError::KeyMismatch(a.node_id())));
        assert_eq!(b.rejects().total(), 3);
    }

    #[test]
    fn a_datagram_for_someone_else_does_not_open() {
        let (a_id, b_id, c_id) = (ident(1), ident(2), ident(3));
        let mut a = Sealer::new(a_id.clone(), 1);
        a.add_peer(b_id.node_id(), b_id.public_key());
        let mut c = Sealer::new(c_id, 1);
        c.add_peer(a_id.node_id(), a_id.public_key());
        let dg = sealed(&mut a, b_id.node_id(), false, b"for b only");
        assert_eq!(c.open(&dg), Err(OpenError::Unauthenticated));
    }

    #[test]
    fn accept_unknown_adds_the_peer_only_after_authentication() {
        let (node, cma_id) = (ident(1), ident(2));
        let mut probe = Sealer::new(node.clone(), 10);
        probe.add_peer(cma_id.node_id(), cma_id.public_key());
        let mut cma = Sealer::new(cma_id.clone(), 20);

        let hello = sealed(&mut probe, cma.node_id(), true, b"hello");
        // Off by default.
        assert_eq!(cma.open(&hello), Err(OpenError::UnknownPeer(node.node_id())));
        cma.set_accept_unknown(true);
        // Without the key in the header it cannot be opened.
        let no_key = sealed(&mut probe, cma.node_id(), false, b"hello");
        assert_eq!(cma.open(&no_key), Err(OpenError::UnknownPeer(node.node_id())));
        // A tampered first contact adds nothing: the mac1 catches it, and with a fresh mac1 the
        // AEAD does.
        let mut bad = hello.clone();
        bad[HEADER_LEN + 32] ^= 1;
        assert_eq!(cma.open(&bad), Err(OpenError::BadMac1));
        remac(&mut bad, &cma.public_key());
        assert_eq!(cma.open(&bad), Err(OpenError::Unauthenticated));
        assert_eq!(cma.peer_count(), 0);

        let opened = cma.open(&hello).unwrap();
        assert!(opened.new_peer);
        assert_eq!(opened.plaintext, b"hello");
        assert_eq!(cma.peer_key(node.node_id()), Some(node.public_key()));
        assert_eq!(cma.open(&hello), Err(OpenError::Replayed));
        let opened = cma.open(&no_key).unwrap();
        assert!(!opened.new_peer);

        // The CMA answers; the node opens it.
        let reply = sealed(&mut cma, node.node_id(), false, b"welcome");
        assert_eq!(probe.open(&reply).unwrap().plaintext, b"welcome");
    }

    #[test]
    fn low_order_keys_are_refused() {
        let me = ident(1);
        let mut s = Sealer::new(me.clone(), 1);
        s.set_accept_unknown(true);
        // A sender presenting the all-zero (low-order) public key.
        let mut dg = Vec::new();
        Header {
            kind: DatagramKind::Direct,
            sender: NodeId([7; 16]),
            session: 1,
            counter: 1,
            sender_key: Some([0; 32]),
            mac1: true,
        }
        .encode(&mut dg);
        dg.extend_from_slice(&[0; 20 + MAC1_LEN]);
        remac(&mut dg, &me.public_key());
        assert_eq!(s.open(&dg), Err(OpenError::BadKey));
        assert_eq!(s.peer_count(), 0);
        // Added by hand: we neither seal to it nor open from it.
        s.add_peer(NodeId([7; 16]), [0; 32]);
        let mut out = Vec::new();
        let err = s.seal(NodeId([7; 16]), DatagramKind::Direct, false, b"x", &mut out);
        assert_eq!(err, Err(SealError::UnknownPeer(NodeId([7; 16]))));
        assert_eq!(s.open(&dg), Err(OpenError::BadKey));
        assert_eq!(s.rejects().get("bad_key"), 2);
    }

    #[test]
    fn busy_carries_the_wait_only_to_the_requester() {
        let (mut cma, mut node) = pair();
        let mut out = Vec::new();
        cma.busy(&node.public_key(), Duration::from_millis(1234), &mut out);
        assert_eq!(out.len(), assim_wire::header::BUSY_LEN);
        assert!(out.len() <= KEY_REQUEST_LEN, "a Busy is never larger than the request");
        let opened = node.open(&out).unwrap();
        assert_eq!(opened.header.kind, DatagramKind::Busy);
        assert_eq!(opened.header.sender, cma.node_id());
        assert_eq!(Sealer::busy_wait(&opened), Some(Duration::from_millis(1234)));
        // Waits beyond u32 milliseconds saturate.
        cma.busy(&node.public_key(), Duration::from_secs(10_000_000), &mut out);
        let opened = node.open(&out).unwrap();
        assert_eq!(Sealer::busy_wait(&opened), Some(Duration::from_millis(u32::MAX.into())));
        // Made for another key: the mac1 fails.
        let other = Sealer::new(ident(5), 1);
        cma.busy(&other.public_key(), Duration::from_millis(5), &mut out);
        assert_eq!(node.open(&out), Err(OpenError::BadMac1));
        // Without its mac1, or with a body that is not the 4-byte wait: refused.
        let mut bare = Vec::new();
        Header {
            kind: DatagramKind::Busy,
            sender: cma.node_id(),
            session: 1,
            counter: 9,
            sender_key: None,
            mac1: false,
        }
        .encode(&mut bare);
        bare.extend_from_slice(&[0, 0, 0, 1]);
        assert_eq!(node.open(&bare), Err(OpenError::MissingMac1));
        let mut long = bare.clone();
        long[4] |= assim_wire::header::FLAG_MAC1;
        long.extend_from_slice(&[0; 1 + MAC1_LEN]);
        remac(&mut long, &node.public_key());
        assert_eq!(node.open(&long), Err(OpenError::BadBusy));
        assert_eq!(node.rejects().get("bad_busy"), 1);
        // Any other opened datagram has no wait.
        cma.key_reply(&node.public_key(), &mut out);
        assert_eq!(Sealer::busy_wait(&node.open(&out).unwrap()), None);
    }

    #[test]
    fn key_discovery_datagrams() {
        let (mut a, mut b) = pair();
        let mut out = Vec::new();
        a.key_request(&mut out);
        assert_eq!(out.len(), KEY_REQUEST_LEN);
        let opened = b.open(&out).unwrap();
        assert_eq!(opened.header.kind, DatagramKind::KeyRequest);
        assert_eq!(opened.header.sender_key, Some(a.public_key()));
        assert!(opened.plaintext.is_empty());

        b.key_reply(&a.public_key(), &mut out);
        assert_eq!(out.len(), KEY_REQUEST_LEN, "a reply is never larger than the request");
        let opened = a.open(&out).unwrap();
        assert_eq!(opened.header.kind, DatagramKind::KeyReply);
        assert_eq!(opened.header.sender_key, Some(b.public_key()));
        assert!(opened.plaintext.is_empty());

        // A stranger's reply is returned for the caller to judge (trust on first use).
        let mut stranger = Sealer::new(ident(5), 1);
        stranger.key_reply(&a.public_key(), &mut out);
        assert_eq!(a.open(&out).unwrap().header.sender, NodeId([5; 16]));
        // A reply with a mac1 for someone else, or none, is refused before any DH.
        stranger.key_reply(&b.public_key(), &mut out);
        let dh = a.dh_ops();
        assert_eq!(a.open(&out), Err(OpenError::BadMac1));
        b.key_request(&mut out);
        out[3] = DatagramKind::KeyReply as u8;
        assert_eq!(a.open(&out), Err(OpenError::MissingMac1));
        assert_eq!(a.dh_ops(), dh);

        // A reply contradicting the key we hold is refused.
        let mut impostor = Sealer::new(Identity::from_parts(b.node_id(), [99; 32]), 1);
        impostor.key_reply(&a.public_key(), &mut out);
        assert_eq!(a.open(&out), Err(OpenError::KeyMismatch(b.node_id())));

        // A short (version 1 style) or keyless request is refused, so is no reflector.
        a.key_request(&mut out);
        assert_eq!(b.open(&out[..HEADER_LEN + 32]), Err(OpenError::BadKeyRequest));
        out[4] = 0;
        assert_eq!(b.open(&out), Err(OpenError::BadKeyRequest));
    }

    #[test]
    fn add_peer_is_idempotent_and_a_new_key_replaces_the_old() {
        let (mut a, mut b) = pair();
        let d1 = sealed(&mut a, b.node_id(), false, b"1");
        b.open(&d1).unwrap();
        b.add_peer(a.node_id(), a.public_key());
        assert_eq!(b.peer_count(), 1);
        assert_eq!(b.open(&d1), Err(OpenError::Replayed), "same key keeps the replay state");

        // A re-keyed A (new key pair, same id).
        let new_a = Identity::from_parts(a.node_id(), [77; 32]);
        b.add_peer(a.node_id(), new_a.public_key());
        assert_eq!(b.peer_key(a.node_id()), Some(new_a.public_key()));
        assert_eq!(b.peer_count(), 1);
        let mut a2 = Sealer::new(new_a, a.session());
        a2.add_peer(b.node_id(), b.public_key());
        let d = sealed(&mut a2, b.node_id(), false, b"rekeyed");
        assert_eq!(b.open(&d).unwrap().plaintext, b"rekeyed");
        // The old key no longer opens.
        let old = sealed(&mut a, b.node_id(), false, b"old key");
        assert_eq!(b.open(&old), Err(OpenError::Unauthenticated));

        b.remove_peer(a.node_id());
        assert_eq!(b.peer_count(), 0);
        assert_eq!(b.peer_key(a.node_id()), None);
        assert_eq!(b.open(&d), Err(OpenError::UnknownPeer(a.node_id())));
    }

    #[test]
    fn reasons_and_counters() {
        let c = RejectCounters::default();
        assert_eq!(c.iter().count(), 19);
        assert_eq!(c.total(), 0);
        assert_eq!(c.get("no_such_reason"), 0);
        let errors = [
            OpenError::Header(HeaderError::Truncated(1)),
            OpenError::Header(HeaderError::Oversized(2000)),
            OpenError::Header(HeaderError::BadMagic),
            OpenError::Header(HeaderError::UnsupportedVersion(2)),
            OpenError::Header(HeaderError::UnknownKind(9)),
            OpenError::UnknownPeer(NodeId::default()),
            OpenError::KeyMismatch(NodeId::default()),
            OpenError::Unauthenticated,
            OpenError::Replayed,
            OpenError::StaleSession,
            OpenError::BadKey,
            OpenError::MissingMac1,
            OpenError::BadMac1,
            OpenError::BadKeyRequest,
            OpenError::BadBusy,
            OpenError::Throttled(Throttle::FirstContactSource),
            OpenError::Throttled(Throttle::FirstContactBudget),
            OpenError::Throttled(Throttle::KeyRequestSource),
            OpenError::Throttled(Throttle::KeyRequestBudget),
        ];
        let names: Vec<_> = errors.iter().map(OpenError::reason).collect();
        assert_eq!(names, REASONS);
        let dbg = format!("{:?}", pair().0);
        assert!(dbg.contains("Sealer"), "{dbg}");
    }

    /// A first contact for `cma` under a new random sender id, as a flooder makes it: one valid
    /// datagram, then the id rewritten and the mac1 recomputed (cheap for the sender; the AEAD
    /// then fails, but only after the receiver's DH).
    fn flood_datagram(
        template: &[u8],
        cma_key: &[u8; 32],
        rng: &mut impl rand::RngCore,
    ) -> Vec<u8> {
        let mut dg = template.to_vec();
        rng.fill_bytes(&mut dg[8..24]);
        remac(&mut dg, cma_key);
        dg
    }

    fn src(n: u32) -> SocketAddr {
        SocketAddr::from(([127, (n >> 16) as u8, (n >> 8) as u8, n as u8], 40000))
    }

    #[test]
    fn item_3_garbage_of_first_contact_size_costs_no_dh() {
        use rand::{RngCore as _, SeedableRng as _};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut cma = Sealer::new(ident(2), 1);
        cma.set_accept_unknown(true);
        let now = Instant::now();
        // ~88-byte garbage that gets past the header checks: a first contact's flags, random
        // id, key, body and mac1.
        for i in 0..5_000u32 {
            let mut dg = vec![0u8; 88 + (i as usize % 40)];
            rng.fill_bytes(&mut dg);
            dg[..8].copy_from_slice(&[b'A', b'S', assim_wire::PROTOCOL_VERSION, 4, 3, 0, 0, 0]);
            assert_eq!(cma.open_from(now, src(i), &dg), Err(OpenError::BadMac1));
            // The same without the mac1 flag.
            dg[4] = 1;
            assert_eq!(cma.open_from(now, src(i), &dg), Err(OpenError::MissingMac1));
        }
        assert_eq!(cma.dh_ops(), 0, "garbage cost an X25519 operation");
        assert_eq!(cma.rejects().get("bad_mac1"), 5_000);
        assert_eq!(cma.rejects().get("no_mac1"), 5_000);
        assert_eq!(cma.peer_count(), 0);
        // A nanoprobe's KeyReply path too: a reply not mac'd for us costs no DH.
        let mut probe = Sealer::new(ident(1), 1);
        for _ in 0..100 {
            let mut dg = vec![0u8; KEY_REQUEST_LEN];
            rng.fill_bytes(&mut dg);
            dg[..8].copy_from_slice(&[b'A', b'S', assim_wire::PROTOCOL_VERSION, 2, 3, 0, 0, 0]);
            assert_eq!(probe.open(&dg), Err(OpenError::BadMac1));
        }
        assert_eq!(probe.dh_ops(), 0);
    }

    #[test]
    fn item_3_first_contact_flood_stays_within_the_budget_and_known_peers_still_open() {
        use rand::SeedableRng as _;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let (node, cma_id) = (ident(1), ident(2));
        let mut cma = Sealer::new(cma_id.clone(), 1);
        cma.set_accept_unknown(true);
        let limits =
            Limits { rate: 100.0, burst: 100.0, source_rate: 5.0, source_burst: 10.0, sources: 64 };
        cma.set_limits(limits, Limits::KEY_REQUEST);
        // A known nanoprobe (its key is cached: added once, one DH).
        let mut probe = Sealer::new(node.clone(), 10);
        probe.add_peer(cma_id.node_id(), cma_id.public_key());
        cma.add_peer(node.node_id(), node.public_key());
        let dh_known = cma.dh_ops();
        // The attacker fetched the CMA's key and made one valid first contact.
        let mut attacker = Sealer::new(ident(9), 5);
        attacker.add_peer(cma_id.node_id(), cma_id.public_key());
        let template = sealed(&mut attacker, cma_id.node_id(), true, b"hello");

        // 5 s at 4,000 first contacts per second from random sources on 127.0.0.0/8, with a
        // known peer's datagram every 10 ms.
        let t0 = Instant::now();
        let (mut known_opened, mut known_sent) = (0, 0);
        for i in 0..20_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 250);
            let dg = flood_datagram(&template, &cma_id.public_key(), &mut rng);
            let r = cma.open_from(now, src(i.wrapping_mul(2_654_435_761) >> 8), &dg);
            assert!(r.is_err(), "a rewritten first contact never opens");
            if i % 40 == 0 {
                known_sent += 1;
                let d = sealed(&mut probe, cma_id.node_id(), true, &heartbeat());
                if cma.open_from(now, src(7), &d).is_ok() {
                    known_opened += 1;
                }
            }
        }
        let flood_dh = cma.dh_ops() - dh_known;
        assert!(flood_dh <= 100 + 100 * 5, "{flood_dh} DH operations for the flood");
        assert!(flood_dh >= 500, "the budget admits what it allows: {flood_dh}");
        assert_eq!(known_opened, known_sent, "a known peer's datagrams must always open");
        assert!(cma.rejects().get("first_contact_budget") > 18_000);
        assert!(cma.tracked_sources() <= 64 + Limits::KEY_REQUEST.sources);
        assert_eq!(cma.peer_count(), 1, "the flood added no peer");
    }

    #[test]
    fn item_3_source_table_memory_is_bounded() {
        let mut cma = Sealer::new(ident(2), 1);
        cma.set_accept_unknown(true);
        let mut req = Vec::new();
        Sealer::new(ident(1), 1).key_request(&mut req);
        let t0 = Instant::now();
        for i in 0..100_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 10);
            let _ = cma.open_from(now, src(i), &req);
        }
        assert!(cma.tracked_sources() <= Limits::KEY_REQUEST.sources);
    }

    #[test]
    fn item_16_key_request_answers_are_no_larger_and_rate_limited() {
        let mut cma = Sealer::new(ident(2), 1);
        let mut asker = Sealer::new(ident(1), 1);
        let mut req = Vec::new();
        asker.key_request(&mut req);
        let mut reply = Vec::new();
        cma.key_reply(&asker.public_key(), &mut reply);
        assert!(reply.len() <= req.len(), "reply {} > request {}", reply.len(), req.len());
        // One spoofed victim address, 10,000 requests in one second: the victim receives at most
        // its source allowance.
        let victim = SocketAddr::from(([192, 0, 2, 7], 53));
        let t0 = Instant::now();
        let mut answered = 0;
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_micros(i * 100);
            if cma.open_from(now, victim, &req).is_ok() {
                answered += 1;
            }
        }
        let l = Limits::KEY_REQUEST;
        assert!(answered as f64 <= l.source_burst + l.source_rate, "{answered}");
        assert!(cma.rejects().get("key_request_source") > 9_900);
        // From everywhere at once (loopback: any local address), the global budget holds.
        let t1 = t0 + Duration::from_secs(10);
        let mut answered = 0;
        for i in 0..20_000u32 {
            let now = t1 + Duration::from_micros(u64::from(i) * 50);
            if cma.open_from(now, src(i), &req).is_ok() {
                answered += 1;
            }
        }
        assert!(answered as f64 <= l.burst + l.rate, "{answered}");
    }

    /// A fixed receiver for the property tests, with the sender known.
    fn receiver() -> Sealer {
        let (_, mut b) = pair();
        b.set_accept_unknown(true);
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn open_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..1400),
            as_header in any::<bool>(),
        ) {
            let mut b = receiver();
            let mut bytes = bytes;
            if as_header && bytes.len() >= 8 {
                // Make it get past the magic/version/kind checks often.
                let kind = 3 + (bytes[4] & 1);
                bytes[..4].copy_from_slice(&[b'A', b'S', assim_wire::PROTOCOL_VERSION, kind]);
            }
            match b.open(&bytes) {
                Ok(o) => prop_assert!(
                    !o.header.kind.is_sealed(),
                    "random bytes must never authenticate"
                ),
                Err(e) => prop_assert_eq!(b.rejects().get(e.reason()), 1),
            }
        }

        #[test]
        fn bit_flips_of_a_valid_datagram_are_always_rejected(
            plaintext in proptest::collection::vec(any::<u8>(), 0..300),
            include_key in any::<bool>(),
            flips in proptest::collection::btree_set(0usize..(8 * (72 + 300 + 16)), 1..8),
        ) {
            let (mut a, _) = pair();
            let mut b = receiver();
            let dg = sealed(&mut a, b.node_id(), include_key, &plaintext);
            let mut bad = dg.clone();
            let mut flipped = false;
            for bit in flips {
                if bit / 8 < bad.len() {
                    bad[bit / 8] ^= 1 << (bit % 8);
                    flipped = true;
                }
            }
            prop_assume!(flipped);
            prop_assert!(b.open(&bad).is_err());
            prop_assert_eq!(b.rejects().total(), 1);
            prop_assert_eq!(b.peer_count(), 1, "a forgery never adds a peer");
            prop_assert_eq!(b.open(&dg).unwrap().plaintext, plaintext);
        }
    }
}
