//! Checks declared by local programs through `events.sock` (issue 17 item 6): validation of the
//! plugin against the configured plugin directories, and the check the scheduler runs.
//!
//! A declaration names a Nagios plugin and its arguments, an interval and optionally the retry
//! interval, attempts and timeout. The rules, each of which refuses the declaration with a
//! reason and changes nothing:
//! - The plugin is a name looked up in the plugin directories in order, or a path; either way
//!   its real path (symlinks and `..` resolved) must lie inside one of the directories
//!   (`--check-plugin-dir`, default [`DEFAULT_PLUGIN_DIRS`]) and be an executable file. The
//!   check runs that resolved path, so a later symlink swap outside the directories does not
//!   change what runs.
//! - It runs as the user who declared it (the socket's peer credentials): a program cannot
//!   make the nanoprobe run a plugin with more rights than its own. When that is another user
//!   than the nanoprobe's, the plugin is started through `setpriv --reuid U --regid G
//!   --clear-groups` (util-linux); a nanoprobe that is not root refuses other users' checks.
//! - At most [`assim_probe_shell::MAX_LOCAL_CHECKS`] checks, [`MAX_ARGS`] arguments of at most
//!   [`MAX_ARG`] bytes, an interval of [`MIN_INTERVAL`] to a day.
//!
//! Declared checks are named `local:NAME`, saved in `local.json` ([`crate::local_state`]) and
//! validated again when the nanoprobe starts (a plugin removed meanwhile drops its check, with
//! an ERROR in the log).

use std::path::PathBuf;
use std::time::Duration;

use assim_checks::Check;
use assim_wire::msg::CheckSpec;
use serde::{Deserialize, Serialize};

/// Where plugins may live unless configured otherwise.
pub const DEFAULT_PLUGIN_DIRS: [&str; 3] =
    ["/usr/lib/nagios/plugins", "/usr/lib64/nagios/plugins", "/usr/local/lib/nagios/plugins"];
/// Arguments at most.
pub const MAX_ARGS: usize = 32;
/// The longest argument, in bytes.
pub const MAX_ARG: usize = 1024;
/// The shortest interval a local program may ask for.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);
/// The longest interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The program that starts a plugin as another user.
pub const SETPRIV: &str = "/usr/bin/setpriv";

/// A declaration as it arrives and as it is saved (with the declaring user).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declared {
    /// Without the `local:` prefix.
    pub name: String,
    pub plugin: String,
    #[serde(default)]
    pub args: Vec<String>,
    pub interval_s: u64,
    #[serde(default)]
    pub retry_interval_s: u64,
    #[serde(default)]
    pub max_attempts: u32,
    #[serde(default)]
    pub timeout_s: u64,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

/// Resolves `plugin` inside `dirs` (see the module doc).
pub fn resolve_plugin(dirs: &[PathBuf], plugin: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt as _;
    if plugin.is_empty() || plugin.contains('\0') || plugin.len() > MAX_ARG {
        return Err("the plugin name is empty, too long or has a NUL byte".into());
    }
    if plugin.contains('/') && !plugin.starts_with('/') {
        return Err(format!("plugin {plugin:?}: give a name or an absolute path"));
    }
    let roots: Vec<PathBuf> = dirs.iter().filter_map(|d| d.canonicalize().ok()).collect();
    let candidates: Vec<PathBuf> = if plugin.contains('/') {
        vec![PathBuf::from(plugin)]
    } else {
        roots.iter().map(|d| d.join(plugin)).collect()
    };
    let listed = || dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
    for c in candidates {
        let Ok(real) = c.canonicalize() else { continue };
        if !roots.iter().any(|r| real.starts_with(r)) {
            return Err(format!(
                "plugin {plugin} is outside the plugin directories ({}); install it there or \
                 add its directory with the nanoprobe's --check-plugin-dir",
                listed()
            ));
        }
        let meta = std::fs::metadata(&real).map_err(|e| format!("plugin {plugin}: {e}"))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(format!("plugin {} is not an executable file", real.display()));
        }
        return Ok(real);
    }
    Err(format!("no plugin {plugin:?} in the plugin directories ({})", listed()))
}

/// The check a declaration runs, validated, for a nanoprobe running as `own_uid`.
pub fn build(d: &Declared, dirs: &[PathBuf], own_uid: u32) -> Result<Check, String> {
    assim_probe_shell::apps::validate_name(&d.name)
        .map_err(|e| e.to_string().replace("application name", "check name"))?;
    if d.args.len() > MAX_ARGS || d.args.iter().any(|a| a.len() > MAX_ARG || a.contains('\0')) {
        return Err(format!(
            "at most {MAX_ARGS} arguments of at most {MAX_ARG} bytes each, without NUL bytes"
        ));
    }
    let interval = Duration::from_secs(d.interval_s);
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        return Err(format!(
            "the interval must be {} s to 1 day (e.g. \"60s\")",
            MIN_INTERVAL.as_secs()
        ));
    }
    let plugin = resolve_plugin(dirs, &d.plugin)?;
    let mut argv = Vec::new();
    if d.uid != own_uid {
        if own_uid != 0 {
            return Err(format!(
                "this nanoprobe runs as uid {own_uid} and cannot run a check as uid {}: declare \
                 it as uid {own_uid}, or run the nanoprobe as root",
                d.uid
            ));
        }
        argv.extend([
            SETPRIV.to_owned(),
            format!("--reuid={}", d.uid),
            format!("--regid={}", d.gid),
            "--clear-groups".to_owned(),
            "--".to_owned(),
        ]);
    }
    argv.push(plugin.to_string_lossy().into_owned());
    argv.extend(d.args.iter().cloned());
    // A timeout left out fits the interval: at most 10 s, and less than the interval.
    let timeout_s = match d.timeout_s {
        0 => (d.interval_s / 2).clamp(1, 10),
        t => t,
    };
    let spec = CheckSpec {
        name: format!("{}{}", assim_probe_shell::LOCAL_CHECK_PREFIX, d.name),
        kind: "nagios".into(),
        argv,
        params: Vec::new(),
        interval_s: d.interval_s,
        retry_interval_s: d.retry_interval_s,
        max_attempts: d.max_attempts,
        timeout_s,
    };
    Check::try_from(&spec).map_err(|e| e.to_string())
}

