//! `assim sim --wire` end to end at a small size: simulated nanoprobes over real UDP against a
//! real `cma` process, through the registration storm, a steady window and a failure burst. It
//! reads the CMA's events over the HTTP API as any client does, so a change of the API's JSON
//! shape breaks it here rather than in the next benchmark run.

use std::process::Command;

#[test]
fn wire_mode_registers_watches_and_reports_every_crash() {
    let out = Command::new(env!("CARGO_BIN_EXE_assim"))
        .args(["sim", "--wire", "--nodes", "40", "--crash", "3", "--steady", "1s"])
        .output()
        .expect("run assim sim --wire");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "assim sim --wire failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("all up at the CMA after")
            && stdout.contains("registration time (all registered, in their rings and watched)"),
        "registration storm:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("3 nodes stopped at once, 3 host.down"),
        "every crash reported:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("0 unexpected host.down"), "{stdout}");
}
