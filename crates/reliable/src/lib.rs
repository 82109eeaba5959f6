//! Reliable, ordered, exactly-once message delivery between two endpoints, with no IO.
//!
//! This crate owns the reliable-delivery layer between one nanoprobe and the CMA: fragmentation of
//! messages up to [`assim_wire::limits::MAX_MESSAGE_SIZE`], packing of small messages into one
//! frame, per-frame sequence numbers,
//! cumulative + selective acknowledgements, retransmission with an RFC 6298 RTO and exponential
//! backoff, reassembly, in-order delivery and duplicate suppression, and peer restarts (sessions).
//!
//! [`Connection`] is a sans-IO state machine in the style of `quinn-proto`: it never reads a clock,
//! never sleeps, spawns nothing and touches no socket. The driver feeds it frames
//! ([`Connection::handle_frame`]), timer expiries ([`Connection::handle_timeout`]) and messages
//! ([`Connection::send`]), always with `now`, then drains [`Connection::poll_transmit`] (frames to
//! seal and send) and [`Connection::poll_event`], and re-arms its timer with
//! [`Connection::poll_timeout`]. All randomness (RTO jitter) comes from the seed given to
//! [`Connection::new`]. Frames are handed to the sealing layer (`assim-seal`), which authenticates
//! and encrypts them; this crate trusts that a frame it is given came from the peer, but still
//! rejects any frame that does not parse or contradicts itself, without panicking and without
//! changing state.
//!
//! Layout:
//! - `frame`: the three frame types, their byte layouts, encoder and pure decoder.
//! - `rtt`: SRTT/RTTVAR/RTO estimation (RFC 6298) and backoff.
//! - `send`: the sending half: fragmentation, packing, send window, retransmission, loss
//!   detection.
//! - `recv`: the receiving half: duplicate suppression, out-of-order buffer, reassembly,
//!   unpacking.
//! - `connection`: [`Connection`], which joins both halves and handles sessions and acks timing.
//!
//! # Frames
//!
//! All integers are big endian. A frame is at most [`Config::max_frame_size`] bytes (default 1128
//! = the 1232-byte datagram minus 104 bytes of sealing: 40 header, 32 optional key, 16 AEAD tag,
//! 16 mac1; `assim_wire::header::MAX_OVERHEAD`).
//! Versioning lives in the datagram header (`assim_wire::header`), which carries the protocol
//! version; an unknown frame type is rejected with [`FrameError::UnknownType`].
//!
//! ```text
//! Data frame: 29-byte header, then the payload
//! offset size field
//!  0      1   type = 1
//!  1      8   sender session
//!  9      8   base: first seq of the sender's oldest message not yet cumulatively acknowledged
//! 17      8   seq: this fragment's sequence number (per sender session, from 0)
//! 25      2   frag_index (0-based, < frag_count)
//! 27      2   frag_count (1..=MAX_FRAGMENTS; the fragments of one message have consecutive seqs)
//! 29      …   payload, at most max_frame_size - 29 bytes (the sender fills all but the last)
//!
//! Ack frame: 26-byte header, then 16 bytes per selective range
//! offset size field
//!  0      1   type = 2
//!  1      8   acked session: the data sender's session these acknowledgements are for
//!  9      8   acker session: the session of the endpoint sending this ack
//! 17      8   cumulative: every seq below this was received
//! 25      1   n, the number of selective ranges (as many as fit in one frame, at most 255)
//! 26   16·n   ranges [start, end) as u64 pairs: ascending, disjoint, not adjacent,
//!             start > cumulative; the lowest ranges are sent when not all fit
//!  …      …   trailing bytes: reserved for extensions, ignored on receipt
//!
//! Packed data frame: 27-byte header, then `count` entries; several whole messages, one seq
//! offset size field
//!  0      1   type = 3
//!  1      8   sender session
//!  9      8   base (as in a data frame)
//! 17      8   seq: the one sequence number of the whole frame
//! 25      2   count: the number of messages (at least 1)
//! 27      …   count entries, each: u16 length, then that many bytes (one whole message);
//!             the entries end exactly at the end of the frame (no trailing bytes)
//! ```
//!
//! # Packing small messages
//!
//! Every datagram costs sealing, a syscall and bookkeeping whatever its size, so small messages
//! share frames. A message gets its seq(s) when it is first transmitted, not when it is queued:
//! when `poll_transmit` sends new data (the window permitting), it takes the oldest queued
//! message and, if it fits in one fragment (and [`Config::coalesce`] is on), as many of the
//! directly following queued messages as also fit in one fragment and, together, in one packed
//! frame of at most `max_frame_size` bytes (at most 65535 of them). Two or more go out as one
//! packed frame; a lone message goes out as an ordinary data frame (the two cost the same 29
//! bytes for one message); a message too large for one fragment is fragmented and never packed,
//! and ends the run. Nothing waits to be packed (no Nagle-style delay): packing only gathers
//! what is queued when the window has room, which is exactly when the peer is slow or the
//! sender bursts. A packed frame is one unit for everything below: it occupies one seq, is
//! acknowledged, selectively acknowledged, retransmitted (identically, with the current `base`)
//! and buffered out of order as a whole, and its messages are delivered in entry order when its
//! seq is consumed. All of its messages are released, and get their [`Event::Acked`] in id
//! order, when the cumulative ack passes its seq. Both kinds interleave freely in one seq space.
//!
//! # Invariants and rules
//!
//! - Data frames (fragments and packed frames) carry sequence numbers from 0 per sender session,
//!   in message order: message `k`'s frames follow message `k-1`'s, or share its packed frame.
//!   An unpacked message of `len` bytes has `max(1, ceil(len / max_payload))` fragments; below,
//!   "fragment" includes a packed frame, which behaves like a message of one fragment.
//! - `base` is always the first seq of a message (for a packed message, the seq of its packed
//!   frame), and no fragment of a message below `base` is
//!   ever sent again. A message is released by the sender, and [`Event::Acked`] is emitted, only
//!   when the *cumulative* ack passes its last fragment, which means the receiver delivered it.
//!   Selective acks only suppress retransmission; they are forgotten if the receiver restarts.
//! - Sessions: our session is fixed for a [`Connection`]'s life; our own restart is a new
//!   `Connection` with a larger session. The peer's session is learned from every frame it sends
//!   (data frames carry it as the sender session, acks as the acker session). A larger one means
//!   the peer restarted: receive state is dropped, [`Event::PeerRestarted`] is emitted (not for
//!   the first session seen), and the send half forgets everything the old incarnation
//!   acknowledged from `base` on, resending those fragments. Frames of a smaller (older) peer
//!   session are dropped and counted in [`Stats::stale_frames`]; acks for a session that is not
//!   ours are ignored the same way.
//! - A new path ([`Connection::path_changed`]: the driver sends to another address of the
//!   peer, where another sender of the same identity may answer, e.g. another of the CMA's
//!   packet readers, each with its own session): the next frame accepted through
//!   [`Connection::handle_frame`] is taken whatever its session, and one other than the last
//!   is a restart as above, older or not. Frames the driver got from any other address go
//!   through [`Connection::handle_frame_off_path`], which keeps the rules above (an older
//!   session is stale), so the peer left behind cannot pull the connection back. The first
//!   frame accepted from either ends the exception.
//! - A receiver with no state for the peer's session starts at the `base` of the first data frame
//!   it gets: everything below was acknowledged by an earlier incarnation of us, hence delivered.
//!   If a later frame's `base` is above the receive point, the receiver skips to it (that can
//!   only be acknowledgements of an earlier incarnation of us arriving late at the sender).
//!   Delivery is therefore exactly once per (sender session, receiver incarnation); across a
//!   receiver restart a message may be delivered again, and the layer above de-duplicates by its
//!   own message ids (durable spools make that necessary anyway).
//! - The receiver buffers out-of-order fragments only below `receive point + window` and holds
//!   at most one partially reassembled message; fragments beyond are dropped and counted. A
//!   fragment that contradicts another one (a different index or count for the same message) is
//!   rejected as malformed before anything changes.
//! - Acks are coalesced for at most [`Config::ack_delay`], but sent at once when a fragment arrives
//!   out of order, fills a gap, or is a duplicate. Acks are only produced by `poll_transmit`, so a
//!   driver that persists [`Event::Delivered`] messages before calling `poll_transmit` never
//!   acknowledges a message it has not stored.
//! - The sender keeps at most `window` fragments beyond its cumulative ack point in flight. Loss
//!   is detected (a) by the retransmission timer: on expiry it resends the oldest fragment not
//!   selectively acknowledged and every hole below the highest selectively acknowledged one,
//!   doubles the RTO (capped at `max_rto`, never giving up) and re-arms with ±20 % seeded
//!   jitter; (b) by fast retransmit: a fragment is resent once 3 fragments sent after it were
//!   acknowledged (the 3 grows to the reordering actually observed, as in Linux TCP, so a
//!   reordering path does not trigger a storm of spurious resends); (c) by time (RACK): a
//!   fragment is resent when one sent more than SRTT/4 (widened to the observed reordering, at
//!   most SRTT) after it was acknowledged — this recovers a whole window in one round trip after
//!   an outage instead of one fragment per RTO; (d) by the peer's return: a data frame from
//!   the peer while the RTO is backed off means the path works again, so the backoff is undone
//!   and the timer fires at once (a host whose switch comes back gets what was sent to it
//!   during the outage now, not up to `max_rto` later). Selectively acknowledged fragments are not
//!   resent, with one exception: if all outstanding fragments are selectively acknowledged but
//!   the cumulative ack lags (a restarted receiver waiting for a `base` to skip to), the timer
//!   resends the oldest as a probe. RTT samples come only from the most recently sent newly
//!   acknowledged fragment, and only if it was sent once (Karn; this also keeps an ack that
//!   covers a fragment sent before an outage from inflating SRTT). Like Linux TCP, the backoff
//!   is undone as soon as an ack acknowledges new data. There is no congestion control beyond
//!   the window.
//! - Both endpoints must use the same `max_frame_size` and `max_message_size`: the receiver
//!   rejects frames longer than its own `max_frame_size`, fragments longer than its own payload
//!   size, and fragment counts that would exceed
//!   its message size limit before it allocates a reassembly buffer.

