//! The quick start's main job: `assim demo` runs to the end and exits 0.

#[test]
fn demo_runs_and_exits_zero() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_assim"))
        .args(["demo", "--nodes", "5"])
        .output()
        .expect("run assim demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "assim demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "The ring is formed",
        "host.suspect",
        "host.down",
        "host.left",
        "host.up",
        "All of it happened as expected",
    ] {
        assert!(stdout.contains(needle), "demo output lacks {needle:?}:\n{stdout}");
    }
}
