//! Hardening items on the real `nanoprobe` daemon (issue 16), against a real `cma`.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use assim::cluster::{Cluster, ClusterSpec, Program};

/// Issue 16 item 2: a discovery result between the reliable layer's limit (2 MiB) and the old
/// spool limit (4 MiB) was spooled by the daemon, could never be sent, and every later record
/// (reports, checks, events, discovery) was refused behind it by the CMA's next-record rule.
/// Now the daemon refuses it at the source with an error result, and later results still
/// arrive.
#[test]
fn item_2_oversized_discovery_result_does_not_wedge_the_daemons_traffic() -> anyhow::Result<()> {
    let agents = std::env::temp_dir().join(format!("assim-item2-agents-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&agents);
    std::fs::create_dir_all(&agents)?;
    let write = |name: &str, body: &str| -> anyhow::Result<()> {
        let p = agents.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n"))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    };
    // 3 MiB of JSON: over the message limit, within the agent output limit set below.
    write("big", r#"printf '{"blob":"'; head -c 3145728 /dev/zero | tr '\0' x; printf '"}'"#)?;
    // Changes on every run, so each run is a new spool record behind the big one.
    write(
        "counter",
        r#"n=$(cat runs 2>/dev/null || echo 0); n=$((n+1)); echo $n > runs; echo "{\"runs\":$n}""#,
    )?;
    let config = agents.join("cma.toml");
    std::fs::write(&config, "[discovery]\n\"agent.*\" = 1\n")?;

    let mut spec = ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 1);
    spec.cma_args = vec!["--config".into(), config.display().to_string()];
    spec.nanoprobe = Program {
        path: env!("CARGO_BIN_EXE_assim").into(),
        prefix: vec![
            "nanoprobe".into(),
            "--discovery-agents".into(),
            agents.display().to_string(),
            "--agent-max-output-kb".into(),
            "8192".into(),
        ],
    };
    let mut c = Cluster::new(spec, false)?;
    c.start_all()?;
    let host = c.nodes[0].name.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut runs, mut big) = (0, None);
    while runs < 3 || big.is_none() {
        assert!(
            Instant::now() < deadline,
            "after 60 s: agent.counter at {runs} runs, agent.big {big:?}"
        );
        for d in c.client.discovery(&host).unwrap_or_default() {
            match d.name.as_str() {
                "agent.counter" => runs = d.payload["runs"].as_u64().unwrap_or(0),
                "agent.big" => big = Some(d.payload),
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let big = big.unwrap();
    assert!(big["error"].as_str().is_some_and(|e| e.contains("exceeds")), "{big}");
    drop(c);
    std::fs::remove_dir_all(&agents)?;
    Ok(())
}
