//! An in-memory [`WebSource`]: answer rows held in vectors, with a made-up fleet of any size
//! ([`fleet`]) — hosts in rings of one switch each, an upper ring, checks, dependencies,
//! packages and events — for the page tests and the page bench (`cargo bench -p assim-web`).
//! It answers every query the pages use; the event log is read-only.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use assim_api::{
    CheckRun, Dependency, DiscoveryView, DownHost, HistoryEntry, IpSighting, MacSighting, NodeView,
    PackageHit, RingMember, RingView, Service, ServiceView, Subnet, SwitchHost, SwitchPortLink,
    SwitchView, UnknownIp,
};
use assim_cma::{Event, EventKind, Severity};
use assim_store::{
    DeadLetter, EventLog, HostRef, PackagePattern, Pruned, Queries, QueryError, SubscriptionRecord,
};
use assim_wire::{NodeId, Timestamp};

use crate::WebSource;

/// The rows a [`Fixture`] answers with.
#[derive(Clone, Debug, Default)]
pub struct FixtureData {
    pub nodes: Vec<NodeView>,
    pub rings: Vec<RingView>,
    pub switches: Vec<SwitchView>,
    pub services: Vec<ServiceView>,
    pub listening: Vec<Service>,
    pub dependencies: Vec<Dependency>,
    pub ports: Vec<SwitchPortLink>,
    pub discovery: BTreeMap<NodeId, Vec<DiscoveryView>>,
    /// Oldest first, ids dense from 1.
    pub events: Vec<Event>,
    pub subscriptions: Vec<SubscriptionRecord>,
    /// "Now" for the pages, µs since the epoch.
    pub now: u64,
}

/// A [`WebSource`] over [`FixtureData`].
#[derive(Clone, Debug, Default)]
pub struct Fixture(pub Arc<FixtureData>);

impl WebSource for Fixture {
    async fn read<T, F>(&self, f: F) -> Result<T, QueryError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Queries) -> Result<T, QueryError> + Send + 'static,
    {
        f(&*self.0)
    }

    async fn events<T, F>(&self, f: F) -> Result<T, QueryError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn EventLog) -> Result<T, QueryError> + Send + 'static,
    {
        f(&*self.0)
    }

    fn now_micros(&self) -> u64 {
        self.0.now
    }

    /// "Runs" a check of the fixture: answers its stored state and output, or 404.
    async fn run_check(
        &self,
        host: String,
        check: String,
    ) -> Result<CheckRun, (axum::http::StatusCode, String)> {
        match self.0.services.iter().find(|s| s.host == host && s.check == check) {
            Some(s) => Ok(CheckRun {
                host,
                check,
                state: s.state.clone(),
                output: s.output.clone(),
                long_output: String::new(),
                perfdata: s.perfdata.clone(),
                duration_ms: 3,
                exit_code: Some(0),
            }),
            None => Err((
                axum::http::StatusCode::NOT_FOUND,
                format!("host {host:?} has no check {check:?}"),
            )),
        }
    }
}

fn id(i: usize) -> NodeId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    NodeId::from_slice(&b).expect("16 bytes")
}

