//! Switch incidents: telling a switch (or segment) that went down or was cut off from hosts
//! that failed one by one (issue 13). Sans-IO: every input takes `now`; timers live in one
//! ordered set; [`crate::Cma`] applies the consequences (states, rings, events).
//!
//! ```text
//! QUIET    --trigger: a member of topological ring R is suspect, missed ----> CHECKING(R)
//!            the CMA's first probe (issue 18), and its reporter is outside     probe every member now,
//!            R (the upper ring) or two members of R are suspect at once        then every interval/2;
//!                                                                              deadline = now + 2*interval
//! CHECKING --a member answers (probe reply with a check nonce, any message)--> (recorded)
//! CHECKING --half or more of the members answered--------------------------> QUIET   (not the switch:
//!                                                                              held host.down decisions go ahead)
//! CHECKING --deadline; silent > half and ≥ 2 members; nobody answered------> DOWN(R)  switch.down
//! CHECKING --deadline; silent > half and ≥ 2 members; some answered--------> DOWN(R)  switch.unreachable
//!            (the silent hosts become UNREACHABLE, not DOWN; one event lists them)
//! CHECKING --deadline, otherwise--------------------------------------------> QUIET   (held decisions go ahead)
//! DOWN     --every 2*interval---------------------------------------------> probe every host not back
//! DOWN     --a host of it is heard (message, probe reply, hello, heartbeat)-> RETURNING  host Up (no host.up);
//!                                                                              probe the others every interval/2;
//!                                                                              deadline = now + 2*interval + interval/2
//! RETURNING --another host heard------------------------------------------> (it is back, Up)
//! RETURNING --deadline----------------------------------------------------> QUIET   one switch.up (body: back,
//!                                                                              not back); each host not back → DOWN
//!                                                                              (host.down "did not come back with it")
//! ```
//!
//! **Words made inside an outage are discounted** ([`crate::Cma`], `made_before_return`). A
//! host cut off with its switch keeps running: it reports the peers it cannot hear, and its
//! nanoprobe spools those reports until the switch returns. They describe the outage, which
//! this module already decided, not the present:
//!
//! ```text
//! any --dead/late word from A about B, made under A's peer set E---------> ignored
//!        (reports_before_return) when E < floor(A) or E < floor(B), where floor(X) is the
//!        first epoch issued after X came back (Unreachable/Down/Left → Up); epochs grow
//!        globally, so every peer set that saw X back has an epoch ≥ floor(X)
//! ```
//!
//! Words made after the return (under a newer peer set) count as always. The floors live in
//! memory; after a CMA restart every word counts again.
//!
//! While a check of R is open, a member's `host.down` is **held** (its text and tags kept)
//! and decided when the check closes: Unreachable if the switch is blamed, Down otherwise. A
//! member of R whose suspicion ends in Down while R is DOWN becomes Unreachable
//! (`host.unreachable`).
//!
//! **Peer probes** (`ProbeRequest` → `ProbeResult`). When a check opens, the CMA asks up to
//! [`crate::PEER_PROBERS`] nanoprobes outside the ring to probe up to
//! [`crate::PEER_PROBE_TARGETS`] of its members (evenly spaced in ring order): the ring's
//! watchers first, then other representatives in upper-ring order, each Up and in a ring that
//! is neither checked nor down. Each (prober, target) has its own command id; the request
//! carries the target's address and key and a timeout of one interval.
//!
//! ```text
//! CHECKING --ProbeResult(prober, id, target, answered) matching an open request--> recorded
//!            (peer_answered / peer_silent); any other result is counted and ignored
//! any      --answered result for a Suspect host (even after its check closed)----> proof of life
//!            (AliveProof::PeerProbe: decided at its deadline as path.suspect, not down)
//! CHECKING --deadline, blames the switch, nobody answered the CMA and no peer-----> DOWN(R) switch.down
//!            reached a silent member ("…nor probes from P on other switches" when they tried)
//! CHECKING --deadline, blames the switch, a peer reached a silent member----------> DOWN(R) switch.unreachable
//!            ("cut off from the CMA": the switch forwards, the CMA's path to it is broken)
//! CHECKING --closes, not the switch: a held member a peer reached-----------------> UP + path.suspect
//!            (proof peer-probe), not host.down
//! ```
//!
//! **Service alarms of unreachable hosts** (Nagios `parents` semantics; `services`,
//! [`crate::Authority`]). A check result of a host that is Unreachable, or that it made (by its
//! own clock, `CheckStateChange.at`) inside one of its last four windows of unreachability
//! (from its silence, its `since` minus dead + 2 intervals, to its return) while that outage is
//! still open, is recorded (state stored, event emitted) but at severity info, tagged
//! `suppressed=<switch>`; a non-OK one is *held*. When the switch's return window closes with
//! `switch.up`, each held check of a host that came back is raised once more at its own
//! severity if it is still not OK ("still CRITICAL now that switch S is back"); those of hosts
//! that did not come back are dropped (their `host.down` is the alarm). A result made inside
//! the outage but delivered after `switch.up` is raised as usual, its text saying it was made
//! while the host was unreachable. Why hold-and-report rather than only info: the nanoprobe
//! reports HARD changes only, so a service that broke during the outage and stays broken would
//! never be reported again; why not hold silently: the record of what happened (and when) is
//! worth keeping in the event log. Held alarms live in memory (a CMA restart leaves them at
//! info). Services on *other* hosts that depend on an unreachable host are not suppressed: the
//! dependency graph lives in the store, not in this core.
//!
//! What the evidence cannot tell apart (said in the events' text): with the CMA and the
//! probers outside the switch, a dead switch and a cut uplink look the same (every host
//! silent: `switch.down`, "down or cut off"); a switch that forwards for some hosts but not
//! others (`switch.unreachable`) may be a partial failure of the switch or of its hosts' links.
//!
//! **The switch's management address** (when the driver can ping,
//! [`crate::CmaConfig::management_probes`]): a check of a switch ring also asks for one ping of
//! the address most of its members heard the switch announce (`Action::ProbeManagement`;
//! [`Incidents::probe_management`], [`Incidents::management_result`]):
//!
//! ```text
//! CHECKING --deadline, blames the switch, nobody answered, management silent---> DOWN(R) switch.down
//!            ("…, nor did its management address A")
//! CHECKING --deadline, blames the switch, nobody answered, management answered-> DOWN(R) switch.unreachable
//!            ("alive but forwards for none of its hosts": host ports, forwarding or their power)
//! CHECKING --deadline, no answer from the driver yet------------------------------> as without it
//! ```
//!
//! An in-band management address is behind the same uplink as the hosts, so a dead switch and
//! a cut uplink still look the same; an out-of-band one tells them apart when the CMA is on
//! that network.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use assim_wire::{NodeId, Timestamp};

