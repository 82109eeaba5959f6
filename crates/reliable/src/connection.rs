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
    /// Set by [`Connection::path_changed`]: the next frame accepted from the new path may be
    /// of any peer session (another sender of the same identity); cleared by the next frame
    /// accepted from any path.
    new_path: bool,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Connection {
    /// Creates the state for one peer. `session`: our session number (strictly larger after
    /// each restart of our process). `seed`: for RTO jitter.
    ///
    /// # Panics
    ///
    /// If the configuration is unusable: `max_frame_size` must leave room for an ack with one
    /// range (42 bytes, which also fits a data header plus payload), `window` must be at least 1, and
    /// `min_rto <= max_rto`.
    pub fn new(config: Config, session: u64, seed: u64) -> Connection {
        assert!(
            // An ack with one range (42 bytes) is larger than a data header plus one byte.
            config.max_frame_size >= ACK_HEADER_LEN + ACK_RANGE_LEN,
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
            new_path: false,
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

    /// Feeds one frame received from the peer (already authenticated), on the path we send on.
    ///
    /// A frame that does not parse, exceeds the limits or contradicts earlier frames is
    /// rejected with an error and changes nothing. Frames of an older peer session, and acks
    /// for a session not ours, are valid but ignored (counted in [`Stats::stale_frames`]).
    /// After [`Connection::path_changed`], the first frame accepted may be of any peer session:
    /// one that differs from the last is a restart ([`Event::PeerRestarted`]), older or not.
    pub fn handle_frame(&mut self, frame: &[u8], now: Instant) -> Result<(), FrameError> {
        self.handle_frame_on(frame, now, true)
    }

    /// [`Connection::handle_frame`] for a frame that came from another address than the one
    /// we send to (the peer we left at a [`Connection::path_changed`], or a new one writing
    /// to us): the session rules without the exception of a new path, so a frame of an older
    /// session is stale, and one of a newer session a restart, as ever.
    pub fn handle_frame_off_path(&mut self, frame: &[u8], now: Instant) -> Result<(), FrameError> {
        self.handle_frame_on(frame, now, false)
    }

    fn handle_frame_on(
        &mut self,
        frame: &[u8],
        now: Instant,
        on_path: bool,
    ) -> Result<(), FrameError> {
        if frame.len() > self.config.max_frame_size {
            return Err(FrameError::TooLarge("frame exceeds max_frame_size"));
        }
        let any_session = on_path && self.new_path;
        let stale = self.stats.stale_frames;
        match decode(frame)? {
            Frame::Data(d) => self.handle_data(&d, now, any_session)?,
            Frame::Ack(a) => self.handle_ack(&a, now, any_session)?,
        }
        if self.stats.stale_frames == stale {
            self.new_path = false;
        }
        self.stats.frames_received += 1;
        self.sender.update_stats(&mut self.stats);
        Ok(())
    }

    /// Whether a frame of `session` is a restart of the peer (`Some(true)`), of its current
    /// session (`Some(false)`), or stale (`None`). `any_session`: the first frame on a new path.
    fn session_change(&self, session: u64, any_session: bool) -> Option<bool> {
        match self.peer_session {
            Some(p) if session == p => Some(false),
            Some(_) if any_session => Some(true),
            Some(p) if session < p => None,
            Some(_) => Some(true),
            None => Some(false),
        }
    }

    fn handle_data(
        &mut self,
        d: &DataFrame<'_>,
        now: Instant,
        any_session: bool,
    ) -> Result<(), FrameError> {
        // A packed frame's entries are bounded by the frame size, checked already.
        if !d.packed && d.payload.len() > self.max_payload {
            return Err(FrameError::TooLarge("fragment payload exceeds the frame size"));
        }
        if usize::from(d.frag_count) > self.max_frag_count {
            return Err(FrameError::TooLarge(
                "frag_count implies a message above max_message_size",
            ));
        }
        let Some(restarted) = self.session_change(d.session, any_session) else {
            self.stats.stale_frames += 1;
            return Ok(());
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
        } else {
            // Its frames arrive: what we sent it during an outage is resent now.
            self.sender.on_peer_heard(now);
        }
        self.peer_session = Some(d.session);
        if self.recv.is_none() {
            self.recv = Some(self.new_receiver(d.base));
        }
        let recv = self.recv.as_mut().expect("receiver exists");
        let mut delivered = Vec::new();
        recv.skip_to(d.base, &mut delivered);
        let urgent = match disposition {
            Disposition::Duplicate => {
                self.stats.duplicates += 1;
                true
            }
            Disposition::BeyondWindow => {
                self.stats.beyond_window += 1;
                true
            }
            Disposition::Accept => recv.accept(d, &mut delivered),
        };
        self.stats.messages_delivered += delivered.len() as u64;
        self.events.extend(delivered.into_iter().map(Event::Delivered));
        let deadline = if urgent { now } else { now + self.config.ack_delay };
        self.ack_deadline = Some(self.ack_deadline.map_or(deadline, |t| t.min(deadline)));
        Ok(())
    }

    fn handle_ack(
        &mut self,
        a: &AckFrame,
        now: Instant,
        any_session: bool,
    ) -> Result<(), FrameError> {
        if a.acked_session != self.session {
            self.stats.stale_frames += 1;
            return Ok(());
        }
        let Some(restarted) = self.session_change(a.acker_session, any_session) else {
            self.stats.stale_frames += 1;
            return Ok(());
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

    /// Whether a retransmission timer is due at `now` (what [`Connection::handle_timeout`]
    /// would act on, beside a delayed acknowledgement). A driver with many connections can
    /// hold such a connection back to bound its retransmissions as a whole.
    pub fn retransmission_due(&self, now: Instant) -> bool {
        self.sender.timer().is_some_and(|t| t <= now)
    }

    /// When a delayed acknowledgement is due, if one is pending (part of
    /// [`Connection::poll_timeout`]).
    pub fn ack_due_at(&self) -> Option<Instant> {
        self.ack_deadline
    }

    /// The driver sends to the peer at another address from now on (a nanoprobe failing over
    /// to another address of its CMA): unacknowledged data goes out at once, from the computed
    /// RTO rather than a backed-off one. Nothing is forgotten: what the new address's peer
    /// already holds it acknowledges as a duplicate. The peer there may be another sender of
    /// the same identity with a session of its own, older or newer (the CMA's packet readers):
    /// the next frame accepted by [`Connection::handle_frame`] is taken whatever its session,
    /// and a session other than the last is a restart ([`Event::PeerRestarted`]: receive state
    /// dropped, everything unacknowledged resent). Frames from elsewhere go to
    /// [`Connection::handle_frame_off_path`]. Call `poll_transmit` afterwards.
    pub fn path_changed(&mut self, now: Instant) {
        self.new_path = true;
        self.sender.on_path_change(now);
        self.sender.update_stats(&mut self.stats);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn pair() -> (Connection, Connection, Instant) {
        let a = Connection::new(Config::default(), 1, 11);
        let b = Connection::new(Config::default(), 2, 22);
        (a, b, Instant::now())
    }

    fn drain(c: &mut Connection, now: Instant) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| c.poll_transmit(now)).collect()
    }

    fn events(c: &mut Connection) -> Vec<Event> {
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    fn seq_of(frame: &[u8]) -> u64 {
        u64::from_be_bytes(frame[17..25].try_into().unwrap())
    }

    /// A path change (the driver sends to another address of the peer) resends the oldest
    /// unacknowledged fragment at once with the backoff undone; with nothing unacknowledged it
    /// does nothing. A peer of a new session at the new address then gets everything.
    #[test]
    fn a_path_change_resends_at_once_without_the_backoff() {
        let (mut a, _, t0) = pair();
        a.path_changed(t0);
        assert_eq!(a.poll_timeout(), None, "nothing to resend");
        a.send(vec![7], t0).unwrap();
        a.send(vec![8], t0).unwrap();
        assert_eq!(drain(&mut a, t0).len(), 1, "sent (packed), lost");
        let mut now = t0;
        for _ in 0..6 {
            now = a.poll_timeout().unwrap();
            a.handle_timeout(now);
            drain(&mut a, now); // lost too
        }
        let backed_off = a.stats().rto;
        assert!(backed_off > ms(4000), "backed off: {backed_off:?}");
        now += ms(100);
        a.path_changed(now);
        assert_eq!(a.poll_timeout(), Some(now), "resend now");
        a.handle_timeout(now);
        let frames = drain(&mut a, now);
        assert_eq!(frames.len(), 1);
        let next = a.poll_timeout().unwrap() - now;
        assert!(next < ms(1000), "the backoff is undone: next expiry in {next:?}");
        // Another endpoint (a new session) at the new address gets both messages.
        let mut c = Connection::new(Config::default(), 3, 33);
        for f in frames {
            c.handle_frame(&f, now).unwrap();
        }
        assert_eq!(events(&mut c), [Event::Delivered(vec![7]), Event::Delivered(vec![8])]);
        for f in drain(&mut c, now + ms(10)) {
            a.handle_frame(&f, now + ms(10)).unwrap();
        }
        assert_eq!(a.stats().queued_messages, 0, "acknowledged by the new peer");
    }

    /// Two senders of one identity with sessions of their own (packet readers X, session 9,
    /// and Y, session 5): after a path change to Y, Y's first frame is taken although older
    /// (a restart: everything unacknowledged goes to Y), a frame of X's from off the path
    /// does not disturb it unless newer, and back at X (another path change) X's is taken
    /// again. Without a path change an older session stays stale.
    #[test]
    fn a_new_path_takes_the_next_frame_of_any_session() {
        let now = Instant::now();
        let mut a = Connection::new(Config::default(), 1, 1);
        let mut x = Connection::new(Config::default(), 9, 2);
        let mut y = Connection::new(Config::default(), 5, 3);
        let mut old = Connection::new(Config::default(), 3, 4);
        a.send(vec![1], now).unwrap();
        for f in drain(&mut a, now) {
            x.handle_frame(&f, now).unwrap();
        }
        for f in drain(&mut x, now + ms(5)) {
            a.handle_frame(&f, now + ms(5)).unwrap();
        }
        assert_eq!(a.peer_session(), Some(9));
        assert_eq!(events(&mut a), [Event::Acked(1)]);
        // Y writes without a path change: older, stale.
        y.send(vec![50], now).unwrap();
        let y_frames = drain(&mut y, now);
        a.handle_frame(&y_frames[0], now).unwrap();
        assert_eq!(a.stats().stale_frames, 1);
        assert_eq!(a.peer_session(), Some(9));

        // Two messages X never acknowledges; then the move to Y.
        let t = now + ms(10);
        a.send(vec![2], t).unwrap();
        a.send(vec![3], t).unwrap();
        assert!(!drain(&mut a, t).is_empty(), "sent to X, lost");
        let t = t + ms(3000);
        a.path_changed(t);
        // Off the path, an older session (a deposed sender) is still stale.
        old.send(vec![0], t).unwrap();
        a.handle_frame_off_path(&drain(&mut old, t)[0], t).unwrap();
        assert_eq!(a.stats().stale_frames, 2);
        assert_eq!(a.peer_session(), Some(9));
        // What goes out now reaches Y, which acknowledges: taken, a restart.
        a.handle_timeout(t);
        for f in drain(&mut a, t) {
            y.handle_frame(&f, t).unwrap();
        }
        assert_eq!(events(&mut y), [Event::Delivered(vec![2]), Event::Delivered(vec![3])]);
        let t = t + ms(5);
        for f in drain(&mut y, t) {
            a.handle_frame(&f, t).unwrap();
        }
        let ev = events(&mut a);
        assert_eq!(ev[0], Event::PeerRestarted { old: 9, new: 5 });
        assert_eq!(a.peer_session(), Some(5));
        // After the restart everything from base was sent again; Y acknowledges it all.
        a.handle_timeout(t);
        for f in drain(&mut a, t) {
            y.handle_frame(&f, t).unwrap();
        }
        for f in drain(&mut y, t + ms(5)) {
            a.handle_frame(&f, t + ms(5)).unwrap();
        }
        let acked: Vec<Event> = ev.into_iter().skip(1).chain(events(&mut a)).collect();
        assert_eq!(acked, [Event::Acked(2), Event::Acked(3)]);
        assert!(a.is_idle());
        // The exception is spent: an older session on the path is stale again.
        let stale = a.stats().stale_frames;
        old.send(vec![0], t).unwrap();
        a.handle_frame(&drain(&mut old, t)[0], t).unwrap();
        assert_eq!(a.peer_session(), Some(5));
        assert_eq!(a.stats().stale_frames, stale + 1);

        // Back to X: a message, a path change, X's ack (newer anyway) is taken.
        let t = t + ms(10);
        a.send(vec![4], t).unwrap();
        a.path_changed(t);
        for f in drain(&mut a, t) {
            x.handle_frame(&f, t).unwrap();
        }
        for f in drain(&mut x, t + ms(5)) {
            a.handle_frame(&f, t + ms(5)).unwrap();
        }
        assert_eq!(events(&mut a)[0], Event::PeerRestarted { old: 5, new: 9 });
        // And a path change back to Y whose stale frame arrives off the path first: it does
        // not spend the exception; Y's own frame on the path does.
        let t = t + ms(10);
        a.send(vec![5], t).unwrap();
        a.path_changed(t);
        y.send(vec![51], t).unwrap();
        let late_y = drain(&mut y, t);
        a.handle_frame_off_path(&late_y[0], t).unwrap();
        assert_eq!(a.peer_session(), Some(9), "off the path: stale");
        a.handle_frame(&late_y[0], t).unwrap();
        assert_eq!(a.peer_session(), Some(5), "on the path: taken");
        assert_eq!(events(&mut a)[0], Event::PeerRestarted { old: 9, new: 5 });
    }

    /// After an outage long enough to back the RTO off, a frame from the peer (it is
    /// reachable again) makes the unacknowledged data go out at once, not up to `max_rto`
    /// later (a returning switch's hosts got their new peer sets seconds late).
    #[test]
    fn a_frame_from_the_peer_ends_the_backoff_of_an_outage() {
        let (mut a, mut b, t0) = pair();
        a.send(vec![7], t0).unwrap();
        assert_eq!(drain(&mut a, t0).len(), 1, "sent, lost");
        let mut now = t0;
        for _ in 0..6 {
            now = a.poll_timeout().unwrap();
            a.handle_timeout(now);
            drain(&mut a, now); // every retransmission lost too
        }
        let backed_off = a.poll_timeout().unwrap() - now;
        assert!(backed_off > ms(4000), "backed off: {backed_off:?}");
        // The peer is reachable again and sends something.
        now += ms(100);
        b.send(vec![1], now).unwrap();
        for f in drain(&mut b, now) {
            a.handle_frame(&f, now).unwrap();
        }
        assert!(a.poll_timeout().unwrap() <= now, "resend now");
        a.handle_timeout(now);
        let frames = drain(&mut a, now);
        assert!(!frames.is_empty());
        for f in frames {
            b.handle_frame(&f, now).unwrap();
        }
        assert!(events(&mut b).contains(&Event::Delivered(vec![7])), "delivered");
        // A frame from the peer while nothing is backed off resends nothing early.
        let (mut a, mut b, t0) = pair();
        a.send(vec![7], t0).unwrap();
        drain(&mut a, t0);
        b.send(vec![1], t0).unwrap();
        for f in drain(&mut b, t0) {
            a.handle_frame(&f, t0).unwrap();
        }
        a.handle_timeout(t0);
        drain(&mut a, t0);
        assert_eq!(a.stats().retransmits, 0);
    }

    #[test]
    fn message_ids_start_at_one_and_increase() {
        let (mut a, _, now) = pair();
        assert_eq!(a.send(vec![], now), Ok(1));
        assert_eq!(a.send(vec![1], now), Ok(2));
        assert_eq!(a.stats().queued_messages, 2);
    }

    #[test]
    fn send_errors_leave_state_unchanged() {
        let config = Config { max_queued_bytes: 1000, ..Config::default() };
        let mut a = Connection::new(config, 1, 0);
        let now = Instant::now();
        let too_big = assim_wire::limits::MAX_MESSAGE_SIZE + 1;
        assert_eq!(
            a.send(vec![0; too_big], now),
            Err(SendError::TooLarge { size: too_big, max: assim_wire::limits::MAX_MESSAGE_SIZE })
        );
        assert_eq!(a.send(vec![0; 900], now), Ok(1));
        assert!(matches!(a.send(vec![0; 100], now), Err(SendError::QueueFull { .. })));
        assert_eq!(a.stats().queued_messages, 1);
        assert_eq!(a.send(vec![0; 10], now), Ok(2), "ids not consumed by errors");
    }

    #[test]
    fn largest_message_fits_the_fragment_limit() {
        let (mut a, _, now) = pair();
        let id = a.send(vec![0; assim_wire::limits::MAX_MESSAGE_SIZE], now);
        assert_eq!(id, Ok(1));
        let frames = drain(&mut a, now);
        assert_eq!(frames.len(), 128, "window-limited");
        assert!(frames.iter().all(|f| f.len() <= 1128));
        let count = u16::from_be_bytes(frames[0][27..29].try_into().unwrap());
        assert_eq!(usize::from(count), assim_wire::limits::MAX_MESSAGE_SIZE.div_ceil(1128 - 29));
    }

    /// Small messages queued together share packed frames; a large one between them is
    /// fragmented and splits the run; ids, delivery order and Acked events are per message.
    #[test]
    fn small_messages_are_packed_into_few_frames() {
        let (mut a, mut b, now) = pair();
        let mut sent = Vec::new();
        for i in 0..200u32 {
            let len = if i == 100 { 3000 } else { 50 };
            let m: Vec<u8> = (0..len).map(|j| (i as usize * 7 + j) as u8).collect();
            assert_eq!(a.send(m.clone(), now), Ok(u64::from(i) + 1));
            sent.push(m);
        }
        let frames = drain(&mut a, now);
        // 199 x 52 bytes of entries in frames of 1128 - 27: 21 per frame, plus 3 fragments.
        assert_eq!(frames.len(), 5 + 5 + 3, "frames: {}", frames.len());
        assert!(frames.iter().all(|f| f.len() <= 1128));
        assert_eq!(frames.iter().filter(|f| f[0] == 3).count(), 10);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(seq_of(f), i as u64);
        }
        for f in &frames {
            b.handle_frame(f, now).unwrap();
        }
        let delivered: Vec<Event> = sent.into_iter().map(Event::Delivered).collect();
        assert_eq!(events(&mut b), delivered);
        assert_eq!(b.stats().messages_delivered, 200);
        for ack in drain(&mut b, now + ms(5)) {
            a.handle_frame(&ack, now + ms(10)).unwrap();
        }
        assert_eq!(events(&mut a), (1..=200).map(Event::Acked).collect::<Vec<_>>());
        assert!(a.is_idle());
        assert_eq!(a.stats().queued_messages, 0);
    }

    /// With `coalesce` off every message takes its own frame.
    #[test]
    fn coalescing_can_be_turned_off() {
        let config = Config { coalesce: false, ..Config::default() };
        let mut a = Connection::new(config, 1, 0);
        let now = Instant::now();
        for i in 0..10u8 {
            a.send(vec![i; 10], now).unwrap();
        }
        let frames = drain(&mut a, now);
        assert_eq!(frames.len(), 10);
        assert!(frames.iter().all(|f| f[0] == 1));
    }

    /// A packed frame lost, then only later frames arrive: it is one unit for selective acks
    /// and retransmission, and nothing in it is acknowledged before it is.
    #[test]
    fn a_lost_packed_frame_is_resent_as_a_unit() {
        let (mut a, mut b, now) = pair();
        for i in 0..40u8 {
            a.send(vec![i; 100], now).unwrap(); // 10 per packed frame
        }
        let frames = drain(&mut a, now);
        assert_eq!(frames.len(), 4);
        for f in &frames[1..] {
            b.handle_frame(f, now).unwrap();
        }
        assert!(events(&mut b).is_empty(), "held until the gap is filled");
        let t = now + ms(20);
        for ack in drain(&mut b, now) {
            a.handle_frame(&ack, t).unwrap();
        }
        assert!(events(&mut a).is_empty(), "nothing cumulatively acknowledged");
        let resent = drain(&mut a, t);
        assert_eq!(resent, vec![frames[0].clone()], "the same packed frame again");
        b.handle_frame(&resent[0], t).unwrap();
        let delivered = events(&mut b);
        assert_eq!(delivered.len(), 40);
        assert_eq!(delivered[0], Event::Delivered(vec![0; 100]));
        assert_eq!(delivered[39], Event::Delivered(vec![39; 100]));
        for ack in drain(&mut b, t) {
            a.handle_frame(&ack, t + ms(10)).unwrap();
        }
        assert_eq!(events(&mut a), (1..=40).map(Event::Acked).collect::<Vec<_>>());
    }

    #[test]
    fn acks_are_coalesced_for_ack_delay() {
        let (mut a, mut b, now) = pair();
        for i in 0..3u8 {
            a.send(vec![i], now).unwrap();
        }
        for f in drain(&mut a, now) {
            b.handle_frame(&f, now).unwrap();
        }
        assert_eq!(
            events(&mut b),
            vec![Event::Delivered(vec![0]), Event::Delivered(vec![1]), Event::Delivered(vec![2])]
        );
        assert!(b.poll_transmit(now).is_none(), "ack held back");
        assert_eq!(b.poll_timeout(), Some(now + ms(5)));
        let acks = drain(&mut b, now + ms(5));
        assert_eq!(acks.len(), 1, "one ack for three messages");
        a.handle_frame(&acks[0], now + ms(10)).unwrap();
        assert_eq!(events(&mut a), vec![Event::Acked(1), Event::Acked(2), Event::Acked(3)]);
        assert!(a.is_idle() && b.is_idle());
        assert_eq!(a.stats().srtt, Some(ms(10)));
    }

    #[test]
    fn out_of_order_and_duplicate_arrivals_are_acked_immediately() {
        let (mut a, mut b, now) = pair();
        // Each drained before the next is queued: one frame each, not packed together.
        a.send(vec![1], now).unwrap();
        let mut frames = drain(&mut a, now);
        a.send(vec![2], now).unwrap();
        frames.extend(drain(&mut a, now));
        b.handle_frame(&frames[1], now).unwrap();
        assert!(events(&mut b).is_empty());
        assert_eq!(drain(&mut b, now).len(), 1, "out of order: ack now");
        b.handle_frame(&frames[0], now).unwrap();
        assert_eq!(drain(&mut b, now).len(), 1, "gap filled: ack now");
        b.handle_frame(&frames[0], now).unwrap();
        assert_eq!(drain(&mut b, now).len(), 1, "duplicate: ack now");
        assert_eq!(b.stats().duplicates, 1);
        assert_eq!(events(&mut b), vec![Event::Delivered(vec![1]), Event::Delivered(vec![2])]);
    }

    #[test]
    fn selectively_acked_fragments_are_not_resent() {
        let (mut a, mut b, now) = pair();
        let mut frames = Vec::new();
        for i in 0..6u8 {
            a.send(vec![i], now).unwrap();
            frames.extend(drain(&mut a, now)); // one frame each, not packed together
        }
        assert_eq!(frames.len(), 6);
        // Seq 1 is lost; 0 and 2..6 arrive.
        let mut acks = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            if i != 1 {
                b.handle_frame(f, now).unwrap();
                acks.extend(drain(&mut b, now + ms(5)));
            }
        }
        let t = now + ms(20);
        for ack in &acks {
            a.handle_frame(ack, t).unwrap();
        }
        // Fast retransmit of seq 1 only: 3 later ones were acknowledged.
        let resent = drain(&mut a, t);
        assert_eq!(resent.iter().map(|f| seq_of(f)).collect::<Vec<_>>(), vec![1]);
        // Timeouts resend seq 1 again, never the selectively acknowledged ones.
        for _ in 0..3 {
            let deadline = a.poll_timeout().unwrap();
            a.handle_timeout(deadline);
            let resent = drain(&mut a, deadline);
            assert_eq!(resent.iter().map(|f| seq_of(f)).collect::<Vec<_>>(), vec![1]);
        }
        assert_eq!(a.stats().retransmits, 4);
        assert_eq!(a.stats().in_flight, 1);
        b.handle_frame(&resent[0], t).unwrap();
        let deadline = a.poll_timeout().unwrap();
        for ack in drain(&mut b, t + ms(5)) {
            a.handle_frame(&ack, deadline).unwrap();
        }
        assert_eq!(events(&mut a).len(), 6);
        assert!(a.is_idle());
        assert_eq!(a.poll_timeout(), None);
    }

    /// The RTO doubles on every expiry, is capped at max_rto, and retries never stop; each
    /// deadline is the RTO ±20 %.
    #[test]
    fn rto_backs_off_and_is_capped() {
        let (mut a, _, start) = pair();
        a.send(b"into the void".to_vec(), start).unwrap();
        assert_eq!(drain(&mut a, start).len(), 1);
        let mut now = start;
        let mut rtos = vec![a.stats().rto];
        for _ in 0..100 {
            let deadline = a.poll_timeout().expect("never gives up");
            let wait = deadline - now;
            let rto = a.stats().rto;
            assert!(
                wait >= rto.mul_f64(0.8) && wait <= rto.mul_f64(1.2).min(ms(10_000)),
                "{wait:?} vs {rto:?}"
            );
            now = deadline;
            a.handle_timeout(now);
            assert_eq!(drain(&mut a, now).len(), 1, "one retransmission per expiry");
            rtos.push(a.stats().rto);
        }
        let secs: Vec<u64> = rtos.iter().map(|d| d.as_millis() as u64).collect();
        assert_eq!(&secs[..8], &[300, 600, 1200, 2400, 4800, 9600, 10_000, 10_000]);
        assert!(secs[6..].iter().all(|&s| s == 10_000));
        assert_eq!(a.stats().timeouts, 100);
        // 100 expiries at 8–10 s each once capped: still retrying after 12 virtual minutes.
        assert!(now - start > Duration::from_secs(12 * 60), "retried for over 12 minutes");
    }

    #[test]
    fn stale_session_frames_are_dropped_and_restart_is_reported() {
        let now = Instant::now();
        let mut a1 = Connection::new(Config::default(), 5, 1);
        let mut b = Connection::new(Config::default(), 9, 2);
        a1.send(b"old".to_vec(), now).unwrap();
        let mut old_frames = drain(&mut a1, now);
        a1.send(b"old, late".to_vec(), now).unwrap();
        old_frames.extend(drain(&mut a1, now));
        b.handle_frame(&old_frames[0], now).unwrap();
        assert_eq!(events(&mut b), vec![Event::Delivered(b"old".to_vec())]);

        let mut a2 = Connection::new(Config::default(), 6, 1);
        a2.send(b"new".to_vec(), now).unwrap();
        for f in drain(&mut a2, now) {
            b.handle_frame(&f, now).unwrap();
        }
        b.handle_frame(&old_frames[1], now).unwrap();
        assert_eq!(
            events(&mut b),
            vec![Event::PeerRestarted { old: 5, new: 6 }, Event::Delivered(b"new".to_vec())]
        );
        assert_eq!(b.stats().stale_frames, 1);
        assert_eq!(b.peer_session(), Some(6));
    }
}