/// A fleet of `hosts` hosts behind switches of `per_switch` each (one ring per switch, two
/// representatives each in the upper ring); every 100th host down, every 50th has a critical
/// check; each host runs sshd and a web server and its web server talks to the first host of its
/// switch; 40 packages and two SSH keys per host; one `host.up` event per host, and a
/// `host.down` for each down host. Deterministic.
pub fn fleet(hosts: usize, per_switch: usize) -> FixtureData {
    let now = 1_796_351_421_000_000; // 2026-12-04 02:30:21 UTC
    let per_switch = per_switch.max(1);
    let mut d = FixtureData { now, ..FixtureData::default() };
    for i in 0..hosts {
        let state = if i % 100 == 99 { "down" } else { "up" };
        d.nodes.push(NodeView {
            id: id(i),
            hostname: format!("h{i:05}"),
            state: state.into(),
            since: now - 3_600_000_000 + i as u64,
            version: "0.1.0".into(),
            listen_addr: format!("10.{}.{}.{}:7946", i / 65536, (i / 256) % 256, i % 256),
            addresses: vec![format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)],
            neighbours: Vec::new(),
            peer_epoch: 1,
        });
    }
    let member = |i: usize, n: &NodeView| RingMember {
        host: n.hostname.clone(),
        node: id(i).to_string(),
        state: n.state.clone(),
    };
    let mut upper = Vec::new();
    for (s, chunk) in d.nodes.chunks(per_switch).enumerate() {
        let base = s * per_switch;
        let chassis = format!("02:00:00:00:{:02x}:{:02x}", s / 256, s % 256);
        let ring = format!("switch:{chassis}");
        let members: Vec<RingMember> = chunk
            .iter()
            .enumerate()
            .filter(|(_, n)| n.state == "up")
            .map(|(k, n)| member(base + k, n))
            .collect();
        let reps: Vec<RingMember> = members.iter().take(2).cloned().collect();
        upper.extend(reps.iter().cloned());
        d.switches.push(SwitchView {
            chassis_id: chassis.clone(),
            name: Some(format!("sw{s:03}")),
            description: None,
            platform: None,
            management_addresses: Vec::new(),
            last_seen: now,
            state: Some("up".into()),
            ring: Some(ring.clone()),
            hosts: chunk
                .iter()
                .enumerate()
                .map(|(k, n)| SwitchHost {
                    host: n.hostname.clone(),
                    node: id(base + k).to_string(),
                    state: n.state.clone(),
                    nic: "eth0".into(),
                    port_id: format!("ge-0/0/{k}"),
                    port_description: None,
                    protocol: "lldp".into(),
                    in_ring: true,
                })
                .collect(),
        });
        for (k, n) in chunk.iter().enumerate() {
            d.ports.push(SwitchPortLink {
                host: n.hostname.clone(),
                node: id(base + k).to_string(),
                nic: "eth0".into(),
                mac: None,
                protocol: "lldp".into(),
                chassis_id: chassis.clone(),
                switch_name: Some(format!("sw{s:03}")),
                switch_description: None,
                platform: None,
                management_addresses: Vec::new(),
                port_id: format!("ge-0/0/{k}"),
                port_description: None,
                vlan: None,
                last_seen: now,
            });
        }
        d.rings.push(RingView {
            ring,
            kind: "switch".into(),
            switch_name: Some(format!("sw{s:03}")),
            members,
            representatives: reps,
            watchers: Vec::new(),
        });
    }
    if d.rings.len() > 1 {
        d.rings.push(RingView {
            ring: "upper".into(),
            kind: "upper".into(),
            switch_name: None,
            members: upper,
            representatives: Vec::new(),
            watchers: Vec::new(),
        });
    }
    for (i, n) in d.nodes.iter().enumerate() {
        for (check, port, exe) in
            [("ssh", 22u16, "/usr/sbin/sshd"), ("http", 80, "/usr/sbin/nginx")]
        {
            let critical = check == "http" && i % 50 == 7;
            d.services.push(ServiceView {
                host: n.hostname.clone(),
                node: n.id,
                check: check.into(),
                kind: "nagios".into(),
                state: if critical { "critical" } else { "ok" }.into(),
                output: if critical {
                    "connection refused".into()
                } else {
                    format!("{check} OK - 0.001 second response time")
                },
                perfdata: "time=0.001s;;;0".into(),
                flapping: false,
                since: now - 600_000_000,
                interval_s: 60,
            });
            d.listening.push(Service {
                host: n.hostname.clone(),
                node: n.id.to_string(),
                protocol: "tcp".into(),
                ip: "0.0.0.0".into(),
                port,
                pid: Some(100 + port as u32),
                exe: Some(exe.into()),
                cmdline: exe.into(),
                user: Some("root".into()),
                client_hosts: 0,
                monitors: vec![check.into()],
            });
        }
        let server = (i / per_switch) * per_switch;
        if server != i {
            let s = &d.nodes[server];
            d.dependencies.push(Dependency {
                client_host: n.hostname.clone(),
                client_node: n.id.to_string(),
                client_state: n.state.clone(),
                client_pid: Some(180),
                client_exe: Some("/usr/sbin/nginx".into()),
                server_host: s.hostname.clone(),
                server_node: s.id.to_string(),
                server_state: s.state.clone(),
                server_ip: s.addresses[0].clone(),
                port: 5432,
                service_ip: "0.0.0.0".into(),
                server_pid: Some(5432),
                server_exe: Some("/usr/lib/postgresql/15/bin/postgres".into()),
                connections: 2,
            });
        }
        let packages: Vec<serde_json::Value> = (0..40)
            .map(|p| {
                serde_json::json!({"name": format!("pkg{p:02}"), "version": "1.0-1",
                                   "architecture": "amd64", "manager": "dpkg"})
            })
            .collect();
        d.discovery.insert(
            n.id,
            vec![
                view("os", serde_json::json!({"os_release": {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)"}, "kernel_release": "6.1.0-28-amd64"})),
                view("packages", serde_json::json!({ "packages": packages })),
                view("ssh_host_keys", serde_json::json!({"keys": [
                    {"file": "/etc/ssh/ssh_host_ed25519_key.pub", "key_type": "ssh-ed25519", "key": "AAAA", "fingerprint": "SHA256:abc"},
                    {"file": "/etc/ssh/ssh_host_rsa_key.pub", "key_type": "ssh-rsa", "key": "AAAA", "fingerprint": "SHA256:def"}]})),
                view("interfaces", serde_json::json!({"interfaces": [
                    {"name": "eth0", "mac": "02:00:00:00:00:01", "operstate": "up",
                     "addresses": [{"address": n.addresses[0], "prefix_len": 16}]}]})),
            ],
        );
    }
    let names: Vec<String> = d.nodes.iter().map(|n| n.hostname.clone()).collect();
    for (i, h) in names.iter().enumerate() {
        d.push_event(EventKind::HostUp, h, now - 3_600_000_000 + i as u64, "it joined");
    }
    let down: Vec<(String, u64)> = d
        .nodes
        .iter()
        .filter(|n| n.state == "down")
        .map(|n| (n.hostname.clone(), n.since))
        .collect();
    for (h, t) in down {
        d.push_event(EventKind::HostDown, &h, t, "both ring neighbours stopped hearing it");
    }
    d
}

fn view(name: &str, payload: serde_json::Value) -> DiscoveryView {
    DiscoveryView { name: name.into(), hash: "0".into(), collected_at: 1, updated_at: 1, payload }
}

impl FixtureData {
    /// Appends an event (the next id), about `host` if it is a known host name.
    pub fn push_event(&mut self, kind: EventKind, host: &str, time: u64, text: &str) {
        let node = self.nodes.iter().find(|n| n.hostname == host).map(|n| n.id);
        let mut tags = BTreeMap::new();
        if let Some(n) = node {
            tags.insert("host".to_string(), host.to_string());
            tags.insert("node".to_string(), n.to_string());
        }
        self.events.push(Event {
            id: self.events.len() as u64 + 1,
            time: Timestamp(time),
            kind,
            host: node,
            hostname: host.into(),
            tags,
            text: text.into(),
            severity: match kind {
                EventKind::HostDown => Severity::Critical,
                _ => Severity::Info,
            },
            body: None,
        });
    }

    fn hosts_in(&self, keep: impl Fn(&str) -> bool) -> Vec<DownHost> {
        self.nodes
            .iter()
            .filter(|n| keep(&n.state))
            .map(|n| DownHost {
                host: n.hostname.clone(),
                node: n.id.to_string(),
                state: n.state.clone(),
                since: n.since,
                last_event: None,
            })
            .collect()
    }
}

impl Queries for FixtureData {
    fn nodes(&self) -> Result<Vec<NodeView>, QueryError> {
        Ok(self.nodes.clone())
    }
    fn discovery(&self, node: NodeId) -> Result<Vec<DiscoveryView>, QueryError> {
        Ok(self.discovery.get(&node).cloned().unwrap_or_default())
    }
    fn services(
        &self,
        host: Option<&str>,
        state: Option<&str>,
    ) -> Result<Vec<ServiceView>, QueryError> {
        Ok(self
            .services
            .iter()
            .filter(|s| host.is_none_or(|h| s.host == h || s.node.to_string() == h))
            .filter(|s| state.is_none_or(|st| s.state.eq_ignore_ascii_case(st)))
            .cloned()
            .collect())
    }
    fn resolve_host(&self, name: &str) -> Result<Option<HostRef>, QueryError> {
        Ok(self.nodes.iter().find(|n| n.hostname == name || n.id.to_string() == name).map(|n| {
            HostRef { node: n.id.to_string(), hostname: n.hostname.clone(), state: n.state.clone() }
        }))
    }
    fn down_hosts(&self, crashed_only: bool) -> Result<Vec<DownHost>, QueryError> {
        Ok(self.hosts_in(|s| s == "down" || (!crashed_only && s == "left")))
    }
    fn unreachable_hosts(&self) -> Result<Vec<DownHost>, QueryError> {
        Ok(self.hosts_in(|s| s == "unreachable"))
    }
    fn rings(&self) -> Result<Vec<RingView>, QueryError> {
        Ok(self.rings.clone())
    }
    fn switches(&self, switch: Option<&str>) -> Result<Vec<SwitchView>, QueryError> {
        Ok(self
            .switches
            .iter()
            .filter(|s| switch.is_none_or(|w| s.chassis_id == w || s.name.as_deref() == Some(w)))
            .cloned()
            .collect())
    }
    fn host_services(&self, node: &str) -> Result<Vec<Service>, QueryError> {
        Ok(self.listening.iter().filter(|s| s.node == node).cloned().collect())
    }
    fn dependencies(&self, node: &str) -> Result<Vec<Dependency>, QueryError> {
        Ok(self.dependencies.iter().filter(|d| d.client_node == node).cloned().collect())
    }
    fn dependents(&self, node: &str) -> Result<Vec<Dependency>, QueryError> {
        Ok(self.dependencies.iter().filter(|d| d.server_node == node).cloned().collect())
    }
    fn all_dependencies(&self) -> Result<Vec<Dependency>, QueryError> {
        Ok(self.dependencies.clone())
    }
    fn find_ip(&self, _: IpAddr) -> Result<Vec<IpSighting>, QueryError> {
        Ok(Vec::new())
    }
    fn find_mac(&self, _: &str) -> Result<Vec<MacSighting>, QueryError> {
        Ok(Vec::new())
    }
    fn switch_ports(&self, node: Option<&str>) -> Result<Vec<SwitchPortLink>, QueryError> {
        Ok(self.ports.iter().filter(|p| node.is_none_or(|n| p.node == n)).cloned().collect())
    }
    fn unmonitored_services(&self) -> Result<Vec<Service>, QueryError> {
        Ok(Vec::new())
    }
    fn search_packages(&self, _: PackagePattern<'_>) -> Result<Vec<PackageHit>, QueryError> {
        Ok(Vec::new())
    }
    fn unknown_ips(&self) -> Result<Vec<UnknownIp>, QueryError> {
        Ok(Vec::new())
    }
    fn subnets(&self) -> Result<Vec<Subnet>, QueryError> {
        Ok(Vec::new())
    }
    fn topology_history(&self, _: Option<&str>, _: usize) -> Result<Vec<HistoryEntry>, QueryError> {
        Ok(Vec::new())
    }
}

fn read_only() -> QueryError {
    QueryError::Backend("the fixture's event log is read-only".into())
}

impl EventLog for FixtureData {
    fn events_since(&self, after: u64, limit: usize) -> Result<Vec<Event>, QueryError> {
        Ok(self.events.iter().filter(|e| e.id > after).take(limit).cloned().collect())
    }
    fn last_event_id(&self) -> Result<u64, QueryError> {
        Ok(self.events.last().map_or(0, |e| e.id))
    }
    fn prune_events(&mut self, _: Timestamp, _: u64, _: usize) -> Result<Pruned, QueryError> {
        Err(read_only())
    }
    fn subscriptions(&self) -> Result<Vec<SubscriptionRecord>, QueryError> {
        Ok(self.subscriptions.clone())
    }
    fn subscription(&self, name: &str) -> Result<Option<SubscriptionRecord>, QueryError> {
        Ok(self.subscriptions.iter().find(|s| s.name == name).cloned())
    }
    fn put_subscription(
        &mut self,
        _: &str,
        _: &str,
        _: Option<&str>,
        _: u64,
        _: Timestamp,
    ) -> Result<SubscriptionRecord, QueryError> {
        Err(read_only())
    }
    fn delete_subscription(&mut self, _: &str) -> Result<bool, QueryError> {
        Err(read_only())
    }
    fn ack_subscription(
        &mut self,
        _: &str,
        _: u64,
        _: Timestamp,
    ) -> Result<Option<u64>, QueryError> {
        Err(read_only())
    }
    fn add_dead_letter(
        &mut self,
        _: &str,
        _: u64,
        _: u64,
        _: &str,
        _: Timestamp,
    ) -> Result<(), QueryError> {
        Err(read_only())
    }
    fn dead_letters(&self, _: &str, _: usize) -> Result<Vec<DeadLetter>, QueryError> {
        Ok(Vec::new())
    }
    fn bus_state(&self, _: &str) -> Result<Option<String>, QueryError> {
        Ok(None)
    }
    fn set_bus_state(&mut self, _: &str, _: &str) -> Result<(), QueryError> {
        Err(read_only())
    }
}
