//! [`Handle`]: a [`Store`] on a thread of its own, safe to call and to drop anywhere — on a
//! tokio worker, on the runtime's `block_on` thread, on a blocking thread.
//!
//! Why: the synchronous `postgres` client runs each connection on a small tokio runtime of its
//! own and blocks on it, which panics on a thread that already drives a runtime (and dropping
//! the client there panics too). The CMA daemon calls its stores from such threads (its driver
//! loop runs in the runtime's `block_on`; the bus opens its handles inside async tasks). A
//! [`Handle`] owns its [`Store`] on a dedicated thread: the connection is made there, every call
//! is a closure sent over a channel and run there, the caller blocks on the answer (as it would
//! on an SQLite call), and the store is dropped there when the last sender goes. One thread per
//! handle: a handle is one connection, as before.
//!
//! A call costs a channel round trip (microseconds) on top of the database's round trip. If
//! the thread ended (a panic inside a store call), every later call fails with
//! [`StoreError::Gone`] instead of hanging.

use std::net::IpAddr;
use std::sync::mpsc;

use assim_api::{
    Dependency, DiscoveryView, DownHost, HistoryEntry, IpSighting, MacSighting, NodeView,
    PackageHit, RingView, Service, ServiceView, Subnet, SwitchPortLink, SwitchView, UnknownIp,
};
use assim_cma::{Change, Event};
use assim_store::{
    DeadLetter, HostRef, InboxProgress, PackagePattern, Pruned, QueryError, StoreFailed,
    SubscriptionRecord, TokenRecord,
};
use assim_wire::{NodeId, Timestamp};

use crate::{Store, StoreError};

type Job = Box<dyn FnOnce(&mut Store) + Send>;

/// A [`Store`] on its own thread (see the module doc).
pub struct Handle {
    jobs: mpsc::Sender<Job>,
    /// What [`Store::fence`] says, mirrored (the lease calls update it).
    fence: Option<u64>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("fence", &self.fence).finish()
    }
}