mod connection;
mod frame;
mod recv;
mod rtt;
mod send;

use std::time::Duration;

pub use connection::Connection;
pub use frame::{ACK_HEADER_LEN, ACK_RANGE_LEN, DATA_HEADER_LEN};

/// Tuning of one [`Connection`]. Both endpoints should use the same frame and message sizes.
#[derive(Clone, Debug)]
pub struct Config {
    /// The largest frame produced or accepted, in bytes (default 1128: the 1232-byte datagram
    /// minus 40 header, 32 optional key, 16 tag and 16 mac1 bytes added by sealing).
    pub max_frame_size: usize,
    /// The most data frames (fragments or packed frames) in flight beyond the cumulative ack
    /// point; also the receiver's out-of-order buffer size (default 128).
    pub window: usize,
    /// The RTO before the first RTT sample (default 300 ms).
    pub initial_rto: Duration,
    /// Lower bound of the RTO (default 50 ms).
    pub min_rto: Duration,
    /// Upper bound of the backed-off RTO (default 10 s). There is no give-up: an outage of any
    /// length is retried every `max_rto`.
    pub max_rto: Duration,
    /// The largest message, in bytes (default [`assim_wire::limits::MAX_MESSAGE_SIZE`]).
    pub max_message_size: usize,
    /// The most bytes of unsent plus unacknowledged messages (default 64 MiB); each message is
    /// charged its length plus 32 bytes, so a flood of empty messages is bounded too.
    pub max_queued_bytes: usize,
    /// How long an acknowledgement may be held back to coalesce it with later ones (default 5 ms).
    pub ack_delay: Duration,
    /// Pack consecutive small queued messages into one packed data frame when transmitting
    /// (default true). Without it every message takes its own frame(s). A receiver accepts
    /// packed frames either way.
    pub coalesce: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_size: assim_wire::limits::MAX_DATAGRAM_SIZE
                - assim_wire::header::MAX_OVERHEAD,
            window: 128,
            initial_rto: Duration::from_millis(300),
            min_rto: Duration::from_millis(50),
            max_rto: Duration::from_secs(10),
            max_message_size: assim_wire::limits::MAX_MESSAGE_SIZE,
            max_queued_bytes: 64 * 1024 * 1024,
            ack_delay: Duration::from_millis(5),
            coalesce: true,
        }
    }
}

