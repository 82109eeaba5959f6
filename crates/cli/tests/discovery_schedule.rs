//! The CMA's discovery schedule reaches the nanoprobe and drives its external agents: with
//! `cma --discovery agent.*=1s` an agent runs every second (its default is 5 minutes), its
//! changing output reaches the CMA, and a broken agent is reported as an error result.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use assim::cluster::{Cluster, ClusterSpec, Program};

#[test]
fn the_cma_schedule_runs_agents_and_reports_their_errors() -> anyhow::Result<()> {
    let agents = std::env::temp_dir().join(format!("assim-agents-{}", std::process::id()));
    std::fs::create_dir_all(&agents)?;
    let write = |name: &str, body: &str| -> anyhow::Result<()> {
        let p = agents.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n"))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    };
    // Counts its own runs, so each run's result differs.
    write(
        "counter",
        r#"n=$(cat runs 2>/dev/null || echo 0); n=$((n+1)); echo $n > runs; echo "{\"runs\":$n,\"zone\":\"$ASSIM_PARAM_ZONE\"}""#,
    )?;
    write("broken", "echo 'this is not json'")?;
    let config = agents.join("cma.toml");
    std::fs::write(
        &config,
        "[discovery]\n\"agent.counter\" = { interval = \"1s\", params = { zone = \"eu\" } }\n\"agent.*\" = 1\n",
    )?;

    let mut spec = ClusterSpec::multicall(env!("CARGO_BIN_EXE_assim"), 1);
    spec.cma_args = vec!["--config".into(), config.display().to_string()];
    spec.nanoprobe = Program {
        path: env!("CARGO_BIN_EXE_assim").into(),
        prefix: vec!["nanoprobe".into(), "--discovery-agents".into(), agents.display().to_string()],
    };
    let mut c = Cluster::new(spec, false)?;
    c.start_all()?;
    let host = c.nodes[0].name.clone();
    let deadline = Instant::now() + Duration::from_secs(40);
    let (mut runs, mut broken) = (0, None);
    while runs < 3 || broken.is_none() {
        assert!(
            Instant::now() < deadline,
            "after 40 s: agent.counter at {runs} runs, agent.broken {broken:?}"
        );
        for d in c.client.discovery(&host).unwrap_or_default() {
            match d.name.as_str() {
                "agent.counter" => {
                    runs = d.payload["runs"].as_u64().unwrap_or(0);
                    // The first run may come before the CMA's schedule (built-in defaults).
                    if runs >= 3 {
                        assert_eq!(d.payload["zone"], "eu", "parameters reach the agent");
                    }
                }
                "agent.broken" => broken = Some(d.payload),
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let broken = broken.unwrap();
    assert!(broken["error"].as_str().is_some_and(|e| e.contains("not one JSON value")), "{broken}");
    assert_eq!(broken["exit"], 0);
    drop(c);
    std::fs::remove_dir_all(&agents)?;
    Ok(())
}
