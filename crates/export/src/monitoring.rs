//! Nagios and Icinga 2 configuration from the inventory (`assim export nagios|icinga2`).
//!
//! One file each (`assim.cfg`, `assim.conf`), so writing it is one atomic rename; no time
//! stamps in it, so the same inventory gives the same bytes and `--reload-cmd` runs only when
//! something changed.
//!
//! - Every host, with its addresses (`address` the first IPv4 else IPv6; Icinga `address` and
//!   `address6`), passive only: the CMA's Nagios sink feeds the results
//!   (`PROCESS_HOST_CHECK_RESULT`, `PROCESS_SERVICE_CHECK_RESULT`), with the check names as
//!   service names — the names the sink uses.
//! - Every switch a host is wired to (LLDP/CDP) is a host too (`switch-NAME`,
//!   [`switch_host_name`], the name the sink's `switch.*` results use), and the hosts behind it
//!   name it in `parents` (Icinga: a `Dependency` per host): the sink reports the switch DOWN
//!   and its hosts UNREACHABLE, and Nagios, knowing the parents, holds back the notifications
//!   of what is behind it.
//! - Host groups by switch (`switch-NAME`), subnet (`subnet-192.0.2.0_24`) and OS
//!   (`os-debian`).
//! - Hostile input: host names are plain names already ([`crate::names::valid_host_name`]);
//!   switch names, OS ids and group names are reduced to `[A-Za-z0-9._-]` ([`object_name`]);
//!   check names that are not plain ([`valid_service_name`]) are left out with a count; free
//!   text (aliases, display names) is escaped for the format or reduced to printable ASCII
//!   without the characters either format treats as syntax.

use std::collections::{BTreeMap, BTreeSet};

use assim_api::{InventoryHost, SwitchUplink};

/// Options of the two renderers.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Contact group(s) notified for the hosts and services (Nagios `contact_groups`, Icinga
    /// `vars.notification_groups`); none when empty.
    pub contact_groups: Vec<String>,
}

/// A name reduced to `[A-Za-z0-9._-]` (others become `_`), at most 200 bytes; `_` if empty.
pub fn object_name(text: &str) -> String {
    let s: String = text
        .chars()
        .take(200)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    if s.is_empty() { "_".into() } else { s }
}

/// Whether a check name can be a service name as it is (the Nagios sink sends it unchanged, so
/// it is left out rather than renamed): 1 to 128 bytes of ASCII letters, digits, space and
/// `._:@/+-`, not starting or ending with a space.
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(' ')
        && !name.ends_with(' ')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b" ._:@/+-".contains(&b))
}

/// Free text for a Nagios value: printable ASCII, without `;` (a comment) and `$` (a macro).
fn nagios_text(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| if (' '..='~').contains(&c) && !matches!(c, ';' | '$' | '\\') { c } else { '_' })
        .collect()
}

/// A quoted Icinga 2 string literal.
fn icinga_string(text: &str) -> String {
    let mut s = String::from("\"");
    for c in text.chars().take(200) {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '$' => s.push_str("$$"),
            c if c.is_control() => s.push(' '),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// The Nagios/Icinga host name of a switch.
pub fn switch_host(s: &SwitchUplink) -> String {
    switch_host_name(s.switch_name.as_deref(), &s.chassis_id)
}

/// The Nagios/Icinga host name of the switch that announces `system_name` (LLDP/CDP) and
/// `chassis_id`: `switch-NAME`, the name (else the chassis id) reduced by [`object_name`]. The
/// one rule for the exports and the CMA's Nagios sink (`switch.*` events name the switch by
/// the same two fields), so a result always lands on the host the export wrote.
pub fn switch_host_name(system_name: Option<&str>, chassis_id: &str) -> String {
    let name = system_name.filter(|n| !n.is_empty()).unwrap_or(chassis_id);
    format!("switch-{}", object_name(name))
}

/// What both renderers need, derived once.
struct Model<'a> {
    hosts: &'a [InventoryHost],
    /// Switch host name → (display text, management address).
    switches: BTreeMap<String, (String, Option<String>)>,
    /// Group name → display text.
    groups: BTreeMap<String, String>,
    skipped_services: usize,
}

fn model(hosts: &[InventoryHost]) -> Model<'_> {
    let mut switches = BTreeMap::new();
    let mut groups = BTreeMap::new();
    let mut skipped_services = 0;
    for h in hosts {
        for s in &h.switches {
            let name = switch_host(s);
            let shown = s.switch_name.clone().unwrap_or_else(|| s.chassis_id.clone());
            let mgmt = s
                .management_addresses
                .iter()
                .find_map(|a| crate::names::usable_address(a).map(|(ip, _)| ip.to_string()));
            groups.insert(name.clone(), format!("hosts behind switch {shown}"));
            switches.entry(name).or_insert((shown, mgmt));
        }
        for s in &h.subnets {
            groups.insert(format!("subnet-{}", object_name(s)), format!("hosts in {s}"));
        }
        if let Some(os) = &h.os {
            groups.insert(format!("os-{}", object_name(os)), format!("hosts running {os}"));
        }
        skipped_services += h.checks.iter().filter(|c| !valid_service_name(c)).count();
    }
    Model { hosts, switches, groups, skipped_services }
}

