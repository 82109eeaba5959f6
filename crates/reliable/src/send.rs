//! The sending half: fragmentation, the send window, acknowledgement processing, loss detection
//! and retransmission.
//!
//! Seqs are assigned when a message is first transmitted, not when it is queued, so that
//! `poll_transmit` can pack the small messages queued by then into one frame.
//!
//! Invariants:
//! - `pending` holds the messages queued but not yet given seqs, in id order; they all come
//!   after those in `messages`.
//! - `messages` holds every message given seqs and not yet cumulatively acknowledged, in id
//!   order; message `i` covers seqs `[start, start + count)`. A fragmented or single-frame
//!   message starts where the previous one ends; the messages of one packed frame all cover
//!   the same single seq (`packed` set, `count` 1). `[base, next_seq)` is covered exactly.
//! - `sent[i]` describes seq `acked_cum + i`; `sent` covers exactly `[acked_cum, next_tx)`, the
//!   fragments transmitted at least once and not cumulatively acknowledged.
//! - `acked_cum` only moves with the receiver's cumulative ack, never by folding selectively
//!   acknowledged fragments into it: a receiver that restarted may hold fragments it has not
//!   delivered, and only its cumulative ack says what it delivered.
//! - `retx` ⊆ `[acked_cum, next_tx)` and holds no selectively acknowledged seq.
//! - The timer runs iff `acked_cum < next_tx`.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;

use crate::frame::{
    AckFrame, DATA_HEADER_LEN, DataFrame, PACKED_ENTRY_LEN, PACKED_HEADER_LEN, encode_data,
    encode_packed,
};
use crate::rtt::Rtt;
use crate::{Config, Event, FrameError, SendError, Stats};

/// Bytes charged against `max_queued_bytes` per message on top of its length.
const MESSAGE_OVERHEAD: usize = 32;

/// The initial fast-retransmit threshold.
const DUP_THRESHOLD: u64 = 3;

#[derive(Debug)]
struct OutMessage {
    id: u64,
    start: u64,
    count: u64,
    /// Sent in a packed frame with its neighbours of the same `start`.
    packed: bool,
    data: Vec<u8>,
}

impl OutMessage {
    fn end(&self) -> u64 {
        self.start + self.count
    }
}

#[derive(Clone, Copy, Debug)]
struct Sent {
    last_sent: Instant,
    /// Order of the latest transmission among all transmissions of this connection.
    tx_order: u64,
    retransmitted: bool,
    sacked: bool,
}

#[derive(Debug)]
pub(crate) struct Sender {
    session: u64,
    max_payload: usize,
    max_message: usize,
    max_queued_bytes: usize,
    window: u64,
    coalesce: bool,
    next_id: u64,
    next_seq: u64,
    next_tx: u64,
    acked_cum: u64,
    messages: VecDeque<OutMessage>,
    /// (id, message) queued and not yet given seqs.
    pending: VecDeque<(u64, Vec<u8>)>,
    queued_bytes: usize,
    sent: VecDeque<Sent>,
    sacked_count: u64,
    retx: BTreeSet<u64>,
    tx_counter: u64,
    /// (tx_order, send time) of the most recently sent fragment known to be acknowledged.
    rack: Option<(u64, Instant)>,
    /// One past the highest seq ever acknowledged (cumulatively or selectively).
    highest_acked: u64,
    /// Fast-retransmit threshold: how many later-sent fragments must be acknowledged before an
    /// unacknowledged one counts as lost. Starts at 3 and grows to the reordering actually
    /// observed (a fragment sent once acknowledged after higher seqs), as Linux TCP does.
    reordering: u64,
    /// The largest send-time distance by which a later-sent fragment overtook an earlier one;
    /// widens RACK's reordering window (up to SRTT), as DSACK does in Linux.
    reorder_seen: Duration,
    timer: Option<Instant>,
    rtt: Rtt,
    rng: ChaCha8Rng,
}

impl Sender {
    pub(crate) fn new(config: &Config, session: u64, max_payload: usize, rng: ChaCha8Rng) -> Self {
        Sender {
            session,
            max_payload,
            max_message: config
                .max_message_size
                .min(assim_wire::limits::MAX_FRAGMENTS * max_payload),
            max_queued_bytes: config.max_queued_bytes,
            window: config.window as u64,
            coalesce: config.coalesce,
            next_id: 1,
            next_seq: 0,
            next_tx: 0,
            acked_cum: 0,
            messages: VecDeque::new(),
            pending: VecDeque::new(),
            queued_bytes: 0,
            sent: VecDeque::new(),
            sacked_count: 0,
            retx: BTreeSet::new(),
            tx_counter: 0,
            rack: None,
            highest_acked: 0,
            reordering: DUP_THRESHOLD,
            reorder_seen: Duration::ZERO,
            timer: None,
            rtt: Rtt::new(config),
            rng,
        }
    }

