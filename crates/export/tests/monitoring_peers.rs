//! The Nagios, Icinga 2 and Graphviz exports against the real programs (Debian `nagios4`,
//! `icinga2-bin`, `graphviz`):
//! a config written from an inventory with switches, subnets, OS groups, services and hostile
//! names passes `nagios4 -v` and `icinga2 daemon -C`, and every host, service, parent and
//! dependency is counted by them; `dot` parses the picture and keeps every shape and edge.

use std::path::Path;
use std::process::Command;

use assim_api::{InventoryHost, SwitchUplink};
use assim_export::monitoring::{Options, icinga2, nagios};

fn inventory() -> Vec<InventoryHost> {
    let tor = |name: &str, chassis: &str| SwitchUplink {
        chassis_id: chassis.into(),
        switch_name: Some(name.into()),
        management_addresses: vec!["192.0.2.254".into()],
        port_id: "swp1".into(),
        nic: "eth0".into(),
    };
    let host = |n: usize, sw: SwitchUplink| InventoryHost {
        host: format!("web{n}"),
        node: format!("node{n}"),
        state: "up".into(),
        addresses: vec![format!("192.0.2.{n}"), format!("2001:db8::{n}")],
        subnets: vec!["192.0.2.0/24".into(), "2001:db8::/64".into()],
        os: Some("debian".into()),
        os_name: Some("Debian GNU/Linux 12 (bookworm) \"quoted\"; $MACRO$ {brace}".into()),
        switches: vec![sw],
        checks: vec!["app:backup".into(), "http:80".into(), "ssh:22".into(), "evil;name".into()],
        ..Default::default()
    };
    let mut hosts: Vec<InventoryHost> =
        (1..=3).map(|n| host(n, tor("tor7", "00:11:22:33:44:55"))).collect();
    hosts.push(host(4, tor("x\"} object Host \"pwned\" {\n//", "00:11:22:33:44:66")));
    hosts.push(InventoryHost { host: "db1".into(), node: "node9".into(), ..Default::default() });
    hosts
}

fn opts() -> Options {
    Options { contact_groups: vec!["ops".into()] }
}

#[test]
fn nagios4_verifies_the_export() {
    let Some(bin) =
        ["/usr/sbin/nagios4", "/usr/sbin/nagios"].into_iter().find(|p| Path::new(p).exists())
    else {
        assim_util::testing::skip("nagios4 is not installed (scripts/install-deps installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let id = |flag: &str| {
        let out = Command::new("id").arg(flag).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (user, group) = (id("-un"), id("-gn"));
    let cfg = nagios(&inventory(), &opts());
    assert!(cfg.contains("service_description     app:backup\n"), "{cfg}");
    std::fs::write(dir.path().join("assim.cfg"), cfg).unwrap();
    // The operator's side: a contact group the export names.
    std::fs::write(
        dir.path().join("contacts.cfg"),
        "define command {\n command_name notify-none\n command_line /bin/true\n}\n\
         define contact {\n contact_name ops1\n host_notifications_enabled 0\n\
         service_notifications_enabled 0\n host_notification_period assim-24x7\n\
         service_notification_period assim-24x7\n host_notification_options n\n\
         service_notification_options n\n host_notification_commands notify-none\n\
         service_notification_commands notify-none\n}\n\
         define contactgroup {\n contactgroup_name ops\n alias ops\n members ops1\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("nagios.cfg"),
        format!(
            "log_file={d}/nagios.log\ncfg_file={d}/assim.cfg\ncfg_file={d}/contacts.cfg\n\
             object_cache_file={d}/objects.cache\nprecached_object_file={d}/objects.precache\n\
             status_file={d}/status.dat\ncommand_file={d}/nagios.cmd\nlock_file={d}/nagios.lock\n\
             temp_file={d}/nagios.tmp\ntemp_path={d}\ncheck_result_path={d}\n\
             translate_passive_host_checks=1\nuse_syslog=0\nnagios_user={user}\n\
             nagios_group={group}\n"
        ),
    )
    .unwrap();
    let out = Command::new(bin).arg("-v").arg(dir.path().join("nagios.cfg")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "nagios4 -v failed:\n{text}");
    assert!(text.contains("Total Errors:   0"), "{text}");
    // 5 hosts + 2 switches; 4 hosts × 3 services (a heartbeating program's `app:backup`
    // among them; evil;name left out); a parent per host.
    assert!(text.contains("Checked 7 hosts."), "{text}");
    assert!(text.contains("Checked 12 services."), "{text}");
    assert!(text.contains("Checked 5 host groups."), "{text}");
    assert!(!text.contains("pwned"), "{text}");
}

#[test]
fn icinga2_validates_the_export() {
    if !Path::new("/usr/sbin/icinga2").exists() {
        assim_util::testing::skip("icinga2 is not installed (scripts/install-deps: icinga2-bin)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = icinga2(&inventory(), &opts());
    assert!(conf.contains("object Service \"app:backup\" {"), "{conf}");
    std::fs::write(dir.path().join("assim.conf"), &conf).unwrap();
    std::fs::write(dir.path().join("icinga2.conf"), "include \"assim.conf\"\n").unwrap();
    let out = Command::new("/usr/sbin/icinga2")
        .args(["daemon", "-C", "-c"])
        .arg(dir.path().join("icinga2.conf"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "icinga2 daemon -C failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "Instantiated 7 Hosts.",
        "Instantiated 12 Services.",
        "Instantiated 4 Dependencies.",
        "Instantiated 5 HostGroups.",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}\n{conf}");
    }
    assert!(!text.contains("pwned"), "{text}");
}

#[test]
fn graphviz_reads_the_dot_export() {
    if !Path::new("/usr/bin/dot").exists() {
        assim_util::testing::skip("graphviz is not installed (scripts/install-deps installs it)");
        return;
    }
    let hosts = inventory();
    let deps = [assim_api::Dependency {
        client_host: "web1".into(),
        client_node: "node1".into(),
        client_state: "up".into(),
        client_pid: None,
        client_exe: None,
        server_host: "db1".into(),
        server_node: "node9".into(),
        server_state: "up".into(),
        server_ip: "192.0.2.9".into(),
        port: 5432,
        service_ip: "0.0.0.0".into(),
        server_pid: Some(7),
        server_exe: Some("/usr/lib/postgresql/15/bin/postgres\"];x".into()),
        connections: 2,
    }];
    let text =
        assim_export::dot::dot(&hosts, &deps, &assim_export::dot::DotOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.dot");
    std::fs::write(&file, &text).unwrap();
    // `-Tcanon` prints the graph as dot parsed it: count what it kept.
    let out = Command::new("/usr/bin/dot").arg("-Tcanon").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "dot refused the export: {stderr}\n{text}");
    let canon = String::from_utf8_lossy(&out.stdout);
    // 5 hosts, 2 switches (one with a hostile name), 4 wires, 1 dependency; no node "pwned".
    assert_eq!(canon.matches("shape=ellipse").count(), 5, "{canon}");
    assert_eq!(canon.matches("shape=box").count(), 2, "{canon}");
    assert_eq!(canon.matches("dir=none").count(), 4, "{canon}");
    assert_eq!(canon.matches("style=dashed").count(), 1, "{canon}");
    assert!(!canon.lines().any(|l| l.trim_start().starts_with("pwned")), "{canon}");
    let svg = Command::new("/usr/bin/dot").arg("-Tsvg").arg(&file).output().unwrap();
    assert!(svg.status.success() && String::from_utf8_lossy(&svg.stdout).contains("<svg"));
}