fn groups_of(h: &InventoryHost) -> Vec<String> {
    let mut g = BTreeSet::new();
    for s in &h.switches {
        g.insert(switch_host(s));
    }
    for s in &h.subnets {
        g.insert(format!("subnet-{}", object_name(s)));
    }
    if let Some(os) = &h.os {
        g.insert(format!("os-{}", object_name(os)));
    }
    g.into_iter().collect()
}

fn parents_of(h: &InventoryHost) -> Vec<String> {
    h.switches.iter().map(switch_host).collect::<BTreeSet<_>>().into_iter().collect()
}

fn alias(h: &InventoryHost) -> String {
    match &h.os_name {
        Some(os) => format!("{} ({})", h.host, os),
        None => h.host.clone(),
    }
}

const WEEK: [&str; 7] =
    ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"];

/// The Nagios configuration (`assim.cfg`) of `hosts`.
pub fn nagios(hosts: &[InventoryHost], opts: &Options) -> String {
    let m = model(hosts);
    let mut o = String::new();
    o.push_str(&format!(
        "# Nagios objects written by `assim export nagios` from the CMA's discovery: {} hosts, \
         {} switches. Do not edit: the next export replaces this file.\n\
         # Results arrive as passive checks from the CMA's Nagios sink, which reports a \
         switch that is down as DOWN and the hosts behind it as UNREACHABLE.\n",
        m.hosts.len(),
        m.switches.len()
    ));
    if m.skipped_services > 0 {
        o.push_str(&format!(
            "# {} checks left out: their names are not plain service names.\n",
            m.skipped_services
        ));
    }
    let contacts: Vec<String> = opts.contact_groups.iter().map(|c| object_name(c)).collect();
    let contacts = if contacts.is_empty() {
        String::new()
    } else {
        format!("    contact_groups          {}\n", contacts.join(","))
    };
    o.push_str("\ndefine timeperiod {\n    timeperiod_name         assim-24x7\n    alias                   always (assim)\n");
    for d in WEEK {
        o.push_str(&format!("    {d:<24}00:00-24:00\n"));
    }
    o.push_str("}\n\ndefine command {\n    command_name            assim-passive\n    command_line            /bin/true\n}\n");
    o.push_str(&format!(
        "\ndefine host {{\n    name                    assim-host\n    register                0\n    \
         check_command           assim-passive\n    max_check_attempts      1\n    \
         check_period            assim-24x7\n    active_checks_enabled   0\n    \
         passive_checks_enabled  1\n    check_freshness         0\n    \
         notification_period     assim-24x7\n    notification_interval   0\n{contacts}}}\n"
    ));
    o.push_str(&format!(
        "\ndefine service {{\n    name                    assim-service\n    register                0\n    \
         check_command           assim-passive\n    max_check_attempts      1\n    \
         check_interval          5\n    retry_interval          1\n    \
         check_period            assim-24x7\n    active_checks_enabled   0\n    \
         passive_checks_enabled  1\n    check_freshness         0\n    \
         notification_period     assim-24x7\n    notification_interval   0\n{contacts}}}\n"
    ));
    for (name, text) in &m.groups {
        o.push_str(&format!(
            "\ndefine hostgroup {{\n    hostgroup_name          {name}\n    alias                   {}\n}}\n",
            nagios_text(text)
        ));
    }
    for (name, (shown, mgmt)) in &m.switches {
        o.push_str(&format!(
            "\ndefine host {{\n    use                     assim-host\n    host_name               {name}\n    \
             alias                   switch {}\n    address                 {}\n}}\n",
            nagios_text(shown),
            mgmt.as_deref().unwrap_or(name)
        ));
    }
    for h in m.hosts {
        o.push_str(&format!(
            "\ndefine host {{\n    use                     assim-host\n    host_name               {}\n    \
             alias                   {}\n    address                 {}\n",
            h.host,
            nagios_text(&alias(h)),
            h.addresses.first().unwrap_or(&h.host)
        ));
        let parents = parents_of(h);
        if !parents.is_empty() {
            o.push_str(&format!("    parents                 {}\n", parents.join(",")));
        }
        let groups = groups_of(h);
        if !groups.is_empty() {
            o.push_str(&format!("    hostgroups              {}\n", groups.join(",")));
        }
        o.push_str(&format!("    _ASSIM_NODE             {}\n}}\n", object_name(&h.node)));
        for c in h.checks.iter().filter(|c| valid_service_name(c)) {
            o.push_str(&format!(
                "\ndefine service {{\n    use                     assim-service\n    host_name               {}\n    \
                 service_description     {c}\n}}\n",
                h.host
            ));
        }
    }
    o
}

