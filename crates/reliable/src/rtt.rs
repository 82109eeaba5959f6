//! Round-trip time estimation and the retransmission timeout, per RFC 6298.
//!
//! `RTO = SRTT + max(G, 4·RTTVAR)` clamped to `[min_rto, max_rto]`, with `G` = 1 ms. Before the
//! first sample the RTO is `initial_rto`. [`Rtt::backoff`] doubles it (capped at `max_rto`);
//! [`Rtt::reset_backoff`] returns to the computed value when an ack acknowledges new data.
//! The ±20 % jitter is applied when the timer is armed, by the caller, from its seeded rng.

use std::time::Duration;

use rand::Rng;

use crate::Config;

/// Clock granularity term of RFC 6298.
const GRANULARITY: Duration = Duration::from_millis(1);

#[derive(Clone, Debug)]
pub(crate) struct Rtt {
    srtt: Option<Duration>,
    min_rtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    initial: Duration,
    min: Duration,
    max: Duration,
}

impl Rtt {
    pub(crate) fn new(config: &Config) -> Rtt {
        let mut rtt = Rtt {
            srtt: None,
            min_rtt: None,
            rttvar: Duration::ZERO,
            rto: Duration::ZERO,
            initial: config.initial_rto,
            min: config.min_rto,
            max: config.max_rto,
        };
        rtt.rto = rtt.computed();
        rtt
    }

    pub(crate) fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The smallest RTT sample seen.
    pub(crate) fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    pub(crate) fn rto(&self) -> Duration {
        self.rto
    }

    fn computed(&self) -> Duration {
        match self.srtt {
            None => self.initial,
            Some(srtt) => srtt + GRANULARITY.max(self.rttvar * 4),
        }
        .clamp(self.min, self.max)
    }

    /// Feeds one RTT measurement from a fragment that was sent exactly once.
    pub(crate) fn sample(&mut self, r: Duration) {
        self.min_rtt = Some(self.min_rtt.map_or(r, |m| m.min(r)));
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                self.rttvar = self.rttvar * 3 / 4 + srtt.abs_diff(r) / 4;
                self.srtt = Some(srtt * 7 / 8 + r / 8);
            }
        }
        self.rto = self.computed();
    }

    /// Doubles the RTO after a timeout, up to `max_rto`.
    pub(crate) fn backoff(&mut self) {
        self.rto = self.rto.saturating_mul(2).min(self.max);
    }

    /// Whether the RTO is backed off beyond its computed value (timeouts since the last
    /// acknowledgement of new data).
    pub(crate) fn backed_off(&self) -> bool {
        self.rto > self.computed()
    }

    /// Undoes any backoff: new data was acknowledged, so the path works again.
    pub(crate) fn reset_backoff(&mut self) {
        self.rto = self.computed();
    }

    /// The RTO with ±20 % jitter, still within `[min_rto, max_rto]`.
    pub(crate) fn jittered(&self, rng: &mut impl Rng) -> Duration {
        let factor: f64 = rng.gen_range(0.8..=1.2);
        self.rto.mul_f64(factor).clamp(self.min, self.max)
    }

    /// How much later than a fragment another one must have been sent, and acknowledged, for
    /// the first to be declared lost (RACK's reordering window): SRTT/4, widened to the
    /// reordering observed (`seen`, plus 1 ms) but never beyond SRTT.
    pub(crate) fn reorder_window(&self, seen: Duration) -> Duration {
        let srtt = self.srtt.unwrap_or(self.initial);
        (srtt / 4).max(seen + GRANULARITY).min(srtt).max(GRANULARITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn follows_rfc_6298() {
        let mut rtt = Rtt::new(&Config::default());
        assert_eq!(rtt.rto(), ms(300));
        rtt.sample(ms(100));
        assert_eq!(rtt.srtt(), Some(ms(100)));
        assert_eq!(rtt.rto(), ms(300)); // 100 + 4 * 50
        rtt.sample(ms(100));
        // rttvar = 37.5, srtt = 100 -> 250
        assert_eq!(rtt.rto(), ms(250));
        for _ in 0..50 {
            rtt.sample(ms(2));
        }
        assert_eq!(rtt.rto(), ms(50), "clamped to min_rto");
    }

    #[test]
    fn backoff_doubles_and_caps_and_resets() {
        let mut rtt = Rtt::new(&Config::default());
        let mut seen = vec![rtt.rto()];
        for _ in 0..10 {
            rtt.backoff();
            seen.push(rtt.rto());
        }
        assert_eq!(
            &seen[..7],
            &[ms(300), ms(600), ms(1200), ms(2400), ms(4800), ms(9600), ms(10_000)]
        );
        assert!(seen[6..].iter().all(|&d| d == ms(10_000)));
        rtt.reset_backoff();
        assert_eq!(rtt.rto(), ms(300));
    }

    #[test]
    fn jitter_stays_within_20_percent_and_bounds() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut rtt = Rtt::new(&Config::default());
        for _ in 0..1000 {
            let j = rtt.jittered(&mut rng);
            assert!(j >= ms(240) && j <= ms(360), "{j:?}");
        }
        for _ in 0..10 {
            rtt.backoff();
        }
        for _ in 0..1000 {
            let j = rtt.jittered(&mut rng);
            assert!(j >= ms(8000) && j <= ms(10_000), "{j:?}");
        }
    }
}