use crate::model::{Timing, probe_every, suspect_window};
use crate::ring::RingKey;

/// The most peer probe requests remembered while their answers are awaited.
pub const MAX_PEER_COMMANDS: usize = 4096;

/// A `host.down` held while its ring is checked: the decision as it would have been made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub tags: Vec<(&'static str, String)>,
    pub text: String,
}

/// An open check of one ring: is most of it silent?
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub opened: Timestamp,
    pub deadline: Timestamp,
    /// Members of the ring when the check opened.
    pub members: BTreeSet<NodeId>,
    /// Members that answered (or were heard from) since.
    pub answered: BTreeSet<NodeId>,
    /// What opened it: (the suspect member, the reporter).
    pub trigger: (NodeId, NodeId),
    /// `host.down` decisions held until the check closes.
    pub held: BTreeMap<NodeId, Held>,
    /// The nanoprobes on other switches asked to probe members, in order of asking.
    pub probers: Vec<NodeId>,
    /// Peer probes asked for and not answered yet (`ProbeRequest`): command id → (prober,
    /// target).
    pub peer_requests: BTreeMap<u64, (NodeId, NodeId)>,
    /// Members a nanoprobe on another switch reached: target → the prober.
    pub peer_answered: BTreeMap<NodeId, NodeId>,
    /// Members a prober tried and did not reach.
    pub peer_silent: BTreeSet<NodeId>,
    /// The CMA's ping of the switch's management address, if one was sent.
    pub management: Option<ManagementProbe>,
    nonces: BTreeMap<u64, NodeId>,
    next_probe: Option<Timestamp>,
}

