//! Live fan-out of committed events to many subscribers: compiled filters, an index from
//! (type, severity) and tag to the filters that can match, subscribers with the same filter
//! sharing one evaluation, each event encoded once, and one delivery (one lock, at most one
//! wake-up) per subscriber per committed batch.
//!
//! The event log stays the source of truth: the writer commits a batch, then hands it to
//! [`Fanout::publish`]. A subscriber gets, per batch, the events its filter matches and the id
//! of the last event the batch held (`through`, the cursor to resume from, as in the HTTP API's
//! `X-Assim-Cursor`). Order is the log's order.
//!
//! **Slow subscribers lose nothing.** A subscriber's queue holds at most the number of matching
//! events given to [`Fanout::new`]. When a batch would go beyond that, the queue is
//! emptied and the subscriber is told [`Next::Lagged`] with the id of the last event it missed:
//! it reads the events after its cursor up to that id from the log (as a subscriber that starts
//! with `since=ID` does), then goes on with the queue, which continues exactly after that id.
//!
//! [`CompiledFilter`] is [`Filter`]'s expression compiled for speed: `type:` and `severity`
//! conditions fold into one bit set over (type, severity) pairs; star-only globs become
//! prefix/suffix/substring checks that do not allocate; the node id's text is made once per
//! event. The result is the same as [`Filter::matches`] for every filter and event (property
//! test in this module against the filter module's evaluator).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use assim_cma::{Event, EventKind, Severity};
use assim_util::Glob;
use bytes::Bytes;

use crate::filter::{Expr, Filter};

const KINDS: usize = EventKind::ALL.len();
const LEVELS: usize = Severity::ALL.len();
/// (type, severity) pairs.
const PAIRS: usize = KINDS * LEVELS;
const WORDS: usize = PAIRS.div_ceil(64);

fn kind_index(k: EventKind) -> usize {
    EventKind::ALL.iter().position(|x| *x == k).expect("every kind is in ALL")
}

fn level_index(s: Severity) -> usize {
    Severity::ALL.iter().position(|x| *x == s).expect("every severity is in ALL")
}

/// A set of (type, severity) pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PairSet([u64; WORDS]);

impl PairSet {
    const NONE: PairSet = PairSet([0; WORDS]);

    fn all() -> PairSet {
        let mut s = PairSet::NONE;
        for i in 0..PAIRS {
            s.insert(i);
        }
        s
    }
    fn from_fn(f: impl Fn(EventKind, Severity) -> bool) -> PairSet {
        let mut s = PairSet::NONE;
        for (k, kind) in EventKind::ALL.iter().enumerate() {
            for (l, level) in Severity::ALL.iter().enumerate() {
                if f(*kind, *level) {
                    s.insert(k * LEVELS + l);
                }
            }
        }
        s
    }
    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn and(self, o: PairSet) -> PairSet {
        PairSet(std::array::from_fn(|i| self.0[i] & o.0[i]))
    }
    fn or(self, o: PairSet) -> PairSet {
        PairSet(std::array::from_fn(|i| self.0[i] | o.0[i]))
    }
    fn not(self) -> PairSet {
        PairSet(std::array::from_fn(|i| !self.0[i])).and(PairSet::all())
    }
}

/// A glob compiled for matching without allocating when it has no `?`.
#[derive(Clone, Debug)]
enum Pattern {
    /// No wildcard: equality.
    Exact(Box<str>),
    /// Only `*`: the text starts with `first`, ends with `last` and holds `middle` in order
    /// between them (leftmost matching is exact for star-only globs).
    Stars { first: Box<str>, middle: Vec<Box<str>>, last: Box<str> },
    /// With `?` (one character): the general matcher.
    General(Glob),
}

impl Pattern {
    fn new(g: &Glob) -> Pattern {
        let p = g.as_str();
        if g.is_literal() {
            return Pattern::Exact(p.into());
        }
        if p.contains('?') {
            return Pattern::General(g.clone());
        }
        let parts: Vec<&str> = p.split('*').collect();
        // At least one star, so at least two parts.
        let first = parts[0].into();
        let last = parts[parts.len() - 1].into();
        let middle = parts[1..parts.len() - 1]
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| (*s).into())
            .collect();
        Pattern::Stars { first, middle, last }
    }

    fn matches(&self, text: &str) -> bool {
        match self {
            Pattern::Exact(p) => **p == *text,
            Pattern::Stars { first, middle, last } => {
                if text.len() < first.len() + last.len()
                    || !text.starts_with(&**first)
                    || !text.ends_with(&**last)
                {
                    return false;
                }
                let mut rest = &text[first.len()..text.len() - last.len()];
                for m in middle {
                    match rest.find(&**m) {
                        Some(at) => rest = &rest[at + m.len()..],
                        None => return false,
                    }
                }
                true
            }
            Pattern::General(g) => g.matches(text),
        }
    }
}