/// Something the driver must act on, from [`Connection::poll_event`].
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A whole message from the peer, in order, exactly once per peer session.
    Delivered(Vec<u8>),
    /// Our message with this id (from [`Connection::send`]) was fully acknowledged by the peer,
    /// which means the peer delivered it. Emitted once per id, in id order.
    Acked(u64),
    /// The peer's session changed: it grew (the peer restarted), or, at the first frame after
    /// [`Connection::path_changed`], the peer at the new address has another session (`new`
    /// may then be smaller). Receive state was reset; messages of ours not yet acknowledged
    /// are resent to the new incarnation.
    PeerRestarted { old: u64, new: u64 },
}

/// Counters and estimates of one [`Connection`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames returned by `poll_transmit` (data, retransmissions and acks).
    pub frames_sent: u64,
    /// Frames accepted by `handle_frame` (stale ones included, rejected ones not).
    pub frames_received: u64,
    /// Data frames (fragments or packed frames) sent again.
    pub retransmits: u64,
    /// Data fragments received that had been received already.
    pub duplicates: u64,
    /// [`Event::Delivered`] events emitted.
    pub messages_delivered: u64,
    /// [`Event::Acked`] events emitted.
    pub messages_acked: u64,
    /// Smoothed RTT, once there is a sample.
    pub srtt: Option<Duration>,
    /// The current retransmission timeout (backed off while nothing gets acknowledged).
    pub rto: Duration,
    /// Data frames (fragments or packed frames) sent and not yet acknowledged.
    pub in_flight: u64,
    /// Messages queued or in flight, not yet acknowledged.
    pub queued_messages: u64,
    /// Frames dropped because they belong to an older session (of the peer, or acks for ours).
    pub stale_frames: u64,
    /// Data fragments dropped because they were beyond the receive window.
    pub beyond_window: u64,
    /// Times the retransmission timer expired.
    pub timeouts: u64,
}