/// The CMA's ping of a checked switch's management address (the address LLDP/CDP gave).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagementProbe {
    pub address: IpAddr,
    pub id: u64,
    /// `None` until the driver answers (a check may close first).
    pub answered: Option<bool>,
}

impl Check {
    /// Members that have not answered.
    pub fn silent(&self) -> Vec<NodeId> {
        self.members.difference(&self.answered).copied().collect()
    }

    /// Whether the silent members blame the ring's switch: more than half silent, two or more
    /// members.
    pub fn blames_switch(&self) -> bool {
        let silent = self.members.len() - self.answered.len();
        self.members.len() >= 2 && silent * 2 > self.members.len()
    }

    fn settled_not_switch(&self) -> bool {
        self.answered.len() * 2 >= self.members.len()
    }

    fn wake(&self) -> Timestamp {
        self.next_probe.map_or(self.deadline, |p| p.min(self.deadline))
    }
}

/// Whether the incident is a dead (or cut-off) switch, or a switch some hosts still answer
/// through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutageKind {
    Down,
    Unreachable,
}

/// A switch (ring) that is down or cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outage {
    pub kind: OutageKind,
    pub since: Timestamp,
    /// The hosts made Unreachable by it.
    pub hosts: BTreeSet<NodeId>,
    /// Those heard again since it started returning.
    pub back: BTreeSet<NodeId>,
    /// When the return window closes (`None` until a first host is heard again).
    pub returning: Option<Timestamp>,
    /// The switch as its hosts' wiring named it when the outage began: hosts cut off from
    /// their switch may lose its LLDP/CDP announcement before they are back, and `switch.up`
    /// must name the switch `switch.down` named.
    pub switch: Option<crate::wiring::SwitchPort>,
    next_probe: Timestamp,
    nonces: BTreeMap<u64, NodeId>,
}

impl Outage {
    fn wake(&self) -> Timestamp {
        self.returning.map_or(self.next_probe, |r| r.min(self.next_probe))
    }

    /// Hosts not heard again.
    pub fn not_back(&self) -> Vec<NodeId> {
        self.hosts.difference(&self.back).copied().collect()
    }
}

/// Work that fell due ([`Incidents::poll_due`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IncidentDue {
    /// Send these probes.
    Probes(Vec<(NodeId, u64)>),
    /// A check's deadline passed: decide. Closed.
    CheckClosed { ring: RingKey, check: Check },
    /// A return window closed: switch.up. Closed.
    Returned { ring: RingKey, outage: Outage },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Check,
    Outage,
}

/// Every open check and outage. See the module doc.
#[derive(Clone, Debug, Default)]
pub struct Incidents {
    checks: BTreeMap<RingKey, Check>,
    outages: BTreeMap<RingKey, Outage>,
    /// Each unreachable host's outage.
    outage_of: BTreeMap<NodeId, RingKey>,
    /// Each member of an open check → its ring.
    checked: BTreeMap<NodeId, RingKey>,
    /// Each peer probe request not answered yet (command id) → its check's ring, the prober,
    /// the target. At most [`MAX_PEER_COMMANDS`], oldest forgotten first.
    peer_commands: BTreeMap<u64, (RingKey, NodeId, NodeId)>,
    /// Each management ping not answered yet → its check's ring (one per open check at most).
    management_ids: BTreeMap<u64, RingKey>,
    timers: BTreeSet<(Timestamp, TimerKind, RingKey)>,
    next_nonce: u64,
}

impl Incidents {
    /// Nonces count up from `nonce_base` (distinct from the suspicions' nonces).
    pub fn new(nonce_base: u64) -> Self {
        Incidents { next_nonce: nonce_base, ..Incidents::default() }
    }

    pub fn check(&self, ring: &RingKey) -> Option<&Check> {
        self.checks.get(ring)
    }