/// The Icinga 2 configuration (`assim.conf`) of `hosts`.
pub fn icinga2(hosts: &[InventoryHost], opts: &Options) -> String {
    let m = model(hosts);
    let mut o = String::new();
    o.push_str(&format!(
        "// Icinga 2 objects written by `assim export icinga2` from the CMA's discovery: {} hosts, \
         {} switches. Do not edit: the next export replaces this file.\n\
         // Results arrive as passive check results; hosts behind a switch depend on it.\n",
        m.hosts.len(),
        m.switches.len()
    ));
    if m.skipped_services > 0 {
        o.push_str(&format!(
            "// {} checks left out: their names are not plain service names.\n",
            m.skipped_services
        ));
    }
    let groups: Vec<String> =
        opts.contact_groups.iter().map(|c| icinga_string(&object_name(c))).collect();
    let notify = if groups.is_empty() {
        String::new()
    } else {
        format!("  vars.notification_groups = [ {} ]\n", groups.join(", "))
    };
    o.push_str("\nobject CheckCommand \"assim-passive\" {\n  command = [ \"/bin/true\" ]\n}\n");
    o.push_str(&format!(
        "\ntemplate Host \"assim-host\" {{\n  check_command = \"assim-passive\"\n  \
         enable_active_checks = false\n  enable_passive_checks = true\n  max_check_attempts = 1\n{notify}}}\n"
    ));
    o.push_str(&format!(
        "\ntemplate Service \"assim-service\" {{\n  check_command = \"assim-passive\"\n  \
         enable_active_checks = false\n  enable_passive_checks = true\n  max_check_attempts = 1\n{notify}}}\n"
    ));
    for (name, text) in &m.groups {
        o.push_str(&format!(
            "\nobject HostGroup {} {{\n  display_name = {}\n}}\n",
            icinga_string(name),
            icinga_string(text)
        ));
    }
    for (name, (shown, mgmt)) in &m.switches {
        o.push_str(&format!(
            "\nobject Host {} {{\n  import \"assim-host\"\n  display_name = {}\n",
            icinga_string(name),
            icinga_string(&format!("switch {shown}"))
        ));
        if let Some(a) = mgmt {
            o.push_str(&format!("  address = {}\n", icinga_string(a)));
        }
        o.push_str(&format!("  groups = [ {} ]\n}}\n", icinga_string(name)));
    }
    for h in m.hosts {
        o.push_str(&format!(
            "\nobject Host {} {{\n  import \"assim-host\"\n  display_name = {}\n",
            icinga_string(&h.host),
            icinga_string(&alias(h))
        ));
        let v4 = h.addresses.iter().find(|a| !a.contains(':'));
        let v6 = h.addresses.iter().find(|a| a.contains(':'));
        if let Some(a) = v4 {
            o.push_str(&format!("  address = {}\n", icinga_string(a)));
        }
        if let Some(a) = v6 {
            o.push_str(&format!("  address6 = {}\n", icinga_string(a)));
        }
        if let Some(os) = &h.os {
            o.push_str(&format!("  vars.os = {}\n", icinga_string(os)));
        }
        o.push_str(&format!("  vars.assim_node = {}\n", icinga_string(&h.node)));
        let groups = groups_of(h);
        if !groups.is_empty() {
            let list: Vec<String> = groups.iter().map(|g| icinga_string(g)).collect();
            o.push_str(&format!("  groups = [ {} ]\n", list.join(", ")));
        }
        o.push_str("}\n");
        for p in parents_of(h) {
            o.push_str(&format!(
                "\nobject Dependency {} {{\n  parent_host_name = {}\n  child_host_name = {}\n  \
                 disable_checks = true\n  disable_notifications = true\n}}\n",
                icinga_string(&format!("behind-{p}")),
                icinga_string(&p),
                icinga_string(&h.host)
            ));
        }
        for c in h.checks.iter().filter(|c| valid_service_name(c)) {
            o.push_str(&format!(
                "\nobject Service {} {{\n  import \"assim-service\"\n  host_name = {}\n}}\n",
                icinga_string(c),
                icinga_string(&h.host)
            ));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Vec<InventoryHost> {
        let sw = SwitchUplink {
            chassis_id: "00:11:22:33:44:55".into(),
            switch_name: Some("tor7\"; rm -rf /\n".into()),
            management_addresses: vec!["192.0.2.254".into()],
            port_id: "swp1".into(),
            nic: "eth0".into(),
        };
        vec![
            InventoryHost {
                host: "web1".into(),
                node: "n1".into(),
                state: "up".into(),
                addresses: vec!["192.0.2.7".into(), "2001:db8::7".into()],
                subnets: vec!["192.0.2.0/24".into()],
                os: Some("debian".into()),
                os_name: Some("Debian GNU/Linux 12 (bookworm); $USER1$".into()),
                switches: vec![sw],
                checks: vec!["http:80".into(), "bad;name\n".into()],
                ..Default::default()
            },
            InventoryHost { host: "db1".into(), node: "n2".into(), ..Default::default() },
        ]
    }

    #[test]
    fn nagios_hosts_parents_groups_and_services() {
        let text = nagios(&sample(), &Options::default());
        assert!(text.contains("host_name               switch-tor7___rm_-rf___\n"), "{text}");
        assert!(text.contains("parents                 switch-tor7___rm_-rf___\n"), "{text}");
        assert!(
            text.contains(
                "hostgroups              os-debian,subnet-192.0.2.0_24,switch-tor7___rm_-rf___\n"
            ),
            "{text}"
        );
        assert!(text.contains("service_description     http:80\n"), "{text}");
        assert!(!text.contains("bad;name"), "{text}");
        assert!(text.contains("# 1 checks left out"), "{text}");
        assert!(!text.contains('$'), "no macro from hostile text: {text}");
        // A host without addresses is addressed by its name.
        assert!(text.contains("host_name               db1\n    alias                   db1\n    address                 db1\n"), "{text}");
        // Same input, same bytes.
        assert_eq!(text, nagios(&sample(), &Options::default()));
    }

    #[test]
    fn icinga_dependencies_and_escaped_strings() {
        let text = icinga2(&sample(), &Options::default());
        assert!(text.contains("object Dependency \"behind-switch-tor7___rm_-rf___\" {\n  parent_host_name = \"switch-tor7___rm_-rf___\"\n  child_host_name = \"web1\""), "{text}");
        assert!(text.contains("address6 = \"2001:db8::7\""), "{text}");
        assert!(text.contains("display_name = \"switch tor7\\\"; rm -rf / \""), "{text}");
        assert!(text.contains("$$USER1$$"), "{text}");
        assert!(text.contains("object Service \"http:80\" {"), "{text}");
    }
}