/// One node of a compiled filter.
#[derive(Clone, Debug)]
enum Node {
    /// `type:` and `severity` conditions (and any `and`/`or`/`not` of them only): the pairs
    /// that satisfy it.
    Pairs(PairSet),
    Host(Pattern),
    Has(Box<str>),
    Tag {
        key: Box<str>,
        value: Pattern,
        negated: bool,
    },
    Text(regex::Regex),
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
}

impl Node {
    fn compile(x: &Expr) -> Node {
        match x {
            Expr::All => Node::Pairs(PairSet::all()),
            Expr::Type(g) => Node::Pairs(PairSet::from_fn(|k, _| g.matches(k.name()))),
            Expr::Severity(c, l) => Node::Pairs(PairSet::from_fn(|_, s| c.holds(s, *l))),
            Expr::Host(g) => Node::Host(Pattern::new(g)),
            Expr::Has(k) => Node::Has(k.as_str().into()),
            Expr::Tag { key, value, negated } => Node::Tag {
                key: key.as_str().into(),
                value: Pattern::new(value),
                negated: *negated,
            },
            Expr::Text(t) => Node::Text(t.regex.clone()),
            Expr::Not(a) => match Node::compile(a) {
                Node::Pairs(s) => Node::Pairs(s.not()),
                n => Node::Not(Box::new(n)),
            },
            Expr::And(a, b) => Node::join(Node::compile(a), Node::compile(b), true),
            Expr::Or(a, b) => Node::join(Node::compile(a), Node::compile(b), false),
        }
    }

    /// `a and b` (`all`) or `a or b`, flattened, with the pair conditions merged and first (they
    /// are the cheapest to test).
    fn join(a: Node, b: Node, all: bool) -> Node {
        let mut parts = Vec::new();
        for n in [a, b] {
            match n {
                Node::And(v) if all => parts.extend(v),
                Node::Or(v) if !all => parts.extend(v),
                n => parts.push(n),
            }
        }
        let mut pairs: Option<PairSet> = None;
        let mut rest = Vec::new();
        for n in parts {
            match n {
                Node::Pairs(s) => {
                    pairs = Some(match pairs {
                        None => s,
                        Some(p) if all => p.and(s),
                        Some(p) => p.or(s),
                    })
                }
                n => rest.push(n),
            }
        }
        if let Some(p) = pairs {
            // An `and` that can never hold, or an `or` that always holds, is just its pairs.
            if (all && p == PairSet::NONE) || (!all && p == PairSet::all()) || rest.is_empty() {
                return Node::Pairs(p);
            }
            // An `and` of every pair, or an `or` of none, adds nothing.
            if !((all && p == PairSet::all()) || (!all && p == PairSet::NONE)) {
                rest.insert(0, Node::Pairs(p));
            }
        }
        if rest.len() == 1 {
            return rest.pop().expect("one node");
        }
        if all { Node::And(rest) } else { Node::Or(rest) }
    }

    fn matches(&self, e: &Prepared) -> bool {
        match self {
            Node::Pairs(s) => s.contains(e.pair),
            Node::Host(p) => {
                p.matches(&e.event.hostname) || e.node.as_deref().is_some_and(|n| p.matches(n))
            }
            Node::Has(k) => e.event.tags.contains_key(&**k),
            Node::Tag { key, value, negated } => {
                e.event.tags.get(&**key).is_some_and(|v| value.matches(v)) != *negated
            }
            Node::Text(r) => r.is_match(&e.event.text),
            Node::Not(a) => !a.matches(e),
            Node::And(v) => v.iter().all(|n| n.matches(e)),
            Node::Or(v) => v.iter().any(|n| n.matches(e)),
        }
    }

    /// The pairs for which this node can be true.
    fn possible(&self) -> PairSet {
        match self {
            Node::Pairs(s) => *s,
            Node::Not(a) => a.certain().not(),
            Node::And(v) => v.iter().fold(PairSet::all(), |s, n| s.and(n.possible())),
            Node::Or(v) => v.iter().fold(PairSet::NONE, |s, n| s.or(n.possible())),
            _ => PairSet::all(),
        }
    }