    pub fn outage(&self, ring: &RingKey) -> Option<&Outage> {
        self.outages.get(ring)
    }

    /// Every outage, by ring.
    pub fn outages(&self) -> impl Iterator<Item = (&RingKey, &Outage)> {
        self.outages.iter()
    }

    /// The outage an unreachable host belongs to.
    pub fn outage_of(&self, node: NodeId) -> Option<&RingKey> {
        self.outage_of.get(&node)
    }

    /// The ring whose open check `node` is a member of.
    pub fn checked_ring(&self, node: NodeId) -> Option<&RingKey> {
        self.checked.get(&node)
    }

    pub fn next_wake(&self) -> Option<Timestamp> {
        self.timers.first().map(|t| t.0)
    }

    fn nonce(&mut self) -> u64 {
        let n = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        n
    }

    /// Opens a check of `ring` over `members` (no-op, `None`, if one is open or the ring is
    /// down). Returns the probes to send now.
    pub fn open_check(
        &mut self,
        ring: &RingKey,
        members: Vec<NodeId>,
        trigger: (NodeId, NodeId),
        now: Timestamp,
        timing: &Timing,
    ) -> Option<Vec<(NodeId, u64)>> {
        if self.checks.contains_key(ring) || self.outages.contains_key(ring) {
            return None;
        }
        let deadline = now + suspect_window(timing);
        let mut check = Check {
            opened: now,
            deadline,
            members: members.iter().copied().collect(),
            answered: BTreeSet::new(),
            trigger,
            held: BTreeMap::new(),
            probers: Vec::new(),
            peer_requests: BTreeMap::new(),
            peer_answered: BTreeMap::new(),
            peer_silent: BTreeSet::new(),
            management: None,
            nonces: BTreeMap::new(),
            next_probe: None,
        };
        let mut probes = Vec::with_capacity(members.len());
        for m in members {
            let n = self.nonce();
            check.nonces.insert(n, m);
            probes.push((m, n));
            self.checked.insert(m, ring.clone());
        }
        let next = now + probe_every(timing);
        check.next_probe = (next < deadline).then_some(next);
        self.timers.insert((check.wake(), TimerKind::Check, ring.clone()));
        self.checks.insert(ring.clone(), check);
        Some(probes)
    }

    /// Holds a `host.down` of a member of an open check. False if `node` is in no open check.
    pub fn hold(&mut self, node: NodeId, held: Held) -> bool {
        let Some(ring) = self.checked.get(&node) else { return false };
        let c = self.checks.get_mut(ring).expect("checked nodes belong to a check");
        c.held.insert(node, held);
        true
    }

    /// Drops a held decision (the node proved alive, said hello or goodbye). True if one was
    /// held.
    pub fn release(&mut self, node: NodeId) -> bool {
        let Some(ring) = self.checked.get(&node) else { return false };
        self.checks.get_mut(ring).is_some_and(|c| c.held.remove(&node).is_some())
    }

    /// Whether a decision about `node` is held.
    pub fn is_held(&self, node: NodeId) -> bool {
        self.checked
            .get(&node)
            .and_then(|r| self.checks.get(r))
            .is_some_and(|c| c.held.contains_key(&node))
    }

    /// `node` was heard (a message, a probe reply to any nonce of ours). For an open check:
    /// recorded, and the check is returned closed if half its members have answered.
    pub fn heard(&mut self, node: NodeId) -> Option<(RingKey, Check)> {
        let ring = self.checked.get(&node)?.clone();
        let c = self.checks.get_mut(&ring).expect("checked nodes belong to a check");
        c.answered.insert(node);
        c.held.remove(&node);
        if !c.settled_not_switch() {
            return None;
        }
        let c = self.close_check(&ring);
        Some((ring, c))
    }

