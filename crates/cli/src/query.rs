//! `assim` topology queries: down, crashed and unreachable hosts, a host's services and
//! dependencies, where an IP or MAC is, switch ports, the rings, the switches and the hosts
//! behind them, unmonitored services, package search, unknown IPs, subnets and the change
//! history. Each prints a table, or JSON with `--json`; the data comes from the
//! CMA's `/api/v1/topology/…` routes.

use anyhow::Context as _;
use assim_api::{
    Dependency, DownHost, HistoryEntry, IpSighting, MacSighting, PackageHit, RingMember, RingView,
    Service, Subnet, SwitchPortLink, SwitchView, UnknownIp,
};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::{Client, encode_component, format_time, print_table};

/// The topology subcommands (flattened into `assim`'s own).
#[derive(Subcommand, Debug)]
pub enum QueryCommand {
    /// List hosts that are not running, or cut off.
    ///
    /// --down shows crashed hosts and those that left cleanly; --crashed only those that died
    /// without a goodbye (the ring declared them dead); --unreachable the hosts behind a switch
    /// that is down or cut off (the CMA cannot tell whether they run).
    ///
    /// Examples:
    ///   assim hosts --down
    ///   assim hosts --crashed --json
    ///   assim hosts --unreachable
    #[command(verbatim_doc_comment)]
    #[command(group(ArgGroup::new("which").required(true).args(["down", "crashed", "unreachable"])))]
    Hosts {
        /// Crashed and left hosts.
        #[arg(long)]
        down: bool,
        /// Only hosts that went down without saying goodbye.
        #[arg(long)]
        crashed: bool,
        /// Hosts behind a switch that is down or unreachable.
        #[arg(long)]
        unreachable: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Ask about one host: its services, what it depends on, who depends on it, its switch
    /// ports, or the history of its discovered facts.
    ///
    /// Examples:
    ///   assim host web1 services     listening sockets with process, user and client hosts
    ///   assim host web1 deps         services on other hosts that web1 connects to
    ///   assim host db1 rdeps         hosts with connections to db1's services
    ///   assim host web1 ports        switch and port each NIC is wired to (LLDP/CDP)
    ///   assim host web1 history      what changed (packages, NICs, services, edges) and when
    #[command(verbatim_doc_comment)]
    Host {
        /// Host name or node id (see `assim status`).
        host: String,
        /// What to show.
        what: HostWhat,
        /// With `history`: at most this many changes.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        out: Output,
    },
    /// Find where an IP or MAC address is: on which host's NIC, in which ARP caches, which
    /// switch.
    ///
    /// Examples:
    ///   assim find ip 192.0.2.17
    ///   assim find mac 02:42:ac:11:00:02      (also aa-bb-cc-dd-ee-ff, aabb.ccdd.eeff)
    #[command(verbatim_doc_comment)]
    Find {
        #[command(subcommand)]
        what: FindWhat,
    },
    /// Every host NIC and the switch port it is wired to, as the switches announce it (LLDP,
    /// CDP).
    ///
    /// Example:
    ///   assim ports --json | jq '.[] | select(.switch_name == "tor7")'
    #[command(verbatim_doc_comment)]
    Ports {
        #[command(flatten)]
        out: Output,
    },
    /// The heartbeat rings: each ring (one per switch, per L2 segment or pinned by the
    /// operator, and the upper ring linking them), its members in ring order (each heartbeats
    /// the one before and after it), its representatives in the upper ring and the hosts
    /// outside it that watch it.
    ///
    /// Examples:
    ///   assim rings
    ///   assim rings --json | jq '.[] | select(.kind == "switch") | [.switch_name, (.members | length)]'
    #[command(verbatim_doc_comment)]
    Rings {
        #[command(flatten)]
        out: Output,
    },
    /// Every switch the hosts hear (LLDP/CDP), with its state and how many hosts are behind it.
    Switches {
        #[command(flatten)]
        out: Output,
    },
    /// One switch and the hosts behind it, with their state.
    ///
    /// Examples:
    ///   assim switch tor7
    ///   assim switch 00:11:22:33:44:55 --json
    #[command(verbatim_doc_comment)]
    Switch {
        /// The switch's name as it announces it, or its chassis id (see `assim switches`).
        switch: String,
        #[command(flatten)]
        out: Output,
    },
    /// Every client → service dependency between hosts (established TCP connections to another
    /// host's listening port).
    Deps {
        #[command(flatten)]
        out: Output,
    },
    /// Services reachable from other hosts (not bound to loopback) that no check watches.
    Unmonitored {
        #[command(flatten)]
        out: Output,
    },
    /// Which hosts have a package, and which versions.
    ///
    /// PATTERN is an exact name unless --prefix or --regex is given.
    ///
    /// Examples:
    ///   assim packages openssl
    ///   assim packages --prefix linux-image
    ///   assim packages --regex '^(openssh|openssl)'
    #[command(verbatim_doc_comment)]
    Packages {
        /// Package name (or prefix, or regular expression).
        pattern: String,
        /// Match names starting with PATTERN.
        #[arg(long, conflicts_with = "regex")]
        prefix: bool,
        /// PATTERN is a regular expression (Rust regex syntax), matched anywhere in the name.
        #[arg(long)]
        regex: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Addresses in some host's ARP cache that are configured on no known host: machines on
    /// your networks without a nanoprobe.
    UnknownIps {
        #[command(flatten)]
        out: Output,
    },
    /// Subnets the hosts have addresses in, with the number of hosts in each.
    Subnets {
        #[command(flatten)]
        out: Output,
    },
    /// Recent changes of the topology graph on every host, newest first.
    History {
        /// At most this many changes.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        out: Output,
    },
    #[command(flatten)]
    Fleet(crate::fleet_cli::FleetCommand),
}

/// What `assim host NAME …` shows.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum HostWhat {
    /// Listening sockets with process, user, client hosts and checks.
    Services,
    /// What the host depends on (it is the client).
    Deps,
    /// Who depends on the host (it is the server).
    Rdeps,
    /// Switch ports its NICs are wired to.
    Ports,
    /// Changes of its discovered facts.
    History,
}

/// `assim find …`.
#[derive(Subcommand, Debug)]
pub enum FindWhat {
    /// An IPv4 or IPv6 address.
    Ip {
        address: String,
        #[command(flatten)]
        out: Output,
    },
    /// A MAC address.
    Mac {
        address: String,
        #[command(flatten)]
        out: Output,
    },
}

/// Output format of a query.
#[derive(Args, Debug, Clone, Copy)]
pub struct Output {
    /// Print JSON (an array of objects) instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn fetch<T: DeserializeOwned>(client: &Client, path: &str, what: &str) -> anyhow::Result<T> {
    client.get_json(path, what)
}

/// Prints rows as JSON, or as a table through `table`, or `empty` when there are none.
pub(crate) fn show<T: Serialize, const N: usize>(
    out: Output,
    rows: &[T],
    empty: &str,
    header: [&str; N],
    row: impl Fn(&T) -> [String; N],
) -> anyhow::Result<()> {
    if out.json {
        println!("{}", serde_json::to_string_pretty(rows).context("rows to JSON")?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("{empty}");
        return Ok(());
    }
    let mut table = vec![header.map(str::to_string)];
    table.extend(rows.iter().map(row));
    print_table(&table);
    Ok(())
}

pub(crate) fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".into())
}

fn addr(ip: &str, port: u16) -> String {
    if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") }
}

fn process(pid: Option<u32>, exe: &Option<String>) -> String {
    match (pid, exe) {
        (Some(p), Some(e)) => format!("{e} ({p})"),
        (None, Some(e)) => e.clone(),
        (Some(p), None) => format!("pid {p}"),
        (None, None) => "?".into(),
    }
}

fn services_table(out: Output, rows: &[Service], empty: &str) -> anyhow::Result<()> {
    show(
        out,
        rows,
        empty,
        ["HOST", "PROTO", "ADDRESS", "PROCESS", "USER", "CLIENT HOSTS", "CHECKS"],
        |s| {
            [
                s.host.clone(),
                s.protocol.clone(),
                addr(&s.ip, s.port),
                process(s.pid, &s.exe),
                opt(&s.user),
                s.client_hosts.to_string(),
                if s.monitors.is_empty() { "-".into() } else { s.monitors.join(",") },
            ]
        },
    )
}

fn deps_table(out: Output, rows: &[Dependency], empty: &str) -> anyhow::Result<()> {
    show(
        out,
        rows,
        empty,
        ["CLIENT", "CLIENT PROCESS", "SERVER", "ADDRESS", "SERVICE", "CONNS"],
        |d| {
            [
                format!("{} ({})", d.client_host, d.client_state),
                process(d.client_pid, &d.client_exe),
                format!("{} ({})", d.server_host, d.server_state),
                addr(&d.server_ip, d.port),
                process(d.server_pid, &d.server_exe),
                d.connections.to_string(),
            ]
        },
    )
}

fn ports_table(out: Output, rows: &[SwitchPortLink], empty: &str) -> anyhow::Result<()> {
    show(
        out,
        rows,
        empty,
        ["HOST", "NIC", "MAC", "SWITCH", "CHASSIS", "PORT", "PORT DESCRIPTION", "VLAN", "VIA"],
        |p| {
            [
                p.host.clone(),
                p.nic.clone(),
                opt(&p.mac),
                opt(&p.switch_name),
                p.chassis_id.clone(),
                p.port_id.clone(),
                opt(&p.port_description),
                opt(&p.vlan),
                p.protocol.clone(),
            ]
        },
    )
}

fn host_list(members: &[RingMember]) -> String {
    if members.is_empty() {
        return "-".into();
    }
    members
        .iter()
        .map(|m| if m.state == "up" { m.host.clone() } else { format!("{} ({})", m.host, m.state) })
        .collect::<Vec<_>>()
        .join(" ")
}

fn rings_table(out: Output, rows: &[RingView]) -> anyhow::Result<()> {
    show(
        out,
        rows,
        "no rings yet (no host has registered)",
        ["RING", "KIND", "SWITCH", "MEMBERS (ring order)", "REPRESENTATIVES", "WATCHERS"],
        |r| {
            [
                r.ring.clone(),
                r.kind.clone(),
                opt(&r.switch_name),
                format!("{}: {}", r.members.len(), host_list(&r.members)),
                host_list(&r.representatives),
                host_list(&r.watchers),
            ]
        },
    )
}

fn switches_table(out: Output, rows: &[SwitchView], empty: &str) -> anyhow::Result<()> {
    show(
        out,
        rows,
        empty,
        ["SWITCH", "CHASSIS", "STATE", "HOSTS", "UP", "RING", "MANAGEMENT"],
        |s| {
            [
                opt(&s.name),
                s.chassis_id.clone(),
                s.state.clone().unwrap_or_else(|| "-".into()),
                s.hosts.len().to_string(),
                s.hosts.iter().filter(|h| h.state == "up").count().to_string(),
                opt(&s.ring),
                if s.management_addresses.is_empty() {
                    "-".into()
                } else {
                    s.management_addresses.join(",")
                },
            ]
        },
    )
}

fn switch_detail(out: Output, rows: &[SwitchView]) -> anyhow::Result<()> {
    if out.json {
        println!("{}", serde_json::to_string_pretty(rows).context("rows to JSON")?);
        return Ok(());
    }
    for (i, s) in rows.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!(
            "switch {} (chassis {}): {}, ring {}, last heard {}",
            opt(&s.name),
            s.chassis_id,
            s.state.as_deref().unwrap_or("no incident recorded"),
            opt(&s.ring),
            format_time(s.last_seen)
        );
        let mut table =
            vec![["HOST", "STATE", "NIC", "PORT", "VIA", "IN RING"].map(str::to_string)];
        table.extend(s.hosts.iter().map(|h| {
            [
                h.host.clone(),
                h.state.clone(),
                h.nic.clone(),
                match &h.port_description {
                    Some(d) if d != &h.port_id => format!("{} ({d})", h.port_id),
                    _ => h.port_id.clone(),
                },
                h.protocol.clone(),
                if h.in_ring { "yes".into() } else { "no".into() },
            ]
        }));
        print_table(&table);
    }
    Ok(())
}