impl Handle {
    /// Starts the thread, opens the store there ([`Store::open`]: connects and brings the
    /// schema up to date) and returns once it is open, or why it could not be.
    pub fn open(conninfo: &str) -> Result<Handle, StoreError> {
        // Parse here: a bad string fails before a thread is started.
        let _: postgres::Config = conninfo.parse().map_err(StoreError::Config)?;
        let conninfo = conninfo.to_owned();
        let (jobs, rx) = mpsc::channel::<Job>();
        let (opened_tx, opened_rx) = mpsc::sync_channel::<Result<(), StoreError>>(1);
        std::thread::Builder::new()
            .name("assim-postgres".into())
            .spawn(move || {
                let mut store = match Store::open(&conninfo) {
                    Ok(s) => {
                        let _ = opened_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                // Ends when every sender is gone; the store (and its runtime) drops here.
                while let Ok(job) = rx.recv() {
                    job(&mut store);
                }
            })
            .map_err(|e| StoreError::Gone(format!("cannot start the store's thread: {e}")))?;
        match opened_rx.recv() {
            Ok(Ok(())) => Ok(Handle { jobs, fence: None }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Gone("the store's thread ended while connecting".into())),
        }
    }

    /// Runs `f` on the store's thread and returns its answer.
    pub fn call<R: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        self.jobs
            .send(job)
            .map_err(|_| E::from(StoreError::Gone("the store's thread ended".into())))?;
        rx.recv().map_err(|_| {
            E::from(StoreError::Gone("the store's thread ended during a call".into()))
        })?
    }

    /// [`Store::acquire_lease`] on the handle's store.
    pub fn acquire_lease(
        &mut self,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<crate::LeaseState, StoreError> {
        let holder = holder.to_owned();
        let state = self.call(move |s| s.try_acquire_lease(&holder, ttl))?;
        if let crate::LeaseState::Mine { term } = state {
            self.fence = Some(term);
        }
        Ok(state)
    }

    /// [`Store::renew_lease`] on the handle's store.
    pub fn renew_lease(
        &mut self,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<crate::LeaseState, StoreError> {
        let holder = holder.to_owned();
        self.call(move |s| s.renew_lease(&holder, ttl))
    }

    /// [`Store::set_idle_in_transaction_timeout`] on the handle's store.
    pub fn set_idle_in_transaction_timeout(
        &mut self,
        d: std::time::Duration,
    ) -> Result<(), StoreError> {
        self.call(move |s| s.set_idle_in_transaction_timeout(d))
    }

    /// [`Store::set_statistics_queue_max`] on the handle's store.
    pub fn set_statistics_queue_max(&mut self, max: u64) -> Result<(), StoreError> {
        self.call(move |s| {
            s.set_statistics_queue_max(max);
            Ok(())
        })
    }

    /// [`Store::release_lease`] on the handle's store.
    pub fn release_lease(&mut self) -> Result<(), StoreError> {
        self.call(|s| s.release_lease())
    }

    /// The lease term the store fences its batches with, if any.
    pub fn fence(&self) -> Option<u64> {
        self.fence
    }

    /// [`Store::discovery_named`].
    pub fn discovery_named(
        &self,
        name: &str,
    ) -> Result<Vec<assim_store::DiscoveryRecord>, StoreError> {
        let name = name.to_owned();
        self.call(move |s| s.discovery_named(&name))
    }
}

impl assim_store::EngineStore for Handle {
    fn load(&mut self) -> Result<assim_store::Loaded, StoreFailed> {
        self.call(assim_store::EngineStore::load)
    }

    fn apply(
        &mut self,
        changes: &[Change],
        events: &[Event],
        progress: &InboxProgress,
    ) -> Result<(), StoreFailed> {
        let (changes, events, progress) = (changes.to_vec(), events.to_vec(), progress.clone());
        self.call(move |s| assim_store::EngineStore::apply(s, &changes, &events, &progress))
    }
}

impl assim_store::Tokens for Handle {
    fn token(&self, id: &[u8]) -> Result<Option<TokenRecord>, StoreFailed> {
        let id = id.to_vec();
        self.call(move |s| assim_store::Tokens::token(s, &id))
    }

    fn use_token(&mut self, id: &[u8]) -> Result<(), StoreFailed> {
        let id = id.to_vec();
        self.call(move |s| assim_store::Tokens::use_token(s, &id))
    }

    fn registered_key(&self, node: NodeId) -> Result<Option<[u8; 32]>, StoreFailed> {
        self.call(move |s| assim_store::Tokens::registered_key(s, node))
    }
}

/// Forwards a [`assim_store::Queries`] or [`assim_store::EventLog`] call to the store's
/// thread; arguments are moved in (owned).
macro_rules! forward {
    ($self:ident, $trait:path, $method:ident ( $($arg:expr),* )) => {
        $self.call(move |s| <Store as $trait>::$method(s, $($arg),*))
    };
}

impl assim_store::Queries for Handle {
    fn nodes(&self) -> Result<Vec<NodeView>, QueryError> {
        forward!(self, assim_store::Queries, nodes())
    }
    fn discovery(&self, node: NodeId) -> Result<Vec<DiscoveryView>, QueryError> {
        forward!(self, assim_store::Queries, discovery(node))
    }
    fn services(
        &self,
        host: Option<&str>,
        state: Option<&str>,
    ) -> Result<Vec<ServiceView>, QueryError> {
        let (host, state) = (host.map(str::to_owned), state.map(str::to_owned));
        forward!(self, assim_store::Queries, services(host.as_deref(), state.as_deref()))
    }
    fn resolve_host(&self, name: &str) -> Result<Option<HostRef>, QueryError> {
        let name = name.to_owned();
        forward!(self, assim_store::Queries, resolve_host(&name))
    }
    fn down_hosts(&self, crashed_only: bool) -> Result<Vec<DownHost>, QueryError> {
        forward!(self, assim_store::Queries, down_hosts(crashed_only))
    }
    fn unreachable_hosts(&self) -> Result<Vec<DownHost>, QueryError> {
        forward!(self, assim_store::Queries, unreachable_hosts())
    }
    fn rings(&self) -> Result<Vec<RingView>, QueryError> {
        forward!(self, assim_store::Queries, rings())
    }
    fn switches(&self, switch: Option<&str>) -> Result<Vec<SwitchView>, QueryError> {
        let switch = switch.map(str::to_owned);
        forward!(self, assim_store::Queries, switches(switch.as_deref()))
    }
    fn host_services(&self, node: &str) -> Result<Vec<Service>, QueryError> {
        let node = node.to_owned();
        forward!(self, assim_store::Queries, host_services(&node))
    }
    fn dependencies(&self, node: &str) -> Result<Vec<Dependency>, QueryError> {
        let node = node.to_owned();
        forward!(self, assim_store::Queries, dependencies(&node))
    }
    fn dependents(&self, node: &str) -> Result<Vec<Dependency>, QueryError> {
        let node = node.to_owned();
        forward!(self, assim_store::Queries, dependents(&node))
    }
    fn all_dependencies(&self) -> Result<Vec<Dependency>, QueryError> {
        forward!(self, assim_store::Queries, all_dependencies())
    }
    fn find_ip(&self, ip: IpAddr) -> Result<Vec<IpSighting>, QueryError> {
        forward!(self, assim_store::Queries, find_ip(ip))
    }
    fn find_mac(&self, mac: &str) -> Result<Vec<MacSighting>, QueryError> {
        let mac = mac.to_owned();
        forward!(self, assim_store::Queries, find_mac(&mac))
    }
    fn switch_ports(&self, node: Option<&str>) -> Result<Vec<SwitchPortLink>, QueryError> {
        let node = node.map(str::to_owned);
        forward!(self, assim_store::Queries, switch_ports(node.as_deref()))
    }
    fn unmonitored_services(&self) -> Result<Vec<Service>, QueryError> {
        forward!(self, assim_store::Queries, unmonitored_services())
    }
    fn search_packages(&self, pattern: PackagePattern<'_>) -> Result<Vec<PackageHit>, QueryError> {
        enum Owned {
            Exact(String),
            Prefix(String),
            Regex(regex::Regex),
        }
        let owned = match pattern {
            PackagePattern::Exact(s) => Owned::Exact(s.to_owned()),
            PackagePattern::Prefix(s) => Owned::Prefix(s.to_owned()),
            PackagePattern::Regex(r) => Owned::Regex(r.clone()),
        };
        self.call(move |s| {
            let p = match &owned {
                Owned::Exact(x) => PackagePattern::Exact(x),
                Owned::Prefix(x) => PackagePattern::Prefix(x),
                Owned::Regex(r) => PackagePattern::Regex(r),
            };
            <Store as assim_store::Queries>::search_packages(s, p)
        })
    }
    fn unknown_ips(&self) -> Result<Vec<UnknownIp>, QueryError> {
        forward!(self, assim_store::Queries, unknown_ips())
    }
    fn subnets(&self) -> Result<Vec<Subnet>, QueryError> {
        forward!(self, assim_store::Queries, subnets())
    }
    fn topology_history(
        &self,
        node: Option<&str>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, QueryError> {
        let node = node.map(str::to_owned);
        forward!(self, assim_store::Queries, topology_history(node.as_deref(), limit))
    }
    fn latest_discovery(&self, names: &[&str]) -> Result<Vec<(String, DiscoveryView)>, QueryError> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        self.call(move |s| {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            <Store as assim_store::Queries>::latest_discovery(s, &refs)
        })
    }
}

impl assim_store::EventLog for Handle {
    fn events_since(&self, after: u64, limit: usize) -> Result<Vec<Event>, QueryError> {
        forward!(self, assim_store::EventLog, events_since(after, limit))
    }
    fn last_event_id(&self) -> Result<u64, QueryError> {
        forward!(self, assim_store::EventLog, last_event_id())
    }
    fn prune_events(
        &mut self,
        older_than: Timestamp,
        keep: u64,
        batch: usize,
    ) -> Result<Pruned, QueryError> {
        forward!(self, assim_store::EventLog, prune_events(older_than, keep, batch))
    }
    fn subscriptions(&self) -> Result<Vec<SubscriptionRecord>, QueryError> {
        forward!(self, assim_store::EventLog, subscriptions())
    }
    fn subscription(&self, name: &str) -> Result<Option<SubscriptionRecord>, QueryError> {
        let name = name.to_owned();
        forward!(self, assim_store::EventLog, subscription(&name))
    }
    fn put_subscription(
        &mut self,
        name: &str,
        filter: &str,
        sink: Option<&str>,
        start: u64,
        now: Timestamp,
    ) -> Result<SubscriptionRecord, QueryError> {
        let (name, filter, sink) = (name.to_owned(), filter.to_owned(), sink.map(str::to_owned));
        forward!(
            self,
            assim_store::EventLog,
            put_subscription(&name, &filter, sink.as_deref(), start, now)
        )
    }
    fn delete_subscription(&mut self, name: &str) -> Result<bool, QueryError> {
        let name = name.to_owned();
        forward!(self, assim_store::EventLog, delete_subscription(&name))
    }
    fn ack_subscription(
        &mut self,
        name: &str,
        through: u64,
        now: Timestamp,
    ) -> Result<Option<u64>, QueryError> {
        let name = name.to_owned();
        forward!(self, assim_store::EventLog, ack_subscription(&name, through, now))
    }
    fn add_dead_letter(
        &mut self,
        subscription: &str,
        event_id: u64,
        attempts: u64,
        error: &str,
        now: Timestamp,
    ) -> Result<(), QueryError> {
        let (subscription, error) = (subscription.to_owned(), error.to_owned());
        forward!(
            self,
            assim_store::EventLog,
            add_dead_letter(&subscription, event_id, attempts, &error, now)
        )
    }
    fn dead_letters(
        &self,
        subscription: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueryError> {
        let subscription = subscription.to_owned();
        forward!(self, assim_store::EventLog, dead_letters(&subscription, limit))
    }
    fn bus_state(&self, key: &str) -> Result<Option<String>, QueryError> {
        let key = key.to_owned();
        forward!(self, assim_store::EventLog, bus_state(&key))
    }
    fn set_bus_state(&mut self, key: &str, value: &str) -> Result<(), QueryError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        forward!(self, assim_store::EventLog, set_bus_state(&key, &value))
    }
}