    /// The pairs for which this node is true whatever the rest of the event.
    fn certain(&self) -> PairSet {
        match self {
            Node::Pairs(s) => *s,
            Node::Not(a) => a.possible().not(),
            Node::And(v) => v.iter().fold(PairSet::all(), |s, n| s.and(n.certain())),
            Node::Or(v) => v.iter().fold(PairSet::NONE, |s, n| s.or(n.certain())),
            _ => PairSet::NONE,
        }
    }

    /// A tag `key=value` (no wildcard) that every matching event has, if the filter implies one.
    fn required_tag(&self) -> Option<(&str, &str)> {
        match self {
            Node::Tag { key, value: Pattern::Exact(v), negated: false } => Some((key, v)),
            Node::And(v) => v.iter().find_map(Node::required_tag),
            Node::Or(v) => {
                let first = v.first()?.required_tag()?;
                v.iter().all(|n| n.required_tag() == Some(first)).then_some(first)
            }
            _ => None,
        }
    }
}

/// A filter compiled for fast matching on [`Prepared`] events; same answers as [`Filter`].
#[derive(Clone, Debug)]
pub struct CompiledFilter {
    node: Node,
    /// The (type, severity) pairs for which it can match at all.
    possible: PairSet,
}

impl CompiledFilter {
    /// Compiles a parsed filter.
    pub fn new(f: &Filter) -> CompiledFilter {
        let node = Node::compile(f.expr());
        let possible = node.possible();
        CompiledFilter { node, possible }
    }

    /// Whether the event matches.
    pub fn matches(&self, e: &Prepared) -> bool {
        self.possible.contains(e.pair) && self.node.matches(e)
    }
}

/// An event as the fan-out shares it: the event, what matching needs computed once, and its
/// JSON encoding (the HTTP API's form), made at most once, on first use, for every subscriber.
#[derive(Debug)]
pub struct Prepared {
    event: Event,
    pair: usize,
    node: Option<String>,
    json: OnceLock<Bytes>,
}

impl Prepared {
    /// Prepares an event for matching and sharing.
    pub fn new(event: Event) -> Prepared {
        let pair = kind_index(event.kind) * LEVELS + level_index(event.severity);
        let node = event.host.map(|h| h.to_string());
        Prepared { event, pair, node, json: OnceLock::new() }
    }

    /// The event.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The event's JSON (as `GET /api/v1/events` writes it), encoded once and shared.
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| {
            let e = &self.event;
            let api = ApiEvent {
                id: e.id,
                time: e.time.micros(),
                kind: e.kind.name(),
                host: e.host,
                hostname: &e.hostname,
                tags: &e.tags,
                text: &e.text,
                severity: e.severity,
                body: e.body.as_ref(),
            };
            Bytes::from(serde_json::to_vec(&api).expect("events serialize"))
        })
    }
}

/// `assim_api::Event`'s JSON, written from a borrowed event (no copy of its strings and tags);
/// a test checks that the bytes are the same.
#[derive(serde::Serialize)]
struct ApiEvent<'a> {
    id: u64,
    time: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    host: Option<assim_wire::NodeId>,
    hostname: &'a str,
    tags: &'a std::collections::BTreeMap<String, String>,
    text: &'a str,
    severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a serde_json::Value>,
}

/// A committed batch, shared by every subscriber it is delivered to.
pub type Batch = Arc<[Prepared]>;

/// What one subscriber gets from one batch: the matching events and the batch's last id.
#[derive(Clone, Debug)]
pub struct Delivery {
    batch: Batch,
    /// Indexes into `batch` of the matching events, in order (shared by the subscribers with
    /// the same filter).
    matched: Arc<[u32]>,
    /// The id of the last event of the batch: the cursor after this delivery.
    pub through: u64,
}

impl Delivery {
    /// The matching events, oldest first.
    pub fn events(&self) -> impl ExactSizeIterator<Item = &Prepared> + '_ {
        self.matched.iter().map(|i| &self.batch[*i as usize])
    }
}

/// What [`Subscriber::next`] returns.
#[derive(Debug)]
pub enum Next {
    /// Matching events (maybe none, when the batch had no match: the cursor still moves).
    Events(Delivery),
    /// The subscriber fell behind by more than the queue holds: the events after its cursor up
    /// to `through` were not queued. Read them from the log; the queue goes on after `through`.
    Lagged { through: u64 },
    /// The fan-out was dropped.
    Closed,
}