/// The current process's effective uid.
pub fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// `dirs` as given, or the defaults.
pub fn plugin_dirs(configured: &[PathBuf]) -> Vec<PathBuf> {
    if configured.is_empty() {
        DEFAULT_PLUGIN_DIRS.iter().map(PathBuf::from).collect()
    } else {
        configured.to_vec()
    }
}

/// The declared checks and what validating them needs (the driver's; the shell runs them).
#[derive(Clone, Debug, Default)]
pub struct LocalChecks {
    pub dirs: Vec<PathBuf>,
    pub own_uid: u32,
    /// By name without the prefix.
    pub declared: std::collections::BTreeMap<String, Declared>,
}

impl LocalChecks {
    pub fn new(configured_dirs: &[PathBuf]) -> LocalChecks {
        LocalChecks { dirs: plugin_dirs(configured_dirs), own_uid: own_uid(), ..Default::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn lab(what: &str) -> (PathBuf, PathBuf) {
        let root = std::env::temp_dir().join(format!("assim-lc-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let plugins = root.join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let exe = |p: &std::path::Path| {
            std::fs::write(p, "#!/bin/sh\necho OK\n").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        exe(&plugins.join("check_ok"));
        std::fs::write(plugins.join("not_exec"), "x").unwrap();
        exe(&root.join("outside"));
        std::os::unix::fs::symlink(root.join("outside"), plugins.join("escape")).unwrap();
        (root, plugins)
    }

    fn decl(plugin: &str, uid: u32) -> Declared {
        Declared {
            name: "raid".into(),
            plugin: plugin.into(),
            args: vec!["-w".into(), "5".into()],
            interval_s: 60,
            retry_interval_s: 0,
            max_attempts: 0,
            timeout_s: 0,
            uid,
            gid: uid,
        }
    }

    #[test]
    fn plugins_must_be_executables_inside_the_plugin_directories() {
        let (root, plugins) = lab("dirs");
        let dirs = vec![plugins.clone()];
        let real = plugins.canonicalize().unwrap().join("check_ok");
        assert_eq!(resolve_plugin(&dirs, "check_ok"), Ok(real.clone()));
        assert_eq!(resolve_plugin(&dirs, real.to_str().unwrap()), Ok(real.clone()));
        for (bad, why) in [
            ("nope", "no plugin"),
            ("not_exec", "not an executable"),
            ("escape", "outside the plugin directories"),
            ("../outside", "a name or an absolute path"),
            (root.join("outside").to_str().unwrap(), "outside the plugin directories"),
            ("/bin/sh", "outside the plugin directories"),
            ("", "empty"),
        ] {
            let e = resolve_plugin(&dirs, bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let c = build(&decl("check_ok", 0), &dirs, 0).unwrap();
        assert_eq!(c.name, "local:raid");
        assert_eq!(c.timeout, Duration::from_secs(10));
        match &c.kind {
            assim_checks::Kind::Nagios { argv } => {
                assert_eq!(argv, &vec![real.to_str().unwrap().to_owned(), "-w".into(), "5".into()])
            }
            k => panic!("{k:?}"),
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn another_users_check_runs_with_that_users_rights_only() {
        let (root, plugins) = lab("uid");
        let dirs = vec![plugins];
        let c = build(&decl("check_ok", 1000), &dirs, 0).unwrap();
        let assim_checks::Kind::Nagios { argv } = &c.kind else { panic!() };
        assert_eq!(&argv[..5], [SETPRIV, "--reuid=1000", "--regid=1000", "--clear-groups", "--"]);
        // A nanoprobe that is not root cannot switch users: refused, not run as itself.
        let e = build(&decl("check_ok", 1000), &dirs, 999).unwrap_err();
        assert!(e.contains("cannot run a check as uid 1000"), "{e}");
        for (d, why) in [
            (Declared { interval_s: 1, ..decl("check_ok", 0) }, "interval"),
            (Declared { name: "a b".into(), ..decl("check_ok", 0) }, "check name"),
            (Declared { args: vec!["x".into(); 33], ..decl("check_ok", 0) }, "arguments"),
            (Declared { timeout_s: 120, ..decl("check_ok", 0) }, "timeout"),
        ] {
            let e = build(&d, &dirs, 0).unwrap_err();
            assert!(e.contains(why), "{d:?}: {e}");
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
