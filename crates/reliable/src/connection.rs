//! [`Connection`]: both halves for one peer, sessions, and the timing of acknowledgements.

use std::collections::VecDeque;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::frame::{
    ACK_HEADER_LEN, ACK_RANGE_LEN, AckFrame, DATA_HEADER_LEN, DataFrame, Frame, decode, encode_ack,
    max_ack_ranges,
};
use crate::recv::{Disposition, Receiver};
use crate::send::Sender;
use crate::{Config, Event, FrameError, SendError, Stats};

/// Reliable delivery state for one peer, both directions. See the crate documentation.
#[derive(Debug)]
pub struct Connection {
    config: Config,
    session: u64,
    max_payload: usize,
    /// The most fragments a message within `max_message_size` needs.
    max_frag_count: usize,
    peer_session: Option<u64>,
    sender: Sender,
    /// Receive state for `peer_session`; `None` until its first data frame.
    recv: Option<Receiver>,
    /// When the pending acknowledgement must go out, if one is pending.
    ack_deadline: Option<Instant>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Connection {
    /// Creates the state for one peer. `session`: our session number (strictly larger after
    /// each restart of our process). `seed`: for RTO jitter.
    ///
    /// # Panics
    ///
    /// If the configuration is unusable: `max_frame_size` must leave room for a data header plus
    /// one payload byte and for an ack with one range, `window` must be at least 1, and
    /// `min_rto <= max_rto`.
    pub fn new(config: Config, session: u64, seed: u64) -> Connection {
        assert!(
            config.max_frame_size > DATA_HEADER_LEN
                && config.max_frame_size >= ACK_HEADER_LEN + ACK_RANGE_LEN,
            "max_frame_size {} is too small for reliable frames",
            config.max_frame_size
        );
        assert!(config.window >= 1, "window must be at least 1");
        assert!(config.min_rto <= config.max_rto, "min_rto exceeds max_rto");
        let max_payload = config.max_frame_size - DATA_HEADER_LEN;
        let max_frag_count = config
            .max_message_size
            .div_ceil(max_payload)
            .clamp(1, assim_wire::limits::MAX_FRAGMENTS);
        let sender = Sender::new(&config, session, max_payload, ChaCha8Rng::seed_from_u64(seed));
        let mut stats = Stats::default();
        sender.update_stats(&mut stats);
        Connection {
            config,
            session,
            max_payload,
            max_frag_count,
            peer_session: None,
            sender,
            recv: None,
            ack_deadline: None,
            events: VecDeque::new(),
            stats,
        }
    }

    /// Queues a message; returns its id (increasing from 1 per `Connection`).
    ///
    /// Errors: [`SendError::TooLarge`], [`SendError::QueueFull`]; the state is then unchanged.
    pub fn send(&mut self, message: Vec<u8>, _now: Instant) -> Result<u64, SendError> {
        let id = self.sender.send(message)?;
        self.sender.update_stats(&mut self.stats);
        Ok(id)
    }

    /// Feeds one frame received from the peer (already authenticated).
    ///
    /// A frame that does not parse, exceeds the limits or contradicts earlier frames is
    /// rejected with an error and changes nothing. Frames of an older peer session, and acks
    /// for a session not ours, are valid but ignored (counted in [`Stats::stale_frames`]).
    pub fn handle_frame(&mut self, frame: &[u8], now: Instant) -> Result<(), FrameError> {
        if frame.len() > self.config.max_frame_size {
            return Err(FrameError::TooLarge("frame exceeds max_frame_size"));
        }
        match decode(frame)? {
            Frame::Data(d) => self.handle_data(&d, now)?,
            Frame::Ack(a) => self.handle_ack(&a, now)?,
        }
        self.stats.frames_received += 1;
        self.sender.update_stats(&mut self.stats);
        Ok(())
    }

    fn handle_data(&mut self, d: &DataFrame<'_>, now: Instant) -> Result<(), FrameError> {
        if d.payload.len() > self.max_payload {
            return Err(FrameError::TooLarge("fragment payload exceeds the frame size"));
        }
        if usize::from(d.frag_count) > self.max_frag_count {
            return Err(FrameError::TooLarge(
                "frag_count implies a message above max_message_size",
            ));
        }
        let restarted = match self.peer_session {
            Some(p) if d.session < p => {
                self.stats.stale_frames += 1;
                return Ok(());
            }
            Some(p) => d.session > p,
            None => false,
        };
        // Check against the receive state this frame will meet, before changing anything.
        let fresh;
        let recv = match &self.recv {
            Some(r) if !restarted => r,
            _ => {
                fresh = self.new_receiver(d.base);
                &fresh
            }
        };
        let disposition = recv.check(d)?;

        if restarted {
            self.peer_restarted(d.session, now);
        }
        self.peer_session = Some(d.session);
        if self.recv.is_none() {
            self.recv = Some(self.new_receiver(d.base));
        }
        let recv = self.recv.as_mut().expect("receiver exists");
        let urgent = match disposition {
            Disposition::Duplicate => {
                self.stats.duplicates += 1;
                true
            }
            Disposition::BeyondWindow => {
                self.stats.beyond_window += 1;
                true
            }
            Disposition::Accept => {
                let mut delivered = Vec::new();
                let urgent = recv.accept(d, &mut delivered);
                self.stats.messages_delivered += delivered.len() as u64;
                self.events.extend(delivered.into_iter().map(Event::Delivered));
                urgent
            }
        };
        let deadline = if urgent { now } else { now + self.config.ack_delay };
        self.ack_deadline = Some(self.ack_deadline.map_or(deadline, |t| t.min(deadline)));
        Ok(())
    }

    fn handle_ack(&mut self, a: &AckFrame, now: Instant) -> Result<(), FrameError> {
        if a.acked_session != self.session {
            self.stats.stale_frames += 1;
            return Ok(());
        }
        let restarted = match self.peer_session {
            Some(p) if a.acker_session < p => {
                self.stats.stale_frames += 1;
                return Ok(());
            }
            Some(p) => a.acker_session > p,
            None => false,
        };
        self.sender.check_ack(a)?;
        if restarted {
            self.peer_restarted(a.acker_session, now);
        }
        self.peer_session = Some(a.acker_session);
        self.sender.on_ack(a, now, &mut self.events, &mut self.stats);
        Ok(())
    }

    fn new_receiver(&self, start: u64) -> Receiver {
        Receiver::new(start, self.config.window, self.max_payload, self.config.max_message_size)
    }

    fn peer_restarted(&mut self, new: u64, now: Instant) {
        let old = self.peer_session.expect("a restart needs a known session");
        self.events.push_back(Event::PeerRestarted { old, new });
        self.recv = None;
        self.ack_deadline = None;
        self.sender.on_peer_restart(now);
    }

    /// Next frame to send (an ack that is due, a retransmission, or new data), or `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let frame = match (self.ack_deadline, &self.recv, self.peer_session) {
            (Some(due), Some(recv), Some(peer)) if due <= now => {
                self.ack_deadline = None;
                let (cumulative, ranges) =
                    recv.ack_state(max_ack_ranges(self.config.max_frame_size));
                Some(encode_ack(&AckFrame {
                    acked_session: peer,
                    acker_session: self.session,
                    cumulative,
                    ranges,
                }))
            }
            _ => self.sender.poll_transmit(now, &mut self.stats),
        };
        if frame.is_some() {
            self.stats.frames_sent += 1;
            self.sender.update_stats(&mut self.stats);
        }
        frame
    }

    /// The next event for the driver, or `None`.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Connection::handle_timeout`] (then `poll_transmit`) must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.ack_deadline, self.sender.timer()) {
            (Some(a), Some(t)) => Some(a.min(t)),
            (a, t) => a.or(t),
        }
    }

    /// Processes timer expiries up to `now`. Call `poll_transmit` afterwards.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.sender.on_timeout(now, &mut self.stats);
        self.sender.update_stats(&mut self.stats);
    }

    /// Counters and estimates.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Our session, as given to [`Connection::new`].
    pub fn session(&self) -> u64 {
        self.session
    }

    /// The peer's latest session, once any frame of it was accepted.
    pub fn peer_session(&self) -> Option<u64> {
        self.peer_session
    }

    /// Nothing queued, nothing unacknowledged, no acknowledgement pending.
    pub fn is_idle(&self) -> bool {
        self.sender.is_idle() && self.ack_deadline.is_none()
    }
}