#[derive(Debug, Default)]
struct Queue {
    deliveries: VecDeque<Delivery>,
    /// Matching events in `deliveries`.
    queued: usize,
    /// Set when events were dropped: the last id dropped.
    lagged: Option<u64>,
    closed: bool,
}

#[derive(Debug, Default)]
struct Inbox {
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
}

/// One live subscriber. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscriber {
    inbox: Arc<Inbox>,
    group: u32,
    fanout: std::sync::Weak<Mutex<Index>>,
}

impl Subscriber {
    /// The next delivery, waiting for one.
    pub async fn next(&self) -> Next {
        loop {
            let notified = self.inbox.wake.notified();
            if let Some(n) = self.try_next() {
                return n;
            }
            notified.await;
        }
    }

    /// The next delivery if one is queued.
    pub fn try_next(&self) -> Option<Next> {
        let mut q = self.inbox.queue.lock().expect("queue lock");
        if let Some(through) = q.lagged.take() {
            return Some(Next::Lagged { through });
        }
        if let Some(d) = q.deliveries.pop_front() {
            q.queued -= d.matched.len();
            return Some(Next::Events(d));
        }
        q.closed.then_some(Next::Closed)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(index) = self.fanout.upgrade() {
            index.lock().expect("index lock").remove(self.group, &self.inbox);
        }
    }
}

/// Subscribers with the same filter: evaluated once per event for all of them.
struct Group {
    /// The filter as printed from its expression: the group's key.
    key: String,
    filter: CompiledFilter,
    members: Vec<Arc<Inbox>>,
}

/// Which filter groups to evaluate for an event. Groups are slots in `groups`.
struct Index {
    groups: Vec<Option<Group>>,
    free: Vec<u32>,
    by_key: HashMap<String, u32>,
    live: usize,
    /// Per (type, severity) pair: the groups without a required tag that can match.
    by_pair: Vec<Vec<u32>>,
    /// Per required tag key and value: the groups that need it.
    by_tag: HashMap<Box<str>, HashMap<Box<str>, Vec<u32>>>,
    max_queued: usize,
}

impl Index {
    fn insert(&mut self, filter: &Filter, inbox: Arc<Inbox>) -> u32 {
        let key = filter.expr().to_string();
        if let Some(g) = self.by_key.get(&key) {
            self.groups[*g as usize].as_mut().expect("keyed groups are live").members.push(inbox);
            self.live += 1;
            return *g;
        }
        let filter = CompiledFilter::new(filter);
        let g = match self.free.pop() {
            Some(g) => g,
            None => {
                self.groups.push(None);
                (self.groups.len() - 1) as u32
            }
        };
        match filter.node.required_tag() {
            Some((k, v)) => {
                self.by_tag.entry(k.into()).or_default().entry(v.into()).or_default().push(g)
            }
            None => {
                for (p, groups) in self.by_pair.iter_mut().enumerate() {
                    if filter.possible.contains(p) {
                        groups.push(g);
                    }
                }
            }
        }
        self.by_key.insert(key.clone(), g);
        self.groups[g as usize] = Some(Group { key, filter, members: vec![inbox] });
        self.live += 1;
        g
    }

    fn remove(&mut self, g: u32, inbox: &Arc<Inbox>) {
        let Some(group) = self.groups.get_mut(g as usize).and_then(Option::as_mut) else { return };
        let before = group.members.len();
        group.members.retain(|m| !Arc::ptr_eq(m, inbox));
        self.live -= before - group.members.len();
        if !group.members.is_empty() {
            return;
        }
        let group = self.groups[g as usize].take().expect("checked");
        self.by_key.remove(&group.key);
        self.free.push(g);
        match group.filter.node.required_tag() {
            Some((k, v)) => {
                if let Some(values) = self.by_tag.get_mut(k) {
                    if let Some(groups) = values.get_mut(v) {
                        groups.retain(|x| *x != g);
                        if groups.is_empty() {
                            values.remove(v);
                        }
                    }
                    if values.is_empty() {
                        self.by_tag.remove(k);
                    }
                }
            }
            None => self.by_pair.iter_mut().for_each(|groups| groups.retain(|x| *x != g)),
        }
    }

    fn group(&self, g: u32) -> &Group {
        self.groups[g as usize].as_ref().expect("indexed groups are live")
    }
}

