//! The core's desired state ([`assim_cma::Authority`]) in the store's records: [`add_change`]
//! puts one [`DesiredChange`] into a batch, [`snapshot`] builds the [`DesiredSnapshot`] the
//! core restores from out of what an engine store loaded. Both engines (SQLite, [`MemStore`])
//! share these mappings, so they cannot drift apart.
//!
//! [`MemStore`]: crate::MemStore

use assim_cma::check_sets as core;
use assim_cma::schedule::StoredSchedule;
use assim_cma::{DesiredChange, DesiredSnapshot};
use assim_wire::NodeId;

use crate::batch::InboxProgress;
use crate::services::{
    CheckSetRecord, ManualChange, ManualCheck, MonitorRecord, RememberedService,
    ServiceStateRecord, StoredCheck,
};

/// The name of the discovery collector whose results feed the check sets.
pub const SOCKETS: &str = "sockets";

/// Adds one change decided by the core to the batch being built.
pub fn add_change(progress: &mut InboxProgress, change: DesiredChange) {
    let s = &mut progress.services;
    match change {
        DesiredChange::Schedule(stored) => progress.schedule = Some(stored),
        DesiredChange::CheckSet(c) => s.check_sets.push(CheckSetRecord {
            node: c.node,
            epoch: c.epoch,
            checks: c.checks.iter().map(StoredCheck::from_spec).collect(),
            monitors: c
                .monitors
                .into_iter()
                .map(|m| MonitorRecord {
                    protocol: m.protocol,
                    service_ip: m.service_ip,
                    port: m.port,
                    check_name: m.check_name,
                })
                .collect(),
        }),
        DesiredChange::ServiceState(r) => s.states.push(r),
        DesiredChange::Manual(core::ManualChange::Put(m)) => {
            s.manual.push(ManualChange::Put(ManualCheck {
                node: m.node,
                check: StoredCheck::from_spec(&m.check),
                added_at: m.added_at,
            }))
        }
        DesiredChange::Manual(core::ManualChange::Remove { node, name }) => {
            s.manual.push(ManualChange::Remove { node, name })
        }
        DesiredChange::Remembered { node, services } => {
            s.remembered.push((node, services.into_iter().map(remembered_to_store).collect()))
        }
        DesiredChange::Discovery(d) => progress.discovery.push(d),
        DesiredChange::HostNew(c) => progress.host_new.push(c),
    }
}

fn remembered_to_store(r: core::RememberedService) -> RememberedService {
    RememberedService {
        protocol: r.protocol,
        ip: r.ip,
        port: r.port,
        exe: r.exe,
        cmdline: r.cmdline,
        user: r.user,
        seen: r.seen,
    }
}

fn remembered_to_core(r: RememberedService) -> core::RememberedService {
    core::RememberedService {
        protocol: r.protocol,
        ip: r.ip,
        port: r.port,
        exe: r.exe,
        cmdline: r.cmdline,
        user: r.user,
        seen: r.seen,
    }
}

/// What an engine store loaded, in the store's records.
#[derive(Clone, Debug, Default)]
pub struct StoredDesired {
    pub schedule: Option<StoredSchedule>,
    pub check_sets: Vec<CheckSetRecord>,
    pub states: Vec<ServiceStateRecord>,
    pub manual: Vec<ManualCheck>,
    pub remembered: Vec<(NodeId, Vec<RememberedService>)>,
    /// Each node's latest `sockets` discovery payload (JSON).
    pub sockets: Vec<(NodeId, String)>,
    /// Each node's latest `ssh_host_keys` discovery payload (JSON).
    pub host_keys: Vec<(NodeId, String)>,
    /// Each node's latest `security` discovery payload (JSON), for the audit events.
    pub security: Vec<(NodeId, String)>,
    /// The nodes whose `host.new` is not raised yet, with their `os` and `ssh_host_keys`.
    pub host_new: Vec<assim_cma::host_new::StoredWaiting>,
}

/// The core's [`DesiredSnapshot`] from what the store loaded.
pub fn snapshot(d: StoredDesired) -> DesiredSnapshot {
    DesiredSnapshot {
        schedule: d.schedule,
        check_sets: d
            .check_sets
            .into_iter()
            .map(|c| core::CheckSetRecord {
                node: c.node,
                epoch: c.epoch,
                checks: c.checks.iter().map(StoredCheck::to_spec).collect(),
                monitors: c
                    .monitors
                    .into_iter()
                    .map(|m| core::Monitor {
                        protocol: m.protocol,
                        service_ip: m.service_ip,
                        port: m.port,
                        check_name: m.check_name,
                    })
                    .collect(),
            })
            .collect(),
        states: d.states,
        manual: d
            .manual
            .into_iter()
            .map(|m| core::ManualCheck {
                node: m.node,
                check: m.check.to_spec(),
                added_at: m.added_at,
            })
            .collect(),
        remembered: d
            .remembered
            .into_iter()
            .map(|(n, l)| (n, l.into_iter().map(remembered_to_core).collect()))
            .collect(),
        sockets: d.sockets.into_iter().map(|(n, p)| (n, p.into_bytes())).collect(),
        host_keys: d.host_keys.into_iter().map(|(n, p)| (n, p.into_bytes())).collect(),
        security: d.security.into_iter().map(|(n, p)| (n, p.into_bytes())).collect(),
        host_new: d.host_new,
    }
}