fn history_table(out: Output, rows: &[HistoryEntry]) -> anyhow::Result<()> {
    show(
        out,
        rows,
        "no changes recorded yet",
        ["TIME (UTC)", "HOST", "KIND", "ADDED", "REMOVED", "EXAMPLES"],
        |h| {
            let mut ex: Vec<String> =
                h.added_labels.iter().take(2).map(|l| format!("+{l}")).collect();
            ex.extend(h.removed_labels.iter().take(2).map(|l| format!("-{l}")));
            [
                format_time(h.time),
                h.host.clone(),
                h.kind.clone(),
                h.added.to_string(),
                h.removed.to_string(),
                ex.join("; "),
            ]
        },
    )
}

/// Runs one query against the CMA's API.
pub fn run(client: &Client, cmd: QueryCommand) -> anyhow::Result<()> {
    match cmd {
        QueryCommand::Hosts { crashed, unreachable, out, .. } => {
            let state = if unreachable {
                "unreachable"
            } else if crashed {
                "crashed"
            } else {
                "down"
            };
            let rows: Vec<DownHost> =
                fetch(client, &format!("/api/v1/topology/hosts?state={state}"), "the hosts")?;
            show(
                out,
                &rows,
                &format!("no {state} hosts"),
                ["HOST", "STATE", "SINCE (UTC)", "LAST EVENT"],
                |h| [h.host.clone(), h.state.clone(), format_time(h.since), opt(&h.last_event)],
            )
        }
        QueryCommand::Host { host, what, limit, out } => {
            let base = format!("/api/v1/topology/hosts/{}", encode_component(&host));
            match what {
                HostWhat::Services => {
                    let rows: Vec<Service> =
                        fetch(client, &format!("{base}/services"), "the services")?;
                    services_table(out, &rows, &format!("{host}: no listening sockets known"))
                }
                HostWhat::Deps => {
                    let rows: Vec<Dependency> =
                        fetch(client, &format!("{base}/dependencies"), "the dependencies")?;
                    deps_table(out, &rows, &format!("{host} depends on no service of another host"))
                }
                HostWhat::Rdeps => {
                    let rows: Vec<Dependency> =
                        fetch(client, &format!("{base}/dependents"), "the dependents")?;
                    deps_table(out, &rows, &format!("no other host depends on {host}"))
                }
                HostWhat::Ports => {
                    let rows: Vec<SwitchPortLink> =
                        fetch(client, &format!("{base}/ports"), "the switch ports")?;
                    ports_table(
                        out,
                        &rows,
                        &format!("{host}: no switch heard (no LLDP/CDP frames on its NICs)"),
                    )
                }
                HostWhat::History => {
                    let rows: Vec<HistoryEntry> =
                        fetch(client, &format!("{base}/history?limit={limit}"), "the history")?;
                    history_table(out, &rows)
                }
            }
        }
        QueryCommand::Find { what: FindWhat::Ip { address, out } } => {
            let rows: Vec<IpSighting> = fetch(
                client,
                &format!("/api/v1/topology/ip/{}", encode_component(&address)),
                "the address search",
            )?;
            show(
                out,
                &rows,
                &format!("{address} is on no known host and in no ARP cache"),
                ["IP", "FOUND AS", "HOST", "INTERFACE", "MAC", "SUBNET"],
                |s| {
                    [
                        s.ip.clone(),
                        if s.how == "arp" { "arp entry of".into() } else { "address of".into() },
                        s.host.clone(),
                        s.interface.clone(),
                        opt(&s.mac),
                        opt(&s.subnet),
                    ]
                },
            )
        }
        QueryCommand::Find { what: FindWhat::Mac { address, out } } => {
            let rows: Vec<MacSighting> = fetch(
                client,
                &format!("/api/v1/topology/mac/{}", encode_component(&address)),
                "the MAC search",
            )?;
            show(
                out,
                &rows,
                &format!("{address} is on no known NIC, switch or ARP cache"),
                ["MAC", "FOUND AS", "HOST", "INTERFACE", "DETAIL"],
                |m| {
                    [
                        m.mac.clone(),
                        match m.how.as_str() {
                            "nic" => "NIC of".to_string(),
                            "arp" => "arp entry of".into(),
                            other => other.into(),
                        },
                        opt(&m.host),
                        opt(&m.interface),
                        m.detail.clone(),
                    ]
                },
            )
        }
        QueryCommand::Ports { out } => {
            let rows: Vec<SwitchPortLink> =
                fetch(client, "/api/v1/topology/ports", "the switch ports")?;
            ports_table(out, &rows, "no host has heard a switch (LLDP/CDP) yet")
        }
        QueryCommand::Rings { out } => {
            let rows: Vec<RingView> = fetch(client, "/api/v1/topology/rings", "the rings")?;
            rings_table(out, &rows)
        }
        QueryCommand::Switches { out } => {
            let rows: Vec<SwitchView> = fetch(client, "/api/v1/topology/switches", "the switches")?;
            switches_table(out, &rows, "no host has heard a switch (LLDP/CDP) yet")
        }
        QueryCommand::Switch { switch, out } => {
            let rows: Vec<SwitchView> = fetch(
                client,
                &format!("/api/v1/topology/switches/{}", encode_component(&switch)),
                "the switch",
            )?;
            switch_detail(out, &rows)
        }
        QueryCommand::Deps { out } => {
            let rows: Vec<Dependency> =
                fetch(client, "/api/v1/topology/dependencies", "the dependencies")?;
            deps_table(out, &rows, "no dependencies between hosts known")
        }
        QueryCommand::Unmonitored { out } => {
            let rows: Vec<Service> =
                fetch(client, "/api/v1/topology/unmonitored", "the unmonitored services")?;
            services_table(out, &rows, "every known service has a check")
        }
        QueryCommand::Packages { pattern, prefix, regex, out } => {
            let mode = if regex {
                "regex"
            } else if prefix {
                "prefix"
            } else {
                "exact"
            };
            let rows: Vec<PackageHit> = fetch(
                client,
                &format!(
                    "/api/v1/topology/packages?pattern={}&match={mode}",
                    encode_component(&pattern)
                ),
                "the package search",
            )?;
            show(
                out,
                &rows,
                &format!("no host has a package matching {pattern:?} ({mode} match)"),
                ["PACKAGE", "VERSION", "ARCH", "HOST"],
                |p| [p.name.clone(), p.version.clone(), p.arch.clone(), p.host.clone()],
            )?;
            if !out.json && !rows.is_empty() {
                let hosts: std::collections::BTreeSet<&str> =
                    rows.iter().map(|p| p.host.as_str()).collect();
                let versions: std::collections::BTreeSet<(&str, &str)> =
                    rows.iter().map(|p| (p.name.as_str(), p.version.as_str())).collect();
                println!("{} host(s), {} package version(s)", hosts.len(), versions.len());
            }
            Ok(())
        }
        QueryCommand::UnknownIps { out } => {
            let rows: Vec<UnknownIp> =
                fetch(client, "/api/v1/topology/unknown-ips", "the unknown IPs")?;
            show(
                out,
                &rows,
                "every address in the ARP caches belongs to a known host",
                ["IP", "MAC", "SEEN BY", "INTERFACE"],
                |u| [u.ip.clone(), u.mac.clone(), u.seen_by.clone(), u.interface.clone()],
            )
        }
        QueryCommand::Subnets { out } => {
            let rows: Vec<Subnet> = fetch(client, "/api/v1/topology/subnets", "the subnets")?;
            show(out, &rows, "no subnets known yet", ["SUBNET", "HOSTS", "ADDRESSES"], |s| {
                [s.subnet.clone(), s.hosts.to_string(), s.addresses.to_string()]
            })
        }
        QueryCommand::Fleet(cmd) => crate::fleet_cli::run(client, cmd),
        QueryCommand::History { limit, out } => {
            let rows: Vec<HistoryEntry> =
                fetch(client, &format!("/api/v1/topology/history?limit={limit}"), "the history")?;
            history_table(out, &rows)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn brackets_ipv6_addresses() {
        assert_eq!(super::addr("2001:db8::1", 80), "[2001:db8::1]:80");
    }
}