/// The fan-out: subscribers register with a filter; the writer publishes committed batches.
#[derive(Clone)]
pub struct Fanout {
    index: Arc<Mutex<Index>>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout").field("subscribers", &self.subscribers()).finish()
    }
}

impl Default for Fanout {
    fn default() -> Self {
        Fanout::new(Fanout::DEFAULT_MAX_QUEUED)
    }
}

impl Fanout {
    /// Matching events a subscriber may have queued before it is told it lagged.
    pub const DEFAULT_MAX_QUEUED: usize = 65_536;

    /// A fan-out whose subscribers each queue at most `max_queued` matching events.
    pub fn new(max_queued: usize) -> Fanout {
        let index = Index {
            groups: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            live: 0,
            by_pair: vec![Vec::new(); PAIRS],
            by_tag: HashMap::new(),
            max_queued,
        };
        Fanout { index: Arc::new(Mutex::new(index)) }
    }

    /// A new subscriber; it gets the batches published from now on.
    pub fn subscribe(&self, filter: &Filter) -> Subscriber {
        let inbox = Arc::new(Inbox::default());
        let group = self.index.lock().expect("index lock").insert(filter, inbox.clone());
        Subscriber { inbox, group, fanout: Arc::downgrade(&self.index) }
    }

    /// Live subscribers.
    pub fn subscribers(&self) -> usize {
        self.index.lock().expect("index lock").live
    }

    /// Distinct filters among the live subscribers (each is evaluated once per event).
    pub fn filters(&self) -> usize {
        self.index.lock().expect("index lock").by_key.len()
    }