/// Why [`Connection::send`] refused a message. The connection's state did not change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The message is larger than `max_message_size` (or would need more than
    /// [`assim_wire::limits::MAX_FRAGMENTS`] fragments).
    #[error(
        "message of {size} bytes exceeds the {max}-byte limit; split it or raise max_message_size"
    )]
    TooLarge { size: usize, max: usize },
    /// Queuing the message would exceed `max_queued_bytes`; wait for [`Event::Acked`] and retry.
    #[error(
        "send queue full ({queued} bytes queued, limit {max}); retry after the peer acknowledges"
    )]
    QueueFull { queued: usize, max: usize },
}

/// Why [`Connection::handle_frame`] rejected a frame. The connection's state did not change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame ends before its header (or its declared ack ranges) does. (Packed entries that
    /// overrun the frame are [`FrameError::Malformed`].)
    #[error("frame truncated")]
    Truncated,
    /// The type byte is none of data (1), ack (2) and packed data (3).
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The frame parses but contradicts itself, the protocol, or fragments received earlier.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// frag_count exceeds [`assim_wire::limits::MAX_FRAGMENTS`].
    #[error("frag_count {0} exceeds the fragment limit")]
    TooManyFragments(u16),
    /// The frame, its payload, or the message it belongs to exceeds the configured limits.
    #[error("frame too large: {0}")]
    TooLarge(&'static str),
}
