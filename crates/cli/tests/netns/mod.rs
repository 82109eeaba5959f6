//! Shared helpers of the network-namespace tests (`topology.rs`, `switch_lab.rs`): a [`Lab`]
//! owning the namespaces and processes of one run (deleted and killed on drop, panics
//! included), `ip` and `nft` wrappers, and the `assim` CLI run inside a namespace.
//!
//! Every namespace has a name unique to the run (`Lab::ns`), so two test binaries can run side
//! by side. Not every test uses every helper, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Namespaces and processes of one run; dropping it kills the processes and deletes the
/// namespaces (with their veths and bridges).
pub struct Lab {
    pub tag: String,
    pub dir: PathBuf,
    pub namespaces: Vec<String>,
    pub children: Vec<(String, Child)>,
}

impl Lab {
    /// A new run with its own tag and temporary directory.
    pub fn new() -> Lab {
        let tag = format!(
            "at{}{}",
            std::process::id() % 100_000,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_micros()
                % 1000
        );
        let dir = std::env::temp_dir().join(format!("assim-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        Lab { tag, dir, namespaces: vec![], children: vec![] }
    }

    /// The namespace name of `role` in this run.
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.tag)
    }

    /// Creates the namespace of `role` with its loopback up.
    pub fn add_ns(&mut self, role: &str) -> String {
        let name = self.ns(role);
        ip(&["netns", "add", &name]);
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// The log file of process `name`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// Starts `argv` inside namespace `ns`, stderr (and stdout unless piped) to a log file.
    pub fn spawn(&mut self, name: &str, ns: &str, argv: &[&str], pipe_stdout: bool) -> &mut Child {
        let log = std::fs::File::options().create(true).append(true).open(self.log(name)).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(argv).stdin(Stdio::null());
        cmd.env_remove("ASSIM_API_TOKEN").env_remove("ASSIM_TOKEN");
        if pipe_stdout {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(log.try_clone().unwrap());
        }
        let child = cmd.stderr(log).spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.children.push((name.to_string(), child));
        &mut self.children.last_mut().unwrap().1
    }

    /// SIGKILLs process `name` (a crash) and reaps it. `ip netns exec` execs the program, so
    /// the child's pid is the program's.
    pub fn kill(&mut self, name: &str) {
        let i = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        let (_, mut child) = self.children.remove(i);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The logs of every process, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.children {
            let text = std::fs::read_to_string(self.log(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {name} (last lines)\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if !std::thread::panicking() && std::env::var_os("ASSIM_KEEP_LAB").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Loads an nftables ruleset (`nft -f -`) in namespace `ns`.
pub fn nft_load(ns: &str, ruleset: &str) {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nft");
    child.stdin.take().unwrap().write_all(ruleset.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft -f failed in {ns}: {}\n{ruleset}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `nft -j ARGS` in namespace `ns`, as JSON.
pub fn nft_json(ns: &str, args: &[&str]) -> Value {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-j"])
        .args(args)
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft -j {} failed in {ns}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Whether `cmd` is on the PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The MAC of `iface` in namespace `ns`, lowercase.
pub fn mac_of(ns: &str, iface: &str) -> String {
    let out = Command::new("ip").args(["-n", ns, "-j", "link", "show", iface]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["address"].as_str().unwrap().to_ascii_lowercase()
}

/// Runs `assim --api API ARGS` in namespace `ns`; its stdout, or its stderr as the error.
pub fn assim_in(ns: &str, api: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_assim"), "--api", api])
        .args(args)
        .env_remove("ASSIM_API_TOKEN")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `assim --api API ARGS --json` in namespace `ns`.
pub fn query(ns: &str, api: &str, args: &[&str]) -> Result<Value, String> {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let out = assim_in(ns, api, &with_json)?;
    serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
}

/// Polls `check` every 250 ms until it answers `Ok`; panics with the last error and the logs
/// after `timeout`.
pub fn wait_for(
    lab: &Lab,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Value, String>,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}\n{}", lab.logs());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Writes a small file.
pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}