    pub(crate) fn send(&mut self, data: Vec<u8>) -> Result<u64, SendError> {
        if data.len() > self.max_message {
            return Err(SendError::TooLarge { size: data.len(), max: self.max_message });
        }
        let charge = data.len() + MESSAGE_OVERHEAD;
        if self.queued_bytes + charge > self.max_queued_bytes {
            return Err(SendError::QueueFull {
                queued: self.queued_bytes,
                max: self.max_queued_bytes,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.push_back((id, data));
        self.queued_bytes += charge;
        Ok(id)
    }

    /// Whether a message of `len` bytes may go into a packed frame.
    fn packable(&self, len: usize) -> bool {
        self.coalesce && len <= self.max_payload && len <= usize::from(u16::MAX)
    }

    /// Gives seqs to the oldest pending message: alone (fragmented as needed) if it is large,
    /// else packed into one frame with as many of the following pending messages as are small
    /// and fit. Returns false if nothing is pending.
    fn assign_seqs(&mut self) -> bool {
        let Some((_, first)) = self.pending.front() else {
            return false;
        };
        let max_frame = self.max_payload + DATA_HEADER_LEN;
        let mut n = 1;
        if self.packable(first.len()) {
            let mut size = PACKED_HEADER_LEN + PACKED_ENTRY_LEN + first.len();
            for (_, m) in self.pending.iter().skip(1).take(usize::from(u16::MAX) - 1) {
                if !self.packable(m.len()) || size + PACKED_ENTRY_LEN + m.len() > max_frame {
                    break;
                }
                size += PACKED_ENTRY_LEN + m.len();
                n += 1;
            }
        }
        let start = self.next_seq;
        if n == 1 {
            let (id, data) = self.pending.pop_front().expect("front exists");
            let count = data.len().div_ceil(self.max_payload).max(1) as u64;
            self.messages.push_back(OutMessage { id, start, count, packed: false, data });
            self.next_seq += count;
        } else {
            for (id, data) in self.pending.drain(..n) {
                self.messages.push_back(OutMessage { id, start, count: 1, packed: true, data });
            }
            self.next_seq += 1;
        }
        true
    }

    /// The first seq of the oldest message not yet cumulatively acknowledged.
    fn base(&self) -> u64 {
        self.messages.front().map_or(self.next_seq, |m| m.start)
    }

    pub(crate) fn timer(&self) -> Option<Instant> {
        self.timer
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.messages.is_empty() && self.pending.is_empty()
    }

    pub(crate) fn update_stats(&self, stats: &mut Stats) {
        stats.srtt = self.rtt.srtt();
        stats.rto = self.rtt.rto();
        stats.in_flight = self.next_tx - self.acked_cum - self.sacked_count;
        stats.queued_messages = (self.messages.len() + self.pending.len()) as u64;
    }

    fn arm_timer(&mut self, now: Instant) {
        self.timer = Some(now + self.rtt.jittered(&mut self.rng));
    }

    /// The next data frame to send: a retransmission first, else a new fragment or packed frame
    /// if the window allows.
    pub(crate) fn poll_transmit(&mut self, now: Instant, stats: &mut Stats) -> Option<Vec<u8>> {
        let limit = self.acked_cum + self.window;
        let seq = match self.retx.first().copied() {
            Some(seq) if seq < limit => {
                self.retx.pop_first();
                stats.retransmits += 1;
                let tx_order = self.next_tx_order();
                let s = &mut self.sent[(seq - self.acked_cum) as usize];
                s.retransmitted = true;
                s.last_sent = now;
                s.tx_order = tx_order;
                seq
            }
            Some(_) => return None, // wait for the window to open; new data is above anyway
            None if self.next_tx < limit
                && (self.next_tx < self.next_seq || self.assign_seqs()) =>
            {
                let tx_order = self.next_tx_order();
                self.sent.push_back(Sent {
                    last_sent: now,
                    tx_order,
                    retransmitted: false,
                    sacked: false,
                });
                self.next_tx += 1;
                self.next_tx - 1
            }
            None => return None,
        };
        if self.timer.is_none() {
            self.arm_timer(now);
        }
        Some(self.encode(seq))
    }

    fn next_tx_order(&mut self) -> u64 {
        self.tx_counter += 1;
        self.tx_counter
    }

    fn encode(&self, seq: u64) -> Vec<u8> {
        let i = self.messages.partition_point(|m| m.end() <= seq);
        let m = &self.messages[i];
        if m.packed {
            let pack = self.messages.range(i..).take_while(|p| p.start == seq);
            let (count, len) = pack.clone().fold((0, PACKED_HEADER_LEN), |(n, len), p| {
                (n + 1, len + PACKED_ENTRY_LEN + p.data.len())
            });
            let data = pack.map(|p| p.data.as_slice());
            return encode_packed(self.session, self.base(), seq, count, data, len);
        }
        let index = (seq - m.start) as usize;
        let lo = index * self.max_payload;
        let hi = (lo + self.max_payload).min(m.data.len());
        encode_data(&DataFrame {
            session: self.session,
            base: self.base(),
            seq,
            frag_index: index as u16,
            frag_count: m.count as u16,
            packed: false,
            payload: &m.data[lo..hi],
        })
    }

    /// Rejects an ack that acknowledges fragments never sent. Changes nothing.
    pub(crate) fn check_ack(&self, a: &AckFrame) -> Result<(), FrameError> {
        let top = a.ranges.last().map_or(a.cumulative, |r| r.1.max(a.cumulative));
        if top > self.next_tx {
            return Err(FrameError::Malformed("ack covers fragments never sent"));
        }
        Ok(())
    }

    /// Applies an ack (already checked with [`Sender::check_ack`]).
    pub(crate) fn on_ack(
        &mut self,
        a: &AckFrame,
        now: Instant,
        events: &mut VecDeque<Event>,
        stats: &mut Stats,
    ) {
        // The most recently sent newly acknowledged fragment: (tx_order, sent at, sent once).
        // Like QUIC's "largest acknowledged", it is most likely the one whose arrival triggered
        // this ack, so only it yields an RTT sample, and only if it was sent once (Karn). An
        // older fragment covered by the same ack may have waited out an outage whose acks were
        // lost; sampling it would inflate SRTT by the length of the outage.
        let mut latest: Option<(u64, Instant, bool)> = None;
        let highest_before = self.highest_acked;
        let mut reordering = self.reordering;
        let mut reorder_seen = self.reorder_seen;
        let window = self.window;
        let rack_before = self.rack;
        let min_rtt = self.rtt.min_rtt();
        let mut note = |seq: u64, s: &Sent| {
            if latest.is_none_or(|l| l.0 < s.tx_order) {
                latest = Some((s.tx_order, s.last_sent, !s.retransmitted));
            }
            // Acknowledged sooner after its retransmission than any round trip takes: an
            // earlier transmission arrived, so the retransmission was spurious.
            let spurious =
                s.retransmitted && min_rtt.is_some_and(|m| now.duration_since(s.last_sent) < m);
            if (!s.retransmitted || spurious) && seq + 1 < highest_before {
                // Its earlier transmission arrived after higher seqs: the path reorders this much.
                reordering = reordering.max(highest_before - seq).min(window);
            }
            if !s.retransmitted
                && let Some((rack_tx, rack_time)) = rack_before
                && rack_tx > s.tx_order
            {
                reorder_seen = reorder_seen.max(rack_time.saturating_duration_since(s.last_sent));
            }
        };
        while self.acked_cum < a.cumulative {
            let s = self.sent.pop_front().expect("sent covers [acked_cum, next_tx)");
            if s.sacked {
                self.sacked_count -= 1;
            } else {
                note(self.acked_cum, &s);
            }
            self.acked_cum += 1;
        }
        for &(start, end) in &a.ranges {
            for seq in start.max(self.acked_cum)..end {
                let s = &mut self.sent[(seq - self.acked_cum) as usize];
                if !s.sacked {
                    s.sacked = true;
                    self.sacked_count += 1;
                    note(seq, &*s);
                    self.retx.remove(&seq);
                }
            }
        }
        self.reordering = reordering;
        self.reorder_seen = reorder_seen;
        let top = a.ranges.last().map_or(a.cumulative, |r| r.1);
        self.highest_acked = self.highest_acked.max(top);
        self.retx = self.retx.split_off(&self.acked_cum);
        while let Some(m) = self.messages.front()
            && m.end() <= self.acked_cum
        {
            let m = self.messages.pop_front().expect("front exists");
            self.queued_bytes -= m.data.len() + MESSAGE_OVERHEAD;
            events.push_back(Event::Acked(m.id));
            stats.messages_acked += 1;
        }
        let Some(latest) = latest else {
            return; // nothing new: a duplicate or reordered ack
        };
        let (tx_order, sent_at, sent_once) = latest;
        if sent_once && self.rack.is_none_or(|r| r.0 < tx_order) {
            self.rtt.sample(now.saturating_duration_since(sent_at));
        }
        self.rtt.reset_backoff();
        if self.rack.is_none_or(|r| r.0 < tx_order) {
            self.rack = Some((tx_order, sent_at));
        }
        self.detect_losses();
        if self.acked_cum < self.next_tx {
            self.arm_timer(now);
        } else {
            self.timer = None;
        }
    }

    /// Marks for retransmission every unacknowledged fragment that 3 later-sent fragments
    /// overtook (fast retransmit), or that a fragment sent more than the reordering window
    /// after it overtook (RACK).
    fn detect_losses(&mut self) {
        let Some((rack_tx, rack_time)) = self.rack else {
            return;
        };
        let reorder = self.rtt.reorder_window(self.reorder_seen);
        let mut acked_tx: Vec<u64> =
            self.sent.iter().filter(|s| s.sacked).map(|s| s.tx_order).collect();
        acked_tx.sort_unstable();
        for (i, s) in self.sent.iter().enumerate() {
            if s.sacked || s.tx_order >= rack_tx {
                continue;
            }
            let later = acked_tx.len() - acked_tx.partition_point(|&t| t <= s.tx_order);
            if later as u64 >= self.reordering || s.last_sent + reorder <= rack_time {
                self.retx.insert(self.acked_cum + i as u64);
            }
        }
    }

    /// The retransmission timer: resend the oldest unacknowledged fragment and the holes below
    /// the highest selectively acknowledged one, back off, re-arm. If every outstanding fragment
    /// was selectively acknowledged but the cumulative ack lags (the receiver restarted and
    /// waits for a `base` to skip to), the oldest one is resent anyway as a probe: it carries
    /// the current `base` and draws a fresh ack.
    pub(crate) fn on_timeout(&mut self, now: Instant, stats: &mut Stats) {
        if self.timer.is_none_or(|t| t > now) {
            return;
        }
        if self.acked_cum == self.next_tx {
            self.timer = None;
            return;
        }
        stats.timeouts += 1;
        let oldest = self.sent.iter().position(|s| !s.sacked).unwrap_or(0);
        self.retx.insert(self.acked_cum + oldest as u64);
        if let Some(top) = self.sent.iter().rposition(|s| s.sacked) {
            for (i, s) in self.sent.iter().enumerate().take(top) {
                if !s.sacked {
                    self.retx.insert(self.acked_cum + i as u64);
                }
            }
        }
        self.rtt.backoff();
        self.arm_timer(now);
    }

    /// The peer was heard (a valid data frame of its current session): the path works again.
    /// A retransmission timer backed off during an outage (up to `max_rto`) fires now, from
    /// the computed RTO, instead of up to `max_rto` later; a timer not backed off is left.
    pub(crate) fn on_peer_heard(&mut self, now: Instant) {
        if self.acked_cum == self.next_tx || !self.rtt.backed_off() {
            return;
        }
        self.rtt.reset_backoff();
        self.timer = Some(now);
    }

    /// The driver now sends to another address of the peer (the nanoprobe failing over to
    /// another CMA engine, issue 14): the new path has seen none of the unacknowledged data and
    /// its round trip is unknown, so a backed-off RTO is undone and the timer fires now.
    pub(crate) fn on_path_change(&mut self, now: Instant) {
        if self.acked_cum == self.next_tx {
            return;
        }
        self.rtt.reset_backoff();
        self.timer = Some(now);
    }

    /// The peer restarted: it lost everything it had acknowledged but not yet delivered. Forget
    /// its acknowledgements from `base` on and resend all of those fragments.
    pub(crate) fn on_peer_restart(&mut self, now: Instant) {
        let base = self.base();
        self.sent.clear();
        self.retx.clear();
        self.sacked_count = 0;
        self.rack = None;
        self.highest_acked = base;
        for seq in base..self.next_tx {
            self.sent.push_back(Sent {
                last_sent: now,
                tx_order: 0,
                retransmitted: true,
                sacked: false,
            });
            self.retx.insert(seq);
        }
        self.acked_cum = base;
        self.rtt.reset_backoff();
        if self.acked_cum < self.next_tx {
            self.arm_timer(now);
        } else {
            self.timer = None;
        }
    }
}