    /// Delivers a committed batch (ids increasing) to every subscriber: each gets the events its
    /// filter matches, evaluated once per distinct filter and only where the index says it can
    /// match, in one delivery. A subscriber is woken only when it has matches; a batch without
    /// any just moves its cursor.
    pub fn publish(&self, events: Vec<Event>) {
        let Some(through) = events.last().map(|e| e.id) else { return };
        let batch: Batch = events.into_iter().map(Prepared::new).collect();
        let index = self.index.lock().expect("index lock");
        let mut matched: Vec<Vec<u32>> = vec![Vec::new(); index.groups.len()];
        for (i, p) in batch.iter().enumerate() {
            let mut offer = |g: u32| {
                if index.group(g).filter.matches(p) {
                    matched[g as usize].push(i as u32);
                }
            };
            for g in &index.by_pair[p.pair] {
                offer(*g);
            }
            if !index.by_tag.is_empty() {
                for (k, v) in &p.event.tags {
                    if let Some(gs) = index.by_tag.get(k.as_str()).and_then(|m| m.get(v.as_str())) {
                        gs.iter().for_each(|g| offer(*g));
                    }
                }
            }
        }
        for (group, matched) in index.groups.iter().zip(matched) {
            let Some(group) = group else { continue };
            let matched: Arc<[u32]> = matched.into();
            for inbox in &group.members {
                let mut q = inbox.queue.lock().expect("queue lock");
                let wake = !matched.is_empty();
                if q.queued + matched.len() > index.max_queued {
                    q.deliveries.clear();
                    q.queued = 0;
                    q.lagged = Some(through);
                } else if !wake && q.deliveries.back().is_some_and(|d| d.matched.is_empty()) {
                    q.deliveries.back_mut().expect("checked").through = through;
                } else {
                    q.queued += matched.len();
                    let d = Delivery { batch: batch.clone(), matched: matched.clone(), through };
                    q.deliveries.push_back(d);
                }
                drop(q);
                if wake {
                    inbox.wake.notify_one();
                }
            }
        }
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        for inbox in self.groups.iter().flatten().flat_map(|g| &g.members) {
            inbox.queue.lock().expect("queue lock").closed = true;
            inbox.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use assim_wire::Timestamp;

    use super::*;

    fn ev(id: u64, cluster: &str) -> Event {
        Event {
            id,
            time: Timestamp(id),
            kind: EventKind::LocalEvent,
            host: None,
            hostname: format!("n{id}"),
            tags: BTreeMap::from([("cluster".to_string(), cluster.to_string())]),
            text: format!("event {id}"),
            severity: Severity::Info,
            body: None,
        }
    }

    fn ids(n: Next) -> (Vec<u64>, u64) {
        match n {
            Next::Events(d) => (d.events().map(|p| p.event().id).collect(), d.through),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_slow_subscriber_is_told_where_it_lagged_and_then_continues_exactly_after() {
        let fanout = Fanout::new(4);
        let slow = fanout.subscribe(&Filter::parse("cluster=A").unwrap());
        fanout.publish((1..=3).map(|i| ev(i, "A")).collect());
        fanout.publish((4..=6).map(|i| ev(i, "A")).collect());
        fanout.publish((7..=8).map(|i| ev(i, "A")).collect());
        // 3 + 3 matches would exceed 4: the queue is emptied at the second batch, which is
        // then in the log only; the third fits.
        assert!(matches!(slow.try_next(), Some(Next::Lagged { through: 6 })));
        assert_eq!(ids(slow.try_next().unwrap()), (vec![7, 8], 8));
        assert!(slow.try_next().is_none());
    }

    #[test]
    fn batches_without_matches_move_the_cursor_without_waking() {
        let fanout = Fanout::default();
        let s = fanout.subscribe(&Filter::parse("cluster=B").unwrap());
        let other = fanout.subscribe(&Filter::parse("cluster!=B").unwrap());
        fanout.publish(vec![ev(1, "A"), ev(2, "B")]);
        fanout.publish(vec![ev(3, "A")]);
        fanout.publish(vec![ev(4, "A")]);
        assert_eq!(ids(s.try_next().unwrap()), (vec![2], 2));
        assert_eq!(ids(s.try_next().unwrap()), (vec![], 4), "two empty batches are one");
        assert!(s.try_next().is_none());
        assert_eq!(ids(other.try_next().unwrap()), (vec![1], 2));
        assert_eq!(fanout.subscribers(), 2);
        drop(other);
        assert_eq!(fanout.subscribers(), 1);
        fanout.publish(vec![ev(5, "C")]);
        drop(fanout);
        assert_eq!(ids(s.try_next().unwrap()), (vec![], 5));
        assert!(matches!(s.try_next(), Some(Next::Closed)));
    }

    #[test]
    fn each_event_is_encoded_once_as_the_api_writes_it() {
        let fanout = Fanout::default();
        let a = fanout.subscribe(&Filter::all());
        let b = fanout.subscribe(&Filter::all());
        fanout.publish(vec![ev(1, "A")]);
        let (Some(Next::Events(da)), Some(Next::Events(db))) = (a.try_next(), b.try_next()) else {
            panic!("both get the batch")
        };
        let (pa, pb) = (da.events().next().unwrap(), db.events().next().unwrap());
        assert!(std::ptr::eq(pa, pb), "the same prepared event");
        assert!(std::ptr::eq(pa.json().as_ptr(), pb.json().as_ptr()), "the same bytes");
        let api: assim_api::Event = ev(1, "A").into();
        assert_eq!(pa.json().as_ref(), serde_json::to_vec(&api).unwrap().as_slice());
        let mut full = ev(2, "q\"uote\u{1}");
        full.host = Some(assim_wire::NodeId([9; 16]));
        full.body = Some(serde_json::json!({"perf": [1, 2.5, "x"]}));
        full.kind = EventKind::ServiceCritical;
        full.severity = Severity::Critical;
        let api: assim_api::Event = full.clone().into();
        assert_eq!(
            Prepared::new(full).json().as_ref(),
            serde_json::to_vec(&api).unwrap().as_slice()
        );
        assert_eq!(fanout.filters(), 1, "two subscribers with one filter: one evaluation");
    }

    #[tokio::test]
    async fn next_waits_for_a_matching_batch() {
        let fanout = Fanout::default();
        let s = fanout.subscribe(&Filter::parse("cluster=A").unwrap());
        let f = fanout.clone();
        let t = tokio::spawn(async move { ids(s.next().await) });
        tokio::task::yield_now().await;
        f.publish(vec![ev(1, "A")]);
        assert_eq!(t.await.unwrap(), (vec![1], 1));
    }

    #[test]
    fn star_patterns_match_like_globs() {
        for (p, t) in [
            ("a*a", "a"),
            ("a*a", "aa"),
            ("a*a", "aba"),
            ("*.example.com", "n1.example.com"),
            ("*.example.com", ".example.com"),
            ("*e*p*e*", "example"),
            ("*e*p*e*", "ep"),
            ("**", ""),
            ("x*y*z", "xzyz"),
            ("x*y*z", "xyz"),
            ("é*", "éa"),
        ] {
            let g = Glob::new(p);
            assert_eq!(Pattern::new(&g).matches(t), g.matches(t), "{p} on {t}");
        }
    }
}