    /// Asks nanoprobes on other switches to probe members of the open check of `ring`: one
    /// command id per (prober, target). Empty if no check is open.
    pub fn ask_peers(
        &mut self,
        ring: &RingKey,
        pairs: &[(NodeId, NodeId)],
    ) -> Vec<(NodeId, NodeId, u64)> {
        if !self.checks.contains_key(ring) {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(pairs.len());
        for &(prober, target) in pairs {
            let id = self.nonce();
            self.peer_commands.insert(id, (ring.clone(), prober, target));
            out.push((prober, target, id));
        }
        // Commands outlive their check (an answer after an early close is still proof of
        // life for a suspicion); the oldest are forgotten beyond the bound.
        while self.peer_commands.len() > MAX_PEER_COMMANDS {
            self.peer_commands.pop_first();
        }
        let c = self.checks.get_mut(ring).expect("open");
        for &(prober, target, id) in &out {
            c.peer_requests.insert(id, (prober, target));
            if !c.probers.contains(&prober) {
                c.probers.push(prober);
            }
        }
        out
    }

    /// A prober's answer to request `command_id` about `target`. `None` if it matches no
    /// request we remember (forged, repeated, or forgotten); otherwise `Some(answered)`, and
    /// recorded in the check if it is still open.
    pub fn peer_result(
        &mut self,
        prober: NodeId,
        command_id: u64,
        target: NodeId,
        answered: bool,
    ) -> Option<bool> {
        let (ring, p, t) = self.peer_commands.get(&command_id)?;
        if (*p, *t) != (prober, target) {
            return None;
        }
        let ring = ring.clone();
        self.peer_commands.remove(&command_id);
        let Some(c) = self.checks.get_mut(&ring) else { return Some(answered) };
        if c.peer_requests.remove(&command_id).is_none() {
            return Some(answered);
        }
        if answered {
            c.peer_answered.insert(target, prober);
            c.peer_silent.remove(&target);
        } else if !c.peer_answered.contains_key(&target) {
            c.peer_silent.insert(target);
        }
        Some(answered)
    }

    /// Records a ping of `address` (the switch's management address) for the open check of
    /// `ring`; returns its id, or `None` if no check of `ring` is open or one was sent.
    pub fn probe_management(&mut self, ring: &RingKey, address: IpAddr) -> Option<u64> {
        if self.checks.get(ring).is_none_or(|c| c.management.is_some()) {
            return None;
        }
        let id = self.nonce();
        let c = self.checks.get_mut(ring).expect("open");
        c.management = Some(ManagementProbe { address, id, answered: None });
        self.management_ids.insert(id, ring.clone());
        Some(id)
    }

    /// The driver's answer to management ping `id`. False if it matches no open check (late:
    /// the check closed first; or unknown).
    pub fn management_result(&mut self, id: u64, answered: bool) -> bool {
        let Some(ring) = self.management_ids.remove(&id) else { return false };
        let Some(m) = self.checks.get_mut(&ring).and_then(|c| c.management.as_mut()) else {
            return false;
        };
        m.answered = Some(answered);
        true
    }

    fn close_check(&mut self, ring: &RingKey) -> Check {
        let c = self.checks.remove(ring).expect("open");
        if let Some(m) = &c.management {
            self.management_ids.remove(&m.id);
        }
        self.timers.remove(&(c.wake(), TimerKind::Check, ring.clone()));
        for m in &c.members {
            if self.checked.get(m) == Some(ring) {
                self.checked.remove(m);
            }
        }
        c
    }

    /// Whether a peer probe result about `target` can still matter: its ring is being
    /// checked. (An answer also proves a Suspect host alive; the caller checks that.)
    pub fn peer_command_live(&self, target: NodeId) -> bool {
        self.checked.contains_key(&target)
    }

    /// Whether `nonce` is one of ours for `node` (check or outage probe).
    pub fn nonce_matches(&self, node: NodeId, nonce: u64) -> bool {
        let in_check = self
            .checked
            .get(&node)
            .and_then(|r| self.checks.get(r))
            .is_some_and(|c| c.nonces.get(&nonce) == Some(&node));
        in_check
            || self
                .outage_of
                .get(&node)
                .and_then(|r| self.outages.get(r))
                .is_some_and(|o| o.nonces.get(&nonce) == Some(&node))
    }

    /// Starts an outage of `ring` with these hosts Unreachable.
    pub fn start_outage(
        &mut self,
        ring: &RingKey,
        kind: OutageKind,
        hosts: Vec<NodeId>,
        now: Timestamp,
        timing: &Timing,
    ) -> &mut Outage {
        let o = Outage {
            kind,
            since: now,
            hosts: hosts.iter().copied().collect(),
            back: BTreeSet::new(),
            returning: None,
            switch: None,
            next_probe: now + suspect_window(timing),
            nonces: BTreeMap::new(),
        };
        for h in hosts {
            self.outage_of.insert(h, ring.clone());
        }
        self.timers.insert((o.wake(), TimerKind::Outage, ring.clone()));
        self.outages.insert(ring.clone(), o);
        self.outages.get_mut(ring).expect("just inserted")
    }

    /// An unreachable host of an outage is back. Returns its ring if it was in one; the first
    /// return opens the return window (and probes the others at once).
    pub fn returned(&mut self, node: NodeId, now: Timestamp, timing: &Timing) -> Option<RingKey> {
        let ring = self.outage_of.remove(&node)?;
        let o = self.outages.get_mut(&ring).expect("outage_of points to an outage");
        let old = o.wake();
        o.back.insert(node);
        if o.returning.is_none() {
            o.returning = Some(now + suspect_window(timing) + probe_every(timing));
            o.next_probe = now;
        }
        let new = o.wake();
        if new != old {
            self.timers.remove(&(old, TimerKind::Outage, ring.clone()));
            self.timers.insert((new, TimerKind::Outage, ring.clone()));
        }
        Some(ring)
    }

    /// A host leaves its outage without returning (goodbye, rewired): forgotten by it.
    pub fn forget(&mut self, node: NodeId) {
        if let Some(ring) = self.outage_of.remove(&node)
            && let Some(o) = self.outages.get_mut(&ring)
        {
            o.hosts.remove(&node);
        }
        self.release(node);
    }

    /// Adds a host to an existing outage (its suspicion ended while the switch was down).
    pub fn add_to_outage(&mut self, ring: &RingKey, node: NodeId) -> bool {
        let Some(o) = self.outages.get_mut(ring) else { return false };
        o.hosts.insert(node);
        o.back.remove(&node);
        self.outage_of.insert(node, ring.clone());
        true
    }

    /// Pops the next piece of work due at `now`. Call until `None`.
    pub fn poll_due(&mut self, now: Timestamp, timing: &Timing) -> Option<IncidentDue> {
        let (wake, kind, ring) = self.timers.first()?.clone();
        if wake > now {
            return None;
        }
        self.timers.pop_first();
        match kind {
            TimerKind::Check => {
                let c = self.checks.get(&ring).expect("timer of an open check");
                if now >= c.deadline {
                    self.timers.insert((c.wake(), TimerKind::Check, ring.clone()));
                    let check = self.close_check(&ring);
                    return Some(IncidentDue::CheckClosed { ring, check });
                }
                // Re-probe the members that have not answered, each with a new nonce.
                let silent = c.silent();
                let deadline = c.deadline;
                let mut nonces = Vec::with_capacity(silent.len());
                for m in silent {
                    nonces.push((m, self.nonce()));
                }
                let c = self.checks.get_mut(&ring).expect("open");
                for (m, n) in &nonces {
                    c.nonces.insert(*n, *m);
                }
                let next = now + probe_every(timing);
                c.next_probe = (next < deadline).then_some(next);
                self.timers.insert((c.wake(), TimerKind::Check, ring.clone()));
                Some(IncidentDue::Probes(nonces))
            }
            TimerKind::Outage => {
                let o = self.outages.get(&ring).expect("timer of an outage");
                if o.returning.is_some_and(|r| now >= r) {
                    let outage = self.outages.remove(&ring).expect("present");
                    for h in &outage.hosts {
                        if self.outage_of.get(h) == Some(&ring) {
                            self.outage_of.remove(h);
                        }
                    }
                    return Some(IncidentDue::Returned { ring, outage });
                }
                let targets = o.not_back();
                let mut nonces = Vec::with_capacity(targets.len());
                for m in targets {
                    nonces.push((m, self.nonce()));
                }
                let o = self.outages.get_mut(&ring).expect("present");
                // Only the latest round's nonces answer: bounded memory for a long outage.
                o.nonces = nonces.iter().map(|(m, n)| (*n, *m)).collect();
                let every = if o.returning.is_some() {
                    probe_every(timing)
                } else {
                    suspect_window(timing)
                };
                o.next_probe = now + every;
                self.timers.insert((o.wake(), TimerKind::Outage, ring.clone()));
                Some(IncidentDue::Probes(nonces))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    fn ring() -> RingKey {
        RingKey::switch("tor1")
    }

    fn drain(i: &mut Incidents, now: Timestamp, t: &Timing) -> Vec<IncidentDue> {
        std::iter::from_fn(|| i.poll_due(now, t)).collect()
    }

    #[test]
    fn a_check_closes_early_when_half_answer_and_holds_decisions_until_then() {
        let t = Timing::default();
        let t0 = Timestamp(1_000_000);
        let mut inc = Incidents::new(0);
        let members: Vec<NodeId> = (1..=4).map(id).collect();
        let probes = inc.open_check(&ring(), members.clone(), (id(1), id(9)), t0, &t).unwrap();
        assert_eq!(probes.len(), 4);
        assert!(
            inc.open_check(&ring(), members, (id(1), id(9)), t0, &t).is_none(),
            "one at a time"
        );
        assert!(inc.nonce_matches(id(2), probes[1].1));
        assert!(inc.hold(id(1), Held { tags: vec![], text: "down".into() }));
        assert!(inc.heard(id(2)).is_none(), "1 of 4 answered: not settled");
        let (_, c) = inc.heard(id(3)).expect("2 of 4 answered: not the switch");
        assert!(!c.blames_switch());
        assert_eq!(c.held.len(), 1, "the held host.down goes ahead");
        assert!(inc.next_wake().is_none());
    }

    #[test]
    fn a_silent_majority_at_the_deadline_blames_the_switch_then_it_returns() {
        let t = Timing::default();
        let t0 = Timestamp(1_000_000);
        let mut inc = Incidents::new(0);
        let members: Vec<NodeId> = (1..=5).map(id).collect();
        inc.open_check(&ring(), members, (id(1), id(9)), t0, &t).unwrap();
        inc.heard(id(5));
        // Re-probes of the silent ones every interval/2, then the verdict.
        let due = drain(&mut inc, t0 + Duration::from_millis(500), &t);
        assert!(matches!(&due[..], [IncidentDue::Probes(p)] if p.len() == 4), "{due:?}");
        let due = drain(&mut inc, t0 + Duration::from_secs(2), &t);
        let Some(IncidentDue::CheckClosed { check, .. }) = due.last() else { panic!("{due:?}") };
        assert!(check.blames_switch());
        assert_eq!(check.silent().len(), 4);
        inc.start_outage(&ring(), OutageKind::Unreachable, check.silent(), t0, &t);
        assert_eq!(inc.outage_of(id(2)), Some(&ring()));
        // Host 2 is heard: the return window opens and the others are probed at once.
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(inc.returned(id(2), t1, &t), Some(ring()));
        let due = drain(&mut inc, t1, &t);
        assert!(matches!(&due[..], [IncidentDue::Probes(p)] if p.len() == 3), "{due:?}");
        inc.returned(id(3), t1, &t);
        let due = drain(&mut inc, t1 + Duration::from_millis(2500), &t);
        let Some(IncidentDue::Returned { outage, .. }) = due.last() else { panic!("{due:?}") };
        assert_eq!(outage.back.len(), 2);
        assert_eq!(outage.not_back(), vec![id(1), id(4)]);
        assert!(inc.outage(&ring()).is_none() && inc.outage_of(id(1)).is_none());
    }

    #[test]
    fn one_silent_host_of_two_does_not_blame_the_switch() {
        let t = Timing::default();
        let mut inc = Incidents::new(0);
        inc.open_check(&ring(), vec![id(1), id(2)], (id(1), id(9)), Timestamp(0), &t);
        let (_, c) = inc.heard(id(2)).expect("half answered");
        assert!(!c.blames_switch());
    }
}
