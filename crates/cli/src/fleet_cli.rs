//! `assim keys|processes|os|macs|addresses|audit`: the fleet questions (issue 19), answered by
//! the CMA's `/api/v1/fleet/…` and `/api/v1/audit…` routes from the latest discovery of every
//! host. Each prints a table, or JSON with `--json`.

use assim_api::{
    AddressName, AuditResult, AuditRuleInfo, AuditSummary, KeyUse, MacRow, OsRow, ProcessRow,
};
use clap::Subcommand;

use crate::client::{Client, encode_component};
use crate::query::{Output, opt, show};

/// The fleet subcommands (flattened into `assim`'s own).
#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// SSH host keys and the hosts presenting each; a key on several hosts (a cloned image, a
    /// copied key) comes first.
    ///
    /// Examples:
    ///   assim keys
    ///   assim keys --shared          only keys that more than one host presents
    #[command(verbatim_doc_comment)]
    Keys {
        /// Only keys presented by more than one host.
        #[arg(long)]
        shared: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Processes that own sockets, per host, with what they listen on (from the `sockets`
    /// discovery: a process without a socket is not seen).
    ///
    /// Examples:
    ///   assim processes --exe sshd              by file name
    ///   assim processes --exe '/usr/sbin/*'     by path (a glob: * and ?)
    #[command(verbatim_doc_comment)]
    Processes {
        /// Only programs whose path or file name matches this glob.
        #[arg(long, value_name = "GLOB")]
        exe: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Hosts by operating system and kernel.
    ///
    /// Examples:
    ///   assim os
    ///   assim os --os debian --kernel '6.1.*'
    #[command(verbatim_doc_comment)]
    Os {
        /// Only this OS (a glob over os-release ID or PRETTY_NAME).
        #[arg(long, value_name = "GLOB")]
        os: Option<String>,
        /// Only this kernel release (a glob over `uname -r`).
        #[arg(long, value_name = "GLOB")]
        kernel: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// MAC addresses on host NICs and in their neighbour tables, with the vendor the IEEE
    /// registry (Debian's ieee-data, read by the CMA) gives. Status: unknown (not registered),
    /// unexpected (a vendor not in --expect), local (locally administered: VMs, containers),
    /// known.
    ///
    /// Examples:
    ///   assim macs --unknown
    ///   assim macs --expect 'Dell*' --expect '*Intel*' --unexpected
    #[command(verbatim_doc_comment)]
    Macs {
        /// Only MACs whose prefix no vendor registered (and not locally administered).
        #[arg(long)]
        unknown: bool,
        /// Only MACs of a vendor that matches no --expect pattern.
        #[arg(long)]
        unexpected: bool,
        /// Only locally administered MACs.
        #[arg(long)]
        local: bool,
        /// A vendor the fleet is expected to have (a glob; repeatable).
        #[arg(long, value_name = "GLOB")]
        expect: Vec<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Every host address and its DNS name, looked up by the CMA (reverse, PTR).
    ///
    /// Examples:
    ///   assim addresses
    ///   assim addresses --no-dns      only addresses without a name
    #[command(verbatim_doc_comment)]
    Addresses {
        /// Only addresses that have no DNS name (or whose lookup got no answer).
        #[arg(long)]
        no_dns: bool,
        #[command(flatten)]
        out: Output,
    },
    /// The security best-practice audit: sshd, PAM, sudoers, login.defs, kernel settings,
    /// auditd and file modes judged by the CMA's rules; scores 0–100 (severity-weighted share
    /// passed).
    ///
    /// Examples:
    ///   assim audit                  hosts worst first, then the scores per category and rule
    ///   assim audit web1             every rule's result on web1, failures first
    ///   assim audit host rules       a host named like a subcommand
    ///   assim audit rule ssh.root-login    which hosts fail it
    ///   assim audit rules            the rules in force, with reference and reason
    #[command(verbatim_doc_comment)]
    Audit {
        /// Nothing, HOST, `host HOST`, `rule ID` or `rules`.
        #[arg(num_args = 0..=2, value_name = "WHAT")]
        what: Vec<String>,
        #[command(flatten)]
        out: Output,
    },
}

/// Runs one fleet question against the CMA's API.
pub fn run(client: &Client, cmd: FleetCommand) -> anyhow::Result<()> {
    match cmd {
        FleetCommand::Keys { shared, out } => {
            let rows: Vec<KeyUse> = client
                .get_json(&format!("/api/v1/fleet/keys?shared={shared}"), "the SSH host keys")?;
            let empty = if shared { "no SSH host key is shared" } else { "no SSH host keys known" };
            show(out, &rows, empty, ["TYPE", "FINGERPRINT", "HOSTS", "NAMES"], |k| {
                [
                    k.key_type.clone(),
                    k.fingerprint.clone(),
                    k.hosts.len().to_string(),
                    k.hosts.join(" "),
                ]
            })
        }
        FleetCommand::Processes { exe, out } => {
            let path = match &exe {
                Some(g) => format!("/api/v1/fleet/processes?exe={}", encode_component(g)),
                None => "/api/v1/fleet/processes".into(),
            };
            let rows: Vec<ProcessRow> = client.get_json(&path, "the processes")?;
            show(
                out,
                &rows,
                "no such process found by discovery",
                ["HOST", "PID", "PROGRAM", "USER", "LISTENS ON", "CONNECTIONS"],
                |p| {
                    [
                        p.host.clone(),
                        p.pid.to_string(),
                        opt(&p.exe),
                        opt(&p.user),
                        if p.listening.is_empty() { "-".into() } else { p.listening.join(" ") },
                        p.established.to_string(),
                    ]
                },
            )
        }
        FleetCommand::Os { os, kernel, out } => {
            let mut q = Vec::new();
            if let Some(o) = &os {
                q.push(format!("os={}", encode_component(o)));
            }
            if let Some(k) = &kernel {
                q.push(format!("kernel={}", encode_component(k)));
            }
            let rows: Vec<OsRow> = client
                .get_json(&format!("/api/v1/fleet/os?{}", q.join("&")), "the operating systems")?;
            show(
                out,
                &rows,
                "no host matches",
                ["HOST", "OS", "KERNEL", "MACHINE", "VIRTUALISATION"],
                |r| {
                    [
                        r.host.clone(),
                        r.os_name.clone().or_else(|| r.os.clone()).unwrap_or_else(|| "-".into()),
                        r.kernel.clone(),
                        r.machine.clone(),
                        r.virtualisation.clone(),
                    ]
                },
            )
        }
        FleetCommand::Macs { unknown, unexpected, local, expect, out } => {
            let mut status = Vec::new();
            for (on, word) in [(unknown, "unknown"), (unexpected, "unexpected"), (local, "local")] {
                if on {
                    status.push(word);
                }
            }
            let expect: Vec<String> = expect.iter().map(|e| encode_component(e)).collect();
            let path = format!(
                "/api/v1/fleet/macs?status={}&expect={}",
                status.join(","),
                expect.join(",")
            );
            let rows: Vec<MacRow> = client.get_json(&path, "the MAC addresses")?;
            show(
                out,
                &rows,
                "no such MAC address",
                ["MAC", "STATUS", "VENDOR", "HOST", "SEEN", "INTERFACE", "DETAIL"],
                |m| {
                    [
                        m.mac.clone(),
                        m.status.clone(),
                        opt(&m.vendor),
                        m.host.clone(),
                        m.how.clone(),
                        m.interface.clone(),
                        m.detail.clone(),
                    ]
                },
            )
        }
        FleetCommand::Audit { what, out } => audit(client, &what, out),
        FleetCommand::Addresses { no_dns, out } => {
            let rows: Vec<AddressName> = client
                .get_json(&format!("/api/v1/fleet/addresses?missing={no_dns}"), "the addresses")?;
            let empty = if no_dns { "every address has a DNS name" } else { "no addresses known" };
            show(out, &rows, empty, ["ADDRESS", "HOST", "DNS NAME", "LOOKUP"], |a| {
                [a.address.clone(), a.host.clone(), opt(&a.name), a.lookup.clone()]
            })
        }
    }
}

fn results_table(out: Output, rows: &[AuditResult], empty: &str) -> anyhow::Result<()> {
    show(out, rows, empty, ["RESULT", "SEVERITY", "RULE", "HOST", "FOUND"], |r| {
        [
            r.result.clone(),
            r.rule.severity.clone(),
            r.rule.id.clone(),
            r.host.clone(),
            r.detail.clone(),
        ]
    })
}

/// `assim audit …`.
fn audit(client: &Client, what: &[String], out: Output) -> anyhow::Result<()> {
    let words: Vec<&str> = what.iter().map(String::as_str).collect();
    match words.as_slice() {
        [] => {
            let s: AuditSummary = client.get_json("/api/v1/audit", "the audit")?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(());
            }
            show(
                out,
                &s.hosts,
                "no host has reported its security settings yet",
                ["HOST", "SCORE", "PASSED", "FAILED", "N/A", "FAILING (most severe first)"],
                |h| {
                    [
                        h.host.clone(),
                        h.score.to_string(),
                        h.passed.to_string(),
                        h.failed.to_string(),
                        h.not_applicable.to_string(),
                        h.failing.join(" "),
                    ]
                },
            )?;
            if !s.categories.is_empty() {
                println!();
                show(
                    out,
                    &s.categories,
                    "",
                    ["CATEGORY", "SCORE", "PASSED", "FAILED", "N/A"],
                    |c| {
                        [
                            c.name.clone(),
                            c.score.to_string(),
                            c.passed.to_string(),
                            c.failed.to_string(),
                            c.not_applicable.to_string(),
                        ]
                    },
                )?;
            }
            Ok(())
        }
        ["rules"] => {
            let rows: Vec<AuditRuleInfo> =
                client.get_json("/api/v1/audit/rules", "the audit rules")?;
            show(
                out,
                &rows,
                "no audit rules (all silenced)",
                ["RULE", "CATEGORY", "SEVERITY", "REFERENCE"],
                |r| [r.id.clone(), r.category.clone(), r.severity.clone(), r.reference.clone()],
            )
        }
        ["rule", id] => {
            let rows: Vec<AuditResult> = client.get_json(
                &format!("/api/v1/audit/rules/{}", encode_component(id)),
                "the rule's results",
            )?;
            if let (false, Some(first)) = (out.json, rows.first()) {
                println!(
                    "{} ({}, {}): {}\nreference: {}\n",
                    first.rule.id,
                    first.rule.category,
                    first.rule.severity,
                    first.rule.reason,
                    first.rule.reference
                );
            }
            results_table(out, &rows, "no host has reported its security settings yet")
        }
        ["host", host] | [host] => {
            let rows: Vec<AuditResult> = client.get_json(
                &format!("/api/v1/audit/hosts/{}", encode_component(host)),
                "the host's audit",
            )?;
            results_table(out, &rows, "no results")
        }
        _ => anyhow::bail!(
            "assim audit takes nothing, HOST, `host HOST`, `rule ID` or `rules` (see assim audit --help)"
        ),
    }
}
